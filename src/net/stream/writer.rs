//! The write side of one stream connection: a bounded output queue the worker pushes frames
//! into without blocking, and the task that writes it out, giving up on a client that does not
//! read.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::SHRINK_AFTER;

/// Output one connection may hold in turnpike: frames queued plus those being written. One
/// frame of any size fits when nothing is pending (a TURN message or ChannelData is at most
/// 64 KiB + 4); beyond this, relayed frames are dropped and counted, and the client's
/// requests are no longer read until the output has drained to [`QUEUE_LOW_WATER`]. With the
/// [`KERNEL_UNSENT`](super::KERNEL_UNSENT) bytes the kernel may hold, a slow client has 64 KiB waiting for it: a
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

/// The initial write buffers; they grow for bursts only, and shrink back once the connection
/// has had no use for more for [`SHRINK_AFTER`].
const INITIAL_WRITE: usize = 4096;

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
    /// The connection becomes a data connection once the queue is out: the writer gives its
    /// half back instead of shutting it down.
    handed_over: Cell<bool>,
}

impl StreamWriter {
    pub(super) fn new() -> Self {
        StreamWriter {
            queue: RefCell::new(Vec::with_capacity(INITIAL_WRITE)),
            chunk: Cell::new(Vec::with_capacity(INITIAL_WRITE)),
            in_flight: Cell::new(0),
            wake: Notify::new(),
            reader: Notify::new(),
            reader_paused: Cell::new(false),
            closed: Cell::new(false),
            stalled: Cell::new(false),
            handed_over: Cell::new(false),
        }
    }

    /// Bytes held for the client: queued and being written.
    pub(super) fn pending(&self) -> usize {
        self.queue.borrow().len() + self.in_flight.get()
    }

    /// Whether the output is at its limit: the reader stops taking requests.
    pub(super) fn is_full(&self) -> bool {
        self.pending() >= QUEUE_LIMIT
    }

    /// Whether the connection is closing: the reader stopped, or the writer gave up.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Whether the writer gave up because the output made no progress (see [`write_loop`]).
    pub(super) fn stalled(&self) -> bool {
        self.stalled.get()
    }

    /// Wakes the reader when the output drained to the low-water mark or the writer stopped
    /// (or spuriously).
    pub(super) fn reader_woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.reader.notified()
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
    pub(super) async fn wait_for_room(&self) {
        self.reader_paused.set(true);
        while self.reader_paused.get() && !self.closed.get() {
            self.reader.notified().await;
        }
        self.reader_paused.set(false);
    }

    /// Makes [`write_loop`] give its half back, not shut it down, when it ends (a ConnectionBind
    /// was granted: the connection goes on as a data connection).
    pub(super) fn hand_over(&self) {
        self.handed_over.set(true);
    }

    /// Closes the connection's output: what is queued is still written, then the writer ends.
    pub(super) fn close(&self) {
        self.closed.set(true);
        self.wake.notify_one();
    }
}

/// Writes what the connection's queue gets until the reader closes it, the client goes away,
/// or the output makes no progress for `idle` (a client that does not read cannot hold its
/// connection and queue: it is closed, and [`StreamWriter::stalled`] says why). Gives the half
/// back when it was [handed over](StreamWriter::hand_over) and all went out.
pub(super) async fn write_loop<W>(
    writer: Rc<StreamWriter>,
    mut half: W,
    idle: Duration,
) -> Option<W>
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
    let handed_over = match ended {
        Ok(()) if writer.handed_over.get() => Some(half),
        Ok(()) => {
            // A TLS close_notify; bounded, as the client may not read it.
            let _ = tokio::time::timeout(idle, half.shutdown()).await;
            None
        }
        Err(WriteEnd::Stalled) => {
            writer.stalled.set(true);
            None
        }
        Err(WriteEnd::Failed) => None,
    };
    writer.reader.notify_one();
    handed_over
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::MAX_FRAME;
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
