//! Relay port pools (one per IP family) and the injected randomness that drives them.
//!
//! A pool is a bitset over the configured range: a set bit is a port in use, reserved under
//! a RESERVATION-TOKEN, or quarantined after the data path failed to bind it. A new port is
//! the first free one at or after a random offset, so ports are unpredictable while the pool
//! is sparse and a port still in use is never handed out twice.
//!
//! [`LivePorts`] mirrors the subset held by live allocations in atomics, so the data path can
//! ask "is this one of our relays?" without the lock that guards the pools.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// Deterministic generator seeded by the daemon (the sans-IO core never reads entropy).
/// SHA-256 in counter mode: observing relay ports does not reveal future reservation tokens.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    seed: u64,
    counter: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self { seed, counter: 0 }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut h = Sha256::new();
        h.update(b"relay-proto server rng");
        h.update(self.seed.to_le_bytes());
        h.update(self.counter.to_le_bytes());
        self.counter = self.counter.wrapping_add(1);
        let d = h.finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        u64::from_le_bytes(b)
    }

    pub(crate) fn token(&mut self) -> [u8; 8] {
        self.next_u64().to_le_bytes()
    }
}

/// What kind of free port to look for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Want {
    Any,
    /// EVEN-PORT without R.
    Even,
    /// EVEN-PORT with R: an even port whose successor is free as well; both are taken.
    EvenPair,
}

#[derive(Clone, Debug)]
pub(crate) struct PortPool {
    base: u16,
    len: u32,
    busy: Vec<u64>,
    used: u32,
}

impl PortPool {
    pub(crate) fn new(range: RangeInclusive<u16>) -> Self {
        let (lo, hi) = (*range.start(), *range.end());
        let len = if hi >= lo { u32::from(hi - lo) + 1 } else { 0 };
        let words = (len as usize).div_ceil(64);
        let mut busy = vec![0u64; words];
        // Bits past the end of the range are permanently busy.
        if let Some(last) = busy.last_mut().filter(|_| len % 64 != 0) {
            *last = !0u64 << (len % 64);
        }
        Self {
            base: lo,
            len,
            busy,
            used: 0,
        }
    }

    /// Ports in the range.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> u32 {
        self.len
    }

    /// Ports in use, reserved or quarantined.
    pub(crate) fn used(&self) -> u32 {
        self.used
    }

    fn offset(&self, port: u16) -> Option<u32> {
        let off = u32::from(port.checked_sub(self.base)?);
        (off < self.len).then_some(off)
    }

    #[cfg(test)]
    pub(crate) fn is_busy(&self, port: u16) -> bool {
        match self.offset(port) {
            Some(off) => self.busy[(off / 64) as usize] & (1 << (off % 64)) != 0,
            None => true,
        }
    }

    /// Marks a specific port busy; `false` if it is out of range or already busy.
    pub(crate) fn take(&mut self, port: u16) -> bool {
        let Some(off) = self.offset(port) else {
            return false;
        };
        let (w, b) = ((off / 64) as usize, off % 64);
        if self.busy[w] & (1 << b) != 0 {
            return false;
        }
        self.busy[w] |= 1 << b;
        self.used += 1;
        true
    }

    /// Returns a port to the pool. Releasing a free or foreign port is a no-op.
    pub(crate) fn release(&mut self, port: u16) {
        let Some(off) = self.offset(port) else {
            return;
        };
        let (w, b) = ((off / 64) as usize, off % 64);
        if self.busy[w] & (1 << b) != 0 {
            self.busy[w] &= !(1 << b);
            self.used -= 1;
        }
    }

    /// Bits of word `w` that are candidate starting ports for `want`.
    fn candidates(&self, w: usize, want: Want) -> u64 {
        let free = !self.busy[w];
        // Offsets whose port number is even: offset parity equals base parity.
        let even = if self.base.is_multiple_of(2) {
            0x5555_5555_5555_5555u64
        } else {
            0xAAAA_AAAA_AAAA_AAAAu64
        };
        match want {
            Want::Any => free,
            Want::Even => free & even,
            Want::EvenPair => {
                let next_free = if w + 1 < self.busy.len() {
                    !self.busy[w + 1] & 1
                } else {
                    0
                };
                free & even & ((free >> 1) | (next_free << 63))
            }
        }
    }

    /// Takes a free port of the wanted kind, searching from `random % len` and wrapping.
    /// For [`Want::EvenPair`] the returned (even) port and its successor are both taken.
    pub(crate) fn allocate(&mut self, random: u64, want: Want) -> Option<u16> {
        if self.len == 0 {
            return None;
        }
        let start = (random % u64::from(self.len)) as u32;
        let words = self.busy.len();
        let first = (start / 64) as usize;
        // The start word twice: its bits at/after `start`, then (after wrapping) those before.
        for i in 0..=words {
            let w = (first + i) % words;
            let mut c = self.candidates(w, want);
            if i == 0 {
                c &= !0u64 << (start % 64);
            } else if i == words {
                c &= !(!0u64 << (start % 64));
            }
            if c != 0 {
                let off = w as u32 * 64 + c.trailing_zeros();
                let port = self.base + off as u16;
                self.take(port);
                if want == Want::EvenPair {
                    self.take(port + 1);
                }
                return Some(port);
            }
        }
        None
    }
}

/// Which relay ports of one family are held by a live allocation on any shard. Written under
/// the shared state's lock when an allocation starts or ends; read without a lock on the data
/// path. A stale answer is harmless: the receiving allocation still checks its permissions.
#[derive(Debug)]
pub(crate) struct LivePorts {
    base: u16,
    len: u32,
    words: Box<[AtomicU64]>,
}

