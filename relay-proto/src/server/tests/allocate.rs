//! Binding, Allocate and its error codes.

use std::net::SocketAddr;

use super::harness::*;
use crate::server::{CapacityLimit, Command, Event, Family, RelayAddr};
use crate::stun::{
    AdditionalAddressFamily, AddressErrorCode, AddressFamily, AlternateServer, AttrType, Class,
    DontFragment, EvenPort, IntegrityKind, Lifetime, Message, Method, PasswordAlgorithms, Realm,
    RequestedAddressFamily, RequestedTransport, ReservationToken, Software, UnknownAttributes,
    XorMappedAddress,
};

#[test]
fn binding_is_answered_without_auth() {
    let mut h = H::new();
    let txid = h.txid();
    let req = h.build(Class::Request, Method::BINDING, txid, None, |_| {});
    let reply = h.client(udp(1), &req).reply();
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.method(), Method::BINDING);
    assert_eq!(m.transaction_id().0, txid);
    assert_eq!(
        m.attr::<XorMappedAddress>(),
        Some(Ok(XorMappedAddress(udp(1).client)))
    );
    // Unauthenticated: no SOFTWARE (see tests/abuse.rs); FINGERPRINT as the request had it.
    assert_eq!(m.attr::<Software>(), None);
    assert!(m.has_fingerprint());
    assert_eq!(m.integrity(), IntegrityKind::None);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn binding_with_unknown_comprehension_required_attribute_is_420() {
    let mut h = H::new();
    let txid = h.txid();
    let req = h.build(Class::Request, Method::BINDING, txid, None, |w| {
        w.raw_attr(AttrType(0x7777), &[1, 2, 3, 4]).unwrap();
        w.raw_attr(AttrType(0xC001), &[1, 2, 3, 4]).unwrap(); // optional: ignored
    });
    let reply = h.client(udp(1), &req).reply();
    assert_eq!(code(&reply), Some(420));
    let m = Message::parse(&reply).unwrap();
    let list = m.attr::<UnknownAttributes>().unwrap().unwrap();
    assert_eq!(list.as_slice(), &[AttrType(0x7777)]);
}

#[test]
fn unauthenticated_allocate_gets_a_stateless_401_challenge() {
    let mut h = H::new();
    let txid = h.txid();
    let req = h.build(Class::Request, Method::ALLOCATE, txid, None, |w| {
        w.attr(&RequestedTransport(17)).unwrap();
    });
    let reply = h.client(udp(1), &req).reply();
    assert_eq!(code(&reply), Some(401));
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.attr::<Realm>(), Some(Ok(Realm(REALM))));
    let nonce = m.attr::<crate::stun::Nonce>().unwrap().unwrap().0;
    assert!(crate::auth::Nonces::has_security_feature_cookie(nonce));
    let algs = m.attr::<PasswordAlgorithms>().unwrap().unwrap();
    assert!(algs.contains(&crate::stun::PasswordAlgorithm::Md5));
    assert!(algs.contains(&crate::stun::PasswordAlgorithm::Sha256));
    assert_eq!(m.integrity(), IntegrityKind::None);
    assert!(m.has_fingerprint());
    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.commands().is_empty());
    assert!(h.events().is_empty(), "a plain challenge is not an event");
    assert_eq!(h.server.timer_entries(), 0);
}

