//! Dual-stack allocations (RFC 8656 §7.2 ADDITIONAL-ADDRESS-FAMILY, §18.13
//! ADDRESS-ERROR-CODE) against the real binary over loopback: one allocation with an IPv4 and
//! an IPv6 relayed address, relaying to peers on 127.0.0.1 and ::1 by Send/Data and by
//! channels, one lifetime and one quota slot for both, both closed together, the RFC's error
//! codes for every invalid request, and coturn's `turnutils_uclient -Z` (the draft's code
//! point 0x8032) as an independent client.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::http::get_json;
use common::stun_client::{Answer, StunClient};
use common::{Server, TestConfig, base_config, uclient};
use turnpike::stun::{ChannelData, Method, attr};

const TOKEN: &str = "dual-stack-token-0123456789";
const WAIT: Duration = Duration::from_secs(5);

/// UDP and TCP listeners on 127.0.0.1, relay addresses 127.0.0.1 and ::1 on `ports`, peers on
/// both loopbacks allowed, the HTTP API on, and `extra`.
fn dual_config(ports: std::ops::RangeInclusive<u16>, extra: &str) -> String {
    let config = TestConfig {
        transports: vec!["udp", "tcp"],
        allow: vec!["127.0.0.1/32", "::1/128"],
        relay_ports: ports,
        extra: format!("[http]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{extra}"),
        ..TestConfig::default()
    };
    let dir = tempfile::tempdir().expect("a tempdir");
    base_config(&config, dir.path()).replace("[relay]\n", "[relay]\naddress-v6 = \"::1\"\n")
}

fn dual_server() -> Server {
    Server::start(&dual_config(common::RELAY_PORTS, ""))
}

fn client(server: &Server, transport: &str) -> StunClient {
    match transport {
        "udp" => StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland"),
        _ => StunClient::tcp(server.addr("tcp"), "alice", "wonderland"),
    }
}

fn peer(ip: &str) -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind((ip, 0)).expect("bind a peer");
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// The two relayed addresses of a successful dual Allocate, checked: IPv4 then IPv6, on the
/// configured relay addresses, and no ADDRESS-ERROR-CODE.
fn dual_relays(answer: &Answer) -> [SocketAddr; 2] {
    assert_eq!(answer.code, None, "the dual Allocate failed: {answer:?}");
    let relayed = answer.xor_addresses(attr::XOR_RELAYED_ADDRESS);
    assert_eq!(relayed.len(), 2, "two XOR-RELAYED-ADDRESS: {relayed:?}");
    assert_eq!(relayed[0].ip().to_string(), "127.0.0.1", "{relayed:?}");
    assert_eq!(relayed[1].ip().to_string(), "::1", "{relayed:?}");
    assert_eq!(answer.address_error(), None);
    [relayed[0], relayed[1]]
}

fn status(server: &Server) -> serde_json::Value {
    get_json(server.addr("http"), "/api/v1/status", TOKEN)
}

fn allocations(server: &Server) -> Vec<serde_json::Value> {
    let page = get_json(server.addr("http"), "/api/v1/allocations", TOKEN);
    page["allocations"].as_array().cloned().unwrap_or_default()
}

fn receive(peer: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 1500];
    let (n, from) = peer.recv_from(&mut buf).expect("the peer receives");
    (buf[..n].to_vec(), from)
}

/// Whether a UDP socket can bind `addr` now (its relay socket is closed).
fn free(addr: SocketAddr) -> bool {
    UdpSocket::bind(addr).is_ok()
}

