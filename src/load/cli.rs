//! The command line of `turnpike-load`: modes, options, and their checks. Every bad value is
//! refused before anything runs, with the option named and what is wrong with it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::allocate::AllocatePlan;
use super::echo::EchoPeer;
use super::forward::{ForwardPlan, Forwarder};
use super::hold::HoldPlan;
use super::relay::RelayPlan;
use super::report::{CpuSample, Report, round};
use super::setup::{DataKind, TurnTarget};
use super::{MAX_SIZE, MIN_SIZE, Pace, check_loopback, sys};
use crate::client::{ClientTls, Credentials, Transport};

/// Most clients in one run (each is a socket, and the server needs one relay socket each).
pub const MAX_CLIENTS: u64 = 100_000;
/// Most packets in flight per client.
pub const MAX_WINDOW: u64 = 65_536;
/// Most packets a second per client, and for all clients together.
pub const MAX_RATE: f64 = 1_000_000.0;
pub const MAX_TOTAL_RATE: f64 = 10_000_000.0;
/// Longest run of any mode.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Longest drain (and loss timeout).
pub const MAX_DRAIN: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(
    name = "turnpike-load",
    version,
    about = "Load generator for TURN servers: relay, allocation rate, held allocations; \
             a UDP echo peer and a plain UDP forwarder for reference",
    long_about = "Load generator for TURN servers (turnpike, coturn, any RFC 8656 server). \
                  Prints one JSON line with the results on stdout. Only targets on loopback \
                  (127.0.0.0/8, ::1) are accepted unless --allow-remote is given.\n\n\
                  Exit status: 0 the run went as planned; 1 the run happened but something \
                  failed (see \"failures\" in the JSON line); 2 bad arguments, nothing run."
)]
pub struct Cli {
    #[command(subcommand)]
    pub mode: Mode,
}

#[derive(Subcommand, Debug)]
pub enum Mode {
    /// Relay data: N clients allocate, bind a channel (or install a permission) towards an
    /// echo peer and send to it through the server; their echoes are counted and timed.
    Relay(RelayArgs),
    /// Allocation rate: N fresh clients each do the 401 round trip, Allocate and Refresh 0,
    /// some at once.
    Allocate(AllocateArgs),
    /// Hold N allocations for the duration, each sending a trickle to the echo peer and
    /// refreshed before anything expires; with --server-pid, the server's memory per
    /// allocation.
    Hold(HoldArgs),
    /// A standalone UDP echo peer (recvmmsg/sendmmsg).
    Echo(EchoArgs),
    /// A plain UDP forwarder, no TURN: one relay socket per client towards --to, batched
    /// system calls. The reference for `relay --plain`.
    Forward(ForwardArgs),
}

