//! RFC 6062 TCP allocations: Allocate, Connect, ConnectionAttempt, ConnectionBind, and the
//! data path's reports, driven as the TCP data path would.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};

use super::harness::*;
use crate::policy::PeerPolicy;
use crate::server::{
    BIND_TIMEOUT, CONNECT_TIMEOUT, Command, ConnectionEnd, ConnectionId, Direction, DropReason,
    Event, FiveTuple, MAX_CONNECTIONS_PER_ALLOCATION, RelayProtocol, Transport,
};
use crate::stun::{
    Class, ConnectionId as ConnectionIdAttr, DontFragment, ErrorCode, EvenPort, Message,
    MessageWriter, Method, RequestedTransport, XorPeerAddress,
};

/// A server offering TCP relays, whose data path carries them.
fn tcp_h() -> H {
    let mut h = H::with(|c| c.relay_tcp = true);
    h.server.enable_tcp_relays(true);
    h
}

fn allocate_tcp_with(
    h: &mut H,
    from: FiveTuple,
    f: impl FnOnce(&mut MessageWriter<'_>),
) -> Vec<u8> {
    h.ask(from, Method::ALLOCATE, &Cred::alice(), |w| {
        w.attr(&RequestedTransport::TCP).unwrap();
        f(w);
    })
    .1
    .reply()
}

/// A TCP allocation for alice on control connection `from`; returns its relayed address.
fn allocate_tcp(h: &mut H, from: FiveTuple) -> SocketAddr {
    let r = allocate_tcp_with(h, from, |_| {});
    assert_eq!(code(&r), None, "{}", describe(&r));
    let relayed = relayed(&r)[0];
    h.commands();
    h.events();
    relayed
}

/// Sends Connect; returns the request (its transaction id answers later) and the output.
fn connect(h: &mut H, from: FiveTuple, to: SocketAddr) -> (Vec<u8>, Out) {
    h.ask(from, Method::CONNECT, &Cred::alice(), |w| {
        w.attr(&XorPeerAddress(to)).unwrap();
    })
}

fn connection_bind(h: &mut H, data: FiveTuple, cred: &Cred, conn: Option<u32>) -> Vec<u8> {
    h.ask(data, Method::CONNECTION_BIND, cred, |w| {
        if let Some(c) = conn {
            w.attr(&ConnectionIdAttr(c)).unwrap();
        }
    })
    .1
    .reply()
}

/// The one ConnectPeer among `cmds`.
fn connect_peer(cmds: &[Command]) -> (ConnectionId, SocketAddr, SocketAddr) {
    match cmds {
        [
            Command::ConnectPeer {
                conn, relay, peer, ..
            },
        ] => (*conn, *relay, *peer),
        other => panic!("{other:?}"),
    }
}

/// Messages for `client`'s control connection among `cmds`, in order.
fn sent_to(cmds: &[Command], to: FiveTuple) -> Vec<Vec<u8>> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::SendToClient {
                client, message, ..
            } if *client == to => Some(message.to_vec()),
            _ => None,
        })
        .collect()
}

fn closed(cmds: &[Command]) -> Vec<ConnectionId> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::CloseConnection { conn, .. } => Some(*conn),
            _ => None,
        })
        .collect()
}

fn close_reasons(evs: &[Event]) -> Vec<(ConnectionId, ConnectionEnd)> {
    evs.iter()
        .filter_map(|e| match e {
            Event::PeerConnectionClosed { conn, reason, .. } => Some((*conn, *reason)),
            _ => None,
        })
        .collect()
}

/// Connect to `to` that the data path completes: returns the connection id.
fn connected(h: &mut H, from: FiveTuple, to: SocketAddr) -> ConnectionId {
    let (_, out) = connect(h, from, to);
    assert_eq!(out, Out::Nothing);
    let (conn, ..) = connect_peer(&h.commands());
    assert!(h.server.peer_connected(h.now, conn, Ok(())));
    h.commands();
    conn
}

