use std::time::{Duration, Instant};

use super::*;
use crate::config::AdminUrl;

fn node(i: u8) -> ClusterNode {
    ClusterNode {
        turn: ([192, 0, 2, i], 3478).into(),
        admin: AdminUrl {
            tls: false,
            address: ([192, 0, 2, i], 9641).into(),
        },
    }
}

fn heard(allocations: usize, capacity: usize, draining: bool) -> Result<Heard, String> {
    Ok(Heard {
        allocations: Some(allocations),
        capacity,
        draining,
    })
}

#[test]
fn only_healthy_nodes_with_room_are_targets() {
    let t0 = Instant::now();
    let c = Cluster::default();
    c.set_nodes(&[node(1), node(2), node(3), node(4), node(5)]);
    // Never heard from: not a target.
    assert!(c.targets(t0).is_empty());
    c.heard(node(1), t0, heard(10, 100, false));
    c.heard(node(2), t0, heard(100, 100, false)); // full
    c.heard(node(3), t0, heard(0, 100, true)); // draining
    c.heard(node(4), t0, Err("connection refused".into())); // unreachable
    c.heard(node(5), t0, heard(1, 100, false));
    let turns: Vec<_> = c.targets(t0).iter().map(|t| t.turn).collect();
    assert_eq!(turns, [node(1).turn, node(5).turn]);
    // Node 5 goes quiet: it drops out once not heard from for MAX_SILENCE, though its
    // last answer said it had room.
    let later = t0 + MAX_SILENCE + Duration::from_millis(1);
    c.heard(node(1), later, heard(10, 100, false));
    let turns: Vec<_> = c.targets(later).iter().map(|t| t.turn).collect();
    assert_eq!(turns, [node(1).turn]);
    // A failed poll after a good one: down at once, last figures kept for the view.
    c.heard(node(1), later, Err("timeout".into()));
    assert!(c.targets(later).is_empty());
    let v = c.view(later);
    assert!(!v[0].up);
    assert_eq!(v[0].allocations, Some(10));
    assert_eq!(v[0].error.as_deref(), Some("timeout"));
    assert_eq!(v[3].last_heard_seconds, None);
    assert_eq!(
        v[1].last_heard_seconds,
        Some(MAX_SILENCE.as_secs_f64() + 0.001)
    );
}

#[test]
fn a_reload_keeps_what_was_heard_of_nodes_still_listed() {
    let t0 = Instant::now();
    let c = Cluster::default();
    c.set_nodes(&[node(1), node(2)]);
    c.heard(node(2), t0, heard(3, 10, false));
    c.set_nodes(&[node(2), node(3)]);
    let nodes = c.nodes();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0].allocations, Some(3));
    assert_eq!(nodes[1].last_heard, None);
    // An answer from a node no longer listed is dropped.
    assert!(c.heard(node(1), t0, heard(0, 10, false)).is_none());
}
