//! Differential tests of turnpike's STUN codec against an independent one, the `stun-types`
//! crate: on the RFC 5769 vectors, on messages either codec writes (proptest), on those
//! messages damaged, and on hand-made malformed ones, both agree on whether a message is valid,
//! its header, its attribute list, its MESSAGE-INTEGRITY and its FINGERPRINT, unless the input
//! falls under one of the cases [`Difference`] lists, each decided by an RFC clause (or by
//! turnpike's own attribute cap), where the two legitimately part ways.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use stun_types::attribute::{
    AttributeFromRaw, AttributeType, ErrorCode, RawAttribute as TheirAttribute, XorMappedAddress,
};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message as TheirMessage, MessageClass,
    MessageIntegrityCredentials, MessageType, MessageWrite, MessageWriteExt, MessageWriteVec,
    ShortTermCredentials, TransactionId as TheirTransactionId,
};
use turnpike::stun::{
    Class, HEADER_LEN, MAX_ATTRIBUTES, Message, MessageWriter, Method, StunError, TransactionId,
    attr, long_term_key,
};

/// Where the two codecs may legitimately disagree, and the clause that decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Difference {
    /// The header length field is not the size of the rest of the buffer, or not a multiple of
    /// 4. RFC 8489 §5: the length is the size of the message after the header, and its last two
    /// bits are always zero; turnpike refuses the buffer, stun-types parses what is there.
    LengthField,
    /// More than MAX_ATTRIBUTES attributes: turnpike's own cap. No RFC limits the count, so a
    /// receiver may refuse what it cannot afford; stun-types has no cap.
    TooManyAttributes,
    /// An attribute after FINGERPRINT. RFC 8489 §14.7: FINGERPRINT MUST be the last attribute;
    /// turnpike refuses the message, stun-types stops reading at FINGERPRINT.
    AfterFingerprint,
    /// The first MESSAGE-INTEGRITY is not 20 bytes. RFC 8489 §14.5: its value is the 20-byte
    /// HMAC-SHA1; turnpike refuses the message, stun-types only fails to validate it later.
    IntegrityLength,
    /// MESSAGE-INTEGRITY-SHA256 present. RFC 8489 §9, §14.6: when it comes first, turnpike
    /// ignores what follows it but FINGERPRINT (a later MESSAGE-INTEGRITY too) and requires 16
    /// to 32 bytes in multiples of 4; stun-types reads on to a later MESSAGE-INTEGRITY and
    /// checks the length only when validating.
    IntegritySha256,
    /// After MESSAGE-INTEGRITY, an attribute other than FINGERPRINT, then more. RFC 8489 §14.5:
    /// agents ignore what follows MESSAGE-INTEGRITY except MESSAGE-INTEGRITY-SHA256 and
    /// FINGERPRINT, so turnpike still checks a FINGERPRINT further on and lists it; stun-types
    /// stops at the first ignored attribute.
    AfterIntegrity,
}

/// The attribute framing of `buf` as written, read by hand (neither codec is asked).
#[derive(Debug, Default)]
struct Layout {
    length_field_ok: bool,
    /// (type, value length) of each attribute that fits, in order.
    attributes: Vec<(u16, usize)>,
}

fn layout(buf: &[u8]) -> Layout {
    let mut layout = Layout::default();
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return layout;
    };
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    layout.length_field_ok = len % 4 == 0 && HEADER_LEN + len == buf.len();
    let mut pos = HEADER_LEN;
    while let Some(head) = buf.get(pos..pos + 4) {
        let typ = u16::from_be_bytes([head[0], head[1]]);
        let value_len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        layout.attributes.push((typ, value_len));
        pos += 4 + value_len.next_multiple_of(4);
    }
    layout
}

