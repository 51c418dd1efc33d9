//! TURN REST API credentials and user ids on the real binary (hardening issue, findings 8 and 9):
//!
//! - an expiry further ahead than `[auth] max-rest-ttl` (two hours with a one-hour cap, the
//!   year 9999, `u64::MAX`, a number beyond `u64`) gets 401 like a wrong password, for config and
//!   Redis secrets alike, and a SIGHUP'd new cap applies at once; the credential API issues at
//!   most `max-rest-ttl` and one day by default;
//! - a REST username that expires on a live allocation: Refresh, CreatePermission and
//!   ChannelBind get 401, a Refresh that deletes is still honoured, and the allocation relays
//!   until the lifetime of its last granted Refresh ends;
//! - user ids with control or format characters (U+202E, U+200B, U+FEFF, NUL, ESC, a lone RLM)
//!   are refused by the credential API and by `turnpike user add`; plain non-ASCII names are
//!   not; a U+202E id minted with the secret still authenticates, and is logged escaped;
//! - the REST id `alice` and the long-term user `alice` have separate allocation quotas, on one
//!   node and across nodes (their Redis lease sets differ), and per-user overrides apply to the
//!   long-term user only.
//!
//! These test turnpike's own keys, API and admin commands, so they do not run against coturn.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{KeyInit, Mac};

use common::http::http;
use common::redis::RedisServer;
use common::stun_client::StunClient;
use common::{Server, TestConfig};
use turnpike::clock::unix_now;

const SECRET: &str = "s3cret";
const TOKEN: &str = "rest-test-token-0123456789";
/// The channel every relaying client here binds to its peer.
const CHANNEL: u16 = 0x4000;
/// How long a change made through Redis may take to reach a node before a poll gives up.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);

/// `(username, password)` of the TURN REST API for any username, whatever its form (an expiry
/// too large for `u64` included): the password is base64(HMAC-SHA1(secret, username)).
fn mint(secret: &str, username: &str) -> (String, String) {
    let mut mac =
        hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username.to_owned(), password)
}

/// A UDP server with the static user alice, the REST secret [`SECRET`], no rate limit on
/// unauthenticated answers (the tests below provoke many 401s), `lines` added to the tables
/// they name (`("auth", "max-rest-ttl = \"1h\"")`) and `extra` TOML at the end.
fn start(lines: &[(&str, &str)], extra: &str) -> Server {
    let dir = tempfile::tempdir().expect("create a tempdir");
    let config = TestConfig {
        transports: vec!["udp"],
        users: vec![("alice", "wonderland")],
        secrets: vec![SECRET],
        extra: format!("[limits]\nunauthenticated-rate = 0\n{extra}"),
        ..TestConfig::default()
    };
    let mut toml = common::base_config(&config, dir.path());
    for (table, line) in lines {
        let header = format!("\n[{table}]\n");
        assert!(toml.contains(&header), "no [{table}] in\n{toml}");
        toml = toml.replacen(&header, &format!("{header}{line}\n"), 1);
    }
    Server::start_in(&toml, dir)
}

/// Allocates as `username` from a fresh socket and deletes the allocation again: `Ok` or the
/// error code.
fn probe(server: &Server, username: &str, password: &str) -> Result<(), u16> {
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", username, password);
    let result = client.allocate().map(|_| ());
    if result.is_ok() {
        assert_eq!(client.refresh(0), None, "deleting {username:?}'s probe");
    }
    result
}

/// A client of `server` that holds an allocation (or the error code).
fn allocated(server: &Server, username: &str, password: &str) -> Result<StunClient, u16> {
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", username, password);
    client.allocate().map(|_| client)
}

