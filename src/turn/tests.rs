//! The core driven with simulated time: exact deadlines and every error code.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::auth::{CredentialKind, Principal, StaticCredentials};
use crate::client::Signer;
use crate::config::{Config, Transport, User, UserCredential};
use crate::stun::{
    self, Class, Message, MessageWriter, Method, TransactionId, attr, long_term_key,
};

const REALM: &str = "turnpike.test";
const CLIENT: &str = "198.51.100.20:5000";
const SERVER: &str = "192.0.2.1:3478";
const RELAY_IP: &str = "192.0.2.1";
const RELAY_IP_V6: &str = "2001:db8::1";
const PEER: &str = "203.0.113.5:6000";

struct Harness {
    server: Server,
    now: Instant,
    next_port: u16,
    out: Vec<u8>,
    fail_open: Option<RelayOpenError>,
    /// The same for IPv6 relay sockets only (a dual allocation's second one).
    fail_open_v6: Option<RelayOpenError>,
    /// How the "cluster" answers lease requests; `None` leaves them pending.
    lease: Option<bool>,
    /// Lease events seen, in order.
    lease_events: Vec<Event>,
    /// The kernel table as the Offload/Unoffload events built it.
    offloaded: std::collections::BTreeSet<(AllocationId, u16, SocketAddr)>,
    /// TCP connections asked for by Event::Connect and not answered yet (RFC 6062).
    connects: Vec<(ConnectionId, SocketAddr)>,
    /// TCP connections the core asked to close.
    closed_connections: Vec<ConnectionId>,
}

/// What the client saw in a response.
#[derive(Debug)]
struct Response {
    class: Class,
    code: Option<u16>,
    bytes: Vec<u8>,
}

impl Response {
    fn attr(&self, typ: u16) -> Option<Vec<u8>> {
        let msg = Message::parse(&self.bytes).expect("server wrote a valid message");
        msg.get(typ).map(|v| v.to_vec())
    }

    fn addr(&self, typ: u16) -> SocketAddr {
        let msg = Message::parse(&self.bytes).unwrap();
        attr::decode_xor_address(msg.get(typ).unwrap(), &msg.transaction_id()).unwrap()
    }

    fn lifetime(&self) -> u32 {
        attr::decode_u32(&self.attr(attr::LIFETIME).unwrap()).unwrap()
    }
}

fn udp(client: &str) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        client: client.parse().unwrap(),
        server: SERVER.parse().unwrap(),
    }
}

fn config() -> Config {
    let mut config = Config {
        realm: REALM.into(),
        ..Config::default()
    };
    config.auth.secrets = vec!["rest-secret".into()];
    config.auth.users = vec![
        User {
            name: "alice".into(),
            credential: UserCredential::Password("wonderland".into()),
        },
        User {
            name: "bob".into(),
            credential: UserCredential::Password("builder".into()),
        },
    ];
    config
}

impl Harness {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(tweak: impl FnOnce(&mut CoreConfig)) -> Self {
        let node = NodeLimits {
            ledger: AllocationLedger::new(),
            sources: SourceLimiter::new(ReflectionBudget::UNLIMITED),
        };
        Self::with_node(tweak, node)
    }

    fn with_node(tweak: impl FnOnce(&mut CoreConfig), node: NodeLimits) -> Self {
        let credentials = Arc::new(StaticCredentials::new(&config().auth, REALM));
        Self::with_credentials(tweak, node, credentials)
    }

    fn with_credentials(
        tweak: impl FnOnce(&mut CoreConfig),
        node: NodeLimits,
        credentials: Arc<dyn crate::auth::CredentialStore>,
    ) -> Self {
        let now = Instant::now();
        let mut core = CoreConfig {
            realm: REALM.into(),
            software: "turnpike-test".into(),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            public_v4: None,
            relay_v4: true,
            relay_v6: false,
            allocation_bandwidth: None,
            cluster_leases: false,
            quota: Quota {
                user_allocations: 3,
                total_allocations: 5,
                user_bandwidth: None,
            },
            permissions_per_allocation: 64,
            channels_per_allocation: 64,
            epoch: now,
            unix_at_epoch: 1_700_000_000,
            offload: false,
            tcp_relay: false,
        };
        tweak(&mut core);
        // Peers in the tests live in TEST-NET-3, which the built-in policy refuses; no packet is
        // ever sent here, the core only decides.
        let policy = PeerPolicy::new(vec!["203.0.113.0/24".parse().unwrap()], vec![])
            .with_own_sockets(vec![SERVER.parse().unwrap()], vec![]);
        let nonces = Nonces::new([1; 32], now, Duration::from_secs(600));
        Harness {
            server: Server::new(core, credentials, policy, nonces, Arc::new(node), [2; 32]),
            now,
            next_port: 50_000,
            out: vec![0; 2048],
            fail_open: None,
            fail_open_v6: None,
            lease: None,
            lease_events: Vec::new(),
            offloaded: std::collections::BTreeSet::new(),
            connects: Vec::new(),
            closed_connections: Vec::new(),
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
        }
    }

    /// Applies an Offload/Unoffload event to `offloaded` as the worker does to the kernel's
    /// tables, checking that it makes sense.
    fn apply_offload(&mut self, event: &Event) {
        match *event {
            Event::Offload {
                allocation,
                channel,
                peer,
                client,
            } => {
                assert_eq!(
                    self.server.allocation(allocation).map(|a| a.tuple),
                    Some(client),
                    "Offload for an allocation that is gone"
                );
                assert!(
                    self.offloaded.insert((allocation, channel, peer)),
                    "Offload twice"
                );
            }
            Event::Unoffload {
                allocation,
                channel,
                peer,
                ..
            } => assert!(
                self.offloaded.remove(&(allocation, channel, peer)),
                "Unoffload of what was not offloaded"
            ),
            Event::Ended(ref ended) => assert!(
                !self.offloaded.iter().any(|e| e.0 == ended.allocation),
                "Ended before its channels were unoffloaded"
            ),
            _ => {}
        }
    }

    /// Handles the events that are not answers to a request (after a timeout, a revocation,
    /// a close, a reload).
    fn drain_events(&mut self) {
        while let Some(event) = self.server.poll_event() {
            self.apply_offload(&event);
            if let Event::CloseConnection { connection, .. } = event {
                self.closed_connections.push(connection);
            }
        }
    }

    /// Sends `request`; answers OpenRelay events like the I/O layer would.
    fn send(&mut self, tuple: FiveTuple, request: &[u8]) -> Option<Response> {
        let action = self
            .server
            .handle_client(self.now, tuple, request, &mut self.out);
        let mut reply = match action {
            ClientAction::Reply(n) => Some(self.out[..n].to_vec()),
            ClientAction::None => None,
            ClientAction::Relay { .. } => panic!("unexpected relay"),
            // One core: the connection is its own to bind.
            ClientAction::BindConnection {
                connection,
                username,
                key,
                tid,
            } => {
                let n =
                    self.server
                        .bind_and_answer(connection, &username, &key, tid, &mut self.out);
                Some(self.out[..n].to_vec())
            }
        };
        while let Some(event) = self.server.poll_event() {
            self.apply_offload(&event);
            if let Event::AcquireLease { allocation, .. } = &event {
                let allocation = *allocation;
                self.lease_events.push(event.clone());
                if let Some(granted) = self.lease
                    && let Some((to, n)) =
                        self.server.handle_lease(allocation, granted, &mut self.out)
                {
                    assert_eq!(to, tuple);
                    reply = Some(self.out[..n].to_vec());
                }
                continue;
            }
            if let Event::ReleaseLease { .. } = &event {
                self.lease_events.push(event.clone());
                continue;
            }
            if let Event::Connect {
                connection, peer, ..
            } = event
            {
                self.connects.push((connection, peer));
                continue;
            }
            if let Event::CloseConnection { connection, .. } = event {
                self.closed_connections.push(connection);
                continue;
            }
            if let Event::OpenRelay {
                allocation, family, ..
            }
            | Event::OpenTcpRelay { allocation, family } = event
            {
                let (fail, ip) = match family {
                    Family::V4 => (self.fail_open, RELAY_IP),
                    Family::V6 => (self.fail_open.or(self.fail_open_v6), RELAY_IP_V6),
                };
                let result = match fail {
                    Some(e) => Err(e),
                    None => {
                        self.next_port += 2;
                        Ok(SocketAddr::new(ip.parse().unwrap(), self.next_port))
                    }
                };
                // A dual allocation's first socket is answered once its second is open.
                if let Some((to, n)) =
                    self.server
                        .handle_relay_opened(self.now, allocation, result, &mut self.out)
                {
                    assert_eq!(to, tuple);
                    reply = Some(self.out[..n].to_vec());
                }
            }
        }
        reply.map(|bytes| {
            let msg = Message::parse(&bytes).expect("server wrote a valid message");
            assert!(msg.has_fingerprint(), "FINGERPRINT on every response");
            let code = msg
                .get(attr::ERROR_CODE)
                .map(|v| attr::decode_error_code(v).unwrap().0);
            Response {
                class: msg.class(),
                code,
                bytes,
            }
        })
    }
}

/// Builds client requests with the long-term credential mechanism: the library client's
/// [`Signer`] signs them and says when a 401 or 438 asks for a retry.
struct Client {
    tuple: FiveTuple,
    signer: Signer,
    next_tid: u8,
}

impl Client {
    fn new(tuple: FiveTuple, username: &str, password: &str) -> Self {
        Client {
            tuple,
            signer: Signer::new(username, password),
            next_tid: 0,
        }
    }

    fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        TransactionId([self.next_tid; 12])
    }

    /// The long-term key, once a challenge has named the realm.
    fn key(&self) -> &[u8; 16] {
        self.signer.key()
    }

    /// The nonce requests are signed with, once a challenge has given one.
    fn nonce(&self) -> Option<Vec<u8>> {
        self.signer.nonce().map(<[u8]>::to_vec)
    }

    /// Takes realm and nonce from `challenge`, a 401 or 438, as a client retrying would.
    fn learn(&mut self, challenge: &Response) {
        let msg = Message::parse(&challenge.bytes).expect("server wrote a valid message");
        assert!(self.signer.retry(&msg, 0), "not a challenge: {challenge:?}");
    }

    /// Signs from now on with the nonce `other` was given (bound to `other`'s IP).
    fn use_nonce_of(&mut self, other: &Client) {
        let nonce = other.signer.nonce().expect("the other client has a nonce");
        self.signer.use_challenge(REALM, nonce);
    }

    /// A request, signed once a challenge has come; `attrs` adds the method's own attributes.
    fn request(
        &mut self,
        method: Method,
        tid: TransactionId,
        attrs: impl FnOnce(&mut MessageWriter<'_>),
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 8192];
        let mut w = MessageWriter::new(&mut buf, method, Class::Request, tid).unwrap();
        attrs(&mut w);
        // Like real clients, the first request goes without credentials to learn the nonce.
        self.signer.sign(&mut w).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    /// Sends a request, retrying it as the signer says after a 401 or 438, as clients do.
    fn call(
        &mut self,
        h: &mut Harness,
        method: Method,
        attrs: impl Fn(&mut MessageWriter<'_>),
    ) -> Response {
        let mut retries = 0;
        loop {
            let tid = self.tid();
            let request = self.request(method, tid, &attrs);
            let response = h.send(self.tuple, &request).expect("a response");
            let msg = Message::parse(&response.bytes).expect("server wrote a valid message");
            if !self.signer.retry(&msg, retries) {
                return response;
            }
            retries += 1;
        }
    }

    fn allocate(&mut self, h: &mut Harness) -> Response {
        self.call(h, Method::ALLOCATE, |w| w.requested_transport(17).unwrap())
    }

    /// An unsigned Allocate, sent to draw its 401, and the signed Allocate that follows it,
    /// returned unsent: for tests that send it themselves. Returns the 401 and the request.
    fn challenged_allocate(&mut self, h: &mut Harness) -> (Response, Vec<u8>) {
        let allocate = |w: &mut MessageWriter<'_>| w.requested_transport(17).unwrap();
        let tid = self.tid();
        let first = self.request(Method::ALLOCATE, tid, allocate);
        let challenge = h.send(self.tuple, &first).expect("a 401");
        self.learn(&challenge);
        let tid = self.tid();
        (challenge, self.request(Method::ALLOCATE, tid, allocate))
    }

    fn permit(&mut self, h: &mut Harness, peer: SocketAddr) -> Response {
        self.call(h, Method::CREATE_PERMISSION, |w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap()
        })
    }

    fn bind(&mut self, h: &mut Harness, number: u16, peer: SocketAddr) -> Response {
        self.call(h, Method::CHANNEL_BIND, |w| {
            w.channel_number(number).unwrap();
            w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap()
        })
    }

    fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 1500];
        let tid = self.tid();
        let mut w = MessageWriter::new(&mut buf, Method::SEND, Class::Indication, tid).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
        w.attribute(attr::DATA, data).unwrap();
        let n = w.finish();
        buf.truncate(n);
        buf
    }
}

fn alice(h: &mut Harness) -> (Client, SocketAddr) {
    let mut client = Client::new(udp(CLIENT), "alice", "wonderland");
    let response = client.allocate(h);
    assert_eq!(response.class, Class::Success, "{response:?}");
    (client, response.addr(attr::XOR_RELAYED_ADDRESS))
}

fn peer_data(h: &mut Harness, id: AllocationId, peer: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; PEER_HEADROOM + data.len() + PEER_TAILROOM];
    buf[PEER_HEADROOM..PEER_HEADROOM + data.len()].copy_from_slice(data);
    let payload = PEER_HEADROOM..PEER_HEADROOM + data.len();
    match h.server.handle_peer(h.now, id, peer, &mut buf, payload) {
        PeerAction::Forward { frame, .. } => Some(buf[frame].to_vec()),
        PeerAction::None => None,
    }
}

fn relay_of(h: &Harness, tuple: &FiveTuple) -> AllocationId {
    h.server.allocation_of(tuple).expect("an allocation").id
}

fn binding_request(extra: impl FnOnce(&mut MessageWriter<'_>)) -> Vec<u8> {
    let mut buf = vec![0u8; 200];
    let mut w = MessageWriter::new(
        &mut buf,
        Method::BINDING,
        Class::Request,
        TransactionId([9; 12]),
    )
    .unwrap();
    extra(&mut w);
    let n = w.finish();
    buf.truncate(n);
    buf
}

#[test]
fn binding_answers_with_the_reflexive_address_without_auth() {
    let mut h = Harness::new();
    let response = h.send(udp(CLIENT), &binding_request(|_| {})).unwrap();
    assert_eq!(response.class, Class::Success);
    assert_eq!(
        response.addr(attr::XOR_MAPPED_ADDRESS),
        CLIENT.parse().unwrap()
    );
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn unknown_comprehension_required_attribute_gets_420() {
    let mut h = Harness::new();
    let request = binding_request(|w| w.attribute(0x7777, b"abcd").unwrap());
    let response = h.send(udp(CLIENT), &request).unwrap();
    assert_eq!(response.code, Some(420));
    assert_eq!(
        response.attr(attr::UNKNOWN_ATTRIBUTES).unwrap(),
        vec![0x77, 0x77]
    );
    // Comprehension-optional attributes are ignored.
    let request = binding_request(|w| w.attribute(0xC001, b"abcd").unwrap());
    assert_eq!(h.send(udp(CLIENT), &request).unwrap().class, Class::Success);
}

/// A challenge (401 or 438) of RFC 8489 §9.2: the nonce cookie with the "Password algorithms"
/// and "Username anonymity" bits, and PASSWORD-ALGORITHMS offering SHA-256, then MD5.
fn assert_offers_both_algorithms(response: &Response) {
    let nonce = response.attr(attr::NONCE).expect("a NONCE");
    assert!(nonce.starts_with(b"obMatJos2AAAD"), "{nonce:?}");
    assert_eq!(
        response.attr(attr::PASSWORD_ALGORITHMS).unwrap(),
        [0, 2, 0, 0, 0, 1, 0, 0]
    );
}

#[test]
fn unauthenticated_allocate_gets_401_and_leaves_no_state() {
    let mut h = Harness::new();
    let mut buf = vec![0u8; 100];
    let mut w = MessageWriter::new(
        &mut buf,
        Method::ALLOCATE,
        Class::Request,
        TransactionId([3; 12]),
    )
    .unwrap();
    w.requested_transport(17).unwrap();
    let n = w.finish();
    let response = h.send(udp(CLIENT), &buf[..n]).unwrap();
    assert_eq!(response.code, Some(401));
    assert_eq!(response.attr(attr::REALM).unwrap(), REALM.as_bytes());
    assert_offers_both_algorithms(&response);
    assert!(response.attr(attr::MESSAGE_INTEGRITY).is_none());
    assert!(response.attr(attr::SOFTWARE).is_none());
    // Header, ERROR-CODE without phrase, REALM, a 29-character NONCE (cookie, feature bits,
    // 16 characters of time and MAC; 32 with padding), PASSWORD-ALGORITHMS (SHA-256, MD5),
    // FINGERPRINT: 104 bytes (76 before SHA-256 support).
    assert_eq!(
        response.bytes.len(),
        20 + 8 + (4 + 16) + (4 + 32) + (4 + 8) + 8
    );
    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.server.poll_timeout().is_none());
}

#[test]
fn allocate_grants_a_relay_with_the_default_lifetime() {
    let mut h = Harness::new();
    let mut client = Client::new(udp(CLIENT), "alice", "wonderland");
    let response = client.allocate(&mut h);
    assert_eq!(response.class, Class::Success);
    assert_eq!(
        response.addr(attr::XOR_RELAYED_ADDRESS),
        "192.0.2.1:50002".parse().unwrap()
    );
    assert_eq!(
        response.addr(attr::XOR_MAPPED_ADDRESS),
        CLIENT.parse().unwrap()
    );
    assert_eq!(response.lifetime(), 600);
    let msg = Message::parse(&response.bytes).unwrap();
    assert!(msg.check_integrity(client.key()).is_ok());
    assert_eq!(response.attr(attr::SOFTWARE).unwrap(), b"turnpike-test");
    assert_eq!(h.server.stats().allocations_created, 1);
}

#[test]
fn rest_api_credentials_authenticate_until_they_expire() {
    let mut h = Harness::new();
    let username = "1700000100:carol";
    let password = crate::auth::rest_password(b"rest-secret", username);
    let mut client = Client::new(udp(CLIENT), username, &password);
    assert_eq!(client.allocate(&mut h).class, Class::Success);

    let mut late = Client::new(udp("198.51.100.21:5000"), username, &password);
    h.advance(Duration::from_secs(101));
    assert_eq!(late.allocate(&mut h).code, Some(401));
}

#[test]
fn an_expired_rest_username_relays_on_but_authenticates_no_more_requests() {
    let mut h = Harness::with(|c| {
        c.default_lifetime = Duration::from_secs(60);
        c.max_lifetime = Duration::from_secs(120);
    });
    // Valid through unix second 1_700_000_030, 30 s after the harness's start.
    let username = "1700000030:carol";
    let password = crate::auth::rest_password(b"rest-secret", username);
    let mut c = Client::new(udp(CLIENT), username, &password);
    let mut deleter = Client::new(udp("198.51.100.21:5000"), username, &password);
    assert_eq!(c.allocate(&mut h).class, Class::Success);
    assert_eq!(deleter.allocate(&mut h).class, Class::Success);
    let peer: SocketAddr = PEER.parse().unwrap();
    assert_eq!(c.bind(&mut h, 0x4001, peer).class, Class::Success);
    let id = relay_of(&h, &c.tuple);

    h.advance(Duration::from_secs(30));
    let refresh = |c: &mut Client, h: &mut Harness| {
        c.call(h, Method::REFRESH, |w| w.u32(attr::LIFETIME, 60).unwrap())
    };
    let refreshed = refresh(&mut c, &mut h);
    assert_eq!(refreshed.class, Class::Success, "in its last valid second");
    assert_eq!(
        h.server.allocation(id).unwrap().expires,
        h.now + Duration::from_secs(60)
    );

    h.advance(Duration::from_secs(1));
    let failures = h.server.stats().auth_failures;
    let refused = [
        refresh(&mut c, &mut h),
        c.permit(&mut h, peer),
        c.bind(&mut h, 0x4002, peer),
    ];
    for response in &refused {
        assert_eq!(response.code, Some(401), "{response:?}");
        assert!(response.attr(attr::MESSAGE_INTEGRITY).is_none());
    }
    assert!(h.server.stats().auth_failures >= failures + 3);
    // Deleting is still allowed: it only gives resources back.
    let deleted = deleter.call(&mut h, Method::REFRESH, |w| {
        w.u32(attr::LIFETIME, 0).unwrap()
    });
    assert_eq!(deleted.class, Class::Success, "{deleted:?}");
    assert_eq!(h.server.allocation_count(), 1);

    // The allocation relays until the lifetime its last granted Refresh gave it...
    let frame = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0];
    let mut out = vec![0u8; 1500];
    h.advance(Duration::from_secs(58));
    assert!(matches!(
        h.server.handle_client(h.now, c.tuple, &frame, &mut out),
        ClientAction::Relay { .. }
    ));
    assert!(peer_data(&mut h, id, peer, b"xyz").is_some());
    // ...and then ends, expired like any other.
    while h.server.poll_event().is_some() {}
    h.advance(Duration::from_secs(1));
    assert!(h.server.allocation(id).is_none());
    assert!(matches!(
        h.server.poll_event(),
        Some(Event::Ended(ended)) if ended.reason == EndReason::Expired
    ));
    assert_eq!(
        h.server.handle_client(h.now, c.tuple, &frame, &mut out),
        ClientAction::None
    );
}

