//! Soak run: mixed TURN load against a turnpike for N minutes, with the server's memory,
//! descriptors and allocations reported at the start, every minute and at the end.
//!
//! ```sh
//! cargo build --release && cargo run --release --example soak -- --minutes 30
//! ```
//!
//! By default it starts `target/release/turnpike` with a configuration of its own on 127.0.0.1
//! (UDP, TCP and TLS listeners, the HTTP API for the counters). `--server ADDR --pid PID --api
//! ADDR --token TOKEN` attach it to a running one instead (see `--help`).
//!
//! The load, all of it on 127.0.0.0/8 and at bounded rates (one core for the soak, the other
//! for the server):
//! - long-lived allocations over UDP, TCP and TLS sending sequence-numbered packets to UDP echo
//!   peers on a channel or in Send indications, refreshing as they go;
//! - allocation churn: allocate, bind channels and install permissions, relay a few packets,
//!   then delete (Refresh 0), drop the connection, or leave a UDP allocation to expire;
//! - refresh storms: a pool of idle allocations all refreshed at the same moment, with new
//!   permissions and channels each time (permission and channel churn);
//! - hostile traffic: malformed and oversized datagrams, garbage on TCP and TLS, half-open
//!   TCP connections and stalled TLS handshakes, and a flood of unauthenticated Allocates from
//!   one address (the server must answer no more than its `unauthenticated-burst` and
//!   `unauthenticated-rate` allow).
//!
//! At the end it stops the load, deletes what it holds, waits for the abandoned allocations to
//! expire, and exits non-zero if the server's RSS or descriptors grew beyond the thresholds,
//! allocations are left, packets were lost that no counter explains, a hostile connection was
//! not closed in time, the flood got more answers than allowed, or any request failed.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::watch;

use turnpike::client::{Client, ClientConfig, ClientError, ClientTls, Credentials, Transport};
use turnpike::stun::{Class, MessageWriter, Method, TransactionId, attr};

#[derive(Parser, Debug)]
#[command(about = "Soak a turnpike server with mixed TURN load on loopback")]
struct Args {
    /// How long to run the load (fractions allowed: 0.5 = 30 s).
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// The turnpike binary to start (default: target/release/turnpike of this checkout).
    #[arg(long)]
    turnpike: Option<PathBuf>,
    /// Attach to a running server: its UDP and TCP listener (loopback only).
    #[arg(long, requires_all = ["pid", "api", "token"])]
    server: Option<SocketAddr>,
    /// Attach: the server's TLS listener, if it has one.
    #[arg(long, requires = "server")]
    tls_server: Option<SocketAddr>,
    /// Attach: the CA certificate to verify the TLS listener with (default: accept any).
    #[arg(long, requires = "tls_server")]
    tls_ca: Option<PathBuf>,
    /// Attach: the server's process id, for /proc/<pid>/status and /proc/<pid>/fd.
    #[arg(long, requires = "server")]
    pid: Option<u32>,
    /// Attach: the server's HTTP API address, for /api/v1/status.
    #[arg(long, requires = "server")]
    api: Option<SocketAddr>,
    /// Attach: the API's bearer token.
    #[arg(long, requires = "server", env = "TURNPIKE_SOAK_TOKEN")]
    token: Option<String>,
    /// Attach: a long-term user (with --password).
    #[arg(long, requires_all = ["server", "password"])]
    user: Option<String>,
    /// Attach: the long-term user's password.
    #[arg(long, requires = "user", env = "TURNPIKE_SOAK_PASSWORD")]
    password: Option<String>,
    /// Attach: a TURN REST secret of the server.
    #[arg(long, requires = "server", env = "TURNPIKE_SOAK_SECRET")]
    secret: Option<String>,
    /// Attach: the server's `limits.unauthenticated-rate` (answers per second per source).
    #[arg(long, default_value_t = 20)]
    unauthenticated_rate: u32,
    /// Attach: the server's `limits.unauthenticated-burst` (answers a source may get at once).
    #[arg(long, default_value_t = 2000)]
    unauthenticated_burst: u32,
    /// Attach: the server's `limits.stream-idle-timeout`, in seconds.
    #[arg(long, default_value_t = 10)]
    stream_idle_timeout: u64,
    /// Packets per second each long-lived allocation sends (6 of them; at most 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rate: u32,
    /// Churn allocations started per second (at most 50).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=50))]
    churn: u32,
    /// Idle allocations refreshed together in each refresh storm (at most 500).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u16).range(1..=500))]
    storm_size: u16,
    /// Seconds between refresh storms (5 to 600).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(5..=600))]
    storm_every: u64,
    /// Unauthenticated Allocates per second in the flood from 127.0.0.99 (at most 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    flood: u32,
    /// Seconds between reports (1 to 3600).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    report_every: u64,
    /// Fail when the RSS after the load grew by more than this from the first report (MiB).
    #[arg(long, default_value_t = 8.0)]
    max_rss_growth_mib: f64,
    /// Fail when the server holds more than this many descriptors more after the load than
    /// before it.
    #[arg(long, default_value_t = 2)]
    max_fd_growth: u64,
}

/// Loopback addresses the roles use, so that per-IP limits see them apart.
const CHURN_IPS: std::ops::RangeInclusive<u8> = 10..=41;
const STORM_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 50);
const LONG_LIVED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 60);
const MALFORMED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 66);
const FLOOD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 99);
const PROBE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 200);
/// Echo peers listen here; permission and channel churn name peers in 127.0.1.0/24.
const PEER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const ECHO_PEERS: usize = 4;

/// How long a relayed packet may take to come back before it counts as lost.
const ECHO_WAIT: Duration = Duration::from_secs(3);
/// Lifetime the long-lived and storm allocations ask for; they refresh well before.
const HELD_LIFETIME: Duration = Duration::from_secs(120);

/// Set when Ctrl-C cut the run short: it still reports, then exits 130.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(_) if INTERRUPTED.load(Ordering::Relaxed) => ExitCode::from(130),
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

/// What the soak talks to.
struct Target {
    udp: SocketAddr,
    tcp: SocketAddr,
    tls: Option<SocketAddr>,
    tls_settings: ClientTls,
    pid: u32,
    api: SocketAddr,
    token: String,
    credentials: Vec<Credentials>,
    unauthenticated_rate: u32,
    unauthenticated_burst: u32,
    stream_idle_timeout: Duration,
    /// The server this run started, stopped at the end.
    own: Option<OwnServer>,
}

