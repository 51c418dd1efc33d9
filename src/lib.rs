//! turnpike: a STUN/TURN NAT-traversal server.
//!
//! # Layout
//!
//! Each layer uses only the ones listed above it:
//!
//! - [`stun`]: the wire format. Parses datagrams in place, writes replies into caller-owned
//!   buffers, checks MESSAGE-INTEGRITY and FINGERPRINT. Knows nothing of time or state.
//! - [`config`]: TOML to a typed, validated [`config::Config`].
//! - [`auth`]: where long-term keys come from (static users, TURN REST API secrets).
//! - [`turn`]: the sans-IO protocol core: allocations, permissions, channels, nonces, peer
//!   policy. Driven with `now` and datagrams; never reads the clock or touches a socket.
//! - [`net`]: the tokio shell: one worker per core, listeners, relay sockets, timers.
//! - [`http`]: the HTTP API (credentials for app backends), off the packet path.
//!
//! The binary (`src/main.rs`) is the CLI on top: `serve`, `check-config`, `credentials`.

pub mod auth;
pub mod config;
pub mod http;
pub mod net;
pub mod notify;
pub mod stun;
pub mod turn;
