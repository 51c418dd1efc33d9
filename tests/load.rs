//! `turnpike-load`, the load generator, against the real binaries: relaying over UDP, TCP and
//! TLS with the packets it counts equal to the server's counters, the allocation-rate and hold
//! modes, the plain forwarder and echo peer, refusal of non-loopback targets, a run that ends
//! in time when the server dies, is frozen or the generator is interrupted, and hostile
//! command lines refused with the option named.

mod common;

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{Server, TestConfig, free_port, wait_bounded};

/// Every key of the JSON line (null where it does not apply).
const KEYS: [&str; 55] = [
    "mode",
    "transport",
    "data",
    "server",
    "clients",
    "size",
    "window",
    "rate",
    "duration_s",
    "sent",
    "received",
    "lost",
    "loss_pct",
    "stale",
    "foreign",
    "send_pps",
    "recv_pps",
    "peer_received",
    "peer_echoed",
    "relayed_packets",
    "rtt_p50_us",
    "rtt_p99_us",
    "rtt_p999_us",
    "rtt_max_us",
    "allocations",
    "allocations_per_s",
    "allocation_s",
    "session_p50_us",
    "session_p99_us",
    "relaying",
    "failures",
    "server_pid",
    "server_cpu_ms",
    "server_user_ms",
    "server_system_ms",
    "server_cpu_pct",
    "server_cpu_us_per_packet",
    "server_cpu_us_per_allocation",
    "host_cpu_ms",
    "host_cpu_us_per_packet",
    "host_cpu_us_per_allocation",
    "load_cpu_ms",
    "load_cpu_us_per_packet",
    "interrupts_ms",
    "ksoftirqd_ms",
    "relay_cost_ms",
    "relay_cost_us_per_packet",
    "server_rss_kib_before",
    "server_rss_kib_after",
    "server_rss_bytes_per_allocation",
    "listen",
    "sources",
    "forwarded_up",
    "forwarded_down",
    "dropped",
];

/// A finished `turnpike-load` run.
struct LoadRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl LoadRun {
    /// The one JSON line on stdout, parsed; fails the test if there is not exactly one.
    fn json(&self) -> serde_json::Value {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "one JSON line expected on stdout; got {:?}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        let value: serde_json::Value = serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]));
        let object = value.as_object().expect("a JSON object");
        for key in KEYS {
            assert!(object.contains_key(key), "no {key:?} in {}", lines[0]);
        }
        eprintln!("[turnpike-load] {}", lines[0]);
        value
    }
}

fn load_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_turnpike-load"))
}

/// Starts `turnpike-load ARGS` with its output piped.
fn spawn_load(args: &[String]) -> (Child, JoinHandle<String>, JoinHandle<String>) {
    eprintln!("turnpike-load {}", args.join(" "));
    let mut child = Command::new(load_binary())
        .args(args)
        .env_remove("TURNPIKE_LOAD_PASSWORD")
        .env_remove("TURNPIKE_LOAD_SECRET")
        .env_remove("TURNPIKE_LOAD_USER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn turnpike-load");
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped")));
    (child, stdout, stderr)
}

/// Waits up to `timeout` for a spawned run (killed after it: the test fails).
fn finish(
    (mut child, stdout, stderr): (Child, JoinHandle<String>, JoinHandle<String>),
    started: Instant,
    timeout: Duration,
) -> LoadRun {
    let status = wait_bounded(&mut child, timeout);
    let took = started.elapsed();
    let run = LoadRun {
        code: status.and_then(|s| s.code()),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        took,
    };
    assert!(
        status.is_some(),
        "turnpike-load still running after {timeout:?} (killed)\nstdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    if !run.stderr.is_empty() {
        eprintln!("[turnpike-load stderr] {}", run.stderr.trim_end());
    }
    run
}

