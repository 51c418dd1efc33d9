//! `turnpike probe`, the real binary, against real servers on loopback: turnpike and coturn
//! over UDP, TCP and TLS pass; a wrong password, a wrong REST secret, clock skew on REST
//! usernames, an unreachable relay address, a TLS certificate for another name, nothing
//! listening and servers answering garbage each fail with their diagnosis and exit 1; bad
//! command lines exit 2 naming the problem.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Ran, Server, TestConfig};

/// Longest a probe run may take in these tests (each step is bounded by `--timeout`).
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// Runs `turnpike probe ARGS...`, printing what it printed.
fn probe(args: &[&str]) -> (Ran, Duration) {
    let mut all = vec!["probe"];
    all.extend_from_slice(args);
    let started = Instant::now();
    let ran = common::run_turnpike(&[], &all, RUN_LIMIT);
    let took = started.elapsed();
    eprintln!(
        "turnpike {} -> {:?} in {took:?}\n{}",
        all.join(" "),
        ran.status,
        ran.printed()
    );
    (ran, took)
}

fn exit_code(ran: &Ran) -> Option<i32> {
    ran.status.and_then(|status| status.code())
}

/// The three URIs of a server with every transport.
fn urls(server: &Server) -> Vec<String> {
    vec![
        format!("turn:{}?transport=udp", server.addr("udp")),
        format!("turn:{}?transport=tcp", server.addr("tcp")),
        format!("turns:{}?transport=tcp", server.addr("tls")),
    ]
}

/// The step lines printed for `url`: from its heading to the next unindented line.
fn section<'a>(out: &'a str, url: &str) -> Vec<&'a str> {
    out.lines()
        .skip_while(|line| *line != url)
        .skip(1)
        .take_while(|line| line.starts_with(' '))
        .collect()
}

/// Asserts that every step of every URL passed, with the figures a pass must show.
fn assert_all_passed(ran: &Ran, urls: &[String]) {
    assert_eq!(exit_code(ran), Some(0), "{}", ran.printed());
    for url in urls {
        let lines = section(&ran.stdout, url);
        let steps: Vec<&str> = lines
            .iter()
            .filter_map(|line| line.trim().strip_prefix("ok     "))
            .map(|rest| rest.split(':').next().unwrap_or_default())
            .collect();
        assert_eq!(
            steps,
            ["binding", "allocate", "permissions", "relay", "rtt"],
            "{url}: {lines:#?}"
        );
        let text = lines.join("\n");
        assert!(text.contains("this machine is 127.0.0.1:"), "{text}");
        assert!(
            text.contains("10 of 10 datagrams from 127.0.0.1:"),
            "{text}"
        );
        assert!(text.contains("10 of 10 back"), "{text}");
        assert!(text.contains("loss 0 of 10 (0%)"), "{text}");
    }
    let all = match urls.len() {
        1 => "all 1 URI passed".to_string(),
        n => format!("all {n} URIs passed"),
    };
    assert!(ran.stdout.contains(&all), "{}", ran.stdout);
}

#[test]
fn passes_against_turnpike_over_udp_tcp_and_tls_with_a_static_user() {
    let server = Server::with(&TestConfig::default());
    let cert = server.config_path().with_file_name("cert.pem");
    let urls = urls(&server);
    let before = server.stats();
    let mut args = vec!["--user", "alice", "--password", "wonderland"];
    args.extend(["--ca", cert.to_str().unwrap()]);
    args.extend(urls.iter().map(String::as_str));
    let (ran, _) = probe(&args);
    assert_all_passed(&ran, &urls);
    // The server relayed what the probe says: 10 datagrams each way per URL, both directions
    // leaving through a relay socket and arriving at a client.
    let after = server.stats();
    let (_, to_peer, to_client) = after.relayed_since(&before, "probe");
    assert_eq!((to_peer, to_client), (60, 60));
    assert_eq!(after.since(&before, "allocations_created"), 6);
    assert_eq!(after.since(&before, "allocations_deleted"), 6);
}

