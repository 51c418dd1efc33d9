//! turnpike's own TURN client (`turnpike::client`) against the real binary: allocations over
//! UDP, TCP and TLS with long-term and REST credentials, relaying to a UDP echo peer through a
//! channel and Send indications, STUN errors surfacing as typed errors, Refresh 0, the 438
//! retry, UDP retransmission (timed against a silent socket, and through a proxy that loses
//! the first requests), data kept across a request, no heap allocation per relayed packet, and
//! hostile "servers" (plain sockets sending garbage) that must give errors, never panics.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{RELAY_PORTS, Server, TestConfig, udp_echo_peer};
use turnpike::client::{
    Client, ClientConfig, ClientError, ClientTls, Credentials, Received, Timing, Transport,
};
use turnpike::stun::{Class, Message, MessageWriter, Method, TransactionId, attr};

/// Counts heap allocations made by the current thread, so that a test can show the client's
/// data path allocates nothing while other tests run on other threads.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_allocation() {
    // `try_with`: the slot may be gone while a thread exits.
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting touches only a
// const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: the caller's obligations are passed on as they are.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations_on_this_thread() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// How long any one relayed datagram may take to come back.
const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

const TRANSPORTS: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

/// A client configuration for `server`'s listener of `transport`, bound to 127.0.0.1, any
/// certificate accepted.
fn config(server: &Server, transport: Transport, credentials: Credentials) -> ClientConfig {
    let mut config = ClientConfig::new(server.addr(&transport.to_string()), transport, credentials);
    config.local = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.tls = Some(ClientTls::accept_any_certificate());
    config
}

async fn connect(server: &Server, transport: Transport, credentials: Credentials) -> Client {
    Client::connect(config(server, transport, credentials))
        .await
        .unwrap_or_else(|e| panic!("connect over {transport}: {e}"))
}

fn alice() -> Credentials {
    Credentials::long_term("alice", "wonderland")
}

/// The echo peer's count once it reaches `n` (it counts a datagram after sending it back, so
/// the client can see an echo first), or as it is after [`ECHO_TIMEOUT`].
async fn echoed_at_least(echo: &common::EchoPeer, n: usize) -> usize {
    let deadline = Instant::now() + ECHO_TIMEOUT;
    while echo.echoed() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    echo.echoed()
}

/// The next relayed payload, or a failed test after [`ECHO_TIMEOUT`].
async fn recv(client: &mut Client) -> (Option<u16>, Option<SocketAddr>, Vec<u8>) {
    let received = tokio::time::timeout(ECHO_TIMEOUT, client.recv())
        .await
        .expect("an echo within the timeout")
        .expect("receive from the server");
    match received {
        Received::ChannelData { number, payload } => (Some(number), None, payload.to_vec()),
        Received::Data { peer, payload } => (None, Some(peer), payload.to_vec()),
    }
}

/// Allocates, then sends `count` numbered payloads to the echo peer on a channel and `count`
/// in Send indications, and checks each echo: same bytes, on the channel or from the peer.
async fn allocate_and_relay(client: &mut Client, peer: SocketAddr, count: usize) {
    let transport = client.transport();
    let allocation = client.allocate(None).await.expect("allocate");
    let local = client.local_addr().unwrap();
    eprintln!(
        "{transport} {}: relayed {} mapped {:?} lifetime {:?}",
        client.username(),
        allocation.relayed,
        allocation.mapped,
        allocation.lifetime
    );
    assert_eq!(allocation.relayed.ip().to_string(), "127.0.0.1");
    assert!(RELAY_PORTS.contains(&allocation.relayed.port()));
    assert_eq!(allocation.mapped, Some(local), "XOR-MAPPED-ADDRESS");
    assert_eq!(allocation.lifetime, Duration::from_secs(600));

    client.channel_bind(0x4001, peer).await.expect("bind");
    for i in 0..count {
        let payload = format!("{transport} channel {i} {}", "x".repeat(i));
        client
            .send_channel_data(0x4001, payload.as_bytes())
            .await
            .unwrap();
        let (number, from, echoed) = recv(client).await;
        assert_eq!((number, from), (Some(0x4001), None));
        assert_eq!(echoed, payload.as_bytes());
    }
    client.create_permission(&[peer]).await.expect("permit");
    for i in 0..count {
        let payload = format!("{transport} send {i} {}", "y".repeat(i));
        client
            .send_indication(peer, payload.as_bytes())
            .await
            .unwrap();
        let (number, from, echoed) = recv(client).await;
        // The peer has a channel, so its answers come as ChannelData; both forms carry the
        // same bytes.
        assert!(
            number == Some(0x4001) || from == Some(peer),
            "{number:?} {from:?}"
        );
        assert_eq!(echoed, payload.as_bytes());
    }
    assert_eq!(
        client.refresh(Duration::ZERO).await.unwrap(),
        Duration::ZERO
    );
}

