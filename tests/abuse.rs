//! Abuse resistance of the real binary: a flood of unauthenticated requests from one source
//! gets no more than its reflection budget (`unauthenticated-burst`, then
//! `unauthenticated-rate`) and costs no memory while a real client relays through it; a flood
//! spread over a thousand sources gets no more than `unauthenticated-node-rate` while a real
//! client relays and allocates; idle and half-sent TCP connections (slowloris) are closed after
//! `stream-idle-timeout` while real clients are served; and the bytes a spoofed request can
//! make the server send (amplification) are measured.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::stun_client::{self, StunClient};
use common::{Server, TestConfig};
use turnpike::stun::{Class, Message, MessageWriter, Method, TransactionId, attr};

/// Requests in the flood, and the most time it may take.
const FLOOD_PACKETS: u64 = 1_000_000;
const FLOOD_MAX: Duration = Duration::from_secs(60);
/// The shipped reflection budget of one source: a burst of 2,000 answers, then 20 a second.
const RATE: f64 = 20.0;
const BURST: f64 = 2000.0;
/// The largest answer to a request without credentials: a 401 in the realm `turnpike.test`
/// (a Binding success is 40 bytes).
const LARGEST_ANSWER: f64 = 76.0;

fn limited_server(transports: Vec<&'static str>, limits: &str) -> Server {
    Server::with(&TestConfig {
        transports,
        extra: format!("[limits]\n{limits}"),
        ..TestConfig::default()
    })
}

/// A request without credentials: `method` with `attrs`, optionally with FINGERPRINT.
fn unauthenticated(
    method: Method,
    tid: TransactionId,
    attrs: &dyn Fn(&mut MessageWriter<'_>),
    fingerprint: bool,
) -> Vec<u8> {
    let mut buf = [0u8; 200];
    let mut w = MessageWriter::new(&mut buf, method, Class::Request, tid).expect("fits");
    attrs(&mut w);
    if fingerprint {
        w.fingerprint().expect("fits");
    }
    let n = w.finish();
    buf[..n].to_vec()
}

fn requested_udp(w: &mut MessageWriter<'_>) {
    w.requested_transport(17).expect("fits");
}

/// Datagrams the kernel dropped on their way to the server's UDP sockets on `port` (the
/// `drops` column of /proc/net/udp, summed over the workers' SO_REUSEPORT sockets), plus
/// loopback backlog drops (/proc/net/softnet_stat, machine-wide).
fn kernel_drops(port: u16) -> u64 {
    let udp = std::fs::read_to_string("/proc/net/udp").expect("read /proc/net/udp");
    let local = format!(":{port:04X}");
    let socket_drops: u64 = udp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            let ours = columns.get(1).is_some_and(|addr| addr.ends_with(&local));
            ours.then(|| columns.last()?.parse::<u64>().ok()).flatten()
        })
        .sum();
    let softnet = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    let backlog_drops: u64 = softnet
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
        .sum();
    socket_drops + backlog_drops
}

