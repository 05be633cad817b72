//! Stateless nonces (RFC 8489 §9.2): everything needed to verify a nonce is inside it, so the
//! server keeps no per-client state and a nonce flood costs no memory.
//!
//! Layout (36 ASCII characters):
//!
//! ```text
//! "obMatJos2" "AAAD" base64url( version:1 | issued_at:u32 BE | tag:12 )
//! ```
//!
//! Short because it goes into every 401 and 438, and those answer unauthenticated requests:
//! the 401 to a minimal (28-byte) Allocate must stay within 4 times its size (112 bytes), or
//! the relay amplifies spoofed traffic. `issued_at` is the unix time modulo 2^32 (the age is
//! computed with wrapping arithmetic, so 2106 is no cliff); a 96-bit tag still takes 2^96
//! guesses to forge, and a forged nonce only buys a chance to try a password.
//!
//! `"AAAD"` is the base64 of the 24-bit security feature set with bit 0 (password algorithms)
//! and bit 1 (username anonymity) set; bits count from the least significant end (verified
//! erratum 6290 to RFC 8489). `tag` is HMAC-SHA256 under the server key, truncated to 96
//! bits, over the whole visible prefix, the body and the client IP. The IP is only
//! authenticated, not carried: the nonce does not reveal it and stays short. Every character
//! is legal in a quoted-string (no `"` or `\`).

use std::fmt;
use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::error::NonceError;

/// RFC 8489 §9.2 nonce cookie.
const COOKIE: &str = "obMatJos2";
/// Security feature set 0x000003 (password algorithms + username anonymity) in base64.
const FEATURES: &str = "AAAD";
const FEATURE_PASSWORD_ALGORITHMS: u8 = 0x01;
const PREFIX_LEN: usize = COOKIE.len() + FEATURES.len();

const VERSION: u8 = 2;
const TAG_LEN: usize = 12;
/// version, issued_at.
const STAMP_LEN: usize = 1 + 4;
const BODY_LEN: usize = STAMP_LEN + TAG_LEN;
/// base64 without padding of `BODY_LEN` bytes.
const ENCODED_BODY_LEN: usize = (BODY_LEN * 4).div_ceil(3);
/// Total length of a nonce we mint.
pub const NONCE_LEN: usize = PREFIX_LEN + ENCODED_BODY_LEN;
const _: () = assert!(NONCE_LEN < 128, "RFC 8489 §14.10: NONCE < 128 characters");

/// Domain separation, so the nonce key cannot be confused with another use of the same bytes.
const DOMAIN: &[u8] = b"relay-proto nonce v1";

/// The server's nonce key: 32 random bytes the daemon generates (or loads, to keep nonces
/// valid across restarts and between cluster nodes). `Debug` does not print it.
#[derive(Clone)]
pub struct NonceKey([u8; 32]);

impl NonceKey {
    /// Wraps the key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key bytes, for the handover snapshot (the next process must accept the nonces
    /// this one issued).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NonceKey(<redacted>)")
    }
}

/// Mints and verifies stateless nonces.
#[derive(Debug, Clone)]
pub struct Nonces {
    key: NonceKey,
    lifetime_secs: u64,
}

impl Nonces {
    /// `lifetime_secs`: how long a nonce stays fresh (the server uses 600).
    pub fn new(key: NonceKey, lifetime_secs: u64) -> Self {
        Self { key, lifetime_secs }
    }

    /// The configured lifetime.
    pub fn lifetime_secs(&self) -> u64 {
        self.lifetime_secs
    }

    /// A fresh nonce for `client_ip`, issued at `unix_now`.
    pub fn mint(&self, client_ip: IpAddr, unix_now: u64) -> String {
        let mut body = [0u8; BODY_LEN];
        body[0] = VERSION;
        // Truncation intended: the age is computed modulo 2^32.
        body[1..STAMP_LEN].copy_from_slice(&(unix_now as u32).to_be_bytes());
        let tag = self.tag(&body[..STAMP_LEN], client_ip);
        body[STAMP_LEN..].copy_from_slice(&tag);

        let mut out = String::with_capacity(NONCE_LEN);
        out.push_str(COOKIE);
        out.push_str(FEATURES);
        URL_SAFE_NO_PAD.encode_string(body, &mut out);
        out
    }

