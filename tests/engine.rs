//! The batched data path of issue 9 over the wire, against the real binary: relay sockets in
//! one epoll set per worker read with recvmmsg, payloads to peers and frames to clients sent
//! with sendmmsg (UDP GSO for equal sizes to one destination), a work cap per relay socket.
//! Every datagram is relayed or counted; a flooded allocation does not starve another; a
//! request sent right behind data does not lose the data; a wildcard listener's relayed
//! frames come from the address the client talks to; hostile sizes and sources are handled.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::stun_client::StunClient;
use common::{Server, TestConfig, udp_echo_peer};

const CHANNEL: u16 = 0x4000;

fn udp_server(workers: usize) -> Server {
    Server::with(&TestConfig {
        transports: vec!["udp"],
        workers,
        extra: "[limits]\nunauthenticated-rate = 0\nuser-allocations = 100".into(),
        ..TestConfig::default()
    })
}

fn client_with_channel(server: SocketAddr, peer: SocketAddr) -> (StunClient, SocketAddr) {
    let mut client = StunClient::udp(server, "127.0.0.1:0", "alice", "wonderland");
    let relayed = client.allocate().expect("allocated");
    assert_eq!(client.bind(CHANNEL, peer), None, "ChannelBind");
    (client, relayed)
}

/// A payload that says which client and which datagram it is, of `len` bytes.
fn payload(client: usize, seq: usize, len: usize) -> Vec<u8> {
    let mut p = vec![(seq % 251) as u8; len];
    p[..4].copy_from_slice(&(client as u32).to_be_bytes());
    p[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
    p
}

#[test]
fn every_datagram_of_many_allocations_is_relayed_both_ways_and_counted() {
    const CLIENTS: usize = 60;
    const BURST: usize = 40;
    let server = udp_server(2);
    let (peer, echo) = udp_echo_peer();
    let mut clients: Vec<StunClient> = (0..CLIENTS)
        .map(|_| client_with_channel(server.addr("udp"), peer).0)
        .collect();
    let started = Instant::now();
    let mut in_order = 0;
    for (c, client) in clients.iter_mut().enumerate() {
        // Bursts of equal sizes (one GSO message each way when the kernel allows), broken by
        // odd sizes, sent back to back so that they share the server's wake-ups.
        let sizes: Vec<usize> = (0..BURST)
            .map(|i| {
                if i % 10 == 9 {
                    37 + i
                } else {
                    100 + 300 * (c % 3)
                }
            })
            .collect();
        for (seq, &len) in sizes.iter().enumerate() {
            client.send_channel_data(CHANNEL, &payload(c, seq, len));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < BURST {
            let Some(data) = client.recv_data(deadline) else {
                break;
            };
            got.push(data);
        }
        let expected: HashSet<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(seq, &len)| payload(c, seq, len))
            .collect();
        let received: HashSet<Vec<u8>> = got.iter().cloned().collect();
        assert_eq!(
            received.len(),
            BURST,
            "client {c}: {} of {BURST} echoes came back whole",
            received.len()
        );
        assert_eq!(
            received, expected,
            "client {c}: payloads changed on the way"
        );
        if got
            .iter()
            .enumerate()
            .all(|(seq, p)| p[4..8] == (seq as u32).to_be_bytes())
        {
            in_order += 1;
        }
    }
    let total = (CLIENTS * BURST) as u64;
    let stats = server.stats();
    eprintln!(
        "{total} datagrams each way in {:?}; {in_order} of {CLIENTS} bursts came back in order; \
         echo peer saw {}",
        started.elapsed(),
        echo.echoed()
    );
    assert_eq!(stats.get("to_peer_packets"), total);
    assert_eq!(stats.get("to_client_packets"), total);
    assert_eq!(stats.get("dropped_send_failed"), 0);
    assert_eq!(echo.echoed() as u64, total);
}

#[test]
fn a_flooded_allocation_does_not_starve_another_on_the_same_worker() {
    const FLOOD_FOR: Duration = Duration::from_secs(3);
    const FLOOD_MAX: u64 = 3_000_000;
    // One worker: both allocations and their relay sockets share its relay pass.
    let server = udp_server(1);
    let (peer, _echo) = udp_echo_peer();
    let flooder = UdpSocket::bind("127.0.0.1:0").expect("bind the flooder");
    let mut victim = StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
    let flooded = victim.allocate().expect("allocated");
    assert_eq!(
        victim.permit(&[flooder.local_addr().expect("bound")]),
        None,
        "CreatePermission for the flooder"
    );
    // The flooded client never reads: what the server relays to it fills its socket.
    let (mut quiet, _) = client_with_channel(server.addr("udp"), peer);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let end = Instant::now() + FLOOD_FOR;
            let datagram = [0x55u8; 200];
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < end && n < FLOOD_MAX {
                if flooder.send_to(&datagram, flooded).is_ok() {
                    n += 1;
                }
            }
            sent.store(n, Ordering::Relaxed);
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let mut rtts = Vec::new();
    let mut lost = 0;
    let start = Instant::now();
    let mut seq = 0;
    while start.elapsed() < FLOOD_FOR - Duration::from_millis(500) {
        seq += 1;
        let sent_at = Instant::now();
        quiet.send_channel_data(CHANNEL, &payload(1, seq, 64));
        let deadline = sent_at + Duration::from_secs(1);
        loop {
            match quiet.recv_data(deadline) {
                Some(data) if data == payload(1, seq, 64) => {
                    rtts.push(sent_at.elapsed());
                    break;
                }
                Some(_) => continue, // a late echo of an earlier one
                None => {
                    lost += 1;
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("the flooder does not panic");
    let stats = server.stats();
    rtts.sort();
    let pct = |p: f64| rtts[((rtts.len() as f64 * p) as usize).min(rtts.len() - 1)];
    let flood_sent = sent.load(Ordering::Relaxed);
    eprintln!(
        "flood: {flood_sent} datagrams sent, {} relayed to the flooded client; the other \
         client: {} round trips, {lost} lost, RTT p50 {:?} p99 {:?} max {:?}",
        stats.get("to_client_packets"),
        rtts.len(),
        pct(0.5),
        pct(0.99),
        rtts.last().copied().unwrap_or_default()
    );
    assert!(
        stats.get("to_client_packets") > 10_000,
        "the flood reached the server's relay path"
    );
    let total = rtts.len() + lost;
    assert!(
        lost * 10 <= total,
        "{lost} of {total} round trips lost during the flood"
    );
    // Generous: the machine is shared; starvation would be whole seconds.
    assert!(
        pct(0.99) < Duration::from_millis(300),
        "RTT p99 {:?} during the flood",
        pct(0.99)
    );
}

#[test]
fn data_sent_right_before_a_deleting_refresh_reaches_the_peer() {
    let server = udp_server(2);
    for round in 0..5 {
        let (peer, echo) = udp_echo_peer();
        let (mut client, _) = client_with_channel(server.addr("udp"), peer);
        // Back to back: the datagrams and the request share one receive batch of the server.
        for seq in 0..8 {
            client.send_channel_data(CHANNEL, &payload(round, seq, 120));
        }
        assert_eq!(client.refresh(0), None, "Refresh 0");
        let deadline = Instant::now() + Duration::from_secs(3);
        while echo.echoed() < 8 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            echo.echoed(),
            8,
            "round {round}: the peer got what preceded Refresh 0"
        );
        // The port was freed before the answer: the deleted allocation's data is refused.
        client.send_channel_data(CHANNEL, &payload(round, 99, 120));
    }
    let stats = server.stats();
    assert_eq!(stats.get("to_peer_packets"), 40);
    assert_eq!(stats.get("allocations_deleted"), 5);
    assert!(stats.get("dropped_no_allocation") >= 5);
}

#[test]
fn relayed_frames_on_a_wildcard_listener_come_from_the_address_the_client_talks_to() {
    let dir = tempfile::tempdir().expect("a tempdir");
    let config = TestConfig {
        transports: vec!["udp"],
        extra: "[limits]\nunauthenticated-rate = 0\nuser-allocations = 100".into(),
        ..TestConfig::default()
    };
    let port = common::free_port();
    let toml = common::base_config(&config, dir.path()).replace(
        "address = \"127.0.0.1:0\"",
        &format!("address = \"0.0.0.0:{port}\""),
    );
    let _server = Server::start_in(&toml, dir);
    let (peer, _echo) = udp_echo_peer();
    // Not 127.0.0.1: a reply without the source address chosen would come from 127.0.0.1
    // (the route to the client), and the client would not take it.
    let target: SocketAddr = format!("127.0.0.3:{port}").parse().expect("an address");
    let mut client = StunClient::udp(target, "127.0.0.1:0", "alice", "wonderland");
    client.allocate().expect("allocated");
    assert_eq!(client.bind(CHANNEL, peer), None);
    for seq in 0..20 {
        client.send_channel_data(CHANNEL, &payload(0, seq, 500));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = 0;
    while got < 20 {
        // recv_data takes datagrams from 127.0.0.3:port only.
        match client.recv_data(deadline) {
            Some(data) => {
                assert_eq!(data.len(), 500);
                got += 1;
            }
            None => break,
        }
    }
    assert_eq!(got, 20, "relayed frames from {target}");
}

#[test]
fn hostile_peer_traffic_is_relayed_whole_or_dropped_and_counted() {
    let server = udp_server(2);
    let (peer, _echo) = udp_echo_peer();
    let (mut client, relayed) = client_with_channel(server.addr("udp"), peer);
    let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind");
    // The echo peer is on 127.0.0.1 too, so its permission covers this socket (permissions
    // are by IP): it may send to the client.
    let deadline = || Instant::now() + Duration::from_secs(3);
    for len in [0usize, 1, 65_000] {
        let datagram = vec![0x77u8; len];
        stranger.send_to(&datagram, relayed).expect("send");
        // Not from the bound channel peer's port: a Data indication.
        let data = client.recv_data(deadline()).expect("relayed");
        assert_eq!(data, datagram, "{len}-byte datagram");
    }
    // Oversized: larger than a frame to the client can carry (the largest IPv4 UDP payload
    // included), dropped and counted, never relayed.
    for len in [65_001usize, 65_507] {
        stranger.send_to(&vec![0x66u8; len], relayed).expect("send");
    }
    assert!(
        client
            .recv_data(Instant::now() + Duration::from_millis(500))
            .is_none(),
        "an oversized peer datagram reached the client"
    );
    assert_eq!(server.stats().get("dropped_too_large"), 2);
    // Repeated: 5,000 small datagrams in one burst from a peer; each is relayed, or dropped
    // by the relay socket's full receive buffer, which the kernel counts.
    let kernel_drops_before = udp_socket_drops(relayed);
    for i in 0..5_000u32 {
        let _ = stranger.send_to(&i.to_be_bytes(), relayed);
    }
    let mut received = 0;
    while client
        .recv_data(Instant::now() + Duration::from_millis(500))
        .is_some()
    {
        received += 1;
    }
    // A source the allocation has no permission for: dropped and counted, never relayed.
    let refused = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    for _ in 0..100 {
        refused.send_to(&[1u8; 100], relayed).expect("send");
    }
    assert!(
        client
            .recv_data(Instant::now() + Duration::from_millis(500))
            .is_none(),
        "nothing from 127.0.0.2 reaches the client"
    );
    let stats = server.stats();
    let kernel_drops = udp_socket_drops(relayed) - kernel_drops_before;
    eprintln!(
        "burst of 5,000: {received} received by the client; server relayed {} to the client; \
         {kernel_drops} dropped by the relay socket's receive buffer",
        stats.get("to_client_packets")
    );
    assert_eq!(stats.get("dropped_no_permission"), 100);
    // Each of the burst was framed and handed to the kernel, or dropped by the kernel before
    // the server could read it (the client's socket may drop some too: that is the
    // network's loss, not the server's).
    assert_eq!(stats.get("to_client_packets") + kernel_drops, 3 + 5_000);
    assert!(received > 0);
    assert_eq!(stats.get("dropped_send_failed"), 0);
}

/// The kernel's drop counter of the UDP socket bound to `addr` (IPv4), from /proc/net/udp.
fn udp_socket_drops(addr: SocketAddr) -> u64 {
    let table = std::fs::read_to_string("/proc/net/udp").expect("read /proc/net/udp");
    let port = format!(":{:04X}", addr.port());
    table
        .lines()
        .skip(1)
        .find(|line| {
            line.split_whitespace()
                .nth(1)
                .is_some_and(|local| local.ends_with(&port))
        })
        .and_then(|line| line.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no socket on port {} in /proc/net/udp", addr.port()))
}
