//! systemd integration: the unit file passes `systemd-analyze verify`, the sysusers.d file
//! creates the user, and the real binary notifies READY (once its listeners answer), WATCHDOG,
//! RELOADING and STOPPING over a `NOTIFY_SOCKET` the test binds.
//!
//! Always the turnpike binary, whatever `TURNPIKE_TEST_BACKEND` says: coturn knows no
//! `NOTIFY_SOCKET`.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{BINDING_REQUEST, Server, TestConfig};

/// How long the server may take to send READY=1, and STOPPING=1 after SIGTERM.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// WATCHDOG_USEC given to the server: it should ping every 200 ms.
const WATCHDOG_USEC: &str = "400000";

/// The window after READY=1 in which at least [`MIN_WATCHDOGS`] pings must arrive.
const WATCHDOG_WINDOW: Duration = Duration::from_millis(1500);
const MIN_WATCHDOGS: usize = 2;

/// The path the unit file is installed with and runs the binary from.
const INSTALLED_BINARY: &str = "/usr/local/bin/turnpike";

fn repository_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let analyze = common::require_tool("systemd-analyze");
    let unit = std::fs::read_to_string(repository_file("systemd/turnpike.service"))
        .expect("read systemd/turnpike.service");

    // `verify` checks that ExecStart's binary exists and is executable, and this machine has
    // no /usr/local/bin/turnpike: verify a copy that runs the binary under test instead.
    let binary = env!("CARGO_BIN_EXE_turnpike");
    let from = format!("ExecStart={INSTALLED_BINARY} ");
    let to = format!("ExecStart={binary} ");
    assert_eq!(
        unit.matches(&from).count(),
        1,
        "expected exactly one line starting {from:?} in the unit:\n{unit}"
    );
    let rewritten = unit.replace(&from, &to);
    assert!(
        rewritten.contains(&to) && !rewritten.contains(INSTALLED_BINARY),
        "ExecStart not rewritten:\n{rewritten}"
    );
    let dir = tempfile::tempdir().expect("create a tempdir");
    let copy = dir.path().join("turnpike.service");
    std::fs::write(&copy, rewritten).expect("write the unit copy");

    let output = Command::new(&analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // `verify` exits 0 on mistakes it "ignores" (an unknown key, a value it cannot parse), so
    // its output matters more than its status. It also loads the units ours depends on and,
    // in a container, may complain about them or about the machine (no /etc/systemd, no
    // running manager, no D-Bus): those lines do not name our file, and are not failures.
    // Every complaint about our unit names it, as "<path>:<line>: ..." or "turnpike.service: ...".
    let complaints: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("turnpike.service"))
        .collect();
    assert!(
        output.status.success() && complaints.is_empty(),
        "systemd-analyze verify {} ({}) complains:\n{}\nfull output:\n{text}",
        copy.display(),
        output.status,
        complaints.join("\n"),
    );
    if !text.trim().is_empty() {
        eprintln!("systemd-analyze verify, about other units or the machine:\n{text}");
    }
}

#[test]
fn sysusers_file_creates_the_service_user() {
    let sysusers = common::require_tool("systemd-sysusers");
    let root = tempfile::tempdir().expect("create a tempdir");
    std::fs::create_dir(root.path().join("etc")).expect("create etc");
    let output = Command::new(&sysusers)
        .arg(format!("--root={}", root.path().display()))
        .arg(repository_file("systemd/turnpike.sysusers"))
        .output()
        .expect("run systemd-sysusers");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "systemd-sysusers failed:\n{text}");
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).expect("read passwd");
    let user = passwd
        .lines()
        .find(|line| line.starts_with("turnpike:"))
        .unwrap_or_else(|| panic!("no turnpike user in\n{passwd}\nsystemd-sysusers said:\n{text}"));
    assert!(
        user.ends_with(":/usr/sbin/nologin"),
        "a login shell: {user}"
    );
    let group = std::fs::read_to_string(root.path().join("etc/group")).expect("read group");
    assert!(
        group.lines().any(|line| line.starts_with("turnpike:")),
        "no turnpike group in\n{group}"
    );
}

/// One datagram the server sent to the notify socket.
#[derive(Debug)]
struct Notification {
    at: Instant,
    text: String,
    /// For the first READY=1: whether the UDP listener answered a Binding request sent the
    /// moment it arrived.
    listener_answered: Option<bool>,
}

