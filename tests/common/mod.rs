//! Harness shared by the integration tests: starts the real server on ephemeral loopback ports,
//! makes certificates and credentials, and runs a UDP echo peer.
//!
//! The server is `turnpike` by default. `TURNPIKE_TEST_BACKEND=coturn` starts coturn's
//! `turnserver` from the same TOML instead: a reference run that shows the tests themselves
//! are right, so that a failure against turnpike is turnpike's.

// Each test file uses its own subset of the harness.
#![allow(dead_code)]

pub mod chromium;
pub mod http;
pub mod netns;
pub mod raw;
pub mod redis;
pub mod stun_client;
pub mod tls;
pub mod uclient;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{KeyInit, Mac};
use tempfile::TempDir;

/// How long a server may take to bind its listeners and say `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The relay port range every test configuration uses.
pub const RELAY_PORTS: std::ops::RangeInclusive<u16> = 40000..=60000;

/// Finds `name` on `PATH`, or fails the test: tools are installed by `scripts/test`.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} not found: run scripts/test, which installs it"))
}

/// What [`base_config`] puts in the TOML. `Default` is every transport, the static user
/// alice/wonderland, no REST secret, peers on 127.0.0.1 allowed, two workers, relay ports
/// [`RELAY_PORTS`], the kernel fast path off, nothing extra.
///
/// coturn cannot serve static users and REST secrets at once, so tests configure one or the
/// other.
#[derive(Clone, Debug)]
pub struct TestConfig {
    pub transports: Vec<&'static str>,
    pub users: Vec<(&'static str, &'static str)>,
    pub secrets: Vec<&'static str>,
    pub allow: Vec<&'static str>,
    pub workers: usize,
    pub relay_ports: std::ops::RangeInclusive<u16>,
    /// `[relay] offload`. "off" by default: the tests were written for the user-space relay
    /// (its batching, counters and timing), which the kernel fast path would otherwise take
    /// over for UDP channels whenever the tests run as root. Tests of the fast path, and
    /// clients that should pass over it, ask for "auto" or "on".
    pub offload: &'static str,
    /// TOML appended as is, e.g. a `[limits]` table.
    pub extra: String,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self {
            transports: vec!["udp", "tcp", "tls"],
            users: vec![("alice", "wonderland")],
            secrets: vec![],
            allow: vec!["127.0.0.1/32"],
            workers: 2,
            relay_ports: RELAY_PORTS,
            offload: "off",
            extra: String::new(),
        }
    }
}

impl TestConfig {
    /// REST API credentials only, with the shared secret `s3cret`.
    pub fn rest() -> Self {
        Self {
            users: vec![],
            secrets: vec!["s3cret"],
            ..Self::default()
        }
    }
}

/// Builds a turnpike TOML configuration with ephemeral listeners on 127.0.0.1. When `tls` is
/// among the transports, a fresh self-signed certificate is written into `dir`.
pub fn base_config(config: &TestConfig, dir: &Path) -> String {
    let quoted = |items: &[&str]| {
        let items: Vec<String> = items.iter().map(|item| format!("{item:?}")).collect();
        format!("[{}]", items.join(", "))
    };
    let mut toml = format!(
        "realm = \"turnpike.test\"\nsoftware = \"turnpike\"\nworkers = {}\n",
        config.workers
    );
    for transport in &config.transports {
        toml += &format!("\n[[listen]]\ntransport = {transport:?}\naddress = \"127.0.0.1:0\"\n");
    }
    if config.transports.contains(&"tls") {
        let (cert, key) = tls_cert(dir);
        toml += &format!("\n[tls]\ncertificate = {cert:?}\nprivate-key = {key:?}\n");
    }
    toml += &format!(
        "\n[relay]\naddress = \"127.0.0.1\"\nports = \"{}-{}\"\noffload = {:?}\n",
        config.relay_ports.start(),
        config.relay_ports.end(),
        config.offload,
    );
    toml += "\n[auth]\nnonce-lifetime = \"10m\"\n";
    if !config.secrets.is_empty() {
        toml += &format!("secrets = {}\n", quoted(&config.secrets));
    }
    for (name, password) in &config.users {
        toml += &format!("\n[[auth.users]]\nname = {name:?}\npassword = {password:?}\n");
    }
    toml += &format!("\n[peers]\nallow = {}\n", quoted(&config.allow));
    if !config.extra.is_empty() {
        toml += "\n";
        toml += &config.extra;
        toml += "\n";
    }
    toml
}

