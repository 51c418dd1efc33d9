//! What the rest of the process sees of a running node through [`NodeHandle`]: the counters
//! the workers publish, and the answers they give when asked (summaries, allocation pages,
//! closing one); draining and the host's addresses, which it tells them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::command::{ANSWER_TIMEOUT, Command, Commander, Unanswered, all_answered};
use super::counters::NodeCounters;
use super::host::{host_addresses, log_host_change};
use super::{BoundListener, NodeHandle, offload, status};

/// The node's allocations counted for `/api/v1/status` and `/metrics`, and its counters, as
/// the workers answered a request.
#[derive(Debug, Clone, Default)]
pub struct NodeSummary {
    pub counters: NodeCounters,
    /// Allocations with a relay socket, by client transport in [`status::TRANSPORTS`] order.
    pub by_transport: [u64; 3],
    /// The same by relay family: IPv4, IPv6.
    pub by_family: [u64; 2],
    /// Distinct user ids among them (when asked for).
    pub users: Option<usize>,
}

impl NodeSummary {
    /// Allocations with a relay socket.
    pub fn allocations(&self) -> u64 {
        self.by_transport.iter().sum()
    }
}

/// One page of `/api/v1/allocations`.
#[derive(Debug, Clone, Default)]
pub struct AllocationPage {
    pub allocations: Vec<status::AllocationInfo>,
    /// The id to pass as the next page's cursor, when more allocations match.
    pub next_cursor: Option<String>,
}

/// Requests that make workers walk their allocations (status, metrics, the allocation list)
/// go to the workers one at a time, and a status request that waited while another was
/// answered takes that answer when it was asked for after the request came.
pub(super) struct Snapshots {
    pub(super) turn: tokio::sync::Semaphore,
    /// The last summary: when it was asked for, and what it said.
    pub(super) last: Mutex<Option<(tokio::time::Instant, Arc<NodeSummary>)>>,
}

impl NodeHandle {
    /// Whether the kernel fast path is active, and its totals since the start (what it relayed
    /// and what it left to user space, by reason).
    pub fn offload(&self) -> (bool, offload::Totals) {
        match &self.fast_path {
            Some(fast_path) => (true, fast_path.totals().unwrap_or_default()),
            None => (false, offload::Totals::default()),
        }
    }

    /// The listeners, with the ports actually bound.
    pub fn listeners(&self) -> Vec<BoundListener> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The node's counters, as the workers last published them (at most 100 ms old): for
    /// what samples them periodically (rates, the cluster registry). What must include
    /// everything the workers have done asks them: [`NodeHandle::counters_now`].
    pub fn counters(&self) -> NodeCounters {
        let mut total = self.node_counters();
        for published in &self.counters {
            let worker = *published.lock().unwrap_or_else(|e| e.into_inner());
            total.workers.add(&worker);
        }
        total
    }

    /// The node-wide counters, without the workers' yet.
    fn node_counters(&self) -> NodeCounters {
        NodeCounters {
            tcp_connections: u64::from(self.streams.live.load(Ordering::Relaxed)),
            offload_carried: self
                .fast_path
                .as_ref()
                .map_or(0, |fast_path| fast_path.carried().unwrap_or(0)),
            ..NodeCounters::default()
        }
    }

    /// The node's counters as the workers answer now: everything each worker had done when
    /// it got the request is counted. Waits at most [`ANSWER_TIMEOUT`]; a worker that did not
    /// answer by then is named in the error, which also carries the counters with that
    /// worker's as last published.
    pub async fn counters_now(&self) -> Result<NodeCounters, (Unanswered, NodeCounters)> {
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        let answers = self
            .commander
            .ask(0..self.counters.len(), Command::Counters, deadline)
            .await;
        let mut total = self.node_counters();
        let mut unanswered = Vec::new();
        for (worker, answer) in answers {
            let counters = answer.unwrap_or_else(|| {
                unanswered.push(worker);
                *self.counters[worker]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
            });
            total.workers.add(&counters);
        }
        if unanswered.is_empty() {
            Ok(total)
        } else {
            Err((
                Unanswered {
                    workers: unanswered,
                },
                total,
            ))
        }
    }

