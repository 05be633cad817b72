//! Authentication-related attributes (RFC 8489 §14.4–§14.13). Integrity and fingerprint are
//! checked by [`Message`](crate::stun::Message) and written by
//! [`MessageWriter`](crate::stun::MessageWriter); the types here only carry the raw values.

use super::{Attr, AttrType, fixed, put};
use crate::stun::error::AttrError;
use crate::stun::header::TransactionId;

/// USERHASH: SHA-256(username ":" realm), for anonymous usernames.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct UserHash(pub [u8; 32]);

impl<'a> Attr<'a> for UserHash {
    const TYPE: AttrType = AttrType::USERHASH;
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        fixed(Self::TYPE, value, "32").map(UserHash)
    }
    fn encoded_len(&self) -> usize {
        32
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        put(out, 0, &self.0)
    }
}

/// MESSAGE-INTEGRITY: HMAC-SHA1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MessageIntegrity(pub [u8; 20]);

impl<'a> Attr<'a> for MessageIntegrity {
    const TYPE: AttrType = AttrType::MESSAGE_INTEGRITY;
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        fixed(Self::TYPE, value, "20").map(MessageIntegrity)
    }
    fn encoded_len(&self) -> usize {
        20
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        put(out, 0, &self.0)
    }
}

/// MESSAGE-INTEGRITY-SHA256: HMAC-SHA256, possibly truncated to 16..=32 bytes (multiple of 4).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MessageIntegritySha256 {
    mac: [u8; 32],
    len: u8,
}

impl MessageIntegritySha256 {
    /// `None` unless 16..=32 bytes and a multiple of 4.
    pub fn new(mac: &[u8]) -> Option<Self> {
        if !(16..=32).contains(&mac.len()) || !mac.len().is_multiple_of(4) {
            return None;
        }
        let mut m = [0u8; 32];
        m[..mac.len()].copy_from_slice(mac);
        Some(MessageIntegritySha256 {
            mac: m,
            len: mac.len() as u8,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.mac.get(..usize::from(self.len)).unwrap_or(&self.mac)
    }
}

impl<'a> Attr<'a> for MessageIntegritySha256 {
    const TYPE: AttrType = AttrType::MESSAGE_INTEGRITY_SHA256;
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        Self::new(value).ok_or(AttrError::BadLength {
            typ: Self::TYPE,
            len: value.len(),
            expected: "16..=32, a multiple of 4",
        })
    }
    fn encoded_len(&self) -> usize {
        self.as_bytes().len()
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        put(out, 0, self.as_bytes())
    }
}

/// FINGERPRINT: CRC-32 of the message up to it, XOR 0x5354554e.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Fingerprint(pub u32);

impl<'a> Attr<'a> for Fingerprint {
    const TYPE: AttrType = AttrType::FINGERPRINT;
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        fixed(Self::TYPE, value, "4").map(|b| Fingerprint(u32::from_be_bytes(b)))
    }
    fn encoded_len(&self) -> usize {
        4
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        put(out, 0, &self.0.to_be_bytes())
    }
}

/// A password algorithm (RFC 8489 §18.5); unknown codes are kept so that PASSWORD-ALGORITHMS
/// can be compared with what the server sent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PasswordAlgorithm {
    Md5,
    Sha256,
    Unknown(u16),
}

impl PasswordAlgorithm {
    pub const fn from_code(code: u16) -> Self {
        match code {
            1 => PasswordAlgorithm::Md5,
            2 => PasswordAlgorithm::Sha256,
            c => PasswordAlgorithm::Unknown(c),
        }
    }

    pub const fn code(self) -> u16 {
        match self {
            PasswordAlgorithm::Md5 => 1,
            PasswordAlgorithm::Sha256 => 2,
            PasswordAlgorithm::Unknown(c) => c,
        }
    }
}

