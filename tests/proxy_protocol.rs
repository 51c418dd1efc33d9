//! The PROXY protocol (versions 1 and 2) on TCP and TLS listeners, against the real binary:
//! headers built byte by byte here, and HAProxy (`send-proxy`, `send-proxy-v2`) in front of
//! turnpike on loopback. The client a header names is the client: XOR-MAPPED-ADDRESS, the
//! per-source connection cap and the 5-tuple see it. A connection from outside `proxy-from`,
//! without a header, with a malformed or oversized one, or too slow to send it, is closed.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::stun_client::StunClient;
use common::{BINDING_REQUEST, Server, TestConfig};
use turnpike::stun::{Class, Method, attr};

/// `stream-idle-timeout` of these servers: the bound on a header's arrival.
const IDLE: Duration = Duration::from_secs(2);

/// A version 1 header (both addresses of one family).
fn v1(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        client.ip(),
        server.ip(),
        client.port(),
        server.port()
    )
    .into_bytes()
}

/// A version 2 header, byte by byte: `command` 0 is LOCAL, 1 is PROXY; `tlvs` follow the
/// addresses.
fn v2(command: u8, addresses: Option<(SocketAddr, SocketAddr)>, tlvs: &[u8]) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x20 | command);
    let mut body = Vec::new();
    let family = match addresses {
        None => 0x00,
        Some((client, server)) => {
            let (family, ips): (u8, Vec<u8>) = match (client.ip(), server.ip()) {
                (IpAddr::V4(c), IpAddr::V4(s)) => (0x11, [c.octets(), s.octets()].concat()),
                (IpAddr::V6(c), IpAddr::V6(s)) => (0x21, [c.octets(), s.octets()].concat()),
                _ => panic!("one family for both addresses"),
            };
            body.extend_from_slice(&ips);
            body.extend_from_slice(&client.port().to_be_bytes());
            body.extend_from_slice(&server.port().to_be_bytes());
            family
        }
    };
    body.extend_from_slice(tlvs);
    header.push(family);
    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
    header.extend_from_slice(&body);
    header
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn connect(to: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    stream.set_nodelay(true).unwrap();
    stream
}

/// A connection to `to` that has sent `header`.
fn with_header(to: SocketAddr, header: &[u8]) -> TcpStream {
    let mut stream = connect(to);
    stream.write_all(header).unwrap();
    stream
}

/// Whether the server closes `stream` within `within` without having sent a byte.
fn closed_unanswered(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("the server answered {n} bytes"),
        Err(e) if common::stun_client::is_timeout(&e) => false,
        // Closed with unread bytes in its buffer: a reset.
        Err(_) => true,
    }
}

/// The XOR-MAPPED-ADDRESS a Binding request on `client` gets.
fn mapped(client: &mut StunClient) -> SocketAddr {
    let answer = client.request(Method::BINDING, &|_| {});
    assert_eq!(answer.class, Class::Success, "{answer:?}");
    answer
        .xor_address(attr::XOR_MAPPED_ADDRESS)
        .expect("XOR-MAPPED-ADDRESS")
}

/// A listener table for the test configuration.
fn listener(transport: &str, proxy_from: Option<&str>) -> String {
    let mut table = format!("[[listen]]\ntransport = {transport:?}\naddress = \"127.0.0.1:0\"\n");
    if let Some(from) = proxy_from {
        table += &format!("proxy-protocol = true\nproxy-from = [{from:?}]\n");
    }
    table
}

