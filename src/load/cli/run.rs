//! Running a parsed command line: the mode it names, with what clap cannot check checked
//! first, and its report printed with the exit code that says how it went.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::load::allocate::AllocatePlan;
use crate::load::echo::EchoPeer;
use crate::load::forward::{ForwardPlan, Forwarder};
use crate::load::hold::HoldPlan;
use crate::load::relay::RelayPlan;
use crate::load::report::{CpuSample, Report, round};
use crate::load::setup::DataKind;
use crate::load::{Pace, check_loopback, sys};

use super::checks::{Refusal, check_clients, check_total_rate, turn_target};
use super::{Cli, DataArg, Mode, TransportArg};

/// Parses the command line and runs the mode: the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(Refusal(message)) => {
            eprintln!("turnpike-load: error: {message}");
            ExitCode::from(2)
        }
    }
}

/// Runs a parsed command line: checks what clap cannot, then the mode.
pub fn run(cli: Cli) -> Result<ExitCode, Refusal> {
    sys::install_stop_handler();
    let limit = sys::raise_open_file_limit().unwrap_or(1024);
    match cli.mode {
        Mode::Relay(args) => {
            let target = turn_target(&args.turn, args.plain)?;
            check_clients(args.clients, limit)?;
            if let Some(peer) = args.peer {
                check_loopback("--peer", peer, args.turn.allow_remote)?;
            }
            check_loopback("--echo-bind", args.echo_bind, args.turn.allow_remote)?;
            let pace = match (args.window, args.rate) {
                (_, Some(rate)) => {
                    check_total_rate(rate, args.clients)?;
                    Pace::Rate(rate)
                }
                (Some(window), None) => Pace::Window(window as u32),
                (None, None) => Pace::Window(16),
            };
            if args.plain && args.turn.transport != TransportArg::Udp {
                return Err("--plain works over UDP only (the forwarder is UDP)"
                    .to_string()
                    .into());
            }
            if args.duration > Duration::from_secs(3600) {
                return Err(format!(
                    "--duration {}: a relay run lasts at most 1h",
                    humantime::format_duration(args.duration)
                )
                .into());
            }
            let plan = RelayPlan {
                target,
                plain: args.plain,
                clients: args.clients as usize,
                kind: match args.data {
                    DataArg::Channel => DataKind::Channel,
                    DataArg::Send => DataKind::Send,
                },
                pace,
                size: args.size as usize,
                duration: args.duration,
                drain: args.drain,
                setup_timeout: args.turn.setup_timeout,
                concurrency: args.turn.concurrency as usize,
                peer: args.peer,
                echo_bind: args.echo_bind,
                server_pid: args.turn.server_pid,
                refresh_every: args.turn.refresh_every,
            };
            finish(crate::load::relay::run(&plan))
        }
        Mode::Allocate(args) => {
            let target = turn_target(&args.turn, false)?;
            check_clients(args.turn.concurrency.min(args.clients), limit)?;
            let plan = AllocatePlan {
                target,
                clients: args.clients as usize,
                concurrency: args.turn.concurrency as usize,
                duration: args.duration,
                server_pid: args.turn.server_pid,
            };
            finish(crate::load::allocate::run(&plan))
        }
        Mode::Hold(args) => {
            let target = turn_target(&args.turn, false)?;
            check_clients(args.clients, limit)?;
            check_total_rate(args.rate, args.clients)?;
            if let Some(peer) = args.peer {
                check_loopback("--peer", peer, args.turn.allow_remote)?;
            }
            check_loopback("--echo-bind", args.echo_bind, args.turn.allow_remote)?;
            let plan = HoldPlan {
                target,
                clients: args.clients as usize,
                rate: args.rate,
                size: args.size as usize,
                duration: args.duration,
                drain: args.drain,
                setup_timeout: args.turn.setup_timeout,
                concurrency: args.turn.concurrency as usize,
                peer: args.peer,
                echo_bind: args.echo_bind,
                server_pid: args.turn.server_pid,
                refresh_every: args.turn.refresh_every,
                linger: args.linger,
            };
            finish(crate::load::hold::run(&plan))
        }
        Mode::Echo(args) => {
            check_loopback("--listen", args.listen, args.allow_remote)?;
            let cpu_start = CpuSample::take(None);
            let start = std::time::Instant::now();
            let mut echo = EchoPeer::start(args.listen, start + args.duration)
                .map_err(|e| format!("--listen {}: {e}", args.listen))?;
            eprintln!("turnpike-load: echo peer listening on {}", echo.addr());
            while start.elapsed() < args.duration && !sys::stop_requested() {
                std::thread::sleep(Duration::from_millis(20));
            }
            echo.stop();
            let cpu_end = CpuSample::take(None);
            let mut report = Report::new("echo");
            report.listen = Some(echo.addr().to_string());
            report.duration_s = round(start.elapsed().as_secs_f64(), 3);
            use std::sync::atomic::Ordering::Relaxed;
            let counters = echo.counters();
            report.peer_received = Some(counters.received.load(Relaxed));
            report.peer_echoed = Some(counters.echoed.load(Relaxed));
            report.dropped = Some(counters.dropped.load(Relaxed));
            let packets = counters.received.load(Relaxed) + counters.echoed.load(Relaxed);
            report.set_cpu(&cpu_start, &cpu_end, packets, 0);
            println!("{}", report.to_json());
            Ok(ExitCode::SUCCESS)
        }
        Mode::Forward(args) => {
            check_loopback("--listen", args.listen, args.allow_remote)?;
            check_loopback("--to", args.to, args.allow_remote)?;
            let max_sources = match args.max_sources {
                Some(max) => {
                    check_clients(max, limit)?;
                    max
                }
                None => limit.saturating_sub(64).max(1),
            };
            let plan = ForwardPlan {
                listen: args.listen,
                target: args.to,
                duration: args.duration,
                max_sources: max_sources as usize,
            };
            let forwarder =
                Forwarder::bind(&plan).map_err(|e| format!("--listen {}: {e}", args.listen))?;
            let addr = forwarder
                .local_addr()
                .map_err(|e| format!("--listen {}: {e}", args.listen))?;
            eprintln!("turnpike-load: forwarding {addr} -> {}", args.to);
            finish(forwarder.run().map(|report| (report, true)))
        }
    }
}

/// Prints the report of a run: exit 0 if it went as planned, 1 if it ran with failures.
fn finish(result: std::io::Result<(Report, bool)>) -> Result<ExitCode, Refusal> {
    match result {
        Ok((report, clean)) => {
            println!("{}", report.to_json());
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        // Set-up of the run itself failed (binding the echo peer, the runtime): nothing ran.
        Err(e) => {
            eprintln!("turnpike-load: error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
