//! Bandwidth limits in the kernel (`[limits] max_bps_per_allocation`, `max_bps_per_user`):
//! every datagram a handler is about to relay is charged, payload bytes, to its
//! allocation's bucket and its user's (`relay_common::bandwidth` has the arithmetic and
//! the reasons for it); over either, it is dropped and counted for the allocation.
//!
//! Buckets are shared by every CPU (one allocation's two directions, one user's many
//! allocations arrive on different queues), so each TAT moves by compare-and-swap: a
//! `bpf_spin_lock` would need BTF-defined maps, and the GCRA state is one u64. A CAS that
//! loses to another CPU retries a bounded number of times, then lets the datagram pass
//! uncharged: under such contention the limit errs by a datagram, never drops wrongly.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray},
};
use core::intrinsics::{AtomicOrdering, atomic_cxchg};
use relay_common::{
    Bucket, DEFAULT_MAX_ALLOCATIONS, RELAYS_PER_ALLOCATION, Reason, SlotBandwidth,
    bandwidth::{NO_BUCKET, admits, charged, ticks},
};

const SLOTS: u32 = DEFAULT_MAX_ALLOCATIONS * RELAYS_PER_ALLOCATION;
/// Compare-and-swap attempts per bucket and datagram.
const CAS_TRIES: u32 = 4;

#[map(name = "SLOT_BANDWIDTH")]
static SLOT_BANDWIDTH: Array<SlotBandwidth> = Array::with_max_entries(SLOTS, 0);

#[map(name = "BANDWIDTH")]
static BANDWIDTH: Array<Bucket> = Array::with_max_entries(DEFAULT_MAX_ALLOCATIONS * 2, 0);

#[map(name = "ALLOC_DROPS")]
static ALLOC_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SLOTS, 0);

/// `Ok` if `bytes` of payload for counter slot `slot` are within its limits (and then
/// charged); `Err(BandwidthLimit)`, counted for the slot, if not: the caller drops.
#[inline(always)]
pub fn admit(slot: u32, bytes: usize) -> Result<(), Reason> {
    let Some(s) = SLOT_BANDWIDTH.get(slot) else {
        return Ok(());
    };
    let (a, u) = (s.allocation, s.user);
    if a == NO_BUCKET && u == NO_BUCKET {
        return Ok(());
    }
    // SAFETY: helper without arguments.
    let now = ticks(unsafe { bpf_ktime_get_ns() });
    let a = bucket(a);
    let u = bucket(u);
    // Both checked before either is charged: a datagram the user's bucket refuses does
    // not use up the allocation's.
    if !admitted(a, now) || !admitted(u, now) {
        if let Some(c) = ALLOC_DROPS.get_ptr_mut(slot) {
            // SAFETY: per-CPU slot, no other writer on this CPU while we run.
            unsafe { *c += 1 };
        }
        return Err(Reason::BandwidthLimit);
    }
    charge(a, now, bytes as u64);
    charge(u, now, bytes as u64);
    Ok(())
}

#[inline(always)]
fn bucket(index: u32) -> *mut Bucket {
    if index == NO_BUCKET {
        return core::ptr::null_mut();
    }
    BANDWIDTH
        .get_ptr_mut(index)
        .unwrap_or(core::ptr::null_mut())
}

#[inline(always)]
fn admitted(b: *mut Bucket, now: u64) -> bool {
    if b.is_null() {
        return true;
    }
    // SAFETY: a map value pointer. A volatile read: other CPUs CAS the TAT, and an
    // aligned 8-byte load is one instruction (the BPF backend has no atomic load at the
    // loader's CPU level).
    let (tat, bps) = unsafe { ((&raw const (*b).tat).read_volatile(), (*b).bps) };
    bps == 0 || admits(tat, now)
}

#[inline(always)]
fn charge(b: *mut Bucket, now: u64, bytes: u64) {
    if b.is_null() {
        return;
    }
    // SAFETY: map value pointer; `bps` is written by the daemon only before the slot is
    // used.
    let bps = unsafe { (*b).bps };
    if bps == 0 {
        return;
    }
    // SAFETY: as above.
    let tat = unsafe { &raw mut (*b).tat };
    // SAFETY: as above; see `admitted` on the volatile read.
    let mut old = unsafe { tat.read_volatile() };
    let mut i = 0;
    while i < CAS_TRIES {
        let new = charged(old, now, bytes, bps);
        // SAFETY: as above.
        let (seen, ok) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                tat, old, new,
            )
        };
        if ok {
            return;
        }
        old = seen;
        i += 1;
    }
}