/// A server with UDP, and TCP and TLS listeners behind balancers on 127.0.0.1, a direct TCP
/// listener and a TCP listener whose only balancer is 127.0.0.2 (`addrs("tcp")`: proxied,
/// direct, foreign).
fn proxied_server(extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = common::tls_cert(dir.path());
    let config = TestConfig {
        transports: vec!["udp"],
        extra: format!(
            "{}{}{}{}[tls]\ncertificate = {cert:?}\nprivate-key = {key:?}\n\n\
             [limits]\nstream-idle-timeout = \"{}s\"\n{extra}",
            listener("tcp", Some("127.0.0.1/32")),
            listener("tls", Some("127.0.0.0/8")),
            listener("tcp", None),
            listener("tcp", Some("127.0.0.2/32")),
            IDLE.as_secs(),
        ),
        ..TestConfig::default()
    };
    let toml = common::base_config(&config, dir.path());
    Server::start_in(&toml, dir)
}

#[test]
fn headers_of_both_versions_name_the_client_over_tcp_and_tls() {
    let server = proxied_server("");
    let [proxied, direct, _] = server.addrs("tcp")[..] else {
        panic!("three TCP listeners: {:?}", server.addrs("tcp"));
    };
    let tls = server.addr("tls");

    let client = addr("198.51.100.7:40001");
    let over_v1 = with_header(proxied, &v1(client, proxied));
    assert_eq!(mapped(&mut StunClient::over_tcp(over_v1, "", "")), client);

    let client = addr("198.51.100.8:40002");
    let over_v2 = with_header(proxied, &v2(1, Some((client, proxied)), &[]));
    assert_eq!(mapped(&mut StunClient::over_tcp(over_v2, "", "")), client);

    // IPv6 clients, and TLVs (skipped) after the addresses.
    let client = addr("[2001:db8::7]:40003");
    let tlvs = [0x04, 0x00, 0x03, b'a', b'b', b'c']; // PP2_TYPE_NOOP, 3 bytes
    let header = v2(1, Some((client, addr("[2001:db8::1]:3478"))), &tlvs);
    let over_v6 = with_header(proxied, &header);
    assert_eq!(mapped(&mut StunClient::over_tcp(over_v6, "", "")), client);
    let header = v1(client, addr("[2001:db8::1]:3478"));
    let over_v1_v6 = with_header(proxied, &header);
    assert_eq!(
        mapped(&mut StunClient::over_tcp(over_v1_v6, "", "")),
        client
    );

    // Over TLS the header comes first, then the handshake.
    let client = addr("198.51.100.9:40004");
    let over_tls = with_header(tls, &v2(1, Some((client, tls)), &[]));
    assert_eq!(mapped(&mut StunClient::over_tls(over_tls, "", "")), client);

    // A balancer's own connection (LOCAL, UNKNOWN): its own address stands.
    for header in [v2(0, None, &[]), b"PROXY UNKNOWN\r\n".to_vec()] {
        let own = with_header(proxied, &header);
        let local = own.local_addr().unwrap();
        assert_eq!(mapped(&mut StunClient::over_tcp(own, "", "")), local);
    }

    // The header and the first request in one segment, as a balancer may send them.
    let client = addr("198.51.100.10:40005");
    let mut both = v1(client, proxied);
    both.extend_from_slice(&BINDING_REQUEST);
    let mut stream = with_header(proxied, &both);
    let mut answer = [0u8; 64];
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = stream.read(&mut answer).unwrap();
    assert!(n >= 20 && answer[..2] == [0x01, 0x01], "{:?}", &answer[..n]);

    // A whole TURN session behind the header: allocate, permit, relay both ways.
    let (peer, echo) = common::udp_echo_peer();
    let client = addr("198.51.100.11:40006");
    let stream = with_header(proxied, &v2(1, Some((client, proxied)), &[]));
    let mut turn = StunClient::over_tcp(stream, "alice", "wonderland");
    let relayed = turn.allocate().expect("an allocation behind the header");
    assert_eq!(turn.permit(&[peer]), None);
    turn.send_indication(peer, b"through the balancer");
    let data = turn.recv_data(Instant::now() + Duration::from_secs(5));
    assert_eq!(data.as_deref(), Some(&b"through the balancer"[..]));
    assert_eq!(echo.echoed(), 1);
    eprintln!("relayed {relayed} for {client} behind a PROXY header");

    // The direct listener is unchanged: no header, and the socket's address.
    let mut plain = StunClient::tcp(direct, "", "");
    let local = plain.local_addr();
    assert_eq!(mapped(&mut plain), local);
    assert_eq!(server.stats().get("proxy_refused"), 0);
}

