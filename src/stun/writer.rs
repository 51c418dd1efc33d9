//! `MessageWriter`: builds a STUN message in a caller-owned buffer, attribute by attribute.

use std::net::SocketAddr;

use super::attr::{self, encode_address};
use super::integrity::{fingerprint, hmac_sha1, hmac_sha256};
use super::message::message_type;
use super::{
    Class, HEADER_LEN, MAGIC_COOKIE, MAX_ATTRIBUTES, Method, StunError, TransactionId, padded_len,
};

/// Largest value of the header length field that keeps attributes 4-byte aligned.
const MAX_BODY_LEN: usize = 0xFFFC;

/// Writes a STUN message into a borrowed buffer.
///
/// The header length field always covers the attributes written so far, so the bytes are a
/// complete message after every call. Add MESSAGE-INTEGRITY after the attributes it protects and
/// FINGERPRINT last. On error nothing is written and the message stays as it was. It writes at
/// most [`MAX_ATTRIBUTES`] attributes, so that whatever it writes [`Message::parse`] accepts.
///
/// [`Message::parse`]: super::Message::parse
#[derive(Debug)]
pub struct MessageWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    tid: TransactionId,
    attributes: usize,
}

impl<'b> MessageWriter<'b> {
    /// Starts a message with no attributes. Only the low 12 bits of `method` are encoded.
    pub fn new(
        buf: &'b mut [u8],
        method: Method,
        class: Class,
        tid: TransactionId,
    ) -> Result<Self, StunError> {
        let header = buf
            .first_chunk_mut::<HEADER_LEN>()
            .ok_or(StunError::BufferTooSmall)?;
        let [t0, t1] = message_type(method, class).to_be_bytes();
        let [c0, c1, c2, c3] = MAGIC_COOKIE.to_be_bytes();
        let [i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11] = tid.0;
        *header = [
            t0, t1, 0, 0, c0, c1, c2, c3, i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11,
        ];
        Ok(MessageWriter {
            buf,
            len: HEADER_LEN,
            tid,
            attributes: 0,
        })
    }

    /// Appends an attribute, padding the value with zeros to a multiple of 4 bytes.
    pub fn attribute(&mut self, typ: u16, value: &[u8]) -> Result<(), StunError> {
        self.attribute_with_padding(typ, value, 0)
    }

    /// Appends an XOR-*-ADDRESS attribute (XOR-MAPPED-, XOR-PEER-, XOR-RELAYED-ADDRESS).
    pub fn xor_address(&mut self, typ: u16, addr: SocketAddr) -> Result<(), StunError> {
        let value = encode_address(addr, Some(&self.tid));
        self.attribute(typ, value.as_slice())
    }

    /// Appends a plain address attribute (MAPPED-ADDRESS, ALTERNATE-SERVER).
    pub fn address(&mut self, typ: u16, addr: SocketAddr) -> Result<(), StunError> {
        let value = encode_address(addr, None);
        self.attribute(typ, value.as_slice())
    }

    /// Appends a 32-bit attribute such as LIFETIME.
    pub fn u32(&mut self, typ: u16, v: u32) -> Result<(), StunError> {
        self.attribute(typ, &v.to_be_bytes())
    }

    /// Appends ERROR-CODE; `code` must be in 300..=699.
    pub fn error_code(&mut self, code: u16, reason: &str) -> Result<(), StunError> {
        self.coded(attr::ERROR_CODE, 0, code, reason)
    }

    /// Appends ADDRESS-ERROR-CODE (RFC 8656 §18.13): ERROR-CODE's layout, with the address
    /// family it is about (`attr::FAMILY_IPV4` or `FAMILY_IPV6`) in the first byte.
    pub fn address_error_code(
        &mut self,
        family: u8,
        code: u16,
        reason: &str,
    ) -> Result<(), StunError> {
        self.coded(attr::ADDRESS_ERROR_CODE, family, code, reason)
    }

    /// An error code attribute: `first` (zero in ERROR-CODE), a reserved byte, class, number,
    /// reason; `code` must be in 300..=699.
    fn coded(&mut self, typ: u16, first: u8, code: u16, reason: &str) -> Result<(), StunError> {
        if !(300..=699).contains(&code) {
            return Err(StunError::BadAttributeValue);
        }
        // Both fit in a byte: class is 3..=6 and number is 0..=99.
        let [class, number] = [(code / 100) as u8, (code % 100) as u8];
        let value = self.reserve(typ, 4 + reason.len(), 0)?;
        let (head, text) = value
            .split_first_chunk_mut::<4>()
            .ok_or(StunError::BufferTooSmall)?;
        *head = [first, 0, class, number];
        copy(text, reason.as_bytes())
    }

