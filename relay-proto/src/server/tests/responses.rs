//! Operator counters: error responses per code, alternates replaced at runtime.

use std::net::SocketAddr;

use super::harness::*;
use crate::stun::{AlternateServer, Message};

#[test]
fn error_responses_are_counted_per_code() {
    let mut h = H::with(|c| c.max_allocations = 1);
    // `allocate` takes one 401 challenge for its nonce.
    h.allocate(udp(1));
    assert_eq!(h.server.error_responses().get(401), 1);
    let r = h.allocate_with(udp(2), &Cred::alice(), |_| {});
    assert_eq!(code(&r), Some(508));
    let r = h.allocate_with(udp(3), &Cred::new("alice", "not-her-password"), |_| {});
    assert_eq!(code(&r), Some(401));

    let counts = h.server.error_responses();
    // Three challenges plus the refused password.
    assert_eq!(counts.get(401), 4);
    assert_eq!(counts.get(508), 1);
    assert_eq!(counts.get(300), 0);
    assert_eq!(counts.other(), 0);
    let listed: u64 = counts.iter().map(|(_, n)| n).sum();
    assert_eq!(listed, 5);
}

#[test]
fn alternates_can_be_replaced_at_runtime() {
    let mut h = H::with(|c| c.max_allocations = 1);
    h.allocate(udp(1));
    let r = h.allocate_with(udp(2), &Cred::alice(), |_| {});
    assert_eq!(code(&r), Some(508));

    let alt: SocketAddr = ([192, 0, 2, 210], 3478).into();
    h.server.set_alternate_servers(vec![alt]);
    let r = h.allocate_with(udp(3), &Cred::alice(), |_| {});
    assert_eq!(code(&r), Some(300));
    let m = Message::parse(&r).unwrap();
    assert_eq!(m.attr::<AlternateServer>(), Some(Ok(AlternateServer(alt))));
    assert_eq!(h.server.error_responses().get(300), 1);
}
