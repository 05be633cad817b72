//! Bandwidth limits on the userspace path: `max_bps_per_allocation` and
//! `max_bps_per_user` drop the excess of payload, both directions and hairpin, counted
//! per allocation and by reason.

use std::time::Duration;

use super::harness::*;
use crate::server::DropReason;

const KB: [u8; 1000] = [0x5a; 1000];
/// 200 ms at 800 kbit/s is 20 kB: twenty 1000-byte datagrams, and the one at the edge.
const BURST: usize = 21;

fn sent(h: &mut H, from: crate::server::FiveTuple, n: usize) -> usize {
    (0..n)
        .filter(|_| matches!(h.send(from, peer(1, 9), &KB), Out::ToPeer { .. }))
        .count()
}

#[test]
fn an_allocation_over_its_limit_drops_both_directions_and_counts() {
    let mut h = H::with(|c| c.max_bps_per_allocation = 800_000);
    h.allocate(udp(1));
    h.allocate(udp(2));
    h.permit(udp(1), &Cred::alice(), &[peer(1, 0)]);
    h.permit(udp(2), &Cred::alice(), &[peer(1, 0)]);
    assert_eq!(sent(&mut h, udp(1), 60), BURST);
    let relay = h.relay_bind(udp(1));
    assert_eq!(
        h.peer(relay, peer(1, 9), &KB),
        Out::Drop(DropReason::BandwidthLimit)
    );
    let dropped = 60 - BURST as u64 + 1;
    assert_eq!(h.server.drops().get(DropReason::BandwidthLimit), dropped);
    let c = h.server.allocation(&udp(1)).unwrap().counters();
    assert_eq!(c.bandwidth_dropped, dropped);
    assert_eq!(c.to_peer_packets, BURST as u64);
    // Another allocation of the same user (no user limit) is not touched.
    assert_eq!(sent(&mut h, udp(2), BURST), BURST);
    // A second later the first may send again: 100 kB/s, within the same burst.
    h.skip(Duration::from_secs(1));
    assert_eq!(sent(&mut h, udp(1), 30), BURST);
}

#[test]
fn the_sender_at_twice_the_limit_gets_the_limit() {
    let mut h = H::with(|c| c.max_bps_per_allocation = 800_000);
    h.allocate(udp(1));
    h.permit(udp(1), &Cred::alice(), &[peer(1, 0)]);
    // 2 Mbit/s for 10 s: 1000 bytes every 4 ms.
    let mut passed = 0;
    for _ in 0..2500 {
        passed += sent(&mut h, udp(1), 1);
        h.skip(Duration::from_millis(4));
    }
    let bps = passed as u64 * 8000 / 10;
    assert!((800_000..=820_000).contains(&bps), "{bps} bit/s");
}

#[test]
fn a_hairpin_is_charged_to_the_receiver_too() {
    let mut h = H::with(|c| c.max_bps_per_allocation = 800_000);
    let r1 = h.allocate(udp(1));
    let r2 = h.allocate(udp(2));
    h.permit(udp(1), &Cred::alice(), &[r2, peer(1, 0)]);
    h.permit(udp(2), &Cred::alice(), &[r1, peer(1, 0)]);
    // The receiver's bucket emptied by its peer.
    let relay2 = h.relay_bind(udp(2));
    let from_peer = (0..60)
        .filter(|_| matches!(h.peer(relay2, peer(1, 9), &KB), Out::ToClient { .. }))
        .count();
    assert_eq!(from_peer, BURST);
    assert_eq!(h.send(udp(1), r2, &KB), Out::Nothing);
    let c2 = h.server.allocation(&udp(2)).unwrap().counters();
    assert_eq!(c2.bandwidth_dropped, 60 - BURST as u64 + 1);
    // The sender was charged, not dropped.
    let c1 = h.server.allocation(&udp(1)).unwrap().counters();
    assert_eq!(c1.bandwidth_dropped, 0);
}

#[test]
fn a_user_limit_spans_the_users_allocations() {
    let mut h = H::with(|c| c.max_bps_per_user = 800_000);
    h.allocate(udp(1));
    h.allocate(udp(2));
    let bob = Cred::bob();
    let reply = h.allocate_with(udp(3), &bob, |_| {});
    assert_eq!(code(&reply), None, "{}", describe(&reply));
    for (n, cred) in [(1, Cred::alice()), (2, Cred::alice()), (3, bob)] {
        h.permit(udp(n), &cred, &[peer(1, 0)]);
    }
    assert_eq!(sent(&mut h, udp(1), 15), 15);
    assert_eq!(sent(&mut h, udp(2), 15), BURST - 15);
    assert_eq!(sent(&mut h, udp(3), 15), 15);
}

#[test]
fn no_limit_by_default() {
    let mut h = H::new();
    h.allocate(udp(1));
    h.permit(udp(1), &Cred::alice(), &[peer(1, 0)]);
    assert_eq!(sent(&mut h, udp(1), 500), 500);
}
