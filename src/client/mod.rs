//! A TURN client (RFC 8656) over UDP, TCP or TLS, for load generation, probes and soak runs:
//! long-term or REST credentials, Allocate, Refresh, CreatePermission, ChannelBind, ChannelData
//! and Send/Data indications, retransmission over UDP as RFC 8489 §6.2.1 says.
//!
//! One [`Client`] is one client transport address with one allocation at most. Requests are
//! sent one at a time (`&mut self`); data frames that arrive while a request waits for its
//! answer are kept (up to [`PENDING_FRAMES`] and [`PENDING_BYTES`]) and handed out by the next
//! [`Client::recv`].
//! Sending and receiving data allocate nothing: both use buffers allocated at connect time
//! (over TLS, rustls itself allocates a buffer per record).
//! [`Client::recv`] is cancel-safe, so a load generator can `select!` it against a send timer.

mod error;
mod link;
mod tls;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpSocket, UdpSocket};
use tokio::time::Instant;

pub use error::{ClientError, method_name};
pub use tls::{ClientTls, TlsVerify};

use crate::auth::rest_password;
use crate::stun::channel::{CHANNEL_DATA_HEADER_LEN, is_valid_channel_number};
use crate::stun::{
    self, ChannelData, Class, HEADER_LEN, Message, MessageWriter, Method, StunError, TransactionId,
    attr, long_term_key,
};
use link::{Link, StreamLink};

/// Data frames kept while a request waits for its answer; more are dropped and counted in
/// [`ClientStats::pending_dropped`].
pub const PENDING_FRAMES: usize = 1024;
/// Bytes of data frames kept while a request waits, at most.
pub const PENDING_BYTES: usize = 1 << 20;
/// Buffers of kept frames up to this capacity are reused; larger ones (a hostile server's
/// 64 KiB frames) are freed, so the pool stays small.
const SPARE_CAPACITY: usize = 2048;

/// Largest ChannelData payload.
pub const MAX_CHANNEL_PAYLOAD: usize = 0xFFFF;
/// Largest Send indication payload: the STUN length field (at most 65,532 with attributes
/// 4-byte aligned) less XOR-PEER-ADDRESS (IPv6: 24 bytes) and the DATA attribute header.
pub const MAX_SEND_PAYLOAD: usize = 0xFFFC - 24 - 4;

/// Size of the send buffer: the largest ChannelData frame or STUN message, padding included.
const SEND_BUF_LEN: usize = HEADER_LEN + 0xFFFC;
/// Requests are small: a few addresses, credentials of at most 513 + 763 + 763 bytes.
const REQUEST_BUF_LEN: usize = 4096;
/// How many times a request is re-sent with fresh credentials (401 → with credentials, 438 →
/// with the new nonce) before the error is returned.
const AUTH_RETRIES: u32 = 2;

/// The transport to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            "tls" => Ok(Transport::Tls),
            _ => Err(format!("{s:?}: expected udp, tcp or tls")),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        })
    }
}

/// Who the client is. `Debug` leaves the password and the secret out.
#[derive(Clone)]
pub enum Credentials {
    /// A long-term user: name and password.
    LongTerm { username: String, password: String },
    /// TURN REST API: the username `<now + ttl>:<user>` and its password are minted from the
    /// shared secret when the client connects.
    Rest {
        secret: String,
        user: String,
        ttl: Duration,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::LongTerm { username, .. } => f
                .debug_struct("LongTerm")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Rest { user, ttl, .. } => f
                .debug_struct("Rest")
                .field("secret", &"<redacted>")
                .field("user", user)
                .field("ttl", ttl)
                .finish(),
        }
    }
}

impl Credentials {
    pub fn long_term(username: &str, password: &str) -> Self {
        Credentials::LongTerm {
            username: username.to_owned(),
            password: password.to_owned(),
        }
    }

    pub fn rest(secret: &str, user: &str, ttl: Duration) -> Self {
        Credentials::Rest {
            secret: secret.to_owned(),
            user: user.to_owned(),
            ttl,
        }
    }