    /// Appends UNKNOWN-ATTRIBUTES listing `types`.
    pub fn unknown_attributes(&mut self, types: &[u16]) -> Result<(), StunError> {
        let value = self.reserve(attr::UNKNOWN_ATTRIBUTES, types.len() * 2, 0)?;
        for (out, t) in value.chunks_exact_mut(2).zip(types) {
            out.copy_from_slice(&t.to_be_bytes());
        }
        Ok(())
    }

    /// Appends CHANNEL-NUMBER (the number followed by two zero RFFU bytes).
    pub fn channel_number(&mut self, n: u16) -> Result<(), StunError> {
        let [n0, n1] = n.to_be_bytes();
        self.attribute(attr::CHANNEL_NUMBER, &[n0, n1, 0, 0])
    }

    /// Appends REQUESTED-TRANSPORT with IANA protocol number `proto` (17 for UDP).
    pub fn requested_transport(&mut self, proto: u8) -> Result<(), StunError> {
        self.attribute(attr::REQUESTED_TRANSPORT, &[proto, 0, 0, 0])
    }

    /// Appends a zero-length attribute such as DONT-FRAGMENT (the tests' shorthand for
    /// `attribute(typ, &[])`; no sender needs one).
    #[cfg(test)]
    pub(crate) fn flag(&mut self, typ: u16) -> Result<(), StunError> {
        self.attribute(typ, &[])
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 under `key`) over everything written so far.
    pub fn message_integrity(&mut self, key: &[u8]) -> Result<(), StunError> {
        let start = self.len;
        // Reserving first sets the header length to end after MESSAGE-INTEGRITY, as the HMAC
        // input requires.
        self.reserve(attr::MESSAGE_INTEGRITY, 20, 0)?;
        let covered = self.buf.get(..start).ok_or(StunError::BufferTooSmall)?;
        let mac = hmac_sha1(key, &[covered]);
        let value = self
            .buf
            .get_mut(start + 4..start + 24)
            .ok_or(StunError::BufferTooSmall)?;
        copy(value, &mac)
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256 under `key`, full 32 bytes) over
    /// everything written so far (RFC 8489 §14.6).
    pub fn message_integrity_sha256(&mut self, key: &[u8]) -> Result<(), StunError> {
        let start = self.len;
        self.reserve(attr::MESSAGE_INTEGRITY_SHA256, 32, 0)?;
        let covered = self.buf.get(..start).ok_or(StunError::BufferTooSmall)?;
        let mac = hmac_sha256(key, &[covered]);
        let value = self
            .buf
            .get_mut(start + 4..start + 36)
            .ok_or(StunError::BufferTooSmall)?;
        copy(value, &mac)
    }

    /// Appends FINGERPRINT (CRC-32 of the message XOR 0x5354554E); it must be the last attribute.
    pub fn fingerprint(&mut self) -> Result<(), StunError> {
        let start = self.len;
        self.reserve(attr::FINGERPRINT, 4, 0)?;
        let covered = self.buf.get(..start).ok_or(StunError::BufferTooSmall)?;
        let crc = fingerprint(covered);
        let value = self
            .buf
            .get_mut(start + 4..start + 8)
            .ok_or(StunError::BufferTooSmall)?;
        copy(value, &crc.to_be_bytes())
    }

    /// Bytes written so far, header included: for tests that check a refused write leaves the
    /// message as it was (senders only need [`MessageWriter::finish`]).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Ends the message; returns its total size, the bytes to send from the start of the buffer.
    pub fn finish(self) -> usize {
        self.len
    }

    /// Like [`attribute`](Self::attribute) with `pad` as the padding byte; the RFC 5769 vectors
    /// were made with space padding.
    fn attribute_with_padding(&mut self, typ: u16, value: &[u8], pad: u8) -> Result<(), StunError> {
        let out = self.reserve(typ, value.len(), pad)?;
        copy(out, value)
    }