/// Writes a self-signed certificate for `127.0.0.1` and `localhost` into `dir`.
pub fn tls_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let certified = rcgen::generate_simple_self_signed(names).expect("generate a certificate");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    fs::write(&cert, certified.cert.pem()).expect("write cert.pem");
    fs::write(&key, certified.signing_key.serialize_pem()).expect("write key.pem");
    (cert, key)
}

/// TURN REST API credentials: username `<unix expiry>:<user>`, password
/// base64(HMAC-SHA1(secret, username)).
pub fn rest_credentials(secret: &str, user: &str, ttl: Duration) -> (String, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    rest_credentials_expiring(secret, user, (now + ttl).as_secs())
}

/// Like [`rest_credentials`], with the expiry given as a Unix time (past ones included).
pub fn rest_credentials_expiring(secret: &str, user: &str, expiry: u64) -> (String, String) {
    let username = format!("{expiry}:{user}");
    let mut mac =
        hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// How long [`Server::stats`] waits for the `stats` line after the signal.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// A running server; killed and reaped on drop.
pub struct Server {
    child: Child,
    listeners: Vec<(String, SocketAddr)>,
    /// The server's `stats` log lines, as the stderr reader thread sees them (turnpike only).
    stats_lines: Option<Mutex<mpsc::Receiver<String>>>,
    /// Every line the server has logged so far (the last [`LOG_LINES_KEPT`]).
    log: Log,
    dir: TempDir,
}

/// How many of a server's log lines [`Server::log`] keeps.
const LOG_LINES_KEPT: usize = 10_000;

/// The lines a server has logged, shared with the thread that reads them.
type Log = Arc<Mutex<std::collections::VecDeque<String>>>;

/// The counters of one `stats` log line (its `fields`).
#[derive(Clone, Debug)]
pub struct Stats(pub serde_json::Value);

impl Stats {
    /// How much counter `name` moved since `before` (an earlier line of the same server).
    pub fn since(&self, before: &Stats, name: &str) -> u64 {
        let (then, now) = (before.get(name), self.get(name));
        assert!(now >= then, "{name} went down from {then} to {now}");
        now - then
    }

    /// How much `offload_carried`, `to_peer_packets` and `to_client_packets` moved since
    /// `before`, printed under `what` for `--nocapture`.
    pub fn relayed_since(&self, before: &Stats, what: &str) -> (u64, u64, u64) {
        let moved = (
            self.since(before, "offload_carried"),
            self.since(before, "to_peer_packets"),
            self.since(before, "to_client_packets"),
        );
        eprintln!(
            "{what}: offload_carried {}, to_peer_packets {}, to_client_packets {}",
            moved.0, moved.1, moved.2
        );
        moved
    }

    /// The integer counter `name`; fails the test when the line lacks it.
    pub fn get(&self, name: &str) -> u64 {
        self.0[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no integer {name:?} in the stats line {}", self.0))
    }
}

impl Server {
    /// Starts a server configured by [`base_config`].
    pub fn with(config: &TestConfig) -> Server {
        let dir = tempfile::tempdir().expect("create a tempdir");
        let toml = base_config(config, dir.path());
        Self::start_in(&toml, dir)
    }

    /// Starts a server from a TOML configuration and waits until all its listeners are bound.
    pub fn start(toml: &str) -> Server {
        Self::start_in(toml, tempfile::tempdir().expect("create a tempdir"))
    }

    /// Starts turnpike (whatever `TURNPIKE_TEST_BACKEND` says) from a TOML configuration with
    /// environment variables set (`Some`) or removed (`None`), and waits until all its
    /// listeners are bound.
    pub fn start_with_env(toml: &str, envs: &[(&str, Option<&str>)]) -> Server {
        start_turnpike(toml, tempfile::tempdir().expect("create a tempdir"), envs)
    }

    /// Starts turnpike (whatever `TURNPIKE_TEST_BACKEND` says) inside the network namespace
    /// `netns` (`ip netns exec`, which becomes the server's process: signals reach it), from
    /// a TOML configuration, and waits until all its listeners are bound. Talk to it from
    /// [`netns::NetNs::run`]. Drop the server before the namespace.
    pub fn start_in_netns(netns: &netns::NetNs, toml: &str) -> Server {
        let dir = tempfile::tempdir().expect("create a tempdir");
        start_turnpike_in(&["ip", "netns", "exec", netns.name()], toml, dir, &[])
    }

    /// Starts turnpike as root with an empty capability bounding set (`setpriv`, which
    /// becomes the server's process): it cannot load eBPF programs, as an unprivileged
    /// service could not.
    pub fn start_without_capabilities(toml: &str, dir: TempDir) -> Server {
        let setpriv = require_tool("setpriv");
        let setpriv = setpriv.to_str().expect("a UTF-8 path");
        start_turnpike_in(
            &[setpriv, "--bounding-set=-all", "--inh-caps=-all", "--"],
            toml,
            dir,
            &[],
        )
    }

    /// Starts a server from a TOML configuration written into `dir` (where [`base_config`]
    /// put the certificate, if any), e.g. a [`base_config`] with top-level keys put in front.
    pub fn start_in(toml: &str, dir: TempDir) -> Server {
        match std::env::var("TURNPIKE_TEST_BACKEND").as_deref() {
            Err(_) | Ok("turnpike") => start_turnpike(toml, dir, &[]),
            Ok("coturn") => coturn::start(toml, dir),
            Ok(other) => panic!("TURNPIKE_TEST_BACKEND={other}: expected turnpike or coturn"),
        }
    }

    /// Starts coturn's `turnserver` configured by [`base_config`], whatever
    /// `TURNPIKE_TEST_BACKEND` says: for tests that run a client against both servers.
    pub fn coturn_with(config: &TestConfig) -> Server {
        let dir = tempfile::tempdir().expect("create a tempdir");
        let toml = base_config(config, dir.path());
        coturn::start(&toml, dir)
    }

    /// The first listener of `transport` ("udp", "tcp" or "tls").
    pub fn addr(&self, transport: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(t, _)| t == transport)
            .map(|(_, addr)| *addr)
            .unwrap_or_else(|| panic!("no {transport} listener among {:?}", self.listeners))
    }

    /// Every listener of `transport` ("udp", "tcp", "tls" or "http"), in the order the server
    /// logged them (its configuration's order).
    pub fn addrs(&self, transport: &str) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter(|(t, _)| t == transport)
            .map(|(_, addr)| *addr)
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The configuration file the server was started with (turnpike only), e.g. for the admin
    /// commands' `-c`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("turnpike.toml")
    }

    /// The lines the server has logged so far (the last 10,000), e.g. to count the `ERROR`s.
    pub fn log(&self) -> Vec<String> {
        let log = self.log.lock().expect("the log reader never panics");
        log.iter().cloned().collect()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll the server").is_none()
    }

    /// Whether this is turnpike (not coturn under `TURNPIKE_TEST_BACKEND=coturn`), whose
    /// counters [`Server::stats`] reads.
    pub fn is_turnpike(&self) -> bool {
        self.stats_lines.is_some()
    }

    /// The server's counters: sends SIGUSR1 and returns the fields of the `stats` line the
    /// server logs in answer. The server asks its workers for them, so they count everything
    /// the server had handled when the signal came (an answer the test has received, for one),
    /// with no wait; a datagram still queued in a socket is not handled yet.
    pub fn stats(&self) -> Stats {
        let lines = self
            .stats_lines
            .as_ref()
            .expect("the stats log line is turnpike's; the coturn backend has none")
            .lock()
            .expect("no test thread panics while holding the stats lines");
        while lines.try_recv().is_ok() {} // Older answers, e.g. of a timed-out earlier call.
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid fits pid_t");
        // SAFETY: kill(2) with a valid signal number has no memory-safety preconditions; the
        // child is not reaped before `self` is dropped, so the pid is still ours.
        let sent = unsafe { libc::kill(pid, libc::SIGUSR1) };
        assert_eq!(
            sent,
            0,
            "kill -USR1 {pid}: {}",
            std::io::Error::last_os_error()
        );
        let deadline = Instant::now() + STATS_TIMEOUT;
        loop {
            let line = match lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no stats line within {STATS_TIMEOUT:?} of SIGUSR1")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the server exited instead of logging stats on SIGUSR1")
                }
            };
            if let Some(fields) = stats_fields(&line) {
                return Stats(fields);
            }
        }
    }

    /// Reads [`Server::stats`] until counter `name` reaches `at_least`, the acknowledgement that
    /// the server has handled (and counted) what the test sent, e.g. a datagram it must drop;
    /// panics after `timeout`. Returns the counters that showed it.
    pub fn wait_for_counter(&self, name: &str, at_least: u64, timeout: Duration) -> Stats {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if stats.get(name) >= at_least {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "{name} still {} (not {at_least}) after {timeout:?}",
                stats.get(name)
            );
            // Each read is a round trip to every worker: no need to read faster.
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's resident set size (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {path}:\n{status}"))
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the server.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid fits pid_t");
        // SAFETY: as in `stats`: kill(2) has no memory-safety preconditions and the child is
        // not reaped before `self` is dropped or waited for.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            sent,
            0,
            "kill -{signal} {pid}: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits up to `timeout` for the server to exit by itself: its status, or `None` if it is
    /// still running (it is left running; drop kills it).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the server") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log lines (turnpike's JSON) whose message starts with `prefix`.
    pub fn log_messages(&self, prefix: &str) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|line| {
                line.contains(prefix)
                    && serde_json::from_str::<serde_json::Value>(line).is_ok_and(|event| {
                        event["fields"]["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with(prefix))
                    })
            })
            .collect()
    }

    /// Waits up to `timeout` until at least `count` log lines have a message starting with
    /// `prefix`; returns those lines (fewer when the deadline passed first).
    pub fn wait_for_log(&self, prefix: &str, count: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.log_messages(prefix);
            if lines.len() >= count || Instant::now() >= deadline {
                return lines;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server and waits for it to exit.
    pub fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill(); // Err only if it already exited; wait() reports that.
        self.child.wait().expect("wait for the server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Variables of the service manager's notification protocol. A server gets them only from
/// [`Server::start_with_env`], never from the test's own environment (e.g. a CI job run as a
/// systemd service), so that it does not notify the test runner's manager.
const NOTIFY_VARIABLES: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

fn start_turnpike(toml: &str, dir: TempDir, envs: &[(&str, Option<&str>)]) -> Server {
    start_turnpike_in(&[], toml, dir, envs)
}

/// Starts turnpike, through `wrapper` (a command that execs the rest of its arguments, such
/// as `ip netns exec NAME`) when it is not empty.
fn start_turnpike_in(
    wrapper: &[&str],
    toml: &str,
    dir: TempDir,
    envs: &[(&str, Option<&str>)],
) -> Server {
    let config = dir.path().join("turnpike.toml");
    fs::write(&config, toml).expect("write the configuration");
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(turnpike_binary());
            command
        }
        None => Command::new(turnpike_binary()),
    };
    for name in NOTIFY_VARIABLES {
        command.env_remove(name);
    }
    for (name, value) in envs {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    let mut child = command
        .arg("serve")
        .arg("-c")
        .arg(&config)
        .args(["--log-format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn turnpike");
    let log = Log::default();
    let lines = forward_lines(
        child.stderr.take().expect("stderr is piped"),
        "turnpike",
        log.clone(),
    );

    let deadline = Instant::now() + READY_TIMEOUT;
    let mut printed = Vec::new();
    let mut listeners = Vec::new();
    loop {
        let line = match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "turnpike did not print ready within {READY_TIMEOUT:?}; it printed:\n{}",
                    printed.join("\n")
                );
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().expect("wait for turnpike");
                panic!(
                    "turnpike exited ({status}) before ready; it printed:\n{}\nconfiguration:\n{toml}",
                    printed.join("\n")
                );
            }
        };
        if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
            let fields = &event["fields"];
            match fields["message"].as_str() {
                Some("listening") => {
                    let transport = fields["transport"].as_str().unwrap_or_default();
                    let address = fields["address"].as_str().unwrap_or_default();
                    let address = address
                        .parse()
                        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
                    listeners.push((transport.to_string(), address));
                }
                Some("ready") => break,
                _ => {}
            }
        }
        printed.push(line);
    }
    Server {
        child,
        listeners,
        stats_lines: Some(Mutex::new(lines)),
        log,
        dir,
    }
}

