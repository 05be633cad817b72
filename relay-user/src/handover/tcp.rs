//! The TCP/TLS side of an upgrade. The new process takes the client listeners (every
//! worker's member of each listener's SO_REUSEPORT group, plain, TLS and PROXY protocol
//! alike: the same sockets, so the ports never close and the group stays as it is);
//! connections that are open stay with the old process, which stops
//! accepting at once and serves them, with their allocations (RFC 6062 ones included)
//! and relay sockets, until they end or `limits.drain_timeout` passes, then exits (as
//! nginx does).
//!
//! The two processes must not hand out the same relay port meanwhile: the ports the old
//! process's TCP/TLS allocations hold go into the snapshot as quarantined for the drain
//! timeout, so the new process does not pick them, and the old one refuses new
//! allocations (as while draining), so it picks none the new one may hold.

use std::{
    net::{SocketAddr, TcpListener},
    os::fd::{AsRawFd, OwnedFd, RawFd},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use relay_proto::server::{FamilyName, QuarantineSnapshot};
use serde::{Deserialize, Serialize};

use crate::{
    control::Control,
    shard::ShardHandle,
    tcp::{HandOff, Stats},
};

/// How long a TCP/TLS worker may take to list its allocations' relay ports.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// The quarantine outlives the old process's drain by this much (its exit, a slow
/// close).
const QUARANTINE_MARGIN: Duration = Duration::from_secs(10);
/// How often the lingering old process looks at its connections.
const LINGER_POLL: Duration = Duration::from_millis(250);
/// How often it logs what it still serves.
const LINGER_REPORT: Duration = Duration::from_secs(5);

/// One client listener in the manifest: its address and how many group members (one per
/// TCP/TLS worker) follow the UDP descriptors, in order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TcpGroup {
    pub listen: SocketAddr,
    pub members: usize,
}

/// A listener's group as received.
pub type Group = (SocketAddr, Vec<TcpListener>);

/// What the old process needs for the TCP/TLS side of an upgrade.
pub struct TcpSide {
    pub hand_off: HandOff,
    /// The TCP/TLS workers' shards and their connection counters.
    pub shards: Vec<ShardHandle>,
    pub stats: Vec<Arc<Stats>>,
}

impl TcpSide {
    /// The manifest's entries and the descriptors, in the order they are sent.
    pub fn listeners(&self) -> (Vec<TcpGroup>, Vec<RawFd>) {
        let mut fds = Vec::new();
        let groups = self
            .hand_off
            .groups
            .iter()
            .map(|(listen, members)| {
                fds.extend(members.iter().map(AsRawFd::as_raw_fd));
                TcpGroup {
                    listen: *listen,
                    members: members.len(),
                }
            })
            .collect();
        (groups, fds)
    }

    /// The relay ports this process's TCP/TLS allocations hold, as quarantines lasting
    /// `drain` and a margin: the new process leaves them alone while this one may still
    /// use them. `Err` if a worker did not answer (its ports are unknown).
    pub async fn held_ports(&self, drain: Duration) -> Result<Vec<QuarantineSnapshot>, String> {
        let remaining_ms =
            u64::try_from((drain + QUARANTINE_MARGIN).as_millis()).unwrap_or(u64::MAX);
        let mut held = Vec::new();
        for s in &self.shards {
            let shard = s.clone();
            let relays = tokio::task::spawn_blocking(move || {
                shard.query(QUERY_TIMEOUT, |server| {
                    server
                        .allocations()
                        .flat_map(|a| a.relayed().map(|r| r.bind).collect::<Vec<_>>())
                        .collect::<Vec<_>>()
                })
            })
            .await
            .map_err(|e| format!("asking {}: {e}", s.name))?
            .ok_or_else(|| format!("TCP/TLS worker {} did not list its relay ports", s.name))?;
            held.extend(relays.into_iter().map(|bind| QuarantineSnapshot {
                family: if bind.is_ipv4() {
                    FamilyName::Ipv4
                } else {
                    FamilyName::Ipv6
                },
                port: bind.port(),
                remaining_ms,
            }));
        }
        Ok(held)
    }

    /// Committed: the workers stop accepting (the new process does from now on) and new
    /// allocations on the connections left here are refused, as while draining.
    pub fn let_go(&self, control: &Control) {
        self.hand_off.stop_accepting();
        control.start_draining();
        for s in &self.shards {
            // Wakes the loop, which sees the switch.
            s.run(|_| {});
        }
    }

    /// Client connections this process still serves.
    pub fn connections(&self) -> u64 {
        self.stats
            .iter()
            .map(|s| s.held.load(Ordering::Relaxed))
            .sum()
    }

    /// After the handover: returns once every client connection has ended, `drain` has
    /// passed, or SIGTERM/SIGINT came; the caller then stops the workers and exits.
    pub async fn linger(&self, drain: Duration) {
        use tokio::signal::unix::{SignalKind, signal};
        let start = Instant::now();
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            _ => {
                tracing::warn!(
                    "cannot catch SIGTERM while serving the old TCP/TLS connections: they end now"
                );
                return;
            }
        };
        tracing::info!(
            connections = self.connections(),
            drain_timeout_s = drain.as_secs(),
            "the new process accepts TCP/TLS now; this one serves its open connections until they end or limits.drain_timeout passes, then exits"
        );
        let mut tick = tokio::time::interval(LINGER_POLL);
        let mut last_report = start;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let left = self.connections();
                    if left == 0 {
                        tracing::info!(waited_ms = start.elapsed().as_millis() as u64,
                            "the last TCP/TLS connection of the old process ended");
                        return;
                    }
                    if start.elapsed() >= drain {
                        tracing::warn!(connections = left, drain_timeout_s = drain.as_secs(),
                            "drain timeout passed: closing the old process's remaining TCP/TLS connections (their clients reconnect to the new process)");
                        return;
                    }
                    if last_report.elapsed() >= LINGER_REPORT {
                        last_report = Instant::now();
                        tracing::info!(connections = left,
                            remaining_s = drain.saturating_sub(start.elapsed()).as_secs(),
                            "still serving TCP/TLS connections from before the upgrade");
                    }
                }
                _ = term.recv() => return self.signalled("SIGTERM"),
                _ = int.recv() => return self.signalled("SIGINT"),
            }
        }
    }

    fn signalled(&self, name: &str) {
        tracing::warn!(
            signal = name,
            connections = self.connections(),
            "closing the old process's remaining TCP/TLS connections now"
        );
    }
}

/// Splits the received TCP descriptors into the manifest's groups.
pub fn groups(manifest: &[TcpGroup], fds: impl Iterator<Item = OwnedFd>) -> Vec<Group> {
    let mut fds = fds.map(TcpListener::from);
    manifest
        .iter()
        .map(|g| (g.listen, fds.by_ref().take(g.members).collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The descriptors after the UDP ones are split by the manifest's member counts, in
    /// order: each listener gets its own sockets back.
    #[test]
    fn received_descriptors_are_split_into_the_manifests_groups() {
        let sockets: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<SocketAddr> = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
        let manifest = [
            TcpGroup {
                listen: addrs[0],
                members: 2,
            },
            TcpGroup {
                listen: addrs[2],
                members: 1,
            },
        ];
        let got = groups(&manifest, sockets.into_iter().map(OwnedFd::from));
        let seen: Vec<(SocketAddr, Vec<SocketAddr>)> = got
            .iter()
            .map(|(a, g)| (*a, g.iter().map(|s| s.local_addr().unwrap()).collect()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (addrs[0], vec![addrs[0], addrs[1]]),
                (addrs[2], vec![addrs[2]]),
            ]
        );
    }
}
