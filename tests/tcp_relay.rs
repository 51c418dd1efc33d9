//! TCP allocations (RFC 6062) against the real binary, with the raw test client: Allocate over
//! TCP and TLS (400 over UDP), Connect to a TCP echo peer and ConnectionBind on a new
//! connection, connections from peers announced with ConnectionAttempt, every error code of
//! Connect and ConnectionBind, the 30-second bind deadline, the peer policy, the bandwidth
//! limit on a splice, the per-source TCP cap, and the end of an allocation closing its data
//! connections.
//!
//! `--nocapture` prints the measured figures.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::stun_client::{RawStream, StunClient};
use common::{Server, TestConfig, base_config};
use turnpike::client::Signer;
use turnpike::stun::{Class, Message, MessageWriter, Method, TransactionId, attr};

/// How long a wire exchange may take on a loaded machine.
const WAIT: Duration = Duration::from_secs(10);

/// A server granting TCP allocations, `extra` TOML appended (e.g. `[limits]`).
fn tcp_server(transports: Vec<&'static str>, extra: &str) -> Server {
    let config = TestConfig {
        transports,
        users: vec![("alice", "wonderland"), ("bob", "builder")],
        allow: vec!["127.0.0.0/8"],
        extra: extra.to_owned(),
        ..TestConfig::default()
    };
    let dir = tempfile::tempdir().expect("create a tempdir");
    let toml = base_config(&config, dir.path()).replace("\n[relay]\n", "\n[relay]\ntcp = true\n");
    Server::start_in(&toml, dir)
}

fn client(server: &Server, transport: &str, user: (&str, &str)) -> StunClient {
    match transport {
        "tcp" => StunClient::tcp(server.addr("tcp"), user.0, user.1),
        "tls" => StunClient::tls(server.addr("tls"), user.0, user.1),
        _ => StunClient::udp(server.addr("udp"), "127.0.0.1:0", user.0, user.1),
    }
}

const ALICE: (&str, &str) = ("alice", "wonderland");

/// A TCP allocation on a `transport` control connection, permitted to reach 127.0.0.1.
fn tcp_allocation(server: &Server, transport: &str) -> (StunClient, SocketAddr) {
    let mut control = client(server, transport, ALICE);
    let answer = control.request(Method::ALLOCATE, &|w| w.requested_transport(6).unwrap());
    assert_eq!(answer.class, Class::Success, "{answer:?}");
    let relayed = answer
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .expect("XOR-RELAYED-ADDRESS");
    assert_eq!(control.permit(&["127.0.0.1:9".parse().unwrap()]), None);
    (control, relayed)
}

/// A TCP echo peer on 127.0.0.1: each connection is echoed until it closes (at most a minute).
fn tcp_echo_peer() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a TCP peer");
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                stream
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                let mut buf = [0u8; 16384];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Connect to `peer`: the answer's code, or the CONNECTION-ID.
fn connect(control: &mut StunClient, peer: SocketAddr) -> Result<u32, u16> {
    let answer = control.request(Method::CONNECT, &|w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap()
    });
    match answer.code {
        Some(code) => Err(code),
        None => {
            let msg = Message::parse(&answer.bytes).unwrap();
            Ok(
                attr::decode_connection_id(msg.get(attr::CONNECTION_ID).expect("CONNECTION-ID"))
                    .unwrap(),
            )
        }
    }
}

/// Connect to `peer` once the splice of an earlier connection to it has ended (446 until
/// then: "pending or active", RFC 6062 §5.2).
fn connect_when_free(control: &mut StunClient, peer: SocketAddr) -> u32 {
    let deadline = Instant::now() + WAIT;
    loop {
        match connect(control, peer) {
            Ok(id) => return id,
            Err(446) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Err(code) => panic!("Connect to {peer}: {code}"),
        }
    }
}

