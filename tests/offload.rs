//! The kernel fast path against the real kernel: the committed eBPF object matches its
//! source, and the program loaded on lo relays ChannelData and peer datagrams both ways for
//! the entries written through `turnpike::net::offload`, counts them, and passes everything
//! else up untouched. Every test loads its own copy of the program (its own tables) and uses
//! its own ephemeral ports: other programs on lo, other tests and other people's traffic see
//! nothing of it. The program detaches when the `FastPath` drops, panics included.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::raw::{RawSender, ip_packet, udp_datagram};
use turnpike::net::offload::{Channel, FastPath, SlotCounters};

const CHANNEL: u16 = 0x4001;
const SLOT: u32 = 42;
const MAX_PAYLOAD: u16 = 1200;
/// How long to wait for a datagram that should come.
const ARRIVES: Duration = Duration::from_secs(5);
/// How long to wait before concluding a datagram did not come.
const QUIET: Duration = Duration::from_millis(300);

fn load() -> FastPath {
    // Never skipped: this machine, the developers' and CI's run as root on a kernel with TCX.
    match FastPath::load(&["127.0.0.1".parse().unwrap()]) {
        Ok(fast_path) => fast_path,
        Err(why) => panic!("the fast path must load here (root, Linux >= 6.6): {why}"),
    }
}

fn socket() -> UdpSocket {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket.set_read_timeout(Some(ARRIVES)).unwrap();
    socket
}

fn channel_data(channel: u16, payload: &[u8], padding: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + payload.len() + padding);
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.resize(frame.len() + padding, 0);
    frame
}

fn expect(socket: &UdpSocket, what: &str) -> (Vec<u8>, SocketAddr) {
    common::receive(socket, ARRIVES).unwrap_or_else(|| panic!("{what}: nothing arrived"))
}

fn expect_nothing(socket: &UdpSocket, what: &str) {
    if let Some((datagram, from)) = common::receive(socket, QUIET) {
        panic!(
            "{what}: a {}-byte datagram from {from} arrived",
            datagram.len()
        );
    }
}

/// The four sockets of one relayed channel: a client, a plain UDP socket standing in for the
/// listener, another for the allocation's relay socket, and the peer.
struct Sockets {
    client: UdpSocket,
    listener: UdpSocket,
    relay: UdpSocket,
    peer: UdpSocket,
}

impl Sockets {
    fn new() -> Sockets {
        Sockets {
            client: socket(),
            listener: socket(),
            relay: socket(),
            peer: socket(),
        }
    }

    fn channel(&self) -> Channel {
        Channel {
            client: self.client.local_addr().unwrap(),
            listener: self.listener.local_addr().unwrap(),
            channel: CHANNEL,
            relay: self.relay.local_addr().unwrap(),
            peer: self.peer.local_addr().unwrap(),
            slot: SLOT,
            max_payload: MAX_PAYLOAD,
        }
    }

    fn addr(socket: &UdpSocket) -> SocketAddr {
        socket.local_addr().unwrap()
    }

    /// The client sends `frame` to the listener; the listener must get it as it was, the peer
    /// nothing.
    fn passes_up_to_listener(&self, frame: &[u8], what: &str) {
        self.client
            .send_to(frame, Self::addr(&self.listener))
            .unwrap();
        let (got, from) = expect(&self.listener, what);
        assert_eq!(got, frame, "{what}: the listener got it changed");
        assert_eq!(from, Self::addr(&self.client), "{what}");
        expect_nothing(&self.peer, what);
    }

    /// The peer sends `datagram` to the relay; the relay socket must get it as it was, the
    /// client nothing.
    fn passes_up_to_relay(&self, datagram: &[u8], what: &str) {
        self.peer
            .send_to(datagram, Self::addr(&self.relay))
            .unwrap();
        let (got, from) = expect(&self.relay, what);
        assert_eq!(got, datagram, "{what}: the relay socket got it changed");
        assert_eq!(from, Self::addr(&self.peer), "{what}");
        expect_nothing(&self.client, what);
    }

    /// The client's ChannelData reaches the peer as its payload, from the relay address.
    fn relays_to_peer(&self, payload: &[u8], padding: usize, what: &str) {
        let frame = channel_data(CHANNEL, payload, padding);
        self.client
            .send_to(&frame, Self::addr(&self.listener))
            .unwrap();
        let (got, from) = expect(&self.peer, what);
        assert_eq!(got, payload, "{what}: payload at the peer");
        assert_eq!(from, Self::addr(&self.relay), "{what}: source at the peer");
        expect_nothing(&self.listener, what);
    }