/// Runs `turnpike-load ARGS` to its end (at most `timeout`).
fn run_load(args: &[String], timeout: Duration) -> LoadRun {
    let started = Instant::now();
    finish(spawn_load(args), started, timeout)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A turnpike with the given transports, alice/wonderland, no per-user allocation cap.
fn server(transports: Vec<&'static str>) -> Server {
    Server::with(&TestConfig {
        transports,
        extra: "[limits]\nuser-allocations = 0\n".into(),
        ..TestConfig::default()
    })
}

/// `mode` arguments as alice against `server`'s listener of `transport`, then `extra`.
fn mode_args(mode: &str, server: &Server, transport: &str, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&[
        mode,
        "--server",
        &server.addr(transport).to_string(),
        "--transport",
        transport,
        "--user",
        "alice",
        "--password",
        "wonderland",
    ]);
    if transport == "tls" {
        let ca = server.config_path().with_file_name("cert.pem");
        args.extend(strings(&["--tls-ca", &ca.display().to_string()]));
    }
    args.extend(strings(extra));
    args
}

/// `relay` arguments against `server`'s listener of `transport`, its CPU measured.
fn relay_args(server: &Server, transport: &str, extra: &[&str]) -> Vec<String> {
    let mut args = mode_args("relay", server, transport, &["--server-pid"]);
    args.push(server.pid().to_string());
    args.extend(strings(extra));
    args
}

