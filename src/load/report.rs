//! The one JSON line a run prints, and the CPU samples taken around its measured phase.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::procfs::{self, HostCpu, ProcessCpu};
use super::stats::{Failures, Histogram};
use super::sys;

/// Everything a run reports. Every key is always present, `null` where it does not apply, so
/// that scripts can read any line the same way. See the README's "Load generator" section for
/// the meaning of each.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub transport: Option<String>,
    /// `channel`, `send` or `plain`.
    pub data: Option<&'static str>,
    pub server: Option<String>,
    pub clients: Option<u64>,
    pub size: Option<u64>,
    pub window: Option<u64>,
    /// Packets per second per client (relay: the pace; hold: the trickle).
    pub rate: Option<f64>,
    /// Seconds of the measured phase (sending and the drain after it; the allocations in
    /// `allocate` mode; the hold in `hold` mode).
    pub duration_s: f64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_pct: Option<f64>,
    /// Echoes of packets already received or given up on.
    pub stale: u64,
    /// Datagrams or frames that were not an echo of ours (garbage, other senders, answers to
    /// transactions already over).
    pub foreign: u64,
    pub send_pps: Option<f64>,
    pub recv_pps: Option<f64>,
    /// What the built-in echo peer received and sent back (`null` with an external peer).
    pub peer_received: Option<u64>,
    pub peer_echoed: Option<u64>,
    /// Packets that crossed the relay in either direction: the echo peer's receptions plus the
    /// clients' (without an own echo peer, twice the clients' receptions).
    pub relayed_packets: Option<u64>,
    pub rtt_p50_us: Option<u64>,
    pub rtt_p99_us: Option<u64>,
    pub rtt_p999_us: Option<u64>,
    pub rtt_max_us: Option<u64>,
    /// Allocations granted (every mode that allocates).
    pub allocations: Option<u64>,
    pub allocations_per_s: Option<f64>,
    /// Seconds from the first Allocate to the last allocation granted.
    pub allocation_s: Option<f64>,
    /// `allocate` mode: one session (401 round trip, Allocate, Refresh 0), in µs.
    pub session_p50_us: Option<u64>,
    pub session_p99_us: Option<u64>,
    /// `hold` mode: allocations that had an echo back in the last seconds of the hold.
    pub relaying: Option<u64>,
    pub failures: BTreeMap<String, u64>,
    pub server_pid: Option<u32>,
    pub server_cpu_ms: Option<f64>,
    pub server_user_ms: Option<f64>,
    pub server_system_ms: Option<f64>,
    /// The server's CPU as a percentage of one core over the measured phase.
    pub server_cpu_pct: Option<f64>,
    pub server_cpu_us_per_packet: Option<f64>,
    pub server_cpu_us_per_allocation: Option<f64>,
    /// The whole host's busy CPU time over the measured phase (every process, the kernel's
    /// softirq work included).
    pub host_cpu_ms: Option<f64>,
    pub host_cpu_us_per_packet: Option<f64>,
    pub host_cpu_us_per_allocation: Option<f64>,
    /// This generator's own CPU (all its threads) over the measured phase.
    pub load_cpu_ms: Option<f64>,
    pub load_cpu_us_per_packet: Option<f64>,
    /// The host's hard and soft interrupt time (`/proc/stat` irq + softirq) over the phase.
    pub interrupts_ms: Option<f64>,
    /// The kernel's softirq threads' CPU (`ksoftirqd/N`) over the phase.
    pub ksoftirqd_ms: Option<f64>,
    /// What relaying cost the machine, counted from the processes and kernel contexts that do
    /// it rather than from the whole host: the server, this generator with its echo peer, the
    /// softirq threads and interrupt time. Compared with the same load sent straight to the
    /// echo peer (`--plain` with `--server` and `--echo-bind` at one address), it gives the
    /// marginal cost of relaying.
    pub relay_cost_ms: Option<f64>,
    pub relay_cost_us_per_packet: Option<f64>,
    pub server_rss_kib_before: Option<u64>,
    pub server_rss_kib_after: Option<u64>,
    pub server_rss_bytes_per_allocation: Option<f64>,
    /// `echo` and `forward` modes: the address listened on.
    pub listen: Option<String>,
    /// `forward` mode: client sources seen, datagrams forwarded each way, dropped.
    pub sources: Option<u64>,
    pub forwarded_up: Option<u64>,
    pub forwarded_down: Option<u64>,
    pub dropped: Option<u64>,
}

impl Report {
    pub fn new(mode: &'static str) -> Report {
        Report {
            mode,
            ..Report::default()
        }
    }

    /// Fills the RTT figures from `hist`.
    pub fn set_rtt(&mut self, hist: &Histogram) {
        self.rtt_p50_us = hist.quantile(0.5);
        self.rtt_p99_us = hist.quantile(0.99);
        self.rtt_p999_us = hist.quantile(0.999);
        self.rtt_max_us = hist.max();
    }

