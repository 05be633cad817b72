//! TURN REST API ("time-limited credentials", draft-uberti-behave-turn-rest, coturn
//! `use-auth-secret`): username = `<expiry>` or `<expiry>:<name>`, password =
//! base64(HMAC-SHA1(secret, username)).
//!
//! The timestamp is the EXPIRY time in unix seconds (coturn semantics). coturn also accepts
//! `<name>:<expiry>`, so we do too. Timestamps far in the future are not refused: whoever
//! holds the secret can mint any expiry anyway, and capping it is the issuer's policy.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// coturn's default `rest-api-separator`.
pub const SEPARATOR: char = ':';

/// base64 of a 20-byte HMAC-SHA1, with padding.
pub const PASSWORD_LEN: usize = 28;

/// How a username reads as a REST username.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestUsername {
    /// A well-formed REST username expiring at this unix time.
    Expires(u64),
    /// Looks like a REST username (has the separator or starts with a digit) but its
    /// timestamp does not parse.
    Malformed,
    /// An ordinary username: no separator, does not start with a digit.
    NotRest,
}

/// Classifies `username` (see [`RestUsername`]).
pub fn parse_username(username: &str) -> RestUsername {
    match username.split_once(SEPARATOR) {
        None if username.starts_with(|c: char| c.is_ascii_digit()) => timestamp(username),
        None => RestUsername::NotRest,
        // `<expiry>:<name>` is the documented form; `<name>:<expiry>` is coturn's fallback
        // when the first part is not all digits.
        Some((first, _)) if !first.is_empty() && first.bytes().all(|b| b.is_ascii_digit()) => {
            timestamp(first)
        }
        Some((_, rest)) => match rest.rsplit_once(SEPARATOR) {
            // Several separators and a non-numeric head: take the last field.
            Some((_, last)) => timestamp(last),
            None => timestamp(rest),
        },
    }
}

fn timestamp(s: &str) -> RestUsername {
    // `u64::from_str` would accept a leading '+'; insist on plain digits.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return RestUsername::Malformed;
    }
    match s.parse::<u64>() {
        Ok(t) => RestUsername::Expires(t),
        Err(_) => RestUsername::Malformed,
    }
}

/// The REST password for `username` under `secret`, as base64 text in a stack buffer.
pub fn password(secret: &[u8], username: &str) -> RestPassword {
    let mut out = RestPassword([0; PASSWORD_LEN]);
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        // HMAC takes keys of any length; unreachable.
        return out;
    };
    mac.update(username.as_bytes());
    let tag = mac.finalize().into_bytes();
    // 20 bytes always encode to exactly 28 characters.
    let _ = STANDARD.encode_slice(tag, &mut out.0);
    out
}

/// A derived REST password; `Debug` does not print it.
pub struct RestPassword([u8; PASSWORD_LEN]);

impl RestPassword {
    /// The password text (base64 is ASCII, so this never fails in practice).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Debug for RestPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RestPassword(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        assert_eq!(
            parse_username("1735689600"),
            RestUsername::Expires(1_735_689_600)
        );
        assert_eq!(
            parse_username("1735689600:alice"),
            RestUsername::Expires(1_735_689_600)
        );
        assert_eq!(
            parse_username("alice:1735689600"),
            RestUsername::Expires(1_735_689_600)
        );
        assert_eq!(
            parse_username("1735689600:a:b"),
            RestUsername::Expires(1_735_689_600)
        );
        assert_eq!(parse_username("alice"), RestUsername::NotRest);
        assert_eq!(parse_username("alice@example.org"), RestUsername::NotRest);
        for bad in [
            "17356x9600",
            "17356x9600:alice",
            ":alice",
            "alice:",
            "alice:bob",
            "+1735689600:alice",
            "99999999999999999999999:alice",
            "1735689600 :alice",
        ] {
            assert_eq!(parse_username(bad), RestUsername::Malformed, "{bad}");
        }
    }

    #[test]
    fn password_matches_coturn_recipe() {
        // echo -n "1735689600:alice" | openssl dgst -sha1 -hmac "north" -binary | base64
        let p = password(b"north", "1735689600:alice");
        assert_eq!(p.as_str(), "HbvWA6hGDtdv3wflBolXLhvzs0w=");
        assert_ne!(p.as_str(), password(b"south", "1735689600:alice").as_str());
        assert!(!format!("{p:?}").contains(p.as_str()));
    }
}
