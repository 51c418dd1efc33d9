//! Where long-term keys come from: static users and TURN REST API secrets from the config, and
//! a Redis store shared by many nodes.
//!
//! The protocol core asks a [`CredentialStore`] for the keys a username may use; it never sees
//! passwords or secrets, and this module never sees packets or allocations.

pub mod redis;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;

use crate::config::{Auth, UserCredential};
use crate::stun::{hmac_sha1, long_term_key, long_term_key_sha256, userhash};
pub use crate::turn::credentials::{
    CredentialKind, CredentialStore, Key, Lookup, PasswordAlgorithm, Principal, UserLimits,
    parse_rest_username, user_id,
};

/// Leeway, in seconds, beyond `[auth] max-rest-ttl` for an app backend whose clock runs ahead
/// of this server's: a backend that issues the recommended one-day credentials with a clock a
/// few minutes fast must not see them refused.
pub const REST_CLOCK_SKEW: u64 = 300;

/// The hex form of a key, as coturn's `turnadmin -k` prints it.
pub fn key_hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// An MD5 key from 32 hex digits.
pub fn parse_key_hex(text: &str) -> Option<[u8; 16]> {
    crate::config::parse_key(text).ok()
}

/// A SHA-256 key from 64 hex digits.
pub fn parse_sha256_key_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut key = [0u8; 32];
    for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(key)
}

/// Whether a REST username expiring at `expiry` may authenticate at `now_unix`: not expired,
/// and not expiring further ahead than `max_ttl` seconds (plus [`REST_CLOCK_SKEW`]).
pub fn check_rest_expiry(expiry: u64, now_unix: u64, max_ttl: u64) -> Result<(), Lookup> {
    if expiry < now_unix {
        return Err(Lookup::Expired);
    }
    if expiry - now_unix > max_ttl.saturating_add(REST_CLOCK_SKEW) {
        return Err(Lookup::TooLongLived);
    }
    Ok(())
}

/// The format characters (Unicode general category Cf, as of Unicode 16.0), as inclusive
/// ranges: invisible, and some of them (U+061C, U+200E–U+200F, U+202A–U+202E, U+2066–U+2069)
/// reorder the text around them.
const FORMAT_CHARACTERS: [(char, char); 21] = [
    ('\u{00AD}', '\u{00AD}'),   // soft hyphen
    ('\u{0600}', '\u{0605}'),   // Arabic number signs
    ('\u{061C}', '\u{061C}'),   // Arabic letter mark
    ('\u{06DD}', '\u{06DD}'),   // Arabic end of ayah
    ('\u{070F}', '\u{070F}'),   // Syriac abbreviation mark
    ('\u{0890}', '\u{0891}'),   // Arabic pound and piastre marks above
    ('\u{08E2}', '\u{08E2}'),   // Arabic disputed end of ayah
    ('\u{180E}', '\u{180E}'),   // Mongolian vowel separator
    ('\u{200B}', '\u{200F}'),   // zero-width space, non-joiner, joiner; LRM, RLM
    ('\u{202A}', '\u{202E}'),   // bidi embeddings and overrides (LRE, RLE, PDF, LRO, RLO)
    ('\u{2060}', '\u{2064}'),   // word joiner, invisible operators
    ('\u{2066}', '\u{206F}'),   // bidi isolates (LRI, RLI, FSI, PDI), deprecated format chars
    ('\u{FEFF}', '\u{FEFF}'),   // zero-width no-break space (byte-order mark)
    ('\u{FFF9}', '\u{FFFB}'),   // interlinear annotation
    ('\u{110BD}', '\u{110BD}'), // Kaithi number sign
    ('\u{110CD}', '\u{110CD}'), // Kaithi number sign above
    ('\u{13430}', '\u{1343F}'), // Egyptian hieroglyph format controls
    ('\u{1BCA0}', '\u{1BCA3}'), // shorthand format controls
    ('\u{1D173}', '\u{1D17A}'), // musical symbol beams and slurs
    ('\u{E0001}', '\u{E0001}'), // language tag
    ('\u{E0020}', '\u{E007F}'), // tag characters
];

