//! Seeds for the fuzz corpora from real clients' traffic; `fuzz/seeds.sh` drives it.
//!
//! ```text
//! fuzz_seeds proxy DIR UDP TCP TLS UPSTREAM_UDP UPSTREAM_TCP
//!     Records what passes between clients and turnpike: UDP on UDP, TCP on TCP, and TLS on
//!     TLS, terminated here (self-signed certificate) and carried on as plain TCP, so that
//!     its plaintext is recorded. One DIR/NNNN-<transport>.rec file per client flow; runs
//!     until killed.
//! fuzz_seeds convert DIR CORPUS
//!     Turns the recordings into inputs for every target in CORPUS/<target>/.
//! fuzz_seeds tcp CORPUS
//!     Writes the scripted TCP-allocation (RFC 6062) seeds of the core harness
//!     (`turnpike::fuzzing::core::tcp_seeds`) to CORPUS/core_authenticated/.
//! fuzz_seeds run TARGET FILE...
//!     Runs inputs through a target on stable Rust (with TURNPIKE_FUZZ_TRACE=1, the core
//!     targets print each operation and the counters).
//! ```
//!
//! A recording is a sequence of records: direction (0 client to server, 1 back), a big-endian
//! u32 length, the bytes (a datagram, or what one read of the stream returned).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use turnpike::fuzzing::core::{FINGERPRINT, Op, USER_SHIFT};
use turnpike::stun::{self, ChannelData, Class, Frame, Message, MessageWriter, Method, attr};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["proxy", dir, udp, tcp, tls, up_udp, up_tcp] => proxy(
            Path::new(dir),
            [udp, tcp, tls].map(|a| a.parse().expect("a listen address")),
            [up_udp, up_tcp].map(|a| a.parse().expect("an upstream address")),
        ),
        ["convert", dir, corpus] => convert(Path::new(dir), Path::new(corpus)),
        ["tcp", corpus] => {
            // RFC 6062 (TCP allocations): no recorded client opens one, so scripted seeds.
            let dir = Path::new(corpus).join("core_authenticated");
            fs::create_dir_all(&dir).expect("create a corpus directory");
            for (name, bytes) in turnpike::fuzzing::core::tcp_seeds() {
                fs::write(dir.join(name), bytes).expect("write a seed");
            }
        }
        ["run", target, ref files @ ..] => {
            let (_, run) = turnpike::fuzzing::TARGETS
                .iter()
                .find(|(name, _)| *name == target)
                .expect("a target of turnpike::fuzzing::TARGETS");
            for file in files {
                eprintln!("{file}");
                run(&fs::read(file).expect("read an input"));
            }
        }
        _ => {
            eprintln!("usage: fuzz_seeds proxy DIR UDP TCP TLS UPSTREAM_UDP UPSTREAM_TCP");
            eprintln!("       fuzz_seeds convert DIR CORPUS");
            eprintln!("       fuzz_seeds tcp CORPUS");
            eprintln!("       fuzz_seeds run TARGET FILE...");
            std::process::exit(2);
        }
    }
}

/// One flow's recording file.
#[derive(Clone)]
struct Recorder(Arc<Mutex<File>>);

static FLOWS: AtomicUsize = AtomicUsize::new(0);

impl Recorder {
    fn new(dir: &Path, transport: &str) -> Recorder {
        let n = FLOWS.fetch_add(1, Ordering::SeqCst);
        let file = File::create(dir.join(format!("{n:04}-{transport}.rec"))).expect("create");
        Recorder(Arc::new(Mutex::new(file)))
    }

    fn record(&self, direction: u8, bytes: &[u8]) {
        let mut file = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut record = vec![direction];
        record.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        record.extend_from_slice(bytes);
        file.write_all(&record).expect("write a record");
    }
}

fn proxy(dir: &Path, listen: [SocketAddr; 3], upstream: [SocketAddr; 2]) {
    fs::create_dir_all(dir).expect("create the recording directory");
    let [udp, tcp, tls] = listen;
    let [up_udp, up_tcp] = upstream;
    let udp = UdpSocket::bind(udp).expect("bind UDP");
    let tcp = TcpListener::bind(tcp).expect("bind TCP");
    let tls = TcpListener::bind(tls).expect("bind TLS");
    let config = tls_config();
    let (d1, d2) = (dir.to_owned(), dir.to_owned());
    thread::spawn(move || accept(tcp, up_tcp, d1, None));
    thread::spawn(move || accept(tls, up_tcp, d2, Some(config)));
    proxy_udp(udp, up_udp, dir);
}