    /// `Ok` if `nonce` is ours, minted for `client_ip`, and fresh at `unix_now`.
    ///
    /// The tag is checked before the age, so only an authentic nonce can be `Stale`. A nonce
    /// issued in the future (the clock stepped back) is accepted within one lifetime and
    /// `Stale` beyond that, which makes the client fetch a current one.
    pub fn verify(&self, nonce: &str, client_ip: IpAddr, unix_now: u64) -> Result<(), NonceError> {
        let bytes = nonce.as_bytes();
        if bytes.len() != NONCE_LEN
            || !nonce.starts_with(COOKIE)
            || !nonce.is_char_boundary(PREFIX_LEN)
        {
            return Err(NonceError::Invalid);
        }
        if &nonce[COOKIE.len()..PREFIX_LEN] != FEATURES {
            return Err(NonceError::Invalid);
        }
        // Room for one spare byte: decode_slice refuses output buffers that might be short.
        let mut body = [0u8; BODY_LEN + 2];
        match URL_SAFE_NO_PAD.decode_slice(&bytes[PREFIX_LEN..], &mut body) {
            Ok(BODY_LEN) => {}
            _ => return Err(NonceError::Invalid),
        }
        let tag = self.tag(&body[..STAMP_LEN], client_ip);
        if !bool::from(tag.ct_eq(&body[STAMP_LEN..BODY_LEN])) || body[0] != VERSION {
            return Err(NonceError::Invalid);
        }
        let mut issued = [0u8; 4];
        issued.copy_from_slice(&body[1..STAMP_LEN]);
        let issued = u32::from_be_bytes(issued);
        // Signed age modulo 2^32: negative when issued in the future.
        let age = i64::from((unix_now as u32).wrapping_sub(issued) as i32);
        let lifetime = i64::try_from(self.lifetime_secs).unwrap_or(i64::MAX);
        if age >= lifetime || -age > lifetime {
            return Err(NonceError::Stale);
        }
        Ok(())
    }

    /// Whether `nonce` starts with the RFC 8489 cookie and its feature set advertises
    /// password algorithms (so PASSWORD-ALGORITHMS must be checked against bid-down, §9.2.4).
    pub fn has_security_feature_cookie(nonce: &str) -> bool {
        let Some(features) = nonce
            .strip_prefix(COOKIE)
            .and_then(|rest| rest.as_bytes().get(..FEATURES.len()))
        else {
            return false;
        };
        let mut set = [0u8; 3];
        matches!(STANDARD.decode_slice(features, &mut set), Ok(3))
            && set[2] & FEATURE_PASSWORD_ALGORITHMS != 0
    }

    fn tag(&self, body: &[u8], client_ip: IpAddr) -> [u8; TAG_LEN] {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key.0) else {
            // HMAC accepts keys of any length; this branch cannot be taken.
            return [0; TAG_LEN];
        };
        mac.update(DOMAIN);
        mac.update(COOKIE.as_bytes());
        mac.update(FEATURES.as_bytes());
        mac.update(body);
        // A dual-stack socket may report an IPv4 client as ::ffff:a.b.c.d; bind the same nonce
        // to both spellings.
        match client_ip.to_canonical() {
            IpAddr::V4(v4) => {
                mac.update(&[4]);
                mac.update(&v4.octets());
            }
            IpAddr::V6(v6) => {
                mac.update(&[6]);
                mac.update(&v6.octets());
            }
        }
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_735_689_600;