#[test]
fn rest_usernames_expiring_beyond_max_rest_ttl_get_401() {
    let mut h = Harness::new();
    // The harness's clock reads 1_700_000_000; [auth] max-rest-ttl is its default, one day.
    let horizon = 1_700_000_000 + 86_400 + crate::auth::REST_CLOCK_SKEW;
    let failures = h.server.stats().auth_failures;
    for (i, expiry) in [horizon + 1, 253_402_300_799, u64::MAX]
        .into_iter()
        .enumerate()
    {
        let username = format!("{expiry}:carol");
        let password = crate::auth::rest_password(b"rest-secret", &username);
        let tuple = udp(&format!("198.51.100.30:{}", 5000 + i));
        let mut c = Client::new(tuple, &username, &password);
        assert_eq!(c.allocate(&mut h).code, Some(401), "{username}");
    }
    assert!(h.server.stats().auth_failures >= failures + 3);
    // An expiry too large for u64 is no REST username: 401 as well.
    let username = "99999999999999999999999:carol";
    let password = crate::auth::rest_password(b"rest-secret", username);
    let mut c = Client::new(udp("198.51.100.31:5000"), username, &password);
    assert_eq!(c.allocate(&mut h).code, Some(401));
    let username = format!("{horizon}:carol");
    let password = crate::auth::rest_password(b"rest-secret", &username);
    let mut c = Client::new(udp("198.51.100.32:5000"), &username, &password);
    assert_eq!(c.allocate(&mut h).class, Class::Success, "at the horizon");
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn rest_ids_and_long_term_users_of_one_name_have_separate_quotas() {
    let mut h = Harness::with(|c| c.quota.user_allocations = 1);
    let username = "1700000100:alice";
    let password = crate::auth::rest_password(b"rest-secret", username);
    let (_alice, _) = alice(&mut h);
    let mut rest = Client::new(udp("198.51.100.40:5000"), username, &password);
    assert_eq!(rest.allocate(&mut h).class, Class::Success);
    let id = relay_of(&h, &rest.tuple);
    assert_eq!(
        h.server.allocation(id).unwrap().principal,
        Principal::new(CredentialKind::Rest, username)
    );
    let mut second = Client::new(udp("198.51.100.40:5001"), username, &password);
    assert_eq!(second.allocate(&mut h).code, Some(486));
    let mut again = Client::new(udp("198.51.100.40:5002"), "alice", "wonderland");
    assert_eq!(again.allocate(&mut h).code, Some(486));
    // Revoking the long-term name leaves the REST id's allocation alone, and the reverse.
    assert_eq!(h.server.revoke(&["alice".to_owned()]), 1);
    assert!(h.server.allocation(id).is_some());
    assert_eq!(h.server.revoke(&[username.to_owned()]), 1);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn public_address_is_advertised_instead_of_the_bound_one() {
    let mut h = Harness::with(|c| c.public_v4 = Some("198.51.100.9".parse().unwrap()));
    let (_, relayed) = alice(&mut h);
    assert_eq!(relayed, "198.51.100.9:50002".parse().unwrap());
}

#[test]
fn retransmitted_allocate_gets_the_same_answer_and_a_new_one_gets_437() {
    let mut h = Harness::new();
    let mut client = Client::new(udp(CLIENT), "alice", "wonderland");
    client.allocate(&mut h);
    let tid = TransactionId([client.next_tid; 12]);
    let request = client.request(Method::ALLOCATE, tid, |w| {
        w.requested_transport(17).unwrap()
    });
    let first = h.send(client.tuple, &request).unwrap();
    h.advance(Duration::from_secs(39));
    let again = h.send(client.tuple, &request).unwrap();
    assert_eq!(first.bytes, again.bytes);
    assert_eq!(first.class, Class::Success);
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(client.allocate(&mut h).code, Some(437));
}

#[test]
fn wrong_password_unknown_user_and_missing_attributes() {
    let mut h = Harness::new();
    let mut wrong = Client::new(udp(CLIENT), "alice", "not-it");
    assert_eq!(wrong.allocate(&mut h).code, Some(401));
    let mut unknown = Client::new(udp(CLIENT), "mallory", "x");
    assert_eq!(unknown.allocate(&mut h).code, Some(401));
    assert_eq!(h.server.stats().auth_failures, 2);

    // MESSAGE-INTEGRITY without USERNAME: 400.
    let mut buf = vec![0u8; 200];
    let mut w = MessageWriter::new(
        &mut buf,
        Method::ALLOCATE,
        Class::Request,
        TransactionId([4; 12]),
    )
    .unwrap();
    w.requested_transport(17).unwrap();
    w.message_integrity(&[0; 16]).unwrap();
    let n = w.finish();
    assert_eq!(h.send(udp(CLIENT), &buf[..n]).unwrap().code, Some(400));
}

#[test]
fn stale_nonce_gets_438_then_the_retry_succeeds() {
    let mut h = Harness::new();
    let (mut client, _) = alice(&mut h);
    let old_nonce = client.nonce();
    // Keep the allocation alive past the nonce's lifetime with the nonce still valid.
    h.advance(Duration::from_secs(500));
    assert_eq!(
        client.call(&mut h, Method::REFRESH, |_| {}).class,
        Class::Success
    );
    assert_eq!(client.nonce(), old_nonce);
    h.advance(Duration::from_secs(101));
    let tid = client.tid();
    let request = client.request(Method::REFRESH, tid, |_| {});
    let response = h.send(client.tuple, &request).unwrap();
    assert_eq!(response.code, Some(438));
    assert_ne!(response.attr(attr::NONCE), old_nonce);
    // The expired nonce's 438 keeps the nonce cookie and PASSWORD-ALGORITHMS (RFC 8489 §9.2.4).
    assert_offers_both_algorithms(&response);
    client.learn(&response);
    assert_eq!(
        client.call(&mut h, Method::REFRESH, |_| {}).class,
        Class::Success
    );
    assert_eq!(h.server.stats().stale_nonces, 1);
}

#[test]
fn allocate_errors_400_442_440_420_508() {
    let mut h = Harness::new();
    let mut c = Client::new(udp(CLIENT), "alice", "wonderland");
    assert_eq!(c.call(&mut h, Method::ALLOCATE, |_| {}).code, Some(400));
    let tcp = c.call(&mut h, Method::ALLOCATE, |w| {
        w.requested_transport(6).unwrap()
    });
    assert_eq!(tcp.code, Some(442));
    let v6 = c.call(&mut h, Method::ALLOCATE, |w| {
        w.requested_transport(17).unwrap();
        w.attribute(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .unwrap();
    });
    assert_eq!(v6.code, Some(440));
    let unknown = c.call(&mut h, Method::ALLOCATE, |w| {
        w.requested_transport(17).unwrap();
        w.attribute(0x0077, &[1, 2, 3, 4]).unwrap();
    });
    assert_eq!(unknown.code, Some(420));
    let both = c.call(&mut h, Method::ALLOCATE, |w| {
        w.requested_transport(17).unwrap();
        w.attribute(attr::EVEN_PORT, &[0x80]).unwrap();
        w.attribute(attr::RESERVATION_TOKEN, &[1; 8]).unwrap();
    });
    assert_eq!(both.code, Some(400));
    // The error answers to an authenticated request are signed.
    assert!(
        Message::parse(&both.bytes)
            .unwrap()
            .check_integrity(c.key())
            .is_ok()
    );

    h.fail_open = Some(RelayOpenError::NoPort);
    assert_eq!(c.allocate(&mut h).code, Some(508));
    assert_eq!(h.server.allocation_count(), 0);
    h.fail_open = None;
    assert_eq!(c.allocate(&mut h).class, Class::Success);
}

#[test]
fn even_port_with_reservation_returns_a_token() {
    let mut h = Harness::new();
    let mut c = Client::new(udp(CLIENT), "alice", "wonderland");
    let response = c.call(&mut h, Method::ALLOCATE, |w| {
        w.requested_transport(17).unwrap();
        w.attribute(attr::EVEN_PORT, &[0x80]).unwrap();
    });
    assert_eq!(response.class, Class::Success);
    assert_eq!(response.attr(attr::RESERVATION_TOKEN).unwrap().len(), 8);
}

#[test]
fn user_quota_gets_486() {
    let mut h = Harness::new();
    for i in 0..3 {
        let mut c = Client::new(
            udp(&format!("198.51.100.20:{}", 6000 + i)),
            "bob",
            "builder",
        );
        assert_eq!(c.allocate(&mut h).class, Class::Success, "allocation {i}");
    }
    let mut fourth = Client::new(udp("198.51.100.20:7000"), "bob", "builder");
    assert_eq!(fourth.allocate(&mut h).code, Some(486));
    // Another user is not affected.
    assert_eq!(alice(&mut h).0.tuple.client.port(), 5000);
}

#[test]
fn refresh_and_permission_without_allocation_get_437_and_other_user_441() {
    let mut h = Harness::new();
    let mut c = Client::new(udp(CLIENT), "alice", "wonderland");
    assert_eq!(c.call(&mut h, Method::REFRESH, |_| {}).code, Some(437));
    assert_eq!(c.permit(&mut h, PEER.parse().unwrap()).code, Some(437));
    assert_eq!(
        c.bind(&mut h, 0x4000, PEER.parse().unwrap()).code,
        Some(437)
    );
    c.allocate(&mut h);
    let mut bob = Client::new(udp(CLIENT), "bob", "builder");
    assert_eq!(bob.call(&mut h, Method::REFRESH, |_| {}).code, Some(441));
}

#[test]
fn lifetimes_are_clamped_and_refresh_zero_deletes() {
    let mut h = Harness::new();
    let (mut c, _) = alice(&mut h);
    let long = c.call(&mut h, Method::REFRESH, |w| {
        w.u32(attr::LIFETIME, 7200).unwrap()
    });
    assert_eq!(long.lifetime(), 3600);
    let short = c.call(&mut h, Method::REFRESH, |w| {
        w.u32(attr::LIFETIME, 60).unwrap()
    });
    assert_eq!(short.lifetime(), 600);
    let id = relay_of(&h, &c.tuple);
    let gone = c.call(&mut h, Method::REFRESH, |w| {
        w.u32(attr::LIFETIME, 0).unwrap()
    });
    assert_eq!(gone.class, Class::Success);
    assert_eq!(gone.lifetime(), 0);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.stats().allocations_deleted, 1);
    // The I/O layer was told to close the socket (drained by `send`); the id is dead now.
    assert!(h.server.allocation(id).is_none());
    assert_eq!(c.call(&mut h, Method::REFRESH, |_| {}).code, Some(437));
}

#[test]
fn allocation_expires_exactly_at_its_lifetime() {
    let mut h = Harness::new();
    let start = h.now;
    let (c, _) = alice(&mut h);
    let id = relay_of(&h, &c.tuple);
    assert_eq!(
        h.server.poll_timeout(),
        Some(start + Duration::from_secs(600))
    );
    h.advance(Duration::from_secs(599));
    assert!(h.server.allocation(id).is_some());
    h.advance(Duration::from_secs(1));
    assert!(h.server.allocation(id).is_none());
    // The log record first, then the socket to close.
    assert!(matches!(
        h.server.poll_event(),
        Some(Event::Ended(ended)) if ended.reason == EndReason::Expired && ended.allocation == id
    ));
    assert_eq!(
        h.server.poll_event(),
        Some(Event::CloseRelay { allocation: id })
    );
    assert_eq!(h.server.stats().allocations_expired, 1);
    assert!(h.server.poll_timeout().is_none());
}

#[test]
fn a_peer_datagram_too_large_for_a_frame_is_dropped_and_counted() {
    let mut h = Harness::new();
    let (mut c, _) = alice(&mut h);
    let peer: SocketAddr = PEER.parse().unwrap();
    assert_eq!(c.permit(&mut h, peer).class, Class::Success);
    let id = relay_of(&h, &c.tuple);
    let largest = peer_data(&mut h, id, peer, &vec![7u8; MAX_PEER_PAYLOAD]).expect("relayed");
    assert!(
        largest.len() <= 65_507,
        "{} bytes: fits one UDP datagram",
        largest.len()
    );
    for len in [MAX_PEER_PAYLOAD + 1, 65_507, 65_535] {
        assert!(
            peer_data(&mut h, id, peer, &vec![7u8; len]).is_none(),
            "{len}"
        );
    }
    let stats = h.server.stats();
    assert_eq!((stats.dropped_too_large, stats.to_client_packets), (3, 1));
}

#[test]
fn permission_lasts_exactly_five_minutes() {
    let mut h = Harness::new();
    let (mut c, _) = alice(&mut h);
    let peer: SocketAddr = PEER.parse().unwrap();
    let start = h.now;
    assert_eq!(c.permit(&mut h, peer).class, Class::Success);
    let id = relay_of(&h, &c.tuple);
    assert_eq!(h.server.poll_timeout(), Some(start + PERMISSION_LIFETIME));

    let frame = peer_data(&mut h, id, peer, b"hello").expect("forwarded");
    let msg = Message::parse(&frame).unwrap();
    assert_eq!(
        (msg.class(), msg.method()),
        (Class::Indication, Method::DATA)
    );
    assert_eq!(msg.get(attr::DATA).unwrap(), b"hello");
    assert_eq!(
        attr::decode_xor_address(
            msg.get(attr::XOR_PEER_ADDRESS).unwrap(),
            &msg.transaction_id()
        )
        .unwrap(),
        peer
    );
    // A different port on the same IP is covered too.
    assert!(peer_data(&mut h, id, "203.0.113.5:1".parse().unwrap(), b"x").is_some());
    assert!(peer_data(&mut h, id, "203.0.113.6:6000".parse().unwrap(), b"x").is_none());

    h.advance(Duration::from_secs(299));
    assert!(peer_data(&mut h, id, peer, b"x").is_some());
    h.advance(Duration::from_secs(1));
    assert!(peer_data(&mut h, id, peer, b"x").is_none());
    assert!(h.server.allocation(id).unwrap().permissions.is_empty());
}

#[test]
fn send_indication_relays_only_with_a_permission() {
    let mut h = Harness::new();
    let (mut c, _) = alice(&mut h);
    let peer: SocketAddr = PEER.parse().unwrap();
    let indication = c.send_indication(peer, b"payload!");
    let mut out = vec![0u8; 1500];
    assert_eq!(
        h.server
            .handle_client(h.now, c.tuple, &indication, &mut out),
        ClientAction::None
    );
    c.permit(&mut h, peer);
    match h
        .server
        .handle_client(h.now, c.tuple, &indication, &mut out)
    {
        ClientAction::Relay {
            peer: to, payload, ..
        } => {
            assert_eq!(to, peer);
            assert_eq!(&indication[payload], b"payload!");
        }
        other => panic!("expected a relay, got {other:?}"),
    }
    assert_eq!(h.server.stats().to_peer_bytes, 8);
}

#[test]
fn channels_route_both_ways_and_expire_after_ten_minutes() {
    let mut h = Harness::new();
    let (mut c, _) = alice(&mut h);
    c.call(&mut h, Method::REFRESH, |w| {
        w.u32(attr::LIFETIME, 3600).unwrap()
    });
    let peer: SocketAddr = PEER.parse().unwrap();
    assert_eq!(c.bind(&mut h, 0x4001, peer).class, Class::Success);
    let id = relay_of(&h, &c.tuple);

    let frame = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0];
    let mut out = vec![0u8; 1500];
    match h.server.handle_client(h.now, c.tuple, &frame, &mut out) {
        ClientAction::Relay {
            peer: to,
            payload,
            allocation,
        } => {
            assert_eq!((to, &frame[payload], allocation), (peer, &b"abc"[..], id));
        }
        other => panic!("expected a relay, got {other:?}"),
    }
    assert_eq!(
        peer_data(&mut h, id, peer, b"xyz").unwrap(),
        [0x40, 0x01, 0, 3, b'x', b'y', b'z']
    );

    // ChannelBind also installed the permission: keep it alive with CreatePermission.
    h.advance(Duration::from_secs(290));
    c.permit(&mut h, peer);
    h.advance(Duration::from_secs(290));
    c.permit(&mut h, peer);
    h.advance(Duration::from_secs(19));
    assert!(matches!(
        h.server.handle_client(h.now, c.tuple, &frame, &mut out),
        ClientAction::Relay { .. }
    ));
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.server.handle_client(h.now, c.tuple, &frame, &mut out),
        ClientAction::None
    );
    // Expired but cooling down: the number cannot go to another peer yet...
    let other: SocketAddr = "203.0.113.9:1".parse().unwrap();
    assert_eq!(c.bind(&mut h, 0x4001, other).code, Some(400));
    // ...until five minutes after expiry.
    h.advance(CHANNEL_COOLDOWN);
    assert_eq!(c.bind(&mut h, 0x4001, other).class, Class::Success);
}