/// The differences the input falls under (empty: the codecs must agree in full).
fn differences(buf: &[u8]) -> Vec<Difference> {
    let layout = layout(buf);
    let mut found = Vec::new();
    if buf.len() >= HEADER_LEN && !layout.length_field_ok {
        found.push(Difference::LengthField);
    }
    let types: Vec<u16> = layout.attributes.iter().map(|a| a.0).collect();
    if types.len() > MAX_ATTRIBUTES {
        found.push(Difference::TooManyAttributes);
    }
    if let Some(fp) = types.iter().position(|&t| t == attr::FINGERPRINT)
        && fp + 1 < types.len()
    {
        found.push(Difference::AfterFingerprint);
    }
    if let Some(&(_, len)) = layout
        .attributes
        .iter()
        .find(|a| a.0 == attr::MESSAGE_INTEGRITY)
        && len != 20
    {
        found.push(Difference::IntegrityLength);
    }
    if types.contains(&attr::MESSAGE_INTEGRITY_SHA256) {
        found.push(Difference::IntegritySha256);
    }
    if let Some(mi) = types.iter().position(|&t| t == attr::MESSAGE_INTEGRITY)
        && let Some(next) = types.get(mi + 1)
        && *next != attr::FINGERPRINT
    {
        found.push(Difference::AfterIntegrity);
    }
    found
}

/// What one codec made of a buffer.
#[derive(Debug, PartialEq, Eq)]
struct Reading {
    /// Message type (method and class bits) and transaction id.
    header: (u16, [u8; 12]),
    /// The attributes that count, with their values.
    attributes: Vec<(u16, Vec<u8>)>,
    /// Whether MESSAGE-INTEGRITY verifies under the key tried (None: none present).
    integrity: Option<bool>,
    has_fingerprint: bool,
}

/// A key to try: short-term (the password is the key) or long-term.
#[derive(Debug, Clone)]
enum Key {
    Short(String),
    Long {
        username: String,
        realm: String,
        password: String,
    },
}

impl Key {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Key::Short(password) => password.as_bytes().to_vec(),
            Key::Long {
                username,
                realm,
                password,
            } => long_term_key(username, realm, password).to_vec(),
        }
    }

    fn theirs(&self) -> MessageIntegrityCredentials {
        match self {
            Key::Short(password) => ShortTermCredentials::new(password.clone()).into(),
            Key::Long {
                username,
                realm,
                password,
            } => LongTermKeyCredentials::new(username.clone(), password.clone(), realm.clone())
                .into(),
        }
    }
}

fn message_type_bits(method: Method, class: Class) -> u16 {
    let m = method.0;
    let c = match class {
        Class::Request => 0x000,
        Class::Indication => 0x010,
        Class::Success => 0x100,
        Class::Error => 0x110,
    };
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | c
}

fn ours(buf: &[u8], key: &Key) -> Result<Reading, StunError> {
    let msg = Message::parse(buf)?;
    Ok(Reading {
        header: (
            message_type_bits(msg.method(), msg.class()),
            msg.transaction_id().0,
        ),
        attributes: msg
            .attributes()
            .map(|a| (a.typ, a.value.to_vec()))
            .collect(),
        integrity: msg
            .has_integrity()
            .then(|| msg.check_integrity(&key.bytes()).is_ok()),
        has_fingerprint: msg.has_fingerprint(),
    })
}

fn theirs(buf: &[u8], key: &Key) -> Result<Reading, String> {
    let msg = TheirMessage::from_bytes(buf).map_err(|e| e.to_string())?;
    let attributes: Vec<(u16, Vec<u8>)> = msg
        .iter_attributes()
        .map(|(_, a)| (a.header.get_type().value(), a.value.to_vec()))
        .collect();
    let has_integrity = attributes.iter().any(|a| a.0 == attr::MESSAGE_INTEGRITY);
    let integrity = has_integrity.then(|| msg.validate_integrity(&key.theirs()).is_ok());
    let tid: u128 = msg.transaction_id().into();
    let mut id = [0u8; 12];
    id.copy_from_slice(&tid.to_be_bytes()[4..]);
    Ok(Reading {
        header: (u16::from_be_bytes([buf[0], buf[1]]), id),
        has_fingerprint: attributes.iter().any(|a| a.0 == attr::FINGERPRINT),
        attributes,
        integrity,
    })
}

