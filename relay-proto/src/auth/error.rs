//! Typed errors of the authentication layer.
//!
//! `AuthError` is what a request is refused for (the server maps it to a STUN error code and the
//! daemon logs its `Display`); `CredentialError` is a configuration mistake found while loading
//! users or secrets; `NonceError` is the verdict on a returned NONCE.

use thiserror::Error;

/// Why a request was refused. `Display` is short operator text for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AuthError {
    /// The request carried no USERNAME/USERHASH, REALM, NONCE or MESSAGE-INTEGRITY(-SHA256).
    #[error("missing credentials")]
    MissingCredentials,
    /// Neither a configured user nor (with shared secrets configured) a REST username.
    #[error("unknown user")]
    UnknownUser,
    /// No candidate key produced the MESSAGE-INTEGRITY in the request.
    #[error("wrong password or message integrity")]
    BadIntegrity,
    /// The nonce is ours and bound to this client but too old.
    #[error("stale nonce")]
    StaleNonce,
    /// The nonce is forged, garbled, or was issued to another client address.
    #[error("invalid nonce (forged, garbled, or issued to another address)")]
    InvalidNonce,
    /// A TURN REST username whose expiry timestamp has passed.
    #[error("credential expired at {expired_at}")]
    ExpiredCredential {
        /// The expiry taken from the username, in unix seconds.
        expired_at: u64,
    },
    /// The user has no key for the requested password algorithm (an MD5-key-only user asked
    /// for SHA-256).
    #[error("password algorithm not available for this user")]
    UnsupportedAlgorithm,
    /// A username that looks like a TURN REST username but whose timestamp does not parse.
    #[error("malformed username (expected <expiry> or <expiry>:<name>)")]
    MalformedUsername,
}

impl AuthError {
    /// The STUN error code RFC 8489 §9.2.4 suggests: 438 for nonce problems (the client
    /// retries with the fresh nonce), 400 for an algorithm the user cannot use, 401 otherwise.
    pub const fn stun_error_code(self) -> u16 {
        match self {
            Self::StaleNonce | Self::InvalidNonce => 438,
            Self::UnsupportedAlgorithm => 400,
            Self::MissingCredentials
            | Self::UnknownUser
            | Self::BadIntegrity
            | Self::ExpiredCredential { .. }
            | Self::MalformedUsername => 401,
        }
    }
}

/// Verdict on a NONCE that did not verify. Both become 438; they are logged differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum NonceError {
    /// Authentic and bound to this client, but older than the nonce lifetime.
    #[error("stale nonce")]
    Stale,
    /// Not one of ours: wrong prefix, bad encoding, bad tag, or minted for another client IP.
    #[error("invalid nonce")]
    Invalid,
}

impl From<NonceError> for AuthError {
    fn from(e: NonceError) -> Self {
        match e {
            NonceError::Stale => Self::StaleNonce,
            NonceError::Invalid => Self::InvalidNonce,
        }
    }
}

/// A user, realm or secret in the configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CredentialError {
    /// OpaqueString (RFC 8265) forbids empty strings.
    #[error("{field} is empty")]
    Empty {
        /// "username", "password" or "realm".
        field: &'static str,
    },
    /// OpaqueString forbids control characters (tab, newline, DEL, C1 controls, ...).
    #[error("{field} contains a control character (U+{code:04X})")]
    ControlCharacter {
        /// "username", "password" or "realm".
        field: &'static str,
        /// The offending code point.
        code: u32,
    },
    /// Longer than the STUN attribute allows (USERNAME < 513 bytes, REALM < 128 characters).
    #[error("{field} is longer than {max} bytes")]
    TooLong {
        /// "username" or "realm".
        field: &'static str,
        /// The limit.
        max: usize,
    },
    /// The same username was configured twice.
    #[error("user {0:?} is configured twice")]
    DuplicateUser(String),
    /// A pre-computed MD5 key that is not `0x` followed by 32 hex digits.
    #[error("MD5 key for {user:?} must be 0x followed by 32 hex digits: {reason}")]
    BadMd5Key {
        /// The user the key was for.
        user: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An empty TURN REST secret would let anyone mint valid credentials.
    #[error("TURN REST shared secret is empty")]
    EmptySecret,
    /// More shared secrets than fit in one candidate list.
    #[error("at most {max} TURN REST shared secrets can be active at once")]
    TooManySecrets {
        /// The limit.
        max: usize,
    },
}
