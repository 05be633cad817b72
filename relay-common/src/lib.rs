//! Types shared by the kernel program (`relay-ebpf`) and the daemon (`relay-user`).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding so both sides agree on
//! the layout byte for byte. Addresses and ports stay in network byte order so the kernel
//! can build keys straight from packet bytes.
#![no_std]

/// Name of the per-interface counter map (`PerCpuHashMap<u32, IfaceCounters>`), keyed by
/// the ingress ifindex.
pub const IFACE_COUNTERS_MAP: &str = "IFACE_COUNTERS";
/// Capacity of [`IFACE_COUNTERS_MAP`]: more interfaces than any edge host has.
pub const IFACE_COUNTERS_MAX: u32 = 256;
/// Name of the XDP program in the object file.
pub const XDP_PROGRAM: &str = "relay_xdp";

/// Packets and bytes the XDP program saw arrive on one interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    pub packets: u64,
    pub bytes: u64,
}

impl IfaceCounters {
    /// Sum of per-CPU values, as userspace reads them.
    pub fn sum<'a>(values: impl IntoIterator<Item = &'a IfaceCounters>) -> IfaceCounters {
        values
            .into_iter()
            .fold(IfaceCounters::default(), |acc, v| IfaceCounters {
                packets: acc.packets.wrapping_add(v.packets),
                bytes: acc.bytes.wrapping_add(v.bytes),
            })
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, `repr(C)`, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::IfaceCounters {}
}
