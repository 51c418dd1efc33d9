//! The sans-IO TURN protocol core (RFC 8656 over RFC 8489): every protocol decision, no I/O.
//!
//! A [`Server`] is one worker's state. The I/O layer feeds it datagrams with the current time and
//! sends what it answers; it never reads the clock, awaits or touches a socket:
//!
//! - [`Server::handle_client`] for each message from a client (STUN or ChannelData);
//! - [`Server::handle_peer`] for each datagram arriving on a relay socket;
//! - [`Server::poll_event`] after either, until `None`: relay sockets to open or close;
//! - [`Server::handle_relay_opened`] once a relay socket asked for is open (or failed);
//! - [`Server::poll_timeout`] for when to call [`Server::handle_timeout`] next.

mod allocation;
mod error;
pub mod limits;
pub mod nonce;
pub mod policy;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{CredentialKind, CredentialStore, Key, Lookup, Principal};
use crate::config::Transport;
use crate::stun::{
    self, ChannelData, Class, Message, MessageWriter, Method, StunError, TransactionId, attr,
};

pub use allocation::{
    Allocation, AllocationId, CHANNEL_COOLDOWN, CHANNEL_LIFETIME, ChannelBinding,
    PERMISSION_LIFETIME, Permission, Traffic,
};
pub use error::RequestError;
pub use limits::{
    AllocationLedger, Alternate, ByteRate, ClusterView, Quota, QuotaError, ReflectionBudget,
    SharedByteRate, SourceLimiter,
};
pub use nonce::Nonces;
pub use policy::{HostAddresses, PeerPolicy};

use allocation::CachedResponse;

/// Bytes the I/O layer leaves free before a peer datagram in the buffer it passes to
/// [`Server::handle_peer`], so the ChannelData or Data indication header is written in place.
pub const PEER_HEADROOM: usize = 64;
/// Bytes the I/O layer leaves free after a peer datagram, for padding to a multiple of 4.
pub const PEER_TAILROOM: usize = 4;
/// The largest peer datagram relayed: its Data indication (up to 36 bytes of headers) or its
/// ChannelData frame must fit in one UDP datagram to the client. Larger ones are dropped and
/// counted in [`Stats::dropped_too_large`].
pub const MAX_PEER_PAYLOAD: usize = 65_000;

/// The largest STUN request (any method, known or not) the core looks at; a larger one is
/// counted as malformed and dropped unanswered before it is even parsed. Send indications,
/// which carry relayed data, keep the full 64 KB.
///
/// RFC 8489 §6.1 asks that a STUN message over UDP fit the path MTU, and when that is unknown
/// the smaller of 576 bytes and the first-hop MTU for IPv4, 1280 bytes for IPv6; §6.2 gives
/// TCP and TLS no more reason to be large. The largest legitimate request carries USERNAME
/// (≤ 513 bytes), SOFTWARE (≤ 763), this server's own REALM and NONCE, MESSAGE-INTEGRITY,
/// FINGERPRINT and a few small attributes, or in a CreatePermission up to 64 IPv6 peers of
/// 24 bytes (more new ones than the default `permissions-per-allocation` get 508 anyway):
/// under 3 KB, so 4096 leaves room. It also keeps the cost of an unauthenticated request
/// small and fixed, which the per-source rate limit assumes (it charges answers, not work).
pub const MAX_REQUEST_LEN: usize = 4096;

/// The transport-level identity of a client: transport, client address, server address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub transport: Transport,
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// Address family of a relayed transport address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(addr: &SocketAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// An unguessable token naming a relay port held back by an EVEN-PORT request (RFC 8656 §14.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReservationToken(pub [u8; 8]);

/// Which port the I/O layer should bind a relay socket to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRequest {
    /// Any free port in the range.
    Any,
    /// An even port.
    Even,
    /// An even port P, and hold P+1 under the token for a later Allocate.
    EvenReserveNext(ReservationToken),
    /// The port held under this token.
    Reserved(ReservationToken),
}

/// Something the I/O layer must do, from [`Server::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Open a UDP relay socket for `allocation`, then call [`Server::handle_relay_opened`].
    OpenRelay {
        allocation: AllocationId,
        family: Family,
        port: PortRequest,
    },
    /// The allocation has ended: close its relay socket.
    CloseRelay { allocation: AllocationId },
    /// Ask the cluster for one of `user`'s at most `limit` allocation leases, then call
    /// [`Server::handle_lease`]. The Allocate waits meanwhile; relaying never does.
    AcquireLease {
        allocation: AllocationId,
        user: Principal,
        limit: u32,
    },
    /// An allocation that held a lease has ended: give it back.
    ReleaseLease {
        allocation: AllocationId,
        user: Principal,
    },
    /// An allocation that was granted has ended (for the log line). Comes after the
    /// [`Event::Unoffload`]s of its channels, so the kernel's counts can be added to it first.
    Ended(Box<Ended>),
    /// The core relays `channel` of `allocation` to `peer` and would go on doing so: the
    /// kernel may relay it too (both directions). Only with [`CoreConfig::offload`], for UDP
    /// clients without a bandwidth limit. Sent when the channel becomes relayable (bound,
    /// its permission created or refreshed again).
    Offload {
        allocation: AllocationId,
        channel: u16,
        client: FiveTuple,
        peer: SocketAddr,
    },
    /// The core no longer relays what an [`Event::Offload`] announced (the channel or its
    /// permission expired, the policy now refuses the peer, a bandwidth limit now applies, the
    /// allocation ended for any reason): the kernel must stop at once.
    Unoffload {
        allocation: AllocationId,
        channel: u16,
        client: FiveTuple,
        peer: SocketAddr,
    },
}

/// Why an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its lifetime ran out.
    Expired,
    /// Refresh with LIFETIME 0.
    Deleted,
    /// Its TCP/TLS connection closed.
    ConnectionClosed,
    /// Its credentials were revoked, or its user disabled or removed.
    Revoked,
    /// An operator closed it.
    ClosedByOperator,
    /// It never got going (no relay port, lease refused).
    Failed,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Deleted => "deleted",
            EndReason::ConnectionClosed => "connection closed",
            EndReason::Revoked => "revoked",
            EndReason::ClosedByOperator => "closed by operator",
            EndReason::Failed => "failed",
        }
    }
}

/// What is left to say about an allocation that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub allocation: AllocationId,
    pub username: Box<str>,
    pub tuple: FiveTuple,
    pub relayed: SocketAddr,
    pub created: Instant,
    pub traffic: Traffic,
    pub reason: EndReason,
}

/// Why the I/O layer could not open a relay socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOpenError {
    /// No free port in the range (or none that satisfies EVEN-PORT).
    NoPort,
    /// The reservation token is unknown or has expired.
    BadToken,
}

/// What to do with a client's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Nothing to send.
    None,
    /// Send the first `n` bytes of `out` back to the client on the same 5-tuple.
    Reply(usize),
    /// Send `data[payload]` from the allocation's relay socket to `peer`.
    Relay {
        allocation: AllocationId,
        peer: SocketAddr,
        payload: Range<usize>,
    },
}

/// What to do with a peer's datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAction {
    /// Drop it.
    None,
    /// Send `buf[frame]` to the client on `to`.
    Forward { to: FiveTuple, frame: Range<usize> },
}

/// Settings of the core, taken from the configuration.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub realm: String,
    /// Empty: no SOFTWARE attribute.
    pub software: String,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    /// Advertised in XOR-RELAYED-ADDRESS instead of the bound IPv4 address (1:1 NAT).
    pub public_v4: Option<Ipv4Addr>,
    /// Whether IPv4 and IPv6 relay addresses exist.
    pub relay_v4: bool,
    pub relay_v6: bool,
    /// Relayed bits per second per allocation, both directions together.
    pub allocation_bandwidth: Option<u64>,
    /// Default quotas (`[limits]`); the credential store may override them per user.
    pub quota: Quota,
    /// Count user quotas across the cluster (leases in Redis), not only on this node.
    pub cluster_leases: bool,
    /// Live permissions one allocation may hold; beyond: 508.
    pub permissions_per_allocation: u32,
    /// Channel bindings (live or cooling down) one allocation may hold; beyond: 508.
    pub channels_per_allocation: u32,
    /// A wall-clock reading (seconds since the Unix epoch) taken at `epoch`: REST API usernames
    /// carry Unix times, and the core learns the wall clock only from `now` and this pair.
    pub epoch: Instant,
    pub unix_at_epoch: u64,
    /// Announce relayable channels with [`Event::Offload`] (the kernel fast path is active).
    pub offload: bool,
}

