//! turnpike: a STUN/TURN NAT-traversal server.
//!
//! # Layout
//!
//! Each layer uses only the ones listed above it (the core comes right after the wire format:
//! the configuration names its concepts, such as [`turn::Transport`], and the credential
//! stores implement its [`turn::credentials::CredentialStore`]):
//!
//! - [`stun`]: the wire format. Parses datagrams in place, writes replies into caller-owned
//!   buffers, checks MESSAGE-INTEGRITY and FINGERPRINT. Knows nothing of time or state.
//! - [`turn`]: the sans-IO protocol core: allocations, permissions, channels, nonces, peer
//!   policy. Driven with `now` and datagrams; never reads the clock or touches a socket.
//!   `turn/mod.rs` holds the `Server` and names the files beside it, one idea each: `api.rs`
//!   (the types the I/O layer exchanges with it), `datapath.rs` (the hot path), `table.rs`
//!   (allocations and their deadlines), `request.rs` and `authenticate.rs`, one file per TURN
//!   method (`allocate.rs`, `refresh.rs`, `create_permission.rs`, `channel_bind.rs`),
//!   `reply.rs`, and `credentials.rs`: what it asks of a credential store, defined here so
//!   that the core imports nothing above [`stun`].
//! - [`config`]: TOML to a typed, validated [`config::Config`]. In `src/config/`: `mod.rs`
//!   (`Config`, `from_toml`, `load`, defaults), `sections.rs` (the typed sections), `raw.rs`
//!   (the keys as written, serde), `validate.rs` (raw to typed; every error names its key),
//!   `units.rs` (bandwidth, port ranges, durations), `text.rs` (values written as strings),
//!   `error.rs` (`ConfigError`, key paths), `redact.rs` (secrets kept out of `Debug`),
//!   `reload.rs` (what a SIGHUP applies and what needs a restart, key by key).
//! - [`auth`]: where long-term keys come from (static users, TURN REST API secrets, the Redis
//!   store shared by many nodes): the implementations of the core's [`turn::credentials::CredentialStore`];
//!   `auth/redis/` the Redis store, one idea a file (connection, key layout,
//!   snapshot, load, follow, admin).
//! - [`net`]: the tokio shell: one worker per core, listeners, relay sockets, timers, the
//!   cluster (registry, quota leases), status snapshots; [`net::offload`], the kernel fast
//!   path (an eBPF program at TC ingress, its source `relay.bpf.c` beside it, and its tables:
//!   `load.rs` attaches it, `entries.rs` writes its channel tables, `counters.rs` reads them).
//!   `net/mod.rs` declares [`net::Node`] and [`net::NodeHandle`]; `node.rs` starts a node,
//!   `handle.rs` answers for it, `command.rs` talks to the workers, `worker/` is one worker
//!   (listeners, relay sockets, commands, timers, fast path, streams: a file each) and
//!   `stream/` its TCP/TLS clients (framing and reading; `writer.rs` the output queue;
//!   `proxy.rs` and `proxied.rs` the PROXY protocol header of listeners behind a load
//!   balancer), which ask the worker only through the `StreamHost` trait.
//! - [`http`]: the HTTP API (credentials, status, allocations, metrics, dashboard), off the
//!   packet path.
//! - [`notify`]: sd_notify for systemd. [`clock`]: the wall clock, read by the I/O layers
//!   only (the core is given the time).
//! - [`client`]: a TURN client over UDP, TCP and TLS (tokio, rustls) built on [`stun`] and the
//!   REST password helper of [`auth`] alone: long-term and REST credentials, Allocate, Refresh,
//!   permissions, channels, ChannelData and Send/Data indications, UDP retransmission, typed
//!   errors. It sends and receives data without allocating (over TLS, rustls allocates per
//!   record). The soak run (`examples/soak.rs`) drives the server with it. Its
//!   [`client::Signer`] holds the long-term credential rules (what a request carries, when a
//!   401 or 438 asks for a retry) without I/O, for the core's tests and the test harness too.
//! - [`load`]: the load generator `turnpike-load` (`src/bin/turnpike-load.rs`): relay,
//!   allocation-rate and hold modes on [`client`] for the handshakes, a batched UDP data path
//!   (epoll, `recvmmsg`/`sendmmsg`), an echo peer and a plain UDP forwarder for reference; one
//!   JSON line per run, with the server's CPU from /proc. Its command line is `load/cli/`.
//! - `fuzzing` (hidden, not part of the API): the bodies of the cargo-fuzz targets in `fuzz/`,
//!   in the library so that `tests/fuzz_corpus.rs` replays the corpora on stable Rust; the
//!   core targets' harness is `fuzzing/core/`, one file per part.
//!
//! The binary (`src/main.rs` the command line, `src/serve.rs` running the server with its
//! signals and reload, `src/admin.rs` the store's commands) is the CLI on top: `serve`,
//! `check-config`, `credentials`, and `secret`/`user`/`revoke` for the Redis store. A second binary,
//! `turnpike-load` (`src/bin/turnpike-load.rs`), runs [`load`].

pub mod auth;
pub mod client;
pub mod clock;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod load;
pub mod logbuf;
pub mod net;
pub mod notify;
pub mod stun;
pub mod turn;
