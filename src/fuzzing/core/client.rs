//! A client's side of a core input: bytes in as the I/O layer frames them (a datagram, or a
//! TCP/TLS stream), and the messages the fuzzer's attributes become: built, signed under a
//! user's key with a nonce the server issued, retried after a 438.

use crate::auth::rest_password;

/// The fuzzed clients sign with MD5 keys (MESSAGE-INTEGRITY).
type Key = [u8; 16];
use crate::config::Transport;
use crate::fuzzing::Input;
use crate::stun::{self, Class, Frame, Message, MessageWriter, Method, TransactionId, attr};
use crate::turn::ClientAction;

use super::Harness;
use super::op::{
    CREDENTIALS_LAST, FINGERPRINT, NO_INTEGRITY, NO_NONCE, USER_SHIFT, WRONG_KEY, WRONG_REALM,
};
use super::setup::{UNIX_AT_EPOCH, epoch, five_tuple};

impl Harness {
    /// Bytes from a client; returns the replies the client got.
    pub(super) fn client(&mut self, t: usize, data: &[u8]) -> Vec<Vec<u8>> {
        if five_tuple(t).transport == Transport::Udp {
            return self.client_message(t, data).into_iter().collect();
        }
        // TCP/TLS: as net/stream.rs reads a connection.
        let mut replies = Vec::new();
        let mut stream = std::mem::take(&mut self.streams[t]);
        stream.extend_from_slice(data);
        let mut consumed = 0;
        while consumed < stream.len() {
            let pending = &stream[consumed..];
            let (message, advance) = match stun::frame_len(pending) {
                Ok(Some(Frame::Stun(len))) => (len, len),
                Ok(Some(Frame::ChannelData { len, padded })) => (len, padded),
                Ok(None) => break,
                Err(_) => {
                    self.server.record_malformed();
                    self.disconnect(t);
                    return replies;
                }
            };
            if advance > pending.len() {
                break;
            }
            let message = pending[..message].to_vec();
            replies.extend(self.client_message(t, &message));
            consumed += advance;
        }
        stream.drain(..consumed);
        self.streams[t] = stream;
        replies
    }

    /// One client message (a datagram or a framed message) through `handle_client`.
    pub(super) fn client_message(&mut self, t: usize, data: &[u8]) -> Option<Vec<u8>> {
        let tuple = five_tuple(t);
        let request = match data.first() {
            Some(0x00..=0x3F) => Message::parse(data)
                .ok()
                .map(|m| (m.method(), m.class(), m.transaction_id())),
            _ => None,
        };
        if let Some((method, Class::Request, tid)) = request {
            self.tcp.last_request = Some((t, method, tid));
        }
        if let Some((Method::ALLOCATE, Class::Request, tid)) = request
            && self.server.allocation_of(&tuple).is_none()
        {
            self.allocate_tid.insert(t, tid);
        }
        let mut out = std::mem::take(&mut self.out);
        let action = self.server.handle_client(self.now, tuple, data, &mut out);
        let reply = match action {
            ClientAction::None => None,
            ClientAction::Reply(n) => {
                assert!(
                    n > 0 && n <= out.len(),
                    "reply of {n} bytes in {}",
                    out.len()
                );
                let reply = out[..n].to_vec();
                self.check_reply(t, request, &reply);
                if let Ok(msg) = Message::parse(&reply) {
                    assert!(
                        msg.class() != Class::Success
                            || !matches!(msg.method(), Method::CONNECT | Method::CONNECTION_BIND),
                        "a {:?} succeeded before the I/O layer connected or bound",
                        msg.method()
                    );
                }
                Some(reply)
            }
            ClientAction::Relay {
                allocation,
                peer,
                payload,
            } => {
                self.check_relay(t, data, allocation, peer, payload);
                None
            }
            // One worker: the connection is its own core's to bind.
            ClientAction::BindConnection {
                connection,
                username,
                key,
                tid,
            } => {
                let n = self
                    .server
                    .bind_and_answer(connection, &username, &key, tid, &mut out);
                assert!(
                    n > 0 && n <= out.len(),
                    "ConnectionBind answer of {n} bytes"
                );
                let reply = out[..n].to_vec();
                self.check_reply(t, request, &reply);
                self.bind_answered(t, connection, &username, &reply);
                Some(reply)
            }
        };
        self.out = out;
        self.drain_events();
        reply
    }

