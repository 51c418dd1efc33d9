//! The kernel fast path in the real binary (`[relay] offload`), driven by a raw TURN client over
//! UDP and plain UDP peer sockets on 127.0.0.1: channel traffic relayed both ways by the
//! kernel (its `offload_carried` count equals what was sent, the relayed counters, the
//! allocation list and the end-of-allocation log line include it exactly once), relaying
//! stops at once when the allocation is deleted, closed by the operator, expires or the
//! process is killed, and `offload = "off"` relays the same through user space. Needs root
//! (CI and the developers' machines run as root); never skipped.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::http::{get_json, http};
use common::stun_client::StunClient;
use common::{Server, TestConfig};
use serde_json::Value;

const TOKEN: &str = "offload-token-0123456789abcdef";
const CHANNEL: u16 = 0x4001;
const ROUNDS: usize = 20;
/// How long to wait for a datagram that should come.
const ARRIVES: Duration = Duration::from_secs(5);
/// How long to wait before concluding a datagram did not come.
const QUIET: Duration = Duration::from_millis(500);

fn config_with(offload: &'static str, lifetime: Option<&str>) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("create a tempdir");
    let config = TestConfig {
        transports: vec!["udp"],
        offload,
        extra: format!("[http]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
        ..TestConfig::default()
    };
    let lifetime = lifetime.map_or(String::new(), |l| {
        format!("default-lifetime = \"{l}\"\nmax-lifetime = \"{l}\"\n")
    });
    let toml = common::base_config(&config, dir.path()).replacen(
        "\n[relay]\n",
        &format!("\n[relay]\n{lifetime}"),
        1,
    );
    assert!(toml.contains(&format!("offload = \"{offload}\"")), "{toml}");
    (toml, dir)
}

fn server(offload: &'static str, lifetime: Option<&str>) -> Server {
    let (toml, dir) = config_with(offload, lifetime);
    Server::start_in(&toml, dir)
}

/// A bound channel: the client, the peer socket and the allocation's relayed address.
struct Leg {
    client: StunClient,
    peer: UdpSocket,
    relayed: SocketAddr,
}

fn leg(server: &Server) -> Leg {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
    let relayed = client.allocate().expect("an allocation");
    assert_eq!(client.bind(CHANNEL, peer.local_addr().unwrap()), None);
    Leg {
        client,
        peer,
        relayed,
    }
}

fn payload(size: usize, round: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 7 + round) as u8).collect()
}

/// Relays `ROUNDS` payloads each way and checks each arrives whole from the right address;
/// returns the payload bytes sent each way.
fn relay_both_ways(leg: &mut Leg) -> u64 {
    let mut bytes = 0;
    for round in 0..ROUNDS {
        let data = payload(1 + round * 61, round);
        bytes += data.len() as u64;
        leg.client.send_channel_data(CHANNEL, &data);
        let (got, from) = common::receive(&leg.peer, ARRIVES).expect("the peer gets the payload");
        assert_eq!(got, data, "round {round} at the peer");
        assert_eq!(from, leg.relayed, "round {round}: from the relayed address");
        leg.peer.send_to(&data, leg.relayed).unwrap();
        let back = leg
            .client
            .recv_data(Instant::now() + ARRIVES)
            .expect("the client gets the peer's datagram");
        assert_eq!(back, data, "round {round} at the client");
    }
    bytes
}

/// After the allocation ended: the client's ChannelData reaches no peer, the peer's datagrams
/// reach no client.
fn nothing_relayed(leg: &mut Leg, what: &str) {
    leg.client.send_channel_data(CHANNEL, b"after the end");
    assert_eq!(
        common::receive(&leg.peer, QUIET),
        None,
        "{what}: the peer got data"
    );
    let _ = leg.peer.send_to(b"after the end", leg.relayed);
    assert_eq!(
        leg.client.recv_data(Instant::now() + QUIET),
        None,
        "{what}: the client got data"
    );
}

fn allocation_of(api: SocketAddr, client: &StunClient) -> Value {
    let list = get_json(api, "/api/v1/allocations", TOKEN);
    let local = client.local_addr().to_string();
    list["allocations"]
        .as_array()
        .expect("an allocations array")
        .iter()
        .find(|a| a["client"]["address"] == local)
        .unwrap_or_else(|| panic!("no allocation for {local} in {list}"))
        .clone()
}