#[test]
fn allocate_success_advertises_the_public_address_and_commands_carry_the_bind_address() {
    let mut h = H::new();
    let reply = h.allocate_with(udp(1), &Cred::alice(), |_| {});
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.class(), Class::Success, "{}", describe(&reply));
    let rel = relayed(&reply);
    assert_eq!(rel.len(), 1);
    assert_eq!(rel[0].ip(), std::net::IpAddr::from(RELAY4_PUBLIC));
    assert!((24000..=29999).contains(&rel[0].port()));
    assert_eq!(m.attr::<Lifetime>(), Some(Ok(Lifetime(600))));
    assert_eq!(
        m.attr::<XorMappedAddress>(),
        Some(Ok(XorMappedAddress(udp(1).client)))
    );
    assert_eq!(m.integrity(), IntegrityKind::Sha1);
    m.verify_integrity(Cred::alice().key().as_bytes()).unwrap();
    assert!(m.has_fingerprint());

    let cmds = h.commands();
    let [
        Command::AllocationCreated {
            id,
            client,
            relay,
            public,
            user,
            protocol,
        },
    ] = &cmds[..]
    else {
        panic!("{cmds:?}");
    };
    assert_eq!(*protocol, crate::server::RelayProtocol::Udp);
    assert_eq!(*client, udp(1));
    assert_eq!(*relay, SocketAddr::new(RELAY4_BIND.into(), rel[0].port()));
    assert_eq!(*public, rel[0]);
    assert_eq!(&**user, "alice");
    let evs = h.events();
    assert!(
        matches!(&evs[..], [Event::AllocationCreated { id: i, relayed, lifetime, .. }]
        if i == id && relayed == &vec![rel[0]] && lifetime.as_secs() == 600)
    );

    let info = h.server.allocation(&udp(1)).unwrap();
    assert_eq!(info.user(), "alice");
    assert_eq!(info.id(), *id);
    let r: Vec<_> = info.relayed().collect();
    assert_eq!((r[0].bind.port(), r[0].public), (rel[0].port(), rel[0]));
    assert_eq!(info.expires(), h.now + secs(600));
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.ports_in_use(), (1, 0));
}

#[test]
fn allocate_with_sha256_is_answered_with_sha256() {
    let mut h = H::new();
    let mut c = Cred::alice();
    c.alg = Some(crate::stun::PasswordAlgorithm::Sha256);
    c.sha256 = true;
    let reply = h.allocate_with(udp(1), &c, |_| {});
    assert_eq!(code(&reply), None, "{}", describe(&reply));
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.integrity(), IntegrityKind::Sha256);
    m.verify_integrity(c.key().as_bytes()).unwrap();
    assert_eq!(c.key().as_bytes().len(), 32);
}

#[test]
fn retransmitted_allocate_gets_the_same_response_and_a_new_one_gets_437() {
    let mut h = H::new();
    let (req, first) = h.request(udp(1), Method::ALLOCATE, &Cred::alice(), |w| {
        w.attr(&RequestedTransport(17)).unwrap();
    });
    assert_eq!(code(&first), None);
    h.commands();
    h.skip(secs(5));
    let again = h.client(udp(1), &req).reply();
    assert_eq!(again, first, "a retransmission is answered identically");
    assert!(h.commands().is_empty(), "and creates nothing");
    assert_eq!(h.server.allocation_count(), 1);

    // After the 40 s window a retransmission is a new request: 437.
    h.skip(secs(40));
    assert_eq!(code(&h.client(udp(1), &req).reply()), Some(437));

    let second = h.allocate_with(udp(1), &Cred::alice(), |_| {});
    assert_eq!(code(&second), Some(437));
    let m = Message::parse(&second).unwrap();
    m.verify_integrity(Cred::alice().key().as_bytes()).unwrap();
    assert!(h.events().iter().any(|e| matches!(
        e,
        Event::RequestRejected {
            code: 437,
            method: Method::ALLOCATE,
            ..
        }
    )));
}