#[test]
fn unauthenticated_flood_gets_the_burst_then_the_rate_with_the_shipped_defaults() {
    let server = limited_server(vec!["udp"], "");
    let udp = server.addr("udp");
    let (peer, echo_peer) = common::udp_echo_peer();
    let stats_before = server.stats();
    let rss_before = server.rss_kib();
    let drops_before = kernel_drops(udp.port());

    let flooder = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    let listener = flooder.try_clone().expect("clone the socket");
    listener
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("set a timeout");
    let counting = Arc::new(AtomicBool::new(true));
    let answers = Arc::new(AtomicU64::new(0));
    let answer_bytes = Arc::new(AtomicU64::new(0));
    let counter = {
        let (counting, answers, answer_bytes) =
            (counting.clone(), answers.clone(), answer_bytes.clone());
        thread::spawn(move || {
            let give_up = Instant::now() + FLOOD_MAX + Duration::from_secs(30);
            let mut buf = [0u8; 1500];
            while counting.load(Ordering::SeqCst) && Instant::now() < give_up {
                if let Ok((n, _)) = listener.recv_from(&mut buf) {
                    answers.fetch_add(1, Ordering::SeqCst);
                    answer_bytes.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        })
    };

    let flooding = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicU64::new(0));
    let sent_bytes = Arc::new(AtomicU64::new(0));
    let flood_start = Instant::now();
    let flood = {
        let (flooding, sent, sent_bytes) = (flooding.clone(), sent.clone(), sent_bytes.clone());
        thread::spawn(move || {
            // Binding and credential-less Allocate requests in turn, each with its own
            // transaction id.
            let binding = unauthenticated(Method::BINDING, TransactionId([0; 12]), &|_| {}, false);
            let allocate = unauthenticated(
                Method::ALLOCATE,
                TransactionId([0; 12]),
                &requested_udp,
                false,
            );
            let mut templates = [binding, allocate];
            for i in 0..FLOOD_PACKETS {
                if i % 1024 == 0 && flood_start.elapsed() > FLOOD_MAX {
                    break;
                }
                let request = &mut templates[(i % 2) as usize];
                request[12..20].copy_from_slice(&i.to_be_bytes());
                if flooder.send_to(request, udp).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                    sent_bytes.fetch_add(request.len() as u64, Ordering::Relaxed);
                }
            }
            flooding.store(false, Ordering::SeqCst);
            Instant::now()
        })
    };

    // Meanwhile a real client on another source address allocates and relays through an echo
    // peer every 100 ms for as long as the flood lasts.
    thread::sleep(Duration::from_millis(200));
    let mut client = StunClient::udp(udp, "127.0.0.2:0", "alice", "wonderland");
    client
        .allocate()
        .expect("a real client allocates during the flood");
    assert_eq!(
        client.bind(0x4000, peer),
        None,
        "ChannelBind during the flood"
    );
    let allocated_during_flood = flooding.load(Ordering::SeqCst);
    let mut rounds = 0u32;
    let mut echoed = 0u32;
    let relay_until = Instant::now() + FLOOD_MAX;
    while flooding.load(Ordering::SeqCst) && Instant::now() < relay_until {
        rounds += 1;
        client.send_channel_data(0x4000, &rounds.to_be_bytes());
        let next = Instant::now() + Duration::from_millis(100);
        while let Some(data) = client.recv_data(next) {
            if data.len() == 4 {
                echoed += 1;
            }
        }
    }
    // Echoes still in flight.
    let settle = Instant::now() + Duration::from_secs(1);
    while echoed < rounds {
        match client.recv_data(settle) {
            Some(data) if data.len() == 4 => echoed += 1,
            Some(_) => {}
            None => break,
        }
    }

    let flood_end = flood.join().expect("the flood thread");
    // Answers to the last requests may still be on their way: keep counting for a second,
    // and count that second in the allowance too.
    thread::sleep(Duration::from_secs(1));
    counting.store(false, Ordering::SeqCst);
    counter.join().expect("the counter thread");
    let window = flood_start.elapsed().as_secs_f64();
    let sent = sent.load(Ordering::SeqCst);
    let sent_bytes = sent_bytes.load(Ordering::SeqCst);
    let answers = answers.load(Ordering::SeqCst);
    let answer_bytes = answer_bytes.load(Ordering::SeqCst);
    let flood_secs = (flood_end - flood_start).as_secs_f64();
    let kernel_drops = kernel_drops(udp.port()) - drops_before;
    let stats_after = server.stats();
    let rss_after = server.rss_kib();
    let rate_limited = stats_after.get("rate_limited") - stats_before.get("rate_limited");

    eprintln!(
        "flood: {sent} requests in {flood_secs:.2} s = {:.0} requests/s",
        sent as f64 / flood_secs
    );
    eprintln!(
        "flood: {answers} answers in a {window:.2} s window (allowance {:.0}); \
         rate_limited {rate_limited}; kernel drops {kernel_drops}",
        BURST + RATE * window
    );
    eprintln!(
        "flood: {sent_bytes} bytes sent, {answer_bytes} bytes of answers ({:.4} of the flood's \
         bytes; allowance {:.0} bytes)",
        answer_bytes as f64 / sent_bytes.max(1) as f64,
        (BURST + RATE * window) * LARGEST_ANSWER
    );
    eprintln!(
        "server RSS: {rss_before} KiB before, {rss_after} KiB after ({:+} KiB)",
        rss_after as i64 - rss_before as i64
    );
    eprintln!(
        "real client: allocated while flooding: {allocated_during_flood}; {echoed}/{rounds} \
         echoed (peer echoed {})",
        echo_peer.echoed()
    );

    assert_eq!(
        sent, FLOOD_PACKETS,
        "the flood was cut short by its time bound"
    );
    assert!(
        answers as f64 <= (BURST + RATE * window) * 1.05,
        "{answers} answers in {window:.2} s: more than {BURST} + {RATE}/s"
    );
    assert!(answers > 0, "the flooder was never answered at all");
    assert!(
        answer_bytes as f64 <= (BURST + RATE * window) * 1.05 * LARGEST_ANSWER,
        "{answer_bytes} bytes of answers in {window:.2} s"
    );
    let growth = rss_after.saturating_sub(rss_before);
    assert!(growth < 10 * 1024, "the server's RSS grew by {growth} KiB");
    // Every request that reached the server and was not answered was rate limited.
    let reached = sent - answers - kernel_drops.min(sent - answers);
    assert!(
        rate_limited as f64 >= reached as f64 * 0.9 && rate_limited <= sent,
        "rate_limited moved by {rate_limited}; {sent} sent, {answers} answered, \
         {kernel_drops} dropped by the kernel"
    );
    assert!(
        allocated_during_flood,
        "the flood ended before the client had allocated"
    );
    assert!(rounds >= 10, "only {rounds} relay rounds during the flood");
    assert!(
        echoed * 10 >= rounds * 9,
        "only {echoed} of {rounds} datagrams came back through the relay during the flood"
    );
}

