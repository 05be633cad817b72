//! The fast path's maps. Sizes here are defaults; the daemon sets the real ones from
//! `max_allocations` at load time.

use aya_ebpf::bindings::bpf_fib_lookup as FibParams;
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
};
use relay_common::{
    AllocCounters, CHANNELS_PER_ALLOCATION, ChannelKey, ChannelValue, ClientKey, ClientTarget,
    DEFAULT_MAX_ALLOCATIONS, Ip, PERMISSIONS_PER_ALLOCATION, PUBLIC_IPS_MAX, PeerKey,
    PermissionKey, PublicIpBits, REASON_COUNT, REDIRECT_MAX, RELAYS_PER_ALLOCATION, Reason,
    RelayKey, RelayValue, public_ip_bit,
};

use crate::{parse::Udp, request::Request};

const RELAYS: u32 = DEFAULT_MAX_ALLOCATIONS * RELAYS_PER_ALLOCATION;
const CHANNELS: u32 = DEFAULT_MAX_ALLOCATIONS * CHANNELS_PER_ALLOCATION;

#[map(name = "ALLOCATIONS")]
pub static ALLOCATIONS: HashMap<RelayKey, RelayValue> = HashMap::with_max_entries(RELAYS, 0);

#[map(name = "RELAY_ADDRS")]
pub static RELAY_ADDRS: HashMap<RelayKey, RelayValue> = HashMap::with_max_entries(RELAYS * 2, 0);

#[map(name = "CLIENTS")]
pub static CLIENTS: HashMap<ClientKey, RelayValue> = HashMap::with_max_entries(RELAYS, 0);

#[map(name = "CHANNELS")]
pub static CHANNEL_MAP: HashMap<ChannelKey, ChannelValue> = HashMap::with_max_entries(CHANNELS, 0);

#[map(name = "PEER_CHANNELS")]
pub static PEER_CHANNELS: HashMap<PeerKey, ClientTarget> = HashMap::with_max_entries(CHANNELS, 0);

#[map(name = "PERMISSIONS")]
pub static PERMISSIONS: HashMap<PermissionKey, ClientTarget> =
    HashMap::with_max_entries(DEFAULT_MAX_ALLOCATIONS * PERMISSIONS_PER_ALLOCATION, 0);

#[map(name = "PUBLIC_IPS")]
pub static PUBLIC_IPS: HashMap<Ip, u32> = HashMap::with_max_entries(PUBLIC_IPS_MAX, 0);

#[map(name = "PUBLIC_IP_BITS")]
pub static PUBLIC_IP_BITS: Array<PublicIpBits> = Array::with_max_entries(1, 0);

/// Whether `ip` may be in PUBLIC_IPS (its bit is set; see `relay_common::PUBLIC_IP_BITS_MAP`).
#[inline(always)]
pub fn maybe_public(ip: &Ip) -> bool {
    match PUBLIC_IP_BITS.get(0) {
        Some(b) => b.has(public_ip_bit(ip)),
        None => true,
    }
}

#[map(name = "ALLOC_COUNTERS")]
pub static ALLOC_COUNTERS: PerCpuArray<AllocCounters> = PerCpuArray::with_max_entries(RELAYS, 0);

#[map(name = "REASON_COUNTERS")]
pub static REASON_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

#[map(name = "REDIRECT_IFACES")]
pub static REDIRECT_IFACES: DevMapHash = DevMapHash::with_max_entries(REDIRECT_MAX, 0);

// Per-CPU scratch space for what does not fit the 512-byte BPF stack (the parsed datagram,
// a client's request, the FIB lookup parameters): one map each so the references never
// alias. A program run is not preempted by another run on its CPU, so a slot belongs to
// one run at a time.

#[map(name = "SCRATCH_UDP")]
pub static SCRATCH_UDP: PerCpuArray<Udp> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SCRATCH_REQUEST")]
pub static SCRATCH_REQUEST: PerCpuArray<Request> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SCRATCH_FIB")]
pub static SCRATCH_FIB: PerCpuArray<FibParams> = PerCpuArray::with_max_entries(1, 0);

/// [`allocation_flags`] of a datagram to no relayed address.
pub const NO_ALLOCATION: u32 = u32::MAX;

/// The flags (`RelayValue::_pad[0]`) of the allocation whose relayed address `udp` is
/// sent to, or [`NO_ALLOCATION`]. Out of line: the key stays off the program's main stack
/// frame, which shares the 512-byte budget with the deepest handler's.
#[inline(never)]
pub fn allocation_flags(udp: &Udp) -> u32 {
    let relay = RelayKey {
        ip: udp.dst_ip,
        port: udp.dst_port,
        _pad: [0; 2],
    };
    match ALLOCATIONS.get_ptr(relay) {
        // SAFETY: value pointer from a successful lookup.
        Some(v) => u32::from(unsafe { (*v)._pad[0] }),
        None => NO_ALLOCATION,
    }
}

#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(c) = REASON_COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_to_peer(slot: u32, bytes: u64) {
    if let Some(c) = ALLOC_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).to_peer_packets += 1;
            (*c).to_peer_bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count_to_client(slot: u32, bytes: u64) {
    if let Some(c) = ALLOC_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).to_client_packets += 1;
            (*c).to_client_bytes += bytes;
        }
    }
}
