//! Rate limiting and node-wide quotas: GCRA token buckets (one timestamp each, so a shared
//! bucket is a single atomic), the allocation ledger the workers share, and the bounded table
//! of unauthenticated sources.
//!
//! Hand-written rather than a crate such as `governor`: a shared bucket is one `AtomicU64`
//! the workers update without a lock, and the source table a fixed size however many sources
//! flood it, which `tests/crowd.rs` and `tests/hostile.rs` load.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::credentials::Principal;

/// Nanoseconds in a second.
const SECOND: u64 = 1_000_000_000;
/// Cells in the table of unauthenticated sources: a fixed 768 KiB (a timestamp and a proof
/// deadline each) whatever the flood.
const SOURCE_CELLS: usize = 1 << 16;

/// Nanoseconds from `epoch` to `now`: the clock of every rate limit (workers share `epoch`).
pub fn nanos_since(epoch: std::time::Instant, now: std::time::Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// How long `bytes` take at `bits_per_second`, in nanoseconds.
fn transmit_ns(bytes: usize, bits_per_second: u64) -> u64 {
    let ns = (bytes as u128 * 8 * u128::from(SECOND)) / u128::from(bits_per_second.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// A byte-rate limit with a burst of one second, as a GCRA ("virtual scheduling"): the state
/// is the theoretical arrival time of the next byte.
#[derive(Debug, Clone, Copy)]
pub struct ByteRate {
    bits_per_second: u64,
    tat: u64,
}

impl ByteRate {
    pub fn new(bits_per_second: u64) -> Self {
        ByteRate {
            bits_per_second,
            tat: 0,
        }
    }

    /// The rate, in bits per second.
    pub fn bits_per_second(&self) -> u64 {
        self.bits_per_second
    }

    /// Charges `bytes` at `now_ns` (nanoseconds since the core's epoch) if the rate allows.
    pub fn allow(&mut self, now_ns: u64, bytes: usize) -> bool {
        match next_tat(
            self.tat,
            now_ns,
            transmit_ns(bytes, self.bits_per_second),
            SECOND,
        ) {
            Some(tat) => {
                self.tat = tat;
                true
            }
            None => false,
        }
    }
}

/// The same limit shared by several allocations, possibly on several workers: one atomic for
/// the state and one for the rate, which a reload may change while they relay (0: no limit).
#[derive(Debug)]
pub struct SharedByteRate {
    bits_per_second: AtomicU64,
    tat: AtomicU64,
}

impl SharedByteRate {
    /// A limit of `bits_per_second` (0: none, until [`SharedByteRate::set_bits_per_second`]).
    pub fn new(bits_per_second: u64) -> Self {
        SharedByteRate {
            bits_per_second: AtomicU64::new(bits_per_second),
            tat: AtomicU64::new(0),
        }
    }

    /// The limit now (0: none).
    pub fn bits_per_second(&self) -> u64 {
        self.bits_per_second.load(Ordering::Relaxed)
    }

    /// Changes the limit for what is charged from now on (0: none).
    pub fn set_bits_per_second(&self, bits_per_second: u64) {
        self.bits_per_second
            .store(bits_per_second, Ordering::Relaxed);
    }

    /// Charges `bytes` at `now_ns` if the rate allows.
    pub fn allow(&self, now_ns: u64, bytes: usize) -> bool {
        let bits_per_second = self.bits_per_second();
        if bits_per_second == 0 {
            return true;
        }
        let increment = transmit_ns(bytes, bits_per_second);
        self.tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                next_tat(tat, now_ns, increment, SECOND)
            })
            .is_ok()
    }

    /// Charges `bytes` at `now_ns` whatever the rate, and returns how many nanoseconds the
    /// sender must wait before sending them for the rate to hold (0: at once). For a TCP
    /// splice, which cannot drop what it relays: it waits instead.
    pub fn delay(&self, now_ns: u64, bytes: usize) -> u64 {
        let bits_per_second = self.bits_per_second();
        if bits_per_second == 0 {
            return 0;
        }
        let increment = transmit_ns(bytes, bits_per_second);
        let step = |tat: u64| tat.max(now_ns).saturating_add(increment);
        let previous = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| Some(step(tat)))
            .unwrap_or_else(|tat| tat);
        step(previous).saturating_sub(now_ns.saturating_add(SECOND))
    }
}

