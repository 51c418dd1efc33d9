//! Log lines written together. A worker that handles a batch of datagrams (a `recvmmsg`'s
//! worth of Allocates and Refreshes, a timer pass that expires many allocations) holds the log
//! lines it makes and writes them in one `write(2)` when the batch ends, instead of one system
//! call per line: two audit lines per allocation were one seventh of the allocation path's CPU
//! when each went out on its own.
//!
//! Lines are held only inside a [`Hold`], only on the thread that made them, and at most
//! [`HOLD_LIMIT`] bytes at a time (more is written at once); a panic unwinding through the
//! `Hold` writes them too. Everywhere else a line is written as it comes, as before.

use std::cell::RefCell;
use std::io::{self, Write};

/// The most bytes of log lines a thread holds before writing them.
pub const HOLD_LIMIT: usize = 64 * 1024;

/// Lines held for one writer, in the order they came.
#[derive(Debug, Default)]
pub struct Held {
    buf: Vec<u8>,
    /// Whether a [`Hold`] is open (lines are held only then).
    open: bool,
}

impl Held {
    /// Takes one line (or any whole write): held while open and it fits under
    /// [`HOLD_LIMIT`]; otherwise what was held goes out first and then the line.
    pub fn write(&mut self, line: &[u8], out: &mut impl Write) -> io::Result<()> {
        if self.open && self.buf.len() + line.len() <= HOLD_LIMIT {
            self.buf.extend_from_slice(line);
            return Ok(());
        }
        self.flush(out)?;
        out.write_all(line)
    }

    /// Writes what is held, in one call when the writer takes it all.
    pub fn flush(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = out.write_all(&self.buf);
        // What could not be written is dropped, as an unheld line would be: a log that
        // cannot be written must not grow without bound.
        self.buf.clear();
        if self.buf.capacity() > HOLD_LIMIT {
            self.buf.shrink_to(HOLD_LIMIT);
        }
        result
    }
}

thread_local! {
    static STDERR: RefCell<Held> = RefCell::new(Held::default());
}

/// While it lives, log lines this thread writes to [`Stderr`] are held; dropping it writes
/// them. Holds nest: only the outermost writes.
#[must_use = "lines are held only while the Hold lives"]
pub struct Hold {
    outermost: bool,
}

impl Hold {
    pub fn begin() -> Hold {
        let outermost = STDERR.with(|held| {
            let mut held = held.borrow_mut();
            !std::mem::replace(&mut held.open, true)
        });
        Hold { outermost }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.outermost {
            return;
        }
        STDERR.with(|held| {
            let mut held = held.borrow_mut();
            held.open = false;
            let _ = held.flush(&mut io::stderr().lock());
        });
    }
}

/// The log writer: standard error, through this thread's [`Hold`] if one is open.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        STDERR.with(|held| match held.try_borrow_mut() {
            Ok(mut held) => held.write(buf, &mut io::stderr().lock()),
            // Only if something logged while the held lines were being written.
            Err(_) => io::stderr().write_all(buf),
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that records each call, to count system calls.
    #[derive(Default)]
    struct Calls(Vec<Vec<u8>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_outside_a_hold_go_out_one_by_one() {
        let (mut held, mut out) = (Held::default(), Calls::default());
        held.write(b"a\n", &mut out).unwrap();
        held.write(b"b\n", &mut out).unwrap();
        assert_eq!(out.0, vec![b"a\n".to_vec(), b"b\n".to_vec()]);
    }

    #[test]
    fn lines_in_a_hold_go_out_together_in_order() {
        let (mut held, mut out) = (Held::default(), Calls::default());
        held.open = true;
        for line in [&b"one\n"[..], b"two\n", b"three\n"] {
            held.write(line, &mut out).unwrap();
        }
        assert!(out.0.is_empty(), "nothing written while held");
        held.flush(&mut out).unwrap();
        assert_eq!(out.0, vec![b"one\ntwo\nthree\n".to_vec()]);
        held.flush(&mut out).unwrap();
        assert_eq!(out.0.len(), 1, "an empty flush writes nothing");
    }

    #[test]
    fn a_hold_never_keeps_more_than_its_limit() {
        let (mut held, mut out) = (Held::default(), Calls::default());
        held.open = true;
        let line = vec![b'x'; 1000];
        for _ in 0..200 {
            held.write(&line, &mut out).unwrap();
            assert!(held.buf.len() <= HOLD_LIMIT);
        }
        held.flush(&mut out).unwrap();
        let written: usize = out.0.iter().map(Vec::len).sum();
        assert_eq!(written, 200 * 1000, "every byte written once");
        assert!(out.0.len() >= 3, "written as the limit was reached");
        // A line larger than the limit goes straight out, after what was held.
        held.write(b"small\n", &mut out).unwrap();
        let huge = vec![b'y'; HOLD_LIMIT + 1];
        held.write(&huge, &mut out).unwrap();
        let n = out.0.len();
        assert_eq!(out.0[n - 2], b"small\n".to_vec());
        assert_eq!(out.0[n - 1], huge);
    }

    #[test]
    fn a_failed_write_drops_the_held_lines_and_reports_it() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("closed"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut held = Held {
            open: true,
            ..Held::default()
        };
        held.write(b"line\n", &mut Broken).unwrap();
        assert!(held.flush(&mut Broken).is_err());
        assert!(held.buf.is_empty());
    }

    #[test]
    fn holds_nest_and_only_the_outermost_writes() {
        let outer = Hold::begin();
        let inner = Hold::begin();
        assert!(outer.outermost && !inner.outermost);
        drop(inner);
        assert!(STDERR.with(|held| held.borrow().open), "still held");
        drop(outer);
        assert!(!STDERR.with(|held| held.borrow().open));
    }
}