#[test]
fn offload_on_relays_both_ways_in_the_kernel_and_counts_it_once() {
    let server = server("on", None);
    let api = server.addr("http");
    let status = get_json(api, "/api/v1/status", TOKEN);
    assert_eq!(status["offload"]["active"], true, "{status}");
    let log = server.log_messages("kernel fast path active");
    assert_eq!(log.len(), 1, "{:?}", server.log());

    let mut leg = leg(&server);
    let before = server.stats();
    let bytes = relay_both_ways(&mut leg);
    let after = server.stats();
    let (carried, to_peer, to_client) = after.relayed_since(&before, "on lo");
    // Every datagram was rewritten by the kernel (a rewritten datagram never reaches the
    // server's sockets), and the relayed counters count each once.
    assert_eq!(carried, 2 * ROUNDS as u64);
    assert_eq!(to_peer, ROUNDS as u64);
    assert_eq!(to_client, ROUNDS as u64);
    assert_eq!(after.since(&before, "to_peer_bytes"), bytes);
    assert_eq!(after.since(&before, "to_client_bytes"), bytes);

    // The allocation's own figures, the status API and /metrics include the kernel's counts.
    let allocation = allocation_of(api, &leg.client);
    assert_eq!(allocation["to_peer"]["packets"], ROUNDS, "{allocation}");
    assert_eq!(allocation["to_client"]["bytes"], bytes, "{allocation}");
    let status = get_json(api, "/api/v1/status", TOKEN);
    assert_eq!(status["offload"]["carried_packets"], 2 * ROUNDS, "{status}");
    let (code, metrics) = http(api, "GET", "/metrics", Some(TOKEN), "");
    assert_eq!(code, 200);
    assert!(metrics.contains("turnpike_offload_active 1"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "turnpike_offload_carried_packets_total {}",
            2 * ROUNDS
        )),
        "{metrics}"
    );
    // Nothing was left up: every datagram was for lo, checksummed and small.
    for reason in ["checksum_partial", "too_big", "local_off_lo"] {
        assert!(
            metrics.contains(&format!(
                "turnpike_offload_passed_up_packets_total{{reason=\"{reason}\"}} 0"
            )),
            "{metrics}"
        );
        assert_eq!(status["offload"]["passed_up"][reason], 0, "{status}");
    }

    // A Send indication still goes through user space, and is counted once too.
    leg.client
        .send_indication(leg.peer.local_addr().unwrap(), b"indication");
    let (got, _) = common::receive(&leg.peer, ARRIVES).expect("the indication's data");
    assert_eq!(got, b"indication");
    let later = server.stats();
    assert_eq!(later.get("offload_carried"), after.get("offload_carried"));
    assert_eq!(
        later.get("to_peer_packets"),
        after.get("to_peer_packets") + 1
    );

    // Refresh 0: relaying stops at once, in the kernel too; the log line has the kernel's
    // counts.
    assert_eq!(leg.client.refresh(0), None);
    nothing_relayed(&mut leg, "after Refresh 0");
    let ended = server.wait_for_log("allocation ended", 1, ARRIVES);
    assert_eq!(ended.len(), 1, "{:?}", server.log());
    let line: Value = serde_json::from_str(&ended[0]).unwrap();
    assert_eq!(
        line["fields"]["to_peer_packets"],
        ROUNDS as u64 + 1,
        "{line}"
    );
    assert_eq!(line["fields"]["to_client_packets"], ROUNDS as u64, "{line}");
    assert_eq!(line["fields"]["reason"], "deleted", "{line}");
}

