//! The first five minutes: the README's run command on the example configuration prints where
//! the server listens, the relay address (with a warning for one the Internet cannot reach),
//! the dashboard URL with a token made at start, and an `iceServers` snippet; the URL opens
//! in headless Chromium on the live status (a screenshot is taken, its path printed).
//!
//! The example file is used as shipped except for its addresses: listeners and the API on free
//! loopback ports, the relay on 127.0.0.1 (the tests talk to loopback only).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::chromium::{Chromium, text_of};

/// The example configuration with its addresses moved to loopback ports.
fn example_on_loopback(udp_tcp: u16, http: u16) -> String {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/turnpike.toml"))
            .expect("read config/turnpike.toml");
    let mut text = shipped.clone();
    for (from, to, times) in [
        (
            "address = \"0.0.0.0:3478\"\n",
            format!("address = \"127.0.0.1:{udp_tcp}\"\n"),
            2,
        ),
        (
            "# address = \"203.0.113.7\"\n",
            "address = \"127.0.0.1\"\n".to_owned(),
            1,
        ),
        (
            "address = \"127.0.0.1:9641\"\n",
            format!("address = \"127.0.0.1:{http}\"\n"),
            1,
        ),
    ] {
        assert_eq!(
            text.matches(from).count(),
            times,
            "config/turnpike.toml no longer has {from:?} {times} time(s): update this test"
        );
        text = text.replace(from, &to);
    }
    text
}

/// `turnpike serve` with its stdout lines sent to a channel, killed on drop.
struct Serving {
    child: Child,
    lines: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serving {
    fn start(toml: &str) -> Serving {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("turnpike.toml");
        std::fs::write(&config, toml).unwrap();
        let (stdout_errors, stderr) = common::output_file(&dir.path().join("stderr"));
        drop(stdout_errors);
        let mut child = Command::new(common::turnpike_binary())
            .args(["serve", "-c"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start turnpike");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Serving {
            child,
            lines,
            _dir: dir,
            config,
        }
    }

    /// The start-up summary: stdout lines up to the `iceServers` one.
    fn summary(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no iceServers line within 30 s; stdout: {seen:?}; stderr: {}",
                    std::fs::read_to_string(self.config.with_file_name("stderr"))
                        .unwrap_or_default()
                )
            });
            let last = line.trim_start().starts_with("iceServers");
            seen.push(line);
            if last {
                return seen;
            }
        }
    }
}

/// The line of `summary` that starts with `label` (after its indentation), without it.
fn field<'a>(summary: &'a [String], label: &str) -> &'a str {
    summary
        .iter()
        .find_map(|line| line.trim_start().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} line in {summary:#?}"))
        .trim()
}

#[test]
fn the_run_command_prints_the_dashboard_url_and_ice_servers_and_the_dashboard_shows_the_status() {
    let (port, http_port) = loop {
        let (a, b) = (common::free_port(), common::free_port());
        if a != b {
            break (a, b);
        }
    };
    let serving = Serving::start(&example_on_loopback(port, http_port));
    let summary = serving.summary();
    eprintln!("{}", summary.join("\n"));

    assert!(summary[0].starts_with("turnpike is ready"), "{summary:#?}");
    assert_eq!(
        field(&summary, "listening on"),
        format!("udp 127.0.0.1:{port}, tcp 127.0.0.1:{port}")
    );
    assert!(
        field(&summary, "relay address").starts_with("127.0.0.1 (ports 49152-65535)"),
        "{summary:#?}"
    );
    assert!(
        field(&summary, "warning:").starts_with("127.0.0.1 is a loopback address"),
        "{summary:#?}"
    );
    let url = field(&summary, "dashboard")
        .split_whitespace()
        .next()
        .unwrap();
    let prefix = format!("http://127.0.0.1:{http_port}/#token=");
    let token = url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{url} does not start with {prefix}"));
    assert_eq!(token.len(), 48, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    assert_eq!(
        field(&summary, "iceServers"),
        format!(
            "[{{ urls: [\"turn:127.0.0.1:{port}?transport=udp\", \"turn:127.0.0.1:{port}?transport=tcp\"], \
             username: \"demo\", credential: \"<demo's password>\" }}]"
        )
    );

    // The token works, a wrong one does not, and the pasted iceServers allocate.
    let api: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let status = common::http::get_json(api, "/api/v1/status", token);
    let (refused, _) = common::http::http(
        api,
        "GET",
        "/api/v1/status",
        Some("0123456789abcdef0123456789abcdef"),
        "",
    );
    assert_eq!(refused, 401);
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut client = common::stun_client::StunClient::udp(server, "127.0.0.1:0", "demo", "demo");
    client.allocate().expect("the demo user allocates");

    // The URL as printed, in headless Chromium: the live status of this server.
    let dir = tempfile::tempdir().unwrap();
    let dom = Chromium::launch(
        dir.path(),
        &["--virtual-time-budget=10000", "--dump-dom"],
        url,
    )
    .finish(Duration::from_secs(60));
    assert_eq!(Some(text_of(&dom, "node")), status["node"].as_str());
    assert_eq!(
        text_of(&dom, "count-total"),
        "1",
        "the demo allocation is live"
    );
    assert!(!dom.contains(token), "the token stays out of the DOM");

    let shots = tempfile::Builder::new()
        .prefix("turnpike-first-run-")
        .tempdir()
        .unwrap()
        .keep();
    let png = shots.join("dashboard.png");
    Chromium::launch(
        &shots,
        &[
            "--virtual-time-budget=10000",
            "--window-size=1280,900",
            &format!("--screenshot={}", png.display()),
        ],
        url,
    )
    .finish(Duration::from_secs(60));
    let bytes = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "first-run dashboard screenshot: {} ({bytes} bytes)",
        png.display()
    );
    assert!(bytes > 10_000, "screenshot too small: {bytes} bytes");

    // A reload keeps the token made at start: an open dashboard keeps working.
    let pid = libc::pid_t::try_from(serving.child.id()).unwrap();
    // SAFETY: kill(2) has no memory-safety preconditions; the child is ours and not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let stderr = serving.config.with_file_name("stderr");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&stderr)
        .unwrap_or_default()
        .contains("configuration reloaded")
    {
        assert!(Instant::now() < deadline, "no reload logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    common::http::get_json(api, "/api/v1/status", token);
}

/// A token is made only for a loopback API: on another address a missing token stays an
/// error, named by `check-config` and `serve`.
#[test]
fn an_api_off_loopback_still_needs_a_token() {
    let toml = example_on_loopback(common::free_port(), common::free_port()).replace(
        "[http]\naddress = \"127.0.0.1:",
        "[http]\naddress = \"0.0.0.0:",
    );
    assert!(
        toml.contains("address = \"0.0.0.0:"),
        "the [http] address moved"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnpike.toml");
    std::fs::write(&path, toml).unwrap();
    let path = path.to_str().unwrap();
    for args in [&["check-config", "-c", path][..], &["serve", "-c", path]] {
        let ran = common::run_turnpike(&[], args, Duration::from_secs(20));
        let printed = ran.printed();
        let status = ran.status.expect("it exits");
        assert!(!status.success(), "{args:?}: {printed}");
        assert!(
            printed.contains("http.token: is required when http.address (0.0.0.0:"),
            "{args:?}: {printed}"
        );
    }
}
