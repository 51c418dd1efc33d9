//! TCP allocations' side of a core input (RFC 6062): Connects answered as the I/O layer answers
//! them, ConnectionBinds from new data connections, peers connecting to a relayed address,
//! connections closed, the ConnectionBind deadline; and the harness's record of the
//! connections the core made, which `checks.rs` holds the core to.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::stun::{Class, Message, Method, TransactionId, attr};
use crate::turn::{AllocationId, BIND_DEADLINE, ConnectError, ConnectionId, policy::canonical_ip};

use super::client::build_message;
use super::op::{FINGERPRINT, RAW_ID};
use super::setup::{SLOTS, TUPLES, five_tuple};
use super::{Harness, Mode};

/// Recently forgotten connection ids kept for stale binds and closes.
const GONE_KEPT: usize = 4;

/// Where a peer connection stands, as the harness saw the core put it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnState {
    /// Asked for with [`Event::Connect`](crate::turn::Event::Connect) for the Connect `tid` of
    /// slot `t`; not answered yet.
    Connecting { t: usize, tid: TransactionId },
    /// Open, waiting for its ConnectionBind until `deadline`.
    Pending { deadline: Instant },
    /// Given to a data connection.
    Bound,
}

/// A peer connection the core made.
#[derive(Debug, Clone, Copy)]
pub(super) struct Conn {
    pub(super) allocation: AllocationId,
    pub(super) peer: SocketAddr,
    pub(super) state: ConnState,
}

/// What the harness saw happen to connections, which the core's counters must agree with.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct TcpTally {
    /// Connects answered with success.
    pub(super) connected: u64,
    /// Peer connections announced with a ConnectionAttempt.
    pub(super) accepted: u64,
    /// Connects answered with 447 or 508.
    pub(super) failed: u64,
    /// ConnectionBinds answered with success.
    pub(super) bound: u64,
    /// Connections closed at their ConnectionBind deadline.
    pub(super) timeouts: u64,
}

/// The harness's TCP side.
#[derive(Debug, Default)]
pub(super) struct TcpState {
    /// The connections the core holds, as the harness saw them made, answered and bound.
    pub(super) connections: BTreeMap<ConnectionId, Conn>,
    /// Connects the I/O layer is making, in the order asked: each is answered once, even if
    /// its allocation ended meanwhile (as the I/O layer's connect task ends).
    pub(super) connecting: Vec<ConnectionId>,
    /// Connections recently forgotten: stale ids for binds and closes.
    pub(super) gone: Vec<ConnectionId>,
    pub(super) tally: TcpTally,
    /// The last request a client sent (slot, method, transaction id): what an
    /// [`Event::Connect`](crate::turn::Event::Connect) is for.
    pub(super) last_request: Option<(usize, Method, TransactionId)>,
}

impl TcpState {
    /// `id` is no longer the core's.
    fn forget(&mut self, id: ConnectionId) {
        self.connections.remove(&id);
        self.gone.push(id);
        if self.gone.len() > GONE_KEPT {
            self.gone.remove(0);
        }
    }

    /// The earliest ConnectionBind deadline.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.connections
            .values()
            .filter_map(|c| match c.state {
                ConnState::Pending { deadline } => Some(deadline),
                _ => None,
            })
            .min()
    }
}