/// GCRA step: the new theoretical arrival time, or `None` when admitting `increment` more
/// would put it more than `tolerance` ahead of `now`.
fn next_tat(tat: u64, now: u64, increment: u64, tolerance: u64) -> Option<u64> {
    let next = tat.max(now).saturating_add(increment);
    (next - now <= tolerance).then_some(next)
}

/// The reflection budget: how many answers requests without valid credentials may get, as
/// `[limits]` sets it. See [`SourceLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReflectionBudget {
    /// Answers per second per source (IPv4 address, IPv6 /64); 0 = no per-source limit.
    pub source_rate: u32,
    /// Answers a source may get at once, its bucket's size (at least 1).
    pub source_burst: u32,
    /// Answers per second to unproven sources over the whole node; 0 = no node-wide limit.
    /// Its burst is one second of it, or `source_burst` if that is larger.
    pub node_rate: u32,
}

impl ReflectionBudget {
    /// No limit at all.
    pub const UNLIMITED: ReflectionBudget = ReflectionBudget {
        source_rate: 0,
        source_burst: 1,
        node_rate: 0,
    };
}

/// How long a source counts as proven after a request from it authenticated.
pub const PROVEN_FOR_SECS: u32 = 600;

/// What [`SourceLimiter::allow`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// The source has used its burst and rate.
    SourceOverBudget,
    /// The source is within its budget, but it has not proven itself and the node has
    /// answered as many unproven sources as `node_rate` allows.
    NodeOverBudget,
}

/// The budget of answers to requests without valid credentials over UDP, where a source
/// address can be spoofed and an answer may be a reflection towards a victim.
///
/// - Per source (an IPv4 address, an IPv6 /64): a bucket of `source_burst` answers refilled at
///   `source_rate` per second (a GCRA: one timestamp per cell).
/// - A request from the source that authenticates (MESSAGE-INTEGRITY under a NONCE this node
///   issued to that address, so the source received our earlier answer) gives one answer back,
///   never beyond a full bucket, and marks the source as proven for [`PROVEN_FOR_SECS`]: an
///   answer that led to authentication was no reflection. A crowd behind one NAT pays for each
///   client's 401 with that client's authenticated request, so its budget stays full; a
///   spoofed flood never authenticates.
/// - Node-wide: answers to sources not proven are also charged to one bucket of `node_rate`
///   per second, so a flood spread over many (spoofed) sources is bounded as a whole. Proven
///   sources are bounded by their own bucket only, so such a flood cannot lock out the crowds
///   that already use the node.
///
/// Cells are a fixed table indexed by a keyed hash of the source, so memory is bounded
/// whatever the number of sources, and an attacker cannot aim at a victim's cell without
/// knowing the per-process key. The table is made the first time a limit needs it (never
/// while both rates are 0). The parameters are atomics: a reload changes them in place.
pub struct SourceLimiter {
    table: std::sync::OnceLock<SourceTable>,
    hasher: foldhash::fast::SeedableRandomState,
    /// The node-wide bucket for unproven sources.
    node: AtomicU64,
    /// `source_rate` in the high half, `source_burst` in the low half: read together.
    source: AtomicU64,
    node_rate: AtomicU32,
}

/// The cells of [`SourceLimiter`].
struct SourceTable {
    /// Theoretical arrival time (ns since the epoch) of the next answer, per cell.
    cells: Box<[AtomicU64]>,
    /// Until when (seconds since the epoch, exclusive) each cell's source is proven; 0 = never.
    proven: Box<[AtomicU32]>,
}

