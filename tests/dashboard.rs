//! The operator dashboard (`src/http/dashboard.html`) in headless Chromium, against a stand-in
//! of the HTTP API written here: a loopback HTTP server that serves the page at `/`, canned
//! JSON at `/api/v1/status` and `/api/v1/allocations`, records `DELETE /api/v1/allocations/{id}`
//! and `POST /api/v1/credentials`, and answers 401 to any API request without the bearer token.
//!
//! - `--dump-dom` after some virtual time: the page rendered the JSON, as text only.
//! - `--screenshot`: a picture, printed path, for a person to look at.
//! - a harness page that drives the dashboard in a same-origin iframe and reports to `/result`:
//!   a wrong token brings the prompt back, the prompt's token works, "Close" asks and deletes;
//!   "Test this server" against a real turnpike over UDP, TCP and TLS.
//! - static checks: nothing fetched from elsewhere, no `innerHTML`.
//! - the page served by a real turnpike, under its security headers, renders that server.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use common::chromium::{Chromium, text_of};
use common::{Server, TestConfig};

const PAGE: &str = include_str!("../src/http/dashboard.html");
const TOKEN: &str = "t0ken-for-the-dashboard";
/// The second allocation's user: rendered as text, it shows as itself; as markup, an image.
/// Its right-to-left override (U+202E) would make the rest read "alice" backwards, and reorder
/// the cells after it, were it not written out and the name bidi-isolated.
const HOSTILE_USER: &str = "<img src=x onerror=alert(1)>mallory\u{202e}ecila";

/// How long one Chromium run may take before the test gives up on it.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// One request the stand-in received.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    /// `Authorization: Bearer TOKEN` exactly.
    authorized: bool,
    /// An `Origin` header naming another origin than the stand-in's.
    foreign_origin: bool,
    body: String,
}

struct State {
    allocations: Vec<Value>,
    ice_urls: Vec<String>,
    /// `(username, credential)` that `POST /api/v1/credentials` hands out.
    credentials: (String, String),
    requests: Vec<Request>,
    polls: u64,
}

