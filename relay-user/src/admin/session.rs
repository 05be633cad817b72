//! Who may use the admin endpoint: `Authorization: Bearer TOKEN` (scripts, `relay
//! status`), or the console's session cookie (a browser cannot send a bearer header on
//! navigation). Opening `/?token=TOKEN` or submitting the console's form sets the cookie.
//!
//! The cookie holds an HMAC of the token under a key drawn at process start, never the
//! token: it says nothing about the token, stops working when a reload changes the token,
//! and a restart logs browsers out (the bookmark logs them in again). It is HttpOnly
//! (page scripts never see it) and SameSite=Strict (no other site's page can make a
//! browser send it, so the DELETE needs no CSRF token).

use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderValue, header};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The cookie's name.
pub const COOKIE: &str = "relay_admin_session";

/// Why a request was refused, for the 401 and the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NoCredentials,
    WrongBearer,
    WrongCookie,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoCredentials => "no bearer token or session cookie",
            Refusal::WrongBearer => "wrong bearer token",
            Refusal::WrongCookie => "stale session cookie (token changed or relay restarted)",
        }
    }
}

/// Whether `headers` carry `token`: as a bearer header, else as the session cookie.
pub fn check(token: &str, headers: &HeaderMap) -> Result<(), Refusal> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(given) = bearer {
        return if equal(given, token) {
            Ok(())
        } else {
            Err(Refusal::WrongBearer)
        };
    }
    match cookie(headers) {
        Some(given) if equal(given, &cookie_value(token)) => Ok(()),
        Some(_) => Err(Refusal::WrongCookie),
        None => Err(Refusal::NoCredentials),
    }
}

/// Constant-time: the time taken says nothing of how much of `given` was right.
pub fn equal(given: &str, expected: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// Our cookie's value among the request's `Cookie` headers.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// The session cookie's value for `token`: hex HMAC-SHA256 under this process's key.
pub fn cookie_value(token: &str) -> String {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        // Without the OS's randomness no key is safe: refuse to make one.
        getrandom::fill(&mut k).expect("the OS random source (getrandom) failed");
        k
    });
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(b"relay admin console session\0");
    mac.update(token.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `Set-Cookie` header that logs a browser in with `token`; `Secure` when the
/// endpoint is HTTPS (`[admin] tls`), so the browser never sends it over plain HTTP.
pub fn set_cookie(token: &str, https: bool) -> HeaderValue {
    let secure = if https { "; Secure" } else { "" };
    let v = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{secure}",
        cookie_value(token)
    );
    HeaderValue::from_str(&v).expect("hex and ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_or_cookie_and_never_the_raw_token_as_cookie() {
        let good = format!("a=1; {COOKIE}={}; b=2", cookie_value("s3cret"));
        assert_eq!(
            check("s3cret", &headers(&[(header::COOKIE, &good)])),
            Ok(())
        );
        let raw = format!("{COOKIE}=s3cret");
        assert_eq!(
            check("s3cret", &headers(&[(header::COOKIE, &raw)])),
            Err(Refusal::WrongCookie)
        );
        // After a reload that changed the token, the old cookie is void.
        assert_eq!(
            check("n3w", &headers(&[(header::COOKIE, &good)])),
            Err(Refusal::WrongCookie)
        );
        assert_eq!(
            check(
                "s3cret",
                &headers(&[(header::AUTHORIZATION, "Bearer s3cret")])
            ),
            Ok(())
        );
        // A wrong bearer is not rescued by a good cookie: the client said who it is.
        assert_eq!(
            check(
                "s3cret",
                &headers(&[
                    (header::AUTHORIZATION, "Bearer no"),
                    (header::COOKIE, &good)
                ])
            ),
            Err(Refusal::WrongBearer)
        );
        assert_eq!(
            check("s3cret", &HeaderMap::new()),
            Err(Refusal::NoCredentials)
        );
        let set = set_cookie("s3cret", false);
        assert!(!set.to_str().unwrap().contains("Secure"));
        assert!(
            set_cookie("s3cret", true)
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
        let set = set.to_str().unwrap();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        assert!(!set.contains("s3cret"), "{set}");
        assert_ne!(cookie_value("a"), cookie_value("b"));
        assert_eq!(cookie_value("a").len(), 64);
    }
}
