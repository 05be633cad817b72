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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: BTreeMap<String, UserEntry>,
}

/// Reads a users file (`[users]` table).
pub fn load_users_file(path: &Path) -> Result<BTreeMap<String, UserEntry>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "auth.users_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let file: UsersFile = toml::from_str(&text).map_err(|e| ConfigError::toml(path, &text, e))?;
    Ok(file.users)
}
