//! The codec targets: one STUN message, and a TCP/TLS byte stream cut into segments.

use std::collections::BTreeSet;

use crate::stun::attr::{self, MAX_TEXT_LEN, MAX_USERNAME_LEN};
use crate::stun::{
    self, ChannelData, Frame, HEADER_LEN, MAGIC_COOKIE, MAX_UNKNOWN_REPORTED, Message,
    MessageWriter, RawAttribute, StunError, frame_len, message_len,
};

use super::Input;

/// The long-term key of the user the seed corpora were captured with (`alice`, realm
/// `turnpike.test`, password `wonderland`), so that captured MESSAGE-INTEGRITY values verify.
pub(crate) fn seed_key() -> [u8; 16] {
    stun::long_term_key("alice", "turnpike.test", "wonderland")
}

/// XORed into the CRC-32 of a message to form FINGERPRINT (RFC 8489 §14.7).
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Parses `data` as one STUN message; when it parses, checks every accessor against the bytes,
/// runs every attribute decoder, checks MESSAGE-INTEGRITY and FINGERPRINT against an independent
/// computation, and writes the message again with `MessageWriter` to compare.
pub fn stun_message(data: &[u8]) {
    let len = message_len(data);
    match data.get(2..4) {
        Some(l) => assert_eq!(
            len,
            Some(HEADER_LEN + usize::from(u16::from_be_bytes([l[0], l[1]])))
        ),
        None => assert_eq!(len, None),
    }
    let _ = ChannelData::parse(data);
    let Ok(msg) = Message::parse(data) else {
        return;
    };
    assert_eq!(msg.as_bytes(), data);
    assert!(data.len() >= HEADER_LEN && data.len() % 4 == 0);
    assert_eq!(len, Some(data.len()));
    assert_eq!(data[0] & 0xC0, 0, "top bits of a parsed message");
    assert_eq!(data[4..8], MAGIC_COOKIE.to_be_bytes());
    let tid = msg.transaction_id();
    assert_eq!(tid.0[..], data[8..20]);
    let mut header = [0u8; HEADER_LEN];
    MessageWriter::new(&mut header, msg.method(), msg.class(), tid).expect("20-byte buffer");
    assert_eq!(header[..2], data[..2], "method and class do not round-trip");

    let attributes: Vec<RawAttribute<'_>> = msg.attributes().collect();
    assert!(attributes.len() <= (data.len() - HEADER_LEN) / 4);
    for a in &attributes {
        let start = a.value.as_ptr() as usize - data.as_ptr() as usize;
        assert!(start >= HEADER_LEN + 4 && start + a.value.len() <= data.len());
    }
    check_layout(&msg, &attributes, data);
    for a in &attributes {
        assert_eq!(
            msg.get(a.typ),
            attributes.iter().find(|b| b.typ == a.typ).map(|b| b.value)
        );
        decode_everything(a, &msg);
    }
    check_unknown_required(&msg, &attributes);
    check_integrity(&msg, &attributes, data);
    rewrite(&msg, &attributes);
}

/// FINGERPRINT last and correct; MESSAGE-INTEGRITY the last counted attribute before it.
fn check_layout(msg: &Message<'_>, attributes: &[RawAttribute<'_>], data: &[u8]) {
    let fingerprints = attributes
        .iter()
        .filter(|a| a.typ == attr::FINGERPRINT)
        .count();
    assert!(
        fingerprints <= 1,
        "FINGERPRINT counted {fingerprints} times"
    );
    assert_eq!(msg.has_fingerprint(), fingerprints == 1);
    let mut counted = attributes;
    if let Some((last, rest)) = attributes.split_last()
        && msg.has_fingerprint()
    {
        assert_eq!(
            last.typ,
            attr::FINGERPRINT,
            "FINGERPRINT is not the last attribute"
        );
        assert_eq!(last.value.len(), 4);
        let end = last.value.as_ptr() as usize - data.as_ptr() as usize + 4;
        assert_eq!(
            end,
            data.len(),
            "FINGERPRINT is not at the end of the message"
        );
        let crc = crc32fast::hash(&data[..data.len() - 8]) ^ FINGERPRINT_XOR;
        assert_eq!(
            last.value,
            crc.to_be_bytes(),
            "a wrong FINGERPRINT was accepted"
        );
        counted = rest;
    }
    let integrity = counted
        .iter()
        .filter(|a| a.typ == attr::MESSAGE_INTEGRITY)
        .count();
    assert!(
        integrity <= 1,
        "MESSAGE-INTEGRITY counted {integrity} times"
    );
    assert_eq!(msg.has_integrity(), integrity == 1);
    if msg.has_integrity() {
        let last = counted.last().expect("MESSAGE-INTEGRITY was counted");
        assert_eq!(
            last.typ,
            attr::MESSAGE_INTEGRITY,
            "attributes after MI count"
        );
        assert_eq!(last.value.len(), 20);
    }
}

