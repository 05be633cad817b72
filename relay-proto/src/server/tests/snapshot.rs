//! The handover snapshot: what goes out comes back (snapshot → restore → snapshot is the
//! identity), the previous release's format still loads, and nonces issued before the
//! handover are accepted after it.

use proptest::prelude::*;

use super::harness::*;
use crate::auth::NonceKey;
use crate::server::{
    Command, RestoreError, SNAPSHOT_VERSION, Server, ShardSnapshot, Shared, Snapshot,
};
use crate::stun::{
    ChannelNumber, Class, EvenPort, Lifetime, Method, RequestedTransport, XorPeerAddress,
};

/// The format-1 snapshot checked in when the format was introduced: a later build must
/// still load it (the "previous release" test).
const GOLDEN_V1: &str = include_str!("../snapshot-v1.json");

fn capture(h: &H) -> Snapshot {
    Snapshot::new(
        &NonceKey::new([7; 32]),
        h.server.shared().snapshot(h.now),
        vec![h.server.snapshot(h.now)],
    )
}

/// A new process's core at `h.now` (its own clock anchor, the unix time `h`'s clock shows),
/// restored from `snap`.
fn restored(h: &H, snap: &Snapshot) -> Result<Server, RestoreError> {
    let cfg = h.server.config().clone();
    let shared = Shared::new(&cfg);
    shared.restore(h.now, &snap.shared)?;
    let unix = UNIX_T0 + (h.now - h.t0).as_secs();
    let mut server = Server::with_shared(
        cfg.clone(),
        credentials(),
        policy(&cfg),
        snap.nonce_key()?,
        h.now,
        unix,
        shared,
    );
    for shard in &snap.shards {
        server.restore(h.now, shard)?;
    }
    Ok(server)
}

/// Takes over `h`'s state in a new core, as `relay upgrade` does.
fn hand_over(h: &mut H) -> Snapshot {
    let snap = capture(h);
    let json = snap.to_json();
    let back = Snapshot::from_json(&json).unwrap();
    assert_eq!(back, snap, "JSON round trip");
    h.server = restored(h, &back).unwrap();
    snap
}

/// Two static-user allocations with permissions and channels (one of them cooling), a
/// REST one, and an EVEN-PORT reservation.
fn busy_relay() -> H {
    let mut h = H::new();
    h.allocate(udp(1));
    let alice = Cred::alice();
    assert_eq!(
        code(&h.permit(udp(1), &alice, &[peer(1, 5000), peer(2, 5000)])),
        None
    );
    assert_eq!(code(&h.bind(udp(1), &alice, 0x4000, peer(1, 5000))), None);
    h.allocate(udp(2));
    assert_eq!(code(&h.bind(udp(2), &alice, 0x4001, peer(3, 6000))), None);
    // The channel of udp(2) expires (10 min) and cools; udp(1)'s is renewed; the
    // permission of peer 2 lapses.
    h.advance(secs(290));
    for n in [1, 2] {
        assert_eq!(code(&h.refresh(udp(n), &alice, Some(600))), None);
    }
    assert_eq!(code(&h.bind(udp(1), &alice, 0x4000, peer(1, 5000))), None);
    h.advance(secs(290));
    assert_eq!(code(&h.refresh(udp(2), &alice, Some(600))), None);
    assert_eq!(code(&h.permit(udp(1), &alice, &[peer(1, 5000)])), None);
    assert_eq!(code(&h.permit(udp(2), &alice, &[peer(3, 6000)])), None);
    h.advance(secs(30));
    h.send(udp(1), peer(1, 5000), b"counted");
    // A TURN REST allocation that reserved the next port (EVEN-PORT with R).
    let reply = h.allocate_with(udp(3), &Cred::rest("carol"), |w| {
        w.attr(&EvenPort(true)).unwrap();
    });
    assert_eq!(code(&reply), None, "{}", describe(&reply));
    h.advance(secs(5));
    h
}