/// Is `c` a character no user name may hold: a control character (Cc: NUL, ESC, CR, LF, ...),
/// a format character (Cf: bidi overrides and isolates, zero-width spaces and joiners, the
/// byte-order mark, the soft hyphen, ...) or a line or paragraph separator (U+2028, U+2029)?
/// Each is invisible, or rearranges or breaks the text around it in a terminal, a log viewer or
/// a web page.
pub fn is_control_or_format(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}')
        || FORMAT_CHARACTERS
            .iter()
            .any(|&(first, last)| (first..=last).contains(&c))
}

/// `name` as it may be shown in a log line or on a terminal: each character that
/// [`is_control_or_format`] finds written as `\u{202e}`, and `\` as `\\`, so that what a viewer
/// shows is what the name holds and nothing it holds can rearrange the line.
pub fn escape_name(name: &str) -> Cow<'_, str> {
    if !name.chars().any(|c| c == '\\' || is_control_or_format(c)) {
        return Cow::Borrowed(name);
    }
    let mut escaped = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if c == '\\' {
            escaped.push_str("\\\\");
        } else if is_control_or_format(c) {
            escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

/// The TURN REST API password for `username`: `base64(HMAC-SHA1(secret, username))`.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac_sha1(secret, &[username.as_bytes()]))
}

/// Keys from the configuration, then from the Redis store when there is one.
pub struct Credentials {
    /// Swapped whole on reload; read lock-free.
    statics: arc_swap::ArcSwap<StaticCredentials>,
    redis: Option<Arc<redis::RedisStore>>,
}

impl Credentials {
    pub fn new(statics: StaticCredentials, redis: Option<Arc<redis::RedisStore>>) -> Self {
        Credentials {
            statics: arc_swap::ArcSwap::from_pointee(statics),
            redis,
        }
    }

    /// Replaces the configuration's users, secrets and `max-rest-ttl` (reload).
    pub fn set_statics(&self, statics: StaticCredentials) {
        self.statics.store(Arc::new(statics));
    }
}

impl CredentialStore for Credentials {
    fn keys(
        &self,
        username: &str,
        realm: &str,
        algorithm: PasswordAlgorithm,
        now_unix: u64,
        candidate: &mut dyn FnMut(&Key, CredentialKind) -> bool,
    ) -> Lookup {
        let statics = self.statics.load();
        if realm != statics.realm {
            return Lookup::Unknown;
        }
        let snapshot = self.redis.as_ref().map(|store| store.snapshot());
        if let Some(snapshot) = &snapshot
            && snapshot.is_revoked(username, now_unix)
        {
            return Lookup::Unknown;
        }
        // Overrides (`disabled` among them) name long-term users, never REST ids.
        let disabled = |name: &str| {
            snapshot
                .as_ref()
                .is_some_and(|snapshot| snapshot.limits(name).disabled)
        };
        // A user in the configuration is answered by the configuration alone.
        if statics.users.contains_key(username) {
            if disabled(username) {
                return Lookup::Unknown;
            }
            return statics.keys(username, realm, algorithm, now_unix, candidate);
        }
        let mut accepted = false;
        let local = statics.keys(username, realm, algorithm, now_unix, &mut |key, kind| {
            accepted = candidate(key, kind);
            accepted
        });
        if accepted || matches!(local, Lookup::Expired | Lookup::TooLongLived) {
            return local;
        }
        let (Some(store), Some(snapshot)) = (&self.redis, &snapshot) else {
            return local;
        };
        if !store.usable(now_unix) {
            return Lookup::Unavailable;
        }
        if let Some(key) = snapshot.users.get(username) {
            if disabled(username) {
                return Lookup::Unknown;
            }
            let key = match algorithm {
                PasswordAlgorithm::Md5 => Some(*key).filter(|k| k.algorithm() == algorithm),
                PasswordAlgorithm::Sha256 => {
                    snapshot.sha256_keys.get(username).map(|k| Key::Sha256(*k))
                }
            };
            if let Some(key) = key {
                candidate(&key, CredentialKind::LongTerm);
            }
            return Lookup::Known;
        }
        let Some((expiry, _)) = parse_rest_username(username) else {
            return local;
        };
        if snapshot.secrets.is_empty() {
            return local;
        }
        if let Err(refused) = check_rest_expiry(expiry, now_unix, statics.max_rest_ttl) {
            return refused;
        }
        offer_rest_keys(&snapshot.secrets, username, realm, algorithm, candidate);
        Lookup::Known
    }

