//! The command line of `turnpike-load`: modes, options, and their checks. Every bad value is
//! refused before anything runs, with the option named and what is wrong with it.
//!
//! This file holds the command line itself ([`Cli`], its modes and options); `values.rs` parses
//! option values, `checks.rs` checks across options, `run.rs` runs the mode and prints its
//! report.

mod checks;
mod run;
mod values;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use checks::Refusal;
use values::{
    parse_clients, parse_concurrency, parse_drain, parse_linger, parse_rate, parse_size,
    parse_window,
};

pub use run::{main, run};
pub use values::parse_duration;

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

#[cfg(test)]
mod tests;
