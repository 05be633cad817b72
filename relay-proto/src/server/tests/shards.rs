//! Several Servers (shards) on one [`Shared`]: ports, quotas and reservations are counted
//! once for the relay, and hairpin works between allocations of different shards.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::harness::*;
use crate::auth::NonceKey;
use crate::server::{DropReason, FiveTuple, Limits, RelayAddr, Server, ServerConfig, Shared};
use crate::stun::{ChannelData, EvenPort, Message, ReservationToken};

/// `n` harnesses on one clock whose servers share one [`Shared`] built from `config()`
/// changed by `f`.
pub(super) fn shards(n: usize, f: impl FnOnce(&mut ServerConfig)) -> (Vec<H>, Arc<Shared>) {
    let mut cfg = config();
    f(&mut cfg);
    let shared = Shared::new(&cfg);
    let mut hs: Vec<H> = (0..n).map(|_| H::new()).collect();
    let t0 = hs[0].t0;
    for h in &mut hs {
        h.t0 = t0;
        h.now = t0;
        h.server = Server::with_shared(
            cfg.clone(),
            credentials(),
            policy(&cfg),
            NonceKey::new([7; 32]),
            t0,
            UNIX_T0,
            shared.clone(),
        );
    }
    (hs, shared)
}

/// Moves every shard's clock and runs its timers.
fn advance(hs: &mut [H], d: Duration) {
    for h in hs {
        h.advance(d);
    }
}

fn delete(h: &mut H, from: FiveTuple, cred: &Cred) {
    assert_eq!(code(&h.refresh(from, cred, Some(0))), None);
}

fn token_of(reply: &[u8]) -> ReservationToken {
    Message::parse(reply)
        .unwrap()
        .attr::<ReservationToken>()
        .expect("RESERVATION-TOKEN")
        .unwrap()
}

#[test]
fn ports_are_never_handed_out_twice_across_shards() {
    let (mut hs, shared) = shards(2, |c| c.ports = 24000..=24063);
    let mut seen = HashSet::new();
    for i in 0..64u16 {
        let rel = hs[usize::from(i % 2)].allocate(udp(i));
        assert!(
            seen.insert(rel.port()),
            "port {} handed out twice",
            rel.port()
        );
    }
    assert_eq!(shared.ports_in_use(), (64, 0));
    assert_eq!(
        hs[1].server.ports_in_use(),
        (64, 0),
        "same view from any shard"
    );
    assert_eq!(shared.allocation_count(), 64);
    assert_eq!(hs[0].server.allocation_count(), 32);
    for h in &mut hs {
        let r = h.allocate_with(udp(100), &Cred::alice(), |_| {});
        assert_eq!(code(&r), Some(508));
    }
    // A port freed on shard 1 is the one shard 0 gets next.
    let freed = hs[1]
        .server
        .allocation(&udp(1))
        .unwrap()
        .relayed()
        .next()
        .unwrap();
    delete(&mut hs[1], udp(1), &Cred::alice());
    assert_eq!(shared.ports_in_use(), (63, 0));
    assert_eq!(hs[0].allocate(udp(100)), freed.public);
}

#[test]
fn allocation_ids_differ_across_shards() {
    let (mut hs, _) = shards(2, |_| {});
    hs[0].allocate(udp(1));
    hs[1].allocate(udp(2));
    let a = hs[0].server.allocation(&udp(1)).unwrap().id();
    let b = hs[1].server.allocation(&udp(2)).unwrap().id();
    assert_ne!(a, b);
}

#[test]
fn quotas_are_counted_across_shards() {
    let (mut hs, shared) = shards(2, |c| {
        c.max_allocations = 3;
        c.max_allocations_per_user = 2;
    });
    hs[0].allocate(udp(1));
    hs[1].allocate(udp(2));
    assert_eq!(shared.user_allocation_count("alice"), 2);
    for (i, h) in hs.iter_mut().enumerate() {
        let r = h.allocate_with(udp(10 + i as u16), &Cred::alice(), |_| {});
        assert_eq!(code(&r), Some(486), "alice's third, on shard {i}");
    }
    let r = hs[1].allocate_with(udp(3), &Cred::bob(), |_| {});
    assert_eq!(code(&r), None);
    assert_eq!(shared.allocation_count(), 3);
    for (i, h) in hs.iter_mut().enumerate() {
        let r = h.allocate_with(udp(20 + i as u16), &Cred::bob(), |_| {});
        assert_eq!(code(&r), Some(508), "fourth allocation, on shard {i}");
    }

    // Deleting on shard 0 lets shard 1 allocate, for the total and for alice.
    delete(&mut hs[0], udp(1), &Cred::alice());
    assert_eq!(shared.allocation_count(), 2);
    assert_eq!(shared.user_allocation_count("alice"), 1);
    hs[1].allocate(udp(4));
    assert_eq!(shared.user_allocation_count("alice"), 2);

    // Expiry frees quota as well.
    advance(&mut hs, secs(601));
    assert_eq!(shared.allocation_count(), 0);
    assert_eq!(shared.user_allocation_count("alice"), 0);
    assert_eq!(shared.ports_in_use(), (0, 0));
    hs[0].allocate(udp(5));
}

