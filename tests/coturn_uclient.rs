//! coturn's `turnutils_uclient` against the server: UDP, TCP and TLS, static users and REST
//! secrets, ChannelData and Send indications, relaying to coturn's `turnutils_peer` echo
//! server. Every run must deliver all its packets.
//!
//! Each test function covers one transport and one kind of credentials with one server and one
//! peer, and runs the channel and Send-indication clients at once; the functions themselves
//! run in parallel.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{Server, TestConfig};

/// Clients per run (`-m`) and messages per client (`-n`).
const CLIENTS: u64 = 2;
const MESSAGES: u64 = 20;

/// A uclient run that takes longer than this is killed and fails the test. Each client waits
/// a random 1 to 6 s before it starts sending, so a healthy run takes 2 to 8 s.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The closing statistics of a uclient run.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    sent: u64,
    received: u64,
    lost: u64,
    send_dropped: u64,
    rtt_avg_ms: f64,
    rtt_max_ms: u64,
}

/// Reads the statistics uclient prints last:
///
/// ```text
/// 6: : start_mclient: tot_send_msgs=40, tot_recv_msgs=40
/// 6: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)
/// 6: : Average round trip delay 0.000000 ms; min = 0 ms, max = 0 ms
/// ```
fn parse_summary(output: &str) -> Option<Summary> {
    fn after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
        let start = line.find(key)? + key.len();
        Some(line[start..].trim_start())
    }
    fn number<T: std::str::FromStr>(text: &str) -> Option<T> {
        let end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        text[..end].parse().ok()
    }
    let mut totals = None;
    let mut losses = None;
    let mut rtt = None;
    for line in output.lines() {
        if line.contains("start_mclient: tot_send_msgs=") {
            totals = Some((
                number(after(line, "tot_send_msgs=")?)?,
                number(after(line, "tot_recv_msgs=")?)?,
            ));
        } else if line.contains("Total lost packets") {
            losses = Some((
                number(after(line, "Total lost packets")?)?,
                number(after(line, "total send dropped")?)?,
            ));
        } else if line.contains("Average round trip delay") {
            rtt = Some((
                number(after(line, "Average round trip delay")?)?,
                number(after(line, "max =")?)?,
            ));
        }
    }
    let ((sent, received), (lost, send_dropped), (rtt_avg_ms, rtt_max_ms)) =
        (totals?, losses?, rtt?);
    Some(Summary {
        sent,
        received,
        lost,
        send_dropped,
        rtt_avg_ms,
        rtt_max_ms,
    })
}

/// coturn's `turnutils_peer` UDP echo server on 127.0.0.1; killed on drop.
struct Peer {
    child: Child,
    port: u16,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `turnutils_peer` on a free port, retrying when the port was taken meanwhile, and
/// returns once it echoes.
fn start_peer(dir: &Path) -> Peer {
    let program = common::require_tool("turnutils_peer");
    for attempt in 1..=5 {
        let port = common::free_port();
        let (stdout, stderr) = common::output_file(&dir.join(format!("peer-{attempt}.log")));
        let child = Command::new(&program)
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn turnutils_peer");
        let mut peer = Peer { child, port };
        if echoes(&mut peer) {
            return peer;
        }
        eprintln!("turnutils_peer on port {port} does not echo (attempt {attempt}), retrying");
    }
    panic!(
        "turnutils_peer did not start in 5 attempts; logs in {}",
        dir.display()
    );
}

fn echoes(peer: &mut Peer) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set a read timeout");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        if peer
            .child
            .try_wait()
            .expect("poll turnutils_peer")
            .is_some()
        {
            return false;
        }
        let _ = socket.send_to(b"turnpike probe", ("127.0.0.1", peer.port));
        if let Ok(n) = socket.recv(&mut buf) {
            if &buf[..n] == b"turnpike probe" {
                return true;
            }
        }
    }
    false
}

#[derive(Clone, Copy, Debug)]
enum Auth {
    Static,
    Rest,
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Channel,
    SendIndication,
}