/// The stand-in API server on 127.0.0.1, one thread per connection, stopped on drop.
struct StandIn {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    results: mpsc::Receiver<Value>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn allocation(id: &str, user: &str, client: &str, relay: &str, age: u64) -> Value {
    let now = unix_now();
    json!({
        "id": id, "user": user, "username": format!("{}:{user}", now + 600),
        "client": {"transport": "udp", "address": client, "server": "192.0.2.1:3478"},
        "relay": relay, "created": now - age, "expires": now + 600 - age,
        "permissions": ["203.0.113.5"], "channels": [{"number": 16384, "peer": "203.0.113.5:6000"}],
        "to_peer": {"packets": 1200, "bytes": 1_234_567}, "to_client": {"packets": 2, "bytes": 200},
    })
}

impl StandIn {
    fn start(ice_urls: Vec<String>, credentials: (&str, &str)) -> StandIn {
        const LIFETIME: Duration = Duration::from_secs(180);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stand-in");
        listener.set_nonblocking(true).expect("non-blocking accept");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State {
            allocations: vec![
                allocation(
                    "0.3.1",
                    "alice",
                    "198.51.100.1:5000",
                    "192.0.2.1:50000",
                    125,
                ),
                allocation(
                    "1.7.2",
                    HOSTILE_USER,
                    "198.51.100.2:6000",
                    "192.0.2.1:50002",
                    4000,
                ),
            ],
            ice_urls,
            credentials: (credentials.0.to_string(), credentials.1.to_string()),
            requests: Vec::new(),
            polls: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, results) = mpsc::channel();
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            thread::spawn(move || {
                let deadline = Instant::now() + LIFETIME;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (state, tx) = (state.clone(), tx.clone());
                            thread::spawn(move || {
                                if let Err(e) = answer(stream, addr, &state, &tx) {
                                    eprintln!("stand-in: {e}");
                                }
                            });
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        StandIn {
            addr,
            state,
            results,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The API requests so far; none of them came from another origin.
    fn requests(&self) -> Vec<Request> {
        let requests = self.state.lock().unwrap().requests.clone();
        let foreign: Vec<&Request> = requests.iter().filter(|r| r.foreign_origin).collect();
        assert!(
            foreign.is_empty(),
            "requests from another origin: {foreign:?}"
        );
        requests
    }
}

fn status_json(state: &mut State) -> Value {
    state.polls += 1;
    // Rates that move, so the chart has a shape.
    let n = state.polls as f64;
    let total = state.allocations.len();
    json!({
        "version": "0.1.0", "uptime_seconds": 93784 + state.polls * 3, "node": "turn-1",
        "listeners": [
            {"transport": "udp", "address": "127.0.0.1:3478", "state": "listening"},
            {"transport": "tcp", "address": "127.0.0.1:3478", "state": "listening"},
            {"transport": "tls", "address": "127.0.0.1:5349", "state": "listening"},
        ],
        "allocations": {"total": total, "by_transport": {"udp": total, "tcp": 0, "tls": 0},
                        "by_family": {"ipv4": total, "ipv6": 0}},
        "users": total,
        "relayed": {"to_peer": {"packets": 10, "bytes": 1_234_767},
                    "to_client": {"packets": 12, "bytes": 1400}},
        "rates": {"to_peer_bps": 1_500_000.0 + 900_000.0 * (n / 2.0).sin(),
                  "to_client_bps": 800_000.0 + 500_000.0 * (n / 3.0).cos(),
                  "to_peer_pps": 1.0, "to_client_pps": 1.2},
        "drops": {"quota": 0, "bandwidth": 3, "policy": 17, "rate_limit": 5, "malformed": 1,
                  "no_permission": 0, "no_allocation": 0},
        "redis": {"configured": true, "state": "connected"},
        "draining": false,
        "ice_urls": state.ice_urls,
        "reloads": {"applied": 1, "rejected": 0,
                    "last": {"at": 1_795_000_000, "result": "applied", "error": null},
                    "pending_restart": ["relay.address-v6", "workers"]},
    })
}

/// Answers one HTTP/1.1 request and closes the connection.
fn answer(
    mut stream: TcpStream,
    addr: SocketAddr,
    state: &Mutex<State>,
    results: &mpsc::Sender<Value>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if data.len() > 64 * 1024 {
            return Ok(());
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(()); // A speculative connection that never asked anything.
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let mut content_length = 0;
    let mut authorization = None;
    let mut origin = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = value.trim().parse().unwrap_or(0),
                "authorization" => authorization = Some(value.trim().to_string()),
                "origin" => origin = Some(value.trim().to_string()),
                _ => {}
            }
        }
    }
    while data.len() < head_end + content_length {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&data[head_end..]).into_owned();
    let path = target.split('?').next().unwrap_or("").to_string();
    let authorized = authorization.as_deref() == Some(format!("Bearer {TOKEN}").as_str());
    let foreign_origin = origin.is_some_and(|o| o != format!("http://{addr}"));

    let mut state = state.lock().unwrap();
    if path.starts_with("/api/") {
        state.requests.push(Request {
            method: method.clone(),
            path: target.clone(),
            authorized,
            foreign_origin,
            body: body.clone(),
        });
    }
    let html = "text/html; charset=utf-8";
    let json_type = "application/json";
    let (status, content_type, body): (&str, &str, String) = match (method.as_str(), path.as_str())
    {
        ("GET", "/") => ("200 OK", html, PAGE.to_string()),
        ("GET", "/harness-close") => ("200 OK", html, harness(HARNESS_CLOSE)),
        ("GET", "/harness-check") => ("200 OK", html, harness(HARNESS_CHECK)),
        ("POST", "/result") => {
            let _ = results.send(serde_json::from_str(&body).unwrap_or(Value::Null));
            ("204 No Content", "text/plain", String::new())
        }
        (_, p) if p.starts_with("/api/") && !authorized => (
            "401 Unauthorized",
            json_type,
            json!({"error": "unauthorized"}).to_string(),
        ),
        ("GET", "/api/v1/status") => ("200 OK", json_type, status_json(&mut state).to_string()),
        ("GET", "/api/v1/allocations") => {
            let list = json!({"allocations": state.allocations, "next_cursor": null});
            ("200 OK", json_type, list.to_string())
        }
        ("DELETE", p) if p.starts_with("/api/v1/allocations/") => {
            let id = &p["/api/v1/allocations/".len()..];
            let before = state.allocations.len();
            state.allocations.retain(|a| a["id"] != id);
            if state.allocations.len() < before {
                ("204 No Content", json_type, String::new())
            } else {
                (
                    "404 Not Found",
                    json_type,
                    json!({"error": "no such allocation"}).to_string(),
                )
            }
        }
        ("POST", "/api/v1/credentials") => {
            let (username, credential) = state.credentials.clone();
            let issued = json!({"iceServers": [{"urls": state.ice_urls, "username": username,
                                                "credential": credential}], "ttl": 300});
            ("200 OK", json_type, issued.to_string())
        }
        _ => ("404 Not Found", "text/plain", "not found".to_string()),
    };
    drop(state);
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn renders_the_status_and_the_allocations() {
    let api = StandIn::start(vec!["turn:127.0.0.1:3478?transport=udp".into()], ("a", "b"));
    let dir = tempfile::tempdir().expect("create a tempdir");
    let chromium = Chromium::launch(
        dir.path(),
        &["--virtual-time-budget=10000", "--dump-dom"],
        &api.url(&format!("/#token={TOKEN}")),
    );
    let dom = chromium.finish(CHROMIUM_TIMEOUT);

    assert_eq!(text_of(&dom, "node"), "turn-1");
    assert_eq!(text_of(&dom, "version"), "0.1.0");
    assert!(text_of(&dom, "uptime").starts_with("1 d 2 h"), "uptime");
    assert_eq!(text_of(&dom, "redis-badge"), "Redis: connected");
    assert!(dom.contains(r#"class="badge green" id="redis-badge""#));
    assert_eq!(text_of(&dom, "draining-badge"), "Accepting allocations");
    assert_eq!(
        text_of(&dom, "config-badge"),
        "Restart needed: relay.address-v6, workers"
    );
    assert!(dom.contains(r#"class="badge amber" id="config-badge""#));
    assert_eq!(text_of(&dom, "count-total"), "2");
    assert_eq!(text_of(&dom, "count-udp"), "2");
    assert_eq!(text_of(&dom, "count-tls"), "0");
    assert_eq!(text_of(&dom, "count-ipv4"), "2");
    assert_eq!(text_of(&dom, "count-users"), "2");
    assert_eq!(text_of(&dom, "drop-rate_limit"), "5");
    assert_eq!(text_of(&dom, "drop-malformed"), "1");
    assert_eq!(text_of(&dom, "drop-policy"), "17");
    assert_eq!(text_of(&dom, "drop-quota"), "0");
    for expected in [
        ":alice\"><bdi>alice</bdi></td>",
        "<code>198.51.100.1:5000</code>",
        "<code>192.0.2.1:50000</code>",
        "<code>127.0.0.1:5349</code>",
        // 125 s old, plus the virtual time that passed.
        "class=\"num\">2 min ",
        "1.23 MB",
        "Close allocation 0.3.1 of \u{2068}alice\u{2069}\"",
    ] {
        assert!(
            dom.contains(expected),
            "{expected:?} not in the DOM:\n{dom}"
        );
    }
    // The hostile user name is text, not an element.
    assert!(
        dom.contains("&lt;img src=x onerror=alert(1)&gt;mallory"),
        "{dom}"
    );
    assert!(!dom.contains("<img"), "server data became markup:\n{dom}");
    // The override is written out, inside a bidi-isolated element, as the logs show it.
    assert!(
        dom.contains("<bdi>&lt;img src=x onerror=alert(1)&gt;mallory\\u{202e}ecila</bdi>"),
        "{dom}"
    );
    assert!(
        dom.contains(
            "of \u{2068}&lt;img src=x onerror=alert(1)&gt;mallory\\u{202e}ecila\u{2069}\""
        ),
        "the close button's label isolates the name:\n{dom}"
    );
    assert!(
        !dom.contains('\u{202e}'),
        "a raw bidi override in the DOM:\n{dom}"
    );
    assert!(!dom.contains(TOKEN), "the token stays out of the DOM");

    let requests = api.requests();
    let status_polls = requests
        .iter()
        .filter(|r| r.path == "/api/v1/status")
        .count();
    assert!(status_polls >= 3, "polled every 3 s: {requests:?}");
    assert!(requests.iter().all(|r| r.authorized), "{requests:?}");
    assert!(
        requests
            .iter()
            .any(|r| r.method == "GET" && r.path == "/api/v1/allocations?limit=50")
    );
}

/// The page as turnpike itself serves it, under its own headers (a CSP that forbids framing,
/// `nosniff`, `no-store`…): it still runs, takes the token from the fragment and renders the
/// real server's status.
#[test]
fn runs_under_the_real_servers_headers() {
    let server = Server::with(&TestConfig {
        extra: format!("[http]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
        ..TestConfig::default()
    });
    let api = server.addr("http");
    let status = common::http::get_json(api, "/api/v1/status", TOKEN);
    let dir = tempfile::tempdir().expect("create a tempdir");
    let chromium = Chromium::launch(
        dir.path(),
        &["--virtual-time-budget=10000", "--dump-dom"],
        &format!("http://{api}/#token={TOKEN}"),
    );
    let dom = chromium.finish(CHROMIUM_TIMEOUT);
    assert_eq!(
        Some(text_of(&dom, "node")),
        status["node"].as_str(),
        "{dom}"
    );
    assert_eq!(Some(text_of(&dom, "version")), status["version"].as_str());
    assert_eq!(text_of(&dom, "count-total"), "0");
    assert!(!dom.contains(TOKEN), "the token stays out of the DOM");
}

/// Screenshots for a person to look at (paths printed): the dashboard on a wide and on a phone
/// sized window, and the token prompt of a page opened without a token.
#[test]
fn screenshots() {
    let api = StandIn::start(vec!["turn:127.0.0.1:3478?transport=udp".into()], ("a", "b"));
    let dir = tempfile::Builder::new()
        .prefix("turnpike-dashboard-")
        .tempdir()
        .expect("create a tempdir")
        .keep();
    let with_token = format!("/#token={TOKEN}");
    for (name, size, page) in [
        ("dashboard.png", "1280,1300", with_token.as_str()),
        ("narrow.png", "420,2600", with_token.as_str()),
        ("token-prompt.png", "900,500", "/"),
    ] {
        let run = dir.join(name.trim_end_matches(".png"));
        std::fs::create_dir_all(&run).expect("create a directory");
        let png = dir.join(name);
        let chromium = Chromium::launch(
            &run,
            &[
                // 90 s of virtual time: 30 polls, a chart with a shape.
                "--virtual-time-budget=90000",
                &format!("--window-size={size}"),
                &format!("--screenshot={}", png.display()),
            ],
            &api.url(page),
        );
        chromium.finish(CHROMIUM_TIMEOUT);
        let bytes = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        eprintln!("dashboard screenshot: {} ({bytes} bytes)", png.display());
        assert!(bytes > 10_000, "{name} too small: {bytes} bytes");
    }
    let requests = api.requests();
    let refused = requests.iter().filter(|r| !r.authorized).count();
    assert_eq!(refused, 0, "without a token the page asks, it does not try");
}

/// A page that loads the dashboard in a same-origin iframe, drives it and POSTs what it saw to
/// `/result`. `__SCRIPT__` is the scenario.
fn harness(script: &str) -> String {
    format!(
        r#"<!doctype html><meta charset="utf-8"><title>harness</title>
<iframe id="f" style="width:1200px;height:900px"></iframe>
<script>
const TOKEN = {token};
const frame = document.getElementById('f');
const doc = () => frame.contentDocument;
const sleep = ms => new Promise(r => setTimeout(r, ms));
async function until(what, cond, ms = 8000) {{
  const end = Date.now() + ms;
  while (Date.now() < end) {{
    try {{ const v = cond(); if (v) return v; }} catch (e) {{}}
    await sleep(50);
  }}
  throw new Error('timed out waiting for ' + what);
}}
function report(r) {{ fetch('/result', {{method: 'POST', body: JSON.stringify(r)}}); }}
{script}
run().catch(e => report({{error: String(e)}}));
</script>"#,
        token = json!(TOKEN),
    )
}

const HARNESS_CLOSE: &str = r#"
async function run() {
  const r = {};
  sessionStorage.setItem('turnpike.token', 'a-wrong-token');
  frame.src = '/';
  await until('the token prompt', () => !doc().getElementById('auth').hidden);
  r.prompt = doc().getElementById('auth-message').textContent;
  r.prompt_focused = doc().activeElement && doc().activeElement.id;
  doc().getElementById('token-input').value = TOKEN;
  doc().getElementById('auth-form').requestSubmit();
  await until('the allocation rows', () => doc().querySelector('tr[data-id="0.3.1"]'));
  r.prompt_hidden = doc().getElementById('auth').hidden;
  r.stored = sessionStorage.getItem('turnpike.token') === TOKEN;
  frame.contentWindow.confirm = () => false;
  doc().querySelector('tr[data-id="0.3.1"] button').click();
  await sleep(500);
  r.kept_when_declined = !!doc().querySelector('tr[data-id="0.3.1"]');
  let asked = null;
  frame.contentWindow.confirm = q => { asked = q; return true; };
  doc().querySelector('tr[data-id="0.3.1"] button').click();
  await until('the row to go', () => !doc().querySelector('tr[data-id="0.3.1"]'));
  r.asked = asked;
  r.status = doc().getElementById('status').textContent;
  r.rows = doc().querySelectorAll('#allocations tr[data-id]').length;
  report(r);
}
"#;

const HARNESS_CHECK: &str = r#"
async function run() {
  frame.src = '/#token=' + encodeURIComponent(TOKEN);
  await until('the status', () => doc().getElementById('node').textContent === 'turn-1');
  const r = {hash: frame.contentWindow.location.hash};
  doc().getElementById('check-button').click();
  await until('the results', () => {
    const items = doc().querySelectorAll('#check-results li');
    return items.length && !doc().querySelector('#check-results li[data-result="pending"]')
      && !doc().getElementById('check-button').disabled;
  }, 80000);
  r.headings = [...doc().querySelectorAll('#check-results h3')].map(h => h.textContent);
  r.results = [...doc().querySelectorAll('#check-results li')].map(li => ({
    url: li.dataset.url, result: li.dataset.result, text: li.textContent }));
  report(r);
}
"#;

/// Runs a harness page and returns its report.
fn run_harness(api: &StandIn, page: &str, extra: &[&str], wait: Duration) -> Value {
    let dir = tempfile::tempdir().expect("create a tempdir");
    let chromium = Chromium::launch(dir.path(), extra, &api.url(page));
    let result = api.results.recv_timeout(wait);
    let stderr = chromium.stderr_tail(usize::MAX);
    drop(chromium);
    let result = result.unwrap_or_else(|_| {
        panic!("no report from {page} within {wait:?}; Chromium's stderr:\n{stderr}")
    });
    eprintln!("{page}: {result:#}");
    assert!(result.get("error").is_none(), "{page}: {result:#}");
    result
}

#[test]
fn a_wrong_token_asks_again_and_close_deletes_after_confirming() {
    let api = StandIn::start(vec!["turn:127.0.0.1:3478?transport=udp".into()], ("a", "b"));
    let r = run_harness(&api, "/harness-close", &[], Duration::from_secs(40));
    assert!(
        r["prompt"].as_str().unwrap().contains("401"),
        "the prompt says why: {r}"
    );
    assert_eq!(r["prompt_focused"], "token-input");
    assert_eq!(r["prompt_hidden"], true);
    assert_eq!(r["stored"], true);
    assert_eq!(r["kept_when_declined"], true);
    assert_eq!(
        r["asked"],
        "Close allocation 0.3.1 of \u{2068}alice\u{2069} (relay 192.0.2.1:50000)?"
    );
    assert_eq!(r["status"], "Closed allocation 0.3.1.");
    assert_eq!(r["rows"], 1);

    let requests = api.requests();
    let refused = requests.iter().filter(|r| !r.authorized).count();
    assert_eq!(refused, 1, "one request with the wrong token: {requests:?}");
    let deletes: Vec<usize> = (0..requests.len())
        .filter(|&i| requests[i].method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1, "declining confirm() deletes nothing");
    let delete = &requests[deletes[0]];
    assert_eq!(delete.path, "/api/v1/allocations/0.3.1");
    assert!(delete.authorized);
    assert!(
        requests[deletes[0]..]
            .iter()
            .any(|r| r.path.starts_with("/api/v1/allocations?")),
        "the list is fetched again after the delete: {requests:?}"
    );
}

#[test]
fn tests_a_real_server_over_udp_tcp_and_tls() {
    let server = Server::with(&TestConfig::default());
    let udp = format!("turn:127.0.0.1:{}?transport=udp", server.addr("udp").port());
    let tcp = format!("turn:127.0.0.1:{}?transport=tcp", server.addr("tcp").port());
    let tls = format!(
        "turns:127.0.0.1:{}?transport=tcp",
        server.addr("tls").port()
    );
    // Nothing listens there: the check must fail within its 10 s.
    let dead = format!("turn:127.0.0.1:{}?transport=udp", common::free_port());
    let stun = format!("stun:127.0.0.1:{}", server.addr("udp").port());
    let urls = vec![udp.clone(), tcp.clone(), tls.clone(), dead.clone(), stun];
    // The stand-in hands out the server's static user: the check itself is what is tested.
    let api = StandIn::start(urls, ("alice", "wonderland"));
    let started = Instant::now();
    let r = run_harness(
        &api,
        "/harness-check",
        // The server's certificate is self-signed.
        &["--ignore-certificate-errors"],
        Duration::from_secs(90),
    );
    eprintln!("checked in {:?}", started.elapsed());
    assert_eq!(r["hash"], "", "the token fragment is cleared");
    assert_eq!(r["headings"], json!(["UDP", "TCP", "TLS", "Other"]));
    let results = r["results"].as_array().unwrap();
    let of = |url: &str| {
        results
            .iter()
            .find(|x| x["url"] == url)
            .unwrap_or_else(|| panic!("no result for {url}: {r}"))
    };
    for (url, protocol) in [(&udp, "udp"), (&tcp, "tcp"), (&tls, "tls")] {
        let result = of(url);
        assert_eq!(result["result"], "pass", "{result}");
        let text = result["text"].as_str().unwrap();
        assert!(text.starts_with("✓ pass"), "{text}");
        assert!(
            text.ends_with(&format!("selected pair: relay over {protocol}")),
            "{text}"
        );
    }
    let dead = of(&dead);
    assert_eq!(dead["result"], "fail", "{dead}");
    let text = dead["text"].as_str().unwrap();
    assert!(
        text.contains("timeout") || text.contains("no relay candidate"),
        "{text}"
    );
    assert_eq!(results.len(), 5);

    let requests = api.requests();
    let issued: Vec<&Request> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/api/v1/credentials")
        .collect();
    assert_eq!(issued.len(), 1, "{requests:?}");
    let body: Value = serde_json::from_str(&issued[0].body).expect("a JSON body");
    assert_eq!(body, json!({"user": "dashboard-test", "ttl": 300}));
    assert!(requests.iter().all(|r| r.authorized));
}

#[test]
fn the_page_is_self_contained() {
    let lines = PAGE.lines().count();
    assert!(lines <= 600, "{lines} lines");
    for banned in [
        "http://",
        "https://",
        "//cdn",
        "<link",
        "@import",
        "url(",
        "src=",
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!PAGE.contains(banned), "the page contains {banned:?}");
    }
    // Every fetch goes to this server's own API.
    for (i, _) in PAGE.match_indices("api('") {
        assert!(
            PAGE[i..].starts_with("api('/api/v1/"),
            "{}",
            &PAGE[i..i + 40]
        );
    }
    assert!(PAGE.contains("aria-live"));
    assert!(PAGE.contains("sessionStorage"));
}
