//! A worker's side of TCP allocations (RFC 6062): their listening sockets and the peer
//! connections they accept, Connects carried out, peer connections waiting for their
//! ConnectionBind, and the hand-over of a peer connection to the worker whose listener the
//! client data connection reached, which splices the two.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::turn::{
    AllocationId, BoundConnection, CONNECT_TIMEOUT, ConnectError, ConnectionId, Family, FiveTuple,
    RelayOpenError, RequestError, Traffic,
};

use super::super::stream::{ConnectionSlot, Handover, Splicer};
use super::super::tcp_relay::{self, Direction, Hangup, PortClaim, SpliceLimits, SpliceTraffic};
use super::super::{AcceptBackoff, Command};
use super::{Shared, Worker};

/// How long a worker waits for the worker holding a peer connection to hand it over.
const HANDOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The TCP allocations of a worker and their peer connections not yet bound.
#[derive(Default)]
pub(super) struct TcpRelays {
    allocations: foldhash::HashMap<AllocationId, TcpAllocation>,
    waiting: foldhash::HashMap<ConnectionId, WaitingPeer>,
}

/// One TCP allocation's sockets.
struct TcpAllocation {
    local: SocketAddr,
    accept: tokio::task::AbortHandle,
    /// The client's source, under which its peer connections count for the TCP caps.
    client: std::net::IpAddr,
    hangup: Arc<Hangup>,
    traffic: Arc<SpliceTraffic>,
    _claim: PortClaim,
}

/// A peer connection not bound yet.
enum WaitingPeer {
    /// A Connect under way.
    Connecting {
        allocation: AllocationId,
        task: tokio::task::AbortHandle,
    },
    /// Open, waiting for its ConnectionBind (§5.3: what the peer sends waits in the kernel).
    Open {
        allocation: AllocationId,
        stream: tokio::net::TcpStream,
        slot: ConnectionSlot,
    },
}

impl WaitingPeer {
    fn allocation(&self) -> AllocationId {
        match self {
            WaitingPeer::Connecting { allocation, .. } | WaitingPeer::Open { allocation, .. } => {
                *allocation
            }
        }
    }
}

/// A peer connection handed from the worker that holds it to the one that splices it.
pub struct PeerHandoff {
    stream: std::net::TcpStream,
    slot: ConnectionSlot,
    bound: BoundConnection,
    hangup: Arc<Hangup>,
    traffic: Arc<SpliceTraffic>,
    /// The worker that holds the allocation, told when the splice ends.
    owner: usize,
}

impl std::fmt::Debug for PeerHandoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerHandoff")
            .field("peer", &self.bound.peer)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// The answer to a [`Command::BindConnection`].
pub type BindAnswer = Result<PeerHandoff, RequestError>;

