//! TCP and TLS streams against the real binary: what one connection, and one source, can hold
//! in the server. Clients that pipeline requests and never read are paused, bounded and closed;
//! relayed data for a client that does not read is dropped and counted; one address cannot
//! take every connection slot; a quiet client's next frame is not cut off by the idle
//! timeout; a UDP client that does not read, and a TLS handshake that stalls, cost nothing.
//!
//! `--nocapture` prints the measured figures (memory, kernel queues, counts, timings).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use common::stun_client::{self, StunClient};
use common::{Server, Stats, TestConfig};
use turnpike::stun::{Class, Method};

const OTHER_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn server_with(transports: Vec<&'static str>, limits: &str) -> Server {
    Server::with(&TestConfig {
        transports,
        extra: format!("[limits]\n{limits}"),
        ..TestConfig::default()
    })
}

fn moved(before: &Stats, after: &Stats, name: &str) -> u64 {
    after.get(name) - before.get(name)
}

/// The server's established connections on the TCP listener on `port` (/proc/net/tcp).
fn established(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            columns.len() > 3 && columns[1].ends_with(&local) && columns[3] == "01"
        })
        .count()
}

/// Bytes the kernel holds in the server's sockets of the TCP listener on `port`: unsent or
/// unacknowledged (tx) and received but not read (rx), from /proc/net/tcp.
fn kernel_queues(port: u16) -> (u64, u64) {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let local = format!(":{port:04X}");
    let mut totals = (0, 0);
    for line in table.lines().skip(1) {
        let columns: Vec<&str> = line.split_whitespace().collect();
        // Established connections whose local end is the listener's port: the server's side.
        if columns.len() > 4 && columns[1].ends_with(&local) && columns[3] == "01" {
            if let Some((tx, rx)) = columns[4].split_once(':') {
                totals.0 += u64::from_str_radix(tx, 16).unwrap_or(0);
                totals.1 += u64::from_str_radix(rx, 16).unwrap_or(0);
            }
        }
    }
    totals
}

/// A client on another source address that allocates over TCP, binds a channel to an echo
/// peer and gets `rounds` echoes back, each within the answer timeout.
fn other_source_relays(server: &Server, rounds: u32) {
    let (peer, _echo) = common::udp_echo_peer();
    let mut client = StunClient::tcp_from(server.addr("tcp"), OTHER_SOURCE, "alice", "wonderland");
    client
        .allocate()
        .expect("a client on another source allocates");
    assert_eq!(client.bind(0x4000, peer), None, "ChannelBind");
    for round in 0..rounds {
        client.send_channel_data(0x4000, &round.to_be_bytes());
        let echo = client.recv_data(Instant::now() + stun_client::ANSWER_TIMEOUT);
        assert_eq!(
            echo,
            Some(round.to_be_bytes().to_vec()),
            "echo {round} for the client on another source"
        );
    }
}

/// Waits until the server counts `live` TCP/TLS connections, up to `timeout`; returns the
/// stats read after that (the live count is current, the other counters are published a
/// moment later).
fn wait_for_connections(server: &Server, live: u64, timeout: Duration) -> Stats {
    let deadline = Instant::now() + timeout;
    while server.stats().get("tcp_connections") != live && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    server.stats()
}

/// Whether the server has closed `stream` (non-blocking), reading and dropping whatever it
/// had sent: EOF or reset.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16_384];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) => panic!("read a connection: {e}"),
        }
    }
}

/// Clients that pipeline requests and never read.
const PIPELINERS: usize = 200;
/// Requests one of them may write, at most, and how long they may all take.
const PIPELINE_BYTES: usize = 8 << 20;
const PIPELINE_TIME: Duration = Duration::from_secs(60);
/// A connection whose writes have not progressed for this long counts as stopped.
const STOPPED_FOR: Duration = Duration::from_secs(1);
/// The server's `stream-idle-timeout` in that test.
const WRITE_IDLE: Duration = Duration::from_secs(10);

/// Waits until the kernel queues of the server's connections on `port` stop changing (the
/// server has worked through what it received, as far as it will), at most `limit`.
fn settle(port: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut last = kernel_queues(port);
    let mut unchanged = 0;
    while unchanged < 4 && start.elapsed() < limit {
        thread::sleep(Duration::from_millis(250));
        let now = kernel_queues(port);
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
    }
    start.elapsed()
}

