//! The client-bound frame, shared by peer → client and hairpin: the data already in the
//! frame goes to an allocation's client as ChannelData (bound channel) or as a Data
//! indication (permission only), from the listener address the client talks to.

use aya_ebpf::{helpers::bpf_get_prandom_u32, programs::XdpContext};
use relay_common::{Be16, ClientTarget, Ip, Reason, is_v4_mapped};

use crate::{
    csum::{self, Csum},
    emit::{self, Out},
    fib, fib_cache,
    parse::{ETH_LEN, UDP_LEN, Udp, ptr_at},
};

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// STUN header + XOR-PEER-ADDRESS (IPv4) + DATA header.
const IND_V4: usize = 20 + 4 + 8 + 4;
/// STUN header + XOR-PEER-ADDRESS (IPv6) + DATA header.
const IND_V6: usize = 20 + 4 + 20 + 4;
/// "No channel": channel numbers start at 0x4000.
pub const NO_CHANNEL: Be16 = [0, 0];

/// The data: where it is in the frame, how long, and its one's-complement sum (unused
/// when the incoming datagram had no UDP checksum, `udp.csum == 0`).
pub struct Payload {
    pub off: usize,
    pub len: usize,
    pub sum: Csum,
}

/// Sends `payload` to `t`'s client as coming from `peer_ip:peer_port`: ChannelData on
/// `channel`, or a Data indication for [`NO_CHANNEL`]. Returns the XDP action; counting
/// is the caller's.
#[inline(always)]
pub fn deliver(
    ctx: &XdpContext,
    udp: &Udp,
    t: &ClientTarget,
    channel: Be16,
    peer_ip: &Ip,
    peer_port: Be16,
    payload: &Payload,
) -> Result<u32, Reason> {
    let out_v6 = !is_v4_mapped(&t.client_ip);
    if udp.csum == 0 && out_v6 {
        return Err(Reason::NoChecksum);
    }
    let indication = channel == NO_CHANNEL;
    let peer_v6 = !is_v4_mapped(peer_ip);
    let payload_len = payload.len;

    // What goes between the UDP header and the payload, and the padding after it.
    let (pre_len, pad) = if indication {
        (
            if peer_v6 { IND_V6 } else { IND_V4 },
            (4 - payload_len % 4) % 4,
        )
    } else {
        (4, 0)
    };
    let out_udp_len = (UDP_LEN + pre_len + payload_len + pad) as u16;

    let ip_len = Out::ip_hdr_len(out_v6);
    let hop = fib::lookup(
        ctx,
        fib_cache::index(t.slot, true),
        out_v6,
        &t.listener_ip,
        &t.client_ip,
        t.listener_port,
        t.client_port,
        ip_len + out_udp_len as usize,
    )?;

    // From here on the frame changes: failures drop (counted), they cannot pass up.
    let out_hdrs = ETH_LEN + ip_len + UDP_LEN;
    let head_delta = payload.off as i32 - (out_hdrs + pre_len) as i32;
    let keep = out_hdrs + pre_len + payload_len;
    emit::resize(ctx, head_delta, keep, keep + pad)?;
    // The prefix goes straight into the packet; its words are summed from there.
    let pre_sum = if indication {
        write_indication(ctx, out_hdrs, peer_ip, peer_port, peer_v6, payload_len, pad)?
    } else {
        let p: *mut [u8; 4] = ptr_at(ctx, out_hdrs).ok_or(Reason::AdjustFailed)?;
        let len = (payload_len as u16).to_be_bytes();
        // SAFETY: bounds checked.
        unsafe { *p = [channel[0], channel[1], len[0], len[1]] };
        let mut s = Csum::new();
        s.add_be(channel);
        s.add_be(len);
        s
    };

    let udp_csum = if udp.csum == 0 {
        0
    } else {
        let mut s = payload.sum;
        // The padding is zero and adds nothing.
        s.add(pre_sum.fold());
        csum::udp_envelope(
            &mut s,
            out_v6,
            &t.listener_ip,
            &t.client_ip,
            t.listener_port,
            t.client_port,
            out_udp_len,
            true,
        );
        s.finish_udp()
    };
    let out = Out {
        v6: out_v6,
        src_ip: t.listener_ip,
        dst_ip: t.client_ip,
        src_port: t.listener_port,
        dst_port: t.client_port,
        udp_len: out_udp_len,
        udp_csum,
    };
    emit::headers(ctx, &out, &hop)?;
    Ok(fib::send(&hop))
}