#[test]
fn a_policy_change_ends_the_channels_and_permissions_it_now_refuses() {
    let mut h = Harness::new();
    let (mut c, _) = alice(&mut h);
    // A wildcard listener on port 3478; the host's addresses are not known yet.
    let wildcard = || {
        PeerPolicy::new(vec!["203.0.113.0/24".parse().unwrap()], vec![])
            .with_own_sockets(vec!["0.0.0.0:3478".parse().unwrap()], vec![])
    };
    let (config, nonces) = (h.server.config.clone(), h.server.nonces.clone());
    assert_eq!(h.server.reconfigure(h.now, config, wildcard(), nonces), 0);
    let soon_own: SocketAddr = "203.0.113.9:3478".parse().unwrap();
    let other_port: SocketAddr = "203.0.113.9:3479".parse().unwrap();
    let soon_denied: SocketAddr = "203.0.113.10:3478".parse().unwrap();
    for (number, peer) in [
        (0x4000, soon_own),
        (0x4001, other_port),
        (0x4002, soon_denied),
    ] {
        assert_eq!(c.bind(&mut h, number, peer).class, Class::Success, "{peer}");
    }
    let tuple = c.tuple;
    let relays = |h: &mut Harness, number: u16| {
        let frame = [(number >> 8) as u8, number as u8, 0, 1, b'x', 0, 0, 0];
        let mut out = vec![0u8; 1500];
        matches!(
            h.server.handle_client(h.now, tuple, &frame, &mut out),
            ClientAction::Relay { .. }
        )
    };
    assert!(relays(&mut h, 0x4000));

    // 203.0.113.9 turns out to be this host's: 203.0.113.9:3478 is the listener. Only that
    // channel ends; the IP's permission stays (permissions are per IP, RFC 8656 §9).
    let host = HostAddresses::new(["203.0.113.9".parse().unwrap()]);
    assert_eq!(h.server.set_host_addresses(h.now, host), 1);
    assert!(!relays(&mut h, 0x4000));
    assert!(relays(&mut h, 0x4001));
    assert!(relays(&mut h, 0x4002));
    let id = relay_of(&h, &c.tuple);
    assert!(peer_data(&mut h, id, soon_own, b"in").is_some());
    assert_eq!(c.bind(&mut h, 0x4000, soon_own).code, Some(403));
    let dropped = h.server.stats().dropped_policy;
    let send = c.send_indication(soon_own, b"loop");
    let mut out = vec![0u8; 1500];
    assert_eq!(
        h.server.handle_client(h.now, c.tuple, &send, &mut out),
        ClientAction::None
    );
    assert_eq!(h.server.stats().dropped_policy, dropped + 1);

    // A reload denies 203.0.113.10: its permission and channel end at once.
    let denied = PeerPolicy::new(
        vec!["203.0.113.0/24".parse().unwrap()],
        vec!["203.0.113.10/32".parse().unwrap()],
    );
    let (config, nonces) = (h.server.config.clone(), h.server.nonces.clone());
    assert_eq!(h.server.reconfigure(h.now, config, denied, nonces), 2);
    assert!(!relays(&mut h, 0x4002));
    assert!(peer_data(&mut h, id, soon_denied, b"in").is_none());
    assert!(relays(&mut h, 0x4001));
    // Ended bindings cool down like expired ones, then go.
    h.advance(CHANNEL_COOLDOWN + Duration::from_secs(1));
    let alloc = h.server.allocation(id).expect("the allocation lives on");
    assert_eq!(alloc.channels.len(), 1, "{:?}", alloc.channels);
}

