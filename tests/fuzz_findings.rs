//! What the fuzzers found (`fuzz/`, see TESTING.md), reproduced over the wire against the real
//! binary: each test fails on the release before its fix (`TURNPIKE_TEST_BIN`).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::stun_client::{REALM, StunClient};
use common::{Server, TestConfig};
use turnpike::stun::{
    Class, Message, MessageWriter, Method, TransactionId, attr, frame_len, long_term_key,
};

/// The cluster answers a lease request within this (its Redis command timeout is 2 s) plus a
/// margin for a busy machine.
const LEASE_SETTLED: Duration = Duration::from_secs(4);

/// Reads one STUN message from a TCP stream, within 10 s.
fn read_message(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a timeout");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        if let Ok(Some(frame)) = frame_len(&buf) {
            return buf[..frame.stream_len()].to_vec();
        }
        let n = stream.read(&mut chunk).expect("an answer from the server");
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A request from alice: `attributes`, then credentials when there is a `nonce`.
fn request(
    method: Method,
    tid: u8,
    nonce: Option<&[u8]>,
    attributes: &dyn Fn(&mut MessageWriter<'_>),
) -> Vec<u8> {
    let mut buf = [0u8; 512];
    let tid = TransactionId([tid; 12]);
    let mut w = MessageWriter::new(&mut buf, method, Class::Request, tid).expect("room");
    attributes(&mut w);
    if let Some(nonce) = nonce {
        w.attribute(attr::USERNAME, b"alice").expect("room");
        w.attribute(attr::REALM, REALM.as_bytes()).expect("room");
        w.attribute(attr::NONCE, nonce).expect("room");
        w.message_integrity(&long_term_key("alice", REALM, "wonderland"))
            .expect("room");
    }
    w.fingerprint().expect("room");
    let n = w.finish();
    buf[..n].to_vec()
}

/// An Allocate for a UDP relay from alice, signed with `nonce` when given.
fn allocate_request(tid: u8, nonce: Option<&[u8]>) -> Vec<u8> {
    request(Method::ALLOCATE, tid, nonce, &|w| {
        w.requested_transport(17).expect("room");
    })
}

/// A server with `[redis]` (so each Allocate waits for a cluster lease) on TCP and UDP, and a
/// TCP connection to it holding a nonce.
fn server_with_leases(redis: &RedisServer) -> (Server, TcpStream, Vec<u8>) {
    let server = Server::with(&TestConfig {
        transports: vec!["tcp", "udp"],
        extra: format!("[redis]\nurl = \"{}\"\n", redis.url()),
        ..TestConfig::default()
    });
    let mut stream = TcpStream::connect(server.addr("tcp")).expect("connect");
    stream
        .write_all(&allocate_request(1, None))
        .expect("send an unsigned Allocate");
    let challenge = read_message(&mut stream);
    let challenge = Message::parse(&challenge).expect("a STUN answer");
    let nonce = challenge
        .get(attr::NONCE)
        .expect("a 401 with NONCE")
        .to_vec();
    (server, stream, nonce)
}

/// Found by `core_authenticated` (invariant: allocations created − expired − deleted = live
/// allocations). An Allocate still waiting for its cluster lease was counted as deleted (or
/// expired) when it ended, although it had never been counted as created, so
/// `turnpike_allocations_deleted_total` ran ahead of `_created_total`. Here the lease waits on
/// a paused Redis while the client's TCP connection closes.
#[test]
fn an_allocation_that_never_got_its_lease_is_not_counted_as_deleted() {
    let redis = RedisServer::start();
    let (server, mut stream, nonce) = server_with_leases(&redis);

    redis.pause();
    let paused_at = Instant::now();
    stream
        .write_all(&allocate_request(2, Some(&nonce)))
        .expect("send the signed Allocate");
    // Let the worker take the Allocate (and ask for the lease) before the connection closes.
    std::thread::sleep(Duration::from_millis(300));
    drop(stream);
    // The lease request times out (Redis is paused) and comes back for an allocation that is
    // gone; only then can the counters be read in their final state.
    std::thread::sleep(LEASE_SETTLED.saturating_sub(paused_at.elapsed()));
    redis.resume();

    let stats = server.stats();
    let (created, deleted, expired) = (
        stats.get("allocations_created"),
        stats.get("allocations_deleted"),
        stats.get("allocations_expired"),
    );
    eprintln!(
        "after the abandoned Allocate: created {created}, deleted {deleted}, expired {expired}"
    );
    assert_eq!(
        (created, deleted, expired),
        (0, 0, 0),
        "an allocation that was never created was counted as ended"
    );

    // With Redis back, a granted allocation is counted once each way.
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
    let relayed: SocketAddr = client.allocate().expect("an allocation once Redis is back");
    assert_eq!(client.refresh(0), None, "delete {relayed}");
    let stats = server.stats();
    let (created, deleted) = (
        stats.get("allocations_created"),
        stats.get("allocations_deleted"),
    );
    eprintln!("after one allocation and its deletion: created {created}, deleted {deleted}");
    assert_eq!((created, deleted), (1, 1));
}

/// Found by `core_authenticated` (invariant: a reply carries its request's transaction id).
/// While an Allocate waited for its cluster lease, another request on the same 5-tuple (here a
/// Refresh) took the Allocate's place in the retransmission cache, so the Allocate's answer went
/// out under the Refresh's transaction id: the client could not match it, and a retransmitted
/// Allocate would get 437.
#[test]
fn an_allocate_waiting_for_its_lease_is_answered_with_its_own_transaction_id() {
    let redis = RedisServer::start();
    let (_server, mut stream, nonce) = server_with_leases(&redis);

    redis.pause();
    let refresh = request(Method::REFRESH, 3, Some(&nonce), &|w| {
        w.u32(attr::LIFETIME, 600).expect("room");
    });
    stream
        .write_all(&allocate_request(2, Some(&nonce)))
        .expect("send the Allocate");
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(&refresh).expect("send the Refresh");
    // Both are answered once the lease request has timed out (and the node counts locally).
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let answer = read_message(&mut stream);
        let msg = Message::parse(&answer).expect("a STUN answer");
        answers.push((msg.method(), msg.class(), msg.transaction_id().0[0]));
    }
    redis.resume();
    eprintln!("answers (method, class, first byte of the transaction id): {answers:?}");
    assert!(
        answers.contains(&(Method::ALLOCATE, Class::Success, 2)),
        "no Allocate success with the Allocate's transaction id: {answers:?}"
    );
    assert!(
        !answers.contains(&(Method::ALLOCATE, Class::Success, 3)),
        "an Allocate success with the Refresh's transaction id: {answers:?}"
    );
}

