//! Data path: Send indications, ChannelData, peer datagrams, hairpin, counters.

use std::net::SocketAddr;

use super::harness::*;
use crate::server::DropReason;
use crate::stun::{
    AttrType, ChannelData, Class, Data, Message, Method, XorPeerAddress, write_channel_data,
};

fn channel_data(ch: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; payload.len() + 8];
    let n = write_channel_data(&mut b, ch, payload, false).unwrap();
    b.truncate(n);
    b
}

#[test]
fn send_indication_to_a_permitted_peer_goes_out_zero_copy() {
    let mut h = H::new();
    h.allocate(udp(1));
    h.permit(udp(1), &Cred::alice(), &[peer(1, 0)]);
    let relay = h.relay_bind(udp(1));
    // Permission is by IP: any port of the peer.
    let out = h.send(udp(1), peer(1, 7777), b"hello");
    assert_eq!(
        out,
        Out::ToPeer {
            relay,
            peer: peer(1, 7777),
            payload: b"hello".to_vec()
        }
    );
    let c = h.server.allocation(&udp(1)).unwrap().counters();
    assert_eq!((c.to_peer_packets, c.to_peer_bytes), (1, 5));
}

#[test]
fn send_indication_drops_silently() {
    let mut h = H::new();
    // No allocation.
    assert_eq!(h.send(udp(1), peer(1, 1), b"x"), Out::Nothing);
    assert_eq!(h.server.drops().get(DropReason::NoAllocation), 1);
    h.allocate(udp(1));
    // No permission.
    assert_eq!(h.send(udp(1), peer(1, 1), b"x"), Out::Nothing);
    assert_eq!(h.server.drops().get(DropReason::NoPermission), 1);
    h.permit(udp(1), &Cred::alice(), &[peer(1, 0)]);
    // Missing DATA.
    let txid = h.txid();
    let ind = h.build(Class::Indication, Method::SEND, txid, None, |w| {
        w.attr(&XorPeerAddress(peer(1, 1))).unwrap();
    });
    assert_eq!(h.client(udp(1), &ind), Out::Nothing);
    assert_eq!(h.server.drops().get(DropReason::MissingAttribute), 1);
    // Unknown comprehension-required attribute: the indication is discarded, no 420.
    let txid = h.txid();
    let ind = h.build(Class::Indication, Method::SEND, txid, None, |w| {
        w.attr(&XorPeerAddress(peer(1, 1))).unwrap();
        w.attr(&Data(b"x")).unwrap();
        w.raw_attr(AttrType(0x0077), &[0; 4]).unwrap();
    });
    assert_eq!(h.client(udp(1), &ind), Out::Nothing);
    assert_eq!(h.server.drops().get(DropReason::UnknownAttribute), 1);
    // DONT-FRAGMENT is fine.
    let txid = h.txid();
    let ind = h.build(Class::Indication, Method::SEND, txid, None, |w| {
        w.attr(&XorPeerAddress(peer(1, 1))).unwrap();
        w.attr(&Data(b"x")).unwrap();
        w.attr(&crate::stun::DontFragment).unwrap();
    });
    assert!(matches!(h.client(udp(1), &ind), Out::ToPeer { .. }));
    // Wrong family.
    let p6: SocketAddr = "[2001:db8::77]:1".parse().unwrap();
    assert_eq!(h.send(udp(1), p6, b"x"), Out::Nothing);
    assert_eq!(h.server.drops().get(DropReason::WrongFamily), 1);
    // A Data indication or a response from a client is dropped.
    let txid = h.txid();
    let ind = h.build(Class::Indication, Method::DATA, txid, None, |_| {});
    assert_eq!(h.client(udp(1), &ind), Out::Nothing);
    let resp = h.build(Class::Success, Method::ALLOCATE, txid, None, |_| {});
    assert_eq!(h.client(udp(1), &resp), Out::Nothing);
    assert_eq!(h.server.drops().get(DropReason::Unexpected), 2);
    // Binding indication (keepalive): nothing, not a drop.
    let ind = h.build(Class::Indication, Method::BINDING, txid, None, |_| {});
    assert_eq!(h.client(udp(1), &ind), Out::Nothing);
    assert_eq!(h.server.drops().get(DropReason::Unexpected), 2);
}