#[test]
fn set_limits_on_one_shard_applies_to_all() {
    let (mut hs, shared) = shards(2, |c| {
        c.max_allocations = 1;
        c.max_allocations_per_user = 1;
    });
    hs[0].allocate(udp(1));
    let r = hs[1].allocate_with(udp(2), &Cred::bob(), |_| {});
    assert_eq!(code(&r), Some(508));

    let raised = Limits {
        max_allocations: 3,
        max_allocations_per_user: 2,
        ..shared.limits()
    };
    hs[1].server.set_limits(raised);
    assert_eq!(hs[0].server.limits(), raised);
    assert_eq!(shared.limits(), raised);
    hs[0].allocate(udp(2));
    let r = hs[1].allocate_with(udp(3), &Cred::alice(), |_| {});
    assert_eq!(code(&r), Some(486), "per-user limit raised to 2, not more");

    // Lowered from the admin side: existing allocations stay, new ones are refused.
    shared.set_limits(Limits {
        max_allocations: 1,
        max_allocations_per_user: 1,
        ..shared.limits()
    });
    assert_eq!(hs[1].server.limits().max_allocations, 1);
    let r = hs[1].allocate_with(udp(4), &Cred::bob(), |_| {});
    assert_eq!(code(&r), Some(508));
    assert_eq!(hs[0].server.allocation_count(), 2);
}

#[test]
fn reservation_token_from_one_shard_is_honoured_on_another() {
    let (mut hs, shared) = shards(2, |_| {});
    let r = hs[0].allocate_with(udp(1), &Cred::alice(), |w| {
        w.attr(&EvenPort(true)).unwrap();
    });
    let port = relayed(&r)[0].port();
    let token = token_of(&r);
    assert_eq!(
        (shared.reservation_count(), shared.ports_in_use()),
        (1, (2, 0))
    );

    let r = hs[1].allocate_with(udp(2), &Cred::alice(), |w| {
        w.attr(&token).unwrap();
    });
    assert_eq!(code(&r), None, "{}", describe(&r));
    assert_eq!(relayed(&r)[0].port(), port + 1);
    assert_eq!(
        (shared.reservation_count(), shared.ports_in_use()),
        (0, (2, 0))
    );

    // Used once, on whichever shard.
    for h in &mut hs {
        let r = h.allocate_with(udp(3), &Cred::alice(), |w| {
            w.attr(&token).unwrap();
        });
        assert_eq!(code(&r), Some(508));
    }
    // Shard 0's reservation timer finds nothing left to free.
    advance(&mut hs, secs(31));
    assert_eq!(shared.ports_in_use(), (2, 0));
    assert_eq!(shared.allocation_count(), 2);
}

#[test]
fn expired_reservation_is_reaped_by_the_shard_that_sees_it_first() {
    let (mut hs, shared) = shards(2, |_| {});
    let r = hs[0].allocate_with(udp(1), &Cred::alice(), |w| {
        w.attr(&EvenPort(true)).unwrap();
    });
    let token = token_of(&r);
    // Only shard 1's clock moves: shard 0's timer has not fired.
    hs[1].advance(secs(30));
    let r = hs[1].allocate_with(udp(2), &Cred::alice(), |w| {
        w.attr(&token).unwrap();
    });
    assert_eq!(code(&r), Some(508));
    assert_eq!(
        (shared.reservation_count(), shared.ports_in_use()),
        (0, (1, 0))
    );
    // The late timer on shard 0 is harmless.
    hs[0].advance(secs(30));
    assert_eq!(shared.ports_in_use(), (1, 0));
}

