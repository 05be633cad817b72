//! The splice's decisions as plain functions: no sockets, no core, time passed in.

use std::time::{Duration, Instant};

use super::*;
use crate::{
    shard::slab::Slab,
    tcp::{
        connection::Mode,
        stream::{HIGH_WATER, LOW_WATER},
    },
};

fn keys() -> (Key, Key) {
    let mut s = Slab::default();
    (s.insert(()), s.insert(()))
}

#[test]
fn an_unspliced_peer_connection_is_not_read_until_its_connection_bind() {
    let waiting = ReadGate {
        peer: true,
        ..ReadGate::default()
    };
    assert!(!wants_read(waiting));
    // Spliced: read while the client's queue has room.
    assert!(wants_read(ReadGate {
        linked: true,
        ..waiting
    }));
    // A client connection reads from the start.
    assert!(wants_read(ReadGate::default()));
}

#[test]
fn a_spliced_socket_pauses_on_its_partners_queue_not_its_own() {
    let spliced = ReadGate {
        linked: true,
        ..ReadGate::default()
    };
    assert!(!wants_read(ReadGate {
        partner_full: true,
        ..spliced
    }));
    // Its own full queue is the other direction's business.
    assert!(wants_read(ReadGate {
        backed_up: true,
        ..spliced
    }));
    // Unspliced, its own queue (or a stalled datagram) is what pauses it.
    assert!(!wants_read(ReadGate {
        backed_up: true,
        ..ReadGate::default()
    }));
}

#[test]
fn closing_or_draining_sockets_are_not_read() {
    for gate in [
        ReadGate {
            closing: true,
            linked: true,
            ..ReadGate::default()
        },
        ReadGate {
            finishing: true,
            linked: true,
            ..ReadGate::default()
        },
        ReadGate {
            closing: true,
            ..ReadGate::default()
        },
    ] {
        assert!(!wants_read(gate), "{gate:?}");
    }
}

#[test]
fn connection_bind_links_only_when_both_sockets_are_there() {
    let (d, p) = keys();
    assert_eq!(
        pair(Some((d, true)), Some((p, true))),
        Pairing::Link { data: d, peer: p }
    );
    // The peer connection closed before the ConnectionBind: the data connection ends.
    assert_eq!(
        pair(Some((d, true)), None),
        Pairing::Abort {
            close_data: Some(d)
        }
    );
    assert_eq!(
        pair(Some((d, true)), Some((p, false))),
        Pairing::Abort {
            close_data: Some(d)
        }
    );
    // The data connection is gone: only the core hears of it.
    assert_eq!(
        pair(None, Some((p, true))),
        Pairing::Abort { close_data: None }
    );
    assert_eq!(
        pair(Some((d, false)), Some((p, true))),
        Pairing::Abort {
            close_data: Some(d)
        }
    );
}

#[test]
fn peer_bytes_go_to_the_partner_and_only_once_spliced() {
    let (d, _) = keys();
    assert_eq!(peer_bytes(false, 10, Some(d)), PeerBytes::Forward(d));
    assert_eq!(peer_bytes(false, 10, None), PeerBytes::Close);
    assert_eq!(peer_bytes(true, 10, Some(d)), PeerBytes::Ignore);
    assert_eq!(peer_bytes(false, 0, None), PeerBytes::Ignore);
}

#[test]
fn a_connect_outcome_is_reported_once() {
    assert_eq!(connected(true, false), Connected::Up);
    assert_eq!(connected(true, true), Connected::Failed);
    // An error seen after the connect completed: the core knows the connection already.
    assert_eq!(connected(false, true), Connected::Ignore);
    // Connected at once (no EINPROGRESS): reported as up.
    assert_eq!(connected(false, false), Connected::Up);
}

#[test]
fn the_survivor_drains_within_the_grace_then_the_sweep_closes_it() {
    let now = Instant::now();
    // Nothing queued, or closing anyway: close at once.
    assert_eq!(finish(true, false, None, now), Finish::Close);
    assert_eq!(finish(false, true, None, now), Finish::Close);
    // Something queued: drain, with a deadline set once.
    let by = match finish(false, false, None, now) {
        Finish::DrainUntil(t) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!(by, now + FINISH_GRACE);
    let later = now + Duration::from_secs(3);
    assert_eq!(finish(false, false, Some(by), later), Finish::Draining);
    // The deadline is the sweep's: not before it, at it and after.
    assert!(!overdue(None, later + FINISH_GRACE));
    assert!(!overdue(Some(by), by - Duration::from_millis(1)));
    assert!(overdue(Some(by), by));
    assert!(overdue(Some(by), by + Duration::from_secs(1)));
    // Sent everything before the deadline: it closes then.
    assert!(drained(Some(by), true));
    assert!(!drained(Some(by), false));
    assert!(!drained(None, true), "a socket that is not draining stays");
}

#[test]
fn spliced_bytes_are_never_dropped_the_reader_pauses_above_high_water() {
    let mut to = Wire::new(Mode::Plain);
    let chunk = vec![5u8; 32 * 1024];
    let mut queued = 0;
    while !queue_spliced(&mut to, &chunk) {
        queued += chunk.len();
        assert!(
            queued <= HIGH_WATER,
            "pause no later than the high-water mark"
        );
    }
    queued += chunk.len();
    assert!(queued > HIGH_WATER);
    // Still more arrives (in flight before the pause): kept, not dropped.
    assert!(queue_spliced(&mut to, &chunk));
    queued += chunk.len();
    assert_eq!(to.tx.len(), queued);
    // The pause lifts once the queue is down to the low-water mark, not before.
    let mut resumed = false;
    while !resumed {
        assert!(to.tx_full);
        let n = to.tx.peek().len().min(16 * 1024);
        resumed = to.sent(n);
    }
    assert!(to.tx.len() <= LOW_WATER);
    assert!(!queue_spliced(&mut to, b"x"));
}