/// A ConnectionBind with these CONNECTION-ID values on a new `transport` connection as `user`:
/// the answer's code, or the data connection.
fn bind_with(
    server: &Server,
    transport: &str,
    user: (&str, &str),
    ids: &[&[u8]],
) -> Result<(RawStream, Vec<u8>), u16> {
    let mut data = client(server, transport, user);
    let ids: Vec<Vec<u8>> = ids.iter().map(|id| id.to_vec()).collect();
    let answer = data.request(Method::CONNECTION_BIND, &|w| {
        for id in &ids {
            w.attribute(attr::CONNECTION_ID, id).unwrap();
        }
    });
    match answer.code {
        Some(code) => Err(code),
        None => Ok(data.into_raw()),
    }
}

fn bind(server: &Server, transport: &str, id: u32) -> (RawStream, Vec<u8>) {
    bind_with(server, transport, ALICE, &[&id.to_be_bytes()]).expect("ConnectionBind succeeds")
}

/// Writes `payload` and reads as many bytes back, with the ones already read first.
fn echo(data: &mut RawStream, early: Vec<u8>, payload: &[u8]) -> Vec<u8> {
    data.write_all(payload).unwrap();
    data.flush().unwrap();
    read_exactly(data, early, payload.len())
}

fn read_exactly(data: &mut RawStream, mut got: Vec<u8>, len: usize) -> Vec<u8> {
    data.set_read_timeout(WAIT);
    let mut buf = [0u8; 16384];
    while got.len() < len {
        match data.read(&mut buf) {
            Ok(0) => panic!("closed after {} of {len} bytes", got.len()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read after {} of {len} bytes: {e}", got.len()),
        }
    }
    got
}

/// Whether the other side closes `stream` (EOF or reset) by `deadline`; bytes are skipped.
fn closed_by(stream: &mut impl Read, set_timeout: impl Fn(Duration), deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        set_timeout(left);
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// The next ConnectionAttempt indication on the control connection: (CONNECTION-ID, peer).
fn connection_attempt(control: &mut StunClient) -> Option<(u32, SocketAddr)> {
    let deadline = Instant::now() + WAIT;
    while let Some(frame) = control.recv_frame(deadline) {
        let Ok(msg) = Message::parse(&frame) else {
            continue;
        };
        if (msg.method(), msg.class()) != (Method::CONNECTION_ATTEMPT, Class::Indication) {
            continue;
        }
        let id = attr::decode_connection_id(msg.get(attr::CONNECTION_ID)?).ok()?;
        let peer =
            attr::decode_xor_address(msg.get(attr::XOR_PEER_ADDRESS)?, &msg.transaction_id())
                .ok()?;
        return Some((id, peer));
    }
    None
}

#[test]
fn allocate_tcp_over_tcp_and_tls_but_not_udp_nor_with_udp_only_attributes() {
    let server = tcp_server(vec!["udp", "tcp", "tls"], "");
    for transport in ["tcp", "tls"] {
        let (_control, relayed) = tcp_allocation(&server, transport);
        assert_eq!(relayed.ip().to_string(), "127.0.0.1");
        // A listening socket: a TCP connection to it is accepted (and closed: no permission
        // for 127.0.0.2).
        assert!(
            TcpStream::connect_timeout(&relayed, WAIT).is_ok(),
            "{transport}"
        );
    }
    // RFC 6062 §5.1: over UDP, 400; DONT-FRAGMENT, EVEN-PORT, RESERVATION-TOKEN: 400.
    let mut udp = client(&server, "udp", ALICE);
    let answer = udp.request(Method::ALLOCATE, &|w| w.requested_transport(6).unwrap());
    assert_eq!(answer.code, Some(400));
    let mut tcp = client(&server, "tcp", ALICE);
    for (typ, value) in [
        (attr::DONT_FRAGMENT, &[][..]),
        (attr::EVEN_PORT, &[0x80][..]),
        (attr::RESERVATION_TOKEN, &[7; 8][..]),
    ] {
        let answer = tcp.request(Method::ALLOCATE, &|w| {
            w.requested_transport(6).unwrap();
            w.attribute(typ, value).unwrap();
        });
        assert_eq!(answer.code, Some(400), "attribute {typ:#x}");
    }
    // Any other protocol: 442.
    let answer = tcp.request(Method::ALLOCATE, &|w| w.requested_transport(132).unwrap());
    assert_eq!(answer.code, Some(442));
    assert!(
        server
            .log_messages("allocation created")
            .iter()
            .all(|l| l.contains("tcp"))
    );
}

#[test]
fn tcp_allocations_are_refused_with_442_unless_relay_tcp_is_on() {
    let server = Server::with(&TestConfig::default());
    let mut tcp = StunClient::tcp(server.addr("tcp"), "alice", "wonderland");
    let answer = tcp.request(Method::ALLOCATE, &|w| w.requested_transport(6).unwrap());
    assert_eq!(answer.code, Some(442));
    // Connect is then an unknown method, as before.
    let answer = tcp.request(Method::CONNECT, &|_| {});
    assert_eq!(answer.code, Some(400));
}

#[test]
fn connect_and_connection_bind_relay_bytes_both_ways_over_tcp_and_tls() {
    let server = tcp_server(vec!["tcp", "tls"], "");
    let peer = tcp_echo_peer();
    let before = server.stats();
    for transport in ["tcp", "tls"] {
        let (mut control, _) = tcp_allocation(&server, transport);
        // Two workers: the data connections land on either; both are bound.
        for round in 0..3u8 {
            let id = connect_when_free(&mut control, peer);
            let (mut data, early) = bind(&server, transport, id);
            let payload: Vec<u8> = (0..50_000u32).map(|i| (i as u8) ^ round).collect();
            assert_eq!(
                echo(&mut data, early, &payload),
                payload,
                "{transport} {round}"
            );
            drop(data);
            // The splice ends: the peer may be connected to again.
            let id = connect_when_free(&mut control, peer);
            drop(bind(&server, transport, id));
        }
    }
    let stats = server.stats();
    eprintln!(
        "opened {} bound {} to_peer {} to_client {}",
        stats.since(&before, "tcp_relay_opened"),
        stats.since(&before, "tcp_relay_bound"),
        stats.since(&before, "tcp_relay_to_peer_bytes"),
        stats.since(&before, "tcp_relay_to_client_bytes"),
    );
    assert_eq!(stats.since(&before, "tcp_relay_opened"), 12);
    assert_eq!(stats.since(&before, "tcp_relay_bound"), 12);
    assert!(stats.since(&before, "tcp_relay_to_peer_bytes") >= 300_000);
    assert!(stats.since(&before, "tcp_relay_to_client_bytes") >= 300_000);
}

#[test]
fn the_allocation_list_counts_what_the_splices_carried() {
    const TOKEN: &str = "tcp-relay-token-0123456789";
    let http = format!("[http]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n");
    let server = tcp_server(vec!["tcp"], &http);
    let (mut control, relayed) = tcp_allocation(&server, "tcp");
    let peer = tcp_echo_peer();
    // Two spliced connections to the same echo peer, one after the other.
    let mut sent = 0;
    for (round, len) in [(0u8, 1_000usize), (1, 30_000)] {
        let id = connect_when_free(&mut control, peer);
        let (mut data, early) = bind(&server, "tcp", id);
        let payload = vec![round; len];
        assert_eq!(echo(&mut data, early, &payload), payload);
        sent += len as u64;
        drop(data);
    }
    let page = common::http::get_json(server.addr("http"), "/api/v1/allocations", TOKEN);
    let list = page["allocations"].as_array().expect("a list");
    assert_eq!(list.len(), 1, "{page}");
    let info = &list[0];
    eprintln!("{info}");
    assert_eq!(info["relay_transport"], "tcp");
    assert_eq!(info["relay"], relayed.to_string());
    // The echo sent back every byte; nothing else was relayed.
    assert_eq!(info["to_peer"]["bytes"], sent, "{info}");
    assert_eq!(info["to_client"]["bytes"], sent, "{info}");
    for way in ["to_peer", "to_client"] {
        let chunks = info[way]["packets"].as_u64().unwrap();
        assert!((2..=sent).contains(&chunks), "{way}: {chunks} chunks");
    }
}

#[test]
fn a_permitted_peer_connecting_to_the_relayed_address_is_announced_and_spliced() {
    let server = tcp_server(vec!["tcp"], "");
    let (mut control, relayed) = tcp_allocation(&server, "tcp");
    let mut peer = TcpStream::connect_timeout(&relayed, WAIT).expect("the relay accepts");
    let (id, from) = connection_attempt(&mut control).expect("a ConnectionAttempt");
    assert_eq!(from, peer.local_addr().unwrap());
    // What the peer sent before the bind waits for it (§5.3).
    peer.write_all(b"early from the peer").unwrap();
    let (mut data, early) = bind(&server, "tcp", id);
    let got = read_exactly(&mut data, early, b"early from the peer".len());
    assert_eq!(got, b"early from the peer");
    data.write_all(b"hello peer").unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 10];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello peer");
    // The peer closes: the data connection closes too.
    drop(peer);
    let (mut data_read, timeout) = (data, WAIT);
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 64];
    data_read.set_read_timeout(timeout);
    let ended = loop {
        match data_read.read(&mut buf) {
            Ok(0) | Err(_) => break true,
            Ok(_) if Instant::now() < deadline => continue,
            Ok(_) => break false,
        }
    };
    assert!(ended, "the data connection closed after the peer did");
}

