//! The relay hot path through the protocol core: a ChannelData frame and a Send indication
//! from a client routed to its peer, a peer datagram framed for the client (ChannelData and
//! Data indication), with 1,000 allocations in the table; and the I/O layer's batch of
//! datagrams (queue, group by socket, GSO, flush). A counting global allocator makes the
//! bench fail if any of these allocates per packet.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use turnpike::auth::StaticCredentials;
use turnpike::config::{Config, Transport, User, UserCredential};
use turnpike::net::batch::Datagrams;
use turnpike::stun::{Class, Message, MessageWriter, Method, TransactionId, attr, long_term_key};
use turnpike::turn::{
    AllocationId, AllocationLedger, ClientAction, CoreConfig, Event, FiveTuple, NodeLimits, Nonces,
    PEER_HEADROOM, PEER_TAILROOM, PeerAction, PeerPolicy, Quota, ReflectionBudget, Server,
    SourceLimiter,
};

/// Counts every allocation and reallocation made by the process.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `packet` 10,000 times and fails the bench if any run allocated.
fn assert_no_allocation(name: &str, mut packet: impl FnMut()) {
    // One run first: lazily sized scratch may be set up once.
    packet();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..10_000 {
        packet();
    }
    let allocated = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(
        allocated, 0,
        "{name}: {allocated} heap allocations in 10,000 packets; the hot path must allocate nothing"
    );
    eprintln!("{name}: 0 heap allocations in 10,000 packets");
}

const REALM: &str = "bench";
const PEER: &str = "203.0.113.5:6000";

fn core(now: Instant) -> Server {
    let mut config = Config::default();
    config.auth.users = vec![User {
        name: "u".into(),
        credential: UserCredential::Password("p".into()),
    }];
    let credentials = Arc::new(StaticCredentials::new(&config.auth, REALM));
    let core_config = CoreConfig {
        realm: REALM.into(),
        software: String::new(),
        default_lifetime: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(3600),
        public_v4: None,
        relay_v4: true,
        relay_v6: false,
        allocation_bandwidth: None,
        quota: Quota::default(),
        cluster_leases: false,
        permissions_per_allocation: 64,
        channels_per_allocation: 64,
        epoch: now,
        unix_at_epoch: 1_700_000_000,
        offload: false,
        tcp_relay: false,
    };
    // The benchmark's peers are documentation addresses; nothing is sent anywhere.
    let policy = PeerPolicy::new(vec!["203.0.113.0/24".parse().unwrap()], vec![]);
    let nonces = Nonces::new([1; 32], now, Duration::from_secs(600));
    let node = Arc::new(NodeLimits {
        ledger: AllocationLedger::new(),
        sources: SourceLimiter::new(ReflectionBudget::UNLIMITED),
    });
    Server::new(core_config, credentials, policy, nonces, node, [2; 32])
}

/// Runs a request through the core the way the I/O layer would, answering OpenRelay events.
fn request(
    server: &mut Server,
    now: Instant,
    tuple: FiveTuple,
    method: Method,
    nonce: &Option<Vec<u8>>,
    tid: u8,
    attrs: impl Fn(&mut MessageWriter<'_>),
) -> Vec<u8> {
    let mut buf = [0u8; 512];
    let mut w = MessageWriter::new(&mut buf, method, Class::Request, TransactionId([tid; 12]))
        .expect("buffer fits a header");
    attrs(&mut w);
    if let Some(nonce) = nonce {
        w.attribute(attr::USERNAME, b"u").unwrap();
        w.attribute(attr::REALM, REALM.as_bytes()).unwrap();
        w.attribute(attr::NONCE, nonce).unwrap();
        w.message_integrity(&long_term_key("u", REALM, "p"))
            .unwrap();
    }
    let n = w.finish();
    let mut out = vec![0u8; 2048];
    let mut reply = match server.handle_client(now, tuple, &buf[..n], &mut out) {
        ClientAction::Reply(n) => out[..n].to_vec(),
        _ => Vec::new(),
    };
    let mut port = 40_000 + tuple.client.port();
    while let Some(event) = server.poll_event() {
        if let Event::OpenRelay { allocation, .. } = event {
            port += 1;
            let relayed = SocketAddr::new("192.0.2.1".parse().unwrap(), port);
            let (_, n) = server
                .handle_relay_opened(now, allocation, Ok(relayed), &mut out)
                .expect("an Allocate answer");
            reply = out[..n].to_vec();
        }
    }
    reply
}

/// An allocation for a client with channel 0x4000 bound to PEER.
fn allocate_with_channel(
    server: &mut Server,
    now: Instant,
    port: u16,
) -> (FiveTuple, AllocationId) {
    let tuple = FiveTuple {
        transport: Transport::Udp,
        client: SocketAddr::new("198.51.100.1".parse().unwrap(), port),
        server: "192.0.2.1:3478".parse().unwrap(),
    };
    let challenge = request(server, now, tuple, Method::ALLOCATE, &None, 1, |w| {
        w.requested_transport(17).unwrap()
    });
    let nonce = Message::parse(&challenge)
        .unwrap()
        .get(attr::NONCE)
        .map(<[u8]>::to_vec);
    request(server, now, tuple, Method::ALLOCATE, &nonce, 2, |w| {
        w.requested_transport(17).unwrap()
    });
    request(server, now, tuple, Method::CHANNEL_BIND, &nonce, 3, |w| {
        w.channel_number(0x4000).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, PEER.parse().unwrap())
            .unwrap();
    });
    let id = server.allocation_of(&tuple).expect("allocated").id();
    (tuple, id)
}