impl Worker {
    /// Opens the listening socket of a TCP allocation and starts accepting on it.
    pub(super) fn open_tcp_relay(
        &mut self,
        allocation: AllocationId,
        family: Family,
    ) -> Result<SocketAddr, RelayOpenError> {
        let ip = match family {
            Family::V4 => self.relay.v4,
            Family::V6 => self.relay.v6,
        }
        .ok_or(RelayOpenError::NoPort)?;
        let (listener, local, claim) =
            tcp_relay::listen(ip, self.relay.ports, &self.relay.tcp_ports)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|error| {
            tracing::warn!(%error, "TCP relay socket setup failed");
            RelayOpenError::NoPort
        })?;
        let client = self
            .core
            .allocation(allocation)
            .map(|a| a.tuple().client.ip())
            .ok_or(RelayOpenError::NoPort)?;
        let shared = self.this.upgrade().ok_or(RelayOpenError::NoPort)?;
        let accept = tokio::task::spawn_local(accept_peers(shared, allocation, listener));
        self.tcp_relays.allocations.insert(
            allocation,
            TcpAllocation {
                local,
                accept: accept.abort_handle(),
                client,
                hangup: Arc::new(Hangup::default()),
                traffic: Arc::new(SpliceTraffic::default()),
                _claim: claim,
            },
        );
        Ok(local)
    }

    /// The allocation ended: its listener closes, its waiting peer connections close, and its
    /// splices (on whatever worker) hang up.
    pub(super) fn close_tcp_relay(&mut self, allocation: AllocationId) {
        let Some(relay) = self.tcp_relays.allocations.remove(&allocation) else {
            return;
        };
        relay.accept.abort();
        relay.hangup.hang_up();
        self.tcp_relays.waiting.retain(|_, waiting| {
            let keep = waiting.allocation() != allocation;
            if let (false, WaitingPeer::Connecting { task, .. }) = (keep, &*waiting) {
                task.abort();
            }
            keep
        });
    }

    /// What the splices of a TCP allocation relayed, chunks read counting as packets: the core
    /// counts only what it relayed itself, and a splice relays without it (added to the end
    /// log line and to the status API's allocation list).
    pub(super) fn tcp_traffic(&self, allocation: AllocationId) -> Option<Traffic> {
        use std::sync::atomic::Ordering::Relaxed;
        let t = &self.tcp_relays.allocations.get(&allocation)?.traffic;
        Some(Traffic {
            to_peer_packets: t.to_peer_chunks.load(Relaxed),
            to_peer_bytes: t.to_peer_bytes.load(Relaxed),
            to_client_packets: t.to_client_chunks.load(Relaxed),
            to_client_bytes: t.to_client_bytes.load(Relaxed),
        })
    }

    /// The core asked for a connection to `peer` (RFC 6062 §5.2): made from the relayed
    /// address within [`CONNECT_TIMEOUT`], counted against the client's TCP caps.
    pub(super) fn start_connect(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        connection: ConnectionId,
        peer: SocketAddr,
    ) {
        let Some(relay) = self.tcp_relays.allocations.get(&allocation) else {
            // No listener, so no relayed address to connect from: the Connect fails.
            self.connect_done(now, connection, Err(ConnectError::Failed));
            return;
        };
        let local = relay.local;
        let slot = match ConnectionSlot::take(&self.stream_limits, relay.client) {
            Ok(slot) => slot,
            Err(_) => {
                self.connect_done(now, connection, Err(ConnectError::NoCapacity));
                return;
            }
        };
        let Some(shared) = self.this.upgrade() else {
            return;
        };
        let task = tokio::task::spawn_local(async move {
            let result =
                tokio::time::timeout(CONNECT_TIMEOUT, tcp_relay::connect_from(local, peer)).await;
            let mut worker = shared.borrow_mut();
            let now = Instant::now();
            match result {
                Ok(Ok(stream)) => {
                    let waiting = WaitingPeer::Open {
                        allocation,
                        stream,
                        slot,
                    };
                    if worker.connect_done(now, connection, Ok(())) {
                        worker.tcp_relays.waiting.insert(connection, waiting);
                    }
                }
                _ => {
                    worker.tcp_relays.waiting.remove(&connection);
                    worker.connect_done(now, connection, Err(ConnectError::Failed));
                }
            }
            worker.after_core_call(now);
        });
        self.tcp_relays.waiting.insert(
            connection,
            WaitingPeer::Connecting {
                allocation,
                task: task.abort_handle(),
            },
        );
    }

    /// Tells the core how a Connect went and sends its answer; whether the connection lives.
    fn connect_done(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        result: Result<(), ConnectError>,
    ) -> bool {
        let mut out = std::mem::take(&mut self.event_out);
        let answered = self
            .core
            .handle_connect_result(now, connection, result, &mut out);
        if let Some((tuple, n)) = answered {
            self.send_to_client(&tuple, &out[..n]);
        }
        self.event_out = out;
        answered.is_some() && result.is_ok()
    }

    /// The core closes a peer connection nobody bound in time (§5.3).
    pub(super) fn close_connection(&mut self, connection: ConnectionId) {
        if let Some(WaitingPeer::Connecting { task, .. }) =
            self.tcp_relays.waiting.remove(&connection)
        {
            task.abort();
        }
    }

    /// Another worker (or this one) asks for the peer connection `connection` for a data
    /// connection whose ConnectionBind authenticated as `username` with `key`.
    pub(super) fn hand_over_peer(
        &mut self,
        connection: ConnectionId,
        username: &str,
        key: &crate::turn::credentials::Signing,
    ) -> BindAnswer {
        let bound = self.core.bind_connection(connection, username, key)?;
        let gone = RequestError::BadRequest("Unknown CONNECTION-ID");
        let relay = self.tcp_relays.allocations.get(&bound.allocation);
        let waiting = self.tcp_relays.waiting.remove(&connection);
        let (Some(relay), Some(WaitingPeer::Open { stream, slot, .. })) = (relay, waiting) else {
            self.core.handle_tcp_connection_closed(connection);
            return Err(gone);
        };
        let stream = stream.into_std().map_err(|_| {
            self.core.handle_tcp_connection_closed(connection);
            gone
        })?;
        Ok(PeerHandoff {
            stream,
            slot,
            bound,
            hangup: relay.hangup.clone(),
            traffic: relay.traffic.clone(),
            owner: self.index,
        })
    }

    /// A ConnectionBind passed this core's checks: the worker that minted the id is asked
    /// for the peer connection, then the client is answered. The stream waits on the returned
    /// [`Handover`] meanwhile.
    pub(super) fn start_bind(
        &mut self,
        tuple: FiveTuple,
        connection: ConnectionId,
        username: Box<str>,
        key: crate::turn::credentials::Signing,
        tid: crate::stun::TransactionId,
    ) {
        let (splice_tx, splice_rx) = oneshot::channel();
        self.handovers.insert(tuple, splice_rx);
        let (reply, answer) = oneshot::channel();
        let owner = connection.worker();
        let asked = match self.peers.get(owner) {
            Some(sender) => sender
                .send(Command::BindConnection {
                    connection,
                    username,
                    key,
                    reply,
                })
                .is_ok(),
            None => false,
        };
        let Some(shared) = self.this.upgrade() else {
            return;
        };
        tokio::task::spawn_local(async move {
            let answer: BindAnswer = if asked {
                match tokio::time::timeout(HANDOVER_TIMEOUT, answer).await {
                    Ok(Ok(answer)) => answer,
                    _ => Err(RequestError::ServerError),
                }
            } else {
                Err(RequestError::BadRequest("Unknown CONNECTION-ID"))
            };
            if let Err(error) = &answer {
                tracing::debug!(%connection, %error, "ConnectionBind refused");
            }
            let mut worker = shared.borrow_mut();
            let mut out = std::mem::take(&mut worker.event_out);
            let result = answer.as_ref().map(|_| ()).map_err(|e| *e);
            let n = worker.core.write_bind_answer(tid, &key, result, &mut out);
            worker.send_to_client(&tuple, &out[..n]);
            worker.event_out = out;
            let splicer = answer
                .ok()
                .map(|handoff| splicer(&shared, &worker, handoff));
            drop(worker);
            let _ = splice_tx.send(splicer);
        });
    }

    /// The handover waiting for the ConnectionBind just handled on `tuple`, if it was one.
    pub(super) fn take_handover(&mut self, tuple: &FiveTuple) -> Option<Handover> {
        self.handovers.remove(tuple)
    }
}

