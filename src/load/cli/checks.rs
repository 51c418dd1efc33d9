//! Checks across options that clap cannot make: the TURN target (loopback, credentials, TLS
//! roots), the number of clients against the open-file limit, the total rate.

use std::time::Duration;

use crate::client::{ClientTls, Credentials, Transport};
use crate::load::check_loopback;
use crate::load::setup::TurnTarget;

use super::{MAX_TOTAL_RATE, TransportArg, TurnArgs};

/// A reason not to run at all.
#[derive(Debug)]
pub struct Refusal(pub String);

impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Refusal(message)
    }
}

/// The TURN target of the common arguments, checked.
pub(super) fn turn_target(args: &TurnArgs, plain: bool) -> Result<TurnTarget, Refusal> {
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
pub(super) fn check_clients(clients: u64, open_file_limit: u64) -> Result<(), Refusal> {
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

pub(super) fn check_total_rate(rate: f64, clients: u64) -> Result<(), Refusal> {
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