#[test]
fn passes_against_turnpike_with_rest_credentials_and_prints_json() {
    let server = Server::with(&TestConfig::rest());
    let cert = server.config_path().with_file_name("cert.pem");
    let urls = urls(&server);
    let mut args = vec!["--secret", "s3cret", "--ca", cert.to_str().unwrap()];
    args.extend(urls.iter().map(String::as_str));
    let (ran, _) = probe(&args);
    assert_all_passed(&ran, &urls);
    assert!(
        ran.stdout.contains("as 17"),
        "a REST username: {}",
        ran.stdout
    );

    args.push("--json");
    let (ran, _) = probe(&args);
    assert_eq!(exit_code(&ran), Some(0), "{}", ran.printed());
    let json: serde_json::Value = serde_json::from_str(ran.stdout.trim()).expect("one JSON object");
    assert_eq!(json["passed"], true);
    let reported = json["urls"].as_array().expect("urls");
    assert_eq!(reported.len(), 3);
    for (entry, url) in reported.iter().zip(&urls) {
        assert_eq!(entry["url"], url.as_str());
        assert_eq!(entry["steps"].as_array().unwrap().len(), 5, "{entry}");
        assert_eq!(entry["relay"]["sent"], 10);
        assert_eq!(entry["relay"]["b_to_a"], 10);
        let (min, max) = (&entry["relay"]["min_ms"], &entry["relay"]["max_ms"]);
        assert!(min.as_f64().unwrap() <= max.as_f64().unwrap(), "{entry}");
    }
}

#[test]
fn passes_against_coturn_over_udp_tcp_and_tls_with_a_static_user_and_a_rest_secret() {
    let server = Server::coturn_with(&TestConfig::default());
    let cert = server.config_path().with_file_name("cert.pem");
    let urls = urls(&server);
    let mut args = vec!["--user", "alice", "--password", "wonderland"];
    args.extend(["--ca", cert.to_str().unwrap()]);
    args.extend(urls.iter().map(String::as_str));
    let (ran, _) = probe(&args);
    assert_all_passed(&ran, &urls);

    let server = Server::coturn_with(&TestConfig::rest());
    let cert = server.config_path().with_file_name("cert.pem");
    let urls = self::urls(&server);
    let mut args = vec!["--secret", "s3cret", "--ca", cert.to_str().unwrap()];
    args.extend(urls.iter().map(String::as_str));
    let (ran, _) = probe(&args);
    assert_all_passed(&ran, &urls);
}

/// The lines of a failed step: `FAILED <step>: ...` and its likely cause.
fn failure(ran: &Ran, step: &str) -> String {
    assert_eq!(exit_code(ran), Some(1), "{}", ran.printed());
    let lines: Vec<&str> = ran.stdout.lines().collect();
    let at = lines
        .iter()
        .position(|line| line.trim().starts_with(&format!("FAILED {step}:")))
        .unwrap_or_else(|| panic!("no failed {step} step in:\n{}", ran.stdout));
    let cause = lines.get(at + 1).copied().unwrap_or_default();
    assert!(cause.trim().starts_with("likely cause: "), "{}", ran.stdout);
    assert!(ran.stdout.contains("1 of 1 URI failed") || ran.stdout.contains(" URIs failed"));
    format!("{}\n{cause}", lines[at])
}

/// The failed `allocate` step of a probe with `args` and a UDP URI, against turnpike and then
/// coturn, both configured by `config`; the Binding before it passed.
fn allocate_failures(config: &TestConfig, args: &[&str]) -> Vec<String> {
    [Server::with(config), Server::coturn_with(config)]
        .iter()
        .map(|server| {
            let url = format!("turn:{}", server.addr("udp"));
            let mut all = args.to_vec();
            all.push(&url);
            let (ran, _) = probe(&all);
            assert!(ran.stdout.contains("ok     binding"), "{}", ran.stdout);
            failure(&ran, "allocate")
        })
        .collect()
}

#[test]
fn a_wrong_password_is_diagnosed_against_turnpike_and_coturn() {
    let args = ["--user", "alice", "--password", "wrong"];
    for text in allocate_failures(&TestConfig::default(), &args) {
        assert!(text.contains("401"), "{text}");
        assert!(text.contains("wrong user name or password"), "{text}");
    }
}

#[test]
fn a_wrong_rest_secret_is_told_from_clock_skew() {
    for text in allocate_failures(&TestConfig::rest(), &["--secret", "not-the-secret"]) {
        assert!(text.contains("401"), "{text}");
        assert!(text.contains("the secret is wrong"), "{text}");
        assert!(!text.contains("clock skew:"), "{text}");
    }
}