/// Every decoder on every value (they must not panic whatever the type), with round trips
/// through `MessageWriter` where a decoder succeeds.
fn decode_everything(a: &RawAttribute<'_>, msg: &Message<'_>) {
    let tid = msg.transaction_id();
    let v = a.value;
    if let Ok(addr) = attr::decode_xor_address(v, &tid) {
        let mut buf = [0u8; 64];
        let mut w = MessageWriter::new(&mut buf, msg.method(), msg.class(), tid).expect("room");
        w.xor_address(a.typ, addr).expect("room");
        let n = w.finish();
        let again = Message::parse(&buf[..n]).expect("written message parses");
        let value = again.get(a.typ).expect("written attribute is there");
        assert_eq!(attr::decode_xor_address(value, &tid), Ok(addr));
        assert_eq!(
            value[1..],
            v[1..],
            "XOR address does not round-trip to the same bytes"
        );
    }
    if let Ok(addr) = attr::decode_address(v) {
        let mut buf = [0u8; 64];
        let mut w = MessageWriter::new(&mut buf, msg.method(), msg.class(), tid).expect("room");
        w.address(a.typ, addr).expect("room");
        let n = w.finish();
        let again = Message::parse(&buf[..n]).expect("written message parses");
        let value = again.get(a.typ).expect("written attribute is there");
        assert_eq!(value[1..], v[1..], "address does not round-trip");
    }
    if let Ok(n) = attr::decode_u32(v) {
        assert_eq!(n.to_be_bytes(), v);
    }
    let _ = attr::decode_channel_number(v);
    let _ = attr::decode_requested_transport(v);
    let _ = attr::decode_address_family(v);
    let _ = attr::decode_even_port(v);
    let _ = attr::decode_reservation_token(v);
    for max in [MAX_USERNAME_LEN, MAX_TEXT_LEN] {
        if let Ok(text) = attr::decode_text(v, max) {
            assert_eq!(text.as_bytes(), v);
        }
    }
    if let Ok((code, reason)) = attr::decode_error_code(v) {
        assert!((300..=699).contains(&code), "error code {code}");
        let mut buf = vec![0u8; HEADER_LEN + 8 + v.len() + 4];
        let mut w = MessageWriter::new(&mut buf, msg.method(), msg.class(), tid).expect("room");
        w.error_code(code, reason).expect("room");
        let n = w.finish();
        let again = Message::parse(&buf[..n]).expect("written message parses");
        let value = again
            .get(attr::ERROR_CODE)
            .expect("written attribute is there");
        assert_eq!(attr::decode_error_code(value), Ok((code, reason)));
    }
}

/// `unknown_required` against a set-based computation: each unknown comprehension-required type
/// once, in the order of first appearance, the first [`MAX_UNKNOWN_REPORTED`] of them.
fn check_unknown_required(msg: &Message<'_>, attributes: &[RawAttribute<'_>]) {
    // Any fixed rule will do; this one leaves the RFC 5389/8656 range known.
    let known = |t: u16| t < 0x0030;
    let reported: Vec<u16> = msg.unknown_required(known).collect();
    let mut seen = BTreeSet::new();
    let expected: Vec<u16> = attributes
        .iter()
        .map(|a| a.typ)
        .filter(|&t| attr::is_comprehension_required(t) && !known(t) && seen.insert(t))
        .take(MAX_UNKNOWN_REPORTED)
        .collect();
    assert_eq!(reported, expected, "unknown_required");
}