fn run(args: Args) -> Result<bool, String> {
    if !(args.minutes > 0.0 && args.minutes <= MAX_MINUTES) {
        return Err(format!(
            "--minutes {}: give 0 < N <= {MAX_MINUTES} (REST credentials must outlive the run \
             and stay within the default max-rest-ttl of a day)",
            args.minutes
        ));
    }
    let target = match args.server {
        Some(_) => attach(&args)?,
        None => OwnServer::start(&args)?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let mut target = target;
    let outcome = runtime.block_on(soak(&args, &target));
    if let Err(e) = &outcome {
        // A server that died under the load is the soak's finding, not a failure to run.
        let exited = match target.own.as_mut() {
            Some(own) => own.child.try_wait().ok().flatten().map(|s| s.to_string()),
            None => {
                (!Path::new(&format!("/proc/{}", target.pid)).exists()).then(|| "gone".to_string())
            }
        };
        if let Some(status) = exited {
            println!("FAIL the server exited during the soak ({status}): {e}");
            if let Some(own) = &target.own {
                own.dump_log();
            }
            return Ok(false);
        }
    }
    let passed = outcome?;
    let stopped = match target.own.take() {
        Some(own) => own.stop(),
        None => true,
    };
    Ok(passed && stopped)
}

/// The longest run: 23 hours.
const MAX_MINUTES: f64 = 23.0 * 60.0;

/// How long the REST usernames minted at the start stay valid: the run and half an hour for
/// the cleanup, at most 23.5 hours, within the `max-rest-ttl` of a day servers have by default
/// (a username whose expiry lies further ahead gets 401, and an expired one gets 401 on its
/// Refresh).
fn rest_ttl(args: &Args) -> Duration {
    Duration::from_secs_f64(args.minutes * 60.0) + Duration::from_secs(30 * 60)
}

/// The target given on the command line, after checking it is on loopback.
fn attach(args: &Args) -> Result<Target, String> {
    let server = args.server.ok_or("--server missing")?;
    let api = args.api.ok_or("--api missing")?;
    for addr in [Some(server), args.tls_server, Some(api)]
        .into_iter()
        .flatten()
    {
        if !addr.ip().is_loopback() {
            return Err(format!("{addr}: the soak only sends to loopback addresses"));
        }
    }
    let mut credentials = Vec::new();
    if let (Some(user), Some(password)) = (&args.user, &args.password) {
        credentials.push(Credentials::long_term(user, password));
    }
    if let Some(secret) = &args.secret {
        credentials.push(Credentials::rest(secret, "soak", rest_ttl(args)));
    }
    if credentials.is_empty() {
        return Err("attach needs credentials: --user and --password, or --secret".into());
    }
    let tls_settings = match &args.tls_ca {
        Some(path) => ClientTls::with_ca_file(path).map_err(|e| e.to_string())?,
        None => ClientTls::accept_any_certificate(),
    };
    Ok(Target {
        udp: server,
        tcp: server,
        tls: args.tls_server,
        tls_settings,
        pid: args.pid.ok_or("--pid missing")?,
        api,
        token: args.token.clone().ok_or("--token missing")?,
        credentials,
        unauthenticated_rate: args.unauthenticated_rate,
        unauthenticated_burst: args.unauthenticated_burst,
        stream_idle_timeout: Duration::from_secs(args.stream_idle_timeout),
        own: None,
    })
}

/// A turnpike this run started from a temporary configuration.
struct OwnServer {
    child: Child,
    _dir: tempfile::TempDir,
    log: Arc<ServerLog>,
}

/// What the server logged: counts by level and the last lines, for a failure report.
#[derive(Default)]
struct ServerLog {
    errors: AtomicU64,
    warnings: AtomicU64,
    last: Mutex<VecDeque<String>>,
}

const OWN_UNAUTHENTICATED_RATE: u32 = 20;
const OWN_UNAUTHENTICATED_BURST: u32 = 2000;
const OWN_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const OWN_DEFAULT_LIFETIME: &str = "30s";

impl OwnServer {
    fn start(args: &Args) -> Result<Target, String> {
        let binary = args.turnpike.clone().unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/turnpike")
        });
        if !binary.is_file() {
            return Err(format!(
                "{} not found: build it first (cargo build --release) or pass --turnpike",
                binary.display()
            ));
        }
        warn_if_stale(&binary);
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(|e| format!("self-signed certificate: {e}"))?;
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        fs::write(&cert, certified.cert.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
        fs::write(&key, certified.signing_key.serialize_pem())
            .map_err(|e| format!("{}: {e}", key.display()))?;
        let token = format!("{:032x}", rand::rng().random::<u128>());
        let secret = format!("{:032x}", rand::rng().random::<u128>());
        let config = dir.path().join("turnpike.toml");
        let toml = format!(
            r#"realm = "soak.turnpike"
workers = 2
drain-timeout = "5s"

[[listen]]
transport = "udp"
address = "127.0.0.1:0"

[[listen]]
transport = "tcp"
address = "127.0.0.1:0"

[[listen]]
transport = "tls"
address = "127.0.0.1:0"

[tls]
certificate = {cert:?}
private-key = {key:?}

[relay]
address = "127.0.0.1"
ports = "40000-59999"
default-lifetime = "{OWN_DEFAULT_LIFETIME}"
max-lifetime = "10m"

[auth]
secrets = ["{secret}"]

[[auth.users]]
name = "soak"
password = "soak"

[peers]
allow = ["127.0.0.0/8"]

[limits]
user-allocations = 1000
unauthenticated-rate = {OWN_UNAUTHENTICATED_RATE}
unauthenticated-burst = {OWN_UNAUTHENTICATED_BURST}
stream-idle-timeout = "{idle}s"

[http]
address = "127.0.0.1:0"
token = "{token}"
"#,
            idle = OWN_STREAM_IDLE_TIMEOUT.as_secs(),
        );
        fs::write(&config, toml).map_err(|e| format!("{}: {e}", config.display()))?;

        let mut command = Command::new(&binary);
        command
            .args(["serve", "-c"])
            .arg(&config)
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        own_process_group(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| format!("start {}: {e}", binary.display()))?;
        let log = Arc::new(ServerLog::default());
        let stderr = child.stderr.take().ok_or("turnpike's stderr is piped")?;
        let listeners = read_log(stderr, log.clone());
        let own = OwnServer {
            child,
            _dir: dir,
            log,
        };
        let mut addresses = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match listeners.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Some(listener)) => addresses.push(listener),
                Ok(None) => break,
                Err(_) => {
                    own.dump_log();
                    return Err("turnpike did not get ready within 30 s".into());
                }
            }
        }
        let find = |transport: &str| {
            addresses
                .iter()
                .find(|(t, _)| t == transport)
                .map(|(_, addr)| *addr)
                .ok_or(format!("turnpike logged no {transport} listener"))
        };
        Ok(Target {
            udp: find("udp")?,
            tcp: find("tcp")?,
            tls: Some(find("tls")?),
            tls_settings: ClientTls::with_ca_file(&cert).map_err(|e| e.to_string())?,
            pid: own.child.id(),
            api: find("http")?,
            token,
            credentials: vec![
                Credentials::long_term("soak", "soak"),
                Credentials::rest(&secret, "soak", rest_ttl(args)),
            ],
            unauthenticated_rate: OWN_UNAUTHENTICATED_RATE,
            unauthenticated_burst: OWN_UNAUTHENTICATED_BURST,
            stream_idle_timeout: OWN_STREAM_IDLE_TIMEOUT,
            own: Some(own),
        })
    }

    fn dump_log(&self) {
        let last = self.log.last.lock().unwrap_or_else(|e| e.into_inner());
        eprintln!("--- the server's last {} log lines ---", last.len());
        for line in last.iter() {
            eprintln!("{line}");
        }
    }

    /// SIGTERM, then waits for a clean exit: whether it exited 0 within 15 s.
    fn stop(mut self) -> bool {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap_or(0);
        // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet, so
        // the pid is still ours.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                println!("server: exited with {status} after SIGTERM");
                if !status.success() {
                    self.dump_log();
                }
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("server: still running 15 s after SIGTERM; killed");
        self.dump_log();
        false
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Puts the server in its own process group, so that Ctrl-C reaches only the soak (which then
/// stops the load and reports), and has the kernel end it if the soak dies.
fn own_process_group(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl(2),
    // which is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// Warns when a source file is newer than `binary`: the soak would test old code.
fn warn_if_stale(binary: &Path) {
    let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
    let Some(built) = modified(binary) else {
        return;
    };
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![src];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(time) = modified(&path) {
                newest = newest.max(time);
            }
        }
    }
    if newest > built {
        eprintln!(
            "soak: warning: {} is older than src/; run cargo build --release",
            binary.display()
        );
    }
}

/// Reads turnpike's JSON log: sends each `listening` (transport, address), then `None` at
/// `ready`; afterwards counts errors and warnings and keeps the last lines.
fn read_log(
    stderr: impl std::io::Read + Send + 'static,
    log: Arc<ServerLog>,
) -> mpsc::Receiver<Option<(String, SocketAddr)>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let fields = &event["fields"];
            match fields["message"].as_str() {
                Some("listening") => {
                    let transport = fields["transport"].as_str().unwrap_or_default();
                    if let Some(addr) = fields["address"].as_str().and_then(|a| a.parse().ok()) {
                        let _ = tx.send(Some((transport.to_string(), addr)));
                    }
                }
                Some("ready") => {
                    let _ = tx.send(None);
                }
                _ => {}
            }
            match event["level"].as_str() {
                Some("ERROR") => {
                    log.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("server error: {line}");
                }
                Some("WARN") => {
                    log.warnings.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            let mut last = log.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.len() == 50 {
                last.pop_front();
            }
            last.push_back(line);
        }
    });
    rx
}

// ---------------------------------------------------------------------------------------------
// Counters shared by the load tasks.

/// Index of a transport in per-transport counters.
fn slot(transport: Transport) -> usize {
    match transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    }
}