#[test]
fn the_previous_format_still_loads_and_restores_unchanged() {
    let golden = Snapshot::from_json(GOLDEN_V1).expect("the golden format-1 snapshot loads");
    assert_eq!(golden.version, 1);
    assert_eq!(golden.allocation_count(), 3);
    let h = H::new();
    let server = restored(&h, &golden).expect("it restores");
    assert_eq!(server.allocation_count(), 3);
    assert_eq!(server.shared().reservation_count(), 1);
    let again = Snapshot::new(
        &golden.nonce_key().unwrap(),
        server.shared().snapshot(h.now),
        vec![server.snapshot(h.now)],
    );
    assert_eq!(again, golden);
}

/// The golden file is this build's snapshot of [`busy_relay`] (pretty-printed). When the
/// format changes, the version goes up, this file stays as the previous release's format
/// (still loaded above) and the new one is written next to it.
#[test]
fn this_build_writes_format_1_as_the_golden_file() {
    let written = serde_json::to_string_pretty(&capture(&busy_relay())).unwrap();
    assert_eq!(
        written.trim(),
        GOLDEN_V1.trim(),
        "format 1 changed: bump SNAPSHOT_VERSION and add snapshot-v2.json instead"
    );
}

#[test]
fn restore_installs_allocations_permissions_and_bound_channels_in_the_data_paths() {
    let mut h = busy_relay();
    h.commands();
    let before = capture(&h);
    hand_over(&mut h);
    assert_eq!(capture(&h), before);
    let commands = h.commands();
    let count = |f: fn(&Command) -> bool| commands.iter().filter(|c| f(c)).count();
    assert_eq!(count(|c| matches!(c, Command::AllocationCreated { .. })), 3);
    // Two of the four permissions expired on the way; one of the channels cools.
    assert_eq!(count(|c| matches!(c, Command::PermissionCreated { .. })), 2);
    // The cooling channel of udp(2) is not bound in the data path.
    assert_eq!(count(|c| matches!(c, Command::ChannelBound { .. })), 1);
}

#[test]
fn ports_and_quotas_of_restored_allocations_stay_taken() {
    let mut h = H::with(|c| c.ports = 24000..=24003);
    h.allocate(udp(1));
    let taken = h.relay_bind(udp(1)).port();
    hand_over(&mut h);
    assert_eq!(h.server.shared().allocation_count(), 1);
    assert_eq!(h.server.shared().user_allocation_count(ALICE.0), 1);
    for n in 2..=4 {
        h.allocate(udp(n));
        assert_ne!(h.relay_bind(udp(n)).port(), taken);
    }
    assert_eq!(
        code(&h.allocate_with(udp(5), &Cred::alice(), |_| {})),
        Some(508)
    );
}

#[test]
fn a_nonce_issued_before_the_handover_is_accepted_after_it() {
    let mut h = H::new();
    let from = udp(1);
    h.allocate(from);
    let alice = Cred::alice();
    // A channel bound before the handover, refreshed after it.
    assert_eq!(code(&h.bind(from, &alice, 0x4000, peer(1, 5000))), None);
    let nonce = h.nonce(from);
    h.advance(secs(60));
    hand_over(&mut h);
    h.advance(secs(60));
    let signed = |h: &mut H, method, f: &dyn Fn(&mut crate::stun::MessageWriter<'_>)| {
        let txid = h.txid();
        let req = h.build(Class::Request, method, txid, Some((&alice, &nonce)), f);
        h.client(from, &req).reply()
    };
    let reply = signed(&mut h, Method::REFRESH, &|w| {
        w.attr(&Lifetime(600)).unwrap();
    });
    assert_eq!(code(&reply), None, "Refresh: {}", describe(&reply));
    let reply = signed(&mut h, Method::CREATE_PERMISSION, &|w| {
        w.attr(&XorPeerAddress(peer(1, 5000))).unwrap();
    });
    assert_eq!(code(&reply), None, "CreatePermission: {}", describe(&reply));
    // The binding came across (a new one would take any peer): the number cannot go to
    // another peer.
    let reply = signed(&mut h, Method::CHANNEL_BIND, &|w| {
        w.attr(&ChannelNumber(0x4000)).unwrap();
        w.attr(&XorPeerAddress(peer(2, 5000))).unwrap();
    });
    assert_eq!(code(&reply), Some(400), "{}", describe(&reply));

    let reply = signed(&mut h, Method::CHANNEL_BIND, &|w| {
        w.attr(&ChannelNumber(0x4000)).unwrap();
        w.attr(&XorPeerAddress(peer(1, 5000))).unwrap();
    });
    assert_eq!(code(&reply), None, "ChannelBind: {}", describe(&reply));

    // The control: a process that generated its own key calls the same nonce stale.
    let mut other = capture(&h);
    other.nonce_key =
        Snapshot::new(&NonceKey::new([8; 32]), other.shared.clone(), vec![]).nonce_key;
    h.server = restored(&h, &other).unwrap();
    let reply = signed(&mut h, Method::REFRESH, &|w| {
        w.attr(&Lifetime(600)).unwrap();
    });
    assert_eq!(code(&reply), Some(438));
}

