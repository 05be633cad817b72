//! CreatePermission and ChannelBind.

use std::net::{IpAddr, SocketAddr};

use super::harness::*;
use crate::server::{Command, Event};
use crate::stun::{ChannelNumber, Message, Method, XorPeerAddress};

#[test]
fn create_permission_installs_each_peer_ip_once() {
    let mut h = H::new();
    h.allocate(udp(1));
    h.commands();
    let r = h.permit(
        udp(1),
        &Cred::alice(),
        &[peer(1, 1000), peer(1, 2000), peer(2, 1)],
    );
    assert_eq!(code(&r), None, "{}", describe(&r));
    Message::parse(&r)
        .unwrap()
        .verify_integrity(Cred::alice().key().as_bytes())
        .unwrap();
    let cmds = h.commands();
    let peers: Vec<IpAddr> = cmds
        .iter()
        .map(|c| match c {
            Command::PermissionCreated { peer, relay, .. } => {
                assert_eq!(relay.ip(), IpAddr::from(RELAY4_BIND));
                *peer
            }
            c => panic!("{c:?}"),
        })
        .collect();
    assert_eq!(peers, vec![peer(1, 0).ip(), peer(2, 0).ip()]);
    // Refreshing an existing permission emits nothing.
    h.permit(udp(1), &Cred::alice(), &[peer(1, 3000)]);
    assert!(h.commands().is_empty());
    let perms: Vec<_> = h
        .server
        .allocation(&udp(1))
        .unwrap()
        .permissions()
        .collect();
    assert_eq!(perms.len(), 2);
}

#[test]
fn denied_peer_is_403_and_nothing_is_installed() {
    let mut h = H::new();
    h.allocate(udp(1));
    h.commands();
    h.events();
    let private: SocketAddr = ([10, 1, 2, 3], 80).into();
    let r = h.permit(udp(1), &Cred::alice(), &[peer(1, 1), private]);
    assert_eq!(code(&r), Some(403));
    assert!(h.commands().is_empty());
    let evs = h.events();
    let denied = evs.iter().find_map(|e| match e {
        Event::PeerDenied {
            peer, reason, user, ..
        } => Some((*peer, reason.to_string(), user.clone())),
        _ => None,
    });
    let (p, why, user) = denied.expect("PeerDenied event");
    assert_eq!(p, private);
    assert!(
        why.contains("10.0.0.0/8") || why.contains("10/8") || !why.is_empty(),
        "{why}"
    );
    assert_eq!(&*user, "alice");
    // Metadata service too.
    let r = h.permit(udp(1), &Cred::alice(), &[([169, 254, 169, 254], 80).into()]);
    assert_eq!(code(&r), Some(403));
    let r = h.bind(udp(1), &Cred::alice(), 0x4000, private);
    assert_eq!(code(&r), Some(403));
}

#[test]
fn peer_family_mismatch_is_443_and_missing_peer_400() {
    let mut h = H::new();
    h.allocate(udp(1));
    let p6: SocketAddr = "[2001:db8:1::1]:9".parse().unwrap();
    assert_eq!(code(&h.permit(udp(1), &Cred::alice(), &[p6])), Some(443));
    assert_eq!(code(&h.bind(udp(1), &Cred::alice(), 0x4000, p6)), Some(443));
    assert_eq!(code(&h.permit(udp(1), &Cred::alice(), &[])), Some(400));
}

#[test]
fn requests_without_an_allocation_are_437() {
    let mut h = H::new();
    assert_eq!(
        code(&h.permit(udp(1), &Cred::alice(), &[peer(1, 1)])),
        Some(437)
    );
    assert_eq!(
        code(&h.bind(udp(1), &Cred::alice(), 0x4000, peer(1, 1))),
        Some(437)
    );
    assert_eq!(code(&h.refresh(udp(1), &Cred::alice(), None)), Some(437));
}

