//! The core targets: a [`turn::Server`](crate::turn::Server) built from a real configuration the
//! way the I/O layer builds it, driven by [`Op`]s decoded from the input, with the invariants
//! checked after every step.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::auth::{Credentials, Key, StaticCredentials, rest_password};
use crate::config::{Config, PortRange, Transport, UserCredential};
use crate::net::{BoundListener, core_config, peer_policy};
use crate::stun::{
    self, ChannelData, Class, Frame, Message, MessageWriter, Method, TransactionId, attr,
};
use crate::turn::{
    AllocationId, AllocationLedger, Alternate, CHANNEL_COOLDOWN, ClientAction, CoreConfig, Event,
    Family, FiveTuple, HostAddresses, NodeLimits, Nonces, PEER_HEADROOM, PEER_TAILROOM, PeerAction,
    PeerPolicy, PortRequest, ReflectionBudget, RelayOpenError, ReservationToken, Server,
    SourceLimiter, Stats, policy::canonical_ip,
};

use super::{Input, push_chunk};

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

/// Operations after which an input stops, whatever is left of it.
const MAX_OPS: usize = 1000;
/// The reply buffer the core gets: the 1500 bytes `handle_client` documents as enough.
const OUT_LEN: usize = 1500;
/// Largest answer to a request without valid credentials, besides the realm (reflection).
const UNAUTHENTICATED_REPLY_MAX: usize = 200;
const SECRET: [u8; 32] = [0x5e; 32];
const NONCE_KEY: [u8; 32] = [0x70; 32];
/// The wall clock at the start of every input, for REST API usernames.
const UNIX_AT_EPOCH: u64 = 1_700_000_000;
/// The realm of the configurations below (and of the captured seeds).
pub const REALM: &str = "turnpike.test";

/// The first byte of a core input picks one of these configurations; [`Op::Reload`] switches.
/// All share the users `alice` (password `wonderland`), `bob` (a `key`) and REST secret
/// `s3cret`: the seeds were captured with `alice`.
fn flavor_toml(flavor: usize) -> String {
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
        toml += "public-address = \"198.51.100.1\"\n";
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
fn flavors() -> Arc<[Config]> {
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
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// One step of a core input. [`Op::decode`] reads it from the fuzzer's bytes (any byte is some
/// operation); [`Op::encode`] writes it (for seeds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// Bytes from the client of `TUPLES[tuple]`: one datagram on UDP; on TCP/TLS the next bytes
    /// of the stream, framed as the I/O layer frames them.
    Client {
        tuple: u8,
        data: &'a [u8],
    },
    /// A STUN message of type `message_type` and transaction id `[tid; 12]` around
    /// `attributes` (type, length, value, read leniently). Flag [`FINGERPRINT`] adds
    /// FINGERPRINT; in the authenticated target the message is signed as the other flags say.
    Stun {
        tuple: u8,
        message_type: u16,
        tid: u8,
        flags: u8,
        attributes: &'a [u8],
    },
    /// A datagram from a peer (chosen by `peer`, see `Harness::peer_address`) to the relay
    /// socket of one of the allocations.
    Peer {
        allocation: u8,
        peer: u8,
        port: u16,
        data: &'a [u8],
    },
    /// Simulated time passes.
    Wait {
        millis: u16,
    },
    WaitSeconds {
        seconds: u16,
    },
    /// Time moves on to the core's next deadline (if later) and `handle_timeout` runs.
    Timeout,
    /// How the next relay sockets open: 0 (and 3 and above) opened, 1 no port, 2 bad token.
    RelayOutcome {
        outcome: u8,
    },
    /// The cluster answers one of the pending lease requests.
    Lease {
        pending: u8,
        granted: bool,
    },
    /// The TCP/TLS connection of `TUPLES[tuple]` closes.
    Disconnect {
        tuple: u8,
    },
    /// An operator closes one of the allocations.
    Close {
        allocation: u8,
    },
    /// A username or user is revoked.
    Revoke {
        name: u8,
    },
    /// The configuration is reloaded with another flavor.
    Reload {
        flavor: u8,
    },
    /// The node starts or stops draining.
    Drain {
        on: bool,
    },
    /// The cluster view changes to the first `count` of a few other nodes.
    Alternates {
        count: u8,
    },
}

/// [`Op::Stun`] flag: add FINGERPRINT.
pub const FINGERPRINT: u8 = 0x01;
/// [`Op::Stun`] flags of the authenticated target: which user (2 bits: alice, bob, a REST
/// username, an expired REST username).
pub const USER_SHIFT: u8 = 1;
/// A realm other than the server's.
pub const WRONG_REALM: u8 = 0x08;
/// MESSAGE-INTEGRITY under a wrong key.
pub const WRONG_KEY: u8 = 0x10;
/// USERNAME, REALM and NONCE after the fuzzer's attributes rather than before.
pub const CREDENTIALS_LAST: u8 = 0x20;
/// No NONCE.
pub const NO_NONCE: u8 = 0x40;
/// No MESSAGE-INTEGRITY.
pub const NO_INTEGRITY: u8 = 0x80;

const OP_COUNT: u8 = 14;

impl<'a> Op<'a> {
    /// Reads the next operation; `None` at the end of the input.
    pub fn decode(input: &mut Input<'a>) -> Option<Op<'a>> {
        let tag = input.u8()? % OP_COUNT;
        Some(match tag {
            0 => Op::Client {
                tuple: input.u8()?,
                data: input.chunk()?,
            },
            1 => Op::Stun {
                tuple: input.u8()?,
                message_type: input.u16()?,
                tid: input.u8()?,
                flags: input.u8()?,
                attributes: input.chunk()?,
            },
            2 => Op::Peer {
                allocation: input.u8()?,
                peer: input.u8()?,
                port: input.u16()?,
                data: input.chunk()?,
            },
            3 => Op::Wait {
                millis: input.u16()?,
            },
            4 => Op::WaitSeconds {
                seconds: input.u16()?,
            },
            5 => Op::Timeout,
            6 => Op::RelayOutcome {
                outcome: input.u8()?,
            },
            7 => Op::Lease {
                pending: input.u8()?,
                granted: input.u8()? & 1 == 0,
            },
            8 => Op::Disconnect { tuple: input.u8()? },
            9 => Op::Close {
                allocation: input.u8()?,
            },
            10 => Op::Revoke { name: input.u8()? },
            11 => Op::Reload {
                flavor: input.u8()?,
            },
            12 => Op::Drain {
                on: input.u8()? & 1 == 1,
            },
            _ => Op::Alternates { count: input.u8()? },
        })
    }

    /// Appends the operation as [`Op::decode`] reads it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Op::Client { tuple, data } => {
                out.extend_from_slice(&[0, tuple]);
                push_chunk(out, data);
            }
            Op::Stun {
                tuple,
                message_type,
                tid,
                flags,
                attributes,
            } => {
                out.extend_from_slice(&[1, tuple]);
                out.extend_from_slice(&message_type.to_be_bytes());
                out.extend_from_slice(&[tid, flags]);
                push_chunk(out, attributes);
            }
            Op::Peer {
                allocation,
                peer,
                port,
                data,
            } => {
                out.extend_from_slice(&[2, allocation, peer]);
                out.extend_from_slice(&port.to_be_bytes());
                push_chunk(out, data);
            }
            Op::Wait { millis } => {
                out.push(3);
                out.extend_from_slice(&millis.to_be_bytes());
            }
            Op::WaitSeconds { seconds } => {
                out.push(4);
                out.extend_from_slice(&seconds.to_be_bytes());
            }
            Op::Timeout => out.push(5),
            Op::RelayOutcome { outcome } => out.extend_from_slice(&[6, outcome]),
            Op::Lease { pending, granted } => {
                out.extend_from_slice(&[7, pending, u8::from(!granted)]);
            }
            Op::Disconnect { tuple } => out.extend_from_slice(&[8, tuple]),
            Op::Close { allocation } => out.extend_from_slice(&[9, allocation]),
            Op::Revoke { name } => out.extend_from_slice(&[10, name]),
            Op::Reload { flavor } => out.extend_from_slice(&[11, flavor]),
            Op::Drain { on } => out.extend_from_slice(&[12, u8::from(on)]),
            Op::Alternates { count } => out.extend_from_slice(&[13, count]),
        }
    }
}

