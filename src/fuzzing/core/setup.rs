//! What every core input runs with: the client 5-tuples it can speak from, the configurations
//! (flavors) it starts with and reloads, the other nodes of the cluster view, and the listeners
//! and sockets the I/O layer would hold for a configuration.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::config::{Config, Transport};
use crate::net::BoundListener;
use crate::stun::{self};
use crate::turn::FiveTuple;

/// The client 5-tuples an input can speak from: `(transport, client, server)`.
pub const TUPLES: [(Transport, &str, &str); 7] = [
    (Transport::Udp, "127.0.0.1:40000", "127.0.0.1:3478"),
    (Transport::Udp, "127.0.0.1:40001", "127.0.0.1:3478"),
    (Transport::Tcp, "127.0.0.1:40002", "127.0.0.1:3478"),
    (Transport::Tls, "127.0.0.1:40003", "127.0.0.1:5349"),
    (Transport::Udp, "[::1]:40004", "[::1]:3478"),
    (Transport::Tcp, "[::1]:40005", "[::1]:3478"),
    (Transport::Udp, "203.0.113.9:40006", "127.0.0.1:3478"),
];

/// The client data connections (RFC 6062 §5.4) [`Op::ConnectionBind`](super::Op) may come
/// from besides the tuples above (it picks from both, so that a control connection tries too):
/// each bind is a new connection, and a UDP one is refused. Slot `TUPLES.len() + i` is
/// `DATA_TUPLES[i]`.
pub const DATA_TUPLES: [(Transport, &str, &str); 4] = [
    (Transport::Tcp, "127.0.0.1:41000", "127.0.0.1:3478"),
    (Transport::Tls, "127.0.0.1:41001", "127.0.0.1:5349"),
    (Transport::Tcp, "[::1]:41002", "[::1]:3478"),
    (Transport::Udp, "127.0.0.1:41003", "127.0.0.1:3478"),
];

/// Every slot a client can speak from: [`TUPLES`], then [`DATA_TUPLES`].
pub(super) const SLOTS: usize = TUPLES.len() + DATA_TUPLES.len();

pub(super) const SECRET: [u8; 32] = [0x5e; 32];
pub(super) const NONCE_KEY: [u8; 32] = [0x70; 32];
/// The wall clock at the start of every input, for REST API usernames.
pub(super) const UNIX_AT_EPOCH: u64 = 1_700_000_000;
/// The realm of the configurations below (and of the captured seeds).
pub const REALM: &str = "turnpike.test";

/// The first byte of a core input picks one of these configurations; [`Op::Reload`] switches.
/// All share the users `alice` (password `wonderland`), `bob` (a `key`) and REST secret
/// `s3cret`: the seeds were captured with `alice`. All but flavor 3 grant TCP allocations.
pub(super) fn flavor_toml(flavor: usize) -> String {
    let software = if flavor == 3 { "" } else { "turnpike-fuzz" };
    let mut toml = format!(
        r#"realm = "{REALM}"
software = "{software}"
workers = 1

[[listen]]
transport = "udp"
address = "127.0.0.1:3478"

[[listen]]
transport = "tcp"
address = "127.0.0.1:3478"

[[listen]]
transport = "tls"
address = "127.0.0.1:5349"

[[listen]]
transport = "udp"
address = "[::1]:3478"

[[listen]]
transport = "tcp"
address = "[::1]:3478"

[tls]
certificate = "/nonexistent/cert.pem"
private-key = "/nonexistent/key.pem"

[relay]
address = "127.0.0.1"
address-v6 = "::1"
ports = "49152-49163"
default-lifetime = "10m"
max-lifetime = "1h"
"#
    );
    if flavor == 3 {
        // And no TCP allocations (RFC 6062): a reload to this flavor turns them off while
        // some may be open.
        toml += "public-address = \"198.51.100.1\"\n";
    } else {
        toml += "tcp = true\n";
    }
    toml += r#"
[auth]
secrets = ["s3cret"]
nonce-lifetime = "10m"

[[auth.users]]
name = "alice"
password = "wonderland"

[[auth.users]]
name = "bob"
key = "KEY_OF_BOB"

[peers]
allow = ["127.0.0.0/8", "::1/128"]
deny = ["127.0.0.66/32"]
"#;
    toml += match flavor {
        1 => "\n[redis]\nurl = \"redis://127.0.0.1:1/0\"\n",
        2 => concat!(
            "\n[limits]\nunauthenticated-rate = 5\nunauthenticated-burst = 6\n",
            "unauthenticated-node-rate = 8\nuser-allocations = 1\n",
            "total-allocations = 3\nallocation-bandwidth = \"64 kbps\"\n",
            "user-bandwidth = \"100 kbps\"\npermissions-per-allocation = 2\n",
            "channels-per-allocation = 2\n",
        ),
        // No reflection budget, so no table of sources (768 KiB to set up on first use).
        _ => concat!(
            "\n[limits]\nuser-allocations = 3\ntotal-allocations = 6\n",
            "unauthenticated-rate = 0\nunauthenticated-node-rate = 0\n",
        ),
    };
    let bob = stun::long_term_key("bob", REALM, "builder");
    toml.replace("KEY_OF_BOB", &crate::auth::key_hex(&bob))
}

/// The configurations of [`flavor_toml`], parsed once per process.
pub(super) fn flavors() -> Arc<[Config]> {
    static FLAVORS: OnceLock<Arc<[Config]>> = OnceLock::new();
    let flavors = FLAVORS.get_or_init(|| {
        (0..4)
            .map(|flavor| {
                Config::from_toml(&flavor_toml(flavor))
                    .unwrap_or_else(|e| panic!("fuzz configuration {flavor}: {e}"))
            })
            .collect()
    });
    flavors.clone()
}

/// The instant simulated time starts from, the same for every input of a process.
pub(super) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Other nodes for [`Op::Alternates`]: transport, address, load.
pub(super) const ALTERNATES: [(Transport, &str, u64); 4] = [
    (Transport::Udp, "198.51.100.2:3478", 3),
    (Transport::Tcp, "198.51.100.3:3478", 1),
    (Transport::Tls, "198.51.100.4:5349", 0),
    (Transport::Udp, "[2001:db8::2]:3478", 0),
];

pub(super) fn tuple_index(selector: u8) -> usize {
    usize::from(selector) % TUPLES.len()
}

/// The 5-tuple of slot `t` (see [`SLOTS`]).
pub(super) fn five_tuple(t: usize) -> FiveTuple {
    let (transport, client, server) = match TUPLES.get(t) {
        Some(&tuple) => tuple,
        None => DATA_TUPLES[t - TUPLES.len()],
    };
    FiveTuple {
        transport,
        client: parse_addr(client),
        server: parse_addr(server),
    }
}

pub(super) fn tuple_of(tuple: FiveTuple) -> usize {
    (0..SLOTS)
        .find(|&t| five_tuple(t) == tuple)
        .expect("an answer to one of the harness's tuples")
}

pub(super) fn parse_addr(text: &str) -> SocketAddr {
    text.parse().expect("a valid address in the harness")
}

/// The listeners as `Node::start` reports them bound (ports given, so the same).
pub(super) fn bound_listeners(config: &Config) -> Vec<BoundListener> {
    config
        .listen
        .iter()
        .map(|l| BoundListener {
            transport: l.transport,
            address: l.address,
        })
        .collect()
}

/// The server's other sockets: the HTTP API's.
pub(super) fn own_sockets(config: &Config) -> Vec<SocketAddr> {
    config.http.iter().map(|http| http.address).collect()
}
