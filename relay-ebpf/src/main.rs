//! The relay's XDP program.
//!
//! For now it counts what arrives on each attached interface and passes every packet on
//! to the kernel stack; the TURN fast path builds on the same entry point.
#![no_std]
#![no_main]

mod counters;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn relay_xdp(ctx: XdpContext) -> u32 {
    counters::count(&ctx);
    xdp_action::XDP_PASS
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