fn u64_at(json: &serde_json::Value, key: &str) -> u64 {
    json[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer {key:?} in {json}"))
}

fn f64_at(json: &serde_json::Value, key: &str) -> f64 {
    json[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {key:?} in {json}"))
}

/// A relay run whose every packet came back, and whose counts equal the server's counters:
/// what the server sent to peers is what the echo peer received, and what it sent to clients
/// is what the clients received (in time, or late).
fn assert_relayed_exactly(server: &Server, json: &serde_json::Value, clients: u64) {
    let sent = u64_at(json, "sent");
    let received = u64_at(json, "received");
    assert!(sent >= 10 * clients, "too few packets sent: {json}");
    assert_eq!(u64_at(json, "lost"), 0, "{json}");
    assert_eq!(received, sent, "{json}");
    assert_eq!(u64_at(json, "foreign"), 0, "{json}");
    assert_eq!(u64_at(json, "allocations"), clients, "{json}");
    assert_eq!(json["failures"], serde_json::json!({}), "{json}");
    let stats = server.stats();
    assert_eq!(
        stats.get("to_peer_packets"),
        u64_at(json, "peer_received"),
        "server's packets to peers vs the echo peer's count"
    );
    assert_eq!(u64_at(json, "peer_received"), sent);
    assert_eq!(
        stats.get("to_client_packets"),
        received + u64_at(json, "stale"),
        "server's packets to clients vs the clients' count"
    );
    assert_eq!(
        u64_at(json, "relayed_packets"),
        stats.get("to_peer_packets") + stats.get("to_client_packets")
    );
    // Every allocation was made, and deleted by the clean-up.
    assert_eq!(stats.get("allocations_created"), clients);
    assert_eq!(stats.get("allocations_deleted"), clients);
    // The server's CPU was read from /proc: a real number, per packet.
    assert!(f64_at(json, "server_cpu_ms") >= 0.0);
    assert!(f64_at(json, "server_cpu_us_per_packet") >= 0.0);
    assert!(f64_at(json, "host_cpu_us_per_packet") >= 0.0);
    // The relay cost counts the server, the generator, the softirq threads and interrupts:
    // never less than its parts.
    let parts: f64 = [
        "server_cpu_ms",
        "load_cpu_ms",
        "ksoftirqd_ms",
        "interrupts_ms",
    ]
    .iter()
    .map(|key| f64_at(json, key))
    .sum();
    let cost = f64_at(json, "relay_cost_ms");
    assert!(
        (cost - parts).abs() < 0.5,
        "relay cost {cost} ms vs its parts {parts} ms"
    );
    assert!(f64_at(json, "relay_cost_us_per_packet") >= f64_at(json, "server_cpu_us_per_packet"));
    assert!(u64_at(json, "rtt_p50_us") <= u64_at(json, "rtt_p99_us"));
    assert!(u64_at(json, "rtt_p99_us") <= u64_at(json, "rtt_max_us"));
}

#[test]
fn udp_channel_data_at_max_rate_matches_the_server_counters() {
    let server = server(vec!["udp"]);
    let args = relay_args(
        &server,
        "udp",
        &[
            "--clients",
            "4",
            "--window",
            "8",
            "--size",
            "200",
            "--duration",
            "1s",
            "--drain",
            "3s",
        ],
    );
    let run = run_load(&args, Duration::from_secs(60));
    let json = run.json();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(json["mode"], "relay");
    assert_eq!(json["transport"], "udp");
    assert_eq!(json["data"], "channel");
    assert_eq!(json["window"], 8);
    assert_relayed_exactly(&server, &json, 4);
}

#[test]
fn udp_send_indications_at_a_fixed_rate_match_the_server_counters() {
    let server = server(vec!["udp"]);
    let args = relay_args(
        &server,
        "udp",
        &[
            "--clients",
            "3",
            "--data",
            "send",
            "--rate",
            "40",
            "--size",
            "100",
            "--duration",
            "1s",
            "--drain",
            "3s",
        ],
    );
    let run = run_load(&args, Duration::from_secs(60));
    let json = run.json();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(json["data"], "send");
    assert_eq!(f64_at(&json, "rate"), 40.0);
    // 3 clients × 40/s for 1 s: 120 packets, give or take the first and last of each.
    let sent = u64_at(&json, "sent");
    assert!((114..=126).contains(&sent), "paced: {sent} packets");
    assert_relayed_exactly(&server, &json, 3);
}

#[test]
fn tcp_channel_data_matches_the_server_counters() {
    let server = server(vec!["tcp"]);
    let args = relay_args(
        &server,
        "tcp",
        &[
            "--clients",
            "4",
            "--window",
            "8",
            "--duration",
            "1s",
            "--drain",
            "3s",
        ],
    );
    let run = run_load(&args, Duration::from_secs(60));
    let json = run.json();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(json["transport"], "tcp");
    assert_relayed_exactly(&server, &json, 4);
}

#[test]
fn tls_send_indications_match_the_server_counters() {
    let server = server(vec!["tls"]);
    let args = relay_args(
        &server,
        "tls",
        &[
            "--clients",
            "3",
            "--window",
            "4",
            "--data",
            "send",
            "--duration",
            "1s",
            "--drain",
            "3s",
        ],
    );
    let run = run_load(&args, Duration::from_secs(60));
    let json = run.json();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(json["transport"], "tls");
    assert_relayed_exactly(&server, &json, 3);
}

#[test]
fn rest_credentials_relay_and_a_wrong_secret_is_a_401() {
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        extra: "[limits]\nuser-allocations = 0\n".into(),
        ..TestConfig::rest()
    });
    let base = |secret: &str| {
        strings(&[
            "relay",
            "--server",
            &server.addr("udp").to_string(),
            "--secret",
            secret,
            "--user",
            "loader",
            "--clients",
            "2",
            "--duration",
            "500ms",
            "--drain",
            "3s",
        ])
    };
    let run = run_load(&base("s3cret"), Duration::from_secs(60));
    let json = run.json();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(u64_at(&json, "allocations"), 2);
    assert!(u64_at(&json, "received") > 0);
    assert_eq!(u64_at(&json, "lost"), 0);

    let run = run_load(&base("not-the-secret"), Duration::from_secs(60));
    let json = run.json();
    assert_eq!(run.code, Some(1), "a run where no client allocated fails");
    assert_eq!(u64_at(&json, "allocations"), 0);
    assert_eq!(json["failures"], serde_json::json!({"401": 2}), "{json}");
    assert_eq!(u64_at(&json, "sent"), 0);
}

#[test]
fn allocate_mode_counts_allocations_and_their_cost() {
    let server = server(vec!["udp"]);
    let args = mode_args(
        "allocate",
        &server,
        "udp",
        &[
            "--clients",
            "60",
            "--concurrency",
            "8",
            "--server-pid",
            &server.pid().to_string(),
        ],
    );
    let run = run_load(&args, Duration::from_secs(60));
    let json = run.json();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(json["mode"], "allocate");
    assert_eq!(u64_at(&json, "allocations"), 60);
    assert!(f64_at(&json, "allocations_per_s") > 0.0);
    assert!(f64_at(&json, "server_cpu_us_per_allocation") >= 0.0);
    assert!(u64_at(&json, "session_p50_us") <= u64_at(&json, "session_p99_us"));
    let stats = server.stats();
    assert_eq!(stats.get("allocations_created"), 60);
    assert_eq!(stats.get("allocations_deleted"), 60);
    // Each session's first Allocate got its 401, then one with credentials got 200.
    assert_eq!(
        stats.get("auth_failures"),
        0,
        "a 401 challenge is no auth failure"
    );
}

