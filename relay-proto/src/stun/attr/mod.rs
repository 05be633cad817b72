//! Attribute types and the [`Attr`] codec trait, one small type per attribute.

mod address;
mod auth;
mod ice;
mod text;
mod turn;

pub use address::{
    AlternateServer, MappedAddress, XorMappedAddress, XorPeerAddress, XorRelayedAddress,
};
pub use auth::{
    Fingerprint, MessageIntegrity, MessageIntegritySha256, PasswordAlgorithm, PasswordAlgorithms,
    UnknownAttributes, UserHash,
};
pub use ice::{IceControlled, IceControlling, Priority, UseCandidate};
pub use text::{AddressErrorCode, AlternateDomain, ErrorCode, Nonce, Realm, Software, Username};
pub use turn::{
    AdditionalAddressFamily, AddressFamily, ChannelNumber, ConnectionId, Data, DontFragment,
    EvenPort, Icmp, Lifetime, RequestedAddressFamily, RequestedTransport, ReservationToken,
};

use super::error::AttrError;
use super::header::TransactionId;
use core::fmt;

/// 16-bit attribute type code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct AttrType(pub u16);

/// One table drives the constants, the names and `is_known`, so they cannot drift apart.
macro_rules! attr_types {
    ($($name:ident = $code:literal, $text:literal;)*) => {
        impl AttrType {
            $(pub const $name: AttrType = AttrType($code);)*

            /// The RFC name, or `None` for a type this codec does not know.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($code => Some($text),)*
                    _ => None,
                }
            }
        }
    };
}

attr_types! {
    // RFC 8489 §18.3
    MAPPED_ADDRESS = 0x0001, "MAPPED-ADDRESS";
    USERNAME = 0x0006, "USERNAME";
    MESSAGE_INTEGRITY = 0x0008, "MESSAGE-INTEGRITY";
    ERROR_CODE = 0x0009, "ERROR-CODE";
    UNKNOWN_ATTRIBUTES = 0x000A, "UNKNOWN-ATTRIBUTES";
    REALM = 0x0014, "REALM";
    NONCE = 0x0015, "NONCE";
    MESSAGE_INTEGRITY_SHA256 = 0x001C, "MESSAGE-INTEGRITY-SHA256";
    PASSWORD_ALGORITHM = 0x001D, "PASSWORD-ALGORITHM";
    USERHASH = 0x001E, "USERHASH";
    XOR_MAPPED_ADDRESS = 0x0020, "XOR-MAPPED-ADDRESS";
    PASSWORD_ALGORITHMS = 0x8002, "PASSWORD-ALGORITHMS";
    ALTERNATE_DOMAIN = 0x8003, "ALTERNATE-DOMAIN";
    SOFTWARE = 0x8022, "SOFTWARE";
    ALTERNATE_SERVER = 0x8023, "ALTERNATE-SERVER";
    FINGERPRINT = 0x8028, "FINGERPRINT";
    // RFC 8656 §18
    CHANNEL_NUMBER = 0x000C, "CHANNEL-NUMBER";
    LIFETIME = 0x000D, "LIFETIME";
    XOR_PEER_ADDRESS = 0x0012, "XOR-PEER-ADDRESS";
    DATA = 0x0013, "DATA";
    XOR_RELAYED_ADDRESS = 0x0016, "XOR-RELAYED-ADDRESS";
    REQUESTED_ADDRESS_FAMILY = 0x0017, "REQUESTED-ADDRESS-FAMILY";
    EVEN_PORT = 0x0018, "EVEN-PORT";
    REQUESTED_TRANSPORT = 0x0019, "REQUESTED-TRANSPORT";
    DONT_FRAGMENT = 0x001A, "DONT-FRAGMENT";
    RESERVATION_TOKEN = 0x0022, "RESERVATION-TOKEN";
    ADDITIONAL_ADDRESS_FAMILY = 0x8000, "ADDITIONAL-ADDRESS-FAMILY";
    ADDRESS_ERROR_CODE = 0x8001, "ADDRESS-ERROR-CODE";
    ICMP = 0x8004, "ICMP";
    // RFC 6062 §6.2
    CONNECTION_ID = 0x002A, "CONNECTION-ID";
    // RFC 8445 §16.1
    PRIORITY = 0x0024, "PRIORITY";
    USE_CANDIDATE = 0x0025, "USE-CANDIDATE";
    ICE_CONTROLLED = 0x8029, "ICE-CONTROLLED";
    ICE_CONTROLLING = 0x802A, "ICE-CONTROLLING";
}

