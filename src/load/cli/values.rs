//! The option values' parsers: durations, counts, sizes and rates, each bounded, each error
//! saying what is wrong with the value.

use std::time::Duration;

use crate::load::{MAX_SIZE, MIN_SIZE};

use super::{MAX_CLIENTS, MAX_DRAIN, MAX_DURATION, MAX_RATE, MAX_WINDOW};

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
pub(super) fn parse_linger(text: &str) -> Result<Duration, String> {
    if matches!(text.trim(), "0" | "0s") {
        return Ok(Duration::ZERO);
    }
    let linger = parse_duration(text)?;
    if linger > Duration::from_secs(3600) {
        return Err("at most 1h".into());
    }
    Ok(linger)
}

pub(super) fn parse_drain(text: &str) -> Result<Duration, String> {
    let drain = parse_duration(text)?;
    if drain < Duration::from_millis(10) || drain > MAX_DRAIN {
        return Err("from 10ms to 60s".into());
    }
    Ok(drain)
}

/// A whole number from `min` to `max`.
pub(super) fn parse_count(text: &str, min: u64, max: u64) -> Result<u64, String> {
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

pub(super) fn parse_clients(text: &str) -> Result<u64, String> {
    parse_count(text, 1, MAX_CLIENTS)
}

pub(super) fn parse_concurrency(text: &str) -> Result<u64, String> {
    parse_count(text, 1, 10_000)
}

pub(super) fn parse_window(text: &str) -> Result<u64, String> {
    parse_count(text, 1, MAX_WINDOW)
}

pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    parse_count(text, MIN_SIZE as u64, MAX_SIZE as u64).map_err(|e| {
        format!("{e} (a payload carries a {MIN_SIZE}-byte header and must fit in a datagram)")
    })
}

pub(super) fn parse_rate(text: &str) -> Result<f64, String> {
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