    /// The username and password to use now.
    fn resolve(&self) -> (String, String) {
        match self {
            Credentials::LongTerm { username, password } => (username.clone(), password.clone()),
            Credentials::Rest { secret, user, ttl } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let username = format!("{}:{user}", (now + *ttl).as_secs());
                let password = rest_password(secret.as_bytes(), &username);
                (username, password)
            }
        }
    }
}

/// Transaction timing. The defaults are RFC 8489's: over UDP a request is sent up to 7 times
/// (Rc), 500 ms apart at first and doubling, and given up 16 × 500 ms (Rm × RTO) after the last
/// one, 39.5 s in all; over TCP and TLS it is sent once and given up after 39.5 s (Ti).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// The first retransmission timeout (RTO).
    pub rto: Duration,
    /// Transmissions of one request over UDP, the first included (Rc).
    pub transmissions: u32,
    /// After the last transmission, wait this many RTOs (Rm).
    pub last_wait_factor: u32,
    /// How long a request over TCP or TLS may go unanswered (Ti).
    pub stream_timeout: Duration,
    /// How long the TCP connection and TLS handshake may take.
    pub connect_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            rto: Duration::from_millis(500),
            transmissions: 7,
            last_wait_factor: 16,
            stream_timeout: Duration::from_millis(39_500),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything needed to connect.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub server: SocketAddr,
    pub transport: Transport,
    pub credentials: Credentials,
    /// Local address to bind (e.g. `127.0.0.2:0`); `None` binds the unspecified address of the
    /// server's family with an ephemeral port.
    pub local: Option<SocketAddr>,
    /// Required for [`Transport::Tls`].
    pub tls: Option<ClientTls>,
    pub timing: Timing,
}

impl ClientConfig {
    /// A configuration with RFC timing, no local address and no TLS settings.
    pub fn new(server: SocketAddr, transport: Transport, credentials: Credentials) -> Self {
        ClientConfig {
            server,
            transport,
            credentials,
            local: None,
            tls: None,
            timing: Timing::default(),
        }
    }
}

/// A granted allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The relayed transport address peers send to.
    pub relayed: SocketAddr,
    /// The client's address as the server saw it (XOR-MAPPED-ADDRESS), when given.
    pub mapped: Option<SocketAddr>,
    /// The lifetime the server granted.
    pub lifetime: Duration,
}

/// Data relayed from a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// A ChannelData message on a bound channel.
    ChannelData { number: u16, payload: &'a [u8] },
    /// A Data indication from `peer`.
    Data { peer: SocketAddr, payload: &'a [u8] },
}

impl<'a> Received<'a> {
    pub fn payload(&self) -> &'a [u8] {
        match *self {
            Received::ChannelData { payload, .. } | Received::Data { payload, .. } => payload,
        }
    }
}

/// What a client has seen that is not an answer or data it returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests re-sent after an RTO over UDP.
    pub retransmissions: u64,
    /// Frames from the server that were neither a pending answer nor data: unparseable
    /// datagrams, answers to transactions already over, answers failing MESSAGE-INTEGRITY,
    /// other indications.
    pub ignored: u64,
    /// Data frames that arrived while a request waited, kept for [`Client::recv`].
    pub pending_kept: u64,
    /// Data frames dropped because [`PENDING_FRAMES`] or [`PENDING_BYTES`] were already kept
    /// during a request.
    pub pending_dropped: u64,
}

/// Where the long-term key comes from, once the server has said its realm and nonce.
struct Session {
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<Vec<u8>>,
    key: [u8; 16],
}

