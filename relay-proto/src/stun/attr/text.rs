//! UTF-8 attributes (RFC 8489 §14.3–§14.9, §14.14, §14.16; RFC 8656 §18.12).
//! All borrow from the message: no copy, no allocation.

use super::turn::AddressFamily;
use super::{Attr, AttrType, put};
use crate::stun::error::AttrError;
use crate::stun::header::TransactionId;

/// RFC 8489 caps realm/nonce/software/reason at 127 characters, which UTF-8 can stretch to
/// 763 bytes; checking the byte bound first keeps the char count cheap.
const MAX_CHARS: usize = 127;
const MAX_TEXT_BYTES: usize = 763;
const MAX_USERNAME_BYTES: usize = 513;
/// A DNS name never exceeds 255 octets.
const MAX_DOMAIN_BYTES: usize = 255;

fn text(
    typ: AttrType,
    value: &[u8],
    max_bytes: usize,
    limit_chars: bool,
) -> Result<&str, AttrError> {
    if value.len() > max_bytes {
        return Err(AttrError::TooLong {
            typ,
            len: value.len(),
            max: max_bytes,
            unit: "bytes",
        });
    }
    let s = core::str::from_utf8(value).map_err(|_| AttrError::NotUtf8 { typ })?;
    if limit_chars {
        let n = s.chars().count();
        if n > MAX_CHARS {
            return Err(AttrError::TooLong {
                typ,
                len: n,
                max: MAX_CHARS,
                unit: "characters",
            });
        }
    }
    Ok(s)
}

macro_rules! text_attr {
    ($(#[$doc:meta])* $name:ident, $typ:ident, $max:expr, $chars:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub struct $name<'a>(pub &'a str);

        impl<'a> Attr<'a> for $name<'a> {
            const TYPE: AttrType = AttrType::$typ;
            fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
                text(Self::TYPE, value, $max, $chars).map($name)
            }
            fn encoded_len(&self) -> usize {
                self.0.len()
            }
            fn encode(&self, out: &mut [u8], _: &TransactionId) {
                put(out, 0, self.0.as_bytes())
            }
        }
    };
}

text_attr!(
    /// USERNAME (at most 513 bytes, OpaqueString-processed by the client).
    Username, USERNAME, MAX_USERNAME_BYTES, false
);
text_attr!(
    /// REALM (fewer than 128 characters).
    Realm, REALM, MAX_TEXT_BYTES, true
);
text_attr!(
    /// NONCE (fewer than 128 characters).
    Nonce, NONCE, MAX_TEXT_BYTES, true
);
text_attr!(
    /// SOFTWARE (fewer than 128 characters).
    Software, SOFTWARE, MAX_TEXT_BYTES, true
);
text_attr!(
    /// ALTERNATE-DOMAIN: the name to validate the ALTERNATE-SERVER certificate against.
    AlternateDomain, ALTERNATE_DOMAIN, MAX_DOMAIN_BYTES, false
);

/// reserved(21) class(3) number(8) — the layout shared by ERROR-CODE and ADDRESS-ERROR-CODE.
fn decode_code(typ: AttrType, b2: u8, b3: u8) -> Result<u16, AttrError> {
    let class = b2 & 0x07;
    if !(3..=6).contains(&class) || b3 > 99 {
        return Err(AttrError::BadErrorCode {
            typ,
            class,
            number: b3,
        });
    }
    Ok(u16::from(class) * 100 + u16::from(b3))
}

fn encode_code(code: u16) -> [u8; 2] {
    // Out-of-range codes are the caller's bug; mask rather than panic.
    [((code / 100) & 0x07) as u8, (code % 100) as u8]
}

/// ERROR-CODE: `code` is class*100+number (300..=699).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ErrorCode<'a> {
    pub code: u16,
    pub reason: &'a str,
}

impl<'a> Attr<'a> for ErrorCode<'a> {
    const TYPE: AttrType = AttrType::ERROR_CODE;
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        let (&[_, _, b2, b3], rest) =
            value.split_first_chunk::<4>().ok_or(AttrError::BadLength {
                typ: Self::TYPE,
                len: value.len(),
                expected: "at least 4",
            })?;
        Ok(ErrorCode {
            code: decode_code(Self::TYPE, b2, b3)?,
            reason: text(Self::TYPE, rest, MAX_TEXT_BYTES, true)?,
        })
    }
    fn encoded_len(&self) -> usize {
        4 + self.reason.len()
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        let [c, n] = encode_code(self.code);
        put(out, 0, &[0, 0, c, n]);
        put(out, 4, self.reason.as_bytes());
    }
}

