//! `Message<'a>`: a validated STUN message borrowed from the datagram, with its attributes read in
//! place.

use subtle::ConstantTimeEq;

use super::attr::{self, is_comprehension_required};
use super::integrity::{fingerprint, hmac_sha1, hmac_sha256};
use super::{
    Class, HEADER_LEN, MAGIC_COOKIE, MAX_ATTRIBUTES, MAX_UNKNOWN_REPORTED, Method, StunError,
    TransactionId, padded_len, read_u16, read_u32, visits,
};

/// Size of a MESSAGE-INTEGRITY attribute (header and HMAC-SHA1 value).
const INTEGRITY_ATTR_LEN: usize = 4 + 20;

/// A STUN message whose header and attribute layout have been validated.
///
/// Built only by [`Message::parse`]; every accessor is infallible afterwards.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    buf: &'a [u8],
    method: Method,
    class: Class,
    tid: TransactionId,
    /// Offset of the first MESSAGE-INTEGRITY attribute header.
    integrity: Option<usize>,
    /// Offset of the first MESSAGE-INTEGRITY-SHA256 attribute header (a MESSAGE-INTEGRITY
    /// after it is ignored).
    integrity_sha256: Option<usize>,
    /// Offset of the FINGERPRINT attribute header (always the last attribute).
    fingerprint: Option<usize>,
    /// End of the attributes that count, FINGERPRINT aside: just after the first of
    /// MESSAGE-INTEGRITY and MESSAGE-INTEGRITY-SHA256 if present, else just before FINGERPRINT,
    /// else the end of the message.
    counted_end: usize,
}

/// One attribute as found on the wire; `value` excludes the padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    pub typ: u16,
    pub value: &'a [u8],
}

/// Iterator over the attributes of a [`Message`] that count: those up to and including the first
/// MESSAGE-INTEGRITY, then FINGERPRINT if present.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
    fingerprint: Option<usize>,
}

/// For a buffer starting with a STUN header, the size of the whole message (20 + header length);
/// `None` if fewer than 4 bytes are available.
pub fn message_len(buf: &[u8]) -> Option<usize> {
    read_u16(buf, 2).map(|len| HEADER_LEN + usize::from(len))
}

/// The class named by the message type of a buffer that starts like a STUN message, read
/// without parsing anything else (so that a caller can refuse an oversized request before any
/// work); `None` if fewer than 2 bytes are available or the top two bits are set.
pub fn message_class(buf: &[u8]) -> Option<Class> {
    read_u16(buf, 0)
        .filter(|t| t & 0xC000 == 0)
        .map(|t| split_type(t).1)
}

impl<'a> Message<'a> {
    /// Parses `buf`, which must hold exactly one STUN message, and validates every attribute's
    /// framing, the lengths of MESSAGE-INTEGRITY (20) and MESSAGE-INTEGRITY-SHA256 (16 to 32, a
    /// multiple of 4: RFC 8489 §14.6), FINGERPRINT's position and value. More than
    /// [`MAX_ATTRIBUTES`] attributes (those after MESSAGE-INTEGRITY included) is
    /// [`StunError::TooManyAttributes`]: the walk stops where the one too many starts, so
    /// parsing reads at most [`MAX_ATTRIBUTES`] attribute headers, then the CRC of FINGERPRINT.
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, StunError> {
        let header = buf.first_chunk::<HEADER_LEN>().ok_or(StunError::TooShort)?;
        let [t0, t1, l0, l1, c0, c1, c2, c3, tid @ ..] = *header;
        if t0 & 0xC0 != 0 || u32::from_be_bytes([c0, c1, c2, c3]) != MAGIC_COOKIE {
            return Err(StunError::NotStun);
        }
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        if len % 4 != 0 || HEADER_LEN + len != buf.len() {
            return Err(StunError::BadLength);
        }
        let (method, class) = split_type(u16::from_be_bytes([t0, t1]));

        let mut integrity = None;
        let mut integrity_sha256 = None;
        let mut fingerprint_at = None;
        let mut counted_end = buf.len();
        let mut pos = HEADER_LEN;
        let mut count = 0;
        while pos < buf.len() {
            if fingerprint_at.is_some() {
                return Err(StunError::BadFingerprint);
            }
            count += 1;
            if count > MAX_ATTRIBUTES {
                return Err(StunError::TooManyAttributes);
            }
            visits::record();
            let (typ, value_len) =
                attribute_header(buf, pos).ok_or(StunError::BadAttributeLength)?;
            let next = pos + 4 + padded_len(value_len);
            if next > buf.len() {
                return Err(StunError::BadAttributeLength);
            }
            match typ {
                attr::FINGERPRINT => {
                    if value_len != 4 {
                        return Err(StunError::BadAttributeLength);
                    }
                    fingerprint_at = Some(pos);
                    if integrity.is_none() && integrity_sha256.is_none() {
                        counted_end = pos;
                    }
                }
                // RFC 8489 §9: what follows MESSAGE-INTEGRITY is ignored but
                // MESSAGE-INTEGRITY-SHA256 and FINGERPRINT; what follows MESSAGE-INTEGRITY-SHA256
                // alone is ignored but FINGERPRINT (so a later MESSAGE-INTEGRITY too).
                attr::MESSAGE_INTEGRITY if integrity.is_none() && integrity_sha256.is_none() => {
                    if value_len != 20 {
                        return Err(StunError::BadAttributeLength);
                    }
                    integrity = Some(pos);
                    counted_end = next;
                }
                attr::MESSAGE_INTEGRITY_SHA256 if integrity_sha256.is_none() => {
                    if !(16..=32).contains(&value_len) || value_len % 4 != 0 {
                        return Err(StunError::BadAttributeLength);
                    }
                    integrity_sha256 = Some(pos);
                    if integrity.is_none() {
                        counted_end = next;
                    }
                }
                _ => {}
            }
            pos = next;
        }

        if let Some(at) = fingerprint_at {
            let covered = buf.get(..at).ok_or(StunError::BadFingerprint)?;
            if read_u32(buf, at + 4) != Some(fingerprint(covered)) {
                return Err(StunError::BadFingerprint);
            }
        }

        Ok(Message {
            buf,
            method,
            class,
            tid: TransactionId(tid),
            integrity,
            integrity_sha256,
            fingerprint: fingerprint_at,
            counted_end,
        })
    }

