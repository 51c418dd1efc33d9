//! A minimal TURN client over UDP, TCP or TLS, built with turnpike's own codec (which the RFC
//! 5769 vectors check): long-term credentials with the nonce dance (the library client's
//! sans-IO [`Signer`]), retransmission on UDP like a real client, ChannelData and Send
//! indications. The behaviour under test is the server's.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use turnpike::client::Signer;
use turnpike::stun::{self, Class, Frame, Message, MessageWriter, Method, TransactionId, attr};

/// The realm of every test configuration.
pub const REALM: &str = "turnpike.test";

/// How long a request may go unanswered, retransmissions included.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// UDP retransmission: the first timeout, doubled after each try up to the cap (RFC 8489
/// §6.2.1 starts at 500 ms; loopback deserves less).
const FIRST_RTO: Duration = Duration::from_millis(250);
const MAX_RTO: Duration = Duration::from_secs(2);

/// Makes transaction ids unique across the clients of one test process.
static CLIENTS: AtomicU32 = AtomicU32::new(1);

enum Link {
    Udp {
        socket: UdpSocket,
        server: SocketAddr,
    },
    Tcp {
        stream: TcpStream,
        unread: Vec<u8>,
    },
    Tls {
        stream: Box<super::tls::TlsStream>,
        unread: Vec<u8>,
    },
}

/// A server's answer to one request.
#[derive(Debug)]
pub struct Answer {
    pub class: Class,
    /// The ERROR-CODE of an error response.
    pub code: Option<u16>,
    pub bytes: Vec<u8>,
}

impl Answer {
    pub fn xor_address(&self, typ: u16) -> Option<SocketAddr> {
        let msg = Message::parse(&self.bytes).ok()?;
        attr::decode_xor_address(msg.get(typ)?, &msg.transaction_id()).ok()
    }

    /// Every address attribute of type `typ`, in order (a dual allocation's two
    /// XOR-RELAYED-ADDRESS, say); one that does not decode fails the test.
    pub fn xor_addresses(&self, typ: u16) -> Vec<SocketAddr> {
        let msg = Message::parse(&self.bytes).expect("the answer parsed before");
        msg.attributes()
            .filter(|a| a.typ == typ)
            .map(|a| {
                attr::decode_xor_address(a.value, &msg.transaction_id())
                    .expect("a well-formed address attribute")
            })
            .collect()
    }

    /// The family (0x01 IPv4, 0x02 IPv6) and code of ADDRESS-ERROR-CODE (RFC 8656 §18.13).
    pub fn address_error(&self) -> Option<(u8, u16)> {
        let msg = Message::parse(&self.bytes).ok()?;
        let (family, code, _) = attr::decode_address_error_code(msg.get(attr::ADDRESS_ERROR_CODE)?)
            .expect("a well-formed ADDRESS-ERROR-CODE");
        Some((family, code))
    }
}

/// One client transport address with one set of credentials.
pub struct StunClient {
    link: Link,
    signer: Signer,
    id: u32,
    sequence: u64,
    /// The server closed the TCP connection.
    closed: bool,
    /// The bytes of the last request sent.
    last_request: Vec<u8>,
}

impl StunClient {
    /// A client on a fresh UDP socket bound to `local` (e.g. "127.0.0.1:0").
    pub fn udp(server: SocketAddr, local: &str, username: &str, password: &str) -> Self {
        let socket = UdpSocket::bind(local).unwrap_or_else(|e| panic!("bind UDP {local}: {e}"));
        Self::new(Link::Udp { socket, server }, username, password)
    }

    /// A client on a fresh TCP connection.
    pub fn tcp(server: SocketAddr, username: &str, password: &str) -> Self {
        let stream = TcpStream::connect_timeout(&server, ANSWER_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {server}: {e}"));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        let link = Link::Tcp {
            stream,
            unread: Vec::new(),
        };
        Self::new(link, username, password)
    }

    /// A client on a fresh TCP connection from `local` (e.g. 127.0.0.2), bound before connecting.
    pub fn tcp_from(server: SocketAddr, local: IpAddr, username: &str, password: &str) -> Self {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(server),
            socket2::Type::STREAM,
            None,
        )
        .expect("a TCP socket");
        socket
            .bind(&SocketAddr::new(local, 0).into())
            .unwrap_or_else(|e| panic!("bind {local}: {e}"));
        socket
            .connect_timeout(&server.into(), ANSWER_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {server} from {local}: {e}"));
        let stream = TcpStream::from(socket);
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        let link = Link::Tcp {
            stream,
            unread: Vec::new(),
        };
        Self::new(link, username, password)
    }

    /// A client on a TCP connection already open (e.g. one a PROXY protocol header was
    /// written to).
    pub fn over_tcp(stream: TcpStream, username: &str, password: &str) -> Self {
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        let link = Link::Tcp {
            stream,
            unread: Vec::new(),
        };
        Self::new(link, username, password)
    }

