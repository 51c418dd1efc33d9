//! TCP and TLS clients: accepting, framing (RFC 8656 §12.5) and writing back.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use crate::config::Transport;
use crate::stun::{self, Frame};
use crate::turn::FiveTuple;

use super::worker::Shared;
use super::{StreamLimits, normalize, source_of};

/// Frames queued for a slow client beyond this are dropped rather than buffered without bound.
const MAX_QUEUED: usize = 1 << 20;
/// Initial read buffer; it grows up to the largest frame only when a client sends one.
const INITIAL_READ: usize = 4096;
/// Largest frame: a STUN header and a 16-bit length, or ChannelData padded.
const MAX_FRAME: usize = stun::HEADER_LEN + 65_535 + 4;

/// The write side of one client connection: frames are queued without blocking the worker and
/// written by the connection's writer task.
pub struct StreamWriter {
    queue: RefCell<Vec<u8>>,
    wake: Notify,
    closed: Cell<bool>,
}

impl StreamWriter {
    fn new() -> Self {
        StreamWriter {
            queue: RefCell::new(Vec::with_capacity(INITIAL_READ)),
            wake: Notify::new(),
            closed: Cell::new(false),
        }
    }

    /// Queues a frame; drops it when the client is not reading fast enough.
    pub fn push(&self, frame: &[u8]) {
        let mut queue = self.queue.borrow_mut();
        if self.closed.get() || queue.len() + frame.len() > MAX_QUEUED {
            return;
        }
        queue.extend_from_slice(frame);
        drop(queue);
        self.wake.notify_one();
    }

    fn close(&self) {
        self.closed.set(true);
        self.wake.notify_one();
    }
}

/// The node's TLS acceptor; swapped whole when a reload brings a new certificate.
pub(super) type SharedAcceptor = Arc<arc_swap::ArcSwapOption<TlsAcceptor>>;

/// Accepts connections on a TCP listener of this worker, with TLS when `tls` is set (each
/// handshake uses the certificate current when the connection arrives).
pub(super) async fn accept_loop(
    shared: Shared,
    listener: TcpListener,
    tls: Option<SharedAcceptor>,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let limits = shared.borrow().streams_limits.clone();
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let client = normalize(client);
        let slot = match ConnectionSlot::take(&limits, client.ip()) {
            Ok(slot) => slot,
            // Over a limit: closed at once, before any TLS work.
            Err(Refused::Node) => {
                shared.borrow_mut().tcp_rejected += 1;
                continue;
            }
            Err(Refused::Source) => {
                shared.borrow_mut().tcp_rejected_per_source += 1;
                continue;
            }
        };
        let Ok(server) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tuple = FiveTuple {
            transport,
            client,
            server: normalize(server),
        };
        let shared = shared.clone();
        let tls = match &tls {
            None => None,
            Some(current) => match current.load_full() {
                Some(acceptor) => Some(acceptor),
                // A TLS listener without a certificate cannot serve anyone.
                None => continue,
            },
        };
        let idle = limits.idle_timeout();
        tokio::task::spawn_local(async move {
            let _slot = slot;
            match tls {
                None => serve(shared, stream, tuple, idle).await,
                Some(acceptor) => match tokio::time::timeout(idle, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve(shared, stream, tuple, idle).await,
                    Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => {
                        shared.borrow_mut().stream_timeouts += 1;
                        tracing::debug!("TLS handshake timed out");
                    }
                },
            }
        });
    }
}

/// Why a connection was refused a slot.
enum Refused {
    /// The node has `max-tcp-connections`.
    Node,
    /// The client's source has `max-tcp-connections-per-source`.
    Source,
}

/// One of the node's `max-tcp-connections` and of its source's
/// `max-tcp-connections-per-source`, given back when dropped.
struct ConnectionSlot {
    limits: Arc<StreamLimits>,
    source: IpAddr,
}