    pub fn method(&self) -> Method {
        self.method
    }

    pub fn class(&self) -> Class {
        self.class
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.tid
    }

    /// The whole message, as parsed.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// The attributes that count, in wire order.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            buf: self.buf,
            pos: HEADER_LEN,
            end: self.counted_end,
            fingerprint: self.fingerprint,
        }
    }

    /// The value of the first attribute of type `typ` among those that count: one walk over
    /// them, at most [`MAX_ATTRIBUTES`] long.
    pub fn get(&self, typ: u16) -> Option<&'a [u8]> {
        self.attributes().find(|a| a.typ == typ).map(|a| a.value)
    }

    /// Does the message carry MESSAGE-INTEGRITY?
    pub fn has_integrity(&self) -> bool {
        self.integrity.is_some()
    }

    /// The length of the MESSAGE-INTEGRITY-SHA256 value that counts (32, or 16 to 28 when
    /// truncated), if the message carries one.
    pub fn integrity_sha256_len(&self) -> Option<usize> {
        let at = self.integrity_sha256?;
        read_u16(self.buf, at + 2).map(usize::from)
    }

    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint.is_some()
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) under `key`: the short-term password
    /// or the [`long_term_key`](super::long_term_key). `BadIntegrity` if absent or wrong.
    pub fn check_integrity(&self, key: &[u8]) -> Result<(), StunError> {
        let at = self.integrity.ok_or(StunError::BadIntegrity)?;
        let (header, body, expected) = self.covered(at, INTEGRITY_ATTR_LEN)?;
        let mac = hmac_sha1(key, &[&header, body]);
        if bool::from(mac.as_slice().ct_eq(expected)) {
            Ok(())
        } else {
            Err(StunError::BadIntegrity)
        }
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256, RFC 8489 §14.6) under `key`: a truncated
    /// value is compared with as many leading bytes of the HMAC. `BadIntegrity` if absent or
    /// wrong. Whether a truncated value is acceptable is the usage's call (TURN: see
    /// [`Message::integrity_sha256_len`]).
    pub fn check_integrity_sha256(&self, key: &[u8]) -> Result<(), StunError> {
        let at = self.integrity_sha256.ok_or(StunError::BadIntegrity)?;
        let len = self.integrity_sha256_len().ok_or(StunError::BadIntegrity)?;
        let (header, body, expected) = self.covered(at, 4 + len)?;
        let mac = hmac_sha256(key, &[&header, body]);
        let mac = mac.get(..len).ok_or(StunError::BadIntegrity)?;
        if bool::from(mac.ct_eq(expected)) {
            Ok(())
        } else {
            Err(StunError::BadIntegrity)
        }
    }

    /// The HMAC input for the integrity attribute at `at` (`attr_len` bytes, header included)
    /// and the value it carries.
    fn covered(&self, at: usize, attr_len: usize) -> Result<Covered<'a>, StunError> {
        let mut header = *self
            .buf
            .first_chunk::<HEADER_LEN>()
            .ok_or(StunError::BadIntegrity)?;
        let covered_len =
            u16::try_from(at + attr_len - HEADER_LEN).map_err(|_| StunError::BadIntegrity)?;
        let [l0, l1] = covered_len.to_be_bytes();
        header[2] = l0;
        header[3] = l1;
        let body = self
            .buf
            .get(HEADER_LEN..at)
            .ok_or(StunError::BadIntegrity)?;
        let expected = self
            .buf
            .get(at + 4..at + attr_len)
            .ok_or(StunError::BadIntegrity)?;
        Ok((header, body, expected))
    }

    /// Comprehension-required attribute types (< 0x8000) for which `known` is false, each type
    /// once, in wire order, at most [`MAX_UNKNOWN_REPORTED`] of them: what goes into
    /// UNKNOWN-ATTRIBUTES of a 420 response.
    ///
    /// One walk over the attributes; the types reported so far are kept in a fixed array of
    /// [`MAX_UNKNOWN_REPORTED`], which also ends the walk once full. So each attribute costs at
    /// most that many comparisons and one call of `known`, and nothing is allocated.
    pub fn unknown_required(&self, known: impl Fn(u16) -> bool) -> impl Iterator<Item = u16> {
        let mut rest = self.attributes();
        let mut reported = [0u16; MAX_UNKNOWN_REPORTED];
        let mut count = 0;
        std::iter::from_fn(move || {
            if count == MAX_UNKNOWN_REPORTED {
                return None;
            }
            let typ = rest.by_ref().map(|a| a.typ).find(|&t| {
                is_comprehension_required(t) && !reported[..count].contains(&t) && !known(t)
            })?;
            reported[count] = typ;
            count += 1;
            Some(typ)
        })
    }
}

