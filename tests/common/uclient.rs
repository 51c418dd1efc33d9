//! coturn's `turnutils_uclient` and `turnutils_peer`: start the echo peer, run a client to
//! completion, read its closing statistics and insist that every packet came back.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Clients per run (`-m`) and messages per client (`-n`).
pub const CLIENTS: u64 = 2;
pub const MESSAGES: u64 = 20;

/// A uclient run that takes longer than this is killed and fails the test. Each client waits
/// a random 1 to 6 s before it starts sending, so a healthy run takes 2 to 8 s.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The closing statistics of a uclient run.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub send_dropped: u64,
    pub rtt_avg_ms: f64,
    pub rtt_max_ms: u64,
}

/// Reads the statistics uclient prints last:
///
/// ```text
/// 6: : start_mclient: tot_send_msgs=40, tot_recv_msgs=40
/// 6: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)
/// 6: : Average round trip delay 0.000000 ms; min = 0 ms, max = 0 ms
/// ```
pub fn parse_summary(output: &str) -> Option<Summary> {
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

/// coturn's `turnutils_peer` UDP echo server; killed on drop.
pub struct Peer {
    child: Child,
    pub ip: IpAddr,
    pub port: u16,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `turnutils_peer` on 127.0.0.1 and a free port, retrying when the port was taken
/// meanwhile, and returns once it echoes.
pub fn start_peer(dir: &Path) -> Peer {
    start_peer_on(dir, IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// [`start_peer`] on `ip`, e.g. from a thread in a network namespace that has that address
/// (the peer process starts in the thread's namespace).
pub fn start_peer_on(dir: &Path, ip: IpAddr) -> Peer {
    let program = super::require_tool("turnutils_peer");
    for attempt in 1..=5 {
        let port = super::free_port();
        let (stdout, stderr) = super::output_file(&dir.join(format!("peer-{attempt}.log")));
        let child = Command::new(&program)
            .args(["-L", &ip.to_string(), "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn turnutils_peer");
        let mut peer = Peer { child, ip, port };
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
    let socket = UdpSocket::bind((peer.ip, 0)).expect("bind UDP");
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
        let _ = socket.send_to(b"turnpike probe", (peer.ip, peer.port));
        if let Ok(n) = socket.recv(&mut buf) {
            if &buf[..n] == b"turnpike probe" {
                return true;
            }
        }
    }
    false
}

/// One uclient run: which server and transport, which credentials, which mode.
pub struct Run<'a> {
    /// A name for the run in messages and its log file name.
    pub case: &'a str,
    pub server: SocketAddr,
    /// "udp", "tcp" or "tls".
    pub transport: &'a str,
    /// `-u NAME -w PASSWORD` or `-u NAME -W SECRET`.
    pub credentials: [&'a str; 4],
    /// Send indications (`-s`) instead of ChannelData.
    pub send_indication: bool,
}

/// Runs one uclient to completion against `peer` and checks that every packet came back.
pub fn run(run: &Run<'_>, peer: &Peer, dir: &Path) -> Summary {
    run_with_flags(run, &[], peer, dir)
}

/// [`run`] with more uclient flags, e.g. `-Z` (dual allocation).
pub fn run_with_flags(run: &Run<'_>, flags: &[&str], peer: &Peer, dir: &Path) -> Summary {
    match attempt(run, flags, peer, dir, 1) {
        Ok(summary) => summary,
        Err(first) => {
            // turnutils_uclient stops waiting for echoes on its own clock: on a loaded machine
            // (a parallel test suite, a build beside it) it has counted a late echo as lost
            // while the server had relayed every packet. One loss is run again; a second in a
            // row fails the test.
            eprintln!("{}: retried once after {first:?}", run.case);
            attempt(run, flags, peer, dir, 2).unwrap_or_else(|second| {
                panic!(
                    "packets lost twice in a row: {first:?}, then {second:?}; {}",
                    run.case
                )
            })
        }
    }
}

/// One run of uclient; every failure but lost packets panics, lost packets are returned.
fn attempt(
    run: &Run<'_>,
    flags: &[&str],
    peer: &Peer,
    dir: &Path,
    number: u32,
) -> Result<Summary, Summary> {
    let program = super::require_tool("turnutils_uclient");
    let mut args: Vec<String> = Vec::new();
    match run.transport {
        "udp" => {}
        "tcp" => args.push("-t".into()),
        "tls" => args.extend(["-t".into(), "-S".into()]),
        other => panic!("no uclient flags for {other}"),
    }
    args.extend(run.credentials.map(String::from));
    if run.send_indication {
        args.push("-s".into());
    }
    args.extend(flags.iter().map(|f| f.to_string()));
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
            &peer.ip.to_string(),
            "-r",
            &peer.port.to_string(),
            "-p",
            &run.server.port().to_string(),
            &run.server.ip().to_string(),
        ]
        .map(String::from),
    );
    let case = run.case;
    let file_name: String = case
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let log = dir.join(format!("uclient-{file_name}-{number}.log"));
    let (stdout, stderr) = super::output_file(&log);
    let started = Instant::now();
    let mut child = Command::new(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn turnutils_uclient");
    let status = super::wait_bounded(&mut child, RUN_TIMEOUT);
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
    assert_eq!(
        summary.send_dropped, 0,
        "sends dropped: {summary:?}; {context}"
    );
    assert_eq!(
        summary.sent,
        CLIENTS * MESSAGES,
        "sent: {summary:?}; {context}"
    );
    if summary.lost > 0 || summary.received != CLIENTS * MESSAGES {
        eprintln!("packets lost: {summary:?}; {context}");
        return Err(summary);
    }
    Ok(summary)
}
