//! One allocation: its relayed address, lifetime, permissions and channel bindings.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use std::sync::Arc;

use super::credentials::{Principal, Signing};
use crate::stun::TransactionId;

use super::FiveTuple;
use super::limits::{ByteRate, SharedByteRate};

/// How long a permission lasts after it is installed or refreshed (RFC 8656 §9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a channel binding lasts after it is bound or refreshed (RFC 8656 §12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// After a binding expires, its number and peer stay reserved for this long (RFC 8656 §12).
pub const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);
/// A retransmitted request within this time gets the cached answer (RFC 8489 §6.3.4).
pub const RETRANSMIT_WINDOW: Duration = Duration::from_secs(40);

/// Identifies an allocation inside one worker's core: a slot index and the slot's generation,
/// so that a stale id (a packet for an allocation that has just ended) is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationId {
    pub(super) index: u32,
    pub(super) generation: u32,
}

impl std::fmt::Display for AllocationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.index, self.generation)
    }
}

impl AllocationId {
    /// An id from its parts (as [`AllocationId`]'s `Display` writes them).
    pub fn from_parts(index: u32, generation: u32) -> Self {
        AllocationId { index, generation }
    }

    /// The slot index: dense and small, so the I/O layer can keep its relay sockets in a `Vec`.
    #[inline]
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// Permission for one peer IP address (ports do not matter, RFC 8656 §9).
#[derive(Debug, Clone, Copy)]
pub struct Permission {
    pub ip: IpAddr,
    pub expires: Instant,
}

/// A channel number bound to a peer transport address.
#[derive(Debug, Clone, Copy)]
pub struct ChannelBinding {
    pub number: u16,
    pub peer: SocketAddr,
    /// Relaying stops here; the number and peer stay reserved for [`CHANNEL_COOLDOWN`] more.
    pub expires: Instant,
}

impl ChannelBinding {
    fn active(&self, now: Instant) -> bool {
        now < self.expires
    }
}

/// Bytes and packets relayed by one allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

impl std::ops::AddAssign for Traffic {
    fn add_assign(&mut self, other: Traffic) {
        self.to_peer_packets += other.to_peer_packets;
        self.to_peer_bytes += other.to_peer_bytes;
        self.to_client_packets += other.to_client_packets;
        self.to_client_bytes += other.to_client_bytes;
    }
}

/// A TURN allocation.
#[derive(Debug)]
pub struct Allocation {
    pub(super) id: AllocationId,
    pub(super) tuple: FiveTuple,
    pub(super) username: Box<str>,
    /// Whose quotas it counts against, and which kind of credential made it.
    pub(super) principal: Principal,
    /// The expiry (unix seconds) of a REST username: once it has passed, the allocation's
    /// requests are refused with 401, while it relays on until its lifetime ends.
    pub(super) rest_expiry: Option<u64>,
    pub(super) signing: Signing,
    /// The address the relay socket is bound to; `None` while the I/O layer opens it. On a
    /// dual allocation, the IPv4 one (or the IPv6 one if IPv4 had no port).
    pub(super) relayed: Option<SocketAddr>,
    /// The second relayed address of a dual allocation (RFC 8656 §7.2), in `families.rs`.
    pub(super) dual: super::families::Dual,
    pub(super) created: Instant,
    pub(super) expires: Instant,
    pub(super) permissions: Vec<Permission>,
    pub(super) channels: Vec<ChannelBinding>,
    pub(super) traffic: Traffic,
    /// The deadline this allocation is filed under in the core's timer index.
    pub(super) wake: Instant,
    /// The last answer sent, for retransmissions.
    pub(super) last_response: CachedResponse,
    /// The token of the port held back for a later allocation (EVEN-PORT with R).
    pub(super) reservation: Option<super::ReservationToken>,
    /// This allocation's bandwidth limit, both directions together.
    pub(super) bandwidth: Option<ByteRate>,
    /// Whether the credential store set `bandwidth` (coturn's `max-bps`): a reload of
    /// `[limits] allocation-bandwidth` then leaves it alone.
    pub(super) bandwidth_from_store: bool,
    /// The limit over all of this user's allocations on the node.
    pub(super) user_bandwidth: Option<Arc<SharedByteRate>>,
    /// The relay socket to open once the cluster lease is granted.
    pub(super) pending_open: Option<(super::Family, super::PortRequest)>,
    /// Holds a cluster lease, to give back when it ends.
    pub(super) leased: bool,
    /// The channels (number, peer) the I/O layer was told to relay in the kernel
    /// ([`super::Event::Offload`]) and not yet told to stop.
    pub(super) offloaded: Vec<(u16, SocketAddr)>,
    /// The peer connections of a TCP allocation (RFC 6062); `None` for a UDP one.
    pub(super) tcp: Option<super::tcp::TcpRelay>,
}

/// What the I/O layer, the status API and the fuzz harness may read of an allocation: a view
/// of the core's state, never its key or its timers.
impl Allocation {
    pub fn id(&self) -> AllocationId {
        self.id
    }

    pub fn tuple(&self) -> FiveTuple {
        self.tuple
    }

    /// The username it was made with (a REST username whole, `<expiry>:<id>`).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Whose quotas it counts against.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The address its relay socket is bound to; `None` while the I/O layer opens it. A dual
    /// allocation has a second one: see [`Allocation::relayed_addresses`].
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.relayed
    }

    pub fn created(&self) -> Instant {
        self.created
    }

    pub fn expires(&self) -> Instant {
        self.expires
    }

    /// Its permissions, live or not yet cleaned up (each says when it expires).
    pub fn permissions(&self) -> &[Permission] {
        &self.permissions
    }