impl<'a> Iterator for Attributes<'a> {
    type Item = RawAttribute<'a>;

    fn next(&mut self) -> Option<RawAttribute<'a>> {
        if self.pos < self.end {
            visits::record();
            let (typ, len) = attribute_header(self.buf, self.pos)?;
            let value = self.buf.get(self.pos + 4..self.pos + 4 + len)?;
            self.pos += 4 + padded_len(len);
            return Some(RawAttribute { typ, value });
        }
        let at = self.fingerprint.take()?;
        let value = self.buf.get(at + 4..at + 8)?;
        Some(RawAttribute {
            typ: attr::FINGERPRINT,
            value,
        })
    }
}

/// What an integrity attribute covers: the header with its length field ending just after the
/// attribute, the attributes before it; and the value the attribute carries.
type Covered<'a> = ([u8; HEADER_LEN], &'a [u8], &'a [u8]);

/// Type and value length of the attribute whose header starts at `pos`.
fn attribute_header(buf: &[u8], pos: usize) -> Option<(u16, usize)> {
    Some((read_u16(buf, pos)?, usize::from(read_u16(buf, pos + 2)?)))
}

/// The 16-bit message type for `method` and `class` (RFC 8489 §5): the class bits C1 and C0 sit
/// at bits 8 and 4, the 12 method bits around them. Method bits above the 12th are dropped.
pub(super) fn message_type(method: Method, class: Class) -> u16 {
    let m = method.0;
    let c = match class {
        Class::Request => 0x000,
        Class::Indication => 0x010,
        Class::Success => 0x100,
        Class::Error => 0x110,
    };
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | c
}