    /// A client doing TLS on a TCP connection already open (handshake done here; any
    /// certificate accepted).
    pub fn over_tls(stream: TcpStream, username: &str, password: &str) -> Self {
        let link = Link::Tls {
            stream: Box::new(super::tls::connect_over(stream)),
            unread: Vec::new(),
        };
        Self::new(link, username, password)
    }

    /// The UDP socket (UDP clients only), e.g. to shrink its receive buffer.
    pub fn udp_socket(&self) -> &UdpSocket {
        match &self.link {
            Link::Udp { socket, .. } => socket,
            _ => panic!("not a UDP client"),
        }
    }

    /// The TCP connection (TCP clients only), e.g. to write to it without blocking.
    pub fn tcp_stream(&self) -> &TcpStream {
        match &self.link {
            Link::Tcp { stream, .. } => stream,
            _ => panic!("not a TCP client"),
        }
    }

    /// The bytes of the last request sent: sent again as they are, they are a retransmission.
    pub fn last_request(&self) -> &[u8] {
        &self.last_request
    }

    /// A client on a fresh TLS connection (handshake done; any certificate accepted).
    pub fn tls(server: SocketAddr, username: &str, password: &str) -> Self {
        let link = Link::Tls {
            stream: Box::new(super::tls::connect(server)),
            unread: Vec::new(),
        };
        Self::new(link, username, password)
    }

    /// The DER of the certificate the server presented (TLS clients only).
    pub fn tls_certificate(&self) -> Vec<u8> {
        match &self.link {
            Link::Tls { stream, .. } => super::tls::peer_certificate(stream),
            _ => panic!("not a TLS client"),
        }
    }

    fn new(link: Link, username: &str, password: &str) -> Self {
        StunClient {
            link,
            signer: Signer::new(username, password),
            id: CLIENTS.fetch_add(1, Ordering::Relaxed),
            sequence: 0,
            closed: false,
            last_request: Vec::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        match &self.link {
            Link::Udp { socket, .. } => socket.local_addr(),
            Link::Tcp { stream, .. } => stream.local_addr(),
            Link::Tls { stream, .. } => stream.sock.local_addr(),
        }
        .expect("local address")
    }

    fn next_tid(&mut self) -> TransactionId {
        self.sequence += 1;
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&self.id.to_be_bytes());
        tid[4..].copy_from_slice(&self.sequence.to_be_bytes());
        TransactionId(tid)
    }

