//! The poller: every [`POLL_EVERY`] it asks each other node's `/api/status` (with this
//! node's `[admin] token`, over TLS for `https://` nodes, verified with `[cluster] ca`),
//! records the answers and hands the shards the nodes they may redirect to. Runs on the
//! admin runtime; the shards get the snapshot as a job between batches.

use std::{path::PathBuf, sync::Arc, time::Instant};

use relay_admin_api::{StatusView, client::AdminClient};
use rustls::ClientConfig;

use super::{Cluster, Heard, POLL_EVERY, POLL_TIMEOUT};
use crate::config::{ClusterNode, Config};

/// Polls until the task is aborted (the process ends). `config` gives the config in
/// force (a reload may change the nodes); `publish` hands every shard the nodes it may
/// redirect to now (`Control::publish_redirect_targets`).
pub async fn run(cluster: Arc<Cluster>, config: impl Fn() -> Arc<Config>, publish: impl Fn()) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The CA file's config, rebuilt when `[cluster] ca` changes (a reload).
    let mut tls: Option<(PathBuf, Arc<ClientConfig>)> = None;
    let mut ca_warned = false;
    // Whether the shards hold targets: a reload that removes every node clears them once.
    let mut published = false;
    loop {
        tick.tick().await;
        let config = config();
        let nodes = config.cluster.nodes.clone();
        cluster.set_nodes(&nodes);
        if nodes.is_empty() {
            if published {
                publish();
                published = false;
            }
            continue;
        }
        let ca = config.cluster.ca.clone();
        match &ca {
            Some(path) if tls.as_ref().is_none_or(|(p, _)| p != path) => {
                match relay_admin_api::client::tls_config_from_ca(path) {
                    Ok(c) => {
                        tls = Some((path.clone(), c));
                        ca_warned = false;
                    }
                    Err(e) if !ca_warned => {
                        ca_warned = true;
                        tracing::warn!(ca = %path.display(), error = %e,
                            "cluster: cannot use [cluster] ca; https:// nodes are counted unreachable until it is fixed (reload after)");
                    }
                    Err(_) => {}
                }
            }
            None => tls = None,
            _ => {}
        }
        let mut polls = tokio::task::JoinSet::new();
        for node in nodes {
            let mut client = AdminClient::new(node.admin.address, config.admin.token.clone());
            client.timeout = POLL_TIMEOUT;
            let tls = tls.as_ref().map(|(_, c)| c.clone());
            polls.spawn(async move { (node, poll(node, client, tls).await) });
        }
        while let Some(done) = polls.join_next().await {
            let Ok((node, answer)) = done else { continue };
            let now = Instant::now();
            if let Some(before) = cluster.heard(node, now, answer.clone()) {
                log_change(node, &before, &answer);
            }
        }
        publish();
        published = true;
    }
}

/// One node's status, or why there is none.
async fn poll(
    node: ClusterNode,
    mut client: AdminClient,
    tls: Option<Arc<ClientConfig>>,
) -> Result<Heard, String> {
    if node.admin.tls {
        client.tls = Some(tls.ok_or("no usable [cluster] ca to verify its certificate")?);
    }
    let answer = client
        .get_async("/api/status")
        .await
        .map_err(|e| e.to_string())?;
    let status: StatusView =
        AdminClient::parse_json("/api/status", answer).map_err(|e| e.to_string())?;
    Ok(Heard::from(&status))
}

/// Up/down and draining changes, once each: what an operator looks for after a redirect
/// went somewhere unexpected (or nowhere).
fn log_change(node: ClusterNode, before: &super::NodeState, now: &Result<Heard, String>) {
    let admin = node.admin.to_string();
    match now {
        Ok(h) if !before.up => tracing::info!(node = %admin, turn = %node.turn,
            allocations = ?h.allocations, capacity = h.capacity, draining = h.draining,
            "cluster: node answers; it may get redirected clients"),
        Ok(h) if h.draining != before.draining => tracing::info!(node = %admin,
            draining = h.draining, "cluster: node {} draining", if h.draining { "started" } else { "stopped" }),
        Err(e) if before.up || before.last_heard.is_none() && before.error.is_none() => {
            tracing::warn!(node = %admin, turn = %node.turn, error = %e,
                "cluster: node unreachable; no clients are redirected to it (check its [admin] address, the shared [admin] token, tls and [cluster] ca)")
        }
        _ => {}
    }
}
