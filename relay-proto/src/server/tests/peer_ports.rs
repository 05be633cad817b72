//! The peer policy by port, protocol and credential kind, and the relay host's locally
//! routed prefixes: what CreatePermission, ChannelBind and the data path let through, what
//! the data paths are told (`any_port`), and what a new policy or prefix list takes away.

use std::net::{IpAddr, SocketAddr};

use super::harness::*;
use crate::auth::rest;
use crate::policy::{AllowRule, PeerPolicy};
use crate::server::{Command, DropReason, Event};

const MEDIA: [u8; 4] = [192, 0, 2, 10];

fn media(port: u16) -> SocketAddr {
    (MEDIA, port).into()
}

fn rules(v: &[&str]) -> Vec<AllowRule> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

fn own() -> Vec<IpAddr> {
    vec![RELAY4_BIND.into(), RELAY4_PUBLIC.into()]
}

/// The media server whole for static users, its RTP range over UDP for REST users.
fn rest_policy() -> PeerPolicy {
    PeerPolicy::new(vec![], vec![], own())
        .with_allow(rules(&["192.0.2.10/32"]))
        .with_rest_allow(Some(rules(&["192.0.2.10/32 udp 10000-20000"])))
}

/// A browser's TURN REST credential (valid for an hour at the harness's t0).
fn browser() -> Cred {
    let user = format!("{}:browser", UNIX_T0 + 3600);
    let password = rest::password(SECRET, &user);
    Cred::new(&user, password.as_str())
}

fn allocate_as(h: &mut H, from: crate::server::FiveTuple, cred: &Cred) {
    let r = h.allocate_with(from, cred, |_| {});
    assert_eq!(code(&r), None, "{}", describe(&r));
}

/// `any_port` of every `PermissionCreated` among `cmds`.
fn any_port(cmds: &[Command]) -> Vec<bool> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::PermissionCreated { any_port, .. } => Some(*any_port),
            _ => None,
        })
        .collect()
}

#[test]
fn rest_users_reach_only_the_ports_of_their_list() {
    let mut h = H::new();
    h.server.set_policy(rest_policy());
    let b = browser();
    allocate_as(&mut h, udp(1), &b);
    h.commands();
    h.events();

    // A permission for the IP: some port of it is allowed; the kernel must not take its
    // Send indications (they may name any port).
    assert_eq!(code(&h.permit(udp(1), &b, &[media(15000)])), None);
    assert_eq!(any_port(&h.commands()), [false]);
    assert_eq!(code(&h.bind(udp(1), &b, 0x4000, media(15000))), None);
    let r = h.bind(udp(1), &b, 0x4001, media(22));
    assert_eq!(code(&r), Some(403), "{}", describe(&r));
    let why = h.events().into_iter().find_map(|e| match e {
        Event::PeerDenied { peer, reason, .. } => Some((peer, reason.to_string())),
        _ => None,
    });
    let (peer, why) = why.expect("PeerDenied");
    assert_eq!(peer, media(22));
    for part in [
        "port 22",
        "[peers.rest] allow",
        "192.0.2.10/32 udp 10000-20000",
    ] {
        assert!(why.contains(part), "{why}");
    }

    // Send indications: the allowed port goes out, port 22 is dropped and counted.
    assert!(matches!(
        h.send(udp(1), media(15000), b"rtp"),
        Out::ToPeer { .. }
    ));
    assert_eq!(h.send(udp(1), media(22), b"ssh"), Out::Nothing);
    assert_eq!(h.server.drops().get(DropReason::PeerPortDenied), 1);
    // The peer's data comes back from any of its ports.
    let relay = h.relay_bind(udp(1));
    assert!(matches!(
        h.peer(relay, media(22), b"banner"),
        Out::ToClient { .. }
    ));

    // The static user reaches every port; the kernel may take its Send indications.
    allocate_as(&mut h, udp(2), &Cred::alice());
    h.commands();
    assert_eq!(
        code(&h.bind(udp(2), &Cred::alice(), 0x4001, media(22))),
        None
    );
    assert_eq!(any_port(&h.commands()), [true]);
    assert!(matches!(
        h.send(udp(2), media(22), b"admin"),
        Out::ToPeer { .. }
    ));
}

/// A REST list with no entry naming an address leaves it to the default, and a UDP-only
/// entry refuses the address to TCP allocations outright.
#[test]
fn rest_users_without_a_port_of_the_protocol_get_no_permission() {
    let mut h = H::new();
    h.server.set_policy(
        PeerPolicy::new(vec![], vec![], own())
            .with_rest_allow(Some(rules(&["192.0.2.10/32 tcp 443"]))),
    );
    let b = browser();
    allocate_as(&mut h, udp(1), &b);
    let r = h.permit(udp(1), &b, &[media(443)]);
    assert_eq!(code(&r), Some(403), "{}", describe(&r));
    assert_eq!(
        code(&h.permit(udp(1), &Cred::alice(), &[media(443)])),
        Some(441)
    );
    allocate_as(&mut h, udp(2), &Cred::alice());
    assert_eq!(code(&h.permit(udp(2), &Cred::alice(), &[media(443)])), None);
}