#[test]
fn channel_bind_rules() {
    let mut h = Harness::new();
    let (mut c, _) = alice(&mut h);
    let peer: SocketAddr = PEER.parse().unwrap();
    let other: SocketAddr = "203.0.113.9:1".parse().unwrap();
    assert_eq!(c.bind(&mut h, 0x3fff, peer).code, Some(400));
    assert_eq!(c.bind(&mut h, 0x8000, peer).code, Some(400));
    // RFC 5766 clients use numbers up to 0x7FFF.
    assert_eq!(
        c.bind(&mut h, 0x7fff, "203.0.113.77:7".parse().unwrap())
            .class,
        Class::Success
    );
    assert_eq!(c.bind(&mut h, 0x4000, peer).class, Class::Success);
    // Refreshing the same binding is fine; moving either side is not.
    assert_eq!(c.bind(&mut h, 0x4000, peer).class, Class::Success);
    assert_eq!(c.bind(&mut h, 0x4000, other).code, Some(400));
    assert_eq!(c.bind(&mut h, 0x4002, peer).code, Some(400));
    assert_eq!(c.call(&mut h, Method::CHANNEL_BIND, |_| {}).code, Some(400));
}

#[test]
fn channel_data_to_stream_clients_is_padded() {
    let mut h = Harness::new();
    let tuple = FiveTuple {
        transport: Transport::Tcp,
        ..udp(CLIENT)
    };
    let mut c = Client::new(tuple, "alice", "wonderland");
    c.allocate(&mut h);
    let peer: SocketAddr = PEER.parse().unwrap();
    c.bind(&mut h, 0x4000, peer);
    let id = relay_of(&h, &tuple);
    let frame = peer_data(&mut h, id, peer, b"hello").unwrap();
    assert_eq!(
        frame,
        [0x40, 0, 0, 5, b'h', b'e', b'l', b'l', b'o', 0, 0, 0]
    );
}

#[test]
fn peer_policy_refuses_private_own_and_mapped_addresses() {
    let mut h = Harness::new();
    let (mut c, relayed) = alice(&mut h);
    for peer in [
        "127.0.0.1:1",
        "0.0.0.0:1",
        "10.1.2.3:1",
        "169.254.169.254:80",
        "[::ffff:127.0.0.1]:1",
        "[::127.0.0.1]:1",
        "[64:ff9b::7f00:1]:1",
        "[2002:7f00:1::]:1",
    ] {
        let response = c.permit(&mut h, peer.parse().unwrap());
        assert_eq!(response.code, Some(403), "{peer}");
    }
    // The server's own listener, and the allocation's own relayed address.
    assert_eq!(c.permit(&mut h, SERVER.parse().unwrap()).code, Some(403));
    assert_eq!(c.bind(&mut h, 0x4000, relayed).code, Some(403));
    // A public IPv6 peer on an IPv4 allocation: family mismatch.
    assert_eq!(
        c.permit(&mut h, "[2606:4700::1111]:1".parse().unwrap())
            .code,
        Some(443)
    );
    assert_eq!(
        c.permit(&mut h, PEER.parse().unwrap()).class,
        Class::Success
    );
}

#[test]
fn malformed_input_is_dropped_and_counted() {
    let mut h = Harness::new();
    let mut out = vec![0u8; 1500];
    let request = binding_request(|_| {});
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        request[..19].to_vec(),
        vec![0x40, 0x00, 0xff, 0xff, 1],
        vec![0x3f, 0xff, 0x00, 0x00],
        vec![0x80; 40],
        vec![0x80, 0x00, 0x00, 0x00],
    ];
    for input in &inputs {
        let tuple = udp(CLIENT);
        assert_eq!(
            h.server.handle_client(h.now, tuple, input, &mut out),
            ClientAction::None
        );
    }
    assert!(h.server.stats().malformed >= 5);
}

/// A Binding request of exactly `len` bytes (a SOFTWARE attribute fills it), for the size cap.
fn binding_of_len(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut w = MessageWriter::new(
        &mut buf,
        Method::BINDING,
        Class::Request,
        TransactionId([4; 12]),
    )
    .unwrap();
    w.attribute(attr::SOFTWARE, &vec![b's'; len - 24]).unwrap();
    assert_eq!(w.finish(), len);
    buf
}

#[test]
fn requests_over_4096_bytes_are_dropped_before_any_work() {
    let mut h = Harness::new();
    let (mut c, _) = alice(&mut h);
    c.permit(&mut h, PEER.parse().unwrap());
    let mut out = vec![0u8; 1500];
    let tuple = udp(CLIENT);

    let largest = binding_of_len(MAX_REQUEST_LEN);
    let response = h.send(tuple, &largest).unwrap();
    assert_eq!(response.class, Class::Success);

    let before = h.server.stats();
    let oversized = binding_of_len(MAX_REQUEST_LEN + 4);
    assert_eq!(
        h.server.handle_client(h.now, tuple, &oversized, &mut out),
        ClientAction::None
    );
    // Signed and otherwise valid, of every request method, known or not.
    for method in [
        Method::ALLOCATE,
        Method::REFRESH,
        Method::CREATE_PERMISSION,
        Method::CHANNEL_BIND,
        Method(0x00a),
    ] {
        let tid = c.tid();
        let request = c.request(method, tid, |w| {
            w.attribute(attr::SOFTWARE, &[b's'; 4100]).unwrap()
        });
        assert!(request.len() > MAX_REQUEST_LEN);
        assert_eq!(
            h.server.handle_client(h.now, tuple, &request, &mut out),
            ClientAction::None,
            "{method:?}"
        );
    }
    let after = h.server.stats();
    assert_eq!(after.malformed, before.malformed + 6);
    // Dropped before anything else looked at them: nothing else moved.
    assert_eq!(
        Stats {
            malformed: before.malformed,
            ..after
        },
        before
    );

    // A response of that size is not for a server: ignored, as any response.
    let mut big = vec![0u8; 5000];
    let mut w = MessageWriter::new(&mut big, Method::BINDING, Class::Success, c.tid()).unwrap();
    w.attribute(attr::SOFTWARE, &[b's'; 4900]).unwrap();
    let n = w.finish();
    assert_eq!(
        h.server.handle_client(h.now, tuple, &big[..n], &mut out),
        ClientAction::None
    );
    assert_eq!(h.server.stats(), after);

    // Send indications keep the full 64 KB.
    let payload = vec![0x5a; 65_000];
    let mut buf = vec![0u8; 65_535];
    let mut w = MessageWriter::new(&mut buf, Method::SEND, Class::Indication, c.tid()).unwrap();
    w.xor_address(attr::XOR_PEER_ADDRESS, PEER.parse().unwrap())
        .unwrap();
    w.attribute(attr::DATA, &payload).unwrap();
    let n = w.finish();
    match h.server.handle_client(h.now, tuple, &buf[..n], &mut out) {
        ClientAction::Relay { payload: range, .. } => assert_eq!(buf[range], payload[..]),
        other => panic!("a 64 KB Send indication was not relayed: {other:?}"),
    }
}

#[test]
fn more_than_128_attributes_is_malformed() {
    let mut h = Harness::new();
    let with = |count: usize| {
        let mut buf = vec![0u8; 1024];
        let mut w = MessageWriter::new(
            &mut buf,
            Method::BINDING,
            Class::Request,
            TransactionId([5; 12]),
        )
        .unwrap();
        for _ in 0..count.min(stun::MAX_ATTRIBUTES) {
            w.flag(0x8F01).unwrap();
        }
        let mut n = w.finish();
        // The writer stops at the cap; the 129th goes in by hand.
        if count > stun::MAX_ATTRIBUTES {
            buf[n..n + 4].copy_from_slice(&[0x8F, 0x01, 0, 0]);
            n += 4;
            buf[2..4].copy_from_slice(&((n - 20) as u16).to_be_bytes());
        }
        buf.truncate(n);
        buf
    };
    let at_cap = h.send(udp(CLIENT), &with(128)).unwrap();
    assert_eq!(at_cap.class, Class::Success);
    let before = h.server.stats();
    assert!(h.send(udp(CLIENT), &with(129)).is_none());
    let after = h.server.stats();
    assert_eq!(after.malformed, before.malformed + 1);
    assert_eq!(after.binding_requests, before.binding_requests);
}

/// Nothing in the core walks a request's attributes more than a fixed number of times: with
/// 128 attributes (the cap) arranged to hurt (optional filler, then one unknown required type
/// over and over, as the outside probe sent), every request method reads fewer than 16 headers
/// per attribute. Re-walking the earlier attributes for each one, as `unknown_required` once
/// did, costs about 64 per attribute at this size.
#[test]
fn attribute_walks_per_request_are_linear() {
    let mut h = Harness::with(|c| c.permissions_per_allocation = 200);
    let (mut c, _) = alice(&mut h);
    let mut bob = Client::new(udp("198.51.100.30:1"), "bob", "builder");
    // Learns the nonce (bound to bob's IP) from a 401, then gets 437: no allocation yet.
    assert_eq!(bob.call(&mut h, Method::REFRESH, |_| {}).code, Some(437));
    let mut stranger = Client::new(udp("198.51.100.30:2"), "nobody", "x");
    stranger.use_nonce_of(&bob);
    let mut out = vec![0u8; 1500];
    let filler = |w: &mut MessageWriter<'_>, count: usize, unknown: bool| {
        for i in 0..count {
            let typ = if unknown && i >= count / 2 {
                0x7ABC
            } else {
                0x8F01
            };
            w.flag(typ).unwrap();
        }
    };
    let peers: Vec<SocketAddr> = (1..=100)
        .map(|i| SocketAddr::new(IpAddr::from([203, 0, 113, i]), 7000))
        .collect();
    // (what, client, method, attributes besides USERNAME, REALM, NONCE, MI and FINGERPRINT)
    type Build<'a> = Box<dyn Fn(&mut MessageWriter<'_>) + 'a>;
    let cases: Vec<(&str, bool, Method, Build<'_>)> = vec![
        (
            "binding, 420",
            false,
            Method::BINDING,
            Box::new(|w| filler(w, 123, true)),
        ),
        (
            "unknown method",
            false,
            Method(0x00a),
            Box::new(|w| filler(w, 122, true)),
        ),
        (
            "allocate, 420",
            true,
            Method::ALLOCATE,
            Box::new(|w| {
                w.requested_transport(17).unwrap();
                filler(w, 122, true)
            }),
        ),
        (
            "allocate, granted",
            true,
            Method::ALLOCATE,
            Box::new(|w| {
                w.requested_transport(17).unwrap();
                filler(w, 122, false);
            }),
        ),
        (
            "refresh",
            false,
            Method::REFRESH,
            Box::new(|w| {
                filler(w, 122, false);
                w.u32(attr::LIFETIME, 600).unwrap();
            }),
        ),
        (
            "create permission, 100 peers",
            false,
            Method::CREATE_PERMISSION,
            Box::new(|w| {
                filler(w, 23, false);
                for &peer in &peers {
                    w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
                }
            }),
        ),
        (
            "channel bind",
            false,
            Method::CHANNEL_BIND,
            Box::new(|w| {
                filler(w, 121, false);
                w.channel_number(0x4001).unwrap();
                w.xor_address(attr::XOR_PEER_ADDRESS, PEER.parse().unwrap())
                    .unwrap();
            }),
        ),
    ];
    for (what, as_bob, method, build) in &cases {
        let client = if *as_bob { &mut bob } else { &mut c };
        let tid = client.tid();
        let request = client.request(*method, tid, |w| build(w));
        let count = Message::parse(&request).unwrap().attributes().count();
        assert!(count >= 120, "{what}: only {count} attributes");
        crate::stun::visits::take();
        let action = h
            .server
            .handle_client(h.now, client.tuple, &request, &mut out);
        let reads = crate::stun::visits::take();
        while h.server.poll_event().is_some() {}
        eprintln!("{what}: {count} attributes, {reads} attribute headers read, {action:?}");
        assert!(
            reads < 16 * count as u64,
            "{what}: {reads} reads for {count} attributes"
        );
    }
    // Signed by an unknown user: refused with 401 after the same few walks.
    let tid = stranger.tid();
    let request = stranger.request(Method::ALLOCATE, tid, |w| filler(w, 123, true));
    crate::stun::visits::take();
    let action = h
        .server
        .handle_client(h.now, stranger.tuple, &request, &mut out);
    let reads = crate::stun::visits::take();
    eprintln!("unknown user: 128 attributes, {reads} attribute headers read, {action:?}");
    assert!(reads < 16 * 128, "unknown user: {reads} reads");
}