#[test]
fn too_many_permissions_is_508() {
    let mut h = H::with(|c| c.max_permissions = 2);
    h.allocate(udp(1));
    assert_eq!(
        code(&h.permit(udp(1), &Cred::alice(), &[peer(1, 1), peer(2, 1)])),
        None
    );
    assert_eq!(
        code(&h.permit(udp(1), &Cred::alice(), &[peer(3, 1)])),
        Some(508)
    );
    assert_eq!(code(&h.permit(udp(1), &Cred::alice(), &[peer(2, 1)])), None);
}

#[test]
fn channel_bind_binds_and_installs_the_permission() {
    let mut h = H::new();
    h.allocate(udp(1));
    h.commands();
    let r = h.bind(udp(1), &Cred::alice(), 0x4001, peer(1, 5000));
    assert_eq!(code(&r), None, "{}", describe(&r));
    let cmds = h.commands();
    assert!(matches!(&cmds[..], [
        Command::PermissionCreated { peer: p, .. },
        Command::ChannelBound { peer: cp, channel: 0x4001, .. },
    ] if *p == peer(1, 0).ip() && *cp == peer(1, 5000)));
    // Rebinding the same pair refreshes silently.
    assert_eq!(
        code(&h.bind(udp(1), &Cred::alice(), 0x4001, peer(1, 5000))),
        None
    );
    assert!(h.commands().is_empty());
}

#[test]
fn channel_bind_errors() {
    let mut h = H::new();
    h.allocate(udp(1));
    for bad in [0x3FFF, 0x8000, 0x0000, 0xFFFF] {
        assert_eq!(
            code(&h.bind(udp(1), &Cred::alice(), bad, peer(1, 1))),
            Some(400),
            "{bad:#x}"
        );
    }
    assert_eq!(
        code(&h.bind(udp(1), &Cred::alice(), 0x4000, peer(1, 1))),
        None
    );
    // Channel taken by another peer.
    assert_eq!(
        code(&h.bind(udp(1), &Cred::alice(), 0x4000, peer(1, 2))),
        Some(400)
    );
    // Peer already on another channel.
    assert_eq!(
        code(&h.bind(udp(1), &Cred::alice(), 0x4001, peer(1, 1))),
        Some(400)
    );
    // Missing attributes.
    let r = h
        .request(udp(1), Method::CHANNEL_BIND, &Cred::alice(), |w| {
            w.attr(&ChannelNumber(0x4002)).unwrap();
        })
        .1;
    assert_eq!(code(&r), Some(400));
    let r = h
        .request(udp(1), Method::CHANNEL_BIND, &Cred::alice(), |w| {
            w.attr(&XorPeerAddress(peer(1, 3))).unwrap();
        })
        .1;
    assert_eq!(code(&r), Some(400));
    let channels: Vec<_> = h.server.allocation(&udp(1)).unwrap().channels().collect();
    assert_eq!(channels.len(), 1);
}

#[test]
fn too_many_channels_is_508() {
    let mut h = H::with(|c| c.max_channels = 1);
    h.allocate(udp(1));
    assert_eq!(
        code(&h.bind(udp(1), &Cred::alice(), 0x4000, peer(1, 1))),
        None
    );
    assert_eq!(
        code(&h.bind(udp(1), &Cred::alice(), 0x4001, peer(1, 2))),
        Some(508)
    );
}

#[test]
fn policy_reload_revokes_permissions_and_channels() {
    let mut h = H::new();
    h.allocate(udp(1));
    h.bind(udp(1), &Cred::alice(), 0x4000, peer(1, 1));
    h.permit(udp(1), &Cred::alice(), &[peer(2, 1)]);
    h.commands();
    let deny: ipnet::IpNet = "198.51.100.1/32".parse().unwrap();
    let own = vec![IpAddr::from(RELAY4_BIND)];
    h.server
        .set_policy(crate::policy::PeerPolicy::new(vec![], vec![deny], own));
    let cmds = h.commands();
    assert!(matches!(&cmds[..], [
        Command::ChannelUnbound { channel: 0x4000, .. },
        Command::PermissionRemoved { peer: p, .. },
    ] if *p == peer(1, 0).ip()));
    let info = h.server.allocation(&udp(1)).unwrap();
    assert_eq!(info.permissions().count(), 1);
    assert_eq!(info.channels().count(), 0);
    assert_eq!(
        h.peer(h.relay_bind(udp(1)), peer(1, 1), b"x"),
        Out::Drop(crate::server::DropReason::NoPermission)
    );
}

