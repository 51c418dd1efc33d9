//! The Linux calls of the load generator's data path: epoll, `recvmmsg`/`sendmmsg` batches,
//! socket buffer sizes, the open-file limit, and a stop flag that SIGINT and SIGTERM set.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// An epoll instance; sockets are watched for input, level-triggered, each with a token.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is owned by nobody else.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches `fd` for input (and errors), reported with `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        let r =
            unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` (rounded up to a millisecond, at most a second) for input: the
    /// number of events written into `events`. A signal ends the wait early with 0 events.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
        let ms = timeout.as_micros().div_ceil(1000).min(1000) as libc::c_int;
        let max = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `events` is valid for `max` entries; the kernel writes at most that many.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }
}

/// An empty epoll event array of `len` entries.
pub fn epoll_events(len: usize) -> Vec<libc::epoll_event> {
    vec![libc::epoll_event { events: 0, u64: 0 }; len]
}

/// Datagram slots for `recvmmsg` and `sendmmsg`: buffers, iovecs, addresses and headers
/// allocated once and reused for every call.
pub struct Batch {
    bufs: Box<[u8]>,
    slot: usize,
    iovs: Box<[libc::iovec]>,
    names: Box<[libc::sockaddr_storage]>,
    hdrs: Box<[libc::mmsghdr]>,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` point only into the heap allocations this
// batch owns (`bufs`, `iovs`, `names`), which move with it and are never shared.
unsafe impl Send for Batch {}

impl Batch {
    /// `count` slots of `slot` bytes each.
    pub fn new(count: usize, slot: usize) -> Batch {
        let mut bufs = vec![0u8; count * slot].into_boxed_slice();
        // SAFETY: all-zero bytes are a valid iovec, sockaddr_storage and mmsghdr (null
        // pointers, zero lengths).
        let zeroed_iov: libc::iovec = unsafe { mem::zeroed() };
        let zeroed_name: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let zeroed_hdr: libc::mmsghdr = unsafe { mem::zeroed() };
        let mut iovs = vec![zeroed_iov; count].into_boxed_slice();
        let mut names = vec![zeroed_name; count].into_boxed_slice();
        let mut hdrs = vec![zeroed_hdr; count].into_boxed_slice();
        for i in 0..count {
            iovs[i].iov_base = bufs[i * slot..].as_mut_ptr().cast();
            iovs[i].iov_len = slot;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            hdrs[i].msg_hdr.msg_namelen = 0;
        }
        Batch {
            bufs,
            slot,
            iovs,
            names,
            hdrs,
        }
    }

    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// The whole buffer of slot `i`, to write a datagram into.
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i * self.slot..(i + 1) * self.slot]
    }

    /// Sets the length of the datagram in slot `i` before sending.
    pub fn set_len(&mut self, i: usize, len: usize) {
        self.iovs[i].iov_len = len.min(self.slot);
    }

    /// Sends slot `i` to `addr` (on an unconnected socket).
    pub fn set_name(&mut self, i: usize, addr: SocketAddr) {
        self.hdrs[i].msg_hdr.msg_namelen = write_sockaddr(&mut self.names[i], addr);
    }

    /// Sends slot `i` without an address (on a connected socket).
    pub fn clear_name(&mut self, i: usize) {
        self.hdrs[i].msg_hdr.msg_namelen = 0;
    }

    /// The source address of the datagram received in slot `i`.
    pub fn name(&self, i: usize) -> Option<SocketAddr> {
        read_sockaddr(&self.names[i], self.hdrs[i].msg_hdr.msg_namelen)
    }

    /// The datagram received in slot `i`.
    pub fn received(&self, i: usize) -> &[u8] {
        let len = (self.hdrs[i].msg_len as usize).min(self.slot);
        &self.bufs[i * self.slot..i * self.slot + len]
    }

    /// Whether the datagram received in slot `i` was longer than the slot.
    pub fn truncated(&self, i: usize) -> bool {
        self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }

    /// Makes the datagrams received in `range` ready to be sent as they are: each slot's
    /// length becomes the received length (addresses stay as received).
    pub fn resend_received(&mut self, range: Range<usize>) {
        for i in range {
            self.iovs[i].iov_len = (self.hdrs[i].msg_len as usize).min(self.slot);
        }
    }

    /// Receives up to `range.len()` datagrams into the slots of `range` without waiting (with
    /// their source addresses if `names`): how many arrived, 0 when none was waiting.
    pub fn recv(&mut self, fd: RawFd, range: Range<usize>, names: bool) -> io::Result<usize> {
        let namelen = if names {
            mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t
        } else {
            0
        };
        for i in range.clone() {
            self.iovs[i].iov_len = self.slot;
            self.hdrs[i].msg_hdr.msg_namelen = namelen;
            self.hdrs[i].msg_hdr.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        let Some(hdrs) = self.hdrs.get_mut(range) else {
            return Ok(0);
        };
        let count = libc::c_uint::try_from(hdrs.len()).unwrap_or(libc::c_uint::MAX);
        // SAFETY: every header points at this batch's own iovec, buffer and address storage,
        // whose lengths were set above; the kernel writes within them.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                count,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }

    /// Sends the slots of `range` (lengths and addresses as set) without waiting: how many
    /// were sent, 0 when the socket buffer is full.
    pub fn send(&mut self, fd: RawFd, range: Range<usize>) -> io::Result<usize> {
        let Some(hdrs) = self.hdrs.get_mut(range) else {
            return Ok(0);
        };
        if hdrs.is_empty() {
            return Ok(0);
        }
        let count = libc::c_uint::try_from(hdrs.len()).unwrap_or(libc::c_uint::MAX);
        // SAFETY: as in `recv`; the kernel only reads the buffers and addresses here.
        let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), count, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }
}

