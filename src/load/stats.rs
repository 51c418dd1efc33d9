//! What a run counts: round-trip times in a fixed-size histogram, each client's packets in
//! flight (sequence numbers, loss by timeout), and failures by cause. Nothing here allocates
//! per packet.

use std::collections::BTreeMap;

/// Values below this are counted exactly (1 µs buckets).
const LINEAR: u64 = 128;
/// Buckets per doubling above [`LINEAR`]: a relative error under 1/64.
const SUB_BITS: u32 = 6;
/// Doublings above [`LINEAR`] kept (up to 2^37 µs, a day and a half); larger values go into
/// the last bucket.
const OCTAVES: usize = 30;
const BUCKETS: usize = LINEAR as usize + OCTAVES * (1 << SUB_BITS);

/// A log-linear histogram of microseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, micros: u64) {
        let index = bucket_of(micros).min(BUCKETS - 1);
        self.counts[index] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }

    /// The value below which a fraction `q` (0..=1) of the recorded values lie: the middle of
    /// its bucket, never above the largest value recorded.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, width) = bucket_range(index);
                return Some((low + width / 2).min(self.max));
            }
        }
        Some(self.max)
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let octave = 63 - v.leading_zeros(); // >= 7
    let sub = (v >> (octave - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    LINEAR as usize + (octave as usize - 7) * (1 << SUB_BITS) + sub as usize
}

/// The lowest value of bucket `index` and its width.
fn bucket_range(index: usize) -> (u64, u64) {
    if index < LINEAR as usize {
        return (index as u64, 1);
    }
    let above = index - LINEAR as usize;
    let octave = 7 + (above >> SUB_BITS) as u32;
    let sub = (above & ((1 << SUB_BITS) - 1)) as u64;
    let width = 1u64 << (octave - SUB_BITS);
    ((1u64 << octave) + sub * width, width)
}

#[derive(Clone, Copy, Default)]
struct Slot {
    seq: u64,
    /// Nanoseconds since the run started, plus one; 0 for an empty slot.
    sent: u64,
}

/// One client's packets: sequence numbers handed out, those in flight with their send times,
/// and what became of them. A packet is lost when its echo has not come back within the
/// timeout [`Flow::expire`] is given, or when its slot is needed for a newer packet.
pub struct Flow {
    slots: Box<[Slot]>,
    mask: u64,
    next_seq: u64,
    oldest: u64,
    in_flight: u64,
    pub sent: u64,
    /// Echoes that came back in time.
    pub received: u64,
    /// Packets given up on (timed out, or pushed out of the window).
    pub lost: u64,
    /// Echoes of packets already given up on or already received.
    pub stale: u64,
}

impl Flow {
    /// A flow that tracks up to `capacity` packets in flight (rounded up to a power of two).
    pub fn new(capacity: usize) -> Flow {
        let capacity = capacity.clamp(2, 1 << 20).next_power_of_two();
        Flow {
            slots: vec![Slot::default(); capacity].into_boxed_slice(),
            mask: capacity as u64 - 1,
            next_seq: 0,
            oldest: 0,
            in_flight: 0,
            sent: 0,
            received: 0,
            lost: 0,
            stale: 0,
        }
    }

    /// The sequence number the next packet will carry (its low 32 bits go on the wire).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Records that the packet [`Flow::next_seq`] was sent at `now_ns`.
    pub fn on_send(&mut self, now_ns: u64) {
        let slot = &mut self.slots[(self.next_seq & self.mask) as usize];
        if slot.sent != 0 {
            // The packet that had this slot is capacity packets old: lost.
            self.lost += 1;
            self.in_flight -= 1;
        }
        *slot = Slot {
            seq: self.next_seq,
            sent: now_ns + 1,
        };
        self.next_seq += 1;
        self.in_flight += 1;
        self.sent += 1;
    }

    /// An echo of the packet whose sequence number ends in `wire_seq` came back at `now_ns`:
    /// its round-trip time in nanoseconds, or `None` if it was not in flight (a stale echo,
    /// counted, or one we never sent, which the caller counts).
    pub fn on_echo(&mut self, wire_seq: u32, now_ns: u64) -> Result<u64, NotInFlight> {
        let behind = u64::from((self.next_seq as u32).wrapping_sub(wire_seq));
        if behind == 0 || behind > self.next_seq {
            return Err(NotInFlight::NeverSent);
        }
        let seq = self.next_seq - behind;
        let slot = &mut self.slots[(seq & self.mask) as usize];
        if slot.sent == 0 || slot.seq != seq {
            self.stale += 1;
            return Err(NotInFlight::Stale);
        }
        let rtt = now_ns.saturating_sub(slot.sent - 1);
        slot.sent = 0;
        self.in_flight -= 1;
        self.received += 1;
        Ok(rtt)
    }

    /// Gives up on packets sent more than `timeout_ns` before `now_ns`.
    pub fn expire(&mut self, now_ns: u64, timeout_ns: u64) {
        while self.oldest < self.next_seq {
            let slot = &mut self.slots[(self.oldest & self.mask) as usize];
            if slot.sent != 0 && slot.seq == self.oldest {
                if now_ns.saturating_sub(slot.sent - 1) < timeout_ns {
                    return;
                }
                slot.sent = 0;
                self.in_flight -= 1;
                self.lost += 1;
            }
            self.oldest += 1;
        }
    }

    /// Gives up on every packet still in flight (the run is over).
    pub fn give_up(&mut self) {
        self.expire(u64::MAX, 0);
    }
}

/// Why an echo matched no packet in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotInFlight {
    /// Its packet was already received or given up on.
    Stale,
    /// Not a sequence number this flow has sent.
    NeverSent,
}