/// Polls `attempt` every 50 ms until it gives `expected` or `limit` has passed: how long that
/// took, or the last outcome.
fn poll<T: PartialEq + std::fmt::Debug>(
    limit: Duration,
    expected: T,
    mut attempt: impl FnMut() -> T,
) -> Result<Duration, T> {
    let started = Instant::now();
    loop {
        let outcome = attempt();
        if outcome == expected {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= limit {
            return Err(outcome);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `payload` on [`CHANNEL`] and waits up to `wait` for the peer's echo of it.
fn echoed(client: &mut StunClient, payload: &[u8], wait: Duration) -> bool {
    client.send_channel_data(CHANNEL, payload);
    let deadline = Instant::now() + wait;
    while let Some(data) = client.recv_data(deadline) {
        if data == payload {
            return true;
        }
    }
    false
}

/// The `fields` of each JSON log line whose message starts with `prefix`.
fn logged(server: &Server, prefix: &str) -> Vec<serde_json::Value> {
    server
        .log_messages(prefix)
        .iter()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).expect("JSON")["fields"].clone()
        })
        .collect()
}

/// Runs the admin command `turnpike ARGS...` (the binary under test) to completion.
fn admin(args: &[&str]) -> common::Ran {
    let ran = common::run_turnpike(&[], args, Duration::from_secs(30));
    assert!(
        ran.status.is_some(),
        "turnpike {args:?} still running after 30 s"
    );
    ran
}

fn admin_ok(args: &[&str]) -> String {
    let output = admin(args);
    assert!(output.succeeded(), "turnpike {args:?}: {output:?}");
    output.stdout
}

/// Waits until a node with `[redis]` has loaded the store: an unknown user gets 401, not 500.
fn wait_loaded(server: &Server) {
    let took = poll(Duration::from_secs(15), Err(401), || {
        probe(server, "nobody", "x")
    });
    assert!(took.is_ok(), "the node never loaded the store: {took:?}");
}

/// Finding 8: an expiry far in the future is refused like a wrong password, whatever its form:
/// with the default `max-rest-ttl` of a day, and with one hour set. `max-rest-ttl` allows five
/// minutes of leeway for a backend's fast clock, and a reload changes it.
#[test]
fn expiries_beyond_max_rest_ttl_get_401() {
    let server = start(&[], "");
    let now = unix_now();
    let refused = [
        (
            "two days ahead",
            mint(SECRET, &format!("{}:carol", now + 2 * 86_400)),
        ),
        (
            "the last second of 9999",
            mint(SECRET, "253402300799:carol"),
        ),
        ("u64::MAX", mint(SECRET, &format!("{}:carol", u64::MAX))),
        (
            "an expiry beyond u64",
            mint(SECRET, "18446744073709551616:carol"),
        ),
        (
            "beyond u64, no user id",
            mint(SECRET, "99999999999999999999999999"),
        ),
    ];
    let before = server.stats();
    for (what, (username, password)) in &refused {
        assert_eq!(probe(&server, username, password), Err(401), "{what}");
    }
    let after = server.stats();
    let failures = after.get("auth_failures") - before.get("auth_failures");
    eprintln!(
        "{} far-future usernames refused; auth_failures +{failures}",
        refused.len()
    );
    assert!(
        failures >= refused.len() as u64,
        "auth_failures +{failures}"
    );
    let (username, password) = mint(SECRET, &format!("{}:carol", now + 86_400));
    assert_eq!(probe(&server, &username, &password), Ok(()), "a day ahead");

    let server = start(&[("auth", "max-rest-ttl = \"1h\"")], "");
    let now = unix_now();
    let two_hours = mint(SECRET, &format!("{}:carol", now + 7200));
    assert_eq!(
        probe(&server, &two_hours.0, &two_hours.1),
        Err(401),
        "2 h, 1 h allowed"
    );
    let (username, password) = mint(SECRET, &format!("{}:carol", now + 3960));
    assert_eq!(probe(&server, &username, &password), Err(401), "1 h 6 min");
    // Within the cap, and within the cap plus the leeway, they authenticate.
    for (what, ahead) in [("1 h", 3600), ("1 h 4 min", 3840)] {
        let (username, password) = mint(SECRET, &format!("{}:carol", now + ahead));
        assert_eq!(probe(&server, &username, &password), Ok(()), "{what}");
    }

    // A reload that raises the cap lets the two-hour credential in, at once.
    let path = server.config_path();
    let toml = std::fs::read_to_string(&path).expect("read the configuration");
    let raised = toml.replacen("max-rest-ttl = \"1h\"", "max-rest-ttl = \"3h\"", 1);
    assert_ne!(toml, raised);
    std::fs::write(&path, raised).expect("write the configuration");
    server.signal(libc::SIGHUP);
    let reloaded = server.wait_for_log("configuration reloaded", 1, Duration::from_secs(10));
    assert_eq!(reloaded.len(), 1, "{:?}", server.log());
    assert_eq!(
        probe(&server, &two_hours.0, &two_hours.1),
        Ok(()),
        "2 h, 3 h allowed"
    );
    let (username, password) = mint(SECRET, "253402300799:carol");
    assert_eq!(probe(&server, &username, &password), Err(401), "still 9999");
}

/// Finding 8, for secrets kept in Redis: the node's `max-rest-ttl` bounds their credentials
/// too.
#[test]
fn redis_secrets_are_bounded_by_max_rest_ttl_too() {
    let redis = RedisServer::start();
    let extra = format!("\n[redis]\nurl = {:?}\n", redis.url());
    let dir = tempfile::tempdir().expect("create a tempdir");
    let config = TestConfig {
        transports: vec!["udp"],
        secrets: vec![],
        extra: format!("[limits]\nunauthenticated-rate = 0\n{extra}"),
        ..TestConfig::default()
    };
    let server = Server::start_in(&common::base_config(&config, dir.path()), dir);
    wait_loaded(&server);
    let config_path = server.config_path().display().to_string();
    admin_ok(&["secret", "add", "redis-only-secret", "-c", &config_path]);
    let now = unix_now();
    let (day, day_password) = mint("redis-only-secret", &format!("{}:dave", now + 86_400));
    let took = poll(PROPAGATION_LIMIT, Ok(()), || {
        probe(&server, &day, &day_password)
    });
    eprintln!("the Redis secret verified after {took:?}");
    assert!(
        took.is_ok(),
        "a one-day credential of the Redis secret: {took:?}"
    );
    for expiry in [now + 2 * 86_400, 253_402_300_799, u64::MAX] {
        let (username, password) = mint("redis-only-secret", &format!("{expiry}:dave"));
        assert_eq!(probe(&server, &username, &password), Err(401), "{username}");
    }
}

/// Finding 8, the credential API: one day by default, never more than `max-rest-ttl`.
#[test]
fn the_credential_api_issues_at_most_max_rest_ttl() {
    let http_table = format!("\n[http]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n");
    for (cap, lines) in [
        (86_400, vec![]),
        (7_200, vec![("auth", "max-rest-ttl = \"2h\"")]),
    ] {
        let server = start(&lines, &http_table);
        let api = server.addr("http");
        let issue = |body: &str| {
            let (status, answer) = http(api, "POST", "/api/v1/credentials", Some(TOKEN), body);
            (status, answer)
        };
        let (status, answer) = issue(r#"{"user":"erin"}"#);
        assert_eq!(status, 200, "{answer}");
        let json: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(json["ttl"], cap.min(86_400), "the default ttl: {answer}");
        let (status, answer) = issue(&format!(r#"{{"user":"erin","ttl":{cap}}}"#));
        assert_eq!(status, 200, "ttl {cap}: {answer}");
        let json: serde_json::Value = serde_json::from_str(&answer).unwrap();
        let server_entry = &json["iceServers"][0];
        let username = server_entry["username"].as_str().unwrap();
        let password = server_entry["credential"].as_str().unwrap();
        assert_eq!(
            probe(&server, username, password),
            Ok(()),
            "the longest credential"
        );
        for too_long in [cap + 1, 30 * 86_400, u64::MAX] {
            let (status, answer) = issue(&format!(r#"{{"user":"erin","ttl":{too_long}}}"#));
            assert_eq!(status, 400, "ttl {too_long}: {answer}");
            assert!(
                answer.contains(&format!("between 1 and {cap} seconds"))
                    && answer.contains("max-rest-ttl"),
                "the message names the limit: {answer}"
            );
        }
        let (status, answer) = issue(r#"{"user":"erin","ttl":18446744073709551616}"#);
        assert_eq!(status, 400, "a ttl beyond u64: {answer}");
    }
}

/// Finding 8, a credential expiring on a live allocation: 401 for Refresh, CreatePermission
/// and ChannelBind once it has expired (not 437: the client cannot switch credentials on an
/// allocation), a deleting Refresh is still honoured, and the allocation relays until the
/// lifetime of its last granted Refresh ends.
#[test]
fn an_expired_rest_username_relays_until_its_lifetime_ends() {
    const LIFETIME: Duration = Duration::from_secs(6);
    let server = start(
        &[("relay", "default-lifetime = \"6s\"\nmax-lifetime = \"6s\"")],
        "",
    );
    let (peer, _echo) = common::udp_echo_peer();
    // Valid through the second two seconds from now.
    let expiry = unix_now() + 2;
    let (username, password) = mint(SECRET, &format!("{expiry}:frank"));
    let mut client = allocated(&server, &username, &password).expect("an allocation");
    let mut deleter = allocated(&server, &username, &password).expect("a second allocation");
    assert_eq!(client.permit(&[peer]), None, "CreatePermission");
    assert_eq!(client.bind(CHANNEL, peer), None, "ChannelBind");
    assert!(echoed(&mut client, b"before", Duration::from_secs(2)));

    // Refresh until the server refuses: 200 while the username is valid (by the server's
    // clock, which may read up to 2 s behind this one), 401 after.
    let mut last_granted = Instant::now();
    assert_eq!(client.refresh(600), None, "Refresh before the expiry");
    let outcome = poll(Duration::from_secs(8), Some(401), || {
        let code = client.refresh(600);
        if code.is_none() {
            last_granted = Instant::now();
        }
        code
    });
    assert!(outcome.is_ok(), "Refresh after the expiry: {outcome:?}");
    eprintln!(
        "refused {}s after the expiry second began",
        unix_now().saturating_sub(expiry)
    );
    assert!(unix_now() > expiry, "refused before the expiry");
    assert_eq!(
        client.permit(&[peer]),
        Some(401),
        "CreatePermission after the expiry"
    );
    assert_eq!(
        client.bind(CHANNEL + 1, peer),
        Some(401),
        "ChannelBind after the expiry"
    );
    assert_eq!(deleter.refresh(0), None, "a deleting Refresh is honoured");

    // Still relaying...
    assert!(
        echoed(&mut client, b"after", Duration::from_secs(2)),
        "relaying after the expiry"
    );
    // ...until the last granted lifetime ends.
    let ended = server.wait_for_log("allocation ended", 2, Duration::from_secs(15));
    let ended_after = last_granted.elapsed();
    let reasons: Vec<String> = logged(&server, "allocation ended")
        .iter()
        .map(|fields| fields["reason"].as_str().unwrap_or("").to_owned())
        .collect();
    eprintln!("allocation ended {ended_after:?} after its last granted Refresh: {reasons:?}");
    assert_eq!(ended.len(), 2, "{:?}", server.log());
    assert_eq!(reasons, ["deleted", "expired"]);
    assert!(
        ended_after >= LIFETIME - Duration::from_millis(1500)
            && ended_after <= LIFETIME + Duration::from_secs(4),
        "ended {ended_after:?} after the last granted Refresh, lifetime {LIFETIME:?}"
    );
    assert!(!echoed(&mut client, b"gone", Duration::from_millis(500)));
    assert_eq!(server.stats().get("allocations"), 0);
}

/// Finding 9: the credential API refuses user ids with control or format characters, each
/// with a 400 that names the problem, and accepts plain non-ASCII names.
#[test]
fn the_credential_api_refuses_control_and_format_characters_in_user_ids() {
    let server = start(
        &[],
        &format!("\n[http]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
    );
    let api = server.addr("http");
    let hostile = [
        (
            "U+202E right-to-left override",
            "mallory\u{202e}ecila",
            "U+202E",
        ),
        ("U+200B zero-width space", "al\u{200b}ice", "U+200B"),
        ("U+FEFF byte-order mark", "\u{feff}alice", "U+FEFF"),
        ("U+0000", "ali\u{0}ce", "U+0000"),
        ("U+001B escape", "\u{1b}[31malice", "U+001B"),
        ("a lone U+200F right-to-left mark", "\u{200f}", "U+200F"),
        ("U+2066 left-to-right isolate", "a\u{2066}b", "U+2066"),
        ("U+2028 line separator", "a\u{2028}b", "U+2028"),
    ];
    for (what, user, code) in hostile {
        let body = serde_json::json!({ "user": user }).to_string();
        let (status, answer) = http(api, "POST", "/api/v1/credentials", Some(TOKEN), &body);
        assert_eq!(status, 400, "{what}: {answer}");
        assert!(
            answer.contains("control or invisible format characters") && answer.contains(code),
            "{what}: {answer}"
        );
        assert!(!answer.contains("iceServers"), "{what}: {answer}");
    }
    // Too long, and empty, are refused as before.
    for user in ["x".repeat(401), String::new()] {
        let body = serde_json::json!({ "user": user }).to_string();
        let (status, answer) = http(api, "POST", "/api/v1/credentials", Some(TOKEN), &body);
        assert_eq!(status, 400, "{} bytes: {answer}", user.len());
    }
    for user in ["Zoë", "山田", "José María", "o'brien:team-2"] {
        let body = serde_json::json!({ "user": user }).to_string();
        let (status, answer) = http(api, "POST", "/api/v1/credentials", Some(TOKEN), &body);
        assert_eq!(status, 200, "{user}: {answer}");
        let json: serde_json::Value = serde_json::from_str(&answer).unwrap();
        let username = json["iceServers"][0]["username"].as_str().unwrap();
        let password = json["iceServers"][0]["credential"].as_str().unwrap();
        assert!(username.ends_with(&format!(":{user}")), "{username}");
        assert_eq!(probe(&server, username, password), Ok(()), "{user}");
    }
}

/// Finding 9: a U+202E user id minted with the secret itself (not through the API) still
/// authenticates, since the HMAC vouches for it, but no log line carries the raw override.
#[test]
fn a_bidi_user_id_minted_with_the_secret_is_logged_escaped() {
    let server = start(&[], "");
    let expiry = unix_now() + 600;
    let (username, password) = mint(SECRET, &format!("{expiry}:mallory\u{202e}ecila"));
    let mut client = allocated(&server, &username, &password).expect("the HMAC vouches for it");
    assert_eq!(client.refresh(0), None, "delete");
    let ended = server.wait_for_log("allocation ended", 1, Duration::from_secs(10));
    assert_eq!(ended.len(), 1);
    let escaped = format!("{expiry}:mallory\\u{{202e}}ecila");
    for message in ["allocation created", "allocation ended"] {
        let users: Vec<serde_json::Value> = logged(&server, message)
            .iter()
            .map(|fields| fields["user"].clone())
            .collect();
        eprintln!("{message}: user = {users:?}");
        assert_eq!(users, [serde_json::json!(escaped)], "{message}");
    }
    let raw: Vec<String> = server
        .log()
        .into_iter()
        .filter(|line| line.contains('\u{202e}'))
        .collect();
    assert!(raw.is_empty(), "a raw U+202E in the log: {raw:?}");
}

/// Finding 9: `turnpike user add` refuses such names in one line, before touching Redis, and
/// `user list` shows a name written straight into Redis escaped.
#[test]
fn user_add_refuses_control_and_format_characters() {
    let redis = RedisServer::start();
    let url = redis.url();
    for (name, code) in [
        ("mallory\u{202e}ecila", "U+202E"),
        ("al\u{200b}ice", "U+200B"),
        ("\u{feff}alice", "U+FEFF"),
        ("a\u{1b}[2Jb", "U+001B"),
        ("\u{200f}", "U+200F"),
    ] {
        let output = admin(&["user", "add", name, "--password", "pw", "--redis", &url]);
        let stderr = &output.stderr;
        assert!(!output.succeeded(), "{name:?} was added");
        assert!(
            stderr.contains("control or invisible format characters") && stderr.contains(code),
            "{name:?}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    admin_ok(&["user", "add", "Zoë", "--password", "pw", "--redis", &url]);
    redis.cli(&[
        "HSET",
        "turnpike:users:turnpike.local",
        "eve\u{202e}x",
        &"0".repeat(32),
    ]);
    let names = redis.cli(&["HKEYS", "turnpike:users:turnpike.local"]);
    assert_eq!(
        names.lines().count(),
        2,
        "only Zoë and the hand-written name: {names}"
    );
    let listed = admin_ok(&["user", "list", "--redis", &url]);
    eprintln!("user list:\n{listed}");
    assert_eq!(listed.lines().collect::<Vec<_>>(), ["Zoë", "eve\\u{202e}x"]);
}

/// Finding 9, quotas: with `user-allocations = 1`, the long-term user alice and the REST id
/// alice each hold one allocation, whichever comes first.
#[test]
fn rest_ids_and_long_term_users_of_one_name_have_separate_quotas() {
    let server = start(&[], "user-allocations = 1\n");
    let rest = |hours: u64| mint(SECRET, &format!("{}:alice", unix_now() + hours * 3600));
    let long_term = ("alice".to_owned(), "wonderland".to_owned());
    let before = server.stats();
    for (first, second) in [(long_term.clone(), rest(1)), (rest(2), long_term.clone())] {
        let first_name = first.0.clone();
        let second_name = second.0.clone();
        let mut a = allocated(&server, &first.0, &first.1).expect("the first user's allocation");
        let mut b = allocated(&server, &second.0, &second.1)
            .unwrap_or_else(|code| panic!("{second_name} after {first_name}: {code}"));
        // Each at its own limit: another REST username of the id, or alice again, gets 486.
        let third = rest(3);
        assert_eq!(
            probe(&server, &third.0, &third.1),
            Err(486),
            "REST alice's 2nd"
        );
        assert_eq!(
            probe(&server, "alice", "wonderland"),
            Err(486),
            "alice's 2nd"
        );
        assert_eq!(a.refresh(0), None);
        assert_eq!(b.refresh(0), None);
    }
    let after = server.stats();
    let rejected = after.get("quota_rejected") - before.get("quota_rejected");
    eprintln!("quota_rejected +{rejected}");
    assert!(rejected >= 4, "quota_rejected +{rejected}");
}

/// Finding 9 across nodes: cluster leases of the REST id alice and the long-term user alice
/// are counted in different Redis sets (`P:leases:rest:<hex>` and `P:leases:<hex>`), and
/// `turnpike user set alice` (allocations, disabled) applies to the long-term user only.
#[test]
fn cluster_leases_and_overrides_keep_the_namespaces_apart() {
    let redis = RedisServer::start();
    let redis_table = format!("user-allocations = 1\n\n[redis]\nurl = {:?}\n", redis.url());
    let node_a = start(&[], &redis_table);
    let node_b = start(&[], &redis_table);
    wait_loaded(&node_a);
    wait_loaded(&node_b);
    let (peer, _echo) = common::udp_echo_peer();
    let (rest_name, rest_password) = mint(SECRET, &format!("{}:alice", unix_now() + 3600));

    let mut alice = allocated(&node_a, "alice", "wonderland").expect("alice on A");
    let mut rest_alice = allocated(&node_b, &rest_name, &rest_password).expect("REST alice on B");
    let hex = "616c696365";
    let count = |key: &str| redis.cli(&["ZCARD", key]).trim().to_owned();
    assert_eq!(
        count(&format!("turnpike:leases:{hex}")),
        "1",
        "alice's lease"
    );
    assert_eq!(
        count(&format!("turnpike:leases:rest:{hex}")),
        "1",
        "REST alice's lease"
    );
    // The cluster quota holds for each: a second allocation on the other node gets 486.
    assert_eq!(
        probe(&node_b, "alice", "wonderland"),
        Err(486),
        "alice on B"
    );
    let (other, other_password) = mint(SECRET, &format!("{}:alice", unix_now() + 7200));
    assert_eq!(
        probe(&node_a, &other, &other_password),
        Err(486),
        "REST alice on A"
    );

    // An override of alice's allocations is the long-term user's alone.
    let config = node_a.config_path().display().to_string();
    admin_ok(&["user", "set", "alice", "--allocations", "2", "-c", &config]);
    let took = poll(PROPAGATION_LIMIT, Ok(()), || {
        probe(&node_b, "alice", "wonderland")
    });
    eprintln!("alice's override applied after {took:?}");
    assert!(took.is_ok(), "alice may hold 2: {took:?}");
    assert_eq!(
        probe(&node_a, &other, &other_password),
        Err(486),
        "REST alice still 1"
    );

    // Disabling alice refuses and closes the long-term user's allocations, not REST alice's.
    assert_eq!(rest_alice.permit(&[peer]), None);
    assert_eq!(rest_alice.bind(CHANNEL, peer), None);
    admin_ok(&["user", "set", "alice", "--disabled", "true", "-c", &config]);
    let took = poll(PROPAGATION_LIMIT, Some(401), || {
        alice.refresh(600).filter(|&c| c != 437)
    });
    eprintln!("alice refused after {took:?}");
    assert!(took.is_ok(), "alice after --disabled true: {took:?}");
    assert_eq!(probe(&node_b, "alice", "wonderland"), Err(401));
    assert_eq!(rest_alice.refresh(600), None, "REST alice refreshes on");
    assert!(echoed(
        &mut rest_alice,
        b"still here",
        Duration::from_secs(2)
    ));
    assert_eq!(rest_alice.refresh(0), None);
    let took = poll(PROPAGATION_LIMIT, Ok(()), || {
        probe(&node_a, &other, &other_password)
    });
    assert!(
        took.is_ok(),
        "REST alice allocates once her lease is back: {took:?}"
    );
}

/// `turnpike credentials` still mints what it is asked for, but warns when the servers'
/// `max-rest-ttl` (the default's, or that of the configuration given) would refuse it.
#[test]
fn the_credentials_command_warns_beyond_max_rest_ttl() {
    let run = |args: &[&str]| {
        let output = admin(&[&["credentials", "--secret", SECRET, "--user", "ann"], args].concat());
        assert!(output.succeeded(), "credentials {args:?}: {output:?}");
        let json: serde_json::Value =
            serde_json::from_str(&output.stdout).expect("credentials print JSON");
        (json, output.stderr)
    };
    let (json, warning) = run(&["--ttl", "2d"]);
    assert_eq!(json["ttl"], 2 * 86_400);
    assert!(
        warning.contains("max-rest-ttl") && warning.contains("1day"),
        "{warning}"
    );
    let (_, quiet) = run(&["--ttl", "1d"]);
    assert_eq!(quiet, "", "a day is within the default");

    let dir = tempfile::tempdir().expect("create a tempdir");
    let path = dir.path().join("turnpike.toml");
    std::fs::write(&path, "[auth]\nmax-rest-ttl = \"1h\"\n").expect("write a configuration");
    let path = path.display().to_string();
    let (_, warning) = run(&["--ttl", "2h", "-c", &path]);
    assert!(warning.contains("max-rest-ttl (1h)"), "{warning}");
    let (_, quiet) = run(&["--ttl", "1h", "-c", &path]);
    assert_eq!(quiet, "");
}
