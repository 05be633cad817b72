//! Lifetimes at their boundaries: allocations, permissions, channels and channel cool-down.

use super::harness::*;
use crate::server::{Command, DropReason, Event};
use crate::stun::{ChannelData, Message, Method, write_channel_data};

#[test]
fn allocation_expires_exactly_at_its_lifetime() {
    let mut h = H::new();
    h.allocate(udp(1));
    h.permit(udp(1), &Cred::alice(), &[peer(1, 1)]);
    h.bind(udp(1), &Cred::alice(), 0x4000, peer(1, 1));
    h.commands();
    h.events();
    let expires = h.t0 + secs(600);
    assert!(h.server.poll_timeout().unwrap() <= expires);

    // Keep the permission and channel alive so that only the allocation expires.
    h.advance(secs(290));
    h.bind(udp(1), &Cred::alice(), 0x4000, peer(1, 1));
    h.advance(secs(290)); // t = 580
    h.bind(udp(1), &Cred::alice(), 0x4000, peer(1, 1));
    h.commands();
    h.advance(secs(20) - ms(1));
    assert_eq!(h.server.allocation_count(), 1);
    let relay = h.relay_bind(udp(1));
    assert!(matches!(
        h.peer(relay, peer(1, 1), b"x"),
        Out::ToClient { .. }
    ));
    h.advance(ms(1));
    assert_eq!(h.server.allocation_count(), 0);
    let cmds = h.commands();
    assert!(
        matches!(&cmds[..], [
        Command::ChannelUnbound { channel: 0x4000, .. },
        Command::PermissionRemoved { .. },
        Command::AllocationRemoved { relay: r, .. },
    ] if *r == relay),
        "{cmds:?}"
    );
    assert!(
        h.events()
            .iter()
            .any(|e| matches!(e, Event::AllocationExpired { user, .. } if &**user == "alice"))
    );
    assert_eq!(
        h.peer(relay, peer(1, 1), b"x"),
        Out::Drop(DropReason::NoAllocation)
    );
    assert_eq!(h.server.ports_in_use(), (0, 0));
}

#[test]
fn an_expired_allocation_is_dead_even_before_the_timer_runs() {
    let mut h = H::new();
    h.allocate(udp(1));
    h.permit(udp(1), &Cred::alice(), &[peer(1, 1)]);
    let relay = h.relay_bind(udp(1));
    h.skip(secs(600)); // no handle_timeout
    assert_eq!(
        h.peer(relay, peer(1, 1), b"x"),
        Out::Drop(DropReason::NoAllocation)
    );
    assert_eq!(h.send(udp(1), peer(1, 1), b"x"), Out::Nothing);
}