/// What every TURN mode needs: the server, credentials, and where clients come from.
#[derive(Args, Debug, Clone)]
pub struct TurnArgs {
    /// The server's address, IP:port (loopback unless --allow-remote).
    #[arg(long, value_name = "IP:PORT")]
    pub server: SocketAddr,
    /// Transport to the server.
    #[arg(long, value_enum, default_value_t = TransportArg::Udp)]
    pub transport: TransportArg,
    /// Long-term user name; with --secret, the REST user id.
    #[arg(long, env = "TURNPIKE_LOAD_USER", default_value = "load")]
    pub user: String,
    /// Long-term password.
    #[arg(long, env = "TURNPIKE_LOAD_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// TURN REST API shared secret: each client mints `<now + 1 day>:<user>`.
    #[arg(
        long,
        env = "TURNPIKE_LOAD_SECRET",
        hide_env_values = true,
        conflicts_with = "password"
    )]
    pub secret: Option<String>,
    /// PEM file of the CA to verify a TLS server with.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Accept any TLS certificate (a self-signed test server).
    #[arg(long, conflicts_with = "tls_ca")]
    pub tls_insecure: bool,
    /// All clients from one source address; by default each client on IPv4 loopback gets an
    /// address of its own in 127.1.0.0/8 ranges, as if behind different NATs.
    #[arg(long)]
    pub one_source: bool,
    /// Accept targets that are not on loopback (load a server you run, on your network).
    #[arg(long)]
    pub allow_remote: bool,
    /// The server's process id: its CPU (utime + stime of /proc/PID/stat) per packet or per
    /// allocation, and its memory in `hold` mode.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// How long all clients together may take to connect and allocate.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true, default_value = "30s")]
    pub setup_timeout: Duration,
    /// Handshakes at once during set-up.
    #[arg(long, value_parser = parse_concurrency, allow_hyphen_values = true, default_value = "64")]
    pub concurrency: u64,
    /// How often channels, permissions and allocations are refreshed in long runs (for tests
    /// of the refresh itself; servers' lifetimes are minutes).
    #[arg(long, hide = true, value_parser = parse_duration, allow_hyphen_values = true, default_value = "120s")]
    pub refresh_every: Duration,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportArg {
    Udp,
    Tcp,
    Tls,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataArg {
    /// ChannelData on a bound channel.
    Channel,
    /// Send indications (Data indications back).
    Send,
}

#[derive(Args, Debug)]
pub struct RelayArgs {
    #[command(flatten)]
    pub turn: TurnArgs,
    /// Clients, each with its own allocation.
    #[arg(long, value_parser = parse_clients, allow_hyphen_values = true, default_value = "8")]
    pub clients: u64,
    /// How data travels.
    #[arg(long, value_enum, default_value_t = DataArg::Channel)]
    pub data: DataArg,
    /// Payload bytes per packet (12 to 65000).
    #[arg(long, value_parser = parse_size, allow_hyphen_values = true, default_value = "160")]
    pub size: u64,
    /// Packets in flight per client, as fast as echoes return (the default pace: 16).
    #[arg(long, value_parser = parse_window, allow_hyphen_values = true, conflicts_with = "rate")]
    pub window: Option<u64>,
    /// Packets a second per client, evenly spaced, instead of a window.
    #[arg(long, value_parser = parse_rate, allow_hyphen_values = true)]
    pub rate: Option<f64>,
    /// How long to send.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true, default_value = "5s")]
    pub duration: Duration,
    /// After sending, how long to wait for echoes; a packet not echoed within this is lost.
    #[arg(long, value_parser = parse_drain, allow_hyphen_values = true, default_value = "1s")]
    pub drain: Duration,
    /// No TURN: send bare payloads to --server, a `turnpike-load forward` whose --to is the
    /// echo peer (give it --echo-bind).
    #[arg(long)]
    pub plain: bool,
    /// Use this echo peer instead of the built-in one (it must echo every datagram).
    #[arg(long, value_name = "IP:PORT", conflicts_with = "echo_bind")]
    pub peer: Option<SocketAddr>,
    /// Where the built-in echo peer listens.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:0")]
    pub echo_bind: SocketAddr,
}

#[derive(Args, Debug)]
pub struct AllocateArgs {
    #[command(flatten)]
    pub turn: TurnArgs,
    /// Sessions (one fresh client each).
    #[arg(long, value_parser = parse_clients, allow_hyphen_values = true, default_value = "1000")]
    pub clients: u64,
    /// Sessions are abandoned after this; those not started are counted as `not_started`.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true, default_value = "30s")]
    pub duration: Duration,
}

#[derive(Args, Debug)]
pub struct HoldArgs {
    #[command(flatten)]
    pub turn: TurnArgs,
    /// Allocations to hold.
    #[arg(long, value_parser = parse_clients, allow_hyphen_values = true, default_value = "1000")]
    pub clients: u64,
    /// Packets a second each allocation sends (and gets back).
    #[arg(long, value_parser = parse_rate, allow_hyphen_values = true, default_value = "1")]
    pub rate: f64,
    /// Payload bytes per packet (12 to 65000).
    #[arg(long, value_parser = parse_size, allow_hyphen_values = true, default_value = "100")]
    pub size: u64,
    /// How long to hold once all are allocated.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true, default_value = "10s")]
    pub duration: Duration,
    /// After the hold, how long to wait for the last echoes.
    #[arg(long, value_parser = parse_drain, allow_hyphen_values = true, default_value = "1s")]
    pub drain: Duration,
    /// Use this echo peer instead of the built-in one.
    #[arg(long, value_name = "IP:PORT", conflicts_with = "echo_bind")]
    pub peer: Option<SocketAddr>,
    /// Where the built-in echo peer listens.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:0")]
    pub echo_bind: SocketAddr,
    /// After the figures are taken, keep the allocations (without traffic) this long before
    /// deleting them, e.g. to query the server meanwhile; a line on stderr says when it starts.
    #[arg(long, value_parser = parse_linger, allow_hyphen_values = true, default_value = "0s")]
    pub linger: Duration,
}

#[derive(Args, Debug)]
pub struct EchoArgs {
    /// Address to listen on (loopback unless --allow-remote).
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// How long to run (SIGINT/SIGTERM end it earlier).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true, default_value = "60s")]
    pub duration: Duration,
    /// Listen on an address that is not loopback.
    #[arg(long)]
    pub allow_remote: bool,
}

#[derive(Args, Debug)]
pub struct ForwardArgs {
    /// Address clients send to (loopback unless --allow-remote).
    #[arg(long, value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// Where datagrams go (the echo peer), from one relay socket per client.
    #[arg(long, value_name = "IP:PORT")]
    pub to: SocketAddr,
    /// How long to run (SIGINT/SIGTERM end it earlier).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true, default_value = "60s")]
    pub duration: Duration,
    /// Most clients (each gets a relay socket); datagrams of more are dropped. Default: as
    /// many as the open-file limit allows.
    #[arg(long, value_parser = parse_clients, allow_hyphen_values = true)]
    pub max_sources: Option<u64>,
    /// Listen on, or forward to, an address that is not loopback.
    #[arg(long)]
    pub allow_remote: bool,
}

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

/// A reason not to run at all.
#[derive(Debug)]
pub struct Refusal(pub String);

impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Refusal(message)
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
            finish(super::relay::run(&plan))
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
            finish(super::allocate::run(&plan))
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
            finish(super::hold::run(&plan))
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

/// The TURN target of the common arguments, checked.
fn turn_target(args: &TurnArgs, plain: bool) -> Result<TurnTarget, Refusal> {
    check_loopback("--server", args.server, args.allow_remote)?;
    if args.server.port() == 0 {
        return Err(format!("--server {}: port 0 is no server", args.server).into());
    }
    let transport = match args.transport {
        TransportArg::Udp => Transport::Udp,
        TransportArg::Tcp => Transport::Tcp,
        TransportArg::Tls => Transport::Tls,
    };
    let credentials = match (&args.secret, &args.password) {
        (Some(secret), _) => Credentials::rest(secret, &args.user, Duration::from_secs(24 * 3600)),
        (None, Some(password)) => Credentials::long_term(&args.user, password),
        (None, None) if plain => Credentials::long_term("", ""),
        (None, None) => {
            return Err(
                "credentials needed: --password (long-term user --user) or --secret \
                        (TURN REST API)"
                    .to_string()
                    .into(),
            );
        }
    };
    let tls = match (transport, &args.tls_ca, args.tls_insecure) {
        (Transport::Tls, Some(ca), _) => {
            Some(ClientTls::with_ca_file(ca).map_err(|e| format!("--tls-ca: {e}"))?)
        }
        (Transport::Tls, None, true) => Some(ClientTls::accept_any_certificate()),
        (Transport::Tls, None, false) => {
            return Err(
                "--transport tls needs --tls-ca FILE (or --tls-insecure for a \
                        self-signed test server)"
                    .to_string()
                    .into(),
            );
        }
        _ => None,
    };
    Ok(TurnTarget {
        server: args.server,
        transport,
        credentials,
        tls,
        one_source: args.one_source,
    })
}

/// Refuses more clients than descriptors allow (each takes one, plus a few for the rest).
fn check_clients(clients: u64, open_file_limit: u64) -> Result<(), Refusal> {
    let needed = clients + 64;
    if needed > open_file_limit {
        return Err(format!(
            "{clients} clients need about {needed} open files; the limit is {open_file_limit} \
             (raise it with ulimit -n)"
        )
        .into());
    }
    Ok(())
}

fn check_total_rate(rate: f64, clients: u64) -> Result<(), Refusal> {
    let total = rate * clients as f64;
    if total > MAX_TOTAL_RATE {
        return Err(format!(
            "--rate {rate} × --clients {clients} = {total} packets/s is more than \
             {MAX_TOTAL_RATE} packets/s"
        )
        .into());
    }
    Ok(())
}

/// A duration: `"5s"`, `"500ms"`, `"2m"`, `"1h 30m"`, or seconds (`"2.5"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err("a duration cannot be negative".into());
    }
    let duration = match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() => {
            Duration::try_from_secs_f64(seconds).map_err(|_| "too large a duration".to_string())?
        }
        Ok(_) => return Err("not a finite number of seconds".into()),
        Err(_) => humantime::parse_duration(text).map_err(|e| {
            format!("{e} (write e.g. \"5s\", \"500ms\", \"2m\" or a number of seconds)")
        })?,
    };
    if duration < Duration::from_millis(1) {
        return Err("at least 1ms".into());
    }
    if duration > MAX_DURATION {
        return Err("at most 24h".into());
    }
    Ok(duration)
}

