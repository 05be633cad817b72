//! Types shared by the kernel program (`relay-ebpf`) and the daemon (`relay-user`): the
//! fast-path maps' names, sizes, keys and values, and the counters the kernel keeps.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding so both sides agree on
//! the layout byte for byte. Addresses and ports stay in network byte order so the kernel
//! can build keys straight from packet bytes.
#![no_std]

pub mod bandwidth;
pub mod bench;
pub use bandwidth::{Bucket, SlotBandwidth, bandwidth_map_sizes};
mod shield;
pub use shield::*;

/// Name of the per-interface counter map (`PerCpuHashMap<u32, IfaceCounters>`), keyed by
/// the ingress ifindex.
pub const IFACE_COUNTERS_MAP: &str = "IFACE_COUNTERS";
/// Capacity of [`IFACE_COUNTERS_MAP`]: more interfaces than any edge host has.
pub const IFACE_COUNTERS_MAX: u32 = 256;
/// Name of the per-interface counter array (`PerCpuArray<IfaceCounters>`) indexed by
/// ifindex, for interfaces whose ifindex is below [`IFACE_LOW_MAX`]; the others count in
/// [`IFACE_COUNTERS_MAP`]. An array lookup is inlined by the kernel, a hash lookup is not.
pub const IFACE_LOW_MAP: &str = "IFACE_LOW";
/// Entries of [`IFACE_LOW_MAP`].
pub const IFACE_LOW_MAX: u32 = 256;
/// Name of the XDP program in the object file.
pub const XDP_PROGRAM: &str = "relay_xdp";

/// Packets and bytes the XDP program saw arrive on one interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    pub packets: u64,
    pub bytes: u64,
}

impl IfaceCounters {
    /// Sum of per-CPU values, as userspace reads them.
    pub fn sum<'a>(values: impl IntoIterator<Item = &'a IfaceCounters>) -> IfaceCounters {
        values
            .into_iter()
            .fold(IfaceCounters::default(), |acc, v| IfaceCounters {
                packets: acc.packets.wrapping_add(v.packets),
                bytes: acc.bytes.wrapping_add(v.bytes),
            })
    }
}

// ---------------------------------------------------------------------------------------
// TURN fast path maps.
//
// Addresses are 16-byte arrays with IPv4 stored v4-mapped (`::ffff:a.b.c.d`): one map per
// kind serves both families and the mixed cases (an IPv4 client with an IPv6 relayed
// address), the kernel builds keys from packet bytes with plain copies, and userspace has
// one code path. The cost is 12 unused bytes per IPv4 address in a key, which hash maps of
// this size do not notice. Ports and channel numbers are network byte order byte arrays.
// ---------------------------------------------------------------------------------------

/// `HashMap<RelayKey, RelayValue>`: relay bind address (ip:port the relay socket is bound
/// to) → the public address it is advertised as, and its counter slot. A packet to one of
/// these addresses is peer → client traffic.
pub const ALLOCATIONS_MAP: &str = "ALLOCATIONS";
/// `HashMap<ChannelKey, ChannelValue>`: client → peer ChannelData.
pub const CHANNELS_MAP: &str = "CHANNELS";
/// `HashMap<PeerKey, ClientTarget>`: peer → client as ChannelData (`channel != 0`).
pub const PEER_CHANNELS_MAP: &str = "PEER_CHANNELS";
/// `HashMap<PermissionKey, ClientTarget>`: peer → client as a Data indication.
pub const PERMISSIONS_MAP: &str = "PERMISSIONS";
/// `PerCpuArray<AllocCounters>` indexed by slot.
pub const ALLOC_COUNTERS_MAP: &str = "ALLOC_COUNTERS";
/// `PerCpuArray<u64>` indexed by [`Reason`].
pub const REASON_COUNTERS_MAP: &str = "REASON_COUNTERS";
/// `DevMapHash` keyed by ifindex: the interfaces the program may redirect to (the ones it
/// is attached to). A FIB result pointing elsewhere is passed up.
pub const REDIRECT_MAP: &str = "REDIRECT_IFACES";

