//! Builds a message in a caller-owned buffer (RFC 8489 §5, §14.5, §14.6, §14.7).
//!
//! Every step checks space first and leaves the buffer's message valid (header length
//! always matching what was written), so a `BufferTooSmall` mid-way loses nothing.

use super::attr::{Attr, AttrType};
use super::error::BufferTooSmall;
use super::header::{Class, HEADER_LEN, MAGIC_COOKIE, Method, TransactionId, encode_type, field};
use super::integrity::{self, SHA1_LEN, SHA256_LEN};

/// Largest attribute section the 16-bit length field can describe (a multiple of 4).
const MAX_BODY: usize = 0xFFFC;

pub struct MessageWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    txid: TransactionId,
    pad_byte: u8,
}

impl<'b> MessageWriter<'b> {
    pub fn new(
        buf: &'b mut [u8],
        class: Class,
        method: Method,
        txid: TransactionId,
    ) -> Result<Self, BufferTooSmall> {
        let header = buf.get_mut(..HEADER_LEN).ok_or(BufferTooSmall)?;
        header[field::TYPE].copy_from_slice(&encode_type(class, method).to_be_bytes());
        header[field::LENGTH].copy_from_slice(&[0, 0]);
        header[field::COOKIE].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        header[field::TXID].copy_from_slice(&txid.0);
        Ok(MessageWriter {
            buf,
            len: HEADER_LEN,
            txid,
            pad_byte: 0,
        })
    }

    /// Appends one attribute, zero-padded to 4 bytes.
    pub fn attr<'x, A: Attr<'x>>(&mut self, attr: &A) -> Result<&mut Self, BufferTooSmall> {
        let txid = self.txid;
        self.put(A::TYPE, attr.encoded_len(), |out| attr.encode(out, &txid))
    }

    /// Appends an attribute given as raw bytes (for types without a codec here).
    pub fn raw_attr(&mut self, typ: AttrType, value: &[u8]) -> Result<&mut Self, BufferTooSmall> {
        self.put(typ, value.len(), |out| out.copy_from_slice(value))
    }

    /// Byte used for padding from now on (default 0). Only for reproducing RFC 5769's
    /// vectors, which pad with spaces; receivers ignore padding values.
    pub fn padding_byte(&mut self, byte: u8) -> &mut Self {
        self.pad_byte = byte;
        self
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 keyed with `key`) over everything written so far.
    pub fn integrity_sha1(&mut self, key: &[u8]) -> Result<&mut Self, BufferTooSmall> {
        self.reserve(SHA1_LEN)?;
        let mac = integrity::hmac_sha1(key, self.buf, self.len);
        self.put(AttrType::MESSAGE_INTEGRITY, SHA1_LEN, |out| {
            out.copy_from_slice(&mac)
        })
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (full 32 bytes) over everything written so far.
    pub fn integrity_sha256(&mut self, key: &[u8]) -> Result<&mut Self, BufferTooSmall> {
        self.reserve(SHA256_LEN)?;
        let mac = integrity::hmac_sha256(key, self.buf, self.len, SHA256_LEN);
        self.put(AttrType::MESSAGE_INTEGRITY_SHA256, SHA256_LEN, |out| {
            out.copy_from_slice(&mac)
        })
    }

    /// Appends FINGERPRINT; must be the last attribute.
    pub fn fingerprint(&mut self) -> Result<&mut Self, BufferTooSmall> {
        let end = self.reserve(4)?;
        // The CRC covers the header with its length already counting the FINGERPRINT.
        self.write_len_field(end);
        let crc = integrity::fingerprint(self.buf, self.len);
        self.put(AttrType::FINGERPRINT, 4, |out| {
            out.copy_from_slice(&crc.to_be_bytes())
        })
    }

    /// Bytes written so far (header included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: the header is always there. Present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.txid
    }

    /// Total bytes written; the message is `buf[..n]`.
    pub fn finish(self) -> usize {
        self.len
    }

    /// Checks that an attribute with a `vlen`-byte value fits; returns the message end after it.
    fn reserve(&self, vlen: usize) -> Result<usize, BufferTooSmall> {
        let size = vlen.checked_add(4 + 3).ok_or(BufferTooSmall)? & !3;
        let end = self.len.checked_add(size).ok_or(BufferTooSmall)?;
        if vlen > usize::from(u16::MAX) || end - HEADER_LEN > MAX_BODY || end > self.buf.len() {
            return Err(BufferTooSmall);
        }
        Ok(end)
    }

