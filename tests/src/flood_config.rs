//! The junk flood of issue 14 as a `trafgen` (netsniff-ng) configuration: what an edge
//! relay on the internet receives when someone aims a packet generator at it. Four kinds,
//! one packet template each, which trafgen sends round-robin, so each is a quarter of the
//! flood:
//!
//! - random bytes to the listener port (first byte 0xff: neither STUN nor ChannelData);
//! - random datagrams to the relay port range (no allocation, no permission);
//! - ChannelData on an unbound channel to the listener port;
//! - minimal (28-byte) Allocates, the amplification probe, from 10,000 source addresses.
//!
//! Sources are spoofed from 198.18.0.0/15 (RFC 2544's benchmarking range, routed nowhere),
//! with random ports above 1023 (port 0 is a junk kind of its own that the relay refuses
//! before any of these). trafgen fills in the IPv4 and UDP checksums, also of the fields
//! it randomises per packet. Only `std`: `cargo xtask bench` includes this file too.

use std::{fmt::Write as _, net::Ipv4Addr, ops::RangeInclusive};

/// One kind of junk in the flood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Junk {
    /// 64 bytes to the listener port that cannot be STUN or ChannelData.
    RandomBytes,
    /// 64 random bytes to a random port of the relay range.
    RelayPortDatagram,
    /// ChannelData (channel 0x4000-0x4fff, 32 bytes of data) that no allocation bound.
    UnboundChannelData,
    /// A valid-looking 28-byte Allocate (REQUESTED-TRANSPORT UDP, random transaction).
    MinimalAllocate,
}

impl Junk {
    pub const ALL: [Junk; 4] = [
        Junk::RandomBytes,
        Junk::RelayPortDatagram,
        Junk::UnboundChannelData,
        Junk::MinimalAllocate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Junk::RandomBytes => "random bytes to the listener",
            Junk::RelayPortDatagram => "datagrams to relay ports",
            Junk::UnboundChannelData => "unbound ChannelData",
            Junk::MinimalAllocate => "28-byte Allocates",
        }
    }
}

/// The smallest Allocate: the 20-byte header and REQUESTED-TRANSPORT (UDP).
pub const ALLOCATE_LEN: usize = 28;
/// How many distinct sources the Allocates come from: 198.19.0.0 to 198.19.39.249.
pub const ALLOCATE_SOURCES: u32 = 40 * 250;
/// UDP payload of the other kinds.
const JUNK_LEN: usize = 64;
const CHANNEL_DATA_LEN: usize = 32;

/// Where the flood goes: the relay host's NIC as seen from the sender's link.
#[derive(Clone, Debug)]
pub struct FloodTarget {
    /// The sender's interface's MAC (trafgen writes Ethernet headers itself).
    pub src_mac: [u8; 6],
    /// The relay NIC's MAC.
    pub dst_mac: [u8; 6],
    pub dst_ip: Ipv4Addr,
    /// The TURN listener port (3478).
    pub listener_port: u16,
    pub relay_ports: RangeInclusive<u16>,
}

/// `aa:bb:cc:dd:ee:ff` as 6 bytes (what `/sys/class/net/IF/address` holds).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .trim()
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The trafgen configuration: one packet template per kind in `kinds`.
pub fn trafgen_config(t: &FloodTarget, kinds: &[Junk]) -> String {
    let mut s = String::from("/* junk flood (relay-tests flood_config.rs) */\n");
    for &kind in kinds {
        let (sources, dport, payload) = match kind {
            // Any of the 131,072 addresses of 198.18.0.0/15.
            Junk::RandomBytes | Junk::RelayPortDatagram | Junk::UnboundChannelData => (
                "sa=198.18.0.0, sa[1]=drnd(18, 19), sa[2]=drnd(), sa[3]=drnd()",
                port(kind, t),
                payload(kind),
            ),
            // 40 x 250 addresses of 198.19.0.0/16: a botnet-sized set, each source
            // coming back often enough to exhaust a per-source bucket.
            Junk::MinimalAllocate => (
                "sa=198.19.0.0, sa[2]=drnd(0, 39), sa[3]=drnd(0, 249)",
                port(kind, t),
                payload(kind),
            ),
        };
        let _ = writeln!(
            s,
            "/* {} */\n{{\n  eth(da={}, sa={}),\n  ipv4({sources}, da={}),\n  \
             udp(sp=drnd(1024, 65535), dp={dport}),\n  {payload}\n}}",
            kind.name(),
            mac(&t.dst_mac),
            mac(&t.src_mac),
            t.dst_ip,
        );
    }
    s
}