#[test]
fn refresh_extends_and_shortens() {
    let mut h = H::new();
    h.allocate(udp(1));
    h.advance(secs(500));
    let r = h.refresh(udp(1), &Cred::alice(), Some(3600));
    assert_eq!(lifetime(&r), 3600);
    assert!(h.events().iter().any(
        |e| matches!(e, Event::AllocationRefreshed { lifetime, .. } if lifetime.as_secs() == 3600)
    ));
    h.advance(secs(600)); // past the original expiry
    assert_eq!(h.server.allocation_count(), 1);
    // Shorten to the default: expires 600 s from now, not at 500+3600.
    let r = h.refresh(udp(1), &Cred::alice(), None);
    assert_eq!(lifetime(&r), 600);
    h.advance(secs(600) - ms(1));
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(ms(1));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn permission_expires_after_300_seconds_unless_refreshed() {
    let mut h = H::new();
    h.allocate(udp(1));
    h.permit(udp(1), &Cred::alice(), &[peer(1, 1)]);
    h.commands();
    let relay = h.relay_bind(udp(1));
    h.advance(secs(300) - ms(1));
    assert!(matches!(
        h.peer(relay, peer(1, 1), b"x"),
        Out::ToClient { .. }
    ));
    assert!(matches!(
        h.send(udp(1), peer(1, 1), b"x"),
        Out::ToPeer { .. }
    ));
    h.advance(ms(1));
    assert_eq!(
        h.peer(relay, peer(1, 1), b"x"),
        Out::Drop(DropReason::NoPermission)
    );
    assert_eq!(h.send(udp(1), peer(1, 1), b"x"), Out::Nothing);
    assert!(
        matches!(&h.commands()[..], [Command::PermissionRemoved { peer: p, .. }] if *p == peer(1, 1).ip())
    );

    // Refreshed 200 s after creation: lives 300 s more.
    h.refresh(udp(1), &Cred::alice(), Some(3600));
    h.permit(udp(1), &Cred::alice(), &[peer(2, 1)]);
    h.advance(secs(200));
    h.permit(udp(1), &Cred::alice(), &[peer(2, 1)]);
    h.advance(secs(299));
    assert!(matches!(
        h.peer(relay, peer(2, 1), b"x"),
        Out::ToClient { .. }
    ));
    h.advance(secs(1));
    assert_eq!(
        h.peer(relay, peer(2, 1), b"x"),
        Out::Drop(DropReason::NoPermission)
    );
}

#[test]
fn channel_expires_after_600_seconds_then_cools_down_for_5_minutes() {
    let mut h = H::new();
    h.allocate(udp(1));
    h.refresh(udp(1), &Cred::alice(), Some(3600));
    h.bind(udp(1), &Cred::alice(), 0x4000, peer(1, 1));
    h.commands();
    let relay = h.relay_bind(udp(1));
    let mut cd = vec![0u8; 16];
    let n = write_channel_data(&mut cd, 0x4000, b"x", false).unwrap();
    cd.truncate(n);
    // Keep the permission up with CreatePermission only.
    h.advance(secs(290));
    h.permit(udp(1), &Cred::alice(), &[peer(1, 1)]);
    h.advance(secs(290));
    h.permit(udp(1), &Cred::alice(), &[peer(1, 1)]);
    h.advance(secs(20) - ms(1)); // t = 600 s - 1 ms
    assert!(matches!(h.client(udp(1), &cd), Out::ToPeer { .. }));
    let Out::ToClient { bytes, .. } = h.peer(relay, peer(1, 1), b"y") else {
        panic!()
    };
    assert!(ChannelData::parse(&bytes).is_ok());
    h.advance(ms(1)); // t = 600 s
    assert_eq!(h.client(udp(1), &cd), Out::Nothing);
    let cmds = h.commands();
    assert!(
        matches!(
            &cmds[..],
            [Command::ChannelUnbound {
                channel: 0x4000,
                ..
            }]
        ),
        "{cmds:?}"
    );
    // The permission still stands: peer data comes as a Data indication now.
    let Out::ToClient { bytes, .. } = h.peer(relay, peer(1, 1), b"y") else {
        panic!()
    };
    assert_eq!(Message::parse(&bytes).unwrap().method(), Method::DATA);

    // During the cool-down neither the number nor the peer can be bound elsewhere...
    assert_eq!(
        code(&h.bind(udp(1), &Cred::alice(), 0x4000, peer(2, 2))),
        Some(400)
    );
    assert_eq!(
        code(&h.bind(udp(1), &Cred::alice(), 0x4001, peer(1, 1))),
        Some(400)
    );
    let info = h.server.allocation(&udp(1)).unwrap();
    assert!(info.channels().next().unwrap().cooling);
    // ...until 5 minutes after the expiry.
    h.advance(secs(300) - ms(1));
    assert_eq!(
        code(&h.bind(udp(1), &Cred::alice(), 0x4000, peer(2, 2))),
        Some(400)
    );
    h.advance(ms(1));
    assert_eq!(h.server.allocation(&udp(1)).unwrap().channels().count(), 0);
    assert_eq!(
        code(&h.bind(udp(1), &Cred::alice(), 0x4000, peer(2, 2))),
        None
    );
}

#[test]
fn the_same_pair_may_be_rebound_during_the_cool_down() {
    let mut h = H::new();
    h.allocate(udp(1));
    h.refresh(udp(1), &Cred::alice(), Some(3600));
    h.bind(udp(1), &Cred::alice(), 0x4000, peer(1, 1));
    h.advance(secs(600));
    h.commands();
    assert_eq!(
        code(&h.bind(udp(1), &Cred::alice(), 0x4000, peer(1, 1))),
        None
    );
    let cmds = h.commands();
    assert!(
        cmds.iter().any(|c| matches!(
            c,
            Command::ChannelBound {
                channel: 0x4000,
                ..
            }
        )),
        "{cmds:?}"
    );
    // And the stale cool-down timer does not undo it.
    h.advance(secs(300));
    assert!(
        h.server
            .allocation(&udp(1))
            .unwrap()
            .channels()
            .next()
            .is_some_and(|c| !c.cooling)
    );
    h.advance(secs(300));
    assert!(
        h.server
            .allocation(&udp(1))
            .unwrap()
            .channels()
            .next()
            .is_some_and(|c| c.cooling)
    );
}

#[test]
fn poll_timeout_tracks_the_earliest_deadline() {
    let mut h = H::new();
    assert_eq!(h.server.poll_timeout(), None);
    h.allocate(udp(1));
    assert_eq!(h.server.poll_timeout(), Some(h.t0 + secs(600)));
    h.permit(udp(1), &Cred::alice(), &[peer(1, 1)]);
    assert_eq!(h.server.poll_timeout(), Some(h.t0 + secs(300)));
    h.advance(secs(300));
    assert_eq!(h.server.poll_timeout(), Some(h.t0 + secs(600)));
    h.advance(secs(300));
    assert_eq!(h.server.poll_timeout(), None);
}

#[test]
fn refresh_churn_does_not_grow_the_timer_heap_without_bound() {
    let mut h = H::new();
    h.allocate(udp(1));
    let nonce = h.nonce(udp(1));
    for _ in 0..20_000 {
        let txid = h.txid();
        let req = h.build(
            crate::stun::Class::Request,
            Method::CREATE_PERMISSION,
            txid,
            Some((&Cred::alice(), &nonce)),
            |w| {
                w.attr(&crate::stun::XorPeerAddress(peer(1, 1))).unwrap();
            },
        );
        h.client(udp(1), &req);
        h.server.handle_timeout(h.now);
    }
    assert!(
        h.server.timer_entries() < 10_000,
        "{}",
        h.server.timer_entries()
    );
    assert_eq!(
        h.server.allocation(&udp(1)).unwrap().permissions().count(),
        1
    );
}

/// A refresh flood on a quiet shard: no timer comes due (the clock stands still), so
/// `handle_timeout` never runs, yet every Refresh, CreatePermission and ChannelBind refresh
/// pushes a deadline. The heap must stay bounded without waiting for a due timer.
#[test]
fn refresh_flood_without_due_timers_keeps_the_timer_heap_bounded() {
    let mut h = H::new();
    let clients = [udp(1), udp(2), udp(3)];
    for c in clients {
        h.allocate(c);
    }
    let nonce = h.nonce(udp(1));
    for i in 0..30_000u32 {
        let from = clients[i as usize % clients.len()];
        let txid = h.txid();
        let method = [
            Method::REFRESH,
            Method::CREATE_PERMISSION,
            Method::CHANNEL_BIND,
        ][i as usize % 3];
        let cred = Some((&Cred::alice(), nonce.as_str()));
        let req = h.build(crate::stun::Class::Request, method, txid, cred, |w| {
            if method == Method::REFRESH {
                w.attr(&crate::stun::Lifetime(3600)).unwrap();
                return;
            }
            if method == Method::CHANNEL_BIND {
                w.attr(&crate::stun::ChannelNumber(0x4000)).unwrap();
            }
            w.attr(&crate::stun::XorPeerAddress(peer(1, 1))).unwrap();
        });
        let reply = h.client(from, &req).reply();
        assert_eq!(code(&reply), None, "{}", describe(&reply));
    }
    // Live: 3 allocations, 3 permissions, 3 channels. The bound is the rebuild floor.
    assert!(
        h.server.timer_entries() <= 4097,
        "timer heap holds {} entries after 30,000 refreshes of 9 objects",
        h.server.timer_entries()
    );
    // Every object still expires when its time comes.
    h.advance(secs(3600));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.timer_entries(), 0);
}