/// MESSAGE-INTEGRITY checked against an HMAC computed here from the bytes.
fn check_integrity(msg: &Message<'_>, attributes: &[RawAttribute<'_>], data: &[u8]) {
    let key = seed_key();
    let verdict = msg.check_integrity(&key);
    let Some(mi) = attributes.iter().find(|a| a.typ == attr::MESSAGE_INTEGRITY) else {
        assert_eq!(verdict, Err(StunError::BadIntegrity));
        return;
    };
    let at = mi.value.as_ptr() as usize - data.as_ptr() as usize - 4;
    let mut covered = data[..at].to_vec();
    let body = (at + 24 - HEADER_LEN) as u16;
    covered[2..4].copy_from_slice(&body.to_be_bytes());
    let mac = stun::hmac_sha1(&key, &[&covered]);
    assert_eq!(
        verdict.is_ok(),
        mac[..] == *mi.value,
        "check_integrity disagrees with the HMAC of the bytes"
    );
}

/// Writes the counted attributes again with `MessageWriter` (MI and FINGERPRINT recomputed) and
/// parses the result: the same attributes must come back, and the new MI must verify.
fn rewrite(msg: &Message<'_>, attributes: &[RawAttribute<'_>]) {
    let key = seed_key();
    let mut buf = vec![0u8; msg.as_bytes().len() + 32];
    let mut w = MessageWriter::new(&mut buf, msg.method(), msg.class(), msg.transaction_id())
        .expect("room for the header");
    let plain: Vec<&RawAttribute<'_>> = attributes
        .iter()
        .filter(|a| !matches!(a.typ, attr::MESSAGE_INTEGRITY | attr::FINGERPRINT))
        .collect();
    for a in &plain {
        w.attribute(a.typ, a.value)
            .expect("no longer than the original");
    }
    if msg.has_integrity() {
        w.message_integrity(&key).expect("room");
    }
    if msg.has_fingerprint() {
        w.fingerprint().expect("room");
    }
    let n = w.finish();
    assert!(
        n <= msg.as_bytes().len(),
        "rewrite is longer than the original"
    );
    let again = Message::parse(&buf[..n]).expect("a rewritten message parses");
    let back: Vec<RawAttribute<'_>> = again
        .attributes()
        .filter(|a| !matches!(a.typ, attr::MESSAGE_INTEGRITY | attr::FINGERPRINT))
        .collect();
    assert_eq!(back.len(), plain.len());
    for (a, b) in back.iter().zip(&plain) {
        assert_eq!(
            (a.typ, a.value),
            (b.typ, b.value),
            "attribute changed in rewrite"
        );
    }
    assert_eq!(again.has_integrity(), msg.has_integrity());
    assert_eq!(again.has_fingerprint(), msg.has_fingerprint());
    if again.has_integrity() {
        assert_eq!(
            again.check_integrity(&key),
            Ok(()),
            "fresh MI does not verify"
        );
    }
}

/// Input: a count of segment sizes (low 4 bits of the first byte), that many sizes (1 to 256
/// bytes each, used in turn until the stream is consumed), then the stream. The frames found
/// must not depend on where the stream was cut.
pub fn stream_framing(data: &[u8]) {
    let mut input = Input::new(data);
    let count = input.u8().unwrap_or(0) % 16;
    let sizes: Vec<usize> = (0..count)
        .filter_map(|_| input.u8())
        .map(|b| usize::from(b) + 1)
        .collect();
    let stream = input.rest();
    let _ = ChannelData::parse(stream);
    let whole = Framing::read(stream, &[]);
    let cut = Framing::read(stream, &sizes);
    assert_eq!(whole, cut, "framing depends on segmentation {sizes:?}");
}

