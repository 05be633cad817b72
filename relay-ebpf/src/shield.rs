//! The shield: drops, in the kernel, what the daemon would only drop after a wake-up and a
//! syscall (see `relay_common::shield`). Every decision here errs towards passing up:
//! nothing a correct client or peer sends may be dropped, so each drop needs the daemon's
//! word (a flag or a map entry) that the kernel knows the whole story.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_CURRENT_NETNS, bpf_sock_tuple},
    helpers::{bpf_ktime_get_ns, bpf_sk_lookup_udp, bpf_sk_release},
    macros::map,
    maps::{Array, HashMap, LruHashMap},
    programs::XdpContext,
};
use relay_common::{
    ALLOCATION_COMPLETE, ClientKey, FAMILY_V4, FAMILY_V6, Ip, LISTENERS_MAX, RELAY_IPS_MAX, Reason,
    RelayKey, SHIELD_ALL_CLIENTS_KNOWN, SHIELD_ON, SOURCE_BUCKETS_MAX, ShieldConfig, SourceKey,
    gcra, source_key,
};

use crate::{
    maps::CLIENTS,
    parse::{UDP_LEN, Udp, ptr_at},
};

#[map(name = "SHIELD_CONFIG")]
static SHIELD_CONFIG: Array<ShieldConfig> = Array::with_max_entries(1, 0);

#[map(name = "LISTENERS")]
static LISTENERS: HashMap<RelayKey, u32> = HashMap::with_max_entries(LISTENERS_MAX, 0);

#[map(name = "RELAY_IPS")]
static RELAY_IPS: HashMap<Ip, u32> = HashMap::with_max_entries(RELAY_IPS_MAX, 0);

#[map(name = "SOURCE_BUCKETS")]
static SOURCE_BUCKETS: LruHashMap<SourceKey, u64> =
    LruHashMap::with_max_entries(SOURCE_BUCKETS_MAX, 0);

#[map(name = "GLOBAL_BUCKET")]
static GLOBAL_BUCKET: Array<u64> = Array::with_max_entries(1, 0);

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const STUN_HEADER: usize = 20;
/// No reason: the packet goes on its way.
pub const NONE: u32 = u32::MAX;

/// The daemon's settings, if it turned the shield on.
#[inline(always)]
fn config() -> Option<&'static ShieldConfig> {
    let c = SHIELD_CONFIG.get(0)?;
    if c.flags & SHIELD_ON == 0 {
        return None;
    }
    Some(c)
}

/// Whether the shield is on.
#[inline(always)]
pub fn on() -> bool {
    config().is_some()
}

/// A peer datagram without a permission to a relayed address with `flags`: dropped when
/// the allocation has every permission in the kernel.
#[inline(always)]
pub fn peer_not_permitted(flags: u8) -> bool {
    flags & ALLOCATION_COMPLETE != 0 && on()
}

/// Screens a datagram that no allocation's relayed address receives: [`NONE`], or the
/// reason it is dropped. Out of line, like the two screens it picks from, so the keys
/// stay off the caller's stack frame (which shares the 512-byte budget with the
/// forwarding paths').
#[inline(never)]
pub fn screen(ctx: &XdpContext, udp: &Udp) -> u32 {
    if !on() {
        return NONE;
    }
    if is_listener(udp) {
        screen_listener(ctx, udp)
    } else {
        screen_relay_port(ctx, udp)
    }
}

#[inline(never)]
fn screen_listener(ctx: &XdpContext, udp: &Udp) -> u32 {
    match config().and_then(|c| listener(ctx, udp, c)) {
        Some(reason) => reason as u32,
        None => NONE,
    }
}

#[inline(never)]
fn screen_relay_port(ctx: &XdpContext, udp: &Udp) -> u32 {
    match config().and_then(|c| relay_port(ctx, udp, c)) {
        Some(reason) => reason as u32,
        None => NONE,
    }
}

