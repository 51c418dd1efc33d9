//! TCP allocations (RFC 6062): the peer connections of an allocation, their ids and states,
//! the 30-second ConnectionBind deadline, and connections peers open to a relayed address
//! (§5.3). Connect is `connect.rs`'s, ConnectionBind `connection_bind.rs`'s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::reply::write_message;
use super::{
    AllocationId, Event, Family, FiveTuple, PortRequest, RequestError, Server, Transport,
    canonical_addr,
};
use crate::stun::{Class, Message, Method, TransactionId, attr};

/// How long a peer connection waits for its ConnectionBind before it is closed (RFC 6062
/// §5.2, §5.3).
pub const BIND_DEADLINE: Duration = Duration::from_secs(30);

/// How long the I/O layer may take to connect to a peer before the Connect fails with 447
/// (RFC 6062 §5.2: "at least 30 seconds").
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The most workers a node relaying TCP may run: the top byte of a CONNECTION-ID names the
/// worker that minted it, so that a ConnectionBind on any worker reaches the right one.
pub const MAX_TCP_RELAY_WORKERS: usize = 256;

/// Names a peer connection of a TCP allocation (CONNECTION-ID, RFC 6062 §6.2.1). Its top
/// byte is the index of the worker whose core minted it, so that a ConnectionBind arriving on
/// any worker's listener reaches the worker that holds the peer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u32);

impl ConnectionId {
    /// The index (modulo 256) of the worker that minted it.
    pub fn worker(self) -> usize {
        (self.0 >> 24) as usize
    }
}

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// Where a peer connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnectionState {
    /// The I/O layer is connecting on behalf of the Connect request `tid` (§5.2).
    Connecting { tid: TransactionId },
    /// Open, waiting for its ConnectionBind until `deadline` (§5.3, §5.4).
    Pending { deadline: Instant },
    /// Spliced to a client data connection.
    Bound,
}

/// One peer connection of a TCP allocation.
#[derive(Debug, Clone, Copy)]
pub(super) struct TcpConnection {
    pub(super) id: ConnectionId,
    pub(super) peer: SocketAddr,
    pub(super) state: ConnectionState,
}

/// The TCP side of an allocation made with REQUESTED-TRANSPORT = TCP.
#[derive(Debug, Default)]
pub(super) struct TcpRelay {
    pub(super) connections: Vec<TcpConnection>,
    /// The allocation's bandwidth limit as its splices share it (made at the first
    /// ConnectionBind, with 0 for none, so that a reload can set or clear it while they run on
    /// any worker).
    pub(super) bandwidth: Option<std::sync::Arc<super::SharedByteRate>>,
}

impl TcpRelay {
    /// The earliest ConnectionBind deadline.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.connections
            .iter()
            .filter_map(|c| match c.state {
                ConnectionState::Pending { deadline } => Some(deadline),
                _ => None,
            })
            .min()
    }
}

impl Server {
    /// Sets the index of the worker this core serves: it goes into the connection ids it
    /// mints (see [`ConnectionId`]). Call once, before the first packet.
    pub fn set_worker_index(&mut self, index: usize) {
        self.worker_tag = (index & 0xff) as u32;
    }

    /// A fresh connection id: this worker's tag and a counter, skipping ids in use.
    pub(super) fn new_connection_id(&mut self) -> ConnectionId {
        loop {
            self.connection_counter = (self.connection_counter + 1) & 0x00ff_ffff;
            let id = ConnectionId(self.worker_tag << 24 | self.connection_counter);
            if !self.connections.contains_key(&id) {
                return id;
            }
        }
    }

    /// Whether an Allocate asking for the IANA protocol `transport` asks for a TCP allocation
    /// (RFC 6062 §5.1): UDP is the plain case; TCP (with `[relay] tcp`) only over TCP or TLS
    /// (else 400) and without DONT-FRAGMENT, EVEN-PORT or RESERVATION-TOKEN (else 400);
    /// anything else is 442.
    pub(super) fn requested_tcp(
        &self,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        transport: u8,
    ) -> Result<bool, RequestError> {
        match transport {
            17 => Ok(false),
            6 if self.config.tcp_relay => {
                if tuple.transport == Transport::Udp {
                    return Err(RequestError::BadRequest(
                        "TCP allocations need a TCP or TLS connection",
                    ));
                }
                if [
                    attr::DONT_FRAGMENT,
                    attr::EVEN_PORT,
                    attr::RESERVATION_TOKEN,
                ]
                .iter()
                .any(|&typ| msg.get(typ).is_some())
                {
                    return Err(RequestError::BadRequest(
                        "DONT-FRAGMENT, EVEN-PORT or RESERVATION-TOKEN in a TCP Allocate",
                    ));
                }
                Ok(true)
            }
            _ => Err(RequestError::UnsupportedTransport),
        }
    }

    /// The event that opens the relay of a new allocation: a UDP socket, or a listening TCP
    /// socket for a TCP allocation (RFC 6062 §5.1).
    pub(super) fn open_relay_event(
        &self,
        allocation: AllocationId,
        family: Family,
        port: PortRequest,
    ) -> Event {
        match self.allocation(allocation).and_then(|a| a.tcp.as_ref()) {
            Some(_) => Event::OpenTcpRelay { allocation, family },
            None => Event::OpenRelay {
                allocation,
                family,
                port,
            },
        }
    }

