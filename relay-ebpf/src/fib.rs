//! Next hop from the kernel's FIB (`bpf_fib_lookup`) and the way out: XDP_TX back out of
//! the ingress interface, or a redirect through the devmap to another attached one.
//!
//! The lookup runs before the frame is touched, so every failure can still pass the
//! original frame up: no neighbour entry yet (userspace's send resolves it), no route,
//! forwarding disabled on the ingress interface, or a result larger than the MTU.

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use relay_common::{Be16, Ip, Reason};

use crate::{fib_cache, maps::REDIRECT_IFACES};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_UDP: u8 = 17;

const RET_SUCCESS: i64 = 0;
const RET_FWD_DISABLED: i64 = 5;
const RET_NO_NEIGH: i64 = 7;
const RET_FRAG_NEEDED: i64 = 8;

pub struct Hop {
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// XDP_TX, or the egress ifindex to redirect to.
    pub redirect: Option<u32>,
}

/// `tot_len`: length of the IP packet that will be sent (checked against the MTU).
/// `cache`: where the answer is remembered ([`fib_cache::index`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn lookup(
    ctx: &XdpContext,
    cache: u32,
    v6: bool,
    src: &Ip,
    dst: &Ip,
    sport: Be16,
    dport: Be16,
    tot_len: usize,
) -> Result<Hop, Reason> {
    // SAFETY: ctx.ctx is the xdp_md of this invocation.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let now = fib_cache::now();
    let query = fib_cache::Query {
        ingress,
        src,
        dst,
        sport,
        dport,
        tot_len,
    };
    if let Some(hop) = fib_cache::get(cache, now, &query) {
        return Ok(hop);
    }
    let p = crate::maps::SCRATCH_FIB
        .get_ptr_mut(0)
        .ok_or(Reason::FibFailed)?;
    // SAFETY: per-CPU scratch slot, used by this run only (see maps.rs).
    let p = unsafe { &mut *p };
    // SAFETY: all-zero is a valid bpf_fib_lookup.
    *p = unsafe { core::mem::zeroed() };
    p.l4_protocol = IPPROTO_UDP;
    p.sport = u16::from_ne_bytes(sport);
    p.dport = u16::from_ne_bytes(dport);
    p.__bindgen_anon_1.tot_len = tot_len as u16;
    p.ifindex = ingress;
    if v6 {
        p.family = AF_INET6;
        let mut s = [0u32; 4];
        let mut d = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            s[i] = u32::from_ne_bytes([src[4 * i], src[4 * i + 1], src[4 * i + 2], src[4 * i + 3]]);
            d[i] = u32::from_ne_bytes([dst[4 * i], dst[4 * i + 1], dst[4 * i + 2], dst[4 * i + 3]]);
            i += 1;
        }
        p.__bindgen_anon_3.ipv6_src = s;
        p.__bindgen_anon_4.ipv6_dst = d;
    } else {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[12], src[13], src[14], src[15]]);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[12], dst[13], dst[14], dst[15]]);
    }
    // SAFETY: valid ctx and params of the size we pass.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            p as *mut FibParams,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    } as i64;
    match ret {
        RET_SUCCESS => {}
        RET_NO_NEIGH => return Err(Reason::FibNoNeighbour),
        RET_FRAG_NEEDED => return Err(Reason::TooBig),
        RET_FWD_DISABLED => return Err(Reason::FibForwardingDisabled),
        _ => return Err(Reason::FibFailed),
    }
    let redirect = if p.ifindex == ingress {
        None
    } else if REDIRECT_IFACES.get_ifindex(p.ifindex).is_some() {
        Some(p.ifindex)
    } else {
        return Err(Reason::NoRedirectTarget);
    };
    let hop = Hop {
        smac: p.smac,
        dmac: p.dmac,
        redirect,
    };
    fib_cache::put(cache, now, &query, &hop);
    Ok(hop)
}

/// The XDP action that sends the rewritten frame on its way.
#[inline(always)]
pub fn send(hop: &Hop) -> u32 {
    match hop.redirect {
        None => xdp_action::XDP_TX,
        Some(ifindex) => match REDIRECT_IFACES.redirect(ifindex, 0) {
            Ok(a) | Err(a) => a,
        },
    }
}