    /// Its channel bindings, relaying or cooling down (each says when it stops relaying).
    pub fn channels(&self) -> &[ChannelBinding] {
        &self.channels
    }

    /// What it has relayed.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// Whether it relays TCP (RFC 6062) rather than UDP.
    pub fn is_tcp(&self) -> bool {
        self.tcp.is_some()
    }

    /// Whether a bandwidth limit (its own or its user's) applies to it.
    #[inline]
    pub fn bandwidth_limited(&self) -> bool {
        self.bandwidth.is_some() || self.user_bandwidth.is_some()
    }
}

#[derive(Debug, Default)]
pub(super) struct CachedResponse {
    pub tid: Option<TransactionId>,
    pub at: Option<Instant>,
    pub bytes: Vec<u8>,
}

impl CachedResponse {
    pub fn get(&self, tid: TransactionId, now: Instant) -> Option<&[u8]> {
        let fresh = self
            .at
            .is_some_and(|at| now.saturating_duration_since(at) < RETRANSMIT_WINDOW);
        (self.tid == Some(tid) && fresh).then_some(&self.bytes[..])
    }

    pub fn store(&mut self, tid: TransactionId, now: Instant, bytes: &[u8]) {
        self.tid = Some(tid);
        self.at = Some(now);
        self.bytes.clear();
        self.bytes.extend_from_slice(bytes);
    }
}

impl Allocation {
    /// Charges `bytes` relayed at `now` to the allocation's and the user's bandwidth;
    /// `false` means the packet is over the limit and must be dropped. Free when unlimited.
    #[inline]
    pub fn charge(&mut self, epoch: Instant, now: Instant, bytes: usize) -> bool {
        if !self.bandwidth_limited() {
            return true;
        }
        let now_ns = super::limits::nanos_since(epoch, now);
        let own = self
            .bandwidth
            .as_mut()
            .is_none_or(|rate| rate.allow(now_ns, bytes));
        own && self
            .user_bandwidth
            .as_ref()
            .is_none_or(|rate| rate.allow(now_ns, bytes))
    }

    /// Live permissions.
    pub fn live_permissions(&self, now: Instant) -> usize {
        self.permissions.iter().filter(|p| now < p.expires).count()
    }

    /// Is there a live permission for `ip` (already canonical)?
    #[inline]
    pub fn permits(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions
            .iter()
            .any(|p| p.ip == ip && now < p.expires)
    }

    /// Installs or refreshes the permission for `ip`.
    pub fn permit(&mut self, ip: IpAddr, now: Instant) {
        let expires = now + PERMISSION_LIFETIME;
        match self.permissions.iter_mut().find(|p| p.ip == ip) {
            Some(p) => p.expires = expires,
            None => self.permissions.push(Permission { ip, expires }),
        }
    }

    /// The live channel bound to `number`.
    #[inline]
    pub fn channel(&self, number: u16, now: Instant) -> Option<&ChannelBinding> {
        self.channels
            .iter()
            .find(|c| c.number == number && c.active(now))
    }

    /// The number of the live channel bound to `peer`.
    #[inline]
    pub fn channel_for_peer(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.active(now))
            .map(|c| c.number)
    }

    /// Binds or refreshes `number` to `peer` (RFC 8656 §12.2): refused when the number is bound
    /// (or cooling down) for another peer, or the peer to another number.
    pub fn bind_channel(
        &mut self,
        number: u16,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<(), &'static str> {
        let in_use = |c: &&mut ChannelBinding| now < c.expires + CHANNEL_COOLDOWN;
        if let Some(c) = self
            .channels
            .iter_mut()
            .filter(in_use)
            .find(|c| c.number == number || c.peer == peer)
        {
            if c.number != number {
                return Err("peer is bound to another channel");
            }
            if c.peer != peer {
                return Err("channel is bound to another peer");
            }
            c.expires = now + CHANNEL_LIFETIME;
            return Ok(());
        }
        self.channels.retain(|c| now < c.expires + CHANNEL_COOLDOWN);
        self.channels.push(ChannelBinding {
            number,
            peer,
            expires: now + CHANNEL_LIFETIME,
        });
        Ok(())
    }

    /// Drops expired permissions and channels past their cool-down; returns the next deadline.
    pub fn expire(&mut self, now: Instant) -> Instant {
        self.permissions.retain(|p| now < p.expires);
        self.channels.retain(|c| now < c.expires + CHANNEL_COOLDOWN);
        self.next_deadline(now)
    }

    /// The channels the kernel may relay for this allocation at `now`: those the core itself
    /// relays (live binding, live permission for its peer) of a UDP client whose allocation
    /// has its relay socket and no bandwidth limit (a limited one stays in user space, where
    /// the limit is enforced).
    pub fn offloadable(&self, now: Instant) -> impl Iterator<Item = (u16, SocketAddr)> + '_ {
        let eligible = self.tuple.transport == super::Transport::Udp
            && self.relayed.is_some()
            && !self.bandwidth_limited();
        self.channels
            .iter()
            .filter(move |c| eligible && c.active(now) && self.permits(c.peer.ip(), now))
            .map(|c| (c.number, c.peer))
    }

    /// The earliest moment something in this allocation changes state.
    pub fn next_deadline(&self, now: Instant) -> Instant {
        let permissions = self.permissions.iter().map(|p| p.expires);
        let channels = self.channels.iter().map(|c| {
            if c.active(now) {
                c.expires
            } else {
                c.expires + CHANNEL_COOLDOWN
            }
        });
        let connections = self.tcp.as_ref().and_then(|tcp| tcp.next_deadline());
        permissions
            .chain(channels)
            .chain(connections)
            .fold(self.expires, |earliest, t| earliest.min(t))
    }
}
