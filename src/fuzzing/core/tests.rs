//! The core targets' own tests: the input format round-trips, every flavor validates, and
//! short inputs reach the handlers, answer leases and get challenged.

use crate::fuzzing::Input;
use crate::stun::attr;

use super::op::{FINGERPRINT, Op, USER_SHIFT};
use super::seeds::{attribute, peer, tcp_seeds};
use super::setup::flavors;
use super::{Harness, Mode};

const ALLOCATE: u16 = 0x0003;
const REFRESH: u16 = 0x0004;
const CREATE_PERMISSION: u16 = 0x0008;
const CHANNEL_BIND: u16 = 0x0009;

fn stun(tuple: u8, message_type: u16, tid: u8, flags: u8, attributes: &[u8]) -> Op<'_> {
    Op::Stun {
        tuple,
        message_type,
        tid,
        flags,
        attributes,
    }
}

#[test]
fn ops_round_trip_through_their_encoding() {
    let ops = [
        Op::Client {
            tuple: 3,
            data: b"\x40\x00\x00\x01x",
        },
        stun(1, 0x0113, 9, 0x81, b"attr"),
        Op::Peer {
            allocation: 2,
            peer: 5,
            port: 4000,
            data: b"payload",
        },
        Op::Wait { millis: 1500 },
        Op::WaitSeconds { seconds: 700 },
        Op::Timeout,
        Op::RelayOutcome { outcome: 1 },
        Op::Lease {
            pending: 1,
            granted: false,
        },
        Op::Disconnect { tuple: 2 },
        Op::Close { allocation: 7 },
        Op::Revoke { name: 1 },
        Op::Reload { flavor: 2 },
        Op::Drain { on: true },
        Op::Alternates { count: 3 },
        Op::ConnectResult {
            pending: 1,
            outcome: 2,
        },
        Op::ConnectionBind {
            tuple: 8,
            connection: 0x81,
            flags: 0x11,
            id: 0xDEAD_BEEF,
        },
        Op::PeerConnect {
            allocation: 1,
            peer: 3,
            port: 8080,
        },
        Op::ConnectionClosed { connection: 4 },
        Op::BindDeadline { offset: -7 },
    ];
    let mut bytes = Vec::new();
    for op in &ops {
        op.encode(&mut bytes);
    }
    let mut input = Input::new(&bytes);
    let decoded: Vec<Op<'_>> = std::iter::from_fn(|| Op::decode(&mut input)).collect();
    assert_eq!(decoded, ops);
}

#[test]
fn every_flavor_validates() {
    assert_eq!(flavors().len(), 4);
    for flavor in 0..4 {
        let _ = Harness::new(Mode::Unauthenticated, flavors(), flavor);
    }
}

/// A signed session reaches every handler: allocation over UDP and TCP, permission, channel,
/// relaying both ways, expiry, and the counters say so.
#[test]
fn an_authenticated_session_reaches_the_handlers() {
    let mut harness = Harness::new(Mode::Authenticated, flavors(), 0);
    let mut allocate = attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    allocate.extend(attribute(attr::LIFETIME, &700u32.to_be_bytes()));
    let mut bind = attribute(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]);
    bind.extend(peer(7000));
    let permission = peer(6000);
    let delete = attribute(attr::LIFETIME, &[0; 4]);
    let ops = [
        stun(0, 0x0001, 1, FINGERPRINT, &[]),
        stun(0, ALLOCATE, 2, FINGERPRINT, &allocate),
        stun(2, ALLOCATE, 3, 1 << USER_SHIFT, &allocate),
        stun(0, CREATE_PERMISSION, 4, 0, &permission),
        stun(0, CHANNEL_BIND, 5, 0, &bind),
        Op::Client {
            tuple: 0,
            data: b"\x40\x01\x00\x03abc",
        },
        Op::Peer {
            allocation: 0,
            peer: 2,
            port: 7000,
            data: b"from the peer",
        },
        Op::Peer {
            allocation: 0,
            peer: 2,
            port: 6000,
            data: b"as a Data indication",
        },
        stun(2, REFRESH, 6, 1 << USER_SHIFT, &delete),
        Op::WaitSeconds { seconds: 800 },
        Op::Timeout,
    ];
    for op in &ops {
        harness.apply(op);
    }
    harness.finish();
    let stats = harness.server.stats();
    assert_eq!(stats.allocations_created, 2, "{stats:?}");
    assert_eq!(stats.allocations_deleted, 1, "{stats:?}");
    assert_eq!(stats.allocations_expired, 1, "{stats:?}");
    assert_eq!(stats.to_peer_packets, 1, "{stats:?}");
    assert_eq!(stats.to_client_packets, 2, "{stats:?}");
    assert_eq!(harness.server.allocation_count(), 0);
}

/// With `[redis]` the Allocate waits for a lease: refused gives 486, granted an allocation.
#[test]
fn leases_are_answered() {
    let mut harness = Harness::new(Mode::Authenticated, flavors(), 1);
    let allocate = attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    for op in [
        stun(0, ALLOCATE, 2, 0, &allocate),
        Op::Lease {
            pending: 0,
            granted: false,
        },
        stun(1, ALLOCATE, 3, 0, &allocate),
        Op::Lease {
            pending: 0,
            granted: true,
        },
        Op::Revoke { name: 0 },
    ] {
        harness.apply(&op);
    }
    harness.finish();
    let stats = harness.server.stats();
    assert_eq!(stats.quota_rejected, 1, "{stats:?}");
    assert_eq!(stats.allocations_created, 1, "{stats:?}");
    assert_eq!(stats.allocations_deleted, 1, "{stats:?}");
    assert!(harness.leased.is_empty());
}