/// ChannelData with a channel number the CHANNELS map lacks: dropped if the sender's
/// allocation has all its channels in the kernel, or if it was sent to one of our
/// listeners from a 5-tuple without an allocation and the daemon vouches that every
/// client is in CLIENTS. (Anything else that merely starts like ChannelData, to other
/// ports of this host or through it, is not ours to judge.) Out of line: the keys stay
/// off the main stack frame.
#[inline(never)]
pub fn channel_unbound(udp: &Udp) -> bool {
    let Some(c) = config() else { return false };
    match client_flags(udp) {
        Some(flags) => flags & ALLOCATION_COMPLETE != 0,
        None => c.flags & SHIELD_ALL_CLIENTS_KNOWN != 0 && is_listener(udp),
    }
}

/// A Send indication (whatever the kernel made of it) to one of our listeners from a
/// 5-tuple without an allocation of either family: dropped once the daemon vouches that
/// every client is in CLIENTS. Userspace drops such an indication unread (it looks up the
/// sender's allocation first), and indications are never answered. Out of line: the keys
/// stay off the main stack frame.
#[inline(never)]
pub fn send_unknown_client(udp: &Udp) -> bool {
    let Some(c) = config() else { return false };
    c.flags & SHIELD_ALL_CLIENTS_KNOWN != 0 && client_flags(udp).is_none() && is_listener(udp)
}

/// Whether `udp` is addressed to one of our UDP listeners.
#[inline(always)]
fn is_listener(udp: &Udp) -> bool {
    let listener = RelayKey {
        ip: udp.dst_ip,
        port: udp.dst_port,
        _pad: [0; 2],
    };
    LISTENERS.get_ptr(listener).is_some()
}

/// The flags of the sender's CLIENTS entry (either peer family), if it has one. A dual
/// allocation has both, written together, so the IPv4 one speaks for both.
#[inline(always)]
fn client_flags(udp: &Udp) -> Option<u8> {
    let mut key = ClientKey {
        client_ip: udp.src_ip,
        listener_ip: udp.dst_ip,
        client_port: udp.src_port,
        listener_port: udp.dst_port,
        family: FAMILY_V4,
        _pad: [0; 3],
    };
    if let Some(v) = CLIENTS.get_ptr(&key) {
        // SAFETY: value pointer from a successful lookup.
        return Some(unsafe { (*v)._pad[0] });
    }
    key.family = FAMILY_V6;
    // SAFETY: as above.
    CLIENTS.get_ptr(&key).map(|v| unsafe { (*v)._pad[0] })
}

/// To a listener port: must look like STUN or ChannelData (RFC 7983's first-byte
/// ranges, a STUN header with the magic cookie); a request from a 5-tuple without an
/// allocation takes a token from its source's bucket and from the global one.
#[inline(always)]
fn listener(ctx: &XdpContext, udp: &Udp, c: &ShieldConfig) -> Option<Reason> {
    let data_len = udp.udp_len as usize - UDP_LEN;
    let data_off = udp.l4_off + UDP_LEN;
    let Some(first) = ptr_at::<[u8; 4]>(ctx, data_off) else {
        return Some(Reason::Unparsable);
    };
    // SAFETY: bounds checked.
    let first = unsafe { *first };
    if (0x40..=0x7f).contains(&first[0]) {
        // ChannelData: its own checks follow (request.rs).
        return None;
    }
    if first[0] & 0xc0 != 0 || data_len < STUN_HEADER {
        return Some(Reason::Unparsable);
    }
    // The header's first 8 bytes read again from the same offset: an offset computed
    // anew (`data_off + 4`) loses the verifier's bounds on it.
    let head = ptr_at::<[u8; 8]>(ctx, data_off)?;
    // SAFETY: bounds checked.
    let head = unsafe { *head };
    if [head[4], head[5], head[6], head[7]] != MAGIC_COOKIE {
        return Some(Reason::Unparsable);
    }
    // Class bits C1 (0x0100) and C0 (0x0010) of the message type both zero: a request.
    let is_request = first[0] & 0x01 == 0 && first[1] & 0x10 == 0;
    if !is_request || client_flags(udp).is_some() {
        return None;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if !source_bucket(udp, c, now) || !global_bucket(c, now) {
        return Some(Reason::UnauthenticatedRate);
    }
    None
}

/// Compare-and-swap of a bucket's TAT: a few tries against other CPUs' updates of the
/// same word, then the request is refused (a bucket that busy is being flooded).
#[inline(always)]
fn take(tat: *mut u64, now: u64, interval: u64, burst: u64) -> bool {
    // core's AtomicU64 offers no compare_exchange on BPF targets; the intrinsic lowers to
    // the BPF_CMPXCHG instruction (kernel 5.12+). A per-entry bpf_spin_lock would need the
    // lock in a BTF-described value, and a lock held to move one word buys nothing.
    let mut tries = 0;
    while tries < 4 {
        // SAFETY: `tat` points into a map value, 8-byte aligned, valid for the program's
        // run; other CPUs only change it through the same compare-and-swap.
        let old = unsafe { core::ptr::read_volatile(tat) };
        let Some(new) = gcra(old, now, interval, burst) else {
            return false;
        };
        // SAFETY: as above.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                tat, old, new,
            )
        };
        if swapped {
            return true;
        }
        tries += 1;
    }
    false
}

