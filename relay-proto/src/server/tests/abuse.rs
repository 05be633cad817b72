//! Unauthenticated traffic: answers at most 4 times the request's size, a per-source request
//! rate, no answers to source port 0.

use std::time::Duration;

use super::harness::*;
use crate::auth::CredentialStore;
use crate::server::{DropReason, FiveTuple, Transport};
use crate::stun::{
    Class, ErrorCode, Message, MessageWriter, Method, Nonce, PasswordAlgorithms, Realm,
    RequestedTransport, Software, TransactionId,
};

/// The smallest valid Allocate: header and REQUESTED-TRANSPORT, no FINGERPRINT (28 bytes).
fn minimal_allocate(txid: [u8; 12]) -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    let mut w = MessageWriter::new(
        &mut buf,
        Class::Request,
        Method::ALLOCATE,
        TransactionId(txid),
    )
    .unwrap();
    w.attr(&RequestedTransport(17)).unwrap();
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn assert_bounded(req: &[u8], reply: &[u8]) {
    assert!(
        reply.len() <= 4 * req.len(),
        "a {}-byte request got a {}-byte answer ({:.1}x): {}",
        req.len(),
        reply.len(),
        reply.len() as f64 / req.len() as f64,
        describe(reply)
    );
}

#[test]
fn minimal_allocate_gets_a_401_at_most_four_times_its_size() {
    let mut h = H::new();
    let txid = h.txid();
    let req = minimal_allocate(txid);
    assert_eq!(req.len(), 28);
    let reply = h.client(udp(1), &req).reply();
    assert_eq!(code(&reply), Some(401));
    assert_bounded(&req, &reply);
    let m = Message::parse(&reply).unwrap();
    // What RFC 8489 §9.2.4 requires stays: REALM, NONCE and, as the nonce advertises
    // password algorithms, PASSWORD-ALGORITHMS.
    assert_eq!(m.attr::<Realm>(), Some(Ok(Realm(REALM))));
    assert!(m.attr::<Nonce>().is_some());
    assert!(m.attr::<PasswordAlgorithms>().is_some());
    assert_eq!(m.attr::<Software>(), None);
    assert!(!m.has_fingerprint(), "the request had no FINGERPRINT");
}

#[test]
fn a_fingerprinted_request_gets_a_fingerprinted_challenge() {
    let mut h = H::new();
    let txid = h.txid();
    let req = h.build(Class::Request, Method::ALLOCATE, txid, None, |w| {
        w.attr(&RequestedTransport(17)).unwrap();
    });
    let reply = h.client(udp(1), &req).reply();
    assert_eq!(code(&reply), Some(401));
    assert_bounded(&req, &reply);
    let m = Message::parse(&reply).unwrap();
    assert!(m.has_fingerprint());
    assert_eq!(m.attr::<Software>(), None);
}

#[test]
fn a_long_realm_trims_the_reason_phrase_before_giving_up() {
    // 28 characters of realm: with the standard reason phrase the 401 takes 128 bytes,
    // without it 112.
    let realm = "turn-eu-west-1.example.co.uk";
    let mut h = H::new();
    h.server.set_credentials(CredentialStore::new(realm));
    let txid = h.txid();
    let req = minimal_allocate(txid);
    let reply = h.client(udp(1), &req).reply();
    assert_eq!(code(&reply), Some(401));
    assert_bounded(&req, &reply);
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.attr::<Realm>(), Some(Ok(Realm(realm))));
    assert_eq!(
        m.attr::<ErrorCode>().unwrap().unwrap().reason,
        "",
        "the reason phrase gave way"
    );

    // A realm so long nothing fits: no answer, counted.
    let realm = "r".repeat(100);
    let mut h = H::new();
    h.server.set_credentials(CredentialStore::new(&realm));
    let txid = h.txid();
    let req = minimal_allocate(txid);
    match h.client(udp(1), &req) {
        Out::Nothing => {}
        Out::Reply(r) => panic!("a {}-byte answer: {}", r.len(), describe(&r)),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.server.drops().get(DropReason::Amplification), 1);
}