/// Whether [`Op::Stun`] messages carry credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Unauthenticated,
    Authenticated,
}

/// Input: a flavor byte (configuration `flavor_toml`), then [`Op`]s. Messages carry no
/// credentials the fuzzer did not write itself.
pub fn core_unauthenticated(data: &[u8]) {
    run(Mode::Unauthenticated, data);
}

/// Like [`core_unauthenticated`], but every [`Op::Stun`] is signed: USERNAME, REALM, a NONCE
/// the server issued (from a 401 it is asked for first, renewed on 438) and MESSAGE-INTEGRITY
/// under the user's key, so the fuzzer's attributes reach the request handlers.
pub fn core_authenticated(data: &[u8]) {
    run(Mode::Authenticated, data);
}

fn run(mode: Mode, data: &[u8]) {
    let mut input = Input::new(data);
    let flavors = flavors();
    let flavor = usize::from(input.u8().unwrap_or(0)) % flavors.len();
    let mut harness = Harness::new(mode, flavors, flavor);
    let trace = tracing_ops();
    for _ in 0..MAX_OPS {
        let Some(op) = Op::decode(&mut input) else {
            break;
        };
        if trace {
            eprintln!("{op:?}");
        }
        harness.apply(&op);
    }
    harness.finish();
    if trace {
        eprintln!("flavor {flavor}, {:?}", harness.server.stats());
    }
}

/// `TURNPIKE_FUZZ_TRACE=1` prints each operation of a core input and the core's counters at
/// the end (to see what a corpus file or a finding does).
fn tracing_ops() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("TURNPIKE_FUZZ_TRACE").is_some_and(|v| v == "1"))
}

/// Where a relay socket the core asked for is "bound", and what is held.
#[derive(Default)]
struct FakeSockets {
    used: BTreeSet<SocketAddr>,
    reserved: HashMap<ReservationToken, SocketAddr>,
}

/// A core and everything around it that the I/O layer would hold, plus what the checks need.
pub(crate) struct Harness {
    mode: Mode,
    configs: Arc<[Config]>,
    config: Config,
    listeners: Vec<BoundListener>,
    relay_v4: Option<Ipv4Addr>,
    server: Server,
    node: Arc<NodeLimits>,
    credentials: Arc<Credentials>,
    policy: PeerPolicy,
    now: Instant,
    out: Vec<u8>,
    streams: Vec<Vec<u8>>,
    sockets: FakeSockets,
    /// Open relay sockets by allocation, as the I/O layer keeps them.
    relays: BTreeMap<AllocationId, SocketAddr>,
    /// Relays recently closed: a peer datagram may still name one.
    closed: Vec<AllocationId>,
    /// The kernel table as the events built it: (allocation, channel, peer).
    offloaded: BTreeSet<(AllocationId, u16, SocketAddr)>,
    outcome: u8,
    pending_leases: Vec<AllocationId>,
    leased: BTreeSet<AllocationId>,
    /// The transaction id of the Allocate that made the pending allocation of each tuple.
    allocate_tid: HashMap<usize, TransactionId>,
    /// Nonces the server issued, by client IP.
    nonces: HashMap<IpAddr, Vec<u8>>,
    /// Users that can sign requests: name and key.
    users: Vec<(String, Key)>,
    /// Keys requests were signed with: a reply's MESSAGE-INTEGRITY must verify under one.
    keys: Vec<Key>,
    /// The last reply per tuple and transaction id, to recognise a retransmitted answer.
    last_replies: HashMap<(usize, [u8; 12]), Vec<u8>>,
    stats: Stats,
    /// When the I/O layer's timer would wake: re-read when `take_new_deadline` says so and
    /// after `handle_timeout`.
    timer: Option<Instant>,
    counter: u32,
}

impl Harness {
    /// A core for `configs[flavor]`, set up as `Node::start` sets up each worker's.
    pub(crate) fn new(mode: Mode, configs: Arc<[Config]>, flavor: usize) -> Self {
        let config = configs[flavor].clone();
        let relay_v4 = Some(config.relay.address.unwrap_or(Ipv4Addr::new(192, 0, 2, 1)));
        let listeners = bound_listeners(&config);
        let own = own_sockets(&config);
        let epoch = epoch();
        let policy = peer_policy(
            &config,
            &listeners,
            &own,
            relay_v4,
            HostAddresses::default(),
        );
        let nonces = Nonces::new(NONCE_KEY, epoch, config.auth.nonce_lifetime);
        let node = Arc::new(NodeLimits {
            ledger: AllocationLedger::new(),
            sources: SourceLimiter::new(ReflectionBudget::from_limits(&config.limits)),
        });
        let credentials = Arc::new(Credentials::new(
            StaticCredentials::new(&config.auth, &config.realm),
            None,
        ));
        let server = Server::new(
            // The fast path's events are checked too (see `drain_events`).
            CoreConfig {
                offload: true,
                ..core_config(&config, relay_v4, epoch, UNIX_AT_EPOCH)
            },
            credentials.clone(),
            policy.clone(),
            nonces,
            node.clone(),
            SECRET,
        );
        let users: Vec<(String, Key)> = config
            .auth
            .users
            .iter()
            .map(|user| {
                let key = match &user.credential {
                    UserCredential::Password(password) => {
                        stun::long_term_key(&user.name, &config.realm, password)
                    }
                    UserCredential::Key(key) => *key,
                };
                (user.name.clone(), key)
            })
            .collect();
        Harness {
            mode,
            configs,
            listeners,
            relay_v4,
            server,
            node,
            credentials,
            policy,
            now: epoch,
            out: vec![0; OUT_LEN],
            streams: vec![Vec::new(); TUPLES.len()],
            sockets: FakeSockets::default(),
            relays: BTreeMap::new(),
            closed: Vec::new(),
            offloaded: BTreeSet::new(),
            outcome: 0,
            pending_leases: Vec::new(),
            leased: BTreeSet::new(),
            allocate_tid: HashMap::new(),
            nonces: HashMap::new(),
            keys: users.iter().map(|(_, key)| *key).collect(),
            users,
            last_replies: HashMap::new(),
            stats: Stats::default(),
            timer: None,
            counter: 0,
            config,
        }
    }

