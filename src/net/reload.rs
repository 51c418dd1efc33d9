//! Reload: applies a new configuration to the running workers without dropping an
//! allocation (listeners, credentials, limits, policy, TLS), and says what needs a restart.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::auth::{Credentials, StaticCredentials};
use crate::config::{Config, Transport};
use crate::turn::{CoreConfig, HostAddresses, Nonces, ReflectionBudget};

use super::host::{host_addresses, log_host_change};
use super::settings::{core_config, peer_policy};
use super::socket::{bind_tcp, bind_udp};
use super::{
    BoundListener, Command, NodeHandle, OffloadState, Reconfiguration, offload, tls_acceptor,
    worker,
};

/// What a reload needs to rebuild the workers' settings.
pub(super) struct ReloadContext {
    pub(super) credentials: Arc<Credentials>,
    pub(super) tls: Arc<arc_swap::ArcSwapOption<tokio_rustls::TlsAcceptor>>,
    pub(super) own: Vec<SocketAddr>,
    pub(super) relay_v4: Option<Ipv4Addr>,
    pub(super) epoch: Instant,
    pub(super) unix_at_epoch: u64,
    pub(super) nonce_key: [u8; 32],
    pub(super) workers: usize,
    /// Whether the kernel fast path is active (fixed for the process's life).
    pub(super) offload: bool,
    /// The host addresses the workers were last given. Held while a new set is enumerated and
    /// sent, so the workers always get the sets in the order they were enumerated.
    pub(super) host: Mutex<HostAddresses>,
}

impl NodeHandle {
    /// Opens the listeners `config` adds (one socket per worker) and closes those it removes;
    /// returns the new set. A listener that cannot be bound fails the reload before anything
    /// changed. Connections already accepted on a removed TCP/TLS listener go on.
    fn apply_listeners(&self, config: &Config) -> Result<Vec<BoundListener>, String> {
        let current = self.listeners();
        let matches = |wanted: &crate::config::Listen, bound: &BoundListener| bound.is(wanted);
        let removed: Vec<BoundListener> = current
            .iter()
            .filter(|bound| !config.listen.iter().any(|w| matches(w, bound)))
            .copied()
            .collect();
        let mut kept: Vec<BoundListener> = current
            .iter()
            .filter(|bound| !removed.contains(bound))
            .copied()
            .collect();
        let mut opened = Vec::new();
        for (index, wanted) in config.listen.iter().enumerate() {
            if current.iter().any(|bound| matches(wanted, bound)) {
                continue;
            }
            let mut address = wanted.address;
            let mut sockets = Vec::new();
            for _ in 0..self.reload.workers {
                let failed = |e: std::io::Error| {
                    format!(
                        "listen[{index}] ({} {address}): cannot bind: {e}",
                        wanted.transport
                    )
                };
                let socket = match wanted.transport {
                    Transport::Udp => {
                        let socket = bind_udp(address).map_err(failed)?;
                        address = socket.local_addr().map_err(failed)?;
                        worker::NewListener::Udp(socket)
                    }
                    Transport::Tcp | Transport::Tls => {
                        let socket = bind_tcp(address).map_err(failed)?;
                        address = socket.local_addr().map_err(failed)?;
                        worker::NewListener::Tcp(socket, wanted.transport == Transport::Tls)
                    }
                };
                sockets.push(socket);
            }
            opened.push((
                BoundListener {
                    transport: wanted.transport,
                    address,
                },
                sockets,
            ));
        }
        // Before an added listener accepts, and as a removed one stops: how each admits.
        let all: Vec<BoundListener> = kept
            .iter()
            .copied()
            .chain(opened.iter().map(|(bound, _)| *bound))
            .collect();
        self.streams.set_proxies(&config.listen, &all);
        for (bound, sockets) in opened {
            for (worker, socket) in sockets.into_iter().enumerate() {
                self.commander.send_to(
                    worker,
                    Command::AddListener(Arc::new(Mutex::new(Some(socket)))),
                );
            }
            tracing::info!(transport = %bound.transport, address = %bound.address, "listening");
            kept.push(bound);
        }
        for bound in &removed {
            self.commander
                .broadcast(|| Command::RemoveListener(bound.transport, bound.address));
            tracing::info!(transport = %bound.transport, address = %bound.address, "stopped listening");
        }
        *self.listeners.lock().unwrap_or_else(|e| e.into_inner()) = kept.clone();
        Ok(kept)
    }

    /// Applies a configuration to the running workers without dropping an allocation:
    /// listeners (added ones opened, removed ones closed), users, secrets, realm, limits,
    /// lifetimes, peer policy, relay port range, stream limits and the TLS certificate (read
    /// again from its files). `config` is what [`crate::config::reload::plan`] says is to run:
    /// keys that need a restart already hold their running values. Returns what else it could
    /// not apply (needs a restart). Nothing is applied if the certificate cannot be loaded or an
    /// added listener cannot be bound.
    pub fn reload(&self, config: &Config) -> Result<Vec<String>, String> {
        let context = &self.reload;
        let tls = match &config.tls {
            Some(files) => Some(tls_acceptor(&files.certificate, &files.private_key)?),
            None => None,
        };
        let listeners = self.apply_listeners(config)?;
        let restart = self.fast_path_uncovered(&listeners);
        context
            .credentials
            .set_statics(StaticCredentials::new(&config.auth, &config.realm));
        // Enumerated afresh, and held until the workers have been sent the new policy.
        let mut host = context.host.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fresh) = host_addresses() {
            log_host_change(&host, &fresh, "reload");
            *host = fresh;
        }
        let reconfiguration = Arc::new(Reconfiguration {
            core: CoreConfig {
                offload: context.offload,
                ..core_config(
                    config,
                    context.relay_v4,
                    context.epoch,
                    context.unix_at_epoch,
                )
            },
            policy: peer_policy(
                config,
                &listeners,
                &context.own,
                context.relay_v4,
                host.clone(),
            ),
            nonces: Nonces::new(context.nonce_key, context.epoch, config.auth.nonce_lifetime),
            ports: config.relay.ports,
            redact: config.log.redact,
        });
        self.commander
            .broadcast(|| Command::Reconfigure(reconfiguration.clone()));
        drop(host);
        self.streams.set(&config.limits);
        self.limits
            .sources
            .set(ReflectionBudget::from_limits(&config.limits));
        if let Some(tls) = tls {
            context.tls.store(Some(Arc::new(tls)));
        }
        Ok(restart)
    }

    /// What the kernel fast path does not cover among the UDP listeners: one a reload added on
    /// an interface the program is not attached to is relayed in user space until a restart
    /// attaches it there (the program is attached once, at start).
    fn fast_path_uncovered(&self, listeners: &[BoundListener]) -> Vec<String> {
        let Some(fast_path) = &self.fast_path else {
            return Vec::new();
        };
        let addresses = OffloadState::carried(listeners, self.reload.relay_v4);
        match offload::interfaces_for(&addresses) {
            Ok(wanted) => wanted
                .into_iter()
                .filter(|interface| !fast_path.interfaces().contains(interface))
                .map(|interface| format!("listen (the kernel fast path on {interface})"))
                .collect(),
            Err(why) => vec![format!("listen (the kernel fast path: {why})")],
        }
    }
}