impl SourceTable {
    fn new() -> Self {
        SourceTable {
            cells: (0..SOURCE_CELLS).map(|_| AtomicU64::new(0)).collect(),
            proven: (0..SOURCE_CELLS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn is_proven(&self, cell: usize, now_ns: u64) -> bool {
        seconds(now_ns) < self.proven[cell].load(Ordering::Relaxed)
    }

    fn give_back(&self, cell: usize, budget: ReflectionBudget, now_ns: u64) {
        if budget.source_rate > 0 {
            let interval = interval(budget.source_rate);
            let _ = self.cells[cell].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                give_back(tat, now_ns, interval)
            });
        }
    }
}

/// Nanoseconds between answers at `rate` per second (not 0); at least 1, so rates beyond
/// 10^9 a second are 10^9 a second.
fn interval(rate: u32) -> u64 {
    (SECOND / u64::from(rate)).max(1)
}

/// GCRA charge of one answer of `interval` ns with a burst of `burst`: the new theoretical
/// arrival time, or `None` when the bucket is empty.
fn charge(tat: u64, now: u64, interval: u64, burst: u32) -> Option<u64> {
    let tolerance = interval.saturating_mul(u64::from(burst.max(1) - 1));
    let start = tat.max(now);
    (start - now <= tolerance).then(|| start.saturating_add(interval))
}

/// Gives one answer of `interval` back, never beyond a full bucket (`tat <= now`); `None`
/// when the bucket is full already.
fn give_back(tat: u64, now: u64, interval: u64) -> Option<u64> {
    (tat > now).then(|| tat.saturating_sub(interval).max(now))
}

impl SourceLimiter {
    pub fn new(budget: ReflectionBudget) -> Self {
        Self::with_hasher(budget, foldhash::fast::SeedableRandomState::random())
    }

    /// A limiter whose cells do not depend on a random key: tests whose sources must not
    /// share a cell get the same cells on every run.
    #[cfg(test)]
    pub(crate) fn with_fixed_key(budget: ReflectionBudget) -> Self {
        Self::with_hasher(budget, foldhash::fast::SeedableRandomState::fixed())
    }

    fn with_hasher(budget: ReflectionBudget, hasher: foldhash::fast::SeedableRandomState) -> Self {
        let limiter = SourceLimiter {
            table: std::sync::OnceLock::new(),
            hasher,
            node: AtomicU64::new(0),
            source: AtomicU64::new(0),
            node_rate: AtomicU32::new(0),
        };
        limiter.set(budget);
        limiter
    }

    /// Takes a new budget (a reload): what each source and the node have used stays counted.
    pub fn set(&self, budget: ReflectionBudget) {
        let packed = (u64::from(budget.source_rate) << 32) | u64::from(budget.source_burst.max(1));
        self.source.store(packed, Ordering::Relaxed);
        self.node_rate.store(budget.node_rate, Ordering::Relaxed);
    }

    /// The budget in force.
    pub fn budget(&self) -> ReflectionBudget {
        let packed = self.source.load(Ordering::Relaxed);
        ReflectionBudget {
            source_rate: (packed >> 32) as u32,
            source_burst: packed as u32,
            node_rate: self.node_rate.load(Ordering::Relaxed),
        }
    }

    fn cell(&self, source: IpAddr) -> usize {
        (self.hasher.hash_one(reflection_source(source)) as usize) % SOURCE_CELLS
    }

    /// The table, made now if this is its first use.
    fn table(&self) -> &SourceTable {
        self.table.get_or_init(SourceTable::new)
    }

