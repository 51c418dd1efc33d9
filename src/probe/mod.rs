//! `turnpike probe`: a terminal self-test of any TURN server, ours or another. For each
//! `turn:`/`turns:` URI: a Binding, an authenticated Allocate, two allocations relaying
//! datagrams to each other through the server, their round-trip times and loss, and a line per
//! step saying what passed, what failed and the likely cause.
//!
//! The files: `url` (RFC 7065 URIs), `steps` (the steps, over [`crate::client`]), `diagnose`
//! (an error in words, with its likely cause), `skew` (a 401 to a REST username: wrong
//! secret, or clock skew?) and `report` (the lines and the JSON).

mod diagnose;
mod report;
mod skew;
mod steps;
mod url;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::rest_password;
use crate::client::{ClientTls, Credentials, TlsVerify};
pub use url::{Host, MAX_URL_LEN, TurnUrl};

/// Longest `--timeout`: a probe is for a person at a terminal or a script, not a soak run.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest `--clock-offset` either way.
const MAX_CLOCK_OFFSET: Duration = Duration::from_secs(366 * 24 * 3600);

/// The command line of `turnpike probe`.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// TURN server URIs: `turn:HOST[:PORT][?transport=udp|tcp]` (UDP by default, port 3478) or
    /// `turns:HOST[:PORT]` (TLS over TCP, port 5349).
    #[arg(required = true, value_name = "URL")]
    pub urls: Vec<String>,
    /// Long-term credentials: the user name (with --password).
    #[arg(long, requires = "password")]
    pub user: Option<String>,
    /// Long-term credentials: the password.
    #[arg(long, env = "TURNPIKE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// TURN REST API credentials: the server's shared secret (the username and password are
    /// minted from it, as `turnpike credentials` does). Not used with --user.
    #[arg(long, env = "TURNPIKE_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// The user id of REST usernames (`<expiry>:<id>`).
    #[arg(long, default_value = "turnpike-probe")]
    pub rest_user: String,
    /// How long minted REST usernames are valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Simulate clock skew: mint REST usernames as if this machine's clock were off by this
    /// much (e.g. -2h, 30m), to see what the server does with them.
    #[arg(long, default_value = "0s", allow_hyphen_values = true, value_parser = parse_offset)]
    pub clock_offset: i64,
    /// Verify the TLS server against the CA certificates in this PEM file instead of the
    /// system's roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Do not verify the TLS server's certificate at all.
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// How long each step may take (a Binding, an Allocate, ...).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Datagrams relayed each way between the two allocations.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: u32,
    /// One JSON object on stdout instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// A duration with an optional sign, as seconds.
fn parse_offset(text: &str) -> Result<i64, String> {
    let (sign, magnitude) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    let duration = humantime::parse_duration(magnitude).map_err(|e| e.to_string())?;
    if duration > MAX_CLOCK_OFFSET {
        return Err(format!(
            "at most {} either way",
            humantime::format_duration(MAX_CLOCK_OFFSET)
        ));
    }
    // At most a year of seconds: fits.
    Ok(sign * duration.as_secs() as i64)
}

/// Who the probe is, as the steps need it.
#[derive(Clone, Debug)]
pub(crate) enum Identity {
    LongTerm {
        user: String,
        password: String,
    },
    Rest {
        secret: String,
        user: String,
        ttl: Duration,
        clock_offset: i64,
    },
}

impl Identity {
    /// This machine's clock, as the probe is told to read it (Unix seconds).
    fn clock(clock_offset: i64) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        i64::try_from(now).unwrap_or(i64::MAX) + clock_offset
    }

    /// A REST username expiring at `expiry`, and its password.
    fn rest_at(secret: &str, user: &str, expiry: i64) -> Credentials {
        let username = if user.is_empty() {
            expiry.to_string()
        } else {
            format!("{expiry}:{user}")
        };
        let password = rest_password(secret.as_bytes(), &username);
        Credentials::long_term(&username, &password)
    }

    /// The credentials to use now.
    pub(crate) fn credentials(&self) -> Credentials {
        match self {
            Identity::LongTerm { user, password } => Credentials::long_term(user, password),
            Identity::Rest {
                secret,
                user,
                ttl,
                clock_offset,
            } => {
                let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
                Identity::rest_at(secret, user, Identity::clock(*clock_offset) + ttl)
            }
        }
    }
}

