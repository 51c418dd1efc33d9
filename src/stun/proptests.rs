//! Property tests of the codec: whatever the writer writes parses back, attribute by attribute,
//! with its MESSAGE-INTEGRITY and FINGERPRINT; no input panics; and the work done on a message,
//! counted in attribute headers read ([`visits`]), is linear in its size.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;

use super::attr::*;
use super::{
    Class, HEADER_LEN, MAX_ATTRIBUTES, MAX_UNKNOWN_REPORTED, Message, MessageWriter, Method,
    StunError, TransactionId, frame_len, message_class, message_len, visits,
};

/// One attribute as the writer is asked to write it, with the value a reader must get back.
#[derive(Debug, Clone)]
enum Written {
    XorAddress(u16, SocketAddr),
    Address(u16, SocketAddr),
    U32(u16, u32),
    Text(u16, String),
    ErrorCode(u16, String),
    UnknownAttributes(Vec<u16>),
    ChannelNumber(u16),
    RequestedTransport(u8),
    Flag(u16),
    EvenPort(bool),
    ReservationToken([u8; 8]),
    AddressFamily(u16, u8),
    Data(Vec<u8>),
    /// Any other type (MESSAGE-INTEGRITY and FINGERPRINT aside) with any value.
    Raw(u16, Vec<u8>),
}

impl Written {
    fn typ(&self) -> u16 {
        match self {
            Written::XorAddress(t, _)
            | Written::Address(t, _)
            | Written::U32(t, _)
            | Written::Text(t, _)
            | Written::AddressFamily(t, _)
            | Written::Raw(t, _) => *t,
            Written::Flag(t) => *t,
            Written::ErrorCode(..) => ERROR_CODE,
            Written::UnknownAttributes(_) => UNKNOWN_ATTRIBUTES,
            Written::ChannelNumber(_) => CHANNEL_NUMBER,
            Written::RequestedTransport(_) => REQUESTED_TRANSPORT,
            Written::EvenPort(_) => EVEN_PORT,
            Written::ReservationToken(_) => RESERVATION_TOKEN,
            Written::Data(_) => DATA,
        }
    }

    /// Length of the value on the wire, padding excluded.
    fn value_len(&self) -> usize {
        let address_len = |a: &SocketAddr| if a.is_ipv4() { 8 } else { 20 };
        match self {
            Written::XorAddress(_, a) | Written::Address(_, a) => address_len(a),
            Written::U32(..)
            | Written::ChannelNumber(_)
            | Written::RequestedTransport(_)
            | Written::AddressFamily(..) => 4,
            Written::Text(_, text) => text.len(),
            Written::ErrorCode(_, reason) => 4 + reason.len(),
            Written::UnknownAttributes(types) => 2 * types.len(),
            Written::Flag(_) => 0,
            Written::EvenPort(_) => 1,
            Written::ReservationToken(_) => 8,
            Written::Data(v) | Written::Raw(_, v) => v.len(),
        }
    }

    fn write(&self, w: &mut MessageWriter<'_>) -> Result<(), StunError> {
        match self {
            Written::XorAddress(t, addr) => w.xor_address(*t, *addr),
            Written::Address(t, addr) => w.address(*t, *addr),
            Written::U32(t, v) => w.u32(*t, *v),
            Written::Text(t, text) => w.attribute(*t, text.as_bytes()),
            Written::ErrorCode(code, reason) => w.error_code(*code, reason),
            Written::UnknownAttributes(types) => w.unknown_attributes(types),
            Written::ChannelNumber(n) => w.channel_number(*n),
            Written::RequestedTransport(p) => w.requested_transport(*p),
            Written::Flag(t) => w.flag(*t),
            Written::EvenPort(reserve) => w.attribute(EVEN_PORT, &[u8::from(*reserve) << 7]),
            Written::ReservationToken(token) => w.attribute(RESERVATION_TOKEN, token),
            Written::AddressFamily(t, family) => w.attribute(*t, &[*family, 0, 0, 0]),
            Written::Data(data) => w.attribute(DATA, data),
            Written::Raw(t, value) => w.attribute(*t, value),
        }
    }