/// `HashMap<Ip, u32>`: the IPs of relayed addresses, public (advertised) and bind, value =
/// 1 while an allocation uses it. A client's packet to a peer on one of these is hairpin
/// traffic: delivered to the other allocation's client without a round trip through the
/// NAT (in the kernel when [`RELAY_ADDRS_MAP`] knows the port, else by userspace).
pub const PUBLIC_IPS_MAP: &str = "PUBLIC_IPS";
/// `Array<PublicIpBits>`, one entry: a bit per [`public_ip_bit`] value of the IPs in
/// [`PUBLIC_IPS_MAP`], written by the daemon before an IP goes in and after it goes out.
/// The kernel looks an IP up in [`PUBLIC_IPS_MAP`] only when its bit is set: every client
/// request names a peer, nearly never one of ours, and a hash lookup of 16 bytes costs
/// ~25 ns a packet (an array lookup is inlined).
pub const PUBLIC_IP_BITS_MAP: &str = "PUBLIC_IP_BITS";

/// The bit of `ip` in [`PublicIpBits`]: its bytes folded into one (IPv4-mapped addresses:
/// the IPv4 address's four bytes, as the prefix's bytes cancel out).
#[inline(always)]
pub fn public_ip_bit(ip: &Ip) -> u32 {
    let mut x = 0u8;
    let mut i = 0;
    while i < 16 {
        x ^= ip[i];
        i += 1;
    }
    x as u32
}

/// Value of [`PUBLIC_IP_BITS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublicIpBits {
    pub words: [u64; 4],
}

impl PublicIpBits {
    /// Whether `bit` (a [`public_ip_bit`]) is set.
    #[inline(always)]
    pub fn has(&self, bit: u32) -> bool {
        let bit = bit & 0xff;
        self.words[(bit >> 6) as usize] >> (bit & 63) & 1 != 0
    }

    pub fn set(&mut self, bit: u32) {
        let bit = bit & 0xff;
        self.words[(bit >> 6) as usize] |= 1 << (bit & 63);
    }
}

/// Capacity of [`PUBLIC_IPS_MAP`].
pub const PUBLIC_IPS_MAX: u32 = 256;
/// `HashMap<RelayKey, RelayValue>`: every address a peer can name a relayed address of a UDP
/// allocation by (its public address and its bind address) → the bind address and the
/// counter slot. Hairpin: finds the allocation a client's packet is for.
pub const RELAY_ADDRS_MAP: &str = "RELAY_ADDRS";
/// `HashMap<ClientKey, RelayValue>`: a UDP client (5-tuple) and a peer family → the bind
/// address and counter slot of its relayed address of that family. Send indications name
/// only the peer, so this is how the kernel finds the sending allocation.
pub const CLIENTS_MAP: &str = "CLIENTS";

/// Default `max_allocations`: the daemon's `[limits] max_allocations` when the config does
/// not set it, and the map sizes the kernel object declares (the daemon sizes the maps from
/// the configured limit at load, so these only serve a load that names none).
pub const DEFAULT_MAX_ALLOCATIONS: u32 = 10_000;
/// Relayed addresses per allocation (one per family of a dual allocation).
pub const RELAYS_PER_ALLOCATION: u32 = 2;
/// Channel entries per allocation (both [`CHANNELS_MAP`] and [`PEER_CHANNELS_MAP`]).
pub const CHANNELS_PER_ALLOCATION: u32 = 4;
/// Permission entries per allocation.
pub const PERMISSIONS_PER_ALLOCATION: u32 = 8;
/// Entries of the kernel program's per-CPU next-hop cache (`FIB_CACHE`: one per counter
/// slot and direction, modulo this; a power of two). Fixed, not sized from
/// `max_allocations`: it is per CPU, and a collision only costs a FIB lookup.
pub const FIB_CACHE_SIZE: u32 = 8192;
/// Capacity of [`REDIRECT_MAP`].
pub const REDIRECT_MAX: u32 = 64;