    /// The configuration's users first, then the store's: the username found goes through
    /// [`keys`](CredentialStore::keys), so revocation, `disabled` and a stale store apply as
    /// they do to USERNAME.
    fn keys_by_userhash(
        &self,
        hash: &[u8; 32],
        realm: &str,
        algorithm: PasswordAlgorithm,
        now_unix: u64,
        candidate: &mut dyn FnMut(&str, &Key, CredentialKind) -> bool,
    ) -> Lookup {
        let statics = self.statics.load();
        if realm != statics.realm {
            return Lookup::Unknown;
        }
        let snapshot = self.redis.as_ref().map(|store| store.snapshot());
        let name = statics.userhashes.get(hash).or_else(|| {
            snapshot
                .as_ref()
                .and_then(|snapshot| snapshot.userhashes.get(hash))
        });
        match name {
            Some(name) => self.keys(name, realm, algorithm, now_unix, &mut |key, kind| {
                candidate(name, key, kind)
            }),
            // Not found, but the store may have the user and cannot be trusted now.
            None if self
                .redis
                .as_ref()
                .is_some_and(|store| !store.usable(now_unix)) =>
            {
                Lookup::Unavailable
            }
            None => Lookup::Unknown,
        }
    }

    fn withdrawn(&self, username: &str, kind: CredentialKind, now_unix: u64) -> bool {
        let Some(store) = &self.redis else {
            return false;
        };
        let snapshot = store.snapshot();
        if snapshot.is_revoked(username, now_unix) {
            return true;
        }
        if kind == CredentialKind::Rest {
            // A REST username stands on its own: revocation is all that ends it early.
            return false;
        }
        if snapshot.limits(username).disabled {
            return true;
        }
        // A stored user removed from Redis; config users stand on their own. While Redis
        // cannot be trusted, live calls are left alone.
        let stored_user = !self.statics.load().users.contains_key(username);
        stored_user && store.usable(now_unix) && !snapshot.users.contains_key(username)
    }

    fn limits(&self, user: &Principal) -> UserLimits {
        self.redis
            .as_ref()
            .map(|store| {
                let snapshot = store.snapshot();
                match user.kind {
                    CredentialKind::LongTerm => snapshot.limits(&user.id),
                    CredentialKind::Rest => snapshot.defaults,
                }
            })
            .unwrap_or_default()
    }

    fn total_allocations(&self) -> Option<u32> {
        self.redis
            .as_ref()
            .and_then(|store| store.snapshot().total_allocations)
    }
}

/// The keys of a user of the configuration file.
struct StaticUser {
    md5: [u8; 16],
    /// `None` for a user configured by its MD5 key alone (no `sha256-key`): no SHA-256 key can
    /// be derived from the MD5 one.
    sha256: Option<[u8; 32]>,
}

/// Users, REST API secrets and `max-rest-ttl` from the configuration file.
pub struct StaticCredentials {
    realm: String,
    users: HashMap<String, StaticUser>,
    /// USERHASH (SHA-256 of `name:realm`) → name, for every user.
    userhashes: HashMap<[u8; 32], String>,
    secrets: Vec<Vec<u8>>,
    /// `[auth] max-rest-ttl` in seconds; it bounds Redis secrets' credentials too.
    max_rest_ttl: u64,
}

