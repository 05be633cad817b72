//! The per-source token bucket for requests on 5-tuples without an allocation (401s,
//! Bindings, garbage): one source cannot make the relay answer more than
//! `unauthenticated_rate` requests per second after a burst of `unauthenticated_burst`.
//!
//! Keyed like the allocation quota ([`source_of`](super::source_of): IPv4 address or IPv6
//! /64) and shared by every shard, since SO_REUSEPORT spreads one source's ports over all of
//! them. Memory is fixed: a table of [`SLOTS`] buckets, each key hashed (with a per-relay
//! seed, so a sender cannot aim at a victim's slot) to two candidate slots. A key found in
//! neither takes an unused one, else the one with more tokens; under a flood of spoofed
//! sources that fills the table a source may therefore start over with a full burst, which
//! costs nothing more than the flood itself.
//!
//! A second bucket, global, takes a token from every request the source's bucket let
//! through (`unauthenticated_global_rate`): spoofed sources each under their own rate still
//! add up to more 401s than a core can send, and a flash crowd of browsers fits within it.

use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use super::shared::source_of;

/// Buckets in the table (about 40 bytes each).
pub(crate) const SLOTS: usize = 16_384;

#[derive(Clone, Copy, Debug)]
struct Slot {
    key: u128,
    tokens: f64,
    at: Instant,
}

impl Slot {
    /// Tokens at `now` (refilled since `at`, capped at `burst`).
    fn tokens_at(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

/// A bucket's rate (tokens per second, 0: no limit) and burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bucket {
    pub rate: u32,
    pub burst: u32,
}

#[derive(Debug)]
struct Table {
    slots: Vec<Option<Slot>>,
    global: Option<Slot>,
}

#[derive(Debug)]
pub(crate) struct SourceBuckets {
    table: Mutex<Table>,
    seed: u64,
}

impl SourceBuckets {
    pub fn new(seed: u64) -> Self {
        Self {
            table: Mutex::new(Table {
                slots: vec![None; SLOTS],
                global: None,
            }),
            seed,
        }
    }

    /// Takes a token from `ip`'s source, then from the global bucket; `false`: none left
    /// in one of them, do not answer. A rate of 0 turns a bucket off.
    pub fn allow(&self, now: Instant, ip: IpAddr, source: Bucket, global: Bucket) -> bool {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if source.rate != 0 && !self.allow_source(&mut table.slots, now, ip, source) {
            return false;
        }
        if global.rate == 0 {
            return true;
        }
        let (rate, burst) = (f64::from(global.rate), f64::from(global.burst.max(1)));
        let slot = table.global.get_or_insert(Slot {
            key: 0,
            tokens: burst,
            at: now,
        });
        take(slot, now, rate, burst)
    }

    fn allow_source(
        &self,
        slots: &mut [Option<Slot>],
        now: Instant,
        ip: IpAddr,
        b: Bucket,
    ) -> bool {
        let (rate, burst) = (f64::from(b.rate), f64::from(b.burst.max(1)));
        let key = match source_of(ip) {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        let candidates = [self.hash(key, 0), self.hash(key, 1)];
        let found = candidates
            .iter()
            .copied()
            .find(|&i| slots[i].is_some_and(|s| s.key == key));
        let i = found.unwrap_or_else(|| {
            // The unused candidate, else the one whose source has been quietest.
            let fullness =
                |i: usize| slots[i].map_or(f64::INFINITY, |s| s.tokens_at(now, rate, burst));
            let [a, b] = candidates;
            let i = if fullness(a) >= fullness(b) { a } else { b };
            slots[i] = Some(Slot {
                key,
                tokens: burst,
                at: now,
            });
            i
        });
        match slots[i].as_mut() {
            Some(slot) => take(slot, now, rate, burst),
            None => true,
        }
    }

    /// Slot `n` (0 or 1) of `key`: a keyed multiply-xorshift mix, enough to spread keys
    /// an outsider cannot see the seed of.
    fn hash(&self, key: u128, n: u64) -> usize {
        let mut x = (key as u64) ^ ((key >> 64) as u64).rotate_left(29) ^ self.seed;
        x = x.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for _ in 0..2 {
            x ^= x >> 31;
            x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x ^= x >> 29;
        }
        (x % SLOTS as u64) as usize
    }
}

/// Takes a token from `slot` at `now`, if it has one.
fn take(slot: &mut Slot, now: Instant, rate: f64, burst: f64) -> bool {
    let tokens = slot.tokens_at(now, rate, burst);
    slot.at = now.max(slot.at);
    if tokens >= 1.0 {
        slot.tokens = tokens - 1.0;
        true
    } else {
        slot.tokens = tokens;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_table_full_of_other_sources_stays_bounded_and_keeps_working() {
        let b = SourceBuckets::new(1);
        let now = Instant::now();
        let (source, off) = (Bucket { rate: 10, burst: 1 }, Bucket { rate: 0, burst: 0 });
        for n in 0..(4 * SLOTS as u32) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            assert!(b.allow(now, ip, source, off));
        }
        assert_eq!(b.table.lock().unwrap().slots.len(), SLOTS);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(b.allow(now, ip, source, off));
        assert!(!b.allow(now, ip, source, off));
        assert!(b.allow(now + Duration::from_millis(100), ip, source, off));
    }

    #[test]
    fn many_sources_each_under_their_rate_meet_the_global_bucket() {
        let b = SourceBuckets::new(1);
        let now = Instant::now();
        let source = Bucket {
            rate: 25,
            burst: 50,
        };
        let global = Bucket {
            rate: 100,
            burst: 200,
        };
        let passed = (0..1_000u32)
            .filter(|n| {
                let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
                b.allow(now, ip, source, global)
            })
            .count();
        assert_eq!(passed, 200);
        // A second later, the global rate's worth more.
        let later = now + Duration::from_secs(1);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let passed = (0..1_000)
            .filter(|_| b.allow(later, ip, source, global))
            .count();
        assert_eq!(passed, 50, "the source's burst bounds it first");
        // Off: only the source's bucket.
        let off = Bucket { rate: 0, burst: 0 };
        let other: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(
            (0..100)
                .filter(|_| b.allow(later, other, source, off))
                .count(),
            50
        );
    }
}
