//! Configuration reload (SIGHUP): re-reading the config, applying the keys that can change
//! at runtime on every shard, and naming the ones that need a restart.

use std::sync::{Arc, atomic::Ordering};

use super::{Control, QUERY_TIMEOUT, lock, unix_now};
use crate::config::{Config, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload: this relay runs the demo settings (start it with --config)")]
    NoConfigFile,
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0:#}")]
    Credentials(anyhow::Error),
    #[error("{name}: {error:#}")]
    Hook { name: String, error: anyhow::Error },
}

/// What a successful reload changed.
#[derive(Debug)]
pub struct ReloadReport {
    pub users: usize,
    pub shared_secrets: usize,
    /// Shards that confirmed the new settings within [`QUERY_TIMEOUT`] (the others apply
    /// them when their loop next runs its jobs).
    pub shards_applied: usize,
    pub allocations_kept: usize,
    /// Keys whose change needs a restart; their old values stay in force.
    pub restart_needed: Vec<&'static str>,
}

/// The last reload, for `/api/status`.
#[derive(Clone, Debug)]
pub struct ReloadRecord {
    pub at_unix: u64,
    pub ok: bool,
    pub message: String,
}

impl Control {
    /// Reads the config again and applies what can change at runtime: users, shared
    /// secrets, realm, peer policy, limits, alternate servers, cluster nodes, drain timeout,
    /// admin token (and whatever the hooks reload). Allocations are kept. Nothing changes unless the
    /// whole new config is valid. Blocks (file I/O, shard round trips).
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let loader = self.loader.as_ref().ok_or(ReloadError::NoConfigFile)?;
        let new = loader()?;
        let old = self.config();
        let mut running = (*old).clone();
        running.realm = new.realm.clone();
        running.users = new.users.clone();
        running.shared_secrets = new.shared_secrets.clone();
        running.peers_allow = new.peers_allow.clone();
        running.peers_rest_allow = new.peers_rest_allow.clone();
        running.peers_deny = new.peers_deny.clone();
        running.max_allocations = new.max_allocations;
        running.max_allocations_per_user = new.max_allocations_per_user;
        running.max_allocations_per_rest_user = new.max_allocations_per_rest_user;
        running.max_allocations_per_source = new.max_allocations_per_source;
        running.unauthenticated_rate = new.unauthenticated_rate;
        running.unauthenticated_burst = new.unauthenticated_burst;
        running.unauthenticated_global_rate = new.unauthenticated_global_rate;
        running.unauthenticated_global_burst = new.unauthenticated_global_burst;
        running.alternate_servers = new.alternate_servers.clone();
        running.drain_timeout = new.drain_timeout;
        running.admin.token = new.admin.token.clone();
        // The poller reads the nodes afresh at each round.
        running.cluster = new.cluster.clone();
        running.tcp.relay_tcp = new.tcp.relay_tcp;

        // Built here to refuse the reload before any shard sees it; each shard builds its
        // own store from the same settings (a store is not shared between threads).
        crate::cores::credentials(&running).map_err(ReloadError::Credentials)?;
        for (name, hook) in lock(&self.hooks).iter() {
            hook(&new).map_err(|error| ReloadError::Hook {
                name: name.clone(),
                error,
            })?;
        }

