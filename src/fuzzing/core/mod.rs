//! The core targets: a [`turn::Server`](crate::turn::Server) built from a real configuration the
//! way the I/O layer builds it, driven by [`Op`]s decoded from the input, with the invariants
//! checked after every step.
//!
//! This file holds the entry points and the `Harness` (the core and what the I/O layer would
//! hold around it): how it is built and how it applies one operation. The rest, each adding an
//! `impl Harness` block where it needs one:
//!
//! - `op.rs`: the input format, [`Op`];
//! - `setup.rs`: the client 5-tuples, the configurations (flavors), the cluster's other nodes;
//! - `client.rs`: a client's bytes in, and messages built and signed from the fuzzer's attributes;
//! - `peer.rs`: peer datagrams to the relay sockets, and what reaches the client;
//! - `control.rs`: time, cluster leases, lost connections, closes, revocations, reloads;
//! - `relays.rs`: the core's events handled as the I/O layer handles them (fake relay sockets);
//! - `seeds.rs`: scripted seeds for TCP allocations, which no recorded client makes;
//! - `tcp.rs`: TCP allocations (RFC 6062): Connects answered, ConnectionBinds, peers
//!   connecting, connections closed, the ConnectionBind deadline, and the connections seen;
//! - `checks.rs`: the invariants checked after every step.

mod checks;
mod client;
mod control;
mod op;
mod peer;
mod relays;
mod seeds;
mod setup;
mod tcp;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::auth::{Credentials, StaticCredentials};

/// An MD5 long-term key, as the fuzzed clients sign with.
type Key = [u8; 16];
use crate::config::{Config, Transport, UserCredential};
use crate::fuzzing::Input;
use crate::net::{BoundListener, core_config, peer_policy};
use crate::stun::{self, TransactionId};
use crate::turn::{
    AllocationId, AllocationLedger, Alternate, CoreConfig, HostAddresses, NodeLimits, Nonces,
    PeerPolicy, ReflectionBudget, ReservationToken, Server, SourceLimiter, Stats,
};

use client::build_message;
use setup::{
    ALTERNATES, NONCE_KEY, SECRET, SLOTS, UNIX_AT_EPOCH, bound_listeners, epoch, flavors,
    own_sockets, parse_addr, tuple_index,
};
use tcp::TcpState;

pub use op::{
    CREDENTIALS_LAST, FINGERPRINT, NO_INTEGRITY, NO_NONCE, Op, RAW_ID, USER_SHIFT, WRONG_KEY,
    WRONG_REALM,
};
pub use seeds::tcp_seeds;
pub use setup::{DATA_TUPLES, REALM, TUPLES};

/// Operations after which an input stops, whatever is left of it.
const MAX_OPS: usize = 1000;
/// The reply buffer the core gets: the 1500 bytes `handle_client` documents as enough.
const OUT_LEN: usize = 1500;

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
    /// What is left unframed of each stream slot's bytes (see `setup::SLOTS`).
    streams: Vec<Vec<u8>>,
    sockets: FakeSockets,
    /// Open relay sockets by allocation, as the I/O layer keeps them.
    relays: BTreeMap<AllocationId, SocketAddr>,
    /// The second relay socket of dual allocations (RFC 8656 §7.2), and the first one while
    /// the second is opened.
    dual_relays: BTreeMap<AllocationId, SocketAddr>,
    opening: BTreeMap<AllocationId, SocketAddr>,
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
    /// TCP allocations' peer connections (RFC 6062).
    tcp: TcpState,
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
                    UserCredential::Key { md5, .. } => *md5,
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
            streams: vec![Vec::new(); SLOTS],
            sockets: FakeSockets::default(),
            relays: BTreeMap::new(),
            dual_relays: BTreeMap::new(),
            opening: BTreeMap::new(),
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
            tcp: TcpState::default(),
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
            Op::Drain { on } => {
                self.server.set_draining(on);
                self.drain_events();
            }
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
                self.drain_events();
            }
            Op::ConnectResult { pending, outcome } => self.connect_result(pending, outcome),
            Op::ConnectionBind {
                tuple,
                connection,
                flags,
                id,
            } => self.connection_bind(tuple, connection, flags, id),
            Op::PeerConnect {
                allocation,
                peer,
                port,
            } => self.peer_connect(allocation, peer, port),
            Op::ConnectionClosed { connection } => self.connection_closed(connection),
            Op::BindDeadline { offset } => self.bind_deadline(offset),
        }
        self.check_state();
    }
}

#[cfg(test)]
mod tests;
