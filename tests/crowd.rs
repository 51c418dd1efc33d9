//! Crowds behind one address (an office or carrier-grade NAT, a load test) against the
//! reflection budget of `[limits]`: with the shipped defaults 2,000 clients of one IP, one UDP
//! socket each, all allocate at once; a crowd twenty times the burst allocates because each
//! client's authenticated Allocate pays back its 401, while a flood from that same address
//! afterwards gets no more than the burst and the rate; the budget's keys are refused with
//! their name when bad (`check-config`, a reload) and a SIGHUP changes each of them; TCP is
//! never charged (its handshake proves the address). The floods themselves are in
//! `tests/abuse.rs`.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::stun_client::StunClient;
use common::{Server, TestConfig};
use turnpike::client::{Client, ClientConfig, Credentials, Transport};
use turnpike::stun::{Class, MessageWriter, Method, TransactionId};

/// The REST secret of `TestConfig::rest()`.
const SECRET: &str = "s3cret";
/// The longest a crowd may take: each client gives up after 39.5 s (RFC 8489 timing).
const CROWD_MAX: Duration = Duration::from_secs(120);

/// What a crowd run did.
struct Crowd {
    allocated: usize,
    /// The first errors, with how many failed in all.
    failures: Vec<String>,
    failed: usize,
    /// From the first Allocate sent to the last allocation granted.
    elapsed: Duration,
    /// Requests the clients sent again after an RTO.
    retransmissions: u64,
}

impl Crowd {
    fn rate(&self) -> f64 {
        self.allocated as f64 / self.elapsed.as_secs_f64().max(1e-6)
    }
}

/// `clients` TURN clients on `from` (each its own UDP socket, its own REST user id, so that
/// `user-allocations` does not count them together) allocate, at most `in_flight` of them
/// waiting for an answer at any time. The allocations are held until all are done.
fn crowd(server: SocketAddr, from: IpAddr, clients: usize, in_flight: usize) -> Crowd {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let gate = Arc::new(tokio::sync::Semaphore::new(in_flight));
        let start = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                let gate = gate.clone();
                tokio::spawn(async move {
                    let permit = gate.acquire_owned().await.expect("the gate stays open");
                    let mut config = ClientConfig::new(
                        server,
                        Transport::Udp,
                        Credentials::rest(SECRET, &format!("crowd-{i}"), Duration::from_secs(3600)),
                    );
                    config.local = Some(SocketAddr::new(from, 0));
                    let mut client = Client::connect(config).await.map_err(|e| e.to_string())?;
                    let result = client.allocate(None).await;
                    drop(permit);
                    let done = Instant::now();
                    let retransmissions = client.stats().retransmissions;
                    match result {
                        Ok(_) => Ok((client, done, retransmissions)),
                        Err(e) => Err(format!(
                            "client {i}: {e} ({retransmissions} retransmissions)"
                        )),
                    }
                })
            })
            .collect();
        let mut run = Crowd {
            allocated: 0,
            failures: Vec::new(),
            failed: 0,
            elapsed: Duration::ZERO,
            retransmissions: 0,
        };
        let mut held = Vec::with_capacity(clients);
        let give_up = tokio::time::Instant::now() + CROWD_MAX;
        for task in tasks {
            let outcome = match tokio::time::timeout_at(give_up, task).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(panicked)) => Err(format!("a client task failed: {panicked}")),
                Err(_) => Err(format!("not done within {CROWD_MAX:?}")),
            };
            match outcome {
                Ok((client, done, retransmissions)) => {
                    run.allocated += 1;
                    run.retransmissions += retransmissions;
                    run.elapsed = run.elapsed.max(done - start);
                    held.push(client);
                }
                Err(e) => {
                    run.failed += 1;
                    if run.failures.len() < 10 {
                        run.failures.push(e);
                    }
                }
            }
        }
        drop(held);
        run
    })
}

fn print_crowd(what: &str, run: &Crowd, server: &Server, before: &common::Stats) {
    let after = server.stats();
    // A counter an older binary (`TURNPIKE_TEST_BIN`) does not have shows as "-".
    let moved = |name: &str| match (after.0[name].as_u64(), before.0[name].as_u64()) {
        (Some(now), Some(then)) => (now - then).to_string(),
        _ => "-".to_owned(),
    };
    eprintln!(
        "{what}: {} allocated, {} failed in {:.3} s = {:.0} allocations/s; {} retransmissions; \
         server: allocations_created {}, rate_limited {}, rate_limited_node {}",
        run.allocated,
        run.failed,
        run.elapsed.as_secs_f64(),
        run.rate(),
        run.retransmissions,
        moved("allocations_created"),
        moved("rate_limited"),
        moved("rate_limited_node"),
    );
    for failure in &run.failures {
        eprintln!("  {failure}");
    }
}

