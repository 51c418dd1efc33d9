//! Hostile STUN messages against the real binary (finding 1 of the hardening issue: quadratic
//! parsing). The outside probe's datagram is a 65,504-byte Binding request of 8,185 zero-length
//! optional attributes followed by 8,186 copies of the unknown comprehension-required type
//! 0x7ABC: the release before the fix re-walked every earlier attribute for each unknown one on
//! its way to a 420 answer, about 100 million attribute reads per datagram.
//!
//! Each test measures the server's CPU time from /proc/<pid>/stat (utime + stime) around the
//! attack and asserts a generous bound per hostile message, while a client on another source
//! address (127.0.0.2) relays through an echo peer and must lose at most 5 % of its packets.
//! `--nocapture` prints every figure; `TURNPIKE_TEST_BIN=<older turnpike>` runs the same tests
//! against a build from before the fix.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::stun_client::{self, StunClient};
use common::{Server, Stats, TestConfig};
use turnpike::stun::{
    self, Class, HEADER_LEN, Message, MessageWriter, Method, TransactionId, attr, hmac_sha1,
    long_term_key,
};

/// Bound on the server's CPU time per hostile message, averaged over the attack. A debug build
/// after the fix measures 0 to 0.3 ms (receiving 64 KB and dropping it; the clock ticks are
/// 10 ms); before the fix a 64 KB message cost it about 10 s, a 1,472-byte one 5 to 6 ms.
const MAX_CPU_PER_MESSAGE: Duration = Duration::from_millis(5);
/// Most of the relaying client's packets the attack may cost.
const MAX_RELAY_LOSS: f64 = 0.05;
/// How long the server may take to finish what it was sent, once the attack is over.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// An optional attribute type nobody defines, and the probe's unknown required one.
const FILLER: u16 = 0x8F01;
const UNKNOWN_REQUIRED: u16 = 0x7ABC;

/// The probe's datagram.
const PROBE_SIZE: usize = 65_504;

/// A request of `method` whose body is `optional` empty FILLER attributes then `required` empty
/// UNKNOWN_REQUIRED ones, built by hand (turnpike's writer stops at 128 attributes).
fn hostile(method: Method, tid: TransactionId, optional: usize, required: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + 4 * (optional + required));
    let typ = message_type(method);
    buf.extend_from_slice(&typ.to_be_bytes());
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
    buf.extend_from_slice(&tid.0);
    for _ in 0..optional {
        buf.extend_from_slice(&FILLER.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
    }
    for _ in 0..required {
        buf.extend_from_slice(&UNKNOWN_REQUIRED.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
    }
    set_length(&mut buf);
    buf
}

/// The message type of a request of `method` (class bits zero).
fn message_type(method: Method) -> u16 {
    let m = method.0;
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2)
}

fn set_length(buf: &mut [u8]) {
    let len = u16::try_from(buf.len() - HEADER_LEN).expect("a STUN body fits 16 bits");
    buf[2..4].copy_from_slice(&len.to_be_bytes());
}

