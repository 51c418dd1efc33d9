//! What a request claims before its credentials are looked up (RFC 8489 §9.2.4): the user it
//! names (USERNAME, or USERHASH for username anonymity), the password algorithm it picked
//! (checked against the list the challenge offered: bid-down protection) and the integrity
//! attribute that signs it.

use super::credentials::{Integrity, PasswordAlgorithm};
use super::nonce::NONCE_PREFIX;
use crate::stun::{Message, attr};

/// PASSWORD-ALGORITHMS as every challenge carries it (RFC 8489 §14.11), in order of preference:
/// SHA-256, then MD5, neither with parameters.
pub const OFFERED_ALGORITHMS: [u8; 8] = [0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];

/// Whom a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Identity<'a> {
    /// USERNAME.
    Name(&'a str),
    /// USERHASH: SHA-256 of `username:realm` (§14.4).
    Hash([u8; 32]),
}

/// The credentials a request claims, read and checked for form, not yet verified.
#[derive(Debug, Clone, Copy)]
pub(super) struct Claim<'a> {
    pub(super) identity: Identity<'a>,
    pub(super) realm: &'a str,
    pub(super) nonce: &'a [u8],
    pub(super) algorithm: PasswordAlgorithm,
    pub(super) integrity: Integrity,
}

/// Reads the credentials of a request that carries MESSAGE-INTEGRITY or
/// MESSAGE-INTEGRITY-SHA256. `Err` holds the reason phrase of the 400 Bad Request it gets.
pub(super) fn read_claim<'a>(msg: &Message<'a>) -> Result<Claim<'a>, &'static str> {
    let text = |typ, max| msg.get(typ).map(|v| attr::decode_text(v, max));
    let username = text(attr::USERNAME, attr::MAX_USERNAME_LEN);
    let hash = msg.get(attr::USERHASH);
    let identity = match (username, hash) {
        (Some(Ok(name)), None) => Identity::Name(name),
        (None, Some(hash)) => {
            Identity::Hash(attr::decode_userhash(hash).map_err(|_| "Malformed USERHASH")?)
        }
        // §9.2.3: a request carries one or the other; both is a malformed request.
        (Some(_), Some(_)) => return Err("Both USERNAME and USERHASH"),
        (Some(Err(_)), None) | (None, None) => return Err("Missing USERNAME, REALM or NONCE"),
    };
    let (Some(Ok(realm)), Some(nonce)) =
        (text(attr::REALM, attr::MAX_TEXT_LEN), msg.get(attr::NONCE))
    else {
        return Err("Missing USERNAME, REALM or NONCE");
    };
    let algorithm = if nonce.starts_with(NONCE_PREFIX) {
        picked_algorithm(msg)?
    } else {
        // Not a nonce of ours (they all carry the cookie): 438 follows.
        PasswordAlgorithm::Md5
    };
    let integrity = match msg.integrity_sha256_len() {
        Some(32) => Integrity::Sha256,
        // §14.6: "the full 32 bytes unless the STUN Usage explicitly specifies that truncation
        // is allowed"; TURN (RFC 8656) does not.
        Some(_) => return Err("Truncated MESSAGE-INTEGRITY-SHA256"),
        None => Integrity::Sha1,
    };
    Ok(Claim {
        identity,
        realm,
        nonce,
        algorithm,
        integrity,
    })
}