#[test]
fn operator_close_expiry_and_sigkill_stop_kernel_relaying() {
    let mut server = server("on", Some("5s"));
    let api = server.addr("http");

    // Closed by the operator.
    let mut closed = leg(&server);
    relay_both_ways(&mut closed);
    let id = allocation_of(api, &closed.client)["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let (code, body) = http(
        api,
        "DELETE",
        &format!("/api/v1/allocations/{id}"),
        Some(TOKEN),
        "",
    );
    assert_eq!(code, 200, "{body}");
    nothing_relayed(&mut closed, "after the operator's close");

    // Expired: a 5 s allocation never refreshed.
    let mut expiring = leg(&server);
    relay_both_ways(&mut expiring);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline
        && server
            .log_messages("allocation ended")
            .iter()
            .all(|l| !l.contains("\"expired\""))
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let expired = server
        .log_messages("allocation ended")
        .into_iter()
        .filter(|l| l.contains("\"expired\""))
        .count();
    assert_eq!(expired, 1, "the 5 s allocation expired: {:?}", server.log());
    nothing_relayed(&mut expiring, "after expiry");

    // SIGKILL: the program goes with the process; nothing is relayed afterwards.
    let mut killed = leg(&server);
    relay_both_ways(&mut killed);
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(10)).expect("killed");
    killed.client.send_channel_data(CHANNEL, b"after SIGKILL");
    assert_eq!(
        common::receive(&killed.peer, QUIET),
        None,
        "relayed after SIGKILL"
    );
    killed
        .peer
        .send_to(b"after SIGKILL", killed.relayed)
        .unwrap();
    assert_eq!(
        killed.client.recv_data(Instant::now() + QUIET),
        None,
        "relayed to the client after SIGKILL"
    );
}

#[test]
fn a_reload_keeps_the_fast_path_and_one_that_denies_the_peer_stops_it_at_once() {
    let server = server("on", None);
    let mut leg = leg(&server);
    relay_both_ways(&mut leg);
    let path = server.config_path();
    let original = std::fs::read_to_string(&path).unwrap();

    // A reload of the same file (the core gets a fresh configuration): the kernel goes on
    // relaying.
    server.signal(libc::SIGHUP);
    assert_eq!(
        server
            .wait_for_log("configuration reloaded", 1, ARRIVES)
            .len(),
        1,
        "{:?}",
        server.log()
    );
    let before = server.stats().get("offload_carried");
    relay_both_ways(&mut leg);
    assert_eq!(
        server.stats().get("offload_carried"),
        before + 2 * ROUNDS as u64
    );

    // A reload whose policy denies the peer: relaying stops at once, in the kernel too.
    let peer_ip = leg.peer.local_addr().unwrap().ip();
    let denied = original.replacen(
        "\n[peers]\n",
        &format!("\n[peers]\ndeny = [\"{peer_ip}/32\"]\n"),
        1,
    );
    assert_ne!(denied, original);
    std::fs::write(&path, denied).unwrap();
    server.signal(libc::SIGHUP);
    assert_eq!(
        server
            .wait_for_log("configuration reloaded", 2, ARRIVES)
            .len(),
        2,
        "{:?}",
        server.log()
    );
    let carried = server.stats().get("offload_carried");
    nothing_relayed(&mut leg, "after a reload denying the peer");
    assert_eq!(server.stats().get("offload_carried"), carried);
}

#[test]
fn a_drain_relays_on_in_the_kernel_until_the_process_exits() {
    let (toml, dir) = config_with("on", None);
    // A top-level key goes before every table.
    let mut server = Server::start_in(&format!("drain-timeout = \"3s\"\n{toml}"), dir);
    let mut leg = leg(&server);
    relay_both_ways(&mut leg);
    server.signal(libc::SIGTERM);
    let draining = server.wait_for_log("draining: no new allocations", 1, ARRIVES);
    assert_eq!(draining.len(), 1, "{:?}", server.log());
    // While it drains, the allocation relays on, through the kernel. (No SIGUSR1 here: a
    // draining server answers it only with its last stats line, when it stops.)
    relay_both_ways(&mut leg);
    // The drain ends, the process exits, and the program goes with it.
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.is_some(), "the server did not exit after its drain");
    nothing_relayed(&mut leg, "after the drained server exited");
    // Its last stats line counts both rounds as carried by the kernel.
    let last = server
        .log_messages("stats")
        .last()
        .cloned()
        .unwrap_or_else(|| panic!("no stats line at stop: {:?}", server.log()));
    let last: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(
        last["fields"]["offload_carried"],
        4 * ROUNDS as u64,
        "{last}"
    );
    assert_eq!(
        last["fields"]["to_peer_packets"],
        2 * ROUNDS as u64,
        "{last}"
    );
}

#[test]
fn offload_off_relays_the_same_in_user_space() {
    let server = server("off", None);
    user_space_relays_the_same(&server);
    assert!(
        server.log_messages("kernel fast path").is_empty(),
        "{:?}",
        server.log()
    );
}

