//! The smallest driver the engine work needed to measure turnpike (or coturn) before the
//! team's load generator landed: UDP only, long-term credentials, loopback only. It is not a
//! load tool; `turnpike-load` is.
//!
//! ```sh
//! cargo build --release --example engine_probe
//! # relay: N clients send ChannelData through their allocation to a built-in echo peer
//! target/release/examples/engine_probe relay --server 127.0.0.1:3478 --pid PID \
//!     --clients 8 --size 160 --window 16 --seconds 6
//! target/release/examples/engine_probe relay ... --clients 64 --size 1000 --rate 50
//! # allocate: 401 round trip + Allocate, then Refresh 0, for N clients
//! target/release/examples/engine_probe allocate --server ... --pid PID --clients 2000
//! # hold: N allocations, each with a channel, one echo each; RSS per allocation
//! target/release/examples/engine_probe hold --server ... --pid PID --clients 15000
//! ```
//!
//! Figures: the server's CPU (utime + stime of `/proc/PID/stat`) and the host's (`/proc/stat`,
//! all but idle and iowait) over the measured interval, divided by the datagrams the server
//! relayed in it (client → peer plus peer → client, counted at the client and the echo peer).
//! One JSON line on stdout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use turnpike::stun::{Class, Message, MessageWriter, Method, TransactionId, attr, long_term_key};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// The server's UDP listener (loopback only).
    #[arg(long)]
    server: SocketAddr,
    /// The server's process id, for its CPU and RSS.
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value = "alice")]
    user: String,
    #[arg(long, default_value = "wonderland")]
    password: String,
    /// Clients (one UDP socket and allocation each), 1 to 18,000.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=18_000))]
    clients: u32,
}

#[derive(Subcommand)]
enum Mode {
    /// ChannelData through each allocation to an echo peer and back.
    Relay {
        #[command(flatten)]
        common: Common,
        /// Payload bytes, 4 to 1400.
        #[arg(long, default_value_t = 160, value_parser = clap::value_parser!(u32).range(4..=1400))]
        size: u32,
        /// Datagrams in flight per client (max rate); ignored with --rate.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
        window: u32,
        /// Datagrams per second per client (paced); 0 = as fast as the window allows.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100_000))]
        rate: u32,
        /// Measured seconds (after 1 s of warm-up), 1 to 60.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=60))]
        seconds: u64,
    },
    /// 401 round trip + Allocate, then Refresh 0, for each client in turn.
    Allocate {
        #[command(flatten)]
        common: Common,
    },
    /// Allocate and bind a channel for every client, echo one datagram each, report RSS.
    Hold {
        #[command(flatten)]
        common: Common,
    },
}

const REALM_TIMEOUT: Duration = Duration::from_secs(2);
const CHANNEL: u16 = 0x4000;

fn main() {
    let args = Args::parse();
    let common = match &args.mode {
        Mode::Relay { common, .. } | Mode::Allocate { common } | Mode::Hold { common } => common,
    };
    if !common.server.ip().is_loopback() {
        eprintln!("engine_probe: --server must be a loopback address");
        std::process::exit(2);
    }
    match args.mode {
        Mode::Relay {
            common,
            size,
            window,
            rate,
            seconds,
        } => relay(&common, size as usize, window, rate, seconds),
        Mode::Allocate { common } => allocate(&common),
        Mode::Hold { common } => hold(&common),
    }
}

/// A client with its long-term key once the server named realm and nonce.
struct Session {
    socket: UdpSocket,
    server: SocketAddr,
    user: String,
    password: String,
    realm: Vec<u8>,
    nonce: Vec<u8>,
    key: [u8; 16],
    tid: u32,
    buf: Vec<u8>,
}

impl Session {
    fn new(common: &Common, local: IpAddr) -> Session {
        let socket = UdpSocket::bind((local, 0)).expect("bind a client socket");
        socket
            .set_read_timeout(Some(REALM_TIMEOUT))
            .expect("set a timeout");
        Session {
            socket,
            server: common.server,
            user: common.user.clone(),
            password: common.password.clone(),
            realm: Vec::new(),
            nonce: Vec::new(),
            key: [0; 16],
            tid: 0,
            buf: vec![0; 2048],
        }
    }