/// Plain counters; the I/O layer sums them over workers when asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub binding_requests: u64,
    pub allocations_created: u64,
    pub allocations_expired: u64,
    pub allocations_deleted: u64,
    pub error_responses: u64,
    pub auth_failures: u64,
    pub stale_nonces: u64,
    pub malformed: u64,
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    pub dropped_no_allocation: u64,
    pub dropped_no_permission: u64,
    pub dropped_policy: u64,
    pub dropped_bandwidth: u64,
    /// Peer datagrams too large to relay: over 65,000 bytes, the most a Data indication or a
    /// ChannelData frame to the client can carry.
    pub dropped_too_large: u64,
    /// Requests without valid credentials over UDP left unanswered: their source had used its
    /// reflection budget (`unauthenticated-rate`, `unauthenticated-burst`).
    pub rate_limited: u64,
    /// The same, because the node had answered as many unproven sources as
    /// `unauthenticated-node-rate` allows.
    pub rate_limited_node: u64,
    /// 486 answers.
    pub quota_rejected: u64,
    /// 508 answers.
    pub capacity_rejected: u64,
    /// Responses sent, by method ([`RESPONSE_METHODS`]) and code ([`RESPONSE_CODES`]).
    pub responses: [[u64; RESPONSE_CODES.len()]; RESPONSE_METHODS.len()],
}

/// Methods the response counters distinguish (the last row is any other method).
pub const RESPONSE_METHODS: [&str; 6] = [
    "binding",
    "allocate",
    "refresh",
    "create_permission",
    "channel_bind",
    "other",
];
/// Codes the response counters distinguish (200 is success; the last column is any other).
pub const RESPONSE_CODES: [u16; 17] = [
    200, 300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 500, 508, 0, 0,
];

fn response_slot(method: Method, code: u16) -> (usize, usize) {
    let row = match method {
        Method::BINDING => 0,
        Method::ALLOCATE => 1,
        Method::REFRESH => 2,
        Method::CREATE_PERMISSION => 3,
        Method::CHANNEL_BIND => 4,
        _ => 5,
    };
    let column = RESPONSE_CODES[..15]
        .iter()
        .position(|&c| c == code)
        .unwrap_or(15);
    (row, column)
}

impl Stats {
    /// Adds `other`'s counts to these (summing workers).
    pub fn add(&mut self, other: &Stats) {
        for (mine, theirs) in self.responses.iter_mut().zip(&other.responses) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        self.binding_requests += other.binding_requests;
        self.allocations_created += other.allocations_created;
        self.allocations_expired += other.allocations_expired;
        self.allocations_deleted += other.allocations_deleted;
        self.error_responses += other.error_responses;
        self.auth_failures += other.auth_failures;
        self.stale_nonces += other.stale_nonces;
        self.malformed += other.malformed;
        self.to_peer_packets += other.to_peer_packets;
        self.to_peer_bytes += other.to_peer_bytes;
        self.to_client_packets += other.to_client_packets;
        self.to_client_bytes += other.to_client_bytes;
        self.dropped_no_allocation += other.dropped_no_allocation;
        self.dropped_no_permission += other.dropped_no_permission;
        self.dropped_policy += other.dropped_policy;
        self.dropped_bandwidth += other.dropped_bandwidth;
        self.dropped_too_large += other.dropped_too_large;
        self.rate_limited += other.rate_limited;
        self.rate_limited_node += other.rate_limited_node;
        self.quota_rejected += other.quota_rejected;
        self.capacity_rejected += other.capacity_rejected;
    }
}

/// State the workers of one node share: the allocation ledger and the table of
/// unauthenticated sources. Neither is touched by relayed packets.
pub struct NodeLimits {
    pub ledger: AllocationLedger,
    pub sources: SourceLimiter,
    /// Other live nodes, for 300 Try Alternate.
    pub cluster: ClusterView,
    /// Draining: no new allocations (300 to another node, else 403); existing ones go on.
    pub draining: std::sync::atomic::AtomicBool,
}

struct Slot {
    generation: u32,
    allocation: Option<Allocation>,
}