impl Harness {
    /// [`Event::Connect`](crate::turn::Event::Connect): the core asks for a connection to
    /// `peer` for the Connect it was just given.
    pub(super) fn connect_event(
        &mut self,
        allocation: AllocationId,
        connection: ConnectionId,
        peer: SocketAddr,
    ) {
        let (t, method, tid) = self
            .tcp
            .last_request
            .expect("Event::Connect without a request");
        assert_eq!(method, Method::CONNECT, "Event::Connect for a {method:?}");
        let alloc = self
            .server
            .allocation(allocation)
            .expect("Event::Connect for an allocation that is gone");
        assert!(alloc.is_tcp(), "Event::Connect for a UDP allocation");
        assert_eq!(
            alloc.tuple(),
            five_tuple(t),
            "Event::Connect for another client's allocation"
        );
        assert!(
            alloc.permits(peer.ip(), self.now),
            "Event::Connect to {peer} without a permission"
        );
        assert!(
            self.policy.permits_peer(peer),
            "Event::Connect to {peer}, against the policy"
        );
        assert!(
            !self
                .tcp
                .connections
                .values()
                .any(|c| c.allocation == allocation && c.peer == peer),
            "a second connection to {peer} (RFC 6062 §5.2: 446)"
        );
        let state = ConnState::Connecting { t, tid };
        let conn = Conn {
            allocation,
            peer,
            state,
        };
        assert!(
            self.tcp.connections.insert(connection, conn).is_none(),
            "connection id {connection} minted twice"
        );
        self.tcp.connecting.push(connection);
    }

    /// [`Op::ConnectResult`](super::Op::ConnectResult): one Connect answered, once.
    pub(super) fn connect_result(&mut self, pending: u8, outcome: u8) {
        if self.tcp.connecting.is_empty() {
            return;
        }
        let at = usize::from(pending) % self.tcp.connecting.len();
        let id = self.tcp.connecting.remove(at);
        let (result, code) = match outcome % 3 {
            0 => (Ok(()), 200),
            1 => (Err(ConnectError::Failed), 447),
            _ => (Err(ConnectError::NoCapacity), 508),
        };
        let known = self.tcp.connections.get(&id).copied();
        let mut out = std::mem::take(&mut self.out);
        let answer = self
            .server
            .handle_connect_result(self.now, id, result, &mut out);
        match (known, answer) {
            (
                Some(Conn {
                    state: ConnState::Connecting { t, tid },
                    ..
                }),
                Some((to, n)),
            ) => {
                assert_eq!(to, five_tuple(t), "a Connect answered to another client");
                assert!(n > 0 && n <= out.len());
                let reply = out[..n].to_vec();
                self.check_reply(t, Some((Method::CONNECT, Class::Request, tid)), &reply);
                let msg = Message::parse(&reply).expect("checked above");
                assert_eq!(msg.method(), Method::CONNECT);
                if code == 200 {
                    assert_eq!(
                        msg.class(),
                        Class::Success,
                        "Connect connected, but refused"
                    );
                    let named = msg.get(attr::CONNECTION_ID).map(attr::decode_connection_id);
                    assert_eq!(named, Some(Ok(id.0)), "CONNECTION-ID of the Connect");
                    let deadline = self.now + BIND_DEADLINE;
                    if let Some(conn) = self.tcp.connections.get_mut(&id) {
                        conn.state = ConnState::Pending { deadline };
                    }
                    self.tcp.tally.connected += 1;
                } else {
                    let got = msg
                        .get(attr::ERROR_CODE)
                        .and_then(|v| attr::decode_error_code(v).ok())
                        .map(|(code, _)| code);
                    assert_eq!(got, Some(code), "the error of a failed Connect");
                    self.tcp.forget(id);
                    self.tcp.tally.failed += 1;
                }
            }
            (
                Some(Conn {
                    state: ConnState::Connecting { .. },
                    ..
                }),
                None,
            ) => panic!("Connect for connection {id} never answered"),
            (_, Some(_)) => panic!("an answer for connection {id}, already answered or gone"),
            (_, None) => {}
        }
        // Exactly one answer: the I/O layer reporting again changes nothing.
        let before = self.server.stats();
        let again = self
            .server
            .handle_connect_result(self.now, id, Ok(()), &mut out);
        assert!(
            again.is_none(),
            "Connect for connection {id} answered twice"
        );
        assert_eq!(self.server.stats(), before);
        self.out = out;
        self.drain_events();
    }

