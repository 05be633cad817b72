//! Bounds-checked views of the frame: Ethernet, IPv4 (IHL 5, unfragmented) or IPv6
//! (no extension headers), then UDP. Anything else is reported as the reason it is not
//! ours, and the caller passes it up.

use aya_ebpf::programs::XdpContext;
use relay_common::{Be16, Ip, Reason, v4_mapped};

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
pub const UDP_LEN: usize = 8;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const IPPROTO_UDP: u8 = 17;

const MAX_OFF: usize = 0x3fff;

/// A pointer to `T` at `off` bytes into the frame, if the whole `T` is inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    // The verifier only tracks packet ranges for offsets it can bound below 64 KiB; the
    // linear part of an XDP frame is at most a page anyway.
    if off > MAX_OFF {
        return None;
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Frame length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// A parsed UDP datagram.
pub struct Udp {
    pub v6: bool,
    pub src_ip: Ip,
    pub dst_ip: Ip,
    pub src_port: Be16,
    pub dst_port: Be16,
    /// Offset of the UDP header in the frame.
    pub l4_off: usize,
    /// UDP length (header + data), host order.
    pub udp_len: u16,
    /// UDP checksum as on the wire, read big-endian (0 = none, IPv4 only).
    pub csum: u16,
}

/// Parses into `out` (scratch memory, see `maps::Scratch`).
#[inline(always)]
pub fn parse(ctx: &XdpContext, out: &mut Udp) -> Result<(), Reason> {
    let eth: *const [u8; ETH_LEN] = ptr_at(ctx, 0).ok_or(Reason::NotIp)?;
    // SAFETY: bounds checked by ptr_at.
    let ethertype = unsafe { [(*eth)[12], (*eth)[13]] };
    if ethertype == ETH_P_IP {
        parse_v4(ctx, out)
    } else if ethertype == ETH_P_IPV6 {
        parse_v6(ctx, out)
    } else {
        Err(Reason::NotIp)
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, out: &mut Udp) -> Result<(), Reason> {
    let ip: *const [u8; IPV4_LEN] = ptr_at(ctx, ETH_LEN).ok_or(Reason::Malformed)?;
    // SAFETY: bounds checked.
    let ip = unsafe { &*ip };
    if ip[0] >> 4 != 4 {
        return Err(Reason::Malformed);
    }
    if ip[0] & 0x0f != 5 {
        return Err(Reason::IpOptions);
    }
    // More-fragments flag or a fragment offset: a piece of a datagram.
    if (u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff) != 0 {
        return Err(Reason::Fragment);
    }
    if ip[9] != IPPROTO_UDP {
        return Err(Reason::NotUdp);
    }
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if tot_len < IPV4_LEN + UDP_LEN || ETH_LEN + tot_len > frame_len(ctx) {
        return Err(Reason::Malformed);
    }
    let l4_off = ETH_LEN + IPV4_LEN;
    out.src_ip = v4_mapped([ip[12], ip[13], ip[14], ip[15]]);
    out.dst_ip = v4_mapped([ip[16], ip[17], ip[18], ip[19]]);
    udp(ctx, out, false, l4_off, tot_len - IPV4_LEN)
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, out: &mut Udp) -> Result<(), Reason> {
    let ip: *const [u8; IPV6_LEN] = ptr_at(ctx, ETH_LEN).ok_or(Reason::Malformed)?;
    // SAFETY: bounds checked.
    let ip = unsafe { &*ip };
    if ip[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    match ip[6] {
        IPPROTO_UDP => {}
        // hop-by-hop, routing, fragment, ESP, AH, destination options, mobility, HIP,
        // shim6: an extension header we do not walk.
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 => return Err(Reason::Ipv6ExtHeader),
        _ => return Err(Reason::NotUdp),
    }
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    if payload_len < UDP_LEN || ETH_LEN + IPV6_LEN + payload_len > frame_len(ctx) {
        return Err(Reason::Malformed);
    }
    out.src_ip.copy_from_slice(&ip[8..24]);
    out.dst_ip.copy_from_slice(&ip[24..40]);
    udp(ctx, out, true, ETH_LEN + IPV6_LEN, payload_len)
}

#[inline(always)]
fn udp(
    ctx: &XdpContext,
    out: &mut Udp,
    v6: bool,
    l4_off: usize,
    ip_payload_len: usize,
) -> Result<(), Reason> {
    let h: *const [u8; UDP_LEN] = ptr_at(ctx, l4_off).ok_or(Reason::Malformed)?;
    // SAFETY: bounds checked.
    let h = unsafe { &*h };
    let udp_len = u16::from_be_bytes([h[4], h[5]]);
    if udp_len as usize != ip_payload_len {
        return Err(Reason::Malformed);
    }
    let csum = u16::from_be_bytes([h[6], h[7]]);
    if v6 && csum == 0 {
        // Zero checksums are not allowed over IPv6 (RFC 6935 tunnels aside).
        return Err(Reason::NoChecksum);
    }
    out.v6 = v6;
    out.src_port = [h[0], h[1]];
    out.dst_port = [h[2], h[3]];
    out.l4_off = l4_off;
    out.udp_len = udp_len;
    out.csum = csum;
    Ok(())
}
