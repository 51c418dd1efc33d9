//! TCP and TLS clients: accepting, framing (RFC 8656 §12.5) and writing back, with a bounded
//! output queue per connection and backpressure on the client's requests.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use crate::config::Transport;
use crate::stun::{self, Frame};
use crate::turn::FiveTuple;

use super::accept::AcceptBackoff;
use super::worker::Shared;
use super::{StreamLimits, normalize, source_of};

/// Output one connection may hold in turnpike: frames queued plus those being written. One
/// frame of any size fits when nothing is pending (a TURN message or ChannelData is at most
/// 64 KiB + 4); beyond this, relayed frames are dropped and counted, and the client's
/// requests are no longer read until the output has drained to [`QUEUE_LOW_WATER`]. With the
/// [`KERNEL_UNSENT`] bytes the kernel may hold, a slow client has 64 KiB waiting for it: a
/// quarter second of a 2 Mbps stream, beyond which media is stale anyway, or ~480 answers to
/// pipelined requests. 10,000 connections can hold at most 320 MiB this way.
const QUEUE_LIMIT: usize = 32 * 1024;
/// Reading a paused client's requests resumes once its output has drained to this.
const QUEUE_LOW_WATER: usize = 8 * 1024;
/// Answers to the client's own requests are queued past [`QUEUE_LIMIT`] (the reader stops at
/// it, so only answers already on their way arrive later), but never past this.
const ANSWER_LIMIT: usize = 2 * QUEUE_LIMIT;
/// Most bytes one write takes from the queue (copied out, so the queue stays free for the
/// worker while the write waits).
const WRITE_CHUNK: usize = 16 * 1024;
/// Unsent bytes the kernel may hold for one client (TCP_NOTSENT_LOWAT). Without it the send
/// buffer of a client that does not read grows by autotuning to `tcp_wmem`'s maximum (4 MiB
/// by default) of kernel memory. Unlike a fixed SO_SNDBUF it does not limit the data in
/// flight, so a client far away still gets the throughput its path allows.
const KERNEL_UNSENT: u32 = 32 * 1024;
/// TLS records rustls may hold unsent for one client (its default is 64 KiB).
const TLS_UNSENT: usize = 16 * 1024;
/// Initial read and write buffers; they grow for large frames and bursts only, and shrink
/// back once the connection has had no use for more for [`SHRINK_AFTER`].
const INITIAL_READ: usize = 4096;
const INITIAL_WRITE: usize = 4096;
const SHRINK_AFTER: Duration = Duration::from_secs(1);
/// Longest wait between accept attempts while out of descriptors: short, since a TURN client
/// waits for it.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(200);
/// Largest frame: a STUN header and a 16-bit length, or ChannelData padded.
const MAX_FRAME: usize = stun::HEADER_LEN + 65_535 + 4;

/// What became of a frame given to [`StreamWriter::push_answer`] or
/// [`StreamWriter::push_relayed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Over the queue's limit: dropped.
    Full,
    /// The connection is closing: dropped.
    Closed,
}

/// The write side of one client connection: frames are queued without blocking the worker and
/// written by the connection's writer task.
pub struct StreamWriter {
    queue: RefCell<Vec<u8>>,
    /// The writer task's buffer, kept here while the task waits.
    chunk: Cell<Vec<u8>>,
    /// Bytes the writer task took from the queue (at most [`WRITE_CHUNK`]) and has not written
    /// to the socket yet.
    in_flight: Cell<usize>,
    /// Wakes the writer task: frames queued, or the connection closing.
    wake: Notify,
    /// Wakes the reader: the output drained to the low-water mark, or the writer stopped.
    reader: Notify,
    /// The reader waits for the output to drain before reading more requests.
    reader_paused: Cell<bool>,
    closed: Cell<bool>,
    /// The writer gave up: its output made no progress for `stream-idle-timeout`.
    stalled: Cell<bool>,
}

impl StreamWriter {
    fn new() -> Self {
        StreamWriter {
            queue: RefCell::new(Vec::with_capacity(INITIAL_WRITE)),
            chunk: Cell::new(Vec::with_capacity(INITIAL_WRITE)),
            in_flight: Cell::new(0),
            wake: Notify::new(),
            reader: Notify::new(),
            reader_paused: Cell::new(false),
            closed: Cell::new(false),
            stalled: Cell::new(false),
        }
    }

    /// Bytes held for the client: queued and being written.
    fn pending(&self) -> usize {
        self.queue.borrow().len() + self.in_flight.get()
    }

    /// Queues an answer to one of the client's requests.
    pub fn push_answer(&self, frame: &[u8]) -> Pushed {
        self.push(frame, ANSWER_LIMIT)
    }