    /// Sends a request with `attrs`, signed once the server has given a realm and nonce (a 401
    /// or 438 is retried as the [`Signer`] says), and returns the final answer.
    pub fn request(&mut self, method: Method, attrs: &dyn Fn(&mut MessageWriter<'_>)) -> Answer {
        let mut retries = 0;
        loop {
            let tid = self.next_tid();
            let mut buf = [0u8; 1500];
            let mut w = MessageWriter::new(&mut buf, method, Class::Request, tid)
                .expect("the buffer holds a header");
            attrs(&mut w);
            self.signer.sign(&mut w).expect("the credentials fit");
            w.fingerprint().expect("FINGERPRINT fits");
            let n = w.finish();
            self.last_request = buf[..n].to_vec();
            let answer = self.transact(&buf[..n], tid);
            let msg = Message::parse(&answer.bytes).expect("the answer parsed before");
            if !self.signer.retry(&msg, retries) {
                return answer;
            }
            retries += 1;
        }
    }

    /// Sends `request` (retransmitting it on UDP) until the answer with `tid` arrives.
    fn transact(&mut self, request: &[u8], tid: TransactionId) -> Answer {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut rto = FIRST_RTO;
        loop {
            self.send_frame(request);
            // A stream delivers the request once: wait for its answer until the deadline.
            let retransmit_at = match self.link {
                Link::Udp { .. } => (Instant::now() + rto).min(deadline),
                Link::Tcp { .. } | Link::Tls { .. } => deadline,
            };
            while let Some(frame) = self.recv_frame(retransmit_at) {
                let Ok(msg) = Message::parse(&frame) else {
                    continue; // ChannelData, or a stray datagram.
                };
                if msg.transaction_id() != tid || msg.class() == Class::Indication {
                    continue;
                }
                let code = msg
                    .get(attr::ERROR_CODE)
                    .and_then(|v| attr::decode_error_code(v).ok())
                    .map(|(code, _)| code);
                return Answer {
                    class: msg.class(),
                    code,
                    bytes: frame,
                };
            }
            assert!(
                Instant::now() < deadline && matches!(self.link, Link::Udp { .. }),
                "no answer to transaction {tid:?} within {:?}{}",
                ANSWER_TIMEOUT - deadline.saturating_duration_since(Instant::now()),
                if self.closed {
                    " (the server closed the connection)"
                } else {
                    ""
                }
            );
            rto = (rto * 2).min(MAX_RTO);
        }
    }

    /// Sends one frame: a datagram on UDP; on TCP and TLS, the bytes as they are (callers pad
    /// ChannelData).
    pub fn send_frame(&mut self, frame: &[u8]) {
        match &mut self.link {
            Link::Udp { socket, server } => {
                // A full socket buffer loses the datagram, as the network would.
                let _ = socket.send_to(frame, *server);
            }
            Link::Tcp { stream, .. } => stream.write_all(frame).expect("write to the server"),
            Link::Tls { stream, .. } => {
                stream.write_all(frame).expect("write to the server");
                stream.flush().expect("flush to the server");
            }
        }
    }

    /// The next datagram or stream frame from the server, or `None` at `deadline` (or when the
    /// server closed the stream).
    pub fn recv_frame(&mut self, deadline: Instant) -> Option<Vec<u8>> {
        let mut buf = [0u8; 65536];
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return None;
            }
            match &mut self.link {
                Link::Udp { socket, server } => {
                    socket.set_read_timeout(Some(wait)).expect("set a timeout");
                    match socket.recv_from(&mut buf) {
                        Ok((n, from)) if from == *server => return Some(buf[..n].to_vec()),
                        Ok(_) => {}
                        Err(e) if is_timeout(&e) => return None,
                        Err(e) => panic!("receive from the server: {e}"),
                    }
                }
                Link::Tcp { stream, unread } => {
                    if let Some(frame) = next_stream_frame(unread) {
                        return Some(frame);
                    }
                    stream.set_read_timeout(Some(wait)).expect("set a timeout");
                    match read_stream(stream, &mut buf, unread) {
                        Some(true) => {}
                        Some(false) => return None,
                        None => {
                            self.closed = true;
                            return None;
                        }
                    }
                }
                Link::Tls { stream, unread } => {
                    if let Some(frame) = next_stream_frame(unread) {
                        return Some(frame);
                    }
                    stream
                        .sock
                        .set_read_timeout(Some(wait))
                        .expect("set a timeout");
                    match read_stream(stream, &mut buf, unread) {
                        Some(true) => {}
                        Some(false) => return None,
                        None => {
                            self.closed = true;
                            return None;
                        }
                    }
                }
            }
        }
    }

    /// The connection as a raw byte stream, and the bytes read past the last frame: a TCP
    /// relay's data connection once its ConnectionBind succeeded (RFC 6062 §5.4).
    pub fn into_raw(self) -> (RawStream, Vec<u8>) {
        match self.link {
            Link::Udp { .. } => panic!("not a stream client"),
            Link::Tcp { stream, unread } => (RawStream::Tcp(stream), unread),
            Link::Tls { stream, unread } => (RawStream::Tls(stream), unread),
        }
    }

    /// Whether the server closes the TCP or TLS connection by `deadline` (frames meanwhile are
    /// skipped).
    pub fn closed_by(&mut self, deadline: Instant) -> bool {
        while !self.closed && self.recv_frame(deadline).is_some() {}
        self.closed
    }

    /// Allocates a UDP relay: its relayed address, or the error code.
    pub fn allocate(&mut self) -> Result<SocketAddr, u16> {
        self.allocate_with(&|w| {
            w.requested_transport(17).expect("fits");
        })
    }

    /// Allocates an IPv6 relay (REQUESTED-ADDRESS-FAMILY 0x02): its relayed address, or the
    /// error code.
    pub fn allocate_v6(&mut self) -> Result<SocketAddr, u16> {
        self.allocate_with(&|w| {
            w.requested_transport(17).expect("fits");
            w.attribute(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
                .expect("fits");
        })
    }

    /// Asks for a dual-stack allocation (ADDITIONAL-ADDRESS-FAMILY 0x02, RFC 8656 §7.2): the
    /// answer, whose relayed addresses [`Answer::xor_addresses`] lists (IPv4 first).
    pub fn allocate_dual(&mut self) -> Answer {
        self.request(Method::ALLOCATE, &|w| {
            w.requested_transport(17).expect("fits");
            w.attribute(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0])
                .expect("fits");
        })
    }

    fn allocate_with(&mut self, attrs: &dyn Fn(&mut MessageWriter<'_>)) -> Result<SocketAddr, u16> {
        let answer = self.request(Method::ALLOCATE, attrs);
        match answer.code {
            None => Ok(answer
                .xor_address(attr::XOR_RELAYED_ADDRESS)
                .expect("an Allocate success has XOR-RELAYED-ADDRESS")),
            Some(code) => Err(code),
        }
    }

    /// Refreshes the allocation with LIFETIME `seconds` (0 deletes it): `None` on success.
    pub fn refresh(&mut self, seconds: u32) -> Option<u16> {
        self.request(Method::REFRESH, &|w| {
            w.u32(attr::LIFETIME, seconds).expect("fits");
        })
        .code
    }

    /// CreatePermission for `peers` in one request: `None` on success.
    pub fn permit(&mut self, peers: &[SocketAddr]) -> Option<u16> {
        self.request(Method::CREATE_PERMISSION, &|w| {
            for &peer in peers {
                w.xor_address(attr::XOR_PEER_ADDRESS, peer).expect("fits");
            }
        })
        .code
    }

    /// ChannelBind `number` to `peer`: `None` on success.
    pub fn bind(&mut self, number: u16, peer: SocketAddr) -> Option<u16> {
        self.request(Method::CHANNEL_BIND, &|w| {
            w.channel_number(number).expect("fits");
            w.xor_address(attr::XOR_PEER_ADDRESS, peer).expect("fits");
        })
        .code
    }

    /// Sends `payload` on channel `number` (padded to 4 bytes on TCP and TLS).
    pub fn send_channel_data(&mut self, number: u16, payload: &[u8]) {
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.extend_from_slice(&number.to_be_bytes());
        frame.extend_from_slice(
            &u16::try_from(payload.len())
                .expect("< 64 KiB")
                .to_be_bytes(),
        );
        frame.extend_from_slice(payload);
        if matches!(self.link, Link::Tcp { .. } | Link::Tls { .. }) {
            frame.resize(frame.len().next_multiple_of(4), 0);
        }
        self.send_frame(&frame);
    }

    /// Sends `payload` to `peer` in a Send indication.
    pub fn send_indication(&mut self, peer: SocketAddr, payload: &[u8]) {
        let tid = self.next_tid();
        let mut buf = vec![0u8; payload.len() + 64];
        let mut w = MessageWriter::new(&mut buf, Method::SEND, Class::Indication, tid)
            .expect("the buffer holds a header");
        w.xor_address(attr::XOR_PEER_ADDRESS, peer).expect("fits");
        w.attribute(attr::DATA, payload).expect("fits");
        let n = w.finish();
        self.send_frame(&buf[..n]);
    }

    /// The payload of the next ChannelData message or Data indication, skipping anything else,
    /// or `None` at `deadline`.
    pub fn recv_data(&mut self, deadline: Instant) -> Option<Vec<u8>> {
        while let Some(frame) = self.recv_frame(deadline) {
            if let Ok(data) = stun::ChannelData::parse(&frame) {
                return Some(data.payload.to_vec());
            }
            if let Ok(msg) = Message::parse(&frame) {
                if msg.method() == Method::DATA && msg.class() == Class::Indication {
                    if let Some(data) = msg.get(attr::DATA) {
                        return Some(data.to_vec());
                    }
                }
            }
        }
        None
    }
}

pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// The next whole STUN message or ChannelData frame buffered in `unread`, if any.
fn next_stream_frame(unread: &mut Vec<u8>) -> Option<Vec<u8>> {
    match stun::frame_len(unread) {
        Ok(Some(frame)) => {
            let (len, advance) = match frame {
                Frame::Stun(len) => (len, len),
                Frame::ChannelData { len, padded } => (len, padded),
            };
            let frame = unread[..len].to_vec();
            unread.drain(..advance);
            Some(frame)
        }
        Ok(None) => None,
        Err(e) => panic!("the server sent a bad frame: {e:?}"),
    }
}

/// Reads once from a stream into `unread`: `Some(true)` when bytes came, `Some(false)` at the
/// read timeout, `None` when the server closed the stream.
fn read_stream(stream: &mut impl Read, buf: &mut [u8], unread: &mut Vec<u8>) -> Option<bool> {
    match stream.read(buf) {
        Ok(0) => None,
        Ok(n) => {
            unread.extend_from_slice(&buf[..n]);
            Some(true)
        }
        Err(e) if is_timeout(&e) => Some(false),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
            ) =>
        {
            None
        }
        Err(e) => panic!("read from the server: {e}"),
    }
}

/// A TCP or TLS connection carrying raw bytes (a TCP relay's data connection).
pub enum RawStream {
    Tcp(TcpStream),
    Tls(Box<super::tls::TlsStream>),
}

impl RawStream {
    pub fn set_read_timeout(&self, timeout: Duration) {
        let socket = match self {
            RawStream::Tcp(stream) => stream,
            RawStream::Tls(stream) => &stream.sock,
        };
        socket
            .set_read_timeout(Some(timeout))
            .expect("set a timeout");
    }
}

impl Read for RawStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            RawStream::Tcp(stream) => stream.read(buf),
            RawStream::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for RawStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            RawStream::Tcp(stream) => stream.write(buf),
            RawStream::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            RawStream::Tcp(stream) => stream.flush(),
            RawStream::Tls(stream) => stream.flush(),
        }
    }
}