#[test]
fn tcp_allocation_needs_a_stream_client_and_tells_the_data_path_to_listen() {
    let mut h = tcp_h();
    // RFC 8656 over UDP: TCP relaying is not offered (442, as before TCP support).
    let r = h
        .ask(udp(1), Method::ALLOCATE, &Cred::alice(), |w| {
            w.attr(&RequestedTransport::TCP).unwrap();
        })
        .1
        .reply();
    assert_eq!(code(&r), Some(442));
    assert!(h.commands().is_empty());

    let r = allocate_tcp_with(&mut h, tcp(1), |_| {});
    assert_eq!(code(&r), None, "{}", describe(&r));
    let rel = relayed(&r)[0];
    let cmds = h.commands();
    let [
        Command::AllocationCreated {
            id,
            client,
            relay,
            public,
            protocol,
            ..
        },
    ] = &cmds[..]
    else {
        panic!("{cmds:?}");
    };
    assert_eq!(*protocol, RelayProtocol::Tcp);
    assert_eq!((*client, *relay, *public), (tcp(1), bind_of(rel), rel));
    assert_eq!(h.server.relay_protocol(*id), Some(RelayProtocol::Tcp));
    assert_eq!(
        h.server.ports_in_use(),
        (1, 0),
        "the port comes from the shared pool"
    );

    // Refresh works as for UDP; deleting tells the data path what to close.
    let r = h.refresh(tcp(1), &Cred::alice(), Some(1200));
    assert_eq!(lifetime(&r), 1200);
    h.refresh(tcp(1), &Cred::alice(), Some(0));
    let cmds = h.commands();
    assert!(
        matches!(&cmds[..], [Command::AllocationRemoved { protocol: RelayProtocol::Tcp, relay, .. }] if *relay == bind_of(rel)),
        "{cmds:?}"
    );
    assert_eq!(h.server.ports_in_use(), (0, 0));
}

#[test]
fn tcp_relays_wait_for_a_data_path_that_carries_them() {
    let mut h = H::with(|c| c.relay_tcp = true);
    assert!(!h.server.tcp_relays_enabled());
    let r = allocate_tcp_with(&mut h, tcp(1), |_| {});
    assert_eq!(code(&r), Some(442));
    assert!(h.commands().is_empty());
    h.server.enable_tcp_relays(true);
    let r = allocate_tcp_with(&mut h, tcp(1), |_| {});
    assert_eq!(code(&r), None, "{}", describe(&r));
}

#[test]
fn udp_only_attributes_are_400_on_a_tcp_allocation() {
    let mut h = tcp_h();
    let cases: [fn(&mut MessageWriter<'_>); 3] = [
        |w| {
            w.attr(&DontFragment).unwrap();
        },
        |w| {
            w.attr(&EvenPort(false)).unwrap();
        },
        |w| {
            w.attr(&crate::stun::ReservationToken([1; 8])).unwrap();
        },
    ];
    for f in cases {
        let r = allocate_tcp_with(&mut h, tcp(1), f);
        assert_eq!(code(&r), Some(400), "{}", describe(&r));
    }
    assert!(h.commands().is_empty());
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn connect_answers_once_the_peer_is_connected_then_connection_bind_splices() {
    let mut h = tcp_h();
    let rel = allocate_tcp(&mut h, tcp(1));
    let (req, out) = connect(&mut h, tcp(1), peer(1, 8080));
    assert_eq!(out, Out::Nothing, "the response waits for the data path");
    let (conn, relay, to) = connect_peer(&h.commands());
    assert_eq!((relay, to), (bind_of(rel), peer(1, 8080)));
    assert_eq!(h.server.tcp_connection_count(), 1);

    assert!(h.server.peer_connected(h.now, conn, Ok(())));
    let cmds = h.commands();
    let sent = sent_to(&cmds, tcp(1));
    assert_eq!(sent.len(), 1, "{cmds:?}");
    let m = Message::parse(&sent[0]).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Success, Method::CONNECT));
    assert_eq!(
        m.transaction_id(),
        Message::parse(&req).unwrap().transaction_id()
    );
    assert_eq!(
        m.attr::<ConnectionIdAttr>(),
        Some(Ok(ConnectionIdAttr(conn.as_u32())))
    );
    m.verify_integrity(Cred::alice().key().as_bytes()).unwrap();
    assert!(m.has_fingerprint());
    // The peer may now connect in, as after CreatePermission.
    assert!(
        cmds.iter().any(
            |c| matches!(c, Command::PermissionCreated { peer: p, .. } if *p == peer(1, 0).ip())
        )
    );

    // ConnectionBind on a new connection, same credentials.
    let data = tcp(2);
    let r = connection_bind(&mut h, data, &Cred::alice(), Some(conn.as_u32()));
    assert_eq!(code(&r), None, "{}", describe(&r));
    let m = Message::parse(&r).unwrap();
    assert_eq!(m.method(), Method::CONNECTION_BIND);
    m.verify_integrity(Cred::alice().key().as_bytes()).unwrap();
    let cmds = h.commands();
    assert!(
        matches!(&cmds[..], [Command::SpliceConnection { conn: c, data: d, .. }] if *c == conn && *d == data),
        "{cmds:?}"
    );
    assert!(h.events().iter().any(|e| matches!(
        e,
        Event::PeerConnectionBound { conn: c, data: d, peer: p, direction: Direction::Outgoing, .. }
            if *c == conn && *d == data && *p == peer(1, 8080)
    )));
    // A spliced data connection takes no STUN: it is not the core's to frame.
    let stray = h.build(Class::Request, Method::BINDING, [1; 12], None, |_| {});
    assert_eq!(h.client(data, &stray), Out::Nothing);
    assert_eq!(h.server.drops().get(DropReason::Unexpected), 1);
    // Spliced: no deadline left; binding it again is refused.
    h.advance(BIND_TIMEOUT * 2);
    assert!(h.commands().is_empty());
    let r = connection_bind(&mut h, tcp(3), &Cred::alice(), Some(conn.as_u32()));
    assert_eq!(code(&r), Some(400));

    // The data connection closing ends the pair.
    h.server.client_closed(h.now, data);
    assert_eq!(closed(&h.commands()), vec![conn]);
    assert_eq!(
        close_reasons(&h.events()),
        vec![(conn, ConnectionEnd::Closed)]
    );
    assert_eq!(h.server.tcp_connection_count(), 0);
    assert!(
        h.server.allocation(&tcp(1)).is_some(),
        "the allocation stays"
    );
}