#[test]
fn a_newer_format_or_a_broken_snapshot_is_refused_with_the_reason() {
    let mut snap = capture(&busy_relay());
    snap.version = SNAPSHOT_VERSION + 1;
    assert_eq!(
        Snapshot::from_json(&snap.to_json()),
        Err(RestoreError::Version {
            found: SNAPSHOT_VERSION + 1,
            supported: SNAPSHOT_VERSION
        })
    );
    assert!(matches!(
        Snapshot::from_json("{\"version\":1}"),
        Err(RestoreError::Syntax(_))
    ));
    snap.version = SNAPSHOT_VERSION;
    snap.nonce_key = "c2hvcnQ=".into();
    assert_eq!(snap.nonce_key().err(), Some(RestoreError::NonceKey));
    // The same allocation twice: the second one finds its client and ports taken.
    let h = H::new();
    let mut twice = capture(&busy_relay());
    let first = twice.shards[0].allocations[0].clone();
    twice.shards.push(ShardSnapshot {
        allocations: vec![first],
    });
    assert!(matches!(
        restored(&h, &twice),
        Err(RestoreError::DuplicateClient(_))
    ));
}

/// What a client can do to a relay, for the property test.
#[derive(Clone, Debug)]
enum Op {
    Allocate(u16),
    Permit(u16, u8),
    Bind(u16, u16, u8),
    Refresh(u16, u32),
    Advance(u64),
    Send(u16, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..6u16).prop_map(Op::Allocate),
        (0..6u16, 1..4u8).prop_map(|(n, p)| Op::Permit(n, p)),
        (0..6u16, 0..3u16, 1..4u8).prop_map(|(n, c, p)| Op::Bind(n, 0x4000 + c, p)),
        (0..6u16, prop_oneof![Just(0u32), 60..3600u32]).prop_map(|(n, l)| Op::Refresh(n, l)),
        (0..700_000u64).prop_map(Op::Advance),
        (0..6u16, 1..4u8).prop_map(|(n, p)| Op::Send(n, p)),
    ]
}

fn run(h: &mut H, op: &Op) {
    let alice = Cred::alice();
    match *op {
        Op::Allocate(n) => {
            let even = n % 2 == 0;
            h.allocate_with(udp(n), &alice, |w| {
                if even {
                    w.attr(&EvenPort(true)).unwrap();
                }
                w.attr(&RequestedTransport(17)).ok();
            });
        }
        Op::Permit(n, p) => {
            h.permit(udp(n), &alice, &[peer(p, 5000)]);
        }
        Op::Bind(n, c, p) => {
            h.bind(udp(n), &alice, c, peer(p, 5000));
        }
        Op::Refresh(n, l) => {
            h.refresh(udp(n), &alice, Some(l));
        }
        Op::Advance(ms_) => h.advance(ms(ms_)),
        Op::Send(n, p) => {
            h.send(udp(n), peer(p, 5000), b"x");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn snapshot_restore_snapshot_is_the_identity(ops in proptest::collection::vec(op(), 0..24)) {
        let mut h = H::new();
        for op in &ops {
            run(&mut h, op);
        }
        let before = capture(&h);
        let json = before.to_json();
        let server = restored(&h, &Snapshot::from_json(&json).unwrap()).unwrap();
        prop_assert_eq!(server.allocation_count(), h.server.allocation_count());
        prop_assert_eq!(server.ports_in_use(), h.server.ports_in_use());
        let after = Snapshot::new(
            &NonceKey::new([7; 32]),
            server.shared().snapshot(h.now),
            vec![server.snapshot(h.now)],
        );
        prop_assert_eq!(after, before);
    }
}
