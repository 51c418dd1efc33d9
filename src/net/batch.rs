//! Datagrams gathered during one wake-up of a worker and sent with one `sendmmsg` per socket:
//! relayed frames to clients (one listener socket, many clients) and payloads to peers (one
//! relay socket per allocation). Consecutive datagrams of one size to one destination go as
//! one UDP GSO message when the kernel can. Storage is allocated once; queueing and flushing
//! allocate nothing.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

/// Datagrams held before a flush is forced.
pub const MAX_DATAGRAMS: usize = 64;
/// Bytes held before a flush is forced (a relayed datagram is at most 64 KiB + a header).
pub const STORAGE_BYTES: usize = 256 * 1024;
/// The largest datagram [`Datagrams::push`] takes.
pub const MAX_FRAME: usize = 65_535 + 64;
/// GSO is used for segments up to this size only: a GSO segment may not exceed the path MTU
/// (the kernel refuses the whole message), and a datagram this small fits any Ethernet path.
const GSO_MAX_SEGMENT: usize = 1_200;
/// A GSO message carries at most this many bytes (the limit of one UDP datagram, headers
/// included, is 65,535).
const GSO_MAX_BYTES: usize = 65_000;
/// `UDP_SEGMENT` (linux/udp.h); the libc crate does not export it for glibc.
const UDP_SEGMENT: libc::c_int = 103;
/// Room for an IPV6_PKTINFO (or IP_PKTINFO) and a UDP_SEGMENT control message.
const CONTROL_LEN: usize = 64;

#[derive(Clone, Copy, Debug)]
struct Queued {
    socket: RawFd,
    /// Position in the queue: sorting by (socket, order) groups a socket's datagrams and
    /// keeps their order.
    order: u16,
    start: u32,
    len: u32,
    to: SocketAddr,
    src_ip: Option<IpAddr>,
}

/// What a flush did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams the kernel took.
    pub sent: u64,
    /// Datagrams it refused (full socket buffer, unreachable destination, ...): count them.
    pub dropped: u64,
    /// `sendmmsg`/`sendmsg` calls made.
    pub calls: u64,
}

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; CONTROL_LEN]);

/// A queue of datagrams for any number of UDP sockets, flushed with one `sendmmsg` per socket.
pub struct Datagrams {
    storage: Box<[u8]>,
    used: usize,
    queued: Vec<Queued>,
    /// Segments per GSO message; 1 turns GSO off.
    max_segments: usize,
    // Scratch for the system calls, sized once (MAX_DATAGRAMS each).
    iovecs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<Control>,
    headers: Vec<libc::mmsghdr>,
    /// What each header carries: the number of datagrams in it.
    segments: Vec<u16>,
}

impl Datagrams {
    /// An empty queue; `max_segments` is what the kernel allows per GSO message (1: none).
    pub fn new(max_segments: usize) -> Datagrams {
        // SAFETY: sockaddr_storage, mmsghdr and Control are plain C data for which all zeroes
        // is a valid value.
        let zero_name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let zero_header: libc::mmsghdr = unsafe { std::mem::zeroed() };
        Datagrams {
            storage: vec![0u8; STORAGE_BYTES].into_boxed_slice(),
            used: 0,
            queued: Vec::with_capacity(MAX_DATAGRAMS),
            max_segments: max_segments.clamp(1, MAX_DATAGRAMS),
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                MAX_DATAGRAMS
            ],
            names: vec![zero_name; MAX_DATAGRAMS],
            controls: vec![Control([0; CONTROL_LEN]); MAX_DATAGRAMS],
            headers: vec![zero_header; MAX_DATAGRAMS],
            segments: vec![0; MAX_DATAGRAMS],
        }
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Whether `len` more bytes fit without a flush.
    pub fn has_room(&self, len: usize) -> bool {
        self.queued.len() < MAX_DATAGRAMS && self.used + len <= self.storage.len()
    }

