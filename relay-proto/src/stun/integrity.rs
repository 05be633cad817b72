//! HMAC and CRC helpers shared by the parser and the writer.
//!
//! Both sides hash "the message as if it ended right after this attribute": the header with its
//! length field rewritten, then the attributes before it. Taking the header as a separate
//! 20-byte copy avoids copying the message.

use super::header::{HEADER_LEN, field};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// XORed into the CRC so that FINGERPRINT differs from a CRC the application might carry.
pub(crate) const FINGERPRINT_XOR: u32 = 0x5354_554e;
pub(crate) const SHA1_LEN: usize = 20;
pub(crate) const SHA256_LEN: usize = 32;

/// Which integrity attribute a message carries (SHA-256 wins when both are present).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum IntegrityKind {
    None,
    Sha1,
    Sha256,
}

/// The header of `msg` (which must be at least 20 bytes) with its length set to `len`.
fn header_with_len(msg: &[u8], len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    if let Some(src) = msg.get(..HEADER_LEN) {
        h.copy_from_slice(src);
    }
    h[field::LENGTH].copy_from_slice(&(len as u16).to_be_bytes());
    h
}

/// HMAC over `msg[..upto]` with the header length claiming `upto + attr_len - 20` bytes.
fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[u8], upto: usize, attr_len: usize) -> M {
    let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| <M as hmac::digest::KeyInit>::new(&Default::default()));
    m.update(&header_with_len(
        msg,
        (upto + attr_len).saturating_sub(HEADER_LEN),
    ));
    m.update(msg.get(HEADER_LEN..upto).unwrap_or_default());
    m
}

/// HMAC-SHA1 for a MESSAGE-INTEGRITY attribute that starts at `upto`.
pub(crate) fn hmac_sha1(key: &[u8], msg: &[u8], upto: usize) -> [u8; SHA1_LEN] {
    mac::<Hmac<Sha1>>(key, msg, upto, 4 + SHA1_LEN)
        .finalize()
        .into_bytes()
        .into()
}

/// HMAC-SHA256 for a MESSAGE-INTEGRITY-SHA256 attribute of `value_len` bytes at `upto`.
pub(crate) fn hmac_sha256(
    key: &[u8],
    msg: &[u8],
    upto: usize,
    value_len: usize,
) -> [u8; SHA256_LEN] {
    mac::<Hmac<Sha256>>(key, msg, upto, 4 + value_len)
        .finalize()
        .into_bytes()
        .into()
}

/// FINGERPRINT value for `msg[..upto]`, whose header already counts the FINGERPRINT.
pub(crate) fn fingerprint(msg: &[u8], upto: usize) -> u32 {
    crc32fast::hash(msg.get(..upto).unwrap_or_default()) ^ FINGERPRINT_XOR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rewrite_keeps_the_rest() {
        let msg = [0x55u8; 24];
        let h = header_with_len(&msg, 0x1234);
        assert_eq!(&h[..2], &[0x55, 0x55]);
        assert_eq!(&h[2..4], &[0x12, 0x34]);
        assert_eq!(&h[4..], &[0x55; 16]);
    }

    #[test]
    fn hmac_matches_a_one_shot_computation() {
        // Hashing header' + body must equal HMAC of the concatenation.
        let mut msg = [0u8; 28];
        msg[8] = 9;
        let got = hmac_sha1(b"key", &msg, 28);
        let mut whole = msg;
        whole[2..4].copy_from_slice(&(28u16 + 24 - 20).to_be_bytes());
        let mut m = <Hmac<Sha1> as hmac::digest::KeyInit>::new_from_slice(b"key").unwrap();
        m.update(&whole);
        assert_eq!(got[..], m.finalize().into_bytes()[..]);
    }
}