#[test]
fn connections_without_a_valid_header_or_from_elsewhere_are_closed() {
    let server = proxied_server("");
    let [proxied, direct, foreign] = server.addrs("tcp")[..] else {
        panic!("three TCP listeners: {:?}", server.addrs("tcp"));
    };
    let quickly = Duration::from_secs(5);
    let client = addr("198.51.100.7:40001");
    let mut refused = 0;

    // No header: a STUN request where the header should be.
    let mut stream = with_header(proxied, &BINDING_REQUEST);
    assert!(closed_unanswered(&mut stream, quickly), "no header");
    refused += 1;
    // A header where none is expected is not STUN either (the direct listener's own refusal).
    let mut stream = with_header(direct, &v1(client, direct));
    assert!(
        closed_unanswered(&mut stream, quickly),
        "header on a direct listener"
    );

    // A valid header from a source outside proxy-from: closed before it is read.
    let mut stream = with_header(foreign, &v1(client, foreign));
    assert!(closed_unanswered(&mut stream, quickly), "untrusted source");
    refused += 1;

    // Malformed, oversized and repeated headers.
    let mut long_line = b"PROXY TCP4 ".to_vec();
    long_line.resize(200, b'1');
    let mut declared_large = v2(1, Some((client, proxied)), &[]);
    declared_large[14..16].copy_from_slice(&60_000u16.to_be_bytes());
    let mut version_3 = v2(1, Some((client, proxied)), &[]);
    version_3[12] = 0x31;
    let mut cut_addresses = v2(1, Some((client, proxied)), &[]);
    cut_addresses[15] = 4; // declares 4 bytes of a 12-byte IPv4 block
    cut_addresses.truncate(20);
    let mut twice = v1(client, proxied);
    twice.extend_from_slice(&v1(client, proxied));
    for (what, header) in [
        (
            "an unknown protocol",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        ),
        (
            "a port out of range",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n".to_vec(),
        ),
        ("mixed families", b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n".to_vec()),
        ("a line without CRLF past 107 bytes", long_line),
        ("a v2 header declaring 60,000 bytes", declared_large),
        ("a v2 header of version 3", version_3),
        ("a v2 header cutting its addresses short", cut_addresses),
        ("a header sent twice", twice),
    ] {
        let mut stream = with_header(proxied, &header);
        assert!(closed_unanswered(&mut stream, quickly), "{what}");
        if what != "a header sent twice" {
            refused += 1; // The second header is refused as STUN: counted as malformed.
        }
    }
    let stats = server.wait_for_counter("proxy_refused", refused, Duration::from_secs(5));
    assert_eq!(stats.get("proxy_refused"), refused);

    // Slow but in time: a header a byte at a time, well within stream-idle-timeout.
    let header = v1(client, proxied);
    let mut stream = connect(proxied);
    for byte in &header {
        stream.write_all(&[*byte]).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(mapped(&mut StunClient::over_tcp(stream, "", "")), client);

    // Too slow: half a header, then silence. Closed by stream-idle-timeout, not before.
    let timeouts = server.stats().get("stream_timeouts");
    let mut stream = with_header(proxied, &header[..20]);
    let started = Instant::now();
    assert!(closed_unanswered(&mut stream, IDLE * 5), "a stalled header");
    let waited = started.elapsed();
    eprintln!("a stalled header was closed after {waited:?} (stream-idle-timeout {IDLE:?})");
    assert!(
        waited >= IDLE - Duration::from_millis(100),
        "closed after {waited:?}"
    );
    let stats = server.wait_for_counter("stream_timeouts", timeouts + 1, Duration::from_secs(5));
    assert_eq!(stats.get("proxy_refused"), refused);
    assert!(server.is_turnpike());
}

#[test]
fn the_per_source_cap_counts_the_client_the_header_names() {
    let server = proxied_server("max-tcp-connections-per-source = 1\n");
    let proxied = server.addrs("tcp")[0];
    // Every connection comes from the balancer (127.0.0.1): each header's client is counted.
    let first = addr("198.51.100.7:40001");
    let mut one = StunClient::over_tcp(with_header(proxied, &v1(first, proxied)), "", "");
    assert_eq!(mapped(&mut one), first);
    let second = addr("198.51.100.8:40001");
    let mut two = StunClient::over_tcp(with_header(proxied, &v1(second, proxied)), "", "");
    assert_eq!(mapped(&mut two), second);
    let before = server.stats().get("tcp_rejected_per_source");
    let again = addr("198.51.100.7:40002");
    let mut three = with_header(proxied, &v1(again, proxied));
    assert!(
        closed_unanswered(&mut three, Duration::from_secs(5)),
        "a second connection of 198.51.100.7"
    );
    let stats = server.wait_for_counter(
        "tcp_rejected_per_source",
        before + 1,
        Duration::from_secs(5),
    );
    assert_eq!(stats.get("proxy_refused"), 0);
    // Both first clients still work.
    assert_eq!(mapped(&mut one), first);
    assert_eq!(mapped(&mut two), second);
}

#[test]
fn a_header_naming_a_connected_client_again_is_refused() {
    // One worker: both connections meet in the same table of streams.
    let dir = tempfile::tempdir().unwrap();
    let config = TestConfig {
        transports: vec![],
        workers: 1,
        extra: listener("tcp", Some("127.0.0.1/32")),
        ..TestConfig::default()
    };
    let server = Server::start_in(&common::base_config(&config, dir.path()), dir);
    let proxied = server.addr("tcp");
    let client = addr("198.51.100.7:40001");
    let mut first = StunClient::over_tcp(with_header(proxied, &v1(client, proxied)), "", "");
    assert_eq!(mapped(&mut first), client);
    let mut twin = with_header(proxied, &v1(client, proxied));
    twin.write_all(&BINDING_REQUEST).unwrap();
    assert!(closed_unanswered(&mut twin, Duration::from_secs(5)));
    server.wait_for_counter("proxy_refused", 1, Duration::from_secs(5));
    // The first connection is untouched by its twin's refusal.
    assert_eq!(mapped(&mut first), client);
}

#[test]
fn sighup_turns_the_proxy_protocol_on_for_new_connections() {
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let plain = format!("[[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\n");
    let config = TestConfig {
        transports: vec![],
        extra: plain.clone(),
        ..TestConfig::default()
    };
    let toml = common::base_config(&config, dir.path());
    let server = Server::start_in(&toml, dir);
    let listening = server.addr("tcp");
    let mut before = StunClient::tcp(listening, "", "");
    let own = before.local_addr();
    assert_eq!(mapped(&mut before), own);

    let with_proxy = toml.replace(
        &plain,
        &format!("{plain}proxy-protocol = true\nproxy-from = [\"127.0.0.1/32\"]\n"),
    );
    std::fs::write(server.config_path(), &with_proxy).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("configuration reloaded", 1, Duration::from_secs(10));
    let client = addr("198.51.100.7:40001");
    let mut after = StunClient::over_tcp(with_header(listening, &v1(client, listening)), "", "");
    assert_eq!(mapped(&mut after), client);
    let mut headerless = with_header(listening, &BINDING_REQUEST);
    assert!(closed_unanswered(&mut headerless, Duration::from_secs(5)));
    // The connection accepted before the reload goes on as it was.
    assert_eq!(mapped(&mut before), own);

    // And off again.
    std::fs::write(server.config_path(), &toml).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("configuration reloaded", 2, Duration::from_secs(10));
    let mut direct = StunClient::tcp(listening, "", "");
    let own = direct.local_addr();
    assert_eq!(mapped(&mut direct), own);
}

/// HAProxy in TCP mode on loopback, stopped on drop.
struct HaProxy(Child);

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts HAProxy with one frontend per `(frontend port, backend, server option)`, and waits
/// until every frontend accepts.
fn haproxy(dir: &Path, routes: &[(u16, SocketAddr, &str)]) -> HaProxy {
    let binary = common::require_tool("haproxy");
    let mut config = "global\n  maxconn 256\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
                      timeout client 60s\n  timeout server 60s\n"
        .to_owned();
    for (i, (port, backend, option)) in routes.iter().enumerate() {
        config += &format!(
            "\nfrontend f{i}\n  bind 127.0.0.1:{port}\n  default_backend b{i}\n\
             \nbackend b{i}\n  server turnpike {backend} {option}\n"
        );
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let (stdout, stderr) = common::output_file(&dir.join("haproxy.log"));
    let child = Command::new(binary)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("start haproxy");
    let haproxy = HaProxy(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    for (port, _, _) in routes {
        let front = SocketAddr::from(([127, 0, 0, 1], *port));
        while TcpStream::connect_timeout(&front, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy does not listen on {front}: {}",
                std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    haproxy
}

#[test]
fn haproxy_in_front_names_the_real_client_with_either_version() {
    let server = proxied_server("");
    let proxied = server.addrs("tcp")[0];
    let tls = server.addr("tls");
    let dir = tempfile::tempdir().unwrap();
    let (v2_port, v1_port, tls_port) = loop {
        let ports = (
            common::free_port(),
            common::free_port(),
            common::free_port(),
        );
        if ports.0 != ports.1 && ports.1 != ports.2 && ports.0 != ports.2 {
            break ports;
        }
    };
    let _haproxy = haproxy(
        dir.path(),
        &[
            (v2_port, proxied, "send-proxy-v2"),
            (v1_port, proxied, "send-proxy"),
            (tls_port, tls, "send-proxy-v2"),
        ],
    );
    let front = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));

    for (port, what) in [(v2_port, "send-proxy-v2"), (v1_port, "send-proxy")] {
        let stream = connect(front(port));
        let me = stream.local_addr().unwrap();
        let mut client = StunClient::over_tcp(stream, "", "");
        // HAProxy connects to turnpike from a port of its own; the header says who we are.
        assert_eq!(mapped(&mut client), me, "through haproxy {what}");
    }

    let stream = connect(front(tls_port));
    let me = stream.local_addr().unwrap();
    let mut client = StunClient::over_tls(stream, "", "");
    assert_eq!(mapped(&mut client), me, "TLS through haproxy send-proxy-v2");

    // A TURN session through HAProxy, relayed to a peer and back.
    let (peer, echo) = common::udp_echo_peer();
    let stream = connect(front(v2_port));
    let me = stream.local_addr().unwrap();
    let mut turn = StunClient::over_tcp(stream, "alice", "wonderland");
    turn.allocate().expect("an allocation through haproxy");
    assert_eq!(turn.permit(&[peer]), None);
    for round in 0..3u8 {
        turn.send_indication(peer, &[round; 100]);
        let data = turn.recv_data(Instant::now() + Duration::from_secs(5));
        assert_eq!(data, Some(vec![round; 100]));
    }
    assert_eq!(echo.echoed(), 3);
    // The status API is not configured here; the allocation log names the real client.
    drop(turn);
    let ended = server.wait_for_log("allocation ended", 1, Duration::from_secs(10));
    assert!(
        ended.iter().any(|line| line.contains(&me.to_string())),
        "{me} not in {ended:?}"
    );
    assert_eq!(server.stats().get("proxy_refused"), 0);
}