    /// Checks that `value`, read back from a message with transaction id `tid`, decodes to what
    /// was written.
    fn check(&self, value: &[u8], tid: &TransactionId) -> Result<(), TestCaseError> {
        match self {
            Written::XorAddress(_, addr) => {
                prop_assert_eq!(decode_xor_address(value, tid), Ok(*addr))
            }
            Written::Address(_, addr) => prop_assert_eq!(decode_address(value), Ok(*addr)),
            Written::U32(_, v) => prop_assert_eq!(decode_u32(value), Ok(*v)),
            Written::Text(t, text) => {
                let max = if *t == USERNAME {
                    MAX_USERNAME_LEN
                } else {
                    MAX_TEXT_LEN
                };
                prop_assert_eq!(decode_text(value, max), Ok(text.as_str()));
            }
            Written::ErrorCode(code, reason) => {
                prop_assert_eq!(decode_error_code(value), Ok((*code, reason.as_str())))
            }
            Written::UnknownAttributes(types) => {
                let read: Vec<u16> = value
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                prop_assert_eq!(&read, types);
                prop_assert_eq!(value.len(), types.len() * 2);
            }
            Written::ChannelNumber(n) => prop_assert_eq!(decode_channel_number(value), Ok(*n)),
            Written::RequestedTransport(p) => {
                prop_assert_eq!(decode_requested_transport(value), Ok(*p))
            }
            Written::Flag(_) => prop_assert!(value.is_empty()),
            Written::EvenPort(reserve) => prop_assert_eq!(decode_even_port(value), Ok(*reserve)),
            Written::ReservationToken(token) => {
                prop_assert_eq!(decode_reservation_token(value), Ok(*token))
            }
            Written::AddressFamily(_, family) => {
                prop_assert_eq!(decode_address_family(value), Ok(*family))
            }
            Written::Data(data) | Written::Raw(_, data) => prop_assert_eq!(value, &data[..]),
        }
        Ok(())
    }
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

/// Text of at most `max_chars` characters, any of Unicode.
fn text(max_chars: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..=max_chars).prop_map(|c| c.into_iter().collect())
}

fn written() -> impl Strategy<Value = Written> {
    let xor_types = prop::sample::select(vec![
        XOR_MAPPED_ADDRESS,
        XOR_PEER_ADDRESS,
        XOR_RELAYED_ADDRESS,
    ]);
    let plain_types = prop::sample::select(vec![
        MAPPED_ADDRESS,
        ALTERNATE_SERVER,
        RESPONSE_ORIGIN,
        OTHER_ADDRESS,
    ]);
    let u32_types = prop::sample::select(vec![LIFETIME, PRIORITY, CONNECTION_ID, CACHE_TIMEOUT]);
    let text_types = prop::sample::select(vec![USERNAME, REALM, NONCE, SOFTWARE]);
    let family_types =
        prop::sample::select(vec![REQUESTED_ADDRESS_FAMILY, ADDITIONAL_ADDRESS_FAMILY]);
    let raw_type = any::<u16>().prop_filter("written by their own methods", |t| {
        ![MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256, FINGERPRINT].contains(t)
    });
    prop_oneof![
        (xor_types, socket_addr()).prop_map(|(t, a)| Written::XorAddress(t, a)),
        (plain_types, socket_addr()).prop_map(|(t, a)| Written::Address(t, a)),
        (u32_types, any::<u32>()).prop_map(|(t, v)| Written::U32(t, v)),
        // 120 characters of up to 4 bytes fit USERNAME's 513.
        (text_types, text(120)).prop_map(|(t, s)| Written::Text(t, s)),
        (300u16..=699, text(60)).prop_map(|(c, r)| Written::ErrorCode(c, r)),
        proptest::collection::vec(any::<u16>(), 0..=MAX_UNKNOWN_REPORTED)
            .prop_map(Written::UnknownAttributes),
        any::<u16>().prop_map(Written::ChannelNumber),
        any::<u8>().prop_map(Written::RequestedTransport),
        prop::sample::select(vec![DONT_FRAGMENT, USE_CANDIDATE]).prop_map(Written::Flag),
        any::<bool>().prop_map(Written::EvenPort),
        any::<[u8; 8]>().prop_map(Written::ReservationToken),
        (family_types, any::<u8>()).prop_map(|(t, f)| Written::AddressFamily(t, f)),
        proptest::collection::vec(any::<u8>(), 0..=600).prop_map(Written::Data),
        (raw_type, proptest::collection::vec(any::<u8>(), 0..=40))
            .prop_map(|(t, v)| Written::Raw(t, v)),
    ]
}

