//! A STUN message from a client: dispatch by class and method, retransmitted requests answered
//! from the cache, Binding, and the attributes this server understands.

use std::time::Instant;

use super::{ClientAction, FiveTuple, RequestError, Server};
use crate::stun::{Class, Message, MessageWriter, Method, StunError, attr};

impl Server {
    pub(super) fn handle_message(
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
        // RFC 6062's methods are known only while TCP allocations are granted.
        let known = match method {
            Method::ALLOCATE
            | Method::REFRESH
            | Method::CREATE_PERMISSION
            | Method::CHANNEL_BIND => true,
            Method::CONNECT | Method::CONNECTION_BIND => self.config.tcp_relay,
            _ => false,
        };
        if !known {
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
            return self.reply_unknown_attributes(msg, Some(&auth.signing), out);
        }
        let result = match method {
            Method::ALLOCATE => self.allocate(now, tuple, msg, &auth),
            Method::REFRESH => self.refresh(now, tuple, msg, &auth, out),
            Method::CREATE_PERMISSION => self.create_permission(now, tuple, msg, &auth, out),
            Method::CONNECT => self.connect(now, tuple, msg, &auth),
            Method::CONNECTION_BIND => self.connection_bind(tuple, msg, &auth),
            _ => self.channel_bind(now, tuple, msg, &auth, out),
        };
        match result {
            Ok(reply) => reply,
            Err(error) => self.reply_error(out, method, tid, error, Some(&auth.signing)),
        }
    }
}

/// Attributes this server understands (or knowingly ignores) in requests and indications.
pub(super) fn is_known_attribute(typ: u16) -> bool {
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
            | attr::MESSAGE_INTEGRITY_SHA256
            | attr::PASSWORD_ALGORITHM
            | attr::USERHASH
            | attr::CONNECTION_ID
    )
}
