//! The data path of `relay` over TCP and TLS: each client a future on the single-threaded
//! tokio runtime, sending through [`crate::client::Client`] (which allocates nothing per
//! frame; rustls allocates per TLS record) and reading what the server writes back.

use std::cell::RefCell;
use std::time::Duration;

use tokio::time::Instant;

use super::setup::{CHANNEL, DataKind};
use super::stats::{Failures, Flow, Histogram};
use super::udp::FlowTotals;
use super::{Pace, PayloadHeader, client_cause, flow_capacity, record_echo};
use crate::client::Client;

/// How often a client checks its packets in flight for loss when nothing arrives.
const EXPIRE_EVERY: Duration = Duration::from_millis(10);
/// Packets a rate-paced client sends at once when it is behind.
const MAX_BURST: u64 = 32;
/// How often channels, permissions and allocations are refreshed in a long run (turnpike's
/// last 10 min, 5 min and 10 min by default).
pub const REFRESH_EVERY: Duration = Duration::from_secs(120);

/// What every client of the run shares.
pub struct StreamPlan {
    pub kind: DataKind,
    pub peer: std::net::SocketAddr,
    pub pace: Pace,
    pub size: usize,
    pub run: u32,
    pub loss_timeout: Duration,
    /// Time 0 of the run's round-trip clock.
    pub start: Instant,
    pub send_until: Instant,
    /// When everything stops, echoes in flight or not.
    pub drain_until: Instant,
    /// How often channels (or permissions) and allocations are refreshed.
    pub refresh_every: Duration,
}

/// What the clients did together.
#[derive(Default)]
pub struct StreamOutcome {
    pub hist: Histogram,
    pub failures: Failures,
    pub totals: FlowTotals,
    pub foreign: u64,
}

/// Runs every client in `clients` (index, client) to the end of the plan.
pub async fn run_streams(clients: &mut [(usize, Client)], plan: &StreamPlan) -> StreamOutcome {
    let shared = RefCell::new(StreamOutcome::default());
    let count = clients.len().max(1);
    let futures = clients
        .iter_mut()
        .enumerate()
        .map(|(position, (index, client))| {
            let phase = match plan.pace {
                Pace::Rate(rate) => Duration::from_secs_f64(position as f64 / count as f64 / rate),
                Pace::Window(_) => Duration::ZERO,
            };
            run_client(client, *index, phase, plan, &shared)
        });
    futures_util::future::join_all(futures).await;
    shared.into_inner()
}

async fn run_client(
    client: &mut Client,
    index: usize,
    phase: Duration,
    plan: &StreamPlan,
    shared: &RefCell<StreamOutcome>,
) {
    let mut flow = Flow::new(flow_capacity(plan.pace, plan.loss_timeout));
    let mut payload = vec![0u8; plan.size];
    let loss_ns = plan.loss_timeout.as_nanos() as u64;
    let ns = |at: Instant| at.saturating_duration_since(plan.start).as_nanos() as u64;
    let mut next_refresh = plan.start + plan.refresh_every;
    let mut foreign = 0;
    let mut failure = None;
    // SIGINT/SIGTERM end the sending early; the drain still waits for the echoes in flight.
    let (mut send_until, mut drain_until) = (plan.send_until, plan.drain_until);
    'run: loop {
        let now = Instant::now();
        if super::sys::stop_requested() && now < send_until {
            send_until = now;
            drain_until = drain_until.min(now + plan.loss_timeout);
        }
        if now >= drain_until {
            break;
        }
        flow.expire(ns(now), loss_ns);
        let sending = now < send_until;
        if !sending && flow.in_flight() == 0 {
            break;
        }
        let mut wake = (now + EXPIRE_EVERY).min(drain_until);
        if sending {
            if now >= next_refresh {
                if let Err(cause) = refresh(client, plan).await {
                    failure = Some(cause);
                    break;
                }
                next_refresh += plan.refresh_every;
            }
            let want = match plan.pace {
                Pace::Window(window) => u64::from(window).saturating_sub(flow.in_flight()),
                Pace::Rate(rate) => {
                    let since = now.saturating_duration_since(plan.start + phase);
                    let due = if now < plan.start + phase {
                        0
                    } else {
                        (since.as_secs_f64() * rate) as u64 + 1
                    };
                    due.saturating_sub(flow.sent).min(MAX_BURST)
                }
            };
            for _ in 0..want {
                let header = PayloadHeader {
                    run: plan.run,
                    client: index as u32,
                    seq: flow.next_seq() as u32,
                };
                // The payload is at least PayloadHeader::LEN long (checked by the CLI).
                let _ = header.write(&mut payload);
                let sent = match plan.kind {
                    DataKind::Channel => {
                        tokio::time::timeout_at(
                            drain_until,
                            client.send_channel_data(CHANNEL, &payload),
                        )
                        .await
                    }
                    DataKind::Send => {
                        tokio::time::timeout_at(
                            drain_until,
                            client.send_indication(plan.peer, &payload),
                        )
                        .await
                    }
                };
                match sent {
                    Ok(Ok(())) => flow.on_send(ns(Instant::now())),
                    Ok(Err(e)) => {
                        failure = Some(format!("send_{}", client_cause(&e)));
                        break 'run;
                    }
                    // The server stopped reading until the end of the run.
                    Err(_) => break 'run,
                }
            }
            if let Pace::Rate(rate) = plan.pace {
                let next = plan.start + phase + Duration::from_secs_f64(flow.sent as f64 / rate);
                wake = wake.min(next.max(now));
            }
            wake = wake.min(send_until);
        }
        tokio::select! {
            received = client.recv() => match received {
                Ok(data) => {
                    let now = ns(Instant::now());
                    // An echo later than the loss timeout is lost, not received.
                    flow.expire(now, loss_ns);
                    let mut outcome = shared.borrow_mut();
                    record_echo(
                        &mut flow,
                        index,
                        data.payload(),
                        plan.run,
                        now,
                        &mut outcome.hist,
                        &mut foreign,
                    );
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
    let mut outcome = shared.borrow_mut();
    outcome.totals.add(&flow);
    outcome.foreign += foreign;
    if let Some(cause) = failure {
        outcome.failures.add(&cause);
    }
}

/// Refreshes the client's channel (and with it the permission) or its permission, and its
/// allocation, within the run's end.
async fn refresh(client: &mut Client, plan: &StreamPlan) -> Result<(), String> {
    let refreshed = tokio::time::timeout_at(plan.drain_until, async {
        match plan.kind {
            DataKind::Channel => client.channel_bind(CHANNEL, plan.peer).await?,
            DataKind::Send => client.create_permission(&[plan.peer]).await?,
        }
        client.refresh(Duration::from_secs(600)).await.map(|_| ())
    })
    .await;
    match refreshed {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("refresh_{}", client_cause(&e))),
        Err(_) => Err("refresh_timeout".into()),
    }
}
