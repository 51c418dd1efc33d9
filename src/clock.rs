//! The wall clock, for the I/O layers only: the Redis store's expiry and lease times, the
//! cluster registry's heartbeats, the HTTP API's credential expiries and status. The protocol
//! core ([`crate::turn`]) never reads a clock: it is given `now` (an `Instant`, and the Unix
//! time where REST usernames need it) with every input.

use std::time::SystemTime;

/// Seconds since the Unix epoch (0 if the clock is set before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
