//! Peer → client: a UDP datagram from a permitted peer to a relayed address goes to the
//! client as ChannelData (bound channel) or as a Data indication (permission only).

use aya_ebpf::programs::XdpContext;
use relay_common::{PeerKey, PermissionKey, Reason};

use crate::{
    bandwidth,
    maps::{PEER_CHANNELS, PERMISSIONS, count_to_client},
    parse::{UDP_LEN, Udp},
    request::data_sum,
    to_client::{self, NO_CHANNEL, Payload},
};

/// Out of line, so each direction gets its own stack frame; the result comes back as a
/// packed scalar (BPF functions cannot return through the caller's stack).
#[inline(never)]
pub fn handle(ctx: &XdpContext, udp: &Udp) -> u64 {
    crate::verdict::pack(handle_inner(ctx, udp))
}

#[inline(always)]
fn handle_inner(ctx: &XdpContext, udp: &Udp) -> Result<(u32, Reason), Reason> {
    // The permission decides, also for a bound channel: it can expire before the channel.
    let key = PermissionKey {
        relay_ip: udp.dst_ip,
        peer_ip: udp.src_ip,
        relay_port: udp.dst_port,
        _pad: [0; 2],
    };
    let t = PERMISSIONS.get_ptr(&key).ok_or(Reason::NoPermission)?;
    // SAFETY: value pointer from a successful lookup.
    let t = unsafe { &*t };
    let pk = PeerKey {
        relay_ip: udp.dst_ip,
        peer_ip: udp.src_ip,
        relay_port: udp.dst_port,
        peer_port: udp.src_port,
    };
    let channel = match PEER_CHANNELS.get_ptr(&pk) {
        // SAFETY: as above.
        Some(c) => unsafe { (*c).channel },
        None => NO_CHANNEL,
    };
    let payload = Payload {
        off: udp.l4_off + UDP_LEN,
        len: udp.udp_len as usize - UDP_LEN,
        sum: data_sum(udp),
    };
    bandwidth::admit(t.slot, payload.len)?;
    let action = to_client::deliver(ctx, udp, t, channel, &udp.src_ip, udp.src_port, &payload)?;
    count_to_client(t.slot, payload.len as u64);
    let reason = if channel == NO_CHANNEL {
        Reason::DataIndication
    } else {
        Reason::ForwardedToClient
    };
    Ok((action, reason))
}