    /// [`Op::ConnectionBind`](super::Op::ConnectionBind), from a new connection of slot `slot`.
    pub(super) fn connection_bind(&mut self, slot: u8, connection: u8, flags: u8, raw: u32) {
        let t = usize::from(slot) % SLOTS;
        let ids: Vec<ConnectionId> = self
            .tcp
            .connections
            .keys()
            .chain(&self.tcp.gone)
            .copied()
            .collect();
        let value = match ids.len() {
            n if n > 0 && connection & RAW_ID == 0 => ids[usize::from(connection) % n].0,
            _ => raw,
        };
        if t >= TUPLES.len() {
            // A new data connection: nothing left of the last one's bytes.
            self.streams[t].clear();
        }
        let mut body = attr::CONNECTION_ID.to_be_bytes().to_vec();
        body.extend_from_slice(&4u16.to_be_bytes());
        body.extend_from_slice(&value.to_be_bytes());
        self.counter += 1;
        let mut tid = [0xCB; 12];
        tid[8..].copy_from_slice(&self.counter.to_be_bytes());
        let tid = TransactionId(tid);
        let message_type = Method::CONNECTION_BIND.0;
        match self.mode {
            Mode::Unauthenticated => {
                let fingerprint = flags & FINGERPRINT != 0;
                let message =
                    build_message(message_type, tid, &body, flags, fingerprint, &|_| Ok(()));
                self.client(t, &message);
            }
            Mode::Authenticated => self.signed(t, message_type, tid, flags, &body),
        }
    }

    /// The answer to a ConnectionBind that reached [`Server::bind_and_answer`]: a success
    /// binds a connection that was pending, once, for its allocation's user, on a data
    /// connection.
    ///
    /// [`Server::bind_and_answer`]: crate::turn::Server::bind_and_answer
    pub(super) fn bind_answered(
        &mut self,
        t: usize,
        connection: ConnectionId,
        username: &str,
        reply: &[u8],
    ) {
        let msg = Message::parse(reply).expect("checked by check_reply");
        assert_eq!(msg.method(), Method::CONNECTION_BIND);
        if msg.class() != Class::Success {
            return;
        }
        let tuple = five_tuple(t);
        assert!(
            self.server.allocation_of(&tuple).is_none(),
            "a control connection bound as a data connection"
        );
        assert_ne!(tuple.transport, crate::config::Transport::Udp);
        let conn = self
            .tcp
            .connections
            .get_mut(&connection)
            .unwrap_or_else(|| panic!("bound connection {connection}, which the core never made"));
        assert!(
            matches!(conn.state, ConnState::Pending { .. }),
            "bound connection {connection}, which was {:?}",
            conn.state
        );
        conn.state = ConnState::Bound;
        let alloc = self
            .server
            .allocation(conn.allocation)
            .expect("a connection of an allocation that is gone");
        assert_eq!(alloc.username(), username, "bound for another user");
        self.tcp.tally.bound += 1;
    }