#[test]
fn an_unpermitted_peer_is_closed_at_once_and_never_announced() {
    let server = tcp_server(vec!["tcp"], "");
    let (mut control, relayed) = tcp_allocation(&server, "tcp");
    // From 127.0.0.2: allowed by the policy, but no permission.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.connect_timeout(&relayed.into(), WAIT).unwrap();
    let mut stranger = TcpStream::from(socket);
    let started = Instant::now();
    let stranger_clone = stranger.try_clone().unwrap();
    assert!(
        closed_by(
            &mut stranger,
            |t| stranger_clone.set_read_timeout(Some(t)).unwrap(),
            Instant::now() + WAIT
        ),
        "closed"
    );
    eprintln!("unpermitted peer closed after {:?}", started.elapsed());
    assert!(
        control
            .recv_frame(Instant::now() + Duration::from_millis(500))
            .is_none(),
        "nothing announced"
    );
}

#[test]
fn connect_errors_403_446_447_and_400_on_a_udp_allocation() {
    let server = tcp_server(vec!["udp", "tcp"], "");
    let peer = tcp_echo_peer();
    let (mut control, _) = tcp_allocation(&server, "tcp");
    // No permission for 127.0.0.2 (the policy allows it): 403.
    let other: SocketAddr = SocketAddr::new("127.0.0.2".parse().unwrap(), peer.port());
    assert_eq!(connect(&mut control, other), Err(403));
    // The policy refuses 10.0.0.0/8: 403, whatever the permissions.
    assert_eq!(
        connect(&mut control, "10.1.2.3:80".parse().unwrap()),
        Err(403)
    );
    // Twice to one peer: 446.
    let id = connect(&mut control, peer).expect("the first Connect");
    assert_eq!(connect(&mut control, peer), Err(446));
    // A port nobody listens on: 447, quickly.
    let closed = common::free_port();
    let started = Instant::now();
    let refused = connect(
        &mut control,
        SocketAddr::new("127.0.0.1".parse().unwrap(), closed),
    );
    eprintln!("447 after {:?}", started.elapsed());
    assert_eq!(refused, Err(447));
    // Bad requests: no XOR-PEER-ADDRESS.
    let answer = control.request(Method::CONNECT, &|_| {});
    assert_eq!(answer.code, Some(400));
    // A UDP allocation takes no Connect: 400.
    let mut udp = client(&server, "udp", ALICE);
    udp.allocate().expect("a UDP allocation");
    assert_eq!(connect(&mut udp, peer), Err(400));
    // A UDP client without an allocation: 437.
    let mut nobody = client(&server, "udp", ALICE);
    assert_eq!(connect(&mut nobody, peer), Err(437));
    // The first connection still binds.
    let (mut data, early) = bind(&server, "tcp", id);
    assert_eq!(echo(&mut data, early, b"still there"), b"still there");
    let stats = server.stats();
    assert_eq!(stats.get("tcp_relay_failed"), 1);
}

