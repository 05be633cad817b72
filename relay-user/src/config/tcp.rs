//! `[tcp]` and `[tls]`: TURN over TCP and TLS (RFC 8656 §3.1), for clients behind
//! firewalls that only let TCP 443 (often TLS) out.

use std::{path::Path, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{ConfigError, IoEngine, Listener, Transport};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSection {
    /// auto | io_uring | epoll
    pub engine: Option<String>,
    /// TCP/TLS connections held at once, all sources together.
    pub max_connections: Option<usize>,
    /// Connections one client IP may hold (slowloris-style abuse); a NAT of many
    /// browsers is one IP, so keep it generous.
    pub max_connections_per_source: Option<u32>,
    /// Seconds a connection without an allocation may stay without a complete message.
    pub idle_timeout: Option<u64>,
    /// Seconds from accept to the end of the TLS handshake and the first message.
    pub handshake_timeout: Option<u64>,
    /// RFC 6062 TCP allocations (REQUESTED-TRANSPORT TCP) for TCP/TLS clients.
    pub relay_tcp: Option<bool>,
    /// TCP/TLS event-loop threads sharing the listeners; 0 = one per CPU.
    pub workers: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain, leaf first.
    pub certificate: Option<String>,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1, unencrypted).
    pub private_key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSettings {
    pub engine: IoEngine,
    pub max_connections: usize,
    pub max_connections_per_source: u32,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    /// RFC 6062 offered (reloadable: the only `[tcp]` key a SIGHUP applies).
    pub relay_tcp: bool,
    /// Event-loop threads; 0 = one per CPU (see [`crate::tcp::worker_count`]).
    pub workers: usize,
}

impl TcpSettings {
    /// The settings only a restart applies (all but `relay_tcp`).
    pub fn restart_only(&self) -> Self {
        Self {
            relay_tcp: false,
            ..self.clone()
        }
    }
}

/// Defaults for one edge host (CONTEXT.md: 1,800 to 6,000 relays per node):
/// - `max_connections`: two per allocation at the default `limits.max_allocations`
///   (10,000): a control connection, plus one in its handshake or an RFC 6062 data
///   connection. Each may queue 256 KiB each way, and needs a descriptor (2 × 20,000 +
///   1,024 fits the usual `LimitNOFILE=65536`).
/// - `max_connections_per_source`: a NAT of about 250 browsers, each gathering a
///   `turn:…?transport=tcp` and a `turns:` allocation; 40 sources fill the relay.
/// - `idle_timeout`: counts only authenticated requests, for connections without an
///   allocation; a real client allocates within a round trip or two of its 401.
/// - `handshake_timeout`: a TLS handshake and a first request take 3 round trips.
/// - `workers`: one per CPU, like `[udp] workers`.
impl Default for TcpSettings {
    fn default() -> Self {
        Self {
            engine: IoEngine::Auto,
            max_connections: 20_000,
            max_connections_per_source: 500,
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            relay_tcp: false,
            workers: 0,
        }
    }
}

/// Certificate chain and key files, resolved against the config file's folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// Checks `[tcp]` and `[tls]` against the listeners: a `tls` listener needs both files.
/// Whether they load is for startup and `relay check` to find out (`check::certificates`):
/// the config only names them.
pub(super) fn validate(
    tcp: TcpSection,
    tls: TlsSection,
    listeners: &[Listener],
    base: &Path,
) -> Result<(TcpSettings, Option<TlsFiles>), ConfigError> {
    let d = TcpSettings::default();
    let engine = match tcp.engine {
        Some(e) => e.parse().map_err(|m| ConfigError::new("tcp.engine", m))?,
        None => d.engine,
    };
    let positive = |key: &str, v: Option<u64>, default: Duration| match v {
        Some(0) => Err(ConfigError::new(key, "must be at least 1 (seconds)")),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Ok(default),
    };
    let settings = TcpSettings {
        engine,
        max_connections: match tcp.max_connections {
            Some(0) => {
                return Err(ConfigError::new(
                    "tcp.max_connections",
                    "must be at least 1",
                ));
            }
            Some(n) => n,
            None => d.max_connections,
        },
        max_connections_per_source: match tcp.max_connections_per_source {
            Some(0) => {
                return Err(ConfigError::new(
                    "tcp.max_connections_per_source",
                    "must be at least 1",
                ));
            }
            Some(n) => n,
            None => d.max_connections_per_source,
        },
        idle_timeout: positive("tcp.idle_timeout", tcp.idle_timeout, d.idle_timeout)?,
        handshake_timeout: positive(
            "tcp.handshake_timeout",
            tcp.handshake_timeout,
            d.handshake_timeout,
        )?,
        relay_tcp: tcp.relay_tcp.unwrap_or(d.relay_tcp),
        workers: match tcp.workers {
            Some(n) if n > super::MAX_UDP_WORKERS => {
                return Err(ConfigError::new(
                    "tcp.workers",
                    format!(
                        "{n} is more than {}; 0 means one per CPU",
                        super::MAX_UDP_WORKERS
                    ),
                ));
            }
            Some(n) => n,
            None => d.workers,
        },
    };
    let wants_tls = listeners
        .iter()
        .any(|l| l.transports.contains(&Transport::Tls));
    let files = match (tls.certificate, tls.private_key) {
        (Some(c), Some(k)) => Some(TlsFiles {
            certificate: base.join(c),
            private_key: base.join(k),
        }),
        (None, None) if !wants_tls => None,
        (None, _) => {
            return Err(ConfigError::new(
                "tls.certificate",
                "missing: a listener has transports = [\"tls\"] (PEM chain, leaf first)",
            ));
        }
        (_, None) => {
            return Err(ConfigError::new(
                "tls.private_key",
                "missing: a listener has transports = [\"tls\"] (PEM key of the certificate)",
            ));
        }
    };
    Ok((settings, files))
}
