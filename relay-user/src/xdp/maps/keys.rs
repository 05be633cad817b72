//! The kernel's view of an address: builders of the fast-path maps' keys and values
//! (16-byte IPs, big-endian ports, the ALLOCATION_COMPLETE flag) from socket addresses.
//! Pure functions, kept apart from [`XdpMaps`](super::XdpMaps)' bookkeeping; the reader
//! uses [`relay_key`] too.

use std::net::{IpAddr, SocketAddr};

use relay_common::{
    ALLOCATION_COMPLETE, ChannelKey, ClientKey, FAMILY_V4, FAMILY_V6, Ip, PeerKey, PermissionKey,
    RelayKey, RelayValue, v4_mapped,
};

/// The 16-byte map form of an address (IPv4, also when written v4-mapped, as `::ffff:a.b.c.d`).
pub fn map_ip(ip: IpAddr) -> Ip {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub(super) fn port(p: u16) -> [u8; 2] {
    p.to_be_bytes()
}

pub(in crate::xdp) fn relay_key(relay: SocketAddr) -> RelayKey {
    RelayKey {
        ip: map_ip(relay.ip()),
        port: port(relay.port()),
        _pad: [0; 2],
    }
}

/// The IPs a relayed address can be named by: its public IP and, behind a static NAT, its
/// bind IP (a wildcard bind names nothing).
pub(super) fn own_ips(relay: SocketAddr, public: SocketAddr) -> impl Iterator<Item = IpAddr> {
    let (public, bind) = (public.ip().to_canonical(), relay.ip().to_canonical());
    let bind = (bind != public && !bind.is_unspecified()).then_some(bind);
    std::iter::once(public).chain(bind)
}

/// The addresses a peer can name a relayed address by: public, and bind if different.
pub(super) fn names(relay: SocketAddr, public: SocketAddr) -> impl Iterator<Item = SocketAddr> {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let bind =
        (canonical(relay) != canonical(public) && !relay.ip().is_unspecified()).then_some(relay);
    std::iter::once(public).chain(bind)
}

pub(super) fn relay_value(addr: SocketAddr, slot: u32) -> RelayValue {
    RelayValue {
        ip: map_ip(addr.ip()),
        port: port(addr.port()),
        _pad: [0; 2],
        slot,
    }
}

/// `v` with the [`ALLOCATION_COMPLETE`] flag set or cleared.
pub(super) fn flagged(mut v: RelayValue, complete: bool) -> RelayValue {
    v._pad[0] = if complete { ALLOCATION_COMPLETE } else { 0 };
    v
}

pub(super) fn client_key(client: SocketAddr, listener: SocketAddr, relay: IpAddr) -> ClientKey {
    ClientKey {
        client_ip: map_ip(client.ip()),
        listener_ip: map_ip(listener.ip()),
        client_port: port(client.port()),
        listener_port: port(listener.port()),
        family: match relay.to_canonical() {
            IpAddr::V4(_) => FAMILY_V4,
            IpAddr::V6(_) => FAMILY_V6,
        },
        _pad: [0; 3],
    }
}

pub(super) fn permission_key(relay: SocketAddr, peer: IpAddr) -> PermissionKey {
    PermissionKey {
        relay_ip: map_ip(relay.ip()),
        peer_ip: map_ip(peer),
        relay_port: port(relay.port()),
        _pad: [0; 2],
    }
}

pub(super) fn channel_key(client: SocketAddr, listener: SocketAddr, channel: u16) -> ChannelKey {
    ChannelKey {
        client_ip: map_ip(client.ip()),
        listener_ip: map_ip(listener.ip()),
        client_port: port(client.port()),
        listener_port: port(listener.port()),
        channel: port(channel),
        _pad: [0; 2],
    }
}

pub(super) fn peer_key(relay: SocketAddr, peer: SocketAddr) -> PeerKey {
    PeerKey {
        relay_ip: map_ip(relay.ip()),
        peer_ip: map_ip(peer.ip()),
        relay_port: port(relay.port()),
        peer_port: port(peer.port()),
    }
}
