//! The kernel fast path seen from a worker: the channels of its allocations it writes into
//! the kernel's tables and takes out again, and what the kernel relayed, added to the core's
//! figures.

use std::net::SocketAddr;

use crate::turn::{AllocationId, FiveTuple, Traffic};

use super::super::offload::{self, SlotCounters};
use super::Worker;

/// The largest payload the kernel relays: what `Server::handle_peer` relays from a peer.
const MAX_OFFLOAD_PAYLOAD: u16 = 65_000;

/// The kernel's per-allocation counters are added to the core's figures every this many
/// publications (and whenever the figures are asked for, and when the allocation ends).
pub(super) const CREDIT_EVERY: u32 = 10;

/// An allocation some of whose channels the kernel relays.
pub(super) struct Offloaded {
    slot: u32,
    channels: Vec<offload::Channel>,
    /// What of the slot's counters the core's figures already include.
    credited: SlotCounters,
}

impl Worker {
    /// Writes a channel the core says the kernel may relay into the kernel's tables, with
    /// where the routing table sends each direction now. Only IPv4 is carried there so far
    /// ([`offload::carries`]); another channel, no route the program can follow, a full table
    /// or no free counter slot leave it in user space, which relays it as before.
    pub(super) fn offload(
        &mut self,
        allocation: AllocationId,
        number: u16,
        client: FiveTuple,
        peer: SocketAddr,
    ) {
        let Some(fast_path) = &self.fast_path else {
            return;
        };
        // A dual allocation relays `peer` from the relayed address of its family.
        let Some(relay) = self
            .core
            .allocation(allocation)
            .and_then(|a| a.relayed_for(&peer))
        else {
            return;
        };
        if !offload::carries(client.client, client.server, relay, peer) {
            // IPv6: user space relays it.
            return;
        }
        let slot = match self.offloaded.get(&allocation) {
            Some(entry) => entry.slot,
            None => {
                let Some(slot) = fast_path.acquire_slot() else {
                    tracing::debug!(allocation = %allocation, "no free fast path counter slot: relaying in user space");
                    return;
                };
                self.offloaded.insert(
                    allocation,
                    Offloaded {
                        slot,
                        channels: Vec::new(),
                        credited: SlotCounters::default(),
                    },
                );
                slot
            }
        };
        let channel = offload::Channel {
            client: client.client,
            listener: client.server,
            channel: number,
            relay,
            peer,
            slot,
            max_payload: MAX_OFFLOAD_PAYLOAD,
        };
        match fast_path.install(&channel) {
            Ok(()) => {
                if let Some(entry) = self.offloaded.get_mut(&allocation) {
                    entry.channels.retain(|c| c.channel != number);
                    entry.channels.push(channel);
                }
            }
            Err(why) => {
                tracing::warn!(allocation = %allocation, reason = %why, "channel not offloaded: relaying it in user space");
            }
        }
    }

    /// Takes a channel out of the kernel's tables: from now on only user space decides.
    pub(super) fn unoffload(&mut self, allocation: AllocationId, number: u16, peer: SocketAddr) {
        let (Some(fast_path), Some(entry)) = (&self.fast_path, self.offloaded.get_mut(&allocation))
        else {
            return;
        };
        entry.channels.retain(|channel| {
            let gone = channel.channel == number && channel.peer == peer;
            if gone && let Err(why) = fast_path.remove(channel) {
                // The entry may still relay: nothing else can be done about it here, but it
                // must be known.
                tracing::error!(allocation = %allocation, reason = %why, "cannot remove a channel from the kernel's tables");
            }
            !gone
        });
    }

    /// An allocation ended: whatever the kernel still holds for it goes, its last counts join
    /// its log line and the node's figures, and its counter slot is freed.
    pub(super) fn end_offload(&mut self, ended: &mut crate::turn::Ended) {
        let (Some(fast_path), Some(entry)) =
            (&self.fast_path, self.offloaded.remove(&ended.allocation))
        else {
            return;
        };
        for channel in &entry.channels {
            let _ = fast_path.remove(channel);
        }
        if let Ok(counted) = fast_path.counters(entry.slot) {
            let delta = traffic_since(counted, entry.credited);
            self.core.credit_offloaded(None, delta);
            ended.traffic += delta;
        }
        fast_path.release_slot(entry.slot);
    }

    /// Adds what the kernel relayed since the last call to the allocations' and the core's
    /// figures. One map read per offloaded allocation (control path).
    pub(super) fn credit_offloaded(&mut self) {
        let Some(fast_path) = &self.fast_path else {
            return;
        };
        for (&allocation, entry) in &mut self.offloaded {
            if let Ok(counted) = fast_path.counters(entry.slot) {
                let delta = traffic_since(counted, entry.credited);
                entry.credited = counted;
                self.core.credit_offloaded(Some(allocation), delta);
            }
        }
    }
}

/// What the kernel counted beyond what was already credited.
fn traffic_since(counted: SlotCounters, credited: SlotCounters) -> Traffic {
    Traffic {
        to_peer_packets: counted
            .to_peer_packets
            .saturating_sub(credited.to_peer_packets),
        to_peer_bytes: counted.to_peer_bytes.saturating_sub(credited.to_peer_bytes),
        to_client_packets: counted
            .to_client_packets
            .saturating_sub(credited.to_client_packets),
        to_client_bytes: counted
            .to_client_bytes
            .saturating_sub(credited.to_client_bytes),
    }
}
