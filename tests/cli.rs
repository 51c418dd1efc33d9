//! The `turnpike` binary's command line: `credentials` output and refusal of a bad
//! configuration. These run the turnpike binary whatever `TURNPIKE_TEST_BACKEND` says.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TURNPIKE: &str = env!("CARGO_BIN_EXE_turnpike");

#[test]
fn credentials_follow_the_turn_rest_api() {
    let uri = "turn:127.0.0.1:3478?transport=udp";
    let output = Command::new(TURNPIKE)
        .args(["credentials", "--secret", "s3cret", "--user", "alice"])
        .args(["--ttl", "1h", "--uri", uri])
        .output()
        .expect("run turnpike credentials");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let context = format!(
        "{}; stdout: {stdout}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{context}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect(&context);

    let username = json["username"].as_str().expect(&context);
    let (expiry, user) = username.split_once(':').expect(&context);
    assert_eq!(user, "alice", "{context}");
    let expiry: u64 = expiry.parse().expect(&context);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expiry.abs_diff(now + 3600) <= 60,
        "expiry {expiry}; {context}"
    );

    let (_, credential) = common::rest_credentials_expiring("s3cret", "alice", expiry);
    assert_eq!(json["credential"], credential.as_str(), "{context}");
    assert_eq!(json["ttl"], 3600, "{context}");
    assert_eq!(json["urls"], serde_json::json!([uri]), "{context}");
}

#[test]
fn a_bad_configuration_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().expect("create a tempdir");
    let config = dir.path().join("bad.toml");
    let toml = common::base_config(&common::TestConfig::default(), dir.path());
    std::fs::write(&config, format!("bogus-setting = 1\n{toml}")).expect("write the config");
    let config = config.to_str().expect("a UTF-8 path");
    let ran = common::run_turnpike(
        &[],
        &["serve", "-c", config, "--log-format", "json"],
        Duration::from_secs(20),
    );
    let printed = ran.printed();
    let status = ran
        .status
        .unwrap_or_else(|| panic!("still running after 20 s: {printed}"));
    assert!(!status.success(), "exit {status}; printed: {printed}");
    assert!(
        printed.contains("bogus-setting"),
        "the reason should name the unknown key; printed: {printed}"
    );
}

/// `check-config` names each PROXY protocol listener and its balancers, and refuses a bad
/// `proxy-from` naming the key.
#[test]
fn check_config_shows_and_checks_proxy_protocol_listeners() {
    let dir = tempfile::tempdir().expect("create a tempdir");
    let path = dir.path().join("turnpike.toml");
    let run = |listener: &str| {
        let toml = format!(
            "[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:3478\"\n\
             [[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:3478\"\n{listener}\n\
             [relay]\naddress = \"127.0.0.1\"\noffload = \"off\"\n"
        );
        std::fs::write(&path, toml).expect("write the config");
        let ran = common::run_turnpike(
            &[],
            &["check-config", "-c", path.to_str().expect("a UTF-8 path")],
            Duration::from_secs(20),
        );
        let status = ran.status.expect("check-config returns");
        (status.success(), ran.printed())
    };
    let (ok, printed) = run("proxy-protocol = true\nproxy-from = [\"10.0.0.0/8\", \"192.0.2.7\"]");
    assert!(ok, "{printed}");
    assert!(
        printed.contains(
            "listen[1] (tcp 127.0.0.1:3478): PROXY protocol: each connection must come from 10.0.0.0/8, 192.0.2.7/32"
        ),
        "{printed}"
    );
    let (ok, printed) = run("proxy-protocol = true\nproxy-from = [\"10.0.0.0/33\"]");
    assert!(!ok, "{printed}");
    assert!(printed.contains("listen[1].proxy-from[0]"), "{printed}");
    let (ok, printed) = run("proxy-protocol = true");
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("listen[1].proxy-from: required with proxy-protocol = true"),
        "{printed}"
    );
}