impl ConnectionSlot {
    fn take(limits: &Arc<StreamLimits>, client: IpAddr) -> Result<ConnectionSlot, Refused> {
        limits
            .live
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |live| {
                (live < limits.max_connections.load(Ordering::Relaxed)).then_some(live + 1)
            })
            .map_err(|_| Refused::Node)?;
        let source = source_of(client);
        let cap = limits.max_per_source.load(Ordering::Relaxed);
        let mut sources = limits.sources.lock().unwrap_or_else(|e| e.into_inner());
        let count = sources.get(&source).copied().unwrap_or(0);
        if cap != 0 && count >= cap {
            drop(sources);
            limits.live.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Source);
        }
        sources.insert(source, count + 1);
        Ok(ConnectionSlot {
            limits: limits.clone(),
            source,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        {
            let mut sources = self
                .limits
                .sources
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(count) = sources.get_mut(&self.source) {
                *count -= 1;
                if *count == 0 {
                    sources.remove(&self.source);
                }
            }
        }
        self.limits.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one client connection until it closes, sends something that is not STUN/TURN, or
/// (while it has no allocation, or has sent part of a message) sends no complete message for
/// `idle`: a slowloris client cannot hold a connection.
async fn serve<S>(shared: Shared, stream: S, tuple: FiveTuple, idle: Duration)
where
    S: AsyncRead + AsyncWrite + 'static,
{
    let (mut reader, writer_half) = tokio::io::split(stream);
    let writer = Rc::new(StreamWriter::new());
    shared.borrow_mut().streams.insert(tuple, writer.clone());
    let write_task = tokio::task::spawn_local(write_loop(writer.clone(), writer_half));

    let mut buf = vec![0u8; INITIAL_READ];
    let mut filled = 0;
    let mut last_message = Instant::now();
    'read: loop {
        if filled == buf.len() {
            if buf.len() >= MAX_FRAME {
                break;
            }
            buf.resize((buf.len() * 2).min(MAX_FRAME), 0);
        }
        let may_idle = filled == 0 && shared.borrow().core.allocation_of(&tuple).is_some();
        let read = reader.read(&mut buf[filled..]);
        let result = if may_idle {
            read.await
        } else {
            match tokio::time::timeout_at((last_message + idle).into(), read).await {
                Ok(result) => result,
                Err(_) => {
                    shared.borrow_mut().stream_timeouts += 1;
                    break;
                }
            }
        };
        let n = match result {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        filled += n;
        let mut consumed = 0;
        let now = Instant::now();
        let mut worker = shared.borrow_mut();
        while consumed < filled {
            let pending = &buf[consumed..filled];
            let (message, advance) = match stun::frame_len(pending) {
                Ok(Some(Frame::Stun(len))) => (len, len),
                Ok(Some(Frame::ChannelData { len, padded })) => (len, padded),
                Ok(None) => break,
                Err(_) => {
                    worker.core.record_malformed();
                    break 'read;
                }
            };
            if advance > pending.len() {
                break;
            }
            worker.handle_client(now, tuple, &pending[..message]);
            consumed += advance;
            last_message = now;
        }
        drop(worker);
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;
    }
    writer.close();
    shared
        .borrow_mut()
        .connection_closed(Instant::now(), &tuple);
    let _ = write_task.await;
}

async fn write_loop<W>(writer: Rc<StreamWriter>, mut half: W)
where
    W: AsyncWrite + Unpin,
{
    let mut sending = Vec::with_capacity(INITIAL_READ);
    loop {
        {
            let mut queue = writer.queue.borrow_mut();
            std::mem::swap(&mut *queue, &mut sending);
        }
        if sending.is_empty() {
            if writer.closed.get() {
                break;
            }
            writer.wake.notified().await;
            continue;
        }
        if half.write_all(&sending).await.is_err() {
            writer.closed.set(true);
            break;
        }
        sending.clear();
    }
    let _ = half.shutdown().await;
}

/// Builds the TLS acceptor from PEM files.
pub fn tls_acceptor(
    certificate: &std::path::Path,
    private_key: &std::path::Path,
) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            format!(
                "tls.certificate: cannot read {}: {e}",
                certificate.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "tls.certificate: no certificate in {}",
            certificate.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(private_key).map_err(|e| {
        format!(
            "tls.private-key: cannot read {}: {e}",
            private_key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: certificate and key do not match: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