/// algorithm(16) params-length(16) params, padded: returns the algorithm and the entry's
/// padded size. Parameters are skipped (none are defined for MD5 and SHA-256).
fn algorithm_entry(typ: AttrType, value: &[u8]) -> Result<(PasswordAlgorithm, usize), AttrError> {
    let &[a, b, c, d, ..] = value else {
        return Err(AttrError::BadLength {
            typ,
            len: value.len(),
            expected: "at least 4 per algorithm",
        });
    };
    let size = 4 + usize::from(u16::from_be_bytes([c, d])).div_ceil(4) * 4;
    if size > value.len() {
        return Err(AttrError::Invalid {
            typ,
            reason: "algorithm parameters run past the attribute",
        });
    }
    Ok((
        PasswordAlgorithm::from_code(u16::from_be_bytes([a, b])),
        size,
    ))
}

impl<'a> Attr<'a> for PasswordAlgorithm {
    const TYPE: AttrType = AttrType::PASSWORD_ALGORITHM;
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        algorithm_entry(Self::TYPE, value).map(|(alg, _)| alg)
    }
    fn encoded_len(&self) -> usize {
        4
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        let [a, b] = self.code().to_be_bytes();
        put(out, 0, &[a, b, 0, 0])
    }
}

/// Fixed-capacity list: decoding never allocates, whatever the peer sends.
macro_rules! bounded_list {
    ($(#[$doc:meta])* $name:ident, $item:ty, $cap:literal, $zero:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub struct $name {
            items: [$item; $cap],
            len: u8,
            truncated: bool,
        }

        impl $name {
            pub const CAPACITY: usize = $cap;

            pub const fn new() -> Self {
                $name { items: [$zero; $cap], len: 0, truncated: false }
            }

            /// Builds from a slice; items past the capacity set the truncated flag.
            pub fn from_slice(items: &[$item]) -> Self {
                let mut l = Self::new();
                for &i in items {
                    l.push(i);
                }
                l
            }

            /// Appends; returns false (and marks the list truncated) when full.
            pub fn push(&mut self, item: $item) -> bool {
                match self.items.get_mut(usize::from(self.len)) {
                    Some(slot) => {
                        *slot = item;
                        self.len += 1;
                        true
                    }
                    None => {
                        self.truncated = true;
                        false
                    }
                }
            }

            pub fn as_slice(&self) -> &[$item] {
                self.items.get(..usize::from(self.len)).unwrap_or(&self.items)
            }

            pub fn len(&self) -> usize {
                self.as_slice().len()
            }

            pub fn is_empty(&self) -> bool {
                self.len == 0
            }

            /// More items existed than the capacity holds.
            pub fn is_truncated(&self) -> bool {
                self.truncated
            }

            pub fn contains(&self, item: &$item) -> bool {
                self.as_slice().contains(item)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }
    };
}

bounded_list!(
    /// PASSWORD-ALGORITHMS: the algorithms a server offers, in preference order.
    PasswordAlgorithms, PasswordAlgorithm, 8, PasswordAlgorithm::Unknown(0)
);
bounded_list!(
    /// UNKNOWN-ATTRIBUTES (the 420 reply's list); also what
    /// [`Message::unknown_comprehension_required`](crate::stun::Message::unknown_comprehension_required)
    /// returns.
    UnknownAttributes, AttrType, 16, AttrType(0)
);

impl<'a> Attr<'a> for PasswordAlgorithms {
    const TYPE: AttrType = AttrType::PASSWORD_ALGORITHMS;
    fn decode(mut value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        let mut list = Self::new();
        while !value.is_empty() {
            let (alg, size) = algorithm_entry(Self::TYPE, value)?;
            list.push(alg);
            value = value.get(size..).unwrap_or_default();
        }
        Ok(list)
    }
    fn encoded_len(&self) -> usize {
        4 * self.len()
    }
    fn encode(&self, out: &mut [u8], txid: &TransactionId) {
        for (i, alg) in self.as_slice().iter().enumerate() {
            if let Some(o) = out.get_mut(4 * i..4 * i + 4) {
                alg.encode(o, txid);
            }
        }
    }
}

impl<'a> Attr<'a> for UnknownAttributes {
    const TYPE: AttrType = AttrType::UNKNOWN_ATTRIBUTES;
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        if !value.len().is_multiple_of(2) {
            return Err(AttrError::BadLength {
                typ: Self::TYPE,
                len: value.len(),
                expected: "a multiple of 2",
            });
        }
        let mut list = Self::new();
        for pair in value.chunks_exact(2) {
            if let &[a, b] = pair {
                list.push(AttrType(u16::from_be_bytes([a, b])));
            }
        }
        Ok(list)
    }
    fn encoded_len(&self) -> usize {
        2 * self.len()
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        for (o, t) in out.chunks_exact_mut(2).zip(self.as_slice()) {
            o.copy_from_slice(&t.0.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const T: TransactionId = TransactionId([0; 12]);

    #[test]
    fn integrity_values() {
        assert!(MessageIntegrity::decode(&[0; 19], &T).is_err());
        assert!(MessageIntegritySha256::decode(&[0; 12], &T).is_err());
        assert!(MessageIntegritySha256::decode(&[0; 18], &T).is_err());
        assert!(MessageIntegritySha256::decode(&[0; 36], &T).is_err());
        let m = MessageIntegritySha256::decode(&[7; 16], &T).unwrap();
        assert_eq!(m.as_bytes(), &[7; 16]);
        assert_eq!(
            Fingerprint::decode(&[1, 2, 3, 4], &T),
            Ok(Fingerprint(0x01020304))
        );
        assert!(UserHash::decode(&[0; 31], &T).is_err());
    }

    #[test]
    fn password_algorithms() {
        // SHA-256, MD5, then an unknown one with 2 bytes of parameters (+2 padding).
        let v = [0, 2, 0, 0, 0, 1, 0, 0, 0, 9, 0, 2, 0xaa, 0xbb, 0, 0];
        let l = PasswordAlgorithms::decode(&v, &T).unwrap();
        use PasswordAlgorithm::*;
        assert_eq!(l.as_slice(), &[Sha256, Md5, Unknown(9)]);
        let mut out = [0xffu8; 12];
        l.encode(&mut out, &T);
        assert_eq!(out, [0, 2, 0, 0, 0, 1, 0, 0, 0, 9, 0, 0]);
        assert!(matches!(
            PasswordAlgorithms::decode(&[0, 1, 0, 4, 0, 0], &T),
            Err(AttrError::Invalid { .. })
        ));
        assert!(matches!(
            PasswordAlgorithms::decode(&[0, 1], &T),
            Err(AttrError::BadLength { .. })
        ));
        assert_eq!(PasswordAlgorithm::decode(&[0, 2, 0, 0], &T), Ok(Sha256));
        // Far more entries than the capacity: truncated, no allocation, no error.
        let many = [0u8, 1, 0, 0].repeat(100);
        let l = PasswordAlgorithms::decode(&many, &T).unwrap();
        assert_eq!(l.len(), PasswordAlgorithms::CAPACITY);
        assert!(l.is_truncated());
    }

    #[test]
    fn unknown_attributes() {
        let l = UnknownAttributes::decode(&[0x00, 0x03, 0x7f, 0xff], &T).unwrap();
        assert_eq!(l.as_slice(), &[AttrType(3), AttrType(0x7fff)]);
        let mut out = [0u8; 4];
        l.encode(&mut out, &T);
        assert_eq!(out, [0x00, 0x03, 0x7f, 0xff]);
        assert!(UnknownAttributes::decode(&[0; 3], &T).is_err());
        let l = UnknownAttributes::decode(&[1; 40], &T).unwrap();
        assert!(l.is_truncated() && l.len() == 16);
        assert!(UnknownAttributes::new().is_empty());
    }
}
