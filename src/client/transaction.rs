//! One request's life: written and signed, sent (and re-sent over UDP on RFC 8489's
//! timeouts), its answer told from stray frames, forged answers and relayed data that arrives
//! meanwhile, and re-sent with fresh credentials when the [`Signer`](super::Signer) says so.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::data::classify;
use super::{Client, ClientError, PENDING_BYTES, PENDING_FRAMES, REQUEST_BUF_LEN, method_name};
use crate::stun::{Class, Message, MessageWriter, Method, StunError, TransactionId, attr};

impl Client {
    /// Sends a request that needs credentials: first as the [`Signer`](super::Signer) allows (unauthenticated
    /// until the server has named its realm and nonce), again with credentials after a 401 and
    /// with the new nonce after a 438. On success the answer is in `self.answer`.
    pub(super) async fn request(
        &mut self,
        method: Method,
        attrs: impl Fn(&mut MessageWriter<'_>) -> Result<(), StunError>,
    ) -> Result<(), ClientError> {
        let mut retries = 0;
        loop {
            let authenticated = self.signer.is_signing();
            let result = self.transact_once(method, authenticated, &attrs).await;
            // Only an error answer can be a challenge; after a timeout `self.answer` is old.
            let retry = matches!(result, Err(ClientError::Response { .. }))
                && Message::parse(&self.answer).is_ok_and(|msg| self.signer.retry(&msg, retries));
            if retry {
                retries += 1;
                continue;
            }
            return result;
        }
    }

    /// One transaction: writes the request (with credentials if `authenticated`) and sends it
    /// until an answer with its transaction ID arrives or the timeout passes. The answer is
    /// left in `self.answer`; an error answer becomes [`ClientError::Response`].
    pub(super) async fn transact_once(
        &mut self,
        method: Method,
        authenticated: bool,
        attrs: impl Fn(&mut MessageWriter<'_>) -> Result<(), StunError>,
    ) -> Result<(), ClientError> {
        let tid = random_tid();
        let len = self
            .write_request(method, tid, authenticated, attrs)
            .map_err(|_| {
                ClientError::Config(format!(
                    "{} request does not fit in {REQUEST_BUF_LEN} bytes",
                    method_name(method)
                ))
            })?;
        let started = Instant::now();
        let udp = !self.link.is_stream();
        let mut rto = self.timing.rto;
        let mut sent = 0;
        self.last_request_retransmitted = false;
        loop {
            self.link.send(&self.request[..len]).await?;
            sent += 1;
            let wait = if !udp {
                self.timing.stream_timeout
            } else if sent < self.timing.transmissions {
                rto
            } else {
                self.timing.rto * self.timing.last_wait_factor
            };
            if self
                .await_answer(method, tid, authenticated, Instant::now() + wait)
                .await?
            {
                break;
            }
            if !udp || sent >= self.timing.transmissions {
                return Err(ClientError::Timeout {
                    method,
                    after: started.elapsed(),
                });
            }
            self.stats.retransmissions += 1;
            self.last_request_retransmitted = true;
            rto *= 2;
        }
        let msg = Message::parse(&self.answer).map_err(|_| ClientError::BadResponse {
            method,
            what: "unparseable",
        })?;
        if msg.class() == Class::Success {
            return Ok(());
        }
        let (code, reason) = msg
            .get(attr::ERROR_CODE)
            .and_then(|v| attr::decode_error_code(v).ok())
            .ok_or(ClientError::BadResponse {
                method,
                what: "error response without a valid ERROR-CODE",
            })?;
        let alternate = msg
            .get(attr::ALTERNATE_SERVER)
            .and_then(|v| attr::decode_address(v).ok());
        Err(ClientError::Response {
            method,
            code,
            reason: reason.to_owned(),
            alternate,
        })
    }

    /// Writes the request into `self.request`: its size.
    fn write_request(
        &mut self,
        method: Method,
        tid: TransactionId,
        authenticated: bool,
        attrs: impl Fn(&mut MessageWriter<'_>) -> Result<(), StunError>,
    ) -> Result<usize, StunError> {
        let mut w = MessageWriter::new(&mut self.request, method, Class::Request, tid)?;
        attrs(&mut w)?;
        if authenticated {
            self.signer.sign(&mut w)?;
        }
        w.fingerprint()?;
        Ok(w.finish())
    }

    /// Reads frames until the answer to `tid` arrives (`true`, copied into `self.answer`) or
    /// `deadline` passes (`false`). Data frames meanwhile are kept for [`Client::recv`].
    async fn await_answer(
        &mut self,
        method: Method,
        tid: TransactionId,
        authenticated: bool,
        deadline: Instant,
    ) -> Result<bool, ClientError> {
        loop {
            let range = match tokio::time::timeout_at(deadline, self.link.recv_frame()).await {
                Err(_) => return Ok(false),
                Ok(frame) => frame?,
            };
            let frame = self.link.bytes(range);
            if classify(frame).is_some() {
                if self.pending.len() < PENDING_FRAMES
                    && self.pending_bytes + frame.len() <= PENDING_BYTES
                {
                    let mut copy = self.spare.pop().unwrap_or_default();
                    copy.clear();
                    copy.extend_from_slice(frame);
                    self.pending_bytes += copy.len();
                    self.pending.push_back(copy);
                    self.stats.pending_kept += 1;
                } else {
                    self.stats.pending_dropped += 1;
                }
                continue;
            }
            if is_answer(frame, method, tid, authenticated, self.signer.key()) {
                self.answer.clear();
                self.answer.extend_from_slice(frame);
                return Ok(true);
            }
            self.stats.ignored += 1;
        }
    }

    /// An address attribute of the success answer in `self.answer`.
    pub(super) fn answer_address(
        &self,
        method: Method,
        typ: u16,
    ) -> Result<Option<SocketAddr>, ClientError> {
        let msg = Message::parse(&self.answer).map_err(|_| ClientError::BadResponse {
            method,
            what: "unparseable",
        })?;
        match msg.get(typ) {
            None => Ok(None),
            Some(value) => attr::decode_xor_address(value, &msg.transaction_id())
                .map(Some)
                .map_err(|_| ClientError::BadResponse {
                    method,
                    what: "malformed address attribute",
                }),
        }
    }

    /// LIFETIME of the success answer in `self.answer`.
    pub(super) fn answer_lifetime(&self, method: Method) -> Result<Duration, ClientError> {
        let bad = ClientError::BadResponse {
            method,
            what: "no valid LIFETIME",
        };
        let msg = Message::parse(&self.answer).map_err(|_| ClientError::BadResponse {
            method,
            what: "unparseable",
        })?;
        let seconds = msg
            .get(attr::LIFETIME)
            .and_then(|v| attr::decode_u32(v).ok())
            .ok_or(bad)?;
        Ok(Duration::from_secs(u64::from(seconds)))
    }
}

/// Whether `frame` is the answer to our request `tid`: a success or error response of `method`
/// with that transaction ID and, for an authenticated request, a MESSAGE-INTEGRITY that checks
/// under `key` (required on a success; an error may lack it, as 401 and 438 do). Anything else
/// is treated as if it had not arrived (RFC 8489 §9.2.5), so a forged answer cannot end the
/// transaction.
fn is_answer(
    frame: &[u8],
    method: Method,
    tid: TransactionId,
    authenticated: bool,
    key: &[u8],
) -> bool {
    let Ok(msg) = Message::parse(frame) else {
        return false;
    };
    if msg.transaction_id() != tid
        || msg.method() != method
        || !matches!(msg.class(), Class::Success | Class::Error)
    {
        return false;
    }
    if !authenticated {
        return true;
    }
    match (msg.class(), msg.has_integrity()) {
        (_, true) => msg.check_integrity(key).is_ok(),
        (Class::Success, false) => false,
        (_, false) => true,
    }
}

/// A random transaction ID (RFC 8489 §6: uniformly random, 96 bits).
pub(super) fn random_tid() -> TransactionId {
    TransactionId(rand::random())
}
