//! Fault injection against the real binary: ICMP port unreachable from a dead peer port and
//! from a vanished client, and a Redis that answers slowly (a delaying TCP proxy), not at all
//! (connects hang) or with errors. Relaying and Binding must not notice; Allocates of Redis
//! users complete from the snapshot with the quota falling back to node-local counting within
//! a bounded time; errors are logged without flooding; the node recovers without a restart.
//! Every measurement is printed (`--nocapture`).
//!
//! These test turnpike's `[redis]` section and read its `stats` line, so they do not run
//! against coturn (`TURNPIKE_TEST_BACKEND=coturn`).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::redis::RedisServer;
use common::stun_client::{REALM, StunClient};
use common::{BINDING_REQUEST, Server, TestConfig};
use turnpike::auth::key_hex;
use turnpike::stun::{Class, Message, MessageWriter, Method, TransactionId, attr, long_term_key};

const LIVE: u16 = 0x4000;
const DEAD: u16 = 0x4001;

// ---------------------------------------------------------------------------------------------
// Measuring

/// `InDestUnreachs` of /proc/net/snmp: ICMP destination-unreachable messages the kernel
/// received (machine-wide; on loopback every one the kernel sends is also received).
fn icmp_dest_unreachable_received() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").expect("read /proc/net/snmp");
    let mut icmp = snmp.lines().filter(|line| line.starts_with("Icmp:"));
    let (Some(names), Some(values)) = (icmp.next(), icmp.next()) else {
        panic!("no Icmp lines in /proc/net/snmp:\n{snmp}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "InDestUnreachs")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("no InDestUnreachs in /proc/net/snmp:\n{snmp}"))
}

/// CPU time the process has used (user + system).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no memory-safety preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// CPU the server uses over one idle second: a receive loop that spins on an error shows here.
fn idle_cpu(server: &Server) -> Duration {
    let before = cpu_time(server.pid());
    thread::sleep(Duration::from_secs(1));
    cpu_time(server.pid()) - before
}

/// The queued bytes (`rx_queue`, which counts the error queue too) and `drops` of the UDP
/// sockets bound to `addr`, summed over the workers' SO_REUSEPORT sockets (/proc/net/udp).
fn udp_socket_queue_and_drops(addr: SocketAddr) -> (u64, u64) {
    let table = std::fs::read_to_string("/proc/net/udp").expect("read /proc/net/udp");
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|columns| columns.get(1) == Some(&local.as_str()))
        .fold((0, 0), |(queued, drops), columns| {
            let rx = columns[4].split(':').nth(1).unwrap_or("0");
            (
                queued + u64::from_str_radix(rx, 16).unwrap_or(0),
                drops + columns.last().and_then(|d| d.parse().ok()).unwrap_or(0),
            )
        })
}

/// The `q`-th quantile (0..=1) of `samples`.
fn quantile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// A UDP port on 127.0.0.1 where nothing listens (bound a moment ago, then closed).
fn dead_udp_port() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
    socket.local_addr().expect("local address")
}

/// A Binding request from a fresh socket: how long the answer took (retransmitted every
/// 250 ms), or `None` after `wait`.
fn binding_time(server: SocketAddr, wait: Duration) -> Option<Duration> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
    socket
        .set_read_timeout(Some(Duration::from_millis(250)))
        .expect("set a read timeout");
    let started = Instant::now();
    let mut buf = [0u8; 1500];
    while started.elapsed() < wait {
        socket.send_to(&BINDING_REQUEST, server).expect("send");
        if let Ok((n, _)) = socket.recv_from(&mut buf)
            && n >= 20
            && buf[..2] == [0x01, 0x01]
            && buf[8..20] == BINDING_REQUEST[8..20]
        {
            return Some(started.elapsed());
        }
    }
    None
}

/// A client with an allocation, a permission for `peers` and channel [`LIVE`] bound to the
/// first of them.
fn relaying_client(
    server: &Server,
    user: (&str, &str),
    peers: &[SocketAddr],
) -> (StunClient, SocketAddr) {
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", user.0, user.1);
    let relayed = client
        .allocate()
        .unwrap_or_else(|code| panic!("{} allocates: {code}", user.0));
    assert_eq!(client.permit(peers), None, "CreatePermission");
    assert_eq!(client.bind(LIVE, peers[0]), None, "ChannelBind");
    (client, relayed)
}