#[test]
fn a_dual_allocation_relays_to_ipv4_and_ipv6_peers_by_send_and_by_channel() {
    let server = dual_server();
    for transport in ["udp", "tcp"] {
        let mut client = client(&server, transport);
        let [relay4, relay6] = dual_relays(&client.allocate_dual());
        let (peer4, addr4) = peer("127.0.0.1");
        let (peer6, addr6) = peer("::1");
        // One CreatePermission for peers of both families: no 443 on a dual allocation.
        assert_eq!(client.permit(&[addr4, addr6]), None, "{transport}");
        for (peer, addr, relay) in [(&peer4, addr4, relay4), (&peer6, addr6, relay6)] {
            // Send indication out, from the relayed address of the peer's family...
            client.send_indication(addr, b"sent");
            assert_eq!(
                receive(peer),
                (b"sent".to_vec(), relay),
                "{transport} {addr}"
            );
            // ... and the peer's answer back as a Data indication.
            peer.send_to(b"data back", relay).unwrap();
            let back = client.recv_data(Instant::now() + WAIT);
            assert_eq!(
                back.as_deref(),
                Some(&b"data back"[..]),
                "{transport} {addr}"
            );
        }
        for (number, peer, addr, relay) in [
            (0x4000, &peer4, addr4, relay4),
            (0x4001, &peer6, addr6, relay6),
        ] {
            assert_eq!(client.bind(number, addr), None, "{transport} {addr}");
            client.send_channel_data(number, b"channel");
            assert_eq!(receive(peer), (b"channel".to_vec(), relay), "{transport}");
            peer.send_to(b"channel back", relay).unwrap();
            let frame = client
                .recv_frame(Instant::now() + WAIT)
                .expect("ChannelData back");
            let data = ChannelData::parse(&frame).expect("a ChannelData frame");
            assert_eq!((data.number, data.payload), (number, &b"channel back"[..]));
        }
        // The status API, the allocation log and the counters show both addresses.
        let listed = allocations(&server);
        assert_eq!(listed.len(), 1, "{listed:?}");
        let relays: Vec<&str> = listed[0]["relays"]
            .as_array()
            .expect("relays")
            .iter()
            .filter_map(|r| r.as_str())
            .collect();
        assert_eq!(relays, [relay4.to_string(), relay6.to_string()]);
        assert_eq!(listed[0]["relay"], relay4.to_string());
        let totals = status(&server)["allocations"].clone();
        assert_eq!(totals["total"], 1, "{totals}");
        assert_eq!(
            (&totals["by_family"]["ipv4"], &totals["by_family"]["ipv6"]),
            (&1.into(), &1.into()),
            "{totals}"
        );
        assert_eq!(client.refresh(0), None);
    }
    let created = server.wait_for_log("allocation created", 2, WAIT);
    assert_eq!(created.len(), 2, "{created:?}");
    assert!(
        created
            .iter()
            .all(|line| line.contains("\"relay_v6\":\"[::1]:")),
        "{created:?}"
    );
    let ended = server.wait_for_log("allocation ended", 2, WAIT);
    assert!(
        ended
            .iter()
            .all(|line| line.contains("\"relay_v6\":\"[::1]:")),
        "{ended:?}"
    );
    let relayed = server.stats();
    eprintln!(
        "to_peer_packets {}, to_client_packets {}",
        relayed.get("to_peer_packets"),
        relayed.get("to_client_packets")
    );
    // Per transport: 2 Send + 2 ChannelData each way.
    assert_eq!(relayed.get("to_peer_packets"), 8);
    assert_eq!(relayed.get("to_client_packets"), 8);
}

