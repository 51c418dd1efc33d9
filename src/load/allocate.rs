//! `allocate` mode: N sessions, each a fresh client that allocates (the 401 round trip, then
//! Allocate with credentials) and deletes its allocation (Refresh 0), some at once: how many
//! allocations a second the server grants and what each costs it.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::report::{CpuSample, Report, round};
use super::setup::{TurnTarget, load_timing};
use super::stats::{Failures, Histogram};
use super::{client_cause, procfs};
use crate::client::Client;

/// An `allocate` run, as the command line asked for it (already checked).
#[derive(Clone, Debug)]
pub struct AllocatePlan {
    pub target: TurnTarget,
    pub clients: usize,
    pub concurrency: usize,
    /// Sessions not finished by then are abandoned (and not started ones counted).
    pub duration: Duration,
    pub server_pid: Option<u32>,
}

/// Runs it: the report, and whether every session succeeded.
pub fn run(plan: &AllocatePlan) -> std::io::Result<(Report, bool)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut report = Report::new("allocate");
    report.transport = Some(plan.target.transport.to_string());
    report.server = Some(plan.target.server.to_string());
    report.clients = Some(plan.clients as u64);
    report.server_pid = plan.server_pid;

    let cpu_start = CpuSample::take(plan.server_pid);
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + plan.duration);
    let (granted, sessions, mut failures, last) = runtime.block_on(async {
        let mut results = futures_util::stream::iter(0..plan.clients)
            .map(|index| async move {
                if super::sys::stop_requested() || tokio::time::Instant::now() >= deadline {
                    return Err("not_started".to_string());
                }
                let begun = Instant::now();
                match tokio::time::timeout_at(deadline, session(&plan.target, index)).await {
                    Ok(Ok(())) => Ok(begun.elapsed()),
                    Ok(Err(cause)) => Err(cause),
                    Err(_) => Err("unfinished".to_string()),
                }
            })
            .buffer_unordered(plan.concurrency.max(1));
        let mut sessions = Histogram::default();
        let mut failures = Failures::default();
        let mut granted = 0u64;
        let mut last = start;
        while let Some(result) = results.next().await {
            match result {
                Ok(took) => {
                    granted += 1;
                    last = Instant::now();
                    sessions.record(took.as_micros() as u64);
                }
                Err(cause) => failures.add(&cause),
            }
        }
        (granted, sessions, failures, last)
    });
    let cpu_end = CpuSample::take(plan.server_pid);

    let phase = last.duration_since(start).as_secs_f64();
    report.duration_s = round(cpu_end.at.duration_since(start).as_secs_f64(), 3);
    report.allocations = Some(granted);
    report.allocation_s = Some(round(phase, 3));
    if phase > 0.0 {
        report.allocations_per_s = Some(round(granted as f64 / phase, 1));
    }
    report.session_p50_us = sessions.quantile(0.5);
    report.session_p99_us = sessions.quantile(0.99);
    report.set_cpu(&cpu_start, &cpu_end, 0, granted);
    if let Some(pid) = plan.server_pid {
        if !procfs::is_alive(pid) {
            failures.add("server_gone");
        }
    }
    report.set_failures(&failures);
    Ok((report, failures.is_empty()))
}

/// One session: connect, Allocate (after its 401), Refresh 0. The cause of a failure.
async fn session(target: &TurnTarget, index: usize) -> Result<(), String> {
    let mut client = Client::connect(target.client_config(index, load_timing()))
        .await
        .map_err(|e| client_cause(&e))?;
    client.allocate(None).await.map_err(|e| client_cause(&e))?;
    client
        .refresh(Duration::ZERO)
        .await
        .map_err(|e| format!("refresh_{}", client_cause(&e)))?;
    Ok(())
}
