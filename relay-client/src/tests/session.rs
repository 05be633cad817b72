//! Requests and their answers: challenges, errors, data both ways, refresh, delete.

use std::net::SocketAddr;
use std::time::Duration;

use relay_proto::stun::{AttrType, Class, Message, Method, Username};

use super::pair::{Pair, SECRET, UNIX_T0, peer, server_config, user};
use crate::{Config, Credentials, Integrity, Outcome, Request, Transport};

fn success(o: &Outcome) -> &crate::Success {
    match o {
        Outcome::Success(s) => s,
        other => panic!("expected a success, got {other:?}"),
    }
}

/// The relay socket's bind address for a relayed (public) address.
fn bind_of(relayed: SocketAddr) -> SocketAddr {
    ([10, 0, 0, 5], relayed.port()).into()
}

#[test]
fn allocate_answers_the_401_challenge_and_checks_the_response() {
    let mut p = Pair::new(Some(user()));
    let done = p.run(Request::ALLOCATE);
    let s = success(&done.outcome);
    assert_eq!(s.integrity, Some(Integrity::Verified));
    assert_eq!(s.relayed.len(), 1);
    assert_eq!(s.relayed[0].ip(), std::net::IpAddr::from([203, 0, 113, 5]));
    assert_eq!(s.mapped, Some(p.from.client));
    assert_eq!(p.client.relayed(), &s.relayed[..]);
    assert_eq!(p.client.realm().map(|r| r.0), Some("example.org"));
    // Two transactions: the unsigned one the server challenged, then the signed one.
    assert_eq!(p.sent.len(), 2);
    let first = Message::parse(&p.sent[0].1).unwrap();
    let second = Message::parse(&p.sent[1].1).unwrap();
    assert!(first.attr::<Username>().is_none());
    assert!(matches!(
        second.attr::<Username>(),
        Some(Ok(Username("alice")))
    ));
    assert_ne!(first.transaction_id(), second.transaction_id());
    assert_eq!((done.transmissions, done.stale_retries), (1, 0));
}

#[test]
fn wrong_password_is_reported_as_401_after_one_signed_try() {
    let mut p = Pair::new(Some(Credentials::new("alice", "not-the-password")));
    let done = p.run(Request::ALLOCATE);
    assert_eq!(done.outcome.code(), Some(401));
    assert_eq!(p.sent.len(), 2, "one unsigned, one signed: no loop on 401");
}

#[test]
fn without_credentials_the_challenge_is_the_answer() {
    let mut p = Pair::new(None);
    assert_eq!(p.run(Request::ALLOCATE).outcome.code(), Some(401));
    // A Binding needs none.
    let s = p.run(Request::Binding);
    assert_eq!(success(&s.outcome).mapped, Some(p.from.client));
    // The relay sends SOFTWARE on authenticated responses only.
    assert_eq!(success(&s.outcome).software, None);
}

#[test]
fn rest_credentials_from_a_shared_secret_allocate() {
    let creds = Credentials::rest(SECRET, "probe", UNIX_T0, 86_400);
    assert!(creds.username.ends_with(":probe") && creds.rest);
    let mut p = Pair::new(Some(creds));
    assert!(p.run(Request::ALLOCATE).outcome.is_success());
}

#[test]
fn a_stale_nonce_is_retried_with_the_new_one() {
    let mut cfg = server_config();
    cfg.nonce_lifetime = Duration::from_secs(60);
    let mut p = Pair::with(Config::new(Transport::Udp, Some(user())), cfg);
    assert!(p.run(Request::ALLOCATE).outcome.is_success());
    p.after(Duration::from_secs(120));
    let done = p.run(Request::Refresh { lifetime: None });
    assert!(done.outcome.is_success(), "{:?}", done.outcome);
    assert_eq!(done.stale_retries, 1);
}

