//! `[admin]` (the operator's HTTP endpoint) and the capacity keys of `[limits]` that the
//! control plane uses: alternate servers and the drain timeout.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use super::{AdminSection, ConfigError, Listener, PortRange, RelayAddrs};

/// Loopback only: the usage view names users and client addresses. `relay status`
/// assumes the same address when given neither --admin nor --config.
pub const DEFAULT_ADMIN_ADDRESS: SocketAddr = relay_admin_api::DEFAULT_ADDRESS;
/// How long a client may take to send a request head, from connecting or since the previous
/// response: a slowloris client holds a connection no longer than this.
pub const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections served at once: monitoring and an operator or two need a handful.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// How long SIGTERM waits for allocations to end before closing the rest.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The admin endpoint as the relay runs it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub address: SocketAddr,
    /// Bearer token required on every endpoint but `/healthz`.
    pub token: Option<String>,
    /// `false` when `[admin] address` was not written: a busy default port is then only
    /// a warning (two relays on one host), an explicit one a startup error.
    pub explicit: bool,
    /// A request head must arrive within this, from connecting or since the previous
    /// response (so it is also the keep-alive idle timeout).
    pub header_timeout: Duration,
    /// Connections served at once; beyond it new ones are closed at once.
    pub max_connections: usize,
    /// Served over TLS with the `[tls]` certificate (`[admin] tls`).
    pub tls: bool,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            address: DEFAULT_ADMIN_ADDRESS,
            token: None,
            explicit: false,
            header_timeout: DEFAULT_ADMIN_HEADER_TIMEOUT,
            max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            tls: false,
        }
    }
}

// The token stays out of `{:?}` (and so out of logs and `relay check`).
impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("explicit", &self.explicit)
            .field("header_timeout", &self.header_timeout)
            .field("max_connections", &self.max_connections)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Checks `[admin]`: a specific or wildcard address that is not a TURN port, and a token
/// whenever it is reachable from beyond the host.
pub(super) fn admin(
    section: AdminSection,
    listeners: &[Listener],
    relays: &[RelayAddrs],
    ports: PortRange,
) -> Result<AdminSettings, ConfigError> {
    let explicit = section.address.is_some();
    let address = match &section.address {
        None => DEFAULT_ADMIN_ADDRESS,
        Some(a) => a
            .parse()
            .map_err(|_| ConfigError::new("admin.address", format!("`{a}` is not IP:PORT")))?,
    };
    if address.port() == 0 {
        return Err(ConfigError::new(
            "admin.address",
            "needs a fixed port (monitoring and `relay status` must know where it is)",
        ));
    }
    let overlaps = |a: IpAddr, b: IpAddr| a == b || a.is_unspecified() || b.is_unspecified();
    if let Some(l) = listeners
        .iter()
        .find(|l| l.address.port() == address.port() && overlaps(l.address.ip(), address.ip()))
    {
        return Err(ConfigError::new(
            "admin.address",
            format!(
                "{address} collides with the TURN listener {}: pick another port (default 9641)",
                l.address
            ),
        ));
    }
    let in_range = (ports.low..=ports.high).contains(&address.port());
    if in_range && relays.iter().any(|r| overlaps(r.bind, address.ip())) {
        return Err(ConfigError::new(
            "admin.address",
            format!(
                "port {} is inside relay.ports {}-{} on the relay address",
                address.port(),
                ports.low,
                ports.high
            ),
        ));
    }
    let token = match section.token {
        None => None,
        Some(t) if t.is_empty() => {
            return Err(ConfigError::new(
                "admin.token",
                "is empty: remove the key or set a secret",
            ));
        }
        Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => {
            return Err(ConfigError::new(
                "admin.token",
                "must be printable ASCII without spaces (it travels in an HTTP header)",
            ));
        }
        Some(t) => Some(t),
    };
    if token.is_none() && !address.ip().is_loopback() {
        return Err(ConfigError::new(
            "admin.token",
            format!(
                "required when admin.address ({address}) is not loopback: the usage view names users and clients"
            ),
        ));
    }
    let header_timeout = match section.header_timeout {
        None => DEFAULT_ADMIN_HEADER_TIMEOUT,
        Some(0) => {
            return Err(ConfigError::new(
                "admin.header_timeout",
                "must be at least 1 (seconds)",
            ));
        }
        // A request head is a few hundred bytes; minutes only help a slowloris client.
        Some(s) if s > 300 => {
            return Err(ConfigError::new(
                "admin.header_timeout",
                format!("{s} s is more than 5 minutes (the value is in seconds)"),
            ));
        }
        Some(s) => Duration::from_secs(s),
    };
    let max_connections = match section.max_connections {
        None => DEFAULT_ADMIN_MAX_CONNECTIONS,
        Some(0) => {
            return Err(ConfigError::new(
                "admin.max_connections",
                "must be at least 1",
            ));
        }
        Some(n) => n,
    };
    Ok(AdminSettings {
        address,
        token,
        explicit,
        header_timeout,
        max_connections,
        tls: section.tls.unwrap_or(false),
    })
}

/// `limits.alternate_servers`: where a full or draining relay sends new clients (300).
pub(super) fn alternate_servers(
    values: &[String],
    listeners: &[Listener],
) -> Result<Vec<SocketAddr>, ConfigError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let key = format!("limits.alternate_servers[{i}]");
            let a: SocketAddr = v.parse().map_err(|_| {
                ConfigError::new(
                    &key,
                    format!("`{v}` is not IP:PORT (e.g. \"203.0.113.60:3478\")"),
                )
            })?;
            if a.ip().is_unspecified() || a.port() == 0 {
                return Err(ConfigError::new(
                    &key,
                    "must be another relay's public address and port",
                ));
            }
            if listeners.iter().any(|l| l.address == a) {
                return Err(ConfigError::new(
                    &key,
                    "is this relay's own listener: name another relay",
                ));
            }
            Ok(a)
        })
        .collect()
}

/// `limits.drain_timeout`, in seconds.
pub(super) fn drain_timeout(value: Option<u64>) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(DEFAULT_DRAIN_TIMEOUT),
        // A day: beyond that a typo is likelier than intent, and systemd must wait as long.
        Some(s) if s > 86_400 => Err(ConfigError::new(
            "limits.drain_timeout",
            format!("{s} s is more than a day (the value is in seconds)"),
        )),
        Some(s) => Ok(Duration::from_secs(s)),
    }
}
