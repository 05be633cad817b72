//! Bandwidth limits (`[limits] max_bps_per_allocation`, `max_bps_per_user`): the
//! arithmetic both data paths share, the kernel program's (one compare-and-swap on a map
//! value) and the daemon's (a plain field).
//!
//! A limit counts payload bits per second, both directions of an allocation together.
//! It is a GCRA (generic cell rate algorithm, the virtual-scheduling form of a token
//! bucket): one number per bucket, the *theoretical arrival time* (TAT), i.e. when the
//! bucket would be empty again at the limit's rate. A datagram is admitted while the TAT
//! runs at most [`BURST_NS`] ahead of now; admitting one moves the TAT on by the time its
//! payload takes at the limit's rate. One number means one atomic compare-and-swap in the
//! kernel, where two fields (tokens and last refill) would need a lock.
//!
//! Times are in ticks of 1/16 ns so that the cost of a small datagram at the highest
//! limit (64 bytes at 100 Gbit/s: 5.12 ns) keeps its precision; a u64 of ticks covers 36
//! years of uptime. Costs round up: rounding never lets more through than the limit.

/// How far ahead of now the TAT may run: the burst a limit lets through at once, as time
/// at its rate (200 ms of a 800 kbit/s limit is 20 kB). Enough for a video key frame
/// that arrives as one burst; a datagram is admitted whole when the TAT is within this,
/// so even a datagram larger than the burst passes now and then.
pub const BURST_NS: u64 = 200_000_000;
/// Lowest limit the configuration takes (bit/s): below it not even a voice call fits.
pub const MIN_BPS: u64 = 8_000;
/// Highest limit the configuration takes (bit/s).
pub const MAX_BPS: u64 = 100_000_000_000;
/// Ticks per nanosecond.
pub const TICKS_PER_NS: u64 = 16;
/// [`BURST_NS`] in ticks.
pub const BURST_TICKS: u64 = BURST_NS * TICKS_PER_NS;
/// A slot's bucket index meaning "no limit".
pub const NO_BUCKET: u32 = u32::MAX;

/// Name of the per-slot map (`Array<SlotBandwidth>`, indexed like `ALLOC_COUNTERS`).
pub const SLOT_BANDWIDTH_MAP: &str = "SLOT_BANDWIDTH";
/// Name of the bucket map (`Array<Bucket>`): allocation buckets, then user buckets.
pub const BANDWIDTH_MAP: &str = "BANDWIDTH";
/// Name of the per-slot dropped-datagram counters (`PerCpuArray<u64>`).
pub const ALLOC_DROPS_MAP: &str = "ALLOC_DROPS";

/// Capacities of the bandwidth maps for `max_allocations`: (map name, entries). Every
/// relayed address has a slot; an allocation has a bucket (index: its allocation number,
/// below `max_allocations`) and so may each user (index `max_allocations + n`; there are
/// never more users with allocations than allocations).
pub const fn bandwidth_map_sizes(max_allocations: u32) -> [(&'static str, u32); 3] {
    let slots = max_allocations.saturating_mul(crate::RELAYS_PER_ALLOCATION);
    [
        (SLOT_BANDWIDTH_MAP, slots),
        (BANDWIDTH_MAP, max_allocations.saturating_mul(2)),
        (ALLOC_DROPS_MAP, slots),
    ]
}

/// Value of [`SLOT_BANDWIDTH_MAP`]: the buckets a relayed address's traffic is charged
/// to, [`NO_BUCKET`] for none (no limit).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotBandwidth {
    /// Index into [`BANDWIDTH_MAP`] of the allocation's bucket (shared by both relayed
    /// addresses of a dual-stack allocation).
    pub allocation: u32,
    /// Index into [`BANDWIDTH_MAP`] of its user's bucket.
    pub user: u32,
}

impl Default for SlotBandwidth {
    fn default() -> Self {
        Self {
            allocation: NO_BUCKET,
            user: NO_BUCKET,
        }
    }
}

/// Value of [`BANDWIDTH_MAP`]: one limit's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Theoretical arrival time, in ticks of the kernel's monotonic clock (0: idle).
    pub tat: u64,
    /// The limit in bit/s; 0 admits everything.
    pub bps: u64,
}

/// Ticks `bytes` of payload take at `bps` (> 0), rounded up.
#[inline(always)]
pub const fn cost(bytes: u64, bps: u64) -> u64 {
    // A datagram is at most 64 KiB: 2^16 * 8e9 * 16 < 2^64, no overflow.
    let bytes = if bytes > 0xffff { 0xffff } else { bytes };
    (bytes * 8 * 1_000_000_000 * TICKS_PER_NS).div_ceil(bps)
}

/// Now, in ticks, from a monotonic nanosecond clock.
#[inline(always)]
pub const fn ticks(now_ns: u64) -> u64 {
    now_ns.saturating_mul(TICKS_PER_NS)
}

/// Whether a bucket whose TAT is `tat` admits a datagram at `now` (ticks).
#[inline(always)]
pub const fn admits(tat: u64, now: u64) -> bool {
    tat.saturating_sub(now) <= BURST_TICKS
}

/// The TAT after admitting `bytes` at `now` (ticks) to a bucket of `bps` (> 0): an idle
/// bucket (TAT in the past) starts from now, it does not bank unused time.
#[inline(always)]
pub const fn charged(tat: u64, now: u64, bytes: u64, bps: u64) -> u64 {
    let start = if tat > now { tat } else { now };
    start.saturating_add(cost(bytes, bps))
}

impl Bucket {
    /// A bucket for a limit of `bps` (0: unlimited), idle.
    pub const fn new(bps: u64) -> Self {
        Self { tat: 0, bps }
    }

