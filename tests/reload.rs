//! SIGHUP on the real binary: the configuration file and the certificate are re-read and
//! applied to the running server without losing a packet of the calls in progress; a
//! configuration that does not validate is rejected and the old one keeps running.

mod common;

use std::collections::HashSet;
use std::fs;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::http::{get_json, http};
use common::stun_client::StunClient;
use common::{Server, TestConfig, rest_credentials, tls, udp_echo_peer};

/// How long the server may take to log the outcome of a reload.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The streams: 50 packets/s for 4 s each, 100-byte payloads.
const PACKETS: usize = 200;
const INTERVAL: Duration = Duration::from_millis(20);
const SIZE: usize = 100;

/// Sends [`PACKETS`] sequence-numbered ChannelData messages on `channel`, one every
/// [`INTERVAL`], while collecting the echoes; then waits up to 5 s for the missing ones.
/// `progress` counts the echoes as they come. Returns the client and the sequence numbers
/// echoed (and how many came twice).
fn stream(
    mut client: StunClient,
    channel: u16,
    tag: u8,
    progress: Arc<AtomicUsize>,
) -> (StunClient, HashSet<u32>, usize) {
    let start = Instant::now();
    let mut echoed = HashSet::new();
    let mut duplicates = 0;
    let mut sent = 0;
    let last_send = start + INTERVAL * PACKETS as u32;
    let give_up = last_send + Duration::from_secs(5);
    while echoed.len() < PACKETS && Instant::now() < give_up {
        let next_send = start + INTERVAL * sent as u32;
        if sent < PACKETS && Instant::now() >= next_send {
            let mut payload = vec![tag; SIZE];
            payload[1..5].copy_from_slice(&(sent as u32).to_be_bytes());
            client.send_channel_data(channel, &payload);
            sent += 1;
            continue;
        }
        let until = if sent < PACKETS { next_send } else { give_up };
        if let Some(data) = client.recv_data(until) {
            if data.len() == SIZE && data[0] == tag {
                let sequence = u32::from_be_bytes(data[1..5].try_into().unwrap());
                if echoed.insert(sequence) {
                    progress.fetch_add(1, Ordering::SeqCst);
                } else {
                    duplicates += 1;
                }
            }
        }
    }
    assert_eq!(sent, PACKETS, "the stream sent everything before giving up");
    (client, echoed, duplicates)
}

/// Allocates with `client` and binds channel 0x4000 to `peer`.
fn ready_to_stream(client: &mut StunClient, peer: SocketAddr, what: &str) {
    client
        .allocate()
        .unwrap_or_else(|code| panic!("{what}: Allocate got {code}"));
    assert_eq!(client.bind(0x4000, peer), None, "{what}: ChannelBind");
}

