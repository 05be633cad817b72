//! The benchmark's own XDP programs (`cargo xtask bench`, scenario "capacity"): a sink on
//! the far side of the relay that counts and drops what arrives, and a bare redirect (MAC
//! rewrite, then out of another NIC) that is the ceiling of any kernel relay on the same
//! veths. Neither runs in the daemon: `relay bench-xdp` loads them.

/// Name of the counting sink program in the object file.
pub const BENCH_SINK_PROGRAM: &str = "bench_sink";
/// Name of the bare redirect program in the object file.
pub const BENCH_REDIRECT_PROGRAM: &str = "bench_redirect";
/// `PerCpuArray<BenchCounters>` of one entry: what either program counted.
pub const BENCH_COUNTERS_MAP: &str = "BENCH_COUNTERS";
/// `Array<BenchRedirect>` of one entry: where the bare redirect sends frames.
pub const BENCH_REDIRECT_MAP: &str = "BENCH_REDIRECT";
/// `DevMapHash` holding the redirect's egress interface (a devmap, as the relay
/// redirects through one: the ceiling takes the same kernel path).
pub const BENCH_DEVMAP: &str = "BENCH_DEVMAP";

/// Frames a bench program handled: the sink counts the UDP datagrams it dropped (the
/// ones that are neither STUN nor someone else's), the redirect what it sent on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchCounters {
    pub packets: u64,
    pub bytes: u64,
}

impl BenchCounters {
    /// Sum of per-CPU values, as userspace reads them.
    pub fn sum<'a>(values: impl IntoIterator<Item = &'a BenchCounters>) -> BenchCounters {
        values
            .into_iter()
            .fold(BenchCounters::default(), |acc, v| BenchCounters {
                packets: acc.packets.wrapping_add(v.packets),
                bytes: acc.bytes.wrapping_add(v.bytes),
            })
    }
}

/// The bare redirect's rewrite: the egress interface (also the devmap key) and the
/// Ethernet addresses written into every frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchRedirect {
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

/// Whether the sink takes a UDP datagram whose payload starts with `first` (the
/// relayed traffic: ChannelData's channel number is 0x4000-0x7fff, the capacity frames'
/// bare payload starts with 0xb5), or leaves it to the host (STUN: its first two bits
/// are 0, so the load generator's refreshes still reach it behind the sink).
#[inline(always)]
pub const fn sink_takes(first: u8) -> bool {
    first >= 0x40
}

/// `aa:bb:cc:dd:ee:ff` (as `/sys/class/net/IF/address` holds it) as 6 bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_macs_as_sysfs_writes_them() {
        assert_eq!(
            parse_mac("02:00:0a:ff:00:01\n"),
            Some([2, 0, 0x0a, 0xff, 0, 1])
        );
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:00:01"), None);
    }

    #[test]
    fn the_sink_leaves_stun_and_takes_channel_data() {
        assert!(!sink_takes(0x00) && !sink_takes(0x01) && !sink_takes(0x3f));
        assert!(sink_takes(0x40) && sink_takes(0x7f) && sink_takes(0xb5));
    }

    #[test]
    fn counters_add_up_across_cpus() {
        let v = [
            BenchCounters {
                packets: 2,
                bytes: 100,
            },
            BenchCounters {
                packets: 3,
                bytes: 50,
            },
        ];
        assert_eq!(
            BenchCounters::sum(&v),
            BenchCounters {
                packets: 5,
                bytes: 150
            }
        );
    }
}
