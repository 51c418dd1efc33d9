//! Keys and checksums: the long-term credential keys (MD5 and SHA-256), USERHASH, HMAC-SHA1 for
//! MESSAGE-INTEGRITY, HMAC-SHA256 for MESSAGE-INTEGRITY-SHA256 and the CRC-32 of FINGERPRINT.

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;

/// XORed into the CRC-32 of a message to form the FINGERPRINT value (RFC 8489 §14.7).
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// The long-term credential key: MD5 of `username:realm:password` (RFC 8489 §9.2.2).
///
/// The inputs are used as given; any OpaqueString/SASLprep processing is the caller's job.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(username.as_bytes());
    md5.update(b":");
    md5.update(realm.as_bytes());
    md5.update(b":");
    md5.update(password.as_bytes());
    md5.finalize().into()
}

/// The long-term credential key of the SHA-256 password algorithm: SHA-256 of
/// `username:realm:password` (RFC 8489 §9.2.2, §18.5.1.2). Inputs are used as given, as for
/// [`long_term_key`].
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    let mut sha = Sha256::new();
    for part in [username, ":", realm, ":", password] {
        sha.update(part.as_bytes());
    }
    sha.finalize().into()
}

/// The USERHASH value: SHA-256 of `username:realm` (RFC 8489 §14.4).
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    let mut sha = Sha256::new();
    for part in [username, ":", realm] {
        sha.update(part.as_bytes());
    }
    sha.finalize().into()
}

/// HMAC-SHA256 of the concatenation of `parts` under `key` (MESSAGE-INTEGRITY-SHA256).
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length (long keys are hashed first), so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA1 of the concatenation of `parts` under `key`.
pub fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    // HMAC accepts keys of any length (long keys are hashed first), so this cannot fail.
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The FINGERPRINT value for a message whose bytes up to the FINGERPRINT attribute are `data`.
pub(super) fn fingerprint(data: &[u8]) -> u32 {
    crc32fast::hash(data) ^ FINGERPRINT_XOR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_term_key_is_md5_of_joined_credentials() {
        // MD5("user:realm:pass"), computed independently with `md5sum`.
        let key = long_term_key("user", "realm", "pass");
        assert_eq!(
            key,
            [
                0x84, 0x93, 0xfb, 0xc5, 0x3b, 0xa5, 0x82, 0xfb, 0x4c, 0x04, 0x4c, 0x45, 0x6b, 0xdc,
                0x40, 0xeb
            ]
        );
    }

    #[test]
    fn sha256_key_and_userhash_are_sha256_of_joined_credentials() {
        // SHA-256("user:realm:pass") and SHA-256("user:realm"), computed with `sha256sum`.
        assert_eq!(
            hex(&long_term_key_sha256("user", "realm", "pass")),
            "07e934117abd40836e7c6329b54731b2b2d2a5f9a71f544922d75e0730d8251b"
        );
        assert_eq!(
            hex(&userhash("user", "realm")),
            "6a3029116b47aa98bcaa325399733dc1a23cd57e26b81bef3ff6531ce624e2da"
        );
    }

    #[test]
    fn hmac_sha256_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_matches_rfc2202_case_2() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mac = hmac_sha1(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            mac,
            [
                0xef, 0xfc, 0xdf, 0x6a, 0xe5, 0xeb, 0x2f, 0xa2, 0xd2, 0x74, 0x16, 0xd5, 0xf1, 0x84,
                0xdf, 0x9c, 0x25, 0x9a, 0x7c, 0x79
            ]
        );
    }
}
