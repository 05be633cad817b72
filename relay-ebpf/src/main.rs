//! The relay's XDP program.
//!
//! Counts what arrives on each attached interface, then runs the TURN fast path: UDP
//! clients' ChannelData and Send indications go to their peers, or straight to another
//! allocation's client when the peer is one of our own relayed addresses (hairpin), and
//! peer datagrams go back to clients, all rewritten and sent on in the kernel; everything
//! else (and every case the fast path does not handle) passes up to the daemon unchanged,
//! with the reason counted.
#![no_std]
#![no_main]
// Compare-and-swap on map values (bandwidth.rs, shield.rs): the BPF target has no `AtomicU64`
// CAS.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod bandwidth;
mod bench;
mod client_to_peer;
mod counters;
mod csum;
mod emit;
mod fib;
mod hairpin;
mod maps;
mod parse;
mod peer_to_client;
mod request;
mod send_indication;
mod shield;
mod to_client;
mod verdict;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use relay_common::Reason;

#[xdp]
pub fn relay_xdp(ctx: XdpContext) -> u32 {
    counters::count(&ctx);
    match relay(&ctx) {
        Ok((action, reason)) => {
            maps::count_reason(reason);
            action
        }
        // The frame was already being rewritten: it cannot go up half-changed. Over a
        // bandwidth limit: userspace would drop it too.
        Err(reason @ (Reason::AdjustFailed | Reason::BandwidthLimit)) => {
            maps::count_reason(reason);
            xdp_action::XDP_DROP
        }
        Err(reason) => {
            maps::count_reason(reason);
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
fn relay(ctx: &XdpContext) -> Result<(u32, Reason), Reason> {
    let udp = maps::SCRATCH_UDP.get_ptr_mut(0).ok_or(Reason::Malformed)?;
    // SAFETY: per-CPU scratch slot, used by this run only (see maps.rs).
    let udp = unsafe { &mut *udp };
    parse::parse(ctx, udp)?;
    let udp = &*udp;
    let flags = maps::allocation_flags(udp);
    if flags != maps::NO_ALLOCATION {
        let flags = flags as u8;
        return match verdict::unpack(peer_to_client::handle(ctx, udp)) {
            Err(Reason::NoPermission) if shield::peer_not_permitted(flags) => {
                Ok((xdp_action::XDP_DROP, Reason::PeerNotPermitted))
            }
            r => r,
        };
    }
    let screened = shield::screen(ctx, udp);
    if screened != shield::NONE {
        return Ok((xdp_action::XDP_DROP, verdict::reason_from(screened)));
    }
    let req = maps::SCRATCH_REQUEST
        .get_ptr_mut(0)
        .ok_or(Reason::Malformed)?;
    // SAFETY: per-CPU scratch slot, used by this run only (see maps.rs).
    let req = unsafe { &mut *req };
    let (route, _) = match verdict::unpack(request::read(ctx, udp, req)) {
        Err(Reason::UnknownChannel) if shield::channel_unbound(udp) => {
            return Ok((xdp_action::XDP_DROP, Reason::ChannelUnbound));
        }
        r => r?,
    };
    let req = &*req;
    if route == request::HAIRPIN {
        verdict::unpack(hairpin::handle(ctx, udp, req))
    } else {
        verdict::unpack(client_to_peer::handle(ctx, udp, req))
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach this; it exists to satisfy no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