#[tokio::test]
async fn allocates_and_relays_over_udp_tcp_and_tls_with_long_term_credentials() {
    let server = Server::with(&TestConfig::default());
    let (peer, echo) = udp_echo_peer();
    for transport in TRANSPORTS {
        let mut client = connect(&server, transport, alice()).await;
        allocate_and_relay(&mut client, peer, 20).await;
    }
    assert_eq!(echoed_at_least(&echo, 3 * 40).await, 3 * 40);
    let stats = server.stats();
    assert_eq!(stats.get("allocations_created"), 3);
    assert_eq!(stats.get("allocations_deleted"), 3);
    assert_eq!(stats.get("to_peer_packets"), 3 * 40);
    assert_eq!(stats.get("to_client_packets"), 3 * 40);
}

#[tokio::test]
async fn allocates_and_relays_over_udp_tcp_and_tls_with_rest_credentials() {
    let server = Server::with(&TestConfig::rest());
    let (peer, echo) = udp_echo_peer();
    for transport in TRANSPORTS {
        let credentials = Credentials::rest("s3cret", "carol", Duration::from_secs(3600));
        let mut client = connect(&server, transport, credentials).await;
        let (expiry, user) = client.username().split_once(':').expect("expiry:user");
        assert_eq!(user, "carol");
        assert!(expiry.parse::<u64>().is_ok(), "{expiry}");
        allocate_and_relay(&mut client, peer, 5).await;
    }
    assert_eq!(echoed_at_least(&echo, 3 * 10).await, 3 * 10);
}

#[tokio::test]
async fn tls_verifies_the_server_against_given_roots() {
    let server = Server::with(&TestConfig::default());
    let cert = server.config_path().with_file_name("cert.pem");
    let mut config = config(&server, Transport::Tls, alice());
    config.tls = Some(ClientTls::with_ca_file(&cert).expect("load the server's certificate"));
    let mut client = Client::connect(config.clone()).await.expect("verified");
    client
        .allocate(None)
        .await
        .expect("allocate over verified TLS");

    // Another certificate as the only root: the handshake fails, as an I/O error.
    let other = tempfile::tempdir().unwrap();
    let (other_cert, _) = common::tls_cert(other.path());
    config.tls = Some(ClientTls::with_ca_file(&other_cert).unwrap());
    match Client::connect(config.clone()).await {
        Err(ClientError::Io(e)) => eprintln!("another root: {e}"),
        Err(e) => panic!("expected an I/O error from the handshake, got {e}"),
        Ok(_) => panic!("a certificate from another issuer was accepted"),
    }
    // No TLS settings at all: a configuration error before connecting.
    config.tls = None;
    assert!(matches!(
        Client::connect(config).await,
        Err(ClientError::Config(_))
    ));
    // A CA file without certificates.
    let empty = other.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    assert!(matches!(
        ClientTls::with_ca_file(&empty),
        Err(ClientError::Config(_))
    ));
}

