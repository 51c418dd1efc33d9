//! A 401 to a REST username: wrong secret, or clock skew? The server accepts a REST username
//! whose expiry is not yet past by its own clock (and, on turnpike, not too far ahead), and
//! refuses every expiry when the secret is wrong. So the probe tries expiries around its own
//! clock: when one is accepted, the earliest accepted expiry is the server's clock, found by
//! bisection, and its distance from this machine's clock is the skew (none: the expiry was
//! refused for lying further ahead than the server allows).

use std::time::Duration;

use super::Identity;
use super::steps::Connector;
use crate::client::{Client, ClientError};
use crate::stun::Method;

/// Offsets (seconds) from the first expiry tried, later ones first (this machine's clock
/// behind the server's, the common case), then earlier ones. A day apart for a week either
/// way, as turnpike accepts expiries up to `max-rest-ttl` (a day by default) ahead of its clock.
const LADDER: [i64; 24] = {
    const H: i64 = 3600;
    const D: i64 = 86_400;
    [
        H,
        6 * H,
        12 * H,
        D,
        2 * D,
        3 * D,
        4 * D,
        5 * D,
        6 * D,
        7 * D,
        14 * D,
        30 * D,
        -H,
        -6 * H,
        -12 * H,
        -D,
        -2 * D,
        -3 * D,
        -4 * D,
        -5 * D,
        -6 * D,
        -7 * D,
        -14 * D,
        -30 * D,
    ]
};
/// Bisection ends when the bracket is this narrow (seconds).
const PRECISION: i64 = 10;
/// At most this many Allocates in all.
const MAX_TRIES: usize = 48;

/// What the server said to one expiry.
enum Verdict {
    Accepted,
    Refused,
}

/// Tries expiries around `first` (the refused one, this machine's clock + ttl) and words the
/// finding.
pub(crate) async fn investigate(connector: &Connector<'_>, identity: &Identity) -> String {
    let Identity::Rest {
        secret,
        user,
        ttl,
        clock_offset,
    } = identity
    else {
        return "401 after the nonce exchange".into();
    };
    let clock = Identity::clock(*clock_offset);
    let first = clock + i64::try_from(ttl.as_secs()).unwrap_or(0);
    let mut search = Search {
        connector,
        secret,
        user,
        tries: 0,
    };
    // Find an accepted expiry on the ladder, and a refused one below it.
    let mut found = None;
    for offset in LADDER {
        match search.attempt(first + offset).await {
            Ok(Verdict::Accepted) => {
                found = Some(first + offset);
                break;
            }
            Ok(Verdict::Refused) => {}
            Err(e) => return gave_up(&e),
        }
    }
    let Some(accepted) = found else {
        return "401 for a REST username whatever its expiry (tried from 30 days before to 30 days after this machine's clock): the secret is wrong (or the server refuses this user)".into();
    };
    let (mut refused, mut accepted) = if accepted > first {
        // Every ladder step below `accepted` down to `first` was refused.
        let below = LADDER
            .iter()
            .map(|offset| first + offset)
            .filter(|&e| e < accepted && e >= first)
            .max()
            .unwrap_or(first);
        (below, accepted)
    } else {
        // Going down: find a refused expiry below the accepted one.
        let mut step = 3600;
        let mut accepted = accepted;
        loop {
            match search.attempt(accepted - step).await {
                Ok(Verdict::Accepted) => {
                    accepted -= step;
                    step *= 2;
                }
                Ok(Verdict::Refused) => break (accepted - step, accepted),
                Err(e) => return gave_up(&e),
            }
        }
    };
    while accepted - refused > PRECISION {
        let middle = refused + (accepted - refused) / 2;
        match search.attempt(middle).await {
            Ok(Verdict::Accepted) => accepted = middle,
            Ok(Verdict::Refused) => refused = middle,
            Err(_) => break,
        }
    }
    // The earliest accepted expiry is the server's clock (an expiry just past is refused), as
    // it read during the last tries: compared with this machine's clock now, to the minute.
    let skew = Identity::clock(*clock_offset) - accepted;
    let minutes = (skew.unsigned_abs() + 30) / 60;
    if minutes <= 1 {
        // The clocks agree: the first expiry was refused for lying too far ahead.
        return format!(
            "the server refuses REST usernames valid for {}, though the clocks agree (to about a minute): its longest REST lifetime is shorter (turnpike: [auth] max-rest-ttl, a day by default): use a shorter --ttl, and have the backend mint shorter-lived credentials",
            humantime::format_duration(*ttl)
        );
    }
    let size = humantime::format_duration(Duration::from_secs(minutes * 60));
    let which = if skew > 0 { "ahead of" } else { "behind" };
    format!(
        "clock skew: the server refused this REST username but accepted one expiring at {accepted} (Unix time), so its clock reads about {accepted}, and this machine's clock runs about {size} {which} it: set both clocks right (NTP); credentials minted on a machine whose clock is off expire early or are refused"
    )
}

/// The expiries tried so far, and how to try one.
struct Search<'a> {
    connector: &'a Connector<'a>,
    secret: &'a str,
    user: &'a str,
    tries: usize,
}

impl Search<'_> {
    /// One Allocate with a REST username expiring at `expiry`; an accepted one is deleted at
    /// once.
    async fn attempt(&mut self, expiry: i64) -> Result<Verdict, ClientError> {
        self.tries += 1;
        if self.tries > MAX_TRIES {
            return Err(ClientError::Config(format!("{MAX_TRIES} attempts")));
        }
        let credentials = Identity::rest_at(self.secret, self.user, expiry.max(0));
        let mut client: Client = self.connector.connect(credentials).await?;
        match self
            .connector
            .within(Method::ALLOCATE, client.allocate(None))
            .await
        {
            Ok(_) => {
                let _ = self
                    .connector
                    .within(Method::REFRESH, client.refresh(Duration::ZERO))
                    .await;
                Ok(Verdict::Accepted)
            }
            Err(ClientError::Response { code: 401, .. }) => Ok(Verdict::Refused),
            Err(e) => Err(e),
        }
    }
}

fn gave_up(error: &ClientError) -> String {
    format!(
        "401 for a REST username: wrong secret, or clock skew between this machine and the server (trying other expiries to tell which failed: {error})"
    )
}