#[test]
fn offload_auto_without_the_fast_path_relays_the_same_in_user_space() {
    // Without capabilities the program cannot load: "auto" says so once and goes on.
    let (toml, dir) = config_with("auto", None);
    let server = Server::start_without_capabilities(&toml, dir);
    let said = server.log_messages("kernel fast path unavailable");
    assert_eq!(said.len(), 1, "{:?}", server.log());
    assert!(
        said[0].contains("not permitted to load eBPF programs"),
        "{}",
        said[0]
    );
    user_space_relays_the_same(&server);
}

fn user_space_relays_the_same(server: &Server) {
    let api = server.addr("http");
    let status = get_json(api, "/api/v1/status", TOKEN);
    assert_eq!(status["offload"]["active"], false, "{status}");
    let mut leg = leg(server);
    let before = server.stats();
    let bytes = relay_both_ways(&mut leg);
    let after = server.stats();
    assert_eq!(after.get("offload_carried"), 0);
    assert_eq!(
        after.get("to_peer_packets") - before.get("to_peer_packets"),
        ROUNDS as u64
    );
    assert_eq!(
        after.get("to_client_bytes") - before.get("to_client_bytes"),
        bytes
    );
    assert_eq!(leg.client.refresh(0), None);
    nothing_relayed(&mut leg, "after Refresh 0");
}

/// Runs the binary with `args` and `-c <config>` where the configuration has
/// `offload = "<offload>"`; `without_capabilities` runs it as root with an empty capability
/// bounding set (setpriv), where eBPF cannot load. Returns whether it exited 0 and what it
/// printed (stdout and stderr).
fn run(args: &[&str], offload: &'static str, without_capabilities: bool) -> (bool, String) {
    run_edited(args, offload, without_capabilities, &|toml| toml)
}

/// [`run`] with the configuration passed through `edit` first.
fn run_edited(
    args: &[&str],
    offload: &'static str,
    without_capabilities: bool,
    edit: &dyn Fn(String) -> String,
) -> (bool, String) {
    let dir = tempfile::tempdir().expect("create a tempdir");
    let config = TestConfig {
        transports: vec!["udp"],
        offload,
        ..TestConfig::default()
    };
    let toml = edit(common::base_config(&config, dir.path()));
    let path = dir.path().join("turnpike.toml");
    std::fs::write(&path, toml).unwrap();
    // setpriv is looked for only by the runs that use it.
    let setpriv = without_capabilities.then(|| common::require_tool("setpriv"));
    let wrapper: Vec<&str> = match &setpriv {
        Some(setpriv) => vec![
            setpriv.to_str().expect("a UTF-8 path"),
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--",
        ],
        None => Vec::new(),
    };
    let path = path.to_str().expect("a UTF-8 path");
    let all: Vec<&str> = args.iter().copied().chain(["-c", path]).collect();
    let ran = common::run_turnpike(&wrapper, &all, Duration::from_secs(20));
    (ran.succeeded(), ran.printed())
}

#[test]
fn check_config_says_what_offload_comes_to() {
    let (ok, printed) = run(&["check-config"], "auto", false);
    assert!(ok, "{printed}");
    assert!(
        printed.contains(
            "offload: auto: the kernel fast path will relay UDP channel traffic (attaches to lo)"
        ),
        "{printed}"
    );
    let (ok, printed) = run(&["check-config"], "on", false);
    assert!(
        ok && printed.contains("offload: on: the kernel fast path will relay"),
        "{printed}"
    );
    let (ok, printed) = run(&["check-config"], "off", false);
    assert!(
        ok && printed.contains("offload: off: UDP channel traffic is relayed in user space"),
        "{printed}"
    );
    // Without the capabilities: "auto" says it falls back and why; "on" is an error.
    let (ok, printed) = run(&["check-config"], "auto", true);
    assert!(ok, "{printed}");
    assert!(
        printed.contains("offload: auto: relaying in user space: the kernel fast path cannot run: not permitted to load eBPF programs"),
        "{printed}"
    );
    let (ok, printed) = run(&["check-config"], "on", true);
    assert!(!ok, "{printed}");
    assert!(
        printed.contains(
            "relay.offload = \"on\" but the kernel fast path cannot run here: not permitted"
        ),
        "{printed}"
    );
    assert_eq!(
        printed
            .lines()
            .filter(|l| l.contains("relay.offload"))
            .count(),
        1,
        "{printed}"
    );

    // A relay address no interface of this host carries: "auto" stays in user space (saying
    // why) and "on" refuses. (Relaying between interfaces is tests/offload_netns.rs.)
    let off_loopback = |toml: String| {
        let edited = toml.replacen(
            "[relay]\naddress = \"127.0.0.1\"",
            "[relay]\naddress = \"192.0.2.1\"",
            1,
        );
        assert_ne!(edited, toml);
        edited
    };
    let (ok, printed) = run_edited(&["check-config"], "auto", false, &off_loopback);
    assert!(ok, "{printed}");
    assert!(
        printed.contains("offload: auto: relaying in user space: the kernel fast path cannot run: no interface carries 192.0.2.1"),
        "{printed}"
    );
    let (ok, printed) = run_edited(&["check-config"], "on", false, &off_loopback);
    assert!(
        !ok && printed.contains("cannot run here: no interface carries 192.0.2.1"),
        "{printed}"
    );
}

