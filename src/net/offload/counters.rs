//! What the program counted: per-slot counters of each allocation's traffic, and the program's
//! own totals (carried, failed, and left to user space by reason).

use aya::Pod;
use aya::maps::PerCpuValues;

use super::{FastPath, SlotCounters, Tables, Totals, Why};

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub(super) struct RawCounters {
    to_peer_packets: u64,
    to_peer_bytes: u64,
    to_client_packets: u64,
    to_client_bytes: u64,
}

// SAFETY: a plain `repr(C)` struct of integers without padding, so every byte is
// initialised and any bit pattern is valid.
unsafe impl Pod for RawCounters {}

/// Indexes of the program's `totals` map.
const TOTAL_CARRIED: u32 = 0;
const TOTAL_FAILED: u32 = 1;
const TOTAL_PARTIAL: u32 = 2;
const TOTAL_TOO_BIG: u32 = 3;
const TOTAL_LOCAL: u32 = 4;

impl Tables {
    /// The program's total `index`, summed over CPUs.
    pub(super) fn total(&self, index: u32) -> Result<u64, Why> {
        let values = self
            .totals
            .get(&index, 0)
            .map_err(|error| Why::Table(error.to_string()))?;
        Ok(values.iter().sum())
    }
}

impl FastPath {
    /// What the kernel carried for `slot` since it was last reset.
    pub fn counters(&self, slot: u32) -> Result<SlotCounters, Why> {
        let tables = self.lock();
        let values = tables
            .counters
            .get(&slot, 0)
            .map_err(|error| Why::Table(error.to_string()))?;
        Ok(values
            .iter()
            .fold(SlotCounters::default(), |sum, cpu| SlotCounters {
                to_peer_packets: sum.to_peer_packets + cpu.to_peer_packets,
                to_peer_bytes: sum.to_peer_bytes + cpu.to_peer_bytes,
                to_client_packets: sum.to_client_packets + cpu.to_client_packets,
                to_client_bytes: sum.to_client_bytes + cpu.to_client_bytes,
            }))
    }

    /// Zeroes `slot`'s counters, for its next allocation.
    pub fn reset(&self, slot: u32) -> Result<(), Why> {
        let zero = PerCpuValues::try_from(vec![RawCounters::default(); self.cpus])
            .map_err(|error| Why::Table(error.to_string()))?;
        self.lock()
            .counters
            .set(slot, zero, 0)
            .map_err(|error| Why::Table(error.to_string()))
    }

    /// Datagrams the kernel relayed in either direction since the program was loaded.
    pub fn carried(&self) -> Result<u64, Why> {
        self.total(TOTAL_CARRIED)
    }

    /// [`FastPath::carried`] and what the program left to user space, by reason.
    pub fn totals(&self) -> Result<Totals, Why> {
        let tables = self.lock();
        Ok(Totals {
            carried: tables.total(TOTAL_CARRIED)?,
            checksum_partial: tables.total(TOTAL_PARTIAL)?,
            too_big: tables.total(TOTAL_TOO_BIG)?,
            local_off_lo: tables.total(TOTAL_LOCAL)?,
        })
    }

    /// Datagrams the kernel failed to rewrite half-way (dropped; expected to stay 0).
    pub fn failed(&self) -> Result<u64, Why> {
        self.total(TOTAL_FAILED)
    }

    pub(super) fn total(&self, index: u32) -> Result<u64, Why> {
        self.lock().total(index)
    }
}