fn class() -> impl Strategy<Value = Class> {
    prop::sample::select(vec![
        Class::Request,
        Class::Indication,
        Class::Success,
        Class::Error,
    ])
}

/// A message to write: header fields, attributes, an optional MESSAGE-INTEGRITY key and
/// whether to end with FINGERPRINT.
#[derive(Debug, Clone)]
struct Plan {
    method: u16,
    class: Class,
    tid: [u8; 12],
    attributes: Vec<Written>,
    key: Option<Vec<u8>>,
    fingerprint: bool,
}

fn plan(max_attributes: usize) -> impl Strategy<Value = Plan> {
    (
        0u16..0x1000,
        class(),
        any::<[u8; 12]>(),
        proptest::collection::vec(written(), 0..=max_attributes),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..=64)),
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

/// What the writer must answer for `plan`, from its rules alone: the first attribute past
/// [`MAX_ATTRIBUTES`] is `TooManyAttributes`, the first one that takes the body past 0xFFFC
/// bytes `BufferTooSmall` (the count is checked first).
fn expected_outcome(plan: &Plan) -> Result<(), StunError> {
    let values = plan.attributes.iter().map(Written::value_len);
    let trailer = plan
        .key
        .iter()
        .map(|_| 20)
        .chain(plan.fingerprint.then_some(4));
    let mut body = 0;
    for (count, len) in values.chain(trailer).enumerate() {
        if count == MAX_ATTRIBUTES {
            return Err(StunError::TooManyAttributes);
        }
        body += 4 + ((len + 3) & !3);
        if body > 0xFFFC {
            return Err(StunError::BufferTooSmall);
        }
    }
    Ok(())
}

/// Writes `plan`; the bytes, or the first error.
fn write(plan: &Plan) -> Result<Vec<u8>, StunError> {
    let mut buf = vec![0u8; 70_000];
    let mut w = MessageWriter::new(
        &mut buf,
        Method(plan.method),
        plan.class,
        TransactionId(plan.tid),
    )?;
    for a in &plan.attributes {
        a.write(&mut w)?;
    }
    if let Some(key) = &plan.key {
        w.message_integrity(key)?;
    }
    if plan.fingerprint {
        w.fingerprint()?;
    }
    let n = w.finish();
    buf.truncate(n);
    Ok(buf)
}

/// What RFC 8489 §7.3.1 asks for, written the obvious way: each unknown comprehension-required
/// type once, in wire order (at most [`MAX_UNKNOWN_REPORTED`] of them).
fn unknown_required_by_the_book(msg: &Message<'_>, known: impl Fn(u16) -> bool) -> Vec<u16> {
    let mut unknown = Vec::new();
    for a in msg.attributes() {
        if is_comprehension_required(a.typ) && !known(a.typ) && !unknown.contains(&a.typ) {
            unknown.push(a.typ);
        }
    }
    unknown.truncate(MAX_UNKNOWN_REPORTED);
    unknown
}

/// Everything a server calls on a parsed message, with the attribute headers each walk reads:
/// every walk reads at most one header per attribute.
fn poke(buf: &[u8]) -> Result<(), TestCaseError> {
    let _ = message_len(buf);
    let _ = message_class(buf);
    let _ = frame_len(buf);
    let _ = super::ChannelData::parse(buf);
    visits::take();
    let Ok(msg) = Message::parse(buf) else {
        // A refused message still costs at most one header per 4 bytes, and at most the cap.
        let reads = visits::take();
        prop_assert!(reads <= (buf.len() / 4) as u64);
        prop_assert!(reads <= MAX_ATTRIBUTES as u64);
        return Ok(());
    };
    let n = visits::take();
    prop_assert!(n <= MAX_ATTRIBUTES as u64);
    prop_assert!(n <= (buf.len().saturating_sub(HEADER_LEN) / 4) as u64);
    let tid = msg.transaction_id();
    let _ = msg.check_integrity(b"key");
    let _ = msg.unknown_required(|_| false).count();
    prop_assert!(visits::take() <= n);
    for typ in [USERNAME, REALM, NONCE, XOR_PEER_ADDRESS, DATA, 0x7ABC] {
        let _ = msg.get(typ);
        prop_assert!(visits::take() <= n);
    }
    for a in msg.attributes() {
        decode_every_way(a.value, &tid);
    }
    prop_assert!(visits::take() <= n);
    Ok(())
}

