//! Without `[relay] address`, the relay address is the IPv4 address this host sends from on
//! its default route (a UDP socket connected outside, which sends nothing): the server runs in
//! a network namespace whose default route leaves by a veth interface with two addresses and
//! names the second as its source, and an Allocate over loopback is relayed from that one.
//! Without a default route the server refuses to start, saying to set `[relay] address`.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::Server;
use common::netns::NetNs;
use common::stun_client::StunClient;

/// A configuration with one UDP listener on the namespace's loopback, no relay address.
const CONFIG: &str = "realm = \"turnpike.test\"\nworkers = 1\n\
     [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
     [relay]\nports = \"40000-60000\"\noffload = \"off\"\n\
     [[auth.users]]\nname = \"alice\"\npassword = \"wonderland\"\n";

#[test]
fn the_relay_address_is_the_default_routes_source_address() {
    let netns = NetNs::new("route");
    // A veth pair inside the namespace: an interface that is up and not loopback.
    netns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    netns.ip(&["link", "set", "v0", "up"]);
    netns.ip(&["link", "set", "v1", "up"]);
    netns.ip(&["address", "add", "10.78.0.2/24", "dev", "v0"]);
    netns.ip(&["address", "add", "10.78.0.3/24", "dev", "v0"]);
    // The route's preferred source is the interface's second address: the one the host
    // really sends from, which the interface's first address (what turnpike took before) is not.
    netns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.78.0.1",
        "dev",
        "v0",
        "src",
        "10.78.0.3",
    ]);
    let server = Server::start_in_netns(&netns, CONFIG);
    let listener = SocketAddr::from((Ipv4Addr::LOCALHOST, server.addr("udp").port()));
    let relayed = netns.run(|| {
        let mut client = StunClient::udp(listener, "127.0.0.1:0", "alice", "wonderland");
        client.allocate()
    });
    eprintln!("relayed address with the default route's src 10.78.0.3: {relayed:?}");
    let relayed = relayed.expect("allocate");
    assert_eq!(relayed.ip(), IpAddr::V4(Ipv4Addr::new(10, 78, 0, 3)));
}

#[test]
fn without_a_default_route_serve_asks_for_a_relay_address() {
    let netns = NetNs::new("noroute");
    let dir = tempfile::tempdir().expect("create a tempdir");
    let config = dir.path().join("turnpike.toml");
    std::fs::write(&config, CONFIG).expect("write the configuration");
    let config = config.to_str().expect("a UTF-8 tempdir");
    let ran = common::run_turnpike(
        &["ip", "netns", "exec", netns.name()],
        &["serve", "-c", config],
        Duration::from_secs(20),
    );
    let printed = ran.printed();
    eprintln!("turnpike serve without a default route: {printed}");
    assert!(
        ran.status.is_some() && !ran.succeeded(),
        "expected a failure exit, got {:?}",
        ran.status
    );
    assert!(
        printed.contains("relay.address is not set") && printed.contains("set [relay] address"),
        "{printed}"
    );
}