#[test]
fn clock_skew_on_rest_usernames_is_diagnosed_and_measured() {
    // This machine's clock 2 h behind the server's: a username minted for 1 h has expired by
    // the server's clock. Against turnpike, also 3 days ahead: beyond max-rest-ttl (1 day).
    let turnpike = Server::with(&TestConfig::rest());
    let coturn = Server::coturn_with(&TestConfig::rest());
    let cases = [
        (&turnpike, "-2h", "2h", "behind"),
        (&coturn, "-2h", "2h", "behind"),
        (&turnpike, "3days", "3days", "ahead of"),
    ];
    for (server, offset, size, which) in cases {
        let url = format!("turn:{}", server.addr("udp"));
        let offset = format!("--clock-offset={offset}");
        let (ran, _) = probe(&["--secret", "s3cret", &offset, &url]);
        let text = failure(&ran, "allocate");
        assert!(text.contains("401"), "{text}");
        assert!(text.contains("likely cause: clock skew"), "{text}");
        // Measured to the nearest minute (the bisection stops at 10 s; the search takes a
        // moment, during which both clocks move on).
        assert!(
            text.contains(&format!("runs about {size} {which} it"))
                || text.contains(&format!("runs about {size} 1m {which} it")),
            "{text}"
        );
    }
}

#[test]
fn a_relay_address_nobody_can_reach_is_diagnosed() {
    // The relay advertises 127.0.0.9, where nothing listens (its sockets are on 127.0.0.1):
    // a relay behind a 1:1 NAT with the wrong public address, or a firewalled port range, as
    // a client sees it. Everything stays on loopback.
    let dir = tempfile::tempdir().unwrap();
    let config = TestConfig {
        transports: vec!["udp"],
        allow: vec!["127.0.0.0/8"],
        ..TestConfig::default()
    };
    let toml = common::base_config(&config, dir.path())
        .replace("[relay]\n", "[relay]\npublic-address = \"127.0.0.9\"\n");
    let server = Server::start_in(&toml, dir);
    let url = format!("turn:{}", server.addr("udp"));
    let before = server.stats();
    let (ran, took) = probe(&["--user", "alice", "--password", "wonderland", &url]);
    let text = failure(&ran, "relay");
    assert!(ran.stdout.contains("ok     permissions"), "{}", ran.stdout);
    assert!(
        text.contains("none of 3 datagrams sent through the relay to 127.0.0.9:"),
        "{text}"
    );
    assert!(
        text.contains("the relayed address 127.0.0.9:")
            && text.contains("is not reachable from the other allocation")
            && text.contains("public-address")
            && text.contains("relay port range"),
        "{text}"
    );
    // The server did send them towards 127.0.0.9 (3 tries, then the probe gives up).
    let sent = server.stats().since(&before, "to_peer_packets");
    eprintln!("to_peer_packets {sent}, the probe took {took:?}");
    assert_eq!(sent, 3);
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn a_tls_certificate_for_another_name_is_diagnosed() {
    let dir = tempfile::tempdir().unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["turn.example.org".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("other.pem"), dir.path().join("other.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let config = TestConfig {
        transports: vec!["tls"],
        ..TestConfig::default()
    };
    let toml = common::base_config(&config, dir.path())
        .replace(
            &format!("{:?}", dir.path().join("cert.pem")),
            &format!("{cert:?}"),
        )
        .replace(
            &format!("{:?}", dir.path().join("key.pem")),
            &format!("{key:?}"),
        );
    let server = Server::start_in(&toml, dir);
    let url = format!("turns:{}", server.addr("tls"));
    let credentials = ["--user", "alice", "--password", "wonderland"];

    let mut args = credentials.to_vec();
    args.extend(["--ca", cert.to_str().unwrap(), &url]);
    let (ran, _) = probe(&args);
    let text = failure(&ran, "binding");
    assert!(text.contains("TLS certificate name mismatch"), "{text}");
    assert!(
        text.contains("certificate is for turn.example.org but it was reached as 127.0.0.1"),
        "{text}"
    );

    // Against the system's roots, the self-signed certificate has no trusted issuer.
    let mut args = credentials.to_vec();
    args.push(&url);
    let (ran, _) = probe(&args);
    let text = failure(&ran, "binding");
    assert!(text.contains("not signed by a trusted CA"), "{text}");
    assert!(text.contains("--ca FILE"), "{text}");

    // --insecure skips the check, and everything else passes.
    let mut args = credentials.to_vec();
    args.extend(["--insecure", &url]);
    let (ran, _) = probe(&args);
    assert_all_passed(&ran, std::slice::from_ref(&url));
}

#[test]
fn nothing_listening_is_diagnosed_within_the_timeout() {
    let credentials = [
        "--user",
        "alice",
        "--password",
        "wonderland",
        "--timeout",
        "1s",
    ];
    // UDP: a socket that never answers; then a port nobody holds (ICMP port unreachable).
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("turn:{}", silent.local_addr().unwrap());
    let closed_port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let closed_url = format!("turn:{closed_port}");
    // TCP: a port nobody listens on.
    let tcp_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tcp_url = format!("turn:{tcp_port}?transport=tcp");
    let tls_url = format!("turns:{tcp_port}");
    for (url, expected) in [
        (
            &silent_url,
            format!(
                "nothing answers on {} over udp within 1s",
                silent.local_addr().unwrap()
            ),
        ),
        (
            &closed_url,
            format!("nothing listens on {closed_port} over udp: connection refused"),
        ),
        (
            &tcp_url,
            format!("nothing listens on {tcp_port} over tcp: connection refused"),
        ),
        (
            &tls_url,
            format!("nothing listens on {tcp_port} over tls: connection refused"),
        ),
    ] {
        let mut args = credentials.to_vec();
        args.extend(["--insecure", url.as_str()]);
        let (ran, took) = probe(&args);
        let text = failure(&ran, "binding");
        assert!(text.contains(&expected), "{url}: {text}");
        assert!(took < Duration::from_secs(10), "{url}: {took:?}");
    }
}

/// A UDP socket that answers every datagram with junk, and a TCP listener that answers every
/// connection with junk; both stop when the returned flag is set.
fn garbage_servers() -> (SocketAddr, SocketAddr, Arc<AtomicBool>) {
    let stop = Arc::new(AtomicBool::new(false));
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let flag = stop.clone();
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut buf = [0u8; 2048];
        // Junk that looks almost like STUN: a Binding success with a broken length.
        let junk: Vec<u8> = [0x01, 0x01, 0xFF, 0xF0, 0x21, 0x12, 0xA4, 0x42]
            .into_iter()
            .chain((0..40).map(|i| i as u8 ^ 0x5A))
            .collect();
        while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
            if let Ok((_, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&junk, from);
                let _ = udp.send_to(b"HTTP/1.1 400 Bad Request\r\n\r\n", from);
            }
            if let Ok((mut stream, _)) = tcp.accept() {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let _ = stream.read(&mut buf);
                // Neither STUN (first two bits 00) nor ChannelData (0x40..0x4F).
                let _ = stream.write_all(b"\xff\xfe garbage, no TURN here\n");
            }
        }
    });
    (udp_addr, tcp_addr, stop)
}

