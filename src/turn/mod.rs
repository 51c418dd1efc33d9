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
//!
//! This file holds [`Server`] itself: its state, how it is built and reloaded, its counters and
//! clock. The rest, one idea a file, each adding an `impl Server` block where it needs one:
//!
//! - `api.rs`: the types the I/O layer exchanges with the core ([`Event`], [`CoreConfig`],
//!   [`ClientAction`], [`PeerAction`], [`Ended`], [`Stats`], ...);
//! - `datapath.rs`: the hot path: a client's message in, ChannelData and Send to the peer, a
//!   peer's datagram framed for the client in place;
//! - `table.rs`: the allocation table, its index by 5-tuple, the deadlines, ending allocations,
//!   and the offload announcements;
//! - `request.rs`: STUN requests dispatched by method, retransmissions, Binding;
//! - `authenticate.rs`: long-term credentials, nonces, the 401/438 challenge, reflection budget;
//! - `allocate.rs`, `refresh.rs`, `create_permission.rs`, `channel_bind.rs`: one TURN method each;
//! - `tcp.rs` (TCP allocations' peer connections, RFC 6062), `connect.rs`, `connection_bind.rs`;
//! - `reply.rs`: writing responses, and counting each by method and code;
//! - `families.rs`: dual-stack allocations (ADDITIONAL-ADDRESS-FAMILY, ADDRESS-ERROR-CODE);
//! - `allocation.rs` (one allocation's permissions, channels, traffic), `limits.rs` (quotas,
//!   rates), `policy.rs` (which peers), `nonce.rs`, `error.rs` (error codes).

mod allocate;
mod allocation;
mod api;
mod authenticate;
mod channel_bind;
mod connect;
mod connection_bind;
mod create_permission;
pub mod credentials;
mod datapath;
mod error;
mod families;
pub mod limits;
pub mod nonce;
mod password;
pub mod policy;
mod refresh;
mod reply;
mod request;
mod table;
mod tcp;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use credentials::CredentialStore;

pub use allocation::{
    Allocation, AllocationId, CHANNEL_COOLDOWN, CHANNEL_LIFETIME, ChannelBinding,
    PERMISSION_LIFETIME, Permission, Traffic,
};
pub use api::{
    ClientAction, CoreConfig, EndReason, Ended, Event, Family, FiveTuple, MAX_PEER_PAYLOAD,
    MAX_REQUEST_LEN, NodeLimits, PEER_HEADROOM, PEER_TAILROOM, PeerAction, PortRequest,
    RESPONSE_CODES, RESPONSE_METHODS, RelayOpenError, ReservationToken, Stats, Transport,
};
pub use connect::ConnectError;
pub use connection_bind::BoundConnection;
pub use error::RequestError;
pub use limits::{
    AllocationLedger, Alternate, ByteRate, Quota, QuotaError, ReflectionBudget, SharedByteRate,
    SourceLimiter,
};
pub use nonce::Nonces;
pub use policy::{HostAddresses, PeerPolicy};
pub use tcp::{BIND_DEADLINE, CONNECT_TIMEOUT, ConnectionId, MAX_TCP_RELAY_WORKERS};

use table::Slot;

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
    /// Draining: no new allocations (300 to another node, else 403); existing ones go on.
    draining: bool,
    /// The other live nodes, for 300 Try Alternate.
    alternates: Arc<[Alternate]>,
    timers: BTreeSet<(Instant, AllocationId)>,
    events: VecDeque<Event>,
    /// A deadline was filed since [`Server::take_new_deadline`] was last asked.
    new_deadline: bool,
    stats: Stats,
    /// This worker's index, the top byte of the connection ids it mints (RFC 6062).
    worker_tag: u32,
    connection_counter: u32,
    /// The allocation of each TCP peer connection.
    connections: FastMap<ConnectionId, AllocationId>,
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
            draining: false,
            alternates: Arc::from([]),
            timers: BTreeSet::new(),
            events: VecDeque::new(),
            new_deadline: false,
            stats: Stats::default(),
            worker_tag: 0,
            connection_counter: 0,
            connections: FastMap::default(),
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

    /// Next thing for the I/O layer to do; call after every `handle_*` until `None`.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Starts or ends draining: from now on an Allocate is refused (300 Try Alternate to a
    /// node of [`Server::set_alternates`], else 403); allocations go on. Call when the
    /// operator says so.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Takes the other live nodes of the cluster, offered (least loaded first) to a client
    /// this node turns away: draining, full, or out of relay ports. Call whenever the cluster
    /// registry says they changed; none at first.
    pub fn set_alternates(&mut self, alternates: Arc<[Alternate]>) {
        self.alternates = alternates;
    }

    /// The least-loaded other node serving `transport` on `like`'s address family.
    fn alternate(
        &self,
        transport: Transport,
        like: std::net::SocketAddr,
    ) -> Option<std::net::SocketAddr> {
        limits::pick_alternate(&self.alternates, transport, like)
    }

    /// Takes a reloaded configuration: settings, peer policy, nonce lifetime. Allocations go
    /// on; a changed per-allocation bandwidth cap applies to them at once, to the TCP splices
    /// they run too (except to those whose cap the credential store set), and so does the
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
                if let Some(allocation) = slot.allocation.as_mut()
                    && !allocation.bandwidth_from_store
                {
                    allocation.bandwidth = bandwidth.map(ByteRate::new);
                    // Splices already running read the rate they share at each chunk.
                    if let Some(rate) = allocation.tcp.as_ref().and_then(|t| t.bandwidth.as_ref()) {
                        rate.set_bits_per_second(bandwidth.unwrap_or(0));
                    }
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

    /// Adds traffic the kernel fast path relayed for `allocation` (from its counters) to the
    /// core's counters, and to the allocation's while it lives (`None`: it has ended, and the
    /// I/O layer adds it to the [`Ended`] itself).
    pub fn credit_offloaded(&mut self, allocation: Option<AllocationId>, traffic: Traffic) {
        self.stats.to_peer_packets += traffic.to_peer_packets;
        self.stats.to_peer_bytes += traffic.to_peer_bytes;
        self.stats.to_client_packets += traffic.to_client_packets;
        self.stats.to_client_bytes += traffic.to_client_bytes;
        if let Some(alloc) = allocation.and_then(|id| self.allocation_mut(id)) {
            alloc.traffic += traffic;
        }
    }

    /// The wall-clock time (unix seconds) of an instant.
    pub fn unix_time_of(&self, at: Instant) -> u64 {
        self.unix_time(at)
    }

    fn unix_time(&self, now: Instant) -> u64 {
        self.config.unix_at_epoch + now.saturating_duration_since(self.config.epoch).as_secs()
    }

    /// Nanoseconds since the epoch all workers share, for rate limits.
    fn nanos(&self, now: Instant) -> u64 {
        limits::nanos_since(self.config.epoch, now)
    }

    fn advertised(&self, relayed: SocketAddr) -> SocketAddr {
        match (relayed, self.config.public_v4) {
            (SocketAddr::V4(_), Some(public)) => SocketAddr::new(public.into(), relayed.port()),
            _ => relayed,
        }
    }
}

/// An address with any IPv4-in-IPv6 form turned into plain IPv4.
fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(policy::canonical_ip(addr.ip()), addr.port())
}

#[cfg(test)]
mod tests;