/// The turnpike binary the tests start: the one cargo built for them, or the one
/// `TURNPIKE_TEST_BIN` names (e.g. an older build, to show that a new regression test fails
/// against it).
pub fn turnpike_binary() -> PathBuf {
    match std::env::var_os("TURNPIKE_TEST_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_turnpike")),
    }
}

/// The `fields` of a turnpike JSON log line whose message is `stats`.
fn stats_fields(line: &str) -> Option<serde_json::Value> {
    if !line.contains("stats") {
        return None;
    }
    let mut event = serde_json::from_str::<serde_json::Value>(line).ok()?;
    let fields = event.get_mut("fields")?.take();
    (fields["message"] == "stats").then_some(fields)
}

/// Whether a turnpike JSON log line is the `ready` line.
fn is_ready(line: &str) -> bool {
    line.contains("ready")
        && serde_json::from_str::<serde_json::Value>(line)
            .is_ok_and(|event| event["fields"]["message"] == "ready")
}

/// Echoes each line of `stream` to the test's stderr (shown when the test fails), keeps it in
/// `log`, and sends it on the returned channel, which disconnects at end of stream. After
/// turnpike's `ready` line only `stats` lines are sent, so that the channel does not grow with
/// the log.
fn forward_lines(
    stream: impl std::io::Read + Send + 'static,
    name: &str,
    log: Log,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let name = name.to_string();
    thread::spawn(move || {
        let mut ready = false;
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{name}] {line}");
            if let Ok(mut log) = log.lock() {
                if log.len() == LOG_LINES_KEPT {
                    log.pop_front();
                }
                log.push_back(line.clone());
            }
            if !ready || stats_fields(&line).is_some() {
                ready = ready || is_ready(&line);
                let _ = tx.send(line); // Nobody may be listening; the echo above remains.
            }
        }
    });
    rx
}

