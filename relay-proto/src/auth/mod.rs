//! Authentication: long-term credentials (RFC 8489 §9.2), TURN REST shared secrets, and
//! stateless nonces.
//!
//! The server asks [`CredentialStore::keys`] for the candidate keys of a USERNAME (or of the
//! name found by [`CredentialStore::username_for_hash`] for a USERHASH), checks the request's
//! MESSAGE-INTEGRITY(-SHA256) with each, and verifies the NONCE with [`Nonces::verify`]. Every
//! refusal is an [`AuthError`] whose `Display` is the operator's log text.

mod credentials;
mod error;
mod key;
mod nonce;
pub mod rest;

pub use credentials::{
    Candidates, CredentialKind, CredentialStore, MAX_CANDIDATES, MAX_SHARED_SECRETS,
};
pub use error::{AuthError, CredentialError, NonceError};
pub use key::{Key, PasswordAlgorithm, long_term_key, opaque_string, try_long_term_key, user_hash};
pub use nonce::{NONCE_LEN, NonceKey, Nonces};