#[test]
fn connection_bind_errors_400_441_and_hostile_connection_ids() {
    let server = tcp_server(vec!["udp", "tcp", "tls"], "");
    let peer = tcp_echo_peer();
    let (mut control, _) = tcp_allocation(&server, "tcp");
    let id = connect(&mut control, peer).expect("Connect");
    let value = id.to_be_bytes();
    // On a UDP listener: 400.
    assert_eq!(bind_with(&server, "udp", ALICE, &[&value]).err(), Some(400));
    // Missing, truncated, oversized, repeated, unknown: 400.
    for ids in [
        &[][..],
        &[&value[..3]][..],
        &[&[1u8; 8][..]][..],
        &[&value[..], &value[..]][..],
        &[&(id ^ 0x00ff_ffff).to_be_bytes()[..]][..],
    ] {
        assert_eq!(
            bind_with(&server, "tcp", ALICE, ids).err(),
            Some(400),
            "{ids:?}"
        );
    }
    // On the control connection itself: 400.
    let answer = control.request(Method::CONNECTION_BIND, &|w| {
        w.attribute(attr::CONNECTION_ID, &value).unwrap()
    });
    assert_eq!(answer.code, Some(400));
    // Another user's credentials: 441.
    assert_eq!(
        bind_with(&server, "tcp", ("bob", "builder"), &[&value]).err(),
        Some(441)
    );
    // Wrong password: 401 (never reaches the connection).
    assert_eq!(
        bind_with(&server, "tcp", ("alice", "looking-glass"), &[&value]).err(),
        Some(401)
    );
    // None of that took the connection: it binds, over TLS, once.
    let (mut data, early) = bind(&server, "tls", id);
    assert_eq!(echo(&mut data, early, b"bound"), b"bound");
    assert_eq!(bind_with(&server, "tcp", ALICE, &[&value]).err(), Some(400));
}

