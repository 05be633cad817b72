//! The credential store: configured users and TURN REST shared secrets.
//!
//! Lookups use `BTreeMap`: deterministic (no hidden random hash seed in a sans-IO core), and
//! immune to hash flooding by chosen usernames.

use std::collections::BTreeMap;
use std::fmt;

use super::error::{AuthError, CredentialError};
use super::key::{Key, PasswordAlgorithm, check_opaque, long_term_key, opaque_string, user_hash};
use super::rest::{self, RestUsername};

/// Most keys [`CredentialStore::keys`] returns: one local user plus one per shared secret.
pub const MAX_CANDIDATES: usize = 8;
/// Most TURN REST secrets active at once (rotation needs two or three).
pub const MAX_SHARED_SECRETS: usize = MAX_CANDIDATES - 1;
/// STUN USERNAME must be shorter than 513 bytes (RFC 8489 §14.3).
const MAX_USERNAME: usize = 512;
/// STUN REALM must be shorter than 128 characters (RFC 8489 §14.9).
const MAX_REALM_CHARS: usize = 127;

/// Which kind of credential a key belongs to. The peer policy may differ between them:
/// static users are typically the operator's own servers, REST users browsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CredentialKind {
    /// A configured user (`[auth] users` or a users file).
    #[default]
    Static,
    /// A TURN REST username whose password derives from a shared secret.
    Rest,
}

/// Candidate keys for one username, in the order to try them. Fixed capacity, no heap.
#[derive(Clone)]
pub struct Candidates {
    keys: [Key; MAX_CANDIDATES],
    len: usize,
    /// How many keys at the front are a configured user's (0 or 1); the rest are REST keys.
    statics: usize,
}

impl Candidates {
    fn new() -> Self {
        Self {
            keys: std::array::from_fn(|_| Key::from_md5([0; 16])),
            len: 0,
            statics: 0,
        }
    }

    /// The kind of credential the key at `index` (of [`as_slice`](Self::as_slice)) is.
    pub fn kind(&self, index: usize) -> CredentialKind {
        if index < self.statics {
            CredentialKind::Static
        } else {
            CredentialKind::Rest
        }
    }

    fn push(&mut self, key: Key) {
        // Capacity is guaranteed by MAX_SHARED_SECRETS; a full list drops extras, never panics.
        if let Some(slot) = self.keys.get_mut(self.len) {
            *slot = key;
            self.len += 1;
        }
    }

    /// The keys, best candidate first.
    pub fn as_slice(&self) -> &[Key] {
        &self.keys[..self.len]
    }

