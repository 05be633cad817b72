//! Bandwidth limits on the userspace data path (`[limits] max_bps_per_allocation`,
//! `max_bps_per_user`): the same GCRA as the kernel's (`relay_common::bandwidth`), on
//! payload bytes, both directions of an allocation together. Sans-IO: `(bytes, now)` in,
//! pass or drop out.
//!
//! An allocation's bucket lives in the allocation (one shard owns it). A user's bucket is
//! shared by the user's allocations on every shard, so its TAT is an atomic moved by
//! compare-and-swap, as in the kernel; the registry that hands it out is only locked when
//! an allocation is made.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Instant;

use relay_common::Bucket;
use relay_common::bandwidth::{admits, charged, ticks};

/// A user's bucket, shared by the user's allocations on all shards.
#[derive(Debug)]
pub(crate) struct SharedBucket {
    tat: AtomicU64,
    bps: u64,
}

impl SharedBucket {
    fn would_take(&self, now_ns: u64) -> bool {
        admits(self.tat.load(Ordering::Relaxed), ticks(now_ns))
    }

    fn charge(&self, bytes: u64, now_ns: u64) {
        let now = ticks(now_ns);
        // Never fails: the closure always returns a value.
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(charged(tat, now, bytes, self.bps))
            });
    }
}

/// The limits one allocation is charged to.
#[derive(Debug, Default)]
pub(crate) struct AllocationLimit {
    own: Option<Bucket>,
    user: Option<Arc<SharedBucket>>,
}

impl AllocationLimit {
    /// Whether `bytes` of payload may pass at `now_ns` (the [`Limits`] clock); if so,
    /// they are charged to every bucket. Checked before charged: what the user's bucket
    /// refuses does not use up the allocation's.
    pub(crate) fn take(&mut self, bytes: usize, now_ns: u64) -> bool {
        let own = self.own.as_ref().is_none_or(|b| b.would_take(now_ns));
        let user = self.user.as_ref().is_none_or(|b| b.would_take(now_ns));
        if !(own && user) {
            return false;
        }
        if let Some(b) = &mut self.own {
            b.take(bytes as u64, now_ns);
        }
        if let Some(b) = &self.user {
            b.charge(bytes as u64, now_ns);
        }
        true
    }

    #[cfg(test)]
    fn is_limited(&self) -> bool {
        self.own.is_some() || self.user.is_some()
    }
}

/// The relay-wide side: the configured limits, the clock's origin, and the users'
/// buckets (held weakly: a bucket lives as long as an allocation of its user).
#[derive(Debug, Default)]
pub(crate) struct Limits {
    per_allocation: u64,
    per_user: u64,
    /// The first `now` seen: bucket times are nanoseconds since then.
    epoch: OnceLock<Instant>,
    users: Mutex<HashMap<Arc<str>, Weak<SharedBucket>>>,
}

impl Limits {
    pub(crate) fn new(per_allocation: u64, per_user: u64) -> Self {
        Self {
            per_allocation,
            per_user,
            ..Self::default()
        }
    }

    /// `now` on the buckets' clock.
    pub(crate) fn ns(&self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_init(|| now);
        // Another shard may have set the epoch a moment after this `now`: 0 is close.
        now.saturating_duration_since(epoch).as_nanos() as u64
    }

    /// The limits a new allocation of `user` is charged to.
    pub(crate) fn for_allocation(&self, user: &Arc<str>) -> AllocationLimit {
        let own = (self.per_allocation != 0).then(|| Bucket::new(self.per_allocation));
        let user = (self.per_user != 0).then(|| self.user_bucket(user));
        AllocationLimit { own, user }
    }

    fn user_bucket(&self, user: &Arc<str>) -> Arc<SharedBucket> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = users.get(user).and_then(Weak::upgrade) {
            return b;
        }
        // Users whose allocations are all gone: their entries go now, not one by one.
        users.retain(|_, b| b.strong_count() > 0);
        let b = Arc::new(SharedBucket {
            tat: AtomicU64::new(0),
            bps: self.per_user,
        });
        users.insert(user.clone(), Arc::downgrade(&b));
        b
    }

    /// `(max_bps_per_allocation, max_bps_per_user)`, 0 for none.
    pub(crate) fn bps(&self) -> (u64, u64) {
        (self.per_allocation, self.per_user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `size`-byte datagrams every `gap` for `secs`; bytes that passed.
    fn offer(l: &Limits, a: &mut AllocationLimit, t0: Instant, size: usize, gap: Duration) -> u64 {
        let mut passed = 0;
        let mut t = t0;
        while t < t0 + Duration::from_secs(10) {
            if a.take(size, l.ns(t)) {
                passed += size as u64;
            }
            t += gap;
        }
        passed
    }

    #[test]
    fn an_allocation_gets_its_limit_of_a_faster_sender() {
        let l = Limits::new(800_000, 0);
        let mut a = l.for_allocation(&"alice".into());
        let passed = offer(&l, &mut a, Instant::now(), 250, Duration::from_millis(1));
        let bps = passed * 8 / 10;
        assert!((800_000..=820_000).contains(&bps), "{bps}");
    }

    #[test]
    fn a_users_allocations_share_the_user_limit() {
        let l = Limits::new(0, 800_000);
        let alice: Arc<str> = "alice".into();
        let (mut a, mut b) = (l.for_allocation(&alice), l.for_allocation(&alice));
        let mut bob = l.for_allocation(&"bob".into());
        let t0 = Instant::now();
        let (mut pa, mut pb, mut pbob) = (0u64, 0u64, 0u64);
        let mut t = t0;
        while t < t0 + Duration::from_secs(10) {
            let ns = l.ns(t);
            pa += 250 * u64::from(a.take(250, ns));
            pb += 250 * u64::from(b.take(250, ns));
            pbob += 250 * u64::from(bob.take(250, ns));
            t += Duration::from_millis(2);
        }
        let alice_bps = (pa + pb) * 8 / 10;
        assert!((800_000..=820_000).contains(&alice_bps), "{alice_bps}");
        // Bob (1 Mbit/s offered) has a bucket of his own.
        assert!(pbob * 8 / 10 >= 800_000, "{pbob}");
    }

    #[test]
    fn no_limit_passes_everything() {
        let l = Limits::new(0, 0);
        let mut a = l.for_allocation(&"alice".into());
        assert!(!a.is_limited());
        let t0 = Instant::now();
        assert!((0..100_000).all(|i| a.take(1500, l.ns(t0) + i)));
    }

    #[test]
    fn a_user_bucket_goes_with_the_users_last_allocation() {
        let l = Limits::new(0, 800_000);
        let alice: Arc<str> = "alice".into();
        let a = l.for_allocation(&alice);
        drop(a);
        let _b = l.for_allocation(&"bob".into());
        assert_eq!(l.users.lock().unwrap().len(), 1);
    }
}