    /// May a request without valid credentials from `source` be answered at `now_ns`
    /// (nanoseconds since the epoch the workers share)? Charges the answer when it may.
    pub fn allow(&self, source: IpAddr, now_ns: u64) -> Verdict {
        let budget = self.budget();
        if budget.source_rate == 0 && budget.node_rate == 0 {
            return Verdict::Answer;
        }
        let table = self.table();
        let cell = self.cell(source);
        if budget.source_rate > 0 {
            let interval = interval(budget.source_rate);
            let charged =
                table.cells[cell].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                    charge(tat, now_ns, interval, budget.source_burst)
                });
            if charged.is_err() {
                return Verdict::SourceOverBudget;
            }
        }
        if budget.node_rate > 0 && !table.is_proven(cell, now_ns) {
            let burst = budget.node_rate.max(budget.source_burst);
            let interval = interval(budget.node_rate);
            let charged = self
                .node
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                    charge(tat, now_ns, interval, burst)
                });
            if charged.is_err() {
                // Not answered: the source gets back what it was charged.
                table.give_back(cell, budget, now_ns);
                return Verdict::NodeOverBudget;
            }
        }
        Verdict::Answer
    }

    /// A request from `source` authenticated at `now_ns`: gives one answer back to its bucket
    /// and counts it as proven for [`PROVEN_FOR_SECS`]. Nothing to do while both rates are 0.
    pub fn prove(&self, source: IpAddr, now_ns: u64) {
        let budget = self.budget();
        if budget.source_rate == 0 && budget.node_rate == 0 {
            return;
        }
        let table = self.table();
        let cell = self.cell(source);
        table.give_back(cell, budget, now_ns);
        let until = seconds(now_ns).saturating_add(PROVEN_FOR_SECS);
        // Most proofs come from sources proven a moment ago: only a later deadline is written.
        if table.proven[cell].load(Ordering::Relaxed) < until {
            table.proven[cell].fetch_max(until, Ordering::Relaxed);
        }
    }

    /// Whether `source` has proven itself recently (see [`SourceLimiter::prove`]).
    #[cfg(test)]
    pub fn is_proven_source(&self, source: IpAddr, now_ns: u64) -> bool {
        self.table
            .get()
            .is_some_and(|table| table.is_proven(self.cell(source), now_ns))
    }
}

/// Whole seconds in `ns`, saturating at `u32::MAX`.
fn seconds(ns: u64) -> u32 {
    u32::try_from(ns / SECOND).unwrap_or(u32::MAX)
}

/// What one reflection budget is kept for: an IPv4 address (IPv4-mapped IPv6 included), or an
/// IPv6 /64 (a host or a LAN is usually given a whole /64, and a victim's network is what a
/// reflection fills).
pub fn reflection_source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !u128::from(u64::MAX),
            )),
        },
    }
}

/// Another live node of the cluster, as its registry entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternate {
    pub transport: super::Transport,
    pub address: std::net::SocketAddr,
    /// Allocations it holds: the least loaded is offered first.
    pub load: u64,
}

/// The least-loaded of `alternates` serving `transport` on the same address family as `like`.
pub(super) fn pick_alternate(
    alternates: &[Alternate],
    transport: super::Transport,
    like: std::net::SocketAddr,
) -> Option<std::net::SocketAddr> {
    alternates
        .iter()
        .filter(|a| a.transport == transport && a.address.is_ipv4() == like.is_ipv4())
        .min_by_key(|a| (a.load, a.address))
        .map(|a| a.address)
}

/// Why the ledger refused an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaError {
    User,
    Total,
}

#[derive(Debug)]
struct UserUsage {
    allocations: u32,
    bandwidth: Option<Arc<SharedByteRate>>,
}

/// The limits an allocation is counted against (0 = none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub user_allocations: u32,
    pub total_allocations: u32,
    /// Bits per second over all of the user's allocations.
    pub user_bandwidth: Option<u64>,
}

/// Allocations per user and in total on this node, shared by the workers. Touched when an
/// allocation is made or ends, never by relayed packets. Users are [`Principal`]s: a REST id
/// and a long-term user of the same name count separately.
#[derive(Debug, Default)]
pub struct AllocationLedger {
    total: AtomicU32,
    users: Mutex<HashMap<Principal, UserUsage>>,
}