/// `0s` (no lingering) or a duration of at most an hour.
fn parse_linger(text: &str) -> Result<Duration, String> {
    if matches!(text.trim(), "0" | "0s") {
        return Ok(Duration::ZERO);
    }
    let linger = parse_duration(text)?;
    if linger > Duration::from_secs(3600) {
        return Err("at most 1h".into());
    }
    Ok(linger)
}

fn parse_drain(text: &str) -> Result<Duration, String> {
    let drain = parse_duration(text)?;
    if drain < Duration::from_millis(10) || drain > MAX_DRAIN {
        return Err("from 10ms to 60s".into());
    }
    Ok(drain)
}

/// A whole number from `min` to `max`.
fn parse_count(text: &str, min: u64, max: u64) -> Result<u64, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err("cannot be negative".into());
    }
    let n: u64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))?;
    if n < min {
        return Err(format!("at least {min}"));
    }
    if n > max {
        return Err(format!("at most {max}"));
    }
    Ok(n)
}

fn parse_clients(text: &str) -> Result<u64, String> {
    parse_count(text, 1, MAX_CLIENTS)
}

fn parse_concurrency(text: &str) -> Result<u64, String> {
    parse_count(text, 1, 10_000)
}

fn parse_window(text: &str) -> Result<u64, String> {
    parse_count(text, 1, MAX_WINDOW)
}