impl LivePorts {
    pub(crate) fn new(range: RangeInclusive<u16>) -> Self {
        let (lo, hi) = (*range.start(), *range.end());
        let len = if hi >= lo { u32::from(hi - lo) + 1 } else { 0 };
        let words = (0..(len as usize).div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Self {
            base: lo,
            len,
            words,
        }
    }

    fn bit(&self, port: u16) -> Option<(&AtomicU64, u64)> {
        let off = u32::from(port.checked_sub(self.base)?);
        (off < self.len).then(|| (&self.words[(off / 64) as usize], 1u64 << (off % 64)))
    }

    pub(crate) fn set(&self, port: u16) {
        if let Some((w, b)) = self.bit(port) {
            w.fetch_or(b, Ordering::Relaxed);
        }
    }

    pub(crate) fn clear(&self, port: u16) {
        if let Some((w, b)) = self.bit(port) {
            w.fetch_and(!b, Ordering::Relaxed);
        }
    }

    pub(crate) fn contains(&self, port: u16) -> bool {
        self.bit(port)
            .is_some_and(|(w, b)| w.load(Ordering::Relaxed) & b != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn rng_is_deterministic_and_seeded() {
        let (mut a, mut b, mut c) = (Rng::new(1), Rng::new(1), Rng::new(2));
        let xa: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let xb: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let xc: Vec<u64> = (0..4).map(|_| c.next_u64()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
        assert_ne!(xa[0], xa[1]);
    }

    #[test]
    fn never_hands_out_a_busy_port_and_exhausts() {
        let mut p = PortPool::new(24000..=24099);
        let mut rng = Rng::new(7);
        let mut seen = HashSet::new();
        for _ in 0..100 {
            let port = p.allocate(rng.next_u64(), Want::Any).unwrap();
            assert!((24000..=24099).contains(&port));
            assert!(seen.insert(port), "port {port} handed out twice");
        }
        assert_eq!(p.used(), 100);
        assert_eq!(p.allocate(rng.next_u64(), Want::Any), None);
        p.release(24042);
        assert_eq!(p.allocate(rng.next_u64(), Want::Any), Some(24042));
    }

    #[test]
    fn random_start_spreads_ports() {
        let mut p = PortPool::new(49152..=65535);
        let mut rng = Rng::new(99);
        let a = p.allocate(rng.next_u64(), Want::Any).unwrap();
        let b = p.allocate(rng.next_u64(), Want::Any).unwrap();
        assert_ne!(a + 1, b, "consecutive allocations should not be sequential");
    }

    #[test]
    fn even_and_even_pair() {
        for (lo, hi) in [
            (24000u16, 24199u16),
            (24001, 24200),
            (1, 64),
            (65400, 65535),
        ] {
            let mut p = PortPool::new(lo..=hi);
            let mut rng = Rng::new(3);
            let mut taken = 0;
            while let Some(port) = p.allocate(rng.next_u64(), Want::EvenPair) {
                assert_eq!(port % 2, 0);
                assert!(port >= lo && port < hi);
                assert!(p.is_busy(port) && p.is_busy(port + 1));
                taken += 2;
            }
            assert_eq!(p.used(), taken);
            // What is left are odd ports or a lone even port at the top.
            while let Some(port) = p.allocate(rng.next_u64(), Want::Even) {
                assert_eq!(port % 2, 0);
                taken += 1;
            }
            assert_eq!(p.used(), taken);
        }
    }

    #[test]
    fn pair_across_word_boundary() {
        // Only ports 24062 (offset 62, word 0)... make offset 63/64 the only free pair.
        let mut p = PortPool::new(24001..=24200);
        for port in 24001..=24200 {
            assert!(p.take(port));
        }
        // Offset 63 = port 24064 (even), offset 64 = 24065 (next word).
        p.release(24064);
        p.release(24065);
        assert_eq!(p.allocate(0, Want::EvenPair), Some(24064));
        assert!(p.is_busy(24065));
        assert_eq!(p.allocate(0, Want::Any), None);
    }

    #[test]
    fn out_of_range_is_refused() {
        let mut p = PortPool::new(100..=110);
        assert!(!p.take(99));
        assert!(!p.take(111));
        assert!(p.is_busy(111));
        p.release(5);
        assert_eq!(p.used(), 0);
        assert_eq!(p.capacity(), 11);
        #[allow(clippy::reversed_empty_ranges)]
        let mut empty = PortPool::new(10..=9);
        assert_eq!(empty.allocate(0, Want::Any), None);
    }

    #[test]
    fn live_ports_set_clear_and_range() {
        let live = LivePorts::new(24001..=24200);
        for port in [24001, 24064, 24065, 24200] {
            assert!(!live.contains(port));
            live.set(port);
            assert!(live.contains(port));
        }
        live.clear(24064);
        assert!(!live.contains(24064) && live.contains(24065));
        // Outside the range: never live, and setting it is a no-op.
        live.set(24000);
        live.set(24201);
        assert!(!live.contains(24000) && !live.contains(24201));
        #[allow(clippy::reversed_empty_ranges)]
        let empty = LivePorts::new(10..=9);
        empty.set(10);
        assert!(!empty.contains(10));
    }

    #[test]
    fn wraps_to_ports_before_the_start() {
        let mut p = PortPool::new(0..=127);
        for port in 64..=127 {
            p.take(port);
        }
        p.take(0);
        // Start at offset 100 (busy to the end), wrap to word 0.
        assert_eq!(p.allocate(100, Want::Any), Some(1));
        // Start inside word 0 after the free ports: wraps around to the same word.
        for port in 2..=63 {
            if port != 10 {
                p.take(port);
            }
        }
        assert_eq!(p.allocate(50, Want::Any), Some(10));
        assert_eq!(p.allocate(50, Want::Any), None);
    }
}
