//! Micro-benchmarks of the STUN codec: parse, integrity check, reply writing, ChannelData, and
//! the hostile shapes of the hardening issue's finding 1 (many empty attributes, the unknown
//! required ones repeated), whose cost is bounded by the attribute cap.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

use turnpike::stun::{
    ChannelData, Class, Message, MessageWriter, Method, TransactionId, attr, long_term_key,
    write_channel_data_header,
};

const TID: TransactionId = TransactionId([0x5a; 12]);

/// An authenticated Allocate request as a browser sends it after the 401 challenge.
fn allocate_request(buf: &mut [u8], key: &[u8]) -> usize {
    let mut w = MessageWriter::new(buf, Method::ALLOCATE, Class::Request, TID).unwrap();
    w.requested_transport(17).unwrap();
    w.attribute(attr::USERNAME, b"1735689600:alice").unwrap();
    w.attribute(attr::REALM, b"turn.example.org").unwrap();
    w.attribute(attr::NONCE, b"obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA")
        .unwrap();
    w.message_integrity(key).unwrap();
    w.fingerprint().unwrap();
    w.finish()
}

/// A Binding request of `optional` empty optional attributes then `required` copies of the
/// unknown comprehension-required type 0x7ABC, built by hand (the writer stops at 128).
fn hostile(optional: usize, required: usize) -> Vec<u8> {
    let mut buf = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    buf.extend_from_slice(&TID.0);
    for _ in 0..optional {
        buf.extend_from_slice(&[0x8F, 0x01, 0, 0]);
    }
    for _ in 0..required {
        buf.extend_from_slice(&[0x7A, 0xBC, 0, 0]);
    }
    let len = u16::try_from(buf.len() - 20).unwrap();
    buf[2..4].copy_from_slice(&len.to_be_bytes());
    buf
}

fn codec(c: &mut Criterion) {
    let key = long_term_key(
        "1735689600:alice",
        "turn.example.org",
        "s3cr3t-from-rest-api",
    );
    let mut request = [0u8; 256];
    let n = allocate_request(&mut request, &key);
    let request = &request[..n];

    c.bench_function("parse", |b| {
        b.iter(|| Message::parse(black_box(request)).unwrap())
    });

    let msg = Message::parse(request).unwrap();
    c.bench_function("check_integrity", |b| {
        b.iter(|| black_box(&msg).check_integrity(black_box(&key)).unwrap())
    });

    let mapped: SocketAddr = "198.51.100.7:54321".parse().unwrap();
    let mut out = [0u8; 1500];
    c.bench_function("write", |b| {
        b.iter(|| {
            let mut w =
                MessageWriter::new(&mut out, Method::BINDING, Class::Success, black_box(TID))
                    .unwrap();
            w.xor_address(attr::XOR_MAPPED_ADDRESS, black_box(mapped))
                .unwrap();
            w.fingerprint().unwrap();
            w.finish()
        })
    });

    // The outside probe's 65,504-byte datagram: refused after 128 attribute headers.
    let probe = hostile(8185, 8186);
    c.bench_function("parse_hostile_64k", |b| {
        b.iter(|| Message::parse(black_box(&probe)).unwrap_err())
    });
    // The worst a parsed message can be: 128 attributes, half of them the unknown type.
    let at_cap = hostile(64, 64);
    let msg = Message::parse(&at_cap).unwrap();
    c.bench_function("unknown_required_128", |b| {
        b.iter(|| black_box(&msg).unknown_required(|_| false).count())
    });

    let mut frame = [0x17u8; 164];
    write_channel_data_header(&mut frame, 0x4001, 160).unwrap();
    c.bench_function("channel_data_parse", |b| {
        b.iter(|| ChannelData::parse(black_box(&frame)).unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = codec
}
criterion_main!(benches);
