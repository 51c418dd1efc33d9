//! `hold` mode: allocate N, each with a channel to the echo peer, then keep them all for the
//! duration with a trickle of data each (refreshing what would expire), and report the
//! server's memory per allocation and how many still relay at the end.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::echo::EchoPeer;
use super::relay::{cleanup_time, refresh_udp};
use super::report::{CpuSample, Report, round};
use super::setup::{self, CHANNEL, DataKind, TurnTarget};
use super::stats::{Failures, Flow, Histogram};
use super::udp::{Framing, UdpEngine};
use super::{Pace, PayloadHeader, client_cause, procfs, record_echo, sys};
use crate::client::{Client, Transport};

/// The lifetime a refresh asks for.
const LIFETIME: Duration = Duration::from_secs(600);

/// A `hold` run, as the command line asked for it (already checked).
#[derive(Clone, Debug)]
pub struct HoldPlan {
    pub target: TurnTarget,
    pub clients: usize,
    /// Packets a second each allocation sends.
    pub rate: f64,
    pub size: usize,
    pub duration: Duration,
    pub drain: Duration,
    pub setup_timeout: Duration,
    pub concurrency: usize,
    pub peer: Option<SocketAddr>,
    pub echo_bind: SocketAddr,
    pub server_pid: Option<u32>,
    /// How often channels and allocations are refreshed.
    pub refresh_every: Duration,
    /// After the figures are taken, keep the allocations (without traffic) this long.
    pub linger: Duration,
}

/// What the held clients did together.
#[derive(Default)]
struct Held {
    hist: Histogram,
    failures: Failures,
    sent: u64,
    received: u64,
    lost: u64,
    stale: u64,
    foreign: u64,
    /// Clients with an echo back within the last window of the hold.
    relaying: u64,
}

