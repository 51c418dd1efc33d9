//! The types the I/O layer exchanges with [`Server`]: its settings, the 5-tuple, what to do with
//! a client's message or a peer's datagram, the events it polls, and the counters it reads.

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

#[cfg(doc)]
use super::Server;
use super::credentials::Principal;
use super::{AllocationId, AllocationLedger, ConnectionId, Quota, SourceLimiter, Traffic};

/// How a client reaches the server: the transport of a listener and of a 5-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        })
    }
}

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
    pub(super) fn of(addr: &SocketAddr) -> Family {
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
    /// Open a UDP relay socket of `family` for `allocation`, then call
    /// [`Server::handle_relay_opened`]. A dual allocation (RFC 8656 §7.2) asks for two, IPv4
    /// then IPv6, the second once the first's result is in.
    OpenRelay {
        allocation: AllocationId,
        family: Family,
        port: PortRequest,
    },
    /// The allocation has ended: close its relay socket (both, for a dual allocation; for a
    /// TCP allocation: its listening socket and every peer and data connection of it).
    CloseRelay { allocation: AllocationId },
    /// Open a listening TCP relay socket for a TCP allocation (RFC 6062 §5.1), then call
    /// [`Server::handle_relay_opened`].
    OpenTcpRelay {
        allocation: AllocationId,
        family: Family,
    },
    /// Connect from the relayed address of `allocation` to `peer` (RFC 6062 §5.2), within
    /// [`CONNECT_TIMEOUT`](super::CONNECT_TIMEOUT), then call
    /// [`Server::handle_connect_result`].
    Connect {
        allocation: AllocationId,
        connection: ConnectionId,
        peer: SocketAddr,
    },
    /// Close this peer connection (not bound within
    /// [`BIND_DEADLINE`](super::BIND_DEADLINE)).
    CloseConnection {
        allocation: AllocationId,
        connection: ConnectionId,
    },
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
    /// A dual allocation's second relayed address (IPv6).
    pub dual: Option<SocketAddr>,
    pub created: Instant,
    pub traffic: Traffic,
    pub reason: EndReason,
    /// A TCP allocation (RFC 6062); its splices' traffic is the I/O layer's to add.
    pub tcp: bool,
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
    /// An authenticated ConnectionBind (RFC 6062 §5.4): ask the core of worker
    /// `connection.worker()` to [`Server::bind_connection`], then answer with
    /// [`Server::write_bind_answer`]; on success this connection becomes a data connection.
    BindConnection {
        connection: ConnectionId,
        username: Box<str>,
        key: super::credentials::Signing,
        tid: crate::stun::TransactionId,
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
    /// Grant TCP allocations (RFC 6062), `[relay] tcp`.
    pub tcp_relay: bool,
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
    /// TCP peer connections opened for TCP allocations (Connect, or accepted from a permitted
    /// peer).
    pub tcp_connections_opened: u64,
    /// Connects that failed (447) or found no room (508).
    pub tcp_connections_failed: u64,
    /// Peer connections bound to a client data connection.
    pub tcp_connections_bound: u64,
    /// Peer connections closed because no ConnectionBind came within 30 s.
    pub tcp_bind_timeouts: u64,
    /// Bytes spliced from client data connections to peers (also in `to_peer_bytes`).
    pub tcp_to_peer_bytes: u64,
    /// Bytes spliced from peers to client data connections (also in `to_client_bytes`).
    pub tcp_to_client_bytes: u64,
    /// Responses sent, by method ([`RESPONSE_METHODS`]) and code ([`RESPONSE_CODES`]).
    pub responses: [[u64; RESPONSE_CODES.len()]; RESPONSE_METHODS.len()],
}

/// Methods the response counters distinguish (the last row is any other method).
pub const RESPONSE_METHODS: [&str; 8] = [
    "binding",
    "allocate",
    "refresh",
    "create_permission",
    "channel_bind",
    "connect",
    "connection_bind",
    "other",
];

/// Codes the response counters distinguish (200 is success; the last column, 0, is any other).
pub const RESPONSE_CODES: [u16; 18] = [
    200, 300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 446, 447, 486, 500, 508, 0,
];

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
        self.tcp_connections_opened += other.tcp_connections_opened;
        self.tcp_connections_failed += other.tcp_connections_failed;
        self.tcp_connections_bound += other.tcp_connections_bound;
        self.tcp_bind_timeouts += other.tcp_bind_timeouts;
        self.tcp_to_peer_bytes += other.tcp_to_peer_bytes;
        self.tcp_to_client_bytes += other.tcp_to_client_bytes;
    }
}

/// State the workers of one node share: the allocation ledger and the table of
/// unauthenticated sources. Neither is touched by relayed packets. (Whether the node drains,
/// and the other nodes to send clients to, are each core's own inputs:
/// [`Server::set_draining`](super::Server::set_draining),
/// [`Server::set_alternates`](super::Server::set_alternates).)
pub struct NodeLimits {
    pub ledger: AllocationLedger,
    pub sources: SourceLimiter,
}
