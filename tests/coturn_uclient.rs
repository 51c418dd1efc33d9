//! coturn's `turnutils_uclient` against the server: UDP, TCP and TLS, static users and REST
//! secrets, ChannelData and Send indications, relaying to coturn's `turnutils_peer` echo
//! server. Every run must deliver all its packets.
//!
//! Each test function covers one transport and one kind of credentials with one server and one
//! peer, and runs the channel and Send-indication clients at once; the functions themselves
//! run in parallel.

mod common;

use std::path::Path;
use std::thread;

use common::uclient::{self, Peer, Run, Summary, parse_summary};
use common::{Server, TestConfig};

#[derive(Clone, Copy, Debug)]
enum Auth {
    Static,
    Rest,
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Channel,
    SendIndication,
}

/// Runs one uclient to completion and checks that every packet came back.
fn run_uclient(server: &Server, transport: &str, auth: Auth, mode: Mode, peer: &Peer, dir: &Path) {
    let credentials = match auth {
        Auth::Static => ["-u", "alice", "-w", "wonderland"],
        Auth::Rest => ["-u", "bob", "-W", "s3cret"],
    };
    let run = Run {
        case: &format!("{transport} {auth:?} {mode:?}"),
        server: server.addr(transport),
        transport,
        credentials,
        send_indication: matches!(mode, Mode::SendIndication),
    };
    uclient::run(&run, peer, dir);
}

/// One server, one peer, and the channel and Send-indication clients at once.
fn relay_both_modes(transport: &'static str, auth: Auth) {
    let config = match auth {
        Auth::Static => TestConfig::default(),
        Auth::Rest => TestConfig::rest(),
    };
    let config = TestConfig {
        transports: vec![transport],
        // The channel client's UDP traffic passes over the kernel fast path (root here).
        offload: "auto",
        ..config
    };
    let server = Server::with(&config);
    let dir = tempfile::tempdir().expect("create a tempdir");
    let peer = uclient::start_peer(dir.path());
    thread::scope(|scope| {
        for mode in [Mode::Channel, Mode::SendIndication] {
            let (server, peer, dir) = (&server, &peer, dir.path());
            scope.spawn(move || run_uclient(server, transport, auth, mode, peer, dir));
        }
    });
    if transport == "udp" && server.is_turnpike() {
        // The channel client's traffic went through the kernel (its Send indications and
        // the peer's answers to them did not).
        let carried = server.stats().get("offload_carried");
        eprintln!("{transport} {auth:?}: the kernel fast path carried {carried} datagrams");
        assert!(
            carried > 0,
            "uclient's channel traffic did not pass over the fast path"
        );
    }
}

#[test]
fn udp_static_user() {
    relay_both_modes("udp", Auth::Static);
}

#[test]
fn udp_rest_secret() {
    relay_both_modes("udp", Auth::Rest);
}

#[test]
fn tcp_static_user() {
    relay_both_modes("tcp", Auth::Static);
}

#[test]
fn tcp_rest_secret() {
    relay_both_modes("tcp", Auth::Rest);
}

#[test]
fn tls_static_user() {
    relay_both_modes("tls", Auth::Static);
}

#[test]
fn tls_rest_secret() {
    relay_both_modes("tls", Auth::Rest);
}

#[test]
fn parses_uclient_statistics() {
    let output = "\
1: : start_mclient: msz=2, tot_send_msgs=4, tot_recv_msgs=4, tot_send_bytes ~ 680, tot_recv_bytes ~ 680
6: : start_mclient: tot_send_msgs=40, tot_recv_msgs=39
6: : start_mclient: tot_send_bytes ~ 6800, tot_recv_bytes ~ 6630
6: : Total transmit time is 6
6: : Total lost packets 1 (2.500000%), total send dropped 0 (0.000000%)
6: : Average round trip delay 0.250000 ms; min = 0 ms, max = 3 ms
6: : Average jitter 0.125000 ms; min = 0 ms, max = 1 ms
";
    let expected = Summary {
        sent: 40,
        received: 39,
        lost: 1,
        send_dropped: 0,
        rtt_avg_ms: 0.25,
        rtt_max_ms: 3,
    };
    assert_eq!(parse_summary(output), Some(expected));
    assert_eq!(
        parse_summary("0: : ERROR: Cannot complete Allocation"),
        None
    );
}