    /// Runs one operation, then checks the invariants.
    pub(crate) fn apply(&mut self, op: &Op<'_>) {
        match *op {
            Op::Client { tuple, data } => {
                self.client(tuple_index(tuple), data);
            }
            Op::Stun {
                tuple,
                message_type,
                tid,
                flags,
                attributes,
            } => {
                let t = tuple_index(tuple);
                let tid = TransactionId([tid; 12]);
                match self.mode {
                    Mode::Unauthenticated => {
                        let fingerprint = flags & FINGERPRINT != 0;
                        let message = build_message(
                            message_type,
                            tid,
                            attributes,
                            flags,
                            fingerprint,
                            &|_| Ok(()),
                        );
                        self.client(t, &message);
                    }
                    Mode::Authenticated => self.signed(t, message_type, tid, flags, attributes),
                }
            }
            Op::Peer {
                allocation,
                peer,
                port,
                data,
            } => self.peer(allocation, peer, port, data),
            Op::Wait { millis } => self.now += Duration::from_millis(millis.into()),
            Op::WaitSeconds { seconds } => self.now += Duration::from_secs(seconds.into()),
            Op::Timeout => self.timeout(),
            Op::RelayOutcome { outcome } => self.outcome = outcome,
            Op::Lease { pending, granted } => self.lease(pending, granted),
            Op::Disconnect { tuple } => {
                let t = tuple_index(tuple);
                if TUPLES[t].0 != Transport::Udp {
                    self.disconnect(t);
                }
            }
            Op::Close { allocation } => self.close(allocation),
            Op::Revoke { name } => self.revoke(name),
            Op::Reload { flavor } => self.reload(usize::from(flavor) % self.configs.len()),
            Op::Drain { on } => self.server.set_draining(on),
            Op::Alternates { count } => {
                let count = usize::from(count) % (ALTERNATES.len() + 1);
                let alternates = ALTERNATES[..count]
                    .iter()
                    .map(|&(transport, address, load)| Alternate {
                        transport,
                        address: parse_addr(address),
                        load,
                    })
                    .collect::<Vec<_>>();
                self.server.set_alternates(alternates.into());
            }
        }
        self.check_state();
    }

    /// Bytes from a client; returns the replies the client got.
    fn client(&mut self, t: usize, data: &[u8]) -> Vec<Vec<u8>> {
        if TUPLES[t].0 == Transport::Udp {
            return self.client_message(t, data).into_iter().collect();
        }
        // TCP/TLS: as net/stream.rs reads a connection.
        let mut replies = Vec::new();
        let mut stream = std::mem::take(&mut self.streams[t]);
        stream.extend_from_slice(data);
        let mut consumed = 0;
        while consumed < stream.len() {
            let pending = &stream[consumed..];
            let (message, advance) = match stun::frame_len(pending) {
                Ok(Some(Frame::Stun(len))) => (len, len),
                Ok(Some(Frame::ChannelData { len, padded })) => (len, padded),
                Ok(None) => break,
                Err(_) => {
                    self.server.record_malformed();
                    self.disconnect(t);
                    return replies;
                }
            };
            if advance > pending.len() {
                break;
            }
            let message = pending[..message].to_vec();
            replies.extend(self.client_message(t, &message));
            consumed += advance;
        }
        stream.drain(..consumed);
        self.streams[t] = stream;
        replies
    }

    /// One client message (a datagram or a framed message) through `handle_client`.
    fn client_message(&mut self, t: usize, data: &[u8]) -> Option<Vec<u8>> {
        let tuple = five_tuple(t);
        let request = match data.first() {
            Some(0x00..=0x3F) => Message::parse(data)
                .ok()
                .map(|m| (m.method(), m.class(), m.transaction_id())),
            _ => None,
        };
        if let Some((Method::ALLOCATE, Class::Request, tid)) = request
            && self.server.allocation_of(&tuple).is_none()
        {
            self.allocate_tid.insert(t, tid);
        }
        let mut out = std::mem::take(&mut self.out);
        let action = self.server.handle_client(self.now, tuple, data, &mut out);
        let reply = match action {
            ClientAction::None => None,
            ClientAction::Reply(n) => {
                assert!(
                    n > 0 && n <= out.len(),
                    "reply of {n} bytes in {}",
                    out.len()
                );
                let reply = out[..n].to_vec();
                self.check_reply(t, request, &reply);
                Some(reply)
            }
            ClientAction::Relay {
                allocation,
                peer,
                payload,
            } => {
                self.check_relay(t, data, allocation, peer, payload);
                None
            }
        };
        self.out = out;
        self.drain_events();
        reply
    }

    /// A reply to `request` from `TUPLES[t]` is a well-formed answer to it.
    fn check_reply(
        &mut self,
        t: usize,
        request: Option<(Method, Class, TransactionId)>,
        reply: &[u8],
    ) {
        let (method, class, tid) = request.expect("a reply to something that is no request");
        assert_eq!(class, Class::Request, "a reply to a {class:?}");
        let msg = Message::parse(reply).expect("the reply parses");
        assert_eq!(
            msg.transaction_id(),
            tid,
            "reply with another transaction id"
        );
        assert!(msg.has_fingerprint(), "reply without FINGERPRINT");
        assert!(
            matches!(msg.class(), Class::Success | Class::Error),
            "a reply of class {:?}",
            msg.class()
        );
        if msg.method() != method {
            assert_eq!(
                self.last_replies.get(&(t, tid.0)).map(Vec::as_slice),
                Some(reply),
                "reply for {:?} to {method:?}, and not a retransmitted answer",
                msg.method()
            );
        }
        if msg.class() == Class::Error {
            let code = msg
                .get(attr::ERROR_CODE)
                .map(attr::decode_error_code)
                .expect("an error reply has ERROR-CODE")
                .expect("ERROR-CODE decodes")
                .0;
            if matches!(code, 401 | 438) && !msg.has_integrity() {
                let realm = msg.get(attr::REALM).expect("a challenge has REALM");
                assert_eq!(realm, self.config.realm.as_bytes());
                let nonce = msg.get(attr::NONCE).expect("a challenge has NONCE");
                assert_eq!(nonce.len(), crate::turn::nonce::NONCE_LEN);
            }
        }
        if msg.has_integrity() {
            assert!(
                self.keys.iter().any(|key| msg.check_integrity(key).is_ok()),
                "reply signed with a key no request was signed with"
            );
        } else {
            let max = UNAUTHENTICATED_REPLY_MAX + self.config.realm.len();
            assert!(
                reply.len() <= max,
                "unsigned reply of {} bytes (at most {max})",
                reply.len()
            );
        }
        if msg.class() == Class::Success && msg.method() == Method::BINDING {
            let mapped = msg
                .get(attr::XOR_MAPPED_ADDRESS)
                .expect("XOR-MAPPED-ADDRESS");
            assert_eq!(
                attr::decode_xor_address(mapped, &tid),
                Ok(five_tuple(t).client)
            );
        }
        self.last_replies.insert((t, tid.0), reply.to_vec());
    }

