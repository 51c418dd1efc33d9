//! Authentication: the long-term credential mechanism with stateless nonces, MD5 and SHA-256
//! keys, USERNAME or USERHASH, the 401/438 challenge, and the reflection budget charged for each
//! answer to an unauthenticated source.

use std::time::Instant;

use super::Transport;
use super::credentials::{CredentialKind, Integrity, Key, Lookup, Signing};
use super::password::{Claim, Identity, OFFERED_ALGORITHMS, read_claim};
use super::reply::write_message;
use super::{ClientAction, FiveTuple, RequestError, Server, limits};
use crate::stun::{self, Class, Message, Method, TransactionId, attr};

/// What authentication established about a request.
pub(super) struct Authenticated {
    /// The key that verified it and the integrity attribute its response carries.
    pub(super) signing: Signing,
    pub(super) kind: CredentialKind,
    /// The username a USERHASH stood for, when the request named its user so and has no
    /// allocation yet (an Allocate needs the name); `None` for USERNAME.
    pub(super) hashed_username: Option<Box<str>>,
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
        if !msg.has_integrity() && msg.integrity_sha256_len().is_none() {
            return Err(self.reply_challenge(
                now,
                out,
                method,
                tid,
                tuple,
                RequestError::Unauthorized,
            ));
        }
        let claim = match read_claim(msg) {
            Ok(claim) => claim,
            Err(why) => {
                if !self.may_answer_unauthenticated(now, tuple) {
                    return Err(ClientAction::None);
                }
                return Err(self.reply_error(
                    out,
                    method,
                    tid,
                    RequestError::BadRequest(why),
                    None,
                ));
            }
        };
        if self
            .nonces
            .check(now, tuple.client.ip(), claim.nonce)
            .is_err()
        {
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
        let verify = |key: &Key| match claim.integrity {
            Integrity::Sha1 => msg.check_integrity(key.as_bytes()).is_ok(),
            Integrity::Sha256 => msg.check_integrity_sha256(key.as_bytes()).is_ok(),
        };
        let existing = self.allocation_of(tuple);
        if let Some(alloc) = existing
            && names(&claim, &alloc.username)
        {
            let now_unix = self.unix_time(now);
            let kind = alloc.principal.kind;
            let key = alloc.signing.key;
            let withdrawn = self.credentials.withdrawn(&alloc.username, kind, now_unix);
            // An expired REST username authenticates no more requests (the allocation relays
            // on until its lifetime ends), except the one that deletes it early.
            let expired =
                alloc.rest_expiry.is_some_and(|expiry| expiry < now_unix) && !is_delete(msg);
            // The allocation's requests use the password algorithm it was made with.
            if !withdrawn && !expired && key.algorithm() == claim.algorithm && verify(&key) {
                self.source_proven(now, tuple);
                return Ok(Authenticated {
                    signing: Signing {
                        key,
                        integrity: claim.integrity,
                    },
                    kind,
                    hashed_username: None,
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
        if claim.realm == self.config.realm {
            let now_unix = self.unix_time(now);
            let (realm, algorithm) = (claim.realm, claim.algorithm);
            lookup = match claim.identity {
                Identity::Name(username) => {
                    self.credentials
                        .keys(username, realm, algorithm, now_unix, &mut |key, kind| {
                            let ok = verify(key);
                            if ok {
                                found = Some((*key, kind, None));
                            }
                            ok
                        })
                }
                Identity::Hash(hash) => self.credentials.keys_by_userhash(
                    &hash,
                    realm,
                    algorithm,
                    now_unix,
                    &mut |username, key, kind| {
                        let ok = verify(key);
                        if ok {
                            found = Some((*key, kind, Some(username.into())));
                        }
                        ok
                    },
                ),
            };
        }
        if found.is_none() && lookup == Lookup::Unavailable {
            // The credential store cannot be trusted now: refuse rather than allow.
            if !self.may_answer_unauthenticated(now, tuple) {
                return Err(ClientAction::None);
            }
            return Err(self.reply_error(out, method, tid, RequestError::ServerError, None));
        }
        let Some((key, kind, hashed_username)) = found else {
            // Unknown user, expired or too long-lived REST username, wrong password, a user
            // without a key of the algorithm picked (configured by MD5 key only): the client
            // learns nothing more than 401.
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
        let signing = Signing {
            key,
            integrity: claim.integrity,
        };
        if existing.is_some() {
            // Valid credentials, but not the ones this allocation was made with.
            return Err(self.reply_error(
                out,
                method,
                tid,
                RequestError::WrongCredentials,
                Some(&signing),
            ));
        }
        Ok(Authenticated {
            signing,
            kind,
            hashed_username,
        })
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

    /// 401 or 438 with REALM, a fresh NONCE and PASSWORD-ALGORITHMS (RFC 8489 §9.2.4), without
    /// MESSAGE-INTEGRITY or reason phrase; nothing when the source is over its unauthenticated
    /// rate.
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
            w.attribute(attr::NONCE, &nonce)?;
            w.attribute(attr::PASSWORD_ALGORITHMS, &OFFERED_ALGORITHMS)
        }) {
            Ok(n) => ClientAction::Reply(n),
            Err(_) => ClientAction::None,
        }
    }
}

/// Does `claim` name the user `username`: by that name, or by its USERHASH?
fn names(claim: &Claim<'_>, username: &str) -> bool {
    match claim.identity {
        Identity::Name(name) => name == username,
        Identity::Hash(hash) => stun::userhash(username, claim.realm) == hash,
    }
}

/// Is `msg` a Refresh that deletes its allocation (LIFETIME 0)?
fn is_delete(msg: &Message<'_>) -> bool {
    msg.method() == Method::REFRESH
        && msg
            .get(attr::LIFETIME)
            .is_some_and(|v| matches!(attr::decode_u32(v), Ok(0)))
}
