//! Three turnpike nodes on 127.0.0.1 sharing one real `redis-server`: cluster-wide user quotas
//! held as leases (for as long as the allocation lives), a killed node's quota freed within its
//! lease time, and 300 Try Alternate from a full node to the least-loaded live one.

mod common;

use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::stun_client::StunClient;
use common::{Server, TestConfig};
use turnpike::stun::{Message, Method, attr};

const LEASE_TIME: &str = "3s";

fn node(redis: &RedisServer, id: &str, limits: &str) -> Server {
    Server::with(&TestConfig {
        transports: vec!["udp"],
        users: vec![("alice", "wonderland"), ("bob", "builder")],
        extra: format!(
            "[redis]\nurl = \"{}\"\nnode-id = \"{id}\"\nlease-time = \"{LEASE_TIME}\"\n\n[limits]\n{limits}\n",
            redis.url()
        ),
        ..TestConfig::default()
    })
}

fn alice(server: &Server) -> StunClient {
    StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland")
}

/// An allocation by alice on `server` once a lease she gave back (by a Refresh 0 just
/// answered) is free: the release is one Redis round trip made after the Refresh is answered,
/// so a loaded machine may take a moment (CI once took long enough to get a 486), never a
/// lease time. Returns the client and how long it took.
fn allocate_once_released(server: &Server, what: &str) -> (StunClient, Duration) {
    let deleted = Instant::now();
    loop {
        let mut client = alice(server);
        match client.allocate() {
            Ok(_) => return (client, deleted.elapsed()),
            Err(486) if deleted.elapsed() < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => panic!("{what}: {other:?} after {:?}", deleted.elapsed()),
        }
    }
}

#[test]
fn a_user_quota_holds_across_the_cluster() {
    let redis = RedisServer::start();
    let nodes: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|id| node(&redis, id, "user-allocations = 2"))
        .collect();
    let mut first = alice(&nodes[0]);
    assert!(first.allocate().is_ok(), "first allocation, node a");
    let mut second = alice(&nodes[1]);
    assert!(second.allocate().is_ok(), "second allocation, node b");
    // The third, whichever node it asks, is over the quota of 2.
    for (i, server) in nodes.iter().enumerate() {
        assert_eq!(
            alice(server).allocate(),
            Err(486),
            "third allocation on node {i}"
        );
    }
    // Another user is not affected.
    let mut bob = StunClient::udp(nodes[2].addr("udp"), "127.0.0.1:0", "bob", "builder");
    assert!(bob.allocate().is_ok(), "bob has his own quota");
    // Deleting an allocation gives its lease back.
    assert_eq!(first.refresh(0), None);
    let (_third, freed) = allocate_once_released(&nodes[2], "allocation after a delete, node c");
    eprintln!("lease given back {freed:?} after the delete was answered");
    let stats = nodes[2].stats();
    assert!(stats.get("quota_rejected") >= 1);
}

#[test]
fn a_killed_node_frees_its_quota_within_the_lease_time() {
    let redis = RedisServer::start();
    let mut doomed = node(&redis, "doomed", "user-allocations = 1");
    let survivor = node(&redis, "survivor", "user-allocations = 1");
    let mut held = alice(&doomed);
    assert!(held.allocate().is_ok());
    assert_eq!(alice(&survivor).allocate(), Err(486));
    doomed.kill(); // SIGKILL: no goodbye, the lease must expire by itself
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(3 + 5);
    let freed = loop {
        if alice(&survivor).allocate().is_ok() {
            break killed.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the killed node's lease was not freed within lease-time + 5 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("quota freed {freed:?} after SIGKILL (lease-time {LEASE_TIME})");
}

#[test]
fn a_full_node_sends_clients_to_the_least_loaded_live_node() {
    let redis = RedisServer::start();
    let full = node(&redis, "full", "total-allocations = 1");
    let busy = node(&redis, "busy", "");
    let idle = node(&redis, "idle", "");
    // Load: full 1 (its maximum), busy 2, idle 0.
    let mut held = alice(&full);
    assert!(held.allocate().is_ok());
    let mut busy_clients: Vec<StunClient> = (0..2).map(|_| alice(&busy)).collect();
    for client in &mut busy_clients {
        assert!(client.allocate().is_ok());
    }
    // Registry entries are refreshed every second; give them time to show the load.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = alice(&full);
        let answer = client.request(Method::ALLOCATE, &|w| w.requested_transport(17).unwrap());
        if answer.code == Some(300) {
            let msg = Message::parse(&answer.bytes).unwrap();
            let alternate =
                attr::decode_address(msg.get(attr::ALTERNATE_SERVER).expect("ALTERNATE-SERVER"))
                    .unwrap();
            if alternate == idle.addr("udp") {
                break;
            }
            assert!(
                alternate == busy.addr("udp"),
                "alternate {alternate} is none of the nodes"
            );
        } else {
            assert_eq!(answer.code, Some(486), "{answer:?}");
        }
        assert!(
            Instant::now() < deadline,
            "no 300 naming the idle node within 10 s"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // And the alternate really serves the client.
    assert!(alice(&idle).allocate().is_ok());
}

#[test]
fn a_long_allocation_keeps_its_lease_past_twice_the_lease_time() {
    let redis = RedisServer::start();
    let first = node(&redis, "first", "user-allocations = 1");
    let second = node(&redis, "second", "user-allocations = 1");
    let mut held = alice(&first);
    assert!(held.allocate().is_ok());
    assert_eq!(alice(&second).allocate(), Err(486), "at once");
    // A user's lease key was created with a time to live of twice the lease time; the
    // heartbeat renews the lease in it, and must keep the key too.
    let waited = Instant::now();
    std::thread::sleep(Duration::from_secs(3 * 2 + 2));
    let lease_key = format!("turnpike:leases:{}", "616c696365"); // "alice" in hex
    let ttl = redis.cli(&["TTL", &lease_key]);
    eprintln!(
        "{:?} after the allocation: TTL of alice's lease key {}",
        waited.elapsed(),
        ttl.trim()
    );
    assert_eq!(
        alice(&second).allocate(),
        Err(486),
        "alice's live allocation on the first node still counts"
    );
    assert_eq!(held.refresh(0), None);
    let (_client, freed) = allocate_once_released(&second, "once deleted, its lease is given back");
    eprintln!("lease given back {freed:?} after the delete was answered");
}