#[tokio::test]
async fn error_answers_surface_as_typed_errors() {
    let server = Server::with(&TestConfig {
        users: vec![("alice", "wonderland"), ("bob", "builder")],
        extra: "[limits]\nuser-allocations = 1\n".into(),
        ..TestConfig::default()
    });
    for transport in [Transport::Udp, Transport::Tcp] {
        // 401: wrong password, and an unknown user.
        for credentials in [
            Credentials::long_term("alice", "looking-glass"),
            Credentials::long_term("mallory", "x"),
        ] {
            let mut client = connect(&server, transport, credentials).await;
            let error = client.allocate(None).await.expect_err("wrong credentials");
            eprintln!("{transport}: {error}");
            assert_eq!(error.code(), Some(401), "{error}");
            assert!(matches!(
                error,
                ClientError::Response {
                    method: Method::ALLOCATE,
                    ..
                }
            ));
        }

        // 486: bob may hold one allocation.
        let mut first = connect(&server, transport, Credentials::long_term("bob", "builder")).await;
        first.allocate(None).await.expect("bob's first allocation");
        let mut second =
            connect(&server, transport, Credentials::long_term("bob", "builder")).await;
        let error = second.allocate(None).await.expect_err("over the quota");
        eprintln!("{transport}: {error}");
        assert_eq!(error.code(), Some(486), "{error}");

        // 437: a second Allocate on the same 5-tuple, and a Refresh with no allocation.
        let error = first.allocate(None).await.expect_err("allocated already");
        assert_eq!(error.code(), Some(437), "{error}");
        let error = second
            .refresh(Duration::from_secs(60))
            .await
            .expect_err("nothing to refresh");
        assert_eq!(error.code(), Some(437), "{error}");

        // 403: peers the policy refuses (only 127.0.0.1 is allowed).
        for peer in ["10.0.0.1:9", "192.168.1.1:9", "127.0.0.2:9"] {
            let peer: SocketAddr = peer.parse().unwrap();
            let error = first.create_permission(&[peer]).await.expect_err("policy");
            assert_eq!(error.code(), Some(403), "{peer}: {error}");
            let error = first.channel_bind(0x4002, peer).await.expect_err("policy");
            assert_eq!(error.code(), Some(403), "{peer}: {error}");
        }
        // The client itself refuses a channel number out of range, before sending.
        assert!(matches!(
            first
                .channel_bind(0x3FFF, "127.0.0.1:9".parse().unwrap())
                .await,
            Err(ClientError::BadChannelNumber(0x3FFF))
        ));
        assert_eq!(first.refresh(Duration::ZERO).await.unwrap(), Duration::ZERO);
    }
    let stats = server.stats();
    assert_eq!(stats.get("quota_rejected"), 2);
}

#[tokio::test]
async fn refresh_zero_deletes_the_allocation() {
    let server = Server::with(&TestConfig::default());
    let (peer, echo) = udp_echo_peer();
    for transport in TRANSPORTS {
        let mut client = connect(&server, transport, alice()).await;
        client
            .allocate(Some(Duration::from_secs(900)))
            .await
            .unwrap();
        assert_eq!(
            client.refresh(Duration::from_secs(1200)).await.unwrap(),
            Duration::from_secs(1200)
        );
        client.channel_bind(0x4010, peer).await.unwrap();
        let echoed_before = echo.echoed();
        client.send_channel_data(0x4010, b"before").await.unwrap();
        assert_eq!(recv(&mut client).await.2, b"before");

        assert_eq!(
            client.refresh(Duration::ZERO).await.unwrap(),
            Duration::ZERO
        );
        let echoed = echoed_at_least(&echo, echoed_before + 1).await;
        assert_eq!(echoed, echoed_before + 1);
        client.send_channel_data(0x4010, b"after").await.unwrap();
        let late = tokio::time::timeout(Duration::from_millis(500), client.recv()).await;
        assert!(late.is_err(), "data relayed after Refresh 0");
        assert_eq!(echo.echoed(), echoed, "the peer got data after Refresh 0");
        let error = client
            .refresh(Duration::from_secs(60))
            .await
            .expect_err("deleted");
        assert_eq!(error.code(), Some(437), "{error}");
    }
    let stats = server.stats();
    assert_eq!(stats.get("allocations_deleted"), 3);
    assert_eq!(stats.get("allocations"), 0);
}