/// Appends an attribute, zero-padded.
fn push_attribute(buf: &mut Vec<u8>, typ: u16, value: &[u8]) {
    buf.extend_from_slice(&typ.to_be_bytes());
    buf.extend_from_slice(&u16::try_from(value.len()).expect("short").to_be_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// The probe's shape at `size` bytes: a Binding request of as many empty attributes as fit,
/// the first half optional, the rest the unknown required type.
fn hostile_binding(size: usize, tid: TransactionId) -> Vec<u8> {
    let count = (size - HEADER_LEN) / 4;
    let buf = hostile(Method::BINDING, tid, count / 2, count - count / 2);
    assert_eq!(buf.len(), size, "sizes are 20 + a multiple of 4");
    buf
}

/// Credentials learnt from a 401, to sign requests with.
struct Signer {
    username: String,
    nonce: Vec<u8>,
    key: [u8; 16],
}

/// An Allocate request signed with a valid MESSAGE-INTEGRITY: `attributes` hostile attributes
/// (half of them the unknown required type), REQUESTED-TRANSPORT, USERNAME, REALM and NONCE,
/// then MESSAGE-INTEGRITY over all of it. `attributes` of 0 fills the message up to the
/// probe's 65,504 bytes.
fn hostile_signed(signer: &Signer, tid: TransactionId, attributes: usize) -> Vec<u8> {
    let mut trailer = Vec::new();
    push_attribute(&mut trailer, attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    push_attribute(&mut trailer, attr::USERNAME, signer.username.as_bytes());
    push_attribute(&mut trailer, attr::REALM, stun_client::REALM.as_bytes());
    push_attribute(&mut trailer, attr::NONCE, &signer.nonce);
    // As large as a UDP datagram over IPv4 can be, like the probe's.
    let room = PROBE_SIZE - HEADER_LEN - trailer.len() - 24;
    let count = if attributes == 0 {
        room / 4
    } else {
        attributes
    };
    let mut buf = hostile(Method::ALLOCATE, tid, count / 2, count - count / 2);
    buf.extend_from_slice(&trailer);
    // The HMAC covers a header whose length already counts MESSAGE-INTEGRITY (RFC 8489 §14.5).
    let covered = buf.len() - HEADER_LEN + 24;
    buf[2..4].copy_from_slice(&u16::try_from(covered).expect("fits").to_be_bytes());
    let mac = hmac_sha1(&signer.key, &[&buf]);
    push_attribute(&mut buf, attr::MESSAGE_INTEGRITY, &mac);
    set_length(&mut buf);
    buf
}

/// The server's CPU time so far (user + system, all threads), from /proc/<pid>/stat.
fn cpu_time(pid: u32) -> Duration {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    // The command name (field 2) is in parentheses and may hold spaces; count after it.
    let after_name = &stat[stat.rfind(')').expect("a comm field") + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> u64 {
        fields[i]
            .parse()
            .unwrap_or_else(|e| panic!("field {i} of {path}: {e}: {stat}"))
    };
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name.
    let total = ticks(11) + ticks(12);
    // SAFETY: sysconf has no memory-safety preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(per_second > 0, "sysconf(_SC_CLK_TCK)");
    Duration::from_secs_f64(total as f64 / per_second as f64)
}

/// How many of the server's threads are running or waiting for a CPU (state R in
/// /proc/<pid>/task/*/stat).
fn running_threads(pid: u32) -> usize {
    let tasks = format!("/proc/{pid}/task");
    std::fs::read_dir(&tasks)
        .unwrap_or_else(|e| panic!("read {tasks}: {e}"))
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            stat.rfind(')')
                .and_then(|end| stat[end + 1..].split_whitespace().next())
                == Some("R")
        })
        .count()
}

/// Waits until none of the server's threads is running or runnable in three samples 100 ms
/// apart: whatever it was sent has been handled. (A thread starved of CPU by a busy machine is
/// still runnable, so this does not mistake a slow server for an idle one, as watching its CPU
/// time would.) `false` if it is still busy after `timeout`.
fn wait_until_idle(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut quiet = 0;
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        quiet = if running_threads(pid) == 0 {
            quiet + 1
        } else {
            0
        };
        if quiet == 3 {
            return true;
        }
    }
    false
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What the relaying client saw.
struct RelayReport {
    sent: u64,
    echoed: u64,
    max_delay: Duration,
}

impl RelayReport {
    fn loss(&self) -> f64 {
        1.0 - self.echoed as f64 / self.sent.max(1) as f64
    }
}

/// A client on 127.0.0.2 that allocates, binds a channel to a UDP echo peer and sends a
/// numbered 100-byte packet every 10 ms until stopped (or for 90 s at most), counting the
/// echoes and the longest round trip.
struct Relay {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<RelayReport>,
    _peer: common::EchoPeer,
}

impl Relay {
    fn start(server: SocketAddr) -> Relay {
        const INTERVAL: Duration = Duration::from_millis(10);
        const MAX_RUN: Duration = Duration::from_secs(90);
        let (peer, echo) = common::udp_echo_peer();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut client = StunClient::udp(server, "127.0.0.2:0", "alice", "wonderland");
                client.allocate().expect("the relaying client allocates");
                assert_eq!(client.bind(0x4000, peer), None, "channel bound");
                ready_tx.send(()).expect("the test waits");
                let start = Instant::now();
                let mut report = RelayReport {
                    sent: 0,
                    echoed: 0,
                    max_delay: Duration::ZERO,
                };
                let mut seen = std::collections::HashSet::new();
                let mut receive_until =
                    |client: &mut StunClient, deadline: Instant, r: &mut RelayReport| {
                        while let Some(data) = client.recv_data(deadline) {
                            let Some((seq, micros)) = data.get(..16).map(|b| {
                                let (seq, micros) = b.split_at(8);
                                let number =
                                    |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8"));
                                (number(seq), number(micros))
                            }) else {
                                continue;
                            };
                            let sent_at = start + Duration::from_micros(micros);
                            if seen.insert(seq) {
                                r.echoed += 1;
                                r.max_delay = r.max_delay.max(sent_at.elapsed());
                            }
                        }
                    };
                while !stop.load(Ordering::SeqCst) && start.elapsed() < MAX_RUN {
                    let mut payload = [0u8; 100];
                    payload[..8].copy_from_slice(&report.sent.to_be_bytes());
                    let micros = start.elapsed().as_micros() as u64;
                    payload[8..16].copy_from_slice(&micros.to_be_bytes());
                    client.send_channel_data(0x4000, &payload);
                    report.sent += 1;
                    receive_until(&mut client, Instant::now() + INTERVAL, &mut report);
                }
                // Late echoes still count, within a second.
                receive_until(
                    &mut client,
                    Instant::now() + Duration::from_secs(1),
                    &mut report,
                );
                report
            })
        };
        ready_rx
            .recv_timeout(stun_client::ANSWER_TIMEOUT * 2)
            .expect("the relaying client is ready");
        Relay {
            stop,
            thread,
            _peer: echo,
        }
    }

    fn finish(self) -> RelayReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .expect("the relaying client does not panic")
    }
}