    /// Queues a relayed frame; drops it when the client is not reading fast enough.
    pub fn push_relayed(&self, frame: &[u8]) -> Pushed {
        self.push(frame, QUEUE_LIMIT)
    }

    fn push(&self, frame: &[u8], limit: usize) -> Pushed {
        if self.closed.get() {
            return Pushed::Closed;
        }
        let pending = self.pending();
        if pending > 0 && pending + frame.len() > limit {
            return Pushed::Full;
        }
        self.queue.borrow_mut().extend_from_slice(frame);
        self.wake.notify_one();
        Pushed::Queued
    }

    /// Called by the writer task as it makes progress: `in_flight` bytes remain to write.
    fn wrote(&self, in_flight: usize) {
        self.in_flight.set(in_flight);
        if self.reader_paused.get() && self.pending() <= QUEUE_LOW_WATER {
            self.reader_paused.set(false);
            self.reader.notify_one();
        }
    }

    /// Waits until the output has drained to the low-water mark or the writer has stopped.
    async fn wait_for_room(&self) {
        self.reader_paused.set(true);
        while self.reader_paused.get() && !self.closed.get() {
            self.reader.notified().await;
        }
        self.reader_paused.set(false);
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
    let mut backoff = AcceptBackoff::new("TURN TCP/TLS", MAX_ACCEPT_BACKOFF);
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => {
                backoff.accepted();
                accepted
            }
            Err(error) => {
                backoff.failed(&error).await;
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
        limit_unsent(&stream);
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
                    Ok(Ok(mut stream)) => {
                        stream.get_mut().1.set_buffer_limit(Some(TLS_UNSENT));
                        serve(shared, stream, tuple, idle).await
                    }
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

/// Serves one client connection until it closes, sends something that is not STUN/TURN, does
/// not read what it is sent (see [`write_loop`]), or misses a deadline of [`read_loop`]: a
/// slowloris client cannot hold a connection.
async fn serve<S>(shared: Shared, stream: S, tuple: FiveTuple, idle: Duration)
where
    S: AsyncRead + AsyncWrite + 'static,
{
    let (mut reader, writer_half) = tokio::io::split(stream);
    let writer = Rc::new(StreamWriter::new());
    shared.borrow_mut().streams.insert(tuple, writer.clone());
    let write_task = tokio::task::spawn_local(write_loop(writer.clone(), writer_half, idle));
    let timed_out = read_loop(&shared, &mut reader, &writer, tuple, idle).await;
    writer.close();
    {
        let mut worker = shared.borrow_mut();
        if timed_out {
            worker.stream_timeouts += 1;
        }
        worker.connection_closed(Instant::now(), &tuple);
    }
    let _ = write_task.await;
    if writer.stalled.get() {
        shared.borrow_mut().stream_write_timeouts += 1;
    }
}

/// Reads and handles the client's frames until the connection ends; `true` when it ended by
/// the idle timeout.
///
/// Deadlines: a client without an allocation must send a complete message every `idle`; one
/// with an allocation may stay silent, but a message it has started must be complete within
/// `idle` of its first byte's arrival.
async fn read_loop<R>(
    shared: &Shared,
    reader: &mut R,
    writer: &StreamWriter,
    tuple: FiveTuple,
    idle: Duration,
) -> bool
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
            let mut worker = shared.borrow_mut();
            while start < filled {
                let pending = &buf[start..filled];
                let (message, advance, stun) = match stun::frame_len(pending) {
                    Ok(Some(Frame::Stun(len))) => (len, len, true),
                    Ok(Some(Frame::ChannelData { len, padded })) => (len, padded, false),
                    Ok(None) => break,
                    Err(_) => {
                        worker.core.record_malformed();
                        worker.flush_to_peers();
                        return false;
                    }
                };
                if advance > pending.len() {
                    break;
                }
                if stun && writer.pending() >= QUEUE_LIMIT {
                    paused = true;
                    break;
                }
                worker.handle_client(now, tuple, &pending[..message]);
                start += advance;
                last_message = now;
            }
            worker.flush_to_peers();
        }
        if writer.closed.get() {
            return false;
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
                return false;
            }
            buf.resize((buf.len() * 2).min(MAX_FRAME), 0);
            needed_large = now;
        }
        // Room is left for a read: a shrunk buffer must not be full.
        if buf.len() > INITIAL_READ && filled < INITIAL_READ && now >= needed_large + SHRINK_AFTER {
            buf.truncate(INITIAL_READ);
            buf.shrink_to_fit();
        }

