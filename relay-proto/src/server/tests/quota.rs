//! Quotas by credential kind and by source, counted once across shards: a TURN REST
//! credential (one browser) gets a small quota, a source (one IPv4 address or IPv6 /64) a
//! cap on its REST allocations, and static users (the operator's media servers) keep
//! `max_allocations_per_user` and are not counted per source.

use std::net::IpAddr;

use super::harness::*;
use super::shards::shards;
use crate::server::{CapacityLimit, Event, FiveTuple, Limits};
use crate::stun::Method;

fn limits_hit(h: &mut H) -> Vec<CapacityLimit> {
    h.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::CapacityReached { limit, .. } => Some(limit),
            _ => None,
        })
        .collect()
}

fn allocate(h: &mut H, from: FiveTuple, cred: &Cred) -> Option<u16> {
    code(&h.allocate_with(from, cred, |_| {}))
}

#[test]
fn a_rest_credential_gets_its_own_small_quota_across_shards() {
    let (mut hs, _) = shards(2, |c| {
        c.max_allocations_per_rest_user = 2;
        c.max_allocations_per_user = 5;
    });
    let carol = Cred::rest("carol");
    assert_eq!(allocate(&mut hs[0], udp(1), &carol), None);
    assert_eq!(allocate(&mut hs[1], udp(2), &carol), None);
    assert_eq!(allocate(&mut hs[0], udp(3), &carol), Some(486));
    assert_eq!(
        limits_hit(&mut hs[0]),
        [CapacityLimit::RestUser {
            max_allocations_per_rest_user: 2
        }]
    );
    // Another browser's credential has a quota of its own.
    assert_eq!(allocate(&mut hs[1], udp(3), &Cred::rest("dave")), None);
    // A static user keeps max_allocations_per_user.
    for n in 10..15 {
        assert_eq!(
            allocate(&mut hs[n as usize % 2], udp(n), &Cred::alice()),
            None
        );
    }
    assert_eq!(allocate(&mut hs[0], udp(15), &Cred::alice()), Some(486));
    assert_eq!(
        limits_hit(&mut hs[0]),
        [CapacityLimit::User {
            max_allocations_per_user: 5
        }]
    );
    // One of carol's allocations ends (on the other shard): she may make another.
    let r = hs[1].refresh(udp(2), &carol, Some(0));
    assert_eq!(code(&r), None);
    assert_eq!(allocate(&mut hs[0], udp(3), &carol), None);
}

#[test]
fn a_source_caps_its_rest_allocations_across_shards_and_static_users_are_exempt() {
    let (mut hs, shared) = shards(2, |c| c.max_allocations_per_source = 3);
    let nat = "203.0.113.7";
    for (i, name) in ["b1", "b2", "b3"].into_iter().enumerate() {
        let h = &mut hs[i % 2];
        assert_eq!(
            allocate(h, udp_at(nat, 5000 + i as u16), &Cred::rest(name)),
            None
        );
    }
    assert_eq!(
        allocate(&mut hs[1], udp_at(nat, 5003), &Cred::rest("b4")),
        Some(486)
    );
    assert_eq!(
        limits_hit(&mut hs[1]),
        [CapacityLimit::Source {
            source: nat.parse().unwrap(),
            max_allocations_per_source: 3
        }]
    );
    // A media server behind the same address, with a static user: not counted.
    for port in 6000..6010 {
        assert_eq!(
            allocate(&mut hs[0], udp_at(nat, port), &Cred::alice()),
            None
        );
    }
    // Another source is not affected.
    assert_eq!(
        allocate(&mut hs[0], udp_at("203.0.113.8", 5000), &Cred::rest("b4")),
        None
    );
    assert_eq!(shared.source_allocation_count(nat.parse().unwrap()), 3);

    // IPv6: one /64 is one source, whatever the interface identifiers.
    let hs0 = &mut hs[0];
    hs0.server.set_limits(Limits {
        max_allocations_per_source: 2,
        ..hs0.server.limits()
    });
    assert_eq!(
        allocate(hs0, udp_at("2001:db8:1::1", 5000), &Cred::rest("v1")),
        None
    );
    assert_eq!(
        allocate(hs0, udp_at("2001:db8:1::2", 5000), &Cred::rest("v2")),
        None
    );
    assert_eq!(
        allocate(hs0, udp_at("2001:db8:1:0:abcd::9", 5000), &Cred::rest("v3")),
        Some(486)
    );
    let source: IpAddr = "2001:db8:1::".parse().unwrap();
    assert_eq!(
        limits_hit(hs0),
        [CapacityLimit::Source {
            source,
            max_allocations_per_source: 2
        }]
    );
    assert_eq!(
        allocate(hs0, udp_at("2001:db8:2::1", 5000), &Cred::rest("v3")),
        None
    );

    // An allocation from the NAT ends: a new browser there gets in.
    let r = hs[0].request(udp_at(nat, 5000), Method::REFRESH, &Cred::rest("b1"), |w| {
        w.attr(&crate::stun::Lifetime(0)).unwrap();
    });
    assert_eq!(code(&r.1), None);
    let limits = hs[1].server.limits();
    hs[1].server.set_limits(Limits {
        max_allocations_per_source: 3,
        ..limits
    });
    assert_eq!(
        allocate(&mut hs[1], udp_at(nat, 5003), &Cred::rest("b4")),
        None
    );
}