/// Tallies of a batch of comparisons, by the differences the inputs fell under.
#[derive(Debug, Default)]
struct Tally {
    /// Inputs with no difference: the codecs agreed in full (both valid or both not).
    agreed_valid: usize,
    agreed_invalid: usize,
    /// Inputs under a difference, by the first one, and whether the codecs then disagreed.
    excused: BTreeMap<(Difference, bool), usize>,
}

/// Compares the codecs on `buf`: when no difference applies they must agree on validity, and
/// on everything in [`Reading`] when valid; otherwise the outcome is tallied under the first
/// difference.
fn compare(buf: &[u8], key: &Key, tally: &mut Tally) -> Result<(), TestCaseError> {
    let found = differences(buf);
    let mine = ours(buf, key);
    let other = theirs(buf, key);
    match found.first() {
        None => {
            match (&mine, &other) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!(a, b, "readings differ on {:02x?}", buf);
                    tally.agreed_valid += 1;
                }
                (Err(_), Err(_)) => tally.agreed_invalid += 1,
                _ => prop_assert!(
                    false,
                    "validity differs on {:02x?}: turnpike {:?}, stun-types {:?}",
                    buf,
                    mine.as_ref().map(|_| ()),
                    other.as_ref().map(|_| ())
                ),
            }
            // Valid to turnpike, the typed values stun-types knows decode the same.
            if let (Ok(msg), Ok(their)) = (Message::parse(buf), TheirMessage::from_bytes(buf)) {
                typed_values_agree(&msg, &their)?;
            }
        }
        Some(&first) => {
            let disagree = mine.is_ok() != other.is_ok()
                || matches!((&mine, &other), (Ok(a), Ok(b)) if a != b);
            *tally.excused.entry((first, disagree)).or_default() += 1;
        }
    }
    Ok(())
}

/// XOR-MAPPED-ADDRESS and ERROR-CODE, where both codecs decode them.
fn typed_values_agree(msg: &Message<'_>, their: &TheirMessage<'_>) -> Result<(), TestCaseError> {
    let tid: u128 = their.transaction_id().into();
    let their_tid = TheirTransactionId::from(tid);
    for (_, raw) in their.iter_attributes() {
        let typ = raw.header.get_type().value();
        let Some(value) = msg.get(typ) else { continue };
        if &*raw.value != value {
            // A later attribute of the same type; `get` returns the first.
            continue;
        }
        match typ {
            attr::XOR_MAPPED_ADDRESS => {
                let mine = attr::decode_xor_address(value, &msg.transaction_id()).ok();
                let other = XorMappedAddress::from_raw_ref(&raw)
                    .ok()
                    .map(|a| a.addr(their_tid));
                if let (Some(a), Some(b)) = (mine, other) {
                    prop_assert_eq!(a, b);
                }
            }
            attr::ERROR_CODE => {
                let mine = attr::decode_error_code(value).ok();
                let other = ErrorCode::from_raw_ref(&raw).ok();
                if let (Some((code, reason)), Some(e)) = (mine, other) {
                    prop_assert_eq!(code, e.code());
                    prop_assert_eq!(reason, e.reason());
                }
            }
            _ => {}
        }
    }
    Ok(())
}

// RFC 5769 test vectors, as in the RFC (copied so that this file stands alone).

const VECTOR_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";

#[rustfmt::skip]
const REQUEST: &[u8] = &[
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42,
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    0x80, 0x22, 0x00, 0x10,
    0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74,
    0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff,
    0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
    0x00, 0x06, 0x00, 0x09,
    0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20,
    0x00, 0x08, 0x00, 0x14,
    0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
    0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2,
    0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
];

#[rustfmt::skip]
const RESPONSE_IPV4: &[u8] = &[
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42,
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    0x80, 0x22, 0x00, 0x0b,
    0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20,
    0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
    0x00, 0x08, 0x00, 0x14,
    0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74,
    0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7,
    0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
];

