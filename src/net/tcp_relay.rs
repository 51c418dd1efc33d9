//! The sockets of TCP allocations (RFC 6062): a listening socket on the relayed address, the
//! connections to peers made from that same address, and the splice that carries raw bytes
//! between a client data connection and its peer connection, within the allocation's
//! bandwidth. The decisions (who may connect, which connection binds) are the core's.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::config::PortRange;
use crate::turn::{BoundConnection, RelayOpenError};

/// Bytes read at once on either side of a splice.
const SPLICE_CHUNK: usize = 16 * 1024;

/// The relayed addresses of this node's TCP allocations. Their listening sockets and the
/// connections made from them share the address (SO_REUSEPORT), which would also let a second
/// listener onto it: so each address is claimed here first. Touched by Allocate and by the
/// end of an allocation only.
#[derive(Default)]
pub struct TcpPorts {
    taken: Mutex<HashSet<SocketAddr>>,
}

/// An address claimed in [`TcpPorts`], given back when dropped.
pub(super) struct PortClaim {
    ports: Arc<TcpPorts>,
    address: SocketAddr,
}

impl Drop for PortClaim {
    fn drop(&mut self) {
        let mut taken = self.ports.taken.lock().unwrap_or_else(|e| e.into_inner());
        taken.remove(&self.address);
    }
}

/// A TCP relay's listening socket on a port of `range`, claimed in `ports`.
pub(super) fn listen(
    ip: std::net::IpAddr,
    range: PortRange,
    ports: &Arc<TcpPorts>,
) -> Result<(std::net::TcpListener, SocketAddr, PortClaim), RelayOpenError> {
    let size = u32::from(range.last) - u32::from(range.first) + 1;
    let offset = rand::rng().random_range(0..size);
    for i in 0..size {
        let port = range.first + ((offset + i) % size) as u16;
        let address = SocketAddr::new(ip, port);
        {
            let mut taken = ports.taken.lock().unwrap_or_else(|e| e.into_inner());
            if !taken.insert(address) {
                continue;
            }
        }
        let claim = PortClaim {
            ports: ports.clone(),
            address,
        };
        if let Ok(listener) = bind_listener(address) {
            return Ok((listener, address, claim));
        }
    }
    Err(RelayOpenError::NoPort)
}

/// A socket for the relayed address `local`, sharing it with the listener and the other
/// connections made from it.
fn relay_socket(local: SocketAddr) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(local),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if local.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&local.into())?;
    Ok(socket)
}

fn bind_listener(local: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = relay_socket(local)?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// Connects from the relayed address `local` to `peer` (RFC 6062 §5.2: "The local endpoint is
/// the relayed transport address").
pub(super) async fn connect_from(local: SocketAddr, peer: SocketAddr) -> io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::from_std_stream(relay_socket(local)?.into());
    let stream = socket.connect(peer).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Tells the splices of an allocation that it has ended; they may run on any worker.
#[derive(Default)]
pub struct Hangup {
    ended: AtomicBool,
    notify: Notify,
}

impl Hangup {
    pub fn hang_up(&self) {
        self.ended.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Returns once [`Hangup::hang_up`] has been called.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.ended.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// What the splices of one TCP allocation relayed, for its end log line.
#[derive(Default, Debug)]
pub struct SpliceTraffic {
    pub to_peer_bytes: AtomicU64,
    pub to_client_bytes: AtomicU64,
    pub to_peer_chunks: AtomicU64,
    pub to_client_chunks: AtomicU64,
}

/// Which way bytes went through a splice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    ToPeer,
    ToClient,
}

/// The rate limits of a splice and the clock they are read with.
pub(super) struct SpliceLimits {
    pub bound: BoundConnection,
    pub epoch: Instant,
}

impl SpliceLimits {
    /// Waits until `bytes` may go, both limits charged (the allocation's, the user's).
    async fn pace(&self, bytes: usize) {
        let now = Instant::now();
        let now_ns = crate::turn::limits::nanos_since(self.epoch, now);
        let wait = [
            Some(&self.bound.bandwidth),
            self.bound.user_bandwidth.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|rate| rate.delay(now_ns, bytes))
        .max()
        .unwrap_or(0);
        if wait > 0 {
            tokio::time::sleep(Duration::from_nanos(wait)).await;
        }
    }
}

/// Carries raw bytes both ways between a client data connection and a peer connection (RFC
/// 6062 §5.4), `early` (what the client sent after its ConnectionBind) first, until both sides
/// have closed or `hangup` says the allocation ended. Each chunk is paced by `limits` and
/// reported to `count`.
pub(super) async fn splice<C>(
    client: C,
    early: Vec<u8>,
    peer: TcpStream,
    limits: &SpliceLimits,
    hangup: &Hangup,
    traffic: &SpliceTraffic,
    count: &dyn Fn(Direction, usize),
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut peer_read, mut peer_write) = peer.into_split();
    let to_peer = async {
        if !early.is_empty() {
            limits.pace(early.len()).await;
            if peer_write.write_all(&early).await.is_err() {
                return;
            }
            note(traffic, count, Direction::ToPeer, early.len());
        }
        pump(
            &mut client_read,
            &mut peer_write,
            limits,
            traffic,
            count,
            Direction::ToPeer,
        )
        .await;
    };
    let to_client = pump(
        &mut peer_read,
        &mut client_write,
        limits,
        traffic,
        count,
        Direction::ToClient,
    );
    tokio::select! {
        _ = async { tokio::join!(to_peer, to_client) } => {}
        _ = hangup.wait() => {}
    }
}

/// One direction of a splice: reads until end of stream (then shuts the other side's write
/// half, so a half-close goes through) or an error.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    limits: &SpliceLimits,
    traffic: &SpliceTraffic,
    count: &dyn Fn(Direction, usize),
    direction: Direction,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; SPLICE_CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        limits.pace(n).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        note(traffic, count, direction, n);
    }
    let _ = to.shutdown().await;
}

fn note(traffic: &SpliceTraffic, count: &dyn Fn(Direction, usize), direction: Direction, n: usize) {
    let (bytes, chunks) = match direction {
        Direction::ToPeer => (&traffic.to_peer_bytes, &traffic.to_peer_chunks),
        Direction::ToClient => (&traffic.to_client_bytes, &traffic.to_client_chunks),
    };
    bytes.fetch_add(n as u64, Ordering::Relaxed);
    chunks.fetch_add(1, Ordering::Relaxed);
    count(direction, n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_and_connections_share_the_relayed_address_and_listeners_do_not() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let ports = Arc::new(TcpPorts::default());
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = probe.local_addr().unwrap().port();
            drop(probe);
            let range = PortRange {
                first: port,
                last: port,
            };
            let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
            let (listener, local, claim) = listen(ip, range, &ports).expect("a port");
            assert_eq!(local.port(), port);
            // The one port is claimed: no second listener on it.
            assert!(matches!(
                listen(ip, range, &ports),
                Err(RelayOpenError::NoPort)
            ));
            let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let stream = connect_from(local, peer.local_addr().unwrap())
                .await
                .expect("connects from the relayed address");
            let (_, seen) = peer.accept().await.unwrap();
            assert_eq!(seen, local);
            drop((stream, listener, claim));
            assert!(listen(ip, range, &ports).is_ok(), "given back");
        });
    }
}