impl Notification {
    fn has(&self, assignment: &str) -> bool {
        self.text.lines().any(|line| line == assignment)
    }

    /// Whether the datagram is `assignment` alone (a final newline allowed, as `sd-notify`
    /// ends each assignment with one).
    fn is_only(&self, assignment: &str) -> bool {
        self.text.lines().eq([assignment])
    }
}

/// A socket playing the service manager: a thread receives on it and forwards each datagram.
struct Manager {
    path: PathBuf,
    notifications: mpsc::Receiver<Notification>,
    _dir: tempfile::TempDir,
}

impl Manager {
    /// Binds the socket. When `probe` is given, the first READY=1 is answered at once by a
    /// single Binding request to that address: it is answered only if the listener was bound
    /// before READY=1 was sent (an unbound port refuses the datagram).
    fn bind(probe: Option<SocketAddr>) -> Manager {
        let dir = tempfile::tempdir().expect("create a tempdir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        // The thread ends when the test drops the receiver, or after a minute of silence.
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("set a read timeout");
        let (tx, notifications) = mpsc::channel();
        thread::spawn(move || {
            let mut probe = probe;
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let at = Instant::now();
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let listener_answered = match probe {
                    Some(addr) if text.lines().any(|line| line == "READY=1") => {
                        probe = None;
                        Some(binding_answered(addr))
                    }
                    _ => None,
                };
                let notification = Notification {
                    at,
                    text,
                    listener_answered,
                };
                if tx.send(notification).is_err() {
                    break;
                }
            }
        });
        Manager {
            path,
            notifications,
            _dir: dir,
        }
    }

    fn notify_socket(&self) -> &str {
        self.path.to_str().expect("a UTF-8 tempdir")
    }

    /// The next notification that has `assignment` (e.g. `READY=1`), and those before it.
    fn wait_for(&self, assignment: &str, timeout: Duration) -> (Notification, Vec<Notification>) {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            match self
                .notifications
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(notification) if notification.has(assignment) => return (notification, before),
                Ok(notification) => before.push(notification),
                Err(_) => panic!(
                    "no {assignment} notification within {timeout:?} (is `notify` wired into \
                     main.rs?); received before: {:?}",
                    before.iter().map(|n| &n.text).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Every notification that arrives until `deadline`.
    fn collect_until(&self, deadline: Instant) -> Vec<Notification> {
        let mut received = Vec::new();
        while let Ok(notification) = self
            .notifications
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            received.push(notification);
        }
        received
    }
}

/// Sends one Binding request to `addr` and waits up to 2 s for the answer. A connected socket
/// sees the ICMP port unreachable of a port nobody has bound as an error.
fn binding_answered(addr: SocketAddr) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("set a read timeout");
    socket.connect(addr).expect("connect the probe");
    if socket.send(&BINDING_REQUEST).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    match socket.recv(&mut buf) {
        Ok(n) => n >= 20 && buf[..2] == [0x01, 0x01] && buf[8..20] == BINDING_REQUEST[8..20],
        Err(_) => false,
    }
}

fn signal(server: &Server, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(server.pid()).expect("a pid fits pid_t");
    // SAFETY: kill(2) with a valid signal number has no memory-safety preconditions; the
    // child is not reaped before `server` is dropped, so the pid is still the server's.
    let sent = unsafe { libc::kill(pid, signal) };
    assert_eq!(sent, 0, "kill {pid}: {}", std::io::Error::last_os_error());
}

/// CLOCK_MONOTONIC in microseconds, the clock of MONOTONIC_USEC.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_MONOTONIC)");
    u64::try_from(now.tv_sec).expect("positive") * 1_000_000
        + u64::try_from(now.tv_nsec).expect("positive") / 1_000
}

/// A configuration with one UDP listener on `port` of 127.0.0.1 (0: any).
fn udp_config(port: u16) -> String {
    let config = TestConfig {
        transports: vec!["udp"],
        ..TestConfig::default()
    };
    let dir = tempfile::tempdir().expect("create a tempdir");
    let toml = common::base_config(&config, dir.path());
    let listener = "address = \"127.0.0.1:0\"";
    assert_eq!(toml.matches(listener).count(), 1, "one listener in\n{toml}");
    toml.replace(listener, &format!("address = \"127.0.0.1:{port}\""))
}