impl StaticCredentials {
    /// Precomputes every static user's keys and USERHASH for `realm`.
    pub fn new(auth: &Auth, realm: &str) -> Self {
        let users: HashMap<String, StaticUser> = auth
            .users
            .iter()
            .map(|user| {
                let keys = match &user.credential {
                    UserCredential::Password(password) => StaticUser {
                        md5: long_term_key(&user.name, realm, password),
                        sha256: Some(long_term_key_sha256(&user.name, realm, password)),
                    },
                    UserCredential::Key { md5, sha256 } => StaticUser {
                        md5: *md5,
                        sha256: *sha256,
                    },
                };
                (user.name.clone(), keys)
            })
            .collect();
        let userhashes = users
            .keys()
            .map(|name| (userhash(name, realm), name.clone()))
            .collect();
        StaticCredentials {
            realm: realm.to_owned(),
            users,
            userhashes,
            secrets: auth.secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            max_rest_ttl: auth.max_rest_ttl.as_secs(),
        }
    }
}

impl CredentialStore for StaticCredentials {
    fn keys(
        &self,
        username: &str,
        realm: &str,
        algorithm: PasswordAlgorithm,
        now_unix: u64,
        candidate: &mut dyn FnMut(&Key, CredentialKind) -> bool,
    ) -> Lookup {
        if realm != self.realm {
            return Lookup::Unknown;
        }
        if let Some(user) = self.users.get(username) {
            let key = match algorithm {
                PasswordAlgorithm::Md5 => Some(Key::Md5(user.md5)),
                PasswordAlgorithm::Sha256 => user.sha256.map(Key::Sha256),
            };
            if let Some(key) = key {
                candidate(&key, CredentialKind::LongTerm);
            }
            return Lookup::Known;
        }
        if self.secrets.is_empty() {
            return Lookup::Unknown;
        }
        let Some((expiry, _)) = parse_rest_username(username) else {
            return Lookup::Unknown;
        };
        if let Err(refused) = check_rest_expiry(expiry, now_unix, self.max_rest_ttl) {
            return refused;
        }
        offer_rest_keys(&self.secrets, username, realm, algorithm, candidate);
        Lookup::Known
    }

    fn keys_by_userhash(
        &self,
        hash: &[u8; 32],
        realm: &str,
        algorithm: PasswordAlgorithm,
        now_unix: u64,
        candidate: &mut dyn FnMut(&str, &Key, CredentialKind) -> bool,
    ) -> Lookup {
        match self.userhashes.get(hash) {
            Some(name) if realm == self.realm => {
                self.keys(name, realm, algorithm, now_unix, &mut |key, kind| {
                    candidate(name, key, kind)
                })
            }
            _ => Lookup::Unknown,
        }
    }
}