/// The figures of one attack.
struct Attack {
    what: &'static str,
    sent: u64,
    /// Messages the server counted as handled (per its `stats`).
    handled: u64,
    /// The server's CPU time from the first message until it was idle again, and the part of
    /// it left once the relaying client's share (measured before the attack) is taken off.
    cpu_total: Duration,
    cpu: Duration,
    /// CPU seconds per second the relaying client's traffic costs the server.
    relay_load: f64,
    wall: Duration,
    settled: bool,
    relay: RelayReport,
}

impl Attack {
    fn print(&self) {
        eprintln!(
            "{}: {} hostile messages sent, {} handled; server CPU {:.0} ms over {:.2} s, \
             {:.0} ms without the relaying client's share ({:.1} ms/s): {:.3} ms per \
             message{}; relaying client: {} sent, {} echoed ({:.1} % lost), longest round \
             trip {:.1} ms",
            self.what,
            self.sent,
            self.handled,
            ms(self.cpu_total),
            self.wall.as_secs_f64(),
            ms(self.cpu),
            self.relay_load * 1e3,
            ms(self.cpu) / self.per_message_divisor() as f64,
            if self.settled { "" } else { ", STILL BUSY" },
            self.relay.sent,
            self.relay.echoed,
            100.0 * self.relay.loss(),
            ms(self.relay.max_delay),
        );
    }

    /// Messages to share the CPU among: those handled, or (a busy worker publishes no
    /// counters) those sent.
    fn per_message_divisor(&self) -> u64 {
        if self.handled > 0 {
            self.handled
        } else {
            self.sent
        }
    }

    fn check(&self) {
        self.print();
        assert!(
            self.settled,
            "{}: the server was still busy {SETTLE_TIMEOUT:?} after the attack, having spent \
             {:.0} ms of CPU on {} messages",
            self.what,
            ms(self.cpu_total),
            self.sent
        );
        assert!(
            self.handled * 2 >= self.sent,
            "{}: the server handled only {} of {} messages",
            self.what,
            self.handled,
            self.sent
        );
        let per_message = self.cpu / u32::try_from(self.handled.max(1)).expect("few");
        assert!(
            per_message < MAX_CPU_PER_MESSAGE,
            "{}: {per_message:?} of CPU per hostile message (bound {MAX_CPU_PER_MESSAGE:?})",
            self.what
        );
        assert!(
            self.relay.loss() <= MAX_RELAY_LOSS,
            "{}: the relaying client lost {:.1} % of its packets",
            self.what,
            100.0 * self.relay.loss()
        );
    }
}