#[test]
fn sighup_applies_users_secrets_limits_and_certificate_without_losing_a_packet() {
    let server = Server::with(&TestConfig {
        transports: vec!["udp", "tls"],
        extra: "[limits]\nallocation-bandwidth = \"10 Mbps\"\n".into(),
        ..TestConfig::default()
    });
    let (udp, tls_addr) = (server.addr("udp"), server.addr("tls"));
    let config_path = server.config_path();
    let dir = config_path.parent().expect("the config's directory");
    let (peer, _echo) = udp_echo_peer();

    // Before: carol and the new secret are unknown.
    let carol = || StunClient::udp(udp, "127.0.0.1:0", "carol", "carrots");
    assert_eq!(carol().allocate(), Err(401), "carol before the reload");
    let (rest_user, rest_password) =
        rest_credentials("fresh-secret", "dave", Duration::from_secs(600));
    let rest = || StunClient::udp(udp, "127.0.0.1:0", &rest_user, &rest_password);
    assert_eq!(
        rest().allocate(),
        Err(401),
        "the new secret before the reload"
    );

    let mut over_udp = StunClient::udp(udp, "127.0.0.1:0", "alice", "wonderland");
    let mut over_tls = StunClient::tls(tls_addr, "alice", "wonderland");
    let old_cert = over_tls.tls_certificate();
    assert_eq!(tls::server_certificate(tls_addr), old_cert);
    ready_to_stream(&mut over_udp, peer, "alice over UDP");
    ready_to_stream(&mut over_tls, peer, "alice over TLS");

    let progress = Arc::new(AtomicUsize::new(0));
    let streams: Vec<_> = [(over_udp, 1u8), (over_tls, 2u8)]
        .into_iter()
        .map(|(client, tag)| {
            let progress = progress.clone();
            thread::spawn(move || stream(client, 0x4000, tag, progress))
        })
        .collect();

    // Mid-stream (once each has had ~25 echoes): new users, secret, bandwidth and certificate.
    let deadline = Instant::now() + Duration::from_secs(10);
    while progress.load(Ordering::SeqCst) < 50 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(progress.load(Ordering::SeqCst) >= 50, "the streams started");
    let old = fs::read_to_string(&config_path).expect("read the configuration");
    let fresh = old
        .replace(
            "allocation-bandwidth = \"10 Mbps\"",
            "allocation-bandwidth = \"400 kbps\"",
        )
        .replace("[auth]\n", "[auth]\nsecrets = [\"fresh-secret\"]\n")
        + "\n[[auth.users]]\nname = \"carol\"\npassword = \"carrots\"\n";
    assert!(
        fresh.contains("400 kbps") && fresh.contains("fresh-secret"),
        "{fresh}"
    );
    let names = vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "reloaded.turnpike.test".to_string(),
    ];
    let certified = rcgen::generate_simple_self_signed(names).expect("generate a certificate");
    let new_cert = certified.cert.der().to_vec();
    fs::write(&config_path, fresh).expect("write the configuration");
    fs::write(dir.join("cert.pem"), certified.cert.pem()).expect("write cert.pem");
    fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).expect("write key.pem");
    let hup = Instant::now();
    server.signal(libc::SIGHUP);
    let reloaded = server.wait_for_log("configuration reloaded", 1, RELOAD_TIMEOUT);
    assert_eq!(reloaded.len(), 1, "no 'configuration reloaded' in the log");
    let event: serde_json::Value = serde_json::from_str(&reloaded[0]).unwrap();
    assert_eq!(
        event["fields"]["message"], "configuration reloaded",
        "nothing should need a restart: {}",
        reloaded[0]
    );
    eprintln!("reload: logged {:?} after SIGHUP", hup.elapsed());

    // After: carol, the new secret and the new certificate, while the streams go on.
    assert!(carol().allocate().is_ok(), "carol after the reload");
    assert!(rest().allocate().is_ok(), "the new secret after the reload");
    let seen = tls::server_certificate(tls_addr);
    assert_ne!(
        seen, old_cert,
        "a new handshake still sees the old certificate"
    );
    assert_eq!(seen, new_cert, "a new handshake sees the new certificate");
    let mut late_tls = StunClient::tls(tls_addr, "carol", "carrots");
    assert!(
        late_tls.allocate().is_ok(),
        "carol over TLS after the reload"
    );

    let mut clients = Vec::new();
    for (handle, name) in streams.into_iter().zip(["UDP", "TLS"]) {
        let (client, echoed, duplicates) = handle.join().expect("the stream thread");
        let lost: Vec<u32> = (0..PACKETS as u32)
            .filter(|s| !echoed.contains(s))
            .collect();
        eprintln!(
            "reload: {name} stream {PACKETS} packets, {} echoed, {} lost, {duplicates} duplicated",
            echoed.len(),
            lost.len()
        );
        assert!(
            lost.is_empty(),
            "{name} stream lost sequence numbers {lost:?}"
        );
        assert_eq!(duplicates, 0, "{name} stream duplicates");
        clients.push(client);
    }
    let stats = server.stats();
    assert_eq!(stats.get("dropped_bandwidth"), 0, "{:?}", stats.0);

    // The lower bandwidth reached the live allocation: 300 KB at once is far more than
    // 400 kbps with a 1 s burst allows (the old 10 Mbps would have let it all through).
    let over_udp = &mut clients[0];
    for i in 0..300u32 {
        let mut payload = vec![9u8; 1000];
        payload[1..5].copy_from_slice(&i.to_be_bytes());
        over_udp.send_channel_data(0x4000, &payload);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let dropped = loop {
        let dropped = server.stats().get("dropped_bandwidth");
        if dropped > 0 || Instant::now() >= deadline {
            break dropped;
        }
    };
    assert!(
        dropped > 0,
        "300 KB at once through an allocation reloaded to 400 kbps: nothing dropped"
    );
    eprintln!(
        "reload: 300 KB offered at 400 kbps: {dropped} packets dropped for bandwidth (both directions)"
    );
}