/// RFC 8489 §9.2.4, for a nonce whose cookie has the "Password algorithms" bit: with neither
/// PASSWORD-ALGORITHM nor PASSWORD-ALGORITHMS, MD5; otherwise both must be there, the list
/// must be the one the challenge sent (so no one in between removed SHA-256 from it), and the
/// algorithm one of its entries, else 400.
fn picked_algorithm(msg: &Message<'_>) -> Result<PasswordAlgorithm, &'static str> {
    match (
        msg.get(attr::PASSWORD_ALGORITHM),
        msg.get(attr::PASSWORD_ALGORITHMS),
    ) {
        (None, None) => Ok(PasswordAlgorithm::Md5),
        (Some(picked), Some(offered)) => {
            if offered != OFFERED_ALGORITHMS {
                return Err("PASSWORD-ALGORITHMS differs from the one offered");
            }
            let (number, parameters) = attr::decode_password_algorithm(picked)
                .map_err(|_| "Malformed PASSWORD-ALGORITHM")?;
            match PasswordAlgorithm::from_number(number) {
                // Both offered algorithms take no parameters (§18.5.1).
                Some(algorithm) if parameters.is_empty() => Ok(algorithm),
                _ => Err("PASSWORD-ALGORITHM not among PASSWORD-ALGORITHMS"),
            }
        }
        _ => Err("PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS or the reverse"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Class, MessageWriter, Method, TransactionId};

    const NONCE: &[u8] = b"obMatJos2AAADAAAAAAAAAAAAAAAA";

    /// A request with `attributes` and MESSAGE-INTEGRITY-SHA256 (or MESSAGE-INTEGRITY).
    fn request(attributes: &[(u16, &[u8])], sha256: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 512];
        let mut w = MessageWriter::new(
            &mut buf,
            Method::ALLOCATE,
            Class::Request,
            TransactionId([1; 12]),
        )
        .unwrap();
        for (typ, value) in attributes {
            w.attribute(*typ, value).unwrap();
        }
        if sha256 {
            w.message_integrity_sha256(b"key").unwrap();
        } else {
            w.message_integrity(b"key").unwrap();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    fn claim(attributes: &[(u16, &[u8])], sha256: bool) -> Result<String, &'static str> {
        let buf = request(attributes, sha256);
        let msg = Message::parse(&buf).unwrap();
        read_claim(&msg).map(|c| format!("{:?} {:?} {:?}", c.identity, c.algorithm, c.integrity))
    }

    const USER: (u16, &[u8]) = (attr::USERNAME, b"alice");
    const REALM: (u16, &[u8]) = (attr::REALM, b"r");
    const OUR_NONCE: (u16, &[u8]) = (attr::NONCE, NONCE);
    const SHA256: (u16, &[u8]) = (attr::PASSWORD_ALGORITHM, &[0, 2, 0, 0]);
    const MD5: (u16, &[u8]) = (attr::PASSWORD_ALGORITHM, &[0, 1, 0, 0]);
    const OFFERED: (u16, &[u8]) = (attr::PASSWORD_ALGORITHMS, &OFFERED_ALGORITHMS);

    #[test]
    fn an_rfc5389_client_picks_md5() {
        assert_eq!(
            claim(&[USER, REALM, OUR_NONCE], false),
            Ok("Name(\"alice\") Md5 Sha1".into())
        );
        // MESSAGE-INTEGRITY-SHA256 is independent of the password algorithm (§9.2.4).
        assert_eq!(
            claim(&[USER, REALM, OUR_NONCE], true),
            Ok("Name(\"alice\") Md5 Sha256".into())
        );
    }

    #[test]
    fn an_algorithm_is_picked_from_the_offered_list() {
        assert_eq!(
            claim(&[USER, REALM, OUR_NONCE, SHA256, OFFERED], true),
            Ok("Name(\"alice\") Sha256 Sha256".into())
        );
        assert_eq!(
            claim(&[USER, REALM, OUR_NONCE, MD5, OFFERED], false),
            Ok("Name(\"alice\") Md5 Sha1".into())
        );
    }

    #[test]
    fn bid_down_and_unknown_algorithms_are_bad_requests() {
        let md5_only: (u16, &[u8]) = (attr::PASSWORD_ALGORITHMS, &[0, 1, 0, 0]);
        let reordered: (u16, &[u8]) = (attr::PASSWORD_ALGORITHMS, &[0, 1, 0, 0, 0, 2, 0, 0]);
        let unknown: (u16, &[u8]) = (attr::PASSWORD_ALGORITHM, &[0, 3, 0, 0]);
        let with_parameters: (u16, &[u8]) = (attr::PASSWORD_ALGORITHM, &[0, 2, 0, 2, 1, 1]);
        let truncated: (u16, &[u8]) = (attr::PASSWORD_ALGORITHM, &[0, 2]);
        for (attributes, why) in [
            (
                &[USER, REALM, OUR_NONCE, MD5, md5_only][..],
                "PASSWORD-ALGORITHMS differs from the one offered",
            ),
            (
                &[USER, REALM, OUR_NONCE, SHA256, reordered],
                "PASSWORD-ALGORITHMS differs from the one offered",
            ),
            (
                &[USER, REALM, OUR_NONCE, SHA256],
                "PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS or the reverse",
            ),
            (
                &[USER, REALM, OUR_NONCE, OFFERED],
                "PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS or the reverse",
            ),
            (
                &[USER, REALM, OUR_NONCE, unknown, OFFERED],
                "PASSWORD-ALGORITHM not among PASSWORD-ALGORITHMS",
            ),
            (
                &[USER, REALM, OUR_NONCE, with_parameters, OFFERED],
                "PASSWORD-ALGORITHM not among PASSWORD-ALGORITHMS",
            ),
            (
                &[USER, REALM, OUR_NONCE, truncated, OFFERED],
                "Malformed PASSWORD-ALGORITHM",
            ),
        ] {
            assert_eq!(claim(attributes, true), Err(why), "{attributes:?}");
        }
    }

    #[test]
    fn userhash_instead_of_username() {
        let hash = [7u8; 32];
        assert_eq!(
            claim(
                &[(attr::USERHASH, &hash), REALM, OUR_NONCE, SHA256, OFFERED],
                true
            ),
            Ok(format!("Hash({hash:?}) Sha256 Sha256"))
        );
        assert_eq!(
            claim(&[USER, (attr::USERHASH, &hash), REALM, OUR_NONCE], true),
            Err("Both USERNAME and USERHASH")
        );
        assert_eq!(
            claim(&[(attr::USERHASH, &hash[..31]), REALM, OUR_NONCE], true),
            Err("Malformed USERHASH")
        );
        assert_eq!(
            claim(&[REALM, OUR_NONCE], true),
            Err("Missing USERNAME, REALM or NONCE")
        );
        assert_eq!(
            claim(&[USER, OUR_NONCE], true),
            Err("Missing USERNAME, REALM or NONCE")
        );
    }

    #[test]
    fn a_truncated_sha256_integrity_is_refused() {
        let mut buf = request(&[USER, REALM, OUR_NONCE], true);
        // Cut the 32-byte value to 16: shorten the attribute and the message by 16 bytes.
        let at = buf.len() - 36;
        buf[at + 2..at + 4].copy_from_slice(&16u16.to_be_bytes());
        buf.truncate(buf.len() - 16);
        let len = (buf.len() - 20) as u16;
        buf[2..4].copy_from_slice(&len.to_be_bytes());
        let msg = Message::parse(&buf).unwrap();
        assert_eq!(msg.integrity_sha256_len(), Some(16));
        assert_eq!(
            read_claim(&msg).map(|_| ()),
            Err("Truncated MESSAGE-INTEGRITY-SHA256")
        );
    }
}