#[test]
fn clients_that_pipeline_requests_and_never_read_are_bounded_then_closed() {
    let server = server_with(
        vec!["udp", "tcp"],
        // Each client's first Allocate is answered 401: 200 of them at once from one address
        // would meet the unauthenticated rate.
        "user-allocations = 0\nstream-idle-timeout = \"10s\"\nunauthenticated-rate = 0\n",
    );
    let tcp = server.addr("tcp");

    // Each client allocates, then has its Refresh answered; the same bytes sent again are a
    // retransmission, answered again (from the server's cache).
    let setup = Instant::now();
    let mut clients: Vec<(StunClient, Vec<u8>)> = (0..PIPELINERS)
        .map(|i| {
            let mut client = StunClient::tcp(tcp, "alice", "wonderland");
            client
                .allocate()
                .unwrap_or_else(|code| panic!("client {i}: Allocate got {code}"));
            assert_eq!(client.refresh(600), None, "client {i}: Refresh");
            let request = client.last_request().to_vec();
            // A small receive buffer: the client's own kernel takes little of what it is sent.
            let socket = socket2::SockRef::from(client.tcp_stream());
            socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
            socket.set_send_buffer_size(16_384).expect("SO_SNDBUF");
            client
                .tcp_stream()
                .set_nonblocking(true)
                .expect("non-blocking");
            (client, request)
        })
        .collect();
    eprintln!(
        "{PIPELINERS} clients allocated in {:.1} s; Refresh request of {} bytes",
        setup.elapsed().as_secs_f64(),
        clients[0].1.len()
    );
    let before = server.stats();
    let rss_before = server.rss_kib();

    // Pipeline: write the Refresh again and again on every connection, never reading, until
    // the server stops reading it, or the connection ends, or the bounds are reached.
    struct Pipeline {
        batch: Vec<u8>,
        request_len: usize,
        sent: usize,
        progress: Instant,
        done: bool,
    }
    let mut pipes: Vec<Pipeline> = clients
        .iter()
        .map(|(_, request)| Pipeline {
            batch: request.repeat(64),
            request_len: request.len(),
            sent: 0,
            progress: Instant::now(),
            done: false,
        })
        .collect();
    let started = Instant::now();
    while pipes.iter().any(|p| !p.done) && started.elapsed() < PIPELINE_TIME {
        let mut progressed = false;
        for ((client, _), pipe) in clients.iter_mut().zip(&mut pipes) {
            if pipe.done {
                continue;
            }
            // Start where the last write left off, inside a request if need be.
            let at = pipe.sent % pipe.request_len;
            match client.tcp_stream().write(&pipe.batch[at..]) {
                Ok(n) => {
                    pipe.sent += n;
                    pipe.progress = Instant::now();
                    progressed = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // Closed by the server already.
                Err(_) => pipe.done = true,
            }
            pipe.done |= pipe.sent >= PIPELINE_BYTES || pipe.progress.elapsed() >= STOPPED_FOR;
        }
        if !progressed {
            thread::sleep(Duration::from_millis(10));
        }
    }
    let pipelined = started.elapsed();
    let sent: usize = pipes.iter().map(|p| p.sent).sum();
    let requests = sent / clients[0].1.len();
    eprintln!(
        "pipelined {:.1} MB ({requests} Refresh requests, {:.0} KB per connection) in {:.1} s",
        sent as f64 / 1e6,
        sent as f64 / PIPELINERS as f64 / 1e3,
        pipelined.as_secs_f64()
    );
    // The server works through what it received until it stops reading each connection.
    let settling = settle(tcp.port(), Duration::from_secs(30));
    let stopped = Instant::now();

    let rss_held = server.rss_kib();
    let (tx_held, rx_held) = kernel_queues(tcp.port());
    let held = server.stats();
    eprintln!(
        "held ({:.1} s later): {} connections open; server RSS {rss_before} -> {rss_held} KiB \
         ({:+} KiB, {:.1} KiB per connection); kernel: {:.0} KB unsent or unacknowledged and \
         {:.0} KB unread per connection",
        settling.as_secs_f64(),
        held.get("tcp_connections"),
        rss_held as i64 - rss_before as i64,
        (rss_held as f64 - rss_before as f64) / PIPELINERS as f64,
        tx_held as f64 / PIPELINERS as f64 / 1e3,
        rx_held as f64 / PIPELINERS as f64 / 1e3,
    );
    let growth_held = rss_held.saturating_sub(rss_before);
    assert!(
        growth_held < 20 * 1024,
        "the server's RSS grew by {growth_held} KiB for {PIPELINERS} connections"
    );
    // What the kernel holds for them: at most TCP_NOTSENT_LOWAT plus a segment each.
    assert!(
        tx_held < PIPELINERS as u64 * 128 * 1024,
        "the kernel holds {tx_held} bytes of answers for {PIPELINERS} clients that never read"
    );
    assert!(
        pipes.iter().all(|p| p.sent < PIPELINE_BYTES),
        "the server read {PIPELINE_BYTES} bytes of requests from a client that never reads"
    );

    // Meanwhile a client on another address is served.
    other_source_relays(&server, 10);

    // A client whose output makes no progress for stream-idle-timeout is closed, and its
    // allocation with it; the memory stays bounded.
    let after = wait_for_connections(&server, 0, WRITE_IDLE + Duration::from_secs(15));
    let rss_after = server.rss_kib();
    let (tx_after, rx_after) = kernel_queues(tcp.port());
    let write_timeouts = moved(&before, &after, "stream_write_timeouts");
    let stream_full = moved(&before, &after, "dropped_stream_full");
    eprintln!(
        "{:.1} s later: {} connections left, server RSS {rss_after} KiB ({:+} KiB from before); \
         kernel tx {tx_after}, rx {rx_after} bytes; stream_write_timeouts moved by \
         {write_timeouts}, dropped_stream_full by {stream_full}, allocations {}",
        stopped.elapsed().as_secs_f64(),
        after.get("tcp_connections"),
        rss_after as i64 - rss_before as i64,
        after.get("allocations")
    );
    assert_eq!(after.get("tcp_connections"), 0, "connections left open");
    assert_eq!(
        write_timeouts, PIPELINERS as u64,
        "each client that never read was closed for it"
    );
    assert_eq!(
        stream_full, 0,
        "answers are never dropped: the requests are not read instead"
    );
    assert_eq!(after.get("allocations"), 0, "allocations left");
    let growth_after = rss_after.saturating_sub(rss_before);
    assert!(
        growth_after < 20 * 1024,
        "the server's RSS grew by {growth_after} KiB once the clients were closed"
    );
    assert_eq!(
        established(tcp.port()),
        0,
        "the server still has connections established"
    );
    drop(clients);
}

/// Datagrams the kernel dropped because the UDP socket bound to `port` on 127.0.0.1 was full
/// (the `drops` column of /proc/net/udp).
fn udp_socket_drops(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/udp").expect("read /proc/net/udp");
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            (columns.get(1) == Some(&local.as_str()))
                .then(|| columns.last()?.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// Sends `count` datagrams of `size` bytes from `socket` to `to`, `per_ms` each millisecond,
/// for at most `limit`; returns how many it sent.
fn flood(socket: &UdpSocket, to: SocketAddr, count: usize, size: usize, limit: Duration) -> usize {
    const PER_MS: usize = 10;
    let payload = vec![0x5a; size];
    let start = Instant::now();
    let mut sent = 0;
    for i in 0..count {
        if i % PER_MS == 0 {
            if start.elapsed() > limit {
                break;
            }
            let due = start + Duration::from_millis((i / PER_MS) as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        if socket.send_to(&payload, to).is_ok() {
            sent += 1;
        }
    }
    sent
}

/// 10,000 datagrams of 1,000 bytes a second (80 Mbit/s) for 3 s.
const FLOOD_DATAGRAMS: usize = 30_000;
const FLOOD_SIZE: usize = 1000;
const FLOOD_TIME: Duration = Duration::from_secs(20);

#[test]
fn relayed_data_for_a_tcp_client_that_does_not_read_is_dropped_and_counted_then_closed() {
    let server = server_with(vec!["udp", "tcp"], "stream-idle-timeout = \"3s\"\n");
    let tcp = server.addr("tcp");
    let flooder = UdpSocket::bind("127.0.0.1:0").expect("bind the flooding peer");
    let mut victim = StunClient::tcp(tcp, "alice", "wonderland");
    let relayed = victim.allocate().expect("allocate over TCP");
    let peer = flooder.local_addr().expect("local address");
    assert_eq!(victim.bind(0x4000, peer), None, "ChannelBind to the peer");
    socket2::SockRef::from(victim.tcp_stream())
        .set_recv_buffer_size(4096)
        .expect("SO_RCVBUF");
    let before = server.stats();
    let rss_before = server.rss_kib();

    let flooding = thread::spawn(move || {
        let start = Instant::now();
        let sent = flood(&flooder, relayed, FLOOD_DATAGRAMS, FLOOD_SIZE, FLOOD_TIME);
        (sent, start.elapsed())
    });
    // Meanwhile a client on another address is served.
    thread::sleep(Duration::from_millis(200));
    other_source_relays(&server, 10);
    let served_during_flood = !flooding.is_finished();
    let (sent, took) = flooding.join().expect("the flood thread");
    assert!(
        served_during_flood,
        "the flood ended before the other client was served"
    );
    let rss_flooded = server.rss_kib();
    let (tx, rx) = kernel_queues(tcp.port());
    let flooded = server.stats();
    let relayed_to_client = moved(&before, &flooded, "to_client_packets");
    eprintln!(
        "peer sent {sent} datagrams of {FLOOD_SIZE} bytes in {:.2} s; relayed to the client \
         {relayed_to_client}; server RSS {rss_before} -> {rss_flooded} KiB ({:+} KiB); kernel \
         tx {tx} rx {rx} bytes",
        took.as_secs_f64(),
        rss_flooded as i64 - rss_before as i64
    );
    let dropped = moved(&before, &flooded, "dropped_stream_full");
    eprintln!("dropped at the client's full queue: {dropped}");
    assert!(sent >= FLOOD_DATAGRAMS / 2, "only {sent} datagrams sent");
    assert!(
        relayed_to_client >= 1000,
        "only {relayed_to_client} relayed"
    );
    // The client's kernel and the server's may hold ~100 KB, the server's queue 64 KiB: at
    // 1 KB a datagram, most of what was relayed must have been dropped.
    assert!(
        dropped + 400 >= relayed_to_client,
        "{dropped} of {relayed_to_client} dropped"
    );
    let growth = rss_flooded.saturating_sub(rss_before);
    assert!(growth < 10 * 1024, "the server's RSS grew by {growth} KiB");

    // The client never reads: once its output has made no progress for the idle timeout it
    // is closed, and counted.
    let after = wait_for_connections(&server, 0, Duration::from_secs(3 + 10));
    eprintln!(
        "stream_write_timeouts moved by {}",
        moved(&before, &after, "stream_write_timeouts")
    );
    assert_eq!(
        after.get("tcp_connections"),
        0,
        "the client is still connected"
    );
    assert_eq!(moved(&before, &after, "stream_write_timeouts"), 1);
    assert_eq!(after.get("allocations"), 0, "its allocation is gone");
}

#[test]
fn a_tcp_client_that_reads_gets_a_2_mbps_stream_without_loss() {
    let server = server_with(vec!["udp", "tcp"], "");
    let mut client = StunClient::tcp(server.addr("tcp"), "alice", "wonderland");
    let relayed = client.allocate().expect("allocate over TCP");
    let peer = UdpSocket::bind("127.0.0.1:0").expect("bind the peer");
    let peer_addr = peer.local_addr().expect("local address");
    assert_eq!(client.bind(0x4000, peer_addr), None, "ChannelBind");
    let before = server.stats();

    // 250 datagrams of 1,000 bytes a second for 3 s: 2 Mbit/s.
    const PACKETS: u32 = 750;
    let sender = thread::spawn(move || {
        let start = Instant::now();
        for i in 0..PACKETS {
            let due = start + Duration::from_millis(4) * i;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let mut payload = vec![0u8; 1000];
            payload[..4].copy_from_slice(&i.to_be_bytes());
            peer.send_to(&payload, relayed).expect("send to the relay");
        }
        start.elapsed()
    });
    let mut received = vec![false; PACKETS as usize];
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.iter().any(|r| !r) {
        let Some(data) = client.recv_data(deadline) else {
            break;
        };
        let i = u32::from_be_bytes(data[..4].try_into().expect("4 bytes"));
        received[i as usize] = true;
    }
    let took = sender.join().expect("the sender");
    let got = received.iter().filter(|r| **r).count();
    eprintln!(
        "2 Mbit/s for {:.2} s through TURN/TCP: {got}/{PACKETS} received",
        took.as_secs_f64(),
    );
    let after = server.stats();
    eprintln!(
        "dropped_stream_full moved by {}",
        moved(&before, &after, "dropped_stream_full")
    );
    assert_eq!(got, PACKETS as usize, "datagrams lost");
    assert_eq!(moved(&before, &after, "dropped_stream_full"), 0);
}

#[test]
fn a_udp_client_that_does_not_read_costs_the_server_nothing() {
    let server = server_with(vec!["udp"], "");
    let udp = server.addr("udp");
    let flooder = UdpSocket::bind("127.0.0.1:0").expect("bind the flooding peer");
    let mut victim = StunClient::udp(udp, "127.0.0.1:0", "alice", "wonderland");
    let relayed = victim.allocate().expect("allocate over UDP");
    let peer = flooder.local_addr().expect("local address");
    assert_eq!(victim.bind(0x4000, peer), None, "ChannelBind to the peer");
    // The smallest receive buffer the kernel allows, never read from here on.
    socket2::SockRef::from(victim.udp_socket())
        .set_recv_buffer_size(1)
        .expect("SO_RCVBUF");
    let victim_port = victim.local_addr().port();
    let drops_before = udp_socket_drops(victim_port);
    let before = server.stats();
    let rss_before = server.rss_kib();

    let flooding = thread::spawn(move || {
        let start = Instant::now();
        let sent = flood(&flooder, relayed, FLOOD_DATAGRAMS, FLOOD_SIZE, FLOOD_TIME);
        (sent, start.elapsed())
    });
    // Meanwhile a client on another address relays through an echo peer.
    thread::sleep(Duration::from_millis(200));
    let (echo_peer, _echo) = common::udp_echo_peer();
    let mut other = StunClient::udp(udp, "127.0.0.2:0", "alice", "wonderland");
    other.allocate().expect("the other client allocates");
    assert_eq!(other.bind(0x4000, echo_peer), None, "ChannelBind");
    let mut echoed = 0;
    for round in 0..20u32 {
        other.send_channel_data(0x4000, &round.to_be_bytes());
        if other.recv_data(Instant::now() + Duration::from_secs(2))
            == Some(round.to_be_bytes().to_vec())
        {
            echoed += 1;
        }
    }
    let served_during_flood = !flooding.is_finished();
    let (sent, took) = flooding.join().expect("the flood thread");
    assert!(
        served_during_flood,
        "the flood ended before the other client was served"
    );
    let after = server.stats();
    let rss_after = server.rss_kib();
    let relayed_to_client = moved(&before, &after, "to_client_packets");
    let kernel_dropped = udp_socket_drops(victim_port) - drops_before;
    eprintln!(
        "peer sent {sent} datagrams in {:.2} s; the server relayed {relayed_to_client} to the \
         client, whose full socket dropped {kernel_dropped}; the other client got {echoed}/20 \
         echoes; server RSS {rss_before} -> {rss_after} KiB ({:+} KiB)",
        took.as_secs_f64(),
        rss_after as i64 - rss_before as i64
    );
    let send_failed = moved(&before, &after, "dropped_send_failed");
    eprintln!("send failures counted: {send_failed}");
    assert!(sent >= FLOOD_DATAGRAMS / 2, "only {sent} datagrams sent");
    assert!(
        relayed_to_client >= 1000,
        "only {relayed_to_client} relayed: the server stalled"
    );
    // On loopback the kernel never refuses the server's send (the receiving socket drops),
    // so failures are possible only in addition to what was relayed.
    assert!(send_failed <= relayed_to_client, "{send_failed}");
    assert!(
        kernel_dropped > 0,
        "the client's socket dropped nothing: the flood did not fill it"
    );
    assert!(echoed >= 18, "only {echoed}/20 echoed during the flood");
    let growth = rss_after.saturating_sub(rss_before);
    assert!(growth < 10 * 1024, "the server's RSS grew by {growth} KiB");
}

/// A ChannelData frame on channel 0x4000, padded for a stream.
fn channel_data(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x40, 0x00];
    frame.extend_from_slice(&u16::try_from(payload.len()).expect("short").to_be_bytes());
    frame.extend_from_slice(payload);
    frame.resize(frame.len().next_multiple_of(4), 0);
    frame
}

const SHORT_IDLE: Duration = Duration::from_secs(1);

#[test]
fn a_quiet_client_with_an_allocation_may_send_its_next_frame_in_two_parts() {
    let server = server_with(vec!["udp", "tcp", "tls"], "stream-idle-timeout = \"1s\"\n");
    let (peer, _echo) = common::udp_echo_peer();
    // Both transports are tried, whatever the first gives, so that a failure shows for each.
    let outcomes: Vec<Result<(), String>> = ["tcp", "tls"]
        .into_iter()
        .map(|transport| quiet_client_sends_in_two_parts(&server, transport, peer))
        .collect();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
}

/// Over `transport`: a client allocates, stays silent for twice the timeout (as a client with
/// an allocation may), then sends a frame in two writes, back to back and then 50 ms apart
/// (two TCP segments, two TLS records); each comes back from the echo peer. A message started
/// after the silence must still be complete within the timeout of its first byte.
fn quiet_client_sends_in_two_parts(
    server: &Server,
    transport: &str,
    peer: SocketAddr,
) -> Result<(), String> {
    let mut client = match transport {
        "tcp" => StunClient::tcp(server.addr("tcp"), "alice", "wonderland"),
        _ => StunClient::tls(server.addr("tls"), "alice", "wonderland"),
    };
    client.allocate().expect("allocate");
    assert_eq!(client.bind(0x4000, peer), None, "{transport}: ChannelBind");
    client.send_channel_data(0x4000, b"first");
    assert_eq!(
        client.recv_data(Instant::now() + stun_client::ANSWER_TIMEOUT),
        Some(b"first".to_vec()),
        "{transport}: first echo"
    );
    for (round, gap) in [Duration::ZERO, Duration::from_millis(50)]
        .into_iter()
        .enumerate()
    {
        thread::sleep(SHORT_IDLE * 2);
        let payload: Vec<u8> = (0..200u32).map(|i| (i as u8) ^ (round as u8)).collect();
        let frame = channel_data(&payload);
        let (head, tail) = frame.split_at(6);
        client.send_frame(head);
        thread::sleep(gap);
        client.send_frame(tail);
        let echo = client.recv_data(Instant::now() + stun_client::ANSWER_TIMEOUT);
        let outcome = match echo {
            Some(echo) if echo == payload => "echoed",
            Some(_) => "a wrong echo",
            None if client.closed_by(Instant::now()) => "the connection closed",
            None => "no echo",
        };
        eprintln!(
            "{transport}: after {:?} of silence, a frame in two parts {gap:?} apart: {outcome}",
            SHORT_IDLE * 2
        );
        if outcome != "echoed" {
            return Err(format!(
                "{transport}: a frame in two parts {gap:?} apart after {:?} of silence: {outcome}",
                SHORT_IDLE * 2
            ));
        }
    }
    assert_eq!(client.refresh(600), None, "{transport}: Refresh afterwards");

    thread::sleep(SHORT_IDLE * 2);
    client.send_frame(&channel_data(b"never finished")[..6]);
    let sent_half = Instant::now();
    assert!(
        client.closed_by(sent_half + SHORT_IDLE + Duration::from_secs(3)),
        "{transport}: a half-sent frame held the connection"
    );
    let closed_after = sent_half.elapsed();
    eprintln!("{transport}: half a frame, closed after {closed_after:?}");
    assert!(
        closed_after >= SHORT_IDLE - Duration::from_millis(100),
        "{transport}: closed {closed_after:?} after the first byte, before the timeout"
    );
    Ok(())
}

/// CPU time the process `pid` has used (user and system).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read the stat");
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no memory-safety preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

#[test]
fn a_large_frame_sent_slowly_costs_no_cpu_and_is_relayed() {
    let server = server_with(vec!["udp", "tcp"], "stream-idle-timeout = \"5s\"\n");
    let (peer, _echo) = common::udp_echo_peer();
    let mut client = StunClient::tcp(server.addr("tcp"), "alice", "wonderland");
    client.allocate().expect("allocate over TCP");
    assert_eq!(client.bind(0x4000, peer), None, "ChannelBind");
    // 12,000 bytes of a 20,004-byte frame: the server's read buffer grows past its initial
    // 4 KiB and holds them while the rest does not come.
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let frame = channel_data(&payload);
    client.send_frame(&frame[..12_000]);
    let cpu_before = cpu_time(server.pid());
    let waiting = Instant::now();
    thread::sleep(Duration::from_secs(3));
    let cpu = cpu_time(server.pid()) - cpu_before;
    eprintln!(
        "server CPU while 12 KB of a frame waited {:.1} s for the rest: {cpu:?}",
        waiting.elapsed().as_secs_f64()
    );
    assert!(
        cpu < Duration::from_millis(1500),
        "the server used {cpu:?} of CPU"
    );
    // The rest, within the timeout of the first byte: relayed, and echoed back.
    client.send_frame(&frame[12_000..]);
    let echo = client.recv_data(Instant::now() + stun_client::ANSWER_TIMEOUT);
    assert_eq!(
        echo.as_deref(),
        Some(&payload[..]),
        "the large frame's echo"
    );
    // Once the buffer has shrunk back, small frames go on.
    thread::sleep(Duration::from_secs(2));
    for round in 0..3u32 {
        client.send_channel_data(0x4000, &round.to_be_bytes());
        let echo = client.recv_data(Instant::now() + stun_client::ANSWER_TIMEOUT);
        assert_eq!(echo, Some(round.to_be_bytes().to_vec()), "echo {round}");
    }
}

#[test]
fn tls_handshakes_stalled_after_a_real_client_hello_are_closed_and_counted() {
    const STALLED: usize = 10;
    let idle = Duration::from_secs(2);
    let server = server_with(vec!["udp", "tls"], "stream-idle-timeout = \"2s\"\n");
    let tls = server.addr("tls");
    let before = server.stats();
    let hello = common::tls::client_hello();
    let mut stalled: Vec<TcpStream> = (0..STALLED)
        .map(|i| {
            let mut stream = TcpStream::connect_timeout(&tls, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            stream.write_all(&hello).expect("send the ClientHello");
            stream.set_nonblocking(true).expect("non-blocking");
            stream
        })
        .collect();
    let opened = Instant::now();
    eprintln!(
        "{STALLED} connections sent a {}-byte ClientHello",
        hello.len()
    );

    // Meanwhile a real TLS client is served.
    let mut client = StunClient::tls(tls, "alice", "wonderland");
    client.allocate().expect("a TLS client allocates");

    let mut open: Vec<&mut TcpStream> = stalled.iter_mut().collect();
    let mut first_close = None;
    while !open.is_empty() && opened.elapsed() < idle + Duration::from_secs(5) {
        let before_poll = open.len();
        open.retain_mut(|stream| !closed_by_server(stream));
        if open.len() < before_poll && first_close.is_none() {
            first_close = Some(opened.elapsed());
        }
        thread::sleep(Duration::from_millis(50));
    }
    let all_closed = opened.elapsed();
    assert!(
        open.is_empty(),
        "{} of {STALLED} stalled handshakes still open after {all_closed:?}",
        open.len()
    );
    let first_close = first_close.expect("closed");
    eprintln!("stalled handshakes closed from {first_close:?} to {all_closed:?} after opening");
    assert!(
        first_close >= idle - Duration::from_millis(300),
        "closed after {first_close:?}, before the {idle:?} timeout"
    );
    assert_eq!(client.refresh(600), None, "the real TLS client refreshes");
    let timeouts = moved(&before, &server.stats(), "stream_timeouts");
    eprintln!("stream_timeouts moved by {timeouts}");
    assert_eq!(timeouts, STALLED as u64);
}

/// What a Binding request on a plain TCP connection got.
#[derive(Debug, PartialEq)]
enum Outcome {
    Answered,
    Closed,
}

fn binding_over(stream: &mut TcpStream) -> Outcome {
    let mut client = [0u8; 20];
    client[..4].copy_from_slice(&[0x00, 0x01, 0x00, 0x00]);
    client[4..8].copy_from_slice(&turnpike::stun::MAGIC_COOKIE.to_be_bytes());
    client[8..20].copy_from_slice(b"per-source-1");
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(stun_client::ANSWER_TIMEOUT))
        .expect("a read timeout");
    if stream.write_all(&client).is_err() {
        return Outcome::Closed;
    }
    let mut answer = [0u8; 256];
    match stream.read(&mut answer) {
        Ok(0) => Outcome::Closed,
        Ok(n) => {
            let msg = turnpike::stun::Message::parse(&answer[..n]).expect("a STUN answer");
            assert_eq!(msg.class(), Class::Success);
            assert_eq!(msg.method(), Method::BINDING);
            Outcome::Answered
        }
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Outcome::Closed,
        Err(e) => panic!("read a Binding answer: {e}"),
    }
}

const PER_SOURCE: usize = 20;

#[test]
fn one_address_cannot_take_every_tcp_and_tls_slot() {
    let server = server_with(
        vec!["udp", "tcp", "tls"],
        // Without the per-source cap, 127.0.0.1 would take all 30 slots.
        "max-tcp-connections = 30\nmax-tcp-connections-per-source = 20\n\
         stream-idle-timeout = \"60s\"\nunauthenticated-rate = 0\n",
    );
    let (tcp, tls) = (server.addr("tcp"), server.addr("tls"));
    let before = server.stats();

    // cap + 50 silent connections from 127.0.0.1: the server accepts them in its own order
    // on two workers, so which ones stay is its choice, but exactly `cap` may.
    let mut streams: Vec<TcpStream> = (0..PER_SOURCE + 50)
        .map(|i| {
            let stream = TcpStream::connect_timeout(&tcp, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            stream.set_nonblocking(true).expect("non-blocking");
            stream
        })
        .collect();
    let opened = Instant::now();
    let mut closed = vec![false; streams.len()];
    while closed.iter().filter(|c| **c).count() < 50 && opened.elapsed() < Duration::from_secs(5) {
        for (stream, closed) in streams.iter_mut().zip(&mut closed) {
            *closed = *closed || closed_by_server(stream);
        }
        thread::sleep(Duration::from_millis(50));
    }
    let refused_in = opened.elapsed();
    // The rest stay open: once the server has counted its 50 refusals it has decided on every
    // connection (it closes no more, the idle timeout being a minute), and what it closed is
    // seen closed.
    let refusals = before.get("tcp_rejected_per_source") + 50;
    server.wait_for_counter("tcp_rejected_per_source", refusals, Duration::from_secs(10));
    for (stream, closed) in streams.iter_mut().zip(&mut closed) {
        *closed = *closed || closed_by_server(stream);
    }
    let refused = closed.iter().filter(|c| **c).count();
    eprintln!(
        "{} connections from 127.0.0.1 with a cap of {PER_SOURCE}: {refused} closed within \
         {refused_in:?}",
        streams.len()
    );
    assert_eq!(refused, 50, "connections closed at once");
    let mut kept: Vec<TcpStream> = streams
        .into_iter()
        .zip(&closed)
        .filter(|(_, closed)| !**closed)
        .map(|(stream, _)| stream)
        .collect();
    for stream in &mut kept {
        assert_eq!(binding_over(stream), Outcome::Answered, "a kept connection");
    }

    // A TLS connection from the same address counts too, and is closed before any TLS work:
    // no ServerHello.
    let mut tls_stream =
        TcpStream::connect_timeout(&tls, Duration::from_secs(10)).expect("connect to TLS");
    let _ = tls_stream.write_all(&common::tls::client_hello());
    tls_stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    let mut buf = [0u8; 64];
    match tls_stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("a TLS connection over the cap got {other:?}"),
    }

    // Meanwhile a client on another address connects, allocates and relays.
    other_source_relays(&server, 5);

    let full = server.stats();
    assert_eq!(moved(&before, &full, "tcp_rejected_per_source"), 51);
    assert_eq!(moved(&before, &full, "tcp_rejected"), 0);

    // Once some close, new ones from 127.0.0.1 are served again, up to the cap. The server
    // learns of a close a moment later: a connection refused meanwhile is retried.
    kept.truncate(PER_SOURCE - 5);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused_meanwhile = 0;
    while kept.len() < PER_SOURCE {
        let mut stream =
            TcpStream::connect_timeout(&tcp, Duration::from_secs(10)).expect("connect again");
        match binding_over(&mut stream) {
            Outcome::Answered => kept.push(stream),
            Outcome::Closed => {
                refused_meanwhile += 1;
                assert!(
                    Instant::now() < deadline,
                    "only {} of {PER_SOURCE} served 10 s after 5 closed",
                    kept.len()
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let mut over = TcpStream::connect_timeout(&tcp, Duration::from_secs(10)).expect("connect");
    assert_eq!(binding_over(&mut over), Outcome::Closed, "one over the cap");
    let after = server.stats();
    eprintln!(
        "after 5 closed: 5 new ones served ({refused_meanwhile} refused while the server \
         learnt of the closes); tcp_connections {}",
        after.get("tcp_connections")
    );
    assert_eq!(after.get("tcp_connections"), PER_SOURCE as u64);

    // The cap is reloadable: lowered to 10, new connections from 127.0.0.1 are refused while
    // 20 are open (those stay), and 10 may open once they are gone.
    let path = server.config_path();
    let toml = std::fs::read_to_string(&path).expect("read the configuration");
    // A bad value is rejected, naming the key, and the cap in force stays.
    let bad = toml.replace(
        "max-tcp-connections-per-source = 20",
        "max-tcp-connections-per-source = -20",
    );
    std::fs::write(&path, bad).expect("write the configuration");
    server.signal(libc::SIGHUP);
    let rejected = server.wait_for_log("reload rejected", 1, Duration::from_secs(10));
    assert_eq!(rejected.len(), 1, "a bad value was not rejected");
    assert!(
        rejected[0].contains("limits.max-tcp-connections-per-source"),
        "{}",
        rejected[0]
    );
    let mut still_over = TcpStream::connect_timeout(&tcp, Duration::from_secs(10))
        .expect("connect after the rejected reload");
    assert_eq!(
        binding_over(&mut still_over),
        Outcome::Closed,
        "the cap of 20 after a rejected reload"
    );
    let lowered = toml.replace(
        "max-tcp-connections-per-source = 20",
        "max-tcp-connections-per-source = 10",
    );
    assert_ne!(toml, lowered);
    std::fs::write(&path, lowered).expect("write the configuration");
    server.signal(libc::SIGHUP);
    let reloaded = server.wait_for_log("configuration reloaded", 1, Duration::from_secs(10));
    assert_eq!(reloaded.len(), 1, "not reloaded");
    let mut refused_after_reload = TcpStream::connect_timeout(&tcp, Duration::from_secs(10))
        .expect("connect after the reload");
    assert_eq!(binding_over(&mut refused_after_reload), Outcome::Closed);
    for stream in &mut kept {
        assert_eq!(
            binding_over(stream),
            Outcome::Answered,
            "kept across the reload"
        );
    }
    drop(kept);
    wait_for_connections(&server, 0, Duration::from_secs(5));
    let mut reopened: Vec<TcpStream> = Vec::new();
    for i in 0..11 {
        let mut stream = TcpStream::connect_timeout(&tcp, Duration::from_secs(10))
            .expect("connect after the reload");
        let outcome = binding_over(&mut stream);
        let expected = if i < 10 {
            Outcome::Answered
        } else {
            Outcome::Closed
        };
        assert_eq!(outcome, expected, "connection {i} after the reload");
        reopened.push(stream);
    }
}

#[test]
fn a_bad_max_tcp_connections_per_source_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("a tempdir");
    for (value, problem) in [
        ("-1", "invalid value: integer `-1`, expected u32"),
        ("1.5", "invalid type: floating point `1.5`, expected u32"),
        ("\"many\"", "invalid type: string \"many\", expected u32"),
        (
            "99999999999",
            "invalid value: integer `99999999999`, expected u32",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            format!("[limits]\nmax-tcp-connections-per-source = {value}\n"),
        )
        .expect("write the configuration");
        let output = std::process::Command::new(common::turnpike_binary())
            .arg("check-config")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("run check-config");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{value} accepted");
        assert!(
            stderr.contains(&format!("limits.max-tcp-connections-per-source: {problem}")),
            "{value}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}
