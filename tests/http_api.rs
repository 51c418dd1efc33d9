//! The credential API on the real binary: issued credentials work with a real client, the
//! bearer token guards every path, bad requests get clear errors.

mod common;

use common::http::http;
use common::stun_client::StunClient;
use common::{Server, TestConfig};

const TOKEN: &str = "test-token-0123456789";

fn server() -> Server {
    Server::with(&TestConfig {
        transports: vec!["udp"],
        secrets: vec!["api-secret"],
        extra: format!(
            "[http]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\nice-urls = [\"turn:127.0.0.1:3478?transport=udp\", \"turn:127.0.0.1:3478?transport=tcp\"]\n"
        ),
        ..TestConfig::default()
    })
}

#[test]
fn issued_credentials_allocate_with_a_real_client() {
    let server = server();
    let api = server.addr("http");
    let (status, body) = http(
        api,
        "POST",
        "/api/v1/credentials",
        Some(TOKEN),
        r#"{"user":"alice","ttl":600}"#,
    );
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["ttl"], 600);
    let ice = &json["iceServers"][0];
    assert_eq!(
        ice["urls"],
        serde_json::json!([
            "turn:127.0.0.1:3478?transport=udp",
            "turn:127.0.0.1:3478?transport=tcp"
        ])
    );
    let username = ice["username"].as_str().unwrap();
    let credential = ice["credential"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "{expiry} vs {now}"
    );
    // The same credential the TURN REST API formula gives, and a real allocation with it.
    let expected = common::rest_credentials_expiring("api-secret", "alice", expiry);
    assert_eq!(
        (username, credential),
        (expected.0.as_str(), expected.1.as_str())
    );
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", username, credential);
    assert!(
        client.allocate().is_ok(),
        "allocation with issued credentials"
    );

    // Without a user, the username is the expiry alone; the default ttl is a day (`[auth]
    // max-rest-ttl`'s default, as draft-uberti-behave-turn-rest recommends).
    let (status, body) = http(api, "POST", "/api/v1/credentials", Some(TOKEN), "");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["ttl"], 86_400);
    assert!(
        !json["iceServers"][0]["username"]
            .as_str()
            .unwrap()
            .contains(':')
    );
}

#[test]
fn a_request_without_the_right_token_learns_nothing() {
    let server = server();
    let api = server.addr("http");
    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        for (method, path) in [
            ("POST", "/api/v1/credentials"),
            ("DELETE", "/api/v1/credentials/1700000000:alice"),
            ("GET", "/api/v1/nothing-here"),
        ] {
            let (status, body) = http(api, method, path, token, r#"{"user":"a"}"#);
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
            assert!(
                !body.contains("iceServers") && !body.contains("not found"),
                "{body}"
            );
        }
    }
}

#[test]
fn bad_requests_get_clear_errors() {
    let server = server();
    let api = server.addr("http");
    let cases = [
        (r#"{"usr":"alice"}"#, "unknown field"),
        (r#"{"user":"alice","ttl":0}"#, "ttl must be between"),
        (r#"{"user":"alice","ttl":99999999}"#, "ttl must be between"),
        (r#"{"user":""}"#, "user must be"),
        (
            r#"{"user":"a\nb"}"#,
            "control or invisible format characters",
        ),
        ("not json", "invalid request body"),
    ];
    for (body, expected) in cases {
        let (status, answer) = http(api, "POST", "/api/v1/credentials", Some(TOKEN), body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains(expected), "{body}: {answer}");
    }
    let (status, answer) = http(api, "GET", "/elsewhere", Some(TOKEN), "");
    assert_eq!(status, 404, "{answer}");
    // Revocation reaches other nodes through Redis; without it the API says so.
    let (status, answer) = http(
        api,
        "DELETE",
        "/api/v1/credentials/4000000000:alice",
        Some(TOKEN),
        "",
    );
    assert_eq!(status, 409, "{answer}");
    assert!(answer.contains("[redis]"), "{answer}");
    let (status, answer) = http(api, "DELETE", "/api/v1/credentials/alice", Some(TOKEN), "");
    assert_eq!(status, 400, "{answer}");
}

#[test]
fn the_api_socket_is_never_a_relay_target() {
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        allow: vec!["127.0.0.0/8"],
        extra: format!("[http]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
        ..TestConfig::default()
    });
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
    client.allocate().expect("an allocation");
    assert_eq!(client.bind(0x4000, server.addr("http")), Some(403));
    assert_eq!(client.permit(&["127.0.0.1:9".parse().unwrap()]), None);
}

#[test]
fn the_dashboard_page_is_served_without_a_token_and_carries_no_data() {
    let server = server();
    let api = server.addr("http");
    let (status, body) = http(api, "GET", "/", None, "");
    assert_eq!(status, 200);
    assert!(
        body.contains("<title>") && body.contains("turnpike"),
        "{body:.200}"
    );
    assert!(body.contains("/api/v1/status"), "the page reads the API");
    assert!(!body.contains(TOKEN) && !body.contains("api-secret"));
}