#[test]
fn servers_answering_garbage_are_diagnosed_without_a_panic() {
    let (udp, tcp, stop) = garbage_servers();
    let udp_url = format!("turn:{udp}");
    let tcp_url = format!("turn:{tcp}?transport=tcp");
    let tls_url = format!("turns:{tcp}");
    let (ran, took) = probe(&[
        "--user",
        "alice",
        "--password",
        "wonderland",
        "--timeout",
        "2s",
        "--insecure",
        &udp_url,
        &tcp_url,
        &tls_url,
    ]);
    stop.store(true, Ordering::SeqCst);
    assert_eq!(exit_code(&ran), Some(1), "{}", ran.printed());
    assert!(!ran.printed().contains("panicked"), "{}", ran.printed());
    assert!(ran.stdout.contains("3 of 3 URIs failed"), "{}", ran.stdout);
    let udp_lines = section(&ran.stdout, &udp_url).join("\n");
    assert!(
        udp_lines.contains(&format!("{udp} over udp answered"))
            && udp_lines.contains("never with a STUN answer: it is not a STUN/TURN server"),
        "{udp_lines}"
    );
    let tcp_lines = section(&ran.stdout, &tcp_url).join("\n");
    assert!(
        tcp_lines.contains(&format!("{tcp} over tcp sent bytes that are not STUN")),
        "{tcp_lines}"
    );
    let tls_lines = section(&ran.stdout, &tls_url).join("\n");
    assert!(
        tls_lines.contains(&format!("{tcp} does not speak TLS"))
            && tls_lines.contains("is it a plain TCP port?"),
        "{tls_lines}"
    );
    // Three URLs, each bounded by one 2 s step (and a connect).
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn bad_command_lines_exit_2_naming_the_problem() {
    const USER: &str = "--user u --password p";
    let words = |line: &str| -> Vec<String> { line.split_whitespace().map(String::from).collect() };
    let long = format!("turn:{}.example.org", "a".repeat(1000));
    let mut cases: Vec<(Vec<String>, &str)> = [
        (
            format!("{USER} 127.0.0.1:3478"),
            "127.0.0.1:3478: unknown scheme",
        ),
        (format!("{USER} example.org"), "example.org: no scheme"),
        (
            format!("{USER} turn:127.0.0.1:99999"),
            "turn:127.0.0.1:99999: bad port \"99999\"",
        ),
        (format!("{USER} turn:127.0.0.1:x"), "bad port \"x\""),
        (
            format!("{USER} turn:127.0.0.1?transport=sctp"),
            "unknown transport \"sctp\"",
        ),
        (format!("{USER} turns:127.0.0.1?transport=udp"), "DTLS"),
        (
            format!("{USER} {long}"),
            "a URI of 1017 bytes (at most 1000)",
        ),
        (
            "turn:127.0.0.1".into(),
            "no credentials: pass --user U --password P",
        ),
        ("--user u turn:127.0.0.1".into(), "--password"),
        (USER.into(), "URL"),
        (
            format!("{USER} --timeout 0s turn:127.0.0.1"),
            "--timeout 0s",
        ),
        (
            format!("{USER} --timeout 2h turn:127.0.0.1"),
            "--timeout 2h",
        ),
        (format!("{USER} --count 0 turn:127.0.0.1"), "--count"),
        (
            "--secret s --clock-offset -1000d turn:127.0.0.1".into(),
            "at most",
        ),
        (
            format!("{USER} --ca /nonexistent.pem turns:127.0.0.1"),
            "--ca",
        ),
        (
            format!("{USER} --ca /x --insecure turns:127.0.0.1"),
            "--insecure",
        ),
    ]
    .into_iter()
    .map(|(line, expected)| (words(&line), expected))
    .collect();
    let empty_secret = ["--secret", "", "turn:127.0.0.1"]
        .map(String::from)
        .to_vec();
    cases.push((empty_secret, "--secret is empty"));
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ran, took) = probe(&args);
        assert_eq!(exit_code(&ran), Some(2), "{args:?}: {}", ran.printed());
        assert!(ran.stderr.contains(expected), "{args:?}: {}", ran.stderr);
        assert!(!ran.printed().contains("panicked"), "{}", ran.printed());
        assert!(ran.stdout.is_empty(), "{args:?}: {}", ran.stdout);
        assert!(took < Duration::from_secs(5), "{args:?}: {took:?}");
    }
}