/// Map capacities derived from `max_allocations`: (map name, entries).
pub const fn map_sizes(max_allocations: u32) -> [(&'static str, u32); 7] {
    let relays = max_allocations.saturating_mul(RELAYS_PER_ALLOCATION);
    let channels = max_allocations.saturating_mul(CHANNELS_PER_ALLOCATION);
    [
        (ALLOCATIONS_MAP, relays),
        (ALLOC_COUNTERS_MAP, relays),
        // Public and bind address of each relayed address.
        (RELAY_ADDRS_MAP, relays.saturating_mul(2)),
        (CLIENTS_MAP, relays),
        (CHANNELS_MAP, channels),
        (PEER_CHANNELS_MAP, channels),
        (
            PERMISSIONS_MAP,
            max_allocations.saturating_mul(PERMISSIONS_PER_ALLOCATION),
        ),
    ]
}

/// An IP address as the maps store it (IPv4 v4-mapped).
pub type Ip = [u8; 16];
/// A port or channel number in network byte order.
pub type Be16 = [u8; 2];

/// `::ffff:a.b.c.d`.
pub const fn v4_mapped(v4: [u8; 4]) -> Ip {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Whether `ip` is v4-mapped, i.e. stands for an IPv4 address.
pub fn is_v4_mapped(ip: &Ip) -> bool {
    ip[..10].iter().all(|b| *b == 0) && ip[10] == 0xff && ip[11] == 0xff
}

/// Key of [`ALLOCATIONS_MAP`]: a relay socket's bind address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RelayKey {
    pub ip: Ip,
    pub port: Be16,
    pub _pad: [u8; 2],
}

/// Value of [`ALLOCATIONS_MAP`] (the public address of a bind address), of
/// [`RELAY_ADDRS_MAP`] and [`CLIENTS_MAP`] (the bind address): the other address of the same
/// relayed endpoint, and the endpoint's counter slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RelayValue {
    pub ip: Ip,
    pub port: Be16,
    pub _pad: [u8; 2],
    /// Index into [`ALLOC_COUNTERS_MAP`].
    pub slot: u32,
}

/// [`ClientKey::family`] of an IPv4 peer (and relayed address).
pub const FAMILY_V4: u8 = 4;
/// [`ClientKey::family`] of an IPv6 peer (and relayed address).
pub const FAMILY_V6: u8 = 6;

/// Key of [`CLIENTS_MAP`]: a UDP client as one of our listeners sees it, and the family of
/// the peers it sends to ([`FAMILY_V4`] or [`FAMILY_V6`]; a dual allocation has one
/// relayed address of each).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub client_ip: Ip,
    pub listener_ip: Ip,
    pub client_port: Be16,
    pub listener_port: Be16,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Key of [`CHANNELS_MAP`]: who sent the ChannelData, where to, on which channel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    pub client_ip: Ip,
    pub listener_ip: Ip,
    pub client_port: Be16,
    pub listener_port: Be16,
    pub channel: Be16,
    pub _pad: [u8; 2],
}

/// Value of [`CHANNELS_MAP`]: send the payload from `relay` to `peer`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChannelValue {
    pub relay_ip: Ip,
    pub peer_ip: Ip,
    pub relay_port: Be16,
    pub peer_port: Be16,
    /// Index into [`ALLOC_COUNTERS_MAP`].
    pub slot: u32,
}

/// Key of [`PEER_CHANNELS_MAP`]: a peer's packet to a relay address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub relay_ip: Ip,
    pub peer_ip: Ip,
    pub relay_port: Be16,
    pub peer_port: Be16,
}

/// Key of [`PERMISSIONS_MAP`]: permissions are per peer IP, any port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PermissionKey {
    pub relay_ip: Ip,
    pub peer_ip: Ip,
    pub relay_port: Be16,
    pub _pad: [u8; 2],
}