#[test]
fn a_relay_failure_on_one_shard_leaves_other_shards_ports_alone() {
    let (mut hs, shared) = shards(2, |_| {});
    let a = hs[0].allocate(udp(1));
    let b = hs[1].allocate(udp(2));
    // Shard 1 reports shard 0's port: not its allocation, not free, so nothing changes.
    let now = hs[1].now;
    hs[1].server.relay_bind_failed(now, bind_of(a));
    assert_eq!(shared.quarantined_count(), 0);
    assert!(hs[0].server.allocation(&udp(1)).is_some());
    // Shard 1's own: its allocation ends, the port is quarantined for everyone, and
    // the Allocate it just answered is answered again on another port.
    hs[1].server.relay_bind_failed(now, bind_of(b));
    let moved = hs[1]
        .server
        .allocation(&udp(2))
        .and_then(|a| a.relayed().next())
        .map(|r| r.bind);
    assert!(moved.is_some_and(|r| r != bind_of(b)), "{moved:?}");
    assert_eq!(
        (shared.quarantined_count(), shared.ports_in_use()),
        (1, (3, 0))
    );
    assert_eq!(shared.allocation_count(), 2);
    advance(&mut hs, secs(60));
    assert_eq!(
        (shared.quarantined_count(), shared.ports_in_use()),
        (0, (2, 0))
    );
}

/// A on shard 0 (client udp(1)), B on shard 1 (client udp(2)), each permitting the other's
/// public relayed address. Returns (hs, A public, B public).
fn cross_pair(f: impl FnOnce(&mut ServerConfig)) -> (Vec<H>, SocketAddr, SocketAddr) {
    let (mut hs, _) = shards(2, f);
    let a = hs[0].allocate(udp(1));
    let b = hs[1].allocate(udp(2));
    assert_eq!(code(&hs[0].permit(udp(1), &Cred::alice(), &[b])), None);
    (hs, a, b)
}

/// Feeds a `ToPeer` of one shard into the shard owning the destination, as the host kernel
/// does when one relay socket sends to another.
fn deliver(to: &mut H, out: Out) -> Out {
    let Out::ToPeer {
        relay,
        peer,
        payload,
    } = out
    else {
        panic!("expected ToPeer, got {out:?}")
    };
    // From the sender's relay socket to the receiver's: `peer` is the receiving socket.
    to.peer(peer, relay, &payload)
}

#[test]
fn cross_shard_hairpin_goes_through_the_bind_address_both_ways() {
    let (mut hs, a, b) = cross_pair(|_| {});
    let out = hs[0].send(udp(1), b, b"over");
    assert_eq!(
        out,
        Out::ToPeer {
            relay: bind_of(a),
            peer: bind_of(b),
            payload: b"over".to_vec(),
        },
        "from A's relay socket to B's, on the bind address"
    );
    assert_eq!(hs[0].relay_bind(udp(1)), bind_of(a));
    let c = hs[0].server.allocation(&udp(1)).unwrap().counters();
    assert_eq!((c.to_peer_packets, c.to_peer_bytes), (1, 4));

    // B has no permission for the relay's public IP yet: dropped on arrival.
    assert_eq!(
        deliver(&mut hs[1], out.clone()),
        Out::Drop(DropReason::NoPermission)
    );
    assert_eq!(code(&hs[1].permit(udp(2), &Cred::alice(), &[a])), None);

    let Out::ToClient { to, bytes } = deliver(&mut hs[1], out) else {
        panic!()
    };
    assert_eq!(to, udp(2));
    assert_eq!(
        data_indication(&bytes),
        (a, b"over".to_vec()),
        "B sees A's public relayed address"
    );
    let c = hs[1].server.allocation(&udp(2)).unwrap().counters();
    assert_eq!((c.to_client_packets, c.to_client_bytes), (1, 4));

    // And back, B to A.
    let out = hs[1].send(udp(2), a, b"back");
    let Out::ToClient { to, bytes } = deliver(&mut hs[0], out) else {
        panic!()
    };
    assert_eq!(to, udp(1));
    assert_eq!(data_indication(&bytes).0, b);

    // Addressed to B's bind address instead of its public one: the same path.
    hs[0].permit(udp(1), &Cred::alice(), &[bind_of(b)]);
    let out = hs[0].send(udp(1), bind_of(b), b"x");
    assert!(matches!(out, Out::ToPeer { peer, .. } if peer == bind_of(b)));
}

#[test]
fn cross_shard_hairpin_over_channels() {
    let (mut hs, a, b) = cross_pair(|_| {});
    hs[1].permit(udp(2), &Cred::alice(), &[a]);
    assert_eq!(code(&hs[0].bind(udp(1), &Cred::alice(), 0x4000, b)), None);
    assert_eq!(code(&hs[1].bind(udp(2), &Cred::alice(), 0x4100, a)), None);

    let mut cd = vec![0u8; 16];
    let n = crate::stun::write_channel_data(&mut cd, 0x4000, b"ab", false).unwrap();
    let out = hs[0].client(udp(1), &cd[..n]);
    let Out::ToClient { to, bytes } = deliver(&mut hs[1], out) else {
        panic!()
    };
    assert_eq!(to, udp(2));
    let cd = ChannelData::parse(&bytes).unwrap();
    assert_eq!((cd.channel(), cd.payload()), (0x4100, &b"ab"[..]));
}