/// What authentication established about a request.
struct Authenticated {
    key: Key,
    kind: CredentialKind,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One worker's TURN server state.
pub struct Server {
    config: CoreConfig,
    credentials: Arc<dyn CredentialStore>,
    policy: PeerPolicy,
    nonces: Nonces,
    token_key: [u8; 32],
    token_counter: u64,
    indications: u64,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    by_tuple: FastMap<FiveTuple, AllocationId>,
    node: Arc<NodeLimits>,
    timers: BTreeSet<(Instant, AllocationId)>,
    events: VecDeque<Event>,
    /// A deadline was filed since [`Server::take_new_deadline`] was last asked.
    new_deadline: bool,
    stats: Stats,
}

impl Server {
    /// A core with no allocations. `secret` keys reservation tokens; `nonces` (same key and
    /// epoch) and `node` are shared by all workers of a node.
    pub fn new(
        config: CoreConfig,
        credentials: Arc<dyn CredentialStore>,
        policy: PeerPolicy,
        nonces: Nonces,
        node: Arc<NodeLimits>,
        secret: [u8; 32],
    ) -> Self {
        Server {
            config,
            credentials,
            policy,
            nonces,
            token_key: secret,
            token_counter: 0,
            indications: 0,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_tuple: FastMap::default(),
            node,
            timers: BTreeSet::new(),
            events: VecDeque::new(),
            new_deadline: false,
            stats: Stats::default(),
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Counts input the I/O layer could not even frame (garbage on a TCP/TLS stream).
    pub fn record_malformed(&mut self) {
        self.stats.malformed += 1;
    }

    /// Number of live allocations.
    pub fn allocation_count(&self) -> usize {
        self.by_tuple.len()
    }

    /// The allocation with this id, if it is still alive.
    pub fn allocation(&self, id: AllocationId) -> Option<&Allocation> {
        self.slots
            .get(id.index())
            .filter(|slot| slot.generation == id.generation)
            .and_then(|slot| slot.allocation.as_ref())
    }

    /// Takes a reloaded configuration: settings, peer policy, nonce lifetime. Allocations go
    /// on; a changed per-allocation bandwidth cap applies to them at once, and so does the
    /// policy: see [`Server::set_host_addresses`] for what it ends. Returns how many
    /// permissions and channel bindings it ended.
    pub fn reconfigure(
        &mut self,
        now: Instant,
        config: CoreConfig,
        policy: PeerPolicy,
        nonces: Nonces,
    ) -> usize {
        let bandwidth_changed = config.allocation_bandwidth != self.config.allocation_bandwidth;
        self.config = config;
        self.policy = policy;
        self.nonces = nonces;
        if bandwidth_changed {
            let bandwidth = self.config.allocation_bandwidth;
            for slot in &mut self.slots {
                if let Some(allocation) = slot.allocation.as_mut() {
                    allocation.bandwidth = bandwidth.map(ByteRate::new);
                }
            }
        }
        let ended = self.end_refused_peers(now);
        self.sync_all_offloads(now);
        ended
    }

    /// Takes the addresses of this host's interfaces as the I/O layer enumerated them (they
    /// change while the server runs): a peer on one of them at the port of a wildcard listener
    /// is the server itself. Permissions and channel bindings the policy now refuses end at
    /// once (a channel's number and peer then cool down as after an expiry), so a binding made
    /// before an address appeared cannot relay into the server. Returns how many ended.
    /// Control path: walks the allocations.
    pub fn set_host_addresses(&mut self, now: Instant, host: HostAddresses) -> usize {
        self.policy.set_host_addresses(host);
        let ended = self.end_refused_peers(now);
        self.sync_all_offloads(now);
        ended
    }

    /// Ends the live permissions and channel bindings the current policy refuses.
    fn end_refused_peers(&mut self, now: Instant) -> usize {
        let policy = &self.policy;
        let mut ended = 0;
        let mut touched = Vec::new();
        for allocation in self.slots.iter_mut().filter_map(|s| s.allocation.as_mut()) {
            let before = ended;
            for permission in &mut allocation.permissions {
                if now < permission.expires && !policy.permits_ip(permission.ip) {
                    permission.expires = now;
                    ended += 1;
                }
            }
            for channel in &mut allocation.channels {
                if now < channel.expires && !policy.permits_peer(channel.peer) {
                    channel.expires = now;
                    ended += 1;
                }
            }
            if ended > before {
                touched.push(allocation.id);
            }
        }
        for id in touched {
            self.reschedule(id, now);
        }
        ended
    }

    /// Every live allocation (for status snapshots; control path).
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.slots
            .iter()
            .filter_map(|slot| slot.allocation.as_ref())
    }

    /// The wall-clock time (unix seconds) of an instant.
    pub fn unix_time_of(&self, at: Instant) -> u64 {
        self.unix_time(at)
    }

    /// Adds traffic the kernel fast path relayed for `allocation` (from its counters) to the
    /// core's counters, and to the allocation's while it lives (`None`: it has ended, and the
    /// I/O layer adds it to the [`Ended`] itself).
    pub fn credit_offloaded(&mut self, allocation: Option<AllocationId>, traffic: Traffic) {
        self.stats.to_peer_packets += traffic.to_peer_packets;
        self.stats.to_peer_bytes += traffic.to_peer_bytes;
        self.stats.to_client_packets += traffic.to_client_packets;
        self.stats.to_client_bytes += traffic.to_client_bytes;
        if let Some(alloc) = allocation.and_then(|id| self.allocation_mut(id)) {
            alloc.traffic.to_peer_packets += traffic.to_peer_packets;
            alloc.traffic.to_peer_bytes += traffic.to_peer_bytes;
            alloc.traffic.to_client_packets += traffic.to_client_packets;
            alloc.traffic.to_client_bytes += traffic.to_client_bytes;
        }
    }

    /// Ends an allocation now (an operator's request); `false` if it was already gone.
    pub fn close(&mut self, id: AllocationId) -> bool {
        if self.allocation(id).is_none() {
            return false;
        }
        self.remove_allocation(id, EndReason::ClosedByOperator);
        true
    }

    /// The allocation of a 5-tuple.
    pub fn allocation_of(&self, tuple: &FiveTuple) -> Option<&Allocation> {
        self.by_tuple.get(tuple).and_then(|id| self.allocation(*id))
    }

    /// Next thing for the I/O layer to do; call after every `handle_*` until `None`.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether a deadline was filed since the last call (so [`Server::poll_timeout`] may now be
    /// earlier); a relayed packet never files one, so the I/O layer asks this instead of
    /// comparing deadlines around every packet.
    pub fn take_new_deadline(&mut self) -> bool {
        std::mem::take(&mut self.new_deadline)
    }

    /// When [`Server::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Expires what is due at `now`: allocations, permissions, channel bindings.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(allocation) = self.allocation_mut(id) else {
                continue;
            };
            if allocation.wake != at {
                continue;
            }
            if allocation.expires <= now {
                self.remove_allocation(id, EndReason::Expired);
                continue;
            }
            let next = allocation.expire(now);
            allocation.wake = next;
            self.timers.insert((next, id));
            self.sync_offloads(id, now);
        }
    }

    /// Handles one message from a client: a STUN message or a ChannelData frame (on stream
    /// transports, exactly one frame as delimited by [`stun::frame_len`]). Replies are written to
    /// `out`, which must hold at least 1500 bytes. A request over [`MAX_REQUEST_LEN`] bytes and
    /// a message that does not parse (more than [`stun::MAX_ATTRIBUTES`] attributes, say) are
    /// counted as malformed and dropped; whatever the input, the work is linear in its size.
    pub fn handle_client(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        data: &[u8],
        out: &mut [u8],
    ) -> ClientAction {
        match data.first() {
            Some(0x40..=0x7f) => self.handle_channel_data(now, &tuple, data),
            Some(0x00..=0x3f)
                if data.len() > MAX_REQUEST_LEN
                    && stun::message_class(data) == Some(Class::Request) =>
            {
                self.stats.malformed += 1;
                ClientAction::None
            }
            Some(0x00..=0x3f) => match Message::parse(data) {
                Ok(msg) => self.handle_message(now, &tuple, &msg, data, out),
                Err(_) => {
                    self.stats.malformed += 1;
                    ClientAction::None
                }
            },
            _ => {
                self.stats.malformed += 1;
                ClientAction::None
            }
        }
    }

    /// Handles a datagram from `peer` on the relay socket of `allocation`. The datagram is
    /// `buf[payload]`, with at least [`PEER_HEADROOM`] bytes before it and [`PEER_TAILROOM`]
    /// after it, where the frame for the client is built in place.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        peer: SocketAddr,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> PeerAction {
        let peer = canonical_addr(peer);
        let len = payload.len();
        if payload.start < PEER_HEADROOM || buf.len() < payload.end + PEER_TAILROOM {
            // The caller's buffer breaks the contract: not a packet's fault, nothing to count.
            return PeerAction::None;
        }
        if len > MAX_PEER_PAYLOAD {
            self.stats.dropped_too_large += 1;
            return PeerAction::None;
        }
        let epoch = self.config.epoch;
        self.indications = self.indications.wrapping_add(1);
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&self.token_key[..4]);
        tid[4..].copy_from_slice(&self.indications.to_be_bytes());
        let Some(alloc) = self.allocation_mut(allocation) else {
            self.stats.dropped_no_allocation += 1;
            return PeerAction::None;
        };
        if !alloc.permits(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return PeerAction::None;
        }
        if !alloc.charge(epoch, now, len) {
            self.stats.dropped_bandwidth += 1;
            return PeerAction::None;
        }
        let to = alloc.tuple;
        let stream = to.transport != Transport::Udp;

        let frame = match alloc.channel_for_peer(peer, now) {
            Some(number) => {
                let start = payload.start - 4;
                // The length was checked against MAX_PEER_PAYLOAD above.
                if stun::write_channel_data_header(&mut buf[start..], number, len as u16).is_err() {
                    return PeerAction::None;
                }
                let mut end = payload.end;
                if stream {
                    let padded = (len + 3) & !3;
                    buf[end..payload.start + padded].fill(0);
                    end = payload.start + padded;
                }
                start..end
            }
            None => match write_data_indication(buf, payload.clone(), peer, TransactionId(tid)) {
                Some(frame) => frame,
                None => return PeerAction::None,
            },
        };
        alloc.traffic.to_client_packets += 1;
        alloc.traffic.to_client_bytes += len as u64;
        self.stats.to_client_packets += 1;
        self.stats.to_client_bytes += len as u64;
        PeerAction::Forward { to, frame }
    }

    /// The I/O layer opened (or failed to open) the relay socket asked for by
    /// [`Event::OpenRelay`]. Returns the Allocate response, written to `out`, and where to send it.
    pub fn handle_relay_opened(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        result: Result<SocketAddr, RelayOpenError>,
        out: &mut [u8],
    ) -> Option<(FiveTuple, usize)> {
        let alloc = self.allocation_mut(allocation)?;
        let tuple = alloc.tuple;
        let tid = alloc.last_response.tid?;
        let key = alloc.key;
        let relayed = match result {
            Ok(addr) => addr,
            Err(error) => {
                self.remove_allocation(allocation, EndReason::Failed);
                self.events
                    .retain(|e| *e != Event::CloseRelay { allocation });
                // Out of ports: another node may have some.
                let refusal = match (error, self.node.cluster.pick(tuple.transport, tuple.server)) {
                    (RelayOpenError::NoPort, Some(alternate)) => {
                        RequestError::TryAlternate(alternate)
                    }
                    _ => RequestError::InsufficientCapacity,
                };
                let n = self.write_error(out, Method::ALLOCATE, tid, refusal, Some(&key));
                return Some((tuple, n));
            }
        };
        alloc.relayed = Some(relayed);
        let lifetime = alloc.expires.saturating_duration_since(now);
        let token = alloc.reservation;
        let advertised = self.advertised(relayed);
        let n = write_response(
            out,
            Method::ALLOCATE,
            tid,
            &self.config.software,
            &key,
            |w| {
                w.xor_address(attr::XOR_RELAYED_ADDRESS, advertised)?;
                w.u32(attr::LIFETIME, lifetime.as_secs() as u32)?;
                if let Some(token) = token {
                    w.attribute(attr::RESERVATION_TOKEN, &token.0)?;
                }
                w.xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client)
            },
        )
        .unwrap_or(0);
        self.stats.allocations_created += 1;
        self.count_response(Method::ALLOCATE, 200);
        // The allocation was just looked up, so it is there.
        let alloc = self.allocation_mut(allocation)?;
        alloc.last_response.store(tid, now, &out[..n]);
        (n > 0).then_some((tuple, n))
    }

    /// Ends every allocation made with one of the usernames `names` (a revoked REST username,
    /// a disabled or removed long-term user); returns how many. A REST id is not a long-term
    /// user name: disabling the user `alice` leaves `1700000000:alice` alone. Control path:
    /// walks the allocations.
    pub fn revoke(&mut self, names: &[String]) -> usize {
        let doomed: Vec<AllocationId> = self
            .slots
            .iter()
            .filter_map(|slot| slot.allocation.as_ref())
            .filter(|a| names.iter().any(|name| **name == *a.username))
            .map(|a| a.id)
            .collect();
        for &id in &doomed {
            self.remove_allocation(id, EndReason::Revoked);
        }
        doomed.len()
    }

    /// The cluster granted (or refused) the lease asked for by [`Event::AcquireLease`]. When
    /// granted the allocation goes on to [`Event::OpenRelay`]; when refused the Allocate is
    /// answered with 486, written to `out`, and where to send it is returned.
    pub fn handle_lease(
        &mut self,
        allocation: AllocationId,
        granted: bool,
        out: &mut [u8],
    ) -> Option<(FiveTuple, usize)> {
        let alloc = self.allocation_mut(allocation)?;
        let (family, port) = alloc.pending_open.take()?;
        if granted {
            alloc.leased = true;
            self.events.push_back(Event::OpenRelay {
                allocation,
                family,
                port,
            });
            return None;
        }
        let tuple = alloc.tuple;
        let tid = alloc.last_response.tid?;
        let key = alloc.key;
        self.remove_allocation(allocation, EndReason::Failed);
        self.events
            .retain(|e| *e != Event::CloseRelay { allocation });
        let n = self.write_error(
            out,
            Method::ALLOCATE,
            tid,
            RequestError::AllocationQuotaReached,
            Some(&key),
        );
        Some((tuple, n))
    }

    /// A client's stream connection closed: its allocation (if any) ends now.
    pub fn handle_connection_closed(&mut self, tuple: &FiveTuple) {
        if let Some(&id) = self.by_tuple.get(tuple) {
            self.remove_allocation(id, EndReason::ConnectionClosed);
        }
    }

    fn advertised(&self, relayed: SocketAddr) -> SocketAddr {
        match (relayed, self.config.public_v4) {
            (SocketAddr::V4(_), Some(public)) => SocketAddr::new(public.into(), relayed.port()),
            _ => relayed,
        }
    }

    fn allocation_mut(&mut self, id: AllocationId) -> Option<&mut Allocation> {
        self.slots
            .get_mut(id.index())
            .filter(|slot| slot.generation == id.generation)
            .and_then(|slot| slot.allocation.as_mut())
    }

    fn handle_channel_data(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        data: &[u8],
    ) -> ClientAction {
        let Ok(frame) = ChannelData::parse(data) else {
            self.stats.malformed += 1;
            return ClientAction::None;
        };
        let epoch = self.config.epoch;
        let Some(&id) = self.by_tuple.get(tuple) else {
            self.stats.dropped_no_allocation += 1;
            return ClientAction::None;
        };
        // `by_tuple` only holds live ids.
        let Some(alloc) = self.allocation_mut(id) else {
            return ClientAction::None;
        };
        let Some(peer) = alloc.channel(frame.number, now).map(|c| c.peer) else {
            self.stats.dropped_no_permission += 1;
            return ClientAction::None;
        };
        if !alloc.permits(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return ClientAction::None;
        }
        if !alloc.charge(epoch, now, frame.payload.len()) {
            self.stats.dropped_bandwidth += 1;
            return ClientAction::None;
        }
        let len = frame.payload.len() as u64;
        alloc.traffic.to_peer_packets += 1;
        alloc.traffic.to_peer_bytes += len;
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += len;
        ClientAction::Relay {
            allocation: id,
            peer,
            payload: 4..4 + frame.payload.len(),
        }
    }

    fn handle_message(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        data: &[u8],
        out: &mut [u8],
    ) -> ClientAction {
        match (msg.class(), msg.method()) {
            (Class::Indication, Method::SEND) => self.handle_send(now, tuple, msg, data),
            (Class::Request, Method::BINDING) => self.handle_binding(now, tuple, msg, out),
            (Class::Request, method) => {
                let reply = self.handle_turn_request(now, tuple, msg, out);
                // An allocation still waiting for its lease or relay socket keeps its
                // Allocate's transaction id in the cache: its answer goes out under that id.
                if let Some(id) = self.by_tuple.get(tuple).copied()
                    && method != Method::ALLOCATE
                    && let Some(alloc) = self.allocation_mut(id)
                    && alloc.relayed.is_some()
                    && let ClientAction::Reply(n) = reply
                {
                    alloc
                        .last_response
                        .store(msg.transaction_id(), now, &out[..n]);
                }
                reply
            }
            // Responses, and indications other than Send, are not for a server.
            _ => ClientAction::None,
        }
    }

    fn handle_binding(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> ClientAction {
        self.stats.binding_requests += 1;
        if !self.may_answer_unauthenticated(now, tuple) {
            return ClientAction::None;
        }
        let tid = msg.transaction_id();
        if msg.unknown_required(is_known_attribute).next().is_some() {
            return self.reply_unknown_attributes(msg, None, out);
        }
        let written = (|| {
            let mut w = MessageWriter::new(out, Method::BINDING, Class::Success, tid)?;
            w.xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client)?;
            w.fingerprint()?;
            Ok::<_, StunError>(w.finish())
        })();
        match written {
            Ok(n) => {
                self.count_response(Method::BINDING, 200);
                ClientAction::Reply(n)
            }
            Err(_) => ClientAction::None,
        }
    }

    fn handle_turn_request(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> ClientAction {
        let method = msg.method();
        let tid = msg.transaction_id();
        if !matches!(
            method,
            Method::ALLOCATE | Method::REFRESH | Method::CREATE_PERMISSION | Method::CHANNEL_BIND
        ) {
            if !self.may_answer_unauthenticated(now, tuple) {
                return ClientAction::None;
            }
            return self.reply_error(
                out,
                method,
                tid,
                RequestError::BadRequest("Unknown Method"),
                None,
            );
        }
        // A retransmitted Allocate still being worked on (lease, relay socket) waits for the
        // answer already on its way.
        if let Some(alloc) = self.by_tuple.get(tuple).and_then(|id| self.allocation(*id))
            && alloc.relayed.is_none()
            && alloc.last_response.tid == Some(tid)
        {
            return ClientAction::None;
        }
        // A retransmission of the last request on this allocation gets the same answer.
        if let Some(alloc) = self.by_tuple.get(tuple).and_then(|id| self.allocation(*id))
            && let Some(cached) = alloc.last_response.get(tid, now)
            && alloc.relayed.is_some()
        {
            let n = cached.len();
            if let Some(dst) = out.get_mut(..n) {
                dst.copy_from_slice(cached);
                return ClientAction::Reply(n);
            }
        }
        let auth = match self.authenticate(now, tuple, msg, out) {
            Ok(auth) => auth,
            Err(reply) => return reply,
        };
        if msg.unknown_required(is_known_attribute).next().is_some() {
            return self.reply_unknown_attributes(msg, Some(&auth.key), out);
        }
        let result = match method {
            Method::ALLOCATE => self.allocate(now, tuple, msg, &auth),
            Method::REFRESH => self.refresh(now, tuple, msg, &auth, out),
            Method::CREATE_PERMISSION => self.create_permission(now, tuple, msg, &auth, out),
            _ => self.channel_bind(now, tuple, msg, &auth, out),
        };
        match result {
            Ok(reply) => reply,
            Err(error) => self.reply_error(out, method, tid, error, Some(&auth.key)),
        }
    }

    /// The long-term credential mechanism (RFC 8489 §9.2.4), with stateless nonces.
    fn authenticate(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Result<Authenticated, ClientAction> {
        let method = msg.method();
        let tid = msg.transaction_id();
        if !msg.has_integrity() {
            return Err(self.reply_challenge(
                now,
                out,
                method,
                tid,
                tuple,
                RequestError::Unauthorized,
            ));
        }
        let text = |typ, max| msg.get(typ).map(|v| attr::decode_text(v, max));
        let (Some(Ok(username)), Some(Ok(realm)), Some(nonce)) = (
            text(attr::USERNAME, 513),
            text(attr::REALM, 763),
            msg.get(attr::NONCE),
        ) else {
            if !self.may_answer_unauthenticated(now, tuple) {
                return Err(ClientAction::None);
            }
            return Err(self.reply_error(
                out,
                method,
                tid,
                RequestError::BadRequest("Missing USERNAME, REALM or NONCE"),
                None,
            ));
        };
        if self.nonces.check(now, tuple.client.ip(), nonce).is_err() {
            self.stats.stale_nonces += 1;
            return Err(self.reply_challenge(
                now,
                out,
                method,
                tid,
                tuple,
                RequestError::StaleNonce,
            ));
        }
        let existing = self.allocation_of(tuple);
        if let Some(alloc) = existing
            && &*alloc.username == username
        {
            let now_unix = self.unix_time(now);
            let kind = alloc.principal.kind;
            let withdrawn = self.credentials.withdrawn(username, kind, now_unix);
            // An expired REST username authenticates no more requests (the allocation relays
            // on until its lifetime ends), except the one that deletes it early.
            let expired =
                alloc.rest_expiry.is_some_and(|expiry| expiry < now_unix) && !is_delete(msg);
            if !withdrawn && !expired && msg.check_integrity(&alloc.key).is_ok() {
                self.source_proven(now, tuple);
                return Ok(Authenticated {
                    key: alloc.key,
                    kind,
                });
            }
            self.stats.auth_failures += 1;
            return Err(self.reply_challenge(
                now,
                out,
                method,
                tid,
                tuple,
                RequestError::Unauthorized,
            ));
        }
        let mut found = None;
        let mut lookup = Lookup::Unknown;
        if realm == self.config.realm {
            let now_unix = self.unix_time(now);
            lookup = self
                .credentials
                .keys(username, realm, now_unix, &mut |key, kind| {
                    let ok = msg.check_integrity(key).is_ok();
                    if ok {
                        found = Some((*key, kind));
                    }
                    ok
                });
        }
        if found.is_none() && lookup == Lookup::Unavailable {
            // The credential store cannot be trusted now: refuse rather than allow.
            if !self.may_answer_unauthenticated(now, tuple) {
                return Err(ClientAction::None);
            }
            return Err(self.reply_error(out, method, tid, RequestError::ServerError, None));
        }
        let Some((key, kind)) = found else {
            // Unknown user, expired or too long-lived REST username, or wrong password: the
            // client learns nothing more than 401.
            self.stats.auth_failures += 1;
            return Err(self.reply_challenge(
                now,
                out,
                method,
                tid,
                tuple,
                RequestError::Unauthorized,
            ));
        };
        self.source_proven(now, tuple);
        if existing.is_some() {
            // Valid credentials, but not the ones this allocation was made with.
            return Err(self.reply_error(
                out,
                method,
                tid,
                RequestError::WrongCredentials,
                Some(&key),
            ));
        }
        Ok(Authenticated { key, kind })
    }

    fn allocate(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
    ) -> Result<ClientAction, RequestError> {
        if self.by_tuple.contains_key(tuple) {
            return Err(RequestError::AllocationMismatch);
        }
        if self
            .node
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(
                match self.node.cluster.pick(tuple.transport, tuple.server) {
                    Some(alternate) => RequestError::TryAlternate(alternate),
                    None => RequestError::Forbidden("Server is draining"),
                },
            );
        }
        let transport = msg
            .get(attr::REQUESTED_TRANSPORT)
            .ok_or(RequestError::BadRequest("Missing REQUESTED-TRANSPORT"))?;
        let transport = attr::decode_requested_transport(transport)
            .map_err(|_| RequestError::BadRequest("Malformed REQUESTED-TRANSPORT"))?;
        if transport != 17 {
            return Err(RequestError::UnsupportedTransport);
        }
        let token = msg.get(attr::RESERVATION_TOKEN);
        let even_port = msg.get(attr::EVEN_PORT);
        let family_attr = msg.get(attr::REQUESTED_ADDRESS_FAMILY);
        if token.is_some() && (even_port.is_some() || family_attr.is_some()) {
            return Err(RequestError::BadRequest(
                "RESERVATION-TOKEN with EVEN-PORT or REQUESTED-ADDRESS-FAMILY",
            ));
        }
        let family = match family_attr.map(attr::decode_address_family) {
            None => Family::V4,
            Some(Ok(0x01)) => Family::V4,
            Some(Ok(0x02)) => Family::V6,
            Some(Ok(_)) => return Err(RequestError::AddressFamilyNotSupported),
            Some(Err(_)) => {
                return Err(RequestError::BadRequest(
                    "Malformed REQUESTED-ADDRESS-FAMILY",
                ));
            }
        };
        let supported = match family {
            Family::V4 => self.config.relay_v4,
            Family::V6 => self.config.relay_v6,
        };
        if !supported {
            return Err(RequestError::AddressFamilyNotSupported);
        }
        let mut reservation = None;
        let port = match (token, even_port) {
            (Some(token), _) => {
                let token = attr::decode_reservation_token(token)
                    .map_err(|_| RequestError::BadRequest("Malformed RESERVATION-TOKEN"))?;
                PortRequest::Reserved(ReservationToken(token))
            }
            (None, Some(even)) => {
                let reserve = attr::decode_even_port(even)
                    .map_err(|_| RequestError::BadRequest("Malformed EVEN-PORT"))?;
                if reserve {
                    let token = self.new_token();
                    reservation = Some(token);
                    PortRequest::EvenReserveNext(token)
                } else {
                    PortRequest::Even
                }
            }
            (None, None) => PortRequest::Any,
        };
        let lifetime = self.lifetime(msg, false)?;
        let username = msg
            .get(attr::USERNAME)
            .and_then(|v| attr::decode_text(v, 513).ok())
            .unwrap_or_default();
        let user = Principal::new(auth.kind, username);
        let rest_expiry = match auth.kind {
            CredentialKind::Rest => crate::auth::parse_rest_username(username).map(|(e, _)| e),
            CredentialKind::LongTerm => None,
        };
        let overrides = self.credentials.limits(&user);
        let quota = Quota {
            user_allocations: overrides
                .allocations
                .unwrap_or(self.config.quota.user_allocations),
            total_allocations: self
                .credentials
                .total_allocations()
                .unwrap_or(self.config.quota.total_allocations),
            user_bandwidth: overrides.bandwidth.or(self.config.quota.user_bandwidth),
        };
        let user_bandwidth = match self.node.ledger.acquire(&user, quota) {
            Ok(bandwidth) => bandwidth,
            // The node is full: another node may not be.
            Err(QuotaError::Total) => {
                return Err(
                    match self.node.cluster.pick(tuple.transport, tuple.server) {
                        Some(alternate) => RequestError::TryAlternate(alternate),
                        None => RequestError::AllocationQuotaReached,
                    },
                );
            }
            Err(QuotaError::User) => return Err(RequestError::AllocationQuotaReached),
        };
        let lease_limit = quota.user_allocations;
        let allocation_bandwidth = overrides
            .allocation_bandwidth
            .or(self.config.allocation_bandwidth);
        let id = self.insert_allocation(Allocation {
            id: AllocationId {
                index: 0,
                generation: 0,
            },
            tuple: *tuple,
            username: username.into(),
            principal: user.clone(),
            rest_expiry,
            key: auth.key,
            relayed: None,
            created: now,
            expires: now + lifetime,
            permissions: Vec::new(),
            channels: Vec::new(),
            traffic: Traffic::default(),
            wake: now + lifetime,
            last_response: CachedResponse {
                tid: Some(msg.transaction_id()),
                ..CachedResponse::default()
            },
            reservation,
            bandwidth: allocation_bandwidth.map(ByteRate::new),
            user_bandwidth,
            pending_open: None,
            leased: false,
            offloaded: Vec::new(),
        });
        if self.config.cluster_leases && lease_limit > 0 {
            if let Some(alloc) = self.allocation_mut(id) {
                alloc.pending_open = Some((family, port));
            }
            self.events.push_back(Event::AcquireLease {
                allocation: id,
                user,
                limit: lease_limit,
            });
        } else {
            self.events.push_back(Event::OpenRelay {
                allocation: id,
                family,
                port,
            });
        }
        Ok(ClientAction::None)
    }

    fn refresh(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        out: &mut [u8],
    ) -> Result<ClientAction, RequestError> {
        let id = *self
            .by_tuple
            .get(tuple)
            .ok_or(RequestError::AllocationMismatch)?;
        let lifetime = self.lifetime(msg, true)?;
        let relayed_family = self
            .allocation(id)
            .and_then(|a| a.relayed)
            .map(|a| Family::of(&a));
        if let Some(family) = msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            let requested = match attr::decode_address_family(family) {
                Ok(0x01) => Family::V4,
                Ok(0x02) => Family::V6,
                _ => return Err(RequestError::PeerAddressFamilyMismatch),
            };
            if Some(requested) != relayed_family {
                return Err(RequestError::PeerAddressFamilyMismatch);
            }
        }
        if lifetime.is_zero() {
            self.remove_allocation(id, EndReason::Deleted);
        } else if let Some(alloc) = self.allocation_mut(id) {
            alloc.expires = now + lifetime;
            self.reschedule(id, now);
        }
        let n = write_response(
            out,
            Method::REFRESH,
            msg.transaction_id(),
            &self.config.software,
            &auth.key,
            |w| w.u32(attr::LIFETIME, lifetime.as_secs() as u32),
        )
        .map_err(|_| RequestError::ServerError)?;
        self.count_response(Method::REFRESH, 200);
        Ok(ClientAction::Reply(n))
    }

    fn create_permission(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        out: &mut [u8],
    ) -> Result<ClientAction, RequestError> {
        let (id, relayed) = self.relayed_allocation(tuple)?;
        let tid = msg.transaction_id();
        let mut peers = 0;
        for attribute in msg.attributes().filter(|a| a.typ == attr::XOR_PEER_ADDRESS) {
            let peer = attr::decode_xor_address(attribute.value, &tid)
                .map_err(|_| RequestError::BadRequest("Malformed XOR-PEER-ADDRESS"))?;
            self.check_peer(peer, relayed)?;
            peers += 1;
        }
        if peers == 0 {
            return Err(RequestError::BadRequest("Missing XOR-PEER-ADDRESS"));
        }
        self.check_permission_room(id, now, msg, &tid)?;
        if let Some(alloc) = self.allocation_mut(id) {
            for attribute in msg.attributes().filter(|a| a.typ == attr::XOR_PEER_ADDRESS) {
                if let Ok(peer) = attr::decode_xor_address(attribute.value, &tid) {
                    alloc.permit(canonical_addr(peer).ip(), now);
                }
            }
        }
        self.reschedule(id, now);
        self.sync_offloads(id, now);
        self.reply_success(out, Method::CREATE_PERMISSION, tid, &auth.key)
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        out: &mut [u8],
    ) -> Result<ClientAction, RequestError> {
        let (id, relayed) = self.relayed_allocation(tuple)?;
        let tid = msg.transaction_id();
        let number = msg
            .get(attr::CHANNEL_NUMBER)
            .ok_or(RequestError::BadRequest("Missing CHANNEL-NUMBER"))?;
        let number = attr::decode_channel_number(number)
            .map_err(|_| RequestError::BadRequest("Malformed CHANNEL-NUMBER"))?;
        if !stun::channel::is_valid_channel_number(number) {
            return Err(RequestError::BadRequest("Channel number out of range"));
        }
        let peer = msg
            .get(attr::XOR_PEER_ADDRESS)
            .ok_or(RequestError::BadRequest("Missing XOR-PEER-ADDRESS"))?;
        let peer = attr::decode_xor_address(peer, &tid)
            .map_err(|_| RequestError::BadRequest("Malformed XOR-PEER-ADDRESS"))?;
        self.check_peer(peer, relayed)?;
        let peer = canonical_addr(peer);
        let limits = (
            self.config.channels_per_allocation as usize,
            self.config.permissions_per_allocation as usize,
        );
        if let Some(alloc) = self.allocation(id) {
            let (max_channels, max_permissions) = limits;
            let new_channel = !alloc.channels.iter().any(|c| c.number == number);
            if new_channel && alloc.channels.len() >= max_channels {
                return Err(RequestError::InsufficientCapacity);
            }
            if !alloc.permits(peer.ip(), now) && alloc.live_permissions(now) >= max_permissions {
                return Err(RequestError::InsufficientCapacity);
            }
        }
        if let Some(alloc) = self.allocation_mut(id) {
            alloc
                .bind_channel(number, peer, now)
                .map_err(RequestError::BadRequest)?;
            alloc.permit(peer.ip(), now);
        }
        self.reschedule(id, now);
        self.sync_offloads(id, now);
        self.reply_success(out, Method::CHANNEL_BIND, tid, &auth.key)
    }

    fn handle_send(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        data: &[u8],
    ) -> ClientAction {
        let Some(&id) = self.by_tuple.get(tuple) else {
            self.stats.dropped_no_allocation += 1;
            return ClientAction::None;
        };
        let tid = msg.transaction_id();
        let (Some(peer), Some(payload)) = (msg.get(attr::XOR_PEER_ADDRESS), msg.get(attr::DATA))
        else {
            self.stats.malformed += 1;
            return ClientAction::None;
        };
        let Ok(peer) = attr::decode_xor_address(peer, &tid) else {
            self.stats.malformed += 1;
            return ClientAction::None;
        };
        let peer = canonical_addr(peer);
        if self.policy.is_own_socket(peer) || !self.policy.permits_ip(peer.ip()) {
            self.stats.dropped_policy += 1;
            return ClientAction::None;
        }
        let epoch = self.config.epoch;
        let Some(alloc) = self.allocation_mut(id) else {
            return ClientAction::None;
        };
        if alloc.relayed.is_none_or(|relayed| relayed == peer) || !alloc.permits(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return ClientAction::None;
        }
        if !alloc.charge(epoch, now, payload.len()) {
            self.stats.dropped_bandwidth += 1;
            return ClientAction::None;
        }
        // `payload` borrows from `data`, so the offset is in range.
        let start = payload.as_ptr() as usize - data.as_ptr() as usize;
        let len = payload.len() as u64;
        alloc.traffic.to_peer_packets += 1;
        alloc.traffic.to_peer_bytes += len;
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += len;
        ClientAction::Relay {
            allocation: id,
            peer,
            payload: start..start + payload.len(),
        }
    }

    /// 508 when the peers of a CreatePermission would take the allocation past its limit of
    /// permissions (refreshing a live one takes no room).
    fn check_permission_room(
        &self,
        id: AllocationId,
        now: Instant,
        msg: &Message<'_>,
        tid: &TransactionId,
    ) -> Result<(), RequestError> {
        let Some(alloc) = self.allocation(id) else {
            return Ok(());
        };
        let mut new_ips: [Option<IpAddr>; 16] = [None; 16];
        let mut new = 0usize;
        for attribute in msg.attributes().filter(|a| a.typ == attr::XOR_PEER_ADDRESS) {
            let Ok(peer) = attr::decode_xor_address(attribute.value, tid) else {
                continue;
            };
            let ip = canonical_addr(peer).ip();
            if alloc.permits(ip, now) || new_ips[..new.min(16)].contains(&Some(ip)) {
                continue;
            }
            if new < 16 {
                new_ips[new] = Some(ip);
            }
            new += 1;
        }
        let max = self.config.permissions_per_allocation as usize;
        if alloc.live_permissions(now) + new > max {
            return Err(RequestError::InsufficientCapacity);
        }
        Ok(())
    }

    /// The allocation of `tuple` and its relayed address; 437 when there is none.
    fn relayed_allocation(
        &self,
        tuple: &FiveTuple,
    ) -> Result<(AllocationId, SocketAddr), RequestError> {
        let id = *self
            .by_tuple
            .get(tuple)
            .ok_or(RequestError::AllocationMismatch)?;
        let relayed = self
            .allocation(id)
            .and_then(|a| a.relayed)
            .ok_or(RequestError::AllocationMismatch)?;
        Ok((id, relayed))
    }

    /// A signed success response without attributes of its own.
    fn reply_success(
        &mut self,
        out: &mut [u8],
        method: Method,
        tid: TransactionId,
        key: &Key,
    ) -> Result<ClientAction, RequestError> {
        let n = write_response(out, method, tid, &self.config.software, key, |_| Ok(()))
            .map_err(|_| RequestError::ServerError)?;
        self.count_response(method, 200);
        Ok(ClientAction::Reply(n))
    }

    /// May the allocation relayed on `relayed` talk to `peer`? Policy first (403 whatever the
    /// family), then the family (443), both on the canonical form of the address.
    fn check_peer(&self, peer: SocketAddr, relayed: SocketAddr) -> Result<(), RequestError> {
        let canonical = canonical_addr(peer);
        if !self.policy.permits_ip(canonical.ip()) {
            return Err(RequestError::Forbidden("Peer address not allowed"));
        }
        if self.policy.is_own_socket(canonical)
            || canonical == relayed
            || canonical == self.advertised(relayed)
        {
            return Err(RequestError::Forbidden("Peer is this server"));
        }
        // An IPv4-in-IPv6 form names an IPv4 peer, which an IPv4 relay reaches directly.
        if Family::of(&canonical) != Family::of(&relayed) {
            return Err(RequestError::PeerAddressFamilyMismatch);
        }
        Ok(())
    }

    /// The lifetime a request asks for, clamped (RFC 8656 §7.2): at least the default, at most
    /// the maximum; zero only for a Refresh that deletes.
    fn lifetime(&self, msg: &Message<'_>, refresh: bool) -> Result<Duration, RequestError> {
        let requested = match msg.get(attr::LIFETIME) {
            Some(v) => Some(
                attr::decode_u32(v).map_err(|_| RequestError::BadRequest("Malformed LIFETIME"))?,
            ),
            None => None,
        };
        Ok(match requested {
            Some(0) if refresh => Duration::ZERO,
            Some(secs) => Duration::from_secs(secs.into())
                .min(self.config.max_lifetime)
                .max(self.config.default_lifetime),
            None => self.config.default_lifetime,
        })
    }

    fn unix_time(&self, now: Instant) -> u64 {
        self.config.unix_at_epoch + now.saturating_duration_since(self.config.epoch).as_secs()
    }

    fn new_token(&mut self) -> ReservationToken {
        self.token_counter += 1;
        let mac = stun::hmac_sha1(&self.token_key, &[&self.token_counter.to_be_bytes()]);
        let mut token = [0u8; 8];
        token.copy_from_slice(&mac[..8]);
        ReservationToken(token)
    }

    fn insert_allocation(&mut self, mut allocation: Allocation) -> AllocationId {
        let index = match self.free_slots.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    allocation: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        let id = AllocationId {
            index,
            generation: slot.generation,
        };
        allocation.id = id;
        self.timers.insert((allocation.wake, id));
        self.new_deadline = true;
        self.by_tuple.insert(allocation.tuple, id);
        slot.allocation = Some(allocation);
        id
    }

    fn remove_allocation(&mut self, id: AllocationId, reason: EndReason) {
        let Some(slot) = self
            .slots
            .get_mut(id.index())
            .filter(|slot| slot.generation == id.generation)
        else {
            return;
        };
        let Some(allocation) = slot.allocation.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.timers.remove(&(allocation.wake, id));
        self.by_tuple.remove(&allocation.tuple);
        self.node.ledger.release(&allocation.principal);
        if allocation.leased {
            self.events.push_back(Event::ReleaseLease {
                allocation: id,
                user: allocation.principal,
            });
        }
        self.free_slots.push(id.index);
        for &(channel, peer) in &allocation.offloaded {
            self.events.push_back(Event::Unoffload {
                allocation: id,
                channel,
                client: allocation.tuple,
                peer,
            });
        }
        if let Some(relayed) = allocation.relayed {
            // Only an allocation that was granted (and counted as created) counts as ended: one
            // still waiting for its lease or relay socket was never created.
            match reason {
                EndReason::Expired => self.stats.allocations_expired += 1,
                EndReason::Failed => {}
                _ => self.stats.allocations_deleted += 1,
            }
            self.events.push_back(Event::Ended(Box::new(Ended {
                allocation: id,
                username: allocation.username,
                tuple: allocation.tuple,
                relayed,
                created: allocation.created,
                traffic: allocation.traffic,
                reason,
            })));
        }
        self.events.push_back(Event::CloseRelay { allocation: id });
    }

    /// Tells the I/O layer which of the allocation's channels the kernel may relay now and
    /// which it must stop relaying: the difference between what it was told and
    /// [`Allocation::offloadable`]. Nothing without [`CoreConfig::offload`].
    fn sync_offloads(&mut self, id: AllocationId, now: Instant) {
        if !self.config.offload {
            return;
        }
        let Some(alloc) = self
            .slots
            .get_mut(id.index())
            .filter(|slot| slot.generation == id.generation)
            .and_then(|slot| slot.allocation.as_mut())
        else {
            return;
        };
        let client = alloc.tuple;
        let wanted: Vec<(u16, SocketAddr)> = alloc.offloadable(now).collect();
        let events = &mut self.events;
        alloc.offloaded.retain(|&(channel, peer)| {
            let keep = wanted.contains(&(channel, peer));
            if !keep {
                events.push_back(Event::Unoffload {
                    allocation: id,
                    channel,
                    client,
                    peer,
                });
            }
            keep
        });
        for (channel, peer) in wanted {
            if !alloc.offloaded.contains(&(channel, peer)) {
                alloc.offloaded.push((channel, peer));
                events.push_back(Event::Offload {
                    allocation: id,
                    channel,
                    client,
                    peer,
                });
            }
        }
    }

    /// [`Server::sync_offloads`] for every allocation (after a reload or a change of the
    /// host's addresses; control path).
    fn sync_all_offloads(&mut self, now: Instant) {
        if !self.config.offload {
            return;
        }
        let ids: Vec<AllocationId> = self.allocations().map(|a| a.id).collect();
        for id in ids {
            self.sync_offloads(id, now);
        }
    }

    /// Files the allocation under its (possibly earlier) next deadline.
    fn reschedule(&mut self, id: AllocationId, now: Instant) {
        let Some(alloc) = self.allocation_mut(id) else {
            return;
        };
        let next = alloc.next_deadline(now);
        let old = std::mem::replace(&mut alloc.wake, next);
        if old != next {
            self.timers.remove(&(old, id));
            self.timers.insert((next, id));
            self.new_deadline = true;
        }
    }

    fn reply_error(
        &mut self,
        out: &mut [u8],
        method: Method,
        tid: TransactionId,
        error: RequestError,
        key: Option<&Key>,
    ) -> ClientAction {
        match self.write_error(out, method, tid, error, key) {
            0 => ClientAction::None,
            n => ClientAction::Reply(n),
        }
    }

    fn write_error(
        &mut self,
        out: &mut [u8],
        method: Method,
        tid: TransactionId,
        error: RequestError,
        key: Option<&Key>,
    ) -> usize {
        self.count_error(method, error);
        let software = if key.is_some() {
            &self.config.software[..]
        } else {
            ""
        };
        write_message(out, method, Class::Error, tid, software, key, |w| {
            w.error_code(error.code(), error.reason())?;
            if let RequestError::TryAlternate(alternate) = error {
                w.address(attr::ALTERNATE_SERVER, alternate)?;
            }
            Ok(())
        })
        .unwrap_or(0)
    }

    fn count_response(&mut self, method: Method, code: u16) {
        let (row, column) = response_slot(method, code);
        self.stats.responses[row][column] += 1;
    }

    fn count_error(&mut self, method: Method, error: RequestError) {
        self.count_response(method, error.code());
        self.stats.error_responses += 1;
        match error {
            RequestError::AllocationQuotaReached => self.stats.quota_rejected += 1,
            RequestError::InsufficientCapacity => self.stats.capacity_rejected += 1,
            _ => {}
        }
    }

    /// May a request without valid credentials from `tuple` be answered now? Over UDP, where
    /// the source may be spoofed and the answer a reflection, each answer is charged to the
    /// source's reflection budget ([`SourceLimiter`]); beyond it the request is dropped and
    /// counted. A TCP or TLS client's address is proven by the handshake: it is always
    /// answered (its connections are capped by `max-tcp-connections-per-source`).
    fn may_answer_unauthenticated(&mut self, now: Instant, tuple: &FiveTuple) -> bool {
        if tuple.transport != Transport::Udp {
            return true;
        }
        match self.node.sources.allow(tuple.client.ip(), self.nanos(now)) {
            limits::Verdict::Answer => true,
            limits::Verdict::SourceOverBudget => {
                self.stats.rate_limited += 1;
                false
            }
            limits::Verdict::NodeOverBudget => {
                self.stats.rate_limited_node += 1;
                false
            }
        }
    }

    /// A request from `tuple` authenticated: its source received the nonce it carries, so the
    /// answer that gave it was no reflection ([`SourceLimiter::prove`]).
    fn source_proven(&self, now: Instant, tuple: &FiveTuple) {
        self.node.sources.prove(tuple.client.ip(), self.nanos(now));
    }

    /// Nanoseconds since the epoch all workers share, for rate limits.
    fn nanos(&self, now: Instant) -> u64 {
        limits::nanos_since(self.config.epoch, now)
    }

    /// 401 or 438 with REALM and a fresh NONCE, without MESSAGE-INTEGRITY or reason phrase;
    /// nothing when the source is over its unauthenticated rate.
    fn reply_challenge(
        &mut self,
        now: Instant,
        out: &mut [u8],
        method: Method,
        tid: TransactionId,
        tuple: &FiveTuple,
        error: RequestError,
    ) -> ClientAction {
        if !self.may_answer_unauthenticated(now, tuple) {
            return ClientAction::None;
        }
        self.stats.error_responses += 1;
        self.count_response(method, error.code());
        let nonce = self.nonces.issue(now, tuple.client.ip());
        let realm = &self.config.realm;
        // No reason phrase: the code says it all, and the answer to an unauthenticated request
        // is what a reflection attack would multiply, so it stays as small as it can.
        match write_message(out, method, Class::Error, tid, "", None, |w| {
            w.error_code(error.code(), "")?;
            w.attribute(attr::REALM, realm.as_bytes())?;
            w.attribute(attr::NONCE, &nonce)
        }) {
            Ok(n) => ClientAction::Reply(n),
            Err(_) => ClientAction::None,
        }
    }

    fn reply_unknown_attributes(
        &mut self,
        msg: &Message<'_>,
        key: Option<&Key>,
        out: &mut [u8],
    ) -> ClientAction {
        self.stats.error_responses += 1;
        self.count_response(msg.method(), 420);
        let mut unknown = [0u16; stun::MAX_UNKNOWN_REPORTED];
        let mut count = 0;
        for (slot, typ) in unknown
            .iter_mut()
            .zip(msg.unknown_required(is_known_attribute))
        {
            *slot = typ;
            count += 1;
        }
        let error = RequestError::UnknownAttribute;
        let software = if key.is_some() {
            &self.config.software[..]
        } else {
            ""
        };
        match write_message(
            out,
            msg.method(),
            Class::Error,
            msg.transaction_id(),
            software,
            key,
            |w| {
                w.error_code(error.code(), error.reason())?;
                w.unknown_attributes(&unknown[..count])
            },
        ) {
            Ok(n) => ClientAction::Reply(n),
            Err(_) => ClientAction::None,
        }
    }
}

