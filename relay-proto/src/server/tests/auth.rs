//! Long-term credentials: 400/401/438/441, USERHASH, TURN REST secrets.

use super::harness::*;
use crate::auth::{AuthError, rest};
use crate::server::Event;
use crate::stun::{
    Class, Message, Method, Nonce, PasswordAlgorithm, PasswordAlgorithms, Realm,
    RequestedTransport, Username,
};

fn auth_failures(h: &mut H) -> Vec<(Option<String>, AuthError)> {
    h.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::AuthFailed { user, reason, .. } => Some((user, reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn stale_nonce_is_438_with_a_fresh_nonce() {
    let mut h = H::new();
    let nonce = h.nonce(udp(1));
    h.skip(secs(600)); // nonce lifetime
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
    let r = h.client(udp(1), &req).reply();
    assert_eq!(code(&r), Some(438));
    let m = Message::parse(&r).unwrap();
    let fresh = m.attr::<Nonce>().unwrap().unwrap().0.to_owned();
    assert_ne!(fresh, nonce);
    assert_eq!(m.attr::<Realm>(), Some(Ok(Realm(REALM))));
    assert!(m.attr::<PasswordAlgorithms>().is_some());
    assert!(auth_failures(&mut h).is_empty(), "a stale nonce is routine");

    // Retrying with the fresh nonce works.
    let txid = h.txid();
    let req = h.build(
        Class::Request,
        Method::ALLOCATE,
        txid,
        Some((&Cred::alice(), &fresh)),
        |w| {
            w.attr(&RequestedTransport(17)).unwrap();
        },
    );
    assert_eq!(code(&h.client(udp(1), &req).reply()), None);
}

#[test]
fn nonce_is_bound_to_the_client_ip() {
    let mut h = H::new();
    let nonce = h.nonce(udp(1));
    let other = crate::server::FiveTuple::new(
        ([192, 0, 2, 222], 5000).into(),
        listener(),
        crate::server::Transport::Udp,
    );
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
    assert_eq!(code(&h.client(other, &req).reply()), Some(438));
    assert_eq!(
        auth_failures(&mut h),
        vec![(Some("alice".into()), AuthError::InvalidNonce)]
    );
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn unknown_user_and_wrong_password_are_401_with_an_event() {
    let mut h = H::new();
    let r = h.allocate_with(udp(1), &Cred::new("mallory", "x"), |_| {});
    assert_eq!(code(&r), Some(401));
    let m = Message::parse(&r).unwrap();
    assert!(m.attr::<Nonce>().is_some() && m.attr::<Realm>().is_some());
    let r = h.allocate_with(udp(1), &Cred::new("alice", "wrong"), |_| {});
    assert_eq!(code(&r), Some(401));
    assert_eq!(
        auth_failures(&mut h),
        vec![
            (Some("mallory".into()), AuthError::UnknownUser),
            (Some("alice".into()), AuthError::BadIntegrity),
        ]
    );
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn wrong_realm_is_401() {
    let mut h = H::new();
    let mut c = Cred::alice();
    c.realm = "other.example".into();
    let r = h.allocate_with(udp(1), &c, |_| {});
    assert_eq!(code(&r), Some(401));
}

#[test]
fn integrity_without_username_realm_or_nonce_is_400() {
    let mut h = H::new();
    let key = Cred::alice().key();
    let txid = h.txid();
    // USERNAME and MESSAGE-INTEGRITY but no REALM/NONCE.
    let mut buf = vec![0u8; 512];
    let mut w = crate::stun::MessageWriter::new(
        &mut buf,
        Class::Request,
        Method::ALLOCATE,
        crate::stun::TransactionId(txid),
    )
    .unwrap();
    w.attr(&RequestedTransport(17)).unwrap();
    w.attr(&Username("alice")).unwrap();
    w.integrity_sha1(key.as_bytes()).unwrap();
    let n = w.finish();
    assert_eq!(code(&h.client(udp(1), &buf[..n]).reply()), Some(400));

    // REALM and NONCE but no USERNAME/USERHASH.
    let nonce = h.nonce(udp(1));
    let mut w = crate::stun::MessageWriter::new(
        &mut buf,
        Class::Request,
        Method::ALLOCATE,
        crate::stun::TransactionId(txid),
    )
    .unwrap();
    w.attr(&RequestedTransport(17)).unwrap();
    w.attr(&Realm(REALM)).unwrap();
    w.attr(&Nonce(&nonce)).unwrap();
    w.integrity_sha1(key.as_bytes()).unwrap();
    let n = w.finish();
    assert_eq!(code(&h.client(udp(1), &buf[..n]).reply()), Some(400));
}

#[test]
fn userhash_is_accepted() {
    let mut h = H::new();
    let mut c = Cred::alice();
    c.userhash = true;
    let r = h.allocate_with(udp(1), &c, |_| {});
    assert_eq!(code(&r), None, "{}", describe(&r));
    assert_eq!(h.server.allocation(&udp(1)).unwrap().user(), "alice");
    // Unknown hash: 401.
    let mut c = Cred::new("nobody", "x");
    c.userhash = true;
    let r = h.allocate_with(udp(2), &c, |_| {});
    assert_eq!(code(&r), Some(401));
}

#[test]
fn password_algorithm_must_be_one_offered() {
    let mut h = H::new();
    let mut c = Cred::alice();
    c.alg = Some(PasswordAlgorithm::Unknown(3));
    let r = h.allocate_with(udp(1), &c, |_| {});
    assert_eq!(code(&r), Some(400));

    // PASSWORD-ALGORITHMS that differ from what we sent (bid-down): 400.
    let nonce = h.nonce(udp(1));
    let txid = h.txid();
    let key = Cred::alice().key();
    let req = h.build(Class::Request, Method::ALLOCATE, txid, None, |w| {
        w.attr(&RequestedTransport(17)).unwrap();
        w.attr(&Username("alice")).unwrap();
        w.attr(&Realm(REALM)).unwrap();
        w.attr(&Nonce(&nonce)).unwrap();
        w.attr(&PasswordAlgorithms::from_slice(&[PasswordAlgorithm::Md5]))
            .unwrap();
        w.attr(&PasswordAlgorithm::Md5).unwrap();
        w.integrity_sha1(key.as_bytes()).unwrap();
    });
    assert_eq!(code(&h.client(udp(1), &req).reply()), Some(400));

    // PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS: 400.
    let txid = h.txid();
    let req = h.build(Class::Request, Method::ALLOCATE, txid, None, |w| {
        w.attr(&RequestedTransport(17)).unwrap();
        w.attr(&Username("alice")).unwrap();
        w.attr(&Realm(REALM)).unwrap();
        w.attr(&Nonce(&nonce)).unwrap();
        w.attr(&PasswordAlgorithm::Md5).unwrap();
        w.integrity_sha1(key.as_bytes()).unwrap();
    });
    assert_eq!(code(&h.client(udp(1), &req).reply()), Some(400));

    // Explicit MD5 from the offered list works.
    let mut c = Cred::alice();
    c.alg = Some(PasswordAlgorithm::Md5);
    assert_eq!(code(&h.allocate_with(udp(1), &c, |_| {})), None);
}

#[test]
fn rest_credentials_work_until_they_expire() {
    let mut h = H::new();
    let user = format!("{}:carol", UNIX_T0 + 3600);
    let pw = rest::password(SECRET, &user);
    let c = Cred::new(&user, pw.as_str());
    let r = h.allocate_with(udp(1), &c, |_| {});
    assert_eq!(code(&r), None, "{}", describe(&r));
    assert_eq!(h.server.allocation(&udp(1)).unwrap().user(), user);

    let old = format!("{}:carol", UNIX_T0 - 1);
    let pw = rest::password(SECRET, &old);
    let r = h.allocate_with(udp(2), &Cred::new(&old, pw.as_str()), |_| {});
    assert_eq!(code(&r), Some(401));
    assert!(h.events().iter().any(|e| matches!(e,
        Event::AuthFailed { reason: AuthError::ExpiredCredential { expired_at }, .. }
            if *expired_at == UNIX_T0 - 1)));

    // The clock moves: the first credential expires and its refresh is refused.
    h.advance(secs(3600));
    let r = h.refresh(udp(1), &c, Some(600));
    assert_eq!(code(&r), Some(401));

    // Wrong secret: 401.
    let pw = rest::password(b"other", &user);
    let r = h.allocate_with(udp(3), &Cred::new(&user, pw.as_str()), |_| {});
    assert_eq!(code(&r), Some(401));
}

#[test]
fn reloaded_credentials_apply_to_the_next_request() {
    let mut h = H::new();
    h.allocate(udp(1));
    let mut store = crate::auth::CredentialStore::new(REALM);
    store.add_user(ALICE.0, "new-password").unwrap();
    h.server.set_credentials(store);
    assert_eq!(code(&h.refresh(udp(1), &Cred::alice(), None)), Some(401));
    let c = Cred::new(ALICE.0, "new-password");
    assert_eq!(code(&h.refresh(udp(1), &c, None)), None);
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn another_user_on_the_allocation_is_441() {
    let mut h = H::new();
    h.allocate(udp(1));
    let r = h.refresh(udp(1), &Cred::bob(), None);
    assert_eq!(code(&r), Some(441));
    let r = h.permit(udp(1), &Cred::bob(), &[peer(1, 1)]);
    assert_eq!(code(&r), Some(441));
    let r = h.bind(udp(1), &Cred::bob(), 0x4000, peer(1, 1));
    assert_eq!(code(&r), Some(441));
    let m = Message::parse(&r).unwrap();
    m.verify_integrity(Cred::bob().key().as_bytes()).unwrap();
    assert!(
        h.server
            .allocation(&udp(1))
            .unwrap()
            .permissions()
            .next()
            .is_none()
    );
}
