//! SHA-256 long-term credentials and username anonymity (RFC 8489 §9.2, §14.4–14.6, §14.11–14.12)
//! on the real binary over UDP:
//!
//! - an independent client (the `stun-types` crate) authenticates an Allocate with
//!   PASSWORD-ALGORITHM SHA-256 and MESSAGE-INTEGRITY-SHA256, by USERNAME and by USERHASH, and
//!   checks the MESSAGE-INTEGRITY-SHA256 of the answer (which carries no MESSAGE-INTEGRITY);
//!   the allocation's later requests must keep to SHA-256;
//! - every challenge's NONCE starts with the nonce cookie and both feature bits, and carries
//!   PASSWORD-ALGORITHMS (SHA-256, MD5), a stale or foreign nonce's 438 too;
//! - the errors, each with the RFC's code: a bid-down (PASSWORD-ALGORITHMS not the one offered)
//!   400, an unknown algorithm 400, a wrong SHA-256 key 401, a truncated MESSAGE-INTEGRITY-SHA256
//!   400 (TURN allows no truncation) or dropped (below 16 bytes), USERHASH of an unknown user
//!   401, USERNAME with USERHASH 400, a user configured by MD5 key asking for SHA-256 401, a
//!   REST username by USERHASH 401;
//! - an MD5 client (turnpike's own, no PASSWORD-ALGORITHM) gets what it got before: an answer
//!   with MESSAGE-INTEGRITY and no MESSAGE-INTEGRITY-SHA256.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use stun_types::attribute::{
    AttributeType, Nonce, PasswordAlgorithm, PasswordAlgorithmValue, PasswordAlgorithms,
    RawAttribute, Realm, Userhash, Username,
};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message as TheirMessage, MessageClass,
    MessageIntegrityCredentials, MessageType, MessageWrite, MessageWriteExt, MessageWriteVec,
    TransactionId as TheirTransactionId,
};
use turnpike::stun::{
    self, Class, Message, MessageWriter, Method, TransactionId, attr, long_term_key,
    long_term_key_sha256, userhash,
};

use common::stun_client::{REALM, StunClient};
use common::{Server, TestConfig};

/// PASSWORD-ALGORITHMS as the server offers it: SHA-256, then MD5.
const OFFERED: [u8; 8] = [0, 2, 0, 0, 0, 1, 0, 0];
/// PASSWORD-ALGORITHM values.
const SHA256: [u8; 4] = [0, 2, 0, 0];
const MD5: [u8; 4] = [0, 1, 0, 0];
/// The MD5 key of the user `keyed` (password "by-key"), the only credential the configuration
/// has for it.
const KEYED: (&str, &str) = ("keyed", "by-key");

/// The user `keyed256` (password "both-keys"), configured by `key` and `sha256-key`.
const KEYED256: (&str, &str) = ("keyed256", "both-keys");

/// Alice (password), keyed (MD5 key only), keyed256 (both keys) and REST secret `s3cret`.
fn server() -> Server {
    let key = hex(&long_term_key(KEYED.0, REALM, KEYED.1));
    let (md5, sha256) = (
        hex(&long_term_key(KEYED256.0, REALM, KEYED256.1)),
        hex(&long_term_key_sha256(KEYED256.0, REALM, KEYED256.1)),
    );
    Server::with(&TestConfig {
        transports: vec!["udp"],
        secrets: vec!["s3cret"],
        extra: format!(
            "[[auth.users]]\nname = {:?}\nkey = {key:?}\n\n[[auth.users]]\nname = {:?}\nkey = {md5:?}\nsha256-key = {sha256:?}\n",
            KEYED.0, KEYED256.0
        ),
        ..TestConfig::default()
    })
}

/// A UDP socket that sends requests and reads their answers.
struct Raw {
    socket: UdpSocket,
    server: SocketAddr,
    sequence: u32,
}