#[rustfmt::skip]
const RESPONSE_IPV6: &[u8] = &[
    0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42,
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    0x80, 0x22, 0x00, 0x0b,
    0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20,
    0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47,
    0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
    0x00, 0x08, 0x00, 0x14,
    0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84,
    0xc9, 0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41,
    0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb, 0x0b, 0x4c,
];

#[rustfmt::skip]
const REQUEST_LONG_TERM: &[u8] = &[
    0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42,
    0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e,
    0x00, 0x06, 0x00, 0x12,
    0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88, 0xe3, 0x83, 0xaa, 0xe3,
    0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00,
    0x00, 0x15, 0x00, 0x1c,
    0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c,
    0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73, 0x41,
    0x00, 0x14, 0x00, 0x0b,
    0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00,
    0x00, 0x08, 0x00, 0x14,
    0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02, 0xb8,
    0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8, 0x96, 0x66,
];

fn vectors() -> [(&'static str, &'static [u8], Key); 4] {
    let short = || Key::Short(VECTOR_PASSWORD.into());
    [
        ("2.1", REQUEST, short()),
        ("2.2", RESPONSE_IPV4, short()),
        ("2.3", RESPONSE_IPV6, short()),
        (
            "2.4",
            REQUEST_LONG_TERM,
            Key::Long {
                // After SASLprep, as the RFC gives them.
                username: "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}".into(),
                realm: "example.org".into(),
                password: "TheMatrIX".into(),
            },
        ),
    ]
}

/// Both codecs read each vector the same way, verify its MESSAGE-INTEGRITY under its key and
/// not under another, and agree on every truncation and every single-bit change of it.
#[test]
fn rfc5769_vectors_read_the_same() {
    let mut tally = Tally::default();
    for (name, vector, key) in vectors() {
        let mine = ours(vector, &key).unwrap_or_else(|e| panic!("{name}: turnpike: {e}"));
        let other = theirs(vector, &key).unwrap_or_else(|e| panic!("{name}: stun-types: {e}"));
        assert_eq!(mine, other, "{name}");
        assert_eq!(mine.integrity, Some(true), "{name}");
        let wrong = Key::Short("wrong".into());
        assert_eq!(ours(vector, &wrong).unwrap().integrity, Some(false));
        assert_eq!(theirs(vector, &wrong).unwrap().integrity, Some(false));
        assert!(differences(vector).is_empty(), "{name}");
        compare(vector, &key, &mut tally).unwrap();
        for len in 0..vector.len() {
            compare(&vector[..len], &key, &mut tally).unwrap();
        }
        for bit in 0..vector.len() * 8 {
            let mut buf = vector.to_vec();
            buf[bit / 8] ^= 1 << (bit % 8);
            compare(&buf, &key, &mut tally).unwrap();
        }
    }
    eprintln!("RFC 5769 vectors, truncated and bit-flipped: {tally:?}");
    assert!(tally.agreed_valid >= 4 && tally.agreed_invalid > 100);
}

/// A request whose attributes are `attributes` (type, value), optionally with
/// MESSAGE-INTEGRITY under `key` and FINGERPRINT, written by hand without either codec.
fn hand_made(attributes: &[(u16, &[u8])], key: Option<&[u8]>, fingerprint: bool) -> Vec<u8> {
    let mut buf = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    buf.extend_from_slice(&[0x5a; 12]);
    let push = |buf: &mut Vec<u8>, typ: u16, value: &[u8]| {
        buf.extend_from_slice(&typ.to_be_bytes());
        buf.extend_from_slice(&(value.len() as u16).to_be_bytes());
        buf.extend_from_slice(value);
        buf.resize(buf.len().next_multiple_of(4), 0);
    };
    let set_len = |buf: &mut Vec<u8>, extra: usize| {
        let len = (buf.len() - HEADER_LEN + extra) as u16;
        buf[2..4].copy_from_slice(&len.to_be_bytes());
    };
    for (typ, value) in attributes {
        push(&mut buf, *typ, value);
    }
    if let Some(key) = key {
        set_len(&mut buf, 24);
        let mac = turnpike::stun::hmac_sha1(key, &[&buf]);
        push(&mut buf, attr::MESSAGE_INTEGRITY, &mac);
    }
    if fingerprint {
        set_len(&mut buf, 8);
        let crc = crc32(&buf) ^ 0x5354_554E;
        push(&mut buf, attr::FINGERPRINT, &crc.to_be_bytes());
    }
    set_len(&mut buf, 0);
    buf
}