/// Attributes this server understands (or knowingly ignores) in requests and indications.
fn is_known_attribute(typ: u16) -> bool {
    matches!(
        typ,
        attr::MAPPED_ADDRESS
            | attr::USERNAME
            | attr::MESSAGE_INTEGRITY
            | attr::ERROR_CODE
            | attr::UNKNOWN_ATTRIBUTES
            | attr::CHANNEL_NUMBER
            | attr::LIFETIME
            | attr::XOR_PEER_ADDRESS
            | attr::DATA
            | attr::REALM
            | attr::NONCE
            | attr::XOR_RELAYED_ADDRESS
            | attr::REQUESTED_ADDRESS_FAMILY
            | attr::EVEN_PORT
            | attr::REQUESTED_TRANSPORT
            | attr::DONT_FRAGMENT
            | attr::XOR_MAPPED_ADDRESS
            | attr::RESERVATION_TOKEN
            | attr::PRIORITY
            | attr::USE_CANDIDATE
            | attr::PADDING
    )
}

/// Is `msg` a Refresh that deletes its allocation (LIFETIME 0)?
fn is_delete(msg: &Message<'_>) -> bool {
    msg.method() == Method::REFRESH
        && msg
            .get(attr::LIFETIME)
            .is_some_and(|v| matches!(attr::decode_u32(v), Ok(0)))
}