fn port(kind: Junk, t: &FloodTarget) -> String {
    match kind {
        Junk::RelayPortDatagram => {
            format!("drnd({}, {})", t.relay_ports.start(), t.relay_ports.end())
        }
        _ => t.listener_port.to_string(),
    }
}

/// `n` random-looking bytes written into the template once (a fixed xorshift sequence
/// per `seed`): trafgen draws a `drnd()` byte anew for every frame, and 64 of them per
/// frame cost it a quarter of its pace (about 455k against 550k+ frames/s on a slower
/// 2-vCPU box), while what the kernel program sees of a junk payload is its first
/// bytes and its length. The addresses and ports that make each frame a new source or
/// 5-tuple stay random per frame.
fn fixed_random(n: usize, seed: u64) -> String {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("0x{:02x}", x as u8)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn payload(kind: Junk) -> String {
    match kind {
        Junk::RandomBytes => format!("0xff, {}", fixed_random(JUNK_LEN - 1, 0x9e37_79b9)),
        Junk::RelayPortDatagram => fixed_random(JUNK_LEN, 0x85eb_ca6b),
        // Channel numbers 0x4000-0x4fff (RFC 8656 section 12; the high byte cycles, as
        // payload bytes take no random range), the length field exact.
        Junk::UnboundChannelData => {
            format!(
                "dinc(0x40, 0x4f), drnd(), c16({CHANNEL_DATA_LEN}), {}",
                fixed_random(CHANNEL_DATA_LEN, 0xc2b2_ae35)
            )
        }
        // Allocate, length 8, magic cookie, transaction ID; REQUESTED-TRANSPORT = 17.
        Junk::MinimalAllocate => "c16(0x0003), c16(8), c32(0x2112a442), drnd(12), \
                                  c16(0x0019), c16(4), 17, 0, 0, 0"
            .to_owned(),
    }
}

/// The UDP payload length of `kind`, as the templates write it.
pub fn payload_len(kind: Junk) -> usize {
    match kind {
        Junk::RandomBytes | Junk::RelayPortDatagram => JUNK_LEN,
        Junk::UnboundChannelData => 4 + CHANNEL_DATA_LEN,
        Junk::MinimalAllocate => ALLOCATE_LEN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> FloodTarget {
        FloodTarget {
            src_mac: [0x02, 0, 0, 0, 0, 1],
            dst_mac: [0x02, 0, 0, 0, 0xab, 0xcd],
            dst_ip: Ipv4Addr::new(198, 51, 100, 50),
            listener_port: 3478,
            relay_ports: 24000..=29999,
        }
    }

    /// The templates, one per `{ … }` block.
    fn blocks(cfg: &str) -> Vec<&str> {
        cfg.split('{')
            .skip(1)
            .map(|b| b.split('}').next().unwrap())
            .collect()
    }

    #[test]
    fn one_template_per_kind_to_the_relay_nic() {
        let cfg = trafgen_config(&target(), &Junk::ALL);
        let b = blocks(&cfg);
        assert_eq!(b.len(), 4, "{cfg}");
        for block in &b {
            assert!(block.contains("eth(da=02:00:00:00:ab:cd, sa=02:00:00:00:00:01)"));
            assert!(block.contains("da=198.51.100.50)"), "{block}");
            // Never source port 0: that is refused before any of the kinds tested here.
            assert!(block.contains("udp(sp=drnd(1024, 65535)"), "{block}");
        }
        assert!(b[0].contains("dp=3478") && b[0].contains("0xff, 0x"));
        assert!(b[1].contains("dp=drnd(24000, 29999)"), "{}", b[1]);
        assert!(b[2].contains("dp=3478") && b[2].contains("dinc(0x40, 0x4f)"));
        assert!(b[3].contains("c32(0x2112a442)"), "{}", b[3]);
    }

    #[test]
    fn sources_are_spoofed_from_the_benchmark_range() {
        let cfg = trafgen_config(&target(), &Junk::ALL);
        for block in blocks(&cfg) {
            assert!(
                block.contains("sa=198.18.0.0, sa[1]=drnd(18, 19)")
                    || block.contains("sa=198.19.0.0, sa[2]=drnd(0, 39), sa[3]=drnd(0, 249)"),
                "{block}"
            );
        }
        assert_eq!(ALLOCATE_SOURCES, 10_000);
    }

    /// Sums the bytes a payload template writes: `c16` 2, `c32` 4, `drnd(n)` n,
    /// `drnd()`/`drnd(a, b)` 1, a plain number 1.
    fn template_len(payload: &str) -> usize {
        // Items are separated by commas outside parentheses.
        let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
        for (i, c) in payload.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(payload[start..i].trim());
                    start = i + 1;
                }
                _ => {}
            }
        }
        items.push(payload[start..].trim());
        items
            .iter()
            .map(|item| {
                if item.starts_with("c16(") {
                    2
                } else if item.starts_with("c32(") {
                    4
                } else if let Some(arg) =
                    item.strip_prefix("drnd(").and_then(|a| a.strip_suffix(')'))
                {
                    if arg.is_empty() || arg.contains(',') {
                        1
                    } else {
                        arg.parse().unwrap()
                    }
                } else {
                    1
                }
            })
            .sum()
    }

    #[test]
    fn payloads_have_their_stated_sizes() {
        for kind in Junk::ALL {
            assert_eq!(template_len(&payload(kind)), payload_len(kind), "{kind:?}");
        }
        assert_eq!(payload_len(Junk::MinimalAllocate), 28);
    }

    #[test]
    fn the_allocate_is_a_stun_request_with_requested_transport_udp() {
        let p = payload(Junk::MinimalAllocate);
        assert!(p.starts_with("c16(0x0003), c16(8), c32(0x2112a442), drnd(12),"));
        assert!(p.ends_with("c16(0x0019), c16(4), 17, 0, 0, 0"));
    }

    #[test]
    fn channel_data_length_matches_its_data() {
        let p = payload(Junk::UnboundChannelData);
        assert!(
            p.starts_with(&format!(
                "dinc(0x40, 0x4f), drnd(), c16({CHANNEL_DATA_LEN}), 0x"
            )),
            "{p}"
        );
        assert_eq!(template_len(&p), 4 + CHANNEL_DATA_LEN);
    }

    #[test]
    fn junk_bytes_are_varied_not_one_value() {
        let p = fixed_random(64, 1);
        let distinct: std::collections::HashSet<&str> = p.split(", ").collect();
        assert!(distinct.len() > 32, "{p}");
        assert!(p.split(", ").all(|b| b.len() == 4 && b.starts_with("0x")));
    }

    #[test]
    fn parses_sysfs_macs() {
        assert_eq!(
            parse_mac("46:1d:1c:0c:26:43\n"),
            Some([0x46, 0x1d, 0x1c, 0x0c, 0x26, 0x43])
        );
        assert_eq!(parse_mac("46:1d:1c"), None);
        assert_eq!(parse_mac("zz:1d:1c:0c:26:43"), None);
        assert_eq!(
            mac(&[0x46, 0x1d, 0x1c, 0x0c, 0x26, 0x43]),
            "46:1d:1c:0c:26:43"
        );
    }
}