        let allocated = shared.borrow().core.allocation_of(&tuple).is_some();
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
            _ = writer.reader.notified() => None,
            _ = sleep_until(wake_at) => None,
        };
        match read {
            None => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return true;
                }
            }
            Some(Ok(0) | Err(_)) => return false,
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

/// Writes what the connection's queue gets until the reader closes it, the client goes away,
/// or the output makes no progress for `idle` (a client that does not read cannot hold its
/// connection and queue: it is closed, and [`StreamWriter::stalled`] says why).
async fn write_loop<W>(writer: Rc<StreamWriter>, mut half: W, idle: Duration)
where
    W: AsyncWrite + Unpin,
{
    let ended = loop {
        let mut chunk = writer.chunk.take();
        {
            let mut queue = writer.queue.borrow_mut();
            let n = queue.len().min(WRITE_CHUNK);
            chunk.extend_from_slice(&queue[..n]);
            queue.drain(..n);
        }
        writer.in_flight.set(chunk.len());
        if chunk.is_empty() {
            let grown = chunk.capacity() > INITIAL_WRITE
                || writer.queue.borrow().capacity() > INITIAL_WRITE;
            writer.chunk.set(chunk);
            if writer.closed.get() {
                break Ok(());
            }
            if !grown {
                writer.wake.notified().await;
            } else if tokio::time::timeout(SHRINK_AFTER, writer.wake.notified())
                .await
                .is_err()
            {
                // A burst is over: give its memory back.
                writer.chunk.set(Vec::with_capacity(INITIAL_WRITE));
                writer.queue.borrow_mut().shrink_to(INITIAL_WRITE);
            }
            continue;
        }
        let written = write_out(&writer, &mut half, &chunk, idle).await;
        chunk.clear();
        writer.chunk.set(chunk);
        if let Err(end) = written {
            break Err(end);
        }
    };
    writer.closed.set(true);
    writer.in_flight.set(0);
    match ended {
        Ok(()) => {
            // A TLS close_notify; bounded, as the client may not read it.
            let _ = tokio::time::timeout(idle, half.shutdown()).await;
        }
        Err(WriteEnd::Stalled) => writer.stalled.set(true),
        Err(WriteEnd::Failed) => {}
    }
    writer.reader.notify_one();
}

/// Why the writer stopped early.
enum WriteEnd {
    /// No progress for `stream-idle-timeout`.
    Stalled,
    /// The connection failed.
    Failed,
}