    /// The allocations counted and the counters, as the workers answer now (for status and
    /// metrics); with the number of distinct users when `users`. Requests that walk the
    /// allocations go to the workers one at a time; one that waited for another takes that
    /// other's answer when it was asked for after this one came. Waits at most
    /// [`ANSWER_TIMEOUT`] in all.
    pub async fn summary(&self, users: bool) -> Result<Arc<NodeSummary>, Unanswered> {
        let came = tokio::time::Instant::now();
        let deadline = came + ANSWER_TIMEOUT;
        let workers = || Unanswered {
            workers: (0..self.counters.len()).collect(),
        };
        let Ok(Ok(_turn)) = tokio::time::timeout_at(deadline, self.snapshots.turn.acquire()).await
        else {
            return Err(workers());
        };
        if let Some((asked, summary)) = &*self
            .snapshots
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            && *asked >= came
            && (summary.users.is_some() || !users)
        {
            return Ok(summary.clone());
        }
        let asked = tokio::time::Instant::now();
        let answers = self
            .commander
            .ask(
                0..self.counters.len(),
                |reply| Command::Summary { users, reply },
                deadline,
            )
            .await;
        let mut summary = NodeSummary {
            counters: self.node_counters(),
            ..NodeSummary::default()
        };
        let mut all_users: Vec<Box<str>> = Vec::new();
        for worker in all_answered(answers)? {
            summary.counters.workers.add(&worker.counters);
            for (total, count) in summary.by_transport.iter_mut().zip(worker.by_transport) {
                *total += count;
            }
            for (total, count) in summary.by_family.iter_mut().zip(worker.by_family) {
                *total += count;
            }
            all_users.extend(worker.users.into_iter().flatten());
        }
        if users {
            all_users.sort_unstable();
            all_users.dedup();
            summary.users = Some(all_users.len());
        }
        let summary = Arc::new(summary);
        *self
            .snapshots
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((asked, summary.clone()));
        Ok(summary)
    }

    /// A page of the allocations that have a relay socket, in id order (worker, then slot
    /// index and generation): those of `user` only when given, after the allocation named by
    /// `after` (a previous page's cursor), at most `limit`. The workers are asked in turn,
    /// each for what the page still lacks, so at most `limit` allocations are copied out.
    /// Waits at most [`ANSWER_TIMEOUT`] in all.
    pub async fn allocations(
        &self,
        user: Option<String>,
        after: Option<(usize, crate::turn::AllocationId)>,
        limit: usize,
    ) -> Result<AllocationPage, Unanswered> {
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        let first = after.map_or(0, |(worker, _)| worker);
        let workers = self.counters.len();
        let Ok(Ok(_turn)) = tokio::time::timeout_at(deadline, self.snapshots.turn.acquire()).await
        else {
            return Err(Unanswered {
                workers: (first..workers).collect(),
            });
        };
        let mut page = AllocationPage::default();
        let mut more = false;
        for worker in first..workers {
            // Once the page is full, a worker is only asked whether anything matches.
            let request = Arc::new(status::PageRequest {
                user: user.clone(),
                after,
                limit: limit - page.allocations.len(),
            });
            let answer = self
                .commander
                .ask(
                    std::iter::once(worker),
                    |reply| Command::Allocations {
                        request: request.clone(),
                        reply,
                    },
                    deadline,
                )
                .await;
            let Some(answer) = all_answered(answer)?.pop() else {
                continue;
            };
            page.allocations.extend(answer.allocations);
            if answer.more {
                more = true;
                break;
            }
        }
        if more {
            page.next_cursor = page.allocations.last().map(|a| a.id.clone());
        }
        Ok(page)
    }

    /// Closes allocation `id` (as the status API names it) on its worker: `Ok(false)` when
    /// there is no such allocation with a relay socket.
    pub async fn close(&self, id: &str) -> Result<bool, Unanswered> {
        let Some((worker, allocation)) = status::parse_id(id) else {
            return Ok(false);
        };
        if worker >= self.counters.len() {
            return Ok(false);
        }
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        let answer = self
            .commander
            .ask(
                std::iter::once(worker),
                |reply| Command::Close { allocation, reply },
                deadline,
            )
            .await;
        Ok(all_answered(answer)?.pop().unwrap_or(false))
    }

    /// Starts or ends draining: no new allocations, existing ones go on. Every worker has
    /// it in its queue when this returns, so whatever is asked of the workers afterwards
    /// ([`NodeHandle::counters_now`], for one) is answered after they took it: an Allocate a
    /// worker handles after such an answer is refused.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
        self.commander.broadcast(|| Command::Draining(draining));
    }

    /// Whether the node drains, as last set.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// A handle that sends commands to the workers.
    pub fn commander(&self) -> Commander {
        self.commander.clone()
    }

    /// Enumerates this host's addresses again and, when they changed, gives the workers the
    /// new set; returns whether they changed. Control path (a thread of its own calls it every
    /// [`HOST_ADDRESS_REFRESH`](super::HOST_ADDRESS_REFRESH); a reload does the same).
    pub fn refresh_host_addresses(&self) -> bool {
        let mut host = self.reload.host.lock().unwrap_or_else(|e| e.into_inner());
        let Some(fresh) = host_addresses() else {
            return false;
        };
        if fresh == *host {
            return false;
        }
        log_host_change(&host, &fresh, "refresh");
        *host = fresh.clone();
        self.commander
            .broadcast(|| Command::HostAddresses(fresh.clone()));
        true
    }
}
