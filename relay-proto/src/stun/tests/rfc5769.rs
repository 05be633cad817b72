//! RFC 5769 test vectors: parse, attribute values, integrity, fingerprint, and byte-exact
//! re-encoding with `MessageWriter`.

use super::super::fixtures::*;
use super::*;
use core::net::SocketAddr;
use md5::{Digest, Md5};

fn reencode(f: impl FnOnce(&mut MessageWriter<'_>), class: Class, txid: [u8; 12]) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(&mut buf, class, Method::BINDING, TransactionId(txid)).unwrap();
    f(&mut w);
    let n = w.finish();
    buf[..n].to_vec()
}

#[test]
fn sample_request() {
    let m = Message::parse(&REQUEST).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Request, Method::BINDING));
    assert_eq!(m.transaction_id(), TransactionId(TXID));
    assert_eq!(m.attr::<Software>(), Some(Ok(Software("STUN test client"))));
    assert_eq!(m.attr::<Priority>(), Some(Ok(Priority(0x6e00_01ff))));
    assert_eq!(
        m.attr::<IceControlled>(),
        Some(Ok(IceControlled(0x932f_f9b1_5126_3b36)))
    );
    assert_eq!(m.attr::<Username>(), Some(Ok(Username("evtj:h6vY"))));
    assert!(m.has_fingerprint());
    assert_eq!(m.integrity(), IntegrityKind::Sha1);
    assert_eq!(m.verify_integrity(PASSWORD.as_bytes()), Ok(()));
    assert_eq!(m.verify_integrity(b"wrong"), Err(IntegrityError::Mismatch));
    assert!(m.unknown_comprehension_required().is_empty());

    let again = reencode(
        |w| {
            w.padding_byte(0x20);
            w.attr(&Software("STUN test client")).unwrap();
            w.attr(&Priority(0x6e00_01ff)).unwrap();
            w.attr(&IceControlled(0x932f_f9b1_5126_3b36)).unwrap();
            w.attr(&Username("evtj:h6vY")).unwrap();
            w.integrity_sha1(PASSWORD.as_bytes()).unwrap();
            w.fingerprint().unwrap();
        },
        Class::Request,
        TXID,
    );
    assert_eq!(again, REQUEST);
}

#[test]
fn ipv4_response() {
    let m = Message::parse(&RESPONSE_V4).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Success, Method::BINDING));
    let addr: SocketAddr = "192.0.2.1:32853".parse().unwrap();
    assert_eq!(
        m.attr::<XorMappedAddress>(),
        Some(Ok(XorMappedAddress(addr)))
    );
    assert_eq!(m.attr::<Software>(), Some(Ok(Software("test vector"))));
    assert_eq!(m.verify_integrity(PASSWORD.as_bytes()), Ok(()));
    assert!(m.has_fingerprint());

    let again = reencode(
        |w| {
            w.padding_byte(0x20);
            w.attr(&Software("test vector")).unwrap();
            w.attr(&XorMappedAddress(addr)).unwrap();
            w.integrity_sha1(PASSWORD.as_bytes()).unwrap();
            w.fingerprint().unwrap();
        },
        Class::Success,
        TXID,
    );
    assert_eq!(again, RESPONSE_V4);
}

#[test]
fn ipv6_response() {
    let m = Message::parse(&RESPONSE_V6).unwrap();
    let addr: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
        .parse()
        .unwrap();
    assert_eq!(
        m.attr::<XorMappedAddress>(),
        Some(Ok(XorMappedAddress(addr)))
    );
    assert_eq!(m.verify_integrity(PASSWORD.as_bytes()), Ok(()));
    assert!(m.has_fingerprint());

    let again = reencode(
        |w| {
            w.padding_byte(0x20);
            w.attr(&Software("test vector")).unwrap();
            w.attr(&XorMappedAddress(addr)).unwrap();
            w.integrity_sha1(PASSWORD.as_bytes()).unwrap();
            w.fingerprint().unwrap();
        },
        Class::Success,
        TXID,
    );
    assert_eq!(again, RESPONSE_V6);
}

#[test]
fn long_term_request() {
    let m = Message::parse(&REQUEST_LONG_TERM).unwrap();
    assert_eq!(m.transaction_id(), TransactionId(LT_TXID));
    assert_eq!(m.attr::<Username>(), Some(Ok(Username(LT_USERNAME))));
    assert_eq!(m.attr::<Nonce>(), Some(Ok(Nonce(LT_NONCE))));
    assert_eq!(m.attr::<Realm>(), Some(Ok(Realm(LT_REALM))));
    assert!(!m.has_fingerprint());
    // key = MD5(username ":" realm ":" SASLprep(password))
    let key = Md5::digest(format!("{LT_USERNAME}:{LT_REALM}:{LT_PASSWORD}"));
    assert_eq!(m.verify_integrity(&key), Ok(()));
    assert_eq!(
        m.verify_integrity(LT_PASSWORD.as_bytes()),
        Err(IntegrityError::Mismatch)
    );

    let again = reencode(
        |w| {
            w.attr(&Username(LT_USERNAME)).unwrap();
            w.attr(&Nonce(LT_NONCE)).unwrap();
            w.attr(&Realm(LT_REALM)).unwrap();
            w.integrity_sha1(&key).unwrap();
        },
        Class::Request,
        LT_TXID,
    );
    assert_eq!(again, REQUEST_LONG_TERM);
}

#[test]
fn vectors_frame_on_tcp() {
    for v in [&REQUEST[..], &RESPONSE_V4, &RESPONSE_V6, &REQUEST_LONG_TERM] {
        assert_eq!(frame_len(v), Ok(Some(v.len())));
        assert_eq!(classify(v), PacketKind::Stun);
    }
}