#[test]
fn refresh_keeps_both_addresses_and_deletion_or_a_closed_connection_frees_both() {
    let server = dual_server();
    let mut client = client(&server, "udp");
    let [relay4, relay6] = dual_relays(&client.allocate_dual());
    assert!(
        !free(relay4) && !free(relay6),
        "both relay sockets are open"
    );
    // RFC 8656 §8.2: a REQUESTED-ADDRESS-FAMILY the allocation has is no 443; one lifetime.
    for family in [2u8, 1] {
        let answer = client.request(Method::REFRESH, &|w| {
            w.u32(attr::LIFETIME, 1200).unwrap();
            w.attribute(attr::REQUESTED_ADDRESS_FAMILY, &[family, 0, 0, 0])
                .unwrap();
        });
        assert_eq!(answer.code, None, "family {family}: {answer:?}");
    }
    let listed = allocations(&server);
    let created = listed[0]["created"].as_u64().unwrap();
    let expires = listed[0]["expires"].as_u64().unwrap();
    assert!((1199..=1201).contains(&(expires - created)), "{listed:?}");
    // LIFETIME 0 closes both relay sockets.
    assert_eq!(client.refresh(0), None);
    assert!(free(relay4) && free(relay6), "both relay sockets closed");
    assert!(allocations(&server).is_empty());

    // A TCP client's dual allocation ends with its connection, both sockets with it.
    let mut tcp = client_on_tcp(&server);
    let [relay4, relay6] = dual_relays(&tcp.allocate_dual());
    drop(tcp);
    let deadline = Instant::now() + WAIT;
    while !(free(relay4) && free(relay6)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(free(relay4) && free(relay6), "closed with the connection");
    let ended = server.wait_for_log("allocation ended", 2, WAIT);
    assert!(
        ended.last().unwrap().contains("connection closed"),
        "{ended:?}"
    );
}

fn client_on_tcp(server: &Server) -> StunClient {
    client(server, "tcp")
}

#[test]
fn a_dual_allocation_takes_one_quota_slot() {
    let server = Server::start(&dual_config(
        common::RELAY_PORTS,
        "[limits]\nuser-allocations = 1\n",
    ));
    let mut first = client(&server, "udp");
    dual_relays(&first.allocate_dual());
    let mut second = client(&server, "udp");
    assert_eq!(second.allocate(), Err(486));
    assert_eq!(status(&server)["allocations"]["total"], 1);
    // Deleting it gives the slot back.
    assert_eq!(first.refresh(0), None);
    dual_relays(&second.allocate_dual());
}

#[test]
fn invalid_dual_requests_get_the_rfc_codes_and_leave_nothing() {
    let server = dual_server();
    let mut client = client(&server, "udp");
    let aaf = attr::ADDITIONAL_ADDRESS_FAMILY;
    let v6: &[u8] = &[2, 0, 0, 0];
    // (case, value, another attribute, code)
    type Case<'a> = (&'a str, &'a [u8], Option<(u16, &'a [u8])>, u16);
    let cases: [Case<'_>; 10] = [
        // RFC 8656 §7.2 step 9: IPv4 is not an additional family.
        ("IPv4 as the additional family", &[1, 0, 0, 0], None, 400),
        // Steps 6, 5 and 8.
        (
            "with RAF",
            v6,
            Some((attr::REQUESTED_ADDRESS_FAMILY, v6)),
            400,
        ),
        (
            "with a token",
            v6,
            Some((attr::RESERVATION_TOKEN, &[9; 8])),
            400,
        ),
        (
            "with EVEN-PORT R",
            v6,
            Some((attr::EVEN_PORT, &[0x80])),
            400,
        ),
        ("an unknown family", &[3, 0, 0, 0], None, 440),
        ("truncated", &[2, 0], None, 400),
        (
            "oversized",
            &[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            None,
            400,
        ),
        ("repeated", v6, Some((aaf, v6)), 400),
        (
            "under both code points",
            v6,
            Some((attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT, v6)),
            400,
        ),
        // Unknown comprehension-required attributes still get 420.
        (
            "with an unknown required one",
            v6,
            Some((0x0077, &[1, 2, 3, 4])),
            420,
        ),
    ];
    for (case, value, extra, code) in cases {
        let answer = client.request(Method::ALLOCATE, &|w| {
            w.requested_transport(17).unwrap();
            w.attribute(aaf, value).unwrap();
            if let Some((typ, value)) = extra {
                w.attribute(typ, value).unwrap();
            }
        });
        assert_eq!(answer.code, Some(code), "{case}: {answer:?}");
    }
    assert!(
        allocations(&server).is_empty(),
        "an error left an allocation"
    );
    // Wrong credentials: 401 before anything else, and nothing kept.
    let mut stranger = StunClient::udp(
        server.addr("udp"),
        "127.0.0.1:0",
        "alice",
        "not-the-password",
    );
    assert_eq!(stranger.allocate_dual().code, Some(401));
    // The same client then gets its dual allocation, and a second Allocate on its 5-tuple 437.
    dual_relays(&client.allocate_dual());
    assert_eq!(client.allocate_dual().code, Some(437));
    // Outside an Allocate the attribute is comprehension-optional: ignored.
    let refresh = client.request(Method::REFRESH, &|w| {
        w.attribute(aaf, &[2, 0, 0, 0]).unwrap();
    });
    assert_eq!(refresh.code, None, "{refresh:?}");
    assert_eq!(allocations(&server).len(), 1);
}