    /// A signed request (authenticated target), with a nonce got from the server first and a
    /// retry with the new nonce after a 438, as a client would.
    pub(super) fn signed(
        &mut self,
        t: usize,
        message_type: u16,
        tid: TransactionId,
        flags: u8,
        body: &[u8],
    ) {
        let Some(mut nonce) = self.nonce(t) else {
            return;
        };
        for _attempt in 0..2 {
            let Some((username, key)) = self.user(flags) else {
                return;
            };
            let realm = if flags & WRONG_REALM != 0 {
                "wrong.realm".to_owned()
            } else {
                self.config.realm.clone()
            };
            let signing_key = if flags & WRONG_KEY != 0 {
                [0x55; 16]
            } else {
                key
            };
            let credentials = |w: &mut MessageWriter<'_>| {
                w.attribute(attr::USERNAME, username.as_bytes())?;
                w.attribute(attr::REALM, realm.as_bytes())?;
                if flags & NO_NONCE == 0 {
                    w.attribute(attr::NONCE, &nonce)?;
                }
                Ok(())
            };
            let fingerprint = flags & FINGERPRINT != 0;
            let signed = flags & NO_INTEGRITY == 0;
            let mut message = build_message(
                message_type,
                tid,
                body,
                flags,
                fingerprint && !signed,
                &credentials,
            );
            if signed {
                message = sign(message, &signing_key, fingerprint);
            }
            let replies = self.client(t, &message);
            let fresh = replies.iter().find_map(|reply| stale_nonce(reply));
            match fresh {
                Some(fresh) => {
                    self.nonces.insert(five_tuple(t).client.ip(), fresh.clone());
                    nonce = fresh;
                }
                None => return,
            }
        }
    }

    /// The nonce to sign with from slot `t`: the last one the server gave its IP, else one
    /// asked for with an unsigned Allocate (none when the server does not answer).
    pub(super) fn nonce(&mut self, t: usize) -> Option<Vec<u8>> {
        let ip = five_tuple(t).client.ip();
        if let Some(nonce) = self.nonces.get(&ip) {
            return Some(nonce.clone());
        }
        self.counter += 1;
        let mut tid = [0xFE; 12];
        tid[8..].copy_from_slice(&self.counter.to_be_bytes());
        let request = build_message(0x0003, TransactionId(tid), &[], 0, true, &|_| Ok(()));
        let replies = self.client(t, &request);
        let nonce = replies.iter().find_map(|reply| {
            let msg = Message::parse(reply).ok()?;
            Some(msg.get(attr::NONCE)?.to_vec())
        })?;
        self.nonces.insert(ip, nonce.clone());
        Some(nonce)
    }

    /// The username and key that `flags` pick: a configured user, or a TURN REST API username
    /// (valid for an hour, or expired) under the first secret.
    pub(super) fn user(&mut self, flags: u8) -> Option<(String, Key)> {
        let choice = usize::from((flags >> USER_SHIFT) & 3);
        if choice < 2 {
            return self.users.get(choice % self.users.len().max(1)).cloned();
        }
        let secret = self.config.auth.secrets.first()?;
        let unix_now = UNIX_AT_EPOCH + (self.now - epoch()).as_secs();
        let expiry = if choice == 2 {
            unix_now + 3600
        } else {
            unix_now - 10
        };
        let username = format!("{expiry}:carol");
        let password = rest_password(secret.as_bytes(), &username);
        let key = stun::long_term_key(&username, &self.config.realm, &password);
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
        Some((username, key))
    }
}

/// A STUN message of type `message_type` (top bits cleared): `credentials` writes its
/// attributes before `body` (after, with [`CREDENTIALS_LAST`]); `body` is read as
/// type-length-value attributes, leniently (a short value is what is left), and written with
/// zero padding; FINGERPRINT last if `fingerprint`.
pub(super) fn build_message(
    message_type: u16,
    tid: TransactionId,
    body: &[u8],
    flags: u8,
    fingerprint: bool,
    credentials: &dyn Fn(&mut MessageWriter<'_>) -> Result<(), stun::StunError>,
) -> Vec<u8> {
    let mut buf = vec![0u8; stun::HEADER_LEN + body.len() + 1024];
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid)
        .expect("room for a header");
    let last = flags & CREDENTIALS_LAST != 0;
    if !last {
        let _ = credentials(&mut w);
    }
    let mut input = Input::new(body);
    while let (Some(typ), Some(len)) = (input.u16(), input.u16()) {
        let value = input.bytes(usize::from(len));
        input.bytes((4 - value.len() % 4) % 4);
        if w.attribute(typ, value).is_err() {
            break;
        }
    }
    if last {
        let _ = credentials(&mut w);
    }
    let n = w.finish();
    let mut message = buf[..n].to_vec();
    message[..2].copy_from_slice(&(message_type & 0x3FFF).to_be_bytes());
    if fingerprint {
        append_trailer(&mut message, attr::FINGERPRINT, 4, |covered| {
            (crc32fast::hash(covered) ^ 0x5354_554E)
                .to_be_bytes()
                .to_vec()
        });
    }
    message
}

/// `message` with MESSAGE-INTEGRITY under `key`, then FINGERPRINT if asked.
pub(super) fn sign(mut message: Vec<u8>, key: &[u8], fingerprint: bool) -> Vec<u8> {
    append_trailer(&mut message, attr::MESSAGE_INTEGRITY, 20, |covered| {
        stun::hmac_sha1(key, &[covered]).to_vec()
    });
    if fingerprint {
        append_trailer(&mut message, attr::FINGERPRINT, 4, |covered| {
            (crc32fast::hash(covered) ^ 0x5354_554E)
                .to_be_bytes()
                .to_vec()
        });
    }
    message
}

/// Appends an attribute whose value is computed over the message with its length field already
/// counting the attribute, as MESSAGE-INTEGRITY and FINGERPRINT are. Left out when the message
/// would outgrow the length field.
pub(super) fn append_trailer(
    message: &mut Vec<u8>,
    typ: u16,
    len: u16,
    value: impl FnOnce(&[u8]) -> Vec<u8>,
) {
    let body = u16::from_be_bytes([message[2], message[3]]);
    let Some(body) = body.checked_add(4 + len).filter(|b| *b <= 0xFFFC) else {
        return;
    };
    message[2..4].copy_from_slice(&body.to_be_bytes());
    let value = value(message);
    message.extend_from_slice(&typ.to_be_bytes());
    message.extend_from_slice(&len.to_be_bytes());
    message.extend_from_slice(&value);
}

/// The NONCE of a 438 reply.
pub(super) fn stale_nonce(reply: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::parse(reply).ok()?;
    let (code, _) = attr::decode_error_code(msg.get(attr::ERROR_CODE)?).ok()?;
    (code == 438).then(|| msg.get(attr::NONCE).map(<[u8]>::to_vec))?
}
