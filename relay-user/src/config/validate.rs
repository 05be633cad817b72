//! From the file as written to the settings the relay runs with, checking each key.
//!
//! The `[relay]` addresses, which depend on each other and on the listeners rather than
//! being checked one key at a time, are in [`addresses`].

mod addresses;

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::Path,
    str::FromStr,
};

use ipnet::IpNet;
use relay_proto::policy::{AllowRule, parse_net};

use self::addresses::{ports_clear_of_listeners, relay_addresses};
use super::{AttachMode, ConfigFile, Forwarding, IoEngine, Transport, UserEntry, load_users_file};

/// A config error: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl fmt::Display, message: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A TOML/serde error, with the line and column where it happened.
    pub(super) fn toml(path: &Path, text: &str, e: toml::de::Error) -> Self {
        let at = e.span().map(|s| {
            let line = text[..s.start].lines().count().max(1);
            format!(" (line {line})")
        });
        Self::new(
            path.display(),
            format!("{}{}", e.message(), at.unwrap_or_default()),
        )
    }
}

/// The validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub realm: String,
    pub software: Option<String>,
    pub listeners: Vec<Listener>,
    pub relay_v4: Option<RelayAddrs>,
    pub relay_v6: Option<RelayAddrs>,
    pub ports: PortRange,
    pub users: BTreeMap<String, UserEntry>,
    pub shared_secrets: Vec<String>,
    /// `[peers] allow`: static users, and REST users without `[peers.rest]`.
    pub peers_allow: Vec<AllowRule>,
    /// `[peers.rest] allow`: REST-credential allocations use it instead of `peers_allow`.
    pub peers_rest_allow: Option<Vec<AllowRule>>,
    pub peers_deny: Vec<IpNet>,
    pub max_allocations: usize,
    /// Per configured (static) user; default `max_allocations`.
    pub max_allocations_per_user: usize,
    /// Per TURN REST username (`[limits] max_allocations_per_rest_user`).
    pub max_allocations_per_rest_user: usize,
    /// TURN REST allocations per client IPv4 address or IPv6 /64
    /// (`[limits] max_allocations_per_source`); static users are not counted.
    pub max_allocations_per_source: usize,
    /// Requests per second per source on 5-tuples without an allocation, all shards
    /// together (`[limits] unauthenticated_rate`); 0: no limit.
    pub unauthenticated_rate: u32,
    /// Burst of the same (`[limits] unauthenticated_burst`).
    pub unauthenticated_burst: u32,
    /// `[limits] max_bps_per_allocation`: payload bit/s, both directions; 0: none.
    pub max_bps_per_allocation: u64,
    /// `[limits] max_bps_per_user`: payload bit/s of a username's allocations; 0: none.
    pub max_bps_per_user: u64,
    /// The same requests from all sources together, per second, after each source's own
    /// limit (`[limits] unauthenticated_global_rate`); 0: no limit.
    pub unauthenticated_global_rate: u32,
    /// Burst of the same (`[limits] unauthenticated_global_burst`).
    pub unauthenticated_global_burst: u32,
    pub xdp_interfaces: Vec<String>,
    pub xdp_mode: AttachMode,
    /// Who turns on the IP forwarding the kernel fast path needs (`[xdp] forwarding`).
    pub xdp_forwarding: Forwarding,
    /// Whether the capabilities to load a changed kernel program at an upgrade are kept
    /// (`[xdp] program_upgrades`).
    pub xdp_program_upgrades: bool,
    /// UDP data-path threads; 0 = one per CPU (`[udp] workers`).
    pub udp_workers: usize,
    /// Event loop of the UDP workers (`[udp] engine`).
    pub udp_engine: IoEngine,
    pub log_level: String,
    pub admin: super::AdminSettings,
    /// Where full or draining relays send new clients (300 ALTERNATE-SERVER).
    pub alternate_servers: Vec<std::net::SocketAddr>,
    pub drain_timeout: std::time::Duration,
    /// `[tcp]`: the TCP/TLS event loop.
    pub tcp: super::TcpSettings,
    /// `[tls]`: certificate and key for `tls` listeners (and the admin endpoint with
    /// `[admin] tls`).
    pub tls: Option<super::TlsFiles>,
    /// `[cluster]`: the other nodes redirected to when full or draining.
    pub cluster: super::ClusterSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub address: SocketAddr,
    pub transports: Vec<Transport>,
    /// `proxy_protocol = true`: every connection starts with a PROXY header, accepted
    /// only from these networks (`proxy_from`). `None`: no header.
    pub proxy_from: Option<Vec<IpNet>>,
}

