//! The real binary on the wire, driven message by message: peer policy, and malformed input on
//! every transport. Requests are built with turnpike's own codec (through the common test
//! client), which the RFC 5769 vectors check; the behaviour under test is the server's.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::stun_client::{Answer, StunClient};
use common::{Server, TestConfig};
use turnpike::stun::{Class, Message, MessageWriter, Method, TransactionId, attr};

/// The common test client (long-term credentials of alice) on a fresh UDP socket bound to
/// `local`.
fn client_from(server: SocketAddr, local: &str) -> StunClient {
    StunClient::udp(server, local, "alice", "wonderland")
}

fn alice(server: SocketAddr) -> StunClient {
    client_from(server, "127.0.0.1:0")
}

/// Allocates, failing the test with the error code if refused.
fn allocate(client: &mut StunClient) -> SocketAddr {
    client
        .allocate()
        .unwrap_or_else(|code| panic!("allocate failed: {code}"))
}

const SPECIAL_PEERS: [&str; 8] = [
    "127.0.0.1:9",
    "0.0.0.0:9",
    "[::ffff:127.0.0.1]:9",
    "[::127.0.0.1]:9",
    "[64:ff9b::7f00:1]:9",
    "[2002:7f00:1::]:9",
    "169.254.169.254:80",
    "10.1.2.3:9",
];

#[test]
fn peer_policy_refuses_special_addresses_by_default() {
    let server = Server::with(&TestConfig {
        allow: vec![],
        transports: vec!["udp", "tcp"],
        ..TestConfig::default()
    });
    let mut client = alice(server.addr("udp"));
    let relayed = allocate(&mut client);
    for peer in SPECIAL_PEERS {
        assert_eq!(client.permit(&[peer.parse().unwrap()]), Some(403), "{peer}");
    }
    assert_eq!(client.permit(&[server.addr("udp")]), Some(403));
    assert_eq!(client.permit(&[server.addr("tcp")]), Some(403));
    assert_eq!(client.permit(&[relayed]), Some(403));
}

#[test]
fn allow_entries_open_special_ranges_but_never_the_server_itself() {
    let server = Server::with(&TestConfig {
        allow: vec!["127.0.0.0/8", "0.0.0.0/8", "169.254.0.0/16", "10.0.0.0/8"],
        transports: vec!["udp", "tcp"],
        ..TestConfig::default()
    });
    let mut client = alice(server.addr("udp"));
    let relayed = allocate(&mut client);
    for peer in SPECIAL_PEERS {
        assert_eq!(client.permit(&[peer.parse().unwrap()]), None, "{peer}");
    }
    // The listeners (whatever the IPv4-in-IPv6 spelling) and the allocation's own relayed
    // address stay refused: relaying to them would loop.
    let udp = server.addr("udp");
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", udp.port())
        .parse()
        .unwrap();
    for own in [udp, server.addr("tcp"), mapped] {
        assert_eq!(client.bind(0x4001, own), Some(403), "{own}");
    }
    assert_eq!(client.bind(0x4002, relayed), Some(403));
    // Another allocation's relayed address is an ordinary peer.
    let mut other = alice(server.addr("udp"));
    let other_relayed = allocate(&mut other);
    assert_eq!(client.bind(0x4003, other_relayed), None);
}

/// Sends a Binding request on UDP and checks the answer: the server is still serving.
fn binding_works(server: SocketAddr) {
    assert!(
        common::stun_answers(server, Duration::from_secs(5)),
        "no Binding answer from {server}"
    );
}

fn binding_works_on_tcp(server: SocketAddr) {
    let mut stream = TcpStream::connect(server).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 100];
    let tid = TransactionId([0x42; 12]);
    let n = {
        let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid).unwrap();
        w.fingerprint().unwrap();
        w.finish()
    };
    stream.write_all(&buf[..n]).unwrap();
    let mut answer = [0u8; 100];
    let mut got = 0;
    while got < 20 {
        got += stream.read(&mut answer[got..]).expect("a Binding answer");
    }
    let len = 20 + usize::from(u16::from_be_bytes([answer[2], answer[3]]));
    while got < len {
        got += stream.read(&mut answer[got..]).unwrap();
    }
    let msg = Message::parse(&answer[..len]).unwrap();
    assert_eq!((msg.class(), msg.transaction_id()), (Class::Success, tid));
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for byte in buf {
            *byte = self.next() as u8;
        }
    }
}

