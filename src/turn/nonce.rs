//! Stateless nonces: a timestamp and the client's IP, authenticated with a per-process key, so
//! that an unauthenticated request costs the server no memory; each begins with RFC 8489's
//! nonce cookie and the security features this server offers, which the MAC covers too.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::stun::hmac_sha1;

/// The nonce cookie and the STUN Security Feature set of every nonce (RFC 8489 §9.2, §18.1):
/// "obMatJos2", then the 24 feature bits as 4 base64 characters. The bits are numbered from the
/// least significant one (erratum 6290, which Appendix B.1's nonce `obMatJos2AAAC...` with
/// USERHASH follows): bit 0 "Password algorithms" and bit 1 "Username anonymity", so
/// 0x000003, "AAAD". With the "Password algorithms" bit set, a client that picks an algorithm
/// must echo PASSWORD-ALGORITHMS (§9.2.4): a man in the middle who strips the bits or the
/// list from a 401 is found out, because the bits are part of the nonce, which the MAC covers
/// and the client signs.
pub const NONCE_PREFIX: &[u8; 13] = b"obMatJos2AAAD";
/// Characters in the part after [`NONCE_PREFIX`]: URL-safe base64 of 4 bytes of time and 8
/// bytes of MAC. Short on purpose: every 401 carries one, and a 401 should stay small
/// (reflection).
const BODY_LEN: usize = 16;
/// Characters in a nonce: the prefix and the body.
pub const NONCE_LEN: usize = NONCE_PREFIX.len() + BODY_LEN;
const RAW_LEN: usize = 12;
const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a nonce was not accepted; both are answered with 438 Stale Nonce and a fresh one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceError {
    /// Not one of ours, or not for this client.
    Invalid,
    /// Ours, but older than the nonce lifetime.
    Stale,
}

/// Issues and checks nonces. Every worker holds a copy with the same key and epoch.
#[derive(Clone)]
pub struct Nonces {
    key: [u8; 32],
    epoch: Instant,
    lifetime: Duration,
}

impl Nonces {
    /// `epoch` is the instant time stamps count from; it must not be later than any `now` given.
    pub fn new(key: [u8; 32], epoch: Instant, lifetime: Duration) -> Self {
        Nonces {
            key,
            epoch,
            lifetime,
        }
    }

    /// The nonce lifetime.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A nonce for `client` issued at `now`.
    pub fn issue(&self, now: Instant, client: IpAddr) -> [u8; NONCE_LEN] {
        let stamp = self.stamp(now);
        let mut raw = [0u8; RAW_LEN];
        raw[..4].copy_from_slice(&stamp.to_be_bytes());
        raw[4..].copy_from_slice(&self.mac(stamp, client));
        let mut nonce = [0u8; NONCE_LEN];
        let (prefix, body) = nonce.split_at_mut(NONCE_PREFIX.len());
        prefix.copy_from_slice(NONCE_PREFIX);
        // 12 bytes are exactly 16 base64 characters, so this cannot fail.
        let written = BASE64.encode_slice(raw, body).unwrap_or(0);
        debug_assert_eq!(written, BODY_LEN);
        nonce
    }

    /// Checks a nonce a client sent back.
    pub fn check(&self, now: Instant, client: IpAddr, nonce: &[u8]) -> Result<(), NonceError> {
        let Some(body) = nonce
            .strip_prefix(NONCE_PREFIX.as_slice())
            .filter(|body| body.len() == BODY_LEN)
        else {
            return Err(NonceError::Invalid);
        };
        let mut raw = [0u8; RAW_LEN];
        match BASE64.decode_slice(body, &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return Err(NonceError::Invalid),
        }
        let stamp = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let expected = self.mac(stamp, client);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&raw[4..], &expected[..])) {
            return Err(NonceError::Invalid);
        }
        let age = u64::from(self.stamp(now).wrapping_sub(stamp));
        if age > self.lifetime.as_secs() {
            return Err(NonceError::Stale);
        }
        Ok(())
    }

    fn stamp(&self, now: Instant) -> u32 {
        // Wraps after 136 years of uptime; `check` compares with wrapping arithmetic.
        now.saturating_duration_since(self.epoch).as_secs() as u32
    }

    /// The MAC of a nonce: over its prefix (cookie and feature bits), time stamp and client.
    fn mac(&self, stamp: u32, client: IpAddr) -> [u8; 8] {
        let stamp = stamp.to_be_bytes();
        let full = match client {
            IpAddr::V4(ip) => hmac_sha1(&self.key, &[NONCE_PREFIX, &stamp, &ip.octets()]),
            IpAddr::V6(ip) => hmac_sha1(&self.key, &[NONCE_PREFIX, &stamp, &ip.octets()]),
        };
        let mut out = [0u8; 8];
        out.copy_from_slice(&full[..8]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn fresh_nonce_is_accepted_until_its_lifetime_ends() {
        let epoch = Instant::now();
        let nonces = Nonces::new([7; 32], epoch, Duration::from_secs(600));
        let issued = epoch + Duration::from_secs(5);
        let nonce = nonces.issue(issued, CLIENT);
        assert!(nonce.starts_with(b"obMatJos2AAAD"));
        assert_eq!(nonce.len(), 29);
        assert_eq!(nonces.check(issued, CLIENT, &nonce), Ok(()));
        let last_ok = issued + Duration::from_secs(600);
        assert_eq!(nonces.check(last_ok, CLIENT, &nonce), Ok(()));
        let stale = issued + Duration::from_secs(601);
        assert_eq!(nonces.check(stale, CLIENT, &nonce), Err(NonceError::Stale));
    }

    #[test]
    fn forged_or_foreign_nonces_are_invalid() {
        let epoch = Instant::now();
        let nonces = Nonces::new([7; 32], epoch, Duration::from_secs(600));
        let nonce = nonces.issue(epoch, CLIENT);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(nonces.check(epoch, other, &nonce), Err(NonceError::Invalid));
        let other_key = Nonces::new([8; 32], epoch, Duration::from_secs(600));
        assert_eq!(
            other_key.check(epoch, CLIENT, &nonce),
            Err(NonceError::Invalid)
        );
        let mut tampered = nonce;
        tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            nonces.check(epoch, CLIENT, &tampered),
            Err(NonceError::Invalid)
        );
        // The feature bits cannot be changed (here: "Password algorithms" stripped, 0x000002),
        // nor the cookie removed, without the nonce being refused.
        let mut stripped = nonce;
        stripped[12] = b'C';
        assert_eq!(
            nonces.check(epoch, CLIENT, &stripped),
            Err(NonceError::Invalid)
        );
        assert_eq!(
            nonces.check(epoch, CLIENT, &nonce[NONCE_PREFIX.len()..]),
            Err(NonceError::Invalid)
        );
        for bad in [
            &b""[..],
            b"AAAA",
            b"obMatJos2AAAD",
            b"AAAAAAAAAAAAAAAAAAAA",
            b"obMatJos2AAADAAAAAAAAAAAAAAAAAAAA",
            b"obMatJos2AAAD!!!!!!!!!!!!!!!!",
            &[0xff; NONCE_LEN],
        ] {
            assert_eq!(nonces.check(epoch, CLIENT, bad), Err(NonceError::Invalid));
        }
    }
}