#[test]
fn the_reflection_budget_is_per_source_ip_across_ports_and_workers() {
    const SOCKETS: usize = 8;
    const REQUESTS: u64 = 200_000;
    let server = limited_server(vec!["udp"], "");
    let udp = server.addr("udp");
    // Eight ports of one IP: the kernel spreads their 4-tuples over both workers' sockets.
    let sockets: Vec<UdpSocket> = (0..SOCKETS)
        .map(|_| {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
            socket.set_nonblocking(true).expect("set non-blocking");
            socket
        })
        .collect();
    let mut request = unauthenticated(Method::BINDING, TransactionId([0; 12]), &|_| {}, false);
    let mut buf = [0u8; 1500];
    let mut answers = 0u64;
    let mut drain = |sockets: &[UdpSocket]| {
        for socket in sockets {
            while socket.recv_from(&mut buf).is_ok() {
                answers += 1;
            }
        }
    };
    let start = Instant::now();
    for i in 0..REQUESTS {
        if i % 1024 == 0 {
            assert!(
                start.elapsed() < FLOOD_MAX,
                "{i} requests sent in {FLOOD_MAX:?}"
            );
            drain(&sockets);
        }
        request[12..20].copy_from_slice(&i.to_be_bytes());
        let _ = sockets[i as usize % SOCKETS].send_to(&request, udp);
    }
    let flood_secs = start.elapsed().as_secs_f64();
    let settle = Instant::now() + Duration::from_secs(1);
    while Instant::now() < settle {
        drain(&sockets);
        thread::sleep(Duration::from_millis(20));
    }
    let window = start.elapsed().as_secs_f64();
    eprintln!(
        "{REQUESTS} Binding requests from {SOCKETS} ports of 127.0.0.1 in {flood_secs:.2} s: \
         {answers} answers in {window:.2} s (allowance {:.0})",
        BURST + RATE * window
    );
    assert!(answers > 0, "never answered");
    assert!(
        answers as f64 <= (BURST + RATE * window) * 1.05,
        "{answers} answers in {window:.2} s to one IP: more than {BURST} + {RATE}/s"
    );
}

