//! The allocation table: slots indexed by [`AllocationId`], the index by 5-tuple, the ordered
//! index of deadlines that expires allocations, permissions and channels, and the
//! [`Event::Offload`]s that mirror what is relayable into the kernel.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Allocation, AllocationId, EndReason, Ended, Event, FiveTuple, Server};

/// One entry of the table: its allocation while it lives, and a generation that tells a stale
/// [`AllocationId`] from the one now in the slot.
pub(super) struct Slot {
    generation: u32,
    pub(super) allocation: Option<Allocation>,
}

impl Server {
    /// Number of live allocations.
    pub fn allocation_count(&self) -> usize {
        self.by_tuple.len()
    }

    /// The allocation with this id, if it is still alive.
    // Inlined into the hot path in datapath.rs, another codegen unit since the split.
    #[inline]
    pub fn allocation(&self, id: AllocationId) -> Option<&Allocation> {
        self.slots
            .get(id.index())
            .filter(|slot| slot.generation == id.generation)
            .and_then(|slot| slot.allocation.as_ref())
    }

    /// Every live allocation (for status snapshots; control path).
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.slots
            .iter()
            .filter_map(|slot| slot.allocation.as_ref())
    }

    /// The allocation of a 5-tuple.
    pub fn allocation_of(&self, tuple: &FiveTuple) -> Option<&Allocation> {
        self.by_tuple.get(tuple).and_then(|id| self.allocation(*id))
    }

    // Inlined into the hot path in datapath.rs, another codegen unit since the split.
    #[inline]
    pub(super) fn allocation_mut(&mut self, id: AllocationId) -> Option<&mut Allocation> {
        self.slots
            .get_mut(id.index())
            .filter(|slot| slot.generation == id.generation)
            .and_then(|slot| slot.allocation.as_mut())
    }

    pub(super) fn insert_allocation(&mut self, mut allocation: Allocation) -> AllocationId {
        let index = match self.free_slots.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    allocation: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        let id = AllocationId {
            index,
            generation: slot.generation,
        };
        allocation.id = id;
        self.timers.insert((allocation.wake, id));
        self.new_deadline = true;
        self.by_tuple.insert(allocation.tuple, id);
        slot.allocation = Some(allocation);
        id
    }

    pub(super) fn remove_allocation(&mut self, id: AllocationId, reason: EndReason) {
        let Some(slot) = self
            .slots
            .get_mut(id.index())
            .filter(|slot| slot.generation == id.generation)
        else {
            return;
        };
        let Some(allocation) = slot.allocation.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.timers.remove(&(allocation.wake, id));
        self.by_tuple.remove(&allocation.tuple);
        self.node.ledger.release(&allocation.principal);
        if allocation.leased {
            self.events.push_back(Event::ReleaseLease {
                allocation: id,
                user: allocation.principal,
            });
        }
        self.free_slots.push(id.index);
        if let Some(tcp) = &allocation.tcp {
            self.forget_connections(&tcp.connections);
        }
        for &(channel, peer) in &allocation.offloaded {
            self.events.push_back(Event::Unoffload {
                allocation: id,
                channel,
                client: allocation.tuple,
                peer,
            });
        }
        if let Some(relayed) = allocation.relayed {
            // Only an allocation that was granted (and counted as created) counts as ended: one
            // still waiting for its lease or relay socket was never created.
            match reason {
                EndReason::Expired => self.stats.allocations_expired += 1,
                EndReason::Failed => {}
                _ => self.stats.allocations_deleted += 1,
            }
            self.events.push_back(Event::Ended(Box::new(Ended {
                allocation: id,
                username: allocation.username,
                tuple: allocation.tuple,
                relayed,
                dual: allocation.dual.relayed,
                created: allocation.created,
                traffic: allocation.traffic,
                reason,
                tcp: allocation.tcp.is_some(),
            })));
        }
        self.events.push_back(Event::CloseRelay { allocation: id });
    }

    /// Ends an allocation now (an operator's request); `false` if it was already gone.
    pub fn close(&mut self, id: AllocationId) -> bool {
        if self.allocation(id).is_none() {
            return false;
        }
        self.remove_allocation(id, EndReason::ClosedByOperator);
        true
    }

    /// Ends every allocation made with one of the usernames `names` (a revoked REST username,
    /// a disabled or removed long-term user); returns how many. A REST id is not a long-term
    /// user name: disabling the user `alice` leaves `1700000000:alice` alone. Control path:
    /// walks the allocations.
    pub fn revoke(&mut self, names: &[String]) -> usize {
        let doomed: Vec<AllocationId> = self
            .slots
            .iter()
            .filter_map(|slot| slot.allocation.as_ref())
            .filter(|a| names.iter().any(|name| **name == *a.username))
            .map(|a| a.id)
            .collect();
        for &id in &doomed {
            self.remove_allocation(id, EndReason::Revoked);
        }
        doomed.len()
    }

    /// A client's stream connection closed: its allocation (if any) ends now.
    pub fn handle_connection_closed(&mut self, tuple: &FiveTuple) {
        if let Some(&id) = self.by_tuple.get(tuple) {
            self.remove_allocation(id, EndReason::ConnectionClosed);
        }
    }

    /// When [`Server::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Whether a deadline was filed since the last call (so [`Server::poll_timeout`] may now be
    /// earlier); a relayed packet never files one, so the I/O layer asks this instead of
    /// comparing deadlines around every packet.
    pub fn take_new_deadline(&mut self) -> bool {
        std::mem::take(&mut self.new_deadline)
    }

    /// Expires what is due at `now`: allocations, permissions, channel bindings.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(allocation) = self.allocation_mut(id) else {
                continue;
            };
            if allocation.wake != at {
                continue;
            }
            if allocation.expires <= now {
                self.remove_allocation(id, EndReason::Expired);
                continue;
            }
            self.expire_connections(id, now);
            let Some(allocation) = self.allocation_mut(id) else {
                continue;
            };
            let next = allocation.expire(now);
            allocation.wake = next;
            self.timers.insert((next, id));
            self.sync_offloads(id, now);
        }
    }

    /// Files the allocation under its (possibly earlier) next deadline.
    pub(super) fn reschedule(&mut self, id: AllocationId, now: Instant) {
        let Some(alloc) = self.allocation_mut(id) else {
            return;
        };
        let next = alloc.next_deadline(now);
        let old = std::mem::replace(&mut alloc.wake, next);
        if old != next {
            self.timers.remove(&(old, id));
            self.timers.insert((next, id));
            self.new_deadline = true;
        }
    }

    /// Tells the I/O layer which of the allocation's channels the kernel may relay now and
    /// which it must stop relaying: the difference between what it was told and
    /// [`Allocation::offloadable`]. Nothing without [`CoreConfig::offload`].
    pub(super) fn sync_offloads(&mut self, id: AllocationId, now: Instant) {
        if !self.config.offload {
            return;
        }
        let Some(alloc) = self
            .slots
            .get_mut(id.index())
            .filter(|slot| slot.generation == id.generation)
            .and_then(|slot| slot.allocation.as_mut())
        else {
            return;
        };
        let client = alloc.tuple;
        let wanted: Vec<(u16, SocketAddr)> = alloc.offloadable(now).collect();
        let events = &mut self.events;
        alloc.offloaded.retain(|&(channel, peer)| {
            let keep = wanted.contains(&(channel, peer));
            if !keep {
                events.push_back(Event::Unoffload {
                    allocation: id,
                    channel,
                    client,
                    peer,
                });
            }
            keep
        });
        for (channel, peer) in wanted {
            if !alloc.offloaded.contains(&(channel, peer)) {
                alloc.offloaded.push((channel, peer));
                events.push_back(Event::Offload {
                    allocation: id,
                    channel,
                    client,
                    peer,
                });
            }
        }
    }

    /// [`Server::sync_offloads`] for every allocation (after a reload or a change of the
    /// host's addresses; control path).
    pub(super) fn sync_all_offloads(&mut self, now: Instant) {
        if !self.config.offload {
            return;
        }
        let ids: Vec<AllocationId> = self.allocations().map(|a| a.id).collect();
        for id in ids {
            self.sync_offloads(id, now);
        }
    }
}
