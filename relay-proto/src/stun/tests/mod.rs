//! Cross-module tests: RFC 5769 vectors, robustness on hostile input, property round trips.

mod props;
mod rfc5769;
mod robustness;

use super::*;

/// Calls every accessor and decodes every known attribute; used on arbitrary input, so all
/// it asserts is "no panic" plus a few invariants.
pub(super) fn exercise(msg: &Message<'_>) {
    let _ = (
        msg.class(),
        msg.method(),
        msg.transaction_id(),
        msg.as_bytes(),
    );
    let _ = (
        msg.integrity(),
        msg.has_fingerprint(),
        msg.verify_integrity(b"key"),
    );
    let unknown = msg.unknown_comprehension_required();
    assert!(unknown.len() <= UnknownAttrs::CAPACITY);
    assert!(
        unknown
            .as_slice()
            .iter()
            .all(|t| t.comprehension_required() && !t.is_known())
    );
    for raw in msg.raw_attrs() {
        assert!(raw.value.len() <= msg.as_bytes().len());
    }
    macro_rules! all {
        ($($t:ty),*) => {$(
            let _ = msg.attr::<$t>();
            for a in msg.attrs::<$t>() {
                let _ = a;
            }
        )*};
    }
    all!(
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
        MessageIntegrity,
        MessageIntegritySha256,
        Fingerprint,
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
}