#[test]
fn a_peer_connecting_in_is_announced_with_connection_attempt_and_bound() {
    let mut h = tcp_h();
    let rel = allocate_tcp(&mut h, tcp(1));
    h.permit(tcp(1), &Cred::alice(), &[peer(1, 0)]);
    h.commands();
    let from = peer(1, 50_000);
    let conn = h
        .server
        .peer_connection_incoming(h.now, bind_of(rel), from)
        .expect("permitted peer");
    let cmds = h.commands();
    let sent = sent_to(&cmds, tcp(1));
    assert_eq!(sent.len(), 1, "{cmds:?}");
    let m = Message::parse(&sent[0]).unwrap();
    assert_eq!(
        (m.class(), m.method()),
        (Class::Indication, Method::CONNECTION_ATTEMPT)
    );
    assert_eq!(m.attr::<XorPeerAddress>(), Some(Ok(XorPeerAddress(from))));
    assert_eq!(
        m.attr::<ConnectionIdAttr>(),
        Some(Ok(ConnectionIdAttr(conn.as_u32())))
    );

    let r = connection_bind(&mut h, tcp(2), &Cred::alice(), Some(conn.as_u32()));
    assert_eq!(code(&r), None, "{}", describe(&r));
    assert!(matches!(
        &h.commands()[..],
        [Command::SpliceConnection { conn: c, .. }] if *c == conn
    ));
    assert!(h.events().iter().any(|e| matches!(
        e,
        Event::PeerConnectionBound {
            direction: Direction::Incoming,
            ..
        }
    )));
    // The peer side closing ends it too.
    h.server.connection_closed(h.now, conn);
    assert_eq!(closed(&h.commands()), vec![conn]);
    h.server.connection_closed(h.now, conn);
    assert!(h.commands().is_empty(), "reported twice, closed once");
}

#[test]
fn a_peer_without_permission_or_allocation_is_refused() {
    let mut h = tcp_h();
    let rel = allocate_tcp(&mut h, tcp(1));
    let got = h
        .server
        .peer_connection_incoming(h.now, bind_of(rel), peer(1, 5));
    assert_eq!(got, None);
    assert_eq!(h.server.drops().get(DropReason::NoPermission), 1);
    // A UDP allocation's address, or none at all.
    let udp_rel = h.allocate(udp(1));
    h.permit(udp(1), &Cred::alice(), &[peer(1, 0)]);
    for relay in [bind_of(udp_rel), SocketAddr::new(RELAY4_BIND.into(), 1)] {
        let got = h.server.peer_connection_incoming(h.now, relay, peer(1, 5));
        assert_eq!(got, None);
    }
    assert_eq!(h.server.drops().get(DropReason::NoAllocation), 2);
    assert_eq!(h.server.tcp_connection_count(), 0);
    assert!(sent_to(&h.commands(), tcp(1)).is_empty());
}