    /// Whether `bytes` may pass at `now_ns` (monotonic nanoseconds); if so, charges them.
    /// The single-owner form (userspace); the kernel program does the same through a
    /// compare-and-swap on `tat`.
    pub fn take(&mut self, bytes: u64, now_ns: u64) -> bool {
        if self.bps == 0 {
            return true;
        }
        let now = ticks(now_ns);
        if !admits(self.tat, now) {
            return false;
        }
        self.tat = charged(self.tat, now, bytes, self.bps);
        true
    }

    /// Whether `bytes` at `now_ns` would pass, without charging (to check every bucket a
    /// datagram is charged to before charging any).
    pub const fn would_take(&self, now_ns: u64) -> bool {
        self.bps == 0 || admits(self.tat, ticks(now_ns))
    }
}

/// Whether `bps` is a limit the configuration takes: 0 (none) or
/// [`MIN_BPS`]..=[`MAX_BPS`].
pub const fn valid_bps(bps: u64) -> bool {
    bps == 0 || (bps >= MIN_BPS && bps <= MAX_BPS)
}

const _: () = {
    assert!(core::mem::size_of::<SlotBandwidth>() == 8);
    assert!(core::mem::size_of::<Bucket>() == 16);
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Offers `size`-byte datagrams every `gap_ns` for `secs` seconds; returns the bytes
    /// admitted.
    fn run(bps: u64, size: u64, gap_ns: u64, secs: u64) -> u64 {
        let mut b = Bucket::new(bps);
        let start = 1_000_000_000;
        let mut passed = 0;
        let mut t = start;
        while t < start + secs * 1_000_000_000 {
            if b.take(size, t) {
                passed += size;
            }
            t += gap_ns;
        }
        passed
    }

    #[test]
    fn unlimited_admits_everything() {
        let mut b = Bucket::new(0);
        assert!((0..10_000).all(|i| b.take(1500, i)));
    }

    #[test]
    fn delivers_the_limit_of_a_faster_sender() {
        // 800 kbit/s limit, 2 Mbit/s offered (250-byte datagrams every 1 ms), 10 s.
        let passed = run(800_000, 250, 1_000_000, 10);
        let bps = passed * 8 / 10;
        // The burst adds at most 200 ms of the limit (+ one datagram) over 10 s.
        assert!(
            (800_000..=800_000 + 800_000 / 50 + 2000).contains(&bps),
            "{bps}"
        );
    }

    #[test]
    fn a_slower_sender_is_untouched() {
        let passed = run(800_000, 250, 5_000_000, 10);
        assert_eq!(passed, 250 * 2000);
    }

    #[test]
    fn burst_is_200_ms_of_the_rate() {
        let mut b = Bucket::new(800_000);
        let now = 5_000_000_000;
        let mut n = 0;
        while b.take(100, now) {
            n += 1;
        }
        // 200 ms at 100 kB/s = 20 kB, plus the datagram admitted at the edge.
        assert_eq!(n, 201);
    }

    #[test]
    fn a_datagram_larger_than_the_burst_still_passes() {
        // 8 kbit/s: 200 ms is 200 bytes; a 1200-byte datagram passes about once per 1.2 s.
        let passed = run(8_000, 1200, 100_000_000, 12);
        assert!((9_600..=13_200).contains(&passed), "{passed}");
    }

    #[test]
    fn idle_time_is_not_banked() {
        let mut b = Bucket::new(800_000);
        assert!(b.take(100, 1_000_000_000));
        // A minute later, still only one burst.
        let now = 61_000_000_000;
        let mut n = 0;
        while b.take(100, now) {
            n += 1;
        }
        assert_eq!(n, 201);
    }

    #[test]
    fn cost_rounds_up_and_saturates_size() {
        assert_eq!(cost(64, MAX_BPS), 82); // 81.92 ticks
        assert_eq!(cost(1000, 8_000), 1_000_000_000 * TICKS_PER_NS);
        assert_eq!(cost(1 << 20, MIN_BPS), cost(0xffff, MIN_BPS));
    }

    #[test]
    fn valid_range() {
        assert!(valid_bps(0) && valid_bps(MIN_BPS) && valid_bps(MAX_BPS));
        assert!(!valid_bps(MIN_BPS - 1) && !valid_bps(MAX_BPS + 1));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the pattern of offers, what passes in a window never exceeds the rate
        /// over the window plus one burst and one datagram.
        #[test]
        fn never_more_than_rate_plus_burst(
            bps in MIN_BPS..=MAX_BPS / 1000,
            offers in proptest::collection::vec((1u64..1500, 0u64..5_000_000), 1..400),
        ) {
            let mut b = Bucket::new(bps);
            let mut t = 1_000_000_000u64;
            let start = t;
            let mut passed = 0u64;
            for (size, gap) in offers {
                t += gap;
                if b.take(size, t) {
                    passed += size;
                }
            }
            let window_ns = (t - start) as u128 + BURST_NS as u128;
            let allowed = window_ns * bps as u128 / 8 / 1_000_000_000 + 1500;
            prop_assert!(passed as u128 <= allowed, "{passed} > {allowed}");
        }

        /// A sender within the limit loses nothing.
        #[test]
        fn within_the_limit_nothing_drops(
            bps in MIN_BPS..=MAX_BPS,
            size in 1u64..1500,
            n in 1usize..300,
        ) {
            let gap = cost(size, bps).div_ceil(TICKS_PER_NS);
            let mut b = Bucket::new(bps);
            let mut t = 1_000_000_000u64;
            for _ in 0..n {
                prop_assert!(b.take(size, t));
                t += gap;
            }
        }
    }
}
