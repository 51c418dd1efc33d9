//! Connect (RFC 6062 §5.2): a TCP connection from a TCP allocation's relayed address to a
//! permitted peer, answered with its CONNECTION-ID once the I/O layer has opened it.

use std::net::SocketAddr;
use std::time::Instant;

use super::authenticate::Authenticated;
use super::reply::write_response;
use super::tcp::{BIND_DEADLINE, ConnectionId, ConnectionState, TcpConnection};
use super::{ClientAction, Event, FiveTuple, RequestError, Server, canonical_addr};
use crate::stun::{Message, Method, attr};

/// Why the I/O layer could not connect to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    /// Refused, unreachable, or not done within
    /// [`CONNECT_TIMEOUT`](super::tcp::CONNECT_TIMEOUT): 447.
    Failed,
    /// The node's or the client's TCP connection cap (`max-tcp-connections`,
    /// `max-tcp-connections-per-source`) is reached: 508.
    NoCapacity,
}

impl Server {
    pub(super) fn connect(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        _auth: &Authenticated,
    ) -> Result<ClientAction, RequestError> {
        // §5.2: no allocation on this connection: 437.
        let (id, relayed) = self.relayed_allocation(tuple)?;
        let alloc = self
            .allocation(id)
            .ok_or(RequestError::AllocationMismatch)?;
        let Some(tcp) = alloc.tcp.as_ref() else {
            return Err(RequestError::BadRequest("Connect needs a TCP allocation"));
        };
        let tid = msg.transaction_id();
        // §5.2: missing or invalid XOR-PEER-ADDRESS: 400.
        let peer = msg
            .get(attr::XOR_PEER_ADDRESS)
            .ok_or(RequestError::BadRequest("Missing XOR-PEER-ADDRESS"))?;
        let peer = attr::decode_xor_address(peer, &tid)
            .map_err(|_| RequestError::BadRequest("Malformed XOR-PEER-ADDRESS"))?;
        let peer = canonical_addr(peer);
        // §5.2: a connection to this peer being made, pending or active: 446.
        if tcp.connections.iter().any(|c| c.peer == peer) {
            return Err(RequestError::ConnectionAlreadyExists);
        }
        // §5.2: forbidden by local policy: 403 (and 443 for the other family, as for
        // CreatePermission); a peer without a permission is refused as well (§4.3 asks the
        // client to install one first), with 403.
        self.check_peer(peer, relayed)?;
        if !alloc.permits(peer.ip(), now) {
            return Err(RequestError::Forbidden("No permission for peer"));
        }
        let connection = self.new_connection_id();
        self.add_connection(
            id,
            TcpConnection {
                id: connection,
                peer,
                state: ConnectionState::Connecting { tid },
            },
        );
        self.events.push_back(Event::Connect {
            allocation: id,
            connection,
            peer,
        });
        Ok(ClientAction::None)
    }

    /// The I/O layer connected (or failed to connect) to the peer of [`Event::Connect`]. On
    /// success the connection waits [`BIND_DEADLINE`] for its ConnectionBind; either way the
    /// Connect response is written to `out`: send its `n` bytes to the returned 5-tuple.
    /// `None`: nothing to send (the allocation ended meanwhile: the I/O layer closes the
    /// connection, if any, with its relay).
    pub fn handle_connect_result(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        result: Result<(), ConnectError>,
        out: &mut [u8],
    ) -> Option<(FiveTuple, usize)> {
        let allocation = *self.connections.get(&connection)?;
        let alloc = self.allocation_mut(allocation)?;
        let tuple = alloc.tuple;
        let key = alloc.signing;
        let tcp = alloc.tcp.as_mut()?;
        let entry = tcp.connections.iter_mut().find(|c| c.id == connection)?;
        let ConnectionState::Connecting { tid } = entry.state else {
            return None;
        };
        let error = match result {
            Ok(()) => {
                entry.state = ConnectionState::Pending {
                    deadline: now + BIND_DEADLINE,
                };
                None
            }
            Err(ConnectError::Failed) => Some(RequestError::ConnectionFailed),
            Err(ConnectError::NoCapacity) => Some(RequestError::InsufficientCapacity),
        };
        let n = match error {
            None => {
                self.stats.tcp_connections_opened += 1;
                self.reschedule(allocation, now);
                let n = write_response(
                    out,
                    Method::CONNECT,
                    tid,
                    &self.config.software,
                    &key,
                    |w| w.attribute(attr::CONNECTION_ID, &connection.0.to_be_bytes()),
                )
                .unwrap_or(0);
                self.count_response(Method::CONNECT, 200);
                n
            }
            Some(error) => {
                self.stats.tcp_connections_failed += 1;
                self.remove_connection(connection);
                self.write_error(out, Method::CONNECT, tid, error, Some(&key))
            }
        };
        (n > 0).then_some((tuple, n))
    }

    /// The peer of a live connection (for the I/O layer's logs and status).
    pub fn tcp_connection_peer(&self, connection: ConnectionId) -> Option<SocketAddr> {
        let allocation = self.connections.get(&connection)?;
        self.allocation(*allocation)?
            .tcp
            .as_ref()?
            .connections
            .iter()
            .find(|c| c.id == connection)
            .map(|c| c.peer)
    }
}