/// Runs `attack` (which returns how many messages it sent) while a client relays, and measures
/// the server's CPU from just before it until the server is idle again. `handled` reads from
/// the stats the number of hostile messages the server got to.
fn measure(
    what: &'static str,
    server: &Server,
    handled: impl Fn(&Stats) -> u64,
    attack: impl FnOnce() -> u64,
) -> Attack {
    const LOAD_SAMPLE: Duration = Duration::from_secs(2);
    let pid = server.pid();
    let relay = Relay::start(server.addr("udp"));
    let before = server.stats();
    // What the relaying client alone costs the server, to take off the attack's figure.
    let sample_start = cpu_time(pid);
    thread::sleep(LOAD_SAMPLE);
    let relay_load = (cpu_time(pid) - sample_start).as_secs_f64() / LOAD_SAMPLE.as_secs_f64();
    let cpu_before = cpu_time(pid);
    let start = Instant::now();
    let sent = attack();
    let settled = wait_until_idle(pid, SETTLE_TIMEOUT);
    let cpu_total = cpu_time(pid) - cpu_before;
    let wall = start.elapsed();
    let relay = relay.finish();
    let after = server.stats();
    Attack {
        what,
        sent,
        handled: handled(&after) - handled(&before),
        cpu_total,
        cpu: cpu_total.saturating_sub(wall.mul_f64(relay_load)),
        relay_load,
        wall,
        settled,
        relay,
    }
}

/// A transaction id unique within the test: `tag` and a counter.
fn tid(tag: u8, n: u64) -> TransactionId {
    let mut id = [tag; 12];
    id[4..].copy_from_slice(&n.to_be_bytes());
    TransactionId(id)
}

