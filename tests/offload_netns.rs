//! The kernel fast path off loopback: three network namespaces the test makes (client, server,
//! peer), joined by two veth pairs on private addresses, with IP forwarding off in the server's
//! namespace. The real binary runs in the server's namespace with `offload = "on"`; a raw TURN
//! client relays through it to a UDP peer. Proves that datagrams are rewritten in the kernel and
//! sent out of the other interface (routed by the kernel's table, the neighbour resolved by the
//! kernel), with UDP checksums the receiving kernels verify; that a wrong checksum stays wrong
//! (never laundered); that a datagram larger than the path's MTU, or whose checksum a local
//! sender left to the device, goes through user space instead; and that SIGKILL stops it all.
//! Needs root (CI and the developers' machines run as root); never skipped.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::netns::NetNs;
use common::raw::{RawSender, ip_packet, udp_checksum, udp_datagram};
use common::stun_client::StunClient;
use common::uclient;
use common::{Server, TestConfig};

const CHANNEL: u16 = 0x4001;
const TOKEN: &str = "offload-netns-token-0123456789";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
const LISTENER_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
const RELAY_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 2);
/// How long to wait for a datagram that should come.
const ARRIVES: Duration = Duration::from_secs(5);
/// How long to wait before concluding a datagram did not come.
const QUIET: Duration = Duration::from_millis(500);

/// client (c0) <-> (s1) server (s2) <-> (p0) peer.
struct Topology {
    client: NetNs,
    server: NetNs,
    peer: NetNs,
}

impl Topology {
    /// The three namespaces and two veth pairs, addressed and routed. `device_checksums`: the
    /// client's and peer's interfaces leave the UDP checksum to the device (veth's default: the
    /// datagram arrives with its checksum unfilled, as from a local sender); otherwise the
    /// senders' stacks fill it in, as a datagram from another host arrives.
    fn new(device_checksums: bool) -> Topology {
        let topology = Topology {
            client: NetNs::new("oc"),
            server: NetNs::new("os"),
            peer: NetNs::new("op"),
        };
        let (client, server, peer) = (&topology.client, &topology.server, &topology.peer);
        server.ip(&[
            "link",
            "add",
            "s1",
            "type",
            "veth",
            "peer",
            "name",
            "c0",
            "netns",
            client.name(),
        ]);
        server.ip(&[
            "link",
            "add",
            "s2",
            "type",
            "veth",
            "peer",
            "name",
            "p0",
            "netns",
            peer.name(),
        ]);
        client.ip(&["address", "add", "10.200.1.2/24", "dev", "c0"]);
        server.ip(&["address", "add", "10.200.1.1/24", "dev", "s1"]);
        server.ip(&["address", "add", "10.200.2.1/24", "dev", "s2"]);
        peer.ip(&["address", "add", "10.200.2.2/24", "dev", "p0"]);
        for (netns, device) in [(client, "c0"), (server, "s1"), (server, "s2"), (peer, "p0")] {
            netns.ip(&["link", "set", device, "up"]);
        }
        client.ip(&["route", "add", "default", "via", "10.200.1.1"]);
        peer.ip(&["route", "add", "default", "via", "10.200.2.1"]);
        if !device_checksums {
            set_tx_checksumming(client, "c0", false);
            set_tx_checksumming(peer, "p0", false);
        }
        let forwarding = server.run(|| {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read ip_forward")
        });
        assert_eq!(
            forwarding.trim(),
            "0",
            "the server's namespace does not forward"
        );
        topology
    }

    fn start_server(&self) -> Server {
        let dir = tempfile::tempdir().expect("create a tempdir");
        let config = TestConfig {
            transports: vec!["udp"],
            offload: "on",
            allow: vec!["10.200.2.0/24"],
            extra: format!("[http]\naddress = \"10.200.1.1:0\"\ntoken = \"{TOKEN}\"\n"),
            ..TestConfig::default()
        };
        let toml = common::base_config(&config, dir.path())
            .replace("address = \"127.0.0.1:0\"", "address = \"10.200.1.1:0\"")
            .replace("address = \"127.0.0.1\"", "address = \"10.200.2.1\"");
        assert!(!toml.contains("127.0.0.1"), "{toml}");
        let server = Server::start_in_netns(&self.server, &toml);
        assert_eq!(server.log_messages("kernel fast path active").len(), 1);
        server
    }
}