/// ADDRESS-ERROR-CODE (RFC 8656 §18.12): which family of a dual allocation failed, and why.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AddressErrorCode<'a> {
    pub family: AddressFamily,
    pub code: u16,
    pub reason: &'a str,
}

impl<'a> Attr<'a> for AddressErrorCode<'a> {
    const TYPE: AttrType = AttrType::ADDRESS_ERROR_CODE;
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, AttrError> {
        let (&[fam, _, b2, b3], rest) =
            value.split_first_chunk::<4>().ok_or(AttrError::BadLength {
                typ: Self::TYPE,
                len: value.len(),
                expected: "at least 4",
            })?;
        Ok(AddressErrorCode {
            family: AddressFamily::from_wire(Self::TYPE, fam)?,
            code: decode_code(Self::TYPE, b2, b3)?,
            reason: text(Self::TYPE, rest, MAX_TEXT_BYTES, true)?,
        })
    }
    fn encoded_len(&self) -> usize {
        4 + self.reason.len()
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        let [c, n] = encode_code(self.code);
        put(out, 0, &[self.family as u8, 0, c, n]);
        put(out, 4, self.reason.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const T: TransactionId = TransactionId([0; 12]);

    #[test]
    fn strings() {
        assert_eq!(Realm::decode(b"example.org", &T), Ok(Realm("example.org")));
        assert_eq!(
            Username::decode(&[0xff, 0xfe], &T),
            Err(AttrError::NotUtf8 {
                typ: AttrType::USERNAME
            })
        );
        assert!(Username::decode(&[b'a'; 513], &T).is_ok());
        assert!(matches!(
            Username::decode(&[b'a'; 514], &T),
            Err(AttrError::TooLong { max: 513, .. })
        ));
        // 127 three-byte characters are fine, 128 are not.
        let ok = "ア".repeat(127);
        assert!(Nonce::decode(ok.as_bytes(), &T).is_ok());
        let long = "ア".repeat(128);
        assert!(matches!(
            Nonce::decode(long.as_bytes(), &T),
            Err(AttrError::TooLong {
                unit: "characters",
                len: 128,
                ..
            })
        ));
        assert!(matches!(
            Software::decode(&[b'a'; 764], &T),
            Err(AttrError::TooLong { unit: "bytes", .. })
        ));
        assert!(AlternateDomain::decode(&[b'a'; 256], &T).is_err());
    }

    #[test]
    fn error_code() {
        let v = b"\x00\x00\x04\x01Unauthorized";
        let e = ErrorCode::decode(v, &T).unwrap();
        assert_eq!((e.code, e.reason), (401, "Unauthorized"));
        let mut out = [0xffu8; 16];
        e.encode(&mut out, &T);
        assert_eq!(&out, v);
        assert_eq!(
            ErrorCode::decode(b"\x00\x00\x02\x00", &T),
            Err(AttrError::BadErrorCode {
                typ: AttrType::ERROR_CODE,
                class: 2,
                number: 0
            })
        );
        assert!(matches!(
            ErrorCode::decode(b"\x00\x00\x04\x64", &T),
            Err(AttrError::BadErrorCode { number: 100, .. })
        ));
        assert!(matches!(
            ErrorCode::decode(b"\x00\x00\x04", &T),
            Err(AttrError::BadLength { .. })
        ));
        assert_eq!(
            ErrorCode::decode(b"\x00\x00\x06\x63", &T).map(|e| e.code),
            Ok(699)
        );
    }

    #[test]
    fn address_error_code() {
        let v = b"\x02\x00\x04\x28Address Family not Supported";
        let e = AddressErrorCode::decode(v, &T).unwrap();
        assert_eq!((e.family, e.code), (AddressFamily::V6, 440));
        let mut out = vec![0u8; e.encoded_len()];
        e.encode(&mut out, &T);
        assert_eq!(&out[..], &v[..]);
        assert!(matches!(
            AddressErrorCode::decode(b"\x03\x00\x04\x28", &T),
            Err(AttrError::UnknownFamily { family: 3, .. })
        ));
    }
}