/// Writes `addr` into `storage`: the length to pass with it.
fn write_sockaddr(storage: &mut libc::sockaddr_storage, addr: SocketAddr) -> libc::socklen_t {
    // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in and
    // sockaddr_in6; all-zero bytes are valid for both.
    unsafe {
        match addr {
            SocketAddr::V4(v4) => {
                let sin =
                    &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                *sin = mem::zeroed();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(v6) => {
                let sin6 =
                    &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                *sin6 = mem::zeroed();
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                sin6.sin6_flowinfo = v6.flowinfo();
                sin6.sin6_scope_id = v6.scope_id();
                mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

/// The address in `storage` of length `len`, if it is IPv4 or IPv6.
fn read_sockaddr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family and length say the storage holds a sockaddr_in.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family and length say the storage holds a sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Asks for socket buffers of `bytes` each way; the kernel may grant less (`rmem_max`,
/// `wmem_max`), so failures are ignored: the default buffers still work.
pub fn set_buffer_sizes(fd: RawFd, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (forced, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // Root may exceed rmem_max/wmem_max with the FORCE options; others get the cap.
        if setsockopt_int(fd, forced, value).is_err() {
            let _ = setsockopt_int(fd, plain, value);
        }
    }
}

fn setsockopt_int(fd: RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a valid c_int for the duration of the call and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard limit: the new soft limit.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit; raising the soft limit up to the hard one needs
        // no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// This process's CPU time (user + system), from getrusage.
pub fn own_cpu() -> Duration {
    // SAFETY: all-zero bytes are a valid rusage, which getrusage overwrites.
    let mut usage: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: `usage` is a valid rusage to write into.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } < 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM end the run early (as if its duration had passed) instead of
/// killing the process, so that the report is still printed.
pub fn install_stop_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; sigaction
    // gets a valid, fully initialised struct.
    unsafe {
        let mut action: libc::sigaction = mem::zeroed();
        action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        for signal in [libc::SIGINT, libc::SIGTERM] {
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Whether SIGINT or SIGTERM arrived since [`install_stop_handler`].
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_sockaddr_storage() {
        // SAFETY: all-zero bytes are a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        for text in [
            "127.0.0.1:3478",
            "[::1]:9",
            "[2001:db8::7]:65535",
            "10.1.2.3:0",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            let len = write_sockaddr(&mut storage, addr);
            assert_eq!(read_sockaddr(&storage, len), Some(addr), "{text}");
        }
        assert_eq!(
            read_sockaddr(&storage, 3),
            None,
            "a short length is no address"
        );
    }

    #[test]
    fn a_batch_carries_datagrams_both_ways() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b_addr = b.local_addr().unwrap();
        let mut out = Batch::new(4, 64);
        for i in 0..3 {
            out.slot_mut(i)[..3].copy_from_slice(&[i as u8; 3]);
            out.set_len(i, 3 + i);
            out.set_name(i, b_addr);
        }
        assert_eq!(out.send(a.as_raw_fd(), 0..3).unwrap(), 3);
        let mut inbox = Batch::new(8, 4);
        let mut got = 0;
        for _ in 0..100 {
            got += inbox.recv(b.as_raw_fd(), got..8, true).unwrap();
            if got == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got, 3);
        for i in 0..3 {
            assert_eq!(inbox.name(i), Some(a.local_addr().unwrap()));
            assert_eq!(inbox.received(i).len(), (3 + i).min(4));
            assert_eq!(inbox.truncated(i), i == 2, "slot {i}: 5 bytes into 4");
        }
        // Nothing more waiting: 0, not an error.
        assert_eq!(inbox.recv(b.as_raw_fd(), 0..8, true).unwrap(), 0);
    }
}