/// A TURN client on one connection to one server. See the [module docs](self).
pub struct Client {
    link: Link,
    server: SocketAddr,
    transport: Transport,
    timing: Timing,
    session: Session,
    /// The request being sent, kept whole for retransmission.
    request: Box<[u8]>,
    /// The last answer, copied out of the receive buffer.
    answer: Vec<u8>,
    /// ChannelData and Data indications written here before sending.
    send_buf: Box<[u8]>,
    /// Data frames that arrived while a request waited.
    pending: VecDeque<Vec<u8>>,
    /// Bytes in `pending`.
    pending_bytes: usize,
    /// The pending frame [`Client::recv`] returned last; recycled on the next call.
    delivered: Option<Vec<u8>>,
    /// Buffers of delivered pending frames, for reuse.
    spare: Vec<Vec<u8>>,
    /// Whether the last request was sent more than once.
    last_request_retransmitted: bool,
    stats: ClientStats,
}

impl Client {
    /// Opens the connection (TCP connect and TLS handshake within
    /// [`Timing::connect_timeout`]); nothing is sent yet.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let server = config.server;
        let local = config.local.unwrap_or_else(|| match server {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        });
        let after = config.timing.connect_timeout;
        let link = match config.transport {
            Transport::Udp => {
                let socket = UdpSocket::bind(local).await?;
                socket.connect(server).await?;
                Link::udp(socket)
            }
            Transport::Tcp => {
                let stream = tokio::time::timeout(after, tcp_connect(local, server))
                    .await
                    .map_err(|_| ClientError::ConnectTimeout { server, after })??;
                Link::Tcp(StreamLink::new(stream))
            }
            Transport::Tls => {
                let tls = config.tls.as_ref().ok_or_else(|| {
                    ClientError::Config(
                        "TLS needs ClientConfig::tls (roots, or accept any certificate)".into(),
                    )
                })?;
                let (connector, name) = tls.connector(server.ip())?;
                let handshake = async {
                    let stream = tcp_connect(local, server).await?;
                    connector.connect(name, stream).await
                };
                let stream = tokio::time::timeout(after, handshake)
                    .await
                    .map_err(|_| ClientError::ConnectTimeout { server, after })??;
                Link::Tls(Box::new(StreamLink::new(stream)))
            }
        };
        let (username, password) = config.credentials.resolve();
        Ok(Client {
            link,
            server,
            transport: config.transport,
            timing: config.timing,
            session: Session {
                username,
                password,
                realm: None,
                nonce: None,
                key: [0; 16],
            },
            request: vec![0; REQUEST_BUF_LEN].into_boxed_slice(),
            answer: Vec::with_capacity(REQUEST_BUF_LEN),
            send_buf: vec![0; SEND_BUF_LEN].into_boxed_slice(),
            pending: VecDeque::new(),
            pending_bytes: 0,
            delivered: None,
            spare: Vec::new(),
            last_request_retransmitted: false,
            stats: ClientStats::default(),
        })
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The client's local address.
    pub fn local_addr(&self) -> Result<SocketAddr, ClientError> {
        Ok(self.link.local_addr()?)
    }

    /// The username the client authenticates with (minted at connect for REST credentials).
    pub fn username(&self) -> &str {
        &self.session.username
    }

    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// The connected UDP socket (`None` over TCP and TLS), for a caller that moves data itself,
    /// e.g. in batches with `recvmmsg`/`sendmmsg` as the load generator does. While the caller
    /// reads from it, no request may be made through the client: the caller would take its
    /// answer.
    pub fn udp_socket(&self) -> Option<&UdpSocket> {
        self.link.udp_socket()
    }

    /// A Binding request (no credentials): the client's address as the server sees it.
    pub async fn binding(&mut self) -> Result<SocketAddr, ClientError> {
        self.transact_once(Method::BINDING, false, |_| Ok(()))
            .await?;
        let method = Method::BINDING;
        self.answer_address(method, attr::XOR_MAPPED_ADDRESS)?
            .ok_or(ClientError::BadResponse {
                method,
                what: "no XOR-MAPPED-ADDRESS",
            })
    }

