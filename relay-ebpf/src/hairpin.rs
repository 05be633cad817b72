//! Hairpin: client A's request names one of our own relayed addresses as its peer, the one
//! of allocation B. B's client gets the data straight away, as if it came from A's public
//! relayed address (what B's client knows A by), under B's permissions and channels,
//! exactly as a peer's datagram would reach it. No round trip through the static NAT, so
//! it works behind firewalls without NAT reflection.
//!
//! Whatever the maps cannot resolve (a port nobody holds, a TCP allocation, A's own
//! address) goes up to userspace, which has the whole picture.

use aya_ebpf::programs::XdpContext;
use relay_common::{PeerKey, PermissionKey, Reason, RelayKey};

use crate::{
    bandwidth,
    maps::{ALLOCATIONS, PEER_CHANNELS, PERMISSIONS, RELAY_ADDRS, count_to_client, count_to_peer},
    parse::Udp,
    request::Request,
    to_client::{self, NO_CHANNEL, Payload},
};

/// Out of line, so each route gets its own stack frame; the result comes back as a
/// packed scalar (BPF functions cannot return through the caller's stack).
#[inline(never)]
pub fn handle(ctx: &XdpContext, udp: &Udp, req: &Request) -> u64 {
    crate::verdict::pack(handle_inner(ctx, udp, req).map(|a| (a, Reason::Hairpinned)))
}

#[inline(always)]
fn handle_inner(ctx: &XdpContext, udp: &Udp, req: &Request) -> Result<u32, Reason> {
    // B, by the address A named (public or bind): its bind address and slot.
    let named = RelayKey {
        ip: req.peer_ip,
        port: req.peer_port,
        _pad: [0; 2],
    };
    let b = RELAY_ADDRS.get_ptr(&named).ok_or(Reason::Hairpin)?;
    // SAFETY: map value pointer from a successful lookup.
    let b = unsafe { &*b };
    if b.ip == req.relay_ip && b.port == req.relay_port {
        // A to itself: userspace refuses that.
        return Err(Reason::Hairpin);
    }
    // A as B's client knows it: A's public relayed address.
    let a_bind = RelayKey {
        ip: req.relay_ip,
        port: req.relay_port,
        _pad: [0; 2],
    };
    let a = ALLOCATIONS.get_ptr(&a_bind).ok_or(Reason::Hairpin)?;
    // SAFETY: as above.
    let a = unsafe { &*a };
    let key = PermissionKey {
        relay_ip: b.ip,
        peer_ip: a.ip,
        relay_port: b.port,
        _pad: [0; 2],
    };
    let t = PERMISSIONS
        .get_ptr(&key)
        .ok_or(Reason::HairpinNoPermission)?;
    // SAFETY: as above.
    let t = unsafe { &*t };
    let pk = PeerKey {
        relay_ip: b.ip,
        peer_ip: a.ip,
        relay_port: b.port,
        peer_port: a.port,
    };
    let channel = match PEER_CHANNELS.get_ptr(&pk) {
        // SAFETY: as above.
        Some(c) => unsafe { (*c).channel },
        None => NO_CHANNEL,
    };
    let payload = Payload {
        off: req.payload_off,
        len: req.payload_len,
        sum: req.payload_sum,
    };
    // Both allocations' limits: A's for sending, B's for receiving.
    bandwidth::admit(req.slot, req.payload_len)?;
    bandwidth::admit(t.slot, req.payload_len)?;
    let action = to_client::deliver(ctx, udp, t, channel, &a.ip, a.port, &payload)?;
    count_to_peer(req.slot, req.payload_len as u64);
    count_to_client(t.slot, req.payload_len as u64);
    Ok(action)
}