/// A Binding request with transaction id `n`.
fn binding(n: u64) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let mut tid = [0u8; 12];
    tid[4..].copy_from_slice(&n.to_be_bytes());
    let w = MessageWriter::new(
        &mut buf,
        Method::BINDING,
        Class::Request,
        TransactionId(tid),
    )
    .expect("fits");
    let len = w.finish();
    buf[..len].to_vec()
}

/// Sends `count` Binding requests from one new socket on `from` as fast as it can, then
/// collects answers for `settle`: how many came back, and the seconds from the first request
/// to the end of the count.
fn bindings_answered(server: SocketAddr, from: IpAddr, count: u64, settle: Duration) -> (u64, f64) {
    let socket = UdpSocket::bind(SocketAddr::new(from, 0)).expect("bind UDP");
    socket.set_nonblocking(true).expect("set non-blocking");
    let mut buf = [0u8; 1500];
    let mut answers = 0;
    let mut drain = |answers: &mut u64| {
        while socket.recv_from(&mut buf).is_ok() {
            *answers += 1;
        }
    };
    let start = Instant::now();
    for n in 0..count {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{n} requests sent in 30 s"
        );
        let _ = socket.send_to(&binding(n), server);
        if n % 64 == 63 {
            drain(&mut answers);
        }
    }
    let end = Instant::now() + settle;
    while Instant::now() < end {
        drain(&mut answers);
        thread::sleep(Duration::from_millis(10));
    }
    drain(&mut answers);
    (answers, start.elapsed().as_secs_f64())
}

fn udp_rest_server(extra: &str) -> Server {
    Server::with(&TestConfig {
        transports: vec!["udp"],
        extra: extra.to_owned(),
        ..TestConfig::rest()
    })
}

#[test]
fn two_thousand_clients_behind_one_address_allocate_at_once_with_the_shipped_defaults() {
    const CLIENTS: usize = 2000;
    common::raise_open_files(8192);
    // No [limits]: the shipped budget (20/s, a burst of 2,000, 10,000/s node-wide).
    let server = udp_rest_server("");
    let udp = server.addr("udp");
    let before = server.stats();
    let run = crowd(udp, "127.0.0.3".parse().unwrap(), CLIENTS, CLIENTS);
    print_crowd(
        "2,000 clients on 127.0.0.3, all at once",
        &run,
        &server,
        &before,
    );
    assert_eq!(
        run.allocated, CLIENTS,
        "{} failed: {:?}",
        run.failed, run.failures
    );
    let created = server.stats().get("allocations_created") - before.get("allocations_created");
    assert_eq!(created, CLIENTS as u64);
}

#[test]
fn a_crowd_twenty_times_the_burst_pays_for_its_challenges_and_a_flood_still_gets_the_burst() {
    const CLIENTS: usize = 2000;
    const BURST: f64 = 100.0;
    const RATE: f64 = 20.0;
    common::raise_open_files(8192);
    let server = udp_rest_server("[limits]\nunauthenticated-burst = 100\n");
    let udp = server.addr("udp");
    let nat: IpAddr = "127.0.0.4".parse().unwrap();
    let before = server.stats();
    // 2,000 401s: without the payback the budget would give 100 + 20/s, about 95 s, and the
    // clients give up after 39.5 s.
    let run = crowd(udp, nat, CLIENTS, 50);
    print_crowd(
        "2,000 clients on 127.0.0.4, 50 at a time, burst 100",
        &run,
        &server,
        &before,
    );
    assert_eq!(
        run.allocated, CLIENTS,
        "{} failed: {:?}",
        run.failed, run.failures
    );

    // The crowd's address is proven, yet a spoofed flood from it gets the burst and the rate
    // only: nothing in it authenticates, so nothing is paid back.
    let (answers, window) = bindings_answered(udp, nat, 20_000, Duration::from_millis(500));
    let allowance = BURST + RATE * window;
    eprintln!(
        "20,000 Bindings from 127.0.0.4 after the crowd: {answers} answered in {window:.2} s \
         (allowance {allowance:.0})"
    );
    assert!(answers > 0, "never answered");
    assert!(
        answers as f64 <= allowance * 1.05,
        "{answers} answers in {window:.2} s: more than {BURST} + {RATE}/s"
    );
}

