//! Validated view of one STUN message (RFC 8489 §5, §14, §15).
//!
//! `parse` checks the header and walks the TLVs once; afterwards every accessor works on
//! ranges already known to be in bounds and cannot panic. Nothing is copied or allocated.

use super::attr::{Attr, AttrType, RawAttr, UnknownAttributes};
use super::error::{AttrError, IntegrityError, ParseError};
use super::header::{
    Class, HEADER_LEN, MAGIC_COOKIE, Method, TransactionId, be16, be32, decode_type, field,
};
use super::integrity::{self, IntegrityKind, SHA1_LEN};
use subtle::ConstantTimeEq;

/// Comprehension-required types a message carries that this codec does not know (for 420).
pub type UnknownAttrs = UnknownAttributes;

/// Attribute header: type(16) length(16).
const ATTR_HEADER_LEN: usize = 4;

const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// Which attributes still count (RFC 8489 §14.5/§14.6): after MESSAGE-INTEGRITY only
/// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT; after MESSAGE-INTEGRITY-SHA256 only FINGERPRINT.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    Open,
    AfterSha1,
    AfterSha256,
}

impl Stage {
    /// Whether an attribute of type `t` counts at this stage, and the stage after it.
    #[inline]
    fn step(self, t: AttrType) -> (bool, Stage) {
        match (self, t) {
            (_, AttrType::FINGERPRINT) => (true, self),
            (Stage::Open, AttrType::MESSAGE_INTEGRITY) => (true, Stage::AfterSha1),
            (Stage::Open | Stage::AfterSha1, AttrType::MESSAGE_INTEGRITY_SHA256) => {
                (true, Stage::AfterSha256)
            }
            (Stage::Open, _) => (true, Stage::Open),
            (s, _) => (false, s),
        }
    }
}

/// One whole, validated STUN message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Message<'a> {
    buf: &'a [u8],
    /// Offsets of the counted integrity/fingerprint attribute headers.
    sha1: Option<usize>,
    sha256: Option<usize>,
    fingerprint: Option<usize>,
}

impl<'a> Message<'a> {
    /// `buf` must be exactly one message (a UDP datagram, or one frame cut by `frame_len`).
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        if buf.len() < HEADER_LEN {
            return Err(ParseError::TooShort(buf.len()));
        }
        if be16(buf, field::TYPE.start) & 0xC000 != 0 {
            return Err(ParseError::NotStun);
        }
        // The cookie first: without it this is not STUN (RFC 8489 section 6.3), whatever
        // else is wrong, and the relay does not answer it (the XDP program drops such
        // packets for the same reason).
        let cookie = be32(buf, field::COOKIE.start);
        if cookie != MAGIC_COOKIE {
            return Err(ParseError::BadMagicCookie(cookie));
        }
        let len = be16(buf, field::LENGTH.start);
        if !len.is_multiple_of(4) {
            return Err(ParseError::UnalignedLength(len));
        }
        if usize::from(len) != buf.len() - HEADER_LEN {
            return Err(ParseError::LengthMismatch {
                header: usize::from(len),
                actual: buf.len() - HEADER_LEN,
            });
        }

        let mut msg = Message {
            buf,
            sha1: None,
            sha256: None,
            fingerprint: None,
        };
        let mut stage = Stage::Open;
        let mut off = HEADER_LEN;
        while off < buf.len() {
            // `off` and `buf.len()` are multiples of 4, so a whole header is always present;
            // the check stays for robustness.
            if buf.len() - off < ATTR_HEADER_LEN {
                return Err(ParseError::AttrHeaderTruncated(off));
            }
            if msg.fingerprint.is_some() {
                return Err(ParseError::FingerprintNotLast);
            }
            let typ = AttrType(be16(buf, off));
            let vlen = usize::from(be16(buf, off + 2));
            if vlen > buf.len() - off - ATTR_HEADER_LEN {
                return Err(ParseError::AttrOverrun {
                    typ,
                    offset: off,
                    len: vlen,
                });
            }
            let (counts, next) = stage.step(typ);
            if counts {
                match typ {
                    AttrType::MESSAGE_INTEGRITY => msg.sha1 = Some(off),
                    AttrType::MESSAGE_INTEGRITY_SHA256 => msg.sha256 = Some(off),
                    AttrType::FINGERPRINT => msg.fingerprint = Some(off),
                    _ => {}
                }
            }
            stage = next;
            off += ATTR_HEADER_LEN + padded(vlen);
        }