    /// Allocates a UDP relay (REQUESTED-TRANSPORT 17), asking for `lifetime` if given, doing
    /// the 401 round trip to learn the realm and nonce, and retrying once on 438.
    pub async fn allocate(
        &mut self,
        lifetime: Option<Duration>,
    ) -> Result<Allocation, ClientError> {
        let method = Method::ALLOCATE;
        let seconds = lifetime.map(lifetime_seconds);
        self.request(method, |w| {
            w.requested_transport(17)?;
            if let Some(seconds) = seconds {
                w.u32(attr::LIFETIME, seconds)?;
            }
            Ok(())
        })
        .await?;
        let relayed = self
            .answer_address(method, attr::XOR_RELAYED_ADDRESS)?
            .ok_or(ClientError::BadResponse {
                method,
                what: "no XOR-RELAYED-ADDRESS",
            })?;
        let mapped = self.answer_address(method, attr::XOR_MAPPED_ADDRESS)?;
        let lifetime = self.answer_lifetime(method)?;
        Ok(Allocation {
            relayed,
            mapped,
            lifetime,
        })
    }

    /// Refreshes the allocation for `lifetime` (zero deletes it): the lifetime granted.
    ///
    /// A Refresh 0 whose answer is 437 after a retransmission counts as done: the first
    /// transmission deleted the allocation and its answer was lost.
    pub async fn refresh(&mut self, lifetime: Duration) -> Result<Duration, ClientError> {
        let method = Method::REFRESH;
        let seconds = lifetime_seconds(lifetime);
        let result = self
            .request(method, |w| w.u32(attr::LIFETIME, seconds))
            .await;
        match result {
            // A deletion needs no LIFETIME in its answer to be understood.
            Ok(()) if seconds == 0 => Ok(self.answer_lifetime(method).unwrap_or_default()),
            Ok(()) => self.answer_lifetime(method),
            Err(ClientError::Response { code: 437, .. })
                if seconds == 0 && self.last_request_retransmitted =>
            {
                Ok(Duration::ZERO)
            }
            Err(e) => Err(e),
        }
    }