/// A reload that narrows the media server to its RTP range: the channel to port 22 goes,
/// the permission stays but is announced again without "every port", and Send
/// indications to port 22 are dropped from then on.
#[test]
fn reload_narrows_existing_permissions_and_channels() {
    let mut h = H::new();
    h.server.set_policy(rest_policy());
    allocate_as(&mut h, udp(1), &Cred::alice());
    assert_eq!(
        code(&h.bind(udp(1), &Cred::alice(), 0x4000, media(15000))),
        None
    );
    assert_eq!(
        code(&h.bind(udp(1), &Cred::alice(), 0x4001, media(22))),
        None
    );
    h.commands();
    h.server.set_policy(
        PeerPolicy::new(vec![], vec![], own())
            .with_allow(rules(&["192.0.2.10/32 udp 10000-20000"])),
    );
    let cmds = h.commands();
    assert!(
        matches!(
            &cmds[..],
            [
                Command::PermissionRemoved { .. },
                Command::PermissionCreated {
                    any_port: false,
                    ..
                },
                Command::ChannelUnbound {
                    channel: 0x4001,
                    ..
                },
            ]
        ),
        "{cmds:?}"
    );
    let a = h.server.allocation(&udp(1)).unwrap();
    assert_eq!(a.permissions().count(), 1);
    let channels: Vec<u16> = a.channels().map(|c| c.number).collect();
    assert_eq!(channels, [0x4000]);
    assert_eq!(h.send(udp(1), media(22), b"ssh"), Out::Nothing);
    assert!(matches!(
        h.send(udp(1), media(15000), b"rtp"),
        Out::ToPeer { .. }
    ));
    // Widened again: announced with every port.
    h.server.set_policy(rest_policy());
    assert_eq!(any_port(&h.commands()), [true]);
}

/// An address the relay host takes (a secondary address, seen in its local routes) is
/// refused from then on, and permissions for it are revoked; relay addresses stay
/// hairpins; a reload keeps the prefixes.
#[test]
fn locally_routed_prefixes_refuse_and_revoke() {
    let mut h = H::new();
    let secondary: SocketAddr = ([192, 0, 2, 77], 22).into();
    allocate_as(&mut h, udp(1), &Cred::alice());
    assert_eq!(code(&h.permit(udp(1), &Cred::alice(), &[secondary])), None);
    h.commands();
    h.server.set_local_prefixes([
        "192.0.2.77/32".parse().unwrap(),
        "10.0.0.5/32".parse().unwrap(),
    ]);
    assert!(
        matches!(&h.commands()[..], [Command::PermissionRemoved { peer, .. }] if *peer == secondary.ip()),
    );
    h.events();
    let r = h.permit(udp(1), &Cred::alice(), &[secondary]);
    assert_eq!(code(&r), Some(403), "{}", describe(&r));
    let why = h.events().into_iter().find_map(|e| match e {
        Event::PeerDenied { reason, .. } => Some(reason.to_string()),
        _ => None,
    });
    assert!(
        why.expect("PeerDenied")
            .contains("relay host address 192.0.2.77")
    );
    let other: SocketAddr = (RELAY4_PUBLIC, 24001).into();
    assert_eq!(code(&h.permit(udp(1), &Cred::alice(), &[other])), None);
    assert_eq!(
        code(&h.permit(udp(1), &Cred::alice(), &[media(5000)])),
        None
    );

    h.server.set_policy(PeerPolicy::new(vec![], vec![], own()));
    assert_eq!(
        code(&h.permit(udp(1), &Cred::alice(), &[secondary])),
        Some(403)
    );
}

/// RFC 6062 Connect checks the exact port for the TCP protocol (no port scan through 447
/// vs success); a reload that takes the port away closes the connection.
#[test]
fn connect_checks_the_port_and_reload_closes_connections_to_a_refused_port() {
    use crate::stun::{Method, RequestedTransport, XorPeerAddress};
    let mut h = H::new();
    h.server.enable_tcp_relays(true);
    h.server.set_relay_tcp(true);
    h.server.set_policy(
        PeerPolicy::new(vec![], vec![], own())
            .with_allow(rules(&["192.0.2.10/32 tcp 443-444", "192.0.2.10/32 udp"])),
    );
    let r = h
        .ask(tcp(1), Method::ALLOCATE, &Cred::alice(), |w| {
            w.attr(&RequestedTransport::TCP).unwrap();
        })
        .1
        .reply();
    assert_eq!(code(&r), None, "{}", describe(&r));
    h.commands();
    h.events();
    let connect = |h: &mut H, to: SocketAddr| {
        h.ask(tcp(1), Method::CONNECT, &Cred::alice(), |w| {
            w.attr(&XorPeerAddress(to)).unwrap();
        })
        .1
    };
    let refused = connect(&mut h, media(22)).reply();
    assert_eq!(code(&refused), Some(403), "{}", describe(&refused));
    assert!(h.commands().is_empty(), "nothing dialled");
    assert!(
        h.events()
            .iter()
            .any(|e| matches!(e, Event::PeerDenied { peer, .. } if *peer == media(22)))
    );
    let mut conns = Vec::new();
    for port in [443, 444] {
        assert_eq!(connect(&mut h, media(port)), Out::Nothing);
        let conn = h
            .commands()
            .into_iter()
            .find_map(|c| match c {
                Command::ConnectPeer { conn, .. } => Some(conn),
                _ => None,
            })
            .expect("ConnectPeer");
        assert!(h.server.peer_connected(h.now, conn, Ok(())));
        conns.push(conn);
    }
    h.commands();
    h.server.set_policy(
        PeerPolicy::new(vec![], vec![], own()).with_allow(rules(&["192.0.2.10/32 tcp 444"])),
    );
    let closed: Vec<_> = h
        .commands()
        .into_iter()
        .filter_map(|c| match c {
            Command::CloseConnection { conn, .. } => Some(conn),
            _ => None,
        })
        .collect();
    assert_eq!(closed, [conns[0]]);
    assert_eq!(h.server.tcp_connection_count(), 1);
}