    /// Fills sent, received, lost and the rates over `duration_s`.
    pub fn set_packets(&mut self, sent: u64, received: u64, lost: u64) {
        self.sent = sent;
        self.received = received;
        self.lost = lost;
        self.loss_pct = (sent > 0).then(|| round(lost as f64 * 100.0 / sent as f64, 3));
        if self.duration_s > 0.0 {
            self.send_pps = Some(round(sent as f64 / self.duration_s, 1));
            self.recv_pps = Some(round(received as f64 / self.duration_s, 1));
        }
    }

    pub fn set_failures(&mut self, failures: &Failures) {
        self.failures = failures.0.clone();
    }

    /// Fills the CPU figures of the phase `start` began, per `packets` relayed and/or per
    /// `allocations` granted (when not zero).
    pub fn set_cpu(&mut self, start: &CpuSample, end: &CpuSample, packets: u64, allocations: u64) {
        let wall = end.at.duration_since(start.at).as_secs_f64();
        let per = |cpu: Duration, n: u64| (n > 0).then(|| round(micros(cpu) / n as f64, 3));
        let server = start.server.zip(end.server).map(|(a, b)| b.since(&a));
        let host = start.host.zip(end.host).map(|(a, b)| b.since(&a));
        if let Some(used) = server {
            self.server_cpu_ms = Some(round(millis(used.total()), 1));
            self.server_user_ms = Some(round(millis(used.user), 1));
            self.server_system_ms = Some(round(millis(used.system), 1));
            if wall > 0.0 {
                self.server_cpu_pct = Some(round(used.total().as_secs_f64() * 100.0 / wall, 1));
            }
            self.server_cpu_us_per_packet = per(used.total(), packets);
            self.server_cpu_us_per_allocation = per(used.total(), allocations);
        }
        if let Some(used) = host {
            self.host_cpu_ms = Some(round(millis(used.busy), 1));
            self.host_cpu_us_per_packet = per(used.busy, packets);
            self.host_cpu_us_per_allocation = per(used.busy, allocations);
        }
        let own = end.own.saturating_sub(start.own);
        self.load_cpu_ms = Some(round(millis(own), 1));
        self.load_cpu_us_per_packet = per(own, packets);
        let softirq_threads = end.softirq_threads.saturating_sub(start.softirq_threads);
        self.ksoftirqd_ms = Some(round(millis(softirq_threads), 1));
        let interrupts = host.map_or(Duration::ZERO, |used| used.interrupts);
        self.interrupts_ms = Some(round(millis(interrupts), 1));
        let cost =
            server.map_or(Duration::ZERO, |used| used.total()) + own + softirq_threads + interrupts;
        self.relay_cost_ms = Some(round(millis(cost), 1));
        self.relay_cost_us_per_packet = per(cost, packets);
    }

    /// The JSON line.
    pub fn to_json(&self) -> String {
        // A struct of numbers, strings and a string map always serializes.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// CPU counters at one moment: the server's (when its pid is known and it is alive), the
/// host's and this process's.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    pub at: Instant,
    pub server: Option<ProcessCpu>,
    pub host: Option<HostCpu>,
    pub own: Duration,
    pub softirq_threads: Duration,
}

impl CpuSample {
    pub fn take(server_pid: Option<u32>) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            server: server_pid.and_then(|pid| procfs::process_cpu(pid).ok()),
            host: procfs::host_cpu().ok(),
            own: sys::own_cpu(),
            softirq_threads: procfs::softirq_threads_cpu(),
        }
    }
}

pub fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_present_and_cpu_is_per_packet() {
        let mut report = Report::new("relay");
        report.duration_s = 2.0;
        report.set_packets(1000, 990, 10);
        let now = Instant::now();
        let start = CpuSample {
            at: now,
            server: Some(ProcessCpu::default()),
            host: Some(HostCpu::default()),
            own: Duration::ZERO,
            softirq_threads: Duration::from_millis(5),
        };
        let end = CpuSample {
            at: now + Duration::from_secs(2),
            server: Some(ProcessCpu {
                user: Duration::from_millis(10),
                system: Duration::from_millis(30),
            }),
            host: Some(HostCpu {
                busy: Duration::from_millis(100),
                total: Duration::from_millis(400),
                interrupts: Duration::from_millis(6),
            }),
            own: Duration::from_millis(20),
            softirq_threads: Duration::from_millis(9),
        };
        report.set_cpu(&start, &end, 2000, 0);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["loss_pct"], 1.0);
        assert_eq!(json["send_pps"], 500.0);
        assert_eq!(json["server_cpu_ms"], 40.0);
        assert_eq!(json["server_cpu_pct"], 2.0);
        assert_eq!(json["server_cpu_us_per_packet"], 20.0);
        assert_eq!(json["host_cpu_us_per_packet"], 50.0);
        assert_eq!(json["load_cpu_us_per_packet"], 10.0);
        assert_eq!(json["ksoftirqd_ms"], 4.0);
        assert_eq!(json["interrupts_ms"], 6.0);
        // Server 40 + generator 20 + softirq threads 4 + interrupts 6.
        assert_eq!(json["relay_cost_ms"], 70.0);
        assert_eq!(json["relay_cost_us_per_packet"], 35.0);
        assert!(json["server_cpu_us_per_allocation"].is_null());
        assert!(json.as_object().unwrap().contains_key("rtt_p999_us"));
        assert!(json["failures"].as_object().unwrap().is_empty());
    }
}