#[tokio::test]
async fn a_stale_nonce_is_retried_with_the_fresh_one() {
    let dir = tempfile::tempdir().unwrap();
    let toml = common::base_config(&TestConfig::default(), dir.path())
        .replace("nonce-lifetime = \"10m\"", "nonce-lifetime = \"1s\"");
    let server = Server::start_in(&toml, dir);
    for transport in TRANSPORTS {
        let mut client = connect(&server, transport, alice()).await;
        client.allocate(None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let before = server.stats().get("stale_nonces");
        let granted = client.refresh(Duration::from_secs(1200)).await;
        let after = server.stats().get("stale_nonces");
        eprintln!(
            "{transport}: refresh after 2.5 s: {granted:?}; stale_nonces {before} -> {after}"
        );
        assert_eq!(granted.unwrap(), Duration::from_secs(1200));
        assert!(after > before, "the server did not answer 438");
        client.refresh(Duration::ZERO).await.unwrap();
    }
}

#[tokio::test]
async fn data_arriving_during_a_request_is_kept() {
    let server = Server::with(&TestConfig::default());
    let (peer, echo) = udp_echo_peer();
    for transport in TRANSPORTS {
        let mut client = connect(&server, transport, alice()).await;
        client.allocate(None).await.unwrap();
        client.channel_bind(0x4020, peer).await.unwrap();
        const COUNT: u32 = 50;
        let echoed = echo.echoed();
        for i in 0..COUNT {
            client
                .send_channel_data(0x4020, &i.to_be_bytes())
                .await
                .unwrap();
        }
        // Once the peer has echoed them all and the server has had time to relay them back,
        // the echoes wait in the client's socket ahead of the answers to these requests.
        echoed_at_least(&echo, echoed + COUNT as usize).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..3 {
            client.create_permission(&[peer]).await.unwrap();
        }
        for i in 0..COUNT {
            assert_eq!(recv(&mut client).await.2, i.to_be_bytes(), "{transport}");
        }
        let stats = client.stats();
        eprintln!("{transport}: {stats:?}");
        assert!(stats.pending_kept > 0, "no echo arrived during a request");
        assert_eq!(stats.pending_dropped, 0);
    }
}

/// One payload to the echo peer and back, on the channel or in a Send indication.
async fn round_trip(client: &mut Client, peer: SocketAddr, channel: bool) {
    let payload = [0x5Au8; 160];
    if channel {
        client.send_channel_data(0x4030, &payload).await.unwrap();
    } else {
        client.send_indication(peer, &payload).await.unwrap();
    }
    let received = tokio::time::timeout(ECHO_TIMEOUT, client.recv())
        .await
        .expect("echo")
        .expect("receive");
    assert!(
        received.payload() == payload,
        "a different payload came back"
    );
}

/// Heap allocations this thread makes in 500 round trips (after 20 to warm up).
async fn allocations_per_500_round_trips(
    client: &mut Client,
    peer: SocketAddr,
    channel: bool,
) -> u64 {
    for _ in 0..20 {
        round_trip(client, peer, channel).await;
    }
    let before = allocations_on_this_thread();
    for _ in 0..500 {
        round_trip(client, peer, channel).await;
    }
    allocations_on_this_thread() - before
}

#[tokio::test]
async fn sending_and_receiving_data_allocates_nothing() {
    let server = Server::with(&TestConfig::default());
    let (peer, _echo) = udp_echo_peer();
    for transport in TRANSPORTS {
        let mut client = connect(&server, transport, alice()).await;
        client.allocate(None).await.unwrap();
        client.channel_bind(0x4030, peer).await.unwrap();
        client.create_permission(&[peer]).await.unwrap();
        // The peer's answers come as ChannelData once it has a channel; the Send indications
        // still go out through the client's Send path.
        let channel = allocations_per_500_round_trips(&mut client, peer, true).await;
        let send = allocations_per_500_round_trips(&mut client, peer, false).await;
        eprintln!(
            "{transport}: heap allocations in 500 round trips: ChannelData {channel}, Send {send}"
        );
        if transport == Transport::Tls {
            // rustls keeps each record it encrypts or decrypts in a fresh buffer; the client
            // adds none of its own, which UDP and TCP show.
            assert!(channel <= 500 * 4 && send <= 500 * 4, "{channel} {send}");
        } else {
            assert_eq!((channel, send), (0, 0));
        }
    }
}

/// A Data indication from a peer that has no channel arrives as `Received::Data`.
#[tokio::test]
async fn data_indications_name_the_peer() {
    let server = Server::with(&TestConfig::default());
    let (peer, _echo) = udp_echo_peer();
    for transport in TRANSPORTS {
        let mut client = connect(&server, transport, alice()).await;
        client.allocate(None).await.unwrap();
        client.create_permission(&[peer]).await.unwrap();
        client.send_indication(peer, b"hello").await.unwrap();
        assert_eq!(
            recv(&mut client).await,
            (None, Some(peer), b"hello".to_vec())
        );
        // Payloads too large for one message are refused before sending.
        assert!(matches!(
            client.send_indication(peer, &vec![0; 70_000]).await,
            Err(ClientError::PayloadTooLarge { .. })
        ));
        assert!(matches!(
            client.send_channel_data(0x4000, &vec![0; 70_000]).await,
            Err(ClientError::PayloadTooLarge { .. })
        ));
    }
}

/// Fast timing for the retransmission tests: 100 ms RTO, 4 transmissions, then 4 × RTO.
fn fast_timing() -> Timing {
    Timing {
        rto: Duration::from_millis(100),
        transmissions: 4,
        last_wait_factor: 4,
        stream_timeout: Duration::from_millis(800),
        connect_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn udp_requests_are_retransmitted_on_the_rfc_schedule_then_time_out() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    silent
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let addr = silent.local_addr().unwrap();
    let arrivals = thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            if let Ok(n) = silent.recv(&mut buf) {
                seen.push((Instant::now(), buf[..n].to_vec()));
            }
        }
        seen
    });
    let mut config = ClientConfig::new(addr, Transport::Udp, alice());
    config.timing = fast_timing();
    let mut client = Client::connect(config).await.unwrap();
    let started = Instant::now();
    let error = client.binding().await.expect_err("nobody answers");
    let elapsed = started.elapsed();
    let seen = arrivals.join().unwrap();
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].0 - w[0].0).collect();
    eprintln!("{error}; transmissions at gaps {gaps:?}; failed after {elapsed:?}");
    assert!(matches!(
        error,
        ClientError::Timeout {
            method: Method::BINDING,
            ..
        }
    ));
    assert_eq!(seen.len(), 4, "Rc transmissions");
    assert!(
        seen.iter().all(|(_, bytes)| *bytes == seen[0].1),
        "same request each time"
    );
    // 100, 200, 400 ms apart (doubling), then 4 × 100 ms more: 1.1 s in all. The gaps are
    // seen by a thread that may wake late for one datagram and not the next, so the lower
    // bounds allow a quarter less (still telling doubling from a fixed interval); the upper
    // bounds are generous, as the machine is shared.
    for (gap, nominal) in gaps.iter().zip([100, 200, 400]) {
        let nominal = Duration::from_millis(nominal);
        assert!(*gap >= nominal * 3 / 4, "{gap:?} < {nominal:?}");
        assert!(*gap < nominal + Duration::from_secs(1), "{gap:?}");
    }
    assert!(elapsed >= Duration::from_millis(1100), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(client.stats().retransmissions, 3);
}

