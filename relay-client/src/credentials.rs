//! Long-term credentials: a configured user, or a TURN REST pair minted from a secret.

use std::fmt;

use relay_proto::auth::rest;

/// Username and password of the long-term mechanism (RFC 8489 §9.2).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// Minted from a shared secret (reports say which mechanism failed).
    pub rest: bool,
}

impl Credentials {
    pub fn new(username: &str, password: &str) -> Self {
        Self {
            username: username.to_owned(),
            password: password.to_owned(),
            rest: false,
        }
    }

    /// TURN REST credentials (coturn's `use-auth-secret`): username `<expiry>:<name>`,
    /// password base64(HMAC-SHA1(secret, username)), valid `ttl_secs` from `unix_now`.
    pub fn rest(secret: &[u8], name: &str, unix_now: u64, ttl_secs: u64) -> Self {
        let expiry = unix_now.saturating_add(ttl_secs);
        let username = format!("{expiry}{}{name}", rest::SEPARATOR);
        let password = rest::password(secret, &username).as_str().to_owned();
        Self {
            username,
            password,
            rest: true,
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("rest", &self.rest)
            .finish()
    }
}