#[test]
fn without_an_ipv6_relay_address_the_answer_names_ipv6_with_440() {
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        ..TestConfig::default()
    });
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
    let answer = client.allocate_dual();
    assert_eq!(answer.code, None, "{answer:?}");
    let relayed = answer.xor_addresses(attr::XOR_RELAYED_ADDRESS);
    assert!(relayed.len() == 1 && relayed[0].is_ipv4(), "{relayed:?}");
    assert_eq!(answer.address_error(), Some((attr::FAMILY_IPV6, 440)));
}

/// A relay port range of one port, `port`, with that port taken on one loopback family: the
/// other family's address alone, and ADDRESS-ERROR-CODE 508 for the taken one.
#[test]
fn a_family_without_a_free_port_gets_address_error_code_508() {
    let (taken6, port) = (1..=20)
        .find_map(|_| {
            let v6 = UdpSocket::bind("[::1]:0").ok()?;
            let port = v6.local_addr().ok()?.port();
            UdpSocket::bind(("127.0.0.1", port))
                .ok()
                .map(|_| (v6, port))
        })
        .expect("a port free on both loopbacks");
    let server = Server::start(&dual_config(port..=port, ""));
    let mut client = client(&server, "udp");
    let answer = client.allocate_dual();
    assert_eq!(answer.code, None, "{answer:?}");
    assert_eq!(
        answer.xor_addresses(attr::XOR_RELAYED_ADDRESS),
        [SocketAddr::from(([127, 0, 0, 1], port))]
    );
    assert_eq!(answer.address_error(), Some((attr::FAMILY_IPV6, 508)));
    // Only IPv4 peers on it: an IPv6 one is a family mismatch.
    let (_, addr6) = peer("::1");
    assert_eq!(client.permit(&[addr6]), Some(443));
    assert_eq!(client.refresh(0), None);

    // IPv4 taken instead: the IPv6 address alone, and 508 for IPv4.
    drop(taken6);
    let taken4 = UdpSocket::bind(("127.0.0.1", port)).expect("take the IPv4 port");
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
    let answer = client.allocate_dual();
    assert_eq!(answer.code, None, "{answer:?}");
    let relayed = answer.xor_addresses(attr::XOR_RELAYED_ADDRESS);
    assert_eq!(relayed, [SocketAddr::new("::1".parse().unwrap(), port)]);
    assert_eq!(answer.address_error(), Some((attr::FAMILY_IPV4, 508)));
    assert_eq!(client.refresh(0), None);

    // Both taken: the Allocate fails with 508, and nothing is left.
    let _taken6 = UdpSocket::bind(("::1", port)).expect("take the IPv6 port again");
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
    assert_eq!(client.allocate_dual().code, Some(508));
    assert!(allocations(&server).is_empty());
    drop(taken4);
}

