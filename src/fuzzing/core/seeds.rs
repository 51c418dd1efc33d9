//! Scripted seeds for what no recorded client does: TCP allocations (RFC 6062) taken through
//! Connect, ConnectionBind, a peer's connection and the ConnectionBind deadline. The seed
//! converter (`examples/fuzz_seeds.rs tcp`, run by `fuzz/seeds.sh`) writes them to
//! `fuzz/corpus/core_authenticated/`; the harness's tests check the committed files are these
//! and reach what they are named for.

use crate::stun::{Method, attr};

use super::op::{FINGERPRINT, Op, RAW_ID};
use super::setup::TUPLES;

/// The harness slot of the first data tuple (TCP), then TLS, TCP over IPv6, UDP.
const DATA: u8 = TUPLES.len() as u8;
/// The TCP control connection (`TUPLES[2]`), alice's.
const CONTROL: u8 = 2;

/// An attribute as [`Op::Stun`] carries it: type, length, value, padding.
pub(super) fn attribute(typ: u16, value: &[u8]) -> Vec<u8> {
    let mut out = typ.to_be_bytes().to_vec();
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().div_ceil(4) * 4, 0);
    out
}

/// XOR-PEER-ADDRESS of 127.0.0.1:`port` (an IPv4 address XORs with the magic cookie only).
pub(super) fn peer(port: u16) -> Vec<u8> {
    let [p0, p1] = (port ^ 0x2112).to_be_bytes();
    attribute(
        attr::XOR_PEER_ADDRESS,
        &[0, 1, p0, p1, 127 ^ 0x21, 0x12, 0xA4, 1 ^ 0x42],
    )
}

fn stun(message_type: u16, tid: u8, attributes: &[u8]) -> Op<'_> {
    Op::Stun {
        tuple: CONTROL,
        message_type,
        tid,
        flags: FINGERPRINT,
        attributes,
    }
}

fn bind(tuple: u8, connection: u8, id: u32) -> Op<'static> {
    Op::ConnectionBind {
        tuple,
        connection,
        flags: FINGERPRINT,
        id,
    }
}

/// The seeds, by file name: flavor 0, then operations.
pub fn tcp_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let allocate = attribute(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    let permission = peer(7000);
    let first = peer(7000);
    let second = peer(7001);
    let (connect, permit, alloc) = (
        Method::CONNECT.0,
        Method::CREATE_PERMISSION.0,
        Method::ALLOCATE.0,
    );
    let start = [stun(alloc, 1, &allocate), stun(permit, 2, &permission)];
    let connected_and_bound = [
        stun(connect, 3, &first),
        Op::ConnectResult {
            pending: 0,
            outcome: 0,
        },
        // A stale id and a hostile one first, then the connection's.
        bind(DATA + 1, RAW_ID, 0xDEAD_BEEF),
        bind(DATA, 0, 0),
        bind(DATA + 2, 0, 0),
        Op::ConnectionClosed { connection: 0 },
        Op::Timeout,
    ];
    let peer_connects = [
        Op::PeerConnect {
            allocation: 0,
            peer: 0,
            port: 7001,
        },
        bind(DATA + 1, 0, 0),
        bind(DATA + 3, 0, 0),
        Op::PeerConnect {
            allocation: 0,
            peer: 4,
            port: 80,
        },
        stun(Method::REFRESH.0, 4, &[0, 0x0D, 0, 4, 0, 0, 0, 0]),
    ];
    let deadline = [
        stun(connect, 3, &first),
        stun(connect, 4, &second),
        Op::ConnectResult {
            pending: 0,
            outcome: 0,
        },
        Op::ConnectResult {
            pending: 0,
            outcome: 1,
        },
        Op::PeerConnect {
            allocation: 0,
            peer: 2,
            port: 7002,
        },
        Op::BindDeadline { offset: -1 },
        Op::BindDeadline { offset: 0 },
        bind(DATA, 0, 0),
        Op::BindDeadline { offset: 5 },
    ];
    [
        ("tcp-connect-bind", &connected_and_bound[..]),
        ("tcp-peer-connect", &peer_connects[..]),
        ("tcp-bind-deadline", &deadline[..]),
    ]
    .into_iter()
    .map(|(name, ops)| {
        let mut out = vec![0u8];
        for op in start.iter().chain(ops) {
            op.encode(&mut out);
        }
        (name, out)
    })
    .collect()
}