#[test]
fn data_sent_before_the_bind_answer_is_relayed_after_it() {
    let server = tcp_server(vec!["tcp"], "");
    let (mut control, _) = tcp_allocation(&server, "tcp");
    let id = connect(&mut control, tcp_echo_peer()).expect("Connect");
    let mut data = StunClient::tcp(server.addr("tcp"), "alice", "wonderland");
    let mut signer = Signer::new("alice", "wonderland");
    let connection_bind = |signer: Option<&mut Signer>, tid: u8| {
        let mut buf = [0u8; 512];
        let mut w = MessageWriter::new(
            &mut buf,
            Method::CONNECTION_BIND,
            Class::Request,
            TransactionId([tid; 12]),
        )
        .unwrap();
        w.attribute(attr::CONNECTION_ID, &id.to_be_bytes()).unwrap();
        if let Some(signer) = signer {
            signer.sign(&mut w).unwrap();
        }
        w.fingerprint().unwrap();
        let n = w.finish();
        buf[..n].to_vec()
    };
    // The 401 that gives the nonce.
    data.send_frame(&connection_bind(None, 1));
    let challenge = data.recv_frame(Instant::now() + WAIT).expect("a 401");
    assert!(signer.retry(&Message::parse(&challenge).unwrap(), 0));
    // The signed ConnectionBind with application data right behind it, in one write.
    let mut frame = connection_bind(Some(&mut signer), 2);
    frame.extend_from_slice(b"sent too early");
    data.send_frame(&frame);
    let answer = data.recv_frame(Instant::now() + WAIT).expect("an answer");
    let answer = Message::parse(&answer).unwrap();
    assert_eq!(answer.class(), Class::Success);
    let (mut raw, early) = data.into_raw();
    assert_eq!(read_exactly(&mut raw, early, 14), b"sent too early");
    assert_eq!(echo(&mut raw, Vec::new(), b"after"), b"after");
}

