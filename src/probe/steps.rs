//! The steps of a probe of one URI, over [`crate::client`]: Binding, two authenticated
//! allocations, permissions (and a channel) for each other's relayed address, datagrams
//! relayed both ways in lockstep for round-trip times and loss. Every wait is bounded by the
//! step timeout; the allocations are deleted at the end.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::diagnose::{self, Target};
use super::report::{Rtt, UrlReport, ms};
use super::{Host, Identity, Settings, TurnUrl, skew};
use crate::client::{
    Allocation, Client, ClientConfig, ClientError, ClientTls, Credentials, Timing, Transport,
};
use crate::stun::Method;

/// The channel the first allocation binds to the second's relayed address.
const CHANNEL: u16 = 0x4000;
/// Longest wait for one relayed datagram.
const MAX_DATAGRAM_WAIT: Duration = Duration::from_secs(2);
/// When none of the first this many datagrams gets through, the rest are not sent.
const GIVE_UP_AFTER: u32 = 3;
/// More loss than this (percent) fails the relay step.
const MAX_LOSS_PERCENT: u32 = 20;

/// How to reach one server: its address, transport and TLS settings, and the step timeout.
pub(crate) struct Connector<'a> {
    pub server: SocketAddr,
    pub transport: Transport,
    pub tls: Option<&'a ClientTls>,
    pub timeout: Duration,
}

impl Connector<'_> {
    /// A new client (its own socket or connection), connected within the timeout.
    pub async fn connect(&self, credentials: Credentials) -> Result<Client, ClientError> {
        let mut config = ClientConfig::new(self.server, self.transport, credentials);
        config.tls = self.tls.cloned();
        config.timing = Timing {
            connect_timeout: self.timeout,
            stream_timeout: self.timeout,
            ..Timing::default()
        };
        let after = self.timeout;
        let server = self.server;
        tokio::time::timeout(after, Client::connect(config))
            .await
            .map_err(|_| ClientError::ConnectTimeout { server, after })?
    }

    /// `request`, given up after the step timeout.
    pub async fn within<T>(
        &self,
        method: Method,
        request: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let after = self.timeout;
        tokio::time::timeout(after, request)
            .await
            .map_err(|_| ClientError::Timeout { method, after })?
    }
}

/// Probes every URI in turn.
pub(crate) async fn probe_all(urls: &[TurnUrl], settings: &Settings) -> Vec<UrlReport> {
    let mut reports = Vec::new();
    for url in urls {
        reports.push(probe(url, settings).await);
    }
    reports
}

/// Every step of one URI.
async fn probe(url: &TurnUrl, settings: &Settings) -> UrlReport {
    let mut report = UrlReport::new(&url.text, settings.json);
    let authority = url.authority();
    let target = Target {
        authority: &authority,
        transport: url.transport,
    };
    let server = match resolve(url, settings.timeout).await {
        Ok(server) => server,
        Err(why) => {
            report.failed("binding", format!("cannot resolve {}", url.host), why);
            return report;
        }
    };
    report.server = Some(server);
    let tls = (url.transport == Transport::Tls).then(|| {
        let mut tls = settings.tls.clone();
        if let Host::Name(name) = &url.host {
            tls.server_name = Some(name.clone());
        }
        tls
    });
    let connector = Connector {
        server,
        transport: url.transport,
        tls: tls.as_ref(),
        timeout: settings.timeout,
    };

    // 1. Binding.
    let mut first = match connector.connect(settings.identity.credentials()).await {
        Ok(client) => client,
        Err(e) => {
            let cause = diagnose::unreachable(&e, &target, 0);
            report.failed("binding", format!("connecting to {server}: {e}"), cause);
            return report;
        }
    };
    let started = Instant::now();
    match connector.within(Method::BINDING, first.binding()).await {
        Ok(mapped) => report.ok(
            "binding",
            format!(
                "{server} answered in {}: this machine is {mapped} as the server sees it",
                ms(started.elapsed())
            ),
        ),
        Err(e) => {
            let cause = diagnose::unreachable(&e, &target, first.stats().ignored);
            report.failed("binding", e.to_string(), cause);
            return report;
        }
    }

    // 2. Two allocations.
    let a = match allocate(&connector, &mut first, &target, settings).await {
        Ok(a) => a,
        Err((detail, cause)) => {
            report.failed("allocate", detail, cause);
            return report;
        }
    };
    let mut second = match connector.connect(settings.identity.credentials()).await {
        Ok(client) => client,
        Err(e) => {
            let cause = diagnose::unreachable(&e, &target, 0);
            report.failed("allocate", format!("a second connection: {e}"), cause);
            delete(&connector, &mut first).await;
            return report;
        }
    };
    match allocate(&connector, &mut second, &target, settings).await {
        Ok(b) => {
            report.ok(
                "allocate",
                format!(
                    "as {}: relayed addresses {} and {} (lifetime {} s)",
                    first.username(),
                    a.relayed,
                    b.relayed,
                    a.lifetime.as_secs()
                ),
            );
            let pair = Pair {
                first: &mut first,
                second: &mut second,
                a: a.relayed,
                b: b.relayed,
            };
            relay_steps(&connector, pair, &target, settings, &mut report).await;
            delete(&connector, &mut second).await;
        }
        Err((detail, cause)) => report.failed("allocate", format!("the second: {detail}"), cause),
    }
    delete(&connector, &mut first).await;
    report
}