    /// The instant rate limits count from (shared by the workers), for the I/O layer's splices.
    pub fn epoch(&self) -> Instant {
        self.config.epoch
    }

    /// Adds bytes a TCP splice on this worker relayed to the counters (the allocation's are the
    /// I/O layer's: its splices may run on any worker).
    pub fn credit_tcp_relayed(&mut self, to_peer: u64, to_client: u64) {
        self.stats.tcp_to_peer_bytes += to_peer;
        self.stats.tcp_to_client_bytes += to_client;
        self.stats.to_peer_bytes += to_peer;
        self.stats.to_client_bytes += to_client;
    }

    /// Live TCP peer connections (connecting, pending or bound) on this worker.
    pub fn tcp_connection_count(&self) -> usize {
        self.connections.len()
    }

    /// A peer connected to the relayed address of `allocation` and the I/O layer accepted it
    /// (RFC 6062 §5.3). Without a permission for the peer (or if the policy refuses it) the
    /// answer is `None`: close it at once. Otherwise the connection is pending its
    /// ConnectionBind for [`BIND_DEADLINE`], and the ConnectionAttempt indication for the
    /// client is written to `out`: send its `n` bytes to the returned 5-tuple.
    pub fn handle_peer_connection(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        peer: SocketAddr,
        out: &mut [u8],
    ) -> Option<(ConnectionId, FiveTuple, usize)> {
        let peer = canonical_addr(peer);
        if self.policy.is_own_socket(peer) || !self.policy.permits_ip(peer.ip()) {
            self.stats.dropped_policy += 1;
            return None;
        }
        let alloc = self.allocation(allocation)?;
        alloc.tcp.as_ref()?;
        if !alloc.permits(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        let to = alloc.tuple;
        let id = self.new_connection_id();
        self.indications = self.indications.wrapping_add(1);
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&self.token_key[4..8]);
        tid[4..].copy_from_slice(&self.indications.to_be_bytes());
        // §5.3: the indication carries XOR-PEER-ADDRESS and CONNECTION-ID; it is not signed
        // (indications carry no MESSAGE-INTEGRITY here, as Data indications do not).
        let n = write_message(
            out,
            Method::CONNECTION_ATTEMPT,
            Class::Indication,
            TransactionId(tid),
            "",
            None,
            |w| {
                w.xor_address(attr::XOR_PEER_ADDRESS, peer)?;
                w.attribute(attr::CONNECTION_ID, &id.0.to_be_bytes())
            },
        )
        .ok()?;
        self.add_connection(
            allocation,
            TcpConnection {
                id,
                peer,
                state: ConnectionState::Pending {
                    deadline: now + BIND_DEADLINE,
                },
            },
        );
        self.stats.tcp_connections_opened += 1;
        self.reschedule(allocation, now);
        Some((id, to, n))
    }

    pub(super) fn add_connection(&mut self, allocation: AllocationId, connection: TcpConnection) {
        let id = connection.id;
        if let Some(tcp) = self.allocation_mut(allocation).and_then(|a| a.tcp.as_mut()) {
            tcp.connections.push(connection);
            self.connections.insert(id, allocation);
        }
    }

    /// Forgets a connection; `None` if it was not there.
    pub(super) fn remove_connection(&mut self, id: ConnectionId) -> Option<TcpConnection> {
        let allocation = self.connections.remove(&id)?;
        let tcp = self.allocation_mut(allocation)?.tcp.as_mut()?;
        let at = tcp.connections.iter().position(|c| c.id == id)?;
        Some(tcp.connections.swap_remove(at))
    }

    /// A bound (spliced) peer connection ended, or the I/O layer dropped a pending one: the
    /// core forgets it, so the peer may be connected to again (§5.2's 446 is for connections
    /// "pending or active").
    pub fn handle_tcp_connection_closed(&mut self, id: ConnectionId) {
        self.remove_connection(id);
    }

    /// Closes the pending connections of `allocation` whose ConnectionBind deadline has passed
    /// (RFC 6062 §5.3).
    pub(super) fn expire_connections(&mut self, allocation: AllocationId, now: Instant) {
        let Some(tcp) = self.allocation_mut(allocation).and_then(|a| a.tcp.as_mut()) else {
            return;
        };
        let mut expired = Vec::new();
        tcp.connections.retain(|c| match c.state {
            ConnectionState::Pending { deadline } if deadline <= now => {
                expired.push(c.id);
                false
            }
            _ => true,
        });
        for id in expired {
            self.connections.remove(&id);
            self.stats.tcp_bind_timeouts += 1;
            self.events.push_back(Event::CloseConnection {
                allocation,
                connection: id,
            });
        }
    }

    /// Forgets the connections of an allocation that ends (the I/O layer closes them with its
    /// relay, at [`Event::CloseRelay`]).
    pub(super) fn forget_connections(&mut self, connections: &[TcpConnection]) {
        for c in connections {
            self.connections.remove(&c.id);
        }
    }
}