fn malformed_datagrams() -> Vec<Vec<u8>> {
    let mut valid = [0u8; 100];
    let n = {
        let mut w = MessageWriter::new(
            &mut valid,
            Method::ALLOCATE,
            Class::Request,
            TransactionId([1; 12]),
        )
        .unwrap();
        w.requested_transport(17).unwrap();
        w.attribute(attr::USERNAME, b"alice").unwrap();
        w.fingerprint().unwrap();
        w.finish()
    };
    let valid = valid[..n].to_vec();
    let mut cases: Vec<Vec<u8>> = (0..20).map(|len| valid[..len].to_vec()).collect();
    // Header length past the end of the datagram.
    let mut long = valid.clone();
    long[3] = 0xfc;
    cases.push(long);
    // An attribute whose length runs past the end.
    let mut bad_attr = valid.clone();
    bad_attr[22..24].copy_from_slice(&0x0fffu16.to_be_bytes());
    cases.push(bad_attr);
    // Odd header length.
    let mut odd = valid.clone();
    odd[3] |= 1;
    cases.push(odd);
    // ChannelData: numbers out of range, length past the end, unbound channel.
    cases.push(vec![0x3f, 0xff, 0x00, 0x04, 1, 2, 3, 4]);
    cases.push(vec![0x80, 0x00, 0x00, 0x04, 1, 2, 3, 4]);
    cases.push(vec![0x40, 0x00, 0xff, 0xff, 1, 2, 3, 4]);
    cases.push(vec![0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]);
    // Random garbage and random bit flips of a valid request.
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    for i in 0..2000 {
        let mut case = if i % 2 == 0 {
            let mut random = vec![0u8; (noise.next() % 200) as usize];
            noise.fill(&mut random);
            random
        } else {
            valid.clone()
        };
        if !case.is_empty() {
            let bit = (noise.next() as usize) % (case.len() * 8);
            case[bit / 8] ^= 1 << (bit % 8);
        }
        cases.push(case);
    }
    cases
}

#[test]
fn malformed_udp_datagrams_are_dropped_and_the_server_keeps_serving() {
    let server = Server::with(&TestConfig {
        transports: vec!["udp", "tcp"],
        ..TestConfig::default()
    });
    let udp = server.addr("udp");
    let mut client = alice(udp);
    allocate(&mut client);
    let attacker = UdpSocket::bind("127.0.0.2:0").unwrap();
    for case in malformed_datagrams() {
        attacker.send_to(&case, udp).unwrap();
    }
    binding_works(udp);
    // The allocation made before the flood still works.
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert_eq!(client.permit(&[peer]), None);
    binding_works_on_tcp(server.addr("tcp"));
}

#[test]
fn garbage_on_tcp_closes_that_connection_only() {
    let server = Server::with(&TestConfig {
        transports: vec!["udp", "tcp"],
        ..TestConfig::default()
    });
    let tcp = server.addr("tcp");
    let mut noise = Noise(7);
    for round in 0..50 {
        let mut stream = TcpStream::connect(tcp).unwrap();
        let mut garbage = vec![0u8; 64 + round * 13];
        noise.fill(&mut garbage);
        // A first byte outside STUN and ChannelData: the server must close the connection.
        garbage[0] |= 0x80;
        let _ = stream.write_all(&garbage);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the server to close the stream, got {other:?}"),
        }
    }
    // A frame split across writes, and a truncated frame left hanging, do not disturb others.
    let mut hanging = TcpStream::connect(tcp).unwrap();
    hanging.write_all(&[0x00, 0x01, 0x00, 0x08]).unwrap();
    binding_works_on_tcp(tcp);
    binding_works(server.addr("udp"));
}

