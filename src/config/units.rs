//! The units values are written in: data rates ([`Bandwidth`], `"2 Mbps"`), port ranges
//! ([`PortRange`], `"49152-65535"`) and durations (`"10m"`, bounded for every key), each with
//! its text form.

use std::fmt;
use std::time::Duration;

use super::error::ConfigError;
use super::text::ParseText;

/// A data rate in bits per second, written like `"2 Mbps"`, `"500 kbps"`, `"1 Gbps"`; 0 means
/// unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bandwidth(pub u64);

impl Bandwidth {
    pub const UNLIMITED: Bandwidth = Bandwidth(0);

    /// Bits per second, or `None` when unlimited.
    pub fn bits_per_second(self) -> Option<u64> {
        (self.0 > 0).then_some(self.0)
    }
}

impl std::str::FromStr for Bandwidth {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Bandwidth::parse_text(text)
    }
}

impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("unlimited"),
            bps => write!(f, "{bps} bps"),
        }
    }
}

impl ParseText for Bandwidth {
    fn parse_text(text: &str) -> Result<Self, String> {
        let expected = || {
            format!(
                "invalid bandwidth {text:?}, expected e.g. \"2 Mbps\", \"500 kbps\", \"1 Gbps\" or \"0\" for unlimited"
            )
        };
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let number: f64 = number.parse().map_err(|_| expected())?;
        let scale = match unit.trim() {
            "" if number == 0.0 => 1.0,
            "bps" => 1.0,
            "kbps" | "Kbps" => 1e3,
            "Mbps" => 1e6,
            "Gbps" => 1e9,
            _ => return Err(expected()),
        };
        let bits = number * scale;
        if !bits.is_finite() || bits > 1e12 {
            return Err(format!("{text:?} is more than the maximum of 1000 Gbps"));
        }
        if bits > 0.0 && bits < 8.0 {
            return Err(format!("{text:?} is less than one byte per second"));
        }
        Ok(Bandwidth(bits as u64))
    }
}

/// An inclusive range of ports, written `"49152-65535"`. `1 <= first <= last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl ParseText for PortRange {
    fn parse_text(text: &str) -> Result<Self, String> {
        let expected = || format!("invalid port range {text:?}, expected e.g. \"49152-65535\"");
        let (first, last) = text.split_once('-').ok_or_else(expected)?;
        let first: u16 = first.trim().parse().map_err(|_| expected())?;
        let last: u16 = last.trim().parse().map_err(|_| expected())?;
        if first == 0 {
            return Err("port 0 cannot be a relay port; start at 1 or above".to_owned());
        }
        if first > last {
            return Err(format!("start {first} is greater than end {last}"));
        }
        Ok(PortRange { first, last })
    }
}

const MIN_DURATION: Duration = Duration::from_secs(1);
/// Longest accepted duration, for every key: far past any sensible setting, and short enough
/// that adding it to the clock cannot overflow (a lifetime of 300,000,000,000 years did, and
/// killed a worker thread on the first Allocate).
pub(super) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

impl ParseText for Duration {
    fn parse_text(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text).map_err(|error| {
            format!("invalid duration {text:?} ({error}), expected e.g. \"30s\", \"10m\", \"1h\"")
        })
    }
}

pub(super) fn check_duration(key: &str, duration: Duration) -> Result<(), ConfigError> {
    if duration < MIN_DURATION {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{} is shorter than the minimum of 1s",
                humantime::format_duration(duration)
            ),
        ));
    }
    if duration > MAX_DURATION {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{} is longer than the maximum of 365 days",
                humantime::format_duration(duration)
            ),
        ));
    }
    Ok(())
}