#[test]
fn an_unbound_connection_is_closed_after_thirty_seconds() {
    let server = tcp_server(vec!["tcp"], "");
    let (mut control, relayed) = tcp_allocation(&server, "tcp");
    let mut peer = TcpStream::connect_timeout(&relayed, WAIT).expect("the relay accepts");
    let (id, _) = connection_attempt(&mut control).expect("a ConnectionAttempt");
    let opened = Instant::now();
    let peer_clone = peer.try_clone().unwrap();
    let closed = closed_by(
        &mut peer,
        |t| peer_clone.set_read_timeout(Some(t)).unwrap(),
        opened + Duration::from_secs(45),
    );
    let after = opened.elapsed();
    eprintln!("unbound peer connection closed after {after:?}");
    assert!(closed, "closed within 45 s");
    assert!(after >= Duration::from_secs(29), "closed early: {after:?}");
    assert_eq!(
        bind_with(&server, "tcp", ALICE, &[&id.to_be_bytes()]).err(),
        Some(400)
    );
    assert_eq!(server.stats().get("tcp_relay_bind_timeouts"), 1);
}

#[test]
fn deleting_the_allocation_closes_its_data_and_peer_connections() {
    let server = tcp_server(vec!["tcp"], "");
    let (mut control, relayed) = tcp_allocation(&server, "tcp");
    let mut peer = TcpStream::connect_timeout(&relayed, WAIT).expect("the relay accepts");
    let (id, _) = connection_attempt(&mut control).expect("a ConnectionAttempt");
    let (mut data, early) = bind(&server, "tcp", id);
    peer.write_all(b"x").unwrap();
    assert_eq!(read_exactly(&mut data, early, 1), b"x");
    assert_eq!(control.refresh(0), None);
    let deadline = Instant::now() + WAIT;
    let peer_clone = peer.try_clone().unwrap();
    assert!(closed_by(
        &mut peer,
        |t| peer_clone.set_read_timeout(Some(t)).unwrap(),
        deadline
    ));
    let mut buf = [0u8; 16];
    data.set_read_timeout(WAIT);
    assert!(
        matches!(data.read(&mut buf), Ok(0) | Err(_)),
        "data connection closed"
    );
    let ended = server.wait_for_log("allocation ended", 1, WAIT);
    eprintln!("{}", ended[0]);
    assert!(ended[0].contains("tcp"));
}

/// Echoes `len` bytes through a splice, written on another thread so that neither direction
/// waits on the other; returns how long it took.
fn echo_timed(data: &mut RawStream, early: Vec<u8>, len: usize) -> Duration {
    let payload = vec![0x5a; len];
    let started = Instant::now();
    let writer = {
        let RawStream::Tcp(stream) = &data else {
            unreachable!()
        };
        let mut stream = stream.try_clone().unwrap();
        let payload = payload.clone();
        thread::spawn(move || stream.write_all(&payload).unwrap())
    };
    let got = read_exactly(data, early, payload.len());
    writer.join().unwrap();
    let took = started.elapsed();
    assert_eq!(got, payload);
    took
}

#[test]
fn the_allocation_bandwidth_paces_a_splice() {
    // 1 Mbps, both directions together, with a burst of one second (125 kB).
    let server = tcp_server(vec!["tcp"], "[limits]\nallocation-bandwidth = \"1 Mbps\"");
    let (mut control, _) = tcp_allocation(&server, "tcp");
    let id = connect(&mut control, tcp_echo_peer()).expect("Connect");
    let (mut data, early) = bind(&server, "tcp", id);
    // 200 kB each way: 400 kB charged, 275 kB past the burst: at least 2.2 s at 1 Mbps.
    let took = echo_timed(&mut data, early, 200_000);
    eprintln!("400 kB through a 1 Mbps splice in {took:?}");
    assert!(took >= Duration::from_millis(1500), "not paced: {took:?}");
    assert!(took < Duration::from_secs(30), "too slow: {took:?}");
}