#[test]
fn stale_retries_are_bounded() {
    let mut config = Config::new(Transport::Udp, Some(user()));
    config.stale_retries = 0;
    let mut cfg = server_config();
    cfg.nonce_lifetime = Duration::from_secs(60);
    let mut p = Pair::with(config, cfg);
    assert!(p.run(Request::ALLOCATE).outcome.is_success());
    p.after(Duration::from_secs(120));
    assert_eq!(
        p.run(Request::Refresh { lifetime: None }).outcome.code(),
        Some(438)
    );
}

#[test]
fn channel_data_and_send_indications_reach_the_peer_and_come_back() {
    let mut p = Pair::new(Some(user()));
    assert!(p.run(Request::ALLOCATE).outcome.is_success());
    let relayed = p.relayed();
    let bind = Request::ChannelBind {
        channel: 0x4001,
        peer: peer(),
    };
    assert!(p.run(bind).outcome.is_success());

    let mut buf = [0u8; 64];
    let n = p.client.channel_data(0x4001, b"ping", &mut buf).unwrap();
    p.deliver(&buf[..n], &mut [0u8; 256]);
    assert_eq!(p.to_peer.last().unwrap().payload, b"ping");
    assert_eq!(p.to_peer.last().unwrap().peer, peer());

    p.peer_sends(bind_of(relayed), peer(), b"pong");
    assert_eq!(p.data, [(Some(peer()), Some(0x4001), b"pong".to_vec())]);

    // A second peer, by Send indication (the permission comes with it).
    let other: SocketAddr = ([198, 51, 100, 8], 6000).into();
    let perm = Request::CreatePermission { peers: vec![other] };
    assert!(p.run(perm).outcome.is_success());
    let n = p.client.send_indication(other, b"hi", &mut buf).unwrap();
    p.deliver(&buf[..n], &mut [0u8; 256]);
    assert_eq!(p.to_peer.last().unwrap().payload, b"hi");
    p.peer_sends(bind_of(relayed), other, b"back");
    assert_eq!(
        p.data.last().unwrap(),
        &(Some(other), None, b"back".to_vec())
    );
}

#[test]
fn channel_data_on_a_stream_is_padded() {
    let p = Pair::with(Config::new(Transport::Tcp, Some(user())), server_config());
    let mut buf = [0u8; 16];
    assert_eq!(p.client.channel_data(0x4000, b"abcde", &mut buf), Ok(12));
    let p = Pair::new(Some(user()));
    assert_eq!(p.client.channel_data(0x4000, b"abcde", &mut buf), Ok(9));
}

#[test]
fn delete_ends_the_allocation() {
    let mut p = Pair::new(Some(user()));
    assert!(p.run(Request::ALLOCATE).outcome.is_success());
    assert!(p.run(Request::DELETE).outcome.is_success());
    assert!(p.client.relayed().is_empty());
    assert_eq!(p.server.allocation_count(), 0);
    // Gone: a second delete is refused.
    assert_eq!(p.run(Request::DELETE).outcome.code(), Some(437));
}

#[test]
fn the_allocation_is_refreshed_before_it_expires() {
    let mut config = Config::new(Transport::Udp, Some(user()));
    config.auto_refresh = true;
    let mut p = Pair::with(config, server_config());
    let done = p.run(Request::Allocate {
        family: None,
        lifetime: Some(600),
    });
    assert_eq!(success(&done.outcome).lifetime, Some(600));
    let t0 = p.now;
    assert_eq!(p.client.poll_timeout(), Some(t0 + Duration::from_secs(540)));
    p.advance_to(t0 + Duration::from_secs(540));
    let refresh = p.events.pop().expect("the refresh completed");
    assert_eq!(refresh.method, Method::REFRESH);
    assert!(refresh.outcome.is_success());
    // Still there long after the first lifetime would have ended.
    p.after(Duration::from_secs(500));
    p.after(Duration::from_secs(500));
    assert_eq!(p.server.allocation_count(), 1);
}