#[derive(Default)]
struct Tally {
    /// Data packets sent to an echo peer through the relay, and their echoes received, by
    /// transport.
    sent: [AtomicU64; 3],
    received: [AtomicU64; 3],
    /// Round-trip times of the long-lived streams, in microseconds.
    rtt_max_us: AtomicU64,
    rtt_sum_us: AtomicU64,
    rtt_count: AtomicU64,
    /// Datagrams the echo peers sent back.
    echoed: AtomicU64,
    churn_allocated: AtomicU64,
    churn_deleted: AtomicU64,
    churn_closed: AtomicU64,
    churn_abandoned: AtomicU64,
    churn_skipped: AtomicU64,
    /// Latest expiry of an abandoned UDP allocation, in ms since the soak began.
    abandoned_until_ms: AtomicU64,
    storms: AtomicU64,
    storm_refreshes: AtomicU64,
    permissions_added: AtomicU64,
    channels_bound: AtomicU64,
    malformed_sent: AtomicU64,
    oversized_sent: AtomicU64,
    garbage_connections: AtomicU64,
    half_open_connections: AtomicU64,
    hostile_closed: AtomicU64,
    hostile_overdue: AtomicU64,
    flood_sent: AtomicU64,
    flood_answered: AtomicU64,
    /// How long the flood ran, in ms.
    flood_ms: AtomicU64,
    probes: AtomicU64,
    /// Operations that should have succeeded and did not.
    failures: AtomicU64,
    failure_samples: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: impl std::fmt::Display) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut samples = self
            .failure_samples
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if samples.len() < 20 {
            samples.push(what.to_string());
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn rtt(&self, rtt: Duration) {
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        self.rtt_max_us.fetch_max(us, Ordering::Relaxed);
        Tally::add(&self.rtt_sum_us, us);
        Tally::add(&self.rtt_count, 1);
    }

    fn total(counters: &[AtomicU64; 3]) -> u64 {
        counters.iter().map(Tally::get).sum()
    }
}

/// Everything the load tasks share.
struct Load {
    tally: Tally,
    udp: SocketAddr,
    tcp: SocketAddr,
    tls: Option<SocketAddr>,
    tls_settings: ClientTls,
    credentials: Vec<Credentials>,
    peers: Vec<SocketAddr>,
    began: Instant,
    stream_idle_timeout: Duration,
}

impl Load {
    /// The transports the target serves.
    fn transports(&self) -> Vec<Transport> {
        let mut transports = vec![Transport::Udp, Transport::Tcp];
        if self.tls.is_some() {
            transports.push(Transport::Tls);
        }
        transports
    }

    fn client_config(&self, transport: Transport, ip: Ipv4Addr, which: usize) -> ClientConfig {
        let server = match transport {
            Transport::Udp => self.udp,
            Transport::Tcp => self.tcp,
            Transport::Tls => self.tls.unwrap_or(self.tcp),
        };
        let credentials = self.credentials[which % self.credentials.len()].clone();
        let mut config = ClientConfig::new(server, transport, credentials);
        config.local = Some(SocketAddr::from((ip, 0)));
        config.tls = Some(self.tls_settings.clone());
        config
    }

    async fn connect(
        &self,
        transport: Transport,
        ip: Ipv4Addr,
        which: usize,
    ) -> Result<Client, ClientError> {
        Client::connect(self.client_config(transport, ip, which)).await
    }

    fn ms_since_start(&self) -> u64 {
        u64::try_from(self.began.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Whether `stop` has been raised.
fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

// ---------------------------------------------------------------------------------------------
// The soak itself.

async fn soak(args: &Args, target: &Target) -> Result<bool, String> {
    let mut echo_sockets = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..ECHO_PEERS {
        let socket = UdpSocket::bind(SocketAddr::from((PEER_IP, 0)))
            .await
            .map_err(|e| format!("bind an echo peer: {e}"))?;
        peers.push(socket.local_addr().map_err(|e| e.to_string())?);
        echo_sockets.push(socket);
    }
    let load = Arc::new(Load {
        tally: Tally::default(),
        udp: target.udp,
        tcp: target.tcp,
        tls: target.tls,
        tls_settings: target.tls_settings.clone(),
        credentials: target.credentials.clone(),
        peers,
        began: Instant::now(),
        stream_idle_timeout: target.stream_idle_timeout,
    });
    let echo_tasks: Vec<_> = echo_sockets
        .into_iter()
        .map(|socket| tokio::spawn(echo(load.clone(), socket)))
        .collect();

    check_target(&load).await?;
    // Let the server close the connections of the check before counting its descriptors.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let sampler = Sampler {
        pid: target.pid,
        api: target.api,
        token: target.token.clone(),
    };
    let start = sampler.sample(&load).await?;
    println!(
        "soak: {} minutes against pid {} (udp {}, tcp {}, tls {}), API {}",
        args.minutes,
        target.pid,
        target.udp,
        target.tcp,
        target.tls.map_or("none".into(), |a| a.to_string()),
        target.api
    );
    print_sample("start (idle)", &start, &start, &load);

    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut held = Vec::new();
    for (i, transport) in load.transports().into_iter().enumerate() {
        for channel in [true, false] {
            let which = 2 * i + usize::from(channel);
            held.push(tokio::spawn(long_lived(
                load.clone(),
                stop.clone(),
                transport,
                channel,
                which,
                args.rate,
            )));
        }
    }
    tasks.push(tokio::spawn(churn(load.clone(), stop.clone(), args.churn)));
    let storm = tokio::spawn(storms(
        load.clone(),
        stop.clone(),
        usize::from(args.storm_size),
        Duration::from_secs(args.storm_every),
    ));
    tasks.push(tokio::spawn(malformed(load.clone(), stop.clone())));
    tasks.push(tokio::spawn(garbage_streams(load.clone(), stop.clone())));
    for i in 0..12 {
        tasks.push(tokio::spawn(half_open(load.clone(), stop.clone(), i)));
    }
    tasks.push(tokio::spawn(flood(load.clone(), stop.clone(), args.flood)));

    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let report_every = Duration::from_secs(args.report_every.max(1)).min(duration / 2);
    let mut warm: Option<Sample> = None;
    let mut samples = Vec::new();
    let ends_at = tokio::time::Instant::now() + duration;
    let mut next_report = tokio::time::Instant::now() + report_every;
    let mut interrupted = false;
    loop {
        let wake = next_report.min(ends_at);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = tokio::signal::ctrl_c() => {
                println!("soak: interrupted; stopping the load and reporting");
                interrupted = true;
                INTERRUPTED.store(true, Ordering::Relaxed);
                break;
            }
        }
        if wake >= ends_at {
            break;
        }
        probe(&load).await;
        let sample = sampler.sample(&load).await?;
        let elapsed = load.began.elapsed().as_secs();
        print_sample(
            &format!("{}:{:02}", elapsed / 60, elapsed % 60),
            &sample,
            &start,
            &load,
        );
        warm.get_or_insert(sample.clone());
        samples.push(sample);
        next_report += report_every;
    }
    probe(&load).await;
    let loaded = sampler.sample(&load).await?;
    print_sample("end of load", &loaded, &start, &load);
    let warm = warm.unwrap_or_else(|| loaded.clone());
    samples.push(loaded.clone());

    // Stop: the long-lived streams wait for their last echoes and delete their allocations;
    // the storm pool deletes its allocations; abandoned UDP allocations are left to expire.
    let _ = stop_tx.send(true);
    // A load task that panicked is the soak's own bug; it must not pass for a quiet server.
    for task in held.into_iter().chain([storm]).chain(tasks) {
        if let Err(e) = task.await {
            load.tally.fail(format!("a load task failed: {e}"));
        }
    }
    let expiry = Duration::from_millis(Tally::get(&load.tally.abandoned_until_ms))
        .saturating_sub(load.began.elapsed())
        + Duration::from_secs(3);
    let expiry = expiry.min(Duration::from_secs(15 * 60));
    println!(
        "soak: load stopped; waiting {:.0} s for abandoned allocations to expire",
        expiry.as_secs_f64()
    );
    tokio::time::sleep(expiry).await;
    // The half-open and garbage connections are closed by now; give the server's workers a
    // status publication to catch up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    probe(&load).await;
    let end = sampler.sample(&load).await?;
    print_sample("end (idle)", &end, &start, &load);
    for task in echo_tasks {
        task.abort();
    }

    let passed = verdict(args, target, &load, &start, &warm, &loaded, &end, &samples);
    if interrupted {
        println!(
            "soak: interrupted before the planned {} minutes",
            args.minutes
        );
    }
    Ok(passed)
}

/// Checks that the target serves what the load needs, with a clear error otherwise: each
/// credential allocates, and peers across 127.0.0.0/8 are allowed.
async fn check_target(load: &Load) -> Result<(), String> {
    for (which, credentials) in load.credentials.iter().enumerate() {
        let mut client = load
            .connect(Transport::Udp, PROBE_IP, which)
            .await
            .map_err(|e| format!("UDP client: {e}"))?;
        client.allocate(None).await.map_err(|e| {
            let hint = match credentials {
                Credentials::Rest { .. } if e.code() == Some(401) => {
                    " (is --secret right, and the server's auth.max-rest-ttl at least the run \
                         and 30 minutes?)"
                }
                _ => "",
            };
            format!("allocate as {credentials:?}: {e}{hint}")
        })?;
        let elsewhere = SocketAddr::from(([127, 0, 1, 1], 9));
        match client.create_permission(&[load.peers[0], elsewhere]).await {
            Err(e) if e.code() == Some(403) => {
                return Err(
                    "the server refuses peers on 127.0.0.0/8: its [peers] allow must \
                            include \"127.0.0.0/8\""
                        .into(),
                );
            }
            Err(e) => return Err(format!("CreatePermission: {e}")),
            Ok(()) => {}
        }
        client
            .refresh(Duration::ZERO)
            .await
            .map_err(|e| format!("Refresh 0: {e}"))?;
    }
    if load.tls.is_some() {
        let mut client = load
            .connect(Transport::Tls, PROBE_IP, 0)
            .await
            .map_err(|e| format!("TLS client: {e}"))?;
        client
            .binding()
            .await
            .map_err(|e| format!("Binding over TLS: {e}"))?;
    }
    Ok(())
}

/// A UDP echo peer: sends every datagram back to where it came from.
async fn echo(load: Arc<Load>, socket: UdpSocket) {
    let mut buf = vec![0u8; 0x10000];
    loop {
        // Errors are ICMP reports of earlier sends; the peer goes on.
        if let Ok((n, from)) = socket.recv_from(&mut buf).await {
            if socket.send_to(&buf[..n], from).await.is_ok() {
                Tally::add(&load.tally.echoed, 1);
            }
        }
    }
}

/// A liveness probe between the load: a Binding from an address nobody else uses.
async fn probe(load: &Load) {
    let result = match load.connect(Transport::Udp, PROBE_IP, 0).await {
        Ok(mut client) => client.binding().await.map(|_| ()),
        Err(e) => Err(e),
    };
    Tally::add(&load.tally.probes, 1);
    if let Err(e) = result {
        load.tally.fail(format!("probe Binding: {e}"));
    }
}

// ---------------------------------------------------------------------------------------------
// The server's figures.

struct Sampler {
    pid: u32,
    api: SocketAddr,
    token: String,
}

/// The server's figures at one moment.
#[derive(Clone, Debug)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
    allocations: u64,
    by_transport: [u64; 3],
    to_peer_packets: u64,
    to_client_packets: u64,
    tcp_connections: u64,
    /// `drops` of the status API, by reason.
    drops: Vec<(String, u64)>,
    /// The kernel's UDP receive and send buffer errors (RcvbufErrors + SndbufErrors).
    kernel_udp_drops: u64,
    /// Of those, the drops counted on the UDP sockets the server and the soak have open now.
    socket_drops: u64,
    /// CPU time (user + system) the server and the soak itself have used.
    server_cpu: Duration,
    soak_cpu: Duration,
}