/// Raises this process's open-file limit (inherited by the server it starts) to `wanted`.
pub fn raise_open_files(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by reference.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur >= wanted {
            return;
        }
        assert!(
            limit.rlim_max >= wanted,
            "RLIMIT_NOFILE hard limit {} is below the {wanted} this test needs",
            limit.rlim_max
        );
        limit.rlim_cur = wanted;
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit),
            0,
            "setrlimit: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The next datagram on `socket` and where it came from, waiting at most `wait`; `None` when
/// nothing came.
pub fn receive(socket: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    socket
        .set_read_timeout(Some(wait))
        .expect("set a read timeout");
    let mut buffer = vec![0u8; 70_000];
    match socket.recv_from(&mut buffer) {
        Ok((length, from)) => Some((buffer[..length].to_vec(), from)),
        Err(error) if stun_client::is_timeout(&error) => None,
        Err(error) => panic!("recv_from: {error}"),
    }
}

/// Where [`free_port`] looks: below Linux's ephemeral range (32768 and up), so that the kernel
/// does not hand the port to some other socket between the check and the test's bind, and a
/// server restarted on the same port (Redis in the fault tests) finds it free again.
const FREE_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port on 127.0.0.1, free for both UDP and TCP a moment ago. Racy by nature (another test
/// may pick it too): callers retry when the port is taken by the time they bind it.
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..100 {
        let port = rng.random_range(FREE_PORTS);
        if UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no port in {FREE_PORTS:?} free for both UDP and TCP on 127.0.0.1 after 100 tries");
}

/// A STUN Binding request with a fixed transaction ID.
pub const BINDING_REQUEST: [u8; 20] = [
    0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, b't', b'u', b'r', b'n', b'p', b'i', b'k', b'e',
    b'p', b'r', b'o', b'b',
];

/// Whether a STUN server answers a Binding request on `addr` within `wait`.
pub fn stun_answers(addr: SocketAddr, wait: Duration) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set a read timeout");
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        let _ = socket.send_to(&BINDING_REQUEST, addr);
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            if n >= 20 && buf[..2] == [0x01, 0x01] && buf[8..20] == BINDING_REQUEST[8..20] {
                return true;
            }
        }
    }
    false
}