/// The host's address: the IP of the URI, or the first address its name resolves to.
async fn resolve(url: &TurnUrl, timeout: Duration) -> Result<SocketAddr, String> {
    let name = match &url.host {
        Host::Ip(ip) => return Ok(SocketAddr::new(*ip, url.port)),
        Host::Name(name) => name,
    };
    match tokio::time::timeout(timeout, tokio::net::lookup_host((name.as_str(), url.port))).await {
        Err(_) => Err(format!("DNS gave no answer for {name} within {timeout:?}")),
        Ok(Err(e)) => Err(format!("DNS: {name}: {e}")),
        Ok(Ok(mut addresses)) => addresses
            .next()
            .ok_or_else(|| format!("DNS: {name} has no address")),
    }
}

/// An Allocate on `client`; on failure, the detail and the likely cause.
async fn allocate(
    connector: &Connector<'_>,
    client: &mut Client,
    target: &Target<'_>,
    settings: &Settings,
) -> Result<Allocation, (String, String)> {
    let rest = matches!(settings.identity, Identity::Rest { .. });
    match connector
        .within(Method::ALLOCATE, client.allocate(None))
        .await
    {
        Ok(allocation) => Ok(allocation),
        Err(e) => {
            let cause = if rest && e.code() == Some(401) {
                skew::investigate(connector, &settings.identity).await
            } else {
                diagnose::allocate(&e, target, rest)
            };
            Err((format!("as {}: {e}", client.username()), cause))
        }
    }
}

/// Deletes the allocation of `client`, if any (errors do not matter: it expires anyway).
async fn delete(connector: &Connector<'_>, client: &mut Client) {
    let _ = connector
        .within(Method::REFRESH, client.refresh(Duration::ZERO))
        .await;
}

/// The two clients and their relayed addresses.
struct Pair<'a> {
    first: &'a mut Client,
    second: &'a mut Client,
    a: SocketAddr,
    b: SocketAddr,
}