#[test]
fn a_failed_connect_is_447() {
    let mut h = tcp_h();
    allocate_tcp(&mut h, tcp(1));
    let (req, _) = connect(&mut h, tcp(1), peer(1, 9));
    let (conn, ..) = connect_peer(&h.commands());
    assert!(
        !h.server
            .peer_connected(h.now, conn, Err(ErrorKind::ConnectionRefused))
    );
    let cmds = h.commands();
    let sent = sent_to(&cmds, tcp(1));
    assert_eq!(sent.len(), 1);
    assert_eq!(code(&sent[0]), Some(447));
    let m = Message::parse(&sent[0]).unwrap();
    assert_eq!(
        m.transaction_id(),
        Message::parse(&req).unwrap().transaction_id()
    );
    assert_eq!(
        m.attr::<ErrorCode>().unwrap().unwrap().reason,
        "Connection Timeout or Failure"
    );
    m.verify_integrity(Cred::alice().key().as_bytes()).unwrap();
    assert_eq!(closed(&cmds), vec![conn]);
    assert_eq!(
        close_reasons(&h.events()),
        vec![(
            conn,
            ConnectionEnd::ConnectFailed(ErrorKind::ConnectionRefused)
        )]
    );
    assert_eq!(h.server.error_responses().get(447), 1);
    // No permission was installed; the same peer may be tried again.
    assert!(
        h.server
            .allocation(&tcp(1))
            .unwrap()
            .permissions()
            .next()
            .is_none()
    );
    connect(&mut h, tcp(1), peer(1, 9));
    connect_peer(&h.commands());
}

#[test]
fn a_connect_that_hangs_gets_447_after_30_seconds() {
    let mut h = tcp_h();
    allocate_tcp(&mut h, tcp(1));
    connect(&mut h, tcp(1), peer(1, 9));
    let (conn, ..) = connect_peer(&h.commands());
    assert_eq!(h.server.poll_timeout(), Some(h.now + CONNECT_TIMEOUT));
    h.advance(CONNECT_TIMEOUT - ms(1));
    assert!(h.commands().is_empty());
    h.advance(ms(1));
    let cmds = h.commands();
    assert_eq!(
        sent_to(&cmds, tcp(1))
            .iter()
            .map(|m| code(m))
            .collect::<Vec<_>>(),
        vec![Some(447)]
    );
    assert_eq!(closed(&cmds), vec![conn]);
    assert_eq!(
        close_reasons(&h.events()),
        vec![(conn, ConnectionEnd::ConnectTimeout)]
    );
    // The data path's late success is refused: it closes the socket.
    assert!(!h.server.peer_connected(h.now, conn, Ok(())));
    assert!(h.commands().is_empty());
}

#[test]
fn an_unbound_connection_closes_after_30_seconds() {
    let mut h = tcp_h();
    allocate_tcp(&mut h, tcp(1));
    let conn = connected(&mut h, tcp(1), peer(1, 80));
    h.events();
    h.advance(BIND_TIMEOUT - ms(1));
    assert!(h.commands().is_empty());
    h.advance(ms(1));
    assert_eq!(closed(&h.commands()), vec![conn]);
    assert_eq!(
        close_reasons(&h.events()),
        vec![(conn, ConnectionEnd::BindTimeout)]
    );
    let r = connection_bind(&mut h, tcp(2), &Cred::alice(), Some(conn.as_u32()));
    assert_eq!(code(&r), Some(400), "{}", describe(&r));
    assert!(h.commands().is_empty());

    // An incoming one the same.
    let rel = h
        .server
        .allocation(&tcp(1))
        .unwrap()
        .relayed()
        .next()
        .unwrap();
    let incoming = h
        .server
        .peer_connection_incoming(h.now, rel.bind, peer(1, 4000))
        .unwrap();
    h.commands();
    h.advance(BIND_TIMEOUT);
    assert_eq!(closed(&h.commands()), vec![incoming]);
}

#[test]
fn a_second_connect_to_the_same_peer_is_446() {
    let mut h = tcp_h();
    allocate_tcp(&mut h, tcp(1));
    connect(&mut h, tcp(1), peer(1, 80));
    let (conn, ..) = connect_peer(&h.commands());
    // While connecting.
    let r = connect(&mut h, tcp(1), peer(1, 80)).1.reply();
    assert_eq!(code(&r), Some(446));
    assert_eq!(
        Message::parse(&r)
            .unwrap()
            .attr::<ErrorCode>()
            .unwrap()
            .unwrap()
            .reason,
        "Connection Already Exists"
    );
    // Pending, then bound.
    h.server.peer_connected(h.now, conn, Ok(()));
    h.commands();
    assert_eq!(
        code(&connect(&mut h, tcp(1), peer(1, 80)).1.reply()),
        Some(446)
    );
    connection_bind(&mut h, tcp(2), &Cred::alice(), Some(conn.as_u32()));
    assert_eq!(
        code(&connect(&mut h, tcp(1), peer(1, 80)).1.reply()),
        Some(446)
    );
    assert!(
        h.commands()
            .iter()
            .all(|c| !matches!(c, Command::ConnectPeer { .. }))
    );
    // Another port of the same host is another connection.
    let (_, out) = connect(&mut h, tcp(1), peer(1, 81));
    assert_eq!(out, Out::Nothing);
    assert_eq!(h.server.error_responses().get(446), 3);
    // Once closed, the peer may be connected again.
    h.server.connection_closed(h.now, conn);
    h.commands();
    assert_eq!(connect(&mut h, tcp(1), peer(1, 80)).1, Out::Nothing);
}