/// coturn's `turnutils_uclient -Z` asks for a dual allocation under the draft's code point
/// 0x8032, which turnpike accepts: it gets both addresses, and relays through the IPv4 one to
/// its IPv4 echo peer, every packet back.
#[test]
fn coturn_uclient_dual_allocation_relays_every_packet() {
    let server = dual_server();
    let dir = tempfile::tempdir().expect("a tempdir");
    let peer = uclient::start_peer(dir.path());
    let run = uclient::Run {
        case: "dual udp",
        server: server.addr("udp"),
        transport: "udp",
        credentials: ["-u", "alice", "-w", "wonderland"],
        send_indication: false,
    };
    let summary = uclient::run_with_flags(&run, &["-Z"], &peer, dir.path());
    eprintln!("uclient -Z: {summary:?}");
    let created = server.log_messages("allocation created");
    assert!(!created.is_empty());
    assert!(
        created
            .iter()
            .all(|line| line.contains("\"relay_v6\":\"[::1]:")),
        "every uclient allocation is dual: {created:?}"
    );
}

/// With the kernel fast path on (root here), a dual allocation's IPv4 channel is carried by
/// the kernel, keyed by the IPv4 relayed address, and its IPv6 channel by user space (the
/// fast path carries IPv4 only): both relay every datagram from the right address.
#[test]
fn the_fast_path_carries_the_ipv4_channel_and_user_space_the_ipv6_one() {
    const ROUNDS: usize = 10;
    let toml =
        dual_config(common::RELAY_PORTS, "").replace("offload = \"off\"", "offload = \"on\"");
    assert!(toml.contains("offload = \"on\""), "{toml}");
    let server = Server::start(&toml);
    let mut client = client(&server, "udp");
    let [relay4, relay6] = dual_relays(&client.allocate_dual());
    let (peer4, addr4) = peer("127.0.0.1");
    let (peer6, addr6) = peer("::1");
    let before = server.stats();
    for (number, peer, addr, relay) in [
        (0x4000, &peer4, addr4, relay4),
        (0x4001, &peer6, addr6, relay6),
    ] {
        assert_eq!(client.bind(number, addr), None);
        for round in 0..ROUNDS {
            let data = vec![round as u8; 100 + round];
            client.send_channel_data(number, &data);
            assert_eq!(receive(peer), (data.clone(), relay), "channel {number:#x}");
            peer.send_to(&data, relay).unwrap();
            let frame = client.recv_frame(Instant::now() + WAIT).expect("back");
            let back = ChannelData::parse(&frame).expect("ChannelData");
            assert_eq!((back.number, back.payload), (number, &data[..]));
        }
    }
    let after = server.stats();
    let carried = after.since(&before, "offload_carried");
    let relayed =
        after.since(&before, "to_peer_packets") + after.since(&before, "to_client_packets");
    eprintln!("fast path carried {carried} of {relayed} relayed datagrams");
    // The IPv4 channel's datagrams, both ways, and none of the IPv6 one's.
    assert_eq!(carried, 2 * ROUNDS as u64);
    assert_eq!(relayed, 4 * ROUNDS as u64);
}

/// `check-config` says which allocations the relay addresses serve: dual-stack ones with
/// `address-v6`, and what a dual-stack Allocate gets without it.
#[test]
fn check_config_names_the_relay_families() {
    let dir = tempfile::tempdir().expect("a tempdir");
    let with_v6 = dual_config(common::RELAY_PORTS, "");
    let without_v6 = with_v6.replace("address-v6 = \"::1\"\n", "");
    for (toml, expected) in [
        (
            &with_v6,
            "relay: IPv4 127.0.0.1, IPv6 ::1: IPv4, IPv6 and dual-stack allocations",
        ),
        (
            &without_v6,
            "no IPv6 (relay.address-v6): IPv6 Allocates get 440, dual-stack ones their IPv4 address and ADDRESS-ERROR-CODE 440",
        ),
    ] {
        let path = dir.path().join("turnpike.toml");
        std::fs::write(&path, toml).unwrap();
        let ran = common::run_turnpike(
            &[],
            &["check-config", "-c", path.to_str().unwrap()],
            Duration::from_secs(30),
        );
        assert!(ran.succeeded(), "{}", ran.printed());
        assert!(ran.stdout.contains(expected), "{}", ran.printed());
    }
}