#[test]
fn a_relay_address_the_peer_policy_refuses_is_diagnosed() {
    // No [peers] allow: the relayed addresses on 127.0.0.1 are refused as peers, as a relay on
    // a private address is refused by default.
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        allow: vec![],
        ..TestConfig::default()
    });
    let url = format!("turn:{}", server.addr("udp"));
    let (ran, _) = probe(&["--user", "alice", "--password", "wonderland", &url]);
    let text = failure(&ran, "permissions");
    assert!(ran.stdout.contains("ok     allocate"), "{}", ran.stdout);
    assert!(text.contains("403"), "{text}");
    assert!(
        text.contains("the server's peer policy refuses 127.0.0.1 (403)")
            && text.contains("a private or special-purpose one")
            && text.contains("[peers] allow = [\"127.0.0.1/32\"]"),
        "{text}"
    );
}

#[test]
fn a_rest_lifetime_beyond_the_servers_limit_is_not_called_clock_skew() {
    // turnpike's max-rest-ttl is a day: a username valid for 3 days is refused, and every
    // expiry up to a day ahead accepted, with the clocks agreeing.
    let server = Server::with(&TestConfig::rest());
    let url = format!("turn:{}", server.addr("udp"));
    let (ran, _) = probe(&["--secret", "s3cret", "--ttl", "3days", &url]);
    let text = failure(&ran, "allocate");
    assert!(
        text.contains("refuses REST usernames valid for 3days, though the clocks agree")
            && text.contains("max-rest-ttl"),
        "{text}"
    );
    assert!(!text.contains("clock skew"), "{text}");
}