    /// Appends an attribute header for a `value_len`-byte value, fills the padding with `pad`,
    /// updates the header length, and returns the value bytes to fill in.
    fn reserve(&mut self, typ: u16, value_len: usize, pad: u8) -> Result<&mut [u8], StunError> {
        if self.attributes == MAX_ATTRIBUTES {
            return Err(StunError::TooManyAttributes);
        }
        let wire_len = u16::try_from(value_len).map_err(|_| StunError::BadAttributeLength)?;
        let start = self.len;
        let end = start + 4 + padded_len(value_len);
        if end - HEADER_LEN > MAX_BODY_LEN || end > self.buf.len() {
            return Err(StunError::BufferTooSmall);
        }
        // Checked just above: end - HEADER_LEN <= 0xFFFC.
        let body_len = (end - HEADER_LEN) as u16;
        let length_field = self.buf.get_mut(2..4).ok_or(StunError::BufferTooSmall)?;
        copy(length_field, &body_len.to_be_bytes())?;

        let attribute = self
            .buf
            .get_mut(start..end)
            .ok_or(StunError::BufferTooSmall)?;
        let (header, rest) = attribute
            .split_first_chunk_mut::<4>()
            .ok_or(StunError::BufferTooSmall)?;
        let [t0, t1] = typ.to_be_bytes();
        let [l0, l1] = wire_len.to_be_bytes();
        *header = [t0, t1, l0, l1];
        let (value, padding) = rest
            .split_at_mut_checked(value_len)
            .ok_or(StunError::BufferTooSmall)?;
        padding.fill(pad);
        self.len = end;
        self.attributes += 1;
        Ok(value)
    }
}