#[test]
fn requested_transport_missing_is_400_and_tcp_is_442() {
    let mut h = H::new();
    let (_, r) = h.request(udp(1), Method::ALLOCATE, &Cred::alice(), |_| {});
    assert_eq!(code(&r), Some(400));
    let (_, r) = h.request(udp(1), Method::ALLOCATE, &Cred::alice(), |w| {
        w.attr(&RequestedTransport(6)).unwrap();
    });
    assert_eq!(code(&r), Some(442));
    let (_, r) = h.request(udp(1), Method::ALLOCATE, &Cred::alice(), |w| {
        w.raw_attr(AttrType::REQUESTED_TRANSPORT, &[17, 0]).unwrap();
    });
    assert_eq!(code(&r), Some(400), "malformed REQUESTED-TRANSPORT");
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn dont_fragment_is_accepted() {
    let mut h = H::new();
    let r = h.allocate_with(udp(1), &Cred::alice(), |w| {
        w.attr(&DontFragment).unwrap();
    });
    assert_eq!(code(&r), None);
    assert!(h.server.allocation(&udp(1)).unwrap().dont_fragment());
}

#[test]
fn unknown_comprehension_required_in_allocate_is_420_with_integrity() {
    let mut h = H::new();
    let r = h.allocate_with(udp(1), &Cred::alice(), |w| {
        w.raw_attr(AttrType(0x0031), &[0; 4]).unwrap();
    });
    assert_eq!(code(&r), Some(420));
    let m = Message::parse(&r).unwrap();
    assert_eq!(
        m.attr::<UnknownAttributes>().unwrap().unwrap().as_slice(),
        &[AttrType(0x0031)]
    );
    m.verify_integrity(Cred::alice().key().as_bytes()).unwrap();
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn ipv6_without_a_v6_relay_is_440() {
    let mut h = H::new();
    let r = h.allocate_with(udp(1), &Cred::alice(), |w| {
        w.attr(&RequestedAddressFamily(AddressFamily::V6)).unwrap();
    });
    assert_eq!(code(&r), Some(440));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn ipv4_without_a_v4_relay_is_440_but_v6_works() {
    let mut h = H::with(|c| {
        c.relay_v4 = None;
        c.relay_v6 = Some(relay6());
    });
    let r = h.allocate_with(udp(1), &Cred::alice(), |_| {});
    assert_eq!(code(&r), Some(440));
    let r = h.allocate_with(udp(1), &Cred::alice(), |w| {
        w.attr(&RequestedAddressFamily(AddressFamily::V6)).unwrap();
    });
    assert_eq!(code(&r), None);
    assert!(relayed(&r)[0].is_ipv6());
}

#[test]
fn requested_and_additional_family_together_is_400() {
    let mut h = H::with(|c| c.relay_v6 = Some(relay6()));
    let r = h.allocate_with(udp(1), &Cred::alice(), |w| {
        w.attr(&RequestedAddressFamily(AddressFamily::V4)).unwrap();
        w.attr(&AdditionalAddressFamily(AddressFamily::V6)).unwrap();
    });
    assert_eq!(code(&r), Some(400));
    let r = h.allocate_with(udp(1), &Cred::alice(), |w| {
        w.attr(&AdditionalAddressFamily(AddressFamily::V4)).unwrap();
    });
    assert_eq!(
        code(&r),
        Some(400),
        "ADDITIONAL-ADDRESS-FAMILY must be IPv6"
    );
}

#[test]
fn dual_allocation_has_two_relayed_addresses_and_one_command_each() {
    let mut h = H::with(|c| c.relay_v6 = Some(relay6()));
    let r = h.allocate_with(udp(1), &Cred::alice(), |w| {
        w.attr(&AdditionalAddressFamily(AddressFamily::V6)).unwrap();
    });
    assert_eq!(code(&r), None, "{}", describe(&r));
    let rel = relayed(&r);
    assert_eq!(rel.len(), 2);
    assert!(rel[0].is_ipv4() && rel[1].is_ipv6());
    assert_eq!(rel[1].ip(), RELAY6.parse::<std::net::IpAddr>().unwrap());
    let cmds = h.commands();
    assert_eq!(cmds.len(), 2);
    assert_eq!(cmds[0].id(), cmds[1].id());
    let publics: Vec<_> = cmds
        .iter()
        .map(|c| match c {
            Command::AllocationCreated { public, .. } => *public,
            _ => panic!(),
        })
        .collect();
    assert_eq!(publics, rel);
    assert_eq!(h.server.ports_in_use(), (1, 1));

    // Both families take permissions; a refresh asking for either family is fine.
    let p6: SocketAddr = "[2001:db8:1::9]:5000".parse().unwrap();
    let r = h.permit(udp(1), &Cred::alice(), &[peer(9, 1), p6]);
    assert_eq!(code(&r), None, "{}", describe(&r));
    let r = h.request(udp(1), Method::REFRESH, &Cred::alice(), |w| {
        w.attr(&RequestedAddressFamily(AddressFamily::V6)).unwrap();
    });
    assert_eq!(code(&r.1), None);

    // Deleting removes both relayed addresses.
    h.commands();
    h.refresh(udp(1), &Cred::alice(), Some(0));
    let removed = h
        .commands()
        .into_iter()
        .filter(|c| matches!(c, Command::AllocationRemoved { .. }))
        .count();
    assert_eq!(removed, 2);
    assert_eq!(h.server.ports_in_use(), (0, 0));
}

#[test]
fn dual_allocation_without_v6_relay_gets_v4_and_address_error_440() {
    let mut h = H::new();
    let r = h.allocate_with(udp(1), &Cred::alice(), |w| {
        w.attr(&AdditionalAddressFamily(AddressFamily::V6)).unwrap();
    });
    assert_eq!(code(&r), None);
    assert_eq!(relayed(&r).len(), 1);
    let m = Message::parse(&r).unwrap();
    let e = m.attr::<AddressErrorCode>().unwrap().unwrap();
    assert_eq!((e.family, e.code), (AddressFamily::V6, 440));
}

#[test]
fn lifetime_is_clamped_between_default_and_max() {
    let mut h = H::new();
    for (i, (ask, got)) in [(30, 600), (1200, 1200), (100_000, 3600), (0, 600)]
        .into_iter()
        .enumerate()
    {
        let from = udp(10 + i as u16);
        let r = h.allocate_with(from, &Cred::alice(), |w| {
            w.attr(&Lifetime(ask)).unwrap();
        });
        assert_eq!(code(&r), None);
        assert_eq!(lifetime(&r), got, "asked {ask}");
        assert_eq!(
            h.server.allocation(&from).unwrap().expires(),
            h.now + secs(got.into())
        );
    }
}

#[test]
fn total_quota_is_508_and_per_user_quota_is_486() {
    let mut h = H::with(|c| {
        c.max_allocations = 3;
        c.max_allocations_per_user = 2;
    });
    h.allocate(udp(1));
    h.allocate(udp(2));
    h.events();
    let r = h.allocate_with(udp(3), &Cred::alice(), |_| {});
    assert_eq!(code(&r), Some(486));
    let capacity = |evs: Vec<Event>| {
        evs.into_iter()
            .filter_map(|e| match e {
                Event::CapacityReached {
                    user,
                    client,
                    limit,
                } => Some((user.to_string(), client, limit)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let user_limit = CapacityLimit::User {
        max_allocations_per_user: 2,
    };
    assert_eq!(
        capacity(h.events()),
        [("alice".to_owned(), udp(3), user_limit)]
    );
    let r = h.allocate_with(udp(3), &Cred::bob(), |_| {});
    assert_eq!(code(&r), None);
    assert!(capacity(h.events()).is_empty());
    let r = h.allocate_with(udp(4), &Cred::bob(), |_| {});
    assert_eq!(code(&r), Some(508));
    let full = CapacityLimit::Relay { max_allocations: 3 };
    assert_eq!(capacity(h.events()), [("bob".to_owned(), udp(4), full)]);

    // Raising the limits at runtime (SIGHUP) takes effect at once.
    h.server.set_limits(crate::server::Limits {
        max_allocations: 10,
        max_allocations_per_user: 10,
        ..h.server.limits()
    });
    let r = h.allocate_with(udp(4), &Cred::bob(), |_| {});
    assert_eq!(code(&r), None);
}

#[test]
fn full_server_redirects_to_an_alternate_once() {
    let alt: SocketAddr = ([192, 0, 2, 200], 3478).into();
    let mut h = H::with(|c| {
        c.max_allocations = 1;
        c.alternate_servers = vec![listener(), alt, "[2001:db8::200]:3478".parse().unwrap()];
    });
    h.allocate(udp(1));
    let r = h.allocate_with(udp(2), &Cred::alice(), |_| {});
    assert_eq!(code(&r), Some(300));
    let m = Message::parse(&r).unwrap();
    // Never our own listener, never the other family.
    assert_eq!(m.attr::<AlternateServer>(), Some(Ok(AlternateServer(alt))));
    m.verify_integrity(Cred::alice().key().as_bytes()).unwrap();
    assert!(
        h.events()
            .iter()
            .any(|e| matches!(e, Event::Redirected { alternate, .. } if *alternate == alt))
    );

    // The same client coming back (bounced by the alternate) is not sent away again.
    let r = h.allocate_with(udp(3), &Cred::alice(), |_| {});
    assert_eq!(code(&r), Some(508));
}

#[test]
fn draining_refuses_new_allocations_but_keeps_existing_ones() {
    let mut h = H::new();
    h.allocate(udp(1));
    h.server.set_draining(true);
    let r = h.allocate_with(udp(2), &Cred::alice(), |_| {});
    assert_eq!(code(&r), Some(508));
    assert_eq!(code(&h.refresh(udp(1), &Cred::alice(), Some(600))), None);
    assert_eq!(code(&h.permit(udp(1), &Cred::alice(), &[peer(1, 1)])), None);

    let alt: SocketAddr = ([192, 0, 2, 201], 3478).into();
    let mut h = H::with(|c| c.alternate_servers = vec![alt]);
    h.server.set_draining(true);
    let r = h.allocate_with(udp(2), &Cred::alice(), |_| {});
    assert_eq!(code(&r), Some(300));
    h.server.set_draining(false);
    let r = h.allocate_with(udp(2), &Cred::alice(), |_| {});
    assert_eq!(code(&r), None);
}

#[test]
fn exhausted_port_pool_is_508() {
    let mut h = H::with(|c| c.ports = 24000..=24001);
    h.allocate(udp(1));
    h.allocate(udp(2));
    let r = h.allocate_with(udp(3), &Cred::alice(), |_| {});
    assert_eq!(code(&r), Some(508));
    // Freeing one makes room again.
    h.refresh(udp(1), &Cred::alice(), Some(0));
    h.allocate(udp(3));
}

#[test]
fn even_port_and_reservation_token() {
    let mut h = H::new();
    let r = h.allocate_with(udp(1), &Cred::alice(), |w| {
        w.attr(&EvenPort(false)).unwrap();
    });
    assert_eq!(relayed(&r)[0].port() % 2, 0);
    assert!(
        Message::parse(&r)
            .unwrap()
            .attr::<ReservationToken>()
            .is_none()
    );

    let r = h.allocate_with(udp(2), &Cred::alice(), |w| {
        w.attr(&EvenPort(true)).unwrap();
    });
    let port = relayed(&r)[0].port();
    assert_eq!(port % 2, 0);
    let token = Message::parse(&r)
        .unwrap()
        .attr::<ReservationToken>()
        .unwrap()
        .unwrap();
    assert_eq!(h.server.ports_in_use(), (3, 0));

    // EVEN-PORT together with RESERVATION-TOKEN is 400.
    let bad = h.allocate_with(udp(3), &Cred::alice(), |w| {
        w.attr(&token).unwrap();
        w.attr(&EvenPort(false)).unwrap();
    });
    assert_eq!(code(&bad), Some(400));

    let r = h.allocate_with(udp(3), &Cred::alice(), |w| {
        w.attr(&token).unwrap();
    });
    assert_eq!(code(&r), None, "{}", describe(&r));
    assert_eq!(relayed(&r)[0].port(), port + 1);
    assert_eq!(h.server.ports_in_use(), (3, 0));

    // A token works once.
    let r = h.allocate_with(udp(4), &Cred::alice(), |w| {
        w.attr(&token).unwrap();
    });
    assert_eq!(code(&r), Some(508));
}

#[test]
fn reservation_expires_after_30_seconds() {
    let mut h = H::new();
    let r = h.allocate_with(udp(1), &Cred::alice(), |w| {
        w.attr(&EvenPort(true)).unwrap();
    });
    let token = Message::parse(&r)
        .unwrap()
        .attr::<ReservationToken>()
        .unwrap()
        .unwrap();
    assert_eq!(h.server.ports_in_use(), (2, 0));
    h.advance(secs(30) - ms(1));
    assert_eq!(h.server.ports_in_use(), (2, 0));
    h.advance(ms(1));
    assert_eq!(
        h.server.ports_in_use(),
        (1, 0),
        "reserved port released at 30 s"
    );
    let r = h.allocate_with(udp(2), &Cred::alice(), |w| {
        w.attr(&token).unwrap();
    });
    assert_eq!(code(&r), Some(508));
}

#[test]
fn ports_are_random_and_never_reused_while_in_use() {
    let mut h = H::with(|c| c.ports = 24000..=24063);
    let mut seen = std::collections::HashSet::new();
    for i in 0..64 {
        let rel = h.allocate(udp(i));
        assert!(seen.insert(rel.port()));
    }
    let ports: Vec<_> = seen.iter().copied().collect();
    assert_eq!(ports.len(), 64);
    // A different seed gives a different first port.
    let a = H::with(|c| c.port_seed = 1).allocate(udp(0));
    let b = H::with(|c| c.port_seed = 2).allocate(udp(0));
    let c = H::with(|c| c.port_seed = 1).allocate(udp(0));
    assert_eq!(a, c, "deterministic for a seed");
    assert_ne!(a, b);
}

#[test]
fn static_nat_public_differs_from_bind() {
    let mut h = H::with(|c| {
        c.relay_v4 = Some(RelayAddr {
            bind: [172, 16, 0, 10].into(),
            public: [203, 0, 113, 77].into(),
        })
    });
    let rel = h.allocate(udp(1));
    assert_eq!(rel.ip(), std::net::IpAddr::from([203, 0, 113, 77]));
    match &h.commands()[..] {
        [Command::AllocationCreated { relay, public, .. }] => {
            assert_eq!(relay.ip(), std::net::IpAddr::from([172, 16, 0, 10]));
            assert_eq!(*public, rel);
            assert_eq!(relay.port(), rel.port());
        }
        c => panic!("{c:?}"),
    }
    let _ = Family::V4;
}

#[test]
fn cluster_targets_come_before_static_alternates() {
    use crate::server::RedirectTarget;
    let alt: SocketAddr = ([192, 0, 2, 200], 3478).into();
    let node = |port: u16, allocations: usize, capacity: usize| RedirectTarget {
        turn: ([192, 0, 2, 50], port).into(),
        allocations,
        capacity,
    };
    let mut h = H::with(|c| {
        c.max_allocations = 1;
        c.alternate_servers = vec![alt];
    });
    h.allocate(udp(1));
    h.server
        .set_redirect_targets(vec![node(3478, 10, 10), node(3479, 3, 10)]);
    let r = h.allocate_with(udp(2), &Cred::alice(), |_| {});
    assert_eq!(code(&r), Some(300));
    let m = Message::parse(&r).unwrap();
    // Not the full node: the one with room.
    assert_eq!(
        m.attr::<AlternateServer>(),
        Some(Ok(AlternateServer(node(3479, 0, 0).turn)))
    );
    // The same client again: cluster nodes with room are still offered to it.
    let r = h.allocate_with(udp(2), &Cred::alice(), |_| {});
    let m = Message::parse(&r).unwrap();
    assert_eq!(
        m.attr::<AlternateServer>(),
        Some(Ok(AlternateServer(node(3479, 0, 0).turn)))
    );
    // No cluster node with room: the static alternate.
    h.server.set_redirect_targets(vec![node(3478, 10, 10)]);
    let r = h.allocate_with(udp_at("192.0.2.150", 5000), &Cred::alice(), |_| {});
    let m = Message::parse(&r).unwrap();
    assert_eq!(m.attr::<AlternateServer>(), Some(Ok(AlternateServer(alt))));
}