#[test]
fn channel_data_goes_to_the_bound_peer() {
    let mut h = H::new();
    h.allocate(udp(1));
    h.bind(udp(1), &Cred::alice(), 0x4000, peer(1, 5000));
    let relay = h.relay_bind(udp(1));
    let out = h.client(udp(1), &channel_data(0x4000, b"media"));
    assert_eq!(
        out,
        Out::ToPeer {
            relay,
            peer: peer(1, 5000),
            payload: b"media".to_vec()
        }
    );
    // Unbound channel: dropped.
    assert_eq!(
        h.client(udp(1), &channel_data(0x4001, b"media")),
        Out::Nothing
    );
    assert_eq!(h.server.drops().get(DropReason::NoChannel), 1);
    // From a 5-tuple without allocation.
    assert_eq!(h.client(udp(2), &channel_data(0x4000, b"m")), Out::Nothing);
    // Truncated ChannelData.
    assert_eq!(h.client(udp(1), &[0x40, 0x00, 0x00, 0x09, 1]), Out::Nothing);
    assert_eq!(h.server.drops().get(DropReason::Malformed), 1);
    // Neither STUN nor ChannelData.
    assert_eq!(h.client(udp(1), &[0x80, 0, 0, 0]), Out::Nothing);
    assert_eq!(h.server.drops().get(DropReason::Malformed), 2);
}

#[test]
fn peer_data_needs_a_permission_and_becomes_a_data_indication() {
    let mut h = H::new();
    h.allocate(udp(1));
    let relay = h.relay_bind(udp(1));
    assert_eq!(
        h.peer(relay, peer(1, 9), b"hi"),
        Out::Drop(DropReason::NoPermission)
    );
    let unknown_relay = SocketAddr::new(relay.ip(), relay.port().wrapping_add(1));
    assert_eq!(
        h.peer(unknown_relay, peer(1, 9), b"hi"),
        Out::Drop(DropReason::NoAllocation)
    );

    h.permit(udp(1), &Cred::alice(), &[peer(1, 1)]);
    let Out::ToClient { to, bytes } = h.peer(relay, peer(1, 9), b"hi") else {
        panic!()
    };
    assert_eq!(to, udp(1));
    assert_eq!(data_indication(&bytes), (peer(1, 9), b"hi".to_vec()));
    let m = Message::parse(&bytes).unwrap();
    // Distinct transaction ids.
    let Out::ToClient { bytes: b2, .. } = h.peer(relay, peer(1, 9), b"hi") else {
        panic!()
    };
    assert_ne!(
        Message::parse(&b2).unwrap().transaction_id(),
        m.transaction_id()
    );
    let c = h.server.allocation(&udp(1)).unwrap().counters();
    assert_eq!((c.to_client_packets, c.to_client_bytes), (2, 4));
}

#[test]
fn peer_data_on_a_channel_is_channel_data_padded_on_tcp() {
    for (from, padded) in [(udp(1), false), (tcp(1), true)] {
        let mut h = H::new();
        h.allocate(from);
        h.bind(from, &Cred::alice(), 0x4ABC, peer(1, 5000));
        let relay = h.relay_bind(from);
        let Out::ToClient { to, bytes } = h.peer(relay, peer(1, 5000), b"abcde") else {
            panic!()
        };
        assert_eq!(to, from);
        assert_eq!(bytes.len(), if padded { 12 } else { 9 });
        let cd = ChannelData::parse(&bytes).unwrap();
        assert_eq!((cd.channel(), cd.payload()), (0x4ABC, &b"abcde"[..]));
        // Another port of the same peer IP: permitted, but not the channel's peer.
        let Out::ToClient { bytes, .. } = h.peer(relay, peer(1, 5001), b"x") else {
            panic!()
        };
        assert_eq!(Message::parse(&bytes).unwrap().method(), Method::DATA);
    }
}

#[test]
fn tcp_client_closed_ends_its_allocation() {
    let mut h = H::new();
    h.allocate(tcp(1));
    h.commands();
    h.server.client_closed(h.now, tcp(1));
    assert_eq!(h.server.allocation_count(), 0);
    assert!(matches!(
        &h.commands()[..],
        [crate::server::Command::AllocationRemoved { .. }]
    ));
    assert!(h.events().iter().any(|e| matches!(
        e,
        crate::server::Event::AllocationClosed {
            reason: crate::server::CloseReason::ClientClosed,
            ..
        }
    )));
}

/// Two clients, each with an allocation, each permitting the relay's public IP.
fn hairpin_pair() -> (H, SocketAddr, SocketAddr) {
    let mut h = H::new();
    let a = h.allocate(udp(1));
    let b = h.allocate(udp(2));
    h.permit(udp(1), &Cred::alice(), &[b]);
    h.permit(udp(2), &Cred::alice(), &[a]);
    (h, a, b)
}