#[test]
fn offload_on_refuses_to_start_without_the_fast_path() {
    let (ok, printed) = run(&["serve"], "on", true);
    assert!(!ok, "{printed}");
    assert!(
        printed.contains(
            "turnpike: relay.offload = \"on\" but the kernel fast path cannot run: not permitted to load eBPF programs (run as root, or give the process CAP_BPF and CAP_NET_ADMIN)"
        ),
        "{printed}"
    );
    assert_eq!(
        printed.matches("Operation not permitted").count(),
        1,
        "{printed}"
    );
}

#[test]
fn a_denied_peer_never_reaches_the_kernel_tables() {
    let server = server("on", None);
    // The policy allows 127.0.0.1 only: 127.0.0.9 is refused (403) like any denied peer.
    let denied = UdpSocket::bind("127.0.0.9:0").unwrap();
    let denied_addr = denied.local_addr().unwrap();
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
    let relayed = client.allocate().expect("an allocation");
    let before = server.stats();
    assert_eq!(client.bind(CHANNEL, denied_addr), Some(403));
    assert_eq!(client.permit(&[denied_addr]), Some(403));
    // Neither direction is relayed, by the kernel or by user space.
    client.send_channel_data(CHANNEL, b"to a denied peer");
    assert_eq!(
        common::receive(&denied, QUIET),
        None,
        "the denied peer got data"
    );
    denied.send_to(b"from a denied peer", relayed).unwrap();
    assert_eq!(
        client.recv_data(Instant::now() + QUIET),
        None,
        "the client got the denied peer's datagram"
    );
    let after = server.stats();
    assert_eq!(after.get("offload_carried"), before.get("offload_carried"));
    assert_eq!(after.get("to_peer_packets"), before.get("to_peer_packets"));
    assert_eq!(
        after.get("to_client_packets"),
        before.get("to_client_packets")
    );
    // The same client's channel to an allowed peer is carried by the kernel at once.
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(client.bind(CHANNEL, peer.local_addr().unwrap()), None);
    client.send_channel_data(CHANNEL, b"to an allowed peer");
    let (got, from) = common::receive(&peer, ARRIVES).expect("the allowed peer's datagram");
    assert_eq!(
        (got.as_slice(), from),
        (&b"to an allowed peer"[..], relayed)
    );
    assert_eq!(
        server.stats().get("offload_carried"),
        after.get("offload_carried") + 1
    );
}

#[test]
fn the_capabilities_the_systemd_unit_names_are_enough_without_root() {
    // As the unit would run it: an unprivileged user whose only capabilities are the two the
    // unit's comment names (ambient, inherited and bounding, as AmbientCapabilities and
    // CapabilityBoundingSet set them). `check-config` loads and attaches the program to say
    // what offload comes to, so "on" passing is the proof; with either missing it fails.
    let dir = tempfile::tempdir().expect("create a tempdir");
    // nobody must be able to read the configuration.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = TestConfig {
        transports: vec!["udp"],
        offload: "on",
        ..TestConfig::default()
    };
    let path = dir.path().join("turnpike.toml");
    std::fs::write(&path, common::base_config(&config, dir.path())).unwrap();
    let as_nobody_with = |caps: &str| {
        let set = format!("-all,{caps}");
        let (inh, ambient, bounding) = (
            format!("--inh-caps={set}"),
            format!("--ambient-caps={set}"),
            format!("--bounding-set={set}"),
        );
        let setpriv = common::require_tool("setpriv");
        let wrapper = [
            setpriv.to_str().expect("a UTF-8 path"),
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &inh,
            &ambient,
            &bounding,
            "--",
        ];
        let path = path.to_str().expect("a UTF-8 path");
        let ran = common::run_turnpike(
            &wrapper,
            &["check-config", "-c", path],
            Duration::from_secs(20),
        );
        (ran.succeeded(), ran.printed())
    };
    let (ok, printed) = as_nobody_with("+bpf,+net_admin");
    assert!(
        ok && printed.contains("offload: on: the kernel fast path will relay"),
        "{printed}"
    );
    for missing in ["+bpf,+perfmon", "+net_admin,+perfmon", "+bpf", "+net_admin"] {
        let (ok, printed) = as_nobody_with(missing);
        assert!(
            !ok && printed.contains("cannot run here"),
            "with only {missing}: {printed}"
        );
    }
}