impl Raw {
    fn new(server: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        Raw {
            socket,
            server,
            sequence: 0,
        }
    }

    fn tid(&mut self) -> [u8; 12] {
        self.sequence += 1;
        let mut tid = [0x5a; 12];
        tid[8..].copy_from_slice(&self.sequence.to_be_bytes());
        tid
    }

    /// Sends `request` (up to 4 times) until its answer comes; `None` if none does.
    fn ask(&self, request: &[u8]) -> Option<Vec<u8>> {
        let tid = &request[8..20];
        let mut buf = [0u8; 1500];
        for _ in 0..4 {
            self.socket.send_to(request, self.server).unwrap();
            while let Ok((n, _)) = self.socket.recv_from(&mut buf) {
                if buf[8..20] == *tid {
                    return Some(buf[..n].to_vec());
                }
            }
        }
        None
    }

    /// The nonce of a 401 to an unsigned Allocate, after checking the challenge's form.
    fn nonce(&mut self) -> String {
        let tid = TransactionId(self.tid());
        let mut buf = [0u8; 100];
        let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, tid).unwrap();
        w.requested_transport(17).unwrap();
        let n = w.finish();
        let answer = self.ask(&buf[..n]).expect("a 401");
        eprintln!("401 to an unsigned Allocate: {} bytes", answer.len());
        let (code, nonce) = challenge(&answer);
        assert_eq!(code, 401);
        nonce
    }
}

/// Code and nonce of a 401 or 438, checked for what RFC 8489 §9.2.4 requires of it: REALM, a
/// NONCE with the cookie and both feature bits, PASSWORD-ALGORITHMS; no integrity.
fn challenge(answer: &[u8]) -> (u16, String) {
    let msg = Message::parse(answer).unwrap();
    assert_eq!(msg.class(), Class::Error);
    let (code, _) = attr::decode_error_code(msg.get(attr::ERROR_CODE).unwrap()).unwrap();
    assert_eq!(msg.get(attr::REALM), Some(REALM.as_bytes()));
    assert_eq!(msg.get(attr::PASSWORD_ALGORITHMS), Some(&OFFERED[..]));
    assert!(!msg.has_integrity());
    assert_eq!(msg.integrity_sha256_len(), None);
    let nonce = std::str::from_utf8(msg.get(attr::NONCE).unwrap()).unwrap();
    assert!(nonce.starts_with("obMatJos2AAAD"), "{nonce}");
    (code, nonce.to_owned())
}

/// The error code of `answer` (0 for a success).
fn code(answer: &[u8]) -> u16 {
    let msg = Message::parse(answer).unwrap();
    msg.get(attr::ERROR_CODE)
        .map(|v| attr::decode_error_code(v).unwrap().0)
        .unwrap_or(0)
}