#[test]
fn a_broken_configuration_is_rejected_and_the_old_one_keeps_running() {
    let mut server = Server::with(&TestConfig {
        transports: vec!["udp", "tls"],
        ..TestConfig::default()
    });
    let udp = server.addr("udp");
    let config_path = server.config_path();
    let dir = config_path.parent().expect("the config's directory");
    let original = fs::read_to_string(&config_path).expect("read the configuration");
    let dave_entry = "\n[[auth.users]]\nname = \"dave\"\npassword = \"dove\"\n";
    let dave = || StunClient::udp(udp, "127.0.0.1:0", "dave", "dove");
    let mut existing = StunClient::udp(udp, "127.0.0.1:0", "alice", "wonderland");
    existing.allocate().expect("alice allocates");
    let old_cert = tls::server_certificate(server.addr("tls"));

    // An unknown key: rejected, with its name; nothing of the file applies.
    fs::write(
        &config_path,
        format!("no-such-key = 1\n{original}{dave_entry}"),
    )
    .expect("write the configuration");
    server.signal(libc::SIGHUP);
    let rejected = server.wait_for_log("reload rejected", 1, RELOAD_TIMEOUT);
    assert_eq!(rejected.len(), 1, "no 'reload rejected' in the log");
    assert!(rejected[0].contains("no-such-key"), "{}", rejected[0]);
    assert!(
        server.log_messages("configuration reloaded").is_empty(),
        "a rejected reload also logged success"
    );
    let mut alice = StunClient::udp(udp, "127.0.0.1:0", "alice", "wonderland");
    assert!(alice.allocate().is_ok(), "alice after the rejected reload");
    assert_eq!(
        dave().allocate(),
        Err(401),
        "dave is only in the broken file"
    );
    assert_eq!(
        existing.refresh(600),
        None,
        "the existing allocation refreshes"
    );

    // A valid file with a certificate that does not load: rejected as a whole too.
    fs::write(&config_path, format!("{original}{dave_entry}")).expect("write the configuration");
    let good_cert = fs::read(dir.join("cert.pem")).expect("read cert.pem");
    fs::write(dir.join("cert.pem"), "not a certificate\n").expect("write cert.pem");
    server.signal(libc::SIGHUP);
    let rejected = server.wait_for_log("reload rejected", 2, RELOAD_TIMEOUT);
    assert_eq!(rejected.len(), 2, "no second 'reload rejected' in the log");
    assert_eq!(
        dave().allocate(),
        Err(401),
        "dave applied from a reload rejected for its certificate"
    );
    assert_eq!(tls::server_certificate(server.addr("tls")), old_cert);

    // Fixed: the same file with the certificate back is applied.
    fs::write(dir.join("cert.pem"), good_cert).expect("write cert.pem");
    server.signal(libc::SIGHUP);
    let reloaded = server.wait_for_log("configuration reloaded", 1, RELOAD_TIMEOUT);
    assert_eq!(reloaded.len(), 1, "no 'configuration reloaded' in the log");
    assert!(dave().allocate().is_ok(), "dave after the fixed reload");
    assert_eq!(
        existing.refresh(600),
        None,
        "the existing allocation refreshes"
    );
    assert!(server.is_running(), "the server is still running");
}

#[test]
fn sighup_applies_the_api_settings() {
    let (old_token, new_token) = ("old-token-0123456789ab", "new-token-0123456789ab");
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        extra: format!(
            "[http]\naddress = \"127.0.0.1:0\"\ntoken = \"{old_token}\"\nice-urls = [\"turn:old.test:3478\"]\n"
        ),
        ..TestConfig::default()
    });
    let api = server.addr("http");
    let status = get_json(api, "/api/v1/status", old_token);
    assert_eq!(
        status["ice_urls"],
        serde_json::json!(["turn:old.test:3478"])
    );
    assert_eq!(http(api, "GET", "/metrics", None, "").0, 401);

    let config_path = server.config_path();
    let old = fs::read_to_string(&config_path).expect("read the configuration");
    let fresh = old
        .replace(old_token, new_token)
        .replace("turn:old.test:3478", "turn:new.test:3478")
        + "public-metrics = true\n";
    fs::write(&config_path, fresh).expect("write the configuration");
    server.signal(libc::SIGHUP);
    let reloaded = server.wait_for_log("configuration reloaded", 1, RELOAD_TIMEOUT);
    assert_eq!(reloaded.len(), 1, "no 'configuration reloaded' in the log");

    let (code, body) = http(api, "GET", "/api/v1/status", Some(old_token), "");
    assert_eq!(code, 401, "the old token after the reload: {body}");
    let status = get_json(api, "/api/v1/status", new_token);
    assert_eq!(
        status["ice_urls"],
        serde_json::json!(["turn:new.test:3478"])
    );
    let (code, body) = http(api, "GET", "/metrics", None, "");
    assert_eq!(code, 200, "public metrics after the reload: {body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
}

