//! `relay` mode: N clients send through the server (or a plain forwarder) to an echo peer and
//! count what comes back, at a fixed rate or as fast as a window of packets in flight allows.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::echo::EchoPeer;
use super::report::{CpuSample, Report, round};
use super::setup::{self, CHANNEL, DataKind, TurnTarget};
use super::stats::Failures;
use super::stream::{self, StreamPlan};
use super::udp::{Framing, UdpEngine};
use super::{Pace, procfs, sys};
use crate::client::{Client, Transport};

/// How long clean-up (Refresh 0 of every allocation) may take for `clients` clients before
/// it gives up: 2 s, and 0.5 ms more per client (a server deletes a few thousand a second).
pub fn cleanup_time(clients: usize) -> Duration {
    Duration::from_secs(2) + Duration::from_micros(500) * clients.min(1_000_000) as u32
}

/// A `relay` run, as the command line asked for it (already checked).
#[derive(Clone, Debug)]
pub struct RelayPlan {
    /// TURN server; for `plain`, the forwarder (only `server` and `one_source` are used).
    pub target: TurnTarget,
    /// Send to the forwarder without TURN.
    pub plain: bool,
    pub clients: usize,
    pub kind: DataKind,
    pub pace: Pace,
    pub size: usize,
    pub duration: Duration,
    pub drain: Duration,
    pub setup_timeout: Duration,
    pub concurrency: usize,
    /// An external echo peer; `None` starts the built-in one on `echo_bind`.
    pub peer: Option<SocketAddr>,
    pub echo_bind: SocketAddr,
    pub server_pid: Option<u32>,
    /// How often channels (or permissions) and allocations are refreshed.
    pub refresh_every: Duration,
}

/// Runs it: the report, and whether every client was set up and nothing failed.
pub fn run(plan: &RelayPlan) -> std::io::Result<(Report, bool)> {
    let begun = Instant::now();
    let end_of_all =
        begun + plan.setup_timeout + plan.duration + plan.drain + cleanup_time(plan.clients);
    let (mut echo, peer) = EchoPeer::unless_external(plan.peer, plan.echo_bind, end_of_all)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let run_id: u32 = rand::random();

    let mut report = Report::new("relay");
    report.transport = Some(plan.target.transport.to_string());
    report.data = Some(match (plan.plain, plan.kind) {
        (true, _) => "plain",
        (false, DataKind::Channel) => "channel",
        (false, DataKind::Send) => "send",
    });
    report.server = Some(plan.target.server.to_string());
    report.clients = Some(plan.clients as u64);
    report.size = Some(plan.size as u64);
    match plan.pace {
        Pace::Window(w) => report.window = Some(u64::from(w)),
        Pace::Rate(r) => report.rate = Some(r),
    }
    report.server_pid = plan.server_pid;
    let mut failures = Failures::default();

    // Set-up: TURN clients, or plain sockets towards the forwarder.
    let setup_deadline = tokio::time::Instant::now() + plan.setup_timeout;
    let mut clients: Vec<(usize, Client)> = Vec::new();
    let mut plain_sockets: Vec<UdpSocket> = Vec::new();
    if plan.plain {
        for index in 0..plan.clients {
            match plain_socket(&plan.target, index) {
                Ok(socket) => plain_sockets.push(socket),
                Err(e) => failures.add(super::stats::io_cause(&e)),
            }
        }
    } else {
        let opened = runtime.block_on(setup::open_all(
            &plan.target,
            plan.clients,
            peer,
            plan.kind,
            plan.concurrency,
            setup_deadline,
        ));
        failures.merge(&opened.failures);
        report.allocations = Some(opened.clients.len() as u64);
        let seconds = opened.allocation_time.as_secs_f64();
        report.allocation_s = Some(round(seconds, 3));
        if seconds > 0.0 {
            report.allocations_per_s = Some(round(opened.clients.len() as f64 / seconds, 1));
        }
        clients = opened.clients;
    }
    let ready = clients.len() + plain_sockets.len();
    let all_ready = ready == plan.clients;

    // The measured phase: sending, then the drain.
    let echo_before = echo.as_ref().map(counts);
    let start = Instant::now();
    let send_until = start + plan.duration;
    let drain_until = send_until + plan.drain;
    let cpu_start = CpuSample::take(plan.server_pid);
    let (hist, totals, foreign) = if ready == 0 {
        Default::default()
    } else if plan.target.transport == Transport::Udp {
        let framing = |_: usize| match plan.kind {
            _ if plan.plain => Framing::Plain,
            DataKind::Channel => Framing::Channel(CHANNEL),
            DataKind::Send => Framing::Send(peer),
        };
        let mut fds: Vec<(RawFd, Framing)> = Vec::with_capacity(ready);
        for socket in &plain_sockets {
            fds.push((socket.as_raw_fd(), framing(fds.len())));
        }
        for (_, client) in &clients {
            // A UDP client always has its socket.
            if let Some(socket) = client.udp_socket() {
                sys::set_buffer_sizes(socket.as_raw_fd(), 1 << 20);
                fds.push((socket.as_raw_fd(), framing(fds.len())));
            }
        }
        let mut engine = UdpEngine::new(&fds, plan.pace, plan.size, run_id, plan.drain, start)?;
        let stop = || sys::stop_requested();
        let mut next_refresh = start + plan.refresh_every;
        loop {
            engine.run(send_until.min(next_refresh), true, &stop);
            if Instant::now() >= send_until || stop() {
                break;
            }
            // Long runs: the channels and permissions would expire. The clients refresh
            // them, keeping the echoes that arrive meanwhile, which go to the engine after.
            let deadline = tokio::time::Instant::now() + cleanup_time(clients.len());
            let refreshed = runtime.block_on(refresh_udp(
                &mut clients,
                plan.kind,
                peer,
                &mut engine,
                deadline,
            ));
            failures.merge(&refreshed);
            next_refresh += plan.refresh_every;
        }
        // The drain waits for the echoes in flight even after SIGINT/SIGTERM, for at most
        // the drain time from when sending stopped.
        let drain_until = drain_until.min(Instant::now() + plan.drain);
        engine.run(drain_until, false, &|| false);
        engine.finish();
        failures.merge(&engine.failures);
        (
            engine.hist.clone(),
            engine.totals(),
            engine.counters.foreign,
        )
    } else {
        let stream_plan = StreamPlan {
            kind: plan.kind,
            peer,
            pace: plan.pace,
            size: plan.size,
            run: run_id,
            loss_timeout: plan.drain,
            start: tokio::time::Instant::from_std(start),
            send_until: tokio::time::Instant::from_std(send_until),
            drain_until: tokio::time::Instant::from_std(drain_until),
            refresh_every: plan.refresh_every,
        };
        let outcome = runtime.block_on(stream::run_streams(&mut clients, &stream_plan));
        failures.merge(&outcome.failures);
        (outcome.hist, outcome.totals, outcome.foreign)
    };
    let cpu_end = CpuSample::take(plan.server_pid);
    let echo_after = echo.as_ref().map(counts);
    if let Some(echo) = echo.as_mut() {
        echo.stop();
    }

    report.duration_s = round(cpu_end.at.duration_since(start).as_secs_f64(), 3);
    report.set_packets(totals.sent, totals.received, totals.lost);
    report.stale = totals.stale;
    report.foreign = foreign;
    report.set_rtt(&hist);
    let relayed = match (echo_before, echo_after) {
        (Some(before), Some(after)) => {
            report.peer_received = Some(after.0 - before.0);
            report.peer_echoed = Some(after.1 - before.1);
            (after.0 - before.0) + totals.received
        }
        _ => 2 * totals.received,
    };
    report.relayed_packets = Some(relayed);
    report.set_cpu(&cpu_start, &cpu_end, relayed, 0);
    if let Some(pid) = plan.server_pid {
        if !procfs::is_alive(pid) {
            failures.add("server_gone");
        }
    }

    // Clean-up, not measured: delete the allocations so the server is left as found.
    if !clients.is_empty() {
        let deadline = tokio::time::Instant::now() + cleanup_time(clients.len());
        let mut only: Vec<Client> = clients.into_iter().map(|(_, c)| c).collect();
        failures.merge(&runtime.block_on(setup::close_all(&mut only, deadline)));
    }
    report.set_failures(&failures);
    Ok((report, all_ready && failures.is_empty()))
}

