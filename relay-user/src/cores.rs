//! The shards' sans-IO cores ([`Server`]) built from the validated config: credentials,
//! peer policy, the state all cores share ([`Cores`]), and the demo settings used when
//! `relay serve` runs without a config file.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use ipnet::IpNet;
use relay_proto::{
    auth::{CredentialStore, NonceKey},
    policy::PeerPolicy,
    server::{RelayAddr, Server, ServerConfig, Shared},
};

use crate::config::{Config, Listener, PortRange, RelayAddrs, Transport, UserEntry};

/// Users and shared secrets of the config as the core's credential store.
pub fn credentials(c: &Config) -> anyhow::Result<CredentialStore> {
    let mut store = CredentialStore::try_new(&c.realm).context("realm")?;
    for (name, entry) in &c.users {
        match entry {
            UserEntry::Password(p) => store.add_user(name, p),
            UserEntry::Key { md5_key } => store.add_user_md5_key(name, md5_key),
        }
        .with_context(|| format!("auth.users: user `{name}`"))?;
    }
    for (i, s) in c.shared_secrets.iter().enumerate() {
        store
            .try_add_shared_secret(s.as_bytes())
            .with_context(|| format!("auth.shared_secrets[{i}]"))?;
    }
    Ok(store)
}

/// The peer policy: relay addresses (bind and public) are hairpins; the listener and admin
/// addresses are the rest of the relay host, whose services `[peers] allow` must name one
/// by one.
pub fn policy(c: &Config) -> PeerPolicy {
    let relay = [c.relay_v4, c.relay_v6]
        .into_iter()
        .flatten()
        .flat_map(|r| [r.bind, r.public]);
    let listeners = c.listeners.iter().map(|l| l.address.ip());
    let host = listeners.chain(std::iter::once(c.admin.address.ip()));
    PeerPolicy::new(Vec::new(), c.peers_deny.clone(), relay.collect())
        .with_allow(c.peers_allow.clone())
        .with_rest_allow(c.peers_rest_allow.clone())
        .with_host_addresses(host)
}

/// The operator's warning when REST users (browsers) may reach every port of some allowed
/// host: shared secrets set, no `[peers.rest]`, and a `[peers] allow` entry without ports.
pub fn rest_policy_warning(c: &Config) -> Option<String> {
    if c.shared_secrets.is_empty() || c.peers_rest_allow.is_some() {
        return None;
    }
    let open: Vec<String> = c
        .peers_allow
        .iter()
        .filter(|r| r.all_ports())
        .map(|r| r.to_string())
        .collect();
    if open.is_empty() {
        return None;
    }
    Some(format!(
        "REST-credential users (auth.shared_secrets) may reach every port of {} through \
         [peers] allow; give them their own list with the ports they need, e.g. \
         [peers.rest] allow = [\"{} udp 10000-20000\"]",
        open.join(", "),
        c.peers_allow
            .iter()
            .find(|r| r.all_ports())
            .map(|r| r.net.to_string())
            .unwrap_or_default()
    ))
}

/// What the cores of all shards are built from: one nonce key (a nonce one shard issued
/// verifies on any other, whichever worker SO_REUSEPORT hands the retry to) and the state
/// they count together (relay port pools, reservations, quotas).
#[derive(Clone)]
pub struct Cores {
    nonce_key: [u8; 32],
    shared: Arc<Shared>,
    /// The host's locally routed prefixes when the shards start (kept current later
    /// through [`Control::set_local_prefixes`](crate::control::Control::set_local_prefixes)).
    local: Vec<IpNet>,
}

impl Cores {
    pub fn new(c: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            nonce_key: random()?,
            shared: Shared::new(&server_config(c)?),
            local: Vec::new(),
        })
    }

    /// The nonce key of the process this one takes over from: the nonces it issued stay
    /// valid (a handover).
    pub fn with_nonce_key(mut self, key: [u8; 32]) -> Self {
        self.nonce_key = key;
        self
    }

    /// The key every core checks nonces with (a handover passes it on).
    pub fn nonce_key(&self) -> NonceKey {
        NonceKey::new(self.nonce_key)
    }

    /// Every core built from now on refuses peers in these prefixes (the relay host's own
    /// addresses; see [`crate::local_routes`]).
    pub fn with_local_prefixes(mut self, local: Vec<IpNet>) -> Self {
        self.local = local;
        self
    }

    /// The core of one more shard. Relay sockets of the allocations it makes belong to
    /// the shard that runs it.
    pub fn server(&self, c: &Config, now: Instant) -> anyhow::Result<Server> {
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("system clock")?
            .as_secs();
        let mut server = Server::with_shared(
            server_config(c)?,
            credentials(c)?,
            policy(c),
            NonceKey::new(self.nonce_key),
            now,
            unix_now,
            self.shared.clone(),
        );
        server.set_local_prefixes(self.local.iter().copied());
        Ok(server)
    }

    /// Totals over all shards (allocations, ports in use) and the quotas in force.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// A lone core (tests, tools): its own nonce key and shared state.