#[test]
fn over_tcp_nothing_is_trimmed_or_withheld() {
    // A TCP client completed a handshake: its address is real, it cannot aim the answer at
    // anyone else.
    let realm = "r".repeat(100);
    let mut h = H::new();
    h.server.set_credentials(CredentialStore::new(&realm));
    let txid = h.txid();
    let req = minimal_allocate(txid);
    let reply = h.client(tcp(1), &req).reply();
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.attr::<Realm>(), Some(Ok(Realm(&realm))));
    assert_eq!(
        m.attr::<ErrorCode>().unwrap().unwrap().reason,
        "Unauthenticated"
    );
}

#[test]
fn unauthenticated_400s_and_438s_stay_within_four_times() {
    let mut h = H::new();
    // Unknown method, 20 bytes: 400.
    let txid = h.txid();
    let mut req = vec![0u8; 20];
    let w =
        MessageWriter::new(&mut req, Class::Request, Method(0x0ff), TransactionId(txid)).unwrap();
    let n = w.finish();
    req.truncate(n);
    let reply = h.client(udp(1), &req).reply();
    assert_eq!(code(&reply), Some(400));
    assert_bounded(&req, &reply);

    // Integrity but no USERNAME: 400.
    let txid = h.txid();
    let mut buf = vec![0u8; 128];
    let mut w = MessageWriter::new(
        &mut buf,
        Class::Request,
        Method::ALLOCATE,
        TransactionId(txid),
    )
    .unwrap();
    w.attr(&RequestedTransport(17)).unwrap();
    w.attr(&Realm(REALM)).unwrap();
    w.attr(&Nonce("x")).unwrap();
    w.integrity_sha1(b"k").unwrap();
    let n = w.finish();
    buf.truncate(n);
    let reply = h.client(udp(1), &buf).reply();
    assert_eq!(code(&reply), Some(400));
    assert_bounded(&buf, &reply);

    // A stale nonce: 438 with a fresh challenge.
    let nonce = h.nonce(udp(2));
    h.skip(secs(600));
    let txid = h.txid();
    let req = h.build(
        Class::Request,
        Method::ALLOCATE,
        txid,
        Some((&Cred::alice(), &nonce)),
        |w| {
            w.attr(&RequestedTransport(17)).unwrap();
        },
    );
    let reply = h.client(udp(2), &req).reply();
    assert_eq!(code(&reply), Some(438));
    assert_bounded(&req, &reply);
    assert_eq!(Message::parse(&reply).unwrap().attr::<Software>(), None);
}

#[test]
fn a_bare_binding_is_answered_with_the_mapped_address_only() {
    let mut h = H::new();
    let txid = h.txid();
    let mut req = vec![0u8; 20];
    let w = MessageWriter::new(
        &mut req,
        Class::Request,
        Method::BINDING,
        TransactionId(txid),
    )
    .unwrap();
    w.finish();
    let reply = h.client(udp(1), &req).reply();
    // Header and XOR-MAPPED-ADDRESS (IPv4).
    assert_eq!(reply.len(), 32, "{}", describe(&reply));
}

#[test]
fn source_port_zero_is_never_answered() {
    let mut h = H::new();
    let from = udp_at("192.0.2.100", 0);
    let txid = h.txid();
    let req = h.build(Class::Request, Method::BINDING, txid, None, |_| {});
    assert!(matches!(h.client(from, &req), Out::Nothing));
    let req = minimal_allocate(h.txid());
    assert!(matches!(h.client(from, &req), Out::Nothing));
    assert_eq!(h.server.drops().get(DropReason::SourcePortZero), 2);
    // TCP cannot have port 0 either, but say so for any transport.
    let tcp0 = FiveTuple::new(from.client, listener(), Transport::Tcp);
    assert!(matches!(h.client(tcp0, &req), Out::Nothing));
}

/// `n` minimal Allocates from `from` (fresh transactions); how many were answered.
fn answered(h: &mut H, from: FiveTuple, n: usize) -> usize {
    (0..n)
        .filter(|_| {
            let req = minimal_allocate(h.txid());
            matches!(h.client(from, &req), Out::Reply(_))
        })
        .count()
}