#[test]
fn notifies_ready_after_binding_then_watchdog_then_stopping() {
    // The probe must know the port before the server says where it listens, so the port is
    // chosen here: free a moment ago, taken by something else before turnpike binds it only
    // by a rare accident.
    let port = common::free_port();
    let udp = SocketAddr::from(([127, 0, 0, 1], port));
    let manager = Manager::bind(Some(udp));
    let server = Server::start_with_env(
        &udp_config(port),
        &[
            ("NOTIFY_SOCKET", Some(manager.notify_socket())),
            ("WATCHDOG_USEC", Some(WATCHDOG_USEC)),
            ("WATCHDOG_PID", None),
        ],
    );
    assert_eq!(server.addr("udp"), udp);

    let (ready, before) = manager.wait_for("READY=1", NOTIFY_TIMEOUT);
    assert!(
        ready.has(&format!("MAINPID={}", server.pid())),
        "READY=1 without the server's MAINPID={}: {:?}",
        server.pid(),
        ready.text
    );
    assert_eq!(
        ready.listener_answered,
        Some(true),
        "the UDP listener did not answer a Binding sent when READY=1 arrived: READY came \
         before the listeners were bound"
    );
    assert!(
        before.iter().all(|n| n.is_only("WATCHDOG=1")),
        "before READY=1: {before:?}"
    );

    let during = manager.collect_until(ready.at + WATCHDOG_WINDOW);
    let watchdogs = during.iter().filter(|n| n.is_only("WATCHDOG=1")).count();
    assert!(
        watchdogs >= MIN_WATCHDOGS,
        "{watchdogs} WATCHDOG=1 within {WATCHDOG_WINDOW:?} of READY=1 with WATCHDOG_USEC={WATCHDOG_USEC} \
         (expected a ping every 200 ms); received: {:?}",
        during.iter().map(|n| &n.text).collect::<Vec<_>>()
    );
    eprintln!("{watchdogs} WATCHDOG=1 within {WATCHDOG_WINDOW:?} of READY=1");

    signal(&server, libc::SIGTERM);
    let (stopping, _) = manager.wait_for("STOPPING=1", NOTIFY_TIMEOUT);
    eprintln!(
        "STOPPING=1 {:?} after SIGTERM was sent",
        stopping.at.elapsed()
    );
}

#[test]
fn no_watchdog_pings_when_the_watchdog_is_another_process() {
    let manager = Manager::bind(None);
    let not_ours = std::process::id().to_string(); // The test's pid, never the server's.
    let _server = Server::start_with_env(
        &udp_config(0),
        &[
            ("NOTIFY_SOCKET", Some(manager.notify_socket())),
            ("WATCHDOG_USEC", Some(WATCHDOG_USEC)),
            ("WATCHDOG_PID", Some(&not_ours)),
        ],
    );
    let (ready, before) = manager.wait_for("READY=1", NOTIFY_TIMEOUT);
    let after = manager.collect_until(ready.at + WATCHDOG_WINDOW);
    let pings: Vec<&str> = before
        .iter()
        .chain(&after)
        .map(|n| n.text.as_str())
        .filter(|text| text.contains("WATCHDOG=1"))
        .collect();
    assert!(
        pings.is_empty(),
        "WATCHDOG_PID={not_ours} is not the server, yet it pinged: {pings:?}"
    );
}

#[test]
fn sighup_notifies_reloading_then_ready_and_keeps_serving() {
    let manager = Manager::bind(None);
    let mut server = Server::start_with_env(
        &udp_config(0),
        &[("NOTIFY_SOCKET", Some(manager.notify_socket()))],
    );
    manager.wait_for("READY=1", NOTIFY_TIMEOUT);

    let before = monotonic_usec();
    signal(&server, libc::SIGHUP);
    let (reloading, _) = manager.wait_for("RELOADING=1", NOTIFY_TIMEOUT);
    let after = monotonic_usec();
    let usec: u64 = reloading
        .text
        .lines()
        .find_map(|line| line.strip_prefix("MONOTONIC_USEC="))
        .and_then(|usec| usec.parse().ok())
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {:?}", reloading.text));
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC={usec} is not between SIGHUP ({before}) and its arrival ({after})"
    );
    // Until READY=1, systemd keeps the unit "reloading" and `systemctl reload` waits.
    manager.wait_for("READY=1", NOTIFY_TIMEOUT);
    assert!(server.is_running(), "SIGHUP stopped the server");
    assert!(
        common::stun_answers(server.addr("udp"), Duration::from_secs(5)),
        "no Binding answer after the reload"
    );
}