/// Runs it: the report, and whether every allocation was made and kept relaying.
pub fn run(plan: &HoldPlan) -> std::io::Result<(Report, bool)> {
    let begun = Instant::now();
    let end_of_all = begun
        + plan.setup_timeout
        + plan.duration
        + plan.drain
        + plan.linger
        + cleanup_time(plan.clients);
    let (mut echo, peer) = EchoPeer::unless_external(plan.peer, plan.echo_bind, end_of_all)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let run_id: u32 = rand::random();
    let mut report = Report::new("hold");
    report.transport = Some(plan.target.transport.to_string());
    report.data = Some("channel");
    report.server = Some(plan.target.server.to_string());
    report.clients = Some(plan.clients as u64);
    report.size = Some(plan.size as u64);
    report.rate = Some(plan.rate);
    report.server_pid = plan.server_pid;
    let rss = || plan.server_pid.and_then(|pid| procfs::rss_kib(pid).ok());
    report.server_rss_kib_before = rss();

    let setup_deadline = tokio::time::Instant::now() + plan.setup_timeout;
    let opened = runtime.block_on(setup::open_all(
        &plan.target,
        plan.clients,
        peer,
        DataKind::Channel,
        plan.concurrency,
        setup_deadline,
    ));
    let mut failures = opened.failures.clone();
    let allocated = opened.clients.len();
    report.allocations = Some(allocated as u64);
    let seconds = opened.allocation_time.as_secs_f64();
    report.allocation_s = Some(round(seconds, 3));
    if seconds > 0.0 {
        report.allocations_per_s = Some(round(allocated as f64 / seconds, 1));
    }
    let mut clients = opened.clients;

    let start = Instant::now();
    let end = start + plan.duration;
    // An allocation relays if an echo came back in the last two intervals (at least 2 s).
    let recent = Duration::from_secs_f64((2.0 / plan.rate).max(2.0));
    let cpu_start = CpuSample::take(plan.server_pid);
    let held = if plan.target.transport == Transport::Udp {
        hold_udp(&runtime, &mut clients, plan, peer, run_id, start, recent)?
    } else {
        let held = RefCell::new(Held::default());
        runtime.block_on(async {
            let count = clients.len().max(1);
            let futures = clients
                .iter_mut()
                .enumerate()
                .map(|(position, (index, client))| {
                    let phase = Duration::from_secs_f64(position as f64 / count as f64 / plan.rate);
                    hold_client(
                        client, *index, phase, plan, peer, run_id, start, end, recent, &held,
                    )
                });
            futures_util::future::join_all(futures).await;
        });
        held.into_inner()
    };
    let cpu_end = CpuSample::take(plan.server_pid);
    report.server_rss_kib_after = rss();
    if let Some(echo) = echo.as_mut() {
        echo.stop();
    }

    failures.merge(&held.failures);
    report.duration_s = round(cpu_end.at.duration_since(start).as_secs_f64(), 3);
    report.set_packets(held.sent, held.received, held.lost);
    report.stale = held.stale;
    report.foreign = held.foreign;
    report.set_rtt(&held.hist);
    report.relaying = Some(held.relaying);
    if let Some(echo) = echo.as_ref() {
        use std::sync::atomic::Ordering::Relaxed;
        report.peer_received = Some(echo.counters().received.load(Relaxed));
        report.peer_echoed = Some(echo.counters().echoed.load(Relaxed));
    }
    let relayed = report.peer_received.unwrap_or(held.received) + held.received;
    report.relayed_packets = Some(relayed);
    report.set_cpu(&cpu_start, &cpu_end, relayed, 0);
    if let (Some(before), Some(after)) = (report.server_rss_kib_before, report.server_rss_kib_after)
    {
        if allocated > 0 {
            let bytes = (after as f64 - before as f64) * 1024.0 / allocated as f64;
            report.server_rss_bytes_per_allocation = Some(round(bytes, 1));
        }
    }
    if let Some(pid) = plan.server_pid {
        if !procfs::is_alive(pid) {
            failures.add("server_gone");
        }
    }
    let not_relaying = allocated as u64 - held.relaying;
    failures.add_n("not_relaying", not_relaying);

    // The figures are taken; keep the allocations a while for whoever wants to look at the
    // server holding them (the compare script times the status API then).
    if !plan.linger.is_zero() && !clients.is_empty() {
        eprintln!(
            "turnpike-load: figures taken; holding {allocated} allocations for {}",
            humantime::format_duration(plan.linger)
        );
        let until = Instant::now() + plan.linger;
        while Instant::now() < until && !sys::stop_requested() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    if !clients.is_empty() {
        let deadline = tokio::time::Instant::now() + cleanup_time(clients.len());
        let mut only: Vec<Client> = clients.into_iter().map(|(_, c)| c).collect();
        failures.merge(&runtime.block_on(setup::close_all(&mut only, deadline)));
    }
    report.set_failures(&failures);
    Ok((report, allocated == plan.clients && failures.is_empty()))
}

/// Holds UDP allocations with the batched engine: one pass over a schedule in which each
/// allocation's packets take turns, one epoll set for all the sockets.
#[allow(clippy::too_many_arguments)]
fn hold_udp(
    runtime: &tokio::runtime::Runtime,
    clients: &mut [(usize, Client)],
    plan: &HoldPlan,
    peer: SocketAddr,
    run: u32,
    start: Instant,
    recent: Duration,
) -> std::io::Result<Held> {
    let fds: Vec<_> = clients
        .iter()
        .filter_map(|(_, client)| client.udp_socket())
        .map(|socket| {
            use std::os::fd::AsRawFd;
            (socket.as_raw_fd(), Framing::Channel(CHANNEL))
        })
        .collect();
    let mut engine = UdpEngine::new(
        &fds,
        Pace::Rate(plan.rate),
        plan.size,
        run,
        plan.drain,
        start,
    )?;
    let end = start + plan.duration;
    let stop = || sys::stop_requested();
    let mut failures = Failures::default();
    let mut next_refresh = start + plan.refresh_every;
    loop {
        engine.run(end.min(next_refresh), true, &stop);
        if Instant::now() >= end || stop() {
            break;
        }
        // Channels, permissions and allocations would expire in a long hold.
        let deadline = tokio::time::Instant::now() + cleanup_time(clients.len());
        failures.merge(&runtime.block_on(refresh_udp(
            clients,
            DataKind::Channel,
            peer,
            &mut engine,
            deadline,
        )));
        next_refresh += plan.refresh_every;
    }
    let stopped = Instant::now().min(end);
    engine.run((end + plan.drain).min(stopped + plan.drain), false, &|| {
        false
    });
    engine.finish();
    failures.merge(&engine.failures);
    let totals = engine.totals();
    let since = engine
        .ns_at(stopped)
        .saturating_sub(recent.as_nanos() as u64);
    Ok(Held {
        hist: engine.hist.clone(),
        failures,
        sent: totals.sent,
        received: totals.received,
        lost: totals.lost,
        stale: totals.stale,
        foreign: engine.counters.foreign,
        relaying: engine.echoing_since(since),
    })
}

/// Keeps one allocation until `end`: a packet every 1/rate seconds (first at `phase`), its
/// echoes counted, its channel and allocation refreshed before they expire.
#[allow(clippy::too_many_arguments)]
async fn hold_client(
    client: &mut Client,
    index: usize,
    phase: Duration,
    plan: &HoldPlan,
    peer: SocketAddr,
    run: u32,
    start: Instant,
    end: Instant,
    recent: Duration,
    held: &RefCell<Held>,
) {
    let start = tokio::time::Instant::from_std(start);
    let end = tokio::time::Instant::from_std(end);
    let mut drain_end = end + plan.drain;
    let period = Duration::from_secs_f64(1.0 / plan.rate);
    let loss_ns = plan.drain.as_nanos() as u64;
    let ns = |at: tokio::time::Instant| at.saturating_duration_since(start).as_nanos() as u64;
    let mut flow = Flow::new(16);
    let mut payload = vec![0u8; plan.size];
    let mut next_send = start + phase;
    let mut next_refresh = start + plan.refresh_every;
    let mut last_echo: Option<tokio::time::Instant> = None;
    // When sending ended: `end`, or earlier on SIGINT/SIGTERM.
    let mut stopped_at = end;
    let mut foreign = 0;
    let mut failure = None;
    loop {
        let now = tokio::time::Instant::now();
        if now >= drain_end {
            break;
        }
        flow.expire(ns(now), loss_ns);
        // SIGINT/SIGTERM end the hold; the drain still waits for the echoes in flight.
        if sys::stop_requested() && now < stopped_at {
            stopped_at = now;
            drain_end = drain_end.min(now + plan.drain);
        }
        let sending = now < stopped_at;
        if !sending && flow.in_flight() == 0 {
            break;
        }
        if sending && now >= next_refresh {
            let refreshed = tokio::time::timeout_at(drain_end, async {
                client.channel_bind(CHANNEL, peer).await?;
                client.refresh(LIFETIME).await.map(|_| ())
            });
            if let Err(cause) = outcome(refreshed.await) {
                failure = Some(format!("refresh_{cause}"));
                break;
            }
            next_refresh += plan.refresh_every;
        }
        if sending && now >= next_send {
            let header = PayloadHeader {
                run,
                client: index as u32,
                seq: flow.next_seq() as u32,
            };
            // The payload is at least PayloadHeader::LEN long (checked by the CLI).
            let _ = header.write(&mut payload);
            let sent =
                tokio::time::timeout_at(drain_end, client.send_channel_data(CHANNEL, &payload));
            match outcome(sent.await) {
                Ok(()) => flow.on_send(ns(tokio::time::Instant::now())),
                Err(cause) => {
                    failure = Some(format!("send_{cause}"));
                    break;
                }
            }
            next_send += period;
            // Behind (a slow set-up or refresh): skip ahead rather than burst.
            if next_send < now {
                next_send = now + period;
            }
        }
        let mut wake = drain_end;
        if sending {
            wake = wake.min(next_send).min(stopped_at).min(next_refresh);
        }
        tokio::select! {
            received = client.recv() => match received {
                Ok(data) => {
                    let now = tokio::time::Instant::now();
                    // An echo later than the drain time is lost, not received.
                    flow.expire(ns(now), loss_ns);
                    let mut held = held.borrow_mut();
                    if record_echo(
                        &mut flow,
                        index,
                        data.payload(),
                        run,
                        ns(now),
                        &mut held.hist,
                        &mut foreign,
                    ) {
                        last_echo = Some(now);
                    }
                }
                Err(e) => {
                    failure = Some(format!("recv_{}", client_cause(&e)));
                    break;
                }
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    flow.give_up();
    let mut held = held.borrow_mut();
    held.sent += flow.sent;
    held.received += flow.received;
    held.lost += flow.lost;
    held.stale += flow.stale;
    held.foreign += foreign;
    if last_echo.is_some_and(|at| at + recent >= stopped_at.min(end)) {
        held.relaying += 1;
    }
    if let Some(cause) = failure {
        held.failures.add(&cause);
    }
}

/// The cause of a failed or timed-out client call.
fn outcome(
    result: Result<Result<(), crate::client::ClientError>, tokio::time::error::Elapsed>,
) -> Result<(), String> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(client_cause(&e)),
        Err(_) => Err("timeout".into()),
    }
}