#[test]
fn hold_mode_keeps_every_allocation_relaying_and_measures_memory() {
    let server = server(vec!["udp"]);
    let args = mode_args(
        "hold",
        &server,
        "udp",
        &[
            "--clients",
            "30",
            "--rate",
            "5",
            "--duration",
            "2s",
            "--drain",
            "2s",
            "--server-pid",
            &server.pid().to_string(),
        ],
    );
    let run = run_load(&args, Duration::from_secs(60));
    let json = run.json();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(json["mode"], "hold");
    assert_eq!(u64_at(&json, "allocations"), 30);
    assert_eq!(u64_at(&json, "relaying"), 30, "{json}");
    assert_eq!(u64_at(&json, "lost"), 0, "{json}");
    // 30 allocations × 5/s for 2 s.
    let sent = u64_at(&json, "sent");
    assert!((270..=330).contains(&sent), "trickle: {sent} packets");
    assert!(u64_at(&json, "server_rss_kib_before") > 0);
    assert!(u64_at(&json, "server_rss_kib_after") > 0);
    assert!(
        json["server_rss_bytes_per_allocation"].is_number(),
        "{json}"
    );
    let stats = server.stats();
    assert_eq!(stats.get("to_peer_packets"), u64_at(&json, "peer_received"));
    assert_eq!(stats.get("allocations_deleted"), 30);
}

#[test]
fn hold_mode_over_tcp_keeps_every_allocation_relaying() {
    let server = server(vec!["tcp"]);
    let args = mode_args(
        "hold",
        &server,
        "tcp",
        &[
            "--clients",
            "12",
            "--rate",
            "10",
            "--duration",
            "2s",
            "--drain",
            "2s",
        ],
    );
    let run = run_load(&args, Duration::from_secs(60));
    let json = run.json();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(json["transport"], "tcp");
    assert_eq!(u64_at(&json, "relaying"), 12, "{json}");
    assert_eq!(u64_at(&json, "lost"), 0, "{json}");
    // 12 allocations × 10/s for 2 s.
    let sent = u64_at(&json, "sent");
    assert!((216..=264).contains(&sent), "trickle: {sent} packets");
    assert!(
        json["server_rss_kib_before"].is_null(),
        "no --server-pid, no RSS"
    );
    let stats = server.stats();
    assert_eq!(stats.get("to_peer_packets"), sent);
    assert_eq!(stats.get("to_client_packets"), u64_at(&json, "received"));
    assert_eq!(stats.get("allocations_deleted"), 12);
}

/// Allocations granted for 2 s (`default-lifetime`) last a 4-second run only if the run
/// refreshes them: over UDP the batched path pauses for the refreshes and hands the echoes
/// that arrived meanwhile back to its count, over TCP each client refreshes in turn. Nothing
/// is lost and nothing is dropped for want of an allocation.
#[test]
fn long_runs_refresh_their_allocations_without_losing_packets() {
    for (mode, transport) in [
        ("relay", "udp"),
        ("relay", "tcp"),
        ("hold", "udp"),
        ("hold", "tcp"),
    ] {
        let server = Server::with(&TestConfig {
            transports: vec![transport],
            extra: "[limits]\nuser-allocations = 0\n".into(),
            ..TestConfig::default()
        });
        let toml = std::fs::read_to_string(server.config_path()).expect("read the configuration");
        drop(server);
        let toml = toml.replace("[relay]\n", "[relay]\ndefault-lifetime = \"2s\"\n");
        let server = Server::start(&toml);
        let mut args = mode_args(
            mode,
            &server,
            transport,
            &[
                "--clients",
                "3",
                "--rate",
                "50",
                "--duration",
                "4s",
                "--drain",
                "2s",
                "--refresh-every",
                "1s",
            ],
        );
        if mode == "relay" {
            args.extend(strings(&["--size", "200"]));
        }
        let run = run_load(&args, Duration::from_secs(60));
        let json = run.json();
        assert_eq!(run.code, Some(0), "{mode} over {transport}: {}", run.stderr);
        let sent = u64_at(&json, "sent");
        assert!(
            sent >= 500,
            "{mode} over {transport}: 3 × 50/s for 4 s: {json}"
        );
        assert_eq!(
            u64_at(&json, "received"),
            sent,
            "{mode} over {transport}: {json}"
        );
        let stats = server.stats();
        assert_eq!(
            stats.get("dropped_no_allocation"),
            0,
            "{mode} over {transport}"
        );
        assert_eq!(
            stats.get("allocations_expired"),
            0,
            "{mode} over {transport}"
        );
        assert_eq!(
            stats.get("allocations_deleted"),
            3,
            "{mode} over {transport}"
        );
    }
}