/// What a data connection runs once its ConnectionBind succeeded: the splice to its peer, on
/// this worker, within the allocation's limits; the allocation's worker hears when it ends.
fn splicer(shared: &Shared, worker: &Worker, handoff: PeerHandoff) -> Splicer {
    let weak = Rc::downgrade(shared);
    let epoch = worker.core.epoch();
    let owner_sender = worker.peers.get(handoff.owner).cloned();
    Box::new(move |client, early| {
        Box::pin(async move {
            let PeerHandoff {
                stream,
                slot,
                bound,
                hangup,
                traffic,
                ..
            } = handoff;
            let _slot = slot;
            let connection_peer = bound.peer;
            let allocation = bound.allocation;
            let connection = bound.connection;
            let limits = SpliceLimits { bound, epoch };
            let count = |direction: Direction, n: usize| {
                if let Some(worker) = weak.upgrade() {
                    let (to_peer, to_client) = match direction {
                        Direction::ToPeer => (n as u64, 0),
                        Direction::ToClient => (0, n as u64),
                    };
                    worker
                        .borrow_mut()
                        .core
                        .credit_tcp_relayed(to_peer, to_client);
                }
            };
            if let Ok(peer) = tokio::net::TcpStream::from_std(stream) {
                tcp_relay::splice(client, early, peer, &limits, &hangup, &traffic, &count).await;
            }
            tracing::debug!(allocation = %allocation, peer = %connection_peer, "TCP relay connection ended");
            if let Some(sender) = owner_sender {
                let _ = sender.send(Command::TcpConnectionClosed(connection));
            }
        })
    })
}

/// Longest wait between accept attempts on a relayed address while out of descriptors: as
/// short as a TURN listener's, since a peer waits for it.
const MAX_ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(200);

/// Accepts peers' connections on a TCP allocation's relayed address (RFC 6062 §5.3): each is
/// counted against the client's TCP caps, then announced to the client if the core permits
/// the peer, else closed at once.
async fn accept_peers(shared: Shared, allocation: AllocationId, listener: tokio::net::TcpListener) {
    let mut backoff = AcceptBackoff::new("TCP relay", MAX_ACCEPT_BACKOFF);
    loop {
        let (stream, peer) = backoff.accept(&listener).await;
        let mut worker = shared.borrow_mut();
        let Some(client) = worker
            .tcp_relays
            .allocations
            .get(&allocation)
            .map(|a| a.client)
        else {
            return;
        };
        let Ok(slot) = ConnectionSlot::take(&worker.stream_limits, client) else {
            continue;
        };
        let now = Instant::now();
        let mut out = std::mem::take(&mut worker.event_out);
        let peer = super::super::socket::normalize(peer);
        if let Some((connection, to, n)) = worker
            .core
            .handle_peer_connection(now, allocation, peer, &mut out)
        {
            let _ = stream.set_nodelay(true);
            worker.send_to_client(&to, &out[..n]);
            worker.tcp_relays.waiting.insert(
                connection,
                WaitingPeer::Open {
                    allocation,
                    stream,
                    slot,
                },
            );
        }
        worker.event_out = out;
        worker.after_core_call(now);
    }
}