/// What the status API says the program left to user space, by reason (the API listens in the
/// server's namespace).
fn passed_up(topology: &Topology, server: &Server) -> serde_json::Value {
    let api = server.addr("http");
    let status = topology
        .server
        .run(|| common::http::get_json(api, "/api/v1/status", TOKEN));
    assert_eq!(status["offload"]["active"], true, "{status}");
    status["offload"]["passed_up"].clone()
}

/// A bound channel across the namespaces.
struct Leg {
    client: StunClient,
    peer: UdpSocket,
    relayed: SocketAddr,
}

fn leg(topology: &Topology, server: &Server) -> Leg {
    let listener = server.addr("udp");
    assert_eq!(listener.ip(), LISTENER_IP);
    let peer = topology
        .peer
        .run(|| UdpSocket::bind((PEER_IP, 0)).expect("bind the peer"));
    let mut client = topology
        .client
        .run(|| StunClient::udp(listener, &format!("{CLIENT_IP}:0"), "alice", "wonderland"));
    let relayed = client.allocate().expect("an allocation");
    assert_eq!(relayed.ip(), RELAY_IP);
    assert_eq!(client.bind(CHANNEL, peer.local_addr().unwrap()), None);
    Leg {
        client,
        peer,
        relayed,
    }
}

fn payload(size: usize, round: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 13 + round * 7 + 1) as u8).collect()
}

/// ChannelData with `padding` bytes after the payload (any content: RFC 8656 §12.5 does not
/// say what padding holds, and the checksum covers it).
fn channel_data(payload: &[u8], padding: &[u8]) -> Vec<u8> {
    let mut frame = CHANNEL.to_be_bytes().to_vec();
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.extend_from_slice(padding);
    frame
}

/// Sends `rounds` payloads of assorted sizes (odd and even, with and without padding) each way
/// and checks each arrives whole from the right address.
fn relay_both_ways(leg: &mut Leg, rounds: usize) {
    let pads: [&[u8]; 4] = [b"", b"\xa5", b"\x5a\xc3", b"\xff\x01\x7e"];
    for round in 0..rounds {
        let data = payload(1 + round * 53, round);
        leg.client
            .send_frame(&channel_data(&data, pads[round % pads.len()]));
        let (got, from) = common::receive(&leg.peer, ARRIVES)
            .unwrap_or_else(|| panic!("round {round}: the peer gets {} bytes", data.len()));
        assert_eq!(got, data, "round {round} at the peer");
        assert_eq!(from, leg.relayed, "round {round}: from the relayed address");
        leg.peer.send_to(&data, leg.relayed).unwrap();
        let back = leg
            .client
            .recv_data(Instant::now() + ARRIVES)
            .unwrap_or_else(|| panic!("round {round}: the client gets {} bytes", data.len()));
        assert_eq!(back, data, "round {round} at the client");
    }
}

/// The namespace's `Udp: InCsumErrors` (datagrams its kernel dropped for a wrong checksum).
fn checksum_errors(netns: &NetNs) -> u64 {
    let snmp = netns.run(|| {
        std::fs::read_to_string("/proc/thread-self/net/snmp").expect("read /proc/net/snmp")
    });
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp: "));
    let (names, values) = (
        udp.next().expect("Udp names"),
        udp.next().expect("Udp values"),
    );
    let column = names
        .split_whitespace()
        .position(|name| name == "InCsumErrors")
        .expect("an InCsumErrors column");
    values
        .split_whitespace()
        .nth(column)
        .unwrap()
        .parse()
        .unwrap()
}

/// Turns the device's transmit checksumming on or off (ETHTOOL_STXCSUM, what `ethtool -K dev
/// tx off` does).
fn set_tx_checksumming(netns: &NetNs, device: &str, on: bool) {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    let device = device.to_string();
    netns.run(move || {
        // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: a descriptor we just opened.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut value = EthtoolValue {
            cmd: ETHTOOL_STXCSUM,
            data: u32::from(on),
        };
        // SAFETY: an all-zero ifreq is valid; the name and data pointer are set below.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(device.bytes()) {
            *slot = byte as libc::c_char;
        }
        request.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        // SAFETY: SIOCETHTOOL reads the ifreq and the ethtool_value it points to, both ours.
        let done = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) };
        assert_eq!(
            done,
            0,
            "ETHTOOL_STXCSUM {device}: {}",
            std::io::Error::last_os_error()
        );
    });
}