#[test]
fn unknown_method_gets_400() {
    let mut h = Harness::new();
    let mut c = Client::new(udp(CLIENT), "alice", "wonderland");
    let request = c.request(Method(0x00a), TransactionId([7; 12]), |_| {});
    assert_eq!(h.send(udp(CLIENT), &request).unwrap().code, Some(400));
}

#[test]
fn client_ip_is_bound_into_the_nonce() {
    let mut h = Harness::new();
    let mut c = Client::new(udp(CLIENT), "alice", "wonderland");
    c.allocate(&mut h);
    let mut other = Client::new(udp("198.51.100.99:5000"), "alice", "wonderland");
    other.use_nonce_of(&c);
    let tid = other.tid();
    let request = other.request(Method::ALLOCATE, tid, |w| {
        w.requested_transport(17).unwrap()
    });
    assert_eq!(h.send(other.tuple, &request).unwrap().code, Some(438));
    let _: IpAddr = other.tuple.client.ip();
}

#[test]
fn total_quota_holds_across_users() {
    let mut h = Harness::new();
    // The ledger allows 3 per user and 5 in total.
    for i in 0..3 {
        let mut c = Client::new(
            udp(&format!("198.51.100.20:{}", 6000 + i)),
            "bob",
            "builder",
        );
        assert_eq!(c.allocate(&mut h).class, Class::Success);
    }
    for i in 0..2 {
        let mut c = Client::new(
            udp(&format!("198.51.100.21:{}", 6000 + i)),
            "alice",
            "wonderland",
        );
        assert_eq!(c.allocate(&mut h).class, Class::Success);
    }
    let mut sixth = Client::new(udp("198.51.100.22:6000"), "alice", "wonderland");
    assert_eq!(sixth.allocate(&mut h).code, Some(486));
    assert_eq!(h.server.stats().quota_rejected, 1);
}

#[test]
fn permission_and_channel_limits_get_508() {
    let mut h = Harness::with(|c| {
        c.permissions_per_allocation = 2;
        c.channels_per_allocation = 1;
    });
    let (mut c, _) = alice(&mut h);
    let peer = |last: u8| -> SocketAddr { format!("203.0.113.{last}:7").parse().unwrap() };
    assert_eq!(c.permit(&mut h, peer(1)).class, Class::Success);
    assert_eq!(c.permit(&mut h, peer(2)).class, Class::Success);
    assert_eq!(c.permit(&mut h, peer(3)).code, Some(508));
    // Refreshing a live permission takes no room; two new peers in one request are both counted.
    assert_eq!(c.permit(&mut h, peer(1)).class, Class::Success);
    let both = c.call(&mut h, Method::CREATE_PERMISSION, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, peer(1)).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, peer(4)).unwrap();
    });
    assert_eq!(both.code, Some(508));
    // A channel to a permitted peer fits; a second channel does not; a new peer's permission
    // would not fit either.
    assert_eq!(c.bind(&mut h, 0x4000, peer(1)).class, Class::Success);
    assert_eq!(c.bind(&mut h, 0x4000, peer(1)).class, Class::Success);
    assert_eq!(c.bind(&mut h, 0x4001, peer(2)).code, Some(508));
    assert_eq!(h.server.stats().capacity_rejected, 3);
    // Once the permissions expire, there is room again.
    h.advance(PERMISSION_LIFETIME);
    assert_eq!(c.permit(&mut h, peer(3)).class, Class::Success);
}

#[test]
fn allocation_bandwidth_drops_what_exceeds_one_second_of_burst() {
    // 8 kbit/s: 1000 bytes per second, both directions together.
    let mut h = Harness::with(|c| c.allocation_bandwidth = Some(8_000));
    let (mut c, _) = alice(&mut h);
    let peer: SocketAddr = PEER.parse().unwrap();
    c.bind(&mut h, 0x4000, peer);
    let id = relay_of(&h, &c.tuple);
    let mut frame = vec![0x40, 0x00, 0x01, 0xf4];
    frame.extend_from_slice(&[7; 500]);
    let mut out = vec![0u8; 1500];
    let mut relay = |h: &mut Harness| {
        matches!(
            h.server.handle_client(h.now, c.tuple, &frame, &mut out),
            ClientAction::Relay { .. }
        )
    };
    assert!(relay(&mut h));
    // The peer's 500 bytes use up the rest of the second's budget.
    assert!(peer_data(&mut h, id, peer, &[1; 500]).is_some());
    assert!(!relay(&mut h));
    assert!(peer_data(&mut h, id, peer, &[1; 1]).is_none());
    assert_eq!(h.server.stats().dropped_bandwidth, 2);
    h.advance(Duration::from_millis(500));
    assert!(relay(&mut h));
    assert!(!relay(&mut h));
}

#[test]
fn user_bandwidth_is_shared_by_the_users_allocations() {
    let mut h = Harness::with(|c| {
        c.quota = Quota {
            user_bandwidth: Some(8_000),
            ..Quota::default()
        }
    });
    let peer: SocketAddr = PEER.parse().unwrap();
    let mut ids = Vec::new();
    for port in [6000, 6001] {
        let mut c = Client::new(udp(&format!("198.51.100.20:{port}")), "alice", "wonderland");
        assert_eq!(c.allocate(&mut h).class, Class::Success);
        c.permit(&mut h, peer);
        ids.push(relay_of(&h, &c.tuple));
    }
    assert!(peer_data(&mut h, ids[0], peer, &[1; 600]).is_some());
    assert!(peer_data(&mut h, ids[1], peer, &[1; 600]).is_none());
    assert!(peer_data(&mut h, ids[1], peer, &[1; 400]).is_some());
}

fn with_budget(source_rate: u32, source_burst: u32, node_rate: u32) -> Harness {
    // Cells from a fixed key: which sources share one is the same on every run.
    let node = NodeLimits {
        ledger: AllocationLedger::new(),
        sources: SourceLimiter::with_fixed_key(ReflectionBudget {
            source_rate,
            source_burst,
            node_rate,
        }),
    };
    Harness::with_node(|_| {}, node)
}

fn over(transport: Transport, client: &str) -> FiveTuple {
    FiveTuple {
        transport,
        ..udp(client)
    }
}

#[test]
fn unauthenticated_answers_over_udp_are_limited_per_source() {
    let mut h = with_budget(20, 40, 0);
    let binding = binding_request(|_| {});
    let answered = (0..100)
        .filter(|_| h.send(udp(CLIENT), &binding).is_some())
        .count();
    assert_eq!(answered, 40);
    // 401s come out of the same budget, whatever the port; another source is answered.
    let mut c = Client::new(udp("198.51.100.20:5001"), "alice", "wonderland");
    let tid = c.tid();
    let first = c.request(Method::ALLOCATE, tid, |w| {
        w.requested_transport(17).unwrap()
    });
    assert!(h.send(c.tuple, &first).is_none());
    assert!(h.send(udp("198.51.100.99:1"), &binding).is_some());
    assert_eq!(h.server.stats().rate_limited, 61);
    assert_eq!(h.server.stats().rate_limited_node, 0);
    // One more answer every 50 ms.
    h.advance(Duration::from_millis(50));
    assert!(h.send(udp(CLIENT), &binding).is_some());
    assert!(h.send(udp(CLIENT), &binding).is_none());
    // TCP and TLS clients proved their address with the handshake: always answered.
    for transport in [Transport::Tcp, Transport::Tls] {
        let answered = (0..100)
            .filter(|_| h.send(over(transport, CLIENT), &binding).is_some())
            .count();
        assert_eq!(answered, 100, "{transport}");
        let mut c = Client::new(over(transport, CLIENT), "alice", "wonderland");
        assert_eq!(c.allocate(&mut h).class, Class::Success, "{transport}");
    }
    assert_eq!(h.server.stats().rate_limited, 62);
}

#[test]
fn an_authenticated_request_pays_back_the_challenge_of_its_source() {
    // A burst of 2 and a rate of 1/s: without the payback, the third answer would need a
    // second of waiting.
    let mut h = with_budget(1, 2, 0);
    let binding = binding_request(|_| {});
    // 5,000 clients behind one address allocate one after the other, no time passing: each
    // 401 is paid back by the authenticated Allocate that follows it.
    for port in 0..5000u16 {
        let mut c = Client::new(
            udp(&format!("198.51.100.20:{}", 10_000 + port)),
            "alice",
            "wonderland",
        );
        let (challenge, second) = c.challenged_allocate(&mut h);
        assert_eq!(challenge.code, Some(401), "client {port}");
        // The user's quota answers 486 after 3: authenticated all the same.
        let answer = h.send(c.tuple, &second).expect("an answer");
        assert!(
            matches!(answer.code, None | Some(486)),
            "client {port}: {answer:?}"
        );
    }
    assert_eq!(h.server.stats().rate_limited, 0);
    // The bucket is full again, not fuller: two answers.
    let answered = (0..10)
        .filter(|_| h.send(udp(CLIENT), &binding).is_some())
        .count();
    assert_eq!(answered, 2);
    // A wrong password is no proof: its 401 is not paid back.
    h.advance(Duration::from_secs(2));
    let mut wrong = Client::new(udp(CLIENT), "alice", "not-the-password");
    let (_, second) = wrong.challenged_allocate(&mut h);
    assert_eq!(h.send(wrong.tuple, &second).unwrap().code, Some(401));
    assert!(h.send(udp(CLIENT), &binding).is_none());
    assert_eq!(h.server.stats().rate_limited, 9);
}

