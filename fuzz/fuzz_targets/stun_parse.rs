//! Parse arbitrary bytes as STUN, touch every accessor and attribute decoder, and when the
//! message is valid, re-encode what decoded and check the result parses back to the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_proto::stun::*;

const KEY: &[u8] = b"fuzz-key";

fuzz_target!(|data: &[u8]| {
    let _ = frame_len(data);
    let _ = classify(data);
    let Ok(msg) = Message::parse(data) else {
        return;
    };
    let _ = (msg.class(), msg.method(), msg.as_bytes(), msg.integrity());
    let _ = (msg.has_fingerprint(), msg.verify_integrity(KEY));
    let unknown = msg.unknown_comprehension_required();
    assert!(
        unknown
            .as_slice()
            .iter()
            .all(|t| t.comprehension_required() && !t.is_known())
    );
    assert_eq!(frame_len(data), Ok(Some(data.len())));
    for raw in msg.raw_attrs() {
        let _ = (raw.typ.name(), raw.value.len());
    }

    // Re-encode every attribute that decoded (integrity and fingerprint are regenerated).
    let mut out = vec![0u8; data.len() + 128];
    let Ok(mut w) = MessageWriter::new(&mut out, msg.class(), msg.method(), msg.transaction_id())
    else {
        return;
    };
    macro_rules! write_all {
        ($($t:ty),*) => {$(
            for a in msg.attrs::<$t>().filter_map(Result::ok) {
                if w.attr(&a).is_err() {
                    return;
                }
            }
        )*};
    }
    macro_rules! same {
        ($re:expr; $($t:ty),*) => {$(
            assert!(
                msg.attrs::<$t>().filter_map(Result::ok).eq($re.attrs::<$t>().filter_map(Result::ok)),
                "{} changed in re-encoding", stringify!($t)
            );
        )*};
    }
    // Lists are compared by content: a truncated list re-encodes as its kept prefix.
    macro_rules! same_list {
        ($re:expr; $($t:ty),*) => {$(
            assert!(
                msg.attrs::<$t>().filter_map(Result::ok).map(|l| l.as_slice().to_vec())
                    .eq($re.attrs::<$t>().filter_map(Result::ok).map(|l| l.as_slice().to_vec())),
                "{} changed in re-encoding", stringify!($t)
            );
        )*};
    }
    write_all!(
        MappedAddress,
        XorMappedAddress,
        XorPeerAddress,
        XorRelayedAddress,
        AlternateServer,
        Username,
        UserHash,
        Realm,
        Nonce,
        Software,
        ErrorCode,
        UnknownAttributes,
        PasswordAlgorithms,
        PasswordAlgorithm,
        AlternateDomain,
        ChannelNumber,
        Lifetime,
        Data,
        RequestedTransport,
        DontFragment,
        EvenPort,
        ReservationToken,
        RequestedAddressFamily,
        AdditionalAddressFamily,
        AddressErrorCode,
        ConnectionId,
        Icmp,
        Priority,
        UseCandidate,
        IceControlled,
        IceControlling
    );
    if w.integrity_sha1(KEY)
        .and_then(|w| w.integrity_sha256(KEY))
        .and_then(|w| w.fingerprint())
        .is_err()
    {
        return;
    }
    let n = w.finish();
    let re = Message::parse(&out[..n]).expect("re-encoded message parses");
    assert_eq!(re.verify_integrity(KEY), Ok(()));
    assert!(re.has_fingerprint());
    assert_eq!(
        (re.class(), re.method(), re.transaction_id()),
        (msg.class(), msg.method(), msg.transaction_id())
    );
    same!(re;
        MappedAddress, XorMappedAddress, XorPeerAddress, XorRelayedAddress, AlternateServer,
        Username, UserHash, Realm, Nonce, Software, ErrorCode, PasswordAlgorithm,
        AlternateDomain, ChannelNumber, Lifetime, Data, RequestedTransport, DontFragment,
        EvenPort, ReservationToken, RequestedAddressFamily, AdditionalAddressFamily,
        AddressErrorCode, ConnectionId, Icmp, Priority, UseCandidate, IceControlled,
        IceControlling
    );
    same_list!(re; UnknownAttributes, PasswordAlgorithms);
});