#[test]
fn connection_bind_needs_the_allocation_owner() {
    let mut h = tcp_h();
    allocate_tcp(&mut h, tcp(1));
    let conn = connected(&mut h, tcp(1), peer(1, 80));
    let r = connection_bind(&mut h, tcp(2), &Cred::bob(), Some(conn.as_u32()));
    assert_eq!(code(&r), Some(441), "{}", describe(&r));
    assert!(h.commands().is_empty());
    // Unauthenticated: challenged like any request.
    let txid = h.txid();
    let req = h.build(Class::Request, Method::CONNECTION_BIND, txid, None, |w| {
        w.attr(&ConnectionIdAttr(conn.as_u32())).unwrap();
    });
    assert_eq!(code(&h.client(tcp(3), &req).reply()), Some(401));
    // The owner still can.
    let r = connection_bind(&mut h, tcp(2), &Cred::alice(), Some(conn.as_u32()));
    assert_eq!(code(&r), None, "{}", describe(&r));
}

#[test]
fn connection_bind_errors_are_400() {
    let mut h = tcp_h();
    allocate_tcp(&mut h, tcp(1));
    let conn = connected(&mut h, tcp(1), peer(1, 80));
    let alice = Cred::alice();
    let id = Some(conn.as_u32());
    let over_udp = udp(7);
    let tls = FiveTuple {
        transport: Transport::Tls,
        ..tcp(8)
    };
    for (data, id, what) in [
        (tcp(2), None, "no CONNECTION-ID"),
        (tcp(2), Some(conn.as_u32() + 1), "unknown CONNECTION-ID"),
        (tcp(1), id, "on the control connection"),
        (over_udp, id, "over UDP"),
    ] {
        let r = connection_bind(&mut h, data, &alice, id);
        assert_eq!(code(&r), Some(400), "{what}: {}", describe(&r));
    }
    // A still-connecting connection cannot be bound either.
    connect(&mut h, tcp(1), peer(1, 81));
    let (connecting, ..) = connect_peer(&h.commands());
    let r = connection_bind(&mut h, tcp(2), &alice, Some(connecting.as_u32()));
    assert_eq!(code(&r), Some(400));
    assert!(h.commands().is_empty());
    // TLS data connections are fine; a bound data connection takes no more STUN.
    let r = connection_bind(&mut h, tls, &alice, id);
    assert_eq!(code(&r), None, "{}", describe(&r));
    h.commands();
    h.server.peer_connected(h.now, connecting, Ok(()));
    h.commands();
    let nonce = h.nonce(tcp(2));
    let txid = h.txid();
    let again = h.build(
        Class::Request,
        Method::CONNECTION_BIND,
        txid,
        Some((&alice, &nonce)),
        |w| {
            w.attr(&ConnectionIdAttr(connecting.as_u32())).unwrap();
        },
    );
    assert_eq!(h.client(tls, &again), Out::Nothing);
    assert!(h.commands().is_empty());
    // On a fresh connection it binds.
    assert_eq!(code(&h.client(tcp(2), &again).reply()), None);
}

