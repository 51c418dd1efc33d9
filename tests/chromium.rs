//! Headless Chromium against the server: one page, two RTCPeerConnections restricted to relay
//! candidates, a data channel round trip, over TURN/UDP, TURN/TCP and TURN/TLS. The page
//! reports what `getStats()` says of the selected candidate pair to the test's own HTTP server.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::chromium::Chromium;
use common::{RELAY_PORTS, Server, TestConfig};

/// How long Chromium has to report; the page gives up a little earlier and says why.
const RESULT_TIMEOUT: Duration = Duration::from_secs(45);

/// The test page. `__CONFIG__` becomes `{"url", "username", "credential"}`.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>turnpike relay test</title>
<script>
const config = __CONFIG__;
const errors = [];
let reported = false;
function report(result) {
  if (reported) return;
  reported = true;
  result.errors = errors.join('; ');
  fetch('/result?' + new URLSearchParams(result));
}
async function run() {
  const rtcConfig = {
    iceServers: [{urls: config.url, username: config.username, credential: config.credential}],
    iceTransportPolicy: 'relay',
  };
  const a = new RTCPeerConnection(rtcConfig);
  const b = new RTCPeerConnection(rtcConfig);
  for (const [name, pc] of [['a', a], ['b', b]]) {
    pc.onicecandidateerror = e => errors.push(`${name}: ${e.url} ${e.errorCode} ${e.errorText}`);
    pc.oniceconnectionstatechange = () => {
      if (pc.iceConnectionState === 'failed') report({ok: '0', error: `${name}: ICE failed`});
    };
  }
  // Trickle candidates across; a side that gathers none has nothing to try: fail now.
  for (const [name, pc, other] of [['a', a, b], ['b', b, a]]) {
    let gathered = 0;
    pc.onicecandidate = e => {
      if (e.candidate) { gathered++; other.addIceCandidate(e.candidate); }
      else if (gathered === 0) report({ok: '0', error: `${name}: gathered no relay candidate`});
    };
  }
  b.ondatachannel = e => { e.channel.onmessage = m => e.channel.send('pong: ' + m.data); };
  const channel = a.createDataChannel('turnpike');
  const opened = new Promise(resolve => channel.onopen = resolve);
  const reply = new Promise(resolve => channel.onmessage = m => resolve(m.data));
  await a.setLocalDescription();
  await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription();
  await a.setRemoteDescription(b.localDescription);
  await opened;
  channel.send('ping through the relay');
  const message = await reply;

  const stats = await a.getStats();
  let pair;
  stats.forEach(s => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) throw new Error('no selected candidate pair in getStats()');
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  report({
    ok: '1', message, nominated: String(pair.nominated), state: pair.state,
    bytes_sent: String(pair.bytesSent), bytes_received: String(pair.bytesReceived),
    local_type: local.candidateType, local_address: local.address, local_port: String(local.port),
    relay_protocol: local.relayProtocol, local_url: local.url, remote_type: remote.candidateType,
  });
  a.close();
  b.close();
}
setTimeout(() => report({ok: '0', error: 'no data channel round trip within 40 s'}), 40000);
run().catch(e => report({ok: '0', error: String(e)}));
</script>
"#;

/// Serves [`PAGE`] on 127.0.0.1 and passes on what the page reports to `/result`.
struct PageServer {
    addr: SocketAddr,
    results: mpsc::Receiver<HashMap<String, String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_page(config: &serde_json::Value) -> PageServer {
    const LIFETIME: Duration = Duration::from_secs(120);
    let page = PAGE.replace("__CONFIG__", &config.to_string());
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the page server");
    listener.set_nonblocking(true).expect("non-blocking accept");
    let addr = listener.local_addr().expect("local address");
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, results) = mpsc::channel();
    let thread = {
        let stop = stop.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + LIFETIME;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = answer(stream, &page, &tx) {
                            eprintln!("page server: {e}");
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        })
    };
    PageServer {
        addr,
        results,
        stop,
        thread: Some(thread),
    }
}