/// CRC-32 (IEEE), bit by bit: independent of both codecs.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Hand-made malformed and borderline messages: each falls under the difference it is named
/// for, and the codecs then go the way the clause says (or agree, where both refuse).
#[test]
fn hand_made_messages_differ_only_where_an_rfc_says() {
    let key = Key::Short("pass".into());
    let k = key.bytes();
    let software: &[u8] = b"hand";
    let ok = hand_made(&[(attr::SOFTWARE, software)], Some(&k), true);
    assert!(differences(&ok).is_empty());
    assert_eq!(ours(&ok, &key).unwrap(), theirs(&ok, &key).unwrap());
    assert_eq!(ours(&ok, &key).unwrap().integrity, Some(true));

    // Trailing bytes after the message: RFC 8489 §5.
    let mut trailing = ok.clone();
    trailing.extend_from_slice(&[0x80, 0x22, 0, 0]);
    // (The extra bytes also read as an attribute after FINGERPRINT.)
    assert_eq!(differences(&trailing)[0], Difference::LengthField);
    assert_eq!(ours(&trailing, &key), Err(StunError::BadLength));
    // A length field that is not a multiple of 4: RFC 8489 §5.
    let mut odd = hand_made(&[(attr::SOFTWARE, b"abc")], None, false);
    odd[3] -= 1;
    odd.pop();
    assert_eq!(differences(&odd), [Difference::LengthField]);
    assert_eq!(ours(&odd, &key), Err(StunError::BadLength));

    // 129 attributes: turnpike's cap; stun-types reads them all.
    let many = vec![(0x8F01u16, &[][..]); MAX_ATTRIBUTES + 1];
    let crowded = hand_made(&many, None, false);
    assert_eq!(differences(&crowded), [Difference::TooManyAttributes]);
    assert_eq!(ours(&crowded, &key), Err(StunError::TooManyAttributes));
    assert_eq!(
        theirs(&crowded, &key).unwrap().attributes.len(),
        MAX_ATTRIBUTES + 1
    );
    // 128 is fine for both.
    let full = hand_made(&many[..MAX_ATTRIBUTES], None, false);
    assert_eq!(ours(&full, &key).unwrap(), theirs(&full, &key).unwrap());

    // An attribute after FINGERPRINT: RFC 8489 §14.7.
    let mut after_fp = ok.clone();
    after_fp.extend_from_slice(&[0x80, 0x22, 0, 0]);
    let len = (after_fp.len() - HEADER_LEN) as u16;
    after_fp[2..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(differences(&after_fp), [Difference::AfterFingerprint]);
    assert_eq!(ours(&after_fp, &key), Err(StunError::BadFingerprint));
    assert!(
        theirs(&after_fp, &key).is_ok(),
        "stun-types stops at FINGERPRINT"
    );

    // MESSAGE-INTEGRITY of 16 bytes: RFC 8489 §14.5.
    let short_mi = hand_made(
        &[
            (attr::SOFTWARE, software),
            (attr::MESSAGE_INTEGRITY, &[1; 16]),
        ],
        None,
        false,
    );
    assert_eq!(differences(&short_mi), [Difference::IntegrityLength]);
    assert_eq!(ours(&short_mi, &key), Err(StunError::BadAttributeLength));
    assert_eq!(theirs(&short_mi, &key).unwrap().integrity, Some(false));

    // MESSAGE-INTEGRITY-SHA256 before MESSAGE-INTEGRITY: RFC 8489 §9: turnpike ignores what
    // follows it (SOFTWARE, MESSAGE-INTEGRITY) but FINGERPRINT.
    let sha256 = hand_made(
        &[
            (attr::MESSAGE_INTEGRITY_SHA256, &[7; 32]),
            (attr::SOFTWARE, software),
        ],
        Some(&k),
        true,
    );
    assert_eq!(differences(&sha256), [Difference::IntegritySha256]);
    let mine = ours(&sha256, &key).unwrap();
    let types: Vec<u16> = mine.attributes.iter().map(|a| a.0).collect();
    assert_eq!(types, [attr::MESSAGE_INTEGRITY_SHA256, attr::FINGERPRINT]);
    assert_eq!(mine.integrity, None);
    assert_eq!(
        Message::parse(&sha256).unwrap().integrity_sha256_len(),
        Some(32)
    );

    // Something after MESSAGE-INTEGRITY, then FINGERPRINT: RFC 8489 §14.5. turnpike ignores
    // the attribute but still checks and lists FINGERPRINT.
    let mut tail = hand_made(&[(attr::SOFTWARE, software)], Some(&k), false);
    tail.extend_from_slice(&[0x80, 0x22, 0, 0]);
    let len = (tail.len() - HEADER_LEN + 8) as u16;
    tail[2..4].copy_from_slice(&len.to_be_bytes());
    let crc = crc32(&tail) ^ 0x5354_554E;
    tail.extend_from_slice(&[0x80, 0x28, 0, 4]);
    tail.extend_from_slice(&crc.to_be_bytes());
    assert_eq!(differences(&tail), [Difference::AfterIntegrity]);
    let mine = ours(&tail, &key).unwrap();
    assert_eq!(
        mine.attributes.iter().map(|a| a.0).collect::<Vec<_>>(),
        [attr::SOFTWARE, attr::MESSAGE_INTEGRITY, attr::FINGERPRINT]
    );
    assert_eq!(mine.integrity, Some(true));
    let other = theirs(&tail, &key).unwrap();
    assert_eq!(
        other.attributes.iter().map(|a| a.0).collect::<Vec<_>>(),
        [attr::SOFTWARE, attr::MESSAGE_INTEGRITY]
    );
    // With the FINGERPRINT wrong, turnpike refuses the message; stun-types never looks.
    let last = tail.len() - 1;
    tail[last] ^= 1;
    assert_eq!(ours(&tail, &key), Err(StunError::BadFingerprint));
    assert!(theirs(&tail, &key).is_ok());

    // And where no clause applies, both refuse alike.
    let mut tally = Tally::default();
    let mut bad_fp = ok.clone();
    let last = bad_fp.len() - 1;
    bad_fp[last] ^= 0x80;
    let mut overrun = hand_made(&[(attr::SOFTWARE, software)], None, false);
    overrun[22..24].copy_from_slice(&40u16.to_be_bytes());
    let mut bad_cookie = ok.clone();
    bad_cookie[5] ^= 1;
    let mut top_bits = ok.clone();
    top_bits[0] |= 0x80;
    for (name, buf) in [
        ("wrong FINGERPRINT", bad_fp),
        ("attribute past the end", overrun),
        ("bad magic cookie", bad_cookie),
        ("top bits set", top_bits),
        ("header only, cut", ok[..19].to_vec()),
        ("empty", Vec::new()),
    ] {
        assert!(differences(&buf).is_empty(), "{name}");
        assert!(ours(&buf, &key).is_err(), "{name}: turnpike");
        assert!(theirs(&buf, &key).is_err(), "{name}: stun-types");
        compare(&buf, &key, &mut tally).unwrap();
    }
    assert_eq!(tally.agreed_invalid, 6);
}

/// A message for the generators: header fields, attributes with types that neither codec
/// treats specially, an optional short-term key and FINGERPRINT.
#[derive(Debug, Clone)]
struct Plan {
    method: u16,
    class: Class,
    tid: [u8; 12],
    attributes: Vec<(u16, Vec<u8>)>,
    key: Option<String>,
    fingerprint: bool,
}

fn plain_type() -> impl Strategy<Value = u16> {
    prop_oneof![
        prop::sample::select(vec![
            attr::USERNAME,
            attr::SOFTWARE,
            attr::XOR_MAPPED_ADDRESS,
            attr::ERROR_CODE,
            attr::LIFETIME,
            attr::DATA,
            0x7ABC,
            0x8F01,
        ]),
        any::<u16>(),
    ]
    .prop_filter(
        "MESSAGE-INTEGRITY, its SHA-256 variant and FINGERPRINT are written apart",
        |t| {
            ![
                attr::MESSAGE_INTEGRITY,
                attr::MESSAGE_INTEGRITY_SHA256,
                attr::FINGERPRINT,
            ]
            .contains(t)
        },
    )
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        0u16..0x1000,
        prop::sample::select(vec![
            Class::Request,
            Class::Indication,
            Class::Success,
            Class::Error,
        ]),
        any::<[u8; 12]>(),
        proptest::collection::vec(
            (plain_type(), proptest::collection::vec(any::<u8>(), 0..48)),
            0..20,
        ),
        proptest::option::of("[ -~]{0,24}"),
        any::<bool>(),
    )
        .prop_map(|(method, class, tid, attributes, key, fingerprint)| Plan {
            method,
            class,
            tid,
            attributes,
            key,
            fingerprint,
        })
}

