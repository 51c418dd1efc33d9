//! ConnectionBind (RFC 6062 §5.4): a new client connection (the data connection) asks to be
//! spliced to a pending peer connection. The core of the worker the request arrived on checks
//! the request ([`ClientAction::BindConnection`]); the core of the worker that minted the
//! CONNECTION-ID checks the connection ([`Server::bind_connection`]); the first writes the
//! answer ([`Server::write_bind_answer`]).

use std::sync::Arc;

use subtle::ConstantTimeEq;

use super::authenticate::Authenticated;
use super::credentials::Signing;
use super::limits::{ByteRate, SharedByteRate};
use super::reply::write_message;
use super::tcp::{ConnectionId, ConnectionState};
use super::{AllocationId, ClientAction, FiveTuple, RequestError, Server, Transport};
use crate::stun::{Class, Message, Method, TransactionId, attr};

/// A peer connection given to a client data connection by [`Server::bind_connection`]: what
/// the splice between them must honour.
#[derive(Debug, Clone)]
pub struct BoundConnection {
    pub allocation: AllocationId,
    pub connection: ConnectionId,
    pub peer: std::net::SocketAddr,
    /// The allocation's bandwidth limit, shared by all its spliced connections (both
    /// directions together; 0 bits/s: none, until a reload sets one).
    pub bandwidth: Arc<SharedByteRate>,
    /// The limit over all of the user's allocations on the node.
    pub user_bandwidth: Option<Arc<SharedByteRate>>,
}

impl Server {
    /// The checks of §5.4 this core can make: a stream transport, not a control connection,
    /// a well-formed CONNECTION-ID. The rest is up to the core that minted the id.
    pub(super) fn connection_bind(
        &mut self,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
    ) -> Result<ClientAction, RequestError> {
        // §5.4: "If the client connection transport is not TCP or TLS ... 400".
        if tuple.transport == Transport::Udp {
            return Err(RequestError::BadRequest("ConnectionBind needs TCP or TLS"));
        }
        // A control connection (one with an allocation) cannot become a data connection.
        if self.by_tuple.contains_key(tuple) {
            return Err(RequestError::BadRequest(
                "ConnectionBind on a control connection",
            ));
        }
        let mut ids = msg.attributes().filter(|a| a.typ == attr::CONNECTION_ID);
        let value = ids
            .next()
            .ok_or(RequestError::BadRequest("Missing CONNECTION-ID"))?;
        if ids.next().is_some() {
            return Err(RequestError::BadRequest("Repeated CONNECTION-ID"));
        }
        let connection = attr::decode_connection_id(value.value)
            .map_err(|_| RequestError::BadRequest("Malformed CONNECTION-ID"))?;
        let username = msg
            .get(attr::USERNAME)
            .and_then(|v| attr::decode_text(v, attr::MAX_USERNAME_LEN).ok())
            .unwrap_or_default();
        Ok(ClientAction::BindConnection {
            connection: ConnectionId(connection),
            username: username.into(),
            key: auth.signing,
            tid: msg.transaction_id(),
        })
    }

    /// Binds the pending peer connection `connection` to a client data connection whose
    /// ConnectionBind authenticated as `username` with `key` (on any worker). §5.4: an id
    /// that names no pending connection (unknown, still connecting, already bound) gets 400;
    /// credentials other than the allocation's get 441.
    pub fn bind_connection(
        &mut self,
        connection: ConnectionId,
        username: &str,
        key: &Signing,
    ) -> Result<BoundConnection, RequestError> {
        let unknown = RequestError::BadRequest("Unknown CONNECTION-ID");
        let allocation = *self.connections.get(&connection).ok_or(unknown)?;
        let alloc = self.allocation_mut(allocation).ok_or(unknown)?;
        let same_key = alloc.signing.key.algorithm() == key.key.algorithm()
            && bool::from(alloc.signing.key.as_bytes().ct_eq(key.key.as_bytes()));
        if *alloc.username != *username || !same_key {
            return Err(RequestError::WrongCredentials);
        }
        let bits = alloc.bandwidth.as_ref().map(ByteRate::bits_per_second);
        let user_bandwidth = alloc.user_bandwidth.clone();
        let tcp = alloc.tcp.as_mut().ok_or(unknown)?;
        let entry = tcp
            .connections
            .iter_mut()
            .find(|c| c.id == connection)
            .ok_or(unknown)?;
        match entry.state {
            ConnectionState::Pending { .. } => entry.state = ConnectionState::Bound,
            ConnectionState::Connecting { .. } => {
                return Err(RequestError::BadRequest("Connection not established yet"));
            }
            ConnectionState::Bound => {
                return Err(RequestError::BadRequest("Connection already bound"));
            }
        }
        let peer = entry.peer;
        let bandwidth = tcp
            .bandwidth
            .get_or_insert_with(|| Arc::new(SharedByteRate::new(bits.unwrap_or(0))))
            .clone();
        self.stats.tcp_connections_bound += 1;
        Ok(BoundConnection {
            allocation,
            connection,
            peer,
            bandwidth,
            user_bandwidth,
        })
    }

    /// [`Server::bind_connection`] and [`Server::write_bind_answer`] in one, for a lone core
    /// that minted the id itself (the unit tests, the fuzz harness).
    pub fn bind_and_answer(
        &mut self,
        connection: ConnectionId,
        username: &str,
        key: &Signing,
        tid: TransactionId,
        out: &mut [u8],
    ) -> usize {
        let result = self.bind_connection(connection, username, key).map(|_| ());
        self.write_bind_answer(tid, key, result, out)
    }

    /// Writes the answer to the ConnectionBind `tid` (signed with `key`) into `out` and
    /// returns its length: success, or the error [`Server::bind_connection`] gave.
    pub fn write_bind_answer(
        &mut self,
        tid: TransactionId,
        key: &Signing,
        result: Result<(), RequestError>,
        out: &mut [u8],
    ) -> usize {
        match result {
            Ok(()) => {
                let n = write_message(
                    out,
                    Method::CONNECTION_BIND,
                    Class::Success,
                    tid,
                    &self.config.software,
                    Some(key),
                    |_| Ok(()),
                )
                .unwrap_or(0);
                self.count_response(Method::CONNECTION_BIND, 200);
                n
            }
            Err(error) => self.write_error(out, Method::CONNECTION_BIND, tid, error, Some(key)),
        }
    }
}