/// Sends an IPv4/UDP datagram built by hand from `from` to `to`, through a raw socket in
/// `netns`, with its UDP checksum made wrong on purpose when `corrupt`.
fn send_raw(netns: &NetNs, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8], corrupt: bool) {
    let mut udp = udp_datagram(SocketAddr::V4(from), SocketAddr::V4(to), payload);
    let mut check = udp_checksum(*from.ip(), *to.ip(), &udp);
    if corrupt {
        check = if check == 0x1234 { 0x4321 } else { 0x1234 };
    }
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    // Don't Fragment, as a UDP socket sends.
    let packet = ip_packet(*from.ip(), *to.ip(), &udp, 0, 0x4000, &[]);
    let raw = netns.run(RawSender::new);
    raw.send(&packet, SocketAddr::V4(to));
}

fn v4(address: SocketAddr) -> SocketAddrV4 {
    match address {
        SocketAddr::V4(address) => address,
        SocketAddr::V6(_) => panic!("{address} is not IPv4"),
    }
}

#[test]
fn channels_are_relayed_in_the_kernel_across_interfaces_with_valid_checksums() {
    let topology = Topology::new(false);
    let mut server = topology.start_server();
    let mut leg = leg(&topology, &server);
    let errors_before = (
        checksum_errors(&topology.client),
        checksum_errors(&topology.peer),
    );
    let before = server.stats();
    const ROUNDS: usize = 24;
    relay_both_ways(&mut leg, ROUNDS);
    let after = server.stats();
    let (carried, to_peer, to_client) = after.relayed_since(&before, "across veth");
    // Every datagram was carried by the kernel, and each receiving kernel verified its
    // checksum (none failed: the count below is what the corrupted datagrams raise).
    assert_eq!(carried, 2 * ROUNDS as u64);
    assert_eq!(to_peer, ROUNDS as u64);
    assert_eq!(to_client, ROUNDS as u64);
    assert_eq!(
        (
            checksum_errors(&topology.client),
            checksum_errors(&topology.peer)
        ),
        errors_before,
        "no relayed datagram had a wrong checksum"
    );

    // A wrong checksum is carried over as wrong: the receiving kernel drops the datagram (and
    // counts it), as it would have dropped the original.
    let client = v4(leg.client.local_addr());
    let listener = v4(server.addr("udp"));
    let peer = v4(leg.peer.local_addr().unwrap());
    let relayed = v4(leg.relayed);
    let carried = server.stats().get("offload_carried");
    send_raw(
        &topology.client,
        client,
        listener,
        &channel_data(b"corrupted on the way to the peer", b""),
        true,
    );
    assert_eq!(
        common::receive(&leg.peer, QUIET),
        None,
        "a corrupted datagram"
    );
    send_raw(
        &topology.peer,
        peer,
        relayed,
        b"corrupted on the way to the client",
        true,
    );
    assert_eq!(leg.client.recv_data(Instant::now() + QUIET), None);
    assert_eq!(
        server.stats().get("offload_carried"),
        carried + 2,
        "the kernel carried both"
    );
    assert_eq!(
        (
            checksum_errors(&topology.client),
            checksum_errors(&topology.peer)
        ),
        (errors_before.0 + 1, errors_before.1 + 1),
        "each receiving kernel dropped one for its checksum"
    );
    // The same datagrams with their checksums right arrive, and a datagram with no checksum
    // (0, legal over IPv4) too.
    send_raw(
        &topology.client,
        client,
        listener,
        &channel_data(b"hand-made, checksum right", b"\x01"),
        false,
    );
    let (got, _) = common::receive(&leg.peer, ARRIVES).expect("the hand-made datagram");
    assert_eq!(got, b"hand-made, checksum right");
    send_raw(&topology.peer, peer, relayed, b"hand-made back", false);
    assert_eq!(
        leg.client.recv_data(Instant::now() + ARRIVES).as_deref(),
        Some(&b"hand-made back"[..])
    );

    // A payload too big for the path's MTU unfragmented goes up, and user space sends it (the
    // stack fragments it).
    topology
        .server
        .ip(&["link", "set", "dev", "s2", "mtu", "1200"]);
    assert_eq!(
        leg.client.bind(CHANNEL, leg.peer.local_addr().unwrap()),
        None
    );
    let carried = server.stats().get("offload_carried");
    let big = payload(1400, 99);
    leg.client.send_frame(&channel_data(&big, b""));
    let (got, _) = common::receive(&leg.peer, ARRIVES).expect("the large datagram");
    assert_eq!(got, big);
    let small = payload(1000, 98);
    leg.client.send_frame(&channel_data(&small, b""));
    let (got, _) = common::receive(&leg.peer, ARRIVES).expect("a datagram that fits");
    assert_eq!(got, small);
    assert_eq!(
        server.stats().get("offload_carried"),
        carried + 1,
        "the kernel carried the one that fits, user space the other"
    );
    let passed = passed_up(&topology, &server);
    assert_eq!(passed["too_big"], 1, "{passed}");
    assert_eq!(passed["checksum_partial"], 0, "{passed}");

    // SIGKILL: the program goes with the process.
    server.kill();
    leg.client.send_frame(&channel_data(b"after SIGKILL", b""));
    assert_eq!(
        common::receive(&leg.peer, QUIET),
        None,
        "relayed after SIGKILL"
    );
    let _ = leg.peer.send_to(b"after SIGKILL", leg.relayed);
    assert_eq!(leg.client.recv_data(Instant::now() + QUIET), None);
}

