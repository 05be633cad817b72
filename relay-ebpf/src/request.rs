//! What a UDP client asks the relay to send: ChannelData on a bound channel, or a Send
//! indication (see `send_indication.rs`). Both come down to one [`Request`]: from which
//! relayed address, to which peer, which bytes of the frame. It is checked against the
//! allocation's permissions here, then either leaves for the peer (`client_to_peer.rs`) or,
//! when the peer is one of our own relayed addresses, is hairpinned (`hairpin.rs`).

use aya_ebpf::programs::XdpContext;
use relay_common::{
    Be16, ChannelKey, Ip, PERMISSION_SOME_PORTS, PermissionKey, Reason, is_v4_mapped,
};

use crate::{
    csum::{self, Csum},
    maps::{CHANNEL_MAP, PERMISSIONS, PUBLIC_IPS, maybe_public},
    parse::{UDP_LEN, Udp, ptr_at},
    send_indication,
};

/// ChannelData header: channel number, payload length.
const CD_HDR: usize = 4;

/// Route of a request: out to the peer.
pub const TO_PEER: u32 = 0;
/// Route of a request: to another allocation of this relay.
pub const HAIRPIN: u32 = 1;

/// [`kind`]: neither ChannelData nor a Send indication.
pub const OTHER: u32 = 0;
/// [`kind`]: starts like ChannelData (first byte 0x40..=0x7f).
pub const CHANNEL_DATA: u32 = 1;
/// [`kind`]: starts like a Send indication (message type 0x0016).
pub const SEND: u32 = 2;

/// What the UDP data of `udp` starts like, from its first bytes alone: whether [`read`]
/// could take it. Fewer than 4 bytes of data are [`OTHER`], as `read` finds them.
#[inline(always)]
pub fn kind(ctx: &XdpContext, udp: &Udp) -> u32 {
    let Some(first) = ptr_at::<[u8; CD_HDR]>(ctx, udp.l4_off + UDP_LEN) else {
        return OTHER;
    };
    // SAFETY: bounds checked.
    let first = unsafe { *first };
    if (0x40..=0x7f).contains(&first[0]) {
        CHANNEL_DATA
    } else if first[0] == 0x00 && first[1] == send_indication::TYPE_LOW {
        SEND
    } else {
        OTHER
    }
}

/// A client's request, in per-CPU scratch memory (`maps::SCRATCH_REQUEST`).
pub struct Request {
    /// The sender's relayed address (bind address) of the peer's family.
    pub relay_ip: Ip,
    pub peer_ip: Ip,
    pub relay_port: Be16,
    pub peer_port: Be16,
    /// The sender's counter slot.
    pub slot: u32,
    /// Where the application data starts in the frame, and its length.
    pub payload_off: usize,
    pub payload_len: usize,
    /// One's-complement sum of the application data (meaningful when the datagram had a
    /// UDP checksum: a zero checksum is not summed).
    pub payload_sum: Csum,
    /// It came as a Send indication (counted as such).
    pub send: bool,
}

/// Out of line, so reading the request has its own stack frame; the route comes back
/// packed (see `verdict.rs`) in the action's place.
#[inline(never)]
pub fn read(ctx: &XdpContext, udp: &Udp, req: &mut Request) -> u64 {
    crate::verdict::pack(read_inner(ctx, udp, req).map(|route| (route, Reason::ForwardedToPeer)))
}

