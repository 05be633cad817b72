//! Per-interface packet and byte counters, read by the daemon for status and metrics.

use aya_ebpf::{bindings::BPF_NOEXIST, macros::map, maps::PerCpuHashMap, programs::XdpContext};
use aya_log_ebpf::debug;
use relay_common::{IFACE_COUNTERS_MAX, IfaceCounters};

#[map(name = "IFACE_COUNTERS")]
static IFACE_COUNTERS: PerCpuHashMap<u32, IfaceCounters> =
    PerCpuHashMap::with_max_entries(IFACE_COUNTERS_MAX, 0);

#[inline(always)]
pub fn count(ctx: &XdpContext) {
    // SAFETY: `ctx.ctx` is the xdp_md the kernel handed us.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let len = (ctx.data_end() - ctx.data()) as u64;
    match IFACE_COUNTERS.get_ptr_mut(ifindex) {
        Some(c) => {
            // SAFETY: per-CPU value, no other writer on this CPU while we run.
            unsafe {
                (*c).packets += 1;
                (*c).bytes += len;
            }
        }
        None => {
            // First packet seen on this CPU for this interface: once per CPU, so a debug
            // line, not an operator's.
            let first = IfaceCounters {
                packets: 1,
                bytes: len,
            };
            if IFACE_COUNTERS
                .insert(ifindex, first, BPF_NOEXIST as u64)
                .is_ok()
            {
                debug!(ctx, "xdp: counting packets on ifindex {}", ifindex);
            }
        }
    }
}