#[test]
fn hold_lingers_with_its_allocations_after_taking_its_figures() {
    let server = server(vec!["udp"]);
    let args = mode_args(
        "hold",
        &server,
        "udp",
        &[
            "--clients",
            "10",
            "--duration",
            "1s",
            "--drain",
            "500ms",
            "--linger",
            "4s",
            "--server-pid",
            &server.pid().to_string(),
        ],
    );
    let started = Instant::now();
    let child = spawn_load(&args);
    // Set-up, 1 s of hold and the drain are over by 2.5 s; the lingering lasts until about 5.5 s.
    thread::sleep(Duration::from_millis(2500));
    let during = server.stats();
    let run = finish(child, started, Duration::from_secs(60));
    let json = run.json();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("figures taken; holding 10 allocations for 4s"),
        "{}",
        run.stderr
    );
    assert_eq!(during.get("allocations"), 10, "held while lingering");
    assert_eq!(
        during.get("to_peer_packets"),
        u64_at(&json, "peer_received"),
        "no traffic while lingering"
    );
    assert!(run.took >= Duration::from_secs(5), "took {:?}", run.took);
    assert_eq!(server.stats().get("allocations_deleted"), 10);
}

/// The port a standalone `echo`/`forward` process said it listens on (its first stderr line).
fn spawn_listening(args: &[String]) -> (Child, SocketAddr, JoinHandle<String>) {
    eprintln!("turnpike-load {}", args.join(" "));
    let mut child = Command::new(load_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn turnpike-load");
    let mut stderr = child.stderr.take().expect("piped");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stderr.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).to_string();
    let addr = line
        .split_whitespace()
        .find_map(|word| word.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let mut stdout = child.stdout.take().expect("piped");
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    (child, addr, reader)
}

/// Sends SIGTERM to a child and returns its JSON line.
fn stop_and_report(mut child: Child, stdout: JoinHandle<String>) -> serde_json::Value {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_bounded(&mut child, Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "exits 0 on SIGTERM");
    let text = stdout.join().expect("stdout reader");
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn the_forwarder_relays_an_echo_round_trip() {
    let (echo, echo_addr, echo_out) = spawn_listening(&strings(&[
        "echo",
        "--listen",
        "127.0.0.1:0",
        "--duration",
        "60s",
    ]));
    let (forward, forward_addr, forward_out) = spawn_listening(&strings(&[
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &echo_addr.to_string(),
        "--duration",
        "60s",
    ]));
    // A plain socket: byte for byte through forwarder and echo peer, from the forwarder.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for size in [1usize, 160, 1400] {
        let datagram: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        socket.send_to(&datagram, forward_addr).unwrap();
        let (n, from) = socket.recv_from(&mut buf).expect("the echo comes back");
        assert_eq!(from, forward_addr);
        assert_eq!(&buf[..n], &datagram[..]);
    }
    // The generator's plain mode through the same forwarder, to the external echo peer.
    let run = run_load(
        &strings(&[
            "relay",
            "--plain",
            "--server",
            &forward_addr.to_string(),
            "--peer",
            &echo_addr.to_string(),
            "--clients",
            "4",
            "--duration",
            "1s",
            "--drain",
            "3s",
        ]),
        Duration::from_secs(60),
    );
    let json = run.json();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(json["data"], "plain");
    let sent = u64_at(&json, "sent");
    assert!(sent >= 40, "{json}");
    assert_eq!(u64_at(&json, "received"), sent);
    assert!(json["peer_received"].is_null(), "an external echo peer");
    assert_eq!(u64_at(&json, "relayed_packets"), 2 * sent);

    let forwarded = stop_and_report(forward, forward_out);
    assert_eq!(forwarded["mode"], "forward");
    assert_eq!(u64_at(&forwarded, "forwarded_up"), sent + 3);
    assert_eq!(u64_at(&forwarded, "forwarded_down"), sent + 3);
    assert_eq!(
        u64_at(&forwarded, "sources"),
        5,
        "one relay socket per client"
    );
    assert_eq!(u64_at(&forwarded, "dropped"), 0);
    let echoed = stop_and_report(echo, echo_out);
    assert_eq!(echoed["mode"], "echo");
    assert_eq!(u64_at(&echoed, "peer_received"), sent + 3);
    assert_eq!(u64_at(&echoed, "peer_echoed"), sent + 3);
}

#[test]
fn plain_mode_with_its_own_echo_peer_as_the_compare_script_runs_it() {
    let echo_port = free_port();
    let echo_addr = format!("127.0.0.1:{echo_port}");
    let (forward, forward_addr, forward_out) = spawn_listening(&strings(&[
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &echo_addr,
        "--duration",
        "60s",
    ]));
    let run = run_load(
        &strings(&[
            "relay",
            "--plain",
            "--server",
            &forward_addr.to_string(),
            "--echo-bind",
            &echo_addr,
            "--clients",
            "3",
            "--size",
            "1000",
            "--duration",
            "1s",
            "--drain",
            "3s",
        ]),
        Duration::from_secs(60),
    );
    let json = run.json();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let sent = u64_at(&json, "sent");
    assert!(sent >= 30 && u64_at(&json, "received") == sent, "{json}");
    assert_eq!(u64_at(&json, "peer_received"), sent);
    let forwarded = stop_and_report(forward, forward_out);
    assert_eq!(u64_at(&forwarded, "forwarded_up"), sent);
    assert_eq!(u64_at(&forwarded, "forwarded_down"), sent);
}

#[test]
fn targets_outside_loopback_are_refused() {
    let cases: Vec<Vec<&str>> = vec![
        vec!["relay", "--server", "10.0.0.1:3478", "--password", "p"],
        vec!["relay", "--server", "[2001:db8::1]:3478", "--password", "p"],
        vec!["relay", "--server", "0.0.0.0:3478", "--password", "p"],
        vec!["allocate", "--server", "192.0.2.1:3478", "--password", "p"],
        vec!["hold", "--server", "203.0.113.9:3478", "--password", "p"],
        vec![
            "relay",
            "--server",
            "127.0.0.1:3478",
            "--password",
            "p",
            "--peer",
            "10.0.0.2:9",
        ],
        vec![
            "relay",
            "--server",
            "127.0.0.1:3478",
            "--password",
            "p",
            "--echo-bind",
            "0.0.0.0:0",
        ],
        vec!["echo", "--listen", "0.0.0.0:0"],
        vec![
            "forward",
            "--listen",
            "127.0.0.1:0",
            "--to",
            "198.51.100.1:9",
        ],
        vec!["forward", "--listen", "[::]:0", "--to", "127.0.0.1:9"],
    ];
    for case in cases {
        let run = run_load(&strings(&case), Duration::from_secs(20));
        assert_eq!(run.code, Some(2), "{case:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{case:?}: nothing runs, no report");
        assert!(
            run.stderr.contains("is not a loopback address")
                && run.stderr.contains("--allow-remote"),
            "{case:?}: {}",
            run.stderr
        );
        assert!(
            run.took < Duration::from_secs(5),
            "{case:?} took {:?}",
            run.took
        );
    }
}

#[test]
fn hostile_command_lines_get_clear_errors() {
    let server = "127.0.0.1:3478";
    fn relay<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["relay", "--server", "127.0.0.1:3478", "--password", "p"];
        args.extend_from_slice(extra);
        args
    }
    // (arguments, words the error must contain)
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (relay(&["--clients", "0"]), vec!["--clients", "at least 1"]),
        (relay(&["--clients", "-4"]), vec!["--clients", "negative"]),
        (
            relay(&["--clients", "100001"]),
            vec!["--clients", "at most 100000"],
        ),
        (relay(&["--clients", "90000"]), vec!["open files", "ulimit"]),
        (
            relay(&["--clients", "many"]),
            vec!["--clients", "whole number"],
        ),
        (relay(&["--rate", "0"]), vec!["--rate", "more than 0"]),
        (relay(&["--rate", "-50"]), vec!["--rate", "more than 0"]),
        (relay(&["--rate", "1e15"]), vec!["--rate", "at most"]),
        (relay(&["--rate", "NaN"]), vec!["--rate", "finite"]),
        (relay(&["--rate", "inf"]), vec!["--rate", "finite"]),
        (
            relay(&["--rate", "500000", "--clients", "64"]),
            vec!["--rate", "packets/s"],
        ),
        (relay(&["--window", "0"]), vec!["--window", "at least 1"]),
        (
            relay(&["--window", "4", "--rate", "10"]),
            vec!["--window", "--rate"],
        ),
        (relay(&["--size", "65001"]), vec!["--size", "at most 65000"]),
        (
            relay(&["--size", "1000000"]),
            vec!["--size", "at most 65000"],
        ),
        (relay(&["--size", "4"]), vec!["--size", "at least 12"]),
        (
            relay(&["--duration", "-5s"]),
            vec!["--duration", "negative"],
        ),
        (relay(&["--duration", "-1"]), vec!["--duration", "negative"]),
        (
            relay(&["--duration", "0"]),
            vec!["--duration", "at least 1ms"],
        ),
        (
            relay(&["--duration", "2h"]),
            vec!["--duration", "at most 1h"],
        ),
        (relay(&["--duration", "forever"]), vec!["--duration"]),
        (relay(&["--drain", "5m"]), vec!["--drain", "60s"]),
        (
            relay(&["--setup-timeout", "-2s"]),
            vec!["--setup-timeout", "negative"],
        ),
        (relay(&["--transport", "sctp"]), vec!["--transport", "sctp"]),
        (relay(&["--transport", "tls"]), vec!["--tls-ca"]),
        (
            relay(&["--tls-ca", "/nonexistent/ca.pem", "--transport", "tls"]),
            vec!["--tls-ca", "/nonexistent/ca.pem"],
        ),
        (
            relay(&["--plain", "--transport", "tcp"]),
            vec!["--plain", "UDP"],
        ),
        (
            relay(&["--concurrency", "0"]),
            vec!["--concurrency", "at least 1"],
        ),
        (
            vec!["relay", "--server", server],
            vec!["--password", "--secret"],
        ),
        (
            vec!["relay", "--server", "127.0.0.1"],
            vec!["--server", "127.0.0.1"],
        ),
        (
            vec!["relay", "--server", "127.0.0.1:0", "--password", "p"],
            vec!["port 0"],
        ),
        (vec!["relay", "--password", "p"], vec!["--server"]),
        (
            vec!["hold", "--server", server, "--password", "p", "--rate", "0"],
            vec!["--rate", "more than 0"],
        ),
        (
            vec![
                "hold",
                "--server",
                server,
                "--password",
                "p",
                "--size",
                "70000",
            ],
            vec!["--size", "at most 65000"],
        ),
        (
            vec![
                "hold",
                "--server",
                server,
                "--password",
                "p",
                "--linger",
                "-1s",
            ],
            vec!["--linger", "negative"],
        ),
        (
            vec![
                "hold",
                "--server",
                server,
                "--password",
                "p",
                "--linger",
                "2h",
            ],
            vec!["--linger", "at most 1h"],
        ),
        (
            vec![
                "allocate",
                "--server",
                server,
                "--password",
                "p",
                "--duration",
                "-3s",
            ],
            vec!["--duration", "negative"],
        ),
        (
            vec!["echo", "--duration", "-1s"],
            vec!["--duration", "negative"],
        ),
        (vec!["forward", "--listen", "127.0.0.1:0"], vec!["--to"]),
        (
            vec![
                "forward",
                "--listen",
                "127.0.0.1:0",
                "--to",
                "127.0.0.1:9",
                "--max-sources",
                "0",
            ],
            vec!["--max-sources", "at least 1"],
        ),
        (vec!["stampede"], vec!["stampede"]),
    ];
    for (args, words) in cases {
        let run = run_load(&strings(&args), Duration::from_secs(20));
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}: no report: {}", run.stdout);
        for word in words {
            assert!(
                run.stderr.contains(word),
                "{args:?}: {word:?} not in: {}",
                run.stderr
            );
        }
        assert!(
            run.took < Duration::from_secs(5),
            "{args:?} took {:?}",
            run.took
        );
    }
}

