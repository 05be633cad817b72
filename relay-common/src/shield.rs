//! The kernel shield: what the XDP program drops on the daemon's behalf, and the token
//! buckets it keeps for unauthenticated STUN requests.
//!
//! The buckets are GCRA ("virtual scheduling"): one `u64` per bucket, the theoretical
//! arrival time (TAT) of the next request in nanoseconds of `bpf_ktime_get_ns`. A single
//! word can be updated with one compare-and-swap, needs no division at packet time (the
//! daemon hands the kernel the interval between tokens), and an empty entry (0) reads as
//! a full bucket.

/// `Array<ShieldConfig>` of one entry: the daemon's settings for the shield.
pub const SHIELD_CONFIG_MAP: &str = "SHIELD_CONFIG";
/// `HashMap<RelayKey, u32>`: the UDP listeners' addresses (IP and port), value 1. Packets
/// to them that cannot be STUN or ChannelData are dropped; their requests are rate-limited.
/// Keyed by address, not port: another service may use the same port on another IP.
pub const LISTENERS_MAP: &str = "LISTENERS";
/// Capacity of [`LISTENERS_MAP`].
pub const LISTENERS_MAX: u32 = 64;
/// `HashMap<Ip, u32>`: the IPs relay sockets are bound to, value 1. A datagram to one of
/// them inside the relay port range that no socket holds is dropped.
pub const RELAY_IPS_MAP: &str = "RELAY_IPS";
/// Capacity of [`RELAY_IPS_MAP`].
pub const RELAY_IPS_MAX: u32 = 64;
/// `LruHashMap<SourceKey, u64>`: per source, the TAT of its unauthenticated-request
/// bucket.
pub const SOURCE_BUCKETS_MAP: &str = "SOURCE_BUCKETS";
/// Capacity of [`SOURCE_BUCKETS_MAP`]: a flood of spoofed sources evicts the oldest, so a
/// source may start over with a full burst, which costs no more than the flood itself (the
/// global bucket still holds).
pub const SOURCE_BUCKETS_MAX: u32 = 32_768;
/// `Array<u64>` of one entry: the TAT of the global bucket shared by every source.
pub const GLOBAL_BUCKET_MAP: &str = "GLOBAL_BUCKET";

/// [`ShieldConfig::flags`]: the shield is on (otherwise the program passes up everything
/// it does not forward, as before).
pub const SHIELD_ON: u32 = 1;
/// [`ShieldConfig::flags`]: every UDP allocation's client is in the CLIENTS map (the daemon
/// clears it the moment a write there fails), so ChannelData from a 5-tuple the map does
/// not know cannot be for any allocation and is dropped.
pub const SHIELD_ALL_CLIENTS_KNOWN: u32 = 2;

/// [`RelayValue::_pad`](crate::RelayValue) byte 0 of an ALLOCATIONS or CLIENTS entry: every
/// permission and channel of the allocation is in the kernel maps, so a peer without a
/// permission, or ChannelData on a channel the map lacks, is dropped rather than passed up.
pub const ALLOCATION_COMPLETE: u8 = 1;

/// Value of [`SHIELD_CONFIG_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShieldConfig {
    /// [`SHIELD_ON`], [`SHIELD_ALL_CLIENTS_KNOWN`].
    pub flags: u32,
    /// Relay port range, inclusive, host byte order.
    pub relay_port_min: u16,
    pub relay_port_max: u16,
    /// Per-source bucket: nanoseconds per token (0: no limit), and the burst as
    /// nanoseconds (tokens × interval).
    pub source_interval_ns: u64,
    pub source_burst_ns: u64,
    /// Global bucket for every source together, same units.
    pub global_interval_ns: u64,
    pub global_burst_ns: u64,
}

/// Key of [`SOURCE_BUCKETS_MAP`]: an IPv4 address (v4-mapped) or an IPv6 /64 (the rest
/// zeroed), as the daemon's limiter keys sources.
pub type SourceKey = crate::Ip;

/// The map key of the source `ip` (16-byte map form).
pub fn source_key(ip: &crate::Ip) -> SourceKey {
    let mut k = *ip;
    if !crate::is_v4_mapped(ip) {
        let mut i = 8;
        while i < 16 {
            k[i] = 0;
            i += 1;
        }
    }
    k
}

/// `(interval_ns, burst_ns)` of a bucket of `rate` tokens per second and `burst` tokens
/// (at least 1); `rate` 0 gives `(0, 0)`: no limit.
pub const fn bucket_params(rate: u32, burst: u32) -> (u64, u64) {
    if rate == 0 {
        return (0, 0);
    }
    let interval = 1_000_000_000 / rate as u64;
    let burst = if burst == 0 { 1 } else { burst as u64 };
    // At least 1 ns per token, so the arithmetic below never stands still.
    let interval = if interval == 0 { 1 } else { interval };
    (interval, interval * burst)
}

/// One request against the bucket whose TAT is `tat`, at `now` (ns): the new TAT if the
/// request may pass, `None` if the bucket is empty (the TAT stays). `interval_ns` 0: no
/// limit (the TAT is returned unchanged).
#[inline(always)]
pub const fn gcra(tat: u64, now: u64, interval_ns: u64, burst_ns: u64) -> Option<u64> {
    if interval_ns == 0 {
        return Some(tat);
    }
    let start = if tat > now { tat } else { now };
    let next = start.saturating_add(interval_ns);
    if next - now > burst_ns {
        None
    } else {
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate() {
        let (i, b) = bucket_params(10, 3);
        let mut tat = 0;
        let now = 5_000_000_000;
        for _ in 0..3 {
            tat = gcra(tat, now, i, b).expect("burst");
        }
        assert_eq!(gcra(tat, now, i, b), None);
        // 100 ms later, one token.
        let later = now + 100_000_000;
        tat = gcra(tat, later, i, b).expect("refilled");
        assert_eq!(gcra(tat, later, i, b), None);
    }

    #[test]
    fn rate_zero_is_no_limit() {
        assert_eq!(bucket_params(0, 5), (0, 0));
        assert_eq!(gcra(7, 1, 0, 0), Some(7));
    }

    #[test]
    fn ipv6_sources_are_keyed_by_their_64() {
        let mut a = [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 1, 9, 9, 9, 9, 9, 9, 9, 9];
        let k = source_key(&a);
        a[15] = 1;
        assert_eq!(source_key(&a), k);
        assert_eq!(&k[8..], &[0; 8]);
        let v4 = crate::v4_mapped([192, 0, 2, 1]);
        assert_eq!(source_key(&v4), v4);
    }

    /// Over any window, whatever the arrival pattern, at most `burst + rate × window`
    /// requests pass, and a request after a quiet `burst / rate` seconds always passes.
    #[test]
    fn never_more_than_burst_plus_rate_over_any_window() {
        // A small deterministic generator: relay-common has no dev-dependencies, and a
        // few thousand random schedules cover what a property test would.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2_000 {
            let rate = (next() % 5_000 + 1) as u32;
            let burst = (next() % 100 + 1) as u32;
            let (i, b) = bucket_params(rate, burst);
            let mut now = next() % 1_000_000_000_000;
            let start = now;
            let mut tat = 0u64;
            let mut passed = 0u64;
            for _ in 0..500 {
                now += next() % (2 * i);
                if let Some(t) = gcra(tat, now, i, b) {
                    tat = t;
                    passed += 1;
                }
            }
            let window = now - start;
            assert!(
                passed <= u64::from(burst) + window / i + 1,
                "rate {rate} burst {burst}: {passed} passed in {window} ns"
            );
            assert!(gcra(tat, now + b, i, b).is_some());
        }
    }
}