#[test]
fn unauthenticated_messages_get_challenged() {
    let mut harness = Harness::new(Mode::Unauthenticated, flavors(), 2);
    for op in [
        stun(0, ALLOCATE, 1, FINGERPRINT, &[]),
        stun(3, 0x0001, 2, 0, &attribute(0x7777, b"unknown")),
        Op::Client {
            tuple: 2,
            data: b"\x00\x01\x00\x00\x21\x12\xa4\x42abcdefghijkl\xff",
        },
    ] {
        harness.apply(&op);
    }
    let stats = harness.server.stats();
    assert_eq!(stats.error_responses, 2, "{stats:?}");
    assert_eq!(stats.binding_requests, 2, "{stats:?}");
    assert_eq!(stats.malformed, 1, "{stats:?}");
}

/// A dual-stack Allocate (RFC 8656 §7.2) opens two relay sockets, which the harness tracks
/// as the worker does and sees closed together; with no port of either family it is refused
/// and leaves none.
#[test]
fn a_dual_allocation_opens_and_closes_two_relay_sockets() {
    let mut harness = Harness::new(Mode::Authenticated, flavors(), 0);
    let mut allocate = attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    allocate.extend(attribute(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]));
    harness.apply(&stun(0, ALLOCATE, 2, FINGERPRINT, &allocate));
    let relayed: Vec<_> = harness
        .server
        .allocations()
        .flat_map(|a| a.relayed_addresses().collect::<Vec<_>>())
        .collect();
    assert_eq!(relayed.len(), 2, "{relayed:?}");
    assert!(relayed[0].is_ipv4() && relayed[1].is_ipv6(), "{relayed:?}");
    assert_eq!(harness.dual_relays.len(), 1);
    harness.apply(&stun(0, REFRESH, 3, 0, &attribute(attr::LIFETIME, &[0; 4])));
    assert!(harness.relays.is_empty() && harness.dual_relays.is_empty());
    assert!(harness.sockets.used.is_empty(), "both ports given back");
    harness.apply(&Op::RelayOutcome { outcome: 1 });
    harness.apply(&stun(0, ALLOCATE, 4, 0, &allocate));
    assert_eq!(harness.server.allocation_count(), 0);
    harness.finish();
    let stats = harness.server.stats();
    assert_eq!(stats.allocations_created, 1, "{stats:?}");
    assert_eq!(stats.allocations_deleted, 1, "{stats:?}");
    assert_eq!(stats.capacity_rejected, 1, "{stats:?}");
}

/// Tags written before TCP allocations were fuzzed still read as the same operations.
#[test]
fn old_tags_keep_their_meaning() {
    for (bytes, op) in [
        (&[5][..], Op::Timeout),
        (&[13, 2], Op::Alternates { count: 2 }),
        (&[12, 1], Op::Drain { on: true }),
    ] {
        assert_eq!(Op::decode(&mut Input::new(bytes)), Some(op));
    }
}

/// Runs a core input as `run` does, and returns the harness after it.
fn replay(mode: Mode, data: &[u8]) -> Harness {
    let mut input = Input::new(data);
    let flavor = usize::from(input.u8().unwrap_or(0)) % flavors().len();
    let mut harness = Harness::new(mode, flavors(), flavor);
    while let Some(op) = Op::decode(&mut input) {
        harness.apply(&op);
    }
    harness.finish();
    harness
}

/// The scripted TCP seeds are the committed corpus files, and reach what they are named for:
/// a connection made by Connect and bound (and a hostile and a stale CONNECTION-ID refused), a
/// peer's connection announced and bound, pending connections closed at their deadline.
#[test]
fn the_tcp_seeds_reach_bound_and_expired_connections() {
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/core_authenticated");
    for (name, bytes) in tcp_seeds() {
        let committed = std::fs::read(corpus.join(name)).unwrap_or_else(|e| {
            panic!("fuzz/corpus/core_authenticated/{name}: {e} (fuzz/seeds.sh writes it)")
        });
        assert_eq!(
            committed, bytes,
            "{name} is not what seeds.rs writes: run fuzz/seeds.sh"
        );
        let harness = replay(Mode::Authenticated, &bytes);
        let stats = harness.server.stats();
        let expected = match name {
            // Connected, bound, closed; 400 for the hostile id, the data connection over
            // IPv6 (bound already) and nothing expired.
            "tcp-connect-bind" => (1, 0, 1, 0),
            // Accepted and bound over TLS (the UDP data connection is refused); the public
            // peer refused.
            "tcp-peer-connect" => (1, 0, 1, 0),
            // One connected, one failed (447), one accepted: the two open ones expire.
            "tcp-bind-deadline" => (2, 1, 0, 2),
            other => panic!("a seed {other} this test does not know"),
        };
        let counted = (
            stats.tcp_connections_opened,
            stats.tcp_connections_failed,
            stats.tcp_connections_bound,
            stats.tcp_bind_timeouts,
        );
        assert_eq!(counted, expected, "{name}: {stats:?}");
        assert_eq!(harness.tcp.tally.bound, expected.2, "{name}");
        assert_eq!(harness.server.tcp_connection_count(), 0, "{name}");
    }
}
