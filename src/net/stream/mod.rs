//! TCP and TLS clients: accepting, framing (RFC 8656 §12.5) and reading with deadlines, and
//! backpressure on the client's requests; writing is [`writer`]'s. What a connection needs of
//! the worker that serves it goes through [`StreamHost`]: this module sees nothing else of it.

mod limits;
mod proxied;
mod proxy;
mod tls;
mod writer;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::config::Transport;
use crate::stun::{self, Frame};
use crate::turn::FiveTuple;

use super::accept::AcceptBackoff;
use super::socket::normalize;

pub(in crate::net) use limits::ConnectionSlot;
use limits::Refused;
pub(crate) use limits::StreamLimits;
use proxied::Admission;
pub(in crate::net) use tls::SharedAcceptor;
pub use tls::tls_acceptor;
use writer::write_loop;
pub(super) use writer::{Pushed, StreamWriter};

/// Unsent bytes the kernel may hold for one client (TCP_NOTSENT_LOWAT). Without it the send
/// buffer of a client that does not read grows by autotuning to `tcp_wmem`'s maximum (4 MiB
/// by default) of kernel memory. Unlike a fixed SO_SNDBUF it does not limit the data in
/// flight, so a client far away still gets the throughput its path allows.
const KERNEL_UNSENT: u32 = 32 * 1024;
/// TLS records rustls may hold unsent for one client (its default is 64 KiB).
const TLS_UNSENT: usize = 16 * 1024;
/// The initial read buffer; it grows for large frames only, and shrinks back once the
/// connection has had no use for more for [`SHRINK_AFTER`].
const INITIAL_READ: usize = 4096;
/// How long a buffer grown by a burst is kept after the burst.
const SHRINK_AFTER: Duration = Duration::from_secs(1);
/// Longest wait between accept attempts while out of descriptors: short, since a TURN client
/// waits for it.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(200);
/// Largest frame: a STUN header and a 16-bit length, or ChannelData padded.
const MAX_FRAME: usize = stun::HEADER_LEN + 65_535 + 4;

/// What a stream connection needs of the worker that serves it. Called on the worker's
/// thread, never while another call is under way.
pub(super) trait StreamHost {
    /// A connection was accepted: frames for `tuple` go to `writer` until
    /// [`StreamHost::closed`]. `false`: another connection has `tuple` (only a PROXY
    /// protocol header can name a client twice), and this one is to be closed.
    fn opened(&self, tuple: FiveTuple, writer: Rc<StreamWriter>) -> bool;
    /// Handles one complete message from the client (STUN or ChannelData). Payloads it
    /// queues for peers go out at [`StreamHost::flush`], which ends each batch. A
    /// [`Handover`] means the message asked to make this a data connection (RFC 6062 §5.4):
    /// nothing more is read as STUN until it is answered.
    fn received(&self, now: Instant, tuple: FiveTuple, message: &[u8]) -> Option<Handover>;
    /// The client sent something that is not STUN/TURN: counted, and the connection closes.
    fn malformed(&self);
    /// Ends a batch of received messages: what they queued for peers goes out.
    fn flush(&self);
    /// Whether the client has an allocation (it may then stay silent).
    fn allocated(&self, tuple: &FiveTuple) -> bool;
    /// The connection ended: the host forgets its writer and the core its allocation.
    fn closed(&self, now: Instant, tuple: &FiveTuple);
}

/// The answer to a ConnectionBind: once its response is queued, `Some` splice to run with the
/// whole connection (it is a data connection now), or `None` (refused: the connection closes
/// after the error response).
pub(in crate::net) type Handover = tokio::sync::oneshot::Receiver<Option<Splicer>>;