/// How an independent client names its user.
enum Who<'a> {
    Name(&'a str),
    Hash(&'a str),
}

/// A request built by stun-types: `who`, REALM, NONCE, PASSWORD-ALGORITHM SHA-256 with the
/// PASSWORD-ALGORITHMS of the challenge, `extra` attributes, MESSAGE-INTEGRITY-SHA256.
fn theirs(
    method: u16,
    tid: [u8; 12],
    who: Who<'_>,
    password: &str,
    nonce: &str,
    extra: &[(u16, &[u8])],
) -> Vec<u8> {
    let method = stun_types::message::Method::new(method);
    let mut w = TheirMessage::builder(
        MessageType::from_class_method(MessageClass::Request, method),
        TheirTransactionId::from(u128::from_be_bytes({
            let mut full = [0u8; 16];
            full[4..].copy_from_slice(&tid);
            full
        })),
        MessageWriteVec::new(),
    );
    let username = match who {
        Who::Name(name) => {
            w.add_attribute(&Username::new(name).unwrap()).unwrap();
            name
        }
        Who::Hash(name) => {
            w.add_attribute(&Userhash::new(Userhash::compute(name, REALM)))
                .unwrap();
            name
        }
    };
    w.add_attribute(&Realm::new(REALM).unwrap()).unwrap();
    w.add_attribute(&Nonce::new(nonce).unwrap()).unwrap();
    w.add_attribute(&PasswordAlgorithm::new(PasswordAlgorithmValue::SHA256))
        .unwrap();
    w.add_attribute(&PasswordAlgorithms::new(&[
        PasswordAlgorithmValue::SHA256,
        PasswordAlgorithmValue::MD5,
    ]))
    .unwrap();
    for (typ, value) in extra {
        w.add_attribute(&RawAttribute::new(AttributeType::new(*typ), value))
            .unwrap();
    }
    w.add_message_integrity(&credentials(username, password), IntegrityAlgorithm::Sha256)
        .unwrap();
    w.finish()
}

fn credentials(username: &str, password: &str) -> MessageIntegrityCredentials {
    LongTermKeyCredentials::new(username.into(), password.into(), REALM.into()).into()
}

/// stun-types' verdict on the answer's integrity under `username`'s credentials.
fn their_check(answer: &[u8], username: &str, password: &str) -> IntegrityAlgorithm {
    let msg = TheirMessage::from_bytes(answer).unwrap();
    msg.validate_integrity(&credentials(username, password))
        .expect("the answer's integrity verifies")
}

const UDP: (u16, &[u8]) = (attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);

#[test]
fn an_independent_client_allocates_with_sha256() {
    let server = server();
    let mut raw = Raw::new(server.addr("udp"));
    let nonce = raw.nonce();
    let tid = raw.tid();
    let request = theirs(0x003, tid, Who::Name("alice"), "wonderland", &nonce, &[UDP]);
    let answer = raw.ask(&request).expect("an answer");
    assert_eq!(code(&answer), 0, "{answer:02x?}");
    let msg = Message::parse(&answer).unwrap();
    assert!(msg.get(attr::XOR_RELAYED_ADDRESS).is_some());
    // Signed as the request was: MESSAGE-INTEGRITY-SHA256 (full length), no MESSAGE-INTEGRITY.
    assert!(!msg.has_integrity());
    assert_eq!(msg.integrity_sha256_len(), Some(32));
    assert!(matches!(
        their_check(&answer, "alice", "wonderland"),
        IntegrityAlgorithm::Sha256
    ));
    let key = long_term_key_sha256("alice", REALM, "wonderland");
    assert_eq!(msg.check_integrity_sha256(&key), Ok(()));

    // A Refresh signed with MD5 (no PASSWORD-ALGORITHM) on this SHA-256 allocation: 401.
    let mut buf = [0u8; 512];
    let mut w = MessageWriter::new(
        &mut buf,
        Method::REFRESH,
        Class::Request,
        TransactionId(raw.tid()),
    )
    .unwrap();
    w.attribute(attr::USERNAME, b"alice").unwrap();
    w.attribute(attr::REALM, REALM.as_bytes()).unwrap();
    w.attribute(attr::NONCE, nonce.as_bytes()).unwrap();
    w.message_integrity(&long_term_key("alice", REALM, "wonderland"))
        .unwrap();
    let n = w.finish();
    let answer = raw.ask(&buf[..n]).unwrap();
    assert_eq!(challenge(&answer).0, 401);

    // The same Refresh with SHA-256 works, and is answered with MESSAGE-INTEGRITY-SHA256.
    let lifetime = 0u32.to_be_bytes();
    let request = theirs(
        0x004,
        raw.tid(),
        Who::Name("alice"),
        "wonderland",
        &nonce,
        &[(attr::LIFETIME, &lifetime)],
    );
    let answer = raw.ask(&request).unwrap();
    assert_eq!(code(&answer), 0);
    assert!(matches!(
        their_check(&answer, "alice", "wonderland"),
        IntegrityAlgorithm::Sha256
    ));
}

#[test]
fn an_independent_client_allocates_by_userhash() {
    let server = server();
    let mut raw = Raw::new(server.addr("udp"));
    let nonce = raw.nonce();
    let request = theirs(
        0x003,
        raw.tid(),
        Who::Hash("alice"),
        "wonderland",
        &nonce,
        &[UDP],
    );
    // The username is nowhere on the wire.
    assert!(!request.windows(5).any(|w| w == b"alice"));
    let answer = raw.ask(&request).unwrap();
    assert_eq!(code(&answer), 0, "{answer:02x?}");
    assert!(matches!(
        their_check(&answer, "alice", "wonderland"),
        IntegrityAlgorithm::Sha256
    ));
    // Later requests on the allocation may name the user by USERHASH too.
    let request = theirs(
        0x004,
        raw.tid(),
        Who::Hash("alice"),
        "wonderland",
        &nonce,
        &[],
    );
    let answer = raw.ask(&request).unwrap();
    assert_eq!(code(&answer), 0, "a Refresh by USERHASH");
    let stats = server.stats();
    assert_eq!(stats.get("allocations"), 1, "{:?}", stats.0);
}

#[test]
fn an_md5_client_is_answered_as_before() {
    let server = server();
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
    client.allocate().expect("an MD5 client allocates");
    let answer = client.request(Method::REFRESH, &|w| w.u32(attr::LIFETIME, 600).unwrap());
    assert_eq!(answer.class, Class::Success);
    let msg = Message::parse(&answer.bytes).unwrap();
    assert!(msg.has_integrity());
    assert_eq!(msg.integrity_sha256_len(), None);
    assert!(matches!(
        their_check(&answer.bytes, "alice", "wonderland"),
        IntegrityAlgorithm::Sha1
    ));
    // The user configured by its MD5 key authenticates with MD5.
    let mut keyed = StunClient::udp(server.addr("udp"), "127.0.0.1:0", KEYED.0, KEYED.1);
    keyed
        .allocate()
        .expect("an MD5-key user allocates with MD5");
}

/// A user configured by `key` and `sha256-key` (no password in the file) uses either algorithm,
/// by USERNAME or USERHASH; one with `key` alone only MD5.
#[test]
fn a_user_configured_by_keys_uses_sha256_with_its_sha256_key() {
    let server = server();
    assert_eq!(
        sha256_allocate(&server, Who::Name(KEYED256.0), KEYED256.1),
        0
    );
    assert_eq!(
        sha256_allocate(&server, Who::Hash(KEYED256.0), KEYED256.1),
        0
    );
    assert_eq!(
        sha256_allocate(&server, Who::Name(KEYED256.0), "wrong"),
        401
    );
    let mut md5 = StunClient::udp(server.addr("udp"), "127.0.0.1:0", KEYED256.0, KEYED256.1);
    md5.allocate().expect("and MD5");
    assert_eq!(sha256_allocate(&server, Who::Name(KEYED.0), KEYED.1), 401);
    assert_eq!(sha256_allocate(&server, Who::Hash(KEYED.0), KEYED.1), 401);
}

/// A request signed by turnpike's writer: `attributes`, then MESSAGE-INTEGRITY-SHA256 under
/// `key` cut to `mac_len` bytes (0: none; 32: full), or MESSAGE-INTEGRITY when `md5_mi`.
fn ours(tid: [u8; 12], attributes: &[(u16, &[u8])], key: &[u8], mac_len: usize) -> Vec<u8> {
    let mut buf = [0u8; 1024];
    let mut w = MessageWriter::new(
        &mut buf,
        Method::ALLOCATE,
        Class::Request,
        TransactionId(tid),
    )
    .unwrap();
    for (typ, value) in attributes {
        w.attribute(*typ, value).unwrap();
    }
    let n = w.finish();
    let mut bytes = buf[..n].to_vec();
    if mac_len > 0 {
        // Header length as if the attribute were there, then the (cut) HMAC.
        let body = (bytes.len() - 20 + 4 + mac_len) as u16;
        bytes[2..4].copy_from_slice(&body.to_be_bytes());
        let mac = stun::hmac_sha256(key, &[&bytes]);
        bytes.extend_from_slice(&attr::MESSAGE_INTEGRITY_SHA256.to_be_bytes());
        bytes.extend_from_slice(&(mac_len as u16).to_be_bytes());
        bytes.extend_from_slice(&mac[..mac_len.min(32)]);
        bytes.resize(20 + usize::from(body), 0);
    }
    bytes
}

/// An Allocate signed with full MESSAGE-INTEGRITY-SHA256 under `key`, naming its user by `who`
/// (USERNAME and/or USERHASH), with REALM, `nonce`, PASSWORD-ALGORITHM SHA-256 and the offered
/// PASSWORD-ALGORITHMS.
fn sha256_request(tid: [u8; 12], who: &[(u16, &[u8])], nonce: &str, key: &[u8]) -> Vec<u8> {
    let mut attributes = who.to_vec();
    attributes.extend([
        (attr::REALM, REALM.as_bytes()),
        (attr::NONCE, nonce.as_bytes()),
        (attr::PASSWORD_ALGORITHM, &SHA256[..]),
        (attr::PASSWORD_ALGORITHMS, &OFFERED[..]),
        UDP,
    ]);
    ours(tid, &attributes, key, 32)
}

#[test]
fn every_error_has_the_rfc_code() {
    let server = server();
    let mut raw = Raw::new(server.addr("udp"));
    let nonce = raw.nonce();
    let alice_sha = long_term_key_sha256("alice", REALM, "wonderland");
    let user: (u16, &[u8]) = (attr::USERNAME, b"alice");
    let realm: (u16, &[u8]) = (attr::REALM, REALM.as_bytes());
    let nonce_attr: (u16, &[u8]) = (attr::NONCE, nonce.as_bytes());
    let offered: (u16, &[u8]) = (attr::PASSWORD_ALGORITHMS, &OFFERED);
    let sha: (u16, &[u8]) = (attr::PASSWORD_ALGORITHM, &SHA256);
    let md5: (u16, &[u8]) = (attr::PASSWORD_ALGORITHM, &MD5);
    let hash_of = |name: &str| userhash(name, REALM);
    let carol_hash = hash_of("carol");
    let alice_hash = hash_of("alice");
    let keyed_sha = long_term_key_sha256(KEYED.0, REALM, KEYED.1);
    let keyed: (u16, &[u8]) = (attr::USERNAME, KEYED.0.as_bytes());
    let rest_name = format!("{}:dave", turnpike::clock::unix_now() + 600);
    let rest_hash = hash_of(&rest_name);

    let before = server.stats();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "a bid-down: PASSWORD-ALGORITHMS without SHA-256",
            ours(
                raw.tid(),
                &[
                    user,
                    realm,
                    nonce_attr,
                    md5,
                    (attr::PASSWORD_ALGORITHMS, &MD5),
                    UDP,
                ],
                &long_term_key("alice", REALM, "wonderland"),
                32,
            ),
            400,
        ),
        (
            "PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS",
            ours(
                raw.tid(),
                &[user, realm, nonce_attr, sha, UDP],
                &alice_sha,
                32,
            ),
            400,
        ),
        (
            "an unknown algorithm",
            ours(
                raw.tid(),
                &[
                    user,
                    realm,
                    nonce_attr,
                    (attr::PASSWORD_ALGORITHM, &[0, 3, 0, 0]),
                    offered,
                    UDP,
                ],
                &alice_sha,
                32,
            ),
            400,
        ),
        (
            "a malformed PASSWORD-ALGORITHM",
            ours(
                raw.tid(),
                &[
                    user,
                    realm,
                    nonce_attr,
                    (attr::PASSWORD_ALGORITHM, &[0, 2]),
                    offered,
                    UDP,
                ],
                &alice_sha,
                32,
            ),
            400,
        ),
        (
            "MESSAGE-INTEGRITY-SHA256 under a wrong key",
            sha256_request(raw.tid(), &[user], &nonce, &[7; 32]),
            401,
        ),
        (
            "the MD5 key under SHA-256",
            sha256_request(
                raw.tid(),
                &[user],
                &nonce,
                &long_term_key("alice", REALM, "wonderland"),
            ),
            401,
        ),
        (
            "MESSAGE-INTEGRITY-SHA256 truncated to 16 bytes",
            ours(
                raw.tid(),
                &[user, realm, nonce_attr, sha, offered, UDP],
                &alice_sha,
                16,
            ),
            400,
        ),
        (
            "USERHASH of an unknown user",
            sha256_request(
                raw.tid(),
                &[(attr::USERHASH, &carol_hash)],
                &nonce,
                &long_term_key_sha256("carol", REALM, "pw"),
            ),
            401,
        ),
        (
            "USERNAME and USERHASH",
            sha256_request(
                raw.tid(),
                &[user, (attr::USERHASH, &alice_hash)],
                &nonce,
                &alice_sha,
            ),
            400,
        ),
        (
            "a USERHASH of 31 bytes",
            ours(
                raw.tid(),
                &[
                    (attr::USERHASH, &alice_hash[..31]),
                    realm,
                    nonce_attr,
                    sha,
                    offered,
                    UDP,
                ],
                &alice_sha,
                32,
            ),
            400,
        ),
        (
            "a user with an MD5 key only, asking for SHA-256",
            sha256_request(raw.tid(), &[keyed], &nonce, &keyed_sha),
            401,
        ),
        (
            "a REST username by USERHASH",
            sha256_request(
                raw.tid(),
                &[(attr::USERHASH, &rest_hash)],
                &nonce,
                &long_term_key_sha256(&rest_name, REALM, &rest_password(&rest_name)),
            ),
            401,
        ),
        (
            "USERHASH repeated: the first one (unknown) counts",
            sha256_request(
                raw.tid(),
                &[(attr::USERHASH, &carol_hash), (attr::USERHASH, &alice_hash)],
                &nonce,
                &alice_sha,
            ),
            401,
        ),
        (
            "PASSWORD-ALGORITHMS of 100 entries",
            ours(
                raw.tid(),
                &[
                    user,
                    realm,
                    nonce_attr,
                    sha,
                    (attr::PASSWORD_ALGORITHMS, &OFFERED.repeat(50)),
                    UDP,
                ],
                &alice_sha,
                32,
            ),
            400,
        ),
        (
            "another realm",
            ours(
                raw.tid(),
                &[
                    user,
                    (attr::REALM, b"elsewhere"),
                    nonce_attr,
                    sha,
                    offered,
                    UDP,
                ],
                &long_term_key_sha256("alice", "elsewhere", "wonderland"),
                32,
            ),
            401,
        ),
    ];
    for (what, request, expected) in &cases {
        let answer = raw
            .ask(request)
            .unwrap_or_else(|| panic!("{what}: no answer"));
        let got = code(&answer);
        eprintln!("{what}: {got}");
        assert_eq!(got, *expected, "{what}");
        if got == 401 {
            challenge(&answer);
        }
    }
    assert_eq!(server.stats().since(&before, "allocations_created"), 0);

    // The same REST username by USERNAME with SHA-256 allocates: its password is derivable.
    let rest = sha256_request(
        raw.tid(),
        &[(attr::USERNAME, rest_name.as_bytes())],
        &nonce,
        &long_term_key_sha256(&rest_name, REALM, &rest_password(&rest_name)),
    );
    assert_eq!(
        code(&raw.ask(&rest).unwrap()),
        0,
        "REST username with SHA-256"
    );

    // A nonce that is not ours: 438 with a fresh nonce that has the cookie.
    let mut forged = nonce.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let request = ours(
        raw.tid(),
        &[user, realm, (attr::NONCE, &forged), sha, offered, UDP],
        &alice_sha,
        32,
    );
    let answer = raw.ask(&request).unwrap();
    assert_eq!(challenge(&answer).0, 438);

    // Below 16 bytes the message is malformed: dropped and counted, like a short
    // MESSAGE-INTEGRITY.
    let before = server.stats();
    let short = ours(
        raw.tid(),
        &[user, realm, nonce_attr, sha, offered, UDP],
        &alice_sha,
        12,
    );
    assert_eq!(raw.ask(&short), None);
    assert!(server.stats().since(&before, "malformed") >= 1);
}