/// Sends `payload` on [`LIVE`] and waits up to `wait` for its echo: the round trip time.
fn echo_time(client: &mut StunClient, payload: &[u8], wait: Duration) -> Option<Duration> {
    let sent = Instant::now();
    client.send_channel_data(LIVE, payload);
    let deadline = sent + wait;
    while let Some(data) = client.recv_data(deadline) {
        if data == payload {
            return Some(sent.elapsed());
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// ICMP

/// Datagrams relayed to the dead port, interleaved with as many echoed by the live peer.
const ICMP_ROUNDS: usize = 300;

#[test]
fn icmp_from_a_dead_peer_port_ends_neither_the_allocation_nor_the_worker() {
    // One worker: "the worker" that must keep serving is the one with the allocation.
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        workers: 1,
        ..TestConfig::default()
    });
    let (peer, echo) = common::udp_echo_peer();
    let dead = dead_udp_port();
    let (mut client, relayed) = relaying_client(&server, ("alice", "wonderland"), &[peer, dead]);
    assert_eq!(
        client.bind(DEAD, dead),
        None,
        "ChannelBind to the dead port"
    );

    let icmp_before = icmp_dest_unreachable_received();
    let started = Instant::now();
    let mut rtts = Vec::new();
    for round in 0..ICMP_ROUNDS {
        // The dead port by ChannelData and by Send indication, in turn.
        let dead_payload = format!("to nobody #{round}");
        if round % 2 == 0 {
            client.send_channel_data(DEAD, dead_payload.as_bytes());
        } else {
            client.send_indication(dead, dead_payload.as_bytes());
        }
        let payload = format!("echo #{round}");
        let rtt = echo_time(&mut client, payload.as_bytes(), Duration::from_secs(2))
            .unwrap_or_else(|| panic!("round {round}: the live peer's echo did not come back"));
        rtts.push(rtt);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{ICMP_ROUNDS} rounds take less than a minute"
        );
    }
    // Unreachables reach the relay socket shortly after the datagrams that caused them.
    thread::sleep(Duration::from_millis(100));
    let icmp = icmp_dest_unreachable_received() - icmp_before;
    eprintln!(
        "icmp (peer): {ICMP_ROUNDS} datagrams to dead {dead} from relay {relayed}, {icmp} ICMP \
         unreachables received on the machine meanwhile; live echoes {ICMP_ROUNDS}/{ICMP_ROUNDS}, \
         RTT p50 {:?} p99 {:?} max {:?}, in {:?}",
        quantile(&rtts, 0.5),
        quantile(&rtts, 0.99),
        quantile(&rtts, 1.0),
        started.elapsed()
    );
    assert!(
        icmp as usize >= ICMP_ROUNDS / 2,
        "the kernel answered only {icmp} of {ICMP_ROUNDS} datagrams to the dead port with ICMP: \
         the fault was not injected"
    );

    // The allocation lives on: it refreshes and still relays.
    assert_eq!(client.refresh(600), None, "Refresh after the ICMP storm");
    assert!(
        echo_time(&mut client, b"after the storm", Duration::from_secs(2)).is_some(),
        "the allocation relays after the storm"
    );
    // The receive loops neither stopped nor spin.
    let cpu = idle_cpu(&server);
    eprintln!("icmp (peer): {cpu:?} of CPU over an idle second after the storm");
    assert!(
        cpu < Duration::from_millis(500),
        "the server used {cpu:?} of CPU in an idle second: a receive loop spins"
    );
    // The worker serves another client.
    let (mut other, _) = relaying_client(&server, ("alice", "wonderland"), &[peer]);
    for i in 0..20 {
        let payload = format!("other #{i}");
        assert!(
            echo_time(&mut other, payload.as_bytes(), Duration::from_secs(2)).is_some(),
            "another client's datagram {i} was not echoed"
        );
    }
    let stats = server.stats();
    eprintln!("icmp (peer): stats {}", stats.0);
    assert_eq!(stats.get("allocations"), 2, "both allocations live");
    assert!(
        stats.get("to_peer_packets") >= (2 * ICMP_ROUNDS + 21) as u64,
        "every datagram was sent on, the dead port's too: {stats:?}"
    );
    assert!(echo.echoed() > ICMP_ROUNDS, "the live peer saw the stream");
    assert_eq!(stats.get("malformed"), 0);
    assert!(server.log_messages("panicked").is_empty(), "no panic");
}

/// Datagrams a peer sends towards a client that has gone away, and how long that may take.
const BOUNCES: usize = 1000;
const BOUNCE_MAX: Duration = Duration::from_secs(30);

