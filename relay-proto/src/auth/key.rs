//! Long-term credential keys (RFC 8489 §9.2.2), USERHASH (§14.4) and our OpaqueString.
//!
//! OpaqueString (RFC 8265 §4.2) is implemented in a simplified form, enough for configured
//! credentials: control characters are rejected, non-ASCII spaces (Unicode Zs) are mapped to
//! U+0020, and everything else passes through unchanged. Not done: NFC normalisation and the
//! PRECIS disallowed/unassigned code point tables, so credentials should be configured in NFC
//! (any ASCII credential already is). Clients that run full OpaqueString produce the same
//! bytes for such inputs.

use std::borrow::Cow;
use std::fmt;

use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::CredentialError;

/// A password algorithm from the RFC 8489 §18.5 registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PasswordAlgorithm {
    /// MD5 (0x0001), 16-byte key; the only algorithm of RFC 5389 clients.
    Md5,
    /// SHA-256 (0x0002), 32-byte key.
    Sha256,
}

impl PasswordAlgorithm {
    /// The registry number carried in PASSWORD-ALGORITHM(S).
    pub const fn number(self) -> u16 {
        match self {
            Self::Md5 => 1,
            Self::Sha256 => 2,
        }
    }

    /// The algorithm for a registry number, `None` for reserved or unknown numbers.
    pub const fn from_number(n: u16) -> Option<Self> {
        match n {
            1 => Some(Self::Md5),
            2 => Some(Self::Sha256),
            _ => None,
        }
    }

    /// Length in bytes of a key for this algorithm.
    pub const fn key_len(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha256 => 32,
        }
    }
}

/// A long-term credential key (16 bytes for MD5, 32 for SHA-256). `Debug` does not print it.
#[derive(Clone)]
pub struct Key {
    alg: PasswordAlgorithm,
    // Fixed storage so a `Key` never allocates; only the first `alg.key_len()` bytes are used.
    bytes: [u8; 32],
}

impl Key {
    /// An MD5 key, e.g. coturn's pre-computed HA1.
    pub const fn from_md5(bytes: [u8; 16]) -> Self {
        let mut buf = [0u8; 32];
        let mut i = 0;
        while i < 16 {
            buf[i] = bytes[i];
            i += 1;
        }
        Self {
            alg: PasswordAlgorithm::Md5,
            bytes: buf,
        }
    }

    /// A SHA-256 key.
    pub const fn from_sha256(bytes: [u8; 32]) -> Self {
        Self {
            alg: PasswordAlgorithm::Sha256,
            bytes,
        }
    }

    /// The key bytes, exactly `algorithm().key_len()` long.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.alg.key_len()]
    }

    /// The algorithm the key was derived with.
    pub fn algorithm(&self) -> PasswordAlgorithm {
        self.alg
    }

    /// Constant-time equality (same algorithm and bytes).
    pub fn ct_eq(&self, other: &Key) -> bool {
        self.alg == other.alg && bool::from(self.as_bytes().ct_eq(other.as_bytes()))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("algorithm", &self.alg)
            .field("bytes", &"<redacted>")
            .finish()
    }
}

/// RFC 8489 §9.2.2: `H(username ":" OpaqueString(realm) ":" OpaqueString(password))` with H =
/// MD5 or SHA-256. The username is used as given (it was prepared when it was configured or
/// is the wire value). Never fails: control characters are hashed as they are; use
/// [`try_long_term_key`] to refuse them.
pub fn long_term_key(alg: PasswordAlgorithm, username: &str, realm: &str, password: &str) -> Key {
    fn feed<D: Digest>(mut d: D, username: &str, realm: &str, password: &str) -> D {
        d.update(username.as_bytes());
        d.update(b":");
        opaque_chunks(realm, |c| d.update(c));
        d.update(b":");
        opaque_chunks(password, |c| d.update(c));
        d
    }
    match alg {
        PasswordAlgorithm::Md5 => Key::from_md5(
            feed(Md5::new(), username, realm, password)
                .finalize()
                .into(),
        ),
        PasswordAlgorithm::Sha256 => Key::from_sha256(
            feed(Sha256::new(), username, realm, password)
                .finalize()
                .into(),
        ),
    }
}

/// [`long_term_key`] that first checks realm and password with [`opaque_string`].
pub fn try_long_term_key(
    alg: PasswordAlgorithm,
    username: &str,
    realm: &str,
    password: &str,
) -> Result<Key, CredentialError> {
    check_opaque("realm", realm)?;
    check_opaque("password", password)?;
    Ok(long_term_key(alg, username, realm, password))
}

/// RFC 8489 §14.4: USERHASH = SHA-256(OpaqueString(username) ":" OpaqueString(realm)).
pub fn user_hash(username: &str, realm: &str) -> [u8; 32] {
    let mut d = Sha256::new();
    opaque_chunks(username, |c| d.update(c));
    d.update(b":");
    opaque_chunks(realm, |c| d.update(c));
    d.finalize().into()
}

/// Our simplified OpaqueString (see the module docs): `Err` on empty input or a control
/// character, non-ASCII spaces mapped to U+0020; borrows when nothing was mapped.
pub fn opaque_string<'a>(field: &'static str, s: &'a str) -> Result<Cow<'a, str>, CredentialError> {
    check_opaque(field, s)?;
    if !s.chars().any(is_non_ascii_space) {
        return Ok(Cow::Borrowed(s));
    }
    Ok(Cow::Owned(
        s.chars()
            .map(|c| if is_non_ascii_space(c) { ' ' } else { c })
            .collect(),
    ))
}