/// What the echo peer has received and echoed so far.
fn counts(echo: &EchoPeer) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = echo.counters();
    (c.received.load(Relaxed), c.echoed.load(Relaxed))
}

/// A UDP socket for client `index` of a plain run, connected to the forwarder.
fn plain_socket(target: &TurnTarget, index: usize) -> std::io::Result<UdpSocket> {
    let local = target.source(index).unwrap_or_else(|| match target.server {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
    });
    let socket = UdpSocket::bind(local)?;
    socket.connect(target.server)?;
    socket.set_nonblocking(true)?;
    sys::set_buffer_sizes(socket.as_raw_fd(), 1 << 20);
    Ok(socket)
}

/// Refreshes every UDP client's channel or permission and allocation (at most 256 at once,
/// giving up at `deadline`); the echoes the clients kept meanwhile are handed to the engine.
pub(super) async fn refresh_udp(
    clients: &mut [(usize, Client)],
    kind: DataKind,
    peer: SocketAddr,
    engine: &mut UdpEngine,
    deadline: tokio::time::Instant,
) -> Failures {
    use futures_util::StreamExt;
    let mut failures = Failures::default();
    let results = futures_util::stream::iter(clients.iter_mut().map(|(_, client)| async move {
        tokio::time::timeout_at(deadline, async {
            match kind {
                DataKind::Channel => client.channel_bind(CHANNEL, peer).await?,
                DataKind::Send => client.create_permission(&[peer]).await?,
            }
            client.refresh(Duration::from_secs(600)).await.map(|_| ())
        })
        .await
    }))
    .buffer_unordered(256)
    .collect::<Vec<_>>()
    .await;
    for result in results {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.add(&format!("refresh_{}", super::client_cause(&e))),
            Err(_) => failures.add("refresh_timeout"),
        }
    }
    // The engine's client positions follow `clients` (no plain sockets in a TURN run).
    for (position, (_, client)) in clients.iter_mut().enumerate() {
        while let Some(Ok(data)) = client.recv().now_or_never() {
            engine.feed(position, data.payload());
        }
    }
    failures
}
