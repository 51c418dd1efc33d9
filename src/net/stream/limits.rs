//! The limits on stream connections (`max-tcp-connections`, `-per-source`,
//! `stream-idle-timeout`), shared by the workers, and the slot each accepted connection holds.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Listen, Transport};

use super::super::BoundListener;
use super::proxied::{Admission, ProxyListeners};

/// Why a connection was refused a slot.
pub(super) enum Refused {
    /// The node has `max-tcp-connections`.
    Node,
    /// The client's source has `max-tcp-connections-per-source`.
    Source,
}

/// One of the node's `max-tcp-connections` and (once the client is known) of its source's
/// `max-tcp-connections-per-source`, given back when dropped.
pub(super) struct ConnectionSlot {
    limits: Arc<StreamLimits>,
    source: Option<IpAddr>,
}

impl ConnectionSlot {
    /// A slot for a connection from `client`: the node's and its source's.
    pub(super) fn take(
        limits: &Arc<StreamLimits>,
        client: IpAddr,
    ) -> Result<ConnectionSlot, Refused> {
        let mut slot = Self::take_node(limits)?;
        slot.count_source(client)?;
        Ok(slot)
    }

    /// The node's slot only, for a connection whose client is not known yet (a PROXY protocol
    /// header will name it): [`ConnectionSlot::count_source`] follows.
    pub(super) fn take_node(limits: &Arc<StreamLimits>) -> Result<ConnectionSlot, Refused> {
        limits
            .live
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |live| {
                (live < limits.max_connections.load(Ordering::Relaxed)).then_some(live + 1)
            })
            .map_err(|_| Refused::Node)?;
        Ok(ConnectionSlot {
            limits: limits.clone(),
            source: None,
        })
    }

    /// Counts the connection under `client`'s source; refused when the source has its cap
    /// (the slot, dropped, then gives the node's back).
    pub(super) fn count_source(&mut self, client: IpAddr) -> Result<(), Refused> {
        debug_assert!(self.source.is_none(), "a connection has one source");
        let source = source_of(client);
        let cap = self.limits.max_per_source.load(Ordering::Relaxed);
        let mut sources = self
            .limits
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let count = sources.get(&source).copied().unwrap_or(0);
        if cap != 0 && count >= cap {
            return Err(Refused::Source);
        }
        sources.insert(source, count + 1);
        self.source = Some(source);
        Ok(())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(source) = self.source {
            let mut sources = self
                .limits
                .sources
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(count) = sources.get_mut(&source) {
                *count -= 1;
                if *count == 0 {
                    sources.remove(&source);
                }
            }
        }
        self.limits.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Limits the I/O layer enforces on stream clients, shared by the workers (reloadable).
pub(crate) struct StreamLimits {
    pub max_connections: AtomicU32,
    /// 0: no cap per source.
    pub max_per_source: AtomicU32,
    pub idle_timeout_ms: std::sync::atomic::AtomicU64,
    pub live: AtomicU32,
    /// Live connections by source (see [`source_of`]), counted whatever the cap, so that a
    /// reload that sets one finds the counts right. Touched at accept and close only; an entry
    /// lives while its count is above zero, so there are at most `live` of them. Keyed
    /// (SipHash): the keys are chosen by remote hosts.
    pub sources: Mutex<std::collections::HashMap<IpAddr, u32>>,
    /// Which listeners expect a PROXY protocol header, and from whom (read at accept).
    proxies: arc_swap::ArcSwap<ProxyListeners>,
}

impl StreamLimits {
    pub(crate) fn new(limits: &crate::config::Limits) -> StreamLimits {
        StreamLimits {
            max_connections: AtomicU32::new(limits.max_tcp_connections),
            max_per_source: AtomicU32::new(limits.max_tcp_connections_per_source),
            idle_timeout_ms: std::sync::atomic::AtomicU64::new(
                limits.stream_idle_timeout.as_millis() as u64,
            ),
            live: AtomicU32::new(0),
            sources: Mutex::new(std::collections::HashMap::new()),
            proxies: arc_swap::ArcSwap::from_pointee(ProxyListeners::default()),
        }
    }

    /// Says how the listeners `bound` (configured by `listen`) admit connections: at start,
    /// and on a reload before any listener it adds accepts.
    pub(crate) fn set_proxies(&self, listen: &[Listen], bound: &[BoundListener]) {
        self.proxies
            .store(Arc::new(ProxyListeners::new(listen, bound)));
    }

    /// How the listener bound to `local` admits the connection it just accepted.
    pub(super) fn admission(&self, transport: Transport, local: SocketAddr) -> Admission {
        self.proxies.load().admission(transport, local)
    }

    /// Takes the reloadable values of `limits`; connections already open stay.
    pub(crate) fn set(&self, limits: &crate::config::Limits) {
        self.max_connections
            .store(limits.max_tcp_connections, Ordering::Relaxed);
        self.max_per_source
            .store(limits.max_tcp_connections_per_source, Ordering::Relaxed);
        self.idle_timeout_ms.store(
            limits.stream_idle_timeout.as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    pub fn idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed))
    }
}

/// The source a client's connections are counted under for `max-tcp-connections-per-source`:
/// its IPv4 address, or the /64 of its IPv6 address (a host is usually given a whole /64).
fn source_of(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(source_of(ip("192.0.2.7")), source_of(ip("192.0.2.8")));
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("::1")), ip("::"));
    }
}