    /// [`Op::PeerConnect`](super::Op::PeerConnect): a peer connects to a relayed address (one
    /// of a UDP allocation, or one just closed, as well): accepted and announced exactly when
    /// the allocation is a TCP one and the peer is permitted.
    pub(super) fn peer_connect(&mut self, allocation: u8, selector: u8, port: u16) {
        let Some(id) = self.relay_target(allocation) else {
            return;
        };
        let peer = self.peer_address(id, selector, port);
        let canonical = SocketAddr::new(canonical_ip(peer.ip()), peer.port());
        let alloc = self.server.allocation(id);
        let welcome = alloc.is_some_and(|a| a.is_tcp() && a.permits(canonical.ip(), self.now))
            && self.policy.permits_peer(canonical);
        let tuple = alloc.map(|a| a.tuple());
        let mut out = std::mem::take(&mut self.out);
        let answer = self
            .server
            .handle_peer_connection(self.now, id, peer, &mut out);
        match answer {
            None => assert!(!welcome, "a permitted peer {peer} refused by {id}"),
            Some((connection, to, n)) => {
                assert!(welcome, "a connection from {peer} accepted by {id}");
                assert_eq!(Some(to), tuple, "ConnectionAttempt to another client");
                assert!(n > 0 && n <= out.len());
                let msg = Message::parse(&out[..n]).expect("the ConnectionAttempt parses");
                assert_eq!(
                    (msg.method(), msg.class()),
                    (Method::CONNECTION_ATTEMPT, Class::Indication)
                );
                let named = msg
                    .get(attr::XOR_PEER_ADDRESS)
                    .map(|v| attr::decode_xor_address(v, &msg.transaction_id()));
                assert_eq!(named, Some(Ok(canonical)), "XOR-PEER-ADDRESS");
                let named = msg.get(attr::CONNECTION_ID).map(attr::decode_connection_id);
                assert_eq!(named, Some(Ok(connection.0)), "CONNECTION-ID");
                let conn = Conn {
                    allocation: id,
                    peer: canonical,
                    state: ConnState::Pending {
                        deadline: self.now + BIND_DEADLINE,
                    },
                };
                assert!(
                    self.tcp.connections.insert(connection, conn).is_none(),
                    "connection id {connection} minted twice"
                );
                self.tcp.tally.accepted += 1;
            }
        }
        self.out = out;
        self.drain_events();
    }

    /// [`Op::ConnectionClosed`](super::Op::ConnectionClosed): a pending or bound connection (or
    /// one already gone) closed by the I/O layer; the core forgets it.
    pub(super) fn connection_closed(&mut self, selector: u8) {
        let ids: Vec<ConnectionId> = self
            .tcp
            .connections
            .iter()
            .filter(|(_, c)| !matches!(c.state, ConnState::Connecting { .. }))
            .map(|(id, _)| *id)
            .chain(self.tcp.gone.iter().copied())
            .collect();
        if ids.is_empty() {
            return;
        }
        let id = ids[usize::from(selector) % ids.len()];
        self.server.handle_tcp_connection_closed(id);
        if self.tcp.connections.contains_key(&id) {
            self.tcp.forget(id);
        }
        assert_eq!(self.server.tcp_connection_peer(id), None, "{id} kept");
        self.drain_events();
    }

    /// [`Op::BindDeadline`](super::Op::BindDeadline): time moves to just before, at or just
    /// after the earliest ConnectionBind deadline, and the timer fires (early, maybe, as a
    /// timer may).
    pub(super) fn bind_deadline(&mut self, offset: i8) {
        let deadline = self.tcp.next_deadline().unwrap_or(self.now + BIND_DEADLINE);
        let shift = Duration::from_millis(u64::from(offset.unsigned_abs()));
        let to = if offset < 0 {
            deadline - shift
        } else {
            deadline + shift
        };
        self.now = self.now.max(to);
        self.fire();
    }

    /// [`Event::CloseConnection`](crate::turn::Event::CloseConnection): a pending connection
    /// past its deadline, and only such a one.
    pub(super) fn connection_expired(
        &mut self,
        allocation: AllocationId,
        connection: ConnectionId,
    ) {
        let conn = self
            .tcp
            .connections
            .get(&connection)
            .copied()
            .unwrap_or_else(|| panic!("CloseConnection of {connection}, not the core's"));
        assert_eq!(conn.allocation, allocation, "CloseConnection's allocation");
        match conn.state {
            ConnState::Pending { deadline } => assert!(
                deadline <= self.now,
                "connection {connection} closed before its ConnectionBind deadline"
            ),
            state => panic!("CloseConnection of connection {connection}, {state:?}"),
        }
        self.tcp.forget(connection);
        self.tcp.tally.timeouts += 1;
    }

    /// An allocation's relay closed: the I/O layer closes its connections with it.
    pub(super) fn relay_closed(&mut self, allocation: AllocationId) {
        let ids: Vec<ConnectionId> = self
            .tcp
            .connections
            .iter()
            .filter(|(_, c)| c.allocation == allocation)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.tcp.forget(id);
        }
    }
}