/// Splits a message type into method and class; the inverse of [`message_type`].
fn split_type(t: u16) -> (Method, Class) {
    let method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let class = match t & 0x0110 {
        0x000 => Class::Request,
        0x010 => Class::Indication,
        0x100 => Class::Success,
        _ => Class::Error,
    };
    (Method(method), class)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::attr::*;
    use crate::stun::long_term_key;
    use crate::stun::test_vectors::*;

    fn all_vectors() -> [(&'static str, &'static [u8], Vec<u8>); 4] {
        [
            ("2.1", REQUEST, SHORT_TERM_PASSWORD.as_bytes().to_vec()),
            (
                "2.2",
                RESPONSE_IPV4,
                SHORT_TERM_PASSWORD.as_bytes().to_vec(),
            ),
            (
                "2.3",
                RESPONSE_IPV6,
                SHORT_TERM_PASSWORD.as_bytes().to_vec(),
            ),
            (
                "2.4",
                REQUEST_LONG_TERM,
                long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD).to_vec(),
            ),
        ]
    }

    #[test]
    fn type_encoding_round_trips() {
        assert_eq!(message_type(Method::BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(Method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(Method::BINDING, Class::Error), 0x0111);
        assert_eq!(message_type(Method::ALLOCATE, Class::Request), 0x0003);
        assert_eq!(message_type(Method::ALLOCATE, Class::Error), 0x0113);
        assert_eq!(message_type(Method::SEND, Class::Indication), 0x0016);
        assert_eq!(message_type(Method::DATA, Class::Indication), 0x0017);
        assert_eq!(message_type(Method::CHANNEL_BIND, Class::Success), 0x0109);
        for m in 0..0x1000 {
            for c in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let t = message_type(Method(m), c);
                assert_eq!(t & 0xC000, 0);
                assert_eq!(split_type(t), (Method(m), c));
            }
        }
    }

    #[test]
    fn rfc5769_request() {
        let msg = Message::parse(REQUEST).unwrap();
        assert_eq!(msg.method(), Method::BINDING);
        assert_eq!(msg.class(), Class::Request);
        assert_eq!(msg.transaction_id(), VECTOR_TID);
        assert_eq!(msg.get(SOFTWARE), Some(&b"STUN test client"[..]));
        assert_eq!(decode_u32(msg.get(PRIORITY).unwrap()), Ok(0x6e00_01ff));
        assert_eq!(
            msg.get(ICE_CONTROLLED),
            Some(&[0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36][..])
        );
        assert_eq!(
            decode_text(msg.get(USERNAME).unwrap(), MAX_USERNAME_LEN),
            Ok("evtj:h6vY")
        );
        assert!(msg.has_integrity() && msg.has_fingerprint());
        assert_eq!(msg.check_integrity(SHORT_TERM_PASSWORD.as_bytes()), Ok(()));
        assert_eq!(
            msg.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBr"),
            Err(StunError::BadIntegrity)
        );
        let types: Vec<u16> = msg.attributes().map(|a| a.typ).collect();
        assert_eq!(
            types,
            [
                SOFTWARE,
                PRIORITY,
                ICE_CONTROLLED,
                USERNAME,
                MESSAGE_INTEGRITY,
                FINGERPRINT
            ]
        );
    }

    #[test]
    fn rfc5769_ipv4_response() {
        let msg = Message::parse(RESPONSE_IPV4).unwrap();
        assert_eq!(
            (msg.method(), msg.class()),
            (Method::BINDING, Class::Success)
        );
        assert_eq!(msg.transaction_id(), VECTOR_TID);
        assert_eq!(msg.get(SOFTWARE), Some(&b"test vector"[..]));
        let addr = decode_xor_address(msg.get(XOR_MAPPED_ADDRESS).unwrap(), &VECTOR_TID);
        assert_eq!(addr, Ok("192.0.2.1:32853".parse().unwrap()));
        assert_eq!(msg.check_integrity(SHORT_TERM_PASSWORD.as_bytes()), Ok(()));
        assert!(msg.has_fingerprint());
    }

    #[test]
    fn rfc5769_ipv6_response() {
        let msg = Message::parse(RESPONSE_IPV6).unwrap();
        assert_eq!(
            (msg.method(), msg.class()),
            (Method::BINDING, Class::Success)
        );
        let addr = decode_xor_address(msg.get(XOR_MAPPED_ADDRESS).unwrap(), &VECTOR_TID);
        assert_eq!(
            addr,
            Ok("[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap())
        );
        assert_eq!(msg.check_integrity(SHORT_TERM_PASSWORD.as_bytes()), Ok(()));
        assert!(msg.has_fingerprint());
    }

    #[test]
    fn rfc5769_long_term_request() {
        let msg = Message::parse(REQUEST_LONG_TERM).unwrap();
        assert_eq!(
            (msg.method(), msg.class()),
            (Method::BINDING, Class::Request)
        );
        assert_eq!(
            msg.transaction_id(),
            TransactionId([
                0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e
            ])
        );
        let text = |t| decode_text(msg.get(t).unwrap(), MAX_TEXT_LEN).unwrap();
        assert_eq!(text(USERNAME), LONG_TERM_USERNAME);
        assert_eq!(text(REALM), LONG_TERM_REALM);
        assert_eq!(text(NONCE), "f//499k954d6OL34oL9FSTvy64sA");
        assert!(msg.has_integrity() && !msg.has_fingerprint());
        let key = long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
        assert_eq!(msg.check_integrity(&key), Ok(()));
        let wrong = long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, "TheMatrIx");
        assert_eq!(msg.check_integrity(&wrong), Err(StunError::BadIntegrity));
    }

    /// Every single-bit change to a vector up to MESSAGE-INTEGRITY is caught: parse fails, or the
    /// integrity check does. Those changes are also tried with FINGERPRINT recomputed, so that
    /// the integrity check itself has to catch them.
    #[test]
    fn rfc5769_bit_flips_are_detected() {
        for (name, vector, key) in all_vectors() {
            let original = Message::parse(vector).unwrap();
            let mi_end = original.integrity.unwrap() + INTEGRITY_ATTR_LEN;
            for bit in 0..vector.len() * 8 {
                let mut buf = vector.to_vec();
                buf[bit / 8] ^= 1 << (bit % 8);
                if let Ok(msg) = Message::parse(&buf) {
                    if bit / 8 < mi_end {
                        assert!(
                            msg.check_integrity(&key).is_err(),
                            "{name}: flip of bit {bit} undetected"
                        );
                    } else {
                        // FINGERPRINT is not covered by the HMAC; a flip there passes only by
                        // turning it into some other attribute, which is then ignored.
                        assert!(
                            !msg.has_fingerprint(),
                            "{name}: flip of bit {bit} undetected"
                        );
                    }
                }
                if let Some(fp) = original.fingerprint.filter(|_| bit / 8 < mi_end) {
                    let crc = fingerprint(&buf[..fp]).to_be_bytes();
                    buf[fp + 4..fp + 8].copy_from_slice(&crc);
                    if let Ok(msg) = Message::parse(&buf) {
                        assert_eq!(
                            msg.check_integrity(&key),
                            Err(StunError::BadIntegrity),
                            "{name}: flip of bit {bit} with fixed FINGERPRINT undetected"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rfc5769_fingerprint_flips_give_bad_fingerprint() {
        for (name, vector, _) in all_vectors() {
            let Some(fp) = Message::parse(vector).unwrap().fingerprint else {
                continue;
            };
            for bit in 0..32 {
                let mut buf = vector.to_vec();
                buf[fp + 4 + bit / 8] ^= 1 << (bit % 8);
                assert_eq!(
                    Message::parse(&buf).map(|_| ()),
                    Err(StunError::BadFingerprint),
                    "{name}: bit {bit}"
                );
            }
        }
    }

    #[test]
    fn truncated_headers_are_too_short() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Message::parse(&REQUEST[..len]).map(|_| ()),
                Err(StunError::TooShort),
                "{len}"
            );
        }
    }

    /// A minimal Binding request header with the given body length field.
    fn header(len: u16) -> Vec<u8> {
        let mut buf = vec![0x00, 0x01];
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&[7; 12]);
        buf
    }

    /// RFC 8489 Appendix B.1 (erratum 6268): USERHASH, the nonce cookie, PASSWORD-ALGORITHM and
    /// MESSAGE-INTEGRITY-SHA256 under the SHA-256 key of the OpaqueString-processed password.
    #[test]
    fn rfc8489_sha256_request() {
        use crate::stun::{long_term_key_sha256, userhash};
        let msg = Message::parse(REQUEST_SHA256).unwrap();
        assert_eq!(msg.method(), Method::BINDING);
        assert_eq!(
            msg.get(USERHASH),
            Some(&userhash(LONG_TERM_USERNAME, LONG_TERM_REALM)[..])
        );
        assert_eq!(msg.get(NONCE), Some(SHA256_NONCE));
        assert_eq!(msg.get(REALM), Some(LONG_TERM_REALM.as_bytes()));
        assert_eq!(
            msg.get(PASSWORD_ALGORITHM).map(decode_password_algorithm),
            Some(Ok((ALGORITHM_SHA256, &[][..])))
        );
        assert!(!msg.has_integrity());
        assert_eq!(msg.integrity_sha256_len(), Some(32));
        let key = long_term_key_sha256(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
        assert_eq!(msg.check_integrity_sha256(&key), Ok(()));
        // Not under the MD5 key, nor as HMAC-SHA1.
        let md5 = long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
        assert_eq!(
            msg.check_integrity_sha256(&md5),
            Err(StunError::BadIntegrity)
        );
        assert_eq!(msg.check_integrity(&key), Err(StunError::BadIntegrity));
        // Any bit changed in what it covers breaks it.
        for at in [HEADER_LEN + 5, HEADER_LEN + 40, REQUEST_SHA256.len() - 40] {
            let mut buf = REQUEST_SHA256.to_vec();
            buf[at] ^= 1;
            let msg = Message::parse(&buf).unwrap();
            assert_eq!(
                msg.check_integrity_sha256(&key),
                Err(StunError::BadIntegrity)
            );
        }
    }

    #[test]
    fn sha256_integrity_lengths_and_order() {
        // Truncated to 16..=28 in steps of 4: parsed, and the prefix checked.
        let key = [9u8; 32];
        let mut full = vec![0u8; 128];
        let mut w = crate::stun::MessageWriter::new(
            &mut full,
            Method::ALLOCATE,
            Class::Request,
            TransactionId([3; 12]),
        )
        .unwrap();
        w.attribute(USERNAME, b"u").unwrap();
        w.message_integrity_sha256(&key).unwrap();
        let n = w.finish();
        full.truncate(n);
        let mac = full[n - 32..].to_vec();
        for len in [16usize, 20, 24, 28] {
            let mut buf = full[..n - 32].to_vec();
            buf[n - 34..n - 32].copy_from_slice(&(len as u16).to_be_bytes());
            buf.extend_from_slice(&mac[..len]);
            let body = (buf.len() - HEADER_LEN) as u16;
            buf[2..4].copy_from_slice(&body.to_be_bytes());
            // The HMAC covers a length field ending after the shorter attribute: re-sign.
            let covered = &buf[..buf.len() - len - 4];
            let mac = crate::stun::hmac_sha256(&key, &[covered]);
            let end = buf.len();
            buf[end - len..].copy_from_slice(&mac[..len]);
            let msg = Message::parse(&buf).unwrap();
            assert_eq!(msg.integrity_sha256_len(), Some(len));
            assert_eq!(msg.check_integrity_sha256(&key), Ok(()), "{len}");
        }
        // Shorter than 16, longer than 32 or not a multiple of 4: malformed.
        for len in [0usize, 4, 12, 18, 36] {
            let buf = raw_message(&[(USERNAME, b"u"), (MESSAGE_INTEGRITY_SHA256, &vec![0; len])]);
            assert_eq!(
                Message::parse(&buf).map(|_| ()),
                Err(StunError::BadAttributeLength),
                "{len}"
            );
        }
        // MESSAGE-INTEGRITY, then MESSAGE-INTEGRITY-SHA256: both count; USERNAME after MI is
        // ignored. MESSAGE-INTEGRITY-SHA256 first: a later MESSAGE-INTEGRITY is ignored.
        let both = raw_message(&[
            (MESSAGE_INTEGRITY, &[0; 20]),
            (USERNAME, b"x"),
            (MESSAGE_INTEGRITY_SHA256, &[0; 32]),
        ]);
        let msg = Message::parse(&both).unwrap();
        assert!(msg.has_integrity());
        assert_eq!(msg.integrity_sha256_len(), Some(32));
        assert_eq!(msg.get(USERNAME), None);
        let sha_first = raw_message(&[
            (MESSAGE_INTEGRITY_SHA256, &[0; 32]),
            (MESSAGE_INTEGRITY, &[0; 20]),
            (USERNAME, b"x"),
        ]);
        let msg = Message::parse(&sha_first).unwrap();
        assert!(!msg.has_integrity());
        assert_eq!(msg.integrity_sha256_len(), Some(32));
        assert_eq!(msg.get(USERNAME), None);
        assert_eq!(msg.attributes().count(), 1);
    }

    #[test]
    fn header_checks() {
        let ok = header(0);
        assert!(Message::parse(&ok).is_ok());
        let mut top_bits = ok.clone();
        top_bits[0] = 0x40;
        assert_eq!(
            Message::parse(&top_bits).map(|_| ()),
            Err(StunError::NotStun)
        );
        let mut cookie = ok.clone();
        cookie[4] = 0x22;
        assert_eq!(Message::parse(&cookie).map(|_| ()), Err(StunError::NotStun));
        // Length past the end of the buffer.
        assert_eq!(
            Message::parse(&header(8)).map(|_| ()),
            Err(StunError::BadLength)
        );
        // Length shorter than the buffer.
        let mut trailing = header(0);
        trailing.extend_from_slice(&[0; 4]);
        assert_eq!(
            Message::parse(&trailing).map(|_| ()),
            Err(StunError::BadLength)
        );
        // Length not a multiple of 4, even when it matches the buffer.
        let mut odd = header(3);
        odd.extend_from_slice(&[0; 3]);
        assert_eq!(Message::parse(&odd).map(|_| ()), Err(StunError::BadLength));
    }

    #[test]
    fn attribute_framing_checks() {
        // Attribute length runs past the end.
        let mut buf = header(8);
        buf.extend_from_slice(&[0x80, 0x22, 0x00, 0x05, b'a', b'b', b'c', b'd']);
        assert_eq!(
            Message::parse(&buf).map(|_| ()),
            Err(StunError::BadAttributeLength)
        );
        // Padding missing: 5-byte value needs 8 bytes.
        let mut buf = header(12);
        buf.extend_from_slice(&[
            0x80, 0x22, 0x00, 0x05, b'a', b'b', b'c', b'd', b'e', 0, 0, 0,
        ]);
        assert!(Message::parse(&buf).is_ok());
        // MESSAGE-INTEGRITY of the wrong size.
        let mut buf = header(8);
        buf.extend_from_slice(&[0x00, 0x08, 0x00, 0x04, 1, 2, 3, 4]);
        assert_eq!(
            Message::parse(&buf).map(|_| ()),
            Err(StunError::BadAttributeLength)
        );
        // FINGERPRINT of the wrong size.
        let mut buf = header(12);
        buf.extend_from_slice(&[0x80, 0x28, 0x00, 0x08, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            Message::parse(&buf).map(|_| ()),
            Err(StunError::BadAttributeLength)
        );
    }

    #[test]
    fn attribute_after_fingerprint_is_rejected() {
        let mut buf = REQUEST.to_vec();
        buf.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        let len = u16::from_be_bytes([buf[2], buf[3]]) + 4;
        buf[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            Message::parse(&buf).map(|_| ()),
            Err(StunError::BadFingerprint)
        );
    }

    #[test]
    fn attributes_after_integrity_are_ignored() {
        // 2.4 with an extra USERNAME and an unknown required attribute after MI.
        let mut buf = REQUEST_LONG_TERM.to_vec();
        buf.extend_from_slice(&[0x00, 0x06, 0x00, 0x04, b'e', b'v', b'i', b'l']);
        buf.extend_from_slice(&[0x7f, 0xff, 0x00, 0x00]);
        let len = (buf.len() - HEADER_LEN) as u16;
        buf[2..4].copy_from_slice(&len.to_be_bytes());
        let msg = Message::parse(&buf).unwrap();
        let key = long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
        assert_eq!(msg.check_integrity(&key), Ok(()));
        assert_eq!(msg.get(USERNAME), Some(LONG_TERM_USERNAME.as_bytes()));
        assert_eq!(msg.attributes().count(), 4);
        assert_eq!(msg.unknown_required(|_| true).count(), 0);
        assert_eq!(msg.unknown_required(|t| t != 0x7fff).count(), 0);
    }

    #[test]
    fn unknown_required_reports_each_type_once() {
        let mut buf = header(28);
        buf.extend_from_slice(&[0x00, 0x31, 0x00, 0x00]); // unknown, required
        buf.extend_from_slice(&[0x80, 0x99, 0x00, 0x00]); // unknown, optional
        buf.extend_from_slice(&[0x00, 0x06, 0x00, 0x01, b'u', 0, 0, 0]); // USERNAME
        buf.extend_from_slice(&[0x00, 0x31, 0x00, 0x00]); // repeated
        buf.extend_from_slice(&[0x00, 0x32, 0x00, 0x00]); // another unknown
        buf.extend_from_slice(&[0x00, 0x31, 0x00, 0x00]); // repeated again
        let msg = Message::parse(&buf).unwrap();
        let unknown: Vec<u16> = msg.unknown_required(|t| t == USERNAME).collect();
        assert_eq!(unknown, [0x0031, 0x0032]);
        assert_eq!(msg.check_integrity(b"k"), Err(StunError::BadIntegrity));
    }

    /// A message of `attributes` (type, value), padded with zeros, with a correct length field.
    fn raw_message(attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut buf = header(0);
        for (typ, value) in attributes {
            buf.extend_from_slice(&typ.to_be_bytes());
            buf.extend_from_slice(&(value.len() as u16).to_be_bytes());
            buf.extend_from_slice(value);
            buf.resize(buf.len().next_multiple_of(4), 0);
        }
        let len = (buf.len() - HEADER_LEN) as u16;
        buf[2..4].copy_from_slice(&len.to_be_bytes());
        buf
    }

    /// The outside probe's shape: `optional` zero-length optional attributes, then `required`
    /// copies of one unknown comprehension-required type.
    fn hostile(optional: usize, required: usize) -> Vec<u8> {
        let mut attributes = vec![(0x8F01, &[][..]); optional];
        attributes.extend(std::iter::repeat_n((0x7ABC, &[][..]), required));
        raw_message(&attributes)
    }

    #[test]
    fn attribute_count_is_capped() {
        let at_cap = hostile(64, MAX_ATTRIBUTES - 64);
        assert_eq!(Message::parse(&at_cap).unwrap().attributes().count(), 128);
        let over = hostile(64, MAX_ATTRIBUTES - 63);
        assert_eq!(
            Message::parse(&over).map(|_| ()),
            Err(StunError::TooManyAttributes)
        );
        // Attributes after MESSAGE-INTEGRITY are ignored but still count.
        let mut attributes = vec![(SOFTWARE, &b"x"[..]); 100];
        attributes.push((MESSAGE_INTEGRITY, &[0; 20]));
        attributes.extend(std::iter::repeat_n((USERNAME, &b"u"[..]), 27));
        let buf = raw_message(&attributes);
        let msg = Message::parse(&buf).unwrap();
        assert_eq!(msg.attributes().count(), 101);
        attributes.push((USERNAME, b"u"));
        assert_eq!(
            Message::parse(&raw_message(&attributes)).map(|_| ()),
            Err(StunError::TooManyAttributes)
        );
        // So does FINGERPRINT: 128 attributes, the last of them FINGERPRINT, parse.
        let mut buf = hostile(100, 27);
        let len = u16::from_be_bytes([buf[2], buf[3]]) + 8;
        buf[2..4].copy_from_slice(&len.to_be_bytes());
        let crc = fingerprint(&buf).to_be_bytes();
        buf.extend_from_slice(&[0x80, 0x28, 0x00, 0x04]);
        buf.extend_from_slice(&crc);
        assert!(Message::parse(&buf).unwrap().has_fingerprint());
    }

    /// The probe's 64 KB datagram (8,185 optional and 8,186 unknown required attributes) is
    /// refused after reading 128 attribute headers, not 16,371.
    #[test]
    fn the_probes_datagram_is_refused_after_the_cap() {
        let buf = hostile(8185, 8186);
        assert_eq!(buf.len(), 65_504);
        visits::take();
        assert_eq!(
            Message::parse(&buf).map(|_| ()),
            Err(StunError::TooManyAttributes)
        );
        assert_eq!(visits::take(), MAX_ATTRIBUTES as u64);
    }

    /// `unknown_required` walks the attributes once however they are arranged: counted in
    /// attribute headers read, not in time. The old version re-walked every earlier attribute for
    /// each unknown one: 64 optional then 64 unknown attributes cost it 64 * (64 + 65) / 2 +
    /// 64 * 64 = 8,224 reads; now 128.
    #[test]
    fn unknown_required_is_linear() {
        for (optional, required) in [(0, 128), (64, 64), (127, 1), (1, 127), (128, 0)] {
            let buf = hostile(optional, required);
            let msg = Message::parse(&buf).unwrap();
            visits::take();
            let calls = std::cell::Cell::new(0);
            let unknown: Vec<u16> = msg
                .unknown_required(|_| {
                    calls.set(calls.get() + 1);
                    false
                })
                .collect();
            let expected: &[u16] = if required > 0 { &[0x7ABC] } else { &[] };
            assert_eq!(unknown, expected, "{optional}/{required}");
            let reads = visits::take();
            assert!(reads <= 128, "{optional}/{required}: {reads} reads");
            assert!(
                calls.get() <= 1,
                "{optional}/{required}: {} calls",
                calls.get()
            );
        }
        // Interleaved, with USERNAME known: `known` is asked about each attribute at most once.
        let mut attributes = Vec::new();
        for i in 0..42u16 {
            attributes.extend([(0x8F01, &[][..]), (USERNAME, b"u"), (0x7A00 + i % 3, &[])]);
        }
        let buf = raw_message(&attributes);
        let msg = Message::parse(&buf).unwrap();
        visits::take();
        let calls = std::cell::Cell::new(0);
        let unknown: Vec<u16> = msg
            .unknown_required(|t| {
                calls.set(calls.get() + 1);
                t == USERNAME
            })
            .collect();
        assert_eq!(unknown, [0x7A00, 0x7A01, 0x7A02]);
        assert!(visits::take() <= 126);
        assert!(calls.get() <= 84, "{} calls", calls.get());
    }

    /// At most MAX_UNKNOWN_REPORTED types are reported, the first ones in wire order, and the
    /// walk ends at the last of them.
    #[test]
    fn unknown_required_stops_after_sixteen_types() {
        let types: Vec<u16> = (0..100).map(|i| 0x7000 + i).collect();
        let attributes: Vec<(u16, &[u8])> = types.iter().map(|&t| (t, &[][..])).collect();
        let buf = raw_message(&attributes);
        let msg = Message::parse(&buf).unwrap();
        visits::take();
        let unknown: Vec<u16> = msg.unknown_required(|_| false).collect();
        assert_eq!(unknown, types[..MAX_UNKNOWN_REPORTED]);
        assert_eq!(visits::take(), MAX_UNKNOWN_REPORTED as u64);
    }

    #[test]
    fn message_class_reads_only_the_type() {
        assert_eq!(message_class(&[]), None);
        assert_eq!(message_class(&[0x00]), None);
        assert_eq!(message_class(&[0x00, 0x01]), Some(Class::Request));
        assert_eq!(message_class(&[0x00, 0x16]), Some(Class::Indication));
        assert_eq!(message_class(&[0x01, 0x01]), Some(Class::Success));
        assert_eq!(message_class(&[0x01, 0x13]), Some(Class::Error));
        assert_eq!(message_class(&[0x40, 0x01]), None);
        for vector in [REQUEST, RESPONSE_IPV4, REQUEST_LONG_TERM] {
            let msg = Message::parse(vector).unwrap();
            assert_eq!(message_class(vector), Some(msg.class()));
        }
    }

    #[test]
    fn message_len_reads_the_length_field() {
        assert_eq!(message_len(&[]), None);
        assert_eq!(message_len(&[0, 1, 0]), None);
        assert_eq!(message_len(&[0, 1, 0, 0x58]), Some(108));
        assert_eq!(message_len(REQUEST), Some(REQUEST.len()));
    }

    /// xorshift64: deterministic, dependency-free pseudo-random numbers.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Exercise everything a server would call on a parsed message.
    fn poke(buf: &[u8]) {
        let _ = message_len(buf);
        let _ = crate::stun::frame_len(buf);
        let _ = crate::stun::ChannelData::parse(buf);
        if let Ok(msg) = Message::parse(buf) {
            let tid = msg.transaction_id();
            let _ = msg.check_integrity(b"key");
            let _ = msg.check_integrity_sha256(b"key");
            let _ = msg.unknown_required(|_| false).count();
            for a in msg.attributes() {
                decode_every_way(a.value, &tid);
            }
        }
    }

    /// A message of random attributes with plausible types and lengths, so that parsing gets
    /// past the framing checks; sometimes with a valid FINGERPRINT, sometimes with one byte
    /// changed afterwards.
    fn structured(rng: &mut XorShift, buf: &mut Vec<u8>) {
        const TYPES: [u16; 13] = [
            MESSAGE_INTEGRITY,
            MESSAGE_INTEGRITY_SHA256,
            FINGERPRINT,
            XOR_MAPPED_ADDRESS,
            XOR_PEER_ADDRESS,
            ERROR_CODE,
            USERNAME,
            LIFETIME,
            CHANNEL_NUMBER,
            EVEN_PORT,
            UNKNOWN_ATTRIBUTES,
            0x7777,
            0x8888,
        ];
        buf.clear();
        buf.extend_from_slice(&header(0));
        for _ in 0..rng.next() % 6 {
            let typ = TYPES[(rng.next() % TYPES.len() as u64) as usize];
            let len = (rng.next() % 25) as usize;
            buf.extend_from_slice(&typ.to_be_bytes());
            buf.extend_from_slice(&(len as u16).to_be_bytes());
            for _ in 0..padded_len(len) {
                buf.push(rng.next() as u8);
            }
        }
        let with_fingerprint = rng.next() % 2 == 0;
        let body = buf.len() - HEADER_LEN + if with_fingerprint { 8 } else { 0 };
        buf[2..4].copy_from_slice(&(body as u16).to_be_bytes());
        if with_fingerprint {
            let crc = fingerprint(buf).to_be_bytes();
            buf.extend_from_slice(&[0x80, 0x28, 0x00, 0x04]);
            buf.extend_from_slice(&crc);
        }
        if rng.next() % 4 == 0 {
            let at = (rng.next() % buf.len() as u64) as usize;
            buf[at] ^= 1 << (rng.next() % 8);
        }
    }

    #[test]
    fn never_panics_on_random_input() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut buf = [0u8; 160];
        let mut message = Vec::with_capacity(256);
        for i in 0..200_000 {
            let len = (rng.next() % buf.len() as u64) as usize;
            for b in buf.iter_mut() {
                *b = rng.next() as u8;
            }
            match i % 3 {
                0 => poke(&buf[..len]),
                1 if len >= HEADER_LEN => {
                    // Valid header, random attributes.
                    let body = (len - HEADER_LEN) & !3;
                    buf[0] &= 0x3F;
                    buf[2..4].copy_from_slice(&(body as u16).to_be_bytes());
                    buf[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                    poke(&buf[..HEADER_LEN + body]);
                }
                _ => {
                    structured(&mut rng, &mut message);
                    poke(&message);
                }
            }
        }
    }

    #[test]
    fn never_panics_on_damaged_vectors() {
        for (_, vector, _) in all_vectors() {
            for len in 0..=vector.len() {
                poke(&vector[..len]);
            }
            for bit in 0..vector.len() * 8 {
                let mut buf = vector.to_vec();
                buf[bit / 8] ^= 1 << (bit % 8);
                poke(&buf);
            }
        }
    }
}