    /// Sends a request (signed once a nonce is known) and returns the answer's length; a 401
    /// or 438 takes the realm and nonce and is retried once.
    fn request(
        &mut self,
        method: Method,
        attrs: &dyn Fn(&mut MessageWriter<'_>),
    ) -> Result<usize, String> {
        for _ in 0..3 {
            self.tid += 1;
            let mut tid = [7u8; 12];
            tid[..4].copy_from_slice(&self.tid.to_be_bytes());
            let mut out = [0u8; 1024];
            let mut w = MessageWriter::new(&mut out, method, Class::Request, TransactionId(tid))
                .map_err(|e| e.to_string())?;
            attrs(&mut w);
            if !self.nonce.is_empty() {
                w.attribute(attr::USERNAME, self.user.as_bytes())
                    .map_err(|e| e.to_string())?;
                w.attribute(attr::REALM, &self.realm)
                    .map_err(|e| e.to_string())?;
                w.attribute(attr::NONCE, &self.nonce)
                    .map_err(|e| e.to_string())?;
                w.message_integrity(&self.key).map_err(|e| e.to_string())?;
            }
            w.fingerprint().map_err(|e| e.to_string())?;
            let n = w.finish();
            self.socket
                .send_to(&out[..n], self.server)
                .map_err(|e| e.to_string())?;
            let len = loop {
                let (len, _) = self
                    .socket
                    .recv_from(&mut self.buf)
                    .map_err(|e| format!("{method:?}: {e}"))?;
                if self.buf[0] < 0x40 && self.buf[8..20] == tid {
                    break len;
                }
            };
            let msg = Message::parse(&self.buf[..len]).map_err(|e| e.to_string())?;
            match msg.class() {
                Class::Success => return Ok(len),
                _ => {
                    let code = msg
                        .get(attr::ERROR_CODE)
                        .and_then(|v| attr::decode_error_code(v).ok())
                        .map(|(code, _)| code);
                    match code {
                        Some(401 | 438) if msg.get(attr::NONCE).is_some() => {
                            self.nonce = msg.get(attr::NONCE).unwrap_or_default().to_vec();
                            if let Some(realm) = msg.get(attr::REALM) {
                                self.realm = realm.to_vec();
                            }
                            let realm = String::from_utf8_lossy(&self.realm).into_owned();
                            self.key = long_term_key(&self.user, &realm, &self.password);
                        }
                        other => return Err(format!("{method:?}: error {other:?}")),
                    }
                }
            }
        }
        Err(format!("{method:?}: no success after 3 tries"))
    }

    fn allocate(&mut self) -> Result<SocketAddr, String> {
        let len = self.request(Method::ALLOCATE, &|w| {
            w.requested_transport(17).expect("fits");
        })?;
        let msg = Message::parse(&self.buf[..len]).map_err(|e| e.to_string())?;
        let value = msg
            .get(attr::XOR_RELAYED_ADDRESS)
            .ok_or("no XOR-RELAYED-ADDRESS")?;
        attr::decode_xor_address(value, &msg.transaction_id()).map_err(|e| e.to_string())
    }

    fn channel_bind(&mut self, peer: SocketAddr) -> Result<(), String> {
        self.request(Method::CHANNEL_BIND, &|w| {
            w.channel_number(CHANNEL).expect("fits");
            w.xor_address(attr::XOR_PEER_ADDRESS, peer).expect("fits");
        })
        .map(|_| ())
    }

    fn delete(&mut self) -> Result<(), String> {
        self.request(Method::REFRESH, &|w| {
            w.u32(attr::LIFETIME, 0).expect("fits");
        })
        .map(|_| ())
    }
}

/// A UDP echo peer on its own thread; counts what it echoed.
struct Echo {
    addr: SocketAddr,
    echoed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    fn start() -> Echo {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the echo peer");
        let sock = socket2::SockRef::from(&socket);
        let _ = sock.set_recv_buffer_size(8 << 20);
        let _ = sock.set_send_buffer_size(8 << 20);
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set a timeout");
        let addr = socket.local_addr().expect("bound");
        let echoed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (echoed.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf)
                    && socket.send_to(&buf[..n], from).is_ok()
                {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Echo {
            addr,
            echoed,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// CPU ticks of a process (utime + stime) and of the host (busy), in clock ticks.
#[derive(Clone, Copy)]
struct Cpu {
    process: u64,
    host: u64,
    at: Instant,
}

fn cpu(pid: u32) -> Cpu {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let process = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
    let host_line = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<u64> = host_line
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = values
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, v)| v)
        .sum();
    Cpu {
        process,
        host: busy,
        at: Instant::now(),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Microseconds per event of `ticks` clock ticks (100 Hz here).
fn micros(ticks: u64, events: u64) -> f64 {
    let hz = 100.0;
    ticks as f64 * 1e6 / hz / events.max(1) as f64
}

/// Client sockets on 127.0.0.x addresses beyond 127.0.0.1 (the per-source limits apply per IP).
fn client_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 2) as u8))
}

fn setup(common: &Common, peer: SocketAddr) -> Vec<Session> {
    let mut sessions = Vec::new();
    for i in 0..common.clients {
        let mut session = Session::new(common, client_ip(i));
        session
            .allocate()
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        session
            .channel_bind(peer)
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        sessions.push(session);
    }
    sessions
}

fn relay(common: &Common, size: usize, window: u32, rate: u32, seconds: u64) {
    let echo = Echo::start();
    let sessions = setup(common, echo.addr);
    let sockets: Vec<UdpSocket> = sessions
        .into_iter()
        .map(|s| {
            s.socket.set_nonblocking(true).expect("non-blocking");
            let sock = socket2::SockRef::from(&s.socket);
            let _ = sock.set_recv_buffer_size(1 << 20);
            s.socket
        })
        .collect();
    let mut frame = vec![0xabu8; 4 + size];
    turnpike::stun::write_channel_data_header(&mut frame, CHANNEL, size as u16).expect("fits");
    let n = sockets.len();
    let mut in_flight = vec![0u32; n];
    let mut next_send = vec![Instant::now(); n];
    let interval = (rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(rate)));
    let mut buf = vec![0u8; 2048];
    let mut pollfds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let start = Instant::now();
    let warm = start + Duration::from_secs(1);
    let end = warm + Duration::from_secs(seconds);
    let (mut sent, mut received) = (0u64, 0u64);
    let mut rtts: Vec<u32> = Vec::new();
    let mut sent_at: Vec<std::collections::VecDeque<Instant>> =
        (0..n).map(|_| Default::default()).collect();
    let mut measured: Option<(Cpu, u64, u64, u64)> = None;
    let mut last_progress = Instant::now();
    loop {
        let now = Instant::now();
        if measured.is_none() && now >= warm {
            measured = Some((
                cpu(common.pid),
                sent,
                received,
                echo.echoed.load(Ordering::Relaxed),
            ));
            rtts.clear();
        }
        if now >= end {
            break;
        }
        if now - last_progress > Duration::from_secs(2) {
            // Lost datagrams leave windows stuck: open them again.
            in_flight.iter_mut().for_each(|f| *f = 0);
            sent_at.iter_mut().for_each(|q| q.clear());
            last_progress = now;
        }
        let mut progress = false;
        for (i, socket) in sockets.iter().enumerate() {
            while let Ok(len) = socket.recv(&mut buf) {
                if len >= 4 && buf[0] & 0xc0 == 0x40 {
                    received += 1;
                    in_flight[i] = in_flight[i].saturating_sub(1);
                    if let Some(at) = sent_at[i].pop_front() {
                        rtts.push(at.elapsed().as_micros() as u32);
                    }
                    progress = true;
                }
            }
            match interval {
                None => {
                    while in_flight[i] < window {
                        if socket.send_to(&frame, common.server).is_err() {
                            break;
                        }
                        in_flight[i] += 1;
                        sent += 1;
                        sent_at[i].push_back(Instant::now());
                        progress = true;
                    }
                }
                Some(interval) => {
                    let now = Instant::now();
                    if now >= next_send[i] {
                        if socket.send_to(&frame, common.server).is_ok() {
                            sent += 1;
                            sent_at[i].push_back(now);
                            if sent_at[i].len() > 64 {
                                sent_at[i].pop_front();
                            }
                        }
                        next_send[i] += interval;
                        if next_send[i] < now {
                            next_send[i] = now + interval;
                        }
                    }
                }
            }
        }
        if progress {
            last_progress = Instant::now();
        }
        if !progress || interval.is_some() {
            let timeout = match interval {
                Some(_) => {
                    let next = next_send.iter().min().copied().unwrap_or(end);
                    next.saturating_duration_since(Instant::now()).as_millis() as i32
                }
                None => 5,
            };
            for p in &mut pollfds {
                p.revents = 0;
            }
            // SAFETY: pollfds is a valid array of pollfd of the given length.
            unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, timeout) };
        }
    }
    let after = cpu(common.pid);
    let (before, sent0, received0, echoed0) = measured.expect("measured interval");
    let echoed = echo.echoed.load(Ordering::Relaxed) - echoed0;
    let (sent, received) = (sent - sent0, received - received0);
    // Datagrams the server relayed: client -> peer (seen by the echo peer) and peer -> client.
    let relayed = echoed + received;
    let secs = after.at.duration_since(before.at).as_secs_f64();
    rtts.sort_unstable();
    let pct = |p: f64| {
        rtts.get(((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"mode\":\"relay\",\"clients\":{n},\"size\":{size},\"rate\":{rate},\"window\":{window},\"seconds\":{secs:.2},\"sent\":{sent},\"echoed\":{echoed},\"received\":{received},\"loss_pct\":{:.3},\"relayed_pps\":{:.0},\"server_us_per_packet\":{:.3},\"host_us_per_packet\":{:.3},\"server_cpu_pct\":{:.1},\"rtt_p50_us\":{},\"rtt_p99_us\":{}}}",
        100.0 * (sent.saturating_sub(received)) as f64 / sent.max(1) as f64,
        relayed as f64 / secs,
        micros(after.process - before.process, relayed),
        micros(after.host - before.host, relayed),
        (after.process - before.process) as f64 / secs,
        pct(0.5),
        pct(0.99),
    );
}

fn allocate(common: &Common) {
    let before = cpu(common.pid);
    let start = Instant::now();
    let mut failures = 0;
    for i in 0..common.clients {
        let mut session = Session::new(common, client_ip(i));
        if session.allocate().and_then(|_| session.delete()).is_err() {
            failures += 1;
        }
    }
    let after = cpu(common.pid);
    let secs = start.elapsed().as_secs_f64();
    let done = u64::from(common.clients - failures);
    println!(
        "{{\"mode\":\"allocate\",\"clients\":{},\"failures\":{failures},\"seconds\":{secs:.2},\"per_second\":{:.0},\"server_us_per_allocation\":{:.1},\"host_us_per_allocation\":{:.1}}}",
        common.clients,
        done as f64 / secs,
        micros(after.process - before.process, done),
        micros(after.host - before.host, done),
    );
}

fn hold(common: &Common) {
    let echo = Echo::start();
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = rss_kib(common.pid);
    let sessions = setup(common, echo.addr);
    let mut frame = vec![0x5au8; 4 + 100];
    turnpike::stun::write_channel_data_header(&mut frame, CHANNEL, 100).expect("fits");
    let mut echoed = 0;
    let mut buf = vec![0u8; 2048];
    for session in &sessions {
        session
            .socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        if session.socket.send_to(&frame, common.server).is_ok()
            && session
                .socket
                .recv(&mut buf)
                .is_ok_and(|n| n == frame.len())
        {
            echoed += 1;
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = rss_kib(common.pid);
    let n = sessions.len() as u64;
    println!(
        "{{\"mode\":\"hold\",\"allocations\":{n},\"echoed\":{echoed},\"rss_before_kib\":{rss_before},\"rss_after_kib\":{rss_after},\"bytes_per_allocation\":{:.0}}}",
        (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / n as f64
    );
}