#[test]
fn icmp_from_a_vanished_client_does_not_deafen_the_listener() {
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        workers: 1,
        ..TestConfig::default()
    });
    let listener = server.addr("udp");
    let (peer, _echo) = common::udp_echo_peer();
    // The client that vanishes: a channel to a pump peer, then its socket is closed.
    let pump = UdpSocket::bind("127.0.0.1:0").expect("bind the pump");
    let pump_addr = pump.local_addr().expect("local address");
    let (gone, gone_relay) = relaying_client(&server, ("alice", "wonderland"), &[pump_addr]);
    let gone_addr = gone.local_addr();
    drop(gone);
    // The one that stays, on the same listener (and the only worker).
    let (mut client, _) = relaying_client(&server, ("alice", "wonderland"), &[peer]);

    let icmp_before = icmp_dest_unreachable_received();
    let (queued_before, drops_before) = udp_socket_queue_and_drops(listener);
    let started = Instant::now();
    let pumping = thread::spawn(move || {
        // 400/s: under the kernel's global ICMP rate limit (1000/s), so each one bounces.
        for i in 0..BOUNCES {
            let _ = pump.send_to(format!("to a vanished client #{i}").as_bytes(), gone_relay);
            thread::sleep(Duration::from_micros(2500));
            if started.elapsed() > BOUNCE_MAX {
                return i + 1;
            }
        }
        BOUNCES
    });
    let mut rtts = Vec::new();
    let mut bindings = Vec::new();
    let mut round = 0;
    while !pumping.is_finished() {
        let payload = format!("meanwhile #{round}");
        let rtt = echo_time(&mut client, payload.as_bytes(), Duration::from_secs(2))
            .unwrap_or_else(|| panic!("round {round}: the other client's echo did not come back"));
        rtts.push(rtt);
        if round % 10 == 0 {
            let took = binding_time(listener, Duration::from_secs(2))
                .unwrap_or_else(|| panic!("round {round}: a Binding request went unanswered"));
            bindings.push(took);
        }
        round += 1;
        thread::sleep(Duration::from_millis(5));
        assert!(started.elapsed() < BOUNCE_MAX + Duration::from_secs(5));
    }
    let pumped = pumping.join().expect("the pump thread");
    thread::sleep(Duration::from_millis(100));
    let icmp = icmp_dest_unreachable_received() - icmp_before;
    let (queued, drops) = udp_socket_queue_and_drops(listener);
    eprintln!(
        "icmp (client): {pumped} datagrams relayed towards vanished client {gone_addr}, {icmp} \
         ICMP unreachables received on the machine meanwhile, in {:?}; the other client: \
         {round} echoes, RTT p50 {:?} p99 {:?} max {:?}; {} Bindings answered, slowest {:?}; \
         listener socket: {queued_before} -> {queued} bytes queued, {drops_before} -> {drops} \
         drops",
        started.elapsed(),
        quantile(&rtts, 0.5),
        quantile(&rtts, 0.99),
        quantile(&rtts, 1.0),
        bindings.len(),
        quantile(&bindings, 1.0)
    );
    assert!(
        icmp as usize >= pumped / 2,
        "only {icmp} ICMP unreachables for {pumped} datagrams: the fault was not injected"
    );
    assert!(round >= 10, "the other client was served throughout");
    assert_eq!(
        queued, 0,
        "nothing (no error queue) piles up on the listener"
    );
    assert_eq!(drops, drops_before, "the listener dropped nothing");
    let cpu = idle_cpu(&server);
    eprintln!("icmp (client): {cpu:?} of CPU over an idle second after the storm");
    assert!(
        cpu < Duration::from_millis(500),
        "the server used {cpu:?} of CPU in an idle second: a receive loop spins"
    );
    assert_eq!(client.refresh(600), None, "the other client refreshes");
    // How the server sees it: datagrams relayed to a client, nothing more (the kernel tells
    // an unconnected socket without IP_RECVERR nothing of the ICMP).
    let stats = server.stats();
    eprintln!("icmp (client): stats {}", stats.0);
    assert!(
        stats.get("to_client_packets") >= (pumped + round) as u64,
        "every datagram to the vanished client was sent: {stats:?}"
    );
    assert_eq!(stats.get("allocations"), 2, "both allocations still live");
    assert!(server.log_messages("panicked").is_empty(), "no panic");
}

// ---------------------------------------------------------------------------------------------
// Redis

/// The longest a proxy connection or the test's own threads may live.
const PROXY_LIFETIME: Duration = Duration::from_secs(180);

/// A TCP proxy on 127.0.0.1 in front of Redis: each chunk is held for the delay in force when
/// it arrived, in order; blackholed, it passes nothing on and new connections hang in the
/// handshake (the accept queue is full, so the kernel drops their SYNs).
struct DelayProxy {
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    state: Arc<ProxyState>,
    accept: Option<JoinHandle<()>>,
    /// Fills the accept queue while blackholed.
    filler: Option<TcpStream>,
}

#[derive(Default)]
struct ProxyState {
    delay_ms: AtomicU64,
    blackhole: AtomicBool,
    stop: AtomicBool,
    connections: AtomicUsize,
}

impl ProxyState {
    fn stopped(&self, started: Instant) -> bool {
        self.stop.load(Ordering::SeqCst) || started.elapsed() > PROXY_LIFETIME
    }
}