/// Where relay ports bind, and what clients are told (static NAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayAddrs {
    pub bind: IpAddr,
    pub public: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (low, high) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not a range like \"24000-29999\""))?;
        let parse = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port number (1-65535)"))
        };
        let (low, high) = (parse(low)?, parse(high)?);
        if low == 0 || low > high {
            return Err(format!("`{s}`: need 1 <= low <= high"));
        }
        Ok(Self { low, high })
    }
}

pub const DEFAULT_PORTS: PortRange = PortRange {
    low: 49152,
    high: 65535,
};
/// One constant with the kernel maps' default sizing.
pub const DEFAULT_MAX_ALLOCATIONS: usize = relay_common::DEFAULT_MAX_ALLOCATIONS as usize;
/// One browser's TURN REST credential: its peer connections with UDP, TCP and TLS TURN URLs
/// over a couple of interfaces.
pub const DEFAULT_MAX_ALLOCATIONS_PER_REST_USER: usize = 16;
/// TURN REST allocations from one IPv4 address or IPv6 /64: a corporate NAT of a few hundred
/// browsers. Static users (media servers) are not counted.
pub const DEFAULT_MAX_ALLOCATIONS_PER_SOURCE: usize = 1000;

/// `[limits] unauthenticated_rate` and `unauthenticated_burst`: the burst defaults to the
/// larger of its default and twice the rate; a rate of 0 turns the limit off (the burst is
/// then ignored).
fn unauthenticated_limit(l: &super::file::LimitsSection) -> Result<(u32, u32), ConfigError> {
    use relay_proto::server::{DEFAULT_UNAUTHENTICATED_BURST, DEFAULT_UNAUTHENTICATED_RATE};
    bucket(
        (
            "limits.unauthenticated_rate",
            "limits.unauthenticated_burst",
        ),
        (l.unauthenticated_rate, l.unauthenticated_burst),
        (DEFAULT_UNAUTHENTICATED_RATE, DEFAULT_UNAUTHENTICATED_BURST),
    )
}

/// `[limits] unauthenticated_global_rate` and `unauthenticated_global_burst`, with the
/// same rules.
fn unauthenticated_global_limit(l: &super::file::LimitsSection) -> Result<(u32, u32), ConfigError> {
    use relay_proto::server::{
        DEFAULT_UNAUTHENTICATED_GLOBAL_BURST, DEFAULT_UNAUTHENTICATED_GLOBAL_RATE,
    };
    bucket(
        (
            "limits.unauthenticated_global_rate",
            "limits.unauthenticated_global_burst",
        ),
        (
            l.unauthenticated_global_rate,
            l.unauthenticated_global_burst,
        ),
        (
            DEFAULT_UNAUTHENTICATED_GLOBAL_RATE,
            DEFAULT_UNAUTHENTICATED_GLOBAL_BURST,
        ),
    )
}

/// A token bucket's rate and burst: the burst defaults to the larger of its default and
/// twice the rate; a burst of 0 is refused unless the rate (0) turns the bucket off.
fn bucket(
    (rate_key, burst_key): (&'static str, &'static str),
    (rate, burst): (Option<u32>, Option<u32>),
    (default_rate, default_burst): (u32, u32),
) -> Result<(u32, u32), ConfigError> {
    let rate = rate.unwrap_or(default_rate);
    let burst = burst.unwrap_or(default_burst.max(rate.saturating_mul(2)));
    if rate > 0 && burst == 0 {
        return Err(ConfigError::new(
            burst_key,
            format!(
                "must be at least 1 ({} = 0 turns the limit off)",
                rate_key.trim_start_matches("limits.")
            ),
        ));
    }
    Ok((rate, burst))
}

/// Far more threads than any edge host has cores; a typo guard.
pub const MAX_UDP_WORKERS: usize = 1024;