/// UDP: one upstream socket per client address, so that turnpike sees one 5-tuple per client.
fn proxy_udp(listener: UdpSocket, upstream: SocketAddr, dir: &Path) {
    let listener = Arc::new(listener);
    let mut flows: HashMap<SocketAddr, (Arc<UdpSocket>, Recorder)> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, client) = listener.recv_from(&mut buf).expect("receive");
        let (socket, recorder) = flows.entry(client).or_insert_with(|| {
            let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind upstream"));
            socket.connect(upstream).expect("connect upstream");
            let recorder = Recorder::new(dir, "udp");
            let (back, listener, rec) = (socket.clone(), listener.clone(), recorder.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = back.recv(&mut buf) {
                    rec.record(1, &buf[..n]);
                    let _ = listener.send_to(&buf[..n], client);
                }
            });
            (socket, recorder)
        });
        recorder.record(0, &buf[..n]);
        let _ = socket.send(&buf[..n]);
    }
}

fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    dir: PathBuf,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    for client in listener.incoming().flatten() {
        let Ok(server) = TcpStream::connect(upstream) else {
            continue;
        };
        let recorder = Recorder::new(&dir, if tls.is_some() { "tls" } else { "tcp" });
        match &tls {
            None => {
                let (c2, s2, r2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                    recorder.clone(),
                );
                thread::spawn(move || copy(client, server, 0, recorder));
                thread::spawn(move || copy(s2, c2, 1, r2));
            }
            Some(config) => {
                let config = config.clone();
                thread::spawn(move || proxy_tls(client, server, config, recorder));
            }
        }
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream, direction: u8, recorder: Recorder) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        recorder.record(direction, &buf[..n]);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// TLS from the client, plain TCP to turnpike, on one thread with non-blocking sockets.
fn proxy_tls(
    mut client: TcpStream,
    mut server: TcpStream,
    config: Arc<rustls::ServerConfig>,
    recorder: Recorder,
) {
    let Ok(mut tls) = rustls::ServerConnection::new(config) else {
        return;
    };
    let _ = client.set_nonblocking(true);
    let _ = server.set_nonblocking(true);
    let mut buf = vec![0u8; 65_536];
    loop {
        let mut busy = false;
        match tls.read_tls(&mut client) {
            Ok(0) => return,
            Ok(_) => {
                busy = true;
                if tls.process_new_packets().is_err() {
                    return;
                }
                loop {
                    match tls.reader().read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            recorder.record(0, &buf[..n]);
                            if write_fully(&mut server, &buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        match server.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                busy = true;
                recorder.record(1, &buf[..n]);
                if tls.writer().write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        while tls.wants_write() {
            match tls.write_tls(&mut client) {
                Ok(_) => busy = true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        if !busy {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

fn write_fully(socket: &mut TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match socket.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn tls_config() -> Arc<rustls::ServerConfig> {
    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let certified = rcgen::generate_simple_self_signed(names).expect("a certificate");
    let cert = certified.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("certificate and key");
    Arc::new(config)
}

/// A recorded flow: its transport and records in order.
struct Flow {
    name: String,
    transport: String,
    records: Vec<(u8, Vec<u8>)>,
}

fn read_flows(dir: &Path) -> Vec<Flow> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read the recording directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rec"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let bytes = fs::read(&path).expect("read a recording");
            let mut records = Vec::new();
            let mut at = 0;
            while at + 5 <= bytes.len() {
                let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().expect("4")) as usize;
                let end = (at + 5 + len).min(bytes.len());
                records.push((bytes[at], bytes[at + 5..end].to_vec()));
                at = end;
            }
            let name = path
                .file_stem()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            let transport = name.rsplit('-').next().unwrap_or("udp").to_owned();
            Flow {
                name,
                transport,
                records,
            }
        })
        .collect()
}

/// The messages of one direction of a flow: datagrams as they are, streams framed.
fn messages(flow: &Flow, direction: u8) -> Vec<Vec<u8>> {
    let chunks = flow.records.iter().filter(|(d, _)| *d == direction);
    if flow.transport == "udp" {
        return chunks.map(|(_, b)| b.clone()).collect();
    }
    let stream: Vec<u8> = chunks.flat_map(|(_, b)| b.iter().copied()).collect();
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok(Some(frame)) = stun::frame_len(&stream[at..]) {
        let len = match frame {
            Frame::Stun(len) | Frame::ChannelData { len, .. } => len,
        };
        if at + frame.stream_len() > stream.len() {
            break;
        }
        out.push(stream[at..at + len].to_vec());
        at += frame.stream_len();
    }
    out
}

/// What a relayed frame carries: its payload, and a STUN message inside it if there is one.
fn payload(message: &[u8]) -> Option<Vec<u8>> {
    if stun::channel::is_channel_data(message) {
        return ChannelData::parse(message)
            .ok()
            .map(|cd| cd.payload.to_vec());
    }
    let msg = Message::parse(message).ok()?;
    matches!(msg.method(), Method::SEND | Method::DATA)
        .then(|| msg.get(attr::DATA).map(<[u8]>::to_vec))?
}

fn convert(dir: &Path, corpus: &Path) {
    let flows = read_flows(dir);
    let mut seeds: BTreeMap<(&str, String), Vec<u8>> = BTreeMap::new();
    let mut add = |target: &'static str, name: String, bytes: Vec<u8>| {
        seeds.insert((target, name), bytes);
    };
    for flow in &flows {
        for direction in [0, 1] {
            for (i, message) in messages(flow, direction).into_iter().enumerate() {
                let inner = payload(&message).filter(|p| Message::parse(p).is_ok());
                if Message::parse(&message).is_ok() {
                    add(
                        "stun_message",
                        format!("{}-{direction}-{i}", flow.name),
                        message,
                    );
                }
                if let Some(inner) = inner {
                    add(
                        "stun_message",
                        format!("{}-{direction}-{i}-inner", flow.name),
                        inner,
                    );
                }
            }
        }
        for (direction, cuts) in [(0u8, &[0u8][..]), (1, &[2, 0, 99]), (0, &[3, 3, 19, 250])] {
            let mut stream: Vec<u8> = cuts.to_vec();
            for message in messages(flow, direction) {
                stream.extend_from_slice(&message);
                if stun::channel::is_channel_data(&message) {
                    stream.resize(stream.len() + (4 - message.len() % 4) % 4, 0);
                }
                if stream.len() > 16_384 {
                    break;
                }
            }
            let name = format!("{}-{direction}-{}", flow.name, cuts.len());
            add("stream_framing", name, stream);
        }
        add(
            "core_unauthenticated",
            flow.name.clone(),
            core_input(flow, false),
        );
        add(
            "core_authenticated",
            flow.name.clone(),
            core_input(flow, true),
        );
    }
    for ((target, name), bytes) in &seeds {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir).expect("create a corpus directory");
        fs::write(dir.join(name), bytes).expect("write a seed");
    }
    eprintln!(
        "{} flows, {} seeds in {}",
        flows.len(),
        seeds.len(),
        corpus.display()
    );
}

/// The tuple of the harness for a transport.
fn tuple_for(transport: &str) -> u8 {
    match transport {
        "tcp" => 2,
        "tls" => 3,
        _ => 0,
    }
}

/// A core input replaying `flow`: client messages as they were sent (or, `signed`, requests
/// re-signed by the harness), and what the server relayed back as peer datagrams.
fn core_input(flow: &Flow, signed: bool) -> Vec<u8> {
    let tuple = tuple_for(&flow.transport);
    let mut out = vec![0u8];
    let mut tids: HashMap<[u8; 12], u8> = HashMap::new();
    let mut channels: Vec<u16> = Vec::new();
    let mut stream_left: Vec<u8> = Vec::new();
    for (direction, bytes) in &flow.records {
        let received = if flow.transport == "udp" {
            vec![bytes.clone()]
        } else {
            stream_left.extend_from_slice(bytes);
            split_frames(&mut stream_left)
        };
        for message in received {
            if *direction == 1 {
                peer_op(&message, &channels, &mut out);
                continue;
            }
            if let Ok(msg) = Message::parse(&message)
                && msg.method() == Method::CHANNEL_BIND
                && let Some(n) = msg.get(attr::CHANNEL_NUMBER)
                && let Ok(number) = attr::decode_channel_number(n)
                && !channels.contains(&number)
            {
                channels.push(number);
            }
            match Message::parse(&message) {
                Ok(msg) if signed && msg.has_integrity() => {
                    let next = tids.len() as u8;
                    let tid = *tids.entry(msg.transaction_id().0).or_insert(next);
                    signed_op(&msg, tuple, tid, &mut out);
                }
                _ => Op::Client {
                    tuple,
                    data: &message,
                }
                .encode(&mut out),
            }
        }
        Op::Wait { millis: 20 }.encode(&mut out);
    }
    Op::Timeout.encode(&mut out);
    out
}

/// Complete frames at the front of a stream (with their padding), taken out of it.
fn split_frames(stream: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = stun::frame_len(stream) {
        let len = frame.stream_len();
        if len > stream.len() {
            break;
        }
        frames.push(stream.drain(..len).collect());
    }
    frames
}

/// What the server sent on a relayed path becomes the peer datagram that caused it.
fn peer_op(message: &[u8], channels: &[u16], out: &mut Vec<u8>) {
    let Some(data) = payload(message) else {
        return;
    };
    let (peer, port) = match ChannelData::parse(message) {
        Ok(cd) => {
            let index = channels.iter().position(|&n| n == cd.number).unwrap_or(0);
            (1 + 6 * index as u8, 0)
        }
        Err(_) => {
            let port = Message::parse(message)
                .ok()
                .and_then(|m| {
                    let value = m.get(attr::XOR_PEER_ADDRESS)?;
                    attr::decode_xor_address(value, &m.transaction_id()).ok()
                })
                .map_or(0, |a| a.port());
            (0, port)
        }
    };
    Op::Peer {
        allocation: 0,
        peer,
        port,
        data: &data,
    }
    .encode(out);
}

/// A signed request as the authenticated target builds it: its attributes without the
/// credentials, XOR addresses re-encoded for the harness's transaction id.
fn signed_op(msg: &Message<'_>, tuple: u8, tid: u8, out: &mut Vec<u8>) {
    let harness_tid = stun::TransactionId([tid; 12]);
    let mut body = Vec::new();
    for a in msg.attributes() {
        let value = match a.typ {
            attr::USERNAME
            | attr::REALM
            | attr::NONCE
            | attr::MESSAGE_INTEGRITY
            | attr::FINGERPRINT => continue,
            attr::XOR_PEER_ADDRESS | attr::XOR_MAPPED_ADDRESS | attr::XOR_RELAYED_ADDRESS => {
                match attr::decode_xor_address(a.value, &msg.transaction_id()) {
                    Ok(addr) => xor_value(a.typ, addr, harness_tid),
                    Err(_) => a.value.to_vec(),
                }
            }
            _ => a.value.to_vec(),
        };
        body.extend_from_slice(&a.typ.to_be_bytes());
        body.extend_from_slice(&(value.len() as u16).to_be_bytes());
        body.extend_from_slice(&value);
        body.resize(body.len().div_ceil(4) * 4, 0);
    }
    let rest_username = msg.get(attr::USERNAME).is_some_and(|u| u.contains(&b':'));
    let user = if rest_username { 2 } else { 0 };
    let mut flags = user << USER_SHIFT;
    if msg.has_fingerprint() {
        flags |= FINGERPRINT;
    }
    let header = msg.as_bytes();
    Op::Stun {
        tuple,
        message_type: u16::from_be_bytes([header[0], header[1]]),
        tid,
        flags,
        attributes: &body,
    }
    .encode(out);
}

/// The value of an XOR address attribute for `addr` under `tid`.
fn xor_value(typ: u16, addr: SocketAddr, tid: stun::TransactionId) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid).expect("room");
    w.xor_address(typ, addr).expect("room");
    let n = w.finish();
    buf[stun::HEADER_LEN + 4..n].to_vec()
}
