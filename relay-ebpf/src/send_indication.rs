//! Send indications (RFC 8656 §11.4) read in the kernel. The attributes a client's stack
//! puts in one are walked with a bounded loop: XOR-PEER-ADDRESS and DATA (once each),
//! DONT-FRAGMENT (honoured as is: the relay's packets always carry DF) and a final
//! FINGERPRINT. Its CRC is not checked: indications carry no integrity, so a valid CRC
//! would prove nothing about the sender. Any other attribute, comprehension-optional ones
//! included, sends the message up to userspace, which applies the full rules.
//!
//! Everything but the DATA value is taken out of the checksum sum word by word as it is
//! walked; STUN attributes are 4-aligned, so each starts on an even offset.

use aya_ebpf::programs::XdpContext;
use relay_common::{ClientKey, FAMILY_V4, FAMILY_V6, Reason, v4_mapped};

use crate::{
    csum::Csum,
    maps::CLIENTS,
    parse::{UDP_LEN, Udp, ptr_at},
    request::{Request, data_sum, sub_window_tail},
};

/// Low byte of the Send indication's message type (0x0016).
pub const TYPE_LOW: u8 = 0x16;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const HDR: usize = 20;
const XOR_PEER_ADDRESS: u16 = 0x0012;
const DATA: u16 = 0x0013;
const DONT_FRAGMENT: u16 = 0x001a;
const FINGERPRINT: u16 = 0x8028;
/// Each accepted attribute at most once: a fifth one is a repeat or one we do not take.
const MAX_ATTRS: usize = 4;

/// Fills `req` from the Send indication in `udp` (its first two bytes are 0x0016).
#[inline(always)]
pub fn read(ctx: &XdpContext, udp: &Udp, req: &mut Request) -> Result<(), Reason> {
    let d = udp.l4_off + UDP_LEN;
    let n = udp.udp_len as usize - UDP_LEN;
    let h: *const [u8; HDR] = ptr_at(ctx, d).ok_or(Reason::Malformed)?;
    // SAFETY: bounds checked. A copy: the IPv6 peer address is XORed with its last 16 bytes.
    let h = unsafe { *h };
    if h[4..8] != MAGIC_COOKIE {
        // Not STUN (RFC 3489 or another protocol): userspace decides.
        return Err(Reason::NotChannelData);
    }
    let msg_len = u16::from_be_bytes([h[2], h[3]]) as usize;
    if !msg_len.is_multiple_of(4) || HDR + msg_len != n {
        return Err(Reason::Malformed);
    }
    let mut s = data_sum(udp);
    let mut i = 0;
    while i < HDR {
        s.sub(u16::from_be_bytes([h[i], h[i + 1]]));
        i += 2;
    }

    let mut off = HDR;
    let mut family = 0u8;
    let mut have_data = false;
    let mut done = false;
    let mut k = 0;
    while k < MAX_ATTRS && off < n {
        if done {
            // Attributes after FINGERPRINT.
            return Err(Reason::UnhandledAttribute);
        }
        let a: *const [u8; 4] = ptr_at(ctx, d + off).ok_or(Reason::Malformed)?;
        // SAFETY: bounds checked.
        let a = unsafe { *a };
        let typ = u16::from_be_bytes([a[0], a[1]]);
        let len = u16::from_be_bytes([a[2], a[3]]) as usize;
        let value = off + 4;
        let padded = (len + 3) & !3;
        if value + padded > n {
            return Err(Reason::Malformed);
        }
        s.sub_be([a[0], a[1]]);
        s.sub_be([a[2], a[3]]);
        match typ {
            XOR_PEER_ADDRESS if family == 0 => {
                family = peer_address(ctx, d + value, len, &h, req, &mut s)?;
            }
            DATA if !have_data => {
                req.payload_off = d + value;
                req.payload_len = len;
                if padded != len {
                    // The padding after the data (any value, RFC 8489 §14) stays behind.
                    sub_window_tail(ctx, &mut s, d, value + padded - 4, padded - len)?;
                }
                have_data = true;
            }
            DONT_FRAGMENT if len == 0 => {}
            FINGERPRINT if len == 4 => {
                let v: *const [u8; 4] = ptr_at(ctx, d + value).ok_or(Reason::Malformed)?;
                // SAFETY: bounds checked.
                let v = unsafe { *v };
                s.sub_be([v[0], v[1]]);
                s.sub_be([v[2], v[3]]);
                done = true;
            }
            DONT_FRAGMENT | FINGERPRINT => return Err(Reason::Malformed),
            _ => return Err(Reason::UnhandledAttribute),
        }
        off = value + padded;
        k += 1;
    }
    if off != n {
        return Err(Reason::UnhandledAttribute);
    }
    if family == 0 || !have_data {
        // Userspace answers nothing either, but counts why.
        return Err(Reason::Malformed);
    }

    let key = ClientKey {
        client_ip: udp.src_ip,
        listener_ip: udp.dst_ip,
        client_port: udp.src_port,
        listener_port: udp.dst_port,
        family,
        _pad: [0; 3],
    };
    let r = CLIENTS.get_ptr(&key).ok_or(Reason::NoAllocation)?;
    // SAFETY: map value pointer from a successful lookup.
    let r = unsafe { &*r };
    req.relay_ip = r.ip;
    req.relay_port = r.port;
    req.slot = r.slot;
    req.payload_sum = s;
    req.send = true;
    Ok(())
}

/// Decodes XOR-PEER-ADDRESS (`len` bytes at `off`) into `req`, takes its bytes out of `s`,
/// and returns the peer's family.
#[inline(always)]
fn peer_address(
    ctx: &XdpContext,
    off: usize,
    len: usize,
    h: &[u8; HDR],
    req: &mut Request,
    s: &mut Csum,
) -> Result<u8, Reason> {
    if len == 8 {
        let v: *const [u8; 8] = ptr_at(ctx, off).ok_or(Reason::Malformed)?;
        // SAFETY: bounds checked.
        let v = unsafe { *v };
        if v[1] != 0x01 {
            return Err(Reason::Malformed);
        }
        let mut i = 0;
        while i < 8 {
            s.sub(u16::from_be_bytes([v[i], v[i + 1]]));
            i += 2;
        }
        req.peer_port = [v[2] ^ MAGIC_COOKIE[0], v[3] ^ MAGIC_COOKIE[1]];
        req.peer_ip = v4_mapped([
            v[4] ^ MAGIC_COOKIE[0],
            v[5] ^ MAGIC_COOKIE[1],
            v[6] ^ MAGIC_COOKIE[2],
            v[7] ^ MAGIC_COOKIE[3],
        ]);
        Ok(FAMILY_V4)
    } else if len == 20 {
        let v: *const [u8; 20] = ptr_at(ctx, off).ok_or(Reason::Malformed)?;
        // SAFETY: bounds checked.
        let v = unsafe { &*v };
        if v[1] != 0x02 {
            return Err(Reason::Malformed);
        }
        let mut i = 0;
        while i < 20 {
            s.sub(u16::from_be_bytes([v[i], v[i + 1]]));
            i += 2;
        }
        req.peer_port = [v[2] ^ MAGIC_COOKIE[0], v[3] ^ MAGIC_COOKIE[1]];
        // XORed with the magic cookie and the transaction id: header bytes 4..20.
        let mut i = 0;
        while i < 16 {
            req.peer_ip[i] = v[4 + i] ^ h[4 + i];
            i += 1;
        }
        Ok(FAMILY_V6)
    } else {
        Err(Reason::Malformed)
    }
}