/// `check-config` on `[limits] key = value`: its exit status and stderr.
fn check_config(key: &str, value: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("a tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, format!("[limits]\n{key} = {value}\n")).expect("write the configuration");
    let output = std::process::Command::new(common::turnpike_binary())
        .arg("check-config")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run check-config");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_reflection_budget_values_are_refused_naming_the_key() {
    for key in [
        "unauthenticated-rate",
        "unauthenticated-burst",
        "unauthenticated-node-rate",
    ] {
        for (value, problem) in [
            ("-1", "invalid value: integer `-1`, expected u32"),
            ("1.5", "invalid type: floating point `1.5`, expected u32"),
            ("\"many\"", "invalid type: string \"many\", expected u32"),
            (
                "99999999999",
                "invalid value: integer `99999999999`, expected u32",
            ),
        ] {
            let (ok, stderr) = check_config(key, value);
            assert!(!ok, "{key} = {value} accepted");
            assert!(
                stderr.contains(&format!("limits.{key}: {problem}")),
                "{key} = {value}: {stderr}"
            );
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        }
        let (ok, stderr) = check_config(key, "4294967295");
        assert!(ok, "{key} = 4294967295 refused: {stderr}");
    }
    let (ok, stderr) = check_config("unauthenticated-burst", "0");
    assert!(!ok, "a burst of 0 accepted");
    assert!(
        stderr.contains("limits.unauthenticated-burst: must be at least 1"),
        "{stderr}"
    );
    let (ok, stderr) = check_config("unauthenticated-bursts", "10");
    assert!(!ok, "a misspelt key accepted");
    assert!(stderr.contains("unauthenticated-bursts"), "{stderr}");
}

/// Rewrites a server's `[limits]` table and sends SIGHUP.
struct Reloader<'a> {
    server: &'a Server,
    /// The configuration without its `[limits]` table.
    base: String,
    reloads: usize,
}

