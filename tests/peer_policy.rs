//! The peer policy on the wire, against the real binary (hardening findings 6 and 7):
//!
//! - an IPv6 peer is relayed to only in global unicast `2000::/3` minus its special-purpose
//!   ranges: site-local, SRv6, documentation and reserved space get 403 and their Send
//!   indications are dropped and counted;
//! - an IPv4-translated (SIIT, `::ffff:0:a.b.c.d`) peer is judged, and relayed to, as the IPv4
//!   address it holds;
//! - a wildcard listener is the server itself on every address of its host, one added while
//!   it runs included: shown in a network namespace the test makes, so that the "host" has
//!   addresses besides loopback without the test touching the real host's interfaces.
//!
//! No packet leaves the machine: peers outside loopback and the namespace are only named in
//! CreatePermission and ChannelBind (which send nothing) and in Send indications sent before
//! any permission exists (which even the pre-fix binary drops).

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::netns::NetNs;
use common::stun_client::StunClient;
use common::{BINDING_REQUEST, Server, TestConfig};

/// How often a running turnpike enumerates its host's addresses again (`net::HOST_ADDRESS_REFRESH`).
const REFRESH: Duration = Duration::from_secs(5);
/// What a noisy shared machine may add to it.
const MARGIN: Duration = Duration::from_secs(5);

/// IPv6 peers the pre-fix release relayed to; each must now be refused.
const NEWLY_REFUSED: [&str; 7] = [
    "[fec0::1]:9",        // site-local (deprecated), outside 2000::/3
    "[3fff::1]:9",        // documentation, RFC 9637
    "[5f00::1]:9",        // SRv6 SIDs, RFC 9602
    "[400::1]:9",         // reserved by the IETF
    "[::ffff:0:a00:1]:9", // IPv4-translated 10.0.0.1
    "[e000::1]:9",        // reserved by the IETF
    "[100:0:0:1::1]:9",   // reserved, next to the discard-only prefix
];

/// IPv6 peers refused before and after: guards against the rewrite opening them.
const STILL_REFUSED: [&str; 7] = [
    "[2001:30::1]:9", // DRIP entity tags, inside 2001::/23
    "[fe80::1]:9",
    "[fc00::1]:9",
    "[2001:db8::1]:9",
    "[ff02::1]:9",
    "[::1]:9",
    "[64:ff9b:1::a00:1]:9",
];

/// A global unicast peer: only ever named in a CreatePermission, never sent to.
const GLOBAL_PEER: &str = "[2606:4700::1111]:9";

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// `ip:port` in IPv4-translated form, `[::ffff:0:a.b.c.d]:port`.
fn translated(peer: SocketAddr) -> SocketAddr {
    let IpAddr::V4(v4) = peer.ip() else {
        panic!("{peer} is not IPv4")
    };
    let [a, b, c, d] = v4.octets();
    let ip = Ipv6Addr::new(
        0,
        0,
        0,
        0,
        0xffff,
        0,
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
    );
    SocketAddr::new(IpAddr::V6(ip), peer.port())
}

/// An answer as the table prints it.
fn code(answer: Option<u16>) -> String {
    answer.map_or("200".to_owned(), |code| code.to_string())
}