/// The address of the first "listening" line for `transport` after `skip` such lines.
fn listening(server: &Server, transport: &str, skip: usize) -> Option<SocketAddr> {
    server
        .log_messages("listening")
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["fields"]["transport"] == transport)
        .nth(skip)
        .and_then(|event| event["fields"]["address"].as_str()?.parse().ok())
}

#[test]
fn sighup_opens_added_listeners_and_closes_removed_ones() {
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        ..TestConfig::default()
    });
    let udp = server.addr("udp");
    let config = fs::read_to_string(server.config_path()).unwrap();
    // The UDP listener goes, a TCP listener comes.
    let changed = config.replace("transport = \"udp\"", "transport = \"tcp\"");
    assert_ne!(
        changed, config,
        "the test config has a udp listener to replace"
    );
    let mut client = StunClient::udp(udp, "127.0.0.1:0", "alice", "wonderland");
    assert!(client.allocate().is_ok());
    fs::write(server.config_path(), changed).unwrap();
    server.signal(libc::SIGHUP);
    let reloaded = server.wait_for_log("configuration reloaded", 1, Duration::from_secs(10));
    assert_eq!(reloaded.len(), 1, "{:?}", server.log());
    let tcp = listening(&server, "tcp", 0).expect("a listening line for the new TCP listener");
    // The new listener serves a TCP client right away.
    let mut over_tcp = StunClient::tcp(tcp, "alice", "wonderland");
    assert!(
        over_tcp.allocate().is_ok(),
        "an allocation over the added TCP listener"
    );
    // The removed UDP listener no longer answers.
    assert!(
        !common::stun_answers(udp, Duration::from_secs(2)),
        "the removed UDP listener still answers"
    );
    assert!(!server.log_messages("stopped listening").is_empty());
}

/// Issue 11: the relay addresses bind the workers' relay sockets at start. A SIGHUP that added
/// `[relay] address-v6` used to be neither applied nor reported: the core then promised IPv6
/// relays that no worker could open, and IPv6 Allocates got 508. Now the reload names the key
/// as needing a restart, everything else in the file is applied, IPv6 Allocates keep getting
/// 440 (the family this server does not relay), and reloading the same file says so again.
#[test]
fn sighup_reports_relay_addresses_as_needing_a_restart() {
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        ..TestConfig::default()
    });
    let udp = server.addr("udp");
    let config_path = server.config_path();
    let alice = || StunClient::udp(udp, "127.0.0.1:0", "alice", "wonderland");
    assert_eq!(
        alice().allocate_v6().map(|_| ()),
        Err(440),
        "IPv6 before the reload"
    );

    let old = fs::read_to_string(&config_path).expect("read the configuration");
    let fresh = old.replace("[relay]\n", "[relay]\naddress-v6 = \"::1\"\n")
        + "\n[[auth.users]]\nname = \"carol\"\npassword = \"carrots\"\n";
    assert!(fresh.contains("address-v6"), "{fresh}");
    fs::write(&config_path, fresh).expect("write the configuration");
    for round in 1..=2 {
        server.signal(libc::SIGHUP);
        let reloaded = server.wait_for_log("configuration reloaded", round, RELOAD_TIMEOUT);
        assert_eq!(reloaded.len(), round, "reload {round} was not logged");
        let event: serde_json::Value =
            serde_json::from_str(&reloaded[round - 1]).expect("a JSON log line");
        let needs_restart = event["fields"]["needs_restart"]
            .as_str()
            .unwrap_or_default();
        assert!(
            needs_restart.contains("relay.address-v6"),
            "reload {round} does not name relay.address-v6: {}",
            reloaded[round - 1]
        );
        let applied = event["fields"]["applied"].as_str().unwrap_or_default();
        let expected_applied = if round == 1 { "auth.users" } else { "[]" };
        assert!(
            applied.contains(expected_applied),
            "reload {round}: applied {applied:?}, expected {expected_applied:?}"
        );
        assert_eq!(
            alice().allocate_v6().map(|_| ()),
            Err(440),
            "IPv6 after reload {round}: the running server has no IPv6 relay address"
        );
        let mut carol = StunClient::udp(udp, "127.0.0.1:0", "carol", "carrots");
        assert!(carol.allocate().is_ok(), "carol after reload {round}");
    }
}