    fn put(
        &mut self,
        typ: AttrType,
        vlen: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<&mut Self, BufferTooSmall> {
        let end = self.reserve(vlen)?;
        let start = self.len;
        let attr = self.buf.get_mut(start..end).ok_or(BufferTooSmall)?;
        let (head, rest) = attr.split_at_mut(4);
        head[..2].copy_from_slice(&typ.0.to_be_bytes());
        head[2..].copy_from_slice(&(vlen as u16).to_be_bytes());
        let (value, padding) = rest.split_at_mut(vlen);
        fill(value);
        padding.fill(self.pad_byte);
        self.set_len(end);
        Ok(self)
    }

    fn set_len(&mut self, end: usize) {
        self.len = end;
        self.write_len_field(end);
    }

    fn write_len_field(&mut self, end: usize) {
        let body = ((end - HEADER_LEN) as u16).to_be_bytes();
        if let Some(l) = self.buf.get_mut(field::LENGTH) {
            l.copy_from_slice(&body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::attr::{Lifetime, Software, XorRelayedAddress};
    use crate::stun::{IntegrityKind, Message};

    const TXID: TransactionId = TransactionId([3; 12]);

    #[test]
    fn writes_and_pads() {
        let mut buf = [0xEEu8; 64];
        let mut w = MessageWriter::new(&mut buf, Class::Success, Method::ALLOCATE, TXID).unwrap();
        w.attr(&Software("abc"))
            .unwrap()
            .attr(&Lifetime(600))
            .unwrap();
        let n = w.finish();
        assert_eq!(n, 20 + 8 + 8);
        assert_eq!(&buf[..4], &[0x01, 0x03, 0x00, 0x10]);
        assert_eq!(&buf[20..28], &[0x80, 0x22, 0x00, 0x03, b'a', b'b', b'c', 0]);
        let m = Message::parse(&buf[..n]).unwrap();
        assert_eq!(m.attr::<Lifetime>(), Some(Ok(Lifetime(600))));
    }

    #[test]
    fn every_step_reports_a_small_buffer() {
        assert!(MessageWriter::new(&mut [0u8; 19], Class::Request, Method::BINDING, TXID).is_err());
        let mut buf = [0u8; 20 + 12];
        let mut w = MessageWriter::new(&mut buf, Class::Request, Method::BINDING, TXID).unwrap();
        assert!(
            w.attr(&XorRelayedAddress("[::1]:1".parse().unwrap()))
                .is_err()
        );
        assert!(w.integrity_sha1(b"k").is_err());
        assert!(w.integrity_sha256(b"k").is_err());
        w.attr(&Lifetime(1)).unwrap();
        assert!(w.fingerprint().is_err()); // 4 bytes left, 8 needed
        // The failed calls left a valid message behind.
        let n = w.finish();
        assert_eq!(n, 28);
        assert!(Message::parse(&buf[..n]).is_ok());
    }

    #[test]
    fn value_too_long_for_the_length_field() {
        let mut buf = vec![0u8; 70_000];
        let mut w = MessageWriter::new(&mut buf, Class::Indication, Method::DATA, TXID).unwrap();
        assert_eq!(
            w.raw_attr(AttrType::DATA, &[0; 65_536]).err(),
            Some(BufferTooSmall)
        );
        // 65532 bytes of attributes is the most a header can describe.
        w.raw_attr(AttrType::DATA, &[0; 65_528]).unwrap();
        assert!(w.raw_attr(AttrType::DATA, &[]).is_err());
        assert_eq!(w.len(), 20 + 65_532);
    }

    #[test]
    fn integrity_then_fingerprint_verifies() {
        let mut buf = [0u8; 200];
        let mut w = MessageWriter::new(&mut buf, Class::Request, Method::REFRESH, TXID).unwrap();
        w.attr(&Lifetime(0)).unwrap();
        w.integrity_sha1(b"pw").unwrap();
        w.integrity_sha256(b"pw").unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        let m = Message::parse(&buf[..n]).unwrap();
        assert_eq!(m.integrity(), IntegrityKind::Sha256);
        assert!(m.has_fingerprint());
        assert_eq!(m.verify_integrity(b"pw"), Ok(()));
    }
}