    /// Installs or refreshes permissions for the IP addresses of `peers`, in one request.
    pub async fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<(), ClientError> {
        self.request(Method::CREATE_PERMISSION, |w| {
            for &peer in peers {
                w.xor_address(attr::XOR_PEER_ADDRESS, peer)?;
            }
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// Binds channel `number` to `peer`, or refreshes that binding (and the peer's permission).
    pub async fn channel_bind(&mut self, number: u16, peer: SocketAddr) -> Result<(), ClientError> {
        if !is_valid_channel_number(number) {
            return Err(ClientError::BadChannelNumber(number));
        }
        self.request(Method::CHANNEL_BIND, |w| {
            w.channel_number(number)?;
            w.xor_address(attr::XOR_PEER_ADDRESS, peer)
        })
        .await
        .map(|_| ())
    }

    /// Sends `payload` on channel `number` (padded to a multiple of 4 bytes on TCP and TLS).
    /// Allocates nothing.
    pub async fn send_channel_data(
        &mut self,
        number: u16,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        let len = u16::try_from(payload.len()).map_err(|_| ClientError::PayloadTooLarge {
            len: payload.len(),
            max: MAX_CHANNEL_PAYLOAD,
        })?;
        stun::write_channel_data_header(&mut self.send_buf, number, len)
            .map_err(|_| ClientError::BadChannelNumber(number))?;
        let end = CHANNEL_DATA_HEADER_LEN + payload.len();
        let frame_len = if self.link.is_stream() {
            end.next_multiple_of(4)
        } else {
            end
        };
        // SEND_BUF_LEN exceeds the largest padded frame (4 + 65,535 + 1).
        let frame = self
            .send_buf
            .get_mut(..frame_len)
            .ok_or(ClientError::PayloadTooLarge {
                len: payload.len(),
                max: MAX_CHANNEL_PAYLOAD,
            })?;
        let (body, padding) = frame[CHANNEL_DATA_HEADER_LEN..].split_at_mut(payload.len());
        body.copy_from_slice(payload);
        padding.fill(0);
        self.link.send(&self.send_buf[..frame_len]).await
    }

    /// Sends `payload` to `peer` in a Send indication. Allocates nothing.
    pub async fn send_indication(
        &mut self,
        peer: SocketAddr,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        if payload.len() > MAX_SEND_PAYLOAD {
            return Err(ClientError::PayloadTooLarge {
                len: payload.len(),
                max: MAX_SEND_PAYLOAD,
            });
        }
        let tid = random_tid();
        let written = (|| {
            let mut w =
                MessageWriter::new(&mut self.send_buf, Method::SEND, Class::Indication, tid)?;
            w.xor_address(attr::XOR_PEER_ADDRESS, peer)?;
            w.attribute(attr::DATA, payload)?;
            Ok::<_, StunError>(w.finish())
        })();
        let n = written.map_err(|_| ClientError::PayloadTooLarge {
            len: payload.len(),
            max: MAX_SEND_PAYLOAD,
        })?;
        self.link.send(&self.send_buf[..n]).await
    }

    /// The next data relayed from a peer, ChannelData or Data indication; anything else from
    /// the server is skipped (and counted in [`ClientStats::ignored`]). Data that arrived during
    /// a request comes first. Cancel-safe; allocates nothing.
    pub async fn recv(&mut self) -> Result<Received<'_>, ClientError> {
        if let Some(done) = self.delivered.take() {
            self.recycle(done);
        }
        while let Some(frame) = self.pending.pop_front() {
            self.pending_bytes -= frame.len();
            if let Some(data) = classify(&frame) {
                let frame = self.delivered.insert(frame);
                return Ok(data.borrow(frame));
            }
            self.recycle(frame);
        }
        let (range, data) = loop {
            let range = self.link.recv_frame().await?;
            match classify(self.link.bytes(range.clone())) {
                Some(data) => break (range, data),
                None => self.stats.ignored += 1,
            }
        };
        Ok(data.borrow(self.link.bytes(range)))
    }

    /// Keeps the buffer of a delivered frame for the next one, unless it is large.
    fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() <= SPARE_CAPACITY {
            self.spare.push(buf);
        }
    }

    /// Sends a request that needs credentials: first as the session allows (unauthenticated
    /// until the server has named its realm and nonce), again with credentials after a 401 and
    /// with the new nonce after a 438. On success the answer is in `self.answer`.
    async fn request(
        &mut self,
        method: Method,
        attrs: impl Fn(&mut MessageWriter<'_>) -> Result<(), StunError>,
    ) -> Result<(), ClientError> {
        let mut retries = 0;
        loop {
            let authenticated = self.session.nonce.is_some();
            let result = self.transact_once(method, authenticated, &attrs).await;
            let challenged = match &result {
                Err(ClientError::Response { code: 438, .. }) => true,
                Err(ClientError::Response { code: 401, .. }) => !authenticated,
                _ => false,
            };
            if challenged && retries < AUTH_RETRIES && self.learn_challenge() {
                retries += 1;
                continue;
            }
            return result;
        }
    }

    /// Takes REALM and NONCE from the 401 or 438 in `self.answer`: whether a retry can use
    /// them (both present, UTF-8, at most 763 bytes as RFC 8489 says; a 438 must bring a new
    /// nonce, or retrying would loop).
    fn learn_challenge(&mut self) -> bool {
        let Ok(msg) = Message::parse(&self.answer) else {
            return false;
        };
        let text = |typ| {
            msg.get(typ)
                .and_then(|v| attr::decode_text(v, attr::MAX_TEXT_LEN).ok())
        };
        let (Some(realm), Some(nonce)) = (text(attr::REALM), text(attr::NONCE)) else {
            return false;
        };
        if self.session.nonce.as_deref() == Some(nonce.as_bytes()) {
            return false;
        }
        if self.session.realm.as_deref() != Some(realm) {
            self.session.key = long_term_key(&self.session.username, realm, &self.session.password);
            self.session.realm = Some(realm.to_owned());
        }
        self.session.nonce = Some(nonce.as_bytes().to_vec());
        true
    }

    /// One transaction: writes the request (with credentials if `authenticated`) and sends it
    /// until an answer with its transaction ID arrives or the timeout passes. The answer is
    /// left in `self.answer`; an error answer becomes [`ClientError::Response`].
    async fn transact_once(
        &mut self,
        method: Method,
        authenticated: bool,
        attrs: impl Fn(&mut MessageWriter<'_>) -> Result<(), StunError>,
    ) -> Result<(), ClientError> {
        let tid = random_tid();
        let len = self
            .write_request(method, tid, authenticated, attrs)
            .map_err(|_| {
                ClientError::Config(format!(
                    "{} request does not fit in {REQUEST_BUF_LEN} bytes",
                    method_name(method)
                ))
            })?;
        let started = Instant::now();
        let udp = !self.link.is_stream();
        let mut rto = self.timing.rto;
        let mut sent = 0;
        self.last_request_retransmitted = false;
        loop {
            self.link.send(&self.request[..len]).await?;
            sent += 1;
            let wait = if !udp {
                self.timing.stream_timeout
            } else if sent < self.timing.transmissions {
                rto
            } else {
                self.timing.rto * self.timing.last_wait_factor
            };
            if self
                .await_answer(method, tid, authenticated, Instant::now() + wait)
                .await?
            {
                break;
            }
            if !udp || sent >= self.timing.transmissions {
                return Err(ClientError::Timeout {
                    method,
                    after: started.elapsed(),
                });
            }
            self.stats.retransmissions += 1;
            self.last_request_retransmitted = true;
            rto *= 2;
        }
        let msg = Message::parse(&self.answer).map_err(|_| ClientError::BadResponse {
            method,
            what: "unparseable",
        })?;
        if msg.class() == Class::Success {
            return Ok(());
        }
        let (code, reason) = msg
            .get(attr::ERROR_CODE)
            .and_then(|v| attr::decode_error_code(v).ok())
            .ok_or(ClientError::BadResponse {
                method,
                what: "error response without a valid ERROR-CODE",
            })?;
        let alternate = msg
            .get(attr::ALTERNATE_SERVER)
            .and_then(|v| attr::decode_address(v).ok());
        Err(ClientError::Response {
            method,
            code,
            reason: reason.to_owned(),
            alternate,
        })
    }

    /// Writes the request into `self.request`: its size.
    fn write_request(
        &mut self,
        method: Method,
        tid: TransactionId,
        authenticated: bool,
        attrs: impl Fn(&mut MessageWriter<'_>) -> Result<(), StunError>,
    ) -> Result<usize, StunError> {
        let mut w = MessageWriter::new(&mut self.request, method, Class::Request, tid)?;
        attrs(&mut w)?;
        if authenticated {
            let session = &self.session;
            w.attribute(attr::USERNAME, session.username.as_bytes())?;
            w.attribute(
                attr::REALM,
                session.realm.as_deref().unwrap_or_default().as_bytes(),
            )?;
            w.attribute(attr::NONCE, session.nonce.as_deref().unwrap_or_default())?;
            w.message_integrity(&session.key)?;
        }
        w.fingerprint()?;
        Ok(w.finish())
    }

    /// Reads frames until the answer to `tid` arrives (`true`, copied into `self.answer`) or
    /// `deadline` passes (`false`). Data frames meanwhile are kept for [`Client::recv`].
    async fn await_answer(
        &mut self,
        method: Method,
        tid: TransactionId,
        authenticated: bool,
        deadline: Instant,
    ) -> Result<bool, ClientError> {
        loop {
            let range = match tokio::time::timeout_at(deadline, self.link.recv_frame()).await {
                Err(_) => return Ok(false),
                Ok(frame) => frame?,
            };
            let frame = self.link.bytes(range);
            if classify(frame).is_some() {
                if self.pending.len() < PENDING_FRAMES
                    && self.pending_bytes + frame.len() <= PENDING_BYTES
                {
                    let mut copy = self.spare.pop().unwrap_or_default();
                    copy.clear();
                    copy.extend_from_slice(frame);
                    self.pending_bytes += copy.len();
                    self.pending.push_back(copy);
                    self.stats.pending_kept += 1;
                } else {
                    self.stats.pending_dropped += 1;
                }
                continue;
            }
            if is_answer(frame, method, tid, authenticated, &self.session.key) {
                self.answer.clear();
                self.answer.extend_from_slice(frame);
                return Ok(true);
            }
            self.stats.ignored += 1;
        }
    }

    /// An address attribute of the success answer in `self.answer`.
    fn answer_address(&self, method: Method, typ: u16) -> Result<Option<SocketAddr>, ClientError> {
        let msg = Message::parse(&self.answer).map_err(|_| ClientError::BadResponse {
            method,
            what: "unparseable",
        })?;
        match msg.get(typ) {
            None => Ok(None),
            Some(value) => attr::decode_xor_address(value, &msg.transaction_id())
                .map(Some)
                .map_err(|_| ClientError::BadResponse {
                    method,
                    what: "malformed address attribute",
                }),
        }
    }

    /// LIFETIME of the success answer in `self.answer`.
    fn answer_lifetime(&self, method: Method) -> Result<Duration, ClientError> {
        let bad = ClientError::BadResponse {
            method,
            what: "no valid LIFETIME",
        };
        let msg = Message::parse(&self.answer).map_err(|_| ClientError::BadResponse {
            method,
            what: "unparseable",
        })?;
        let seconds = msg
            .get(attr::LIFETIME)
            .and_then(|v| attr::decode_u32(v).ok())
            .ok_or(bad)?;
        Ok(Duration::from_secs(u64::from(seconds)))
    }
}

/// Connects a TCP socket bound to `local`.
async fn tcp_connect(
    local: SocketAddr,
    server: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = match server {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if local.port() != 0 || !local.ip().is_unspecified() {
        socket.bind(local)?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Whether `frame` is the answer to our request `tid`: a success or error response of `method`
/// with that transaction ID and, for an authenticated request, a MESSAGE-INTEGRITY that checks
/// under `key` (required on a success; an error may lack it, as 401 and 438 do). Anything else
/// is treated as if it had not arrived (RFC 8489 §9.2.5), so a forged answer cannot end the
/// transaction.
fn is_answer(
    frame: &[u8],
    method: Method,
    tid: TransactionId,
    authenticated: bool,
    key: &[u8],
) -> bool {
    let Ok(msg) = Message::parse(frame) else {
        return false;
    };
    if msg.transaction_id() != tid
        || msg.method() != method
        || !matches!(msg.class(), Class::Success | Class::Error)
    {
        return false;
    }
    if !authenticated {
        return true;
    }
    match (msg.class(), msg.has_integrity()) {
        (_, true) => msg.check_integrity(key).is_ok(),
        (Class::Success, false) => false,
        (_, false) => true,
    }
}

/// Data found in a frame, as ranges of it (so the frame can be re-borrowed).
#[derive(Clone, Copy)]
enum DataFrame {
    ChannelData {
        number: u16,
        payload: (usize, usize),
    },
    Data {
        peer: SocketAddr,
        payload: (usize, usize),
    },
}

impl DataFrame {
    fn borrow(self, frame: &[u8]) -> Received<'_> {
        let slice = |(start, end): (usize, usize)| frame.get(start..end).unwrap_or_default();
        match self {
            DataFrame::ChannelData { number, payload } => Received::ChannelData {
                number,
                payload: slice(payload),
            },
            DataFrame::Data { peer, payload } => Received::Data {
                peer,
                payload: slice(payload),
            },
        }
    }
}

/// Whether `frame` carries relayed data: ChannelData, or a Data indication with a peer
/// address and DATA.
fn classify(frame: &[u8]) -> Option<DataFrame> {
    if stun::channel::is_channel_data(frame) {
        let data = ChannelData::parse(frame).ok()?;
        let start = CHANNEL_DATA_HEADER_LEN;
        return Some(DataFrame::ChannelData {
            number: data.number,
            payload: (start, start + data.payload.len()),
        });
    }
    let msg = Message::parse(frame).ok()?;
    if msg.method() != Method::DATA || msg.class() != Class::Indication {
        return None;
    }
    let peer =
        attr::decode_xor_address(msg.get(attr::XOR_PEER_ADDRESS)?, &msg.transaction_id()).ok()?;
    let data = msg.get(attr::DATA)?;
    let start = offset_in(frame, data)?;
    Some(DataFrame::Data {
        peer,
        payload: (start, start + data.len()),
    })
}

/// Where `part`, a sub-slice of `whole`, starts in it.
fn offset_in(whole: &[u8], part: &[u8]) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some(start)
}

/// A LIFETIME attribute value: whole seconds, saturating.
fn lifetime_seconds(lifetime: Duration) -> u32 {
    u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX)
}

/// A random transaction ID (RFC 8489 §6: uniformly random, 96 bits).
fn random_tid() -> TransactionId {
    TransactionId(rand::random())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_keeps_passwords_and_secrets_out() {
        let long_term = format!("{:?}", Credentials::long_term("alice", "wonderland"));
        assert_eq!(
            long_term,
            r#"LongTerm { username: "alice", password: "<redacted>" }"#
        );
        let rest = Credentials::rest("s3cret-value", "bob", Duration::from_secs(60));
        let config = ClientConfig::new("127.0.0.1:3478".parse().unwrap(), Transport::Udp, rest);
        let text = format!("{config:?}");
        assert!(!text.contains("s3cret-value"), "{text}");
        assert!(text.contains(r#"user: "bob""#), "{text}");
    }

    #[test]
    fn rest_credentials_follow_the_turn_rest_api() {
        let (username, password) =
            Credentials::rest("s3cret", "carol", Duration::from_secs(3600)).resolve();
        let (expiry, user) = username.split_once(':').unwrap();
        assert_eq!(user, "carol");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let expiry: u64 = expiry.parse().unwrap();
        assert!(
            (now + 3590..=now + 3610).contains(&expiry),
            "{expiry} vs {now}"
        );
        assert_eq!(password, rest_password(b"s3cret", &username));
    }

    #[test]
    fn transports_parse_and_print() {
        for name in ["udp", "tcp", "tls"] {
            assert_eq!(name.parse::<Transport>().unwrap().to_string(), name);
        }
        assert!("sctp".parse::<Transport>().is_err());
    }

    #[test]
    fn data_frames_are_classified_without_copying() {
        let mut frame = [0u8; 64];
        stun::write_channel_data_header(&mut frame, 0x4001, 3).unwrap();
        frame[4..7].copy_from_slice(b"abc");
        let data = classify(&frame[..7]).unwrap().borrow(&frame[..7]);
        assert_eq!(
            data,
            Received::ChannelData {
                number: 0x4001,
                payload: b"abc"
            }
        );
        // A Data indication with its peer; one without DATA is not data.
        let peer: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let tid = TransactionId([3; 12]);
        let mut buf = [0u8; 128];
        let mut w = MessageWriter::new(&mut buf, Method::DATA, Class::Indication, tid).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
        w.attribute(attr::DATA, b"hello").unwrap();
        let n = w.finish();
        let data = classify(&buf[..n]).unwrap().borrow(&buf[..n]);
        assert_eq!(
            data,
            Received::Data {
                peer,
                payload: b"hello"
            }
        );
        let mut w = MessageWriter::new(&mut buf, Method::DATA, Class::Indication, tid).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
        let n = w.finish();
        assert!(classify(&buf[..n]).is_none());
        // Truncated and garbage frames are not data either.
        for len in 0..7 {
            assert!(classify(&frame[..len]).is_none(), "{len}");
        }
        assert!(classify(&[0xFF; 32]).is_none());
    }
}
