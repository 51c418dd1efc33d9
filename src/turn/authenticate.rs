//! Authentication: the long-term credential mechanism with stateless nonces, the 401/438
//! challenge, and the reflection budget charged for each answer to an unauthenticated source.

use std::time::Instant;

use super::Transport;
use super::credentials::{CredentialKind, Key, Lookup};
use super::reply::write_message;
use super::{ClientAction, FiveTuple, RequestError, Server, limits};
use crate::stun::{Class, Message, Method, TransactionId, attr};

/// What authentication established about a request.
pub(super) struct Authenticated {
    pub(super) key: Key,
    pub(super) kind: CredentialKind,
}

impl Server {
    /// The long-term credential mechanism (RFC 8489 §9.2.4), with stateless nonces.
    pub(super) fn authenticate(
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

    /// May a request without valid credentials from `tuple` be answered now? Over UDP, where
    /// the source may be spoofed and the answer a reflection, each answer is charged to the
    /// source's reflection budget ([`SourceLimiter`]); beyond it the request is dropped and
    /// counted. A TCP or TLS client's address is proven by the handshake: it is always
    /// answered (its connections are capped by `max-tcp-connections-per-source`).
    pub(super) fn may_answer_unauthenticated(&mut self, now: Instant, tuple: &FiveTuple) -> bool {
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
}

/// Is `msg` a Refresh that deletes its allocation (LIFETIME 0)?
fn is_delete(msg: &Message<'_>) -> bool {
    msg.method() == Method::REFRESH
        && msg
            .get(attr::LIFETIME)
            .is_some_and(|v| matches!(attr::decode_u32(v), Ok(0)))
}
