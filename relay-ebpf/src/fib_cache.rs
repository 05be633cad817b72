//! The FIB's answers, remembered per CPU for a little while: `bpf_fib_lookup` is the
//! dearest step of a forwarded packet (about 80 ns of ~320 under BPF_PROG_TEST_RUN on the
//! test box), and an allocation sends most of its packets to one peer (and its peer's to
//! one client), so its last answer is nearly always the next one.
//!
//! An entry sits at a slot of its own per counter slot and direction (modulo the cache's
//! size) and is used only for exactly the lookup it answered: same source and destination
//! address and port, same ingress interface, a packet no longer than the one it was
//! looked up for (the MTU check), and younger than [`FRESH_NS`]. So neighbour, route and
//! MTU changes are followed within [`FRESH_NS`] (each CPU asks the FIB again when its
//! entry ages), and a lookup that fails (no neighbour, no route) is never remembered:
//! those packets go up every time, as before. Per CPU, so no entry is ever read half
//! written by another CPU, and no lock is needed.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, macros::map, maps::PerCpuArray};
use relay_common::{Be16, FIB_CACHE_SIZE, Ip};

use crate::fib::Hop;

/// How long a remembered next hop is used before the FIB is asked again.
const FRESH_NS: u64 = 50_000_000;

/// One remembered lookup and its answer.
#[repr(C)]
pub struct Entry {
    src: Ip,
    dst: Ip,
    sport: Be16,
    dport: Be16,
    ingress: u32,
    /// 0: back out of the ingress interface (XDP_TX); else the egress ifindex.
    egress: u32,
    /// The longest IP packet the answer was given for.
    max_len: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
    /// `bpf_ktime_get_coarse_ns` at the lookup; 0: empty.
    at: u64,
}

#[map(name = "FIB_CACHE")]
static FIB_CACHE: PerCpuArray<Entry> = PerCpuArray::with_max_entries(FIB_CACHE_SIZE, 0);

/// The cache slot of a counter slot's lookups in one direction.
#[inline(always)]
pub fn index(slot: u32, to_client: bool) -> u32 {
    (slot.wrapping_mul(2) + to_client as u32) & (FIB_CACHE_SIZE - 1)
}

/// The coarse clock the entries are stamped with (a jiffy's resolution, cheap to read).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn same_ip(a: &Ip, b: &Ip) -> bool {
    let mut diff = 0u32;
    let mut i = 0;
    while i < 16 {
        diff |= u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]])
            ^ u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        i += 4;
    }
    diff == 0
}

/// A lookup, as the cache tells lookups apart.
pub struct Query<'a> {
    pub ingress: u32,
    pub src: &'a Ip,
    pub dst: &'a Ip,
    pub sport: Be16,
    pub dport: Be16,
    /// Length of the IP packet to send.
    pub tot_len: usize,
}

/// The remembered answer to `q`, if there is a fresh one.
#[inline(always)]
pub fn get(index: u32, now: u64, q: &Query<'_>) -> Option<Hop> {
    let e = FIB_CACHE.get_ptr(index)?;
    // SAFETY: per-CPU value, written only by this CPU's runs.
    let e = unsafe { &*e };
    if e.at == 0
        || now.wrapping_sub(e.at) >= FRESH_NS
        || e.ingress != q.ingress
        || q.tot_len > e.max_len as usize
        || e.sport != q.sport
        || e.dport != q.dport
        || !same_ip(&e.dst, q.dst)
        || !same_ip(&e.src, q.src)
    {
        return None;
    }
    Some(Hop {
        smac: e.smac,
        dmac: e.dmac,
        redirect: if e.egress == 0 { None } else { Some(e.egress) },
    })
}

/// Remembers the FIB's answer `hop` to `q`.
#[inline(always)]
pub fn put(index: u32, now: u64, q: &Query<'_>, hop: &Hop) {
    let Some(e) = FIB_CACHE.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: per-CPU value, written only by this CPU's runs.
    let e = unsafe { &mut *e };
    e.src = *q.src;
    e.dst = *q.dst;
    e.sport = q.sport;
    e.dport = q.dport;
    e.ingress = q.ingress;
    e.egress = hop.redirect.unwrap_or(0);
    e.max_len = q.tot_len as u32;
    e.smac = hop.smac;
    e.dmac = hop.dmac;
    e.at = now;
}