/// A run whose server dies (SIGKILL) a second into a 3-second run ends within its duration,
/// drain and clean-up (3 + 1 + 2 s), with a report that says so.
fn ends_in_time_when_the_server_dies(transport: &'static str) {
    let mut server = server(vec![transport]);
    let args = relay_args(
        &server,
        transport,
        &[
            "--clients",
            "4",
            "--window",
            "4",
            "--duration",
            "3s",
            "--drain",
            "1s",
        ],
    );
    let started = Instant::now();
    let child = spawn_load(&args);
    thread::sleep(Duration::from_millis(1500));
    server.kill();
    let killed_at = started.elapsed();
    let run = finish(child, started, Duration::from_secs(30));
    eprintln!(
        "{transport}: server killed at {killed_at:?}, turnpike-load ended at {:?}",
        run.took
    );
    let json = run.json();
    assert_eq!(run.code, Some(1), "a run that lost its server fails");
    assert!(
        run.took < Duration::from_secs(3 + 1 + 2 + 4),
        "ended {:?} after start",
        run.took
    );
    let failures = json["failures"].as_object().expect("failures");
    assert_eq!(
        failures.get("server_gone"),
        Some(&serde_json::json!(1)),
        "{json}"
    );
    assert!(
        u64_at(&json, "received") > 0,
        "relayed before the kill: {json}"
    );
    assert!(u64_at(&json, "lost") > 0 || failures.len() > 1, "{json}");
}

