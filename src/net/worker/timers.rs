//! A worker's clock: the core's next deadline, and the publication of its counters.

use std::rc::Rc;
use std::time::Instant;

use tokio::sync::Notify;

use super::WorkerCounters;
use super::offload::CREDIT_EVERY;
use super::{Shared, Worker};

/// How often a worker publishes its counters.
pub const PUBLISH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

impl Worker {
    /// Makes the counters visible to the rest of the process (for what samples them: rates,
    /// the cluster registry). Constant work, whatever the number of allocations: anything about
    /// the allocations themselves is copied out only when asked for (see `command`), except
    /// the kernel's counts of offloaded allocations, read every [`CREDIT_EVERY`] times.
    pub(super) fn publish(&mut self) {
        self.publications = self.publications.wrapping_add(1);
        if self.publications % CREDIT_EVERY == 0 {
            self.credit_offloaded();
        }
        *self.published.lock().unwrap_or_else(|e| e.into_inner()) = self.counters();
    }

    /// This worker's counters now.
    pub(super) fn counters(&self) -> WorkerCounters {
        WorkerCounters {
            core: self.core.stats(),
            allocations: self.core.allocation_count() as u64,
            tcp_rejected: self.stream_counters.rejected(),
            tcp_rejected_per_source: self.stream_counters.rejected_per_source(),
            stream_timeouts: self.stream_counters.timeouts(),
            stream_write_timeouts: self.stream_counters.write_timeouts(),
            proxy_refused: self.stream_counters.proxy_refused(),
            dropped_stream_full: self.dropped_stream_full.get(),
            dropped_send_failed: self.dropped_send_failed.get(),
        }
    }
}

pub(super) async fn timer_loop(shared: Shared, notify: Rc<Notify>) {
    let mut publish = tokio::time::interval(PUBLISH_INTERVAL);
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = shared.borrow().core.poll_timeout();
        // Far enough to mean "no deadline"; the publish tick wakes the loop anyway.
        let deadline =
            next.unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = notify.notified() => continue,
            _ = publish.tick() => {
                let mut worker = shared.borrow_mut();
                worker.publish();
                // Unclaimed EVEN-PORT reservations give their port back after 30 s.
                worker.relay.reservations.expire(Instant::now());
                continue;
            }
        }
        let now = Instant::now();
        // Allocations that expire together are logged in one write.
        let _lines = crate::logbuf::Hold::begin();
        let mut worker = shared.borrow_mut();
        worker.core.handle_timeout(now);
        worker.after_core_call(now);
        worker.relay.reservations.expire(now);
    }
}
