//! Which bandwidth buckets of the kernel's `BANDWIDTH` map each allocation and user holds
//! (`[limits] max_bps_per_allocation`, `max_bps_per_user`; the arithmetic is in
//! `relay_common::bandwidth`).
//!
//! An allocation's relayed addresses (two for a dual-stack one) share its bucket; a user's
//! allocations share the user's. Indices `0..max_allocations` are allocation buckets,
//! `max_allocations..2 * max_allocations` user buckets (never more users holding
//! allocations than allocations). A bucket handed out again starts idle.
//!
//! Pure bookkeeping: the core's allocation commands in, slot values and bucket writes out.

use std::collections::HashMap;
use std::sync::Arc;

use relay_common::{Bucket, SlotBandwidth, bandwidth::NO_BUCKET};

/// The limits in bit/s; 0: none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BandwidthLimits {
    pub per_allocation: u64,
    pub per_user: u64,
}

impl BandwidthLimits {
    pub fn any(&self) -> bool {
        self.per_allocation != 0 || self.per_user != 0
    }
}

/// One bucket index, and how many relayed addresses use it.
struct Held {
    index: u32,
    refs: u32,
}

/// A range of bucket indices handed out and taken back.
struct Pool {
    start: u32,
    next: u32,
    end: u32,
    free: Vec<u32>,
}

impl Pool {
    fn new(start: u32, end: u32) -> Self {
        Self {
            start,
            next: start,
            end,
            free: Vec::new(),
        }
    }
    fn take(&mut self) -> Option<u32> {
        self.free.pop().or_else(|| {
            (self.next < self.end).then(|| {
                self.next += 1;
                self.next - 1
            })
        })
    }
    fn give(&mut self, i: u32) {
        if (self.start..self.end).contains(&i) {
            self.free.push(i);
        }
    }
}

pub struct BandwidthBook {
    limits: BandwidthLimits,
    /// By allocation id: its bucket (or [`NO_BUCKET`]) and its user.
    allocations: HashMap<u64, (Held, Arc<str>)>,
    users: HashMap<Arc<str>, Held>,
    allocation_pool: Pool,
    user_pool: Pool,
}

impl BandwidthBook {
    pub fn new(limits: BandwidthLimits, max_allocations: u32) -> Self {
        Self {
            limits,
            allocations: HashMap::new(),
            users: HashMap::new(),
            allocation_pool: Pool::new(0, max_allocations),
            user_pool: Pool::new(max_allocations, max_allocations.saturating_mul(2)),
        }
    }

    pub fn limits(&self) -> BandwidthLimits {
        self.limits
    }

    /// A relayed address of allocation `id` (of `user`) gets a slot: what the slot's
    /// SLOT_BANDWIDTH entry holds, and the buckets to reset (new ones). With no limit
    /// configured, the entry says so ([`NO_BUCKET`] twice).
    pub fn attach(&mut self, id: u64, user: &Arc<str>) -> (SlotBandwidth, Vec<(u32, Bucket)>) {
        let mut fresh = Vec::new();
        if !self.limits.any() {
            return (SlotBandwidth::default(), fresh);
        }
        let allocation = match self.allocations.get_mut(&id) {
            Some((h, _)) => {
                h.refs += 1;
                h.index
            }
            None => {
                let index = match self.limits.per_allocation {
                    0 => NO_BUCKET,
                    bps => self.allocation_pool.take().map_or(NO_BUCKET, |i| {
                        fresh.push((i, Bucket::new(bps)));
                        i
                    }),
                };
                self.allocations
                    .insert(id, (Held { index, refs: 1 }, user.clone()));
                index
            }
        };
        let user = match (self.limits.per_user, self.users.get_mut(user)) {
            (0, _) => NO_BUCKET,
            (_, Some(h)) => {
                h.refs += 1;
                h.index
            }
            (bps, None) => match self.user_pool.take() {
                Some(index) => {
                    fresh.push((index, Bucket::new(bps)));
                    self.users.insert(user.clone(), Held { index, refs: 1 });
                    index
                }
                None => NO_BUCKET,
            },
        };
        (SlotBandwidth { allocation, user }, fresh)
    }

    /// A relayed address of `id` went away: its buckets are released once no relayed
    /// address uses them.
    pub fn detach(&mut self, id: u64) {
        let Some((h, user)) = self.allocations.get_mut(&id) else {
            return;
        };
        h.refs -= 1;
        let user = user.clone();
        if h.refs == 0 {
            let index = h.index;
            self.allocations.remove(&id);
            self.allocation_pool.give(index);
        }
        if let Some(h) = self.users.get_mut(&user) {
            h.refs -= 1;
            if h.refs == 0 {
                let index = h.index;
                self.users.remove(&user);
                self.user_pool.give(index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dual_stack_shares_the_allocation_bucket_and_users_share_theirs() {
        let limits = BandwidthLimits {
            per_allocation: 800_000,
            per_user: 2_000_000,
        };
        let mut b = BandwidthBook::new(limits, 10);
        let alice: Arc<str> = "alice".into();
        let (v4, fresh) = b.attach(1, &alice);
        assert_eq!(fresh.len(), 2);
        let (v6, fresh) = b.attach(1, &alice);
        assert!(fresh.is_empty());
        assert_eq!(v4, v6);
        let (other, fresh) = b.attach(2, &alice);
        assert_eq!(fresh, vec![(1, Bucket::new(800_000))]);
        assert_eq!(other.user, v4.user);
        assert_eq!(v4.user, 10);
        b.detach(1);
        b.detach(1);
        b.detach(2);
        // Everything released: the next allocation reuses an index, reset.
        let (again, fresh) = b.attach(3, &alice);
        assert_eq!(fresh.len(), 2);
        assert!(again.allocation < 10 && again.user == 10);
    }

    #[test]
    fn no_limits_no_buckets() {
        let mut b = BandwidthBook::new(BandwidthLimits::default(), 10);
        let (v, fresh) = b.attach(1, &"bob".into());
        assert_eq!(v, SlotBandwidth::default());
        assert!(fresh.is_empty());
    }

    #[test]
    fn exhausted_pool_means_unlimited_not_an_error() {
        let limits = BandwidthLimits {
            per_allocation: 800_000,
            per_user: 0,
        };
        let mut b = BandwidthBook::new(limits, 1);
        assert_eq!(b.attach(1, &"a".into()).0.allocation, 0);
        assert_eq!(b.attach(2, &"a".into()).0.allocation, NO_BUCKET);
    }
}