#[test]
fn garbage_on_tls_streams_is_survived() {
    let server = Server::with(&TestConfig {
        transports: vec!["udp", "tls"],
        ..TestConfig::default()
    });
    let tls = server.addr("tls");
    // Not TLS at all.
    let mut raw = TcpStream::connect(tls).unwrap();
    raw.write_all(b"\x00\x01\x00\x00 definitely not a ClientHello")
        .unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);

    // A real TLS session carrying garbage after the handshake.
    let mut stream = common::tls::connect(tls);
    let mut garbage = vec![0xffu8; 300];
    Noise(3).fill(&mut garbage[1..]);
    stream.write_all(&garbage).unwrap();
    let mut buf = [0u8; 16];
    let closed = matches!(stream.read(&mut buf), Ok(0) | Err(_));
    assert!(
        closed,
        "the server should close a TLS stream carrying garbage"
    );

    // And a TLS session that speaks STUN still works.
    let mut good = common::tls::connect(tls);
    let tid = TransactionId([0x24; 12]);
    let mut request = [0u8; 28];
    let n = {
        let mut w = MessageWriter::new(&mut request, Method::BINDING, Class::Request, tid).unwrap();
        w.fingerprint().unwrap();
        w.finish()
    };
    good.write_all(&request[..n]).unwrap();
    let mut answer = vec![0u8; 20];
    good.read_exact(&mut answer).unwrap();
    let len = usize::from(u16::from_be_bytes([answer[2], answer[3]]));
    answer.resize(20 + len, 0);
    good.read_exact(&mut answer[20..]).unwrap();
    assert_eq!(Message::parse(&answer).unwrap().transaction_id(), tid);
    binding_works(server.addr("udp"));
}

/// A configuration with the given listeners, IPv4 and IPv6 relay addresses on loopback, and
/// loopback peers allowed.
fn loopback_config(listeners: &[(&str, &str)]) -> String {
    let mut toml = String::from("realm = \"turnpike.test\"\nworkers = 2\n");
    for (transport, address) in listeners {
        toml += &format!("[[listen]]\ntransport = \"{transport}\"\naddress = \"{address}\"\n");
    }
    toml += "[relay]\naddress = \"127.0.0.1\"\naddress-v6 = \"::1\"\nports = \"40000-60000\"\n";
    toml += "[[auth.users]]\nname = \"alice\"\npassword = \"wonderland\"\n";
    toml += "[peers]\nallow = [\"127.0.0.1/32\", \"::1/128\"]\n";
    toml
}

fn xor_addr(answer: &Answer, typ: u16) -> SocketAddr {
    answer.xor_address(typ).expect("the address attribute")
}

#[test]
fn ipv6_listener_and_ipv6_relay_carry_data_both_ways() {
    let server = Server::start(&loopback_config(&[("udp", "[::1]:0"), ("tcp", "[::1]:0")]));
    let udp = server.addr("udp");
    assert!(udp.is_ipv6());
    binding_works_on_tcp(server.addr("tcp"));

    let peer = UdpSocket::bind("[::1]:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let peer_addr = peer.local_addr().unwrap();

    let mut client = client_from(udp, "[::1]:0");
    let binding = client.request(Method::BINDING, &|_| {});
    assert_eq!(
        xor_addr(&binding, attr::XOR_MAPPED_ADDRESS),
        client.local_addr()
    );
    let relayed = client.allocate_v6().expect("an IPv6 allocation");
    assert_eq!(relayed.ip(), "::1".parse::<std::net::IpAddr>().unwrap());
    // An IPv4 peer on an IPv6 allocation is a family mismatch.
    assert_eq!(client.permit(&["127.0.0.1:9".parse().unwrap()]), Some(443));
    assert_eq!(client.bind(0x4000, peer_addr), None);

    // Client -> peer over the channel, peer -> client back as ChannelData.
    client.send_channel_data(0x4000, b"hello");
    let mut buf = [0u8; 1500];
    let (n, from) = peer.recv_from(&mut buf).expect("the peer receives");
    assert_eq!((&buf[..n], from), (&b"hello"[..], relayed));
    peer.send_to(b"world", relayed).unwrap();
    let frame = client
        .recv_frame(std::time::Instant::now() + Duration::from_secs(5))
        .expect("the client receives");
    assert_eq!(
        frame,
        [0x40, 0x00, 0x00, 0x05, b'w', b'o', b'r', b'l', b'd']
    );
}

#[test]
fn wildcard_listener_answers_from_the_address_it_was_reached_on() {
    let server = Server::start(&loopback_config(&[("udp", "0.0.0.0:0")]));
    let port = server.addr("udp").port();
    for local in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        let target: SocketAddr = format!("{local}:{port}").parse().unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut request = [0u8; 28];
        let n = {
            let tid = TransactionId([0x11; 12]);
            let mut w =
                MessageWriter::new(&mut request, Method::BINDING, Class::Request, tid).unwrap();
            w.fingerprint().unwrap();
            w.finish()
        };
        socket.send_to(&request[..n], target).unwrap();
        let mut buf = [0u8; 200];
        let (_, from) = socket.recv_from(&mut buf).expect("a Binding answer");
        assert_eq!(from, target, "the answer must come from the address asked");
    }
}