#[inline(always)]
fn source_bucket(udp: &Udp, c: &ShieldConfig, now: u64) -> bool {
    if c.source_interval_ns == 0 {
        return true;
    }
    let key = source_key(&udp.src_ip);
    match SOURCE_BUCKETS.get_ptr_mut(&key) {
        Some(tat) => take(tat, now, c.source_interval_ns, c.source_burst_ns),
        None => {
            // A new source starts with a full bucket, less this request. Two CPUs racing
            // to insert both pass: one request more.
            let _ = SOURCE_BUCKETS.insert(&key, &(now + c.source_interval_ns), BPF_ANY as u64);
            true
        }
    }
}

#[inline(always)]
fn global_bucket(c: &ShieldConfig, now: u64) -> bool {
    if c.global_interval_ns == 0 {
        return true;
    }
    match GLOBAL_BUCKET.get_ptr_mut(0) {
        Some(tat) => take(tat, now, c.global_interval_ns, c.global_burst_ns),
        None => true,
    }
}

/// To a relay IP inside the relay port range: dropped if no socket holds the port. The
/// maps cannot decide it (userspace binds a relay socket before the maps learn of it,
/// and TCP allocations' relayed addresses are not in them); the socket table can.
#[inline(always)]
fn relay_port(ctx: &XdpContext, udp: &Udp, c: &ShieldConfig) -> Option<Reason> {
    let port = u16::from_be_bytes(udp.dst_port);
    if port < c.relay_port_min || port > c.relay_port_max {
        return None;
    }
    RELAY_IPS.get_ptr(&udp.dst_ip)?;
    // SAFETY: a zeroed plain-data union is a valid tuple.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if udp.v6 {
        // SAFETY: writing plain data into the union's IPv6 member.
        let t = unsafe { &mut tuple.__bindgen_anon_1.ipv6 };
        let mut i = 0;
        while i < 4 {
            let o = 4 * i;
            t.saddr[i] = u32::from_ne_bytes([
                udp.src_ip[o],
                udp.src_ip[o + 1],
                udp.src_ip[o + 2],
                udp.src_ip[o + 3],
            ]);
            t.daddr[i] = u32::from_ne_bytes([
                udp.dst_ip[o],
                udp.dst_ip[o + 1],
                udp.dst_ip[o + 2],
                udp.dst_ip[o + 3],
            ]);
            i += 1;
        }
        t.sport = u16::from_ne_bytes(udp.src_port);
        t.dport = u16::from_ne_bytes(udp.dst_port);
        core::mem::size_of_val(t)
    } else {
        // SAFETY: as above, the IPv4 member.
        let t = unsafe { &mut tuple.__bindgen_anon_1.ipv4 };
        let s = &udp.src_ip;
        let d = &udp.dst_ip;
        t.saddr = u32::from_ne_bytes([s[12], s[13], s[14], s[15]]);
        t.daddr = u32::from_ne_bytes([d[12], d[13], d[14], d[15]]);
        t.sport = u16::from_ne_bytes(udp.src_port);
        t.dport = u16::from_ne_bytes(udp.dst_port);
        core::mem::size_of_val(t)
    };
    // SAFETY: helper call with a tuple on our stack of the size given; a socket it
    // returns is released at once.
    unsafe {
        let sk = bpf_sk_lookup_udp(
            ctx.ctx as *mut _,
            &mut tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if !sk.is_null() {
            bpf_sk_release(sk as *mut _);
            return None;
        }
    }
    Some(Reason::RelayPortUnused)
}
