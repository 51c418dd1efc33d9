//! CPU and memory figures from /proc: a process's CPU time (`/proc/<pid>/stat`, utime and
//! stime), the whole host's busy time and its interrupt time (`/proc/stat`), the kernel's
//! softirq threads' time (`ksoftirqd/N`), and a process's resident set size.

use std::fs;
use std::io;
use std::time::Duration;

/// CPU time of one process, its threads included (live and exited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCpu {
    pub user: Duration,
    pub system: Duration,
}

impl ProcessCpu {
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    /// The time spent from `earlier` to this sample.
    pub fn since(&self, earlier: &ProcessCpu) -> ProcessCpu {
        ProcessCpu {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// CPU time of the whole host: busy (user, nice, system, irq, softirq) and all (with idle,
/// iowait and steal: time a hypervisor gave to other machines is no work done here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCpu {
    pub busy: Duration,
    pub total: Duration,
    /// Of `busy`, the time in hard and soft interrupts (the irq and softirq columns): where
    /// the kernel delivers packets when no process's system call does it.
    pub interrupts: Duration,
}

impl HostCpu {
    pub fn since(&self, earlier: &HostCpu) -> HostCpu {
        HostCpu {
            busy: self.busy.saturating_sub(earlier.busy),
            total: self.total.saturating_sub(earlier.total),
            interrupts: self.interrupts.saturating_sub(earlier.interrupts),
        }
    }
}

/// Clock ticks per second of /proc's CPU figures.
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf takes no pointers.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

fn ticks(count: u64) -> Duration {
    let per_second = ticks_per_second();
    Duration::from_secs(count / per_second)
        + Duration::from_nanos((count % per_second) * 1_000_000_000 / per_second)
}

/// utime + stime of process `pid`, from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> io::Result<ProcessCpu> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_process_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: unexpected format"),
        )
    })
}

/// Fields 14 and 15 (utime, stime) of a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces and parentheses, so fields are counted after its last
/// `)`.
fn parse_process_stat(text: &str) -> Option<ProcessCpu> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the name: state (3), ppid, pgrp, session, tty_nr, tpgid, flags, minflt, cminflt,
    // majflt, cmajflt (13), utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(ProcessCpu {
        user: ticks(utime),
        system: ticks(stime),
    })
}

/// The host's CPU time, from the first line of `/proc/stat`.
pub fn host_cpu() -> io::Result<HostCpu> {
    let text = fs::read_to_string("/proc/stat")?;
    parse_host_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "/proc/stat: no cpu line".to_string(),
        )
    })
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`: guest time is
/// already counted in user, so it is left out; idle, iowait and steal are not busy.
fn parse_host_stat(text: &str) -> Option<HostCpu> {
    let line = text.lines().find(|line| line.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    if values.len() < 4 {
        return None;
    }
    let field = |i: usize| values.get(i).copied().unwrap_or(0);
    let idle = field(3) + field(4) + field(7);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    Some(HostCpu {
        busy: ticks(busy),
        total: ticks(busy + idle),
        interrupts: ticks(field(5) + field(6)),
    })
}

/// utime + stime of the kernel's softirq threads (`ksoftirqd/0`, `ksoftirqd/1`, ...), which
/// take over packet delivery when softirq work piles up. Threads that cannot be read are left
/// out.
pub fn softirq_threads_cpu() -> Duration {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|entry| fs::read_to_string(entry.path().join("stat")).ok())
        .filter(|text| command_of(text).is_some_and(|name| name.starts_with("ksoftirqd/")))
        .filter_map(|text| parse_process_stat(&text))
        .map(|cpu| cpu.total())
        .sum()
}

/// The command name of a `/proc/<pid>/stat` line (field 2, between the first `(` and the last
/// `)`).
fn command_of(text: &str) -> Option<&str> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    text.get(open + 1..close)
}

/// VmRSS of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/status: no VmRSS"),
            )
        })
}

/// Whether process `pid` exists (and is not a zombie).
pub fn is_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|text| {
        text.rfind(')')
            .and_then(|at| text[at + 1..].split_ascii_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stat_fields_are_counted_after_the_name() {
        let per_second = ticks_per_second();
        let line = format!(
            "4242 (turn pike) (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 {} {} 0 0 20 0 3 0 \
             12345 100000000 2000 18446744073709551615",
            3 * per_second,
            per_second / 2
        );
        let cpu = parse_process_stat(&line).unwrap();
        assert_eq!(cpu.user, Duration::from_secs(3));
        assert_eq!(cpu.system, Duration::from_millis(500));
        assert_eq!(parse_process_stat("4242 (x) S 1 2"), None);
    }

    #[test]
    fn host_stat_counts_busy_and_idle() {
        let per_second = ticks_per_second();
        let text = format!(
            "cpu  {u} 0 {s} {i} {w} 0 {q} {t} 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n",
            u = 2 * per_second,
            s = per_second,
            i = 5 * per_second,
            w = per_second,
            q = per_second,
            t = per_second,
        );
        let cpu = parse_host_stat(&text).unwrap();
        assert_eq!(cpu.busy, Duration::from_secs(4), "user, system and softirq");
        assert_eq!(cpu.interrupts, Duration::from_secs(1), "irq and softirq");
        assert_eq!(
            cpu.total,
            Duration::from_secs(11),
            "and idle, iowait and steal"
        );
        assert_eq!(parse_host_stat("intr 1 2 3\n"), None);
    }

    #[test]
    fn this_process_is_measured() {
        let pid = std::process::id();
        assert!(is_alive(pid));
        assert!(process_cpu(pid).is_ok());
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(host_cpu().unwrap().total > Duration::ZERO);
        assert!(!is_alive(u32::MAX));
    }

    #[test]
    fn the_softirq_threads_are_found_by_name() {
        assert_eq!(command_of("12 (ksoftirqd/0) S 2 0"), Some("ksoftirqd/0"));
        assert_eq!(
            command_of("4242 (turn pike) (x)) S 1"),
            Some("turn pike) (x)")
        );
        assert_eq!(command_of("garbage"), None);
        // Every Linux machine with more than a handful of seconds of uptime has them; their
        // time is a sum of what they used, never more than the host's busy time.
        let threads = softirq_threads_cpu();
        let host = host_cpu().unwrap();
        assert!(
            threads <= host.busy + Duration::from_secs(1),
            "{threads:?} vs {host:?}"
        );
        let has_threads = fs::read_dir("/proc")
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.starts_with("ksoftirqd/"))
            });
        assert!(has_threads, "no ksoftirqd thread in /proc");
    }
}