/// Sends `request` on `socket` (again after 0.2, 0.4, 0.8... s, at most every 5 s) and returns
/// the answer with the same transaction id; fails after `timeout`.
fn transact_within(
    socket: &UdpSocket,
    server: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Vec<u8> {
    let wanted = &request[8..20];
    let deadline = Instant::now() + timeout;
    let mut wait = Duration::from_millis(200);
    let mut buf = [0u8; 2048];
    socket.send_to(request, server).expect("send");
    let mut resend_at = Instant::now() + wait;
    while Instant::now() < deadline {
        let until = resend_at.min(deadline);
        socket
            .set_read_timeout(Some(
                until
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .expect("set a timeout");
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if from == server && n >= HEADER_LEN && &buf[8..20] == wanted => {
                return buf[..n].to_vec();
            }
            Ok(_) => {}
            Err(e) if stun_client::is_timeout(&e) => {}
            Err(e) => panic!("receive: {e}"),
        }
        if Instant::now() >= resend_at {
            socket.send_to(request, server).expect("send");
            wait = (wait * 2).min(Duration::from_secs(5));
            resend_at = Instant::now() + wait;
        }
    }
    panic!("no answer within {timeout:?}")
}

fn transact(socket: &UdpSocket, server: SocketAddr, request: &[u8]) -> Vec<u8> {
    transact_within(socket, server, request, stun_client::ANSWER_TIMEOUT)
}

/// The ERROR-CODE and UNKNOWN-ATTRIBUTES of an answer.
fn error_and_unknown(answer: &[u8]) -> (Option<u16>, Vec<u8>) {
    let msg = Message::parse(answer).expect("the server's answer parses");
    let code = msg
        .get(attr::ERROR_CODE)
        .and_then(|v| attr::decode_error_code(v).ok())
        .map(|(code, _)| code);
    let unknown = msg
        .get(attr::UNKNOWN_ATTRIBUTES)
        .unwrap_or_default()
        .to_vec();
    (code, unknown)
}

/// Unauthenticated: 100 of the probe's datagrams over UDP from four source ports, 50 a
/// second (the probe needed 20 a second to keep both workers 75 % busy).
#[test]
fn hostile_bindings_over_udp_cost_little() {
    const MESSAGES: u64 = 100;
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        ..TestConfig::default()
    });
    let udp = server.addr("udp");

    // The shape, small enough to be answered: a 420 naming the unknown type once.
    let control = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let answer = transact(&control, udp, &hostile(Method::BINDING, tid(1, 0), 10, 10));
    assert_eq!(
        error_and_unknown(&answer),
        (Some(420), UNKNOWN_REQUIRED.to_be_bytes().to_vec())
    );

    let attackers: Vec<UdpSocket> = (0..4)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let attack = measure(
        "UDP, unauthenticated",
        &server,
        |s| s.get("malformed") + s.get("binding_requests"),
        || {
            let start = Instant::now();
            for i in 0..MESSAGES {
                let datagram = hostile_binding(PROBE_SIZE, tid(2, i));
                let socket = &attackers[(i % 4) as usize];
                socket.send_to(&datagram, udp).expect("send 64 KB");
                let next = start + Duration::from_millis(20 * (i + 1));
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            MESSAGES
        },
    );
    attack.check();
}

/// Over TCP: 4 connections, 10 of the probe's messages on each, written as fast as the server
/// reads them.
#[test]
fn hostile_bindings_over_tcp_cost_little() {
    const CONNECTIONS: u64 = 4;
    const PER_CONNECTION: u64 = 10;
    let server = Server::with(&TestConfig {
        transports: vec!["udp", "tcp"],
        ..TestConfig::default()
    });
    let tcp = server.addr("tcp");
    let attack = measure(
        "TCP, unauthenticated",
        &server,
        |s| s.get("malformed") + s.get("binding_requests"),
        || {
            let writers: Vec<_> = (0..CONNECTIONS)
                .map(|c| {
                    thread::spawn(move || {
                        let mut stream = TcpStream::connect_timeout(&tcp, Duration::from_secs(10))
                            .expect("connect");
                        stream
                            .set_write_timeout(Some(SETTLE_TIMEOUT))
                            .expect("set a timeout");
                        for i in 0..PER_CONNECTION {
                            let message = hostile_binding(PROBE_SIZE, tid(3 + c as u8, i));
                            if let Err(e) = stream.write_all(&message) {
                                eprintln!("connection {c}: write {i}: {e}");
                                return (i, stream);
                            }
                        }
                        (PER_CONNECTION, stream)
                    })
                })
                .collect();
            let mut sent = 0;
            let mut streams = Vec::new();
            for writer in writers {
                let (n, stream) = writer.join().expect("the writer does not panic");
                sent += n;
                streams.push(stream);
            }
            // The connections stay open until the server is idle (dropped after `measure`).
            thread::spawn(move || {
                thread::sleep(SETTLE_TIMEOUT + Duration::from_secs(5));
                drop(streams);
            });
            sent
        },
    );
    attack.check();
    assert_eq!(
        attack.handled,
        CONNECTIONS * PER_CONNECTION,
        "TCP loses nothing: every message handled"
    );
    // The connections were not closed for it: a Binding on a fresh one is answered.
    let mut stream = TcpStream::connect_timeout(&tcp, Duration::from_secs(10)).expect("connect");
    stream
        .set_read_timeout(Some(stun_client::ANSWER_TIMEOUT))
        .expect("set a timeout");
    let mut buf = [0u8; 200];
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid(9, 9)).unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    stream.write_all(&buf[..n]).expect("write");
    let mut answer = [0u8; 20];
    stream.read_exact(&mut answer).expect("a Binding answer");
    assert_eq!(&answer[..2], &[0x01, 0x01], "Binding success");
}

/// Authenticated (no rate limit applies): 40 Allocate requests of 65,504 bytes, the hostile
/// attributes before a valid MESSAGE-INTEGRITY for alice, over UDP.
#[test]
fn hostile_signed_requests_cost_little() {
    const MESSAGES: u64 = 40;
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        ..TestConfig::default()
    });
    let udp = server.addr("udp");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    // The nonce is bound to the client's IP, not its port: four sockets reach both workers.
    let attackers: Vec<UdpSocket> = (0..4)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();

    // The nonce, from the 401 to a request without credentials.
    let mut buf = [0u8; 100];
    let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, tid(5, 0)).unwrap();
    w.requested_transport(17).unwrap();
    let n = w.finish();
    let challenge = transact(&socket, udp, &buf[..n]);
    let msg = Message::parse(&challenge).expect("a 401");
    let signer = Signer {
        username: "alice".into(),
        nonce: msg.get(attr::NONCE).expect("a NONCE").to_vec(),
        key: long_term_key("alice", stun_client::REALM, "wonderland"),
    };

    // The shape, small enough to be answered: an authenticated 420 (so the signature is
    // right), signed in return.
    let answer = transact(&socket, udp, &hostile_signed(&signer, tid(5, 1), 20));
    assert_eq!(
        error_and_unknown(&answer),
        (Some(420), UNKNOWN_REQUIRED.to_be_bytes().to_vec())
    );
    let msg = Message::parse(&answer).expect("parses");
    assert_eq!(msg.check_integrity(&signer.key), Ok(()), "a signed answer");

    let attack = measure(
        "UDP, authenticated",
        &server,
        |s| s.get("malformed") + s.get("error_responses"),
        || {
            let start = Instant::now();
            for i in 0..MESSAGES {
                let message = hostile_signed(&signer, tid(6, i), 0);
                assert_eq!(message.len(), PROBE_SIZE);
                let socket = &attackers[(i % 4) as usize];
                socket.send_to(&message, udp).expect("send 64 KB");
                let next = start + Duration::from_millis(25 * (i + 1));
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            MESSAGES
        },
    );
    attack.check();
    assert_eq!(
        server.stats().get("allocations"),
        1,
        "only the relaying client's allocation"
    );
}