/// [`ClientTarget::flags`] of a permission: the peer policy allows this client only some
/// ports of the peer, so its Send indications (which may name any port) go up to
/// userspace, which checks the port. Bound channels (checked at bind) and the peer's data
/// to the client stay in the kernel.
pub const PERMISSION_SOME_PORTS: u8 = 1;

/// Value of [`PEER_CHANNELS_MAP`] and [`PERMISSIONS_MAP`]: where the client is, which of
/// our addresses it talks to, and the channel (`[0, 0]` for "send a Data indication").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientTarget {
    pub client_ip: Ip,
    pub listener_ip: Ip,
    pub client_port: Be16,
    pub listener_port: Be16,
    pub channel: Be16,
    /// Permissions only: [`PERMISSION_SOME_PORTS`] or 0.
    pub flags: u8,
    pub _pad: [u8; 1],
    /// Index into [`ALLOC_COUNTERS_MAP`].
    pub slot: u32,
}

/// Per relayed address: what the kernel relayed (application payload bytes, i.e. without
/// ChannelData/STUN framing).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocCounters {
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

impl AllocCounters {
    /// Sum of per-CPU values.
    pub fn sum<'a>(values: impl IntoIterator<Item = &'a AllocCounters>) -> AllocCounters {
        values
            .into_iter()
            .fold(AllocCounters::default(), |a, v| AllocCounters {
                to_peer_packets: a.to_peer_packets.wrapping_add(v.to_peer_packets),
                to_peer_bytes: a.to_peer_bytes.wrapping_add(v.to_peer_bytes),
                to_client_packets: a.to_client_packets.wrapping_add(v.to_client_packets),
                to_client_bytes: a.to_client_bytes.wrapping_add(v.to_client_bytes),
            })
    }
}

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident = $n:literal, $text:literal;)*) => {
        /// What the program did with a packet, and why it went up when it did. Index of
        /// [`REASON_COUNTERS_MAP`].
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason { $($(#[$doc])* $name = $n,)* }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];
            /// Stable snake_case name for metrics and logs.
            pub const fn name(self) -> &'static str {
                match self { $(Reason::$name => $text,)* }
            }
        }
    };
}

reasons! {
    ForwardedToPeer = 0, "forwarded_to_peer";
    ForwardedToClient = 1, "forwarded_to_client";
    DataIndication = 2, "data_indication";
    NotIp = 3, "not_ip";
    NotUdp = 4, "not_udp";
    Fragment = 5, "fragment";
    IpOptions = 6, "ip_options";
    Ipv6ExtHeader = 7, "ipv6_ext_header";
    Malformed = 8, "malformed";
    NoMatch = 9, "no_match";
    NotChannelData = 10, "not_channel_data";
    UnknownChannel = 11, "unknown_channel";
    NoPermission = 12, "no_permission";
    FibNoNeighbour = 13, "fib_no_neighbour";
    FibFailed = 14, "fib_failed";
    FibForwardingDisabled = 15, "fib_forwarding_disabled";
    TooBig = 16, "too_big";
    NoRedirectTarget = 17, "no_redirect_target";
    AdjustFailed = 18, "adjust_failed";
    NoChecksum = 19, "no_checksum";
    BadPadding = 20, "bad_padding";
    /// To one of our own relayed IPs, but not an allocation the kernel can deliver to
    /// (unknown port, a TCP allocation, the sender's own address): userspace decides.
    Hairpin = 21, "hairpin";
    /// Delivered from one allocation's client to another's, in the kernel.
    Hairpinned = 22, "hairpinned";
    /// A Send indication's data forwarded to its peer.
    SendIndication = 23, "send_indication";
    /// Hairpin to an allocation without a permission for the sender's relayed address.
    HairpinNoPermission = 24, "hairpin_no_permission";
    /// A Send indication with an attribute the kernel leaves to userspace (anything but
    /// XOR-PEER-ADDRESS, DATA, DONT-FRAGMENT and a final FINGERPRINT), or a repeated one.
    UnhandledAttribute = 25, "unhandled_attribute";
    /// A Send indication from a client without a UDP allocation of the peer's family.
    NoAllocation = 26, "no_allocation";
    /// A peer of the other family than the relayed address (an IPv4-mapped IPv6 peer).
    FamilyMismatch = 27, "family_mismatch";
    /// A Send indication to a peer whose permission the policy limits to some ports
    /// ([`PERMISSION_SOME_PORTS`]): userspace checks the port.
    SendPortCheck = 28, "send_port_check";
    /// Over `max_bps_per_allocation` or `max_bps_per_user` (see `bandwidth`): dropped.
    BandwidthLimit = 29, "bandwidth_limit";
    /// Dropped: to a relay IP inside the relay port range where no socket is bound (no
    /// allocation has the port).
    RelayPortUnused = 30, "relay_port_unused";
    /// Dropped: a peer without a permission, to an allocation whose permissions are all in
    /// the kernel ([`ALLOCATION_COMPLETE`]).
    PeerNotPermitted = 31, "peer_not_permitted";
    /// Dropped: ChannelData on a channel the client's allocation does not have (all of its
    /// channels are in the kernel), or from a 5-tuple without an allocation.
    ChannelUnbound = 32, "channel_unbound";
    /// Dropped: to a listener port, but neither STUN nor ChannelData (too short, wrong
    /// first bits, wrong magic cookie).
    Unparsable = 33, "unparsable";
    /// Dropped: a STUN request from a 5-tuple without an allocation, over its source's or
    /// the global `unauthenticated_*` rate.
    UnauthenticatedRate = 34, "unauthenticated_rate";
    /// Dropped: a Send indication to a listener from a 5-tuple without an allocation
    /// (userspace drops it unread, `no_allocation`), once the daemon vouches that every
    /// client is in the kernel's maps.
    SendNoAllocation = 35, "send_no_allocation";
}

