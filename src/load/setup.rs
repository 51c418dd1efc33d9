//! Opening and closing the clients of a run with [`crate::client`]: where each one connects
//! from, the 401 round trip and Allocate, the channel or permission towards the echo peer,
//! many at once with a deadline, and Refresh 0 at the end.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::client_cause;
use super::stats::Failures;
use crate::client::{Client, ClientConfig, ClientError, ClientTls, Credentials, Timing, Transport};

/// The channel number every client binds (each has its own allocation).
pub const CHANNEL: u16 = 0x4000;

/// What the TURN clients of a run connect to and as whom.
#[derive(Clone, Debug)]
pub struct TurnTarget {
    pub server: SocketAddr,
    pub transport: Transport,
    pub credentials: Credentials,
    pub tls: Option<ClientTls>,
    /// All clients from the server's own loopback address family default (127.0.0.1 or ::1),
    /// rather than one 127.x.y.z address each.
    pub one_source: bool,
}

impl TurnTarget {
    /// The local address client `index` binds: on an IPv4 loopback server and without
    /// `one_source`, an address of its own in 127.1.0.1–127.255.255.254 (so that per-source
    /// limits see a crowd of hosts, not one), else an ephemeral port of the default address.
    pub fn source(&self, index: usize) -> Option<SocketAddr> {
        match self.server.ip() {
            IpAddr::V4(ip) if ip.is_loopback() && !self.one_source => {
                let n = (index % ((127 << 16) - 2)) as u32 + 1;
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + n);
                Some(SocketAddr::from((ip, 0)))
            }
            _ => None,
        }
    }

    pub fn client_config(&self, index: usize, timing: Timing) -> ClientConfig {
        let mut config = ClientConfig::new(self.server, self.transport, self.credentials.clone());
        config.local = self.source(index);
        config.tls = self.tls.clone();
        config.timing = timing;
        config
    }
}

/// Transaction timing of a load run: quicker to give up than RFC 8489's 39.5 s, so that a
/// dead server ends the run in seconds. Over UDP: 4 transmissions 250, 500, 1000 ms apart,
/// then 1 s more (2.75 s in all).
pub fn load_timing() -> Timing {
    Timing {
        rto: Duration::from_millis(250),
        transmissions: 4,
        last_wait_factor: 4,
        stream_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(3),
    }
}

/// How a client sends data to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    Channel,
    Send,
}

/// Connects client `index`, allocates, and binds [`CHANNEL`] to `peer` (or installs a
/// permission for it).
pub async fn open(
    target: &TurnTarget,
    index: usize,
    peer: SocketAddr,
    kind: DataKind,
) -> Result<Client, ClientError> {
    let mut client = Client::connect(target.client_config(index, load_timing())).await?;
    client.allocate(None).await?;
    match kind {
        DataKind::Channel => client.channel_bind(CHANNEL, peer).await?,
        DataKind::Send => client.create_permission(&[peer]).await?,
    }
    Ok(client)
}

/// The clients a run opened, and how the opening went.
pub struct Opened {
    /// Client index and client, in index order.
    pub clients: Vec<(usize, Client)>,
    pub failures: Failures,
    /// From the first connection to the last allocation granted.
    pub allocation_time: Duration,
}

/// Opens clients `0..count`, `concurrency` at a time, each abandoned at `deadline`.
pub async fn open_all(
    target: &TurnTarget,
    count: usize,
    peer: SocketAddr,
    kind: DataKind,
    concurrency: usize,
    deadline: Instant,
) -> Opened {
    let started = Instant::now();
    let mut results = futures_util::stream::iter(0..count)
        .map(|index| async move {
            if Instant::now() >= deadline {
                return (index, Err("setup_timeout".to_string()));
            }
            let opened = tokio::time::timeout_at(deadline, open(target, index, peer, kind)).await;
            let result = match opened {
                Ok(Ok(client)) => Ok(client),
                Ok(Err(e)) => Err(client_cause(&e)),
                Err(_) => Err("setup_timeout".to_string()),
            };
            (index, result)
        })
        .buffer_unordered(concurrency.max(1));
    let mut clients = Vec::with_capacity(count);
    let mut failures = Failures::default();
    let mut last = started;
    while let Some((index, result)) = results.next().await {
        match result {
            Ok(client) => {
                last = Instant::now();
                clients.push((index, client));
            }
            Err(cause) => failures.add(&cause),
        }
    }
    clients.sort_by_key(|(index, _)| *index);
    Opened {
        clients,
        failures,
        allocation_time: last.duration_since(started),
    }
}

/// Deletes every allocation (Refresh 0), many at once, giving up at `deadline`: the failures,
/// named `cleanup_<cause>`.
pub async fn close_all(clients: &mut [Client], deadline: Instant) -> Failures {
    let mut failures = Failures::default();
    let mut results = futures_util::stream::iter(clients.iter_mut())
        .map(|client| async move {
            match tokio::time::timeout_at(deadline, client.refresh(Duration::ZERO)).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(client_cause(&e)),
                Err(_) => Some("timeout".to_string()),
            }
        })
        .buffer_unordered(256);
    while let Some(result) = results.next().await {
        if let Some(cause) = result {
            failures.add(&format!("cleanup_{cause}"));
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(server: &str, one_source: bool) -> TurnTarget {
        TurnTarget {
            server: server.parse().unwrap(),
            transport: Transport::Udp,
            credentials: Credentials::long_term("u", "p"),
            tls: None,
            one_source,
        }
    }

    #[test]
    fn clients_get_sources_of_their_own_on_ipv4_loopback() {
        let t = target("127.0.0.1:3478", false);
        assert_eq!(t.source(0), Some("127.1.0.1:0".parse().unwrap()));
        assert_eq!(t.source(255), Some("127.1.1.0:0".parse().unwrap()));
        assert_eq!(t.source(70_000), Some("127.2.17.113:0".parse().unwrap()));
        let all: std::collections::HashSet<_> = (0..20_000).map(|i| t.source(i)).collect();
        assert_eq!(all.len(), 20_000);
        for i in [0, 1 << 20, (127 << 16) - 3] {
            let ip = t.source(i).unwrap().ip();
            assert!(super::super::is_loopback(ip), "{i}: {ip}");
        }
        assert_eq!(target("127.0.0.1:3478", true).source(5), None);
        assert_eq!(target("[::1]:3478", false).source(5), None);
        assert_eq!(target("192.0.2.1:3478", false).source(5), None);
    }
}
