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

#[derive(Debug)]
pub(crate) struct SourceBuckets {
    slots: Mutex<Vec<Option<Slot>>>,
    seed: u64,
}

impl SourceBuckets {
    pub fn new(seed: u64) -> Self {
        Self {
            slots: Mutex::new(vec![None; SLOTS]),
            seed,
        }
    }

    /// Takes a token from `ip`'s source; `false`: none left, do not answer. `rate` 0: no
    /// limit.
    pub fn allow(&self, now: Instant, ip: IpAddr, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let (rate, burst) = (f64::from(rate), f64::from(burst.max(1)));
        let key = match source_of(ip) {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        let candidates = [self.hash(key, 0), self.hash(key, 1)];
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
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
        let Some(slot) = slots[i].as_mut() else {
            return true;
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_table_full_of_other_sources_stays_bounded_and_keeps_working() {
        let b = SourceBuckets::new(1);
        let now = Instant::now();
        for n in 0..(4 * SLOTS as u32) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            assert!(b.allow(now, ip, 10, 1));
        }
        assert_eq!(b.slots.lock().unwrap().len(), SLOTS);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(b.allow(now, ip, 10, 1));
        assert!(!b.allow(now, ip, 10, 1));
        assert!(b.allow(now + Duration::from_millis(100), ip, 10, 1));
    }
}
