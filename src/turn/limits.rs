//! Rate limiting and node-wide quotas: GCRA token buckets (one timestamp each, so a shared
//! bucket is a single atomic), the allocation ledger the workers share, and the bounded table
//! of unauthenticated sources.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::auth::Principal;

/// Nanoseconds in a second.
const SECOND: u64 = 1_000_000_000;
/// Cells in the table of unauthenticated sources: a fixed 512 KiB whatever the flood.
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

/// The same limit shared by several allocations, possibly on several workers: one atomic.
#[derive(Debug)]
pub struct SharedByteRate {
    bits_per_second: u64,
    tat: AtomicU64,
}

impl SharedByteRate {
    pub fn new(bits_per_second: u64) -> Self {
        SharedByteRate {
            bits_per_second,
            tat: AtomicU64::new(0),
        }
    }

    /// Charges `bytes` at `now_ns` if the rate allows.
    pub fn allow(&self, now_ns: u64, bytes: usize) -> bool {
        let increment = transmit_ns(bytes, self.bits_per_second);
        self.tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                next_tat(tat, now_ns, increment, SECOND)
            })
            .is_ok()
    }
}

/// GCRA step: the new theoretical arrival time, or `None` when admitting `increment` more
/// would put it more than `tolerance` ahead of `now`.
fn next_tat(tat: u64, now: u64, increment: u64, tolerance: u64) -> Option<u64> {
    let next = tat.max(now).saturating_add(increment);
    (next - now <= tolerance).then_some(next)
}

/// Answers per second to unauthenticated requests, per source IP, in a fixed table of cells
/// indexed by a keyed hash of the IP: memory is bounded whatever the number of sources, and an
/// attacker cannot aim at a victim's cell without knowing the per-process key.
pub struct SourceLimiter {
    cells: Box<[AtomicU64]>,
    hasher: foldhash::fast::RandomState,
    /// Nanoseconds between answers at the steady rate; 0 = unlimited.
    interval: u64,
    /// How far ahead a source may run: the burst, less one answer.
    tolerance: u64,
}

impl SourceLimiter {
    /// `rate` answers per second with a burst of `2 × rate`; 0 means unlimited.
    pub fn new(rate: u32) -> Self {
        let interval = if rate == 0 {
            0
        } else {
            SECOND / u64::from(rate)
        };
        let cells = if rate == 0 { 0 } else { SOURCE_CELLS };
        SourceLimiter {
            cells: (0..cells).map(|_| AtomicU64::new(0)).collect(),
            hasher: foldhash::fast::RandomState::default(),
            interval,
            tolerance: interval * (2 * u64::from(rate)).saturating_sub(1),
        }
    }

    /// May `ip` be answered at `now_ns`? Charges one answer when it may.
    pub fn allow(&self, ip: IpAddr, now_ns: u64) -> bool {
        if self.interval == 0 {
            return true;
        }
        let index = (self.hasher.hash_one(ip) as usize) % self.cells.len();
        self.cells[index]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                let start = tat.max(now_ns);
                (start - now_ns <= self.tolerance).then_some(start + self.interval)
            })
            .is_ok()
    }
}

/// Another live node of the cluster, as its registry entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternate {
    pub transport: crate::config::Transport,
    pub address: std::net::SocketAddr,
    /// Allocations it holds: the least loaded is offered first.
    pub load: u64,
}

/// The other live nodes, refreshed by the cluster heartbeat; read only when this node must
/// turn a client away.
#[derive(Debug, Default)]
pub struct ClusterView {
    alternates: arc_swap::ArcSwap<Vec<Alternate>>,
}

impl ClusterView {
    pub fn set(&self, alternates: Vec<Alternate>) {
        self.alternates.store(Arc::new(alternates));
    }

    /// The least-loaded other node serving `transport` on the same address family as `like`.
    pub fn pick(
        &self,
        transport: crate::config::Transport,
        like: std::net::SocketAddr,
    ) -> Option<std::net::SocketAddr> {
        self.alternates
            .load()
            .iter()
            .filter(|a| a.transport == transport && a.address.is_ipv4() == like.is_ipv4())
            .min_by_key(|a| (a.load, a.address))
            .map(|a| a.address)
    }
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
    use crate::auth::CredentialKind;

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

    #[test]
    fn source_limiter_allows_a_burst_of_twice_the_rate_then_the_rate() {
        let limiter = SourceLimiter::new(20);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let now = 100 * SECOND;
        let burst = (0..100).filter(|_| limiter.allow(ip, now)).count();
        assert_eq!(burst, 40);
        assert!(
            limiter.allow(other, now),
            "another source has its own budget"
        );
        // One more every 50 ms.
        assert!(!limiter.allow(ip, now + 49 * MS));
        assert!(limiter.allow(ip, now + 50 * MS));
        assert!(!limiter.allow(ip, now + 50 * MS));
        let in_ten_seconds = (1..=10_000)
            .filter(|ms| limiter.allow(ip, now + 50 * MS + ms * MS))
            .count();
        assert_eq!(in_ten_seconds, 200);
        assert!(SourceLimiter::new(0).allow(ip, now));
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
