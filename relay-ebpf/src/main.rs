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
// Map keys go to the lookup helpers by reference: clippy's "pass it by value" copies the
// key once more on the 512-byte BPF stack (measured: +148 B in one screen's frame).
#![allow(clippy::needless_borrows_for_generic_args)]

mod bandwidth;
mod bench;
mod client_to_peer;
mod counters;
mod csum;
mod emit;
mod fib;
mod fib_cache;
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
use parse::Udp;
use relay_common::Reason;

#[xdp]
pub fn relay_xdp(ctx: XdpContext) -> u32 {
    // Only in the build with the `version-bump` feature, for the test of an upgrade to a
    // changed kernel program (tests/tests/upgrade.rs): a helper call whose result goes
    // unused, so the program differs and forwards exactly as this one.
    #[cfg(feature = "version-bump")]
    // SAFETY: bpf_ktime_get_ns takes no argument and has no side effect.
    let _ = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
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
    let req = maps::SCRATCH_REQUEST
        .get_ptr_mut(0)
        .ok_or(Reason::Malformed)?;
    // SAFETY: per-CPU scratch slot, used by this run only (see maps.rs).
    let req = unsafe { &mut *req };
    // A client's ChannelData or Send indication, the common forwarding path, is read
    // first: its CHANNELS (or CLIENTS) entry is keyed by the client's 5-tuple to a
    // listener, so a hit decides alone, and the lookups that sort out everything else
    // (ALLOCATIONS, LISTENERS, the shield's) never run for it. Peer data rarely starts
    // like ChannelData (RTP, DTLS and STUN do not; QUIC's short header does, and pays
    // one CHANNELS miss).
    let kind = request::kind(ctx, udp);
    let unread = if kind == request::OTHER {
        Reason::NotChannelData
    } else {
        match verdict::unpack(request::read(ctx, udp, req)) {
            Ok((route, _)) => return send_on(ctx, udp, req, route),
            Err(e) => e,
        }
    };
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
    // What the client's request came to (not to a relayed address, not screened out):
    // the read above already failed, so only the shield's word is left.
    match unread {
        Reason::UnknownChannel if shield::channel_unbound(udp) => {
            Ok((xdp_action::XDP_DROP, Reason::ChannelUnbound))
        }
        _ if kind == request::SEND && shield::send_unknown_client(udp) => {
            Ok((xdp_action::XDP_DROP, Reason::SendNoAllocation))
        }
        why => Err(why),
    }
}

/// A client's request read into `req`: out to its peer, or hairpinned.
#[inline(always)]
fn send_on(
    ctx: &XdpContext,
    udp: &Udp,
    req: &request::Request,
    route: u32,
) -> Result<(u32, Reason), Reason> {
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
