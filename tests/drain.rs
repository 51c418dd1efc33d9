//! SIGTERM on the real binary: a graceful drain. New allocations are refused, the existing
//! ones keep relaying and refreshing until they end, then the process exits 0; a second
//! SIGTERM stops it at once.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::http::{get_json, http};
use common::stun_client::StunClient;
use common::{Server, TestConfig, base_config, udp_echo_peer};
use turnpike::stun::{Message, Method, attr};

const TOKEN: &str = "drain-token-0123456789";

/// A UDP server with the HTTP API and `drain-timeout = "30s"`.
fn server() -> Server {
    server_draining_for("30s")
}

/// A UDP server with the HTTP API and `drain-timeout = timeout`.
fn server_draining_for(timeout: &str) -> Server {
    let dir = tempfile::tempdir().expect("create a tempdir");
    let config = TestConfig {
        transports: vec!["udp"],
        extra: format!("[http]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
        ..TestConfig::default()
    };
    // A top-level key goes before every table.
    let toml = format!(
        "drain-timeout = \"{timeout}\"\n{}",
        base_config(&config, dir.path())
    );
    Server::start_in(&toml, dir)
}

/// An allocation of alice's with channel 0x4000 bound to `peer`.
fn allocation(server: &Server, peer: SocketAddr) -> StunClient {
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
    client.allocate().expect("alice allocates");
    assert_eq!(client.bind(0x4000, peer), None, "ChannelBind");
    client
}

/// Sends one ChannelData message and waits up to 5 s for its echo.
fn echoes(client: &mut StunClient, i: u8) -> bool {
    let payload = [i; 64];
    client.send_channel_data(0x4000, &payload);
    client
        .recv_data(Instant::now() + Duration::from_secs(5))
        .as_deref()
        == Some(&payload[..])
}

/// The status API shows `count` allocations at once: it asks the workers, which answer
/// after everything they handled before (the drain asks them the same way).
fn assert_listed(server: &Server, count: u64) {
    let status = get_json(server.addr("http"), "/api/v1/status", TOKEN);
    assert_eq!(status["allocations"]["total"], count, "{status}");
}

/// Sends SIGTERM and waits until the server says it is draining.
fn start_draining(server: &Server) {
    server.signal(libc::SIGTERM);
    let draining = server.wait_for_log("draining: no new allocations", 1, Duration::from_secs(10));
    assert_eq!(draining.len(), 1, "no 'draining' log line after SIGTERM");
}

#[test]
fn a_drain_refuses_new_allocations_and_ends_with_the_last_one() {
    let mut server = server();
    let api = server.addr("http");
    let (peer, _echo) = udp_echo_peer();
    let mut client = allocation(&server, peer);
    assert!(echoes(&mut client, 0), "relaying before the drain");
    assert_listed(&server, 1);

    start_draining(&server);
    let term = Instant::now();

    // A new Allocate is refused with 403 "Server is draining".
    let mut newcomer = StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
    let answer = newcomer.request(Method::ALLOCATE, &|w| {
        w.requested_transport(17).expect("fits");
    });
    let msg = Message::parse(&answer.bytes).expect("a STUN answer");
    let (code, reason) = attr::decode_error_code(msg.get(attr::ERROR_CODE).expect("an error"))
        .expect("a valid ERROR-CODE");
    assert_eq!((code, reason), (403, "Server is draining"));

    // The API says so.
    let status = get_json(api, "/api/v1/status", TOKEN);
    assert_eq!(status["draining"], true, "{status}");
    let (code, metrics) = http(api, "GET", "/metrics", Some(TOKEN), "");
    assert_eq!(code, 200, "{metrics}");
    assert!(
        metrics.lines().any(|l| l == "turnpike_draining 1"),
        "{metrics}"
    );

    // The existing allocation keeps relaying and refreshing for as long as it lives.
    for i in 1..=10 {
        assert!(echoes(&mut client, i), "echo {i} during the drain");
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(client.refresh(600), None, "Refresh during the drain");
    assert!(echoes(&mut client, 11), "relaying after the Refresh");
    assert!(
        server.is_running(),
        "the server exited with an allocation left"
    );

    // Deleting it ends the drain: the process exits 0, long before drain-timeout (30 s).
    assert_eq!(client.refresh(0), None, "Refresh 0");
    let deleted = Instant::now();
    let status = server.wait_exit(Duration::from_secs(15));
    let after_delete = deleted.elapsed();
    let status = status.expect("the server did not exit within 15 s of the last allocation's end");
    eprintln!(
        "drain: exited {after_delete:?} after the delete ({:?} after SIGTERM) with {status}",
        term.elapsed()
    );
    assert!(status.success(), "exit status {status}");
    assert!(
        after_delete < Duration::from_secs(10),
        "exit {after_delete:?} after the delete"
    );
    assert_eq!(
        server
            .wait_for_log("drained: no allocation left", 1, Duration::from_secs(2))
            .len(),
        1,
        "the log says why it stopped"
    );
}

#[test]
fn a_second_sigterm_stops_a_drain_at_once() {
    let mut server = server();
    let (peer, _echo) = udp_echo_peer();
    let mut client = allocation(&server, peer);
    assert_listed(&server, 1);
    start_draining(&server);
    assert!(echoes(&mut client, 1), "relaying during the drain");
    assert!(
        server.is_running(),
        "the server exited with an allocation left"
    );

    server.signal(libc::SIGTERM);
    let second = Instant::now();
    let status = server.wait_exit(Duration::from_secs(3));
    let took = second.elapsed();
    let status = status.expect("the server did not exit within 3 s of a second SIGTERM");
    eprintln!("drain: exited {took:?} after the second SIGTERM with {status}");
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        server
            .wait_for_log("second signal", 1, Duration::from_secs(2))
            .len(),
        1,
        "the log says why it stopped"
    );
}

#[test]
fn drain_timeout_ends_a_drain_with_allocations_left() {
    let mut server = server_draining_for("2s");
    let (peer, _echo) = udp_echo_peer();
    let mut client = allocation(&server, peer);
    assert_listed(&server, 1);
    let term = Instant::now();
    start_draining(&server);
    assert!(echoes(&mut client, 1), "relaying during the drain");
    assert_eq!(
        server.wait_exit(Duration::from_millis(500)),
        None,
        "exited before drain-timeout with an allocation left"
    );
    let status = server.wait_exit(Duration::from_secs(10));
    let took = term.elapsed();
    let status = status.expect("the server did not exit within 10 s of a 2 s drain-timeout");
    eprintln!("drain: drain-timeout 2s: exited {took:?} after SIGTERM with {status}");
    assert!(status.success(), "exit status {status}");
    assert!(took >= Duration::from_secs(2), "exited after {took:?}");
    assert_eq!(
        server
            .wait_for_log("drain-timeout reached", 1, Duration::from_secs(2))
            .len(),
        1,
        "the log says why it stopped"
    );
}

/// An allocation made just before SIGTERM is as live as any other: the drain waits for it.
#[test]
fn a_drain_waits_for_an_allocation_made_just_before_sigterm() {
    let mut server = server();
    let (peer, _echo) = udp_echo_peer();
    let mut client = allocation(&server, peer);
    start_draining(&server);
    let exited = server.wait_exit(Duration::from_millis(500));
    assert_eq!(
        exited,
        None,
        "the server exited at SIGTERM although an allocation was live; log: {:?}",
        server.log_messages("drain")
    );
    assert!(echoes(&mut client, 1), "relaying during the drain");
    assert_eq!(client.refresh(0), None, "Refresh 0");
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after the last allocation: {status:?}"
    );
}