#[test]
fn cross_shard_hairpin_without_nat() {
    let public: std::net::IpAddr = RELAY4_PUBLIC.into();
    let (mut hs, a, b) = cross_pair(|c| c.relay_v4 = Some(RelayAddr::direct(public)));
    hs[1].permit(udp(2), &Cred::alice(), &[a]);
    let out = hs[0].send(udp(1), b, b"x");
    assert_eq!(
        out,
        Out::ToPeer {
            relay: a,
            peer: b,
            payload: b"x".to_vec()
        }
    );
    let Out::ToClient { bytes, .. } = deliver(&mut hs[1], out) else {
        panic!()
    };
    assert_eq!(data_indication(&bytes).0, a);
}

#[test]
fn cross_shard_hairpin_refusals() {
    let (mut hs, a, b) = cross_pair(|_| {});
    hs[1].permit(udp(2), &Cred::alice(), &[a]);
    // A relayed port nobody holds on any shard.
    let nobody = (24000..=29999)
        .map(|p| SocketAddr::new(a.ip(), p))
        .find(|s| *s != a && *s != b)
        .unwrap();
    assert_eq!(hs[0].send(udp(1), nobody, b"x"), Out::Nothing);
    assert_eq!(hs[0].server.drops().get(DropReason::NoAllocation), 1);
    // Its own relayed address.
    hs[0].permit(udp(1), &Cred::alice(), &[a]);
    assert_eq!(hs[0].send(udp(1), a, b"x"), Out::Nothing);
    assert_eq!(hs[0].server.drops().get(DropReason::NoAllocation), 2);

    // From the bind address but outside the relay range: a local service, not a relay, so
    // not presented as the public address (and B has no permission for the bind IP).
    let service = SocketAddr::new(RELAY4_BIND.into(), 3478);
    assert_eq!(
        hs[1].peer(bind_of(b), service, b"x"),
        Out::Drop(DropReason::NoPermission)
    );

    // B deleted: its port is no longer live, A's datagrams stop at shard 0.
    delete(&mut hs[1], udp(2), &Cred::alice());
    assert_eq!(hs[0].send(udp(1), b, b"x"), Out::Nothing);
    assert_eq!(hs[0].server.drops().get(DropReason::NoAllocation), 3);
}

#[test]
fn same_shard_hairpin_is_unchanged_with_other_shards_around() {
    let (mut hs, a, _b) = cross_pair(|_| {});
    let c = hs[0].allocate(udp(3));
    hs[0].permit(udp(1), &Cred::alice(), &[c]);
    hs[0].permit(udp(3), &Cred::alice(), &[a]);
    let Out::ToClient { to, bytes } = hs[0].send(udp(1), c, b"near") else {
        panic!()
    };
    assert_eq!(to, udp(3));
    assert_eq!(data_indication(&bytes).0, a);
}

#[test]
fn shared_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Shared>();
    check::<Arc<Shared>>();
}

#[test]
#[should_panic(expected = "another port range")]
fn with_shared_refuses_state_built_for_another_config() {
    let shared = Shared::new(&config());
    let mut other = config();
    other.ports = 30000..=30099;
    let pol = policy(&other);
    let _ = Server::with_shared(
        other,
        credentials(),
        pol,
        NonceKey::new([7; 32]),
        std::time::Instant::now(),
        UNIX_T0,
        shared,
    );
}

