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

//!
//! The files: [`config`](ClientConfig) (what to connect to, as whom, with what timing),
//! `transaction` (one request until its answer), [`Signer`] (the long-term credentials,
//! without I/O), `data` (relayed data found in a frame), `link` (the socket or stream),
//! `tls` and `error`.

mod config;
mod data;
mod error;
mod link;
mod signer;
mod tls;
mod transaction;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, UdpSocket};

pub use config::{ClientConfig, Credentials, Timing, Transport};
pub use data::Received;
pub use error::{ClientError, method_name};
pub use signer::{AUTH_RETRIES, Signer};
pub use tls::{ClientTls, TlsVerify};

use crate::stun::channel::{CHANNEL_DATA_HEADER_LEN, is_valid_channel_number};
use crate::stun::{self, Class, HEADER_LEN, MessageWriter, Method, StunError, attr};
use data::classify;
use link::{Link, StreamLink};
use transaction::random_tid;

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

/// A TURN client on one connection to one server. See the [module docs](self).
pub struct Client {
    link: Link,
    server: SocketAddr,
    transport: Transport,
    timing: Timing,
    /// The credentials and what the server said of them (realm, nonce).
    signer: Signer,
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
            signer: Signer::new(&username, &password),
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
        self.signer.username()
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

/// A LIFETIME attribute value: whole seconds, saturating.
fn lifetime_seconds(lifetime: Duration) -> u32 {
    u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX)
}