        if let Some(fp) = msg.fingerprint {
            let value = msg.value_at(fp);
            let Ok(&got) = <&[u8; 4]>::try_from(value) else {
                return Err(ParseError::FingerprintLength(value.len()));
            };
            if integrity::fingerprint(buf, fp) != u32::from_be_bytes(got) {
                return Err(ParseError::BadFingerprint);
            }
        }
        Ok(msg)
    }

    #[inline]
    pub fn class(&self) -> Class {
        decode_type(be16(self.buf, field::TYPE.start)).0
    }

    #[inline]
    pub fn method(&self) -> Method {
        decode_type(be16(self.buf, field::TYPE.start)).1
    }

    #[inline]
    pub fn transaction_id(&self) -> TransactionId {
        let id = self
            .buf
            .get(field::TXID)
            .and_then(|s| s.first_chunk::<12>());
        TransactionId(id.copied().unwrap_or_default())
    }

    /// The whole message.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// First counted attribute of type `A`: `None` if absent, `Some(Err)` if malformed.
    #[inline]
    pub fn attr<A: Attr<'a>>(&self) -> Option<Result<A, AttrError>> {
        self.raw_attrs()
            .find(|a| a.typ == A::TYPE)
            .map(|a| A::decode(a.value, &self.transaction_id()))
    }

    /// Every counted attribute of type `A` (CreatePermission may carry several peers).
    /// The iterator borrows the buffer, not `self`.
    pub fn attrs<A: Attr<'a> + 'a>(
        &self,
    ) -> impl Iterator<Item = Result<A, AttrError>> + 'a + use<'a, A> {
        let txid = self.transaction_id();
        self.raw_attrs()
            .filter(|a| a.typ == A::TYPE)
            .map(move |a| A::decode(a.value, &txid))
    }

    /// Raw (type, value) pairs of the attributes that count.
    #[inline]
    pub fn raw_attrs(&self) -> RawAttrs<'a> {
        RawAttrs {
            buf: self.buf,
            off: HEADER_LEN,
            stage: Stage::Open,
        }
    }

    /// Comprehension-required types this codec does not know, deduplicated, in message order.
    pub fn unknown_comprehension_required(&self) -> UnknownAttrs {
        let mut list = UnknownAttrs::new();
        for a in self.raw_attrs() {
            if a.typ.comprehension_required() && !a.typ.is_known() && !list.contains(&a.typ) {
                list.push(a.typ);
            }
        }
        list
    }

    #[inline]
    pub fn integrity(&self) -> IntegrityKind {
        match (self.sha256, self.sha1) {
            (Some(_), _) => IntegrityKind::Sha256,
            (None, Some(_)) => IntegrityKind::Sha1,
            (None, None) => IntegrityKind::None,
        }
    }

    /// Constant-time check of MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY.
    /// `key` is the short-term password or the long-term key (the caller derives it).
    pub fn verify_integrity(&self, key: &[u8]) -> Result<(), IntegrityError> {
        let ok = if let Some(off) = self.sha256 {
            let value = self.value_at(off);
            if !(16..=32).contains(&value.len()) || !value.len().is_multiple_of(4) {
                return Err(IntegrityError::Malformed);
            }
            let mac = integrity::hmac_sha256(key, self.buf, off, value.len());
            mac.get(..value.len()).unwrap_or_default().ct_eq(value)
        } else if let Some(off) = self.sha1 {
            let value = self.value_at(off);
            if value.len() != SHA1_LEN {
                return Err(IntegrityError::Malformed);
            }
            integrity::hmac_sha1(key, self.buf, off).ct_eq(value)
        } else {
            return Err(IntegrityError::Missing);
        };
        if bool::from(ok) {
            Ok(())
        } else {
            Err(IntegrityError::Mismatch)
        }
    }

    /// FINGERPRINT present (and, since `parse` succeeded, correct).
    #[inline]
    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint.is_some()
    }

    /// Value of the attribute whose header is at `off` (an offset `parse` validated).
    fn value_at(&self, off: usize) -> &'a [u8] {
        let len = usize::from(be16(self.buf, off + 2));
        self.buf
            .get(off + ATTR_HEADER_LEN..off + ATTR_HEADER_LEN + len)
            .unwrap_or_default()
    }
}

/// Iterator over the attributes that count; see [`Message::raw_attrs`].
#[derive(Clone, Debug)]
pub struct RawAttrs<'a> {
    buf: &'a [u8],
    off: usize,
    stage: Stage,
}

impl<'a> Iterator for RawAttrs<'a> {
    type Item = RawAttr<'a>;

    #[inline]
    fn next(&mut self) -> Option<RawAttr<'a>> {
        loop {
            let off = self.off;
            let typ = AttrType(u16::from_be_bytes(
                *self.buf.get(off..)?.first_chunk::<2>()?,
            ));
            let vlen = usize::from(be16(self.buf, off + 2));
            let value = self
                .buf
                .get(off + ATTR_HEADER_LEN..off + ATTR_HEADER_LEN + vlen)?;
            self.off = off + ATTR_HEADER_LEN + padded(vlen);
            let (counts, next) = self.stage.step(typ);
            self.stage = next;
            if counts {
                return Some(RawAttr { typ, value });
            }
        }
    }
}

#[cfg(test)]
mod tests;