    /// Queues `frame` to be sent from `socket` to `to` (from `src_ip`, on a wildcard socket).
    /// Returns `false`, queueing nothing, when there is no room ([`Datagrams::flush`] first) or
    /// the frame is larger than [`MAX_FRAME`].
    pub fn push(
        &mut self,
        socket: RawFd,
        to: SocketAddr,
        src_ip: Option<IpAddr>,
        frame: &[u8],
    ) -> bool {
        if frame.len() > MAX_FRAME || !self.has_room(frame.len()) {
            return false;
        }
        let start = self.used;
        self.storage[start..start + frame.len()].copy_from_slice(frame);
        self.used += frame.len();
        self.queued.push(Queued {
            socket,
            order: self.queued.len() as u16,
            start: start as u32,
            len: frame.len() as u32,
            to,
            src_ip,
        });
        true
    }

    /// Sends everything queued: one `sendmmsg` per socket (more if the kernel takes part of a
    /// batch). What the kernel refuses is dropped and counted, never retried: a full socket
    /// buffer drops a datagram as the network would.
    pub fn flush(&mut self) -> Flushed {
        self.flush_with(|socket, headers| {
            // SAFETY: `headers` point into this queue's storage and scratch, which live and
            // stay unmoved for the duration of the call.
            let sent = unsafe {
                libc::sendmmsg(
                    socket,
                    headers.as_mut_ptr(),
                    headers.len() as libc::c_uint,
                    0,
                )
            };
            if sent < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(sent as usize)
            }
        })
    }

    /// [`Datagrams::flush`] through `send`, which stands for `sendmmsg` on a socket: it returns
    /// how many of the headers it sent, or an error for the first one.
    pub fn flush_with(
        &mut self,
        mut send: impl FnMut(RawFd, &mut [libc::mmsghdr]) -> io::Result<usize>,
    ) -> Flushed {
        let mut flushed = Flushed::default();
        if self.queued.is_empty() {
            return flushed;
        }
        self.queued.sort_unstable_by_key(|q| (q.socket, q.order));
        let mut first = 0;
        while first < self.queued.len() {
            let socket = self.queued[first].socket;
            let mut end = first;
            while end < self.queued.len() && self.queued[end].socket == socket {
                end += 1;
            }
            let messages = self.prepare(first, end);
            let mut next = 0;
            while next < messages {
                flushed.calls += 1;
                match send(socket, &mut self.headers[next..messages]) {
                    Ok(0) => {
                        // Nothing taken and no error: give up on the rest rather than spin.
                        flushed.dropped += self.datagrams_in(next, messages);
                        next = messages;
                    }
                    Ok(n) => {
                        flushed.sent += self.datagrams_in(next, next + n);
                        next += n;
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error)
                        if error.kind() == io::ErrorKind::WouldBlock
                            || error.raw_os_error() == Some(libc::ENOBUFS) =>
                    {
                        // The socket's buffer is full: what is left for it would fail too.
                        flushed.dropped += self.datagrams_in(next, messages);
                        next = messages;
                    }
                    Err(error) => {
                        if self.segments[next] > 1
                            && matches!(error.raw_os_error(), Some(libc::EIO | libc::EINVAL))
                        {
                            // The path cannot take GSO after all: no more of it here.
                            self.max_segments = 1;
                        }
                        // This message's destination refused it; the others may not.
                        flushed.dropped += u64::from(self.segments[next]);
                        next += 1;
                    }
                }
            }
            first = end;
        }
        self.queued.clear();
        self.used = 0;
        flushed
    }

    fn datagrams_in(&self, from: usize, to: usize) -> u64 {
        self.segments[from..to].iter().map(|&s| u64::from(s)).sum()
    }

    /// Fills the headers for `queued[first..end]` (one socket's datagrams, in order) and
    /// returns how many messages they make.
    fn prepare(&mut self, first: usize, end: usize) -> usize {
        let mut messages = 0;
        let mut i = first;
        while i < end {
            let head = self.queued[i];
            let mut count = 1;
            let segment = head.len as usize;
            if self.max_segments > 1 && segment > 0 && segment <= GSO_MAX_SEGMENT {
                while i + count < end
                    && count < self.max_segments
                    && (count + 1) * segment <= GSO_MAX_BYTES
                {
                    let next = self.queued[i + count];
                    if next.len as usize != segment
                        || next.to != head.to
                        || next.src_ip != head.src_ip
                    {
                        break;
                    }
                    count += 1;
                }
            }
            for k in 0..count {
                let q = self.queued[i + k];
                self.iovecs[i - first + k] = libc::iovec {
                    // The kernel only reads through this pointer (sendmmsg).
                    iov_base: self.storage[q.start as usize..].as_mut_ptr().cast(),
                    iov_len: q.len as usize,
                };
            }
            let name_len = write_sockaddr(&mut self.names[messages], head.to);
            let control = &mut self.controls[messages];
            let control_len =
                write_control(control, head.src_ip, (count > 1).then_some(segment as u16));
            // SAFETY: all zeroes is a valid msghdr; the fields are then set one by one.
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_name = (&mut self.names[messages] as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = name_len;
            header.msg_iov = &mut self.iovecs[i - first];
            header.msg_iovlen = count as _;
            if control_len > 0 {
                header.msg_control = control.0.as_mut_ptr().cast();
                header.msg_controllen = control_len as _;
            }
            self.headers[messages] = libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            };
            self.segments[messages] = count as u16;
            messages += 1;
            i += count;
        }
        messages
    }
}

