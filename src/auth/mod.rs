//! Where long-term keys come from: static users from the config and TURN REST API secrets.
//!
//! The protocol core asks a [`CredentialStore`] for the keys a username may use; it never sees
//! passwords or secrets, and this module never sees packets or allocations.

use std::collections::HashMap;

use base64::Engine;

use crate::config::{Auth, UserCredential};
use crate::stun::{hmac_sha1, long_term_key};

/// A long-term key: MD5 of `username:realm:password` (RFC 8489 §9.2.2).
pub type Key = [u8; 16];

/// What a store knows about a username.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The username is known; the keys it may use were passed to the callback.
    Known,
    /// No such user.
    Unknown,
    /// A TURN REST API username whose expiry time has passed.
    Expired,
}

/// A source of long-term keys. Implementations answer from memory: the packet path calls this.
pub trait CredentialStore: Send + Sync {
    /// Calls `candidate` with each key `username` may authenticate with in `realm` (several when
    /// REST API secrets are being rotated) until it returns `true`. `now_unix` is the wall clock
    /// in seconds, for REST API expiry.
    fn keys(
        &self,
        username: &str,
        realm: &str,
        now_unix: u64,
        candidate: &mut dyn FnMut(&Key) -> bool,
    ) -> Lookup;
}

/// The part of a username that quotas and logs are keyed on: `1700000000:alice` → `alice`;
/// a username without a user-id part counts as itself.
pub fn user_id(username: &str) -> &str {
    match parse_rest_username(username) {
        Some((_, Some(user))) => user,
        _ => username,
    }
}

/// Splits a TURN REST API username `<unix-expiry>[:<user-id>]`; `None` when it has no such form.
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

/// The TURN REST API password for `username`: `base64(HMAC-SHA1(secret, username))`.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac_sha1(secret, &[username.as_bytes()]))
}

/// Users and REST API secrets from the configuration file.
pub struct StaticCredentials {
    realm: String,
    users: HashMap<String, Key>,
    secrets: Vec<Vec<u8>>,
}

impl StaticCredentials {
    /// Precomputes every static user's key for `realm`.
    pub fn new(auth: &Auth, realm: &str) -> Self {
        let users = auth
            .users
            .iter()
            .map(|user| {
                let key = match &user.credential {
                    UserCredential::Password(password) => {
                        long_term_key(&user.name, realm, password)
                    }
                    UserCredential::Key(key) => *key,
                };
                (user.name.clone(), key)
            })
            .collect();
        StaticCredentials {
            realm: realm.to_owned(),
            users,
            secrets: auth.secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
        }
    }
}

impl CredentialStore for StaticCredentials {
    fn keys(
        &self,
        username: &str,
        realm: &str,
        now_unix: u64,
        candidate: &mut dyn FnMut(&Key) -> bool,
    ) -> Lookup {
        if realm != self.realm {
            return Lookup::Unknown;
        }
        if let Some(key) = self.users.get(username) {
            candidate(key);
            return Lookup::Known;
        }
        if self.secrets.is_empty() {
            return Lookup::Unknown;
        }
        let Some((expiry, _)) = parse_rest_username(username) else {
            return Lookup::Unknown;
        };
        if expiry < now_unix {
            return Lookup::Expired;
        }
        for secret in &self.secrets {
            let password = rest_password(secret, username);
            if candidate(&long_term_key(username, realm, &password)) {
                break;
            }
        }
        Lookup::Known
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::User;

    fn auth(secrets: &[&str]) -> Auth {
        let mut auth = crate::config::Config::default().auth;
        auth.secrets = secrets.iter().map(|s| s.to_string()).collect();
        auth.users = vec![
            User {
                name: "alice".into(),
                credential: UserCredential::Password("wonderland".into()),
            },
            User {
                name: "bob".into(),
                credential: UserCredential::Key(long_term_key("bob", "r", "builder")),
            },
        ];
        auth
    }

    fn collect(store: &StaticCredentials, username: &str, now: u64) -> (Lookup, Vec<Key>) {
        let mut keys = Vec::new();
        let lookup = store.keys(username, "r", now, &mut |k| {
            keys.push(*k);
            false
        });
        (lookup, keys)
    }

    #[test]
    fn static_users_by_password_or_key() {
        let store = StaticCredentials::new(&auth(&[]), "r");
        assert_eq!(
            collect(&store, "alice", 0),
            (
                Lookup::Known,
                vec![long_term_key("alice", "r", "wonderland")]
            )
        );
        assert_eq!(
            collect(&store, "bob", 0),
            (Lookup::Known, vec![long_term_key("bob", "r", "builder")])
        );
        assert_eq!(collect(&store, "carol", 0), (Lookup::Unknown, vec![]));
        let mut called = false;
        let other_realm = store.keys("alice", "elsewhere", 0, &mut |_| {
            called = true;
            true
        });
        assert_eq!(other_realm, Lookup::Unknown);
        assert!(!called);
    }

    #[test]
    fn rest_usernames_verify_with_every_secret() {
        let store = StaticCredentials::new(&auth(&["new", "old"]), "r");
        let username = "1700000100:carol";
        let (lookup, keys) = collect(&store, username, 1_700_000_000);
        assert_eq!(lookup, Lookup::Known);
        assert_eq!(
            keys,
            vec![
                long_term_key(username, "r", &rest_password(b"new", username)),
                long_term_key(username, "r", &rest_password(b"old", username)),
            ]
        );
        assert_eq!(collect(&store, username, 1_700_000_101).0, Lookup::Expired);
        assert_eq!(collect(&store, "1700000100", 1_700_000_000).1.len(), 2);
        assert_eq!(collect(&store, "x1700000100", 0).0, Lookup::Unknown);
    }

    #[test]
    fn rest_password_matches_the_published_scheme() {
        // base64(HMAC-SHA1("secret", "1433895918:user")), computed independently with openssl:
        // printf '1433895918:user' | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(
            rest_password(b"secret", "1433895918:user"),
            "duY86vsmGEXM+Ma7pGS//SXJIv0="
        );
    }

    #[test]
    fn user_id_is_the_part_after_the_expiry() {
        assert_eq!(user_id("1700000000:alice"), "alice");
        assert_eq!(user_id("1700000000"), "1700000000");
        assert_eq!(user_id("alice"), "alice");
        assert_eq!(user_id("abc:alice"), "abc:alice");
    }
}