/// Runs one uclient to completion and checks that every packet came back.
fn run_uclient(server: &Server, transport: &str, auth: Auth, mode: Mode, peer: &Peer, dir: &Path) {
    let program = common::require_tool("turnutils_uclient");
    let server_addr = server.addr(transport);
    let mut args: Vec<String> = Vec::new();
    match transport {
        "udp" => {}
        "tcp" => args.push("-t".into()),
        "tls" => args.extend(["-t".into(), "-S".into()]),
        other => panic!("no uclient flags for {other}"),
    }
    match auth {
        Auth::Static => args.extend(["-u", "alice", "-w", "wonderland"].map(String::from)),
        Auth::Rest => args.extend(["-u", "bob", "-W", "s3cret"].map(String::from)),
    }
    if let Mode::SendIndication = mode {
        args.push("-s".into());
    }
    args.extend(
        [
            "-c", // no RTCP allocations (no EVEN-PORT / RESERVATION-TOKEN)
            "-m",
            &CLIENTS.to_string(),
            "-n",
            &MESSAGES.to_string(),
            "-l",
            "170",
            "-e",
            "127.0.0.1",
            "-r",
            &peer.port.to_string(),
            "-p",
            &server_addr.port().to_string(),
            "127.0.0.1",
        ]
        .map(String::from),
    );
    let case = format!("{transport} {auth:?} {mode:?}");
    let log = dir.join(format!("uclient-{transport}-{auth:?}-{mode:?}.log"));
    let (stdout, stderr) = common::output_file(&log);
    let started = Instant::now();
    let mut child = Command::new(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn turnutils_uclient");
    let status = common::wait_bounded(&mut child, RUN_TIMEOUT);
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let command = format!("turnutils_uclient {}", args.join(" "));
    let tail: Vec<&str> = output.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let context = format!("{case}: {command}\nits last lines:\n{}", tail.join("\n"));

    let status = status.unwrap_or_else(|| panic!("killed after {RUN_TIMEOUT:?}; {context}"));
    let summary = parse_summary(&output);
    eprintln!("{case}: {summary:?} in {:?} ({status})", started.elapsed());
    assert!(status.success(), "exit {status}; {context}");
    let summary = summary.unwrap_or_else(|| panic!("no statistics in the output; {context}"));
    assert!(
        summary.received > 0,
        "nothing received: {summary:?}; {context}"
    );
    assert_eq!(summary.lost, 0, "packets lost: {summary:?}; {context}");
    assert_eq!(
        summary.send_dropped, 0,
        "sends dropped: {summary:?}; {context}"
    );
    assert_eq!(
        (summary.sent, summary.received),
        (CLIENTS * MESSAGES, CLIENTS * MESSAGES),
        "sent and received: {summary:?}; {context}"
    );
}

/// One server, one peer, and the channel and Send-indication clients at once.
fn relay_both_modes(transport: &'static str, auth: Auth) {
    let config = match auth {
        Auth::Static => TestConfig::default(),
        Auth::Rest => TestConfig::rest(),
    };
    let config = TestConfig {
        transports: vec![transport],
        ..config
    };
    let server = Server::with(&config);
    let dir = tempfile::tempdir().expect("create a tempdir");
    let peer = start_peer(dir.path());
    thread::scope(|scope| {
        for mode in [Mode::Channel, Mode::SendIndication] {
            let (server, peer, dir) = (&server, &peer, dir.path());
            scope.spawn(move || run_uclient(server, transport, auth, mode, peer, dir));
        }
    });
}

#[test]
fn udp_static_user() {
    relay_both_modes("udp", Auth::Static);
}

#[test]
fn udp_rest_secret() {
    relay_both_modes("udp", Auth::Rest);
}

#[test]
fn tcp_static_user() {
    relay_both_modes("tcp", Auth::Static);
}

#[test]
fn tcp_rest_secret() {
    relay_both_modes("tcp", Auth::Rest);
}

#[test]
fn tls_static_user() {
    relay_both_modes("tls", Auth::Static);
}

#[test]
fn tls_rest_secret() {
    relay_both_modes("tls", Auth::Rest);
}

#[test]
fn parses_uclient_statistics() {
    let output = "\
1: : start_mclient: msz=2, tot_send_msgs=4, tot_recv_msgs=4, tot_send_bytes ~ 680, tot_recv_bytes ~ 680
6: : start_mclient: tot_send_msgs=40, tot_recv_msgs=39
6: : start_mclient: tot_send_bytes ~ 6800, tot_recv_bytes ~ 6630
6: : Total transmit time is 6
6: : Total lost packets 1 (2.500000%), total send dropped 0 (0.000000%)
6: : Average round trip delay 0.250000 ms; min = 0 ms, max = 3 ms
6: : Average jitter 0.125000 ms; min = 0 ms, max = 1 ms
";
    let expected = Summary {
        sent: 40,
        received: 39,
        lost: 1,
        send_dropped: 0,
        rtt_avg_ms: 0.25,
        rtt_max_ms: 3,
    };
    assert_eq!(parse_summary(output), Some(expected));
    assert_eq!(
        parse_summary("0: : ERROR: Cannot complete Allocation"),
        None
    );
}