/// The REST API password of `username` under the secret `s3cret`.
fn rest_password(username: &str) -> String {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The answer code to a stun-types Allocate with SHA-256 naming `who` (a fresh socket, a fresh
/// nonce), after deleting the allocation again if it was made.
fn sha256_allocate(server: &Server, who: Who<'_>, password: &str) -> u16 {
    let mut raw = Raw::new(server.addr("udp"));
    let nonce = raw.nonce();
    let name = match who {
        Who::Name(name) | Who::Hash(name) => name,
    };
    let by_hash = matches!(who, Who::Hash(_));
    let request = theirs(0x003, raw.tid(), who, password, &nonce, &[UDP]);
    let got = code(&raw.ask(&request).expect("an answer"));
    if got == 0 {
        let lifetime = 0u32.to_be_bytes();
        let who = if by_hash {
            Who::Hash(name)
        } else {
            Who::Name(name)
        };
        let delete = theirs(
            0x004,
            raw.tid(),
            who,
            password,
            &nonce,
            &[(attr::LIFETIME, &lifetime)],
        );
        raw.ask(&delete);
    }
    got
}

/// Polls `check` every 50 ms for up to 10 s until it holds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Redis users: `turnpike user add` stores the SHA-256 key next to the MD5 one (schema
/// turnpike, `P:users-sha256:R`), coturn's layout takes `.../key-sha256` next to `.../key`;
/// such users allocate with SHA-256 by USERNAME and by USERHASH, a user with the MD5 key alone
/// gets 401 for SHA-256 and allocates with MD5; removing the user removes both keys.
#[test]
fn redis_users_with_a_sha256_key() {
    use common::redis::RedisServer;
    let redis = RedisServer::start();
    let url = redis.url();
    for schema in ["turnpike", "coturn"] {
        let server = Server::with(&TestConfig {
            transports: vec!["udp"],
            extra: format!(
                "[limits]\nunauthenticated-rate = 0\n\n[redis]\nurl = {url:?}\nschema = {schema:?}\n"
            ),
            ..TestConfig::default()
        });
        let (erin, frank) = (format!("erin-{schema}"), format!("frank-{schema}"));
        if schema == "turnpike" {
            let ran = common::run_turnpike(
                &[],
                &[
                    "user",
                    "add",
                    &erin,
                    "--password",
                    "erin-pw",
                    "--redis",
                    &url,
                    "--realm",
                    REALM,
                ],
                Duration::from_secs(30),
            );
            assert!(ran.succeeded(), "user add: {ran:?}");
            assert!(ran.stdout.contains("SHA-256 key"), "{}", ran.stdout);
            let stored = redis.cli(&["HGET", &format!("turnpike:users-sha256:{REALM}"), &erin]);
            let expected: String = long_term_key_sha256(&erin, REALM, "erin-pw")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(stored.trim(), expected);
            redis.cli(&[
                "HSET",
                &format!("turnpike:users:{REALM}"),
                &frank,
                &hex(&long_term_key(&frank, REALM, "frank-pw")),
            ]);
        } else {
            let user =
                |name: &str, suffix: &str| format!("turn/realm/{REALM}/user/{name}/{suffix}");
            redis.cli(&[
                "SET",
                &user(&erin, "key-sha256"),
                &hex(&long_term_key_sha256(&erin, REALM, "erin-pw")),
            ]);
            redis.cli(&[
                "SET",
                &user(&erin, "key"),
                &hex(&long_term_key(&erin, REALM, "erin-pw")),
            ]);
            redis.cli(&[
                "SET",
                &user(&frank, "key"),
                &hex(&long_term_key(&frank, REALM, "frank-pw")),
            ]);
        }
        // Written behind the admin commands' back: tell the nodes.
        redis.cli(&["PUBLISH", "turnpike:events", "reload"]);
        eventually(&format!("{schema}: erin allocates with SHA-256"), || {
            sha256_allocate(&server, Who::Name(&erin), "erin-pw") == 0
        });
        assert_eq!(
            sha256_allocate(&server, Who::Hash(&erin), "erin-pw"),
            0,
            "{schema}: erin by USERHASH"
        );
        eventually(&format!("{schema}: frank known"), || {
            StunClient::udp(server.addr("udp"), "127.0.0.1:0", &frank, "frank-pw")
                .allocate()
                .is_ok()
        });
        assert_eq!(
            sha256_allocate(&server, Who::Name(&frank), "frank-pw"),
            401,
            "{schema}: frank has no SHA-256 key"
        );
        assert_eq!(
            sha256_allocate(&server, Who::Name(&erin), "wrong"),
            401,
            "{schema}: wrong password"
        );
        if schema == "turnpike" {
            let ran = common::run_turnpike(
                &[],
                &["user", "remove", &erin, "--redis", &url, "--realm", REALM],
                Duration::from_secs(30),
            );
            assert!(ran.succeeded(), "user remove: {ran:?}");
            let left = redis.cli(&["HEXISTS", &format!("turnpike:users-sha256:{REALM}"), &erin]);
            assert_eq!(left.trim(), "0", "the SHA-256 key goes with the user");
            eventually("erin removed", || {
                sha256_allocate(&server, Who::Name(&erin), "erin-pw") == 401
            });
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The new 400s (a bid-down here) are answers to unauthenticated requests: over UDP they are
/// charged to the source's reflection budget like a 401, and beyond it dropped and counted.
#[test]
fn bad_algorithm_answers_are_charged_to_the_reflection_budget() {
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        extra: "[limits]\nunauthenticated-rate = 1\nunauthenticated-burst = 3\n".into(),
        ..TestConfig::default()
    });
    let mut raw = Raw::new(server.addr("udp"));
    let nonce = raw.nonce();
    raw.socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let before = server.stats();
    let started = std::time::Instant::now();
    let mut answered = 0;
    for _ in 0..10 {
        let request = ours(
            raw.tid(),
            &[
                (attr::USERNAME, b"alice"),
                (attr::REALM, REALM.as_bytes()),
                (attr::NONCE, nonce.as_bytes()),
                (attr::PASSWORD_ALGORITHM, &MD5),
                (attr::PASSWORD_ALGORITHMS, &MD5),
                UDP,
            ],
            &long_term_key("alice", REALM, "wonderland"),
            32,
        );
        raw.socket.send_to(&request, raw.server).unwrap();
        let mut buf = [0u8; 1500];
        if let Ok((n, _)) = raw.socket.recv_from(&mut buf) {
            assert_eq!(code(&buf[..n]), 400);
            answered += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let dropped = server.stats().since(&before, "rate_limited");
    eprintln!("10 bid-down requests in {seconds:.2} s: {answered} answered, {dropped} dropped");
    // The burst (3, one spent on the 401) and at most one a second after it.
    assert!(answered >= 1, "the budget answers some");
    assert!(
        answered as f64 <= 2.0 + seconds.ceil(),
        "{answered} answers in {seconds:.2} s"
    );
    assert_eq!(dropped, 10 - answered);
}