#[test]
fn unauthenticated_requests_are_limited_per_source() {
    let mut h = H::with(|c| {
        c.unauthenticated_rate = 10;
        c.unauthenticated_burst = 20;
    });
    // The burst, then nothing.
    assert_eq!(answered(&mut h, udp(1), 50), 20);
    assert_eq!(h.server.drops().get(DropReason::UnauthenticatedRate), 30);
    // Another port of the same address shares the bucket; so does another address of the
    // same IPv6 /64.
    assert_eq!(answered(&mut h, udp(2), 5), 0);
    // Another address has its own.
    assert_eq!(answered(&mut h, udp_at("192.0.2.101", 5000), 5), 5);
    // Then `rate` per second.
    h.skip(Duration::from_secs(1));
    assert_eq!(answered(&mut h, udp(1), 50), 10);
    h.skip(Duration::from_millis(500));
    assert_eq!(answered(&mut h, udp(1), 50), 5);

    let mut h = H::with(|c| {
        c.unauthenticated_rate = 10;
        c.unauthenticated_burst = 10;
    });
    assert_eq!(answered(&mut h, udp_at("2001:db8:1:2::1", 5000), 10), 10);
    assert_eq!(answered(&mut h, udp_at("2001:db8:1:2::ffff", 5000), 1), 0);
    assert_eq!(answered(&mut h, udp_at("2001:db8:1:3::1", 5000), 1), 1);
}

#[test]
fn established_five_tuples_are_never_limited() {
    let mut h = H::with(|c| {
        c.unauthenticated_rate = 1;
        c.unauthenticated_burst = 3;
    });
    // `allocate` spends one challenge and one Allocate.
    h.allocate(udp(1));
    for _ in 0..50 {
        let r = h.refresh(udp(1), &Cred::alice(), Some(600));
        assert_eq!(code(&r), None, "{}", describe(&r));
    }
    assert_eq!(h.server.drops().get(DropReason::UnauthenticatedRate), 0);
    // Another port of the same client has no allocation: it is limited (one token left).
    assert_eq!(answered(&mut h, udp(2), 5), 1);
}

#[test]
fn rate_zero_turns_the_limit_off() {
    let mut h = H::with(|c| c.unauthenticated_rate = 0);
    assert_eq!(answered(&mut h, udp(1), 2000), 2000);
}

#[test]
fn the_limit_holds_across_shards() {
    let (mut hs, _) = super::shards::shards(2, |c| {
        c.unauthenticated_rate = 10;
        c.unauthenticated_burst = 10;
    });
    let a = answered(&mut hs[0], udp(1), 6);
    let b = answered(&mut hs[1], udp(2), 6);
    assert_eq!(a + b, 10);
}

/// Spoofed sources, each well under its own rate, still add up: the global bucket bounds
/// what they all get together, and frees up at its rate.
#[test]
fn unauthenticated_requests_are_limited_globally() {
    let mut h = H::with(|c| {
        c.unauthenticated_rate = 10;
        c.unauthenticated_burst = 20;
        c.unauthenticated_global_rate = 50;
        c.unauthenticated_global_burst = 100;
    });
    let total: usize = (0..40u8)
        .map(|n| answered(&mut h, udp_at(&format!("198.51.100.{n}"), 5000), 5))
        .sum();
    assert_eq!(total, 100);
    assert_eq!(h.server.drops().get(DropReason::UnauthenticatedRate), 100);
    h.skip(Duration::from_secs(1));
    let total: usize = (40..80u8)
        .map(|n| answered(&mut h, udp_at(&format!("198.51.100.{n}"), 5000), 5))
        .sum();
    assert_eq!(total, 50);
    // Off: only each source's own bucket.
    let mut h = H::with(|c| c.unauthenticated_global_rate = 0);
    let total: usize = (0..100u8)
        .map(|n| answered(&mut h, udp_at(&format!("198.51.100.{n}"), 5000), 5))
        .sum();
    assert_eq!(total, 500);
}
