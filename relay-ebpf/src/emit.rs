//! Writing the output frame: resizing it around the payload, then fresh Ethernet, IP and
//! UDP headers (the relay originates these packets, as its sockets would: TTL/hop limit
//! 64, DF set, no options).

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use relay_common::{Be16, Ip, Reason};

use crate::{
    csum,
    fib::Hop,
    parse::{ETH_LEN, frame_len, ptr_at},
};

pub const TTL: u8 = 64;

pub struct Out {
    pub v6: bool,
    pub src_ip: Ip,
    pub dst_ip: Ip,
    pub src_port: Be16,
    pub dst_port: Be16,
    pub udp_len: u16,
    pub udp_csum: u16,
}

impl Out {
    #[inline(always)]
    pub fn ip_hdr_len(v6: bool) -> usize {
        if v6 { 40 } else { 20 }
    }
}

/// Moves the frame start by `head_delta` bytes (positive drops bytes in front), cuts the
/// frame to `keep` bytes (dropping padding and trailing junk), then grows it to `len`
/// (the kernel zeroes grown tail bytes).
#[inline(always)]
pub fn resize(ctx: &XdpContext, head_delta: i32, keep: usize, len: usize) -> Result<(), Reason> {
    if head_delta != 0 {
        // SAFETY: helper call on our own ctx.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, head_delta) } != 0 {
            return Err(Reason::AdjustFailed);
        }
    }
    let cur = frame_len(ctx);
    if cur != keep {
        // SAFETY: as above.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep as i32 - cur as i32) } != 0 {
            return Err(Reason::AdjustFailed);
        }
    }
    if len != keep {
        // SAFETY: as above.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, len as i32 - keep as i32) } != 0 {
            return Err(Reason::AdjustFailed);
        }
    }
    Ok(())
}

/// Writes Ethernet + IP + UDP headers at the start of the (already resized) frame,
/// straight into the packet (no stack copies: the stack is small).
#[inline(always)]
pub fn headers(ctx: &XdpContext, out: &Out, hop: &Hop) -> Result<(), Reason> {
    let ip_len = Out::ip_hdr_len(out.v6);
    let e: *mut [u8; ETH_LEN] = ptr_at(ctx, 0).ok_or(Reason::AdjustFailed)?;
    // SAFETY (all writes below): bounds checked by ptr_at.
    unsafe {
        let e = &mut *e;
        e[0..6].copy_from_slice(&hop.dmac);
        e[6..12].copy_from_slice(&hop.smac);
        if out.v6 {
            e[12] = 0x86;
            e[13] = 0xdd;
        } else {
            e[12] = 0x08;
            e[13] = 0x00;
        }
    }
    if out.v6 {
        let h: *mut [u8; 40] = ptr_at(ctx, ETH_LEN).ok_or(Reason::AdjustFailed)?;
        let h = unsafe { &mut *h };
        h[0] = 0x60;
        h[1] = 0;
        h[2] = 0;
        h[3] = 0;
        h[4..6].copy_from_slice(&out.udp_len.to_be_bytes());
        h[6] = 17;
        h[7] = TTL;
        h[8..24].copy_from_slice(&out.src_ip);
        h[24..40].copy_from_slice(&out.dst_ip);
    } else {
        let h: *mut [u8; 20] = ptr_at(ctx, ETH_LEN).ok_or(Reason::AdjustFailed)?;
        let h = unsafe { &mut *h };
        h[0] = 0x45;
        h[1] = 0;
        h[2..4].copy_from_slice(&(out.udp_len + 20).to_be_bytes());
        h[4] = 0;
        h[5] = 0;
        h[6] = 0x40; // DF
        h[7] = 0;
        h[8] = TTL;
        h[9] = 17;
        h[10] = 0;
        h[11] = 0;
        h[12..16].copy_from_slice(&out.src_ip[12..16]);
        h[16..20].copy_from_slice(&out.dst_ip[12..16]);
        let c = csum::ipv4_header(h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let u: *mut [u8; 8] = ptr_at(ctx, ETH_LEN + ip_len).ok_or(Reason::AdjustFailed)?;
    let u = unsafe { &mut *u };
    u[0] = out.src_port[0];
    u[1] = out.src_port[1];
    u[2] = out.dst_port[0];
    u[3] = out.dst_port[1];
    u[4..6].copy_from_slice(&out.udp_len.to_be_bytes());
    u[6..8].copy_from_slice(&out.udp_csum.to_be_bytes());
    Ok(())
}
