//! Typed errors. Each variant names what was wrong so that logs and 400 reasons are useful,
//! while the unit variants the contract names (`BadFingerprint`, `Mismatch`, ...) stay
//! matchable without wildcards.

use super::attr::AttrType;
use thiserror::Error;

/// Why a buffer is not one well-formed STUN message.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum ParseError {
    #[error("{0} bytes is shorter than the 20-byte STUN header")]
    TooShort(usize),
    #[error("top two bits of the message type are not zero (not STUN)")]
    NotStun,
    #[error("magic cookie is {0:#010x}, not 0x2112a442")]
    BadMagicCookie(u32),
    #[error("message length {0} is not a multiple of 4")]
    UnalignedLength(u16),
    #[error("header says {header} bytes of attributes but {actual} follow the header")]
    LengthMismatch { header: usize, actual: usize },
    #[error("attribute {typ} at offset {offset} claims {len} bytes, past the end of the message")]
    AttrOverrun {
        typ: AttrType,
        offset: usize,
        len: usize,
    },
    #[error("attribute header at offset {0} is cut short")]
    AttrHeaderTruncated(usize),
    #[error("FINGERPRINT is not the last attribute")]
    FingerprintNotLast,
    #[error("FINGERPRINT value is {0} bytes, not 4")]
    FingerprintLength(usize),
    #[error("FINGERPRINT does not match the message's CRC-32")]
    BadFingerprint,
}

/// Why an attribute value could not be decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum AttrError {
    #[error("{typ} value is {len} bytes; expected {expected}")]
    BadLength {
        typ: AttrType,
        len: usize,
        expected: &'static str,
    },
    #[error("{typ} has unknown address family {family:#04x}")]
    UnknownFamily { typ: AttrType, family: u8 },
    #[error("{typ} is not valid UTF-8")]
    NotUtf8 { typ: AttrType },
    #[error("{typ} is too long: {len} {unit}, limit {max}")]
    TooLong {
        typ: AttrType,
        len: usize,
        max: usize,
        unit: &'static str,
    },
    #[error("{typ}: error class {class} number {number} outside 300..=699 / 0..=99")]
    BadErrorCode {
        typ: AttrType,
        class: u8,
        number: u8,
    },
    #[error("{typ}: {reason}")]
    Invalid { typ: AttrType, reason: &'static str },
}

/// Outcome of [`Message::verify_integrity`](super::Message::verify_integrity) when it fails.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum IntegrityError {
    #[error("no MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 attribute")]
    Missing,
    #[error("message integrity does not match")]
    Mismatch,
    #[error("message integrity attribute has an invalid length")]
    Malformed,
}

/// The caller's output buffer cannot hold what was asked for (or the value cannot be
/// represented in the 16-bit length field at all).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error, Default)]
#[error("output buffer too small")]
pub struct BufferTooSmall;

/// The start of a TCP stream is neither STUN nor ChannelData: the connection must be closed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum FramingError {
    #[error("first byte {0:#04x} starts neither a STUN message nor ChannelData")]
    UnknownFirstByte(u8),
    #[error("STUN magic cookie is {0:#010x}, not 0x2112a442")]
    BadMagicCookie(u32),
    #[error("STUN message length {0} is not a multiple of 4")]
    UnalignedLength(u16),
}

/// Why a buffer is not a valid ChannelData message.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum ChannelDataError {
    #[error("{0} bytes is shorter than the 4-byte ChannelData header")]
    TooShort(usize),
    #[error("channel number {0:#06x} outside 0x4000..=0x7fff")]
    BadChannel(u16),
    #[error("length field {declared} exceeds the {available} payload bytes present")]
    Truncated { declared: usize, available: usize },
    #[error("{0} bytes follow the payload; at most 3 bytes of padding are allowed")]
    TrailingBytes(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_reason() {
        let e = AttrError::BadLength {
            typ: AttrType::LIFETIME,
            len: 3,
            expected: "4",
        };
        assert_eq!(e.to_string(), "LIFETIME value is 3 bytes; expected 4");
        let e = ParseError::AttrOverrun {
            typ: AttrType(0x7777),
            offset: 20,
            len: 9,
        };
        assert!(e.to_string().contains("0x7777"));
        assert!(
            ChannelDataError::BadChannel(0x5000)
                .to_string()
                .contains("0x5000")
        );
    }
}