fn relay(c: &mut Criterion) {
    let now = Instant::now();
    let mut server = core(now);
    let mut last = None;
    for port in 1..=1000 {
        last = Some(allocate_with_channel(&mut server, now, port));
    }
    let (tuple, id) = last.expect("1000 allocations");
    assert_eq!(server.allocation_count(), 1000);

    let payload = [0xabu8; 160];
    let mut frame = vec![0x40, 0x00, 0x00, 160];
    frame.extend_from_slice(&payload);
    let peer: SocketAddr = PEER.parse().unwrap();
    let mut indication = [0u8; 512];
    let indication_len = {
        let mut w = MessageWriter::new(
            &mut indication,
            Method::SEND,
            Class::Indication,
            TransactionId([9; 12]),
        )
        .unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
        w.attribute(attr::DATA, &payload).unwrap();
        w.finish()
    };
    let indication = &indication[..indication_len];
    let mut out = vec![0u8; 2048];
    let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
    let range = PEER_HEADROOM..PEER_HEADROOM + payload.len();
    let unbound: SocketAddr = "203.0.113.5:6001".parse().unwrap();

    assert_no_allocation("channel_data_route", || {
        let action = server.handle_client(now, tuple, &frame, &mut out);
        assert!(matches!(action, ClientAction::Relay { .. }));
    });
    assert_no_allocation("send_indication_route", || {
        let action = server.handle_client(now, tuple, indication, &mut out);
        assert!(matches!(action, ClientAction::Relay { .. }));
    });
    assert_no_allocation("peer_to_channel_data", || {
        buf[range.clone()].copy_from_slice(&payload);
        let action = server.handle_peer(now, id, peer, &mut buf, range.clone());
        assert!(matches!(action, PeerAction::Forward { .. }));
    });
    let mut big = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM + 64];
    assert_no_allocation("peer_to_data_indication", || {
        big[range.clone()].copy_from_slice(&payload);
        let action = server.handle_peer(now, id, unbound, &mut big, range.clone());
        assert!(matches!(action, PeerAction::Forward { .. }));
    });
    let destinations: Vec<SocketAddr> = (0..8)
        .map(|i| SocketAddr::new("198.51.100.1".parse().unwrap(), 5000 + i))
        .collect();
    let mut batch = Datagrams::new(64);
    let flush_batch = |batch: &mut Datagrams| {
        for i in 0..32 {
            let to = destinations[i % destinations.len()];
            assert!(batch.push(3 + (i % 2) as i32, to, None, &frame));
        }
        let flushed = batch.flush_with(|_, headers| Ok(headers.len()));
        assert_eq!(flushed.sent, 32);
    };
    assert_no_allocation("batch_32_queue_and_flush", || flush_batch(&mut batch));

    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("channel_data_route", |b| {
        b.iter(|| {
            let action = server.handle_client(now, tuple, black_box(&frame), &mut out);
            assert!(matches!(action, ClientAction::Relay { .. }));
            black_box(action)
        })
    });
    group.bench_function("send_indication_route", |b| {
        b.iter(|| {
            let action = server.handle_client(now, tuple, black_box(indication), &mut out);
            assert!(matches!(action, ClientAction::Relay { .. }));
            black_box(action)
        })
    });
    group.bench_function("peer_to_channel_data", |b| {
        b.iter(|| {
            let action = server.handle_peer(now, id, black_box(peer), &mut buf, range.clone());
            assert!(matches!(action, PeerAction::Forward { .. }));
            black_box(action)
        })
    });
    group.finish();
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(32));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("queue_and_flush_32_datagrams", |b| {
        b.iter(|| flush_batch(black_box(&mut batch)))
    });
    group.finish();
}

criterion_group!(benches, relay);
criterion_main!(benches);