impl Sample {
    fn drop_count(&self, reason: &str) -> u64 {
        self.drops
            .iter()
            .find(|(r, _)| r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

impl Sampler {
    async fn sample(&self, load: &Load) -> Result<Sample, String> {
        let rss_kib = rss_kib(self.pid)?;
        let fds = open_fds(self.pid)?;
        let status = get_status(self.api, &self.token).await?;
        let number = |pointer: &str| status.pointer(pointer).and_then(|v| v.as_u64());
        let field = |pointer: &str| {
            number(pointer).ok_or(format!("/api/v1/status has no number at {pointer}"))
        };
        let drops = status["drops"]
            .as_object()
            .map(|drops| {
                drops
                    .iter()
                    .map(|(reason, n)| (reason.clone(), n.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Sample {
            at: load.began.elapsed(),
            rss_kib,
            fds,
            allocations: field("/allocations/total")?,
            by_transport: [
                field("/allocations/by_transport/udp")?,
                field("/allocations/by_transport/tcp")?,
                field("/allocations/by_transport/tls")?,
            ],
            to_peer_packets: field("/relayed/to_peer/packets")?,
            to_client_packets: field("/relayed/to_client/packets")?,
            tcp_connections: field("/tcp/connections")?,
            drops,
            kernel_udp_drops: kernel_udp_drops(),
            socket_drops: socket_drops(&[&self.pid.to_string(), "self"]),
            server_cpu: cpu_time(&self.pid.to_string())?,
            soak_cpu: cpu_time("self")?,
        })
    }
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).map_err(|e| format!("{path}: {e} (server gone?)"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .ok_or(format!("{path}: no VmRSS"))
}

/// CPU time (utime + stime) of process `pid` ("self" for this one), from /proc/<pid>/stat.
fn cpu_time(pid: &str) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // field 3, utime 14 and stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (Some(utime), Some(stime)) = (ticks(11), ticks(12)) else {
        return Err(format!("{path}: no utime and stime"));
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).unwrap_or(100).max(1);
    Ok(Duration::from_millis((utime + stime) * 1000 / per_second))
}

/// How many descriptors `pid` has open.
fn open_fds(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/fd");
    let entries = fs::read_dir(&path).map_err(|e| format!("{path}: {e}"))?;
    Ok(entries.count() as u64)
}

/// RcvbufErrors + SndbufErrors of the `Udp:` lines of /proc/net/snmp (0 if unreadable): the
/// datagrams this network namespace's kernel dropped for full socket buffers, whoever's.
fn kernel_udp_drops() -> u64 {
    let Ok(snmp) = fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(name, _)| matches!(*name, "RcvbufErrors" | "SndbufErrors"))
        .filter_map(|(_, value)| value.parse::<u64>().ok())
        .sum()
}

/// The `drops` of /proc/net/udp and /proc/net/udp6 summed over the sockets processes `pids`
/// have open (0 for what cannot be read).
fn socket_drops(pids: &[&str]) -> u64 {
    let mut inodes = std::collections::HashSet::new();
    for pid in pids {
        for entry in fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(link) = fs::read_link(entry.path()) {
                let link = link.to_string_lossy();
                if let Some(inode) = link
                    .strip_prefix("socket:[")
                    .and_then(|l| l.strip_suffix(']'))
                {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut drops = 0;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            if let (Some(inode), Some(count)) = (fields.get(9), fields.get(12)) {
                if inodes.contains(*inode) {
                    drops += count.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    drops
}

/// GET /api/v1/status with the bearer token, within 10 s.
async fn get_status(api: SocketAddr, token: &str) -> Result<serde_json::Value, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(api).await?;
        let request = format!(
            "GET /api/v1/status HTTP/1.1\r\nHost: turnpike\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("GET http://{api}/api/v1/status: no answer within 10 s"))?
        .map_err(|e| format!("GET http://{api}/api/v1/status: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("GET /api/v1/status: no HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(format!("GET /api/v1/status: {status} (is --token right?)"));
    }
    serde_json::from_str(body).map_err(|e| format!("GET /api/v1/status: not JSON: {e}"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_sample(label: &str, s: &Sample, start: &Sample, load: &Load) {
    let t = &load.tally;
    let get = Tally::get;
    let sent = Tally::total(&t.sent);
    let received = Tally::total(&t.received);
    let rtt_count = get(&t.rtt_count).max(1);
    println!(
        "[{label}] server: rss {:.1} MiB ({:+.1}), fds {} ({:+}), allocations {} (udp {}, tcp {}, \
         tls {}), tcp/tls connections {}",
        mib(s.rss_kib),
        mib(s.rss_kib) - mib(start.rss_kib),
        s.fds,
        s.fds as i64 - start.fds as i64,
        s.allocations,
        s.by_transport[0],
        s.by_transport[1],
        s.by_transport[2],
        s.tcp_connections,
    );
    println!(
        "    relayed since start: to peers {} packets, to clients {} | clients sent {}, got back \
         {} (udp {}/{}, tcp {}/{}, tls {}/{}), peers echoed {}; rtt mean {:.2} ms, max {:.1} ms",
        s.to_peer_packets - start.to_peer_packets,
        s.to_client_packets - start.to_client_packets,
        sent,
        received,
        get(&t.received[0]),
        get(&t.sent[0]),
        get(&t.received[1]),
        get(&t.sent[1]),
        get(&t.received[2]),
        get(&t.sent[2]),
        get(&t.echoed),
        get(&t.rtt_sum_us) as f64 / rtt_count as f64 / 1000.0,
        get(&t.rtt_max_us) as f64 / 1000.0,
    );
    println!(
        "    churn: {} allocated, {} deleted, {} connections closed, {} left to expire, {} \
         skipped | storms {} ({} refreshes) | {} permissions and {} channels added",
        get(&t.churn_allocated),
        get(&t.churn_deleted),
        get(&t.churn_closed),
        get(&t.churn_abandoned),
        get(&t.churn_skipped),
        get(&t.storms),
        get(&t.storm_refreshes),
        get(&t.permissions_added),
        get(&t.channels_bound),
    );
    println!(
        "    hostile: {} malformed and {} oversized datagrams, {} garbage and {} half-open \
         connections ({} closed by the server, {} overdue), flood {} sent / {} answered",
        get(&t.malformed_sent),
        get(&t.oversized_sent),
        get(&t.garbage_connections),
        get(&t.half_open_connections),
        get(&t.hostile_closed),
        get(&t.hostile_overdue),
        get(&t.flood_sent),
        get(&t.flood_answered),
    );
    let drops: Vec<String> = s
        .drops
        .iter()
        .map(|(reason, n)| format!("{reason} {}", n.saturating_sub(start.drop_count(reason))))
        .collect();
    println!(
        "    server drops since start: {} | kernel UDP buffer drops {} in the namespace, {} on \
         the server's and the soak's open sockets | probes {} | failures {}",
        drops.join(", "),
        s.kernel_udp_drops.saturating_sub(start.kernel_udp_drops),
        s.socket_drops,
        get(&t.probes),
        get(&t.failures),
    );
    let wall = s.at.saturating_sub(start.at).as_secs_f64().max(1e-3);
    let share =
        |now: Duration, then: Duration| 100.0 * now.saturating_sub(then).as_secs_f64() / wall;
    println!(
        "    CPU since start: server {:.1} s ({:.0}% of one core), soak {:.1} s ({:.0}%)",
        s.server_cpu.saturating_sub(start.server_cpu).as_secs_f64(),
        share(s.server_cpu, start.server_cpu),
        s.soak_cpu.saturating_sub(start.soak_cpu).as_secs_f64(),
        share(s.soak_cpu, start.soak_cpu),
    );
}

// ---------------------------------------------------------------------------------------------
// Long-lived allocations.

/// Bytes at the start of each data payload: client id, sequence number, send time (ns).
const STAMP_LEN: usize = 4 + 8 + 8;

/// The stamp of an echo, or `None` for a payload too short to carry one.
fn read_stamp(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let id = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?);
    let seq = u64::from_be_bytes(payload.get(4..12)?.try_into().ok()?);
    let nanos = u64::from_be_bytes(payload.get(12..STAMP_LEN)?.try_into().ok()?);
    Some((id, seq, nanos))
}

fn write_stamp(payload: &mut [u8], id: u32, seq: u64, nanos: u64) {
    payload[..4].copy_from_slice(&id.to_be_bytes());
    payload[4..12].copy_from_slice(&seq.to_be_bytes());
    payload[12..STAMP_LEN].copy_from_slice(&nanos.to_be_bytes());
}

/// The stamp of the next relayed payload: `Ok(None)` for one without a stamp. Cancel-safe.
async fn recv_stamp(client: &mut Client) -> Result<Option<(u32, u64, u64)>, ClientError> {
    Ok(read_stamp(client.recv().await?.payload()))
}

/// Which sequence numbers came back, to catch duplicates.
#[derive(Default)]
struct Seen(Vec<u64>);

impl Seen {
    /// Marks `seq`: false if it was marked already.
    fn mark(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        let fresh = self.0[word] & (1 << bit) == 0;
        self.0[word] |= 1 << bit;
        fresh
    }
}

/// One allocation for the whole run, sending `rate` stamped packets a second to an echo peer on
/// a channel or in Send indications, refreshing allocation and channel or permission every
/// 20 s; at the stop, waits for the last echoes and deletes the allocation.
async fn long_lived(
    load: Arc<Load>,
    mut stop: watch::Receiver<bool>,
    transport: Transport,
    channel: bool,
    which: usize,
    rate: u32,
) {
    let name = format!(
        "long-lived {transport} {}",
        if channel { "channel" } else { "send" }
    );
    let id = u32::try_from(which).unwrap_or(u32::MAX);
    let peer = load.peers[which % load.peers.len()];
    let number = 0x4000 + u16::try_from(which).unwrap_or(0);
    let slot = slot(transport);
    let mut client = match load.connect(transport, LONG_LIVED_IP, which).await {
        Ok(client) => client,
        Err(e) => return load.tally.fail(format!("{name}: connect: {e}")),
    };
    if let Err(e) = client.allocate(Some(HELD_LIFETIME)).await {
        return load.tally.fail(format!("{name}: Allocate: {e}"));
    }
    let setup = if channel {
        client.channel_bind(number, peer).await
    } else {
        client.create_permission(&[peer]).await
    };
    if let Err(e) = setup {
        return load.tally.fail(format!("{name}: setup: {e}"));
    }

    let mut send_tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    send_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let keep_every = Duration::from_secs(20);
    let mut keep_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + keep_every, keep_every);
    let mut payload = [0u8; 512];
    let mut sent: u64 = 0;
    let mut received: u64 = 0;
    let mut seen = Seen::default();
    // Counts an echo: whether it was one of ours, not seen before.
    let mut record = |stamp: Option<(u32, u64, u64)>, sent: u64| match stamp {
        Some((from, seq, nanos)) if from == id && seq < sent && seen.mark(seq) => {
            Tally::add(&load.tally.received[slot], 1);
            let now = u64::try_from(load.began.elapsed().as_nanos()).unwrap_or(u64::MAX);
            load.tally
                .rtt(Duration::from_nanos(now.saturating_sub(nanos)));
            1
        }
        other => {
            load.tally
                .fail(format!("{name}: unexpected echo {other:?} (sent {sent})"));
            0
        }
    };
    while !stopped(&stop) {
        tokio::select! {
            _ = stop.changed() => break,
            _ = send_tick.tick() => {
                let len = 64 + (sent % 449) as usize;
                let nanos = u64::try_from(load.began.elapsed().as_nanos()).unwrap_or(u64::MAX);
                write_stamp(&mut payload, id, sent, nanos);
                let result = if channel {
                    client.send_channel_data(number, &payload[..len]).await
                } else {
                    client.send_indication(peer, &payload[..len]).await
                };
                if let Err(e) = result {
                    load.tally.fail(format!("{name}: send: {e}"));
                    break;
                }
                sent += 1;
                Tally::add(&load.tally.sent[slot], 1);
            }
            _ = keep_tick.tick() => {
                let kept = match client.refresh(HELD_LIFETIME).await {
                    Ok(_) if channel => client.channel_bind(number, peer).await,
                    Ok(_) => client.create_permission(&[peer]).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = kept {
                    load.tally.fail(format!("{name}: refresh: {e}"));
                    break;
                }
            }
            echo = recv_stamp(&mut client) => match echo {
                Ok(stamp) => received += record(stamp, sent),
                Err(e) => {
                    load.tally.fail(format!("{name}: receive: {e}"));
                    break;
                }
            },
        }
    }
    let deadline = tokio::time::Instant::now() + ECHO_WAIT;
    while received < sent {
        match tokio::time::timeout_at(deadline, recv_stamp(&mut client)).await {
            Ok(Ok(stamp)) => received += record(stamp, sent),
            Ok(Err(e)) => {
                load.tally.fail(format!("{name}: receive: {e}"));
                break;
            }
            Err(_) => break,
        }
    }
    if let Err(e) = client.refresh(Duration::ZERO).await {
        load.tally.fail(format!("{name}: Refresh 0: {e}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Allocation churn.

/// Churn sessions in flight at most; a tick that finds them all busy is skipped.
const CHURN_IN_FLIGHT: usize = 32;

async fn churn(load: Arc<Load>, mut stop: watch::Receiver<bool>, per_second: u32) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(CHURN_IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0usize;
    while !stopped(&stop) {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                match in_flight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let load = load.clone();
                        tokio::spawn(async move {
                            churn_one(&load, n).await;
                            drop(permit);
                        });
                    }
                    Err(_) => Tally::add(&load.tally.churn_skipped, 1),
                }
                n += 1;
            }
        }
    }
    // Sessions end on their own (each wait in them is bounded).
    let all = u32::try_from(CHURN_IN_FLIGHT).unwrap_or(u32::MAX);
    let _ = in_flight.acquire_many(all).await;
}

/// One churn session: allocate, 1–3 channels to echo peers, permissions for 1–4 addresses
/// that never send, 5 packets relayed and echoed, then delete it (8 in 10), or drop the client
/// (2 in 10: a TCP/TLS allocation ends with its connection, a UDP one is left to expire).
async fn churn_one(load: &Load, n: usize) {
    let transports = load.transports();
    let transport = transports[n % transports.len()];
    let slot = slot(transport);
    let spread = CHURN_IPS.end() - CHURN_IPS.start() + 1;
    let ip = Ipv4Addr::new(
        127,
        0,
        0,
        CHURN_IPS.start() + (n % usize::from(spread)) as u8,
    );
    let name = format!("churn {n} ({transport})");
    let mut client = match load.connect(transport, ip, n / transports.len()).await {
        Ok(client) => client,
        Err(e) => return load.tally.fail(format!("{name}: connect: {e}")),
    };
    let allocation = match client.allocate(None).await {
        Ok(allocation) => allocation,
        Err(e) => return load.tally.fail(format!("{name}: Allocate: {e}")),
    };
    Tally::add(&load.tally.churn_allocated, 1);
    let channels = 1 + n % 3;
    for k in 0..channels {
        let number = 0x4000 + k as u16;
        if let Err(e) = client.channel_bind(number, load.peers[k]).await {
            return load.tally.fail(format!("{name}: ChannelBind: {e}"));
        }
        Tally::add(&load.tally.channels_bound, 1);
    }
    let silent: Vec<SocketAddr> = (0..1 + n % 4)
        .map(|k| SocketAddr::from(([127, 0, 1, 1 + ((n * 7 + k) % 250) as u8], 9)))
        .collect();
    if let Err(e) = client.create_permission(&silent).await {
        return load.tally.fail(format!("{name}: CreatePermission: {e}"));
    }
    Tally::add(&load.tally.permissions_added, silent.len() as u64);
    for i in 0..5u64 {
        let mut payload = [0u8; 100];
        write_stamp(&mut payload, 1_000_000 + (n as u32 % 1_000_000), i, 0);
        let result = if i == 4 {
            // The first peer has a channel, so the echo comes back as ChannelData.
            client.send_indication(load.peers[0], &payload).await
        } else {
            client
                .send_channel_data(0x4000 + (i as usize % channels) as u16, &payload)
                .await
        };
        if let Err(e) = result {
            return load.tally.fail(format!("{name}: send: {e}"));
        }
        Tally::add(&load.tally.sent[slot], 1);
        match tokio::time::timeout(ECHO_WAIT, client.recv()).await {
            Ok(Ok(data)) if data.payload() == payload => {
                Tally::add(&load.tally.received[slot], 1);
            }
            Ok(Ok(data)) => {
                let stamp = read_stamp(data.payload());
                return load
                    .tally
                    .fail(format!("{name}: echo {stamp:?} is not packet {i}"));
            }
            Ok(Err(e)) => return load.tally.fail(format!("{name}: receive: {e}")),
            Err(_) => {} // Lost: counted as sent minus received.
        }
    }
    if n % 10 < 2 {
        if transport == Transport::Udp {
            let expires = load.ms_since_start()
                + u64::try_from(allocation.lifetime.as_millis()).unwrap_or(u64::MAX);
            load.tally
                .abandoned_until_ms
                .fetch_max(expires, Ordering::Relaxed);
            Tally::add(&load.tally.churn_abandoned, 1);
        } else {
            Tally::add(&load.tally.churn_closed, 1);
        }
        drop(client);
    } else {
        match client.refresh(Duration::ZERO).await {
            Ok(_) => Tally::add(&load.tally.churn_deleted, 1),
            Err(e) => load.tally.fail(format!("{name}: Refresh 0: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Refresh storms.

/// A pool of idle allocations (UDP, TCP and TLS) refreshed all at once every `every`, each
/// time with a new permission and a new channel (to peers that never send), which then expire
/// on their own: permission and channel churn on long-lived allocations.
async fn storms(load: Arc<Load>, mut stop: watch::Receiver<bool>, size: usize, every: Duration) {
    let transports = load.transports();
    let mut pool = Vec::new();
    for i in 0..size {
        // Mostly UDP, as in real deployments.
        let transport = if i % 5 < 3 {
            Transport::Udp
        } else {
            transports[(i % 5 - 2) % transports.len()]
        };
        match load.connect(transport, STORM_IP, i).await {
            Ok(mut client) => match client.allocate(Some(HELD_LIFETIME)).await {
                Ok(_) => pool.push(client),
                Err(e) => load.tally.fail(format!("storm pool {i}: Allocate: {e}")),
            },
            Err(e) => load.tally.fail(format!("storm pool {i}: connect: {e}")),
        }
        if stopped(&stop) {
            break;
        }
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut round: u32 = 0;
    while !stopped(&stop) {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                round += 1;
                let storm = pool
                    .iter_mut()
                    .enumerate()
                    .map(|(i, client)| storm_one(&load, client, i, round));
                futures_util::future::join_all(storm).await;
                Tally::add(&load.tally.storms, 1);
            }
        }
    }
    let deletes = pool.iter_mut().map(|client| client.refresh(Duration::ZERO));
    for result in futures_util::future::join_all(deletes).await {
        if let Err(e) = result {
            load.tally.fail(format!("storm pool: Refresh 0: {e}"));
        }
    }
}

/// One allocation's part of a storm: Refresh, a permission for a new address, a channel to a
/// new peer (numbers and peers cycle slowly enough to have expired before they come back).
async fn storm_one(load: &Load, client: &mut Client, i: usize, round: u32) {
    let name = format!("storm {round} allocation {i}");
    if let Err(e) = client.refresh(HELD_LIFETIME).await {
        return load.tally.fail(format!("{name}: Refresh: {e}"));
    }
    Tally::add(&load.tally.storm_refreshes, 1);
    let permission = SocketAddr::from(([127, 0, 2, 1 + (round % 250) as u8], 9));
    if let Err(e) = client.create_permission(&[permission]).await {
        return load.tally.fail(format!("{name}: CreatePermission: {e}"));
    }
    Tally::add(&load.tally.permissions_added, 1);
    let number = 0x4000 + (round % 0x400) as u16;
    let peer = SocketAddr::from((
        [127, 0, 3, 1 + (i % 250) as u8],
        20_000 + (round % 20_000) as u16,
    ));
    if let Err(e) = client.channel_bind(number, peer).await {
        return load.tally.fail(format!("{name}: ChannelBind: {e}"));
    }
    Tally::add(&load.tally.channels_bound, 1);
}

// ---------------------------------------------------------------------------------------------
// Hostile traffic.

/// Malformed datagrams, 50 a second, and oversized ones (9,000 bytes every second, 65,000 every
/// 10 s), from 127.0.0.66. Answers (400, 420, 401, rate-limited) are read and thrown away.
async fn malformed(load: Arc<Load>, mut stop: watch::Receiver<bool>) {
    let socket = match UdpSocket::bind(SocketAddr::from((MALFORMED_IP, 0))).await {
        Ok(socket) => socket,
        Err(e) => return load.tally.fail(format!("malformed: bind: {e}")),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut buf = vec![0u8; 0x10000];
    let mut round: u64 = 0;
    while !stopped(&stop) {
        tokio::select! {
            _ = stop.changed() => break,
            _ = socket.recv_from(&mut buf) => {}
            _ = tick.tick() => {
                round += 1;
                for kind in 0..5 {
                    let datagram = malformed_datagram((round * 5 + kind) % 9);
                    if socket.send_to(&datagram, load.udp).await.is_ok() {
                        Tally::add(&load.tally.malformed_sent, 1);
                    }
                }
                if round % 10 == 0 {
                    let size = if round % 100 == 0 { 65_000 } else { 9_000 };
                    let mut datagram = vec![0u8; size];
                    rand::rng().fill(&mut datagram[..]);
                    // A Binding request header claiming the whole datagram, so it is read as
                    // STUN before it fails.
                    let claimed = ((size - 20) as u16 & !3).to_be_bytes();
                    datagram[..8].copy_from_slice(&[0, 1, claimed[0], claimed[1], 0x21, 0x12, 0xA4, 0x42]);
                    if socket.send_to(&datagram, load.udp).await.is_ok() {
                        Tally::add(&load.tally.oversized_sent, 1);
                    }
                }
            }
        }
    }
}

/// One malformed datagram of kind `kind` (0..9).
fn malformed_datagram(kind: u64) -> Vec<u8> {
    let mut rng = rand::rng();
    let tid = TransactionId(rng.random());
    let mut buf = vec![0u8; 512];
    let stun = |buf: &mut [u8], method, class, attrs: &dyn Fn(&mut MessageWriter<'_>)| {
        MessageWriter::new(buf, method, class, tid)
            .map(|mut w| {
                attrs(&mut w);
                w.finish()
            })
            .unwrap_or(0)
    };
    match kind {
        // Random bytes.
        0 => {
            let len = rng.random_range(1..200);
            rng.fill(&mut buf[..len]);
            buf.truncate(len);
        }
        // A header whose length field disagrees with the datagram.
        1 => {
            let n = stun(&mut buf, Method::BINDING, Class::Request, &|_| {});
            buf.truncate(n + 8);
            buf[3] = 40;
        }
        // A FINGERPRINT that does not match.
        2 => {
            let n = stun(&mut buf, Method::BINDING, Class::Request, &|w| {
                let _ = w.fingerprint();
            });
            buf.truncate(n);
            buf[n - 1] ^= 0xFF;
        }
        // An attribute that runs past the end.
        3 => {
            let n = stun(&mut buf, Method::ALLOCATE, Class::Request, &|w| {
                let _ = w.requested_transport(17);
            });
            buf.truncate(n);
            buf[22..24].copy_from_slice(&200u16.to_be_bytes());
        }
        // An unknown comprehension-required attribute (420, rate-limited).
        4 => {
            let n = stun(&mut buf, Method::ALLOCATE, Class::Request, &|w| {
                let _ = w.attribute(0x7F01, b"????");
            });
            buf.truncate(n);
        }
        // ChannelData from a client without an allocation.
        5 => {
            buf.truncate(4 + 64);
            buf[..4].copy_from_slice(&[0x40, 0x00, 0x00, 64]);
        }
        // An unsolicited success response.
        6 => {
            let n = stun(&mut buf, Method::ALLOCATE, Class::Success, &|w| {
                let _ = w.u32(attr::LIFETIME, 600);
            });
            buf.truncate(n);
        }
        // A Send indication without an allocation.
        7 => {
            let n = stun(&mut buf, Method::SEND, Class::Indication, &|w| {
                let _ = w.xor_address(
                    attr::XOR_PEER_ADDRESS,
                    SocketAddr::from(([127, 0, 0, 1], 9)),
                );
                let _ = w.attribute(attr::DATA, b"hostile");
            });
            buf.truncate(n);
        }
        // A request with a MESSAGE-INTEGRITY but no USERNAME, REALM or NONCE.
        _ => {
            let n = stun(&mut buf, Method::REFRESH, Class::Request, &|w| {
                let _ = w.message_integrity(b"nobody");
            });
            buf.truncate(n);
        }
    }
    buf
}

/// Waits until the server closes `stream` (EOF or reset) or `within` passes: whether it did.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut sink = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// A TCP connection from `ip` to `server`.
async fn connect_from(ip: Ipv4Addr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((ip, 0)))?;
    socket.connect(server).await
}

/// Once a second, alternately on the TCP and TLS listeners: a connection from 127.0.0.70 that
/// sends 256 bytes of garbage, which the server must close within 5 s.
async fn garbage_streams(load: Arc<Load>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    let mut open = tokio::task::JoinSet::new();
    while !stopped(&stop) {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                n += 1;
                let server = match load.tls {
                    Some(tls) if n % 2 == 0 => tls,
                    _ => load.tcp,
                };
                let load = load.clone();
                open.spawn(async move {
                    let mut stream = match connect_from(Ipv4Addr::new(127, 0, 0, 70), server).await {
                        Ok(stream) => stream,
                        Err(e) => return load.tally.fail(format!("garbage connection: {e}")),
                    };
                    Tally::add(&load.tally.garbage_connections, 1);
                    let mut garbage = [0u8; 256];
                    rand::rng().fill(&mut garbage[..]);
                    garbage[0] |= 0x80; // Neither STUN nor ChannelData nor a TLS record.
                    let _ = stream.write_all(&garbage).await;
                    if closed_within(&mut stream, Duration::from_secs(5)).await {
                        Tally::add(&load.tally.hostile_closed, 1);
                    } else {
                        Tally::add(&load.tally.hostile_overdue, 1);
                        load.tally.fail(format!("garbage connection to {server} still open after 5 s"));
                    }
                });
            }
            Some(_) = open.join_next(), if !open.is_empty() => {}
        }
    }
    while open.join_next().await.is_some() {}
}

/// One slot of half-open connections from 127.0.0.71: on TCP, half a STUN header then
/// silence; on TLS (every third slot), a handshake never started. The server must close each
/// within `stream-idle-timeout` + 5 s; then the slot opens the next.
async fn half_open(load: Arc<Load>, stop: watch::Receiver<bool>, slot: usize) {
    let server = match load.tls {
        Some(tls) if slot % 3 == 2 => tls,
        _ => load.tcp,
    };
    let bound = load.stream_idle_timeout + Duration::from_secs(5);
    // Stagger the slots over the idle timeout.
    tokio::time::sleep(load.stream_idle_timeout / 12 * u32::try_from(slot).unwrap_or(0)).await;
    while !stopped(&stop) {
        let mut stream = match connect_from(Ipv4Addr::new(127, 0, 0, 71), server).await {
            Ok(stream) => stream,
            Err(e) => {
                load.tally.fail(format!("half-open connection: {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        Tally::add(&load.tally.half_open_connections, 1);
        if server == load.tcp {
            let _ = stream
                .write_all(&[0x00, 0x03, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42, 1, 2])
                .await;
        }
        let opened = Instant::now();
        if closed_within(&mut stream, bound).await {
            Tally::add(&load.tally.hostile_closed, 1);
        } else {
            Tally::add(&load.tally.hostile_overdue, 1);
            load.tally.fail(format!(
                "half-open connection to {server} still open after {:.1} s",
                opened.elapsed().as_secs_f64()
            ));
        }
    }
}

/// Unauthenticated Allocates from 127.0.0.99 at `per_second`, answers counted: the server may
/// answer at most its `unauthenticated-burst`, then its `unauthenticated-rate` a second (the
/// flood never authenticates, so nothing is paid back).
async fn flood(load: Arc<Load>, mut stop: watch::Receiver<bool>, per_second: u32) {
    let socket = match UdpSocket::bind(SocketAddr::from((FLOOD_IP, 0))).await {
        Ok(socket) => socket,
        Err(e) => return load.tally.fail(format!("flood: bind: {e}")),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut request = [0u8; 64];
    let mut answer = [0u8; 1500];
    let flooding = Instant::now();
    while !stopped(&stop) {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                let tid = TransactionId(rand::rng().random());
                let written = MessageWriter::new(&mut request, Method::ALLOCATE, Class::Request, tid)
                    .and_then(|mut w| {
                        w.requested_transport(17)?;
                        Ok(w.finish())
                    });
                if let Ok(n) = written {
                    if socket.send_to(&request[..n], load.udp).await.is_ok() {
                        Tally::add(&load.tally.flood_sent, 1);
                    }
                }
            }
            Ok((n, _)) = socket.recv_from(&mut answer) => {
                if n >= 20 {
                    Tally::add(&load.tally.flood_answered, 1);
                }
            }
        }
    }
    let ran = u64::try_from(flooding.elapsed().as_millis()).unwrap_or(u64::MAX);
    Tally::add(&load.tally.flood_ms, ran);
    // Answers still on their way.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Ok(_)) = tokio::time::timeout_at(deadline, socket.recv_from(&mut answer)).await {
        Tally::add(&load.tally.flood_answered, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// The verdict.

/// The least-squares slope of the RSS over `samples` in MiB per hour, and the time they span;
/// `None` for fewer than 3.
fn rss_trend(samples: &[Sample]) -> Option<(f64, Duration)> {
    if samples.len() < 3 {
        return None;
    }
    let points: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.at.as_secs_f64() / 3600.0, mib(s.rss_kib)))
        .collect();
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(sxy, sxx), (x, y)| {
        (sxy + (x - mx) * (y - my), sxx + (x - mx) * (x - mx))
    });
    let span = samples.last()?.at.saturating_sub(samples.first()?.at);
    (sxx > 0.0).then(|| (sxy / sxx, span))
}

/// Prints each check and whether it passed; true if all did.
#[allow(clippy::too_many_arguments)]
fn verdict(
    args: &Args,
    target: &Target,
    load: &Load,
    start: &Sample,
    warm: &Sample,
    loaded: &Sample,
    end: &Sample,
    samples: &[Sample],
) -> bool {
    let t = &load.tally;
    let get = Tally::get;
    let mut passed = true;
    let mut check = |ok: bool, what: String| {
        println!("{} {what}", if ok { "PASS" } else { "FAIL" });
        passed &= ok;
    };
    println!();
    println!(
        "| figure | start (idle) | after {:.0} s (load) | end of load | end (idle) |",
        warm.at.as_secs_f64()
    );
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| server RSS | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        mib(start.rss_kib),
        mib(warm.rss_kib),
        mib(loaded.rss_kib),
        mib(end.rss_kib)
    );
    println!(
        "| open descriptors | {} | {} | {} | {} |",
        start.fds, warm.fds, loaded.fds, end.fds
    );
    println!(
        "| live allocations | {} | {} | {} | {} |",
        start.allocations, warm.allocations, loaded.allocations, end.allocations
    );
    let cpu = |s: &Sample| s.server_cpu.saturating_sub(start.server_cpu).as_secs_f64();
    println!(
        "| server CPU since start | 0 s | {:.1} s | {:.1} s | {:.1} s |",
        cpu(warm),
        cpu(loaded),
        cpu(end)
    );
    println!(
        "| relayed packets (to peers + to clients) | {} | {} | {} | {} |",
        start.to_peer_packets + start.to_client_packets,
        warm.to_peer_packets + warm.to_client_packets,
        loaded.to_peer_packets + loaded.to_client_packets,
        end.to_peer_packets + end.to_client_packets
    );
    println!();
    // The RSS trend under load, over all the reports and over the second half of the run
    // (once the tables of channels and permissions have filled, 15 minutes in, a rise there is
    // the sign of a leak).
    let half = samples.len() / 2;
    for (what, reports) in [("all reports", samples), ("second half", &samples[half..])] {
        if let Some((slope, span)) = rss_trend(reports) {
            println!(
                "RSS trend under load ({what}): {slope:+.2} MiB/hour over {} reports spanning \
                 {:.1} min",
                reports.len(),
                span.as_secs_f64() / 60.0
            );
        }
    }

    let growth = mib(end.rss_kib) - mib(warm.rss_kib);
    check(
        growth <= args.max_rss_growth_mib,
        format!(
            "RSS after the load {:.1} MiB vs {:.1} MiB at the first report: {growth:+.1} MiB \
             (limit {:+.1})",
            mib(end.rss_kib),
            mib(warm.rss_kib),
            args.max_rss_growth_mib
        ),
    );
    check(
        end.fds <= start.fds + args.max_fd_growth,
        format!(
            "descriptors after the load {} vs {} before it (limit +{})",
            end.fds, start.fds, args.max_fd_growth
        ),
    );
    check(
        end.allocations == start.allocations,
        format!(
            "live allocations after the load {} vs {} before it",
            end.allocations, start.allocations
        ),
    );

    // Loss: streams must lose nothing the server did not drop on purpose; UDP may lose what
    // full socket buffers dropped in the kernel.
    let server_drops = |s: &Sample| s.drop_count("bandwidth") + s.drop_count("no_permission");
    let explained_by_server = server_drops(end).saturating_sub(server_drops(start));
    let kernel = end.kernel_udp_drops.saturating_sub(start.kernel_udp_drops);
    let lost: Vec<u64> = (0..3)
        .map(|i| get(&t.sent[i]).saturating_sub(get(&t.received[i])))
        .collect();
    let stream_lost = lost[1] + lost[2];
    check(
        stream_lost <= explained_by_server,
        format!(
            "TCP/TLS packets lost {} (tcp {}/{}, tls {}/{} came back); server bandwidth and \
             permission drops {explained_by_server}",
            stream_lost,
            get(&t.received[1]),
            get(&t.sent[1]),
            get(&t.received[2]),
            get(&t.sent[2]),
        ),
    );
    check(
        lost[0] <= explained_by_server.saturating_sub(stream_lost) + kernel,
        format!(
            "UDP packets lost {} ({}/{} came back); explained by server drops {} and kernel UDP \
             buffer drops {kernel} (namespace-wide, whoever's; {} on the server's and the \
             soak's sockets open at the end of the load)",
            lost[0],
            get(&t.received[0]),
            get(&t.sent[0]),
            explained_by_server.saturating_sub(stream_lost),
            loaded.socket_drops,
        ),
    );
    println!(
        "     relayed by the server: {} to peers, {} to clients; sent by the clients {}, echoed \
         by the peers {}, received by the clients {}",
        end.to_peer_packets - start.to_peer_packets,
        end.to_client_packets - start.to_client_packets,
        Tally::total(&t.sent),
        get(&t.echoed),
        Tally::total(&t.received)
    );

    check(
        get(&t.hostile_overdue) == 0 && get(&t.hostile_closed) > 0,
        format!(
            "hostile connections closed by the server in time: {} of {} (garbage within 5 s, \
             half-open within stream-idle-timeout {} s + 5 s)",
            get(&t.hostile_closed),
            get(&t.hostile_closed) + get(&t.hostile_overdue),
            target.stream_idle_timeout.as_secs()
        ),
    );
    let rate = f64::from(target.unauthenticated_rate);
    let flood_seconds = get(&t.flood_ms) as f64 / 1000.0;
    let answered = get(&t.flood_answered);
    let flood_sent = get(&t.flood_sent);
    if target.unauthenticated_rate == 0 {
        check(
            answered * 10 >= flood_sent * 9,
            format!(
                "unauthenticated flood: {answered} of {flood_sent} requests answered in \
                 {flood_seconds:.0} s (no rate limit: at least 90% expected)"
            ),
        );
    } else {
        // The limit is a GCRA: the burst, then the rate; one second of slack.
        let allowance = f64::from(target.unauthenticated_burst) + rate * (flood_seconds + 1.0);
        check(
            (answered as f64) <= allowance && answered > 0,
            format!(
                "unauthenticated flood: {answered} of {flood_sent} requests answered in \
                 {flood_seconds:.0} s (allowed at most {allowance:.0} at {} a second with a \
                 burst of {})",
                target.unauthenticated_rate, target.unauthenticated_burst
            ),
        );
    }
    let failures = get(&t.failures);
    check(
        failures == 0,
        format!("requests and connections that failed: {failures}"),
    );
    let samples_of_failures = t.failure_samples.lock().unwrap_or_else(|e| e.into_inner());
    for failure in samples_of_failures.iter() {
        println!("     {failure}");
    }
    if let Some(own) = &target.own {
        let errors = own.log.errors.load(Ordering::Relaxed);
        check(
            errors == 0,
            format!(
                "server log: {errors} errors, {} warnings",
                own.log.warnings.load(Ordering::Relaxed)
            ),
        );
    }
    passed
}