    fn nonces() -> Nonces {
        Nonces::new(NonceKey::new([7; 32]), 600)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn round_trip() {
        let n = nonces();
        for client in ["192.0.2.1", "2001:db8::1"] {
            let nonce = n.mint(ip(client), NOW);
            assert_eq!(n.verify(&nonce, ip(client), NOW), Ok(()));
            assert_eq!(n.verify(&nonce, ip(client), NOW + 599), Ok(()));
        }
    }

    #[test]
    fn shape_cookie_and_length() {
        let nonce = nonces().mint(ip("192.0.2.1"), NOW);
        assert!(nonce.starts_with("obMatJos2AAAD"), "{nonce}");
        assert_eq!(nonce.len(), NONCE_LEN);
        assert!(nonce.len() < 128);
        // quoted-string: printable ASCII without '"' and '\'.
        assert!(
            nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
        );
        assert!(Nonces::has_security_feature_cookie(&nonce));
        // The RFC 8489 B.1 nonce ("AAAC": only username anonymity) does not advertise them.
        assert!(!Nonces::has_security_feature_cookie(
            "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"
        ));
        assert!(!Nonces::has_security_feature_cookie("obMatJos2AA"));
        assert!(!Nonces::has_security_feature_cookie(
            "f//499k954d6OL34oL9FSTvy64sA"
        ));
        assert!(!Nonces::has_security_feature_cookie("obMatJos2AA\u{e9}D"));
    }

    #[test]
    fn expired_is_stale() {
        let n = nonces();
        let nonce = n.mint(ip("192.0.2.1"), NOW);
        assert_eq!(
            n.verify(&nonce, ip("192.0.2.1"), NOW + 600),
            Err(NonceError::Stale)
        );
        assert_eq!(
            n.verify(&nonce, ip("192.0.2.1"), NOW + 100_000),
            Err(NonceError::Stale)
        );
        // Clock stepped back by more than a lifetime.
        assert_eq!(
            n.verify(&nonce, ip("192.0.2.1"), NOW - 601),
            Err(NonceError::Stale)
        );
        assert_eq!(n.verify(&nonce, ip("192.0.2.1"), NOW - 10), Ok(()));
    }

    #[test]
    fn tampered_byte_is_invalid() {
        let n = nonces();
        let nonce = n.mint(ip("192.0.2.1"), NOW);
        for i in 0..nonce.len() {
            let mut b = nonce.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(b).unwrap();
            assert_eq!(
                n.verify(&t, ip("192.0.2.1"), NOW),
                Err(NonceError::Invalid),
                "byte {i}"
            );
        }
        assert_eq!(
            n.verify(&nonce[..nonce.len() - 1], ip("192.0.2.1"), NOW),
            Err(NonceError::Invalid)
        );
    }

    #[test]
    fn other_ip_or_key_is_invalid() {
        let n = nonces();
        let nonce = n.mint(ip("192.0.2.1"), NOW);
        assert_eq!(
            n.verify(&nonce, ip("192.0.2.2"), NOW),
            Err(NonceError::Invalid)
        );
        assert_eq!(
            n.verify(&nonce, ip("2001:db8::1"), NOW),
            Err(NonceError::Invalid)
        );
        // Same client seen through a dual-stack socket.
        assert_eq!(n.verify(&nonce, ip("::ffff:192.0.2.1"), NOW), Ok(()));
        let other = Nonces::new(NonceKey::new([8; 32]), 600);
        assert_eq!(
            other.verify(&nonce, ip("192.0.2.1"), NOW),
            Err(NonceError::Invalid)
        );
        // An expired nonce from another client is Invalid, not Stale.
        assert_eq!(
            n.verify(&nonce, ip("192.0.2.2"), NOW + 10_000),
            Err(NonceError::Invalid)
        );
    }

    #[test]
    fn debug_redacts_key() {
        assert!(!format!("{:?}", nonces()).contains('7'));
    }

    proptest! {
        #[test]
        fn random_strings_never_verify(s in ".{0,200}", ascii in "obMatJos2AAAD[A-Za-z0-9_-]{0,40}",
                                       now in any::<u64>()) {
            let n = nonces();
            prop_assert_eq!(n.verify(&s, ip("192.0.2.1"), now), Err(NonceError::Invalid));
            prop_assert_eq!(n.verify(&ascii, ip("192.0.2.1"), now), Err(NonceError::Invalid));
            let _ = Nonces::has_security_feature_cookie(&s);
        }

        #[test]
        fn mint_verify_any_time(now in any::<u64>(), octets in any::<[u8; 16]>()) {
            let n = nonces();
            let client = IpAddr::from(octets);
            let nonce = n.mint(client, now);
            prop_assert_eq!(nonce.len(), NONCE_LEN);
            prop_assert_eq!(n.verify(&nonce, client, now), Ok(()));
            prop_assert_eq!(n.verify(&nonce, client, now.wrapping_add(599)), Ok(()));
            prop_assert_eq!(n.verify(&nonce, client, now.wrapping_add(600)), Err(NonceError::Stale));
        }
    }
}