#[test]
fn unproven_sources_share_the_node_budget() {
    // Node-wide 3 answers at once (one second of 3/s, more than a source's burst of 2).
    let mut h = with_budget(20, 2, 3);
    let binding = binding_request(|_| {});
    // A client allocates: one 401 from the node's budget, then its source is proven.
    let mut proven = Client::new(udp("192.0.2.200:4000"), "alice", "wonderland");
    assert_eq!(proven.allocate(&mut h).class, Class::Success);
    // Two strangers use the rest; the next ones are refused, whatever their own budget.
    for client in ["198.51.100.1:1", "198.51.100.2:1"] {
        assert!(h.send(udp(client), &binding).is_some(), "{client}");
    }
    for client in ["198.51.100.3:1", "198.51.100.4:1", "198.51.100.3:2"] {
        assert!(h.send(udp(client), &binding).is_none(), "{client}");
    }
    assert_eq!(h.server.stats().rate_limited_node, 3);
    // The proven source is held to its own bucket only: its burst of 2, then nothing.
    let other_port = udp("192.0.2.200:4001");
    assert!(h.send(other_port, &binding).is_some());
    assert!(h.send(other_port, &binding).is_some());
    assert!(h.send(other_port, &binding).is_none());
    assert_eq!(h.server.stats().rate_limited, 1);
    // Its clients go on allocating with fresh 401s, paid back as they authenticate.
    h.advance(Duration::from_millis(50));
    for port in 4002..4012 {
        let mut c = Client::new(udp(&format!("192.0.2.200:{port}")), "bob", "builder");
        let answer = c.allocate(&mut h);
        assert!(matches!(answer.code, None | Some(486)), "{answer:?}");
    }
    // The node refills at 3/s: a stranger is answered a third of a second later.
    h.advance(Duration::from_millis(334));
    assert!(h.send(udp("198.51.100.3:1"), &binding).is_some());
    assert!(h.send(udp("198.51.100.4:1"), &binding).is_none());
    assert_eq!(h.server.stats().rate_limited_node, 4);
}

#[test]
fn a_proof_expires_after_ten_minutes() {
    // One answer a second to unproven sources, none in advance.
    let mut h = with_budget(20, 1, 1);
    let binding = binding_request(|_| {});
    let mut c = Client::new(udp(CLIENT), "alice", "wonderland");
    assert_eq!(c.allocate(&mut h).class, Class::Success);
    // The node's answer of this second went to the 401; proven, the source is answered.
    assert!(h.send(udp("198.51.100.1:1"), &binding).is_none());
    assert!(h.send(udp(CLIENT), &binding).is_some());
    h.advance(Duration::from_secs(599));
    let refresh = c.call(&mut h, Method::REFRESH, |w| {
        w.u32(attr::LIFETIME, 600).unwrap()
    });
    assert_eq!(refresh.class, Class::Success);
    // The Refresh at 599 s proved it again, until 1,199 s.
    h.advance(Duration::from_secs(599));
    assert!(h.send(udp(CLIENT), &binding).is_some(), "proven at 1,198 s");
    h.advance(Duration::from_secs(1));
    assert!(h.send(udp("198.51.100.1:1"), &binding).is_some());
    assert!(
        h.send(udp(CLIENT), &binding).is_none(),
        "unproven at 1,199 s, and the node's answer of this second is gone"
    );
    assert_eq!(h.server.stats().rate_limited_node, 2);
    assert_eq!(h.server.stats().rate_limited, 0);
}

/// Credentials backed by a Redis snapshot (no Redis involved: the snapshot is installed here).
fn redis_backed(fill: impl FnOnce(&mut crate::auth::redis::Snapshot), connected: bool) -> Harness {
    use crate::auth::redis::{RedisStore, Snapshot};
    let store = Arc::new(RedisStore::new(Duration::from_secs(60)));
    if connected {
        let mut snapshot = Snapshot::default();
        fill(&mut snapshot);
        store.install(snapshot, 1_700_000_000);
        store.set_connected(true);
    }
    let credentials = Arc::new(crate::auth::Credentials::new(
        StaticCredentials::new(&config().auth, REALM),
        Some(store),
    ));
    let node = NodeLimits {
        ledger: AllocationLedger::new(),
        sources: SourceLimiter::new(ReflectionBudget::UNLIMITED),
    };
    Harness::with_credentials(|_| {}, node, credentials)
}

#[test]
fn an_unavailable_store_gets_500_and_config_users_still_work() {
    let mut h = redis_backed(|_| {}, false);
    let mut carol = Client::new(udp(CLIENT), "carol", "pw");
    let response = carol.allocate(&mut h);
    assert_eq!(response.code, Some(500));
    assert!(response.attr(attr::MESSAGE_INTEGRITY).is_none());
    let mut alice = Client::new(udp("198.51.100.20:6000"), "alice", "wonderland");
    assert_eq!(alice.allocate(&mut h).class, Class::Success);
}

#[test]
fn overrides_from_the_store_set_the_users_quota() {
    let mut h = redis_backed(
        |s| {
            s.users.insert(
                "carol".into(),
                crate::auth::Key::Md5(long_term_key("carol", REALM, "pw")),
            );
            s.overrides.insert(
                "carol".into(),
                crate::auth::redis::UserOverride {
                    allocations: Some(1),
                    ..Default::default()
                },
            );
        },
        true,
    );
    let mut first = Client::new(udp(CLIENT), "carol", "pw");
    assert_eq!(first.allocate(&mut h).class, Class::Success);
    let mut second = Client::new(udp("198.51.100.20:6000"), "carol", "pw");
    assert_eq!(second.allocate(&mut h).code, Some(486));
}

#[test]
fn revocation_closes_allocations_and_refuses_refreshes() {
    let username = "1700000100:dave";
    let password = crate::auth::rest_password(b"rest-secret", username);
    let mut h = redis_backed(|_| {}, true);
    let mut dave = Client::new(udp(CLIENT), username, &password);
    assert_eq!(dave.allocate(&mut h).class, Class::Success);
    let mut alice = Client::new(udp("198.51.100.20:6000"), "alice", "wonderland");
    assert_eq!(alice.allocate(&mut h).class, Class::Success);
    let id = relay_of(&h, &dave.tuple);
    assert_eq!(
        h.server.revoke(&[username.to_owned(), "nobody".to_owned()]),
        1
    );
    assert!(h.server.allocation(id).is_none());
    assert!(matches!(
        h.server.poll_event(),
        Some(Event::Ended(ended)) if ended.reason == EndReason::Revoked
    ));
    assert_eq!(
        h.server.poll_event(),
        Some(Event::CloseRelay { allocation: id })
    );
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(dave.call(&mut h, Method::REFRESH, |_| {}).code, Some(437));
}

#[test]
fn a_refresh_with_revoked_credentials_is_refused_even_before_the_close() {
    let username = "1700000100:dave";
    let password = crate::auth::rest_password(b"rest-secret", username);
    let store = Arc::new(crate::auth::redis::RedisStore::new(Duration::from_secs(60)));
    store.install(Default::default(), 1_700_000_000);
    store.set_connected(true);
    let credentials = Arc::new(crate::auth::Credentials::new(
        StaticCredentials::new(&config().auth, REALM),
        Some(store.clone()),
    ));
    let node = NodeLimits {
        ledger: AllocationLedger::new(),
        sources: SourceLimiter::new(ReflectionBudget::UNLIMITED),
    };
    let mut h = Harness::with_credentials(|_| {}, node, credentials);
    let mut dave = Client::new(udp(CLIENT), username, &password);
    assert_eq!(dave.allocate(&mut h).class, Class::Success);
    let mut revoked = crate::auth::redis::Snapshot::default();
    revoked.revoked.insert(username.into(), 1_700_000_100);
    store.install(revoked, 1_700_000_000);
    assert_eq!(dave.call(&mut h, Method::REFRESH, |_| {}).code, Some(401));
}

#[test]
fn cluster_leases_gate_the_allocate_and_are_given_back() {
    let mut h = Harness::with(|c| c.cluster_leases = true);
    let mut c = Client::new(udp(CLIENT), "alice", "wonderland");
    let (_, request) = c.challenged_allocate(&mut h);
    // The lease is pending: no answer yet, and a retransmission waits too.
    assert!(h.send(c.tuple, &request).is_none());
    assert!(h.send(c.tuple, &request).is_none());
    assert_eq!(h.lease_events.len(), 1);
    assert!(matches!(
        &h.lease_events[0],
        Event::AcquireLease { user, limit: 3, .. }
            if *user == Principal::new(CredentialKind::LongTerm, "alice")
    ));
    // Granted: the relay opens and the Allocate is answered.
    h.lease = Some(true);
    let id = relay_of(&h, &c.tuple);
    let (to, n) = {
        assert!(h.server.handle_lease(id, true, &mut h.out).is_none());
        let Some(Event::OpenRelay { allocation, .. }) = h.server.poll_event() else {
            panic!("expected OpenRelay after the grant");
        };
        let relayed = SocketAddr::new(RELAY_IP.parse().unwrap(), 50_000);
        h.server
            .handle_relay_opened(h.now, allocation, Ok(relayed), &mut h.out)
            .unwrap()
    };
    assert_eq!(to, c.tuple);
    assert_eq!(Message::parse(&h.out[..n]).unwrap().class(), Class::Success);
    // Deleting it gives the lease back.
    c.call(&mut h, Method::REFRESH, |w| {
        w.u32(attr::LIFETIME, 0).unwrap()
    });
    assert!(
        matches!(h.lease_events.last(), Some(Event::ReleaseLease { user, .. })
            if *user == Principal::new(CredentialKind::LongTerm, "alice"))
    );
}

#[test]
fn a_refused_lease_gets_486_and_leaves_nothing() {
    let mut h = Harness::with(|c| c.cluster_leases = true);
    h.lease = Some(false);
    let mut c = Client::new(udp(CLIENT), "alice", "wonderland");
    assert_eq!(c.allocate(&mut h).code, Some(486));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.stats().quota_rejected, 1);
    // Nothing to give back: the lease was never held.
    assert!(
        !h.lease_events
            .iter()
            .any(|e| matches!(e, Event::ReleaseLease { .. }))
    );
}

