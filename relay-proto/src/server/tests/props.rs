//! Property tests: hostile input never panics and never creates state without credentials.

use proptest::prelude::*;

use super::harness::*;
use crate::stun::{Class, Message, Method, RequestedTransport, XorPeerAddress};

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_or_create_state(
        packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..8),
        peer_port in any::<u16>(),
    ) {
        let mut h = H::new();
        for p in &packets {
            let _ = h.client(udp(1), p);
            let _ = h.peer(([10, 0, 0, 5], peer_port).into(), peer(1, 1), p);
        }
        prop_assert_eq!(h.server.allocation_count(), 0);
        prop_assert!(h.commands().is_empty());
        prop_assert_eq!(h.server.timer_entries(), 0);
    }

    #[test]
    fn random_stun_looking_bytes_never_create_state(
        method in 0u16..0x20,
        class in 0u8..4,
        body in proptest::collection::vec(any::<u8>(), 0..160),
    ) {
        let mut h = H::new();
        let class = [Class::Request, Class::Indication, Class::Success, Class::Error][class as usize];
        let mut pkt = vec![0u8; 20];
        pkt[..2].copy_from_slice(&crate::stun::encode_type(class, Method(method)).to_be_bytes());
        let len = (body.len() / 4 * 4) as u16;
        pkt[2..4].copy_from_slice(&len.to_be_bytes());
        pkt[4..8].copy_from_slice(&crate::stun::MAGIC_COOKIE.to_be_bytes());
        pkt.extend_from_slice(&body[..len as usize]);
        let _ = h.client(udp(1), &pkt);
        prop_assert_eq!(h.server.allocation_count(), 0);
        prop_assert!(h.commands().is_empty());
    }

    /// Flipping bytes of a valid Allocate: whenever an allocation results, the mutated request
    /// still carried a valid MESSAGE-INTEGRITY under alice's key.
    #[test]
    fn mutated_allocate_creates_state_only_when_integrity_holds(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        truncate in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut h = H::new();
        let nonce = h.nonce(udp(1));
        let txid = h.txid();
        let mut req = h.build(Class::Request, Method::ALLOCATE, txid, Some((&Cred::alice(), &nonce)), |w| {
            w.attr(&RequestedTransport(17)).unwrap();
        });
        for (i, x) in &flips {
            let i = i.index(req.len());
            req[i] ^= x;
        }
        if let Some(t) = truncate {
            let n = t.index(req.len());
            req.truncate(n);
        }
        let _ = h.client(udp(1), &req);
        if h.server.allocation_count() > 0 {
            let m = Message::parse(&req).expect("created state from an unparsable request");
            prop_assert!(m.verify_integrity(Cred::alice().key().as_bytes()).is_ok());
        }
    }

    /// The same with a request signed by a wrong password: never any state.
    #[test]
    fn wrongly_signed_requests_never_create_state(
        method in prop::sample::select(vec![Method::ALLOCATE, Method::REFRESH, Method::CREATE_PERMISSION, Method::CHANNEL_BIND]),
        flip in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
    ) {
        let mut h = H::new();
        let nonce = h.nonce(udp(1));
        let txid = h.txid();
        let cred = Cred::new("alice", "not-the-password");
        let mut req = h.build(Class::Request, method, txid, Some((&cred, &nonce)), |w| {
            w.attr(&RequestedTransport(17)).unwrap();
            w.attr(&XorPeerAddress(peer(1, 1))).unwrap();
        });
        if let Some((i, x)) = flip {
            let i = i.index(req.len());
            req[i] ^= x;
        }
        let _ = h.client(udp(1), &req);
        prop_assert_eq!(h.server.allocation_count(), 0);
        prop_assert!(h.commands().is_empty());
    }
}
