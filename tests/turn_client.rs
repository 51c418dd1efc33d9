//! The webrtc-rs `turn` crate's client against the server: allocate a UDP relay, reach a UDP
//! echo peer through it (CreatePermission, Send indication, then ChannelBind and ChannelData,
//! all done by the client on `send_to`), and get refused with bad credentials.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::time::timeout;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

use common::{RELAY_PORTS, Server, TestConfig};

/// How long one allocation or one echo may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Datagrams sent through the relay in each test.
const ROUNDS: usize = 10;

/// Allocates a UDP relay on `server` with long-term credentials.
async fn allocate(
    server: SocketAddr,
    username: &str,
    password: &str,
) -> Result<(Client, impl Conn), turn::Error> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.to_string(),
        password: password.to_string(),
        realm: String::new(), // Learnt from the server's 401.
        software: "turnpike-tests".to_string(),
        rto_in_ms: 0,
        conn: Arc::new(socket),
        vnet: None,
    })
    .await?;
    client.listen().await?;
    let relay = timeout(STEP_TIMEOUT, client.allocate())
        .await
        .expect("allocation timed out")?;
    Ok((client, relay))
}

/// Sends `ROUNDS` datagrams to the echo `peer` through `relay` and checks every echo.
async fn exchange(relay: &impl Conn, peer: SocketAddr) {
    let mut buf = vec![0u8; 1500];
    for round in 0..ROUNDS {
        let message = format!("turnpike relay test, round {round}");
        relay
            .send_to(message.as_bytes(), peer)
            .await
            .unwrap_or_else(|e| panic!("round {round}: send_to {peer} failed: {e}"));
        let (n, from) = timeout(STEP_TIMEOUT, relay.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("round {round}: no echo within {STEP_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("round {round}: recv_from failed: {e}"));
        assert_eq!(from, peer, "round {round}: echo from the wrong address");
        assert_eq!(
            String::from_utf8_lossy(&buf[..n]),
            message,
            "round {round}: echo differs"
        );
        // Gives the client time to bind a channel, so later rounds travel as ChannelData.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_relayed_address(relayed: SocketAddr) {
    assert_eq!(
        relayed.ip(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "relayed address {relayed}"
    );
    assert!(
        RELAY_PORTS.contains(&relayed.port()),
        "relayed port {} outside {RELAY_PORTS:?}",
        relayed.port()
    );
}

async fn relay_round_trip(config: &TestConfig, username: &str, password: &str) {
    let server = Server::with(config);
    let (peer, echo) = common::udp_echo_peer();
    let (client, relay) = allocate(server.addr("udp"), username, password)
        .await
        .unwrap_or_else(|e| panic!("allocation as {username} failed: {e}"));
    let relayed = relay.local_addr().expect("relayed address");
    eprintln!("allocated {relayed} for {username}");
    assert_relayed_address(relayed);

    exchange(&relay, peer).await;
    assert_eq!(echo.echoed(), ROUNDS, "datagrams the peer saw");
    relay.close().await.expect("close the relay");
    client.close().await.expect("close the client");
}

fn udp_only(config: TestConfig) -> TestConfig {
    TestConfig {
        transports: vec!["udp"],
        ..config
    }
}

#[tokio::test]
async fn static_user_relays_to_a_udp_peer() {
    relay_round_trip(&udp_only(TestConfig::default()), "alice", "wonderland").await;
}

#[tokio::test]
async fn rest_credentials_relay_to_a_udp_peer() {
    let (username, password) = common::rest_credentials("s3cret", "bob", Duration::from_secs(3600));
    relay_round_trip(&udp_only(TestConfig::rest()), &username, &password).await;
}

async fn assert_allocation_refused(config: &TestConfig, username: &str, password: &str) {
    let server = Server::with(config);
    match allocate(server.addr("udp"), username, password).await {
        Ok((client, relay)) => {
            let relayed = relay.local_addr();
            client.close().await.expect("close the client");
            panic!("allocation as {username}/{password} succeeded: {relayed:?}");
        }
        Err(e) => {
            eprintln!("refused as expected: {e}");
            assert!(e.to_string().contains("401"), "expected a 401, got: {e}");
        }
    }
}

#[tokio::test]
async fn wrong_password_is_refused() {
    assert_allocation_refused(&udp_only(TestConfig::default()), "alice", "looking-glass").await;
}

#[tokio::test]
async fn unknown_user_is_refused() {
    assert_allocation_refused(&udp_only(TestConfig::default()), "mallory", "wonderland").await;
}

#[tokio::test]
async fn rest_credentials_with_another_secret_are_refused() {
    let (username, password) = common::rest_credentials("n0t-it", "bob", Duration::from_secs(3600));
    assert_allocation_refused(&udp_only(TestConfig::rest()), &username, &password).await;
}

#[tokio::test]
async fn expired_rest_credentials_are_refused() {
    let an_hour_ago = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        - 3600;
    let (username, password) = common::rest_credentials_expiring("s3cret", "bob", an_hour_ago);
    assert_allocation_refused(&udp_only(TestConfig::rest()), &username, &password).await;
}

/// turnpike (unlike coturn) serves static users and REST secrets side by side, and accepts
/// every configured secret so that one can be rotated while credentials minted with the old
/// one are still in use.
#[tokio::test]
async fn static_users_and_rotated_secrets_work_side_by_side() {
    if std::env::var("TURNPIKE_TEST_BACKEND").as_deref() == Ok("coturn") {
        eprintln!("turnpike-only behaviour: skipped under the coturn backend");
        return;
    }
    let config = udp_only(TestConfig {
        secrets: vec!["new-secret", "old-secret"],
        ..TestConfig::default()
    });
    let hour = Duration::from_secs(3600);
    let (new_user, new_password) = common::rest_credentials("new-secret", "carol", hour);
    let (old_user, old_password) = common::rest_credentials("old-secret", "dave", hour);
    relay_round_trip(&config, "alice", "wonderland").await;
    relay_round_trip(&config, &new_user, &new_password).await;
    relay_round_trip(&config, &old_user, &old_password).await;
}
