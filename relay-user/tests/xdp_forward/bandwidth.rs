//! Bandwidth limits in the kernel (`[limits] max_bps_per_allocation`, `max_bps_per_user`):
//! past the burst (200 ms of the rate), datagrams are dropped in both directions with
//! reason `bandwidth_limit` and counted for their allocation; other allocations and users
//! keep their own buckets.

use std::net::SocketAddr;
use std::sync::Arc;

use relay_common::Reason;
use relay_user::xdp::BandwidthLimits;

use super::hairpin::{pair_v4, permit_b, setup};
use super::send::{A, send_indication};
use super::{CLIENT_MAC, Env, Family, PEER_MAC, XDP_TX, channel_data, frame, in_netns, sa, v4};

const XDP_DROP: u32 = 1;
const CHANNEL: u16 = 0x4001;
/// 200 ms at 800 kbit/s is 20 kB: twenty 1000-byte datagrams, and the one at the edge.
const BURST_DATAGRAMS: usize = 21;

/// Allocation `id` of `user` on `f`'s relay address, with a channel to `f.peer`.
fn allocation(env: &mut Env, f: &Family, id: u64, user: &str) {
    env.maps
        .add_udp_allocation(f.client, f.listener, f.relay, f.relay)
        .unwrap();
    env.maps
        .limit_bandwidth(f.relay, id, &Arc::<str>::from(user))
        .unwrap();
    env.maps
        .add_permission(f.client, f.listener, f.relay, f.peer.ip())
        .unwrap();
    env.maps
        .add_channel(f.client, f.listener, f.relay, f.peer, CHANNEL)
        .unwrap();
}

/// A second allocation beside `v4()`'s: another client port and relayed port.
fn other() -> Family {
    Family {
        client: sa("10.0.0.3:50001"),
        relay: sa("10.0.0.1:24001"),
        ..v4()
    }
}

/// A frame of 1000 bytes of ChannelData on [`CHANNEL`] from `client` to `listener`.
fn channel_data_from(env: &Env, client: SocketAddr, listener: SocketAddr) -> Vec<u8> {
    let msg = channel_data(CHANNEL, &[0x5a; 1000], 0);
    frame(client, listener, &msg, CLIENT_MAC, env.mac)
}

/// Sends `n` ChannelData datagrams of 1000 bytes from `f`'s client; returns how many the
/// kernel forwarded (the rest it must have dropped).
fn send(env: &mut Env, f: &Family, n: usize) -> usize {
    let input = channel_data_from(env, f.client, f.listener);
    (0..n)
        .filter(|_| match env.run(&input).0 {
            XDP_TX => true,
            XDP_DROP => false,
            other => panic!("action {other}"),
        })
        .count()
}

fn limits(per_allocation: u64, per_user: u64) -> BandwidthLimits {
    BandwidthLimits {
        per_allocation,
        per_user,
    }
}

#[test]
fn over_the_allocation_limit_both_directions_drop_and_others_pass() {
    in_netns(|env| {
        env.maps.set_bandwidth_limits(limits(800_000, 0));
        let (a, b) = (v4(), other());
        allocation(env, &a, 1, "alice");
        allocation(env, &b, 2, "alice");

        let passed = send(env, &a, 60);
        // The runs take microseconds: the refill adds at most a datagram or two.
        assert!(
            (BURST_DATAGRAMS..=BURST_DATAGRAMS + 2).contains(&passed),
            "{passed} of 60 passed"
        );
        let dropped = (60 - passed) as u64;
        assert_eq!(env.reason(Reason::BandwidthLimit), dropped);
        assert_eq!(env.maps.bandwidth_drops(a.relay).unwrap(), dropped);

        // The peer's datagrams to the same allocation share the bucket.
        let from_peer = frame(a.peer, a.relay, &[7; 1000], PEER_MAC, env.mac);
        assert_eq!(env.run(&from_peer).0, XDP_DROP);
        // So do Send indications.
        let ind = send_indication(&[A::Peer(a.peer), A::Data(&[1; 1000])], 0);
        let ind = frame(a.client, a.listener, &ind, CLIENT_MAC, env.mac);
        assert_eq!(env.run(&ind).0, XDP_DROP);
        assert_eq!(env.maps.bandwidth_drops(a.relay).unwrap(), dropped + 2);

        // The other allocation (same user, no user limit) has its own bucket.
        assert_eq!(send(env, &b, BURST_DATAGRAMS - 1), BURST_DATAGRAMS - 1);
        assert_eq!(env.maps.bandwidth_drops(b.relay).unwrap(), 0);
    });
}

#[test]
fn a_user_limit_spans_the_users_allocations() {
    in_netns(|env| {
        env.maps.set_bandwidth_limits(limits(0, 800_000));
        let (a, b) = (v4(), other());
        allocation(env, &a, 1, "alice");
        allocation(env, &b, 2, "alice");
        let bob = Family {
            client: sa("10.0.0.3:50002"),
            relay: sa("10.0.0.1:24002"),
            ..v4()
        };
        allocation(env, &bob, 3, "bob");

        assert_eq!(send(env, &a, 15), 15);
        let passed = send(env, &b, 20);
        assert!(
            (BURST_DATAGRAMS - 15..=BURST_DATAGRAMS - 15 + 2).contains(&passed),
            "{passed} of 20 passed"
        );
        assert_eq!(
            env.maps.bandwidth_drops(b.relay).unwrap(),
            (20 - passed) as u64
        );
        assert_eq!(send(env, &bob, 15), 15);
    });
}

#[test]
fn without_limits_nothing_is_dropped() {
    in_netns(|env| {
        let a = v4();
        allocation(env, &a, 1, "alice");
        assert_eq!(send(env, &a, 100), 100);
        assert_eq!(env.reason(Reason::BandwidthLimit), 0);
    });
}

#[test]
fn a_hairpin_is_charged_to_the_receiver_too() {
    in_netns(|env| {
        env.maps.set_bandwidth_limits(limits(800_000, 0));
        let p = pair_v4();
        setup(env, &p);
        permit_b(env, &p);
        // Only B is limited: what A's client sends stops at B's bucket.
        env.maps
            .limit_bandwidth(p.b_relay, 2, &Arc::<str>::from("bob"))
            .unwrap();
        let input = channel_data_from(env, p.a_client, p.listener);
        let passed = (0..60).filter(|_| env.run(&input).0 == XDP_TX).count();
        assert!(
            (BURST_DATAGRAMS..=BURST_DATAGRAMS + 2).contains(&passed),
            "{passed} of 60 passed"
        );
        let dropped = (60 - passed) as u64;
        assert_eq!(env.maps.bandwidth_drops(p.b_relay).unwrap(), dropped);
        assert_eq!(env.maps.bandwidth_drops(p.a_relay).unwrap(), 0);
        assert_eq!(env.reason(Reason::BandwidthLimit), dropped);
    });
}
