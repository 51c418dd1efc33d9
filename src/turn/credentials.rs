//! What the core asks of a credential store, and the names it counts users by: the
//! [`CredentialStore`] trait (implemented in [`crate::auth`] by the configuration's users and
//! secrets and by the Redis store), the long-term [`Key`] of each [`PasswordAlgorithm`], the
//! two [`CredentialKind`]s and the [`Principal`] quotas count, and the TURN REST API username
//! format. Defined here, with the core, so that the core imports nothing above it.

use std::fmt;

use crate::stun::attr;

/// A password algorithm of RFC 8489 §18.5: how the long-term key is derived from the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PasswordAlgorithm {
    /// MD5 of `username:realm:password` (§18.5.1.1): what every RFC 5389 client uses.
    Md5,
    /// SHA-256 of `username:realm:password` (§18.5.1.2).
    Sha256,
}

impl PasswordAlgorithm {
    /// The algorithm whose number (PASSWORD-ALGORITHM, §14.12) is `number`, if supported.
    pub fn from_number(number: u16) -> Option<Self> {
        match number {
            attr::ALGORITHM_MD5 => Some(PasswordAlgorithm::Md5),
            attr::ALGORITHM_SHA256 => Some(PasswordAlgorithm::Sha256),
            _ => None,
        }
    }

    /// Its name in logs and docs.
    pub fn name(self) -> &'static str {
        match self {
            PasswordAlgorithm::Md5 => "MD5",
            PasswordAlgorithm::Sha256 => "SHA-256",
        }
    }
}

/// A long-term key (RFC 8489 §9.2.2), tagged with the password algorithm that made it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// MD5 of `username:realm:password`.
    Md5([u8; 16]),
    /// SHA-256 of `username:realm:password`.
    Sha256([u8; 32]),
}

impl Key {
    /// The HMAC key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Md5(key) => key,
            Key::Sha256(key) => key,
        }
    }

    pub fn algorithm(&self) -> PasswordAlgorithm {
        match self {
            Key::Md5(_) => PasswordAlgorithm::Md5,
            Key::Sha256(_) => PasswordAlgorithm::Sha256,
        }
    }
}

/// Never the key itself: only which algorithm made it.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key::{:?}(..)", self.algorithm())
    }
}

/// Which integrity attribute signed a request, and so signs its response (RFC 8489 §9.2.4):
/// MESSAGE-INTEGRITY (HMAC-SHA1) or MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    Sha1,
    Sha256,
}

/// What signs a response: the key and the integrity attribute of the request it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signing {
    pub key: Key,
    pub integrity: Integrity,
}

/// Which kind of credential vouched for a username. The two kinds name users in separate
/// namespaces: the REST id `alice` (`1700000000:alice`, vouched for by a shared secret) and the
/// long-term user `alice` are different users, with different quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// A long-term user, from `[[auth.users]]` or the Redis store: named by the whole username.
    LongTerm,
    /// A TURN REST API username `<expiry>[:<id>]` whose password a shared secret derives:
    /// named by its id.
    Rest,
}

/// The user an allocation belongs to, as quotas count it: its kind and its name within that
/// kind's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub kind: CredentialKind,
    /// The whole username of a long-term user; the user-id part of a REST username.
    pub id: Box<str>,
}

impl Principal {
    /// The principal of `username` as authenticated by a credential of `kind`.
    pub fn new(kind: CredentialKind, username: &str) -> Self {
        let id = match kind {
            CredentialKind::LongTerm => username,
            CredentialKind::Rest => user_id(username),
        };
        Principal {
            kind,
            id: id.into(),
        }
    }
}

/// What a store knows about a username.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The username is known; the keys it may use were passed to the callback.
    Known,
    /// No such user.
    Unknown,
    /// A TURN REST API username whose expiry time has passed.
    Expired,
    /// A TURN REST API username whose expiry lies further ahead than `[auth] max-rest-ttl`
    /// (plus [`crate::auth::REST_CLOCK_SKEW`]) allows: a credential that would practically never expire.
    TooLongLived,
    /// The credentials may live in a store that cannot be trusted now (Redis unreachable for
    /// longer than `stale-for`): refuse (500) rather than allow.
    Unavailable,
}

/// Limits set for one user (or realm-wide by the store), overriding `[limits]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserLimits {
    /// Allocations the user may hold.
    pub allocations: Option<u32>,
    /// Bits per second over all of the user's allocations on a node.
    pub bandwidth: Option<u64>,
    /// Bits per second per allocation.
    pub allocation_bandwidth: Option<u64>,
    /// A disabled user does not authenticate.
    pub disabled: bool,
}

/// A source of long-term keys. Implementations answer from memory: the packet path calls this.
pub trait CredentialStore: Send + Sync {
    /// Calls `candidate` with each key of `algorithm` that `username` may authenticate with in
    /// `realm` (several when REST API secrets are being rotated), and the kind of credential it
    /// stands for, until it returns `true`. `now_unix` is the wall clock in seconds, for REST
    /// API expiry. A user known only by an MD5 key offers no SHA-256 key (and answers
    /// [`Lookup::Known`]).
    fn keys(
        &self,
        username: &str,
        realm: &str,
        algorithm: PasswordAlgorithm,
        now_unix: u64,
        candidate: &mut dyn FnMut(&Key, CredentialKind) -> bool,
    ) -> Lookup;

    /// Like [`keys`](Self::keys) for the user whose USERHASH (SHA-256 of `username:realm`,
    /// RFC 8489 §14.4) is `userhash`; `candidate` also gets the username. Only long-term users
    /// can be found so: a TURN REST API username cannot be recovered from its hash. The
    /// default knows nobody.
    fn keys_by_userhash(
        &self,
        _userhash: &[u8; 32],
        _realm: &str,
        _algorithm: PasswordAlgorithm,
        _now_unix: u64,
        _candidate: &mut dyn FnMut(&str, &Key, CredentialKind) -> bool,
    ) -> Lookup {
        Lookup::Unknown
    }

    /// Has `username`, authenticated as `kind`, lost the right to keep its allocations:
    /// revoked, or (a long-term user) disabled or removed from the store? Asked on every
    /// request of an existing allocation.
    fn withdrawn(&self, _username: &str, _kind: CredentialKind, _now_unix: u64) -> bool {
        false
    }

    /// Overrides of `[limits]` for `user`. Per-user overrides name long-term users only; a
    /// REST id gets the realm-wide values.
    fn limits(&self, _user: &Principal) -> UserLimits {
        UserLimits::default()
    }

    /// Override of `[limits] total-allocations`.
    fn total_allocations(&self) -> Option<u32> {
        None
    }
}

/// The user-id part of a TURN REST API username: `1700000000:alice` → `alice`; a username
/// without a user-id part counts as itself.
pub fn user_id(username: &str) -> &str {
    match parse_rest_username(username) {
        Some((_, Some(user))) => user,
        _ => username,
    }
}

/// Splits a TURN REST API username `<unix-expiry>[:<user-id>]`; `None` when it has no such form
/// (an expiry of more than 20 digits, beyond `u64`, included).
pub fn parse_rest_username(username: &str) -> Option<(u64, Option<&str>)> {
    let (expiry, user) = match username.split_once(':') {
        Some((expiry, user)) => (expiry, Some(user)),
        None => (username, None),
    };
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((expiry.parse().ok()?, user))
}
