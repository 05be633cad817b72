//! Client → peer: the data of a client's request (ChannelData or Send indication, see
//! `request.rs`) leaves as a plain UDP datagram from the relayed address to the peer.

use aya_ebpf::programs::XdpContext;
use relay_common::{Reason, is_v4_mapped};

use crate::{
    bandwidth, csum,
    emit::{self, Out},
    fib, fib_cache,
    maps::count_to_peer,
    parse::{ETH_LEN, UDP_LEN, Udp},
    request::Request,
};

/// Out of line, so each route gets its own stack frame; the result comes back as a
/// packed scalar (BPF functions cannot return through the caller's stack).
#[inline(never)]
pub fn handle(ctx: &XdpContext, udp: &Udp, req: &Request) -> u64 {
    let reason = if req.send {
        Reason::SendIndication
    } else {
        Reason::ForwardedToPeer
    };
    crate::verdict::pack(handle_inner(ctx, udp, req).map(|a| (a, reason)))
}

#[inline(always)]
fn handle_inner(ctx: &XdpContext, udp: &Udp, req: &Request) -> Result<u32, Reason> {
    let out_v6 = !is_v4_mapped(&req.peer_ip);
    let out_udp_len = (UDP_LEN + req.payload_len) as u16;

    let udp_csum = if udp.csum == 0 {
        if out_v6 {
            return Err(Reason::NoChecksum);
        }
        0
    } else {
        let mut s = req.payload_sum;
        csum::udp_envelope(
            &mut s,
            out_v6,
            &req.relay_ip,
            &req.peer_ip,
            req.relay_port,
            req.peer_port,
            out_udp_len,
            true,
        );
        s.finish_udp()
    };

    let ip_len = Out::ip_hdr_len(out_v6);
    let hop = fib::lookup(
        ctx,
        fib_cache::index(req.slot, false),
        out_v6,
        &req.relay_ip,
        &req.peer_ip,
        req.relay_port,
        req.peer_port,
        ip_len + out_udp_len as usize,
    )?;
    // Charged once it is sure to leave from here (what passes up, userspace charges).
    bandwidth::admit(req.slot, req.payload_len)?;

    // From here on the frame changes: failures drop (counted), they cannot pass up.
    let out_hdrs = ETH_LEN + ip_len + UDP_LEN;
    let head_delta = req.payload_off as i32 - out_hdrs as i32;
    let len = out_hdrs + req.payload_len;
    emit::resize(ctx, head_delta, len, len)?;
    let out = Out {
        v6: out_v6,
        src_ip: req.relay_ip,
        dst_ip: req.peer_ip,
        src_port: req.relay_port,
        dst_port: req.peer_port,
        udp_len: out_udp_len,
        udp_csum,
    };
    emit::headers(ctx, &out, &hop)?;
    count_to_peer(req.slot, req.payload_len as u64);
    Ok(fib::send(&hop))
}