/// A UDP proxy between one client and the server that drops the first `drop_first` datagrams
/// from the client.
fn lossy_proxy(server: SocketAddr, drop_first: usize) -> (SocketAddr, Arc<AtomicBool>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    thread::spawn(move || {
        let mut client = None;
        let mut dropped = 0;
        let mut buf = [0u8; 65536];
        let until = Instant::now() + Duration::from_secs(60);
        while !stopped.load(Ordering::SeqCst) && Instant::now() < until {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            if from == server {
                if let Some(client) = client {
                    let _ = socket.send_to(&buf[..n], client);
                }
            } else {
                client = Some(from);
                if dropped < drop_first {
                    dropped += 1;
                } else {
                    let _ = socket.send_to(&buf[..n], server);
                }
            }
        }
    });
    (addr, stop)
}

#[tokio::test]
async fn lost_udp_requests_are_retransmitted_to_the_real_server() {
    let server = Server::with(&TestConfig::default());
    let (proxy, stop) = lossy_proxy(server.addr("udp"), 2);
    let mut config = ClientConfig::new(proxy, Transport::Udp, alice());
    config.timing = fast_timing();
    let mut client = Client::connect(config).await.unwrap();
    let allocation = client
        .allocate(None)
        .await
        .expect("allocate through the loss");
    let stats = client.stats();
    eprintln!("allocated {allocation:?} with {stats:?}");
    assert_eq!(stats.retransmissions, 2);
    assert_eq!(
        client.refresh(Duration::ZERO).await.unwrap(),
        Duration::ZERO
    );
    stop.store(true, Ordering::SeqCst);
}

/// A "server" on a plain UDP socket that answers each request with what `answer` makes of it.
fn hostile_udp(answer: impl Fn(&[u8], usize) -> Vec<Vec<u8>> + Send + 'static) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let until = Instant::now() + Duration::from_secs(20);
        let mut requests = 0;
        while Instant::now() < until {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                requests += 1;
                for datagram in answer(&buf[..n], requests) {
                    let _ = socket.send_to(&datagram, from);
                }
            }
        }
    });
    addr
}