/// Offers the key of `algorithm` of a REST API username under each secret, in order, until one
/// is taken. The password a secret derives is known here, so both algorithms can be offered.
fn offer_rest_keys(
    secrets: &[Vec<u8>],
    username: &str,
    realm: &str,
    algorithm: PasswordAlgorithm,
    candidate: &mut dyn FnMut(&Key, CredentialKind) -> bool,
) {
    for secret in secrets {
        let password = rest_password(secret, username);
        let key = match algorithm {
            PasswordAlgorithm::Md5 => Key::Md5(long_term_key(username, realm, &password)),
            PasswordAlgorithm::Sha256 => {
                Key::Sha256(long_term_key_sha256(username, realm, &password))
            }
        };
        if candidate(&key, CredentialKind::Rest) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::User;

    /// An MD5 key, as the store offers it.
    fn md5_key(username: &str, realm: &str, password: &str) -> Key {
        Key::Md5(long_term_key(username, realm, password))
    }

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
                credential: UserCredential::Key {
                    md5: long_term_key("bob", "r", "builder"),
                    sha256: None,
                },
            },
        ];
        auth
    }

    fn collect(store: &StaticCredentials, username: &str, now: u64) -> (Lookup, Vec<Key>) {
        let mut keys = Vec::new();
        let lookup = store.keys(username, "r", PasswordAlgorithm::Md5, now, &mut |k, _| {
            keys.push(*k);
            false
        });
        (lookup, keys)
    }

    /// The kinds of the keys offered for `username`.
    fn kinds(store: &impl CredentialStore, username: &str, now: u64) -> Vec<CredentialKind> {
        let mut kinds = Vec::new();
        store.keys(
            username,
            "r",
            PasswordAlgorithm::Md5,
            now,
            &mut |_, kind| {
                kinds.push(kind);
                false
            },
        );
        kinds
    }

    #[test]
    fn static_users_by_password_or_key() {
        let store = StaticCredentials::new(&auth(&[]), "r");
        assert_eq!(
            collect(&store, "alice", 0),
            (Lookup::Known, vec![md5_key("alice", "r", "wonderland")])
        );
        assert_eq!(
            collect(&store, "bob", 0),
            (Lookup::Known, vec![md5_key("bob", "r", "builder")])
        );
        assert_eq!(collect(&store, "carol", 0), (Lookup::Unknown, vec![]));
        let mut called = false;
        let other_realm = store.keys(
            "alice",
            "elsewhere",
            PasswordAlgorithm::Md5,
            0,
            &mut |_, _| {
                called = true;
                true
            },
        );
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
                md5_key(username, "r", &rest_password(b"new", username)),
                md5_key(username, "r", &rest_password(b"old", username)),
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

    fn redis_store(now: u64, fill: impl FnOnce(&mut redis::Snapshot)) -> Arc<redis::RedisStore> {
        let store = Arc::new(redis::RedisStore::new(std::time::Duration::from_secs(60)));
        let mut snapshot = redis::Snapshot::default();
        fill(&mut snapshot);
        store.install(snapshot, now);
        store.set_connected(true);
        store
    }

    fn layered(
        now: u64,
        fill: impl FnOnce(&mut redis::Snapshot),
    ) -> (Credentials, Arc<redis::RedisStore>) {
        let store = redis_store(now, fill);
        let credentials = Credentials::new(
            StaticCredentials::new(&auth(&["config"]), "r"),
            Some(store.clone()),
        );
        (credentials, store)
    }

    fn offered(store: &impl CredentialStore, username: &str, now: u64) -> (Lookup, Vec<Key>) {
        let mut keys = Vec::new();
        let lookup = store.keys(username, "r", PasswordAlgorithm::Md5, now, &mut |k, _| {
            keys.push(*k);
            false
        });
        (lookup, keys)
    }

    /// The SHA-256 keys offered for `username` (by name, or by its USERHASH when `by_hash`),
    /// with the name the store found.
    fn sha256_keys(
        store: &impl CredentialStore,
        username: &str,
        by_hash: bool,
        now: u64,
    ) -> (Lookup, Vec<(String, Key)>) {
        let mut keys = Vec::new();
        let lookup = if by_hash {
            store.keys_by_userhash(
                &userhash(username, "r"),
                "r",
                PasswordAlgorithm::Sha256,
                now,
                &mut |name, k, _| {
                    keys.push((name.to_owned(), *k));
                    false
                },
            )
        } else {
            store.keys(
                username,
                "r",
                PasswordAlgorithm::Sha256,
                now,
                &mut |k, _| {
                    keys.push((username.to_owned(), *k));
                    false
                },
            )
        };
        (lookup, keys)
    }

    #[test]
    fn sha256_keys_exist_where_a_password_is_known() {
        let now = 1_700_000_000;
        let (credentials, store) = layered(now, |s| {
            s.users.insert("carol".into(), md5_key("carol", "r", "pw"));
            s.sha256_keys
                .insert("carol".into(), long_term_key_sha256("carol", "r", "pw"));
            s.users.insert("dan".into(), md5_key("dan", "r", "pw"));
            // A SHA-256 key without its user authenticates nobody.
            s.sha256_keys
                .insert("ghost".into(), long_term_key_sha256("ghost", "r", "pw"));
            s.index_userhashes("r");
        });
        let sha =
            |name: &str, password: &str| Key::Sha256(long_term_key_sha256(name, "r", password));
        for by_hash in [false, true] {
            // Config user with a password: both keys; by its key: MD5 only.
            assert_eq!(
                sha256_keys(&credentials, "alice", by_hash, now),
                (
                    Lookup::Known,
                    vec![("alice".into(), sha("alice", "wonderland"))]
                )
            );
            assert_eq!(
                sha256_keys(&credentials, "bob", by_hash, now),
                (Lookup::Known, vec![])
            );
            // Redis users: with a stored SHA-256 key, and without.
            assert_eq!(
                sha256_keys(&credentials, "carol", by_hash, now),
                (Lookup::Known, vec![("carol".into(), sha("carol", "pw"))])
            );
            assert_eq!(
                sha256_keys(&credentials, "dan", by_hash, now),
                (Lookup::Known, vec![])
            );
            assert_eq!(sha256_keys(&credentials, "ghost", by_hash, now).1, vec![]);
        }
        // A REST username: by name both algorithms, by hash unknown.
        let rest = "1700000100:erin";
        let password = rest_password(b"config", rest);
        assert_eq!(
            sha256_keys(&credentials, rest, false, now),
            (Lookup::Known, vec![(rest.into(), sha(rest, &password))])
        );
        assert_eq!(
            sha256_keys(&credentials, rest, true, now),
            (Lookup::Unknown, vec![])
        );
        // A store that cannot be trusted: a hash it might know is refused, not unknown.
        store.set_connected(false);
        assert_eq!(
            sha256_keys(&credentials, "zed", true, now + 3600).0,
            Lookup::Unavailable
        );
        assert_eq!(parse_sha256_key_hex(&"ab".repeat(32)), Some([0xab; 32]));
        for bad in [
            "ab".repeat(31),
            "ab".repeat(33),
            "zz".repeat(32),
            "é".repeat(32),
        ] {
            assert_eq!(parse_sha256_key_hex(&bad), None, "{bad}");
        }
    }

    #[test]
    fn redis_users_and_secrets_come_after_the_config() {
        let now = 1_700_000_000;
        let (credentials, _) = layered(now, |s| {
            s.users.insert("carol".into(), md5_key("carol", "r", "pw"));
            s.secrets = vec![b"redis-new".to_vec(), b"redis-old".to_vec()];
        });
        assert_eq!(
            offered(&credentials, "carol", now),
            (Lookup::Known, vec![md5_key("carol", "r", "pw")])
        );
        // A config user is answered from the config alone.
        assert_eq!(offered(&credentials, "alice", now).1.len(), 1);
        // REST: the config's secret first, then Redis's, newest first.
        let username = "1700000100:dave";
        let (lookup, keys) = offered(&credentials, username, now);
        assert_eq!(lookup, Lookup::Known);
        let key = |secret: &[u8]| md5_key(username, "r", &rest_password(secret, username));
        assert_eq!(
            keys,
            vec![key(b"config"), key(b"redis-new"), key(b"redis-old")]
        );
        assert_eq!(
            offered(&credentials, "1699999999:dave", now).0,
            Lookup::Expired
        );
        assert_eq!(offered(&credentials, "nobody", now).0, Lookup::Unknown);
    }

    #[test]
    fn revoked_and_disabled_users_do_not_authenticate() {
        let now = 1_700_000_000;
        let (credentials, _) = layered(now, |s| {
            s.users.insert("carol".into(), md5_key("carol", "r", "pw"));
            s.revoked.insert("1700000100:dave".into(), 1_700_000_100);
            s.overrides.insert(
                "carol".into(),
                redis::UserOverride {
                    disabled: true,
                    ..Default::default()
                },
            );
        });
        assert_eq!(
            offered(&credentials, "carol", now),
            (Lookup::Unknown, vec![])
        );
        assert_eq!(
            offered(&credentials, "1700000100:dave", now),
            (Lookup::Unknown, vec![])
        );
        let (rest, long_term) = (CredentialKind::Rest, CredentialKind::LongTerm);
        assert!(credentials.withdrawn("1700000100:dave", rest, now));
        assert!(!credentials.withdrawn("1700000100:erin", rest, now));
        // Disabled, and removed from the store, withdraw a stored user; config users stay.
        assert!(credentials.withdrawn("carol", long_term, now));
        assert!(credentials.withdrawn("gone", long_term, now));
        assert!(!credentials.withdrawn("alice", long_term, now));
    }

    #[test]
    fn a_stale_store_refuses_instead_of_allowing() {
        let now = 1_700_000_000;
        let (credentials, store) = layered(now, |s| {
            s.users.insert("carol".into(), md5_key("carol", "r", "pw"));
        });
        store.set_connected(false);
        // Within stale-for (60 s) the snapshot still serves...
        assert_eq!(offered(&credentials, "carol", now + 60).0, Lookup::Known);
        // ...after it, whatever needs Redis is unavailable, while config users still work.
        assert_eq!(
            offered(&credentials, "carol", now + 61).0,
            Lookup::Unavailable
        );
        assert_eq!(
            offered(&credentials, "mallory", now + 61).0,
            Lookup::Unavailable
        );
        assert_eq!(offered(&credentials, "alice", now + 61).0, Lookup::Known);
        // Never loaded at all: unavailable too.
        let never = Credentials::new(
            StaticCredentials::new(&auth(&[]), "r"),
            Some(Arc::new(redis::RedisStore::new(
                std::time::Duration::from_secs(60),
            ))),
        );
        assert_eq!(offered(&never, "carol", now).0, Lookup::Unavailable);
    }

    #[test]
    fn rest_expiry_is_bounded_by_max_rest_ttl() {
        let mut config = auth(&["s"]);
        config.max_rest_ttl = std::time::Duration::from_secs(3600);
        let store = StaticCredentials::new(&config, "r");
        let now = 1_700_000_000;
        let at = |expiry: u64| collect(&store, &format!("{expiry}:carol"), now).0;
        assert_eq!(at(now), Lookup::Known, "valid through its last second");
        assert_eq!(at(now - 1), Lookup::Expired);
        let horizon = now + 3600 + REST_CLOCK_SKEW;
        assert_eq!(at(horizon), Lookup::Known, "max-rest-ttl plus the skew");
        assert_eq!(at(horizon + 1), Lookup::TooLongLived);
        assert_eq!(at(253_402_300_799), Lookup::TooLongLived, "9999-12-31");
        assert_eq!(at(u64::MAX), Lookup::TooLongLived);
        // Even when the clock reading itself is absurd, nothing overflows.
        assert_eq!(
            collect(&store, &format!("{}:carol", u64::MAX), u64::MAX).0,
            Lookup::Known
        );
        // An expiry beyond u64 is no REST username at all.
        assert_eq!(
            collect(&store, "18446744073709551616:carol", now).0,
            Lookup::Unknown
        );
        // The same bound holds for Redis secrets.
        let store = redis_store(now, |s| s.secrets = vec![b"redis".to_vec()]);
        let layered = Credentials::new(StaticCredentials::new(&config, "r"), Some(store));
        let username = format!("{}:carol", horizon + 1);
        assert_eq!(offered(&layered, &username, now).0, Lookup::TooLongLived);
        let username = format!("{horizon}:carol");
        assert_eq!(offered(&layered, &username, now).1.len(), 2);
    }

    #[test]
    fn keys_say_which_kind_of_credential_they_stand_for() {
        let now = 1_700_000_000;
        let (credentials, _) = layered(now, |s| {
            s.users.insert("carol".into(), md5_key("carol", "r", "pw"));
            // A stored user whose name has the form of a REST username.
            s.users.insert(
                "1700000100:zed".into(),
                md5_key("1700000100:zed", "r", "pw"),
            );
            s.secrets = vec![b"redis".to_vec()];
        });
        let (rest, long_term) = (CredentialKind::Rest, CredentialKind::LongTerm);
        assert_eq!(kinds(&credentials, "alice", now), [long_term]);
        assert_eq!(kinds(&credentials, "carol", now), [long_term]);
        assert_eq!(kinds(&credentials, "1700000100:dave", now), [rest, rest]);
        // The config's secret first (a REST key), then the stored user of that name.
        assert_eq!(
            kinds(&credentials, "1700000100:zed", now),
            [rest, long_term]
        );
        assert_eq!(
            Principal::new(rest, "1700000100:dave"),
            Principal {
                kind: rest,
                id: "dave".into()
            }
        );
        assert_eq!(
            &*Principal::new(long_term, "1700000100:zed").id,
            "1700000100:zed"
        );
        assert_ne!(
            Principal::new(rest, "1:alice"),
            Principal::new(long_term, "alice")
        );
    }

    #[test]
    fn overrides_name_long_term_users_not_rest_ids() {
        let now = 1_700_000_000;
        let (credentials, _) = layered(now, |s| {
            s.users.insert("carol".into(), md5_key("carol", "r", "pw"));
            s.defaults.allocations = Some(7);
            for name in ["carol", "alice", "dave"] {
                s.overrides.insert(
                    name.into(),
                    redis::UserOverride {
                        allocations: Some(1),
                        disabled: true,
                        ..Default::default()
                    },
                );
            }
        });
        let (rest, long_term) = (CredentialKind::Rest, CredentialKind::LongTerm);
        // Disabled long-term users, stored or configured, are refused and withdrawn...
        assert_eq!(offered(&credentials, "carol", now).0, Lookup::Unknown);
        assert_eq!(offered(&credentials, "alice", now).0, Lookup::Unknown);
        assert!(credentials.withdrawn("alice", long_term, now));
        // ...REST ids of the same names are not.
        for username in ["1700000100:carol", "1700000100:alice", "1700000100:dave"] {
            assert_eq!(offered(&credentials, username, now).0, Lookup::Known);
            assert!(!credentials.withdrawn(username, rest, now));
        }
        let limits = |kind, name| credentials.limits(&Principal::new(kind, name));
        assert_eq!(limits(long_term, "carol").allocations, Some(1));
        assert_eq!(limits(rest, "1700000100:carol").allocations, Some(7));
    }

    #[test]
    fn control_and_format_characters_are_found_and_escaped() {
        let hidden = [
            '\u{0}',
            '\u{1b}',
            '\n',
            '\r',
            '\u{7f}',
            '\u{85}',
            '\u{ad}',
            '\u{61c}',
            '\u{180e}',
            '\u{200b}',
            '\u{200d}',
            '\u{200e}',
            '\u{200f}',
            '\u{2028}',
            '\u{2029}',
            '\u{202a}',
            '\u{202e}',
            '\u{2060}',
            '\u{2064}',
            '\u{2066}',
            '\u{2069}',
            '\u{206f}',
            '\u{feff}',
            '\u{fffb}',
            '\u{1343f}',
            '\u{e0001}',
            '\u{e007f}',
        ];
        for c in hidden {
            assert!(is_control_or_format(c), "{:x}", u32::from(c));
        }
        let shown = [
            'a',
            'Z',
            ' ',
            ':',
            'ë',
            '山',
            '田',
            '\u{2065}',
            '\u{2070}',
            '\u{fe0f}',
            '\u{301}',
            '😀',
            '\u{e0080}',
            '\u{13440}',
        ];
        for c in shown {
            assert!(!is_control_or_format(c), "{:x}", u32::from(c));
        }
        // The table is sorted and its ranges are disjoint.
        for pair in FORMAT_CHARACTERS.windows(2) {
            assert!(pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0, "{pair:?}");
        }
        assert_eq!(escape_name("Zoë 山田"), "Zoë 山田");
        assert!(matches!(escape_name("alice"), Cow::Borrowed(_)));
        assert_eq!(escape_name("ali\u{202e}ecnis"), "ali\\u{202e}ecnis");
        assert_eq!(escape_name("a\0b\u{1b}[31m"), "a\\u{0}b\\u{1b}[31m");
        // A name that spells an escape cannot pass for an escaped one.
        assert_eq!(escape_name("a\\u{202e}"), "a\\\\u{202e}");
    }

    #[test]
    fn user_id_is_the_part_after_the_expiry() {
        assert_eq!(user_id("1700000000:alice"), "alice");
        assert_eq!(user_id("1700000000"), "1700000000");
        assert_eq!(user_id("alice"), "alice");
        assert_eq!(user_id("abc:alice"), "abc:alice");
    }
}