#[test]
fn a_full_node_sends_clients_to_an_alternate() {
    let mut h = Harness::with(|c| {
        c.quota = Quota {
            user_allocations: 0,
            total_allocations: 1,
            user_bandwidth: None,
        }
    });
    h.server.set_alternates(Arc::from(vec![
        Alternate {
            transport: Transport::Udp,
            address: "192.0.2.20:3478".parse().unwrap(),
            load: 7,
        },
        Alternate {
            transport: Transport::Udp,
            address: "192.0.2.21:3478".parse().unwrap(),
            load: 3,
        },
        Alternate {
            transport: Transport::Tcp,
            address: "192.0.2.22:3478".parse().unwrap(),
            load: 0,
        },
    ]));
    alice(&mut h);
    let mut bob = Client::new(udp("198.51.100.30:1"), "bob", "builder");
    let response = bob.allocate(&mut h);
    assert_eq!(response.code, Some(300));
    let msg = Message::parse(&response.bytes).unwrap();
    let alternate = attr::decode_address(msg.get(attr::ALTERNATE_SERVER).unwrap()).unwrap();
    assert_eq!(alternate, "192.0.2.21:3478".parse().unwrap());
    assert!(msg.check_integrity(bob.key()).is_ok());
    // Out of ports is "full" too.
    let mut h = Harness::new();
    h.server.set_alternates(Arc::from(vec![Alternate {
        transport: Transport::Udp,
        address: "192.0.2.20:3478".parse().unwrap(),
        load: 0,
    }]));
    h.fail_open = Some(RelayOpenError::NoPort);
    assert_eq!(alice_client(&mut h).allocate(&mut h).code, Some(300));
    // With no other node known, the codes stay 486 and 508.
    h.server.set_alternates(Arc::from([]));
    assert_eq!(alice_client(&mut h).allocate(&mut h).code, Some(508));
}

fn alice_client(_: &mut Harness) -> Client {
    Client::new(udp(CLIENT), "alice", "wonderland")
}

#[test]
fn responses_are_counted_by_method_and_code() {
    let mut h = Harness::new();
    let (mut c, _) = alice(&mut h);
    c.permit(&mut h, PEER.parse().unwrap());
    c.permit(&mut h, "10.0.0.1:1".parse().unwrap());
    let stats = h.server.stats();
    let count = |method: &str, code: u16| {
        let row = RESPONSE_METHODS.iter().position(|m| *m == method).unwrap();
        let column = RESPONSE_CODES.iter().position(|c| *c == code).unwrap();
        stats.responses[row][column]
    };
    assert_eq!(count("allocate", 401), 1);
    assert_eq!(count("allocate", 200), 1);
    assert_eq!(count("create_permission", 200), 1);
    assert_eq!(count("create_permission", 403), 1);
    assert_eq!(count("binding", 200), 0);
}

#[test]
fn a_draining_node_refuses_new_allocations_but_keeps_the_old() {
    let mut h = Harness::new();
    let (mut c, _) = alice(&mut h);
    h.server.set_draining(true);
    let mut bob = Client::new(udp("198.51.100.30:1"), "bob", "builder");
    let refused = bob.allocate(&mut h);
    assert_eq!(refused.code, Some(403));
    let msg = Message::parse(&refused.bytes).unwrap();
    let (_, reason) = attr::decode_error_code(msg.get(attr::ERROR_CODE).unwrap()).unwrap();
    assert_eq!(reason, "Server is draining");
    assert_eq!(
        c.call(&mut h, Method::REFRESH, |_| {}).class,
        Class::Success
    );
    // With another live node known, the client is sent there instead.
    h.server.set_alternates(Arc::from(vec![Alternate {
        transport: Transport::Udp,
        address: "192.0.2.20:3478".parse().unwrap(),
        load: 0,
    }]));
    let mut carol = Client::new(udp("198.51.100.31:1"), "bob", "builder");
    assert_eq!(carol.allocate(&mut h).code, Some(300));
}

#[test]
fn relayed_packets_file_no_deadline_but_control_requests_do() {
    let mut h = Harness::new();
    let (mut c, _) = alice(&mut h);
    c.bind(&mut h, 0x4000, PEER.parse().unwrap());
    assert!(
        h.server.take_new_deadline(),
        "allocate and bind filed deadlines"
    );
    assert!(!h.server.take_new_deadline(), "asked once, cleared");
    let frame = [0x40, 0x00, 0x00, 0x01, 0x7f, 0, 0, 0];
    let mut out = vec![0u8; 1500];
    assert!(matches!(
        h.server.handle_client(h.now, c.tuple, &frame, &mut out),
        ClientAction::Relay { .. }
    ));
    assert!(!h.server.take_new_deadline());
}

/// The kernel table (built from Offload/Unoffload events) always equals what the core relays.
mod offload_properties {
    use proptest::prelude::*;

    use super::*;

    const PEERS: [&str; 3] = ["203.0.113.5:6000", "203.0.113.6:6001", "203.0.113.7:6002"];

    fn clients() -> [(FiveTuple, &'static str, &'static str); 4] {
        [
            (udp("198.51.100.20:5000"), "alice", "wonderland"),
            (udp("198.51.100.21:5001"), "alice", "wonderland"),
            (udp("198.51.100.22:5002"), "bob", "builder"),
            (
                FiveTuple {
                    transport: Transport::Tcp,
                    client: "198.51.100.23:5003".parse().unwrap(),
                    server: SERVER.parse().unwrap(),
                },
                "bob",
                "builder",
            ),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate(usize),
        Bind(usize, u16, usize),
        Permit(usize, usize),
        Refresh(usize, bool),
        Advance(u64),
        Revoke(bool),
        Close(usize),
        /// A reload: which peer the policy denies (if any), and whether allocations get a
        /// bandwidth limit.
        Reload(Option<usize>, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (0..4usize).prop_map(Op::Allocate),
            4 => (0..4usize, 0x4000..0x4003u16, 0..3usize).prop_map(|(c, n, p)| Op::Bind(c, n, p)),
            2 => (0..4usize, 0..3usize).prop_map(|(c, p)| Op::Permit(c, p)),
            1 => (0..4usize, any::<bool>()).prop_map(|(c, z)| Op::Refresh(c, z)),
            4 => prop_oneof![1..60u64, 250..320u64, 590..610u64].prop_map(Op::Advance),
            1 => any::<bool>().prop_map(Op::Revoke),
            1 => (0..4usize).prop_map(Op::Close),
            1 => (proptest::option::of(0..3usize), any::<bool>()).prop_map(|(d, b)| Op::Reload(d, b)),
        ]
    }

    /// (allocation, channel, peer) for every channel the core relays ChannelData on now, of
    /// UDP clients without a bandwidth limit: asked of the core itself with a frame.
    fn relayed(h: &mut Harness) -> std::collections::BTreeSet<(AllocationId, u16, SocketAddr)> {
        let candidates: Vec<(AllocationId, FiveTuple, bool)> = h
            .server
            .allocations()
            .map(|a| {
                let eligible = a.tuple.transport == Transport::Udp
                    && a.bandwidth.is_none()
                    && a.user_bandwidth.is_none();
                (a.id, a.tuple, eligible)
            })
            .collect();
        let mut out = vec![0u8; 1500];
        let mut set = std::collections::BTreeSet::new();
        for (id, tuple, eligible) in candidates {
            for number in 0x4000..0x4003u16 {
                let frame = [(number >> 8) as u8, number as u8, 0, 1, b'x', 0, 0, 0];
                if let ClientAction::Relay { peer, .. } =
                    h.server.handle_client(h.now, tuple, &frame, &mut out)
                {
                    if eligible {
                        set.insert((id, number, peer));
                    }
                }
            }
        }
        set
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
        #[test]
        fn the_kernel_table_is_what_the_core_relays(ops in proptest::collection::vec(op(), 1..60)) {
            let mut h = Harness::with(|c| c.offload = true);
            let mut clients: Vec<Client> = clients()
                .iter()
                .map(|(tuple, user, password)| Client::new(*tuple, user, password))
                .collect();
            let base = h.server.config.clone();
            for op in ops {
                match op {
                    Op::Allocate(c) => {
                        clients[c].allocate(&mut h);
                    }
                    Op::Bind(c, number, p) => {
                        clients[c].bind(&mut h, number, PEERS[p].parse().unwrap());
                    }
                    Op::Permit(c, p) => {
                        clients[c].permit(&mut h, PEERS[p].parse().unwrap());
                    }
                    Op::Refresh(c, zero) => {
                        let lifetime = if zero { 0 } else { 600 };
                        clients[c].call(&mut h, Method::REFRESH, |w| {
                            w.u32(attr::LIFETIME, lifetime).unwrap()
                        });
                    }
                    Op::Advance(seconds) => h.advance(Duration::from_secs(seconds)),
                    Op::Revoke(alice) => {
                        h.server.revoke(&[if alice { "alice" } else { "bob" }.to_owned()]);
                    }
                    Op::Close(c) => {
                        if let Some(id) = h.server.allocation_of(&clients[c].tuple).map(|a| a.id) {
                            h.server.close(id);
                        }
                    }
                    Op::Reload(denied, limited) => {
                        let mut config = base.clone();
                        config.allocation_bandwidth = limited.then_some(10_000_000);
                        let deny = denied
                            .map(|p| {
                                let ip = PEERS[p].parse::<SocketAddr>().unwrap().ip();
                                vec![ipnet::IpNet::from(ip)]
                            })
                            .unwrap_or_default();
                        let policy = PeerPolicy::new(vec!["203.0.113.0/24".parse().unwrap()], deny)
                            .with_own_sockets(vec![SERVER.parse().unwrap()], vec![]);
                        let nonces = h.server.nonces.clone();
                        h.server.reconfigure(h.now, config, policy, nonces);
                    }
                }
                h.drain_events();
                let expected = relayed(&mut h);
                prop_assert_eq!(&h.offloaded, &expected, "after {:?}", op);
            }
        }
    }

    #[test]
    fn a_bound_channel_is_offloaded_and_unoffloaded_when_its_permission_expires() {
        let mut h = Harness::with(|c| c.offload = true);
        let (mut c, _) = alice(&mut h);
        let peer: SocketAddr = PEER.parse().unwrap();
        assert_eq!(c.bind(&mut h, 0x4001, peer).class, Class::Success);
        let id = relay_of(&h, &c.tuple);
        assert_eq!(
            h.offloaded.iter().copied().collect::<Vec<_>>(),
            vec![(id, 0x4001, peer)]
        );
        // The permission (300 s) ends before the binding (600 s): relaying stops.
        h.advance(PERMISSION_LIFETIME);
        h.drain_events();
        assert!(h.offloaded.is_empty());
        // A new permission makes the still-bound channel relayable again.
        assert_eq!(c.permit(&mut h, peer).class, Class::Success);
        assert_eq!(h.offloaded.len(), 1);
        // Without `offload` in the config, nothing is announced.
        let mut plain = Harness::new();
        let (mut c, _) = alice(&mut plain);
        assert_eq!(c.bind(&mut plain, 0x4001, peer).class, Class::Success);
        assert!(plain.offloaded.is_empty());
    }
}

mod dual;
mod tcp;
