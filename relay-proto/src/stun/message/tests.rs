//! Fixture tests for `Message`: header checks, TLV walking, counting rules, integrity.

use super::*;
use crate::stun::attr::{Data, Lifetime, Realm, Software, Username, XorPeerAddress};
use crate::stun::writer::MessageWriter;

const TXID: TransactionId = TransactionId([9; 12]);

/// Writes a message with the given raw attributes into a fresh Vec.
fn build(class: Class, method: Method, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let mut w = MessageWriter::new(&mut buf, class, method, TXID).unwrap();
    for &(t, v) in attrs {
        w.raw_attr(AttrType(t), v).unwrap();
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn set_len(m: &mut [u8], len: u16) {
    m[2..4].copy_from_slice(&len.to_be_bytes());
}

#[test]
fn header_fields() {
    let m = build(Class::Indication, Method::SEND, &[(0x0013, b"hi")]);
    let msg = Message::parse(&m).unwrap();
    assert_eq!(msg.class(), Class::Indication);
    assert_eq!(msg.method(), Method::SEND);
    assert_eq!(msg.transaction_id(), TXID);
    assert_eq!(msg.as_bytes(), &m[..]);
    assert_eq!(msg.attr::<Data>(), Some(Ok(Data(b"hi"))));
    assert_eq!(msg.attr::<Lifetime>(), None);
    assert_eq!(msg.integrity(), IntegrityKind::None);
    assert!(!msg.has_fingerprint());
    assert_eq!(msg.verify_integrity(b"k"), Err(IntegrityError::Missing));
}

#[test]
fn header_errors() {
    let good = build(Class::Request, Method::BINDING, &[(0x000D, &[0, 0, 0, 1])]);
    assert_eq!(Message::parse(&good[..19]), Err(ParseError::TooShort(19)));
    assert_eq!(Message::parse(&[]), Err(ParseError::TooShort(0)));

    let mut m = good.clone();
    m[0] = 0x40;
    assert_eq!(Message::parse(&m), Err(ParseError::NotStun));
    m[0] = 0x80;
    assert_eq!(Message::parse(&m), Err(ParseError::NotStun));

    let mut m = good.clone();
    set_len(&mut m, 6);
    assert_eq!(Message::parse(&m), Err(ParseError::UnalignedLength(6)));
    set_len(&mut m, 4);
    assert_eq!(
        Message::parse(&m),
        Err(ParseError::LengthMismatch {
            header: 4,
            actual: 8
        })
    );
    set_len(&mut m, 12);
    assert_eq!(
        Message::parse(&m),
        Err(ParseError::LengthMismatch {
            header: 12,
            actual: 8
        })
    );

    let mut m = good.clone();
    m[4] = 0x21 ^ 0xff;
    assert_eq!(
        Message::parse(&m),
        Err(ParseError::BadMagicCookie(0xde12_a442))
    );
}

#[test]
fn attribute_must_fit() {
    let mut m = build(Class::Request, Method::BINDING, &[(0x000D, &[0, 0, 0, 1])]);
    m[22..24].copy_from_slice(&5u16.to_be_bytes()); // value claims 5 bytes, 4 present
    assert_eq!(
        Message::parse(&m),
        Err(ParseError::AttrOverrun {
            typ: AttrType::LIFETIME,
            offset: 20,
            len: 5
        })
    );
    // A 1-byte value at the very end without its 3 padding bytes: the aligned header
    // length no longer matches the datagram.
    let m = build(Class::Request, Method::BINDING, &[(0x0018, &[0x80])]);
    assert_eq!(m.len(), 28);
    assert!(Message::parse(&m).is_ok());
    assert_eq!(
        Message::parse(&m[..25]),
        Err(ParseError::LengthMismatch {
            header: 8,
            actual: 5
        })
    );
}

#[test]
fn padding_values_are_ignored() {
    let mut m = build(
        Class::Request,
        Method::ALLOCATE,
        &[(0x8022, b"abc"), (0x000D, &[0, 0, 0, 7])],
    );
    m[27] = 0xff;
    let msg = Message::parse(&m).unwrap();
    assert_eq!(msg.attr::<Software>(), Some(Ok(Software("abc"))));
    assert_eq!(msg.attr::<Lifetime>(), Some(Ok(Lifetime(7))));
}

#[test]
fn malformed_attribute_value_is_reported_not_fatal() {
    let m = build(Class::Request, Method::REFRESH, &[(0x000D, &[0, 0, 1])]);
    let msg = Message::parse(&m).unwrap();
    assert!(matches!(
        msg.attr::<Lifetime>(),
        Some(Err(AttrError::BadLength {
            typ: AttrType::LIFETIME,
            len: 3,
            ..
        }))
    ));
}

#[test]
fn several_peer_addresses() {
    let mut buf = [0u8; 256];
    let mut w =
        MessageWriter::new(&mut buf, Class::Request, Method::CREATE_PERMISSION, TXID).unwrap();
    let peers: [core::net::SocketAddr; 3] = [
        "1.2.3.4:5".parse().unwrap(),
        "[::2]:6".parse().unwrap(),
        "9.9.9.9:0".parse().unwrap(),
    ];
    for p in peers {
        w.attr(&XorPeerAddress(p)).unwrap();
    }
    let n = w.finish();
    let msg = Message::parse(&buf[..n]).unwrap();
    let got: Vec<_> = msg
        .attrs::<XorPeerAddress>()
        .map(|a| a.unwrap().0)
        .collect();
    assert_eq!(got, peers);
    // The iterator outlives the `Message` value it came from.
    let it = Message::parse(&buf[..n]).unwrap().attrs::<XorPeerAddress>();
    assert_eq!(it.count(), 3);
}

#[test]
fn attributes_after_integrity_are_ignored() {
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(&mut buf, Class::Request, Method::ALLOCATE, TXID).unwrap();
    w.attr(&Realm("r")).unwrap().integrity_sha1(b"key").unwrap();
    w.attr(&Username("late")).unwrap(); // must not count
    w.integrity_sha256(b"key").unwrap();
    w.attr(&Lifetime(5)).unwrap(); // must not count either
    w.fingerprint().unwrap();
    let n = w.finish();
    let msg = Message::parse(&buf[..n]).unwrap();
    assert_eq!(msg.attr::<Username>(), None);
    assert_eq!(msg.attr::<Lifetime>(), None);
    let types: Vec<u16> = msg.raw_attrs().map(|a| a.typ.0).collect();
    assert_eq!(types, [0x0014, 0x0008, 0x001C, 0x8028]);
    assert_eq!(msg.integrity(), IntegrityKind::Sha256);
    assert_eq!(msg.verify_integrity(b"key"), Ok(()));
    assert_eq!(msg.verify_integrity(b"kez"), Err(IntegrityError::Mismatch));
}

#[test]
fn after_sha256_only_fingerprint_counts() {
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(&mut buf, Class::Request, Method::ALLOCATE, TXID).unwrap();
    w.integrity_sha256(b"key").unwrap();
    w.integrity_sha1(b"key").unwrap(); // ignored: SHA1 after SHA256
    w.attr(&Lifetime(5)).unwrap();
    let n = w.finish();
    let msg = Message::parse(&buf[..n]).unwrap();
    let types: Vec<u16> = msg.raw_attrs().map(|a| a.typ.0).collect();
    assert_eq!(types, [0x001C]);
    assert_eq!(msg.integrity(), IntegrityKind::Sha256);
    assert_eq!(msg.verify_integrity(b"key"), Ok(()));
}

#[test]
fn sha1_integrity_with_fingerprint_and_tampering() {
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(&mut buf, Class::Request, Method::ALLOCATE, TXID).unwrap();
    w.attr(&Lifetime(5))
        .unwrap()
        .integrity_sha1(b"key")
        .unwrap();
    let n = w.finish();
    let m = buf[..n].to_vec();
    let msg = Message::parse(&m).unwrap();
    assert_eq!(msg.integrity(), IntegrityKind::Sha1);
    assert_eq!(msg.verify_integrity(b"key"), Ok(()));
    let mut bad = m.clone();
    bad[27] ^= 1; // lifetime value
    assert_eq!(
        Message::parse(&bad).unwrap().verify_integrity(b"key"),
        Err(IntegrityError::Mismatch)
    );
    let mut bad = m.clone();
    bad[8] ^= 1; // transaction id is covered too
    assert_eq!(
        Message::parse(&bad).unwrap().verify_integrity(b"key"),
        Err(IntegrityError::Mismatch)
    );
}

#[test]
fn truncated_sha256_is_accepted() {
    // RFC 8489 allows MESSAGE-INTEGRITY-SHA256 truncated to 16 bytes; compare the prefix.
    let body = build(Class::Request, Method::BINDING, &[(0x000D, &[0, 0, 0, 1])]);
    let mac = integrity::hmac_sha256(b"k", &body, body.len(), 16);
    let m = build(
        Class::Request,
        Method::BINDING,
        &[(0x000D, &[0, 0, 0, 1]), (0x001C, &mac[..16])],
    );
    assert_eq!(Message::parse(&m).unwrap().verify_integrity(b"k"), Ok(()));
}

#[test]
fn malformed_integrity() {
    let m = build(Class::Request, Method::BINDING, &[(0x0008, &[0; 16])]);
    assert_eq!(
        Message::parse(&m).unwrap().verify_integrity(b"k"),
        Err(IntegrityError::Malformed)
    );
    let m = build(Class::Request, Method::BINDING, &[(0x001C, &[0; 20 + 2])]);
    assert_eq!(
        Message::parse(&m).unwrap().verify_integrity(b"k"),
        Err(IntegrityError::Malformed)
    );
    let m = build(Class::Request, Method::BINDING, &[(0x001C, &[0; 36])]);
    assert_eq!(
        Message::parse(&m).unwrap().verify_integrity(b"k"),
        Err(IntegrityError::Malformed)
    );
}

#[test]
fn fingerprint_rules() {
    let mut buf = [0u8; 128];
    let mut w = MessageWriter::new(&mut buf, Class::Request, Method::BINDING, TXID).unwrap();
    w.attr(&Software("x")).unwrap().fingerprint().unwrap();
    let n = w.finish();
    let good = buf[..n].to_vec();
    assert!(Message::parse(&good).unwrap().has_fingerprint());

    let mut bad = good.clone();
    bad[24] ^= 1;
    assert_eq!(Message::parse(&bad), Err(ParseError::BadFingerprint));

    // Anything after FINGERPRINT, even an ignorable attribute.
    let mut after = good.clone();
    after.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
    let l = (after.len() - 20) as u16;
    set_len(&mut after, l);
    assert_eq!(Message::parse(&after), Err(ParseError::FingerprintNotLast));

    let m = build(Class::Request, Method::BINDING, &[(0x8028, &[0; 8])]);
    assert_eq!(Message::parse(&m), Err(ParseError::FingerprintLength(8)));
}

#[test]
fn unknown_comprehension_required_list() {
    let m = build(
        Class::Request,
        Method::ALLOCATE,
        &[
            (0x0003, &[0; 4]),
            (0x8777, &[]),
            (0x0003, &[]),
            (0x7000, &[]),
            (0x0019, &[17, 0, 0, 0]),
        ],
    );
    let msg = Message::parse(&m).unwrap();
    let u = msg.unknown_comprehension_required();
    assert_eq!(u.as_slice(), &[AttrType(0x0003), AttrType(0x7000)]);
    assert!(!u.is_truncated());

    let many: Vec<(u16, &[u8])> = (0x7000..0x7020).map(|t| (t, &[][..])).collect();
    let m = build(Class::Request, Method::ALLOCATE, &many);
    let u = Message::parse(&m).unwrap().unknown_comprehension_required();
    assert_eq!(u.len(), 16);
    assert!(u.is_truncated());
    let known = build(
        Class::Request,
        Method::BINDING,
        &[(0x0024, &[0; 4]), (0x0025, &[])],
    );
    assert!(
        Message::parse(&known)
            .unwrap()
            .unknown_comprehension_required()
            .is_empty()
    );
}