/// Permissions, the channel, then datagrams both ways.
async fn relay_steps(
    connector: &Connector<'_>,
    pair: Pair<'_>,
    target: &Target<'_>,
    settings: &Settings,
    report: &mut UrlReport,
) {
    let Pair {
        first,
        second,
        a,
        b,
    } = pair;
    // 3. Each allocation may send to the other; the first also through a channel.
    let permitted = async {
        connector
            .within(Method::CREATE_PERMISSION, first.create_permission(&[b]))
            .await
            .map_err(|e| (e, b))?;
        connector
            .within(Method::CREATE_PERMISSION, second.create_permission(&[a]))
            .await
            .map_err(|e| (e, a))?;
        connector
            .within(Method::CHANNEL_BIND, first.channel_bind(CHANNEL, b))
            .await
            .map_err(|e| (e, b))
    };
    if let Err((e, peer)) = permitted.await {
        let cause = diagnose::permission(&e, peer, target);
        report.failed("permissions", format!("for {peer}: {e}"), cause);
        return;
    }
    report.ok(
        "permissions",
        format!("each allocation may send to the other; channel {CHANNEL:#06x} bound to {b}"),
    );

    // 4. Datagrams: first → B as ChannelData, echoed back as a Send indication.
    let wait = settings.timeout.min(MAX_DATAGRAM_WAIT);
    let rtt = exchange(first, second, a, settings.count, wait).await;
    let server = connector.server.ip();
    if rtt.a_to_b == 0 {
        report.failed(
            "relay",
            format!(
                "none of {} datagrams sent through the relay to {b} arrived",
                rtt.sent
            ),
            diagnose::relay_unreachable(b, server),
        );
    } else if rtt.b_to_a == 0 {
        report.failed(
            "relay",
            format!(
                "{} of {} datagrams reached {b}, none of their echoes reached {a}",
                rtt.a_to_b, rtt.sent
            ),
            diagnose::relay_unreachable(a, server),
        );
    } else {
        let lost = rtt.sent - rtt.b_to_a;
        let detail = format!(
            "{} of {} datagrams from {a} to {b} (ChannelData in, Data indication out), {} of {} back (Send indication in, ChannelData out)",
            rtt.a_to_b, rtt.sent, rtt.b_to_a, rtt.a_to_b
        );
        if lost * 100 > rtt.sent * MAX_LOSS_PERCENT {
            report.failed(
                "relay",
                detail,
                format!("more than {MAX_LOSS_PERCENT}% of the round trips were lost: a lossy path, a rate limit or a firewall dropping some datagrams"),
            );
        } else {
            report.ok("relay", detail);
        }
    }
    // 5. Round-trip times.
    if let Some((min, median, max)) = rtt.summary() {
        let lost = rtt.sent - rtt.b_to_a;
        report.ok(
            "rtt",
            format!(
                "min {}, median {}, max {} over {} round trips through the relay; loss {lost} of {} ({}%)",
                ms(min),
                ms(median),
                ms(max),
                rtt.samples.len(),
                rtt.sent,
                lost * 100 / rtt.sent.max(1)
            ),
        );
    }
    report.rtt = Some(rtt);
}

/// Sends `count` datagrams from `first` to `second` through a channel, each echoed back by
/// `second` in a Send indication to `a` (the first's relayed address), one at a time, each
/// waited for at most `wait`. Stops early when none of the first few gets through, or once
/// more are lost than the relay step allows (its outcome is known then).
async fn exchange(
    first: &mut Client,
    second: &mut Client,
    a: SocketAddr,
    count: u32,
    wait: Duration,
) -> Rtt {
    let mut rtt = Rtt::default();
    let tag: u64 = rand::random();
    for seq in 0..count {
        let lost = rtt.sent - rtt.b_to_a;
        let nothing_through = seq >= GIVE_UP_AFTER && (rtt.a_to_b == 0 || rtt.b_to_a == 0);
        if nothing_through || lost * 100 > count * MAX_LOSS_PERCENT {
            break;
        }
        let mut payload = [0u8; 24];
        payload[..8].copy_from_slice(b"tp-probe");
        payload[8..16].copy_from_slice(&tag.to_be_bytes());
        payload[16..20].copy_from_slice(&seq.to_be_bytes());
        rtt.sent += 1;
        let started = Instant::now();
        if first.send_channel_data(CHANNEL, &payload).await.is_err() {
            continue;
        }
        if !receive(second, &payload, started + wait).await {
            continue;
        }
        rtt.a_to_b += 1;
        if second.send_indication(a, &payload).await.is_err() {
            continue;
        }
        if receive(first, &payload, started + wait * 2).await {
            rtt.b_to_a += 1;
            rtt.samples.push(started.elapsed());
        }
    }
    rtt
}

/// Whether `payload` arrives at `client` before `deadline` (other data is skipped: echoes of
/// datagrams given up on before).
async fn receive(client: &mut Client, payload: &[u8], deadline: Instant) -> bool {
    let wanted = async {
        loop {
            match client.recv().await {
                Ok(data) if data.payload() == payload => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    };
    tokio::time::timeout_at(deadline, wanted)
        .await
        .unwrap_or(false)
}