#[test]
fn ipv6_peers_outside_global_unicast_are_refused_and_their_data_dropped() {
    let server = Server::start(
        "realm = \"turnpike.test\"\nworkers = 2\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"[::1]:0\"\n\
         [relay]\naddress = \"127.0.0.1\"\naddress-v6 = \"::1\"\nports = \"40000-60000\"\n\
         [[auth.users]]\nname = \"alice\"\npassword = \"wonderland\"\n\
         [peers]\nallow = []\n",
    );
    let mut client = StunClient::udp(server.addr("udp"), "[::1]:0", "alice", "wonderland");
    let relayed = client.allocate_v6().expect("an IPv6 allocation");
    assert!(relayed.is_ipv6(), "{relayed}");

    // Send indications first, while no permission exists: whatever the policy says, nothing
    // can be relayed, so no packet leaves the machine even from a binary without the fix.
    let mut rows = Vec::new();
    let mut dropped = server.stats().get("dropped_policy");
    for peer in NEWLY_REFUSED.iter().chain(&STILL_REFUSED) {
        client.send_indication(addr(peer), b"must not leave");
        let now = server.stats().get("dropped_policy");
        rows.push((*peer, now - dropped));
        dropped = now;
    }
    let mut table = Vec::new();
    for (number, (peer, dropped)) in (0x4000u16..).zip(rows) {
        let permission = client.permit(&[addr(peer)]);
        let channel = client.bind(number, addr(peer));
        table.push((peer, dropped, permission, channel));
    }
    let global = client.permit(&[addr(GLOBAL_PEER)]);

    eprintln!("peer | Send dropped_policy | CreatePermission | ChannelBind");
    for (peer, dropped, permission, channel) in &table {
        eprintln!(
            "{peer} | {dropped} | {} | {}",
            code(*permission),
            code(*channel)
        );
    }
    eprintln!(
        "{GLOBAL_PEER} | (not sent) | {} | (not bound)",
        code(global)
    );

    for (peer, dropped, permission, channel) in &table {
        assert_eq!(*dropped, 1, "Send to {peer} not counted in dropped_policy");
        assert_eq!(*permission, Some(403), "CreatePermission {peer}");
        assert_eq!(*channel, Some(403), "ChannelBind {peer}");
    }
    assert_eq!(
        global, None,
        "CreatePermission {GLOBAL_PEER} (global unicast)"
    );
}

#[test]
fn a_translated_ipv4_peer_is_judged_and_relayed_as_that_ipv4_address() {
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        allow: vec!["127.0.0.1/32"],
        ..TestConfig::default()
    });
    let (echo, peer) = common::udp_echo_peer();
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
    let relayed = client.allocate().expect("allocate");

    let allowed = client.permit(&[translated(echo)]);
    let bound = client.bind(0x4000, translated(echo));
    // Relayed only if the translated form was understood as 127.0.0.1: the echo comes back
    // on the channel bound to it.
    client.send_indication(translated(echo), b"via SIIT");
    let echoed = client.recv_data(Instant::now() + Duration::from_secs(5));
    let not_allowed = client.permit(&[translated(addr("127.0.0.2:9"))]);
    let listener = client.bind(0x4001, translated(server.addr("udp")));
    let own_relay = client.bind(0x4002, translated(relayed));

    eprintln!(
        "{} (127.0.0.1, allowed): CreatePermission {}, ChannelBind {}, echoed {:?}",
        translated(echo),
        code(allowed),
        code(bound),
        echoed.as_deref().map(String::from_utf8_lossy)
    );
    eprintln!(
        "127.0.0.2 translated: CreatePermission {}",
        code(not_allowed)
    );
    eprintln!("the listener translated: ChannelBind {}", code(listener));
    eprintln!(
        "the relayed address translated: ChannelBind {}",
        code(own_relay)
    );

    assert_eq!(allowed, None, "allowed 127.0.0.1 in SIIT form");
    assert_eq!(bound, None, "channel to 127.0.0.1 in SIIT form");
    assert_eq!(echoed.as_deref(), Some(&b"via SIIT"[..]));
    assert_eq!(peer.echoed(), 1);
    assert_eq!(
        not_allowed,
        Some(403),
        "127.0.0.2 in SIIT form is not allowed"
    );
    assert_eq!(
        listener,
        Some(403),
        "the listener in SIIT form is the server"
    );
    assert_eq!(own_relay, Some(403), "the relayed address in SIIT form");
}

#[test]
fn a_translated_loopback_peer_is_refused_without_allow() {
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        allow: vec![],
        ..TestConfig::default()
    });
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
    client.allocate().expect("allocate");
    let loopback = client.permit(&[translated(addr("127.0.0.1:9"))]);
    let private = client.bind(0x4000, translated(addr("10.0.0.1:9")));
    eprintln!(
        "translated 127.0.0.1: CreatePermission {}; translated 10.0.0.1: ChannelBind {}",
        code(loopback),
        code(private)
    );
    assert_eq!(loopback, Some(403));
    assert_eq!(private, Some(403));
}