#[test]
fn datagrams_whose_checksum_a_local_sender_left_to_the_device_go_through_user_space() {
    // veth's default: the senders leave the checksum to the device, so it is unfilled when the
    // datagram reaches the server. Out of the server, a device could fill it in at the wrong
    // place (the headers moved), so the program leaves these to user space.
    let topology = Topology::new(true);
    let server = topology.start_server();
    let mut leg = leg(&topology, &server);
    let before = server.stats();
    relay_both_ways(&mut leg, 8);
    let after = server.stats();
    assert_eq!(after.get("offload_carried"), before.get("offload_carried"));
    let passed = passed_up(&topology, &server);
    assert_eq!(passed["checksum_partial"], 16, "both ways: {passed}");
    assert_eq!(
        after.get("to_peer_packets") - before.get("to_peer_packets"),
        8
    );
    assert_eq!(
        after.get("to_client_packets") - before.get("to_client_packets"),
        8
    );
}

#[test]
fn coturn_uclient_relays_over_the_fast_path_between_namespaces() {
    // uclient in the client's namespace, turnutils_peer in the peer's: each process starts in
    // the namespace of the thread that spawns it.
    let topology = Topology::new(false);
    let server = topology.start_server();
    let dir = tempfile::tempdir().expect("create a tempdir");
    let peer = topology
        .peer
        .run(|| uclient::start_peer_on(dir.path(), PEER_IP.into()));
    let before = server.stats();
    let summary = topology.client.run(|| {
        uclient::run(
            &uclient::Run {
                case: "udp channels across veth",
                server: server.addr("udp"),
                transport: "udp",
                credentials: ["-u", "alice", "-w", "wonderland"],
                send_indication: false,
            },
            &peer,
            dir.path(),
        )
    });
    let after = server.stats();
    let carried = after.get("offload_carried") - before.get("offload_carried");
    eprintln!("uclient across veth: {summary:?}; the kernel carried {carried} datagrams");
    // Every message went out and came back; uclient's channel traffic went through the kernel
    // (a retried run sends twice as many).
    assert!(
        carried >= 2 * uclient::CLIENTS * uclient::MESSAGES,
        "carried {carried}"
    );
}