/// Runs a data connection's splice, given the connection and the bytes the client sent after
/// its ConnectionBind.
pub(in crate::net) type Splicer = Box<
    dyn FnOnce(
        Box<dyn ClientIo>,
        Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
>;

/// A client connection, TCP or TLS, as a splice takes it.
pub(in crate::net) trait ClientIo: AsyncRead + AsyncWrite + Unpin {}

impl<T: AsyncRead + AsyncWrite + Unpin> ClientIo for T {}

/// How [`read_loop`] ended.
enum ReadEnd {
    /// The client closed, failed, or sent what is not STUN/TURN.
    Closed,
    /// The idle timeout.
    TimedOut,
    /// A ConnectionBind is being answered; the bytes that followed it.
    Handover(Handover, Vec<u8>),
}

/// What a worker's stream connections counted, for its published counters.
#[derive(Debug, Default)]
pub(super) struct StreamCounters {
    rejected: Cell<u64>,
    rejected_per_source: Cell<u64>,
    timeouts: Cell<u64>,
    write_timeouts: Cell<u64>,
    proxy_refused: Cell<u64>,
}

impl StreamCounters {
    /// Connections refused because `max-tcp-connections` was reached.
    pub fn rejected(&self) -> u64 {
        self.rejected.get()
    }

    /// Connections refused because their source had `max-tcp-connections-per-source`.
    pub fn rejected_per_source(&self) -> u64 {
        self.rejected_per_source.get()
    }

    /// Clients closed by `stream-idle-timeout` (no complete message, or no finished
    /// handshake, in time).
    pub fn timeouts(&self) -> u64 {
        self.timeouts.get()
    }

    /// Clients closed because their output made no progress for `stream-idle-timeout`.
    pub fn write_timeouts(&self) -> u64 {
        self.write_timeouts.get()
    }

    /// Connections to a `proxy-protocol` listener closed before they carried a client: from a
    /// source outside `proxy-from`, or without a valid PROXY protocol header.
    pub fn proxy_refused(&self) -> u64 {
        self.proxy_refused.get()
    }
}

fn increment(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
}

/// Accepts connections on a TCP listener of this worker, with TLS when `tls` is set (each
/// handshake uses the certificate current when the connection arrives).
pub(super) async fn accept_loop<H: StreamHost + 'static>(
    host: Rc<H>,
    listener: TcpListener,
    tls: Option<SharedAcceptor>,
    limits: Arc<StreamLimits>,
    counters: Rc<StreamCounters>,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let mut backoff = AcceptBackoff::new("TURN TCP/TLS", MAX_ACCEPT_BACKOFF);
    let Ok(local) = listener.local_addr() else {
        return;
    };
    loop {
        let (stream, client) = backoff.accept(&listener).await;
        let client = normalize(client);
        let admission = limits.admission(transport, local);
        let slot = match &admission {
            Admission::Direct => ConnectionSlot::take(&limits, client.ip()),
            Admission::Proxied(ranges) => {
                if !proxied::trusted(ranges, client.ip()) {
                    // Only the balancers may say who the client is.
                    increment(&counters.proxy_refused);
                    tracing::debug!(%client, "PROXY protocol listener: source not in proxy-from");
                    continue;
                }
                // The source is counted once the header names the client.
                ConnectionSlot::take_node(&limits)
            }
            // A reload is removing the listener.
            Admission::Closing => continue,
        };
        let slot = match slot {
            Ok(slot) => slot,
            // Over a limit: closed at once, before any TLS work.
            Err(Refused::Node) => {
                increment(&counters.rejected);
                continue;
            }
            Err(Refused::Source) => {
                increment(&counters.rejected_per_source);
                continue;
            }
        };
        let Ok(server) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        limit_unsent(&stream);
        let mut tuple = FiveTuple {
            transport,
            client,
            server: normalize(server),
        };
        let host = host.clone();
        let counters = counters.clone();
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
            let mut slot = slot;
            match admission {
                Admission::Proxied(_) => {
                    let mut stream = stream;
                    // The header must arrive within the idle timeout of the accept.
                    let (addresses, rest) = match tokio::time::timeout(
                        idle,
                        proxied::read_header(&mut stream),
                    )
                    .await
                    {
                        Ok(Ok(header)) => header,
                        Ok(Err(error)) => {
                            increment(&counters.proxy_refused);
                            tracing::debug!(%error, balancer = %client, "PROXY protocol header refused");
                            return;
                        }
                        Err(_) => {
                            increment(&counters.timeouts);
                            tracing::debug!(balancer = %client, "PROXY protocol header timed out");
                            return;
                        }
                    };
                    // LOCAL/UNKNOWN (a balancer's health check): the connection's own
                    // addresses stand.
                    if let Some((source, _)) = addresses {
                        tuple.client = normalize(source);
                    }
                    if slot.count_source(tuple.client.ip()).is_err() {
                        increment(&counters.rejected_per_source);
                        return;
                    }
                    let stream = proxied::Prefixed::new(rest, stream);
                    start(&*host, &counters, stream, tuple, tls, idle).await;
                }
                _ => start(&*host, &counters, stream, tuple, tls, idle).await,
            }
            drop(slot);
        });
    }
}