impl DelayProxy {
    fn start(upstream: u16) -> DelayProxy {
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").expect("bind the proxy"));
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(ProxyState::default());
        let accept = {
            let (listener, state) = (listener.clone(), state.clone());
            thread::spawn(move || {
                let started = Instant::now();
                while !state.stopped(started) {
                    if state.blackhole.load(Ordering::SeqCst) {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    match listener.accept() {
                        Ok((client, _)) => {
                            let upstream = TcpStream::connect(("127.0.0.1", upstream));
                            if let Ok(upstream) = upstream {
                                state.connections.fetch_add(1, Ordering::SeqCst);
                                pipe(&client, &upstream, &state);
                                pipe(&upstream, &client, &state);
                            }
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        DelayProxy {
            addr,
            listener,
            state,
            accept: Some(accept),
            filler: None,
        }
    }

    fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    fn set_blackhole(&mut self, on: bool) {
        let fd = self.listener.as_raw_fd();
        if on {
            self.state.blackhole.store(true, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(50)); // The accept thread sees it.
            // SAFETY: listen(2) on a listening socket we own only changes its backlog.
            assert_eq!(unsafe { libc::listen(fd, 0) }, 0, "shrink the backlog");
            self.filler = Some(TcpStream::connect(self.addr).expect("fill the accept queue"));
        } else {
            // SAFETY: as above.
            assert_eq!(unsafe { libc::listen(fd, 128) }, 0, "restore the backlog");
            self.filler = None;
            self.state.blackhole.store(false, Ordering::SeqCst);
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Copies `from` to `to`, each chunk held as the proxy's state says, until either side closes.
fn pipe(from: &TcpStream, to: &TcpStream, state: &Arc<ProxyState>) {
    let (mut from, mut to) = (
        from.try_clone().expect("clone"),
        to.try_clone().expect("clone"),
    );
    from.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set a timeout");
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_state = state.clone();
    thread::spawn(move || {
        let started = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        while !reader_state.stopped(started) {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let delay = reader_state.delay_ms.load(Ordering::SeqCst);
                    let due = Instant::now() + Duration::from_millis(delay);
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
    });
    let state = state.clone();
    thread::spawn(move || {
        let started = Instant::now();
        'chunks: loop {
            let (due, chunk) = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(chunk) => chunk,
                Err(mpsc::RecvTimeoutError::Timeout) if !state.stopped(started) => continue,
                Err(_) => break,
            };
            while Instant::now() < due || state.blackhole.load(Ordering::SeqCst) {
                if state.stopped(started) {
                    break 'chunks;
                }
                thread::sleep(Duration::from_millis(5));
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// The Redis user of these tests, and the static one.
const DAVE: (&str, &str) = ("dave", "dave-pw");
const ALICE: (&str, &str) = ("alice", "wonderland");
/// `[limits] user-allocations`: the node-local quota the leases fall back to.
const USER_ALLOCATIONS: usize = 3;
/// How long one Redis command may take before turnpike gives up on it (src/auth/redis.rs and
/// src/net/cluster.rs: `COMMAND_TIMEOUT`).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an Allocate may take while Redis fails: a command timeout, and generous slack.
const FALLBACK_BOUND: Duration = Duration::from_secs(COMMAND_TIMEOUT.as_secs() + 3);
/// How long an Allocate may take once the node knows Redis is failing (no Redis involved).
const KNOWN_DOWN_BOUND: Duration = Duration::from_secs(1);

/// A node on UDP (and `more` transports) whose `[redis]` is `url`, with the static user alice,
/// a quota of [`USER_ALLOCATIONS`] per user and a `stale-for` long enough for any of these
/// tests.
fn redis_node(url: &str, more: &[&'static str]) -> Server {
    Server::with(&TestConfig {
        transports: [&["udp"], more].concat(),
        users: vec![ALICE],
        extra: format!(
            "[limits]\nunauthenticated-rate = 0\nuser-allocations = {USER_ALLOCATIONS}\n\n\
             [redis]\nurl = {url:?}\nstale-for = \"120s\"\nlease-time = \"3s\"\nnode-id = \"faulty\"\n"
        ),
        ..TestConfig::default()
    })
}

/// Stores [`DAVE`] in Redis (schema turnpike) before a node starts.
fn add_dave(redis: &RedisServer) {
    let key = key_hex(&long_term_key(DAVE.0, REALM, DAVE.1));
    redis.cli(&["HSET", &format!("turnpike:users:{REALM}"), DAVE.0, &key]);
}

/// Unix seconds now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The key of `user`'s leases (src/net/cluster.rs: the user id in hex).
fn leases_key(user: &str) -> String {
    let hex: String = user.bytes().map(|b| format!("{b:02x}")).collect();
    format!("turnpike:leases:{hex}")
}

/// The leases of `user` in Redis that have not expired.
fn live_leases(redis: &RedisServer, user: &str) -> u64 {
    let key = leases_key(user);
    let count = redis.cli(&["ZCOUNT", &key, &format!("({}", unix_now()), "+inf"]);
    count
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("ZCOUNT {key}: {count:?}"))
}

/// Adds a lease for `user` held by some other node, live for a minute.
fn foreign_lease(redis: &RedisServer, user: &str, member: &str) {
    let key = leases_key(user);
    redis.cli(&["ZADD", &key, &(unix_now() + 60).to_string(), member]);
}

/// Allocates as `user` from a fresh socket: the client (holding the allocation when it
/// succeeded), the outcome and how long it took.
fn timed_allocate(
    server: SocketAddr,
    user: (&str, &str),
) -> (StunClient, Result<SocketAddr, u16>, Duration) {
    let mut client = StunClient::udp(server, "127.0.0.1:0", user.0, user.1);
    let started = Instant::now();
    let result = client.allocate();
    (client, result, started.elapsed())
}

/// `count` Allocates as `user` at once, each from its own socket: the clients and each one's
/// outcome and time. An Allocate the test client gives up on (no answer within 10 s) fails
/// the test with that message.
fn allocate_burst(
    server: SocketAddr,
    user: (&'static str, &'static str),
    count: usize,
) -> Vec<(StunClient, Result<SocketAddr, u16>, Duration)> {
    let threads: Vec<_> = (0..count)
        .map(|_| thread::spawn(move || timed_allocate(server, user)))
        .collect();
    threads
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.join().unwrap_or_else(|_| {
                panic!("Allocate {i} of a burst of {count} got no answer within 10 s")
            })
        })
        .collect()
}

/// Waits until the node has loaded the Redis store: dave allocates (and deletes again).
fn wait_for_dave(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (mut client, result, _) = timed_allocate(server.addr("udp"), DAVE);
        if result.is_ok() {
            assert_eq!(client.refresh(0), None, "deleting dave's probe");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not load dave from Redis within 15 s: {result:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `check` every 100 ms for up to `limit`: how long it took to hold.
fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if check() {
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// What a [`Stream`] saw in one phase of a test.
#[derive(Debug, Default, Clone)]
struct PhaseReport {
    sent: usize,
    lost: Vec<u64>,
    rtts: Vec<Duration>,
    refreshes: Vec<Duration>,
    refresh_failures: usize,
}

impl PhaseReport {
    fn print(&self, what: &str) {
        eprintln!(
            "{what}: stream {} sent, {} lost, RTT p50 {:?} p99 {:?} max {:?}; {} Refreshes, \
             slowest {:?}, {} failed",
            self.sent,
            self.lost.len(),
            quantile(&self.rtts, 0.5),
            quantile(&self.rtts, 0.99),
            quantile(&self.rtts, 1.0),
            self.refreshes.len(),
            quantile(&self.refreshes, 1.0),
            self.refresh_failures
        );
    }

    /// No datagram lost, no Refresh failed, and round trips as on an idle loopback (generous
    /// bounds for a loaded machine).
    fn assert_unaffected(&self, what: &str) {
        self.print(what);
        assert!(self.sent > 0, "{what}: the stream ran");
        assert!(self.lost.is_empty(), "{what}: lost {:?}", self.lost);
        assert_eq!(self.refresh_failures, 0, "{what}: a Refresh failed");
        // Relaying that waited on Redis would take seconds; a loaded machine, milliseconds.
        assert!(
            quantile(&self.rtts, 0.99) < Duration::from_millis(500),
            "{what}: relaying slowed down"
        );
        assert!(
            quantile(&self.refreshes, 1.0) < Duration::from_secs(1),
            "{what}: a Refresh was slow"
        );
    }
}

/// A sequence-numbered stream through one allocation to an echo peer, on its own thread:
/// a datagram every 20 ms, each waited for (up to 2 s, or it counts as lost) before the next,
/// and a Refresh every second.
/// Reports per phase (the test moves the phase on).
struct Stream {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    thread: Option<JoinHandle<Vec<PhaseReport>>>,
}

/// The longest a stream runs, whatever the test does.
const STREAM_MAX: Duration = Duration::from_secs(150);

impl Stream {
    fn start(mut client: StunClient) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, phase) = (stop.clone(), phase.clone());
            thread::spawn(move || {
                let started = Instant::now();
                let mut reports = vec![PhaseReport::default()];
                let mut last_refresh = Instant::now();
                let mut sequence = 0u64;
                while !stop.load(Ordering::SeqCst) && started.elapsed() < STREAM_MAX {
                    let current = phase.load(Ordering::SeqCst);
                    if reports.len() <= current {
                        reports.resize(current + 1, PhaseReport::default());
                    }
                    let report = &mut reports[current];
                    let tick = Instant::now();
                    let payload = format!("seq {sequence}");
                    report.sent += 1;
                    match echo_time(&mut client, payload.as_bytes(), Duration::from_secs(2)) {
                        Some(rtt) => report.rtts.push(rtt),
                        None => report.lost.push(sequence),
                    }
                    sequence += 1;
                    if last_refresh.elapsed() >= Duration::from_secs(1) {
                        last_refresh = Instant::now();
                        match client.refresh(600) {
                            None => report.refreshes.push(last_refresh.elapsed()),
                            Some(_) => report.refresh_failures += 1,
                        }
                    }
                    thread::sleep(Duration::from_millis(20).saturating_sub(tick.elapsed()));
                }
                reports
            })
        };
        Stream {
            stop,
            phase,
            thread: Some(thread),
        }
    }

    /// Ends the current phase; returns its number.
    fn next_phase(&self) -> usize {
        self.phase.fetch_add(1, Ordering::SeqCst)
    }

    fn finish(mut self) -> Vec<PhaseReport> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("finished once")
            .join()
            .expect("the stream thread")
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binding requests answered at once: `count` from fresh sockets, each within a second.
fn assert_bindings_immediate(server: &Server, what: &str, count: usize) {
    let times: Vec<Duration> = (0..count)
        .map(|i| {
            binding_time(server.addr("udp"), Duration::from_secs(2))
                .unwrap_or_else(|| panic!("{what}: Binding {i} unanswered"))
        })
        .collect();
    let slowest = quantile(&times, 1.0);
    eprintln!("{what}: {count} Bindings, slowest {slowest:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "{what}: a Binding took {slowest:?}"
    );
}

/// The quota falls back to node-local counting: a burst of [`USER_ALLOCATIONS`] Allocates by
/// dave all succeed within [`FALLBACK_BOUND`], the next one gets 486 (the node's own count),
/// and once one is deleted a new one succeeds within [`KNOWN_DOWN_BOUND`]: with Redis known to
/// fail, an Allocate does not wait for it again. Returns the clients holding the allocations.
fn assert_quota_falls_back(server: &Server, what: &str) -> Vec<StunClient> {
    let started = Instant::now();
    let burst = allocate_burst(server.addr("udp"), DAVE, USER_ALLOCATIONS);
    eprintln!(
        "{what}: a burst of {USER_ALLOCATIONS} Allocates by dave: {:?}, all answered {:?} after \
         the first was sent",
        burst
            .iter()
            .map(|(_, r, t)| (r.is_ok(), *t))
            .collect::<Vec<_>>(),
        started.elapsed()
    );
    let mut clients = Vec::new();
    for (i, (client, result, took)) in burst.into_iter().enumerate() {
        assert!(
            result.is_ok(),
            "{what}: Allocate {i} of the burst: {result:?}"
        );
        assert!(
            took < FALLBACK_BOUND,
            "{what}: Allocate {i} of the burst took {took:?}"
        );
        clients.push(client);
    }
    let (_, result, took) = timed_allocate(server.addr("udp"), DAVE);
    eprintln!("{what}: one more Allocate by dave: {result:?} in {took:?}");
    assert_eq!(result, Err(486), "{what}: the node-local quota holds");
    for round in 0..2 {
        let mut freed = clients.pop().expect("dave holds allocations");
        assert_eq!(
            freed.refresh(0),
            None,
            "{what}: delete one of dave's allocations"
        );
        let (client, result, took) = timed_allocate(server.addr("udp"), DAVE);
        eprintln!("{what}: Allocate by dave in place of a deleted one: {result:?} in {took:?}");
        assert!(
            result.is_ok(),
            "{what}: Allocate {round} after a delete: {result:?}"
        );
        assert!(
            took < KNOWN_DOWN_BOUND,
            "{what}: with Redis known to fail, an Allocate took {took:?}"
        );
        clients.push(client);
    }
    clients
}

/// With the store cut off from Redis, dave still allocates (from the snapshot, in place of one
/// of the allocations he holds) and the allocation relays.
fn assert_relays_from_the_snapshot(
    server: &Server,
    holding: &mut Vec<StunClient>,
    peer: SocketAddr,
    what: &str,
) {
    let mut freed = holding.pop().expect("dave holds allocations");
    assert_eq!(
        freed.refresh(0),
        None,
        "{what}: delete one of dave's allocations"
    );
    let started = Instant::now();
    let (mut client, _) = relaying_client(server, DAVE, &[peer]);
    let took = started.elapsed();
    let rtt = echo_time(&mut client, b"from the snapshot", Duration::from_secs(2));
    eprintln!("{what}: dave allocated, permitted and bound in {took:?}; echo {rtt:?}");
    assert!(
        rtt.is_some(),
        "{what}: an allocation made from the snapshot relays"
    );
    holding.push(client);
}

/// Redis serves the node again: the store is connected, the leases of dave's live
/// allocations (granted while Redis failed) are registered, and the cluster quota counts them
/// again: with another node's lease added, a fresh Allocate gets 486 although the node itself
/// holds fewer than the quota. Returns how long the recovery took.
fn assert_recovers(
    server: &Server,
    redis: &RedisServer,
    what: &str,
    holding: &mut Vec<StunClient>,
) {
    let since = Instant::now();
    let connected = wait_until(Duration::from_secs(15), || {
        server.stats().0["redis"] == "connected"
    })
    .unwrap_or_else(|| panic!("{what}: the Redis store did not reconnect within 15 s"));
    let registered = wait_until(Duration::from_secs(10), || {
        live_leases(redis, DAVE.0) == holding.len() as u64
    });
    eprintln!(
        "{what}: store connected {connected:?} after the fault ended; dave's {} live \
         allocations have leases in Redis: {registered:?} later",
        holding.len()
    );
    assert!(
        registered.is_some(),
        "{what}: dave holds {} allocations, Redis has {} live leases for him, 10 s after the \
         store reconnected",
        holding.len(),
        live_leases(redis, DAVE.0)
    );
    // One allocation less here, one lease more elsewhere: only the cluster count is full.
    let mut freed = holding.pop().expect("dave holds allocations");
    assert_eq!(freed.refresh(0), None, "delete one of dave's allocations");
    foreign_lease(redis, DAVE.0, "another-node/0/1");
    let refused = wait_until(Duration::from_secs(5), || {
        let (mut client, result, _) = timed_allocate(server.addr("udp"), DAVE);
        if result.is_ok() {
            // Granted before the cluster count caught up: delete it, or it would stay and
            // count against dave's quota in the next phase (it once made a later burst get
            // a 486 under load).
            assert_eq!(
                client.refresh(0),
                None,
                "{what}: delete an early allocation"
            );
        }
        result == Err(486)
    });
    eprintln!(
        "{what}: the cluster quota counts again (486 with {} here and 1 elsewhere) after {:?}; \
         recovered in {:?}",
        holding.len(),
        registered.map(|r| r + connected),
        since.elapsed()
    );
    assert!(
        refused.is_some(),
        "{what}: dave allocates beyond the cluster quota after the recovery"
    );
}

/// The node's WARN and ERROR lines.
fn warnings(server: &Server) -> Vec<String> {
    server
        .log()
        .into_iter()
        .filter(|line| line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\""))
        .collect()
}

#[test]
fn a_slow_redis_never_stalls_relaying_and_leases_fall_back_in_bounded_time() {
    let redis = RedisServer::start();
    add_dave(&redis);
    let proxy = DelayProxy::start(redis.port());
    let server = redis_node(&proxy.url(), &[]);
    wait_for_dave(&server);
    let (peer, _echo) = common::udp_echo_peer();
    let (client, _) = relaying_client(&server, ALICE, &[peer]);
    let stream = Stream::start(client);
    thread::sleep(Duration::from_secs(1));
    stream.next_phase(); // 0: Redis at full speed.

    // Each chunk held 300 ms: slow, but every command answers within the command timeout.
    proxy.set_delay(Duration::from_millis(300));
    thread::sleep(Duration::from_secs(1));
    assert_bindings_immediate(&server, "redis +300 ms", 5);
    let mut slow = Vec::new();
    for i in 0..2 {
        let (client, result, took) = timed_allocate(server.addr("udp"), DAVE);
        eprintln!("redis +300 ms: Allocate {i} by dave: {result:?} in {took:?}");
        assert!(result.is_ok(), "redis +300 ms: Allocate {i}: {result:?}");
        assert!(
            took < FALLBACK_BOUND,
            "redis +300 ms: Allocate {i} took {took:?}"
        );
        slow.push(client);
    }
    let leased = live_leases(&redis, DAVE.0);
    eprintln!("redis +300 ms: dave has {leased} live leases in Redis");
    assert_eq!(leased, 2, "redis +300 ms: the leases were taken in Redis");
    for mut client in slow {
        assert_eq!(client.refresh(0), None);
    }
    thread::sleep(Duration::from_secs(1));
    stream.next_phase(); // 1: +300 ms.

    // Each chunk held 3 s: longer than the command timeout.
    proxy.set_delay(Duration::from_secs(3));
    let slowed = Instant::now();
    assert_bindings_immediate(&server, "redis +3 s", 5);
    let mut holding = assert_quota_falls_back(&server, "redis +3 s");
    let stale = wait_until(Duration::from_secs(10), || {
        server.stats().0["redis"] == "stale"
    });
    eprintln!(
        "redis +3 s: the store is stale {:?} after the delay began",
        stale.map(|_| slowed.elapsed())
    );
    assert!(stale.is_some(), "the store notices the slow Redis");
    // Dave is served from the snapshot; the allocations made meanwhile relay.
    assert_relays_from_the_snapshot(&server, &mut holding, peer, "redis +3 s");
    assert_bindings_immediate(&server, "redis +3 s, later", 5);
    thread::sleep(Duration::from_secs(2));
    stream.next_phase(); // 2: +3 s.

    proxy.set_delay(Duration::ZERO);
    assert_recovers(&server, &redis, "redis fast again", &mut holding);
    thread::sleep(Duration::from_secs(1));
    stream.next_phase(); // 3: recovered.

    let reports = stream.finish();
    for (report, what) in reports.iter().zip([
        "redis at full speed",
        "redis +300 ms",
        "redis +3 s",
        "redis recovered",
    ]) {
        report.assert_unaffected(what);
    }
    let warned = warnings(&server);
    eprintln!(
        "{} WARN/ERROR lines over the test ({} proxied connections):\n{}",
        warned.len(),
        proxy.state.connections.load(Ordering::SeqCst),
        warned.join("\n")
    );
    assert!(
        warned.len() <= 6,
        "a slow Redis floods the log: {} WARN/ERROR lines",
        warned.len()
    );
    assert!(server.log_messages("panicked").is_empty(), "no panic");
}

#[test]
fn a_blackholed_redis_is_a_slow_one() {
    let redis = RedisServer::start();
    add_dave(&redis);
    let mut proxy = DelayProxy::start(redis.port());
    let server = redis_node(&proxy.url(), &[]);
    wait_for_dave(&server);
    let (peer, _echo) = common::udp_echo_peer();
    let (client, _) = relaying_client(&server, ALICE, &[peer]);
    let stream = Stream::start(client);
    thread::sleep(Duration::from_secs(1));
    stream.next_phase(); // 0: Redis reachable.

    // Nothing passes and connections hang in the handshake.
    proxy.set_blackhole(true);
    let probe = TcpStream::connect_timeout(&proxy.addr, Duration::from_millis(500));
    assert!(probe.is_err(), "a connection to the blackhole hangs");
    assert_bindings_immediate(&server, "blackhole", 5);
    let mut holding = assert_quota_falls_back(&server, "blackhole");
    assert_relays_from_the_snapshot(&server, &mut holding, peer, "blackhole");
    thread::sleep(Duration::from_secs(2));
    stream.next_phase(); // 1: blackholed.

    proxy.set_blackhole(false);
    assert_recovers(&server, &redis, "blackhole lifted", &mut holding);
    stream.next_phase(); // 2: recovered.

    let reports = stream.finish();
    for (report, what) in reports
        .iter()
        .zip(["redis reachable", "blackhole", "blackhole lifted"])
    {
        report.assert_unaffected(what);
    }
    let warned = warnings(&server);
    eprintln!(
        "{} WARN/ERROR lines over the test:\n{}",
        warned.len(),
        warned.join("\n")
    );
    assert!(warned.len() <= 6, "a blackholed Redis floods the log");
    assert!(server.log_messages("panicked").is_empty(), "no panic");
}

#[test]
fn a_redis_answering_errors_changes_the_quota_source_and_logs_once() {
    let redis = RedisServer::start();
    add_dave(&redis);
    let server = redis_node(&redis.url(), &[]);
    wait_for_dave(&server);
    let (peer, _echo) = common::udp_echo_peer();
    let (client, _) = relaying_client(&server, ALICE, &[peer]);
    let stream = Stream::start(client);
    thread::sleep(Duration::from_secs(1));
    stream.next_phase(); // 0: Redis healthy.
    let warned_before = warnings(&server).len();
    let episodes = Instant::now();

    // Redis is full: every write (lease scripts, registry) fails with OOM; reads work.
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    assert_bindings_immediate(&server, "redis OOM", 5);
    let mut holding = assert_quota_falls_back(&server, "redis OOM");
    // Allocates and deletes keep coming for a while: still no flood.
    for i in 0..4 {
        if let Some(mut freed) = holding.pop() {
            assert_eq!(freed.refresh(0), None, "delete one of dave's allocations");
        }
        let (client, result, took) = timed_allocate(server.addr("udp"), DAVE);
        eprintln!("redis OOM: Allocate {i} by dave: {result:?} in {took:?}");
        assert!(
            result.is_ok() && took < FALLBACK_BOUND,
            "redis OOM: Allocate {i}"
        );
        holding.push(client);
        thread::sleep(Duration::from_millis(700));
    }
    assert_eq!(
        server.stats().0["redis"],
        "connected",
        "reads work: the credential store stays connected"
    );
    stream.next_phase(); // 1: OOM.
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    assert_recovers(&server, &redis, "redis OOM over", &mut holding);
    stream.next_phase(); // 2: recovered from OOM.

    // Scripting taken away (as some managed Redis services do): the lease script fails with
    // NOPERM while everything else works.
    for mut client in holding.drain(..) {
        assert_eq!(client.refresh(0), None);
    }
    redis.cli(&["DEL", &leases_key(DAVE.0)]);
    redis.cli(&["ACL", "SETUSER", "default", "-eval", "-evalsha"]);
    assert_bindings_immediate(&server, "redis NOPERM", 5);
    let mut holding = assert_quota_falls_back(&server, "redis NOPERM");
    // Several heartbeats apart: each one finds Redis answering again.
    for i in 0..8 {
        if let Some(mut freed) = holding.pop() {
            assert_eq!(freed.refresh(0), None, "delete one of dave's allocations");
        }
        let (client, result, took) = timed_allocate(server.addr("udp"), DAVE);
        eprintln!("redis NOPERM: Allocate {i} by dave: {result:?} in {took:?}");
        assert!(
            result.is_ok() && took < FALLBACK_BOUND,
            "redis NOPERM: Allocate {i}"
        );
        holding.push(client);
        thread::sleep(Duration::from_millis(1200));
    }
    stream.next_phase(); // 3: NOPERM.
    let warned = warnings(&server);
    let during: Vec<&String> = warned.iter().skip(warned_before).collect();
    eprintln!(
        "{} WARN/ERROR lines over the two error episodes ({:?}):\n{}",
        during.len(),
        episodes.elapsed(),
        during
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        during.iter().any(|line| line.contains("OOM")),
        "the OOM error is logged with its reason"
    );
    assert!(
        during
            .iter()
            .any(|line| line.to_lowercase().contains("noperm")),
        "the NOPERM error is logged with its reason"
    );
    assert!(
        during.len() <= 4,
        "errors flood the log: {} WARN/ERROR lines for two episodes",
        during.len()
    );
    redis.cli(&["ACL", "SETUSER", "default", "+eval", "+evalsha"]);
    assert_recovers(&server, &redis, "redis NOPERM over", &mut holding);
    stream.next_phase(); // 4: recovered from NOPERM.

    let reports = stream.finish();
    for (report, what) in reports.iter().zip([
        "redis healthy",
        "redis OOM",
        "redis OOM over",
        "redis NOPERM",
        "redis NOPERM over",
    ]) {
        report.assert_unaffected(what);
    }
    assert!(server.log_messages("panicked").is_empty(), "no panic");
}

/// An Allocate request of `user`, authenticated with a nonce the server gave a UDP socket of
/// the same IP address (nonces are bound to the client's IP, not its port).
fn authenticated_allocate(server: &Server, user: (&str, &str), id: u8) -> Vec<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("set a read timeout");
    let mut buf = [0u8; 1500];
    let tid = TransactionId([id, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, tid).expect("fits");
    w.requested_transport(17).expect("fits");
    let n = w.finish();
    socket
        .send_to(&buf[..n], server.addr("udp"))
        .expect("send an Allocate without credentials");
    let mut answer = [0u8; 1500];
    let (n, _) = socket.recv_from(&mut answer).expect("the 401 with a nonce");
    let msg = Message::parse(&answer[..n]).expect("a STUN answer");
    let nonce = msg.get(attr::NONCE).expect("a NONCE in the 401").to_vec();
    let tid = TransactionId([id, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, tid).expect("fits");
    w.requested_transport(17).expect("fits");
    w.attribute(attr::USERNAME, user.0.as_bytes())
        .expect("fits");
    w.attribute(attr::REALM, REALM.as_bytes()).expect("fits");
    w.attribute(attr::NONCE, &nonce).expect("fits");
    w.message_integrity(&long_term_key(user.0, REALM, user.1))
        .expect("fits");
    w.fingerprint().expect("fits");
    let n = w.finish();
    buf[..n].to_vec()
}

#[test]
fn a_client_gone_while_its_lease_is_pending_leaves_no_lease_behind() {
    let redis = RedisServer::start();
    add_dave(&redis);
    let proxy = DelayProxy::start(redis.port());
    let server = redis_node(&proxy.url(), &["tcp"]);
    wait_for_dave(&server);
    // Slow enough that the clients are gone before Redis answers; fast enough that it answers.
    proxy.set_delay(Duration::from_millis(150));
    thread::sleep(Duration::from_secs(1));
    // Clients that give up: each sends an Allocate over TCP and closes the connection.
    for id in 0..USER_ALLOCATIONS as u8 {
        let request = authenticated_allocate(&server, DAVE, id);
        let mut stream = TcpStream::connect(server.addr("tcp")).expect("connect over TCP");
        stream.write_all(&request).expect("send the Allocate");
        drop(stream);
    }
    // Longer than lease-time: a lease nobody renews has expired by then.
    thread::sleep(Duration::from_secs(5));
    let leases = live_leases(&redis, DAVE.0);
    let stats = server.stats();
    eprintln!(
        "gone while pending: {USER_ALLOCATIONS} clients closed their connection right after \
         their Allocate; 5 s later dave has {leases} live leases in Redis and the node {} \
         allocations",
        stats.get("allocations")
    );
    assert_eq!(stats.get("allocations"), 0, "no allocation is left");
    assert_eq!(
        leases, 0,
        "the leases taken for allocations that ended before the answer are held forever"
    );
    // And dave's quota is whole: as many allocations as ever, through the slow Redis.
    let burst = allocate_burst(server.addr("udp"), DAVE, USER_ALLOCATIONS);
    for (i, (_, result, took)) in burst.iter().enumerate() {
        eprintln!("gone while pending: then dave's Allocate {i}: {result:?} in {took:?}");
        assert!(result.is_ok(), "dave's Allocate {i}: {result:?}");
    }
    assert!(server.log_messages("panicked").is_empty(), "no panic");
}