impl Reloader<'_> {
    /// Reloads with `limits` as the `[limits]` table; returns the reload's log line
    /// (`configuration reloaded…` or `reload rejected…`).
    fn reload(&mut self, limits: &str) -> String {
        std::fs::write(
            self.server.config_path(),
            format!("{}\n[limits]\n{limits}\n", self.base),
        )
        .expect("write the configuration");
        self.server.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines: Vec<String> = self
                .server
                .log()
                .into_iter()
                .filter(|line| {
                    let message = serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|event| event["fields"]["message"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    message.starts_with("configuration reloaded")
                        || message.starts_with("reload rejected")
                })
                .collect();
            if lines.len() > self.reloads {
                self.reloads = lines.len();
                return lines.last().cloned().expect("a reload line");
            }
            assert!(Instant::now() < deadline, "no reload logged within 10 s");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One Binding from each of `sources` (a socket each): how many sources were answered. The
/// server's counters say when it has handled them all and how many it left unanswered (rate
/// limited); the answers to the others are then awaited, with a deadline.
fn one_binding_each(server: &Server, sources: &[IpAddr]) -> u64 {
    let before = server.stats();
    let sockets: Vec<UdpSocket> = sources
        .iter()
        .map(|&source| {
            let socket = UdpSocket::bind(SocketAddr::new(source, 0)).expect("bind UDP");
            socket.set_nonblocking(true).expect("set non-blocking");
            socket
                .send_to(&binding(1), server.addr("udp"))
                .expect("send");
            socket
        })
        .collect();
    let sent = sources.len() as u64;
    let handled = before.get("binding_requests") + sent;
    let stats = server.wait_for_counter("binding_requests", handled, Duration::from_secs(10));
    let unanswered =
        stats.since(&before, "rate_limited") + stats.since(&before, "rate_limited_node");
    let expected = sent - unanswered;
    let mut answered = vec![false; sockets.len()];
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for (socket, answered) in sockets.iter().zip(&mut answered) {
            *answered |= socket.recv_from(&mut buf).is_ok();
        }
        let count = answered.iter().filter(|a| **a).count() as u64;
        if count >= expected || Instant::now() >= deadline {
            return count;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_reload_changes_the_reflection_budget_and_a_bad_value_keeps_the_old_one() {
    let server = udp_rest_server(
        "[limits]\nunauthenticated-rate = 1\nunauthenticated-burst = 5\n\
         unauthenticated-node-rate = 0\n",
    );
    let udp = server.addr("udp");
    let written = std::fs::read_to_string(server.config_path()).expect("read the configuration");
    let mut reloader = Reloader {
        server: &server,
        base: written[..written.find("[limits]").expect("the [limits] table")].to_owned(),
        reloads: 0,
    };
    let ip = |text: &str| -> IpAddr { text.parse().unwrap() };
    // A window of w seconds may add rate × w answers to the burst.
    let within = |answers: u64, burst: u64, rate: f64, window: f64| {
        answers >= burst && answers as f64 <= burst as f64 + rate * window.ceil()
    };
    let settle = Duration::from_millis(300);

    let (answers, window) = bindings_answered(udp, ip("127.0.0.10"), 50, settle);
    eprintln!("burst 5: {answers} of 50 answered in {window:.2} s");
    assert!(
        within(answers, 5, 1.0, window),
        "{answers} answers, burst 5"
    );

    let line = reloader.reload(
        "unauthenticated-rate = 1\nunauthenticated-burst = 30\nunauthenticated-node-rate = 0",
    );
    assert!(line.contains("configuration reloaded"), "{line}");
    assert!(
        !line.contains("restart"),
        "the budget applies without a restart: {line}"
    );
    let (answers, window) = bindings_answered(udp, ip("127.0.0.11"), 50, settle);
    eprintln!("burst 30 after a reload: {answers} of 50 answered in {window:.2} s");
    assert!(
        within(answers, 30, 1.0, window),
        "{answers} answers, burst 30"
    );

    for bad in ["-3", "0", "\"thirty\"", "1e9", "99999999999"] {
        let line = reloader.reload(&format!(
            "unauthenticated-rate = 1\nunauthenticated-burst = {bad}"
        ));
        assert!(line.contains("reload rejected"), "burst {bad}: {line}");
        assert!(line.contains("limits.unauthenticated-burst"), "{line}");
    }
    let (answers, window) = bindings_answered(udp, ip("127.0.0.12"), 50, settle);
    eprintln!("after rejected reloads: {answers} of 50 answered in {window:.2} s");
    assert!(
        within(answers, 30, 1.0, window),
        "{answers} answers, burst 30 kept"
    );

    // Node-wide 10/s, burst max(10, 30) = 30: forty new sources share it.
    let line = reloader.reload(
        "unauthenticated-rate = 1\nunauthenticated-burst = 30\nunauthenticated-node-rate = 10",
    );
    assert!(line.contains("configuration reloaded"), "{line}");
    let before = server.stats();
    let start = Instant::now();
    let sources: Vec<IpAddr> = (1..=40).map(|n| ip(&format!("127.0.1.{n}"))).collect();
    let answered = one_binding_each(&server, &sources);
    let window = start.elapsed().as_secs_f64();
    let refused = server.stats().get("rate_limited_node") - before.get("rate_limited_node");
    eprintln!(
        "node rate 10/s: {answered} of 40 new sources answered in {window:.2} s; \
         rate_limited_node {refused}"
    );
    assert!(within(answered, 30, 10.0, window), "{answered} answered");
    assert_eq!(refused, 40 - answered);

    // 0 lifts both limits: the source that used its burst first is answered in full.
    let line = reloader.reload("unauthenticated-rate = 0\nunauthenticated-node-rate = 0");
    assert!(line.contains("configuration reloaded"), "{line}");
    let (answers, _) = bindings_answered(udp, ip("127.0.0.10"), 50, settle);
    assert_eq!(answers, 50, "no limit after the reload");
}

#[test]
fn tcp_clients_are_answered_whatever_the_udp_budget_of_their_address() {
    let server = Server::with(&TestConfig {
        transports: vec!["udp", "tcp"],
        extra: "[limits]\nunauthenticated-rate = 1\nunauthenticated-burst = 5\n".to_owned(),
        ..TestConfig::default()
    });
    let source: IpAddr = "127.0.0.21".parse().unwrap();
    let start = Instant::now();
    let (udp_before, window) =
        bindings_answered(server.addr("udp"), source, 50, Duration::from_millis(300));
    eprintln!("UDP: {udp_before} of 50 Bindings answered in {window:.2} s (burst 5, 1/s)");
    assert!(
        (5..=5 + window.ceil() as u64).contains(&udp_before),
        "{udp_before} UDP answers"
    );

    // The TCP handshake proved the address: nothing over the connection is charged.
    let stats = server.stats();
    let mut tcp = StunClient::tcp_from(server.addr("tcp"), source, "alice", "wonderland");
    for i in 0..50 {
        let answer = tcp.request(Method::BINDING, &|_| {});
        assert_eq!(answer.class, Class::Success, "Binding {i} over TCP");
    }
    tcp.allocate()
        .expect("an Allocate over TCP, its 401 included, from the spent address");
    let limited = server.stats().get("rate_limited") - stats.get("rate_limited");
    assert_eq!(limited, 0, "nothing over TCP was rate-limited");

    // Over UDP the address is still held to its budget: the refill since the first flood,
    // plus one answer given back by the authenticated Allocate.
    let (udp_after, _) =
        bindings_answered(server.addr("udp"), source, 50, Duration::from_millis(300));
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!("UDP afterwards: {udp_after} of 50 answered; {elapsed:.2} s since the first");
    assert!(
        udp_before + udp_after <= 5 + 1 + elapsed.ceil() as u64,
        "{udp_before} + {udp_after} UDP answers in {elapsed:.2} s"
    );
}
