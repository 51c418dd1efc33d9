//! One readiness set for all relay sockets of a worker: an epoll instance of its own,
//! registered in tokio's reactor as one descriptor, with each relay socket in it
//! edge-triggered and for input only. One wake-up then serves every relay socket that became
//! readable, instead of one tokio task (and its wake-up) per socket; and a relay socket costs
//! no task, no waker and no registration in the reactor.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Events taken from the set per `epoll_wait`.
pub const MAX_EVENTS: usize = 64;

/// An epoll set of relay sockets, each registered under a token (its allocation's slot).
pub struct RelayPoller {
    epoll: AsyncFd<OwnedFd>,
}

impl RelayPoller {
    /// A new, empty set registered in the current tokio runtime.
    pub fn new() -> io::Result<RelayPoller> {
        // SAFETY: plain system call; the descriptor is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(RelayPoller {
            // SAFETY: the descriptor is owned by the OwnedFd, which the AsyncFd owns and never
            // replaces: it stays open and the same for the AsyncFd's whole life.
            epoll: unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
                .map_err(io::Error::from)?,
        })
    }

    /// Adds a socket: readable, edge-triggered (a wake-up per arrival that finds it not
    /// already reported; the socket need not be read until it would block). Closing the
    /// socket takes it out of the set, with any event pending for it, as long as no other
    /// descriptor refers to it (relay sockets are never duplicated), so there is no `remove`:
    /// it would cost a system call per allocation.
    pub fn add(&self, socket: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: plain system call on descriptors we hold.
        let done = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                socket,
                &mut event,
            )
        };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until some socket in the set may be readable.
    pub async fn readable(&self) -> io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, OwnedFd>> {
        self.epoll.readable().await
    }

    /// Fills `events` with the sockets that became readable since the last call, without
    /// waiting; returns how many. Fewer than `events.len()` means the set had no more to report.
    pub fn ready(&self, events: &mut [libc::epoll_event]) -> usize {
        let max = events.len().min(MAX_EVENTS) as libc::c_int;
        // SAFETY: `events` has room for `max` entries; timeout 0 never blocks.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), max, 0) };
        usize::try_from(n).unwrap_or(0)
    }
}

/// A buffer for [`RelayPoller::ready`].
pub fn event_buffer() -> Vec<libc::epoll_event> {
    vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS]
}
