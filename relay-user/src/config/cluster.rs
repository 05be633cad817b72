//! `[cluster]`: the other nodes of a fleet this relay redirects to when full or draining,
//! and how their admin endpoints are reached (`[admin] tls`, `[cluster] ca`).

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{ConfigError, Listener};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `[{ turn = "IP:PORT", admin = "http(s)://IP:PORT" }, ...]`: the other nodes.
    #[serde(default)]
    pub nodes: Vec<ClusterNodeEntry>,
    /// PEM file of the CA(s) that signed the other nodes' admin certificates (needed
    /// when any `admin` is `https://`).
    pub ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNodeEntry {
    /// Its public TURN address: what ALTERNATE-SERVER names.
    pub turn: String,
    /// Its admin endpoint: polled for `/api/status` with this node's `[admin] token`.
    pub admin: String,
}

/// An admin endpoint: `http://IP:PORT` or `https://IP:PORT` (the certificate must name
/// the IP).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AdminUrl {
    pub tls: bool,
    pub address: SocketAddr,
}

impl AdminUrl {
    /// `http://IP:PORT`, `https://IP:PORT` (a trailing `/` allowed) or `IP:PORT` (plain),
    /// as `relay status --admin` takes it.
    pub fn parse(s: &str) -> Option<Self> {
        let (address, tls) = relay_admin_api::client::AdminClient::parse_url(s).ok()?;
        Some(Self { tls, address })
    }
}

impl fmt::Display for AdminUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.address)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ClusterNode {
    pub turn: SocketAddr,
    pub admin: AdminUrl,
}

#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct ClusterSettings {
    pub nodes: Vec<ClusterNode>,
    /// Trust anchors for `https://` admin endpoints.
    pub ca: Option<PathBuf>,
}

/// Checks `[cluster]`: addresses that parse, no node twice, none of them this relay, a CA
/// for https nodes, and a token to send them.
pub(super) fn validate(
    section: ClusterSection,
    listeners: &[Listener],
    own_admin: SocketAddr,
    token: bool,
    base: &Path,
) -> Result<ClusterSettings, ConfigError> {
    let mut nodes: Vec<ClusterNode> = Vec::with_capacity(section.nodes.len());
    for (i, n) in section.nodes.iter().enumerate() {
        let key = |k: &str| format!("cluster.nodes[{i}].{k}");
        let turn: SocketAddr = n.turn.parse().map_err(|_| {
            ConfigError::new(
                key("turn"),
                format!(
                    "`{}` is not IP:PORT (the node's public TURN address)",
                    n.turn
                ),
            )
        })?;
        if turn.ip().is_unspecified() || turn.port() == 0 {
            return Err(ConfigError::new(
                key("turn"),
                "must be the node's public address and port, where clients can reach it",
            ));
        }
        if listeners.iter().any(|l| l.address == turn) {
            return Err(ConfigError::new(
                key("turn"),
                "is this relay's own listener: list the other nodes only",
            ));
        }
        let admin = AdminUrl::parse(&n.admin).ok_or_else(|| {
            ConfigError::new(
                key("admin"),
                format!("`{}` is not http://IP:PORT or https://IP:PORT", n.admin),
            )
        })?;
        if admin.address.ip().is_unspecified() || admin.address.port() == 0 {
            return Err(ConfigError::new(
                key("admin"),
                "must be the node's own admin address and port",
            ));
        }
        if admin.address == own_admin {
            return Err(ConfigError::new(
                key("admin"),
                "is this relay's own [admin] address: list the other nodes only",
            ));
        }
        if nodes.iter().any(|m| m.turn == turn || m.admin == admin) {
            return Err(ConfigError::new(
                format!("cluster.nodes[{i}]"),
                "names a node already listed",
            ));
        }
        nodes.push(ClusterNode { turn, admin });
    }
    if !nodes.is_empty() && !token {
        return Err(ConfigError::new(
            "admin.token",
            "required with [cluster] nodes: it is sent to the other nodes, so a fleet shares one token",
        ));
    }
    let ca = section.ca.map(|c| base.join(c));
    if ca.is_none() && nodes.iter().any(|n| n.admin.tls) {
        return Err(ConfigError::new(
            "cluster.ca",
            "missing: a node's admin is https://; name the PEM file of the CA that signed the nodes' [tls] certificates",
        ));
    }
    Ok(ClusterSettings { nodes, ca })
}