/// Failures by cause, e.g. `"401"`, `"timeout"`, `"refused"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failures(pub BTreeMap<String, u64>);

impl Failures {
    pub fn add(&mut self, cause: &str) {
        self.add_n(cause, 1);
    }

    pub fn add_n(&mut self, cause: &str, n: u64) {
        if n == 0 {
            return;
        }
        match self.0.get_mut(cause) {
            Some(count) => *count += n,
            None => {
                self.0.insert(cause.to_string(), n);
            }
        }
    }

    pub fn merge(&mut self, other: &Failures) {
        for (cause, n) in &other.0 {
            self.add_n(cause, *n);
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The cause name of an I/O error: short, stable words for the usual ones.
pub fn io_cause(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused",
        ConnectionReset => "reset",
        ConnectionAborted => "aborted",
        BrokenPipe => "broken_pipe",
        TimedOut => "timeout",
        AddrInUse => "address_in_use",
        AddrNotAvailable => "address_not_available",
        _ if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) => {
            "out_of_descriptors"
        }
        _ if e.raw_os_error() == Some(libc::ENOBUFS) => "no_buffer_space",
        _ if e.raw_os_error() == Some(libc::EHOSTUNREACH) => "unreachable",
        _ => "io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in (0..5000).chain([1 << 20, (1 << 20) + 12_345, 1 << 36]) {
            let b = bucket_of(v);
            assert!(b >= last, "{v}");
            last = b;
            let (low, width) = bucket_range(b);
            assert!(
                low <= v && v < low + width,
                "{v} in bucket {b} = {low}+{width}"
            );
            assert!(width * 64 <= low.max(64), "relative width at {v}");
        }
    }

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=10_000 {
            h.record(v);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        let p99 = h.quantile(0.99).unwrap() as f64;
        let p999 = h.quantile(0.999).unwrap() as f64;
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.02, "{p50}");
        assert!((p99 - 9900.0).abs() / 9900.0 < 0.02, "{p99}");
        assert!((p999 - 9990.0).abs() / 9990.0 < 0.02, "{p999}");
        assert_eq!(h.quantile(1.0), Some(10_000));
        assert_eq!(h.max(), Some(10_000));
        let mut other = Histogram::default();
        other.record(1 << 40); // beyond the last octave: still counted, max kept
        h.merge(&other);
        assert_eq!(h.count(), 10_001);
        assert_eq!(h.max(), Some(1 << 40));
    }

    #[test]
    fn a_flow_counts_echoes_losses_and_stale_echoes() {
        let mut flow = Flow::new(4);
        for t in 0..3 {
            flow.on_send(t * 10);
        }
        assert_eq!(flow.in_flight(), 3);
        assert_eq!(flow.on_echo(1, 100), Ok(90));
        assert_eq!(flow.on_echo(1, 101), Err(NotInFlight::Stale), "a duplicate");
        assert_eq!(flow.on_echo(7, 101), Err(NotInFlight::NeverSent));
        // Packet 0 (sent at 0) times out at 1000 with a 500 ns timeout; packet 2 (at 20) too.
        flow.expire(1000, 500);
        assert_eq!((flow.lost, flow.in_flight()), (2, 0));
        assert_eq!(flow.on_echo(0, 1001), Err(NotInFlight::Stale), "late");
        // Filling past the capacity pushes the oldest out as lost.
        for t in 0..5 {
            flow.on_send(2000 + t);
        }
        assert_eq!((flow.sent, flow.lost, flow.in_flight()), (8, 3, 4));
        flow.give_up();
        assert_eq!((flow.received, flow.lost, flow.in_flight()), (1, 7, 0));
        assert_eq!(flow.sent, flow.received + flow.lost);
        assert_eq!(flow.stale, 2);
    }

    #[test]
    fn sequence_numbers_survive_the_32_bit_wrap() {
        let mut flow = Flow::new(8);
        flow.next_seq = u64::from(u32::MAX) - 1;
        flow.oldest = flow.next_seq;
        for t in 0..4 {
            flow.on_send(t);
        }
        // Wire numbers u32::MAX - 1, u32::MAX, 0, 1.
        assert_eq!(flow.on_echo(0, 10), Ok(8));
        assert_eq!(flow.on_echo(u32::MAX, 10), Ok(9));
        assert_eq!(flow.received, 2);
    }

    #[test]
    fn failures_add_up_by_cause() {
        let mut f = Failures::default();
        f.add("401");
        f.add_n("timeout", 3);
        f.add_n("none", 0);
        let mut g = Failures::default();
        g.add("401");
        f.merge(&g);
        assert_eq!(f.total(), 5);
        assert_eq!(f.0.get("401"), Some(&2));
        assert!(!f.0.contains_key("none"));
    }
}