#[test]
fn a_flood_spread_over_a_thousand_sources_is_bounded_node_wide() {
    const SOURCES: u32 = 1000;
    // A request from each source per round, for 5 s (at most 2,000,000 requests).
    const ROUNDS: u64 = 2000;
    const FLOOD_FOR: Duration = Duration::from_secs(5);
    const NODE_RATE: f64 = 500.0;
    // The node's burst: one second of its rate, or a source's burst (2,000) if larger.
    const NODE_BURST: f64 = 2000.0;
    common::raise_open_files(8192);
    let server = limited_server(vec!["udp"], "unauthenticated-node-rate = 500\n");
    let udp = server.addr("udp");
    let (peer, echo_peer) = common::udp_echo_peer();
    // A client allocates before the flood: its address is proven from then on.
    let mut client = StunClient::udp(udp, "127.0.0.2:0", "alice", "wonderland");
    client.allocate().expect("allocate before the flood");
    assert_eq!(client.bind(0x4000, peer), None, "ChannelBind");
    let stats_before = server.stats();
    let drops_before = kernel_drops(udp.port());

    // 1,000 sources, 127.77.0.1 to 127.77.3.250, each well within its own budget (about 100
    // requests a second against a burst of 2,000): only the node-wide budget can hold them.
    let sockets: Vec<UdpSocket> = (0..SOURCES)
        .map(|n| {
            let socket =
                UdpSocket::bind(format!("127.77.{}.{}:0", n / 250, n % 250 + 1)).expect("bind UDP");
            socket.set_nonblocking(true).expect("set non-blocking");
            socket
        })
        .collect();
    let flooding = Arc::new(AtomicBool::new(true));
    let flood_start = Instant::now();
    let flood = {
        let flooding = flooding.clone();
        thread::spawn(move || {
            let mut templates = [
                unauthenticated(Method::BINDING, TransactionId([0; 12]), &|_| {}, false),
                unauthenticated(
                    Method::ALLOCATE,
                    TransactionId([0; 12]),
                    &requested_udp,
                    false,
                ),
            ];
            let mut buf = [0u8; 1500];
            let (mut sent, mut answers, mut answer_bytes) = (0u64, 0u64, 0u64);
            let mut drain = |answers: &mut u64, answer_bytes: &mut u64| {
                for socket in &sockets {
                    while let Ok((n, _)) = socket.recv_from(&mut buf) {
                        *answers += 1;
                        *answer_bytes += n as u64;
                    }
                }
            };
            for round in 0..ROUNDS {
                if flood_start.elapsed() > FLOOD_FOR {
                    break;
                }
                for (i, socket) in sockets.iter().enumerate() {
                    let request = &mut templates[i % 2];
                    request[12..20].copy_from_slice(&(round << 16 | i as u64).to_be_bytes());
                    if socket.send_to(request, udp).is_ok() {
                        sent += 1;
                    }
                }
                drain(&mut answers, &mut answer_bytes);
            }
            flooding.store(false, Ordering::SeqCst);
            // Answers still on their way.
            let settle = Instant::now() + Duration::from_secs(1);
            while Instant::now() < settle {
                drain(&mut answers, &mut answer_bytes);
                thread::sleep(Duration::from_millis(20));
            }
            (sent, answers, answer_bytes)
        })
    };

    // Meanwhile the client relays every 100 ms, refreshes, and a second client from its
    // (proven) address allocates.
    let mut rounds = 0u32;
    let mut echoed = 0u32;
    let mut second_allocated = None;
    let mut refreshed = None;
    let relay_until = Instant::now() + FLOOD_MAX;
    while flooding.load(Ordering::SeqCst) && Instant::now() < relay_until {
        rounds += 1;
        client.send_channel_data(0x4000, &rounds.to_be_bytes());
        let next = Instant::now() + Duration::from_millis(100);
        while let Some(data) = client.recv_data(next) {
            if data.len() == 4 {
                echoed += 1;
            }
        }
        if rounds == 3 {
            let mut second = StunClient::udp(udp, "127.0.0.2:0", "alice", "wonderland");
            second_allocated = Some((second.allocate(), flooding.load(Ordering::SeqCst)));
            refreshed = Some((client.refresh(600), flooding.load(Ordering::SeqCst)));
        }
    }
    let settle = Instant::now() + Duration::from_secs(1);
    while echoed < rounds {
        match client.recv_data(settle) {
            Some(data) if data.len() == 4 => echoed += 1,
            Some(_) => {}
            None => break,
        }
    }
    let (sent, answers, answer_bytes) = flood.join().expect("the flood thread");
    let window = flood_start.elapsed().as_secs_f64();
    let kernel_drops = kernel_drops(udp.port()) - drops_before;
    let stats = server.stats();
    let moved = |name: &str| stats.get(name) - stats_before.get(name);
    let allowance = NODE_BURST + NODE_RATE * window;
    eprintln!(
        "flood from {SOURCES} sources: {sent} requests, {answers} answers ({answer_bytes} bytes) \
         in {window:.2} s (allowance {allowance:.0}); rate_limited_node {}, rate_limited {}, \
         kernel drops {kernel_drops}",
        moved("rate_limited_node"),
        moved("rate_limited"),
    );
    eprintln!(
        "real client: {echoed}/{rounds} echoed (peer echoed {}); second allocation from its \
         address: {second_allocated:?}; refresh: {refreshed:?} (result, during the flood)",
        echo_peer.echoed()
    );

    assert!(answers > 0, "the flood was never answered");
    assert!(
        answers as f64 <= allowance * 1.05,
        "{answers} answers in {window:.2} s to {SOURCES} sources: more than {NODE_BURST} + \
         {NODE_RATE}/s"
    );
    assert!(answer_bytes as f64 <= allowance * 1.05 * LARGEST_ANSWER);
    assert_eq!(moved("rate_limited"), 0, "no source used its own budget");
    let reached = sent - answers - kernel_drops.min(sent - answers);
    assert!(
        moved("rate_limited_node") as f64 >= reached as f64 * 0.9,
        "rate_limited_node moved by {}; {sent} sent, {answers} answered, {kernel_drops} \
         dropped by the kernel",
        moved("rate_limited_node")
    );
    let (second, during) = second_allocated.expect("the flood outlasted three relay rounds");
    assert!(during, "the flood ended before the second client allocated");
    second.expect("a client of a proven address allocates during the flood");
    assert_eq!(refreshed, Some((None, true)), "Refresh during the flood");
    assert!(rounds >= 10, "only {rounds} relay rounds during the flood");
    assert!(
        echoed * 10 >= rounds * 9,
        "only {echoed} of {rounds} datagrams came back through the relay during the flood"
    );
}