/// Answers one HTTP/1.1 request: the page at `/`, the report at `/result?…`, 404 otherwise.
fn answer(
    mut stream: TcpStream,
    page: &str,
    results: &mpsc::Sender<HashMap<String, String>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let request = String::from_utf8_lossy(&request);
    let target = request.split(' ').nth(1).unwrap_or("");
    let (status, content_type, body) = match target.split_once('?') {
        _ if target == "/" => ("200 OK", "text/html; charset=utf-8", page),
        Some(("/result", query)) => {
            let _ = results.send(parse_query(query)); // The test may have given up already.
            ("204 No Content", "text/plain", "")
        }
        _ => ("404 Not Found", "text/plain", "not found"),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Decodes `application/x-www-form-urlencoded`, as `URLSearchParams` writes it.
fn parse_query(query: &str) -> HashMap<String, String> {
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(byte) => {
                            out.push(byte);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                byte => out.push(byte),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (decode(key), decode(value)))
        .collect()
}

/// Opens the page with `url` as the only ICE server and checks the relayed round trip.
fn data_channel_through(url: &str, relay_protocol: &str, extra: &[&str]) {
    let page = serve_page(&serde_json::json!({
        "url": url,
        "username": "alice",
        "credential": "wonderland",
    }));
    let dir = tempfile::tempdir().expect("create a tempdir");
    let page_url = format!("http://{}/", page.addr);
    let chromium = Chromium::launch(dir.path(), extra, &page_url);

    let result = page.results.recv_timeout(RESULT_TIMEOUT);
    let stderr = chromium.stderr_tail(60);
    drop(chromium);
    let result = result.unwrap_or_else(|_| {
        panic!(
            "no result from Chromium within {RESULT_TIMEOUT:?} for {url}; its stderr ends:\n{stderr}"
        )
    });
    eprintln!("{url}: {result:?}");
    let field = |key: &str| result.get(key).map(String::as_str).unwrap_or("");
    let context = format!("{url}: page reported {result:?}");
    assert_eq!(field("ok"), "1", "{context}");
    assert_eq!(
        field("message"),
        "pong: ping through the relay",
        "{context}"
    );
    assert_eq!(field("nominated"), "true", "{context}");
    assert_eq!(field("local_type"), "relay", "{context}");
    assert_eq!(field("remote_type"), "relay", "{context}");
    assert_eq!(field("relay_protocol"), relay_protocol, "{context}");
    assert_eq!(field("local_url"), url, "{context}");
    assert_eq!(field("local_address"), "127.0.0.1", "{context}");
    let port: u16 = field("local_port").parse().expect(&context);
    assert!(RELAY_PORTS.contains(&port), "relayed port; {context}");
    let received: u64 = field("bytes_received").parse().expect(&context);
    assert!(received > 0, "nothing received on the pair; {context}");
}

#[test]
fn data_channel_over_turn_udp() {
    // Over the kernel fast path (root here): Chromium binds channels to each other's relayed
    // addresses, and the kernel turns each side's ChannelData straight into the other's.
    let server = Server::with(&TestConfig {
        offload: "auto",
        ..TestConfig::default()
    });
    let url = format!("turn:127.0.0.1:{}?transport=udp", server.addr("udp").port());
    data_channel_through(&url, "udp", &[]);
    if server.is_turnpike() {
        let carried = server.stats().get("offload_carried");
        eprintln!("the kernel fast path carried {carried} datagrams");
        assert!(
            carried > 0,
            "Chromium's channel traffic did not pass over the fast path"
        );
    }
}

#[test]
fn data_channel_over_turn_tcp() {
    let server = Server::with(&TestConfig::default());
    let url = format!("turn:127.0.0.1:{}?transport=tcp", server.addr("tcp").port());
    data_channel_through(&url, "tcp", &[]);
}

#[test]
fn data_channel_over_turns() {
    let server = Server::with(&TestConfig::default());
    let url = format!(
        "turns:127.0.0.1:{}?transport=tcp",
        server.addr("tls").port()
    );
    // The certificate is self-signed; Chromium checks TURN/TLS certificates.
    data_channel_through(&url, "tls", &["--ignore-certificate-errors"]);
}

#[test]
fn decodes_the_page_report() {
    let query = parse_query("ok=1&message=pong%3A+ping&local_url=turns%3A127.0.0.1%3A5349&bad=%zz");
    assert_eq!(query["ok"], "1");
    assert_eq!(query["message"], "pong: ping");
    assert_eq!(query["local_url"], "turns:127.0.0.1:5349");
    assert_eq!(query["bad"], "%zz");
}
