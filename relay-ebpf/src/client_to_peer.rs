//! Client → peer: ChannelData from a UDP client to one of our listeners, on a bound
//! channel, leaves as a plain UDP datagram from the relayed address to the peer.

use aya_ebpf::programs::XdpContext;
use relay_common::{ChannelKey, Reason, is_v4_mapped};

use crate::{
    csum::{self, Csum},
    emit::{self, Out},
    fib,
    maps::{CHANNEL_MAP, PUBLIC_IPS, count_to_peer},
    parse::{ETH_LEN, UDP_LEN, Udp, ptr_at},
};

/// ChannelData header: channel number, payload length.
const CD_HDR: usize = 4;

/// Out of line, so each direction gets its own stack frame; the result comes back as a
/// packed scalar (BPF functions cannot return through the caller's stack).
#[inline(never)]
pub fn handle(ctx: &XdpContext, udp: &Udp) -> u64 {
    crate::verdict::pack(handle_inner(ctx, udp).map(|a| (a, Reason::ForwardedToPeer)))
}

#[inline(always)]
fn handle_inner(ctx: &XdpContext, udp: &Udp) -> Result<u32, Reason> {
    let data_off = udp.l4_off + UDP_LEN;
    let cd: *const [u8; CD_HDR] = ptr_at(ctx, data_off).ok_or(Reason::NotChannelData)?;
    // SAFETY: bounds checked.
    let cd = unsafe { *cd };
    if !(0x40..=0x7f).contains(&cd[0]) {
        return Err(Reason::NotChannelData);
    }
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
    if PUBLIC_IPS.get_ptr(&v.peer_ip).is_some() {
        return Err(Reason::Hairpin);
    }
    let out_v6 = !is_v4_mapped(&v.peer_ip);
    let out_udp_len = (UDP_LEN + cd_len) as u16;

    let udp_csum = if udp.csum == 0 {
        if out_v6 {
            return Err(Reason::NoChecksum);
        }
        0
    } else {
        let mut s = csum::data_sum(
            udp.csum,
            udp.v6,
            &udp.src_ip,
            &udp.dst_ip,
            udp.src_port,
            udp.dst_port,
            udp.udp_len,
        );
        s.sub_be([cd[0], cd[1]]);
        s.sub_be([cd[2], cd[3]]);
        if trailing > 0 {
            sub_trailing(ctx, &mut s, data_off, udp_data_len, trailing)?;
        }
        csum::udp_envelope(
            &mut s,
            out_v6,
            &v.relay_ip,
            &v.peer_ip,
            v.relay_port,
            v.peer_port,
            out_udp_len,
            true,
        );
        s.finish_udp()
    };

    let ip_len = Out::ip_hdr_len(out_v6);
    let hop = fib::lookup(
        ctx,
        out_v6,
        &v.relay_ip,
        &v.peer_ip,
        v.relay_port,
        v.peer_port,
        ip_len + out_udp_len as usize,
    )?;

    // From here on the frame changes: failures drop (counted), they cannot pass up.
    let out_hdrs = ETH_LEN + ip_len + UDP_LEN;
    let head_delta = (data_off + CD_HDR) as i32 - out_hdrs as i32;
    let len = out_hdrs + cd_len;
    emit::resize(ctx, head_delta, len, len)?;
    let out = Out {
        v6: out_v6,
        src_ip: v.relay_ip,
        dst_ip: v.peer_ip,
        src_port: v.relay_port,
        dst_port: v.peer_port,
        udp_len: out_udp_len,
        udp_csum,
    };
    emit::headers(ctx, &out, &hop)?;
    count_to_peer(v.slot, cd_len as u64);
    Ok(fib::send(&hop))
}

/// Removes up to 3 bytes of padding after the ChannelData payload from the sum. They are
/// the last bytes of the UDP data, read as one 4-byte window (the data is at least the
/// 4-byte ChannelData header long) so the bounds check stays in a form the verifier
/// understands.
#[inline(always)]
fn sub_trailing(
    ctx: &XdpContext,
    s: &mut Csum,
    data_off: usize,
    udp_data_len: usize,
    trailing: usize,
) -> Result<(), Reason> {
    let start = udp_data_len - 4;
    let w: *const [u8; 4] = ptr_at(ctx, data_off + start).ok_or(Reason::Malformed)?;
    // SAFETY: bounds checked.
    let w = unsafe { *w };
    let mut j = 0;
    while j < 4 {
        if j >= 4 - trailing {
            // Offset within the UDP data; the UDP header is 8 bytes, so parity carries.
            let b = w[j] as u16;
            s.sub(if (start + j) % 2 == 0 { b << 8 } else { b });
        }
        j += 1;
    }
    Ok(())
}