/// `answer` numbered by transaction rather than by datagram: a retransmission (a slow machine
/// makes them) gets the answer its first copy got.
fn by_transaction(
    answer: impl Fn(&[u8], usize) -> Vec<Vec<u8>> + Send + 'static,
) -> impl Fn(&[u8], usize) -> Vec<Vec<u8>> + Send + 'static {
    let seen = std::sync::Mutex::new(Vec::<[u8; 12]>::new());
    move |request, _| {
        let tid: [u8; 12] = request[8..20].try_into().expect("a STUN header");
        let n = {
            let mut seen = seen.lock().unwrap();
            match seen.iter().position(|t| *t == tid) {
                Some(i) => i + 1,
                None => {
                    seen.push(tid);
                    seen.len()
                }
            }
        };
        answer(request, n)
    }
}

/// A STUN answer to `request` of `class`, with `attrs`.
fn answer_to(request: &[u8], class: Class, attrs: impl Fn(&mut MessageWriter<'_>)) -> Vec<u8> {
    let msg = Message::parse(request).expect("the client sends STUN");
    answer_with_tid(msg.method(), msg.transaction_id(), class, attrs)
}

fn answer_with_tid(
    method: Method,
    tid: TransactionId,
    class: Class,
    attrs: impl Fn(&mut MessageWriter<'_>),
) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let mut w = MessageWriter::new(&mut buf, method, class, tid).unwrap();
    attrs(&mut w);
    let n = w.finish();
    buf.truncate(n);
    buf
}

async fn udp_client(server: SocketAddr) -> Client {
    let mut config = ClientConfig::new(server, Transport::Udp, alice());
    config.timing = fast_timing();
    Client::connect(config).await.unwrap()
}

#[tokio::test]
async fn garbage_from_a_udp_server_is_ignored_until_the_timeout() {
    let server = hostile_udp(|request, _| {
        let msg = Message::parse(request).unwrap();
        let mut wrong_tid = msg.transaction_id();
        wrong_tid.0[0] ^= 1;
        let mut datagrams = vec![
            vec![],
            vec![0xFF; 3],
            vec![0x01, 0x01, 0x00, 0x08],
            request[..19].to_vec(),
            vec![0x40, 0x00, 0xFF, 0xFF, 1, 2],
            answer_with_tid(msg.method(), wrong_tid, Class::Success, |_| {}),
            answer_to(request, Class::Indication, |_| {}),
        ];
        if !msg.has_integrity() {
            // The first Allocate: a 401 that names a realm and a nonce.
            datagrams.push(answer_to(request, Class::Error, |w| {
                w.error_code(401, "Unauthorized").unwrap();
                w.attribute(attr::REALM, b"hostile").unwrap();
                w.attribute(attr::NONCE, b"n0nce").unwrap();
            }));
        } else {
            // Our transaction, but forged: a success without MESSAGE-INTEGRITY, a success and
            // an error with a MESSAGE-INTEGRITY under another key.
            datagrams.push(answer_to(request, Class::Success, |w| {
                w.u32(attr::LIFETIME, 600).unwrap();
            }));
            datagrams.push(answer_to(request, Class::Success, |w| {
                w.u32(attr::LIFETIME, 600).unwrap();
                w.message_integrity(b"not the key").unwrap();
            }));
            datagrams.push(answer_to(request, Class::Error, |w| {
                w.error_code(437, "Allocation Mismatch").unwrap();
                w.message_integrity(b"not the key").unwrap();
            }));
        }
        datagrams
    });
    let mut client = udp_client(server).await;
    let started = Instant::now();
    let error = client.allocate(None).await.expect_err("no valid answer");
    let stats = client.stats();
    eprintln!("{error} after {:?}; {stats:?}", started.elapsed());
    assert!(error.is_timeout(), "{error}");
    // The 401's 7 others, then 10 ignored per transmission of the authenticated request.
    assert_eq!(stats.retransmissions, 3, "{stats:?}");
    assert!(stats.ignored >= 7 + 4 * 10, "{stats:?}");
}

#[tokio::test]
async fn malformed_answers_give_bad_response_errors() {
    // A Binding success without XOR-MAPPED-ADDRESS, then with a malformed one; an error
    // without ERROR-CODE; an Allocate success without XOR-RELAYED-ADDRESS.
    let server = hostile_udp(by_transaction(|request, n| {
        vec![answer_to(
            request,
            if n >= 3 { Class::Error } else { Class::Success },
            |w| match n {
                2 => w
                    .attribute(attr::XOR_MAPPED_ADDRESS, &[0, 9, 0, 0])
                    .unwrap(),
                4 => w.error_code(401, "Unauthorized").unwrap(), // no REALM, no NONCE
                _ => {}
            },
        )]
    }));
    let mut client = udp_client(server).await;
    for what in ["no XOR-MAPPED-ADDRESS", "malformed address attribute"] {
        match client.binding().await {
            Err(ClientError::BadResponse { what: w, .. }) => assert_eq!(w, what),
            other => panic!("expected BadResponse {what:?}, got {other:?}"),
        }
    }
    match client.binding().await {
        Err(ClientError::BadResponse { what, .. }) => {
            assert_eq!(what, "error response without a valid ERROR-CODE")
        }
        other => panic!("{other:?}"),
    }
    // A 401 without a nonce cannot be retried: it is returned as it is.
    let error = client.allocate(None).await.expect_err("401");
    assert_eq!(error.code(), Some(401), "{error}");
}

#[tokio::test]
async fn endless_fresh_nonces_are_retried_a_bounded_number_of_times() {
    let server = hostile_udp(|request, n| {
        let code = if n == 1 { 401 } else { 438 };
        let nonce = format!("nonce-{n}");
        vec![answer_to(request, Class::Error, |w| {
            w.error_code(code, "Try again").unwrap();
            w.attribute(attr::REALM, b"hostile").unwrap();
            w.attribute(attr::NONCE, nonce.as_bytes()).unwrap();
        })]
    });
    let mut client = udp_client(server).await;
    let error = client.allocate(None).await.expect_err("never satisfied");
    eprintln!("{error}");
    assert_eq!(error.code(), Some(438), "{error}");
    assert_eq!(client.stats().retransmissions, 0);
}

/// A "server" on a plain TCP listener that writes `bytes` to the first connection, then
/// keeps it open (`close` false) or closes it.
fn hostile_tcp(bytes: Vec<u8>, close: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let _ = stream.write_all(&bytes);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut sink = [0u8; 4096];
        if close {
            // Take the request first, so that closing sends a FIN rather than a reset.
            let _ = stream.read(&mut sink);
        } else {
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        }
    });
    addr
}