/// An address with any IPv4-in-IPv6 form turned into plain IPv4.
fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(policy::canonical_ip(addr.ip()), addr.port())
}

/// A success response with MESSAGE-INTEGRITY and FINGERPRINT.
fn write_response(
    out: &mut [u8],
    method: Method,
    tid: TransactionId,
    software: &str,
    key: &Key,
    attributes: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), StunError>,
) -> Result<usize, StunError> {
    write_message(
        out,
        method,
        Class::Success,
        tid,
        software,
        Some(key),
        attributes,
    )
}

fn write_message(
    out: &mut [u8],
    method: Method,
    class: Class,
    tid: TransactionId,
    software: &str,
    key: Option<&Key>,
    attributes: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), StunError>,
) -> Result<usize, StunError> {
    let mut w = MessageWriter::new(out, method, class, tid)?;
    attributes(&mut w)?;
    if !software.is_empty() {
        w.attribute(attr::SOFTWARE, software.as_bytes())?;
    }
    if let Some(key) = key {
        w.message_integrity(key)?;
    }
    w.fingerprint()?;
    Ok(w.finish())
}

/// Writes a Data indication around `buf[payload]` in place (header and XOR-PEER-ADDRESS before,
/// padding after) and returns the frame's range.
fn write_data_indication(
    buf: &mut [u8],
    payload: Range<usize>,
    peer: SocketAddr,
    tid: TransactionId,
) -> Option<Range<usize>> {
    let len = payload.len();
    let peer_attr = if peer.is_ipv4() { 12 } else { 24 };
    let start = payload
        .start
        .checked_sub(stun::HEADER_LEN + peer_attr + 4)?;
    let written = {
        let mut w = MessageWriter::new(
            &mut buf[start..payload.start],
            Method::DATA,
            Class::Indication,
            tid,
        )
        .ok()?;
        w.xor_address(attr::XOR_PEER_ADDRESS, peer).ok()?;
        w.finish()
    };
    let data_header = start + written;
    if data_header + 4 != payload.start {
        return None;
    }
    buf[data_header..data_header + 2].copy_from_slice(&attr::DATA.to_be_bytes());
    buf[data_header + 2..data_header + 4].copy_from_slice(&(len as u16).to_be_bytes());
    let padded = (len + 3) & !3;
    buf[payload.end..payload.start + padded].fill(0);
    let body = (written - stun::HEADER_LEN + 4 + padded) as u16;
    buf[start + 2..start + 4].copy_from_slice(&body.to_be_bytes());
    Some(start..payload.start + padded)
}

#[cfg(test)]
mod tests;
