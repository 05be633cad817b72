//! The TOML configuration: plain data and its validation. Key names are a contract with
//! operators' scripts: unknown keys are refused, and every error names the key and what is
//! wrong with it. A leaf: nothing here imports the rest of the daemon, and the only files
//! read are the config file and its users file (certificates load at startup and in
//! `relay check`: `check::certificates`).

mod admin;
mod cluster;
mod file;
mod listen_proxy;
mod log;
mod modes;
mod tcp;
mod users;
mod validate;

pub use admin::{AdminSettings, DEFAULT_ADMIN_ADDRESS, DEFAULT_DRAIN_TIMEOUT};
pub use cluster::{AdminUrl, ClusterNode, ClusterNodeEntry, ClusterSection, ClusterSettings};
pub use file::{
    AdminSection, AuthSection, ConfigFile, LimitsSection, ListenSection, LogSection, PeersSection,
    RelaySection, Transport, UdpSection, XdpSection,
};
pub use log::{LEVELS as LOG_LEVELS, check_log_filter};
pub use modes::{AttachMode, Forwarding, IoEngine};
pub use tcp::{TcpSection, TcpSettings, TlsFiles, TlsSection};
pub use users::{UserEntry, UsersFile, load_users_file};
pub use validate::{
    Config, ConfigError, DEFAULT_MAX_ALLOCATIONS_PER_REST_USER, DEFAULT_MAX_ALLOCATIONS_PER_SOURCE,
    Listener, MAX_UDP_WORKERS, PortRange, RelayAddrs,
};

use std::path::Path;

/// Reads, parses and validates a config file; relative paths inside it (users_file) are
/// resolved against the file's folder.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path.display(), format!("cannot read: {e}")))?;
    let file: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::toml(path, &text, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    file.validate(base)
}

#[cfg(test)]
pub(crate) mod tests;