/// Capacity of [`REASON_COUNTERS_MAP`] (room to add reasons without a layout change).
pub const REASON_COUNT: u32 = 64;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, `repr(C)`, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::IfaceCounters {}
    // SAFETY: as above; padding is explicit (`_pad` fields), so every byte is initialised.
    unsafe impl aya::Pod for super::RelayKey {}
    unsafe impl aya::Pod for super::RelayValue {}
    unsafe impl aya::Pod for super::ClientKey {}
    unsafe impl aya::Pod for super::ChannelKey {}
    unsafe impl aya::Pod for super::ChannelValue {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::PermissionKey {}
    unsafe impl aya::Pod for super::ClientTarget {}
    unsafe impl aya::Pod for super::AllocCounters {}
    unsafe impl aya::Pod for super::SlotBandwidth {}
    unsafe impl aya::Pod for super::Bucket {}
    unsafe impl aya::Pod for super::PublicIpBits {}
    unsafe impl aya::Pod for super::ShieldConfig {}
    unsafe impl aya::Pod for super::bench::BenchCounters {}
    unsafe impl aya::Pod for super::bench::BenchRedirect {}
}

// Layouts the kernel program and the daemon must agree on.
const _: () = {
    assert!(core::mem::size_of::<RelayKey>() == 20);
    assert!(core::mem::size_of::<RelayValue>() == 24);
    assert!(core::mem::size_of::<ClientKey>() == 40);
    assert!(core::mem::size_of::<ChannelKey>() == 40);
    assert!(core::mem::size_of::<ChannelValue>() == 40);
    assert!(core::mem::size_of::<PeerKey>() == 36);
    assert!(core::mem::size_of::<PermissionKey>() == 36);
    assert!(core::mem::size_of::<ClientTarget>() == 44);
    assert!(core::mem::size_of::<AllocCounters>() == 32);
    assert!(core::mem::size_of::<ShieldConfig>() == 40);
    assert!(core::mem::size_of::<bench::BenchCounters>() == 16);
    assert!(core::mem::size_of::<bench::BenchRedirect>() == 16);
    assert!(FIB_CACHE_SIZE.is_power_of_two());
    assert!(core::mem::size_of::<PublicIpBits>() == 32);
};