    /// A relayed client message goes out of the right allocation to a permitted peer, and
    /// `payload` is its data.
    fn check_relay(
        &self,
        t: usize,
        data: &[u8],
        allocation: AllocationId,
        peer: SocketAddr,
        payload: Range<usize>,
    ) {
        assert!(payload.start <= payload.end && payload.end <= data.len());
        let alloc = self
            .server
            .allocation(allocation)
            .expect("relay for an allocation that is gone");
        assert_eq!(
            alloc.tuple,
            five_tuple(t),
            "relay through another's allocation"
        );
        let relayed = alloc
            .relayed
            .expect("relay before the relay socket is open");
        assert_eq!(self.relays.get(&allocation), Some(&relayed));
        assert!(
            alloc.permits(canonical_ip(peer.ip()), self.now),
            "relay to {peer} without a permission"
        );
        assert!(
            self.policy.permits_peer(peer),
            "relay to {peer}, against the policy"
        );
        assert_ne!(peer, relayed, "relay to its own relayed address");
        let relayed_payload = &data[payload];
        if stun::channel::is_channel_data(data) {
            let frame = ChannelData::parse(data).expect("relayed ChannelData parses");
            assert_eq!(relayed_payload, frame.payload);
            let bound = alloc.channel(frame.number, self.now).map(|c| c.peer);
            assert_eq!(bound, Some(peer), "ChannelData to another peer than bound");
        } else {
            let msg = Message::parse(data).expect("a relayed Send indication parses");
            assert_eq!(
                (msg.method(), msg.class()),
                (Method::SEND, Class::Indication)
            );
            assert_eq!(msg.get(attr::DATA), Some(relayed_payload));
        }
    }