#[test]
fn a_reload_sets_and_lifts_the_bandwidth_of_a_running_splice() {
    let server = tcp_server(vec!["tcp"], "");
    let base = std::fs::read_to_string(server.config_path()).expect("read the configuration");
    let (mut control, _) = tcp_allocation(&server, "tcp");
    let id = connect(&mut control, tcp_echo_peer()).expect("Connect");
    let (mut data, early) = bind(&server, "tcp", id);
    let unlimited = echo_timed(&mut data, early, 200_000);
    let mut reloads = 0;
    let mut reload = |limits: &str| {
        std::fs::write(server.config_path(), format!("{base}\n{limits}\n")).unwrap();
        server.signal(libc::SIGHUP);
        reloads += 1;
        let done = server.wait_for_log("configuration reloaded", reloads, WAIT);
        assert_eq!(done.len(), reloads, "reload {reloads} not logged");
    };
    // Limited while the splice runs: the same 400 kB now take at least 2.2 s.
    reload("[limits]\nallocation-bandwidth = \"1 Mbps\"");
    let limited = echo_timed(&mut data, Vec::new(), 200_000);
    // Lifted again: the splice is not held to the old rate (a bounded wait, not a speed test).
    reload("");
    let lifted = echo_timed(&mut data, Vec::new(), 200_000);
    eprintln!(
        "400 kB through one splice: {unlimited:?} unlimited, {limited:?} at 1 Mbps after a reload, {lifted:?} after the limit was lifted"
    );
    assert!(
        limited >= Duration::from_millis(1500),
        "not paced: {limited:?}"
    );
    assert!(
        lifted < Duration::from_secs(30),
        "still held back: {lifted:?}"
    );
    // The splice is still one connection: nothing was reopened.
    assert_eq!(server.stats().get("tcp_relay_bound"), 1);
}

#[test]
fn peer_connections_count_against_the_per_source_cap() {
    // The control connection, two peer connections: the third Connect finds no room.
    let server = tcp_server(vec!["tcp"], "[limits]\nmax-tcp-connections-per-source = 3");
    let peer = tcp_echo_peer();
    let second = tcp_echo_peer();
    let third = tcp_echo_peer();
    let (mut control, _) = tcp_allocation(&server, "tcp");
    connect(&mut control, peer).expect("one");
    connect(&mut control, second).expect("two");
    assert_eq!(connect(&mut control, third), Err(508));
    // A data connection from the same source has no slot either.
    assert!(
        TcpStream::connect_timeout(&server.addr("tcp"), WAIT)
            .map(|mut s| {
                let clone = s.try_clone().unwrap();
                closed_by(
                    &mut s,
                    |t| clone.set_read_timeout(Some(t)).unwrap(),
                    Instant::now() + WAIT,
                )
            })
            .unwrap_or(true),
        "refused at accept"
    );
}