#[test]
fn connect_is_checked_like_create_permission() {
    let mut h = tcp_h();
    // No allocation, then a UDP allocation.
    assert_eq!(
        code(&connect(&mut h, tcp(1), peer(1, 80)).1.reply()),
        Some(437)
    );
    h.allocate(udp(1));
    assert_eq!(
        code(&connect(&mut h, udp(1), peer(1, 80)).1.reply()),
        Some(400)
    );
    allocate_tcp(&mut h, tcp(1));
    // Denied by the default policy: 403, logged with the reason.
    let private: SocketAddr = ([10, 1, 2, 3], 80).into();
    assert_eq!(code(&connect(&mut h, tcp(1), private).1.reply()), Some(403));
    assert!(
        h.events()
            .iter()
            .any(|e| matches!(e, Event::PeerDenied { peer, .. } if *peer == private))
    );
    // No relayed address of the peer's family.
    let v6: SocketAddr = "[2001:db8::9]:80".parse().unwrap();
    assert_eq!(code(&connect(&mut h, tcp(1), v6).1.reply()), Some(443));
    // Missing peer, or another user.
    let r = h
        .ask(tcp(1), Method::CONNECT, &Cred::alice(), |_| {})
        .1
        .reply();
    assert_eq!(code(&r), Some(400));
    let r = h
        .ask(tcp(1), Method::CONNECT, &Cred::bob(), |w| {
            w.attr(&XorPeerAddress(peer(1, 80))).unwrap();
        })
        .1
        .reply();
    assert_eq!(code(&r), Some(441));
    assert!(h.commands().is_empty());
    assert_eq!(h.server.tcp_connection_count(), 0);
}

#[test]
fn connect_to_another_allocation_of_this_relay_dials_the_bind_address() {
    let mut h = tcp_h();
    let a = allocate_tcp(&mut h, tcp(1));
    let b = allocate_tcp(&mut h, tcp(2));
    assert_eq!(a.ip(), IpAddr::from(RELAY4_PUBLIC));
    connect(&mut h, tcp(1), b);
    let (conn, relay, dial) = connect_peer(&h.commands());
    assert_eq!((relay, dial), (bind_of(a), bind_of(b)));
    // B permitted A's public address; the connection arrives from A's bind address.
    h.permit(tcp(2), &Cred::alice(), &[a]);
    h.commands();
    let incoming = h
        .server
        .peer_connection_incoming(h.now, bind_of(b), bind_of(a))
        .expect("seen as A's public address");
    let sent = sent_to(&h.commands(), tcp(2));
    let m = Message::parse(&sent[0]).unwrap();
    assert_eq!(m.attr::<XorPeerAddress>(), Some(Ok(XorPeerAddress(a))));
    assert_ne!(incoming, conn);
    // Other ports of the relay host are not peers.
    let ssh = SocketAddr::new(RELAY4_PUBLIC.into(), 22);
    assert_eq!(code(&connect(&mut h, tcp(1), ssh).1.reply()), Some(403));
}

#[test]
fn datagram_mechanisms_are_refused_on_a_tcp_allocation() {
    let mut h = tcp_h();
    allocate_tcp(&mut h, tcp(1));
    h.permit(tcp(1), &Cred::alice(), &[peer(1, 0)]);
    h.commands();
    assert_eq!(h.send(tcp(1), peer(1, 80), b"x"), Out::Nothing);
    assert_eq!(h.server.drops().get(DropReason::Unexpected), 1);
    let r = h.bind(tcp(1), &Cred::alice(), 0x4000, peer(1, 80));
    assert_eq!(code(&r), Some(400), "{}", describe(&r));
    assert!(h.commands().is_empty());
}

#[test]
fn the_allocation_ending_closes_its_connections_first_and_answers_pending_connects() {
    let mut h = tcp_h();
    let rel = allocate_tcp(&mut h, tcp(1));
    let bound = connected(&mut h, tcp(1), peer(1, 80));
    connection_bind(&mut h, tcp(2), &Cred::alice(), Some(bound.as_u32()));
    h.commands();
    let pending = connected(&mut h, tcp(1), peer(1, 81));
    connect(&mut h, tcp(1), peer(1, 82));
    let (connecting, ..) = connect_peer(&h.commands());
    h.events();

    h.server.client_closed(h.now, tcp(1));
    let cmds = h.commands();
    let mut ids = closed(&cmds);
    ids.sort();
    let mut want = vec![bound, pending, connecting];
    want.sort();
    assert_eq!(ids, want);
    let last_close = cmds
        .iter()
        .rposition(|c| matches!(c, Command::CloseConnection { .. }))
        .unwrap();
    let removed = cmds
        .iter()
        .position(
            |c| matches!(c, Command::AllocationRemoved { relay, .. } if *relay == bind_of(rel)),
        )
        .unwrap();
    assert!(last_close < removed, "{cmds:?}");
    // The waiting Connect is answered (the data path drops it if the connection is gone).
    let answers: Vec<_> = sent_to(&cmds, tcp(1)).iter().map(|m| code(m)).collect();
    assert_eq!(answers, vec![Some(447)]);
    assert!(
        close_reasons(&h.events())
            .iter()
            .all(|(_, r)| *r == ConnectionEnd::AllocationEnded)
    );
    assert_eq!(h.server.tcp_connection_count(), 0);
    // Reports about them are ignored now.
    assert!(!h.server.peer_connected(h.now, connecting, Ok(())));
    h.server.connection_closed(h.now, bound);
    h.server.client_closed(h.now, tcp(2));
    assert!(h.commands().is_empty());
}