#[test]
fn hairpin_send_indication_reaches_the_other_allocation() {
    let (mut h, a, b) = hairpin_pair();
    let Out::ToClient { to, bytes } = h.send(udp(1), b, b"loop") else {
        panic!()
    };
    assert_eq!(to, udp(2));
    assert_eq!(
        data_indication(&bytes),
        (a, b"loop".to_vec()),
        "B sees A's relayed address"
    );
    // And back.
    let Out::ToClient { to, bytes } = h.send(udp(2), a, b"back") else {
        panic!()
    };
    assert_eq!(to, udp(1));
    assert_eq!(data_indication(&bytes).0, b);
    let ca = h.server.allocation(&udp(1)).unwrap().counters();
    assert_eq!((ca.to_peer_packets, ca.to_client_packets), (1, 1));
}

#[test]
fn hairpin_over_channels_both_ways() {
    let (mut h, a, b) = hairpin_pair();
    h.bind(udp(1), &Cred::alice(), 0x4000, b);
    h.bind(udp(2), &Cred::alice(), 0x4100, a);
    let Out::ToClient { to, bytes } = h.client(udp(1), &channel_data(0x4000, b"ab")) else {
        panic!()
    };
    assert_eq!(to, udp(2));
    let cd = ChannelData::parse(&bytes).unwrap();
    assert_eq!((cd.channel(), cd.payload()), (0x4100, &b"ab"[..]));
    let Out::ToClient { to, bytes } = h.client(udp(2), &channel_data(0x4100, b"ba")) else {
        panic!()
    };
    assert_eq!(to, udp(1));
    assert_eq!(ChannelData::parse(&bytes).unwrap().channel(), 0x4000);
}

#[test]
fn hairpin_needs_the_targets_permission_and_the_bind_address_works_too() {
    let mut h = H::new();
    let _a = h.allocate(udp(1));
    let b = h.allocate(udp(2));
    h.permit(udp(1), &Cred::alice(), &[b]);
    // B has no permission for the relay's IP.
    assert_eq!(h.send(udp(1), b, b"x"), Out::Nothing);
    assert_eq!(h.server.drops().get(DropReason::NoPermission), 1);
    // To a relayed port nobody holds.
    let nobody = SocketAddr::new(
        b.ip(),
        if b.port() == 29999 {
            24000
        } else {
            b.port() + 1
        },
    );
    if h.server
        .allocations()
        .all(|i| i.relayed().all(|r| r.public != nobody))
    {
        assert_eq!(h.send(udp(1), nobody, b"x"), Out::Nothing);
        assert_eq!(h.server.drops().get(DropReason::NoAllocation), 1);
    }
    // The bind (private) address of the relay counts as the relay as well.
    let b_bind = SocketAddr::new(RELAY4_BIND.into(), b.port());
    h.permit(udp(1), &Cred::alice(), &[b_bind]);
    let a_public = h
        .server
        .allocation(&udp(1))
        .unwrap()
        .relayed()
        .next()
        .unwrap()
        .public;
    h.permit(udp(2), &Cred::alice(), &[a_public]);
    let Out::ToClient { to, .. } = h.send(udp(1), b_bind, b"x") else {
        panic!()
    };
    assert_eq!(to, udp(2));
}

/// The relay's own address on a port outside the relay range is a service on the relay
/// host (a listener, the admin API, ssh): refused unless the operator allow-listed it,
/// as the loopback demo does for a local echo peer.
#[test]
fn relay_host_ports_outside_the_range_need_the_allow_list() {
    let mut h = H::new();
    h.allocate(udp(1));
    let local_service: SocketAddr = (RELAY4_BIND, 3480).into();
    h.permit(udp(1), &Cred::alice(), &[local_service]);
    assert!(matches!(h.send(udp(1), local_service, b"x"), Out::Nothing));
    assert_eq!(h.server.drops().get(DropReason::RelayHostPort), 1);

    let own: Vec<std::net::IpAddr> = vec![RELAY4_BIND.into(), RELAY4_PUBLIC.into()];
    let allow = vec!["10.0.0.5/32".parse().unwrap()];
    h.server
        .set_policy(crate::policy::PeerPolicy::new(allow, vec![], own));
    let Out::ToPeer { peer, payload, .. } = h.send(udp(1), local_service, b"x") else {
        panic!("allow-listed relay host port should be relayed")
    };
    assert_eq!((peer, payload.as_slice()), (local_service, &b"x"[..]));
}
