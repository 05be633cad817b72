//! The long-term credential mechanism (RFC 8489 §9.2.4) for Allocate, Refresh,
//! CreatePermission and ChannelBind.
//!
//! Stateless until a request verifies: a challenge (401/438) is built from the request and the
//! stateless nonce alone, so unauthenticated traffic costs CPU but no memory.

use std::sync::Arc;
use std::time::Instant;

use crate::auth::{
    AuthError, CredentialKind, Key, NonceError, Nonces, PasswordAlgorithm as KeyAlgorithm,
};
use crate::stun::{
    IntegrityKind, Message, MessageWriter, Nonce, PasswordAlgorithm, PasswordAlgorithms, Realm,
    UserHash, Username,
};

use super::Server;
use super::event::Event;
use super::five_tuple::FiveTuple;

/// A request whose MESSAGE-INTEGRITY(-SHA256) verified.
pub(crate) struct Auth {
    pub username: Arc<str>,
    pub key: Key,
    /// Which credential verified: a configured user's or a REST one.
    pub credential: CredentialKind,
    /// What the request carried; the response uses the same.
    pub kind: IntegrityKind,
}

/// What we offer in PASSWORD-ALGORITHMS, in preference order.
const OFFERED: [PasswordAlgorithm; 2] = [PasswordAlgorithm::Sha256, PasswordAlgorithm::Md5];

fn offered() -> PasswordAlgorithms {
    PasswordAlgorithms::from_slice(&OFFERED)
}

impl Server {
    /// `Ok` with the verified identity, or `Err` with the reply already written to `out`
    /// (`Err(None)`: it did not fit).
    pub(crate) fn authenticate(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Result<Auth, Option<usize>> {
        let kind = msg.integrity();
        if kind == IntegrityKind::None {
            return Err(self.challenge(now, from, msg, 401, out));
        }
        let realm = msg.attr::<Realm>();
        let nonce = msg.attr::<Nonce>();
        let username = msg.attr::<Username>();
        let userhash = msg.attr::<UserHash>();
        let (Some(Ok(Realm(realm))), Some(Ok(Nonce(nonce)))) = (realm, nonce) else {
            return Err(self.reply_error(from, msg, None, 400, "Missing REALM or NONCE", out));
        };
        let username: Arc<str> = match (username, userhash) {
            (Some(Ok(Username(u))), _) => u.into(),
            (None, Some(Ok(UserHash(h)))) => match self.credentials.username_for_hash(&h) {
                Some(u) => u.into(),
                None => {
                    let e = AuthError::UnknownUser;
                    return Err(self.auth_failed(now, from, msg, None, e, out));
                }
            },
            _ => {
                let why = "Missing or malformed USERNAME/USERHASH";
                return Err(self.reply_error(from, msg, None, 400, why, out));
            }
        };
        let auth = self.authenticate_as(now, from, msg, &username, realm, nonce, out);
        self.authenticated = auth.is_ok();
        auth
    }

    #[allow(clippy::too_many_arguments)]
    fn authenticate_as(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        username: &Arc<str>,
        realm: &str,
        nonce: &str,
        out: &mut [u8],
    ) -> Result<Auth, Option<usize>> {
        let unix_now = self.unix_now(now);
        match self.nonces.verify(nonce, from.client.ip(), unix_now) {
            Ok(()) => {}
            Err(NonceError::Stale) => return Err(self.challenge(now, from, msg, 438, out)),
            Err(NonceError::Invalid) => {
                self.events.push(Event::AuthFailed {
                    user: Some(username.to_string()),
                    client: from,
                    method: msg.method(),
                    reason: AuthError::InvalidNonce,
                });
                return Err(self.challenge(now, from, msg, 438, out));
            }
        }

        // Password algorithm negotiation (§9.2.4): only with our security-feature nonce.
        let alg = if Nonces::has_security_feature_cookie(nonce) {
            let algs = msg.attr::<PasswordAlgorithms>();
            let alg = msg.attr::<PasswordAlgorithm>();
            match (algs, alg) {
                (None, None) => KeyAlgorithm::Md5,
                (Some(Ok(algs)), Some(Ok(alg))) if algs == offered() && algs.contains(&alg) => {
                    match alg {
                        PasswordAlgorithm::Md5 => KeyAlgorithm::Md5,
                        PasswordAlgorithm::Sha256 => KeyAlgorithm::Sha256,
                        PasswordAlgorithm::Unknown(_) => {
                            return Err(self.reply_error(
                                from,
                                msg,
                                None,
                                400,
                                "Unsupported PASSWORD-ALGORITHM",
                                out,
                            ));
                        }
                    }
                }
                _ => {
                    return Err(self.reply_error(
                        from,
                        msg,
                        None,
                        400,
                        "PASSWORD-ALGORITHM not one offered",
                        out,
                    ));
                }
            }
        } else {
            KeyAlgorithm::Md5
        };

        if realm != self.credentials.realm() {
            let user = Some(username.to_string());
            return Err(self.auth_failed(now, from, msg, user, AuthError::BadIntegrity, out));
        }
        let keys = match self.credentials.keys(username, alg, unix_now) {
            Ok(k) => k,
            Err(reason) => {
                let user = Some(username.to_string());
                return Err(self.auth_failed(now, from, msg, user, reason, out));
            }
        };
        for (i, key) in keys.iter().enumerate() {
            if msg.verify_integrity(key.as_bytes()).is_ok() {
                return Ok(Auth {
                    username: username.clone(),
                    key: key.clone(),
                    credential: keys.kind(i),
                    kind: msg.integrity(),
                });
            }
        }
        let user = Some(username.to_string());
        Err(self.auth_failed(now, from, msg, user, AuthError::BadIntegrity, out))
    }

    /// Logs [`Event::AuthFailed`] and answers with the code the reason calls for (401 with a
    /// fresh challenge, 400 for an algorithm the user cannot use).
    fn auth_failed(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        user: Option<String>,
        reason: AuthError,
        out: &mut [u8],
    ) -> Option<usize> {
        self.events.push(Event::AuthFailed {
            user,
            client: from,
            method: msg.method(),
            reason,
        });
        match reason.stun_error_code() {
            400 => self.error_response(
                msg.method(),
                msg.transaction_id(),
                None,
                400,
                "Password algorithm not available for this user",
                out,
                |_| Ok(()),
            ),
            code => self.challenge(now, from, msg, code, out),
        }
    }

    /// 401 or 438 with REALM, a fresh NONCE bound to the client's IP and, since our nonces
    /// carry the security-feature cookie, PASSWORD-ALGORITHMS.
    fn challenge(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        code: u16,
        out: &mut [u8],
    ) -> Option<usize> {
        let nonce = self.nonces.mint(from.client.ip(), self.unix_now(now));
        let realm = self.credentials.realm();
        let cookie = Nonces::has_security_feature_cookie(&nonce);
        self.error_response(
            msg.method(),
            msg.transaction_id(),
            None,
            code,
            "",
            out,
            |w: &mut MessageWriter<'_>| {
                w.attr(&Realm(realm))?.attr(&Nonce(&nonce))?;
                if cookie {
                    w.attr(&offered())?;
                }
                Ok(())
            },
        )
    }
}