#[derive(Clone, Debug)]
enum Op {
    /// Allocate on shard `.0` as alice (`.1` false) or bob; `.2`: EVEN-PORT with R.
    Allocate(usize, bool, bool),
    /// Redeem the `.1`-th token issued so far, on shard `.0`.
    Redeem(usize, prop::sample::Index),
    /// Delete the `.0`-th live allocation (on whichever shard holds it).
    Delete(prop::sample::Index),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, any::<bool>(), any::<bool>()).prop_map(|(s, a, e)| Op::Allocate(s, a, e)),
        1 => (0..3usize, any::<prop::sample::Index>()).prop_map(|(s, i)| Op::Redeem(s, i)),
        2 => any::<prop::sample::Index>().prop_map(Op::Delete),
        1 => prop_oneof![0..40u64, 590..620u64].prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random allocate / redeem / delete / time across three shards on a small port range:
    /// no port is ever held twice, and the shared counts match what the shards hold.
    #[test]
    fn shards_never_double_book_and_counts_match(ops in proptest::collection::vec(op(), 1..40)) {
        let (mut hs, shared) = shards(3, |c| {
            c.ports = 24000..=24019;
            c.max_allocations = 12;
            c.max_allocations_per_user = 8;
        });
        let mut tokens: Vec<ReservationToken> = Vec::new();
        let mut next_client = 0u16;
        for op in ops {
            next_client += 1;
            let from = udp(next_client);
            match op {
                Op::Allocate(s, alice, even) => {
                    let cred = if alice { Cred::alice() } else { Cred::bob() };
                    let r = hs[s].allocate_with(from, &cred, |w| {
                        if even {
                            w.attr(&EvenPort(true)).unwrap();
                        }
                    });
                    if even && code(&r).is_none() {
                        tokens.push(token_of(&r));
                    }
                }
                Op::Redeem(s, i) if !tokens.is_empty() => {
                    let t = tokens[i.index(tokens.len())];
                    let _ = hs[s].allocate_with(from, &Cred::alice(), |w| {
                        w.attr(&t).unwrap();
                    });
                }
                Op::Redeem(..) => {}
                Op::Delete(i) => {
                    let live: Vec<(usize, FiveTuple, String)> = hs
                        .iter()
                        .enumerate()
                        .flat_map(|(s, h)| {
                            h.server.allocations().map(move |a| (s, a.client(), a.user().to_owned()))
                        })
                        .collect();
                    if !live.is_empty() {
                        let (s, client, user) = live[i.index(live.len())].clone();
                        let cred = if user == ALICE.0 { Cred::alice() } else { Cred::bob() };
                        delete(&mut hs[s], client, &cred);
                    }
                }
                Op::Advance(d) => advance(&mut hs, secs(d)),
            }

            let mut ports = HashSet::new();
            let mut per_user: HashMap<String, usize> = HashMap::new();
            for h in &hs {
                for a in h.server.allocations() {
                    for r in a.relayed() {
                        prop_assert!(ports.insert(r.bind.port()), "port {} held twice", r.bind.port());
                    }
                    *per_user.entry(a.user().to_owned()).or_default() += 1;
                }
            }
            let held: usize = hs.iter().map(|h| h.server.allocation_count()).sum();
            prop_assert_eq!(shared.allocation_count(), held);
            prop_assert!(held <= 12);
            for (user, n) in &per_user {
                prop_assert_eq!(shared.user_allocation_count(user), *n);
                prop_assert!(*n <= 8);
            }
            prop_assert_eq!(
                shared.ports_in_use(),
                ((ports.len() + shared.reservation_count()) as u32, 0)
            );
        }
    }
}

#[test]
fn connect_reaches_a_tcp_allocation_of_another_shard_and_nothing_else() {
    use crate::server::Command;
    use crate::stun::{Method, RequestedTransport, XorPeerAddress};
    let (mut hs, _) = shards(2, |c| c.relay_tcp = true);
    let mut tcp_relayed = Vec::new();
    for h in &mut hs {
        h.server.enable_tcp_relays(true);
        let r = h
            .ask(tcp(1), Method::ALLOCATE, &Cred::alice(), |w| {
                w.attr(&RequestedTransport::TCP).unwrap();
            })
            .1
            .reply();
        assert_eq!(code(&r), None, "{}", describe(&r));
        tcp_relayed.push(relayed(&r)[0]);
        h.commands();
    }
    let udp_on_1 = hs[1].allocate(udp(2));
    let connect = |h: &mut H, to: SocketAddr| {
        h.ask(tcp(1), Method::CONNECT, &Cred::alice(), |w| {
            w.attr(&XorPeerAddress(to)).unwrap();
        })
        .1
    };
    // Shard 0's client dials shard 1's TCP allocation: through the bind address.
    assert_eq!(connect(&mut hs[0], tcp_relayed[1]), Out::Nothing);
    let cmds = hs[0].commands();
    assert!(
        matches!(&cmds[..], [Command::ConnectPeer { peer, .. }] if *peer == bind_of(tcp_relayed[1])),
        "{cmds:?}"
    );
    // Shard 1's UDP allocation has no TCP listener: refused.
    let r = connect(&mut hs[0], udp_on_1).reply();
    assert_eq!(code(&r), Some(403), "{}", describe(&r));
    // Once shard 1's TCP allocation is gone, its port is refused too.
    delete(&mut hs[1], tcp(1), &Cred::alice());
    let r = connect(&mut hs[0], tcp_relayed[1]).reply();
    assert_eq!(code(&r), Some(403), "{}", describe(&r));
}