impl AttrType {
    /// Types below 0x8000 must be understood or the request rejected with 420 (RFC 8489 §15).
    pub const fn comprehension_required(self) -> bool {
        self.0 < 0x8000
    }

    /// Whether this codec has a type for it (so it never lands in a 420 list).
    pub const fn is_known(self) -> bool {
        self.name().is_some()
    }
}

impl fmt::Display for AttrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "attribute {:#06x}", self.0),
        }
    }
}

/// Attribute codec: one implementation per attribute type.
pub trait Attr<'a>: Sized {
    const TYPE: AttrType;
    /// Decodes the value (without padding). Never panics, whatever `value` holds.
    fn decode(value: &'a [u8], txid: &TransactionId) -> Result<Self, AttrError>;
    /// Value length without padding.
    fn encoded_len(&self) -> usize;
    /// Writes the value; `out.len() == self.encoded_len()`.
    fn encode(&self, out: &mut [u8], txid: &TransactionId);
}

/// One attribute as it sits in the message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RawAttr<'a> {
    pub typ: AttrType,
    pub value: &'a [u8],
}

/// Length check shared by the fixed-size attributes.
pub(crate) fn expect_len(
    typ: AttrType,
    value: &[u8],
    len: usize,
    expected: &'static str,
) -> Result<(), AttrError> {
    if value.len() == len {
        Ok(())
    } else {
        Err(AttrError::BadLength {
            typ,
            len: value.len(),
            expected,
        })
    }
}

/// `value` as an array of exactly N bytes.
pub(crate) fn fixed<const N: usize>(
    typ: AttrType,
    value: &[u8],
    expected: &'static str,
) -> Result<[u8; N], AttrError> {
    value.try_into().map_err(|_| AttrError::BadLength {
        typ,
        len: value.len(),
        expected,
    })
}

/// Copies `src` into the start of `out` without panicking on a short `out`.
pub(crate) fn put(out: &mut [u8], at: usize, src: &[u8]) {
    if let Some(dst) = at
        .checked_add(src.len())
        .and_then(|end| out.get_mut(at..end))
    {
        dst.copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_rfcs() {
        assert_eq!(AttrType::MESSAGE_INTEGRITY_SHA256.0, 0x001C);
        assert_eq!(AttrType::XOR_PEER_ADDRESS.0, 0x0012);
        assert_eq!(AttrType::CONNECTION_ID.0, 0x002A);
        assert_eq!(AttrType::ICE_CONTROLLING.0, 0x802A);
        assert_eq!(AttrType::FINGERPRINT.to_string(), "FINGERPRINT");
        assert_eq!(AttrType(0x0fff).to_string(), "attribute 0x0fff");
    }

    #[test]
    fn comprehension_boundary() {
        assert!(AttrType(0x7FFF).comprehension_required());
        assert!(!AttrType(0x8000).comprehension_required());
        assert!(AttrType::USE_CANDIDATE.is_known());
        assert!(!AttrType(0x0003).is_known()); // CHANGE-REQUEST (RFC 5780) is not ours
    }

    #[test]
    fn helpers() {
        let mut out = [0u8; 4];
        put(&mut out, 2, &[1, 2, 3]); // would overflow: silently refused
        assert_eq!(out, [0; 4]);
        put(&mut out, 1, &[1, 2, 3]);
        assert_eq!(out, [0, 1, 2, 3]);
        assert!(expect_len(AttrType::LIFETIME, &[0; 3], 4, "4").is_err());
        assert_eq!(fixed::<2>(AttrType::LIFETIME, &[1, 2], "2"), Ok([1, 2]));
    }
}