pub(crate) fn check_opaque(field: &'static str, s: &str) -> Result<(), CredentialError> {
    if s.is_empty() {
        return Err(CredentialError::Empty { field });
    }
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(CredentialError::ControlCharacter {
            field,
            code: u32::from(c),
        }),
        None => Ok(()),
    }
}

/// Unicode general category Zs minus U+0020 (RFC 8265 §4.2.1 width/space mapping rule).
fn is_non_ascii_space(c: char) -> bool {
    matches!(
        c,
        '\u{00A0}' | '\u{1680}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}'
    )
}

/// Feeds `s` to `sink` with non-ASCII spaces replaced, without allocating.
fn opaque_chunks(s: &str, mut sink: impl FnMut(&[u8])) {
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if is_non_ascii_space(c) {
            sink(&s.as_bytes()[start..i]);
            sink(b" ");
            start = i + c.len_utf8();
        }
    }
    sink(&s.as_bytes()[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};

    const USER: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}"; // マトリックス

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn algorithm_numbers() {
        for alg in [PasswordAlgorithm::Md5, PasswordAlgorithm::Sha256] {
            assert_eq!(PasswordAlgorithm::from_number(alg.number()), Some(alg));
        }
        assert_eq!(PasswordAlgorithm::Md5.number(), 1);
        assert_eq!(PasswordAlgorithm::Sha256.number(), 2);
        assert_eq!(PasswordAlgorithm::from_number(0), None);
        assert_eq!(PasswordAlgorithm::from_number(3), None);
    }

    /// RFC 5769 §2.4: the MD5 key, checked by reproducing the vector's MESSAGE-INTEGRITY.
    #[test]
    fn rfc5769_long_term_md5_key() {
        let key = long_term_key(PasswordAlgorithm::Md5, USER, "example.org", "TheMatrIX");
        assert_eq!(key.as_bytes(), hex("e8ca7ad59d5eb0518e312911d2dab2a9"));
        let signed = hex("00010060 2112a442 78ad3433 c6ad72c0 29da412e
             00060012 e3839ee3 8388e383 aae38383 e382afe3 82b90000
             0015001c 662f2f34 39396b39 35346436 4f4c3334 6f4c3946 53547679 36347341
             0014000b 6578616d 706c652e 6f726700");
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(&signed);
        let expected = hex("f6702465 6dd64a3e 02b8e071 2e85c9a2 8ca89666");
        assert_eq!(mac.finalize().into_bytes().as_slice(), expected);
    }

    /// RFC 8489 Appendix B.1: USERHASH value and the SHA-256 key. The key is checked against
    /// the MESSAGE-INTEGRITY-SHA256 of the corrected vector (verified erratum 6268; the
    /// printed one has a wrong length and omits PASSWORD-ALGORITHM).
    #[test]
    fn rfc8489_b1_userhash_and_sha256_key() {
        let expected_hash =
            hex("4a3cf38f ef6992bd a952c678 0417da0f 24819415 569e60b2 05c46e41 407f1704");
        assert_eq!(user_hash(USER, "example.org").as_slice(), expected_hash);

        let key = long_term_key(PasswordAlgorithm::Sha256, USER, "example.org", "TheMatrIX");
        assert_eq!(key.algorithm(), PasswordAlgorithm::Sha256);
        assert_eq!(
            key.as_bytes(),
            hex("dd295a613b9058c3c23d6dc7165bda072304d989c9d0af3a8c7e184b4f9bb4a1")
        );
        let signed = hex("00010090 2112a442 78ad3433 c6ad72c0 29da412e
             001e0020 4a3cf38f ef6992bd a952c678 0417da0f 24819415 569e60b2 05c46e41 407f1704
             00150029 6f624d61 744a6f73 32414141 43662f2f 3439396b 39353464 364f4c33
                      346f4c39 46535476 79363473 41000000
             0014000b 6578616d 706c652e 6f726700
             001d0004 00020000");
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(&signed);
        let expected =
            hex("b5c7bf00 5b6c52a2 1c51c5e8 92f81924 136296cb 927c4314 9309278c c6518e65");
        assert_eq!(mac.finalize().into_bytes().as_slice(), expected);
    }

    #[test]
    fn opaque_string_maps_spaces_and_rejects_controls() {
        assert!(matches!(
            opaque_string("password", "abc"),
            Ok(Cow::Borrowed("abc"))
        ));
        assert_eq!(
            opaque_string("password", "a\u{3000}b\u{00A0}").unwrap(),
            "a b "
        );
        assert_eq!(
            opaque_string("password", "a\tb"),
            Err(CredentialError::ControlCharacter {
                field: "password",
                code: 9
            })
        );
        assert!(opaque_string("realm", "x\u{0085}").is_err());
        assert_eq!(
            opaque_string("realm", ""),
            Err(CredentialError::Empty { field: "realm" })
        );
        // Mapping happens inside key derivation too.
        let a = long_term_key(PasswordAlgorithm::Sha256, "u", "r", "p\u{2003}q");
        let b = long_term_key(PasswordAlgorithm::Sha256, "u", "r", "p q");
        assert!(a.ct_eq(&b));
        assert!(try_long_term_key(PasswordAlgorithm::Md5, "u", "r", "p\nq").is_err());
    }

    #[test]
    fn debug_does_not_print_key() {
        let key = Key::from_md5([0xab; 16]);
        let dbg = format!("{key:?}");
        assert!(
            !dbg.contains("171") && !dbg.to_lowercase().contains("ab, "),
            "{dbg}"
        );
        assert!(dbg.contains("redacted"));
        assert_eq!(key.as_bytes().len(), 16);
    }
}