#[inline(always)]
fn read_inner(ctx: &XdpContext, udp: &Udp, req: &mut Request) -> Result<u32, Reason> {
    let data_off = udp.l4_off + UDP_LEN;
    let first: *const [u8; CD_HDR] = ptr_at(ctx, data_off).ok_or(Reason::NotChannelData)?;
    // SAFETY: bounds checked.
    let first = unsafe { *first };
    if (0x40..=0x7f).contains(&first[0]) {
        channel_data(ctx, udp, req, first)?;
    } else if first[0] == 0x00 && first[1] == send_indication::TYPE_LOW {
        send_indication::read(ctx, udp, req)?;
    } else {
        return Err(Reason::NotChannelData);
    }
    // An IPv4-mapped peer of an IPv6 relayed address: the map form of its IP is the IPv4
    // one, so the kernel would build the wrong packet. Userspace's socket takes it.
    if is_v4_mapped(&req.relay_ip) != is_v4_mapped(&req.peer_ip) {
        return Err(Reason::FamilyMismatch);
    }
    // Channels live longer than permissions (10 vs 5 minutes): a bound channel whose
    // permission expired must stop forwarding, as it does in userspace.
    let key = PermissionKey {
        relay_ip: req.relay_ip,
        peer_ip: req.peer_ip,
        relay_port: req.relay_port,
        _pad: [0; 2],
    };
    let t = PERMISSIONS.get_ptr(&key).ok_or(Reason::NoPermission)?;
    // SAFETY: value pointer from a successful lookup.
    let flags = unsafe { (*t).flags };
    // A Send indication names any port; a bound channel's port was checked at bind.
    if req.send && flags & PERMISSION_SOME_PORTS != 0 {
        return Err(Reason::SendPortCheck);
    }
    if maybe_public(&req.peer_ip) && PUBLIC_IPS.get_ptr(&req.peer_ip).is_some() {
        Ok(HAIRPIN)
    } else {
        Ok(TO_PEER)
    }
}

#[inline(always)]
fn channel_data(
    ctx: &XdpContext,
    udp: &Udp,
    req: &mut Request,
    cd: [u8; CD_HDR],
) -> Result<(), Reason> {
    let data_off = udp.l4_off + UDP_LEN;
    let udp_data_len = udp.udp_len as usize - UDP_LEN;
    let cd_len = u16::from_be_bytes([cd[2], cd[3]]) as usize;
    if CD_HDR + cd_len > udp_data_len {
        return Err(Reason::Malformed);
    }
    // Padding to a multiple of 4 is only required over TCP; tolerate it, but nothing more.
    let trailing = udp_data_len - CD_HDR - cd_len;
    if trailing > 3 {
        return Err(Reason::BadPadding);
    }
    let key = ChannelKey {
        client_ip: udp.src_ip,
        listener_ip: udp.dst_ip,
        client_port: udp.src_port,
        listener_port: udp.dst_port,
        channel: [cd[0], cd[1]],
        _pad: [0; 2],
    };
    let v = CHANNEL_MAP.get_ptr(&key).ok_or(Reason::UnknownChannel)?;
    // SAFETY: map value pointer from a successful lookup.
    let v = unsafe { &*v };
    req.relay_ip = v.relay_ip;
    req.relay_port = v.relay_port;
    req.peer_ip = v.peer_ip;
    req.peer_port = v.peer_port;
    req.slot = v.slot;
    req.payload_off = data_off + CD_HDR;
    req.payload_len = cd_len;
    req.send = false;
    let mut s = data_sum(udp);
    s.sub_be([cd[0], cd[1]]);
    s.sub_be([cd[2], cd[3]]);
    if trailing > 0 {
        // The data is at least the 4-byte header long, so the window fits.
        sub_window_tail(ctx, &mut s, data_off, udp_data_len - 4, trailing)?;
    }
    req.payload_sum = s;
    Ok(())
}

/// Sum of the UDP data, from the datagram's checksum (nothing when it has none).
#[inline(always)]
pub fn data_sum(udp: &Udp) -> Csum {
    if udp.csum == 0 {
        return Csum::new();
    }
    csum::data_sum(
        udp.csum,
        udp.v6,
        &udp.src_ip,
        &udp.dst_ip,
        udp.src_port,
        udp.dst_port,
        udp.udp_len,
    )
}

/// Removes from `s` the last `count` (at most 4) bytes of the 4-byte window at `start`
/// bytes into the UDP data (which begins at `data_off` in the frame): padding that does
/// not travel on. Reading one fixed-size window keeps the bounds check in a form the
/// verifier understands.
#[inline(always)]
pub fn sub_window_tail(
    ctx: &XdpContext,
    s: &mut Csum,
    data_off: usize,
    start: usize,
    count: usize,
) -> Result<(), Reason> {
    let w: *const [u8; 4] = ptr_at(ctx, data_off + start).ok_or(Reason::Malformed)?;
    // SAFETY: bounds checked.
    let w = unsafe { *w };
    let mut j = 0;
    while j < 4 {
        if j + count >= 4 {
            // Offset within the UDP data; the UDP header is 8 bytes, so parity carries.
            let b = w[j] as u16;
            s.sub(if (start + j).is_multiple_of(2) {
                b << 8
            } else {
                b
            });
        }
        j += 1;
    }
    Ok(())
}