/// A duration past every clock: `Instant + Duration` overflows.
const TOO_LONG: &str = "300000000000y";

/// A configuration with `top` before the tables and `tables` after them (TOML tables may be
/// given once, so each case brings its own).
fn config_text(top: &str, relay: &str, tables: &str) -> String {
    format!(
        "realm = \"turnpike.test\"\nworkers = 1\n{top}\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\n\
         [relay]\naddress = \"127.0.0.1\"\nports = \"45100-45199\"\n{relay}\n\
         [[auth.users]]\nname = \"alice\"\npassword = \"wonderland\"\n\n\
         [peers]\nallow = [\"127.0.0.1/32\"]\n\n{tables}\n"
    )
}

/// Runs the binary under test with `args` and the configuration `toml`; exit status (`None`
/// if it still ran after 20 s, then killed) and what it printed.
fn run_with_config(args: &[&str], toml: &str) -> (Option<std::process::ExitStatus>, String) {
    let dir = tempfile::tempdir().expect("create a tempdir");
    let config = dir.path().join("turnpike.toml");
    std::fs::write(&config, toml).expect("write the configuration");
    let config = config.to_str().expect("a UTF-8 path");
    let all: Vec<&str> = args.iter().copied().chain(["-c", config]).collect();
    let ran = common::run_turnpike(&[], &all, Duration::from_secs(20));
    let printed = ran.printed();
    (ran.status, printed)
}

/// Found by `config` (invariant: a configuration that validates runs the core). Durations had
/// no upper bound: with `relay.default-lifetime` (and `max-lifetime`) of 300,000,000,000
/// years, `check-config` said ok and `serve` started, and the first Allocate overflowed
/// `Instant + Duration`, killing the worker thread: every client the kernel hashes to its
/// socket went unanswered from then on. Now every duration key is refused above 365 days,
/// naming the key.
#[test]
fn a_duration_the_clock_cannot_hold_is_refused() {
    let lifetimes = format!("default-lifetime = \"{TOO_LONG}\"\nmax-lifetime = \"{TOO_LONG}\"");
    let (status, printed) = run_with_config(&["serve"], &config_text("", &lifetimes, ""));
    eprintln!("serve with relay lifetimes of {TOO_LONG}: {status:?}; printed: {printed}");
    let status = status.expect("turnpike kept running with that configuration");
    assert!(!status.success(), "exit {status}");
    assert!(
        printed.contains("relay.default-lifetime") && printed.contains("longer than"),
        "the error should name the key and the problem: {printed}"
    );

    let redis = "[redis]\nurl = \"redis://127.0.0.1:1/0\"";
    let cases = [
        (
            "relay.max-lifetime",
            config_text("", &format!("max-lifetime = \"{TOO_LONG}\""), ""),
        ),
        (
            "drain-timeout",
            config_text(&format!("drain-timeout = \"{TOO_LONG}\""), "", ""),
        ),
        (
            "auth.nonce-lifetime",
            config_text("", "", &format!("[auth]\nnonce-lifetime = \"{TOO_LONG}\"")),
        ),
        (
            "limits.stream-idle-timeout",
            config_text(
                "",
                "",
                &format!("[limits]\nstream-idle-timeout = \"{TOO_LONG}\""),
            ),
        ),
        (
            "redis.stale-for",
            config_text("", "", &format!("{redis}\nstale-for = \"{TOO_LONG}\"")),
        ),
        (
            "redis.lease-time",
            config_text("", "", &format!("{redis}\nlease-time = \"{TOO_LONG}\"")),
        ),
        (
            "relay.max-lifetime",
            config_text("", "max-lifetime = \"366d\"", ""),
        ),
    ];
    for (key, toml) in cases {
        let (status, printed) = run_with_config(&["check-config"], &toml);
        eprintln!(
            "check-config, {key}: {status:?}; printed: {}",
            printed.trim()
        );
        let status = status.expect("check-config returns");
        assert!(
            !status.success(),
            "{key}: exit {status}; printed: {printed}"
        );
        assert!(
            printed.contains(key) && printed.contains("longer than"),
            "{key}: the error should name the key and the problem: {printed}"
        );
    }

    let longest = "365d";
    let toml = config_text(
        &format!("drain-timeout = \"{longest}\""),
        &format!("default-lifetime = \"{longest}\"\nmax-lifetime = \"{longest}\""),
        &format!(
            "[auth]\nnonce-lifetime = \"{longest}\"\n\n[limits]\nstream-idle-timeout = \"{longest}\"\n\n\
             {redis}\nstale-for = \"{longest}\"\nlease-time = \"{longest}\""
        ),
    );
    let (status, printed) = run_with_config(&["check-config"], &toml);
    assert!(
        status.is_some_and(|s| s.success()),
        "every duration at {longest}: {status:?}; printed: {printed}"
    );
}