/// Datagrams received per `recvmmsg` on a relay socket.
pub const RECV_BATCH: usize = 16;

/// Receive buffers for relay sockets, filled by one `recvmmsg`, each with room before and
/// after the datagram for the frame the core builds in place around it. Allocated once per
/// worker; pages a large datagram never touched stay unbacked.
pub struct Inbox {
    headroom: usize,
    tailroom: usize,
    buffers: Vec<Box<[u8]>>,
    names: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl Inbox {
    /// Buffers for datagrams of up to `max` bytes with `headroom` and `tailroom` around them.
    pub fn new(headroom: usize, max: usize, tailroom: usize) -> Inbox {
        // SAFETY: all zeroes is a valid sockaddr_storage and mmsghdr.
        let zero_name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let zero_header: libc::mmsghdr = unsafe { std::mem::zeroed() };
        Inbox {
            headroom,
            tailroom,
            buffers: (0..RECV_BATCH)
                .map(|_| vec![0u8; headroom + max + tailroom].into_boxed_slice())
                .collect(),
            names: vec![zero_name; RECV_BATCH],
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                RECV_BATCH
            ],
            headers: vec![zero_header; RECV_BATCH],
        }
    }

    /// Reads up to [`RECV_BATCH`] datagrams from `socket` without waiting; returns how many
    /// (an error such as `WouldBlock` when there was none).
    pub fn recv(&mut self, socket: RawFd) -> io::Result<usize> {
        for i in 0..RECV_BATCH {
            let buffer = &mut self.buffers[i];
            let len = buffer.len();
            self.iovecs[i] = libc::iovec {
                iov_base: buffer[self.headroom..].as_mut_ptr().cast(),
                // The tailroom stays free: a datagram longer than `max` is truncated (and
                // dropped by the caller, seeing MSG_TRUNC).
                iov_len: len - self.headroom - self.tailroom,
            };
            // SAFETY: all zeroes is a valid msghdr; the fields are then set.
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            header.msg_iov = &mut self.iovecs[i];
            header.msg_iovlen = 1;
            self.headers[i] = libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            };
        }
        // SAFETY: the headers point into this inbox's buffers, names and iovecs, which stay
        // put for the call.
        let n = unsafe {
            libc::recvmmsg(
                socket,
                self.headers.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// The `i`th datagram of the last [`Inbox::recv`]: its source (`None` if it was truncated
    /// or has no IP source), its buffer and where the payload lies in it.
    pub fn datagram(
        &mut self,
        i: usize,
    ) -> (Option<SocketAddr>, &mut [u8], std::ops::Range<usize>) {
        let header = &self.headers[i];
        let len = header.msg_len as usize;
        let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let source = read_sockaddr(&self.names[i]).filter(|_| !truncated);
        let start = self.headroom;
        (source, &mut self.buffers[i], start..start + len)
    }
}

/// Writes `addr` as a C socket address; returns its length.
fn write_sockaddr(storage: &mut libc::sockaddr_storage, addr: SocketAddr) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any socket address.
            let sin = unsafe {
                &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            };
            sin.sin_zero = [0; 8];
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above.
            let sin6 = unsafe {
                &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            sin6.sin6_scope_id = v6.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reads a C socket address of the IPv4 or IPv6 family.
pub(crate) fn read_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in, which sockaddr_storage holds.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes the control messages (source address, GSO segment size) into `control`; returns
/// the length used (0: none).
fn write_control(control: &mut Control, src_ip: Option<IpAddr>, segment: Option<u16>) -> usize {
    let mut used = 0;
    let mut push = |level: libc::c_int, kind: libc::c_int, data: &[u8]| {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic on the length.
        let space = unsafe { libc::CMSG_SPACE(data.len() as u32) } as usize;
        let len = unsafe { libc::CMSG_LEN(data.len() as u32) } as usize;
        let header_len = len - data.len();
        // CONTROL_LEN holds the largest pair written here (IPV6_PKTINFO and UDP_SEGMENT).
        let slot = &mut control.0[used..used + space];
        slot.fill(0);
        // SAFETY: `slot` starts at an 8-aligned offset of an 8-aligned buffer (CMSG_SPACE
        // keeps alignment) and holds a cmsghdr.
        let header = unsafe { &mut *slot.as_mut_ptr().cast::<libc::cmsghdr>() };
        header.cmsg_len = len as _;
        header.cmsg_level = level;
        header.cmsg_type = kind;
        slot[header_len..header_len + data.len()].copy_from_slice(data);
        used += space;
    };
    match src_ip {
        Some(IpAddr::V4(v4)) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            push(libc::IPPROTO_IP, libc::IP_PKTINFO, as_bytes(&info));
        }
        Some(IpAddr::V6(v6)) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                ipi6_ifindex: 0,
            };
            push(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, as_bytes(&info));
        }
        None => {}
    }
    if let Some(segment) = segment {
        push(libc::SOL_UDP, UDP_SEGMENT, &segment.to_ne_bytes());
    }
    used
}