/// The value of the sample `name` (with its labels, e.g. `{result="applied"}`) in `/metrics`.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{metrics}"))
}

/// The status API and `/metrics` say how reloads went: counts, the last one's outcome and
/// error, and the keys that wait for a restart (kept through a rejected reload, cleared when
/// the file matches what runs again).
#[test]
fn the_status_api_and_metrics_report_reloads_and_pending_restarts() {
    const TOKEN: &str = "reload-token-0123456789";
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        extra: format!("[http]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
        ..TestConfig::default()
    });
    let api = server.addr("http");
    let config_path = server.config_path();
    let original = fs::read_to_string(&config_path).expect("read the configuration");
    let reloads = || get_json(api, "/api/v1/status", TOKEN)["reloads"].clone();
    let metrics = || {
        let (code, body) = http(api, "GET", "/metrics", Some(TOKEN), "");
        assert_eq!(code, 200, "{body}");
        body
    };
    let mut logged = (0, 0);
    let mut reload = |text: &str, applied: bool| {
        fs::write(&config_path, text).expect("write the configuration");
        server.signal(libc::SIGHUP);
        let (prefix, count) = if applied {
            logged.0 += 1;
            ("configuration reloaded", logged.0)
        } else {
            logged.1 += 1;
            ("reload rejected", logged.1)
        };
        let lines = server.wait_for_log(prefix, count, RELOAD_TIMEOUT);
        assert_eq!(lines.len(), count, "'{prefix}' {count} not logged");
    };

    let before = reloads();
    assert_eq!(
        before,
        serde_json::json!({"applied": 0, "rejected": 0, "last": null, "pending_restart": []})
    );
    let m = metrics();
    assert_eq!(sample(&m, "turnpike_config_last_reload_successful"), 1.0);
    assert_eq!(sample(&m, "turnpike_config_pending_restart_keys"), 0.0);

    // A key the running node takes only at a restart.
    let with_v6 = original.replace("[relay]\n", "[relay]\naddress-v6 = \"::1\"\n");
    reload(&with_v6, true);
    let state = reloads();
    eprintln!("after adding relay.address-v6: {state}");
    assert_eq!(state["applied"], 1);
    assert_eq!(state["last"]["result"], "applied");
    assert!(
        state["last"]["at"]
            .as_u64()
            .is_some_and(|at| at > 1_700_000_000)
    );
    assert_eq!(
        state["pending_restart"],
        serde_json::json!(["relay.address-v6"])
    );
    assert_eq!(
        sample(&metrics(), "turnpike_config_pending_restart_keys"),
        1.0
    );

    // Rejected: the error names the key; what waited for a restart still does.
    reload(&format!("no-such-key = 1\n{with_v6}"), false);
    let state = reloads();
    eprintln!("after a rejected reload: {state}");
    assert_eq!(
        (state["applied"].as_u64(), state["rejected"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(state["last"]["result"], "rejected");
    let error = state["last"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("no-such-key"), "{error}");
    assert_eq!(
        state["pending_restart"],
        serde_json::json!(["relay.address-v6"])
    );
    let m = metrics();
    assert_eq!(
        sample(&m, "turnpike_config_reloads_total{result=\"rejected\"}"),
        1.0
    );
    assert_eq!(sample(&m, "turnpike_config_last_reload_successful"), 0.0);

    // A rejection quoting a 20,000-byte key keeps 1 KiB of it (the log has it whole).
    let long_key = "k".repeat(20_000);
    reload(&format!("{long_key} = 1\n{original}"), false);
    let error = reloads()["last"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    eprintln!(
        "a rejection of a 20,000-byte key keeps {} bytes",
        error.len()
    );
    assert!(
        error.len() <= 1024 + 3 && error.ends_with('…'),
        "{} bytes",
        error.len()
    );

    // The file as it runs again: applied, nothing waits.
    reload(&original, true);
    let state = reloads();
    assert_eq!(
        (state["applied"].as_u64(), state["rejected"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(state["last"]["error"], serde_json::Value::Null);
    assert_eq!(state["pending_restart"], serde_json::json!([]));
    let m = metrics();
    assert_eq!(
        sample(&m, "turnpike_config_reloads_total{result=\"applied\"}"),
        2.0
    );
    assert_eq!(sample(&m, "turnpike_config_last_reload_successful"), 1.0);
    assert_eq!(sample(&m, "turnpike_config_pending_restart_keys"), 0.0);
}
