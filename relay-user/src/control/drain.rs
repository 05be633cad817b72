//! Drain (SIGTERM, SIGINT): refusing new allocations, waiting for the existing ones to end
//! or the drain timeout, a second signal to stop at once, and the signals themselves.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::Control;

/// How often a drain looks at what is left.
const DRAIN_POLL: Duration = Duration::from_millis(250);
/// How often a drain logs its progress.
const DRAIN_REPORT: Duration = Duration::from_secs(5);

impl Control {
    /// New allocations are refused from now on (300 to an alternate, else 508); existing
    /// ones keep working. Returns whether it was already draining.
    pub fn start_draining(&self) -> bool {
        let was = self.draining.swap(true, Ordering::SeqCst);
        for s in &self.shards {
            s.run(|server| server.set_draining(true));
        }
        was
    }

    /// Serves SIGHUP (reload) until SIGTERM or SIGINT, then drains: returns when no
    /// allocation is left, the drain timeout passed, or a second SIGTERM/SIGINT came.
    /// The caller then stops the shards.
    pub async fn run_until_stopped(self: &Arc<Self>, mut sig: Signals) {
        let first = loop {
            tokio::select! {
                _ = sig.hup.recv() => self.reload_in_background().await,
                _ = sig.term.recv() => break "SIGTERM",
                _ = sig.int.recv() => break "SIGINT",
            }
        };
        self.drain(first, &mut sig).await;
    }

    async fn reload_in_background(self: &Arc<Self>) {
        let me = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || me.reload_and_log()).await {
            tracing::error!(error = %e, "configuration reload task failed");
        }
    }

    async fn count_in_background(self: &Arc<Self>) -> Option<usize> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.allocation_count())
            .await
            .ok()
            .flatten()
    }

    async fn drain(self: &Arc<Self>, signal_name: &str, sig: &mut Signals) {
        let config = self.config();
        let timeout = config.drain_timeout;
        self.start_draining();
        let left = self.count_in_background().await;
        if timeout.is_zero() {
            tracing::info!(signal = signal_name, allocations = %count(left),
                "limits.drain_timeout = 0: stopping at once");
            return;
        }
        let refusal = if !config.cluster.nodes.is_empty() {
            "300 to the least-loaded healthy [cluster] node, else the alternate servers, else 508"
                .to_owned()
        } else if config.alternate_servers.is_empty() {
            "508 Insufficient Capacity".to_owned()
        } else {
            let alts: Vec<String> = config
                .alternate_servers
                .iter()
                .map(|a| a.to_string())
                .collect();
            format!("300 to {}", alts.join(", "))
        };
        tracing::info!(signal = signal_name, allocations = %count(left), timeout_s = timeout.as_secs(), new_allocations = %refusal,
            "draining: existing allocations are served until they end or the timeout passes; send SIGTERM again to stop at once");
        let start = Instant::now();
        let mut last_report = start;
        let mut tick = tokio::time::interval(DRAIN_POLL);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let left = self.count_in_background().await;
                    if left == Some(0) {
                        tracing::info!(waited_s = start.elapsed().as_secs(), "drained: no allocations left");
                        return;
                    }
                    if start.elapsed() >= timeout {
                        tracing::warn!(allocations = %count(left), timeout_s = timeout.as_secs(),
                            "drain timeout passed: stopping with allocations still open (raise limits.drain_timeout to wait longer)");
                        return;
                    }
                    if last_report.elapsed() >= DRAIN_REPORT {
                        last_report = Instant::now();
                        let remaining_s = timeout.saturating_sub(start.elapsed()).as_secs();
                        tracing::info!(allocations = %count(left), remaining_s, "draining");
                    }
                }
                _ = sig.term.recv() => return self.second_signal("SIGTERM").await,
                _ = sig.int.recv() => return self.second_signal("SIGINT").await,
                _ = sig.hup.recv() => self.reload_in_background().await,
            }
        }
    }

    async fn second_signal(self: &Arc<Self>, name: &str) {
        let left = self.count_in_background().await;
        tracing::warn!(signal = name, allocations = %count(left), "second signal while draining: stopping now");
    }
}

/// An allocation count for a log line ("unknown" when some shard did not answer).
fn count(n: Option<usize>) -> String {
    n.map_or_else(|| "unknown".to_owned(), |n| n.to_string())
}

/// SIGHUP, SIGTERM and SIGINT, caught from the moment this is made: install it first
/// thing, so that a reload or stop during startup waits instead of killing the process.
pub struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Needs a Tokio runtime.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}