/// Serves an accepted connection: the TLS handshake first (within `idle`) when `tls` is set.
async fn start<S>(
    host: &impl StreamHost,
    counters: &StreamCounters,
    stream: S,
    tuple: FiveTuple,
    tls: Option<Arc<tokio_rustls::TlsAcceptor>>,
    idle: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    match tls {
        None => serve(host, counters, stream, tuple, idle).await,
        Some(acceptor) => match tokio::time::timeout(idle, acceptor.accept(stream)).await {
            Ok(Ok(mut stream)) => {
                stream.get_mut().1.set_buffer_limit(Some(TLS_UNSENT));
                serve(host, counters, stream, tuple, idle).await
            }
            Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
            Err(_) => {
                increment(&counters.timeouts);
                tracing::debug!("TLS handshake timed out");
            }
        },
    }
}

/// Sets TCP_NOTSENT_LOWAT (see [`KERNEL_UNSENT`]); a kernel without it (before 3.12) leaves
/// the send buffer as it was.
fn limit_unsent(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let value: libc::c_int = KERNEL_UNSENT as libc::c_int;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local; the descriptor
    // belongs to `stream`, which outlives the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Serves one client connection until it closes, sends something that is not STUN/TURN, does
/// not read what it is sent (see [`write_loop`]), or misses a deadline of [`read_loop`]: a
/// slowloris client cannot hold a connection.
async fn serve<S>(
    host: &impl StreamHost,
    counters: &StreamCounters,
    stream: S,
    tuple: FiveTuple,
    idle: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (mut reader, writer_half) = tokio::io::split(stream);
    let writer = Rc::new(StreamWriter::new());
    if !host.opened(tuple, writer.clone()) {
        // A PROXY protocol header named a client another connection of this worker has.
        increment(&counters.proxy_refused);
        return;
    }
    let write_task = tokio::task::spawn_local(write_loop(writer.clone(), writer_half, idle));
    let ended = read_loop(host, &mut reader, &writer, tuple, idle).await;
    let splice = match ended {
        ReadEnd::Closed => None,
        ReadEnd::TimedOut => {
            increment(&counters.timeouts);
            None
        }
        // Answered by the worker that holds the peer connection, within its answer time.
        ReadEnd::Handover(answer, early) => match tokio::time::timeout(idle, answer).await {
            Ok(Ok(Some(splicer))) => Some((splicer, early)),
            _ => None,
        },
    };
    if splice.is_some() {
        // The success response goes out; the connection is not shut down after it.
        writer.hand_over();
    }
    writer.close();
    host.closed(Instant::now(), &tuple);
    let half = write_task.await;
    if writer.stalled() {
        increment(&counters.write_timeouts);
    }
    if let (Some((splicer, early)), Ok(Some(half))) = (splice, half) {
        let stream = reader.unsplit(half);
        splicer(Box::new(stream), early).await;
    }
}

/// Reads and handles the client's frames until the connection ends, by the idle timeout, or
/// by a ConnectionBind.
///
/// Deadlines: a client without an allocation must send a complete message every `idle`; one
/// with an allocation may stay silent, but a message it has started must be complete within
/// `idle` of its first byte's arrival.
async fn read_loop<R>(
    host: &impl StreamHost,
    reader: &mut R,
    writer: &StreamWriter,
    tuple: FiveTuple,
    idle: Duration,
) -> ReadEnd
where
    R: AsyncRead + Unpin,
{
    let mut buf = vec![0u8; INITIAL_READ];
    // buf[start..filled] is received and not handled yet.
    let mut start = 0;
    let mut filled = 0;
    let mut last_message = Instant::now();
    // When the first byte of the message not yet complete arrived.
    let mut partial_since: Option<Instant> = None;
    // When the buffer last held more than its initial size.
    let mut needed_large = Instant::now();
    loop {
        // Handle the complete frames in hand; a STUN message (which may be answered) only
        // while the client's output has room.
        let now = Instant::now();
        let mut paused = false;
        let handled_from = start;
        {
            let _lines = crate::logbuf::Hold::begin();
            while start < filled {
                let pending = &buf[start..filled];
                let (message, advance, stun) = match stun::frame_len(pending) {
                    Ok(Some(Frame::Stun(len))) => (len, len, true),
                    Ok(Some(Frame::ChannelData { len, padded })) => (len, padded, false),
                    Ok(None) => break,
                    Err(_) => {
                        host.malformed();
                        host.flush();
                        return ReadEnd::Closed;
                    }
                };
                if advance > pending.len() {
                    break;
                }
                if stun && writer.is_full() {
                    paused = true;
                    break;
                }
                let handover = host.received(now, tuple, &pending[..message]);
                start += advance;
                last_message = now;
                if let Some(answer) = handover {
                    host.flush();
                    return ReadEnd::Handover(answer, buf[start..filled].to_vec());
                }
            }
            host.flush();
        }
        if writer.is_closed() {
            return ReadEnd::Closed;
        }
        if paused {
            writer.wait_for_room().await;
            continue;
        }
        if start == filled {
            partial_since = None;
        } else if start > handled_from {
            // A message ended in what was just handled: the rest began after it.
            partial_since = Some(now);
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        start = 0;
        if filled == buf.len() {
            if buf.len() >= MAX_FRAME {
                return ReadEnd::Closed;
            }
            buf.resize((buf.len() * 2).min(MAX_FRAME), 0);
            needed_large = now;
        }
        // Room is left for a read: a shrunk buffer must not be full.
        if buf.len() > INITIAL_READ && filled < INITIAL_READ && now >= needed_large + SHRINK_AFTER {
            buf.truncate(INITIAL_READ);
            buf.shrink_to_fit();
        }

        let allocated = host.allocated(&tuple);
        let deadline = match (allocated, partial_since) {
            (false, _) => Some(last_message + idle),
            (true, Some(since)) => Some(since + idle),
            (true, None) => None,
        };
        // Wake to shrink a buffer a burst grew, and, while the client may stay silent, to see
        // whether its allocation has ended (after which it may not).
        let wake_at = [
            deadline,
            (buf.len() > INITIAL_READ && filled < INITIAL_READ)
                .then(|| needed_large + SHRINK_AFTER),
            (deadline.is_none()).then(|| now + idle),
        ]
        .into_iter()
        .flatten()
        .min();
        let read = tokio::select! {
            biased;
            read = reader.read(&mut buf[filled..]) => Some(read),
            // The writer stopped (the client does not read), or spurious.
            _ = writer.reader_woken() => None,
            _ = sleep_until(wake_at) => None,
        };
        match read {
            None => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return ReadEnd::TimedOut;
                }
            }
            Some(Ok(0) | Err(_)) => return ReadEnd::Closed,
            Some(Ok(n)) => {
                if filled == 0 {
                    partial_since = Some(Instant::now());
                }
                filled += n;
                if filled > INITIAL_READ {
                    needed_large = Instant::now();
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