/// Writes STUN header, XOR-PEER-ADDRESS and the DATA attribute header at `off`; returns
/// their checksum words.
#[inline(always)]
fn write_indication(
    ctx: &XdpContext,
    off: usize,
    peer_ip: &Ip,
    peer_port: Be16,
    peer_v6: bool,
    payload_len: usize,
    pad: usize,
) -> Result<Csum, Reason> {
    let mut s = Csum::new();
    let h: *mut [u8; 28] = ptr_at(ctx, off).ok_or(Reason::AdjustFailed)?;
    // SAFETY (all writes): bounds checked by ptr_at.
    let h = unsafe { &mut *h };
    let xpa_len: usize = if peer_v6 { 20 } else { 8 };
    let msg_len = (4 + xpa_len + 4 + payload_len + pad) as u16;
    h[0] = 0x00;
    h[1] = 0x17; // Data indication
    h[2..4].copy_from_slice(&msg_len.to_be_bytes());
    h[4..8].copy_from_slice(&MAGIC_COOKIE);
    // SAFETY: helper without arguments.
    let r = unsafe {
        [
            bpf_get_prandom_u32(),
            bpf_get_prandom_u32(),
            bpf_get_prandom_u32(),
        ]
    };
    h[8..12].copy_from_slice(&r[0].to_ne_bytes());
    h[12..16].copy_from_slice(&r[1].to_ne_bytes());
    h[16..20].copy_from_slice(&r[2].to_ne_bytes());
    // XOR-PEER-ADDRESS: type, length, reserved, family, port ^ cookie.
    h[20] = 0x00;
    h[21] = 0x12;
    h[22] = 0x00;
    h[23] = xpa_len as u8;
    h[24] = 0x00;
    h[25] = if peer_v6 { 0x02 } else { 0x01 };
    h[26] = peer_port[0] ^ MAGIC_COOKIE[0];
    h[27] = peer_port[1] ^ MAGIC_COOKIE[1];
    let mut i = 0;
    while i < 28 {
        s.add(u16::from_be_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    // The address, xor cookie (IPv4) or cookie + transaction id (IPv6).
    if peer_v6 {
        let a: *mut [u8; 16 + 4] = ptr_at(ctx, off + 28).ok_or(Reason::AdjustFailed)?;
        let a = unsafe { &mut *a };
        let mut i = 0;
        while i < 16 {
            a[i] = peer_ip[i] ^ h[4 + i];
            i += 1;
        }
        a[16] = 0x00;
        a[17] = 0x13; // DATA
        a[18..20].copy_from_slice(&(payload_len as u16).to_be_bytes());
        let mut i = 0;
        while i < 20 {
            s.add(u16::from_be_bytes([a[i], a[i + 1]]));
            i += 2;
        }
    } else {
        let a: *mut [u8; 4 + 4] = ptr_at(ctx, off + 28).ok_or(Reason::AdjustFailed)?;
        let a = unsafe { &mut *a };
        let mut i = 0;
        while i < 4 {
            a[i] = peer_ip[12 + i] ^ MAGIC_COOKIE[i];
            i += 1;
        }
        a[4] = 0x00;
        a[5] = 0x13; // DATA
        a[6..8].copy_from_slice(&(payload_len as u16).to_be_bytes());
        let mut i = 0;
        while i < 8 {
            s.add(u16::from_be_bytes([a[i], a[i + 1]]));
            i += 2;
        }
    }
    Ok(s)
}