/// CPU per datagram for the probe's shape at 1,472 bytes, 8, 16, 32 and 64 KB: quadratic
/// before the fix (4× per doubling), flat after it. Each datagram is followed by a plain
/// Binding on the same socket, whose answer says the server got past the datagram (one
/// socket, one worker, in order); the rate limit is off so that every datagram is handled.
/// A row stops after 200 datagrams or 2 s of server CPU, whichever comes first.
#[test]
fn cpu_per_hostile_datagram_by_size() {
    const SIZES: [usize; 5] = [1_472, 8_192, 16_384, 32_768, PROBE_SIZE];
    const MAX_PER_ROW: u64 = 200;
    const ROW_CPU: Duration = Duration::from_secs(2);
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        extra: "[limits]\nunauthenticated-rate = 0".into(),
        ..TestConfig::default()
    });
    let udp = server.addr("udp");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let pid = server.pid();
    let mut sequence = 0u64;
    // Before the fix a debug build spends seconds on one 64 KB datagram.
    let mut probe = || {
        sequence += 1;
        let mut buf = [0u8; 100];
        let w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid(7, sequence))
            .unwrap();
        let n = w.finish();
        let answer = transact_within(&socket, udp, &buf[..n], Duration::from_secs(120));
        assert_eq!(&answer[..2], &[0x01, 0x01], "Binding success");
    };
    assert!(wait_until_idle(pid, SETTLE_TIMEOUT));
    // The plain Binding alone, to take off each row.
    let start = cpu_time(pid);
    for _ in 0..MAX_PER_ROW {
        probe();
    }
    let probe_cost = (cpu_time(pid) - start) / MAX_PER_ROW as u32;

    let mut rows = Vec::new();
    for size in SIZES {
        let start = cpu_time(pid);
        let mut sent = 0u64;
        while sent < MAX_PER_ROW && (sent == 0 || cpu_time(pid) - start < ROW_CPU) {
            let datagram = hostile_binding(size, tid(8, sent));
            socket.send_to(&datagram, udp).expect("send");
            probe();
            sent += 1;
        }
        let cpu = cpu_time(pid) - start;
        let per_datagram = (cpu / sent as u32).saturating_sub(probe_cost);
        rows.push((size, sent, cpu, per_datagram));
    }
    eprintln!(
        "CPU per hostile datagram (a plain Binding costs {:.3} ms, taken off):",
        ms(probe_cost)
    );
    eprintln!(
        "{:>8} {:>10} {:>10} {:>12} {:>14}",
        "bytes", "attributes", "datagrams", "CPU ms", "ms/datagram"
    );
    for (size, sent, cpu, per_datagram) in &rows {
        eprintln!(
            "{size:>8} {:>10} {sent:>10} {:>12.1} {:>14.3}",
            (size - HEADER_LEN) / 4,
            ms(*cpu),
            ms(*per_datagram)
        );
    }
    for (size, _, _, per_datagram) in &rows {
        assert!(
            *per_datagram < MAX_CPU_PER_MESSAGE,
            "{size} bytes: {per_datagram:?} of CPU per datagram (bound {MAX_CPU_PER_MESSAGE:?})"
        );
    }
}