#[tokio::test]
async fn hostile_streams_give_framing_closed_and_timeout_errors() {
    let cases: [(&str, Vec<u8>, bool); 4] = [
        ("garbage", vec![0xFF; 64], false),
        ("not STUN", b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), false),
        ("closed", vec![], true),
        // A STUN header that promises 65,532 bytes, then nothing.
        (
            "stalled",
            vec![0x01, 0x01, 0xFF, 0xFC, 0x21, 0x12, 0xA4, 0x42],
            false,
        ),
    ];
    for (name, bytes, close) in cases {
        let server = hostile_tcp(bytes, close);
        let mut config = ClientConfig::new(server, Transport::Tcp, alice());
        config.timing = fast_timing();
        let mut client = Client::connect(config).await.unwrap();
        let started = Instant::now();
        let error = client.allocate(None).await.expect_err(name);
        eprintln!("{name}: {error} after {:?}", started.elapsed());
        match name {
            "garbage" => assert!(matches!(error, ClientError::Framing(_)), "{error}"),
            "closed" => assert!(matches!(error, ClientError::Closed), "{error}"),
            "stalled" => assert!(error.is_timeout(), "{error}"),
            // "HTTP" reads as ChannelData on channel 0x4854 with 0x5450 (21,584) bytes to
            // come: they are waited for, then the request times out.
            _ => assert!(error.is_timeout(), "{error}"),
        }
    }
    // Nothing listening: a connection error, typed as I/O.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = Client::connect(ClientConfig::new(closed, Transport::Tcp, alice()))
        .await
        .err()
        .expect("connection refused");
    assert!(matches!(error, ClientError::Io(_)), "{error}");
}

#[tokio::test]
async fn oversized_challenges_are_not_retried() {
    // A 401 whose NONCE is longer than RFC 8489 allows (763 bytes), then one whose REALM is:
    // neither is used, the 401 is returned as it is.
    // A retry with either would be answered 437.
    let server = hostile_udp(|request, n| {
        let (realm, nonce) = if n == 1 {
            (b"hostile".to_vec(), vec![b'n'; 2000])
        } else {
            (vec![b'r'; 800], b"n0nce".to_vec())
        };
        let retried = Message::parse(request).unwrap().has_integrity();
        vec![answer_to(request, Class::Error, |w| {
            if retried {
                w.error_code(437, "Retried with an oversized challenge")
                    .unwrap();
                return;
            }
            w.error_code(401, "Unauthorized").unwrap();
            w.attribute(attr::REALM, &realm).unwrap();
            w.attribute(attr::NONCE, &nonce).unwrap();
        })]
    });
    let mut client = udp_client(server).await;
    for case in ["long nonce", "long realm"] {
        let error = client.allocate(None).await.expect_err(case);
        assert_eq!(error.code(), Some(401), "{case}: {error}");
    }
}