    /// Iterates over the keys.
    pub fn iter(&self) -> std::slice::Iter<'_, Key> {
        self.as_slice().iter()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none (never true for an `Ok` from [`CredentialStore::keys`]).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<'a> IntoIterator for &'a Candidates {
    type Item = &'a Key;
    type IntoIter = std::slice::Iter<'a, Key>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Debug for Candidates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

struct UserKeys {
    md5: Key,
    /// `None` for users configured with a pre-computed MD5 key only.
    sha256: Option<Key>,
}

/// A TURN REST secret; `Debug` does not print it.
struct Secret(Vec<u8>);

/// Local users and TURN REST shared secrets; both may be configured at once.
pub struct CredentialStore {
    realm: String,
    users: BTreeMap<String, UserKeys>,
    by_hash: BTreeMap<[u8; 32], String>,
    /// Newest first: after a rotation most clients hold the newest secret.
    secrets: Vec<Secret>,
}

impl fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialStore")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl CredentialStore {
    /// An empty store for `realm`. The realm is used as given; [`Self::try_new`] validates it.
    pub fn new(realm: &str) -> Self {
        Self {
            realm: realm.to_owned(),
            users: BTreeMap::new(),
            by_hash: BTreeMap::new(),
            secrets: Vec::new(),
        }
    }

    /// [`Self::new`] that refuses a realm OpaqueString or the REALM attribute would reject.
    pub fn try_new(realm: &str) -> Result<Self, CredentialError> {
        let realm = opaque_string("realm", realm)?;
        if realm.chars().count() > MAX_REALM_CHARS {
            return Err(CredentialError::TooLong {
                field: "realm",
                max: MAX_REALM_CHARS,
            });
        }
        Ok(Self::new(&realm))
    }

    /// The realm sent in REALM and used in every key.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// A user with a plain password; keys for both MD5 and SHA-256 are derived and kept, the
    /// password is not.
    pub fn add_user(&mut self, username: &str, password: &str) -> Result<(), CredentialError> {
        check_opaque("password", password)?;
        let username = self.new_username(username)?;
        let keys = UserKeys {
            md5: long_term_key(PasswordAlgorithm::Md5, &username, &self.realm, password),
            sha256: Some(long_term_key(
                PasswordAlgorithm::Sha256,
                &username,
                &self.realm,
                password,
            )),
        };
        self.insert(username, keys);
        Ok(())
    }

    /// A user with coturn's pre-computed MD5 key `0x<32 hex digits>` (HA1 =
    /// MD5(user:realm:pass)); the `0x` is optional. Such a user can only use MD5.
    pub fn add_user_md5_key(
        &mut self,
        username: &str,
        key_hex: &str,
    ) -> Result<(), CredentialError> {
        let username = self.new_username(username)?;
        let key = parse_md5_hex(key_hex).map_err(|reason| CredentialError::BadMd5Key {
            user: username.clone(),
            reason,
        })?;
        self.insert(
            username,
            UserKeys {
                md5: Key::from_md5(key),
                sha256: None,
            },
        );
        Ok(())
    }

    /// Adds a TURN REST shared secret. Beyond [`MAX_SHARED_SECRETS`] the oldest is retired
    /// (rotation keeps the newest ones); an empty secret is ignored because it would let
    /// anyone mint credentials. Configuration loaders should prefer
    /// [`Self::try_add_shared_secret`], which reports both.
    pub fn add_shared_secret(&mut self, secret: &[u8]) {
        if secret.is_empty() {
            return;
        }
        self.secrets.truncate(MAX_SHARED_SECRETS - 1);
        self.secrets.insert(0, Secret(secret.to_vec()));
    }

    /// [`Self::add_shared_secret`] that refuses an empty secret or one too many.
    pub fn try_add_shared_secret(&mut self, secret: &[u8]) -> Result<(), CredentialError> {
        if secret.is_empty() {
            return Err(CredentialError::EmptySecret);
        }
        if self.secrets.len() >= MAX_SHARED_SECRETS {
            return Err(CredentialError::TooManySecrets {
                max: MAX_SHARED_SECRETS,
            });
        }
        self.add_shared_secret(secret);
        Ok(())
    }

    /// Candidate keys for `username` and `alg` at `unix_now`: the local user's key first,
    /// then, if shared secrets are configured and the username is a REST username, one key
    /// per secret (newest first). The caller accepts the request if any key verifies its
    /// MESSAGE-INTEGRITY.
    pub fn keys(
        &self,
        username: &str,
        alg: PasswordAlgorithm,
        unix_now: u64,
    ) -> Result<Candidates, AuthError> {
        let mut out = Candidates::new();
        let mut refusal = AuthError::UnknownUser;
        if username.is_empty() {
            return Err(AuthError::MalformedUsername);
        }
        if let Some(user) = self.users.get(username) {
            match alg {
                PasswordAlgorithm::Md5 => out.push(user.md5.clone()),
                PasswordAlgorithm::Sha256 => match &user.sha256 {
                    Some(k) => out.push(k.clone()),
                    None => refusal = AuthError::UnsupportedAlgorithm,
                },
            }
            out.statics = out.len;
        }
        if !self.secrets.is_empty() {
            match rest::parse_username(username) {
                RestUsername::Expires(expiry) if expiry <= unix_now => {
                    if out.is_empty() {
                        refusal = AuthError::ExpiredCredential { expired_at: expiry };
                    }
                }
                RestUsername::Expires(_) => {
                    for secret in &self.secrets {
                        let password = rest::password(&secret.0, username);
                        out.push(long_term_key(alg, username, &self.realm, password.as_str()));
                    }
                }
                RestUsername::Malformed if out.is_empty() => refusal = AuthError::MalformedUsername,
                RestUsername::Malformed | RestUsername::NotRest => {}
            }
        }
        if out.is_empty() {
            Err(refusal)
        } else {
            Ok(out)
        }
    }

    /// The configured username whose USERHASH (RFC 8489 §14.4) is `hash`. REST users cannot
    /// be found this way: their names are not known in advance.
    pub fn username_for_hash(&self, hash: &[u8; 32]) -> Option<&str> {
        self.by_hash.get(hash).map(String::as_str)
    }

    /// Number of configured users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Number of active shared secrets.
    pub fn secret_count(&self) -> usize {
        self.secrets.len()
    }

    /// Validates a new username and returns it in the form clients send (OpaqueString).
    fn new_username(&self, username: &str) -> Result<String, CredentialError> {
        let username = opaque_string("username", username)?.into_owned();
        if username.len() > MAX_USERNAME {
            return Err(CredentialError::TooLong {
                field: "username",
                max: MAX_USERNAME,
            });
        }
        if self.users.contains_key(&username) {
            return Err(CredentialError::DuplicateUser(username));
        }
        Ok(username)
    }

    fn insert(&mut self, username: String, keys: UserKeys) {
        self.by_hash
            .insert(user_hash(&username, &self.realm), username.clone());
        self.users.insert(username, keys);
    }
}

fn parse_md5_hex(s: &str) -> Result<[u8; 16], &'static str> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s)
        .as_bytes();
    if digits.len() != 32 {
        return Err("wrong length");
    }
    let mut key = [0u8; 16];
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = hex_value(pair[0]).ok_or("not a hex digit")?;
        let lo = hex_value(pair[1]).ok_or("not a hex digit")?;
        *byte = hi << 4 | lo;
    }
    Ok(key)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_735_000_000;
    const LATER: u64 = 1_735_689_600;
    const REALM: &str = "example.org";

    fn store() -> CredentialStore {
        let mut s = CredentialStore::new(REALM);
        s.add_user("alice", "wonderland").unwrap();
        s.add_user_md5_key("legacy", "0x2d9bd1fcf73e7f0f13e88b0a6b0a0c44")
            .unwrap();
        s
    }

    fn rest_key(secret: &[u8], username: &str, alg: PasswordAlgorithm) -> Key {
        let password = rest::password(secret, username);
        long_term_key(alg, username, REALM, password.as_str())
    }

    fn has(c: &Candidates, k: &Key) -> bool {
        c.iter().any(|x| x.ct_eq(k))
    }

    #[test]
    fn local_user_both_algorithms() {
        let s = store();
        for alg in [PasswordAlgorithm::Md5, PasswordAlgorithm::Sha256] {
            let c = s.keys("alice", alg, NOW).unwrap();
            assert_eq!(c.len(), 1);
            assert!(c.as_slice()[0].ct_eq(&long_term_key(alg, "alice", REALM, "wonderland")));
        }
        assert_eq!(s.user_count(), 2);
        assert_eq!(s.secret_count(), 0);
    }

    #[test]
    fn md5_key_user() {
        let s = store();
        let c = s.keys("legacy", PasswordAlgorithm::Md5, NOW).unwrap();
        assert_eq!(
            c.as_slice()[0].as_bytes(),
            [
                0x2d, 0x9b, 0xd1, 0xfc, 0xf7, 0x3e, 0x7f, 0x0f, 0x13, 0xe8, 0x8b, 0x0a, 0x6b, 0x0a,
                0x0c, 0x44
            ]
        );
        assert_eq!(
            s.keys("legacy", PasswordAlgorithm::Sha256, NOW)
                .unwrap_err(),
            AuthError::UnsupportedAlgorithm
        );
        let mut s = store();
        for bad in [
            "0x123",
            "0xzz9bd1fcf73e7f0f13e88b0a6b0a0c44",
            "",
            "0x2d9bd1fcf73e7f0f13e88b0a6b0a0c4\u{e9}",
        ] {
            assert!(
                matches!(
                    s.add_user_md5_key("bob", bad),
                    Err(CredentialError::BadMd5Key { .. })
                ),
                "{bad}"
            );
        }
        // The prefix is optional.
        s.add_user_md5_key("bob", "2D9BD1FCF73E7F0F13E88B0A6B0A0C44")
            .unwrap();
    }

    #[test]
    fn config_errors() {
        let mut s = store();
        assert_eq!(
            s.add_user("alice", "x"),
            Err(CredentialError::DuplicateUser("alice".into()))
        );
        assert_eq!(
            s.add_user("", "x"),
            Err(CredentialError::Empty { field: "username" })
        );
        assert_eq!(
            s.add_user("carol", ""),
            Err(CredentialError::Empty { field: "password" })
        );
        assert!(matches!(
            s.add_user("car\nol", "x"),
            Err(CredentialError::ControlCharacter { .. })
        ));
        assert!(matches!(
            s.add_user(&"x".repeat(513), "x"),
            Err(CredentialError::TooLong { .. })
        ));
        assert!(CredentialStore::try_new("bad\u{7f}realm").is_err());
        assert!(CredentialStore::try_new(&"r".repeat(128)).is_err());
        assert_eq!(
            CredentialStore::try_new("a\u{3000}b").unwrap().realm(),
            "a b"
        );
        assert_eq!(
            s.try_add_shared_secret(b""),
            Err(CredentialError::EmptySecret)
        );
        for i in 0..MAX_SHARED_SECRETS {
            s.try_add_shared_secret(&[i as u8 + 1]).unwrap();
        }
        assert!(matches!(
            s.try_add_shared_secret(b"x"),
            Err(CredentialError::TooManySecrets { .. })
        ));
        // The infallible form retires the oldest instead.
        s.add_shared_secret(b"newest");
        assert_eq!(s.secret_count(), MAX_SHARED_SECRETS);
        let c = s.keys("1735689600", PasswordAlgorithm::Md5, NOW).unwrap();
        assert!(c.as_slice()[0].ct_eq(&rest_key(b"newest", "1735689600", PasswordAlgorithm::Md5)));
        assert!(!has(
            &c,
            &rest_key(&[1], "1735689600", PasswordAlgorithm::Md5)
        ));
        s.add_shared_secret(b"");
        assert_eq!(s.secret_count(), MAX_SHARED_SECRETS);
    }

    #[test]
    fn rest_credential_verifies() {
        let mut s = store();
        s.add_shared_secret(b"north");
        for username in ["1735689600", "1735689600:alice", "bob:1735689600"] {
            for alg in [PasswordAlgorithm::Md5, PasswordAlgorithm::Sha256] {
                let c = s.keys(username, alg, NOW).unwrap();
                assert_eq!(c.len(), 1);
                assert!(c.as_slice()[0].ct_eq(&rest_key(b"north", username, alg)));
                assert_eq!(c.as_slice()[0].algorithm(), alg);
            }
        }
        // The password a client computes is the coturn one.
        let password = rest::password(b"north", "1735689600:alice");
        assert_eq!(password.as_str(), "HbvWA6hGDtdv3wflBolXLhvzs0w=");
        let k = long_term_key(
            PasswordAlgorithm::Md5,
            "1735689600:alice",
            REALM,
            "HbvWA6hGDtdv3wflBolXLhvzs0w=",
        );
        assert!(has(
            &s.keys("1735689600:alice", PasswordAlgorithm::Md5, NOW)
                .unwrap(),
            &k
        ));
        // Local users still work alongside REST.
        assert!(s.keys("alice", PasswordAlgorithm::Md5, NOW).is_ok());
    }

    #[test]
    fn rest_expired() {
        let mut s = store();
        s.add_shared_secret(b"north");
        assert_eq!(
            s.keys("1735689600:alice", PasswordAlgorithm::Sha256, LATER)
                .unwrap_err(),
            AuthError::ExpiredCredential { expired_at: LATER }
        );
        assert!(
            s.keys("1735689600:alice", PasswordAlgorithm::Sha256, LATER - 1)
                .is_ok()
        );
        assert_eq!(
            AuthError::ExpiredCredential { expired_at: LATER }.to_string(),
            "credential expired at 1735689600"
        );
    }

    #[test]
    fn rest_rotation() {
        let mut s = store();
        s.add_shared_secret(b"old");
        s.add_shared_secret(b"new");
        let user = "1735689600:alice";
        let c = s.keys(user, PasswordAlgorithm::Sha256, NOW).unwrap();
        assert_eq!(c.len(), 2);
        let new = rest_key(b"new", user, PasswordAlgorithm::Sha256);
        let old = rest_key(b"old", user, PasswordAlgorithm::Sha256);
        assert!(c.as_slice()[0].ct_eq(&new), "newest secret is tried first");
        assert!(has(&c, &old));
        assert!(!has(
            &c,
            &rest_key(b"other", user, PasswordAlgorithm::Sha256)
        ));
    }

    #[test]
    fn refusals() {
        let mut s = store();
        assert_eq!(
            s.keys("mallory", PasswordAlgorithm::Md5, NOW).unwrap_err(),
            AuthError::UnknownUser
        );
        // Without secrets a REST-looking name is just unknown.
        assert_eq!(
            s.keys("1735689600:x", PasswordAlgorithm::Md5, NOW)
                .unwrap_err(),
            AuthError::UnknownUser
        );
        s.add_shared_secret(b"north");
        assert_eq!(
            s.keys("mallory", PasswordAlgorithm::Md5, NOW).unwrap_err(),
            AuthError::UnknownUser
        );
        for bad in ["17356x9600:alice", "17356x9600", ":alice", "alice:bob"] {
            assert_eq!(
                s.keys(bad, PasswordAlgorithm::Md5, NOW).unwrap_err(),
                AuthError::MalformedUsername,
                "{bad}"
            );
        }
        assert_eq!(
            s.keys("", PasswordAlgorithm::Md5, NOW).unwrap_err(),
            AuthError::MalformedUsername
        );
        assert_eq!(AuthError::UnknownUser.to_string(), "unknown user");
        assert_eq!(
            AuthError::BadIntegrity.to_string(),
            "wrong password or message integrity"
        );
        assert_eq!(AuthError::StaleNonce.stun_error_code(), 438);
    }

    #[test]
    fn userhash_lookup() {
        let s = store();
        assert_eq!(
            s.username_for_hash(&user_hash("alice", REALM)),
            Some("alice")
        );
        assert_eq!(
            s.username_for_hash(&user_hash("legacy", REALM)),
            Some("legacy")
        );
        assert_eq!(s.username_for_hash(&user_hash("alice", "other.org")), None);
        assert_eq!(s.username_for_hash(&[0; 32]), None);
    }

    #[test]
    fn debug_hides_secrets() {
        let mut s = store();
        s.add_shared_secret(b"topsecret");
        let dbg = format!(
            "{s:?} {:?}",
            s.keys("alice", PasswordAlgorithm::Md5, NOW).unwrap()
        );
        assert!(
            !dbg.contains("topsecret") && !dbg.contains("wonderland"),
            "{dbg}"
        );
    }
}