#[test]
fn a_wildcard_listener_is_carried_too() {
    // Listening on 0.0.0.0 (as many deployments do): the program attaches to every interface
    // with an IPv4 address, and the channel's key holds the address the client reached (the
    // worker reads it per datagram), not 0.0.0.0.
    let dir = tempfile::tempdir().expect("create a tempdir");
    let config = TestConfig {
        transports: vec!["udp"],
        offload: "on",
        ..TestConfig::default()
    };
    let toml = common::base_config(&config, dir.path()).replacen(
        "address = \"127.0.0.1:0\"",
        "address = \"0.0.0.0:0\"",
        1,
    );
    let server = Server::start_in(&toml, dir);
    let port = server.addr("udp").port();
    let listener: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut client = StunClient::udp(listener, "127.0.0.1:0", "alice", "wonderland");
    let relayed = client.allocate().expect("an allocation");
    assert_eq!(client.bind(CHANNEL, peer.local_addr().unwrap()), None);
    let before = server.stats();
    let mut leg = Leg {
        client,
        peer,
        relayed,
    };
    relay_both_ways(&mut leg);
    let (carried, _, _) = server.stats().relayed_since(&before, "wildcard listener");
    assert_eq!(carried, 2 * ROUNDS as u64);
}

/// Issue 11: the program is attached once, at start, to the interfaces that carry the UDP
/// listeners. A UDP listener a SIGHUP adds on another interface is opened (its traffic is
/// relayed in user space), and the reload names it under `needs_restart` instead of leaving an
/// operator to wonder why the fast path does not carry it. In a namespace of its own, with a
/// veth pair inside it for "another interface".
#[test]
fn a_listener_added_on_another_interface_is_reported_for_the_fast_path() {
    let netns = common::netns::NetNs::new("offrl");
    netns.ip(&[
        "link", "add", "tpd0", "type", "veth", "peer", "name", "tpd1",
    ]);
    netns.ip(&["link", "set", "tpd0", "up"]);
    netns.ip(&["link", "set", "tpd1", "up"]);
    netns.ip(&["address", "add", "10.78.0.1/24", "dev", "tpd0"]);
    let dir = tempfile::tempdir().expect("create a tempdir");
    let config = TestConfig {
        transports: vec!["udp"],
        offload: "on",
        ..TestConfig::default()
    };
    let toml = common::base_config(&config, dir.path());
    let server = Server::start_in_netns(&netns, &toml);
    let path = server.config_path();
    let fresh = format!("{toml}\n[[listen]]\ntransport = \"udp\"\naddress = \"10.78.0.1:3478\"\n");
    std::fs::write(&path, fresh).expect("write the configuration");
    server.signal(libc::SIGHUP);
    let reloaded = server.wait_for_log("configuration reloaded", 1, Duration::from_secs(10));
    assert_eq!(reloaded.len(), 1, "the reload was not logged");
    let event: Value = serde_json::from_str(&reloaded[0]).expect("a JSON log line");
    let needs_restart = event["fields"]["needs_restart"]
        .as_str()
        .unwrap_or_default();
    assert!(
        needs_restart.contains("the kernel fast path on tpd0"),
        "the listener on tpd0 is not reported: {}",
        reloaded[0]
    );
    assert!(
        !needs_restart.contains("on lo"),
        "lo is attached already: {}",
        reloaded[0]
    );
    assert!(
        server
            .log_messages("listening")
            .iter()
            .any(|line| line.contains("10.78.0.1:3478")),
        "the added listener was not opened"
    );
}