    /// A signed request (authenticated target), with a nonce got from the server first and a
    /// retry with the new nonce after a 438, as a client would.
    fn signed(&mut self, t: usize, message_type: u16, tid: TransactionId, flags: u8, body: &[u8]) {
        let Some(mut nonce) = self.nonce(t) else {
            return;
        };
        for _attempt in 0..2 {
            let Some((username, key)) = self.user(flags) else {
                return;
            };
            let realm = if flags & WRONG_REALM != 0 {
                "wrong.realm".to_owned()
            } else {
                self.config.realm.clone()
            };
            let signing_key = if flags & WRONG_KEY != 0 {
                [0x55; 16]
            } else {
                key
            };
            let credentials = |w: &mut MessageWriter<'_>| {
                w.attribute(attr::USERNAME, username.as_bytes())?;
                w.attribute(attr::REALM, realm.as_bytes())?;
                if flags & NO_NONCE == 0 {
                    w.attribute(attr::NONCE, &nonce)?;
                }
                Ok(())
            };
            let fingerprint = flags & FINGERPRINT != 0;
            let signed = flags & NO_INTEGRITY == 0;
            let mut message = build_message(
                message_type,
                tid,
                body,
                flags,
                fingerprint && !signed,
                &credentials,
            );
            if signed {
                message = sign(message, &signing_key, fingerprint);
            }
            let replies = self.client(t, &message);
            let fresh = replies.iter().find_map(|reply| stale_nonce(reply));
            match fresh {
                Some(fresh) => {
                    self.nonces.insert(five_tuple(t).client.ip(), fresh.clone());
                    nonce = fresh;
                }
                None => return,
            }
        }
    }

    /// The nonce to sign with from `TUPLES[t]`: the last one the server gave its IP, else one
    /// asked for with an unsigned Allocate (none when the server does not answer).
    fn nonce(&mut self, t: usize) -> Option<Vec<u8>> {
        let ip = five_tuple(t).client.ip();
        if let Some(nonce) = self.nonces.get(&ip) {
            return Some(nonce.clone());
        }
        self.counter += 1;
        let mut tid = [0xFE; 12];
        tid[8..].copy_from_slice(&self.counter.to_be_bytes());
        let request = build_message(0x0003, TransactionId(tid), &[], 0, true, &|_| Ok(()));
        let replies = self.client(t, &request);
        let nonce = replies.iter().find_map(|reply| {
            let msg = Message::parse(reply).ok()?;
            Some(msg.get(attr::NONCE)?.to_vec())
        })?;
        self.nonces.insert(ip, nonce.clone());
        Some(nonce)
    }

    /// The username and key that `flags` pick: a configured user, or a TURN REST API username
    /// (valid for an hour, or expired) under the first secret.
    fn user(&mut self, flags: u8) -> Option<(String, Key)> {
        let choice = usize::from((flags >> USER_SHIFT) & 3);
        if choice < 2 {
            return self.users.get(choice % self.users.len().max(1)).cloned();
        }
        let secret = self.config.auth.secrets.first()?;
        let unix_now = UNIX_AT_EPOCH + (self.now - epoch()).as_secs();
        let expiry = if choice == 2 {
            unix_now + 3600
        } else {
            unix_now - 10
        };
        let username = format!("{expiry}:carol");
        let password = rest_password(secret.as_bytes(), &username);
        let key = stun::long_term_key(&username, &self.config.realm, &password);
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
        Some((username, key))
    }

    /// A peer datagram to one of the relay sockets (or one just closed).
    fn peer(&mut self, allocation: u8, peer: u8, port: u16, data: &[u8]) {
        let ids: Vec<AllocationId> = self
            .relays
            .keys()
            .copied()
            .chain(self.closed.iter().copied())
            .collect();
        if ids.is_empty() {
            return;
        }
        let id = ids[usize::from(allocation) % ids.len()];
        let peer = self.peer_address(id, peer, port);
        let start = PEER_HEADROOM;
        let mut buf = vec![0u8; start + data.len() + PEER_TAILROOM];
        buf[start..start + data.len()].copy_from_slice(data);
        let action =
            self.server
                .handle_peer(self.now, id, peer, &mut buf, start..start + data.len());
        if let PeerAction::Forward { to, frame } = action {
            self.check_forward(id, peer, data, to, &buf, frame);
        }
        self.drain_events();
    }

    /// A peer address for `id`: one of its permissions or channels, loopback, or a public
    /// address, IPv4, IPv6 or IPv4-mapped.
    fn peer_address(&self, id: AllocationId, selector: u8, port: u16) -> SocketAddr {
        let alloc = self.server.allocation(id);
        let index = usize::from(selector / 6);
        match selector % 6 {
            0 => {
                let ips: Vec<IpAddr> = alloc
                    .map(|a| a.permissions.iter().map(|p| p.ip).collect())
                    .unwrap_or_default();
                match ips.get(index % ips.len().max(1)) {
                    Some(&ip) => SocketAddr::new(ip, port),
                    None => SocketAddr::from(([127, 0, 0, 1], port)),
                }
            }
            1 => {
                let peers: Vec<SocketAddr> = alloc
                    .map(|a| a.channels.iter().map(|c| c.peer).collect())
                    .unwrap_or_default();
                peers
                    .get(index % peers.len().max(1))
                    .copied()
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 2], port)))
            }
            2 => SocketAddr::from(([127, 0, 0, 1], port)),
            3 => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
            4 => SocketAddr::from(([8, 8, 8, 8], port)),
            _ => SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped(), port)),
        }
    }

    /// A frame for the client built from a peer datagram: the right client, a channel bound to
    /// that peer or a Data indication naming it, the payload unchanged.
    fn check_forward(
        &self,
        id: AllocationId,
        peer: SocketAddr,
        data: &[u8],
        to: FiveTuple,
        buf: &[u8],
        frame: Range<usize>,
    ) {
        assert!(frame.start <= frame.end && frame.end <= buf.len());
        let alloc = self
            .server
            .allocation(id)
            .expect("forward from an allocation that is gone");
        assert_eq!(to, alloc.tuple, "forward to another client");
        let peer = SocketAddr::new(canonical_ip(peer.ip()), peer.port());
        assert!(
            alloc.permits(peer.ip(), self.now),
            "forward without a permission"
        );
        let bytes = &buf[frame];
        let stream = to.transport != Transport::Udp;
        if stream {
            let framed = stun::frame_len(bytes).map(|f| f.map(Frame::stream_len));
            assert_eq!(
                framed,
                Ok(Some(bytes.len())),
                "forwarded frame does not frame"
            );
        }
        if stun::channel::is_channel_data(bytes) {
            let cd = ChannelData::parse(bytes).expect("forwarded ChannelData parses");
            assert_eq!(cd.payload, data);
            assert_eq!(alloc.channel_for_peer(peer, self.now), Some(cd.number));
        } else {
            let msg = Message::parse(bytes).expect("the Data indication parses");
            assert_eq!(
                (msg.method(), msg.class()),
                (Method::DATA, Class::Indication)
            );
            let named = msg.get(attr::XOR_PEER_ADDRESS).expect("XOR-PEER-ADDRESS");
            assert_eq!(
                attr::decode_xor_address(named, &msg.transaction_id()),
                Ok(peer)
            );
            assert_eq!(msg.get(attr::DATA), Some(data));
        }
    }

    fn timeout(&mut self) {
        if let Some(deadline) = self.server.poll_timeout() {
            self.now = self.now.max(deadline);
        }
        self.server.handle_timeout(self.now);
        self.drain_events();
        self.timer = self.server.poll_timeout();
        let now = self.now;
        for a in self.server.allocations() {
            assert!(a.expires > now, "allocation {} outlived its lifetime", a.id);
            assert!(
                a.permissions.iter().all(|p| p.expires > now),
                "expired permission kept"
            );
            assert!(
                a.channels
                    .iter()
                    .all(|c| c.expires + CHANNEL_COOLDOWN > now),
                "channel kept past its cool-down"
            );
        }
    }

    fn lease(&mut self, pending: u8, granted: bool) {
        if self.pending_leases.is_empty() {
            return;
        }
        let id = self
            .pending_leases
            .remove(usize::from(pending) % self.pending_leases.len());
        let alive = self.server.allocation(id).is_some();
        let tuple = self.server.allocation(id).map(|a| a.tuple);
        let mut out = std::mem::take(&mut self.out);
        let answer = self.server.handle_lease(id, granted, &mut out);
        if granted && alive {
            assert!(answer.is_none(), "a granted lease answered the client");
            self.leased.insert(id);
        }
        if let Some((to, n)) = answer {
            assert!(!granted && alive);
            assert_eq!(Some(to), tuple);
            assert!(n > 0 && n <= out.len());
            let t = tuple_of(to);
            let tid = self.allocate_tid.get(&t).copied();
            let reply = out[..n].to_vec();
            self.check_reply(
                t,
                tid.map(|tid| (Method::ALLOCATE, Class::Request, tid)),
                &reply,
            );
            let msg = Message::parse(&reply).expect("parsed just above");
            assert_eq!(msg.class(), Class::Error);
        }
        self.out = out;
        self.drain_events();
    }

    fn disconnect(&mut self, t: usize) {
        self.streams[t].clear();
        self.server.handle_connection_closed(&five_tuple(t));
        self.drain_events();
        assert!(self.server.allocation_of(&five_tuple(t)).is_none());
    }

    fn close(&mut self, selector: u8) {
        let mut ids: Vec<AllocationId> = self.server.allocations().map(|a| a.id).collect();
        ids.extend(self.closed.iter().copied());
        if ids.is_empty() {
            return;
        }
        let id = ids[usize::from(selector) % ids.len()];
        let alive = self.server.allocation(id).is_some();
        assert_eq!(self.server.close(id), alive);
        self.drain_events();
        assert!(self.server.allocation(id).is_none());
    }

    fn revoke(&mut self, selector: u8) {
        let mut names: Vec<String> = self.users.iter().map(|(n, _)| n.clone()).collect();
        names.push("carol".to_owned());
        names.extend(self.server.allocations().map(|a| a.username.to_string()));
        let name = names[usize::from(selector) % names.len()].clone();
        self.server.revoke(std::slice::from_ref(&name));
        self.drain_events();
        // Revocation matches whole usernames: revoking the long-term user `carol` leaves the
        // REST credential `<expiry>:carol` alone (a REST id is not a long-term user name).
        for a in self.server.allocations() {
            assert!(*a.username != name, "revoked allocation of {name} lives on");
        }
    }

    /// A reload, as `NodeHandle::reload` hands one to the workers.
    fn reload(&mut self, flavor: usize) {
        let config = self.configs[flavor].clone();
        self.listeners = bound_listeners(&config);
        self.credentials
            .set_statics(StaticCredentials::new(&config.auth, &config.realm));
        let epoch = epoch();
        self.policy = peer_policy(
            &config,
            &self.listeners,
            &own_sockets(&config),
            self.relay_v4,
            self.policy.host_addresses().clone(),
        );
        self.server.reconfigure(
            self.now,
            CoreConfig {
                offload: true,
                ..core_config(&config, self.relay_v4, epoch, UNIX_AT_EPOCH)
            },
            self.policy.clone(),
            Nonces::new(NONCE_KEY, epoch, config.auth.nonce_lifetime),
        );
        self.config = config;
    }

    /// Does what the I/O layer does with each event, checking that it makes sense.
    fn drain_events(&mut self) {
        while let Some(event) = self.server.poll_event() {
            match event {
                Event::OpenRelay {
                    allocation,
                    family,
                    port,
                } => self.open_relay(allocation, family, port),
                Event::AcquireLease {
                    allocation, limit, ..
                } => {
                    let alloc = self
                        .server
                        .allocation(allocation)
                        .expect("lease asked for an allocation that is gone");
                    assert!(alloc.relayed.is_none() && limit > 0);
                    self.pending_leases.push(allocation);
                }
                Event::ReleaseLease { allocation, .. } => {
                    assert!(
                        self.leased.remove(&allocation),
                        "lease released that was never granted"
                    );
                }
                Event::Offload {
                    allocation,
                    channel,
                    client,
                    peer,
                } => {
                    let alloc = self
                        .server
                        .allocation(allocation)
                        .expect("Offload for an allocation that is gone");
                    assert_eq!(alloc.tuple, client);
                    assert_eq!(
                        client.transport,
                        Transport::Udp,
                        "Offload of a stream client"
                    );
                    assert!(
                        alloc.bandwidth.is_none() && alloc.user_bandwidth.is_none(),
                        "Offload of a limited allocation"
                    );
                    assert!(
                        self.offloaded.insert((allocation, channel, peer)),
                        "Offload twice without Unoffload"
                    );
                }
                Event::Unoffload {
                    allocation,
                    channel,
                    peer,
                    ..
                } => {
                    assert!(
                        self.offloaded.remove(&(allocation, channel, peer)),
                        "Unoffload of what was not offloaded"
                    );
                }
                Event::Ended(ended) => {
                    assert!(self.server.allocation(ended.allocation).is_none());
                    assert!(
                        !self.offloaded.iter().any(|e| e.0 == ended.allocation),
                        "an ended allocation left entries in the kernel table"
                    );
                    assert_eq!(
                        self.relays.get(&ended.allocation),
                        Some(&ended.relayed),
                        "Ended for an allocation without a relay socket"
                    );
                }
                Event::CloseRelay { allocation } => {
                    assert!(
                        self.server.allocation(allocation).is_none(),
                        "CloseRelay for a live allocation"
                    );
                    if let Some(addr) = self.relays.remove(&allocation) {
                        self.sockets.used.remove(&addr);
                        self.closed.push(allocation);
                        if self.closed.len() > 4 {
                            self.closed.remove(0);
                        }
                    }
                }
            }
        }
        for (id, addr) in &self.relays {
            let alloc = self
                .server
                .allocation(*id)
                .expect("relay socket left open after its allocation ended");
            assert_eq!(alloc.relayed, Some(*addr));
        }
        for alloc in self.server.allocations() {
            if let Some(relayed) = alloc.relayed {
                assert_eq!(self.relays.get(&alloc.id), Some(&relayed));
            }
        }
    }

    /// Binds a fake relay socket as `relay::open` would, and gives the core the result.
    fn open_relay(&mut self, allocation: AllocationId, family: Family, port: PortRequest) {
        let alloc = self
            .server
            .allocation(allocation)
            .expect("OpenRelay for an allocation that is gone");
        assert!(alloc.relayed.is_none() && !self.relays.contains_key(&allocation));
        let tuple = alloc.tuple;
        let ip = match family {
            Family::V4 => self.relay_v4.map(IpAddr::V4),
            Family::V6 => self.config.relay.address_v6.map(IpAddr::V6),
        };
        let result = match (ip, self.outcome) {
            (_, 1) | (None, _) => Err(RelayOpenError::NoPort),
            (_, 2) => Err(RelayOpenError::BadToken),
            (Some(ip), _) => self.bind(ip, port),
        };
        let mut out = std::mem::take(&mut self.out);
        let answer = self
            .server
            .handle_relay_opened(self.now, allocation, result, &mut out);
        let (to, n) = answer.expect("an Allocate gets an answer once its relay socket is settled");
        assert_eq!(to, tuple);
        assert!(n > 0 && n <= out.len());
        let t = tuple_of(to);
        let tid = self.allocate_tid.get(&t).copied();
        let reply = out[..n].to_vec();
        self.out = out;
        self.check_reply(
            t,
            tid.map(|tid| (Method::ALLOCATE, Class::Request, tid)),
            &reply,
        );
        let msg = Message::parse(&reply).expect("checked above");
        match result {
            Ok(addr) => {
                assert_eq!(msg.class(), Class::Success);
                let advertised = msg
                    .get(attr::XOR_RELAYED_ADDRESS)
                    .map(|v| attr::decode_xor_address(v, &msg.transaction_id()));
                let expected = match (addr, self.config.relay.public_address) {
                    (SocketAddr::V4(_), Some(public)) => SocketAddr::from((public, addr.port())),
                    _ => addr,
                };
                assert_eq!(advertised, Some(Ok(expected)), "XOR-RELAYED-ADDRESS");
                self.relays.insert(allocation, addr);
            }
            Err(_) => {
                assert_eq!(msg.class(), Class::Error);
                assert!(self.server.allocation(allocation).is_none());
            }
        }
    }

    /// A free fake port for `request`, in the configured range.
    fn bind(&mut self, ip: IpAddr, request: PortRequest) -> Result<SocketAddr, RelayOpenError> {
        let PortRange { first, last } = self.config.relay.ports;
        let sockets = &mut self.sockets;
        let free =
            |used: &BTreeSet<SocketAddr>, port: u16| !used.contains(&SocketAddr::new(ip, port));
        let port = match request {
            PortRequest::Any => (first..=last).find(|&p| free(&sockets.used, p)),
            PortRequest::Even => (first..=last).find(|&p| p % 2 == 0 && free(&sockets.used, p)),
            PortRequest::EvenReserveNext(token) => {
                let pair = (first..last)
                    .find(|&p| p % 2 == 0 && free(&sockets.used, p) && free(&sockets.used, p + 1));
                if let Some(p) = pair {
                    let odd = SocketAddr::new(ip, p + 1);
                    sockets.used.insert(odd);
                    sockets.reserved.insert(token, odd);
                }
                pair
            }
            PortRequest::Reserved(token) => {
                return sockets
                    .reserved
                    .remove(&token)
                    .ok_or(RelayOpenError::BadToken);
            }
        };
        let addr = SocketAddr::new(ip, port.ok_or(RelayOpenError::NoPort)?);
        sockets.used.insert(addr);
        Ok(addr)
    }

    /// What must hold after every operation.
    fn check_state(&mut self) {
        let count = self.server.allocation_count();
        assert_eq!(self.server.allocations().count(), count);
        assert_eq!(
            self.node.ledger.total() as usize,
            count,
            "the ledger counts another number of allocations than the core holds"
        );
        let max_permissions = self
            .configs
            .iter()
            .map(|c| c.limits.permissions_per_allocation)
            .max()
            .unwrap_or(0) as usize;
        let max_channels = self
            .configs
            .iter()
            .map(|c| c.limits.channels_per_allocation)
            .max()
            .unwrap_or(0) as usize;
        let deadline = self.server.poll_timeout();
        if self.server.take_new_deadline() {
            self.timer = deadline;
        }
        if let Some(deadline) = deadline {
            assert!(
                self.timer.is_some_and(|timer| timer <= deadline),
                "the core must wake at {:?}, but the I/O layer was last told {:?}",
                deadline - epoch(),
                self.timer.map(|t| t - epoch())
            );
        }
        let mut relayed = 0;
        for a in self.server.allocations() {
            assert_eq!(
                self.server.allocation_of(&a.tuple).map(|b| b.id),
                Some(a.id)
            );
            assert!(
                a.live_permissions(self.now) <= max_permissions,
                "too many permissions"
            );
            assert!(a.channels.len() <= max_channels, "too many channels");
            let next = a.next_deadline(self.now);
            assert!(
                deadline.is_some_and(|d| d <= next),
                "allocation {} due at {:?}, but the core wakes at {:?}",
                a.id,
                next - epoch(),
                deadline.map(|d| d - epoch())
            );
            relayed += usize::from(a.relayed.is_some());
        }
        if count == 0 {
            assert_eq!(deadline, None, "a deadline without allocations");
        }
        let stats = self.server.stats();
        for (now, before) in counters(&stats).into_iter().zip(counters(&self.stats)) {
            assert!(now >= before, "a counter went down: {:?}", stats);
        }
        let ended = stats.allocations_expired + stats.allocations_deleted;
        assert_eq!(
            stats.allocations_created.checked_sub(ended),
            Some(relayed as u64),
            "created {} - expired {} - deleted {} is not the {relayed} live allocations",
            stats.allocations_created,
            stats.allocations_expired,
            stats.allocations_deleted
        );
        self.stats = stats;
    }

    /// At the end of an input: no lease held by an allocation that is gone.
    pub(crate) fn finish(&mut self) {
        for id in &self.leased {
            assert!(
                self.server.allocation(*id).is_some(),
                "lease of {id} never released"
            );
        }
    }
}