    /// The peer's datagram reaches the client as ChannelData, from the listener address.
    fn relays_to_client(&self, payload: &[u8], what: &str) {
        self.peer.send_to(payload, Self::addr(&self.relay)).unwrap();
        let (got, from) = expect(&self.client, what);
        assert_eq!(
            got,
            channel_data(CHANNEL, payload, 0),
            "{what}: at the client"
        );
        assert_eq!(
            from,
            Self::addr(&self.listener),
            "{what}: source at the client"
        );
        expect_nothing(&self.relay, what);
    }
}

#[test]
fn committed_object_is_built_from_the_source() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let rebuilt = dir.path().join("relay.bpf.o");
    let status = Command::new(format!("{root}/scripts/build-bpf.sh"))
        .arg(&rebuilt)
        .status()
        .expect("run scripts/build-bpf.sh");
    assert!(status.success(), "scripts/build-bpf.sh failed: {status}");
    let rebuilt = std::fs::read(&rebuilt).unwrap();
    let committed = std::fs::read(format!("{root}/src/net/offload/relay.bpf.o")).unwrap();
    eprintln!(
        "rebuilt object: {} bytes, committed: {} bytes",
        rebuilt.len(),
        committed.len()
    );
    assert!(
        rebuilt == committed,
        "src/net/offload/relay.bpf.o differs from what scripts/build-bpf.sh makes of relay.bpf.c: \
         run scripts/build-bpf.sh and commit the object"
    );
}

#[test]
fn relays_both_ways_counts_and_stops_when_removed() {
    let fast_path = load();
    eprintln!("attached to {:?}", fast_path.interfaces());
    let sockets = Sockets::new();
    let channel = sockets.channel();

    // Before the entry: everything goes up.
    sockets.passes_up_to_listener(&channel_data(CHANNEL, b"before", 0), "before install");
    sockets.passes_up_to_relay(b"before", "before install");

    fast_path.install(&channel).unwrap();
    fast_path.reset(SLOT).unwrap();
    let carried_before = fast_path.carried().unwrap();

    let mut to_peer = (0u64, 0u64);
    let mut to_client = (0u64, 0u64);
    for (round, size) in [1usize, 2, 3, 4, 5, 100, 999, 1200].into_iter().enumerate() {
        let payload: Vec<u8> = (0..size).map(|i| (i + round) as u8).collect();
        // ChannelData over UDP may carry padding to 4 bytes after it: stripped.
        let padding = (4 - size % 4) % 4;
        sockets.relays_to_peer(&payload, 0, &format!("{size} bytes to the peer"));
        sockets.relays_to_peer(&payload, padding, &format!("{size} bytes + padding"));
        to_peer = (to_peer.0 + 2, to_peer.1 + 2 * size as u64);
        sockets.relays_to_client(&payload, &format!("{size} bytes to the client"));
        to_client = (to_client.0 + 1, to_client.1 + size as u64);
    }

    let counted = fast_path.counters(SLOT).unwrap();
    let carried = fast_path.carried().unwrap() - carried_before;
    eprintln!("slot {SLOT}: {counted:?}; carried {carried}");
    assert_eq!(
        counted,
        SlotCounters {
            to_peer_packets: to_peer.0,
            to_peer_bytes: to_peer.1,
            to_client_packets: to_client.0,
            to_client_bytes: to_client.1,
        }
    );
    assert_eq!(carried, to_peer.0 + to_client.0);
    assert_eq!(fast_path.failed().unwrap(), 0);

    // Another slot saw nothing; a reset slot starts from zero.
    assert_eq!(
        fast_path.counters(SLOT + 1).unwrap(),
        SlotCounters::default()
    );
    fast_path.reset(SLOT).unwrap();
    assert_eq!(fast_path.counters(SLOT).unwrap(), SlotCounters::default());

    // Removed: both directions go up to user space again, at once.
    fast_path.remove(&channel).unwrap();
    sockets.passes_up_to_listener(&channel_data(CHANNEL, b"after", 0), "after remove");
    sockets.passes_up_to_relay(b"after", "after remove");
    assert_eq!(fast_path.counters(SLOT).unwrap(), SlotCounters::default());
    // Removing twice is fine.
    fast_path.remove(&channel).unwrap();
}

