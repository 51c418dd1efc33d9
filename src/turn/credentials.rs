//! What the core asks of a credential store, and the names it counts users by: the
//! [`CredentialStore`] trait (implemented in [`crate::auth`] by the configuration's users and
//! secrets and by the Redis store), the long-term [`Key`], the two [`CredentialKind`]s and the
//! [`Principal`] quotas count, and the TURN REST API username format. Defined here, with the
//! core, so that the core imports nothing above it.

/// A long-term key: MD5 of `username:realm:password` (RFC 8489 §9.2.2).
pub type Key = [u8; 16];

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
    /// Calls `candidate` with each key `username` may authenticate with in `realm` (several when
    /// REST API secrets are being rotated), and the kind of credential it stands for, until it
    /// returns `true`. `now_unix` is the wall clock in seconds, for REST API expiry.
    fn keys(
        &self,
        username: &str,
        realm: &str,
        now_unix: u64,
        candidate: &mut dyn FnMut(&Key, CredentialKind) -> bool,
    ) -> Lookup;

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
