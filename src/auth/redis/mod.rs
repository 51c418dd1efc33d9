//! The Redis credential store: shared secrets, users, per-user overrides and revocations, held
//! in a local snapshot that the packet path reads without waiting. Pub/sub events refresh it
//! within a second of a change; a full reload follows every reconnect, since pub/sub loses what
//! is published while disconnected.
//!
//! Usernames and realms only ever travel as binary-safe command arguments (RESP bulk strings);
//! the one glob pattern (coturn's user keys) escapes the realm, so `*`, `?`, `[`, `\`, CR, LF
//! and NUL are data, never syntax.//!
//! `connection.rs` opens the connection and times commands out; `layout.rs` names the keys;
//! `store.rs` holds the snapshot and the health; `load.rs` reads a snapshot; `follow.rs` keeps
//! the store in step; `admin.rs` changes Redis for the CLI.

mod admin;
mod connection;
mod follow;
mod layout;
mod load;
mod store;

pub use admin::Admin;
pub(crate) use connection::timed;
pub use connection::{COMMAND_TIMEOUT, connect};
pub use follow::run;
pub use layout::Layout;
pub use load::load;
pub use store::{Health, RedisStore, Snapshot, UserOverride};

/// Event payloads on the events channel.
const EVENT_RELOAD: &[u8] = b"reload";
const EVENT_REVOKE: &[u8] = b"revoke\n";