/// `plan` written by turnpike's writer.
fn write_ours(plan: &Plan) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let mut w = MessageWriter::new(
        &mut buf,
        Method(plan.method),
        plan.class,
        TransactionId(plan.tid),
    )
    .unwrap();
    for (typ, value) in &plan.attributes {
        w.attribute(*typ, value).unwrap();
    }
    if let Some(key) = &plan.key {
        w.message_integrity(key.as_bytes()).unwrap();
    }
    if plan.fingerprint {
        w.fingerprint().unwrap();
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

/// `plan` written by stun-types' writer.
fn write_theirs(plan: &Plan) -> Vec<u8> {
    let class = match plan.class {
        Class::Request => MessageClass::Request,
        Class::Indication => MessageClass::Indication,
        Class::Success => MessageClass::Success,
        Class::Error => MessageClass::Error,
    };
    let mtype =
        MessageType::from_class_method(class, stun_types::message::Method::new(plan.method));
    let mut tid = [0u8; 16];
    tid[4..].copy_from_slice(&plan.tid);
    let mut w = TheirMessage::builder(
        mtype,
        TheirTransactionId::from(u128::from_be_bytes(tid)),
        MessageWriteVec::new(),
    );
    for (typ, value) in &plan.attributes {
        w.add_attribute(&TheirAttribute::new(AttributeType::new(*typ), value))
            .unwrap();
    }
    if let Some(key) = &plan.key {
        let credentials: MessageIntegrityCredentials =
            ShortTermCredentials::new(key.clone()).into();
        w.add_message_integrity(&credentials, IntegrityAlgorithm::Sha1)
            .unwrap();
    }
    if plan.fingerprint {
        w.add_fingerprint().unwrap();
    }
    w.finish()
}

fn plan_key(plan: &Plan) -> Key {
    Key::Short(plan.key.clone().unwrap_or_else(|| "unused".into()))
}

proptest! {
    // No regression files: an integration test has no source file next to it to keep them.
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// What turnpike writes, stun-types reads the same way: header, attributes, integrity under
    /// the key (and not another), fingerprint.
    #[test]
    fn turnpike_writes_what_stun_types_reads(plan in plan()) {
        let bytes = write_ours(&plan);
        prop_assert!(differences(&bytes).is_empty());
        let key = plan_key(&plan);
        let mine = ours(&bytes, &key).expect("turnpike reads its own message");
        let other = theirs(&bytes, &key).expect("stun-types reads turnpike's message");
        prop_assert_eq!(&mine, &other);
        prop_assert_eq!(mine.integrity, plan.key.as_ref().map(|_| true));
        prop_assert_eq!(mine.has_fingerprint, plan.fingerprint);
        let wrong = Key::Short("not the key".into());
        prop_assert_eq!(ours(&bytes, &wrong).unwrap().integrity, theirs(&bytes, &wrong).unwrap().integrity);
        typed_values_agree(&Message::parse(&bytes).unwrap(), &TheirMessage::from_bytes(&bytes).unwrap())?;
    }

    /// What stun-types writes, turnpike reads the same way.
    #[test]
    fn stun_types_writes_what_turnpike_reads(plan in plan()) {
        let bytes = write_theirs(&plan);
        prop_assert!(differences(&bytes).is_empty());
        let key = plan_key(&plan);
        let other = theirs(&bytes, &key).expect("stun-types reads its own message");
        let mine = ours(&bytes, &key).expect("turnpike reads stun-types' message");
        prop_assert_eq!(&mine, &other);
        prop_assert_eq!(mine.integrity, plan.key.as_ref().map(|_| true));
        prop_assert_eq!(mine.has_fingerprint, plan.fingerprint);
    }

    /// Messages damaged after writing (cut, extended, bytes changed, attribute headers
    /// rewritten): the codecs agree wherever no clause sets them apart.
    #[test]
    fn damaged_messages_differ_only_where_an_rfc_says(
        plan in plan(),
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        extra in proptest::collection::vec(any::<u8>(), 0..12),
        special in prop::sample::select(vec![
            attr::MESSAGE_INTEGRITY, attr::FINGERPRINT, attr::MESSAGE_INTEGRITY_SHA256, 0x8F01,
        ]),
        retype in any::<prop::sample::Index>(),
        relength in any::<bool>(),
    ) {
        let key = plan_key(&plan);
        let mut tally = Tally::default();
        let bytes = write_ours(&plan);
        compare(&bytes, &key, &mut tally)?;
        compare(&bytes[..cut.index(bytes.len() + 1)], &key, &mut tally)?;
        let mut damaged = bytes.clone();
        for (at, value) in &flips {
            let i = at.index(damaged.len());
            damaged[i] = *value;
        }
        compare(&damaged, &key, &mut tally)?;
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        if relength {
            let len = (longer.len() - HEADER_LEN) as u16;
            longer[2..4].copy_from_slice(&len.to_be_bytes());
        }
        compare(&longer, &key, &mut tally)?;
        // One attribute header turned into a type either codec treats specially.
        let starts: Vec<usize> = {
            let mut starts = Vec::new();
            let mut pos = HEADER_LEN;
            while pos + 4 <= bytes.len() {
                starts.push(pos);
                let len = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
                pos += 4 + len.next_multiple_of(4);
            }
            starts
        };
        if !starts.is_empty() {
            let mut retyped = bytes.clone();
            let at = starts[retype.index(starts.len())];
            retyped[at..at + 2].copy_from_slice(&special.to_be_bytes());
            compare(&retyped, &key, &mut tally)?;
        }
    }
}

/// Over many generated and damaged messages, most are compared in full, and each difference
/// that showed up is one of the named ones (printed with `--nocapture`).
#[test]
fn most_generated_messages_are_compared_in_full() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut tally = Tally::default();
    let strategy = (plan(), any::<prop::sample::Index>(), any::<u8>());
    for _ in 0..2000 {
        let (plan, at, value) = strategy.new_tree(&mut runner).expect("a value").current();
        let key = plan_key(&plan);
        let bytes = write_ours(&plan);
        compare(&bytes, &key, &mut tally).unwrap();
        let mut damaged = bytes.clone();
        let i = at.index(damaged.len());
        damaged[i] = value;
        compare(&damaged, &key, &mut tally).unwrap();
    }
    eprintln!("generated and damaged messages: {tally:?}");
    assert!(tally.agreed_valid >= 2000, "{tally:?}");
    assert!(tally.agreed_invalid >= 100, "{tally:?}");
}
