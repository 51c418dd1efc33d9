//! The client side of the long-term credential mechanism (RFC 8489 §9.2), without I/O: what a
//! request carries (nothing until the server has named its realm and nonce, then USERNAME,
//! REALM, NONCE and MESSAGE-INTEGRITY) and whether an error answer (401, 438) asks for the
//! request again. [`Client`](super::Client) drives it over sockets; the core's tests and the
//! test harness's raw client drive it too, so the sign-and-retry rules exist once.

use crate::stun::{Message, MessageWriter, StunError, attr, long_term_key};

/// How many times one request is re-sent with fresh credentials (401 → with credentials, 438 →
/// with the new nonce) before its answer is taken as it is.
pub const AUTH_RETRIES: u32 = 2;

/// One user's credentials and what the server has said about them (realm, nonce).
///
/// A request loop: write the request, [`sign`](Signer::sign) it, send it; on its answer ask
/// [`retry`](Signer::retry) with the number of retries so far, and send the request again
/// (with a new transaction ID) while it says so.
#[derive(Clone)]
pub struct Signer {
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<Vec<u8>>,
    /// The long-term key of `realm`; zero until a realm is known.
    key: [u8; 16],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("username", &self.username)
            .field("realm", &self.realm)
            .field("signing", &self.is_signing())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer that knows no realm or nonce yet: its first request goes unsigned.
    pub fn new(username: &str, password: &str) -> Self {
        Signer {
            username: username.to_owned(),
            password: password.to_owned(),
            realm: None,
            nonce: None,
            key: [0; 16],
        }
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    /// The nonce requests are signed with, once the server has given one (for the core's tests;
    /// a client has no use for it).
    #[cfg(test)]
    pub(crate) fn nonce(&self) -> Option<&[u8]> {
        self.nonce.as_deref()
    }

    /// The long-term key for the realm the server named (all zeros before), which checks the
    /// MESSAGE-INTEGRITY of its answers.
    pub fn key(&self) -> &[u8; 16] {
        &self.key
    }

    /// Whether [`sign`](Signer::sign) adds credentials: the server has named realm and nonce.
    pub fn is_signing(&self) -> bool {
        self.nonce.is_some()
    }

    /// Adds USERNAME, REALM, NONCE and MESSAGE-INTEGRITY to a request whose own attributes are
    /// written, once realm and nonce are known; nothing before. FINGERPRINT, if any, comes
    /// after.
    pub fn sign(&self, w: &mut MessageWriter<'_>) -> Result<(), StunError> {
        let Some(nonce) = &self.nonce else {
            return Ok(());
        };
        w.attribute(attr::USERNAME, self.username.as_bytes())?;
        w.attribute(
            attr::REALM,
            self.realm.as_deref().unwrap_or_default().as_bytes(),
        )?;
        w.attribute(attr::NONCE, nonce)?;
        w.message_integrity(&self.key)
    }

    /// Whether the request that got `answer` is to be sent again, signed with what the answer
    /// taught, after `retries` retries of it so far: a 401 to an unsigned request or a 438, with
    /// REALM and NONCE (UTF-8, at most 763 bytes as RFC 8489 says) and, for a 438, a nonce other
    /// than the one it refused (or retrying would loop); at most [`AUTH_RETRIES`] times. A 401
    /// to a signed request is final: the credentials are wrong.
    pub fn retry(&mut self, answer: &Message<'_>, retries: u32) -> bool {
        let code = answer
            .get(attr::ERROR_CODE)
            .and_then(|v| attr::decode_error_code(v).ok())
            .map(|(code, _)| code);
        let challenged = match code {
            Some(438) => true,
            Some(401) => !self.is_signing(),
            _ => false,
        };
        challenged && retries < AUTH_RETRIES && self.learn(answer)
    }

    /// Takes REALM and NONCE from a 401 or 438: whether a retry can use them.
    fn learn(&mut self, answer: &Message<'_>) -> bool {
        let text = |typ| {
            answer
                .get(typ)
                .and_then(|v| attr::decode_text(v, attr::MAX_TEXT_LEN).ok())
        };
        let (Some(realm), Some(nonce)) = (text(attr::REALM), text(attr::NONCE)) else {
            return false;
        };
        if self.nonce.as_deref() == Some(nonce.as_bytes()) {
            return false;
        }
        self.use_challenge(realm, nonce.as_bytes());
        true
    }

    /// Signs from now on with `realm` and `nonce`, e.g. ones another client was given.
    pub fn use_challenge(&mut self, realm: &str, nonce: &[u8]) {
        if self.realm.as_deref() != Some(realm) {
            self.key = long_term_key(&self.username, realm, &self.password);
            self.realm = Some(realm.to_owned());
        }
        self.nonce = Some(nonce.to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Class, Method, TransactionId};

    fn answer(buf: &mut [u8], code: u16, nonce: &[u8]) -> usize {
        let mut w = MessageWriter::new(buf, Method::ALLOCATE, Class::Error, TransactionId([1; 12]))
            .unwrap();
        w.error_code(code, "challenge").unwrap();
        w.attribute(attr::REALM, b"example.org").unwrap();
        w.attribute(attr::NONCE, nonce).unwrap();
        w.finish()
    }

    #[test]
    fn a_401_then_a_438_teach_realm_and_nonce_and_a_signed_401_is_final() {
        let mut signer = Signer::new("alice", "wonderland");
        let mut buf = [0u8; 200];
        let n = answer(&mut buf, 401, b"first");
        assert!(signer.retry(&Message::parse(&buf[..n]).unwrap(), 0));
        assert_eq!(signer.nonce(), Some(&b"first"[..]));
        assert_eq!(
            signer.key(),
            &long_term_key("alice", "example.org", "wonderland")
        );
        // Signed now: a 401 means wrong credentials, a 438 with the same nonce would loop.
        assert!(!signer.retry(&Message::parse(&buf[..n]).unwrap(), 1));
        let n = answer(&mut buf, 438, b"first");
        assert!(!signer.retry(&Message::parse(&buf[..n]).unwrap(), 1));
        let n = answer(&mut buf, 438, b"second");
        assert!(!signer.retry(&Message::parse(&buf[..n]).unwrap(), AUTH_RETRIES));
        assert!(signer.retry(&Message::parse(&buf[..n]).unwrap(), 1));
        assert_eq!(signer.nonce(), Some(&b"second"[..]));
    }

    #[test]
    fn requests_are_signed_only_once_a_nonce_is_known() {
        let mut signer = Signer::new("alice", "wonderland");
        let mut buf = [0u8; 200];
        let tid = TransactionId([2; 12]);
        let mut w = MessageWriter::new(&mut buf, Method::REFRESH, Class::Request, tid).unwrap();
        signer.sign(&mut w).unwrap();
        let n = w.finish();
        assert!(!Message::parse(&buf[..n]).unwrap().has_integrity());
        signer.use_challenge("example.org", b"nonce");
        let mut w = MessageWriter::new(&mut buf, Method::REFRESH, Class::Request, tid).unwrap();
        signer.sign(&mut w).unwrap();
        let n = w.finish();
        let msg = Message::parse(&buf[..n]).unwrap();
        assert_eq!(msg.get(attr::USERNAME), Some(&b"alice"[..]));
        assert_eq!(msg.get(attr::NONCE), Some(&b"nonce"[..]));
        assert_eq!(msg.check_integrity(signer.key()), Ok(()));
    }
}