#[test]
fn expiry_closes_connections_too() {
    let mut h = tcp_h();
    allocate_tcp(&mut h, tcp(1));
    let conn = connected(&mut h, tcp(1), peer(1, 80));
    connection_bind(&mut h, tcp(2), &Cred::alice(), Some(conn.as_u32()));
    h.commands();
    h.advance(secs(600));
    let cmds = h.commands();
    assert_eq!(closed(&cmds), vec![conn]);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::AllocationRemoved { .. }))
    );
}

#[test]
fn a_policy_reload_closes_connections_to_peers_it_denies() {
    let mut h = tcp_h();
    allocate_tcp(&mut h, tcp(1));
    let denied = connected(&mut h, tcp(1), peer(1, 80));
    let kept = connected(&mut h, tcp(1), peer(2, 80));
    h.events();
    let own: Vec<IpAddr> = vec![RELAY4_BIND.into(), RELAY4_PUBLIC.into()];
    let deny = vec!["198.51.100.1/32".parse().unwrap()];
    h.server.set_policy(PeerPolicy::new(vec![], deny, own));
    assert_eq!(closed(&h.commands()), vec![denied]);
    assert_eq!(
        close_reasons(&h.events()),
        vec![(denied, ConnectionEnd::PeerDenied)]
    );
    assert_eq!(h.server.tcp_connection_count(), 1);
    let r = connection_bind(&mut h, tcp(2), &Cred::alice(), Some(kept.as_u32()));
    assert_eq!(code(&r), None);
}

#[test]
fn connections_per_allocation_are_capped() {
    let mut h = tcp_h();
    let rel = allocate_tcp(&mut h, tcp(1));
    h.permit(tcp(1), &Cred::alice(), &[peer(1, 0)]);
    for port in 0..MAX_CONNECTIONS_PER_ALLOCATION as u16 {
        let got = h
            .server
            .peer_connection_incoming(h.now, bind_of(rel), peer(1, 10_000 + port));
        assert!(got.is_some());
    }
    let over = h
        .server
        .peer_connection_incoming(h.now, bind_of(rel), peer(1, 9));
    assert_eq!(over, None);
    assert_eq!(h.server.drops().get(DropReason::ConnectionLimit), 1);
    let r = connect(&mut h, tcp(1), peer(2, 80)).1.reply();
    assert_eq!(code(&r), Some(508));
    // Ids are distinct.
    let mut ids: Vec<ConnectionId> = h
        .commands()
        .iter()
        .filter_map(|c| match c {
            Command::SendToClient { message, .. } => Message::parse(message)
                .unwrap()
                .attr::<ConnectionIdAttr>()
                .map(|a| ConnectionId(a.unwrap().0)),
            _ => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), MAX_CONNECTIONS_PER_ALLOCATION);
}

// ----- hardening: operator switch, dial targets on the relay host, unguessable ids ------

#[test]
fn tcp_relays_are_off_unless_the_operator_turns_them_on() {
    // The data path carries them, but the default config does not offer them.
    let mut h = H::new();
    h.server.enable_tcp_relays(true);
    let r = allocate_tcp_with(&mut h, tcp(1), |_| {});
    assert_eq!(code(&r), Some(442), "{}", describe(&r));
    assert!(h.commands().is_empty());
    // On; then off again (a reload): new ones get 442, the existing one stays.
    h.server.set_relay_tcp(true);
    allocate_tcp(&mut h, tcp(1));
    h.server.set_relay_tcp(false);
    let r = allocate_tcp_with(&mut h, tcp(2), |_| {});
    assert_eq!(code(&r), Some(442), "{}", describe(&r));
    let r = h.refresh(tcp(1), &Cred::alice(), Some(600));
    assert_eq!(code(&r), None, "{}", describe(&r));
}

