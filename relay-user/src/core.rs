//! Building the sans-IO [`Server`] from the validated config, and the demo settings used
//! when `relay serve` runs without a config file.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use relay_proto::{
    auth::{CredentialStore, NonceKey},
    policy::PeerPolicy,
    server::{RelayAddr, Server, ServerConfig},
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

pub fn policy(c: &Config) -> PeerPolicy {
    let own = [c.relay_v4, c.relay_v6]
        .into_iter()
        .flatten()
        .flat_map(|r| [r.bind, r.public]);
    PeerPolicy::new(c.peers_allow.clone(), c.peers_deny.clone(), own.collect())
}

pub fn server(c: &Config, now: Instant) -> anyhow::Result<Server> {
    let relay = |r: Option<RelayAddrs>| {
        r.map(|r| RelayAddr {
            bind: r.bind,
            public: r.public,
        })
    };
    let config = ServerConfig {
        realm: c.realm.clone(),
        software: c.software.clone(),
        relay_v4: relay(c.relay_v4),
        relay_v6: relay(c.relay_v6),
        ports: c.ports.low..=c.ports.high,
        max_allocations: c.max_allocations,
        max_allocations_per_user: c.max_allocations_per_user,
        port_seed: u64::from_ne_bytes(random()?[..8].try_into().expect("8 bytes")),
        ..ServerConfig::default()
    };
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock")?
        .as_secs();
    Ok(Server::new(
        config,
        credentials(c)?,
        policy(c),
        NonceKey::new(random()?),
        now,
        unix_now,
    ))
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
        peers_allow: vec!["127.0.0.0/8".parse().expect("literal")],
        peers_deny: vec![],
        max_allocations: 1000,
        max_allocations_per_user: 1000,
        xdp_interfaces: vec!["lo".into()],
        xdp_mode: crate::xdp::AttachMode::Auto,
        log_level: "info".into(),
    };
    Ok((config, password))
}