#[test]
fn a_udp_run_ends_in_time_when_the_server_dies() {
    ends_in_time_when_the_server_dies("udp");
}

#[test]
fn a_tcp_run_ends_in_time_when_the_server_dies() {
    ends_in_time_when_the_server_dies("tcp");
}

#[test]
fn a_frozen_server_ends_the_run_at_the_setup_timeout() {
    let server = server(vec!["udp"]);
    server.signal(libc::SIGSTOP);
    let args = relay_args(
        &server,
        "udp",
        &[
            "--clients",
            "3",
            "--setup-timeout",
            "2s",
            "--duration",
            "2s",
        ],
    );
    let run = run_load(&args, Duration::from_secs(30));
    server.signal(libc::SIGCONT);
    let json = run.json();
    eprintln!("frozen server: turnpike-load ended after {:?}", run.took);
    assert_eq!(run.code, Some(1));
    assert_eq!(u64_at(&json, "allocations"), 0);
    assert_eq!(
        json["failures"],
        serde_json::json!({"setup_timeout": 3}),
        "{json}"
    );
    assert!(run.took < Duration::from_secs(2 + 4), "took {:?}", run.took);
}

#[test]
fn sigint_ends_a_long_run_early_with_its_report() {
    let server = server(vec!["udp"]);
    let args = relay_args(&server, "udp", &["--clients", "2", "--duration", "50s"]);
    let started = Instant::now();
    let child = spawn_load(&args);
    thread::sleep(Duration::from_millis(1500));
    let pid = libc::pid_t::try_from(child.0.id()).expect("a pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let run = finish(child, started, Duration::from_secs(30));
    let json = run.json();
    eprintln!("interrupted after 1.5 s, ended after {:?}", run.took);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.took < Duration::from_secs(10), "took {:?}", run.took);
    assert!(f64_at(&json, "duration_s") < 5.0, "{json}");
    assert!(u64_at(&json, "received") > 0);
    assert_eq!(u64_at(&json, "lost"), 0, "{json}");
    assert_eq!(
        server.stats().get("allocations_deleted"),
        2,
        "cleaned up after SIGINT"
    );
}
