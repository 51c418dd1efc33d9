//! `turnpike-load`, the load generator: TURN clients that relay through a server to an echo
//! peer and back (`relay`), allocate and delete as fast as they can (`allocate`), or hold many
//! allocations with a trickle of data (`hold`); a standalone echo peer (`echo`); and a plain
//! UDP forwarder (`forward`), the reference for the same path without TURN. Each run prints
//! one JSON line ([`report::Report`]).
//!
//! The TURN handshakes use [`crate::client`]; the UDP data path is [`udp`] (one thread, one
//! epoll set, `sendmmsg`/`recvmmsg`), TCP and TLS go through the client on a single-threaded
//! tokio runtime ([`stream`]). The echo peer has a thread of its own. Only loopback targets
//! are accepted unless `--allow-remote` says otherwise, and every phase has a deadline, so a
//! run ends within its setup timeout, duration, drain and a short clean-up even when the
//! server dies.

pub mod allocate;
pub mod cli;
pub mod echo;
pub mod forward;
pub mod hold;
pub mod procfs;
pub mod relay;
pub mod report;
pub mod setup;
pub mod stats;
pub mod stream;
pub mod sys;
pub mod udp;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::client::ClientError;
use stats::{Flow, Histogram, NotInFlight, io_cause};

/// The smallest payload: it carries a [`PayloadHeader`].
pub const MIN_SIZE: usize = PayloadHeader::LEN;
/// The largest payload: a ChannelData message of 65,004 bytes or a Send indication of
/// 65,040 fits in one UDP datagram over IPv4 and IPv6.
pub const MAX_SIZE: usize = 65_000;

/// How fast each client sends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// As fast as echoes come back, with at most this many packets in flight.
    Window(u32),
    /// This many packets a second, evenly spaced.
    Rate(f64),
}

/// How many packets in flight a client's [`Flow`] tracks: the window (with room for echoes
/// that come back out of order), or what the rate sends within the loss timeout.
pub fn flow_capacity(pace: Pace, loss_timeout: Duration) -> usize {
    let wanted = match pace {
        Pace::Window(window) => window as usize * 4,
        Pace::Rate(rate) => (rate * loss_timeout.as_secs_f64() * 2.0).ceil() as usize,
    };
    wanted.clamp(64, 1 << 16)
}

/// The start of every payload: which run, which client, which packet. The rest of the
/// payload is filler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadHeader {
    pub run: u32,
    pub client: u32,
    pub seq: u32,
}

impl PayloadHeader {
    pub const LEN: usize = 12;

    /// Writes the header at the start of `payload`; `None` if it is shorter than the header.
    pub fn write(&self, payload: &mut [u8]) -> Option<()> {
        let head = payload.first_chunk_mut::<{ Self::LEN }>()?;
        head[..4].copy_from_slice(&self.run.to_be_bytes());
        head[4..8].copy_from_slice(&self.client.to_be_bytes());
        head[8..].copy_from_slice(&self.seq.to_be_bytes());
        Some(())
    }

    pub fn read(payload: &[u8]) -> Option<PayloadHeader> {
        let head = payload.first_chunk::<{ Self::LEN }>()?;
        let word =
            |at: usize| u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
        Some(PayloadHeader {
            run: word(0),
            client: word(4),
            seq: word(8),
        })
    }
}

/// An echoed `payload` for client `index` of run `run` arrived at `now_ns`: its round trip
/// goes into `hist` (`true`), or it is counted as stale or in `foreign` (not ours, or never
/// sent).
pub fn record_echo(
    flow: &mut Flow,
    index: usize,
    payload: &[u8],
    run: u32,
    now_ns: u64,
    hist: &mut Histogram,
    foreign: &mut u64,
) -> bool {
    match PayloadHeader::read(payload) {
        Some(header) if header.run == run && header.client == index as u32 => {
            match flow.on_echo(header.seq, now_ns) {
                Ok(rtt) => {
                    hist.record((rtt + 500) / 1000);
                    return true;
                }
                Err(NotInFlight::Stale) => {}
                Err(NotInFlight::NeverSent) => *foreign += 1,
            }
        }
        _ => *foreign += 1,
    }
    false
}

/// The failure cause of a client error: the STUN error code (`"401"`, `"486"`), or a short
/// word for what went wrong (`"timeout"`, `"refused"`, `"closed"`).
pub fn client_cause(e: &ClientError) -> String {
    match e {
        ClientError::Response { code, .. } => code.to_string(),
        ClientError::Timeout { .. } => "timeout".into(),
        ClientError::ConnectTimeout { .. } => "connect_timeout".into(),
        ClientError::Io(e) => io_cause(e).into(),
        ClientError::Closed => "closed".into(),
        ClientError::Framing(_) => "framing".into(),
        ClientError::BadResponse { .. } => "bad_response".into(),
        ClientError::PayloadTooLarge { .. } => "payload_too_large".into(),
        ClientError::BadChannelNumber(_) => "bad_channel".into(),
        ClientError::Config(_) => "config".into(),
    }
}

/// Whether `ip` is a loopback address: 127.0.0.0/8, ::1, or 127.0.0.0/8 mapped into IPv6.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Refuses `addr` (`what`: the option that named it) unless it is on loopback or
/// `allow_remote` is set.
pub fn check_loopback(what: &str, addr: SocketAddr, allow_remote: bool) -> Result<(), String> {
    if allow_remote || is_loopback(addr.ip()) {
        return Ok(());
    }
    Err(format!(
        "{what} {addr} is not a loopback address (127.0.0.0/8 or ::1); turnpike-load only \
         loads servers on this machine unless --allow-remote is given (for a server you run)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_header_round_trips() {
        let header = PayloadHeader {
            run: 0xDEAD_BEEF,
            client: 7,
            seq: u32::MAX,
        };
        let mut payload = [0u8; 16];
        header.write(&mut payload).unwrap();
        assert_eq!(PayloadHeader::read(&payload), Some(header));
        assert_eq!(PayloadHeader::read(&payload[..11]), None);
        assert_eq!(header.write(&mut [0u8; 11]), None);
    }

    #[test]
    fn only_loopback_targets_pass_without_allow_remote() {
        for ok in [
            "127.0.0.1:3478",
            "127.9.8.7:1",
            "[::1]:3478",
            "[::ffff:127.0.0.1]:3478",
        ] {
            assert!(
                check_loopback("--server", ok.parse().unwrap(), false).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "10.0.0.1:3478",
            "0.0.0.0:3478",
            "[::]:3478",
            "[2001:db8::1]:3478",
            "192.0.2.1:1",
        ] {
            let err = check_loopback("--server", bad.parse().unwrap(), false).unwrap_err();
            assert!(err.contains(bad) && err.contains("--allow-remote"), "{err}");
            assert!(check_loopback("--server", bad.parse().unwrap(), true).is_ok());
        }
    }

    #[test]
    fn flow_capacity_follows_the_pace() {
        assert_eq!(flow_capacity(Pace::Window(32), Duration::from_secs(1)), 128);
        assert_eq!(flow_capacity(Pace::Window(1), Duration::from_secs(1)), 64);
        assert_eq!(
            flow_capacity(Pace::Rate(1000.0), Duration::from_secs(1)),
            2000
        );
        assert_eq!(
            flow_capacity(Pace::Rate(1e6), Duration::from_secs(10)),
            1 << 16
        );
    }
}