impl AllocationLedger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one more allocation for `user` within `quota`; returns the user's shared
    /// bandwidth limit (made with the user's first allocation).
    pub fn acquire(
        &self,
        user: &Principal,
        quota: Quota,
    ) -> Result<Option<Arc<SharedByteRate>>, QuotaError> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let held = users.get(user).map_or(0, |u| u.allocations);
        if quota.user_allocations > 0 && held >= quota.user_allocations {
            return Err(QuotaError::User);
        }
        let total = self.total.load(Ordering::Relaxed);
        if quota.total_allocations > 0 && total >= quota.total_allocations {
            return Err(QuotaError::Total);
        }
        self.total.store(total + 1, Ordering::Relaxed);
        let usage = users.entry(user.clone()).or_insert_with(|| UserUsage {
            allocations: 0,
            bandwidth: quota
                .user_bandwidth
                .map(|bps| Arc::new(SharedByteRate::new(bps))),
        });
        usage.allocations += 1;
        Ok(usage.bandwidth.clone())
    }

    /// Counts one allocation of `user` less.
    pub fn release(&self, user: &Principal) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(usage) = users.get_mut(user) {
            usage.allocations -= 1;
            if usage.allocations == 0 {
                users.remove(user);
            }
            let total = self.total.load(Ordering::Relaxed);
            self.total.store(total.saturating_sub(1), Ordering::Relaxed);
        }
    }

    /// Allocations counted now.
    pub fn total(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::credentials::CredentialKind;

    const MS: u64 = 1_000_000;

    #[test]
    fn byte_rate_allows_one_second_of_burst_then_the_rate() {
        // 8 kbit/s = 1000 bytes/s.
        let mut rate = ByteRate::new(8_000);
        let start = 5 * SECOND;
        assert!(rate.allow(start, 1000));
        assert!(!rate.allow(start, 1));
        // Half a second later, 500 bytes more fit, not 501.
        assert!(!rate.allow(start + 500 * MS, 501));
        assert!(rate.allow(start + 500 * MS, 500));
        // Over 10 s of greedy sending, the total is 10 s of rate plus the first burst.
        let mut rate = ByteRate::new(8_000);
        let mut sent = 0;
        for ms in 0..10_000 {
            while rate.allow(start + ms * MS, 100) {
                sent += 100;
            }
        }
        assert!((10_900..=11_000).contains(&sent), "{sent}");
    }

    #[test]
    fn shared_byte_rate_is_one_budget_for_all_holders() {
        let rate = Arc::new(SharedByteRate::new(8_000));
        let other = rate.clone();
        assert!(rate.allow(SECOND, 600));
        assert!(!other.allow(SECOND, 600));
        assert!(other.allow(SECOND, 400));
    }

    fn fixed_limiter(budget: ReflectionBudget) -> SourceLimiter {
        SourceLimiter::with_fixed_key(budget)
    }

    /// `n` IPv4 sources in distinct cells, none in `avoid`'s.
    fn distinct_sources(limiter: &SourceLimiter, n: usize, avoid: IpAddr) -> Vec<IpAddr> {
        let mut cells = std::collections::HashSet::from([limiter.cell(avoid)]);
        (0x0A00_0000u32..)
            .map(|bits| IpAddr::V4(std::net::Ipv4Addr::from(bits)))
            .filter(|&source| cells.insert(limiter.cell(source)))
            .take(n)
            .collect()
    }

    fn budget(source_rate: u32, source_burst: u32, node_rate: u32) -> ReflectionBudget {
        ReflectionBudget {
            source_rate,
            source_burst,
            node_rate,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Answers `source` gets out of `tries` at `now`.
    fn answers(limiter: &SourceLimiter, source: IpAddr, now: u64, tries: usize) -> usize {
        (0..tries)
            .filter(|_| limiter.allow(source, now) == Verdict::Answer)
            .count()
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let limiter = fixed_limiter(budget(20, 40, 0));
        let source = ip("192.0.2.1");
        let now = 100 * SECOND;
        assert_eq!(answers(&limiter, source, now, 100), 40);
        assert_eq!(limiter.allow(source, now), Verdict::SourceOverBudget);
        assert_eq!(
            limiter.allow(ip("192.0.2.2"), now),
            Verdict::Answer,
            "another source has its own budget"
        );
        // One more every 50 ms.
        assert_eq!(
            limiter.allow(source, now + 49 * MS),
            Verdict::SourceOverBudget
        );
        assert_eq!(limiter.allow(source, now + 50 * MS), Verdict::Answer);
        assert_eq!(
            limiter.allow(source, now + 50 * MS),
            Verdict::SourceOverBudget
        );
        let in_ten_seconds = (1..=10_000)
            .filter(|ms| limiter.allow(source, now + 50 * MS + ms * MS) == Verdict::Answer)
            .count();
        assert_eq!(in_ten_seconds, 200);
    }

    #[test]
    fn the_shipped_budget_answers_a_burst_of_2000_then_20_a_second() {
        let limiter = fixed_limiter(ReflectionBudget::from_limits(
            &crate::config::Limits::default(),
        ));
        assert_eq!(limiter.budget(), budget(20, 2000, 10_000));
        let source = ip("192.0.2.1");
        let now = 5 * SECOND;
        assert_eq!(answers(&limiter, source, now, 5000), 2000);
        // An empty bucket refills at 20/s: 20 answers in the next second, not 21.
        let next_second = (1..=1000)
            .map(|ms| answers(&limiter, source, now + ms * MS, 5))
            .sum::<usize>();
        assert_eq!(next_second, 20);
    }

    #[test]
    fn a_burst_of_one_answers_once_per_interval() {
        let limiter = fixed_limiter(budget(4, 1, 0));
        let source = ip("192.0.2.1");
        assert_eq!(answers(&limiter, source, SECOND, 10), 1);
        assert_eq!(answers(&limiter, source, SECOND + 249 * MS, 10), 0);
        assert_eq!(answers(&limiter, source, SECOND + 250 * MS, 10), 1);
    }

    #[test]
    fn an_authenticated_request_gives_one_answer_back_never_beyond_a_full_bucket() {
        let limiter = fixed_limiter(budget(1, 5, 0));
        let source = ip("192.0.2.1");
        let now = 10 * SECOND;
        // Proofs while the bucket is full give nothing more.
        for _ in 0..10 {
            limiter.prove(source, now);
        }
        assert_eq!(answers(&limiter, source, now, 100), 5);
        // Each proof gives back exactly one answer.
        limiter.prove(source, now);
        assert_eq!(answers(&limiter, source, now, 100), 1);
        limiter.prove(source, now);
        limiter.prove(source, now);
        assert_eq!(answers(&limiter, source, now, 100), 2);
        // Ten proofs half a second later fill the bucket (half an answer of it refilled by
        // then), no more: five answers.
        for _ in 0..10 {
            limiter.prove(source, now + 500 * MS);
        }
        assert_eq!(answers(&limiter, source, now + 500 * MS, 100), 5);
    }

    #[test]
    fn a_crowd_pays_for_its_challenges_with_its_authenticated_requests() {
        // 5,000 clients behind one address, 50 of them waiting for their answer at any time,
        // against a burst of 100 and no time passing: every challenge is answered, and the
        // bucket is as full as 50 outstanding challenges leave it.
        let limiter = fixed_limiter(budget(20, 100, 1000));
        let nat = ip("198.51.100.7");
        let now = 42 * SECOND;
        let mut waiting = 0;
        let mut answered = 0;
        for _ in 0..5000 {
            if waiting == 50 {
                limiter.prove(nat, now);
                waiting -= 1;
            }
            if limiter.allow(nat, now) == Verdict::Answer {
                answered += 1;
                waiting += 1;
            }
        }
        assert_eq!(answered, 5000);
        assert_eq!(answers(&limiter, nat, now, 1000), 50);
        // A spoofed flood from a source that never authenticates gets its burst, no more.
        let victim = ip("203.0.113.9");
        assert_eq!(answers(&limiter, victim, now, 100_000), 100);
    }

    #[test]
    fn unproven_sources_share_the_node_budget_and_proven_ones_do_not() {
        // Node: 100/s, burst max(100, 40) = 100 at once.
        let limiter = fixed_limiter(budget(20, 40, 100));
        let now = 7 * SECOND;
        let proven = ip("192.0.2.77");
        let sources = distinct_sources(&limiter, 200, proven);
        let answered = sources
            .iter()
            .filter(|&&s| limiter.allow(s, now) == Verdict::Answer)
            .count();
        assert_eq!(answered, 100);
        assert_eq!(limiter.allow(sources[150], now), Verdict::NodeOverBudget);
        // One more every 10 ms, to any unproven source.
        assert_eq!(
            limiter.allow(sources[150], now + 9 * MS),
            Verdict::NodeOverBudget
        );
        assert_eq!(limiter.allow(sources[151], now + 10 * MS), Verdict::Answer);
        assert_eq!(
            limiter.allow(sources[152], now + 10 * MS),
            Verdict::NodeOverBudget
        );
        // A proven source is held to its own bucket only.
        limiter.prove(proven, now);
        assert!(limiter.is_proven_source(proven, now));
        assert_eq!(answers(&limiter, proven, now + 10 * MS, 100), 40);
        assert_eq!(
            limiter.allow(proven, now + 10 * MS),
            Verdict::SourceOverBudget
        );
    }

    #[test]
    fn a_refusal_by_the_node_costs_the_source_nothing() {
        // Node burst max(1, 3) = 3.
        let limiter = fixed_limiter(budget(20, 3, 1));
        let now = SECOND;
        let refused = ip("192.0.2.4");
        for source in distinct_sources(&limiter, 3, refused) {
            assert_eq!(limiter.allow(source, now), Verdict::Answer);
        }
        for _ in 0..10 {
            assert_eq!(limiter.allow(refused, now), Verdict::NodeOverBudget);
        }
        // Once proven, its bucket is whole: three answers.
        limiter.prove(refused, now);
        assert_eq!(answers(&limiter, refused, now, 10), 3);
    }

    #[test]
    fn a_proof_lasts_ten_minutes() {
        let limiter = fixed_limiter(budget(20, 40, 100));
        let source = ip("192.0.2.1");
        let now = 1000 * SECOND + 300 * MS;
        assert!(!limiter.is_proven_source(source, now));
        limiter.prove(source, now);
        assert!(limiter.is_proven_source(source, now + 599 * SECOND));
        assert!(!limiter.is_proven_source(source, now + 600 * SECOND));
        // A later proof extends it; an earlier one does not shorten it.
        limiter.prove(source, now + 300 * SECOND);
        limiter.prove(source, now);
        assert!(limiter.is_proven_source(source, now + 899 * SECOND));
        assert!(!limiter.is_proven_source(source, now + 900 * SECOND));
    }

    #[test]
    fn ipv6_sources_share_a_budget_per_64_and_mapped_ipv4_is_ipv4() {
        let limiter = fixed_limiter(budget(20, 10, 0));
        let now = SECOND;
        assert_eq!(answers(&limiter, ip("2001:db8::1"), now, 6), 6);
        assert_eq!(answers(&limiter, ip("2001:db8::ffff:2"), now, 10), 4);
        assert_eq!(answers(&limiter, ip("2001:db8:0:1::1"), now, 20), 10);
        assert_eq!(answers(&limiter, ip("192.0.2.1"), now, 3), 3);
        assert_eq!(answers(&limiter, ip("::ffff:192.0.2.1"), now, 20), 7);
        assert_eq!(reflection_source(ip("2001:db8::1")), ip("2001:db8::"));
    }

    #[test]
    fn zero_rates_mean_no_limit() {
        let source = ip("192.0.2.1");
        let limiter = fixed_limiter(ReflectionBudget::UNLIMITED);
        assert_eq!(answers(&limiter, source, SECOND, 100_000), 100_000);
        // No per-source limit, a node-wide one of 5/s (burst 5).
        let limiter = fixed_limiter(budget(0, 1, 5));
        assert_eq!(answers(&limiter, source, SECOND, 100), 5);
        limiter.prove(source, SECOND);
        assert_eq!(answers(&limiter, source, SECOND, 100), 100);
    }

    #[test]
    fn a_new_budget_applies_to_what_was_used() {
        let limiter = fixed_limiter(budget(20, 40, 0));
        let source = ip("192.0.2.1");
        let now = SECOND;
        assert_eq!(answers(&limiter, source, now, 100), 40);
        limiter.set(budget(20, 100, 0));
        assert_eq!(answers(&limiter, source, now, 100), 60);
        limiter.set(budget(20, 10, 0));
        // 100 answers used (5 s of rate) and a burst of 10 now: the next one once all but 9
        // are refilled, 4.55 s later.
        assert_eq!(answers(&limiter, source, now + 4_549 * MS, 10), 0);
        assert_eq!(answers(&limiter, source, now + 4_550 * MS, 10), 1);
        limiter.set(budget(0, 10, 0));
        assert_eq!(answers(&limiter, source, now + 4_550 * MS, 100), 100);
    }

    fn user(name: &str) -> Principal {
        Principal::new(CredentialKind::LongTerm, name)
    }

    #[test]
    fn ledger_counts_users_and_total() {
        let ledger = AllocationLedger::new();
        let quota = Quota {
            user_allocations: 2,
            total_allocations: 3,
            user_bandwidth: None,
        };
        assert!(ledger.acquire(&user("alice"), quota).is_ok());
        assert!(ledger.acquire(&user("alice"), quota).is_ok());
        assert_eq!(
            ledger.acquire(&user("alice"), quota).err(),
            Some(QuotaError::User)
        );
        // A user whose override allows more.
        let generous = Quota {
            user_allocations: 5,
            ..quota
        };
        assert!(ledger.acquire(&user("bob"), generous).is_ok());
        assert_eq!(
            ledger.acquire(&user("carol"), quota).err(),
            Some(QuotaError::Total)
        );
        ledger.release(&user("alice"));
        assert!(ledger.acquire(&user("carol"), quota).is_ok());
        assert_eq!(ledger.total(), 3);
        ledger.release(&user("nobody"));
        assert_eq!(ledger.total(), 3);
    }

    #[test]
    fn ledger_shares_one_bandwidth_budget_per_user() {
        let ledger = AllocationLedger::new();
        let quota = Quota {
            user_bandwidth: Some(8_000),
            ..Quota::default()
        };
        let first = ledger.acquire(&user("alice"), quota).unwrap().unwrap();
        let second = ledger.acquire(&user("alice"), quota).unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        let bob = ledger.acquire(&user("bob"), quota).unwrap().unwrap();
        assert!(!Arc::ptr_eq(&first, &bob));
    }

    #[test]
    fn rest_ids_and_long_term_users_of_one_name_count_apart() {
        let ledger = AllocationLedger::new();
        let quota = Quota {
            user_allocations: 1,
            user_bandwidth: Some(8_000),
            ..Quota::default()
        };
        let rest = Principal::new(CredentialKind::Rest, "1700000000:alice");
        let long_term = user("alice");
        let a = ledger.acquire(&long_term, quota).unwrap().unwrap();
        let b = ledger.acquire(&rest, quota).unwrap().unwrap();
        assert!(!Arc::ptr_eq(&a, &b), "separate bandwidth budgets");
        assert_eq!(ledger.acquire(&rest, quota).err(), Some(QuotaError::User));
        assert_eq!(
            ledger.acquire(&long_term, quota).err(),
            Some(QuotaError::User)
        );
        ledger.release(&rest);
        assert_eq!(
            ledger.acquire(&long_term, quota).err(),
            Some(QuotaError::User)
        );
        assert!(ledger.acquire(&rest, quota).is_ok());
        assert_eq!(ledger.total(), 2);
    }
}