pub fn server(c: &Config, now: Instant) -> anyhow::Result<Server> {
    Cores::new(c)?.server(c, now)
}

/// The core's settings; each call draws a fresh port-choice seed.
fn server_config(c: &Config) -> anyhow::Result<ServerConfig> {
    let relay = |r: Option<RelayAddrs>| {
        r.map(|r| RelayAddr {
            bind: r.bind,
            public: r.public,
        })
    };
    Ok(ServerConfig {
        realm: c.realm.clone(),
        software: c.software.clone(),
        relay_v4: relay(c.relay_v4),
        relay_v6: relay(c.relay_v6),
        ports: c.ports.low..=c.ports.high,
        max_allocations: c.max_allocations,
        max_allocations_per_user: c.max_allocations_per_user,
        max_allocations_per_rest_user: c.max_allocations_per_rest_user,
        max_allocations_per_source: c.max_allocations_per_source,
        unauthenticated_rate: c.unauthenticated_rate,
        unauthenticated_burst: c.unauthenticated_burst,
        max_bps_per_allocation: c.max_bps_per_allocation,
        max_bps_per_user: c.max_bps_per_user,
        unauthenticated_global_rate: c.unauthenticated_global_rate,
        unauthenticated_global_burst: c.unauthenticated_global_burst,
        alternate_servers: c.alternate_servers.clone(),
        port_seed: u64::from_ne_bytes(random()?[..8].try_into().expect("8 bytes")),
        relay_tcp: c.tcp.relay_tcp,
        ..ServerConfig::default()
    })
}

/// 32 bytes from the kernel's CSPRNG (nonce key, port seed, demo password).
pub fn random() -> anyhow::Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness from the kernel: {e}"))?;
    Ok(b)
}

/// `relay serve` with no config: loopback only, one generated user, loopback peers
/// allowed so a local echo peer works.
pub fn demo_config() -> anyhow::Result<(Config, String)> {
    let password: String = random()?
        .iter()
        .take(12)
        .map(|b| char::from(b"abcdefghjkmnpqrstuvwxyz23456789"[*b as usize % 31]))
        .collect();
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let config = Config {
        realm: "relay.local".into(),
        software: Some(concat!("relay/", env!("CARGO_PKG_VERSION")).into()),
        listeners: vec![Listener {
            address: SocketAddr::new(lo, 3478),
            transports: vec![Transport::Udp],
            proxy_from: None,
        }],
        relay_v4: Some(RelayAddrs {
            bind: lo,
            public: lo,
        }),
        relay_v6: None,
        ports: PortRange {
            low: 49152,
            high: 65535,
        },
        users: [("demo".to_owned(), UserEntry::Password(password.clone()))].into(),
        shared_secrets: vec![],
        // The demo's peers (turnutils_peer, `relay load echo`) run on the relay host
        // itself: its own address must be allowed exactly, or every non-relay port of
        // 127.0.0.1 counts as a service of the relay host (403).
        peers_allow: vec![
            "127.0.0.0/8".parse().expect("literal"),
            "127.0.0.1/32".parse().expect("literal"),
        ],
        peers_rest_allow: None,
        peers_deny: vec![],
        max_allocations: 1000,
        max_allocations_per_user: 1000,
        max_allocations_per_rest_user: crate::config::DEFAULT_MAX_ALLOCATIONS_PER_REST_USER,
        max_allocations_per_source: crate::config::DEFAULT_MAX_ALLOCATIONS_PER_SOURCE,
        // Loopback only, and its load tool opens its allocations from one address.
        unauthenticated_rate: 0,
        unauthenticated_burst: 0,
        max_bps_per_allocation: 0,
        max_bps_per_user: 0,
        unauthenticated_global_rate: 0,
        unauthenticated_global_burst: 0,
        xdp_interfaces: vec!["lo".into()],
        xdp_mode: crate::config::AttachMode::Auto,
        xdp_forwarding: crate::config::Forwarding::Auto,
        xdp_program_upgrades: true,
        udp_workers: 0,
        udp_engine: crate::config::IoEngine::Auto,
        log_level: "info".into(),
        admin: crate::config::AdminSettings::default(),
        alternate_servers: vec![],
        drain_timeout: crate::config::DEFAULT_DRAIN_TIMEOUT,
        tcp: crate::config::TcpSettings::default(),
        tls: None,
        cluster: Default::default(),
    };
    Ok((config, password))
}