/// Sends a Binding request to `peer` through the relay, on `channel` or, without one, in a
/// Send indication: `true` when its answer comes back through the relay, i.e. the relay
/// carried it to a STUN server there (the server's own listener) and back.
fn loops_back(client: &mut StunClient, peer: SocketAddr, channel: Option<u16>) -> bool {
    match channel {
        Some(number) => client.send_channel_data(number, &BINDING_REQUEST),
        None => client.send_indication(peer, &BINDING_REQUEST),
    }
    client
        .recv_data(Instant::now() + Duration::from_secs(1))
        .is_some()
}

/// Polls CreatePermission for `peer` every 100 ms until its answer is `wanted` or `within`
/// has passed: how long it took, or `None`.
fn answer_within(
    client: &mut StunClient,
    peer: SocketAddr,
    wanted: Option<u16>,
    within: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if client.permit(&[peer]) == wanted {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn wildcard_listeners_are_the_server_on_every_host_address() {
    let netns = NetNs::new("policy");
    netns.add_address("10.77.0.1/32");
    netns.add_address("fd77::1/128");
    let server = Server::start_in_netns(
        &netns,
        "realm = \"turnpike.test\"\nworkers = 2\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"0.0.0.0:0\"\n\
         [[listen]]\ntransport = \"tcp\"\naddress = \"0.0.0.0:0\"\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"[::]:0\"\n\
         [relay]\naddress = \"127.0.0.1\"\naddress-v6 = \"::1\"\nports = \"40000-60000\"\n\
         [[auth.users]]\nname = \"alice\"\npassword = \"wonderland\"\n\
         [peers]\nallow = [\"10.77.0.0/16\", \"fd77::/16\"]\n\
         [http]\naddress = \"0.0.0.0:0\"\ntoken = \"0123456789abcdef0123\"\n",
    );
    let udp = server.addrs("udp");
    let (udp4, udp6) = (udp[0].port(), udp[1].port());
    let tcp = server.addr("tcp").port();
    let http = server.addr("http").port();
    let host = |last: u8, port: u16| SocketAddr::from((Ipv4Addr::new(10, 77, 0, last), port));

    let checks = netns.run(|| {
        let mut checks: Vec<(String, String, String)> = Vec::new();
        let mut check = |what: String, wanted: &str, got: String| {
            eprintln!("{what}: {got} (wanted {wanted})");
            checks.push((what, wanted.to_owned(), got));
        };
        let server4 = SocketAddr::from((Ipv4Addr::LOCALHOST, udp4));
        let mut client = StunClient::udp(server4, "127.0.0.1:0", "alice", "wonderland");
        client.allocate().expect("allocate");
        for (name, port) in [
            ("udp", udp4),
            ("tcp", tcp),
            ("udp [::]", udp6),
            ("http", http),
        ] {
            let answer = client.permit(&[host(1, port)]);
            check(
                format!("CreatePermission 10.77.0.1:{port} ({name} listener)"),
                "403",
                code(answer),
            );
        }
        // Permissions are per IP (RFC 8656 §9): another port of the host's address is a peer
        // like any other, and the permission covers the IP.
        let other = client.permit(&[host(1, 9)]);
        check(
            "CreatePermission 10.77.0.1:9 (no listener)".into(),
            "200",
            code(other),
        );
        let bound = client.bind(0x4000, host(1, udp4));
        check(format!("ChannelBind 10.77.0.1:{udp4}"), "403", code(bound));
        let bound = client.bind(0x4001, host(1, 9));
        check("ChannelBind 10.77.0.1:9".into(), "200", code(bound));
        let before = server.stats().get("dropped_policy");
        // With the permission for 10.77.0.1 in place, only the policy stops this one.
        let looped = loops_back(&mut client, host(1, udp4), None);
        let dropped = server.stats().get("dropped_policy") - before;
        check(
            format!("Send to 10.77.0.1:{udp4} answered by the listener"),
            "false",
            looped.to_string(),
        );
        check(
            "  counted in dropped_policy".into(),
            "1",
            dropped.to_string(),
        );

        let server6 = SocketAddr::from((Ipv6Addr::LOCALHOST, udp6));
        let mut client6 = StunClient::udp(server6, "[::1]:0", "alice", "wonderland");
        client6.allocate_v6().expect("an IPv6 allocation");
        let ula = |port: u16| SocketAddr::from(("fd77::1".parse::<Ipv6Addr>().unwrap(), port));
        for (name, port) in [("udp [::]", udp6), ("udp 0.0.0.0", udp4)] {
            let answer = client6.permit(&[ula(port)]);
            check(
                format!("CreatePermission [fd77::1]:{port} ({name} listener)"),
                "403",
                code(answer),
            );
        }
        let answer = client6.permit(&[ula(9)]);
        check(
            "CreatePermission [fd77::1]:9 (no listener)".into(),
            "200",
            code(answer),
        );

        // An address added while the server runs; a channel bound to it before.
        let before = client.permit(&[host(2, udp4)]);
        check(
            format!("CreatePermission 10.77.0.2:{udp4} before the address exists"),
            "200",
            code(before),
        );
        let bound = client.bind(0x4002, host(2, udp4));
        check(
            format!("ChannelBind 10.77.0.2:{udp4} before the address exists"),
            "200",
            code(bound),
        );
        netns.add_address("10.77.0.2/32");
        let seen = answer_within(&mut client, host(2, udp4), Some(403), REFRESH + MARGIN);
        check(
            format!(
                "10.77.0.2 added: CreatePermission 10.77.0.2:{udp4} refused within {:?}",
                REFRESH + MARGIN
            ),
            "true",
            format!("{} (after {seen:?})", seen.is_some()),
        );
        let looped = loops_back(&mut client, host(2, udp4), Some(0x4002));
        check(
            "  the channel bound before relays into the listener".into(),
            "false",
            looped.to_string(),
        );
        netns.remove_address("10.77.0.2/32");
        let gone = answer_within(&mut client, host(2, udp4), None, REFRESH + MARGIN);
        check(
            format!(
                "10.77.0.2 removed: CreatePermission 10.77.0.2:{udp4} granted again within {:?}",
                REFRESH + MARGIN
            ),
            "true",
            format!("{} (after {gone:?})", gone.is_some()),
        );

        // A reload (SIGHUP) enumerates the addresses at once.
        netns.add_address("10.77.0.3/32");
        server.signal(libc::SIGHUP);
        let reloaded = server.wait_for_log("configuration reloaded", 1, Duration::from_secs(10));
        check(
            "SIGHUP: configuration reloaded".into(),
            "1",
            reloaded.len().to_string(),
        );
        let seen = answer_within(
            &mut client,
            host(3, udp4),
            Some(403),
            Duration::from_secs(2),
        );
        check(
            format!(
                "10.77.0.3 added, SIGHUP: CreatePermission 10.77.0.3:{udp4} refused within 2 s"
            ),
            "true",
            format!("{} (after {seen:?})", seen.is_some()),
        );
        checks
    });

    let changes = server.log_messages("host addresses changed");
    for line in &changes {
        eprintln!("{line}");
    }
    let noticed = |by: &str, address: &str, list: &str| {
        changes.iter().any(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            event["fields"]["noticed_by"] == by
                && event["fields"][list]
                    .as_str()
                    .is_some_and(|l| l.contains(address))
        })
    };
    let ended = server.log_messages("permissions and channels ended");
    let mut wrong: Vec<String> = checks
        .iter()
        .filter(|(_, wanted, got)| !got.starts_with(wanted.as_str()))
        .map(|(what, wanted, got)| format!("{what}: {got}, wanted {wanted}"))
        .collect();
    for (by, address, list) in [
        ("refresh", "10.77.0.2", "added"),
        ("refresh", "10.77.0.2", "removed"),
        ("reload", "10.77.0.3", "added"),
    ] {
        if !noticed(by, address, list) {
            wrong.push(format!(
                "no \"host addresses changed\" by {by} with {address} {list}"
            ));
        }
    }
    if ended.is_empty() {
        wrong
            .push("no \"permissions and channels ended\" line for the channel to 10.77.0.2".into());
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    drop(server);
}