/// Whether the server has closed `stream` (set non-blocking): EOF or reset. Fails the test
/// when the server sent something to a client that never asked.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("the server sent {n} bytes to an idle connection"),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("read an idle connection: {e}"),
    }
}

/// Idle connections, and connections that sent half a STUN header.
const IDLE: usize = 2_000;
const HALF_SENT: usize = 200;
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);

#[test]
fn slowloris_connections_are_closed_after_the_stream_idle_timeout() {
    common::raise_open_files(8192);
    // All from 127.0.0.1: without lifting the per-source cap most would be refused at
    // accept (tests/streams.rs tests that cap); this test is about the idle timeout.
    let server = limited_server(
        vec!["udp", "tcp"],
        "stream-idle-timeout = \"2s\"\nmax-tcp-connections-per-source = 0\n",
    );
    let tcp = server.addr("tcp");
    let before = server.stats();

    let open_by = Instant::now() + Duration::from_secs(30);
    let mut idle: Vec<TcpStream> = Vec::with_capacity(IDLE + HALF_SENT);
    for i in 0..IDLE + HALF_SENT {
        assert!(
            Instant::now() < open_by,
            "only {i} connections opened in 30 s"
        );
        let mut stream = TcpStream::connect_timeout(&tcp, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        if i >= IDLE {
            // The first 10 bytes of a Binding request: a frame the server must wait for.
            let request = unauthenticated(Method::BINDING, TransactionId([7; 12]), &|_| {}, false);
            stream
                .write_all(&request[..10])
                .expect("write half a header");
        }
        idle.push(stream);
    }
    let all_open = Instant::now();
    eprintln!(
        "opened {} connections in {:.2} s",
        idle.len(),
        (all_open - (open_by - Duration::from_secs(30))).as_secs_f64()
    );

    // Meanwhile a real client allocates over TCP and relays through an echo peer.
    let (peer, _echo_peer) = common::udp_echo_peer();
    let mut client = StunClient::tcp(tcp, "alice", "wonderland");
    client.allocate().expect("a real client allocates over TCP");
    assert_eq!(client.bind(0x4000, peer), None, "ChannelBind over TCP");
    for round in 0..10u32 {
        client.send_channel_data(0x4000, &round.to_be_bytes());
        let echo = client.recv_data(Instant::now() + stun_client::ANSWER_TIMEOUT);
        assert_eq!(
            echo,
            Some(round.to_be_bytes().to_vec()),
            "echo {round} over TCP"
        );
    }

    for stream in &idle {
        stream.set_nonblocking(true).expect("set non-blocking");
    }
    let close_by = all_open + IDLE_TIMEOUT + Duration::from_secs(5);
    let mut open: Vec<&mut TcpStream> = idle.iter_mut().collect();
    while !open.is_empty() && Instant::now() < close_by {
        open.retain_mut(|stream| !closed_by_server(stream));
        thread::sleep(Duration::from_millis(100));
    }
    let all_closed = Instant::now();
    assert!(
        open.is_empty(),
        "{} of {} idle connections still open {:?} after the last was opened",
        open.len(),
        IDLE + HALF_SENT,
        close_by - all_open
    );
    eprintln!(
        "all idle connections closed {:.2} s after the last was opened",
        (all_closed - all_open).as_secs_f64()
    );

    // The real client, which holds an allocation, was not closed.
    assert_eq!(client.refresh(600), None, "the real client refreshes");
    let after = server.stats();
    let timeouts = after.get("stream_timeouts") - before.get("stream_timeouts");
    eprintln!("stream_timeouts moved by {timeouts}");
    assert!(
        timeouts >= (IDLE + HALF_SENT) as u64,
        "stream_timeouts moved by {timeouts} for {} idle connections",
        IDLE + HALF_SENT
    );
    assert_eq!(
        after.get("tcp_connections"),
        1,
        "only the real client is left"
    );
}

#[test]
fn a_tcp_client_with_an_allocation_may_idle_past_the_stream_idle_timeout() {
    let server = limited_server(vec!["udp", "tcp"], "stream-idle-timeout = \"2s\"\n");
    let tcp = server.addr("tcp");
    let mut client = StunClient::tcp(tcp, "alice", "wonderland");
    client.allocate().expect("allocate over TCP");
    // For contrast, a connection that was answered once but holds no allocation, and one
    // that holds an allocation but leaves half a message hanging.
    let mut without = StunClient::tcp(tcp, "alice", "wonderland");
    let answer = without.request(Method::BINDING, &|_| {});
    assert_eq!(answer.class, Class::Success, "Binding over TCP");
    let mut hanging = StunClient::tcp(tcp, "alice", "wonderland");
    hanging.allocate().expect("allocate over TCP");
    let request = unauthenticated(Method::BINDING, TransactionId([9; 12]), &|_| {}, false);
    hanging.send_frame(&request[..10]);

    thread::sleep(IDLE_TIMEOUT + Duration::from_secs(1));
    assert_eq!(
        client.refresh(600),
        None,
        "Refresh on the same connection after 3 s of silence"
    );
    let close_by = Instant::now() + Duration::from_secs(5);
    assert!(
        without.closed_by(close_by),
        "the connection without an allocation is closed"
    );
    assert!(
        hanging.closed_by(close_by),
        "the connection with an allocation and a half-sent message is closed"
    );
}

/// Writes a request's attributes.
type Attributes = dyn Fn(&mut MessageWriter<'_>);

/// One row of the amplification table.
struct Amplification {
    request: &'static str,
    sent: usize,
    answer: String,
    received: usize,
}

impl Amplification {
    fn ratio(&self) -> f64 {
        self.received as f64 / self.sent as f64
    }
}

/// Sends `request` from a fresh socket (retransmitting, as it is UDP) and returns the
/// answer's size and what it was.
fn answer_to(server: SocketAddr, request: &[u8]) -> (usize, String) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("set a timeout");
    let mut buf = [0u8; 1500];
    for _ in 0..10 {
        socket.send_to(request, server).expect("send");
        let Ok((n, _)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let msg = Message::parse(&buf[..n]).expect("a STUN answer");
        let what = match msg.get(attr::ERROR_CODE) {
            Some(code) => format!("{}", attr::decode_error_code(code).expect("valid").0),
            None => format!("{:?}", msg.class()),
        };
        return (n, what);
    }
    panic!("no answer to a {}-byte request in 10 tries", request.len());
}

#[test]
fn amplification_of_unauthenticated_requests_is_bounded() {
    let server = limited_server(vec!["udp"], "");
    let udp = server.addr("udp");
    let tid = TransactionId(*b"amplifyamplf");
    let none: &Attributes = &|_| {};
    let cases: [(&str, Method, &Attributes, bool); 5] = [
        ("Binding", Method::BINDING, none, false),
        ("Binding + FINGERPRINT", Method::BINDING, none, true),
        (
            "Allocate REQUESTED-TRANSPORT",
            Method::ALLOCATE,
            &requested_udp,
            false,
        ),
        (
            "Allocate REQUESTED-TRANSPORT + FINGERPRINT",
            Method::ALLOCATE,
            &requested_udp,
            true,
        ),
        (
            "Allocate, no attributes (not asserted)",
            Method::ALLOCATE,
            none,
            false,
        ),
    ];
    let mut rows = Vec::new();
    for (request, method, attrs, fingerprint) in cases {
        let bytes = unauthenticated(method, tid, attrs, fingerprint);
        let (received, answer) = answer_to(udp, &bytes);
        rows.push(Amplification {
            request,
            sent: bytes.len(),
            answer,
            received,
        });
    }

    eprintln!("| request | bytes | answer | bytes | ratio |");
    eprintln!("| --- | ---: | --- | ---: | ---: |");
    for row in &rows {
        eprintln!(
            "| {} | {} | {} | {} | {:.2} |",
            row.request,
            row.sent,
            row.answer,
            row.received,
            row.ratio()
        );
    }
    for row in &rows[..2] {
        assert_eq!(row.answer, "Success", "{}", row.request);
        assert!(
            row.ratio() <= 2.0,
            "{}: ratio {:.2}",
            row.request,
            row.ratio()
        );
    }
    for row in &rows[2..4] {
        assert_eq!(row.answer, "401", "{}", row.request);
        assert!(
            row.ratio() <= 4.0,
            "{}: ratio {:.2}",
            row.request,
            row.ratio()
        );
    }
}

#[test]
fn stalled_tls_handshakes_are_closed_after_the_stream_idle_timeout() {
    let server = limited_server(vec!["udp", "tls"], "stream-idle-timeout = \"2s\"\n");
    let tls = server.addr("tls");
    let before = server.stats();
    let mut stalled = Vec::new();
    for i in 0..60 {
        let mut stream = TcpStream::connect_timeout(&tls, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        if i % 2 == 1 {
            // A TLS record header announcing a ClientHello that never comes.
            stream
                .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .expect("write a record header");
        }
        stream.set_nonblocking(true).expect("set non-blocking");
        stalled.push(stream);
    }
    let all_open = Instant::now();
    let close_by = all_open + IDLE_TIMEOUT + Duration::from_secs(5);
    let mut open: Vec<&mut TcpStream> = stalled.iter_mut().collect();
    while !open.is_empty() && Instant::now() < close_by {
        open.retain_mut(|stream| !closed_by_server(stream));
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        open.is_empty(),
        "{} of 60 stalled TLS handshakes still open after {:?}",
        open.len(),
        close_by - all_open
    );
    let timeouts = server.stats().get("stream_timeouts") - before.get("stream_timeouts");
    eprintln!(
        "60 stalled TLS handshakes closed within {:.2} s; stream_timeouts moved by {timeouts}",
        all_open.elapsed().as_secs_f64()
    );
}
