//! The benchmark's XDP programs (see `relay_common::bench`), in this object so they are
//! built, verified and shipped with the relay's own, but never attached by the daemon:
//! `relay bench-xdp` loads one of them by name.
//!
//! - `bench_sink`: on the receiving host of the capacity scenario, counts the relayed
//!   datagrams (IPv4 UDP, first payload byte at least 0x40) and drops them, so no echo
//!   process takes CPU from the relay; everything else (ARP, STUN answers to the load
//!   generator) passes.
//! - `bench_redirect`: the ceiling. Rewrites the Ethernet addresses and redirects through
//!   a devmap, as the relay's fast path does, with no parsing or lookup at all.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, DevMapHash, PerCpuArray},
    programs::XdpContext,
};
use relay_common::bench::{BenchCounters, BenchRedirect, sink_takes};

use crate::parse::{ETH_LEN, IPV4_LEN, UDP_LEN, ptr_at};

#[map(name = "BENCH_COUNTERS")]
static BENCH_COUNTERS: PerCpuArray<BenchCounters> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "BENCH_REDIRECT")]
static BENCH_REDIRECT: Array<BenchRedirect> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_DEVMAP")]
static BENCH_DEVMAP: DevMapHash = DevMapHash::with_max_entries(1, 0);

#[inline(always)]
fn count(ctx: &XdpContext) {
    if let Some(c) = BENCH_COUNTERS.get_ptr_mut(0) {
        // SAFETY: per-CPU value, no other writer on this CPU while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
}

#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    // Ethernet type IPv4, IHL 5 (the generators send no options), protocol UDP.
    let Some(eth_type) = ptr_at::<[u8; 2]>(&ctx, 12) else {
        return xdp_action::XDP_PASS;
    };
    let Some(ip) = ptr_at::<[u8; IPV4_LEN]>(&ctx, ETH_LEN) else {
        return xdp_action::XDP_PASS;
    };
    let Some(first) = ptr_at::<u8>(&ctx, ETH_LEN + IPV4_LEN + UDP_LEN) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: each pointer was bounds-checked against the frame by `ptr_at`.
    let (eth_type, ip, first) = unsafe { (*eth_type, *ip, *first) };
    if eth_type != [0x08, 0x00] || ip[0] != 0x45 || ip[9] != 17 || !sink_takes(first) {
        return xdp_action::XDP_PASS;
    }
    count(&ctx);
    xdp_action::XDP_DROP
}

#[xdp]
pub fn bench_redirect(ctx: XdpContext) -> u32 {
    let Some(to) = BENCH_REDIRECT.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let Some(eth) = ptr_at::<[u8; 12]>(&ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked by `ptr_at`; nothing else holds the frame.
    let eth = unsafe { &mut *eth };
    eth[..6].copy_from_slice(&to.dst_mac);
    eth[6..].copy_from_slice(&to.src_mac);
    count(&ctx);
    match BENCH_DEVMAP.redirect(to.ifindex, 0) {
        Ok(a) | Err(a) => a,
    }
}