/// Runs the probe: exit status 0 when every step of every URI passed, 1 when one failed, 2 for
/// a bad command line.
pub fn run(args: ProbeArgs) -> ExitCode {
    match prepare(&args) {
        Ok((urls, settings)) => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("turnpike probe: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let reports = runtime.block_on(steps::probe_all(&urls, &settings));
            let passed = report::finish(&reports, args.json);
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(usage) => {
            eprintln!("turnpike probe: {usage}");
            ExitCode::from(2)
        }
    }
}

/// What every URI's steps share.
pub(crate) struct Settings {
    pub identity: Identity,
    /// TLS settings without a server name (each `turns:` URI sets its own).
    pub tls: ClientTls,
    pub timeout: Duration,
    pub count: u32,
    pub json: bool,
}

/// Checks what clap cannot: the URIs, the credentials, the TLS roots, the timeout.
fn prepare(args: &ProbeArgs) -> Result<(Vec<TurnUrl>, Settings), String> {
    let urls = args
        .urls
        .iter()
        .map(|text| TurnUrl::parse(text))
        .collect::<Result<Vec<_>, _>>()?;
    let identity = match (&args.user, &args.password, &args.secret) {
        (Some(user), Some(password), _) => {
            if user.is_empty() {
                return Err("--user is empty".into());
            }
            Identity::LongTerm {
                user: user.clone(),
                password: password.clone(),
            }
        }
        (Some(_), None, _) => return Err("--user needs --password (or TURNPIKE_PASSWORD)".into()),
        (None, _, Some(secret)) => {
            if secret.is_empty() {
                return Err("--secret is empty".into());
            }
            if args.ttl.is_zero() || args.ttl > MAX_CLOCK_OFFSET {
                return Err("--ttl must be more than 0s and at most a year".into());
            }
            Identity::Rest {
                secret: secret.clone(),
                user: args.rest_user.clone(),
                ttl: args.ttl,
                clock_offset: args.clock_offset,
            }
        }
        (None, _, None) => {
            return Err(
                "no credentials: pass --user U --password P (long-term) or --secret S (TURN REST API)"
                    .into(),
            );
        }
    };
    if args.timeout < Duration::from_millis(100) || args.timeout > MAX_TIMEOUT {
        return Err(format!(
            "--timeout {}: expected 100ms to {}",
            humantime::format_duration(args.timeout),
            humantime::format_duration(MAX_TIMEOUT)
        ));
    }
    let needs_tls = urls
        .iter()
        .any(|url| url.transport == crate::client::Transport::Tls);
    let tls = if args.insecure {
        ClientTls::accept_any_certificate()
    } else if let Some(ca) = &args.ca {
        ClientTls::with_ca_file(ca).map_err(|e| format!("--ca: {e}"))?
    } else if needs_tls {
        system_roots()?
    } else {
        ClientTls::accept_any_certificate()
    };
    Ok((
        urls,
        Settings {
            identity,
            tls,
            timeout: args.timeout,
            count: args.count,
            json: args.json,
        },
    ))
}

/// The system's trust anchors (`/etc/ssl/certs` and the like).
fn system_roots() -> Result<ClientTls, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "no system CA certificates found ({}): pass --ca FILE or --insecure",
            errors.join("; ")
        ));
    }
    Ok(ClientTls {
        verify: TlsVerify::Roots(Arc::new(roots)),
        server_name: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_offsets_take_a_sign() {
        assert_eq!(parse_offset("-2h"), Ok(-7200));
        assert_eq!(parse_offset("+30m"), Ok(1800));
        assert_eq!(parse_offset("90s"), Ok(90));
        assert!(parse_offset("--2h").is_err());
        assert!(parse_offset("400d").unwrap_err().contains("at most"));
    }

    #[test]
    fn rest_usernames_follow_the_turn_rest_api() {
        let identity = Identity::Rest {
            secret: "s3cret".into(),
            user: "probe".into(),
            ttl: Duration::from_secs(3600),
            clock_offset: -7200,
        };
        let now = Identity::clock(0);
        let Credentials::LongTerm { username, password } = identity.credentials() else {
            panic!("REST credentials are minted as a username and password");
        };
        let (expiry, user) = username.split_once(':').unwrap();
        assert_eq!(user, "probe");
        let expiry: i64 = expiry.parse().unwrap();
        assert!(
            (now - 3610..=now - 3590).contains(&expiry),
            "{expiry} vs {now}"
        );
        assert_eq!(password, rest_password(b"s3cret", &username));
        let Credentials::LongTerm { username, .. } = Identity::rest_at("s", "", 42) else {
            panic!("long-term");
        };
        assert_eq!(username, "42");
    }
}