/// Copies `src` into `dst`, which must have the same length.
fn copy(dst: &mut [u8], src: &[u8]) -> Result<(), StunError> {
    dst.get_mut(..src.len())
        .filter(|d| d.len() == src.len())
        .ok_or(StunError::BufferTooSmall)?
        .copy_from_slice(src);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::attr::*;
    use crate::stun::test_vectors::*;
    use crate::stun::{Message, long_term_key};

    #[test]
    fn rfc5769_request_round_trip() {
        let mut buf = [0u8; 256];
        let mut w =
            MessageWriter::new(&mut buf, Method::BINDING, Class::Request, VECTOR_TID).unwrap();
        w.attribute(SOFTWARE, b"STUN test client").unwrap();
        w.u32(PRIORITY, 0x6e00_01ff).unwrap();
        w.attribute(
            ICE_CONTROLLED,
            &[0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36],
        )
        .unwrap();
        w.attribute_with_padding(USERNAME, b"evtj:h6vY", b' ')
            .unwrap();
        w.message_integrity(SHORT_TERM_PASSWORD.as_bytes()).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        assert_eq!(&buf[..n], REQUEST);
    }

    #[test]
    fn rfc5769_ipv4_response_round_trip() {
        let mut buf = [0u8; 256];
        let mut w =
            MessageWriter::new(&mut buf, Method::BINDING, Class::Success, VECTOR_TID).unwrap();
        w.attribute_with_padding(SOFTWARE, b"test vector", b' ')
            .unwrap();
        w.xor_address(XOR_MAPPED_ADDRESS, "192.0.2.1:32853".parse().unwrap())
            .unwrap();
        w.message_integrity(SHORT_TERM_PASSWORD.as_bytes()).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        assert_eq!(&buf[..n], RESPONSE_IPV4);
    }

    #[test]
    fn rfc5769_ipv6_response_round_trip() {
        let mut buf = [0u8; 256];
        let mut w =
            MessageWriter::new(&mut buf, Method::BINDING, Class::Success, VECTOR_TID).unwrap();
        w.attribute_with_padding(SOFTWARE, b"test vector", b' ')
            .unwrap();
        let addr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        w.xor_address(XOR_MAPPED_ADDRESS, addr).unwrap();
        w.message_integrity(SHORT_TERM_PASSWORD.as_bytes()).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        assert_eq!(&buf[..n], RESPONSE_IPV6);
    }

    #[test]
    fn rfc5769_long_term_request_round_trip() {
        // Zero padding, as in the vector: written with the ordinary API.
        let tid = Message::parse(REQUEST_LONG_TERM).unwrap().transaction_id();
        let mut buf = [0u8; 256];
        let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid).unwrap();
        w.attribute(USERNAME, LONG_TERM_USERNAME.as_bytes())
            .unwrap();
        w.attribute(NONCE, b"f//499k954d6OL34oL9FSTvy64sA").unwrap();
        w.attribute(REALM, LONG_TERM_REALM.as_bytes()).unwrap();
        let key = long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
        w.message_integrity(&key).unwrap();
        let n = w.finish();
        assert_eq!(&buf[..n], REQUEST_LONG_TERM);
    }

    /// RFC 8489 B.1 (erratum 6268), written with the ordinary API: byte for byte.
    #[test]
    fn rfc8489_sha256_request_round_trip() {
        use crate::stun::{long_term_key_sha256, userhash};
        let tid = Message::parse(REQUEST_SHA256).unwrap().transaction_id();
        let mut buf = [0u8; 256];
        let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid).unwrap();
        w.attribute(USERHASH, &userhash(LONG_TERM_USERNAME, LONG_TERM_REALM))
            .unwrap();
        w.attribute(NONCE, SHA256_NONCE).unwrap();
        w.attribute(REALM, LONG_TERM_REALM.as_bytes()).unwrap();
        w.attribute(PASSWORD_ALGORITHM, &[0, 2, 0, 0]).unwrap();
        let key = long_term_key_sha256(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
        w.message_integrity_sha256(&key).unwrap();
        let n = w.finish();
        assert_eq!(&buf[..n], REQUEST_SHA256);
    }

    #[test]
    fn typed_attributes_parse_back() {
        let tid = TransactionId([9; 12]);
        let mut buf = [0u8; 512];
        let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Error, tid).unwrap();
        w.error_code(420, "Unknown Attribute").unwrap();
        w.unknown_attributes(&[0x0031, 0x0032, 0x0033]).unwrap();
        w.address(ALTERNATE_SERVER, "[2001:db8::2]:3478".parse().unwrap())
            .unwrap();
        w.xor_address(XOR_RELAYED_ADDRESS, "203.0.113.9:50000".parse().unwrap())
            .unwrap();
        w.u32(LIFETIME, 600).unwrap();
        w.channel_number(0x4001).unwrap();
        w.requested_transport(17).unwrap();
        w.flag(DONT_FRAGMENT).unwrap();
        w.message_integrity(b"secret").unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();

        let msg = Message::parse(&buf[..n]).unwrap();
        assert_eq!(
            (msg.method(), msg.class()),
            (Method::ALLOCATE, Class::Error)
        );
        assert_eq!(msg.transaction_id(), tid);
        assert_eq!(
            decode_error_code(msg.get(ERROR_CODE).unwrap()),
            Ok((420, "Unknown Attribute"))
        );
        assert_eq!(
            msg.get(UNKNOWN_ATTRIBUTES),
            Some(&[0x00, 0x31, 0x00, 0x32, 0x00, 0x33][..])
        );
        assert_eq!(
            decode_address(msg.get(ALTERNATE_SERVER).unwrap()),
            Ok("[2001:db8::2]:3478".parse().unwrap())
        );
        assert_eq!(
            decode_xor_address(msg.get(XOR_RELAYED_ADDRESS).unwrap(), &tid),
            Ok("203.0.113.9:50000".parse().unwrap())
        );
        assert_eq!(decode_u32(msg.get(LIFETIME).unwrap()), Ok(600));
        assert_eq!(
            decode_channel_number(msg.get(CHANNEL_NUMBER).unwrap()),
            Ok(0x4001)
        );
        assert_eq!(
            decode_requested_transport(msg.get(REQUESTED_TRANSPORT).unwrap()),
            Ok(17)
        );
        assert_eq!(msg.get(DONT_FRAGMENT), Some(&[][..]));
        assert_eq!(msg.check_integrity(b"secret"), Ok(()));
        assert!(msg.has_fingerprint());
        // UNKNOWN-ATTRIBUTES with 3 types has 2 bytes of zero padding.
        let raw = msg.as_bytes();
        let at = raw.windows(2).position(|w| w == [0x00, 0x0A]).unwrap();
        assert_eq!(&raw[at + 10..at + 12], &[0, 0]);
    }

    /// The writer stops at MAX_ATTRIBUTES, FINGERPRINT and MESSAGE-INTEGRITY included, so
    /// what it writes always parses.
    #[test]
    fn attribute_count_is_capped() {
        let mut buf = vec![0u8; 2048];
        let tid = TransactionId([3; 12]);
        let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid).unwrap();
        for _ in 0..MAX_ATTRIBUTES - 2 {
            w.flag(0x8F01).unwrap();
        }
        w.message_integrity(b"k").unwrap();
        w.fingerprint().unwrap();
        let len = w.len();
        assert_eq!(w.flag(0x8F01), Err(StunError::TooManyAttributes));
        assert_eq!(w.message_integrity(b"k"), Err(StunError::TooManyAttributes));
        assert_eq!(w.len(), len);
        let n = w.finish();
        let msg = Message::parse(&buf[..n]).unwrap();
        assert_eq!(msg.check_integrity(b"k"), Ok(()));
        assert!(msg.has_fingerprint());
        assert_eq!(msg.attributes().count(), MAX_ATTRIBUTES);
    }

    #[test]
    fn length_field_tracks_attributes() {
        let mut buf = [0xAAu8; 64];
        let mut w = MessageWriter::new(
            &mut buf,
            Method::BINDING,
            Class::Request,
            TransactionId([0; 12]),
        )
        .unwrap();
        assert_eq!(w.len(), 20);
        w.attribute(SOFTWARE, b"abcde").unwrap();
        assert_eq!(w.len(), 32);
        let n = w.finish();
        assert_eq!(&buf[2..4], &[0, 12]);
        // Padding is zeroed even though the buffer held 0xAA.
        assert_eq!(&buf[29..32], &[0, 0, 0]);
        assert!(Message::parse(&buf[..n]).is_ok());
    }

    #[test]
    fn overflow_is_an_error_and_leaves_the_message_intact() {
        let tid = TransactionId([0; 12]);
        for size in 0..HEADER_LEN {
            let mut buf = vec![0u8; size];
            assert_eq!(
                MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid).map(|_| ()),
                Err(StunError::BufferTooSmall)
            );
        }
        let mut buf = [0u8; 38];
        let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Success, tid).unwrap();
        w.u32(LIFETIME, 1).unwrap();
        assert_eq!(
            w.attribute(SOFTWARE, &[b'x'; 13]),
            Err(StunError::BufferTooSmall)
        );
        assert_eq!(
            w.xor_address(XOR_MAPPED_ADDRESS, "[::1]:1".parse().unwrap()),
            Err(StunError::BufferTooSmall)
        );
        assert_eq!(w.message_integrity(b"k"), Err(StunError::BufferTooSmall));
        assert_eq!(w.error_code(200, "OK"), Err(StunError::BadAttributeValue));
        assert_eq!(w.error_code(700, "x"), Err(StunError::BadAttributeValue));
        w.fingerprint().unwrap();
        assert_eq!(w.flag(DONT_FRAGMENT), Err(StunError::BufferTooSmall));
        let n = w.finish();
        assert_eq!(n, 36);
        assert!(Message::parse(&buf[..n]).unwrap().has_fingerprint());

        let mut big = vec![0u8; 70_000];
        let mut w = MessageWriter::new(&mut big, Method::SEND, Class::Indication, tid).unwrap();
        assert_eq!(
            w.attribute(DATA, &[0; 65_536]),
            Err(StunError::BadAttributeLength)
        );
        assert_eq!(
            w.attribute(DATA, &[0; 65_533]),
            Err(StunError::BufferTooSmall)
        );
        w.attribute(DATA, &[0; 65_528]).unwrap();
        assert_eq!(w.flag(DONT_FRAGMENT), Err(StunError::BufferTooSmall));
        let n = w.finish();
        assert_eq!(n, 20 + 65_532);
        assert!(Message::parse(&big[..n]).is_ok());
    }

    #[test]
    fn address_error_code_round_trip() {
        let mut buf = [0u8; 128];
        let tid = VECTOR_TID;
        let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Success, tid).unwrap();
        w.address_error_code(attr::FAMILY_IPV6, 440, "Address Family not Supported")
            .unwrap();
        assert_eq!(
            w.address_error_code(attr::FAMILY_IPV6, 700, ""),
            Err(StunError::BadAttributeValue)
        );
        let n = w.finish();
        let msg = Message::parse(&buf[..n]).unwrap();
        let value = msg.get(attr::ADDRESS_ERROR_CODE).unwrap();
        assert_eq!(&value[..4], &[attr::FAMILY_IPV6, 0, 4, 40]);
        assert_eq!(
            attr::decode_address_error_code(value),
            Ok((attr::FAMILY_IPV6, 440, "Address Family not Supported"))
        );
    }
}