impl ConfigFile {
    /// Checks every key; `base` resolves relative file paths.
    pub fn validate(self, base: &Path) -> Result<Config, ConfigError> {
        let realm = self.realm.unwrap_or_else(|| "relay".to_owned());
        if realm.is_empty() || realm.chars().count() >= 128 {
            return Err(ConfigError::new("realm", "must be 1 to 127 characters"));
        }
        let listeners = self
            .listen
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let key = format!("listen[{i}].address");
                let address: SocketAddr = l.address.parse().map_err(|_| {
                    ConfigError::new(&key, format!("`{}` is not IP:PORT", l.address))
                })?;
                if address.port() == 0 {
                    return Err(ConfigError::new(
                        &key,
                        "needs a port (3478 is TURN's; clients must know where to reach it)",
                    ));
                }
                if address.ip().is_unspecified() {
                    return Err(ConfigError::new(
                        &key,
                        "must be a specific address (replies leave from the address the client reached)",
                    ));
                }
                if l.transports.is_empty() {
                    return Err(ConfigError::new(
                        format!("listen[{i}].transports"),
                        "is empty",
                    ));
                }
                if let Some(t) = l
                    .transports
                    .iter()
                    .enumerate()
                    .find(|(j, t)| l.transports[..*j].contains(t))
                    .map(|(_, t)| t)
                {
                    return Err(ConfigError::new(
                        format!("listen[{i}].transports"),
                        format!("{t:?} is listed twice"),
                    ));
                }
                let proxy_from = super::listen_proxy::proxy_from(i, &l)?;
                Ok(Listener {
                    address,
                    transports: l.transports,
                    proxy_from,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if listeners.is_empty() {
            return Err(ConfigError::new(
                "listen",
                "at least one [[listen]] address is needed",
            ));
        }

        // One socket per address and protocol: TCP and TLS on one port are one listener
        // (the first byte tells them apart), so an address may not appear twice.
        for (i, l) in listeners.iter().enumerate() {
            if listeners[..i].iter().any(|o| o.address == l.address) {
                return Err(ConfigError::new(
                    format!("listen[{i}].address"),
                    format!(
                        "{} is listed twice: put all its transports in one [[listen]]",
                        l.address
                    ),
                ));
            }
        }
        let (tcp, tls) = super::tcp::validate(self.tcp, self.tls, &listeners, base)?;
        let (relay_v4, relay_v6) = relay_addresses(&self.relay, &listeners)?;
        let ports = match &self.relay.ports {
            Some(p) => p.parse().map_err(|m| ConfigError::new("relay.ports", m))?,
            None => DEFAULT_PORTS,
        };
        ports_clear_of_listeners(ports, &[relay_v4, relay_v6], &listeners)?;

        let mut users = self.auth.users;
        let mut shared_secrets = self.auth.shared_secrets;
        if let Some(file) = &self.auth.users_file {
            let file = load_users_file(&base.join(file))?;
            if file.shared_secrets.iter().any(String::is_empty) {
                return Err(ConfigError::new(
                    "auth.users_file",
                    "shared_secrets has an empty secret (anyone could mint credentials)",
                ));
            }
            shared_secrets.extend(file.shared_secrets);
            for (name, entry) in file.users {
                if users.insert(name.clone(), entry).is_some() {
                    return Err(ConfigError::new(
                        "auth.users_file",
                        format!("user `{name}` is also defined inline in [auth.users]"),
                    ));
                }
            }
        }
        if let Some(i) = shared_secrets.iter().position(String::is_empty) {
            return Err(ConfigError::new(
                format!("auth.shared_secrets[{i}]"),
                "is empty (anyone could mint credentials)",
            ));
        }
        if users.is_empty() && shared_secrets.is_empty() {
            return Err(ConfigError::new(
                "auth",
                "no users and no shared_secrets: nobody could allocate a relay",
            ));
        }

        let max_allocations = self
            .limits
            .max_allocations
            .unwrap_or(DEFAULT_MAX_ALLOCATIONS);
        if max_allocations == 0 {
            return Err(ConfigError::new(
                "limits.max_allocations",
                "must be at least 1",
            ));
        }
        let at_least_one = |key: &'static str, v: usize| match v {
            0 => Err(ConfigError::new(key, "must be at least 1")),
            v => Ok(v),
        };
        let per_user = at_least_one(
            "limits.max_allocations_per_user",
            self.limits
                .max_allocations_per_user
                .unwrap_or(max_allocations),
        )?;
        let per_rest_user = at_least_one(
            "limits.max_allocations_per_rest_user",
            self.limits
                .max_allocations_per_rest_user
                .unwrap_or(DEFAULT_MAX_ALLOCATIONS_PER_REST_USER),
        )?;
        let per_source = at_least_one(
            "limits.max_allocations_per_source",
            self.limits
                .max_allocations_per_source
                .unwrap_or(DEFAULT_MAX_ALLOCATIONS_PER_SOURCE),
        )?;
        let (unauthenticated_rate, unauthenticated_burst) = unauthenticated_limit(&self.limits)?;
        let max_bps_per_allocation = bps(
            "limits.max_bps_per_allocation",
            self.limits.max_bps_per_allocation,
        )?;
        let max_bps_per_user = bps("limits.max_bps_per_user", self.limits.max_bps_per_user)?;
        let (unauthenticated_global_rate, unauthenticated_global_burst) =
            unauthenticated_global_limit(&self.limits)?;
        let xdp_mode = match &self.xdp.mode {
            Some(m) => m
                .parse()
                .map_err(|e: String| ConfigError::new("xdp.mode", e))?,
            None => AttachMode::Auto,
        };
        let xdp_forwarding = match &self.xdp.forwarding {
            Some(f) => f
                .parse()
                .map_err(|e: String| ConfigError::new("xdp.forwarding", e))?,
            None => Forwarding::Auto,
        };
        let udp_workers = self.udp.workers.unwrap_or(0);
        if udp_workers > MAX_UDP_WORKERS {
            return Err(ConfigError::new(
                "udp.workers",
                format!("{udp_workers} is more than {MAX_UDP_WORKERS}; 0 means one per CPU"),
            ));
        }
        let udp_engine = match &self.udp.engine {
            Some(e) => e
                .parse()
                .map_err(|m: String| ConfigError::new("udp.engine", m))?,
            None => IoEngine::Auto,
        };
        let relays: Vec<RelayAddrs> = [relay_v4, relay_v6].into_iter().flatten().collect();
        let admin = super::admin::admin(self.admin, &listeners, &relays, ports)?;
        if admin.tls && tls.is_none() {
            return Err(ConfigError::new(
                "admin.tls",
                "needs [tls] certificate and private_key: the admin endpoint serves that certificate",
            ));
        }
        let cluster = super::cluster::validate(
            self.cluster,
            &listeners,
            admin.address,
            admin.token.is_some(),
            base,
        )?;
        let alternate_servers =
            super::admin::alternate_servers(&self.limits.alternate_servers, &listeners)?;
        let drain_timeout = super::admin::drain_timeout(self.limits.drain_timeout)?;
        let log_level = self.log.level.unwrap_or_else(|| "info".to_owned());
        super::check_log_filter(&log_level).map_err(|m| ConfigError::new("log.level", m))?;
        Ok(Config {
            realm,
            software: match self.software {
                Some(s) if s.is_empty() => None,
                Some(s) => Some(s),
                None => Some(concat!("relay/", env!("CARGO_PKG_VERSION")).to_owned()),
            },
            listeners,
            relay_v4,
            relay_v6,
            ports,
            users,
            shared_secrets,
            peers_allow: allow_rules("peers.allow", &self.peers.allow)?,
            peers_rest_allow: match &self.peers.rest {
                Some(rest) => Some(allow_rules("peers.rest.allow", &rest.allow)?),
                None => None,
            },
            peers_deny: cidrs("peers.deny", &self.peers.deny)?,
            max_allocations,
            max_allocations_per_user: per_user,
            max_allocations_per_rest_user: per_rest_user,
            max_allocations_per_source: per_source,
            unauthenticated_rate,
            unauthenticated_burst,
            max_bps_per_allocation,
            max_bps_per_user,
            unauthenticated_global_rate,
            unauthenticated_global_burst,
            xdp_interfaces: self.xdp.interfaces,
            xdp_mode,
            xdp_forwarding,
            xdp_program_upgrades: self.xdp.program_upgrades.unwrap_or(true),
            udp_workers,
            udp_engine,
            log_level,
            admin,
            alternate_servers,
            drain_timeout,
            tcp,
            tls,
            cluster,
        })
    }
}

/// A bandwidth limit in bit/s: 0 (none, the default) or within
/// [`MIN_BPS`](relay_common::bandwidth::MIN_BPS)..=[`MAX_BPS`](relay_common::bandwidth::MAX_BPS).
fn bps(key: &'static str, value: Option<u64>) -> Result<u64, ConfigError> {
    use relay_common::bandwidth::{MAX_BPS, MIN_BPS, valid_bps};
    match value.unwrap_or(0) {
        v if valid_bps(v) => Ok(v),
        v => Err(ConfigError::new(
            key,
            format!(
                "{v} bit/s is outside {MIN_BPS}..={MAX_BPS} (bits per second of payload; \
                 0 means unlimited)"
            ),
        )),
    }
}

/// Each entry of list `key` parsed by `parse`; an error names the entry (`key[i]`).
fn entries<T, E: fmt::Display>(
    key: &str,
    values: &[String],
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, ConfigError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            parse(v.trim()).map_err(|e| ConfigError::new(format!("{key}[{i}]"), e.to_string()))
        })
        .collect()
}

/// Plain CIDRs (or single addresses); host bits set are refused as ambiguous.
pub(super) fn cidrs(key: &str, values: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    entries(key, values, parse_net)
}

/// `"CIDR [udp|tcp] [N|N-M]"` entries.
fn allow_rules(key: &str, values: &[String]) -> Result<Vec<AllowRule>, ConfigError> {
    entries(key, values, str::parse::<AllowRule>)
}