#[test]
fn a_peer_on_the_server_host_is_relayed_in_user_space() {
    // The peer is a socket in the server's own namespace. The client's ChannelData arrives on
    // s1: rewritten, it would come from one of the host's own addresses on an interface other
    // than lo, which the stack drops (IP_LOCAL_SOURCE; found with the kfree_skb tracepoint when
    // the program tried it), so the program leaves it to user space. The peer's answers are
    // local traffic with the checksum left to the device: user space relays them too.
    let topology = Topology::new(false);
    let server = topology.start_server();
    let peer = topology
        .server
        .run(|| UdpSocket::bind((RELAY_IP, 0)).expect("bind the local peer"));
    let listener = server.addr("udp");
    let mut client = topology
        .client
        .run(|| StunClient::udp(listener, &format!("{CLIENT_IP}:0"), "alice", "wonderland"));
    let relayed = client.allocate().expect("an allocation");
    assert_eq!(client.bind(CHANNEL, peer.local_addr().unwrap()), None);
    let before = server.stats();
    const ROUNDS: u64 = 10;
    for round in 0..ROUNDS as usize {
        let data = payload(100 + round, round);
        client.send_frame(&channel_data(&data, b""));
        let (got, from) = common::receive(&peer, ARRIVES).expect("the local peer gets it");
        assert_eq!((got.as_slice(), from), (data.as_slice(), relayed));
        peer.send_to(&data, relayed).unwrap();
        assert_eq!(
            client.recv_data(Instant::now() + ARRIVES).as_deref(),
            Some(data.as_slice())
        );
    }
    let after = server.stats();
    let (carried, to_peer, to_client) = after.relayed_since(&before, "local peer");
    assert_eq!(carried, 0, "relayed in user space");
    // The client's side was in the tables and left up (the peer's answers come in on lo, where
    // no program of this server is attached).
    let passed = passed_up(&topology, &server);
    assert_eq!(passed["local_off_lo"], ROUNDS, "{passed}");
    assert_eq!(to_peer, ROUNDS);
    assert_eq!(to_client, ROUNDS);
}

#[test]
fn two_clients_relayed_to_each_other_are_carried_in_one_rewrite() {
    // Both clients use this server and bind a channel to each other's relayed address (as two
    // browsers with relay-only ICE do): the program turns A's ChannelData straight into B's,
    // without the datagram ever reaching a relay socket.
    let topology = Topology::new(false);
    let server = topology.start_server();
    let listener = server.addr("udp");
    let new_client = || {
        topology
            .client
            .run(|| StunClient::udp(listener, &format!("{CLIENT_IP}:0"), "alice", "wonderland"))
    };
    let (mut a, mut b) = (new_client(), new_client());
    let a_relayed = a.allocate().expect("A's allocation");
    let b_relayed = b.allocate().expect("B's allocation");
    const BACK: u16 = 0x4abc;
    assert_eq!(a.bind(CHANNEL, b_relayed), None);
    assert_eq!(b.bind(BACK, a_relayed), None);
    let errors_before = checksum_errors(&topology.client);
    let before = server.stats();
    const ROUNDS: usize = 12;
    let pads: [&[u8]; 4] = [b"", b"\x11", b"\x22\x33", b"\x44\x55\x66"];
    for round in 0..ROUNDS {
        let data = payload(1 + round * 97, round);
        a.send_frame(&channel_data(&data, pads[round % 4]));
        assert_eq!(
            b.recv_data(Instant::now() + ARRIVES).as_deref(),
            Some(data.as_slice()),
            "round {round}: A to B"
        );
        let mut back = BACK.to_be_bytes().to_vec();
        back.extend_from_slice(&(data.len() as u16).to_be_bytes());
        back.extend_from_slice(&data);
        b.send_frame(&back);
        assert_eq!(
            a.recv_data(Instant::now() + ARRIVES).as_deref(),
            Some(data.as_slice()),
            "round {round}: B to A"
        );
    }
    let after = server.stats();
    let (carried, to_peer, to_client) = after.relayed_since(&before, "client to client");
    // Each datagram is two relayed datagrams (A's to its peer, B's from its peer), as user
    // space counts them, all in the kernel; the client's kernel verified every checksum.
    assert_eq!(carried, 4 * ROUNDS as u64);
    assert_eq!(to_peer, 2 * ROUNDS as u64);
    assert_eq!(to_client, 2 * ROUNDS as u64);
    assert_eq!(checksum_errors(&topology.client), errors_before);
    // Refresh 0 of B: A's ChannelData now goes to B's former relayed address, where nothing
    // answers, and nobody gets it.
    assert_eq!(b.refresh(0), None);
    a.send_frame(&channel_data(b"after B left", b""));
    assert_eq!(b.recv_data(Instant::now() + QUIET), None);
}