#[test]
fn only_requests_whose_integrity_verifies_count_as_authenticated() {
    let mut h = H::new();
    let binding = h.build(Class::Request, Method::BINDING, [1; 12], None, |_| {});
    h.client(tcp(1), &binding);
    assert!(!h.server.last_request_authenticated(), "Binding");
    let wrong = Cred::new(ALICE.0, "not-the-password");
    let r = h
        .ask(tcp(1), Method::ALLOCATE, &wrong, |w| {
            w.attr(&RequestedTransport::UDP).unwrap();
        })
        .1
        .reply();
    assert_eq!(code(&r), Some(401));
    assert!(!h.server.last_request_authenticated(), "wrong password");
    // Verified, even though refused (no allocation to refresh).
    let r = h.refresh(tcp(1), &Cred::alice(), Some(600));
    assert_eq!(code(&r), Some(437));
    assert!(
        h.server.last_request_authenticated(),
        "Refresh with a valid key"
    );
    h.client(tcp(1), &binding);
    assert!(
        !h.server.last_request_authenticated(),
        "reset by the next packet"
    );
}

#[test]
fn connect_to_a_relay_port_without_a_tcp_allocation_is_403() {
    let mut h = tcp_h();
    let tcp_rel = allocate_tcp(&mut h, tcp(1));
    let udp_rel = h.allocate(udp(1));
    h.commands();
    h.events();
    // A UDP allocation's port (nothing of ours listens on TCP there), and a free port of
    // the range (another program of the host may listen there), on both addresses.
    let free = (24000..=29999)
        .find(|p| ![udp_rel.port(), tcp_rel.port()].contains(p))
        .unwrap();
    for ip in [IpAddr::from(RELAY4_PUBLIC), IpAddr::from(RELAY4_BIND)] {
        for port in [udp_rel.port(), free] {
            let target = SocketAddr::new(ip, port);
            let r = connect(&mut h, tcp(1), target).1;
            let Out::Reply(r) = r else {
                panic!("Connect to {target} was dialled: {:?}", h.commands());
            };
            assert_eq!(code(&r), Some(403), "{target}: {}", describe(&r));
            assert!(
                h.events()
                    .iter()
                    .any(|e| matches!(e, Event::PeerDenied { peer, .. } if *peer == target)),
                "{target}: refusal logged"
            );
        }
    }
    assert!(h.commands().is_empty());
    assert_eq!(h.server.tcp_connection_count(), 0);
}

/// CONNECTION-ID values of Connect successes and ConnectionAttempts among `cmds`.
fn connection_ids(cmds: &[Command]) -> Vec<u32> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::SendToClient { message, .. } => Message::parse(message)
                .unwrap()
                .attr::<ConnectionIdAttr>()
                .map(|a| a.unwrap().0),
            _ => None,
        })
        .collect()
}

#[test]
fn connection_ids_are_not_predictable() {
    let mut h = tcp_h();
    let rel = allocate_tcp(&mut h, tcp(1));
    h.permit(tcp(1), &Cred::alice(), &[peer(1, 0)]);
    h.commands();
    // Outgoing and incoming connections, interleaved, as the client sees their ids.
    let mut ids = Vec::new();
    for port in 0..32u16 {
        ids.push(connected(&mut h, tcp(1), peer(2, 1000 + port)).as_u32());
        h.server
            .peer_connection_incoming(h.now, bind_of(rel), peer(1, 10_000 + port))
            .unwrap();
        ids.extend(connection_ids(&h.commands()));
    }
    assert_eq!(ids.len(), 64);
    assert!(!ids.contains(&0));
    for w in ids.windows(2) {
        let distance = w[1].wrapping_sub(w[0]).min(w[0].wrapping_sub(w[1]));
        assert!(
            distance > 1 << 16,
            "consecutive ids {} and {} are close: {ids:?}",
            w[0],
            w[1]
        );
    }
    let high = ids.iter().filter(|i| **i >= 1 << 31).count();
    assert!(
        high > ids.len() / 4 && high < ids.len() * 3 / 4,
        "ids spread over the u32 space: {ids:?}"
    );
}

#[test]
fn a_guessed_connection_id_of_another_client_of_the_same_user_binds_nothing() {
    let mut h = tcp_h();
    // Two clients with the same static credentials (a shared deployment user).
    allocate_tcp(&mut h, tcp(1));
    allocate_tcp(&mut h, tcp(2));
    // The attacker learns one id of its own, then the victim's Connect completes.
    let own = connected(&mut h, tcp(2), peer(1, 80));
    let victims = connected(&mut h, tcp(1), peer(2, 80));
    for guess in [own.as_u32().wrapping_add(1), own.as_u32().wrapping_sub(1)] {
        let r = connection_bind(&mut h, tcp(3), &Cred::alice(), Some(guess));
        assert_eq!(
            code(&r),
            Some(400),
            "guessed id {guess} bound (the victim's is {victims})"
        );
    }
    assert!(h.commands().is_empty());
}