/// A UDP echo server on 127.0.0.1, stopped on drop and after two minutes at the latest.
pub struct EchoPeer {
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl EchoPeer {
    /// How many datagrams it has echoed.
    pub fn echoed(&self) -> usize {
        self.echoed.load(Ordering::SeqCst)
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn udp_echo_peer() -> (SocketAddr, EchoPeer) {
    const LIFETIME: Duration = Duration::from_secs(120);
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("set a read timeout");
    let addr = socket.local_addr().expect("local address");
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicUsize::new(0));
    let thread = {
        let (stop, echoed) = (stop.clone(), echoed.clone());
        thread::spawn(move || {
            let deadline = Instant::now() + LIFETIME;
            let mut buf = [0u8; 65536];
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    if socket.send_to(&buf[..n], from).is_ok() {
                        echoed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    let peer = EchoPeer {
        stop,
        echoed,
        thread: Some(thread),
    };
    (addr, peer)
}

/// Waits for `child` until `timeout`, then kills it. `None` means it was killed.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("poll the child") {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// What a bounded run of the binary under test printed.
#[derive(Debug)]
pub struct Ran {
    /// `None`: still running at the deadline, and killed.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Whether it exited, with status 0.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }

    /// Its stdout, then its stderr.
    pub fn printed(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `wrapper... turnpike args...` (e.g. `setpriv ... --` as the wrapper, or none) to
/// completion, killing it after `timeout`; its output goes to files, which never fill up the
/// way a pipe can.
pub fn run_turnpike(wrapper: &[&str], args: &[&str], timeout: Duration) -> Ran {
    let dir = tempfile::tempdir().expect("create a tempdir");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(turnpike_binary());
            command
        }
        None => Command::new(turnpike_binary()),
    };
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("create the stdout file"))
        .stderr(File::create(&err).expect("create the stderr file"))
        .spawn()
        .expect("spawn turnpike");
    let status = wait_bounded(&mut child, timeout);
    Ran {
        status,
        stdout: fs::read_to_string(&out).unwrap_or_default(),
        stderr: fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// Opens `path` for a child's stdout and stderr together.
pub fn output_file(path: &Path) -> (Stdio, Stdio) {
    let file = File::create(path).expect("create an output file");
    let clone = file.try_clone().expect("clone a file handle");
    (Stdio::from(file), Stdio::from(clone))
}

/// The stand-in backend: coturn's `turnserver` with flags equivalent to the TOML.
mod coturn {
    use super::*;

    pub fn start(toml: &str, dir: TempDir) -> Server {
        let turnserver = require_tool("turnserver");
        let config: toml::Table = toml.parse().expect("the test configuration is TOML");
        let str_at = |table: &str, key: &str| {
            config[table][key]
                .as_str()
                .unwrap_or_else(|| panic!("{table}.{key} missing"))
                .to_string()
        };
        let transports: Vec<&str> = config["listen"]
            .as_array()
            .expect("[[listen]] entries")
            .iter()
            .map(|listen| listen["transport"].as_str().expect("listen.transport"))
            .collect();
        let (min_port, max_port) = str_at("relay", "ports")
            .split_once('-')
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .expect("relay.ports is MIN-MAX");
        let auth = &config["auth"];
        let secrets = auth.get("secrets").and_then(|s| s.as_array()).cloned();
        let users = auth.get("users").and_then(|u| u.as_array()).cloned();
        let (secrets, users) = (secrets.unwrap_or_default(), users.unwrap_or_default());
        assert!(
            secrets.is_empty() || users.is_empty(),
            "coturn cannot serve static users and REST secrets at once"
        );

        let mut args: Vec<String> = [
            "-n",
            "--no-cli",
            "--no-dtls",
            "--no-rfc5780",
            "--allow-loopback-peers",
            "--log-file",
            "stdout",
            "--listening-ip",
            "127.0.0.1",
        ]
        .map(String::from)
        .to_vec();
        args.extend(["--realm".into(), config["realm"].as_str().unwrap().into()]);
        args.extend(["--relay-ip".into(), str_at("relay", "address")]);
        args.extend(["--min-port".into(), min_port, "--max-port".into(), max_port]);
        let db = dir.path().join("turndb");
        let pidfile = dir.path().join("turnserver.pid");
        args.extend(["--db".into(), db.display().to_string()]);
        args.extend(["--pidfile".into(), pidfile.display().to_string()]);
        for (transport, flag) in [
            ("udp", "--no-udp"),
            ("tcp", "--no-tcp"),
            ("tls", "--no-tls"),
        ] {
            if !transports.contains(&transport) {
                args.push(flag.into());
            }
        }
        if transports.contains(&"tls") {
            args.extend(["--cert".into(), str_at("tls", "certificate")]);
            args.extend(["--pkey".into(), str_at("tls", "private-key")]);
        }
        if secrets.is_empty() {
            args.push("--lt-cred-mech".into());
            for user in &users {
                let name = user["name"].as_str().expect("user name");
                let password = user["password"].as_str().expect("user password");
                args.extend(["--user".into(), format!("{name}:{password}")]);
            }
        } else {
            args.push("--use-auth-secret".into());
            for secret in &secrets {
                let secret = secret.as_str().expect("secret");
                args.extend(["--static-auth-secret".into(), secret.into()]);
            }
        }

        // The ports are free when chosen but may be taken before coturn binds them: retry.
        for attempt in 1..=3 {
            let port = free_port();
            let tls_port = free_port();
            let mut command = Command::new(&turnserver);
            command
                .args(&args)
                .args(["-p", &port.to_string()])
                .args(["--tls-listening-port", &tls_port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = command.spawn().expect("spawn turnserver");
            let log = Log::default();
            let _ = forward_lines(child.stdout.take().expect("piped"), "coturn", log.clone());
            let _ = forward_lines(child.stderr.take().expect("piped"), "coturn", log.clone());

            let listeners: Vec<(String, SocketAddr)> = transports
                .iter()
                .map(|&t| {
                    let port = if t == "tls" { tls_port } else { port };
                    (t.to_string(), SocketAddr::from(([127, 0, 0, 1], port)))
                })
                .collect();
            if coturn_ready(&mut child, &listeners) {
                return Server {
                    child,
                    listeners,
                    stats_lines: None,
                    log,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("coturn not ready on ports {port}/{tls_port} (attempt {attempt}), retrying");
        }
        panic!("coturn did not come up in 3 attempts; see its output above");
    }

    /// Polls every listener until it answers: a Binding response on UDP, a connection on TCP.
    fn coturn_ready(child: &mut Child, listeners: &[(String, SocketAddr)]) -> bool {
        let deadline = Instant::now() + READY_TIMEOUT / 2;
        let mut pending: HashMap<&str, SocketAddr> =
            listeners.iter().map(|(t, a)| (t.as_str(), *a)).collect();
        while Instant::now() < deadline && !pending.is_empty() {
            if child.try_wait().expect("poll turnserver").is_some() {
                return false;
            }
            pending.retain(|transport, addr| match *transport {
                "udp" => !stun_answers(*addr, Duration::from_millis(200)),
                _ => TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_err(),
            });
            thread::sleep(Duration::from_millis(50));
        }
        pending.is_empty()
    }
}