/// What a reader made of a stream: the frames (offset and kind), then how it ended.
#[derive(Debug, PartialEq, Eq)]
struct Framing {
    frames: Vec<(usize, Frame)>,
    end: End,
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The stream is not STUN/ChannelData from this offset: the connection would be closed.
    Error(usize, StunError),
    /// Bytes of an incomplete frame left at the end.
    Leftover(usize),
}

impl Framing {
    /// Reads `stream` as the TCP/TLS reader does (net/stream.rs): append what arrived, take
    /// every complete frame, keep the rest. `sizes` are the segment sizes in turn; empty means
    /// the whole stream at once.
    fn read(stream: &[u8], sizes: &[usize]) -> Framing {
        let mut frames = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut consumed_total = 0;
        let mut at = 0;
        let mut turn = 0;
        while at < stream.len() {
            let size = match sizes {
                [] => stream.len(),
                _ => sizes[turn % sizes.len()],
            };
            turn += 1;
            let segment = &stream[at..(at + size).min(stream.len())];
            at += segment.len();
            buf.extend_from_slice(segment);
            let mut consumed = 0;
            while consumed < buf.len() {
                let pending = &buf[consumed..];
                match frame_len(pending) {
                    Ok(Some(frame)) => {
                        let advance = frame.stream_len();
                        if advance > pending.len() {
                            break;
                        }
                        check_frame(pending, frame);
                        frames.push((consumed_total + consumed, frame));
                        consumed += advance;
                    }
                    Ok(None) => break,
                    Err(error) => {
                        return Framing {
                            frames,
                            end: End::Error(consumed_total + consumed, error),
                        };
                    }
                }
            }
            buf.drain(..consumed);
            consumed_total += consumed;
        }
        Framing {
            frames,
            end: End::Leftover(buf.len()),
        }
    }
}

/// A frame `frame_len` found at the start of `pending` is what its header says.
fn check_frame(pending: &[u8], frame: Frame) {
    match frame {
        Frame::Stun(len) => {
            assert!(pending[0] <= 0x3F);
            assert!(len >= HEADER_LEN && len % 4 == 0);
            assert_eq!(message_len(pending), Some(len));
            assert_eq!(pending[4..8], MAGIC_COOKIE.to_be_bytes());
            let _ = Message::parse(&pending[..len]);
        }
        Frame::ChannelData { len, padded } => {
            assert!((0x40..=0x7F).contains(&pending[0]));
            assert_eq!(padded, (len + 3) & !3);
            let cd = ChannelData::parse(&pending[..len]).expect("a framed ChannelData parses");
            assert_eq!(cd.number, u16::from_be_bytes([pending[0], pending[1]]));
            assert_eq!(cd.payload.len() + 4, len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_ignores_segmentation_of_a_valid_stream() {
        let mut stream = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        stream.extend_from_slice(&[7; 12]);
        stream.extend_from_slice(&[0x40, 0x01, 0x00, 0x03, 1, 2, 3, 0]);
        let whole = Framing::read(&stream, &[]);
        assert_eq!(whole.frames.len(), 2);
        assert_eq!(whole.end, End::Leftover(0));
        for size in 1..stream.len() {
            assert_eq!(Framing::read(&stream, &[size]), whole, "{size}");
        }
        let mut input = vec![2, 3, 5];
        input.extend_from_slice(&stream);
        stream_framing(&input);
    }

    #[test]
    fn a_message_with_integrity_and_fingerprint_passes_every_check() {
        let mut buf = [0u8; 256];
        let tid = stun::TransactionId([3; 12]);
        let mut w = MessageWriter::new(&mut buf, stun::Method::ALLOCATE, stun::Class::Request, tid)
            .unwrap();
        w.attribute(attr::USERNAME, b"alice").unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, "[2001:db8::7]:9".parse().unwrap())
            .unwrap();
        w.error_code(438, "Stale Nonce").unwrap();
        w.attribute(0x7777, b"x").unwrap();
        w.message_integrity(&seed_key()).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        assert_eq!(
            Message::parse(&buf[..n])
                .unwrap()
                .check_integrity(&seed_key()),
            Ok(())
        );
        stun_message(&buf[..n]);
    }
}