#[test]
fn raw_requests_carry_their_attributes_and_errors_their_reason() {
    let mut p = Pair::new(Some(user()));
    // REQUESTED-TRANSPORT with an unknown protocol: 442 from the server.
    let done = p.run(Request::Raw {
        method: Method::ALLOCATE,
        attrs: vec![(AttrType::REQUESTED_TRANSPORT, vec![99, 0, 0, 0])],
    });
    match done.outcome {
        Outcome::Error(e) => {
            assert_eq!(e.code, 442);
            assert!(!e.reason.is_empty());
        }
        other => panic!("expected 442, got {other:?}"),
    }
}

#[test]
fn responses_to_other_transactions_are_ignored() {
    let mut p = Pair::new(Some(user()));
    let id = p.client.request(Request::Binding, p.now).unwrap();
    let mut buf = [0u8; 128];
    p.client.poll_transmit(&mut buf).unwrap();
    let mut other = [0u8; 64];
    let w = relay_proto::stun::MessageWriter::new(
        &mut other,
        Class::Success,
        Method::BINDING,
        relay_proto::stun::TransactionId([1; 12]),
    )
    .unwrap();
    let n = w.finish();
    assert_eq!(
        p.client.handle_input(&other[..n], p.now),
        crate::Input::Ignored
    );
    assert_eq!(p.client.in_flight(), 1);
    let _ = id;
}

#[test]
fn raw_peer_addresses_are_reencoded_for_each_transaction() {
    let mut p = Pair::new(Some(user()));
    assert!(p.run(Request::ALLOCATE).outcome.is_success());
    // An IPv6 peer written for RAW_TXID: its XOR depends on the transaction id.
    let v6: SocketAddr = "[2001:db8::7]:5000".parse().unwrap();
    let mut buf = [0u8; 128];
    let mut w = relay_proto::stun::MessageWriter::new(
        &mut buf,
        Class::Request,
        Method::CREATE_PERMISSION,
        Request::RAW_TXID,
    )
    .unwrap();
    w.attr(&relay_proto::stun::XorPeerAddress(v6)).unwrap();
    let n = w.finish();
    let value = Message::parse(&buf[..n])
        .unwrap()
        .raw_attrs()
        .next()
        .unwrap()
        .value
        .to_vec();
    let id = p
        .client
        .request(
            Request::Raw {
                method: Method::CREATE_PERMISSION,
                attrs: vec![(AttrType::XOR_PEER_ADDRESS, value)],
            },
            p.now,
        )
        .unwrap();
    p.drive();
    let sent = Message::parse(&p.sent.last().unwrap().1).unwrap();
    assert!(matches!(
        sent.attr::<relay_proto::stun::XorPeerAddress>(),
        Some(Ok(relay_proto::stun::XorPeerAddress(a))) if a == v6
    ));
    // The relay has no IPv6 side: refused for the family, not for a garbled address.
    assert_eq!(p.until(id).outcome.code(), Some(443));
}

#[test]
fn a_primed_client_signs_its_first_request() {
    let mut p = Pair::new(Some(user()));
    // A nonce the server issued to this client's IP, as a second connection would reuse.
    let first = p.run(Request::Binding);
    assert!(first.outcome.is_success());
    let mut probe = Pair::new(Some(user()));
    assert!(probe.run(Request::ALLOCATE).outcome.is_success());
    let challenge = Message::parse(&probe.sent[1].1).unwrap();
    let Some(Ok(relay_proto::stun::Nonce(nonce))) = challenge.attr::<relay_proto::stun::Nonce>()
    else {
        panic!("the signed Allocate carries the nonce");
    };
    p.client.prime("example.org", nonce).unwrap();
    assert!(p.run(Request::ALLOCATE).outcome.is_success());
    // Binding, then one signed Allocate: no 401 round trip.
    assert_eq!(p.sent.len(), 2);
    let signed = Message::parse(&p.sent[1].1).unwrap();
    let key = relay_proto::auth::long_term_key(
        relay_proto::auth::PasswordAlgorithm::Md5,
        "alice",
        "example.org",
        "wonderland",
    );
    signed.verify_integrity(key.as_bytes()).unwrap();
    assert!(signed.has_fingerprint());
}