fn parse_size(text: &str) -> Result<u64, String> {
    parse_count(text, MIN_SIZE as u64, MAX_SIZE as u64).map_err(|e| {
        format!("{e} (a payload carries a {MIN_SIZE}-byte header and must fit in a datagram)")
    })
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of packets a second"))?;
    if !rate.is_finite() {
        return Err("must be a finite number".into());
    }
    if rate <= 0.0 {
        return Err("must be more than 0".into());
    }
    if rate > MAX_RATE {
        return Err(format!("at most {MAX_RATE} packets a second per client"));
    }
    if rate < 0.01 {
        return Err("at least 0.01 packets a second".into());
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::try_parse_from(std::iter::once("turnpike-load").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn durations_parse_and_hostile_ones_are_refused() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        for (bad, why) in [
            ("-5s", "negative"),
            ("-1", "negative"),
            ("0", "at least 1ms"),
            ("0s", "at least 1ms"),
            ("NaN", "finite"),
            ("inf", "finite"),
            ("1e300", "too large"),
            ("25h", "at most 24h"),
            ("fast", "500ms"),
            ("", "500ms"),
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn counts_sizes_and_rates_are_bounded() {
        assert_eq!(parse_clients("8"), Ok(8));
        assert!(parse_clients("0").unwrap_err().contains("at least 1"));
        assert!(parse_clients("-3").unwrap_err().contains("negative"));
        assert!(parse_clients("1e9").unwrap_err().contains("whole number"));
        assert!(
            parse_clients("100001")
                .unwrap_err()
                .contains("at most 100000")
        );
        assert_eq!(parse_size("65000"), Ok(65_000));
        assert!(parse_size("65001").unwrap_err().contains("at most 65000"));
        assert!(parse_size("11").unwrap_err().contains("at least 12"));
        assert_eq!(parse_rate("50"), Ok(50.0));
        for (bad, why) in [
            ("0", "more than 0"),
            ("-5", "more than 0"),
            ("1e12", "at most"),
            ("NaN", "finite"),
            ("inf", "finite"),
            ("0.001", "at least 0.01"),
            ("lots", "not a number"),
        ] {
            let err = parse_rate(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(parse_window("0").unwrap_err().contains("at least 1"));
        assert!(check_total_rate(1e6, 64).is_err());
        assert!(check_total_rate(50.0, 64).is_ok());
        assert!(check_clients(20_000, 20_000).is_err());
        assert!(check_clients(15_000, 20_000).is_ok());
    }

    #[test]
    fn the_command_line_names_the_bad_option() {
        let err = parse(&["relay", "--server", "127.0.0.1:3478", "--clients", "0"]).unwrap_err();
        assert!(
            err.contains("--clients") && err.contains("at least 1"),
            "{err}"
        );
        let err = parse(&["relay", "--server", "127.0.0.1:3478", "--duration", "-5"]).unwrap_err();
        assert!(
            err.contains("--duration") && err.contains("negative"),
            "{err}"
        );
        let err = parse(&[
            "relay",
            "--server",
            "127.0.0.1:3478",
            "--window",
            "4",
            "--rate",
            "5",
        ])
        .unwrap_err();
        assert!(err.contains("--window") && err.contains("--rate"), "{err}");
        let err = parse(&["relay", "--server", "turn.example.com:3478"]).unwrap_err();
        assert!(err.contains("--server"), "{err}");
        let cli = parse(&["relay", "--server", "127.0.0.1:3478", "--password", "p"]).unwrap();
        let Mode::Relay(args) = cli.mode else {
            panic!("relay mode")
        };
        assert_eq!((args.clients, args.size, args.window), (8, 160, None));
        assert_eq!(args.duration, Duration::from_secs(5));
    }

    #[test]
    fn targets_need_loopback_credentials_and_tls_roots() {
        let cli = parse(&["relay", "--server", "10.1.2.3:3478", "--password", "p"]).unwrap();
        let Mode::Relay(args) = cli.mode else {
            panic!("relay mode")
        };
        let err = turn_target(&args.turn, false).unwrap_err().0;
        assert!(
            err.contains("10.1.2.3:3478") && err.contains("--allow-remote"),
            "{err}"
        );
        let mut turn = args.turn.clone();
        turn.allow_remote = true;
        assert!(turn_target(&turn, false).is_ok());
        turn.password = None;
        assert!(
            turn_target(&turn, false)
                .unwrap_err()
                .0
                .contains("--password")
        );
        assert!(
            turn_target(&turn, true).is_ok(),
            "plain runs need no credentials"
        );
        turn.password = Some("p".into());
        turn.transport = TransportArg::Tls;
        assert!(
            turn_target(&turn, false)
                .unwrap_err()
                .0
                .contains("--tls-ca")
        );
        turn.tls_insecure = true;
        assert!(turn_target(&turn, false).is_ok());
    }
}