#[test]
fn hostile_and_unknown_datagrams_pass_up_untouched() {
    let fast_path = load();
    let sockets = Sockets::new();
    let channel = sockets.channel();
    fast_path.install(&channel).unwrap();
    fast_path.reset(SLOT).unwrap();

    let mut long_length = channel_data(CHANNEL, b"abcd", 0);
    long_length[3] = 5; // says 5 bytes, carries 4
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty datagram", vec![]),
        ("truncated header", vec![0x40, 0x01]),
        ("three header bytes", vec![0x40, 0x01, 0x00]),
        ("header only, length 0", channel_data(CHANNEL, b"", 0)),
        ("length past the datagram", long_length),
        ("four bytes of padding", channel_data(CHANNEL, b"abcd", 4)),
        ("channel 0x3FFF", channel_data(0x3FFF, b"abcd", 0)),
        ("unbound channel 0x5000", channel_data(0x5000, b"abcd", 0)),
        ("channel 0x8000", channel_data(0x8000, b"abcd", 0)),
        ("channel 0xC001", channel_data(0xC001, b"abcd", 0)),
        ("unbound channel 0x4002", channel_data(0x4002, b"abcd", 0)),
        (
            "payload over max_payload",
            channel_data(CHANNEL, &vec![7u8; usize::from(MAX_PAYLOAD) + 1], 0),
        ),
        (
            "65,000-byte datagram",
            channel_data(CHANNEL, &vec![9u8; 65_000 - 4], 0),
        ),
        ("a STUN request", {
            let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
            request.extend_from_slice(&[1u8; 12]);
            request
        }),
    ];
    for (what, frame) in &cases {
        sockets.passes_up_to_listener(frame, what);
    }

    // The peer side: empty, too large, and a datagram from another port of the peer's host.
    sockets.passes_up_to_relay(b"", "empty peer datagram");
    sockets.passes_up_to_relay(&vec![3u8; usize::from(MAX_PAYLOAD) + 1], "peer over max");
    sockets.passes_up_to_relay(&vec![4u8; 65_000], "65,000-byte peer datagram");
    let stranger = socket();
    stranger
        .send_to(b"stranger", Sockets::addr(&sockets.relay))
        .unwrap();
    let (got, from) = expect(&sockets.relay, "unknown peer port");
    assert_eq!(
        (got.as_slice(), from),
        (&b"stranger"[..], stranger.local_addr().unwrap())
    );
    expect_nothing(&sockets.client, "unknown peer port");

    // The same channel from another client port is not the bound client.
    let other_client = socket();
    let frame = channel_data(CHANNEL, b"abcd", 0);
    other_client
        .send_to(&frame, Sockets::addr(&sockets.listener))
        .unwrap();
    let (got, _) = expect(&sockets.listener, "another client port");
    assert_eq!(got, frame);
    expect_nothing(&sockets.peer, "another client port");

    assert_eq!(fast_path.counters(SLOT).unwrap(), SlotCounters::default());
    // And the entry still works after all that.
    sockets.relays_to_peer(b"still here", 2, "after the hostile frames");
    assert_eq!(fast_path.counters(SLOT).unwrap().to_peer_packets, 1);
}

#[test]
fn fragments_and_ip_options_pass_up_untouched() {
    let fast_path = load();
    let sockets = Sockets::new();
    fast_path.install(&sockets.channel()).unwrap();
    fast_path.reset(SLOT).unwrap();
    let raw = RawSender::new();
    let client = Sockets::addr(&sockets.client);
    let listener = Sockets::addr(&sockets.listener);
    let frame = channel_data(CHANNEL, b"0123456789abcdef", 0);

    // Hand-made datagrams whose ChannelData matches the entry: the tuple and channel are
    // right, only the IP layer differs.
    let udp = udp_datagram(client, listener, &frame);

    // IP options (one 4-byte NOP option word): the kernel delivers it; the program must not
    // rewrite it.
    raw.send(
        &ip_packet(
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::LOCALHOST,
            &udp,
            0,
            0,
            &[1, 1, 1, 1],
        ),
        listener,
    );
    let (got, from) = expect(&sockets.listener, "IP options");
    assert_eq!((got.as_slice(), from), (frame.as_slice(), client));
    expect_nothing(&sockets.peer, "IP options");

    // Two fragments: the first with MF, the second at offset 16 bytes. Neither may be
    // rewritten; the kernel reassembles them for the listener.
    let id = 0x7a31;
    raw.send(
        &ip_packet(
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::LOCALHOST,
            &udp[..16],
            id,
            0x2000,
            &[],
        ),
        listener,
    );
    raw.send(
        &ip_packet(
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::LOCALHOST,
            &udp[16..],
            id,
            16 / 8,
            &[],
        ),
        listener,
    );
    let (got, from) = expect(&sockets.listener, "fragments");
    assert_eq!((got.as_slice(), from), (frame.as_slice(), client));
    expect_nothing(&sockets.peer, "fragments");

    assert_eq!(fast_path.counters(SLOT).unwrap(), SlotCounters::default());
}

