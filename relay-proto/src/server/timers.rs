//! Deadlines of allocations, permissions, channels, reservations and quarantined ports.
//!
//! A min-heap with lazy deletion: every change of an object's deadline pushes a new entry;
//! when an entry comes due the owner looks the object up and expires it only if the object's
//! *current* deadline has passed, so entries of refreshed or removed objects fall out as
//! no-ops. `handle_timeout` is O(due entries · log n) and `poll_timeout` is a peek. So that
//! refresh/delete churn cannot grow the heap without bound, the owner rebuilds it from the
//! live objects as soon as an insert leaves it holding more than twice as many entries as it
//! did after the last rebuild (amortised O(1) per push; checked on insert, since a refresh
//! flood may meet no due timer for as long as a lifetime).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;
use std::time::Instant;

use super::allocation::{AllocationId, Family};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub(crate) enum TimerKey {
    Allocation(AllocationId),
    Permission(AllocationId, IpAddr),
    Channel(AllocationId, u16),
    Reservation([u8; 8]),
    Quarantine(Family, u16),
}

/// Rebuild threshold floor: small heaps are never worth compacting.
const COMPACT_FLOOR: usize = 4096;

#[derive(Debug)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    compact_above: usize,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            compact_above: COMPACT_FLOOR,
        }
    }
}

impl Timers {
    pub(crate) fn schedule(&mut self, at: Instant, key: TimerKey) {
        self.heap.push(Reverse((at, key)));
    }

    /// Earliest entry (possibly one that will turn out to be stale: a harmless early wake-up).
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, TimerKey)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn needs_compaction(&self) -> bool {
        self.heap.len() > self.compact_above
    }

    /// Replaces the heap with exactly the live deadlines.
    pub(crate) fn rebuild(&mut self, live: impl IntoIterator<Item = (Instant, TimerKey)>) {
        let v: Vec<_> = live.into_iter().map(Reverse).collect();
        self.heap = BinaryHeap::from(v);
        self.compact_above = (self.heap.len() * 2).max(COMPACT_FLOOR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.schedule(t0 + Duration::from_secs(5), TimerKey::Reservation([5; 8]));
        t.schedule(t0 + Duration::from_secs(1), TimerKey::Reservation([1; 8]));
        t.schedule(t0 + Duration::from_secs(3), TimerKey::Reservation([3; 8]));
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.pop_due(t0), None);
        let due: Vec<_> = std::iter::from_fn(|| t.pop_due(t0 + Duration::from_secs(3)))
            .map(|(_, k)| k)
            .collect();
        assert_eq!(
            due,
            vec![TimerKey::Reservation([1; 8]), TimerKey::Reservation([3; 8])]
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn rebuild_drops_stale_entries_and_raises_threshold() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        for i in 0..5000u32 {
            t.schedule(t0, TimerKey::Quarantine(Family::V4, i as u16));
        }
        assert!(t.needs_compaction());
        t.rebuild([(t0, TimerKey::Quarantine(Family::V4, 1))]);
        assert_eq!(t.len(), 1);
        assert!(!t.needs_compaction());
    }
}