/// coturn's `turnutils_uclient -T` (TCP relay; it implies `-y`, client to client: each client
/// Connects to its partner's relayed address, which announces the connection to the partner
/// with a ConnectionAttempt, and both bind data connections) over `transport`; every message
/// must come back.
fn uclient_tcp_relay(transport: &'static str) {
    let server = tcp_server(vec![transport], "");
    let program = common::require_tool("turnutils_uclient");
    let dir = tempfile::tempdir().expect("create a tempdir");
    let addr = server.addr(transport);
    let mut args: Vec<String> = vec!["-T".into()];
    if transport == "tls" {
        args.push("-S".into());
    }
    args.extend(
        [
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-m",
            "4",
            "-n",
            "20",
            "-l",
            "170",
            "-p",
            &addr.port().to_string(),
            &addr.ip().to_string(),
        ]
        .map(String::from),
    );
    let before = server.stats();
    let log = dir.path().join("uclient.log");
    let (stdout, stderr) = common::output_file(&log);
    let started = Instant::now();
    let mut child = std::process::Command::new(&program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn turnutils_uclient");
    let status = common::wait_bounded(&mut child, Duration::from_secs(60));
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: Vec<&str> = output.lines().rev().take(20).collect();
    let context = format!(
        "turnutils_uclient {}\n{}",
        args.join(" "),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(status.is_some_and(|s| s.success()), "{status:?}; {context}");
    let summary = common::uclient::parse_summary(&output)
        .unwrap_or_else(|| panic!("no statistics; {context}"));
    let stats = server.stats();
    eprintln!(
        "{transport}: {summary:?} in {:?}; connections opened {} bound {}, bytes to peer {} to client {}",
        started.elapsed(),
        stats.since(&before, "tcp_relay_opened"),
        stats.since(&before, "tcp_relay_bound"),
        stats.since(&before, "tcp_relay_to_peer_bytes"),
        stats.since(&before, "tcp_relay_to_client_bytes"),
    );
    assert!(summary.sent > 0, "{context}");
    assert_eq!(summary.received, summary.sent, "{context}");
    assert_eq!(summary.lost, 0, "{context}");
    // Each client connects to every other's relayed address (4 × 3), whose relay accepts
    // and announces the connection: both ends bind a data connection.
    let opened = stats.since(&before, "tcp_relay_opened");
    let bound = stats.since(&before, "tcp_relay_bound");
    let expired = stats.since(&before, "tcp_relay_bind_timeouts");
    assert!(opened >= 4, "{opened} opened; {context}");
    if transport == "tcp" {
        assert_eq!(summary.sent, 80, "{context}");
        assert_eq!(bound, opened, "{context}");
    } else {
        // Over TLS uclient opens each connection with a randomly chosen TLS context, some of
        // them TLS 1.0/1.1 without signature_algorithms, which rustls refuses; it retries a
        // control connection but sometimes gives a data connection up ("11 connections are
        // completed, not enough") and never sends its ConnectionBind: the server closes that
        // peer connection at the 30 s deadline. Every other one binds and relays.
        assert!(bound + 2 >= opened, "{bound} of {opened} bound; {context}");
        assert_eq!(bound + expired, opened, "{context}");
    }
    assert!(stats.since(&before, "tcp_relay_to_peer_bytes") >= summary.sent * 170);
}

#[test]
fn coturn_uclient_relays_over_tcp_allocations_on_tcp() {
    uclient_tcp_relay("tcp");
}

#[test]
fn coturn_uclient_relays_over_tcp_allocations_on_tls() {
    uclient_tcp_relay("tls");
}

/// `check-config` on a file with `[relay]` `tcp = <value>` (UDP and TCP listeners by default,
/// or only a UDP one): whether it passed, and what it printed.
fn check_config(value: &str, udp_only: bool) -> (bool, String) {
    let dir = tempfile::tempdir().expect("a tempdir");
    let path = dir.path().join("tcp.toml");
    let listen = if udp_only {
        "[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:3478\"\n"
    } else {
        ""
    };
    let toml =
        format!("{listen}[relay]\naddress = \"127.0.0.1\"\noffload = \"off\"\ntcp = {value}\n");
    std::fs::write(&path, toml).expect("write the configuration");
    let path = path.to_str().expect("a UTF-8 path");
    let ran = common::run_turnpike(&[], &["check-config", "-c", path], WAIT);
    (ran.succeeded(), ran.printed())
}

#[test]
fn check_config_validates_relay_tcp_and_says_what_it_does() {
    for bad in ["\"yes\"", "1", "[true]"] {
        let (ok, printed) = check_config(bad, false);
        assert!(!ok, "tcp = {bad} passed: {printed}");
        assert!(printed.contains("relay.tcp: invalid type"), "{printed}");
    }
    let (ok, printed) = check_config("true", false);
    assert!(ok, "{printed}");
    assert!(
        printed.contains("tcp relay: on: TCP and TLS clients"),
        "{printed}"
    );
    let (ok, printed) = check_config("true", true);
    assert!(ok, "{printed}");
    assert!(printed.contains("no TCP or TLS listener"), "{printed}");
    let (ok, printed) = check_config("false", false);
    assert!(ok && printed.contains("tcp relay: off"), "{printed}");
}
