//! Local credential database: inline `[auth.users]` and/or a users file.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

use super::ConfigError;

/// One user: a plain password, or coturn's precomputed MD5 key (HA1).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum UserEntry {
    Password(String),
    Key { md5_key: String },
}

/// The credentials file `[auth] users_file` names: a `[users]` table and TURN REST
/// secrets, kept apart from the config so that they can live in a file of their own
/// permissions (a Kubernetes Secret beside the ConfigMap's relay.toml).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    #[serde(default)]
    pub users: BTreeMap<String, UserEntry>,
    /// Added to `[auth] shared_secrets`.
    #[serde(default)]
    pub shared_secrets: Vec<String>,
}

/// Reads a users file (`[users]` table, `shared_secrets`).
pub fn load_users_file(path: &Path) -> Result<UsersFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "auth.users_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::toml(path, &text, e))
}