/// A STUN header with a correct length field in front of `body` (cut to a multiple of 4).
fn with_header(first: u16, tid: [u8; 12], mut body: Vec<u8>) -> Vec<u8> {
    body.truncate((body.len() & !3).min(0xFFFC));
    let mut buf = Vec::with_capacity(HEADER_LEN + body.len());
    buf.extend_from_slice(&(first & 0x3FFF).to_be_bytes());
    buf.extend_from_slice(&(body.len() as u16).to_be_bytes());
    buf.extend_from_slice(&super::MAGIC_COOKIE.to_be_bytes());
    buf.extend_from_slice(&tid);
    buf.extend_from_slice(&body);
    buf
}

/// Attribute-shaped bytes: headers with small lengths and types near the interesting ones, so
/// that parsing gets past the framing checks.
fn attribute_soup() -> impl Strategy<Value = Vec<u8>> {
    let one = (
        prop_oneof![
            prop::sample::select(vec![MESSAGE_INTEGRITY, FINGERPRINT, USERNAME, 0x7ABC]),
            any::<u16>()
        ],
        0usize..=24,
        any::<u8>(),
    )
        .prop_map(|(typ, len, fill)| {
            let mut a = typ.to_be_bytes().to_vec();
            a.extend_from_slice(&(len as u16).to_be_bytes());
            a.resize(4 + ((len + 3) & !3), fill);
            a
        });
    proptest::collection::vec(one, 0..=200).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every attribute the writer can write reads back, in order, with its value; the
    /// message's MESSAGE-INTEGRITY verifies under its key only, and FINGERPRINT is there
    /// exactly when written.
    #[test]
    fn written_messages_parse_back(plan in plan(24)) {
        prop_assert_eq!(expected_outcome(&plan), Ok(()));
        let bytes = write(&plan).expect("24 attributes of these sizes fit");
        let msg = Message::parse(&bytes).expect("the writer's output parses");
        prop_assert_eq!(msg.method(), Method(plan.method));
        prop_assert_eq!(msg.class(), plan.class);
        prop_assert_eq!(msg.transaction_id(), TransactionId(plan.tid));
        prop_assert_eq!(message_class(&bytes), Some(plan.class));
        prop_assert_eq!(message_len(&bytes), Some(bytes.len()));
        let tid = msg.transaction_id();
        let read: Vec<_> = msg.attributes().collect();
        let extra = usize::from(plan.key.is_some()) + usize::from(plan.fingerprint);
        prop_assert_eq!(read.len(), plan.attributes.len() + extra);
        for (a, w) in read.iter().zip(&plan.attributes) {
            prop_assert_eq!(a.typ, w.typ());
            w.check(a.value, &tid)?;
        }
        for w in &plan.attributes {
            let first = plan.attributes.iter().find(|o| o.typ() == w.typ()).unwrap();
            first.check(msg.get(w.typ()).unwrap(), &tid)?;
        }
        match &plan.key {
            Some(key) => {
                prop_assert!(msg.has_integrity());
                prop_assert_eq!(msg.check_integrity(key), Ok(()));
                // Not `key` with a zero appended: HMAC pads short keys with zeros, so that
                // would be the same key.
                let mut other = key.clone();
                match other.first_mut() {
                    Some(b) => *b ^= 1,
                    None => other.push(b'x'),
                }
                prop_assert_eq!(msg.check_integrity(&other), Err(StunError::BadIntegrity));
            }
            None => {
                prop_assert!(!msg.has_integrity());
                prop_assert_eq!(msg.check_integrity(b"any"), Err(StunError::BadIntegrity));
            }
        }
        prop_assert_eq!(msg.has_fingerprint(), plan.fingerprint);
        let known = |t: u16| t % 3 == 0;
        let unknown: Vec<u16> = msg.unknown_required(known).collect();
        prop_assert_eq!(unknown, unknown_required_by_the_book(&msg, known));
    }

    /// The same up to the attribute cap: the writer fills a message to MAX_ATTRIBUTES and no
    /// further, and the parser takes all of it.
    #[test]
    fn messages_up_to_the_cap_parse_back(plan in plan(MAX_ATTRIBUTES + 8)) {
        let count = plan.attributes.len()
            + usize::from(plan.key.is_some())
            + usize::from(plan.fingerprint);
        let written = write(&plan);
        prop_assert_eq!(written.as_ref().map(|_| ()).map_err(|e| *e), expected_outcome(&plan));
        if let Ok(bytes) = written {
            prop_assert!(count <= MAX_ATTRIBUTES);
            let msg = Message::parse(&bytes).expect("the writer's output parses");
            prop_assert_eq!(msg.attributes().count(), count);
            let tid = msg.transaction_id();
            for (a, w) in msg.attributes().zip(&plan.attributes) {
                prop_assert_eq!(a.typ, w.typ());
                w.check(a.value, &tid)?;
            }
            if let Some(key) = &plan.key {
                prop_assert_eq!(msg.check_integrity(key), Ok(()));
            }
            prop_assert_eq!(msg.has_fingerprint(), plan.fingerprint);
        }
    }

    /// Any bytes: no panic, and every walk reads at most one header per attribute.
    #[test]
    fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        poke(&bytes)?;
    }

    /// A valid header in front of attribute-shaped bytes, sometimes past the cap.
    #[test]
    fn attribute_soup_parses_without_panic(
        first in any::<u16>(),
        tid in any::<[u8; 12]>(),
        body in attribute_soup(),
    ) {
        poke(&with_header(first, tid, body))?;
    }

    /// A written message, cut short or with bytes changed: no panic, walks stay linear, and a
    /// change before MESSAGE-INTEGRITY's end never passes its check.
    #[test]
    fn damaged_messages_parse_without_panic(
        plan in plan(12),
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let bytes = write(&plan).expect("12 attributes fit");
        poke(&bytes[..cut.index(bytes.len() + 1)])?;
        let mut damaged = bytes.clone();
        for (at, mask) in &flips {
            let i = at.index(damaged.len());
            damaged[i] ^= mask;
        }
        poke(&damaged)?;
        if let (Some(key), Ok(msg)) = (&plan.key, Message::parse(&damaged)) {
            let original = Message::parse(&bytes).unwrap();
            let mi_end = bytes.len() - if plan.fingerprint { 8 } else { 0 };
            let covered_changed = bytes[..mi_end] != damaged[..mi_end];
            if covered_changed && msg.has_integrity() {
                prop_assert_eq!(msg.check_integrity(key), Err(StunError::BadIntegrity));
            }
            prop_assert!(original.check_integrity(key).is_ok());
        }
    }

    /// Parsing work is linear in the message: N attributes cost N header reads to parse and
    /// at most N for any later walk, however the attributes repeat (the probe's shape: optional
    /// filler then one unknown required type, many times).
    #[test]
    fn work_is_linear_in_attribute_count(
        optional in 0usize..=MAX_ATTRIBUTES,
        required in 0usize..=MAX_ATTRIBUTES,
        types in 1u16..=40,
    ) {
        let mut body = Vec::new();
        for _ in 0..optional {
            body.extend_from_slice(&[0x8F, 0x01, 0, 0]);
        }
        for i in 0..required {
            body.extend_from_slice(&(0x7A00 + (i as u16) % types).to_be_bytes());
            body.extend_from_slice(&[0, 0]);
        }
        let buf = with_header(0x0001, [7; 12], body);
        let count = optional + required;
        visits::take();
        let parsed = Message::parse(&buf);
        let reads = visits::take();
        if count > MAX_ATTRIBUTES {
            prop_assert_eq!(parsed.map(|_| ()), Err(StunError::TooManyAttributes));
            prop_assert_eq!(reads, MAX_ATTRIBUTES as u64);
            return Ok(());
        }
        let msg = parsed.expect("within the cap");
        prop_assert_eq!(reads, count as u64);
        let unknown: Vec<u16> = msg.unknown_required(|_| false).collect();
        prop_assert!(visits::take() <= count as u64);
        prop_assert_eq!(unknown.len(), required.min(types as usize).min(MAX_UNKNOWN_REPORTED));
        let _ = msg.get(USERNAME);
        prop_assert_eq!(visits::take(), count as u64);
    }
}