#[tokio::test]
async fn data_kept_during_a_request_is_bounded() {
    // A TCP "server" that answers a Binding only after 100 ChannelData frames of 65,535 bytes
    // (6.5 MB): the client keeps at most PENDING_BYTES of them and counts the rest as dropped.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let mut request = [0u8; 20];
        if stream.read_exact(&mut request).is_err() {
            return;
        }
        let length = u16::from_be_bytes([request[2], request[3]]);
        let mut rest = vec![0u8; usize::from(length)];
        let _ = stream.read_exact(&mut rest);
        let mut whole = request.to_vec();
        whole.extend_from_slice(&rest);
        let mut frame = vec![0u8; 4 + 0xFFFF + 1];
        frame[..4].copy_from_slice(&[0x40, 0x00, 0xFF, 0xFF]);
        for _ in 0..100 {
            if stream.write_all(&frame).is_err() {
                return;
            }
        }
        let answer = answer_to(&whole, Class::Success, |w| {
            w.xor_address(attr::XOR_MAPPED_ADDRESS, "127.0.0.1:1".parse().unwrap())
                .unwrap();
        });
        let _ = stream.write_all(&answer);
        thread::sleep(Duration::from_secs(2));
    });
    let mut config = ClientConfig::new(addr, Transport::Tcp, alice());
    config.timing = fast_timing();
    config.timing.stream_timeout = Duration::from_secs(10);
    let mut client = Client::connect(config).await.unwrap();
    let mapped = client.binding().await.expect("the answer after the frames");
    let stats = client.stats();
    eprintln!("{mapped}; {stats:?}");
    assert_eq!(mapped, "127.0.0.1:1".parse().unwrap());
    let kept = usize::try_from(stats.pending_kept).unwrap();
    assert_eq!(kept, turnpike::client::PENDING_BYTES / (4 + 0xFFFF));
    assert_eq!(stats.pending_kept + stats.pending_dropped, 100);
    for _ in 0..kept {
        let data = tokio::time::timeout(ECHO_TIMEOUT, client.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(data.payload().len(), 0xFFFF);
    }
}

/// A scripted server: a 401 challenge, then for request `n` (from 2 on) what `answer` says.
fn scripted_udp(answer: fn(usize) -> Option<u16>) -> SocketAddr {
    hostile_udp(move |request, n| {
        let code = if n == 1 { Some(401) } else { answer(n) };
        code.map(|code| {
            answer_to(request, Class::Error, |w| {
                w.error_code(code, "").unwrap();
                if code == 401 {
                    w.attribute(attr::REALM, b"scripted").unwrap();
                    w.attribute(attr::NONCE, b"n0nce").unwrap();
                }
            })
        })
        .into_iter()
        .collect()
    })
}

#[tokio::test]
async fn refresh_zero_counts_a_437_after_a_retransmission_as_done() {
    // The first authenticated transmission "deleted the allocation" and its answer was lost:
    // the retransmission meets 437, and the deletion is done.
    let server = scripted_udp(|n| (n >= 3).then_some(437));
    let mut client = udp_client(server).await;
    assert_eq!(
        client.refresh(Duration::ZERO).await.unwrap(),
        Duration::ZERO
    );
    assert_eq!(client.stats().retransmissions, 1);

    // A 437 to the first transmission is an error, as it is for any other lifetime.
    let server = scripted_udp(|_| Some(437));
    let mut client = udp_client(server).await;
    let error = client
        .refresh(Duration::ZERO)
        .await
        .expect_err("no allocation");
    assert_eq!(error.code(), Some(437), "{error}");
    let server = scripted_udp(|n| (n >= 3).then_some(437));
    let mut client = udp_client(server).await;
    let error = client
        .refresh(Duration::from_secs(60))
        .await
        .expect_err("no allocation");
    assert_eq!(error.code(), Some(437), "{error}");
}
