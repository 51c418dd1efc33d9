//! What the probe found, per URI and step: printed as a line per step as it ends (or kept for
//! one JSON object at the end), with round-trip times summed up as min, median and max.

use std::net::SocketAddr;
use std::time::Duration;

/// The outcome of one step.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub name: &'static str,
    pub ok: bool,
    /// What was seen: addresses, counts, or the error.
    pub detail: String,
    /// When failed: the likely cause and what to check.
    pub cause: Option<String>,
}

/// Round trips A → server → B → server → A.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rtt {
    pub samples: Vec<Duration>,
    /// Datagrams sent each way, and how many arrived.
    pub sent: u32,
    pub a_to_b: u32,
    pub b_to_a: u32,
}

impl Rtt {
    /// (min, median, max), when there is a sample.
    pub fn summary(&self) -> Option<(Duration, Duration, Duration)> {
        let mut sorted = self.samples.clone();
        sorted.sort();
        let (first, last) = (sorted.first()?, sorted.last()?);
        Some((*first, sorted[sorted.len() / 2], *last))
    }
}

/// Everything found for one URI.
#[derive(Debug)]
pub(crate) struct UrlReport {
    pub url: String,
    pub server: Option<SocketAddr>,
    pub steps: Vec<Step>,
    pub rtt: Option<Rtt>,
    json: bool,
}

impl UrlReport {
    /// Starts the report of `url` (printing its heading unless the output is JSON).
    pub fn new(url: &str, json: bool) -> UrlReport {
        if !json {
            println!("{url}");
        }
        UrlReport {
            url: url.to_owned(),
            server: None,
            steps: Vec::new(),
            rtt: None,
            json,
        }
    }

    pub fn passed(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|step| step.ok)
    }

    pub fn ok(&mut self, name: &'static str, detail: String) {
        self.push(Step {
            name,
            ok: true,
            detail,
            cause: None,
        });
    }

    pub fn failed(&mut self, name: &'static str, detail: String, cause: String) {
        self.push(Step {
            name,
            ok: false,
            detail,
            cause: Some(cause),
        });
    }

    fn push(&mut self, step: Step) {
        if !self.json {
            let mark = if step.ok { "ok    " } else { "FAILED" };
            println!("  {mark} {}: {}", step.name, step.detail);
            if let Some(cause) = &step.cause {
                println!("         likely cause: {cause}");
            }
        }
        self.steps.push(step);
    }
}

/// Milliseconds with a tenth, for people.
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Prints the summary line (or the JSON object): whether everything passed.
pub(crate) fn finish(reports: &[UrlReport], json: bool) -> bool {
    let failed = reports.iter().filter(|r| !r.passed()).count();
    let passed = failed == 0;
    if json {
        let urls: Vec<serde_json::Value> = reports.iter().map(to_json).collect();
        let object = serde_json::json!({ "passed": passed, "urls": urls });
        println!("{object}");
    } else if passed {
        println!("all {} passed", plural(reports.len(), "URI"));
    } else {
        println!("{failed} of {} failed", plural(reports.len(), "URI"));
    }
    passed
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("{n} {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn to_json(report: &UrlReport) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = report
        .steps
        .iter()
        .map(|step| {
            serde_json::json!({
                "step": step.name,
                "ok": step.ok,
                "detail": step.detail,
                "cause": step.cause,
            })
        })
        .collect();
    let rtt = report.rtt.as_ref().map(|rtt| {
        let millis = |d: Duration| d.as_secs_f64() * 1000.0;
        let summary = rtt.summary();
        serde_json::json!({
            "sent": rtt.sent,
            "a_to_b": rtt.a_to_b,
            "b_to_a": rtt.b_to_a,
            "min_ms": summary.map(|s| millis(s.0)),
            "median_ms": summary.map(|s| millis(s.1)),
            "max_ms": summary.map(|s| millis(s.2)),
        })
    });
    serde_json::json!({
        "url": report.url,
        "server": report.server.map(|s| s.to_string()),
        "passed": report.passed(),
        "steps": steps,
        "relay": rtt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_summary_is_min_median_max() {
        let rtt = Rtt {
            samples: [5, 1, 9, 3, 7].map(Duration::from_millis).to_vec(),
            ..Rtt::default()
        };
        let (min, median, max) = rtt.summary().unwrap();
        assert_eq!(
            (min, median, max),
            (
                Duration::from_millis(1),
                Duration::from_millis(5),
                Duration::from_millis(9)
            )
        );
        assert!(Rtt::default().summary().is_none());
        assert_eq!(ms(Duration::from_micros(1260)), "1.3 ms");
    }
}