/// ChannelBind names the peer's port: a relay address outside the relay port range is a
/// service of the relay host, refused with 403 (not 200 and then silence). CreatePermission
/// has no port and stays allowed for relay addresses (hairpin).
#[test]
fn channel_bind_to_a_relay_host_port_is_403_unless_exactly_allow_listed() {
    let mut h = H::new();
    h.allocate(udp(1));
    h.commands();
    h.events();
    let service: SocketAddr = (RELAY4_PUBLIC, 3478).into();
    let r = h.permit(udp(1), &Cred::alice(), &[service]);
    assert_eq!(code(&r), None, "{}", describe(&r));
    let r = h.bind(udp(1), &Cred::alice(), 0x4000, service);
    assert_eq!(code(&r), Some(403), "{}", describe(&r));
    let denied = h.events().into_iter().find_map(|e| match e {
        Event::PeerDenied { peer, reason, .. } => Some((peer, reason.to_string())),
        _ => None,
    });
    let (p, why) = denied.expect("PeerDenied event");
    assert_eq!(p, service);
    assert!(why.contains("relay host port"), "{why}");
    assert!(
        h.server
            .allocation(&udp(1))
            .unwrap()
            .channels()
            .next()
            .is_none()
    );
    // Inside the relay range it is another allocation: bound as before.
    let other: SocketAddr = (RELAY4_PUBLIC, 24001).into();
    assert_eq!(code(&h.bind(udp(1), &Cred::alice(), 0x4001, other)), None);

    // Only a single-host allow entry opens the relay host's own ports.
    let own: Vec<IpAddr> = vec![RELAY4_BIND.into(), RELAY4_PUBLIC.into()];
    let broad = vec!["203.0.113.0/24".parse().unwrap()];
    h.server
        .set_policy(crate::policy::PeerPolicy::new(broad, vec![], own.clone()));
    assert_eq!(
        code(&h.bind(udp(1), &Cred::alice(), 0x4000, service)),
        Some(403)
    );
    let exact = vec!["203.0.113.5/32".parse().unwrap()];
    h.server
        .set_policy(crate::policy::PeerPolicy::new(exact, vec![], own));
    assert_eq!(code(&h.bind(udp(1), &Cred::alice(), 0x4000, service)), None);
}

/// A listener address of the relay host inside a broad allow entry is refused (a TURN
/// loop through the relay's own listener), unless allow-listed as a single host.
#[test]
fn relay_host_listener_address_is_refused_despite_a_broad_allow_entry() {
    let mut h = H::new();
    let own: Vec<IpAddr> = vec![RELAY4_BIND.into(), RELAY4_PUBLIC.into()];
    let internal: IpAddr = [192, 0, 2, 50].into();
    let policy = |allow: &str| {
        crate::policy::PeerPolicy::new(vec![allow.parse().unwrap()], vec![], own.clone())
            .with_host_addresses([internal])
    };
    h.server.set_policy(policy("192.0.2.0/24"));
    h.allocate(udp(1));
    h.events();
    let r = h.permit(udp(1), &Cred::alice(), &[(internal, 3478).into()]);
    assert_eq!(code(&r), Some(403), "{}", describe(&r));
    let why = h.events().into_iter().find_map(|e| match e {
        Event::PeerDenied { reason, .. } => Some(reason.to_string()),
        _ => None,
    });
    assert!(why.expect("PeerDenied").contains("relay host address"));
    // Its neighbours stay allowed.
    assert_eq!(
        code(&h.permit(udp(1), &Cred::alice(), &[([192, 0, 2, 10], 5000).into()])),
        None
    );
    // Named as a single host, the operator means it.
    h.server.set_policy(policy("192.0.2.50/32"));
    let r = h.permit(udp(1), &Cred::alice(), &[(internal, 3478).into()]);
    assert_eq!(code(&r), None, "{}", describe(&r));
}