#[test]
fn gso_batches_pass_up_and_are_split_by_the_stack() {
    let fast_path = load();
    let sockets = Sockets::new();
    fast_path.install(&sockets.channel()).unwrap();
    fast_path.reset(SLOT).unwrap();
    // A 12-byte ChannelData frame and a 3-byte tail in one send with UDP_SEGMENT: read whole,
    // a GSO packet of the two would look like ChannelData with 3 bytes of padding. On lo the
    // kernel splits UDP GSO before the ingress hook (the program's gso_segs guard removed, this
    // test still passes: it checks the segments arrive as sent, not the guard; a veth with
    // UDP GRO is where the guard matters).
    let segment = channel_data(CHANNEL, b"gso-data", 0);
    let size = segment.len() as libc::c_int;
    {
        use std::os::fd::AsRawFd;
        // SAFETY: setsockopt with a pointer to a live c_int of the size given.
        let result = unsafe {
            libc::setsockopt(
                sockets.client.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            result,
            0,
            "UDP_SEGMENT: {}",
            std::io::Error::last_os_error()
        );
    }
    let tail = b"end".to_vec();
    let batch = [segment.clone(), tail.clone()].concat();
    sockets
        .client
        .send_to(&batch, Sockets::addr(&sockets.listener))
        .unwrap();
    for (index, expected) in [segment, tail].iter().enumerate() {
        let (got, _) = expect(&sockets.listener, &format!("GSO segment {index}"));
        assert_eq!(&got, expected, "GSO segment {index}");
    }
    expect_nothing(&sockets.peer, "GSO");
    assert_eq!(fast_path.counters(SLOT).unwrap(), SlotCounters::default());
}

#[test]
fn ipv6_passes_up_untouched() {
    let fast_path = load();
    let sockets = Sockets::new();
    fast_path.install(&sockets.channel()).unwrap();
    let listener = UdpSocket::bind("[::1]:0").unwrap();
    let client = UdpSocket::bind("[::1]:0").unwrap();
    let frame = channel_data(CHANNEL, b"over IPv6", 0);
    client
        .send_to(&frame, listener.local_addr().unwrap())
        .unwrap();
    let (got, from) = expect(&listener, "IPv6");
    assert_eq!((got, from), (frame, client.local_addr().unwrap()));
    assert_eq!(fast_path.carried().unwrap(), 0);
}

#[test]
fn channels_up_to_0x7fff_are_carried() {
    // The core binds 0x4000..=0x7FFF (RFC 5766 clients use all of it): so does the kernel.
    let fast_path = load();
    let sockets = Sockets::new();
    let channel = Channel {
        channel: 0x7FFF,
        ..sockets.channel()
    };
    fast_path.install(&channel).unwrap();
    let frame = channel_data(0x7FFF, b"top channel", 1);
    sockets
        .client
        .send_to(&frame, Sockets::addr(&sockets.listener))
        .unwrap();
    let (got, from) = expect(&sockets.peer, "channel 0x7FFF");
    assert_eq!(
        (got.as_slice(), from),
        (&b"top channel"[..], Sockets::addr(&sockets.relay))
    );
    sockets
        .peer
        .send_to(b"back", Sockets::addr(&sockets.relay))
        .unwrap();
    let (got, _) = expect(&sockets.client, "channel 0x7FFF back");
    assert_eq!(got, channel_data(0x7FFF, b"back", 0));
}

#[test]
fn nothing_is_relayed_once_the_fast_path_is_dropped() {
    let sockets = Sockets::new();
    {
        let fast_path = load();
        fast_path.install(&sockets.channel()).unwrap();
        sockets.relays_to_peer(b"while loaded", 0, "while loaded");
    }
    sockets.passes_up_to_listener(&channel_data(CHANNEL, b"dropped", 0), "after drop");
    sockets.passes_up_to_relay(b"dropped", "after drop");
}

#[test]
fn two_fast_paths_on_lo_each_relay_their_own() {
    // Tests (and turnpike processes) share lo: a program must hand what it does not know to
    // the next one.
    let first = load();
    let second = load();
    let a = Sockets::new();
    let b = Sockets::new();
    first.install(&a.channel()).unwrap();
    second.install(&b.channel()).unwrap();
    first.reset(SLOT).unwrap();
    second.reset(SLOT).unwrap();
    a.relays_to_peer(b"for the first", 0, "first");
    b.relays_to_peer(b"for the second", 0, "second");
    b.relays_to_client(b"back to the second", "second, back");
    assert_eq!(first.counters(SLOT).unwrap().to_peer_packets, 1);
    assert_eq!(second.counters(SLOT).unwrap().to_peer_packets, 1);
    assert_eq!(second.counters(SLOT).unwrap().to_client_packets, 1);
}