/// Other nodes for [`Op::Alternates`]: transport, address, load.
const ALTERNATES: [(Transport, &str, u64); 4] = [
    (Transport::Udp, "198.51.100.2:3478", 3),
    (Transport::Tcp, "198.51.100.3:3478", 1),
    (Transport::Tls, "198.51.100.4:5349", 0),
    (Transport::Udp, "[2001:db8::2]:3478", 0),
];

fn tuple_index(selector: u8) -> usize {
    usize::from(selector) % TUPLES.len()
}

fn five_tuple(t: usize) -> FiveTuple {
    let (transport, client, server) = TUPLES[t];
    FiveTuple {
        transport,
        client: parse_addr(client),
        server: parse_addr(server),
    }
}

fn tuple_of(tuple: FiveTuple) -> usize {
    (0..TUPLES.len())
        .find(|&t| five_tuple(t) == tuple)
        .expect("an answer to one of the harness's tuples")
}

fn parse_addr(text: &str) -> SocketAddr {
    text.parse().expect("a valid address in the harness")
}

/// The listeners as `Node::start` reports them bound (ports given, so the same).
fn bound_listeners(config: &Config) -> Vec<BoundListener> {
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
fn own_sockets(config: &Config) -> Vec<SocketAddr> {
    config.http.iter().map(|http| http.address).collect()
}

/// A STUN message of type `message_type` (top bits cleared): `credentials` writes its
/// attributes before `body` (after, with [`CREDENTIALS_LAST`]); `body` is read as
/// type-length-value attributes, leniently (a short value is what is left), and written with
/// zero padding; FINGERPRINT last if `fingerprint`.
fn build_message(
    message_type: u16,
    tid: TransactionId,
    body: &[u8],
    flags: u8,
    fingerprint: bool,
    credentials: &dyn Fn(&mut MessageWriter<'_>) -> Result<(), stun::StunError>,
) -> Vec<u8> {
    let mut buf = vec![0u8; stun::HEADER_LEN + body.len() + 1024];
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid)
        .expect("room for a header");
    let last = flags & CREDENTIALS_LAST != 0;
    if !last {
        let _ = credentials(&mut w);
    }
    let mut input = Input::new(body);
    while let (Some(typ), Some(len)) = (input.u16(), input.u16()) {
        let value = input.bytes(usize::from(len));
        input.bytes((4 - value.len() % 4) % 4);
        if w.attribute(typ, value).is_err() {
            break;
        }
    }
    if last {
        let _ = credentials(&mut w);
    }
    let n = w.finish();
    let mut message = buf[..n].to_vec();
    message[..2].copy_from_slice(&(message_type & 0x3FFF).to_be_bytes());
    if fingerprint {
        append_trailer(&mut message, attr::FINGERPRINT, 4, |covered| {
            (crc32fast::hash(covered) ^ 0x5354_554E)
                .to_be_bytes()
                .to_vec()
        });
    }
    message
}

/// `message` with MESSAGE-INTEGRITY under `key`, then FINGERPRINT if asked.
fn sign(mut message: Vec<u8>, key: &[u8], fingerprint: bool) -> Vec<u8> {
    append_trailer(&mut message, attr::MESSAGE_INTEGRITY, 20, |covered| {
        stun::hmac_sha1(key, &[covered]).to_vec()
    });
    if fingerprint {
        append_trailer(&mut message, attr::FINGERPRINT, 4, |covered| {
            (crc32fast::hash(covered) ^ 0x5354_554E)
                .to_be_bytes()
                .to_vec()
        });
    }
    message
}

/// Appends an attribute whose value is computed over the message with its length field already
/// counting the attribute, as MESSAGE-INTEGRITY and FINGERPRINT are. Left out when the message
/// would outgrow the length field.
fn append_trailer(message: &mut Vec<u8>, typ: u16, len: u16, value: impl FnOnce(&[u8]) -> Vec<u8>) {
    let body = u16::from_be_bytes([message[2], message[3]]);
    let Some(body) = body.checked_add(4 + len).filter(|b| *b <= 0xFFFC) else {
        return;
    };
    message[2..4].copy_from_slice(&body.to_be_bytes());
    let value = value(message);
    message.extend_from_slice(&typ.to_be_bytes());
    message.extend_from_slice(&len.to_be_bytes());
    message.extend_from_slice(&value);
}

/// The NONCE of a 438 reply.
fn stale_nonce(reply: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::parse(reply).ok()?;
    let (code, _) = attr::decode_error_code(msg.get(attr::ERROR_CODE)?).ok()?;
    (code == 438).then(|| msg.get(attr::NONCE).map(<[u8]>::to_vec))?
}

/// Every counter of `stats`, in a fixed order.
fn counters(stats: &Stats) -> Vec<u64> {
    let mut all = vec![
        stats.binding_requests,
        stats.allocations_created,
        stats.allocations_expired,
        stats.allocations_deleted,
        stats.error_responses,
        stats.auth_failures,
        stats.stale_nonces,
        stats.malformed,
        stats.to_peer_packets,
        stats.to_peer_bytes,
        stats.to_client_packets,
        stats.to_client_bytes,
        stats.dropped_no_allocation,
        stats.dropped_no_permission,
        stats.dropped_policy,
        stats.dropped_bandwidth,
        stats.dropped_too_large,
        stats.rate_limited,
        stats.rate_limited_node,
        stats.quota_rejected,
        stats.capacity_rejected,
    ];
    all.extend(stats.responses.iter().flatten());
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOCATE: u16 = 0x0003;
    const REFRESH: u16 = 0x0004;
    const CREATE_PERMISSION: u16 = 0x0008;
    const CHANNEL_BIND: u16 = 0x0009;

    fn attribute(typ: u16, value: &[u8]) -> Vec<u8> {
        let mut out = typ.to_be_bytes().to_vec();
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out
    }

    /// XOR-PEER-ADDRESS of 127.0.0.1:`port` for the transaction id `[tid; 12]`.
    fn peer(port: u16) -> Vec<u8> {
        let [p0, p1] = (port ^ 0x2112).to_be_bytes();
        attribute(
            attr::XOR_PEER_ADDRESS,
            &[0, 1, p0, p1, 127 ^ 0x21, 0x12, 0xA4, 1 ^ 0x42],
        )
    }

    fn stun(tuple: u8, message_type: u16, tid: u8, flags: u8, attributes: &[u8]) -> Op<'_> {
        Op::Stun {
            tuple,
            message_type,
            tid,
            flags,
            attributes,
        }
    }

    #[test]
    fn ops_round_trip_through_their_encoding() {
        let ops = [
            Op::Client {
                tuple: 3,
                data: b"\x40\x00\x00\x01x",
            },
            stun(1, 0x0113, 9, 0x81, b"attr"),
            Op::Peer {
                allocation: 2,
                peer: 5,
                port: 4000,
                data: b"payload",
            },
            Op::Wait { millis: 1500 },
            Op::WaitSeconds { seconds: 700 },
            Op::Timeout,
            Op::RelayOutcome { outcome: 1 },
            Op::Lease {
                pending: 1,
                granted: false,
            },
            Op::Disconnect { tuple: 2 },
            Op::Close { allocation: 7 },
            Op::Revoke { name: 1 },
            Op::Reload { flavor: 2 },
            Op::Drain { on: true },
            Op::Alternates { count: 3 },
        ];
        let mut bytes = Vec::new();
        for op in &ops {
            op.encode(&mut bytes);
        }
        let mut input = Input::new(&bytes);
        let decoded: Vec<Op<'_>> = std::iter::from_fn(|| Op::decode(&mut input)).collect();
        assert_eq!(decoded, ops);
    }

    #[test]
    fn every_flavor_validates() {
        assert_eq!(flavors().len(), 4);
        for flavor in 0..4 {
            let _ = Harness::new(Mode::Unauthenticated, flavors(), flavor);
        }
    }

    /// A signed session reaches every handler: allocation over UDP and TCP, permission, channel,
    /// relaying both ways, expiry, and the counters say so.
    #[test]
    fn an_authenticated_session_reaches_the_handlers() {
        let mut harness = Harness::new(Mode::Authenticated, flavors(), 0);
        let mut allocate = attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        allocate.extend(attribute(attr::LIFETIME, &700u32.to_be_bytes()));
        let mut bind = attribute(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]);
        bind.extend(peer(7000));
        let permission = peer(6000);
        let delete = attribute(attr::LIFETIME, &[0; 4]);
        let ops = [
            stun(0, 0x0001, 1, FINGERPRINT, &[]),
            stun(0, ALLOCATE, 2, FINGERPRINT, &allocate),
            stun(2, ALLOCATE, 3, 1 << USER_SHIFT, &allocate),
            stun(0, CREATE_PERMISSION, 4, 0, &permission),
            stun(0, CHANNEL_BIND, 5, 0, &bind),
            Op::Client {
                tuple: 0,
                data: b"\x40\x01\x00\x03abc",
            },
            Op::Peer {
                allocation: 0,
                peer: 2,
                port: 7000,
                data: b"from the peer",
            },
            Op::Peer {
                allocation: 0,
                peer: 2,
                port: 6000,
                data: b"as a Data indication",
            },
            stun(2, REFRESH, 6, 1 << USER_SHIFT, &delete),
            Op::WaitSeconds { seconds: 800 },
            Op::Timeout,
        ];
        for op in &ops {
            harness.apply(op);
        }
        harness.finish();
        let stats = harness.server.stats();
        assert_eq!(stats.allocations_created, 2, "{stats:?}");
        assert_eq!(stats.allocations_deleted, 1, "{stats:?}");
        assert_eq!(stats.allocations_expired, 1, "{stats:?}");
        assert_eq!(stats.to_peer_packets, 1, "{stats:?}");
        assert_eq!(stats.to_client_packets, 2, "{stats:?}");
        assert_eq!(harness.server.allocation_count(), 0);
    }

    /// With `[redis]` the Allocate waits for a lease: refused gives 486, granted an allocation.
    #[test]
    fn leases_are_answered() {
        let mut harness = Harness::new(Mode::Authenticated, flavors(), 1);
        let allocate = attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        for op in [
            stun(0, ALLOCATE, 2, 0, &allocate),
            Op::Lease {
                pending: 0,
                granted: false,
            },
            stun(1, ALLOCATE, 3, 0, &allocate),
            Op::Lease {
                pending: 0,
                granted: true,
            },
            Op::Revoke { name: 0 },
        ] {
            harness.apply(&op);
        }
        harness.finish();
        let stats = harness.server.stats();
        assert_eq!(stats.quota_rejected, 1, "{stats:?}");
        assert_eq!(stats.allocations_created, 1, "{stats:?}");
        assert_eq!(stats.allocations_deleted, 1, "{stats:?}");
        assert!(harness.leased.is_empty());
    }

    #[test]
    fn unauthenticated_messages_get_challenged() {
        let mut harness = Harness::new(Mode::Unauthenticated, flavors(), 2);
        for op in [
            stun(0, ALLOCATE, 1, FINGERPRINT, &[]),
            stun(3, 0x0001, 2, 0, &attribute(0x7777, b"unknown")),
            Op::Client {
                tuple: 2,
                data: b"\x00\x01\x00\x00\x21\x12\xa4\x42abcdefghijkl\xff",
            },
        ] {
            harness.apply(&op);
        }
        let stats = harness.server.stats();
        assert_eq!(stats.error_responses, 2, "{stats:?}");
        assert_eq!(stats.binding_requests, 2, "{stats:?}");
        assert_eq!(stats.malformed, 1, "{stats:?}");
    }
}