/// The bytes of a plain C struct.
fn as_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: T is a plain-data C struct without padding that would be uninitialised
    // (in_pktinfo and in6_pktinfo are packed of integer fields).
    unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// What a fake sendmmsg saw: per call, the socket and per message (destination, segment
    /// count, bytes).
    type Calls = Vec<(RawFd, Vec<(SocketAddr, usize, Vec<u8>)>)>;

    fn record(calls: &mut Calls, socket: RawFd, headers: &[libc::mmsghdr]) {
        let mut messages = Vec::new();
        for h in headers {
            let hdr = &h.msg_hdr;
            // msg_iovlen is a size_t with glibc and an int with musl.
            #[allow(clippy::unnecessary_cast)]
            let count = hdr.msg_iovlen as usize;
            // SAFETY: the headers were built by `prepare` and point into live storage.
            let iovecs = unsafe { std::slice::from_raw_parts(hdr.msg_iov, count) };
            let mut bytes = Vec::new();
            for iov in iovecs {
                let part =
                    unsafe { std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len) };
                bytes.extend_from_slice(part);
            }
            let storage = unsafe { &*(hdr.msg_name as *const libc::sockaddr_storage) };
            let to = read_sockaddr(storage).expect("an IP socket address");
            messages.push((to, iovecs.len(), bytes));
        }
        calls.push((socket, messages));
    }

    #[test]
    fn datagrams_are_grouped_by_socket_in_order_and_coalesced_by_destination() {
        let mut batch = Datagrams::new(64);
        let a = addr("192.0.2.1:1000");
        let b = addr("192.0.2.2:2000");
        assert!(batch.push(7, a, None, &[1; 100]));
        assert!(batch.push(9, b, None, &[2; 50]));
        assert!(batch.push(7, a, None, &[3; 100]));
        assert!(batch.push(7, b, None, &[4; 100]));
        assert!(batch.push(7, a, None, &[5; 100]));
        let mut calls = Calls::new();
        let flushed = batch.flush_with(|socket, headers| {
            record(&mut calls, socket, headers);
            Ok(headers.len())
        });
        assert_eq!(
            flushed,
            Flushed {
                sent: 5,
                dropped: 0,
                calls: 2
            }
        );
        assert_eq!(calls.len(), 2);
        let (socket, messages) = &calls[0];
        assert_eq!(*socket, 7);
        // 1 and 3 go to `a` together (GSO); 4 to b; 5 to a again, after 4, in order.
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0].0, a);
        assert_eq!(messages[0].1, 2);
        assert_eq!(messages[0].2, [[1u8; 100], [3u8; 100]].concat());
        assert_eq!((messages[1].0, messages[1].2.clone()), (b, vec![4u8; 100]));
        assert_eq!((messages[2].0, messages[2].2.clone()), (a, vec![5u8; 100]));
        assert_eq!(calls[1].0, 9);
        assert_eq!(calls[1].1[0].2, vec![2u8; 50]);
        assert!(batch.is_empty());
    }

    #[test]
    fn without_gso_each_datagram_is_its_own_message() {
        let mut batch = Datagrams::new(1);
        let a = addr("[2001:db8::1]:1000");
        for i in 0..3 {
            assert!(batch.push(3, a, None, &[i; 40]));
        }
        let mut calls = Calls::new();
        batch.flush_with(|socket, headers| {
            record(&mut calls, socket, headers);
            Ok(headers.len())
        });
        assert_eq!(calls[0].1.len(), 3);
        assert!(calls[0].1.iter().all(|m| m.0 == a && m.1 == 1));
    }

    #[test]
    fn a_full_socket_drops_the_rest_and_counts_it_and_other_errors_drop_one() {
        let mut batch = Datagrams::new(1);
        let a = addr("192.0.2.1:1000");
        for i in 0..6 {
            assert!(batch.push(3, a, None, &[i; 10]));
        }
        let mut step = 0;
        let flushed = batch.flush_with(|_, headers| {
            step += 1;
            match step {
                1 => Ok(2),
                2 => Err(io::Error::from_raw_os_error(libc::EPERM)),
                3 => Ok(1),
                _ => {
                    assert_eq!(headers.len(), 2);
                    Err(io::Error::from_raw_os_error(libc::EAGAIN))
                }
            }
        });
        assert_eq!(
            flushed,
            Flushed {
                sent: 3,
                dropped: 3,
                calls: 4
            }
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn a_refused_gso_message_turns_gso_off() {
        let mut batch = Datagrams::new(16);
        let a = addr("192.0.2.1:1000");
        for _ in 0..4 {
            assert!(batch.push(3, a, None, &[0; 100]));
        }
        let flushed = batch.flush_with(|_, _| Err(io::Error::from_raw_os_error(libc::EIO)));
        assert_eq!(flushed.dropped, 4);
        for _ in 0..2 {
            assert!(batch.push(3, a, None, &[0; 100]));
        }
        let mut calls = Calls::new();
        batch.flush_with(|socket, headers| {
            record(&mut calls, socket, headers);
            Ok(headers.len())
        });
        assert_eq!(calls[0].1.len(), 2, "GSO stays off");
    }

    #[test]
    fn the_queue_refuses_what_does_not_fit() {
        let mut batch = Datagrams::new(1);
        let a = addr("192.0.2.1:1000");
        assert!(!batch.push(3, a, None, &vec![0; MAX_FRAME + 1]));
        for _ in 0..MAX_DATAGRAMS {
            assert!(batch.push(3, a, None, &[0; 8]));
        }
        assert!(!batch.push(3, a, None, &[0; 8]));
        let mut batch = Datagrams::new(1);
        let mut pushed = 0;
        while batch.push(3, a, None, &vec![0; 60_000]) {
            pushed += 1;
        }
        assert_eq!(pushed, STORAGE_BYTES / 60_000);
    }

    #[test]
    fn sendmmsg_delivers_over_loopback_with_and_without_gso_and_a_source_address() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let to = receiver.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sender);
        for max_segments in [1, 64] {
            let mut batch = Datagrams::new(max_segments);
            for i in 0..10u8 {
                let src = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
                assert!(batch.push(fd, to, src, &[i; 300]));
            }
            assert!(batch.push(fd, to, None, &[99; 20]));
            let flushed = batch.flush();
            assert_eq!(flushed.sent, 11, "{flushed:?}");
            let mut buf = [0u8; 2048];
            for i in 0..10u8 {
                let (n, from) = receiver.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..n], &[i; 300][..], "GSO split the message back");
                assert_eq!(from.ip(), IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
            }
            let (n, _) = receiver.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[99; 20][..]);
        }
    }
}
