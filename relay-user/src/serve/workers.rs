//! How many data-path workers `relay serve` runs, whether the listeners a handover brings
//! fit the config, and noticing a worker that ended. Apart from the serve sequence because
//! these are the rules an upgrade keeps (the SO_REUSEPORT groups stay as handed over),
//! checked before anything starts.

use crate::{
    config::{Config, Transport},
    udp::Dataplane,
};

/// The UDP listeners a handover brings must be the ones the config asks for: the
/// sockets are kept, not bound anew. The number of workers is the handed-over one.
pub(super) fn check_handed_listeners(
    config: &Config,
    udp: &[std::net::SocketAddr],
    manifest: &crate::handover::Manifest,
) -> anyhow::Result<usize> {
    let workers = manifest.workers.len();
    if manifest.snapshot.shards.len() != workers {
        anyhow::bail!(
            "the handover names {workers} UDP workers but its snapshot has {} shards",
            manifest.snapshot.shards.len()
        );
    }
    for w in &manifest.workers {
        if w.listeners != udp {
            anyhow::bail!(
                "the config's UDP listeners ({}) differ from the running relay's ({}): an upgrade keeps the listeners; restart to change them",
                list(udp),
                list(&w.listeners)
            );
        }
    }
    let configured = udp_workers(config);
    if configured != workers {
        tracing::warn!(
            configured,
            kept = workers,
            "[udp] workers differs from the running relay's: the handed-over count stays (the sockets' SO_REUSEPORT groups); restart to change it"
        );
    }
    Ok(workers)
}

/// How many TCP/TLS workers run: `[tcp] workers`, or after an upgrade the handed-over
/// count (each worker has its member of every listener's SO_REUSEPORT group, and the
/// cores' CONNECTION-IDs name one of that many). The config's TCP/TLS listeners must
/// be the handed-over ones.
pub(super) fn tcp_workers_for(
    config: &Config,
    handed: &[crate::handover::tcp::Group],
) -> anyhow::Result<usize> {
    let configured = per_cpu(config.tcp.workers);
    let Some((_, first)) = handed.first() else {
        return Ok(configured);
    };
    let mut wanted: Vec<_> = config
        .listeners
        .iter()
        .filter(|l| l.transports.iter().any(|t| *t != Transport::Udp))
        .map(|l| l.address)
        .collect();
    let mut got: Vec<_> = handed.iter().map(|(a, _)| *a).collect();
    wanted.sort();
    got.sort();
    if wanted != got {
        anyhow::bail!(
            "the config's TCP/TLS listeners ({}) differ from the running relay's ({}): an upgrade keeps the listeners; restart to change them",
            list(&wanted),
            list(&got)
        );
    }
    let kept = first.len();
    if configured != kept {
        tracing::warn!(
            configured,
            kept,
            "[tcp] workers differs from the running relay's: the handed-over count stays (one member of each listener's SO_REUSEPORT group per worker); restart to change it"
        );
    }
    Ok(kept)
}

fn list(addrs: &[std::net::SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `[udp] workers`, with 0 resolved to the CPUs this process may run on.
pub(super) fn udp_workers(config: &Config) -> usize {
    per_cpu(config.udp_workers)
}

/// A `workers` setting (`[udp]`, `[tcp]`) with 0 resolved to the CPUs this process may
/// run on (its affinity mask and cgroup quota).
fn per_cpu(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Resolves when one of the UDP or TCP/TLS workers has ended (they only end on their
/// own after a fatal error or a panic); its name.
pub(super) async fn shard_exited(
    workers: &[std::thread::JoinHandle<Dataplane>],
    tcp: &[std::thread::JoinHandle<relay_proto::server::Server>],
) -> String {
    loop {
        let finished = workers
            .iter()
            .find(|t| t.is_finished())
            .map(|t| t.thread())
            .or(tcp.iter().find(|t| t.is_finished()).map(|t| t.thread()));
        if let Some(t) = finished {
            return t.name().unwrap_or("unnamed").to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