/// Writes `bytes` out, TLS records included, each write making progress within `idle`.
async fn write_out<W>(
    writer: &StreamWriter,
    half: &mut W,
    bytes: &[u8],
    idle: Duration,
) -> Result<(), WriteEnd>
where
    W: AsyncWrite + Unpin,
{
    let mut written = 0;
    while written < bytes.len() {
        match tokio::time::timeout(idle, half.write(&bytes[written..])).await {
            Ok(Ok(0) | Err(_)) => return Err(WriteEnd::Failed),
            Ok(Ok(n)) => {
                written += n;
                writer.wrote(bytes.len() - written);
            }
            Err(_) => return Err(WriteEnd::Stalled),
        }
    }
    // TLS records rustls could not write yet (nothing to do, and no system call, on TCP).
    match tokio::time::timeout(idle, half.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriteEnd::Failed),
        Err(_) => Err(WriteEnd::Stalled),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::AsyncReadExt;

    /// Runs `test` on a single-threaded runtime, as the workers do.
    fn run(test: impl std::future::Future<Output = ()>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, test);
    }

    const IDLE: Duration = Duration::from_millis(300);

    #[test]
    fn relayed_frames_beyond_the_limit_are_dropped_and_answers_are_not() {
        let writer = StreamWriter::new();
        // Nothing pending: any frame fits, even one larger than the limit.
        let jumbo = vec![0u8; MAX_FRAME];
        assert_eq!(writer.push_relayed(&jumbo), Pushed::Queued);
        writer.queue.borrow_mut().clear();
        let frame = [0u8; 1000];
        let mut queued = 0;
        while writer.push_relayed(&frame) == Pushed::Queued {
            queued += 1;
        }
        assert_eq!(queued, QUEUE_LIMIT / frame.len());
        assert_eq!(writer.push_relayed(&frame[..8]), Pushed::Queued);
        assert_eq!(writer.push_relayed(&frame), Pushed::Full);
        // Answers go on past the limit, up to their own.
        let mut answers = 0;
        while writer.push_answer(&frame[..100]) == Pushed::Queued {
            answers += 1;
        }
        assert!(writer.pending() <= ANSWER_LIMIT);
        assert!(
            answers >= (ANSWER_LIMIT - QUEUE_LIMIT) / 100 - 1,
            "{answers}"
        );
        writer.close();
        assert_eq!(writer.push_answer(&frame[..8]), Pushed::Closed);
    }

    #[test]
    fn a_client_that_does_not_read_is_given_up_after_the_idle_timeout() {
        run(async {
            let (server, _client) = tokio::io::duplex(1024);
            let writer = Rc::new(StreamWriter::new());
            let task = tokio::task::spawn_local(write_loop(writer.clone(), server, IDLE));
            let started = Instant::now();
            assert_eq!(writer.push_relayed(&[1u8; 4096]), Pushed::Queued);
            // The reader learns of it, as a read_loop waiting on a read would.
            tokio::time::timeout(IDLE * 10, writer.reader.notified())
                .await
                .expect("the reader is woken when the writer gives up");
            let waited = started.elapsed();
            assert!(waited >= IDLE && waited < IDLE * 5, "{waited:?}");
            assert!(writer.stalled.get() && writer.closed.get());
            task.await.unwrap();
            assert_eq!(writer.push_relayed(&[1u8; 8]), Pushed::Closed);
        });
    }

    #[test]
    fn a_slow_reader_that_makes_progress_is_not_given_up() {
        run(async {
            let (server, mut client) = tokio::io::duplex(1024);
            let writer = Rc::new(StreamWriter::new());
            let task = tokio::task::spawn_local(write_loop(writer.clone(), server, IDLE));
            assert_eq!(writer.push_relayed(&[1u8; 8192]), Pushed::Queued);
            // 1 KiB every third of the idle timeout: 8 KiB take well over the timeout.
            let mut buf = [0u8; 1024];
            let mut received = 0;
            while received < 8192 {
                tokio::time::sleep(IDLE / 3).await;
                received += client.read(&mut buf).await.unwrap();
            }
            assert!(!writer.stalled.get() && !writer.closed.get());
            writer.close();
            task.await.unwrap();
            assert_eq!(client.read(&mut buf).await.unwrap(), 0, "shut down");
        });
    }

    #[test]
    fn a_paused_reader_is_woken_at_the_low_water_mark() {
        run(async {
            let (server, mut client) = tokio::io::duplex(4096);
            let writer = Rc::new(StreamWriter::new());
            let task = tokio::task::spawn_local(write_loop(writer.clone(), server, IDLE * 10));
            while writer.pending() < QUEUE_LIMIT {
                writer.push_answer(&[2u8; 512]);
            }
            let waiting = {
                let writer = writer.clone();
                tokio::task::spawn_local(async move {
                    writer.wait_for_room().await;
                    writer.pending()
                })
            };
            tokio::task::yield_now().await;
            assert!(!waiting.is_finished(), "woken while the output is full");
            let mut buf = vec![0u8; 4096];
            let mut drained = 0;
            while !waiting.is_finished() {
                drained += client.read(&mut buf).await.unwrap();
                tokio::task::yield_now().await;
            }
            let pending = waiting.await.unwrap();
            assert!(pending <= QUEUE_LOW_WATER, "woken with {pending} pending");
            assert!(
                pending + drained + 4096 >= QUEUE_LIMIT,
                "woken early: {drained} read, {pending} pending"
            );
            writer.close();
            while client.read(&mut buf).await.unwrap() > 0 {}
            task.await.unwrap();
        });
    }

    #[test]
    fn the_write_buffers_shrink_after_a_burst() {
        run(async {
            let (server, mut client) = tokio::io::duplex(1 << 20);
            let writer = Rc::new(StreamWriter::new());
            let task = tokio::task::spawn_local(write_loop(writer.clone(), server, IDLE));
            for _ in 0..3 {
                assert_eq!(writer.push_relayed(&[3u8; 20_000]), Pushed::Queued);
                tokio::task::yield_now().await;
            }
            let mut buf = vec![0u8; 60_000];
            client.read_exact(&mut buf).await.unwrap();
            tokio::task::yield_now().await;
            let chunk_capacity = || {
                let chunk = writer.chunk.take();
                let capacity = chunk.capacity();
                writer.chunk.set(chunk);
                capacity
            };
            assert!(writer.queue.borrow().capacity() >= 20_000);
            assert_eq!(chunk_capacity(), WRITE_CHUNK);
            tokio::time::sleep(SHRINK_AFTER + Duration::from_millis(300)).await;
            assert!(chunk_capacity() <= INITIAL_WRITE, "{}", chunk_capacity());
            assert!(writer.queue.borrow().capacity() <= INITIAL_WRITE);
            writer.close();
            task.await.unwrap();
        });
    }
}