        let running = Arc::new(running);
        let apply = running.clone();
        let answers = self.gather(QUERY_TIMEOUT, move |server| {
            match crate::cores::credentials(&apply) {
                Ok(c) => server.set_credentials(c),
                // Not expected: the same settings built a store above.
                Err(e) => tracing::error!(error = %format!("{e:#}"),
                    "reload: new credentials not applied on this shard"),
            }
            server.set_policy(crate::cores::policy(&apply));
            server.set_limits(relay_proto::server::Limits {
                max_allocations: apply.max_allocations,
                max_allocations_per_user: apply.max_allocations_per_user,
                max_allocations_per_rest_user: apply.max_allocations_per_rest_user,
                max_allocations_per_source: apply.max_allocations_per_source,
            });
            server
                .set_unauthenticated_limit(apply.unauthenticated_rate, apply.unauthenticated_burst);
            server.set_unauthenticated_global_limit(
                apply.unauthenticated_global_rate,
                apply.unauthenticated_global_burst,
            );
            server.set_alternate_servers(apply.alternate_servers.clone());
            server.set_relay_tcp(apply.tcp.relay_tcp);
            server.allocation_count()
        });
        let report = ReloadReport {
            users: running.users.len(),
            shared_secrets: running.shared_secrets.len(),
            shards_applied: answers.iter().flatten().count(),
            allocations_kept: answers.iter().flatten().sum(),
            restart_needed: restart_needed(&old, &new),
        };
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = running;
        Ok(report)
    }

    /// [`reload`](Self::reload) with the operator's log lines and the status counters.
    pub fn reload_and_log(&self) {
        let path = self
            .config_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into());
        let result = self.reload();
        // Counted before the log line: whoever reacts to the line finds it in the status.
        let (ok, message) = match &result {
            Ok(_) => (true, "reloaded".to_owned()),
            Err(e) => (false, e.to_string()),
        };
        let counter = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_reload) = Some(ReloadRecord {
            at_unix: unix_now(),
            ok,
            message,
        });
        match result {
            Ok(r) => {
                tracing::info!(config = %path, users = r.users, shared_secrets = r.shared_secrets,
                    allocations_kept = r.allocations_kept,
                    shards = %format!("{}/{}", r.shards_applied, self.shards.len()),
                    "configuration reloaded: users, shared secrets, peer policy, limits, alternates and tcp.relay_tcp in force");
                if r.shards_applied < self.shards.len() {
                    tracing::warn!(
                        "some shards did not confirm the reload in time; they apply it when their loop next runs"
                    );
                }
                if let Some(w) = crate::cores::rest_policy_warning(&self.config()) {
                    tracing::warn!("{w}");
                }
                if !r.restart_needed.is_empty() {
                    tracing::warn!(keys = %r.restart_needed.join(", "),
                        "these changed keys take effect only after a restart; their old values stay in force");
                }
            }
            Err(e) => {
                tracing::error!(config = %path, error = %e,
                    "configuration reload refused; the previous configuration stays in force (check with `relay check --config FILE`)");
            }
        }
    }
}

/// Config keys read only at startup whose values differ between `old` and `new`.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |changed: bool, key: &'static str| {
        if changed {
            keys.push(key);
        }
    };
    check(old.listeners != new.listeners, "listen");
    check(
        old.relay_v4 != new.relay_v4 || old.relay_v6 != new.relay_v6,
        "relay.address",
    );
    check(old.ports != new.ports, "relay.ports");
    check(old.software != new.software, "software");
    check(
        old.xdp_interfaces != new.xdp_interfaces
            || old.xdp_mode != new.xdp_mode
            || old.xdp_forwarding != new.xdp_forwarding
            || old.xdp_program_upgrades != new.xdp_program_upgrades,
        "xdp",
    );
    check(old.udp_workers != new.udp_workers, "udp.workers");
    check(old.udp_engine != new.udp_engine, "udp.engine");
    check(old.tcp.restart_only() != new.tcp.restart_only(), "tcp");
    check(old.admin.address != new.admin.address, "admin.address");
    check(
        old.admin.header_timeout != new.admin.header_timeout,
        "admin.header_timeout",
    );
    check(
        old.admin.max_connections != new.admin.max_connections,
        "admin.max_connections",
    );
    check(old.admin.tls != new.admin.tls, "admin.tls");
    check(old.log_level != new.log_level, "log.level");
    // The buckets are set up with the allocations (and the kernel's with its maps).
    check(
        old.max_bps_per_allocation != new.max_bps_per_allocation,
        "limits.max_bps_per_allocation",
    );
    check(
        old.max_bps_per_user != new.max_bps_per_user,
        "limits.max_bps_per_user",
    );
    keys
}
