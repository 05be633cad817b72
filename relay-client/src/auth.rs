//! The long-term mechanism's client half (RFC 8489 §9.2): what a 401/438 challenge
//! teaches, the attributes that sign a request, and the check of a response's integrity.

use relay_proto::auth::{Key, PasswordAlgorithm as KeyAlgorithm, try_long_term_key};
use relay_proto::stun::{
    BufferTooSmall, IntegrityError, Message, MessageWriter, Nonce, PasswordAlgorithm,
    PasswordAlgorithms, Realm, Username,
};

use crate::{Credentials, Integrity};

/// What a challenge taught: realm, nonce and the key derived for them.
pub(crate) struct Auth {
    pub(crate) realm: String,
    nonce: String,
    /// PASSWORD-ALGORITHMS as offered, echoed back with PASSWORD-ALGORITHM (§9.2.4).
    offered: Option<PasswordAlgorithms>,
    pub(crate) algorithm: KeyAlgorithm,
    key: Key,
}

impl Auth {
    /// Realm and nonce known beforehand (tests that skip the challenge); MD5 key.
    pub(crate) fn primed(creds: &Credentials, realm: &str, nonce: &str) -> Result<Self, String> {
        Ok(Self {
            realm: realm.to_owned(),
            nonce: nonce.to_owned(),
            offered: None,
            algorithm: KeyAlgorithm::Md5,
            key: derive(creds, realm, KeyAlgorithm::Md5)?,
        })
    }

    /// From a 401 (or a 438 that moved the realm): REALM, NONCE, the strongest algorithm
    /// offered that we support (SHA-256, else MD5).
    pub(crate) fn from_challenge(msg: &Message<'_>, creds: &Credentials) -> Result<Self, String> {
        let realm = match msg.attr::<Realm>() {
            Some(Ok(Realm(r))) => r,
            _ => return Err("401 challenge without REALM".into()),
        };
        let nonce = match msg.attr::<Nonce>() {
            Some(Ok(Nonce(n))) => n,
            _ => return Err("401 challenge without NONCE".into()),
        };
        let (offered, algorithm) = match msg.attr::<PasswordAlgorithms>() {
            None => (None, KeyAlgorithm::Md5),
            Some(Err(e)) => return Err(format!("malformed PASSWORD-ALGORITHMS: {e}")),
            Some(Ok(list)) => {
                let alg = if list.contains(&PasswordAlgorithm::Sha256) {
                    KeyAlgorithm::Sha256
                } else if list.contains(&PasswordAlgorithm::Md5) {
                    KeyAlgorithm::Md5
                } else {
                    return Err("server offers no password algorithm this client supports \
                                (neither SHA-256 nor MD5)"
                        .into());
                };
                (Some(list), alg)
            }
        };
        Ok(Self {
            realm: realm.to_owned(),
            nonce: nonce.to_owned(),
            offered,
            algorithm,
            key: derive(creds, realm, algorithm)?,
        })
    }

    /// After 438: the new nonce. The allocation is bound to the key, so realm and
    /// algorithm stay unless the server announces another realm.
    pub(crate) fn renew(&mut self, msg: &Message<'_>, creds: &Credentials) -> Result<(), String> {
        if let Some(Ok(Realm(r))) = msg.attr::<Realm>()
            && r != self.realm
        {
            *self = Self::from_challenge(msg, creds)?;
            return Ok(());
        }
        match msg.attr::<Nonce>() {
            Some(Ok(Nonce(n))) => {
                self.nonce = n.to_owned();
                Ok(())
            }
            _ => Err("438 without NONCE".into()),
        }
    }

    /// USERNAME, REALM, NONCE, the algorithms, MESSAGE-INTEGRITY(-SHA256).
    pub(crate) fn sign(
        &self,
        w: &mut MessageWriter<'_>,
        username: &str,
    ) -> Result<(), BufferTooSmall> {
        w.attr(&Username(username))?
            .attr(&Realm(&self.realm))?
            .attr(&Nonce(&self.nonce))?;
        if let Some(offered) = &self.offered {
            let chosen = match self.algorithm {
                KeyAlgorithm::Md5 => PasswordAlgorithm::Md5,
                KeyAlgorithm::Sha256 => PasswordAlgorithm::Sha256,
            };
            w.attr(offered)?.attr(&chosen)?;
        }
        match self.algorithm {
            KeyAlgorithm::Md5 => w.integrity_sha1(self.key.as_bytes())?,
            KeyAlgorithm::Sha256 => w.integrity_sha256(self.key.as_bytes())?,
        };
        Ok(())
    }

    pub(crate) fn verify(&self, msg: &Message<'_>) -> Integrity {
        match msg.verify_integrity(self.key.as_bytes()) {
            Ok(()) => Integrity::Verified,
            Err(IntegrityError::Missing) => Integrity::Missing,
            Err(_) => Integrity::Mismatch,
        }
    }
}

fn derive(creds: &Credentials, realm: &str, alg: KeyAlgorithm) -> Result<Key, String> {
    try_long_term_key(alg, &creds.username, realm, &creds.password)
        .map_err(|e| format!("cannot derive the key: {e}"))
}

/// How reports name a password algorithm.
pub fn algorithm_name(a: KeyAlgorithm) -> &'static str {
    match a {
        KeyAlgorithm::Md5 => "MD5",
        KeyAlgorithm::Sha256 => "SHA-256",
    }
}
