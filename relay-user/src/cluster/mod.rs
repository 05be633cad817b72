//! The cluster: what this node knows of the other nodes of `[cluster] nodes`, learnt by
//! polling their `/api/status` ([`poll`]), and the choice it hands the shards: which of
//! them a full or draining shard may send new clients to (300 ALTERNATE-SERVER).
//!
//! The shards' cores do no I/O for it: they get a [`RedirectTarget`] snapshot after every
//! poll round and pick the least loaded among it; static `alternate_servers` remain their
//! fallback when no node qualifies.

pub mod poll;

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use relay_admin_api::{ClusterNodeView, StatusView};
use relay_proto::server::RedirectTarget;

use crate::config::ClusterNode;

/// How often every node is asked.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long one poll may take: a node slower than this is counted unreachable.
pub const POLL_TIMEOUT: Duration = Duration::from_millis(800);
/// A node not heard from for this long is not redirected to, even if its last answer
/// said it had room: three rounds missed.
pub const MAX_SILENCE: Duration = Duration::from_secs(3);

/// What a node's `/api/status` says that matters here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heard {
    /// `None` when some of its shards did not answer.
    pub allocations: Option<usize>,
    pub capacity: usize,
    pub draining: bool,
}

impl From<&StatusView> for Heard {
    fn from(s: &StatusView) -> Self {
        Self {
            allocations: s.allocations,
            capacity: s.limits.max_allocations,
            draining: s.draining,
        }
    }
}

/// One node as last heard.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeState {
    pub node: ClusterNode,
    /// The last poll answered with a status document.
    pub up: bool,
    pub allocations: Option<usize>,
    pub capacity: Option<usize>,
    pub draining: bool,
    pub last_heard: Option<Instant>,
    /// Why the last poll failed.
    pub error: Option<String>,
}

impl NodeState {
    pub fn new(node: ClusterNode) -> Self {
        Self {
            node,
            up: false,
            allocations: None,
            capacity: None,
            draining: false,
            last_heard: None,
            error: None,
        }
    }

    /// Takes in a poll's outcome.
    pub fn heard(&mut self, now: Instant, answer: Result<Heard, String>) {
        match answer {
            Ok(s) => {
                self.up = true;
                // A node whose shards did not all answer: keep the last count.
                self.allocations = s.allocations.or(self.allocations);
                self.capacity = Some(s.capacity);
                self.draining = s.draining;
                self.last_heard = Some(now);
                self.error = None;
            }
            Err(e) => {
                self.up = false;
                self.error = Some(e);
            }
        }
    }

    /// Where new clients may go: up, not draining, heard from within `MAX_SILENCE`, and
    /// room left as of its last answer.
    pub fn target(&self, now: Instant) -> Option<RedirectTarget> {
        let recent = self
            .last_heard
            .is_some_and(|t| now.saturating_duration_since(t) <= MAX_SILENCE);
        let (allocations, capacity) = (self.allocations?, self.capacity?);
        (self.up && recent && !self.draining && allocations < capacity).then_some(RedirectTarget {
            turn: self.node.turn,
            allocations,
            capacity,
        })
    }

    pub fn view(&self, now: Instant) -> ClusterNodeView {
        ClusterNodeView {
            node: self.node.admin.to_string(),
            turn: self.node.turn,
            up: self.up,
            allocations: self.allocations,
            capacity: self.capacity,
            draining: self.draining,
            last_heard_seconds: self
                .last_heard
                .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            error: self.error.clone(),
        }
    }
}

/// The nodes as last heard, shared by the poller (writer), the status page and the
/// metrics (readers).
#[derive(Debug, Default)]
pub struct Cluster {
    nodes: Mutex<Vec<NodeState>>,
}

impl Cluster {
    /// Follows the configured list (a reload may change it): nodes still listed keep
    /// what was heard from them, new ones start unknown.
    pub fn set_nodes(&self, nodes: &[ClusterNode]) {
        let mut states = self.lock();
        if states.iter().map(|s| &s.node).eq(nodes.iter()) {
            return;
        }
        let old = std::mem::take(&mut *states);
        *states = nodes
            .iter()
            .map(|n| {
                old.iter()
                    .find(|s| s.node == *n)
                    .cloned()
                    .unwrap_or_else(|| NodeState::new(*n))
            })
            .collect();
    }

    pub fn nodes(&self) -> Vec<NodeState> {
        self.lock().clone()
    }

    /// Records the answer of `node` (if it is still listed); returns its state before.
    pub fn heard(
        &self,
        node: ClusterNode,
        now: Instant,
        answer: Result<Heard, String>,
    ) -> Option<NodeState> {
        let mut states = self.lock();
        let s = states.iter_mut().find(|s| s.node == node)?;
        let before = s.clone();
        s.heard(now, answer);
        Some(before)
    }

    /// The snapshot the shards get.
    pub fn targets(&self, now: Instant) -> Vec<RedirectTarget> {
        self.lock().iter().filter_map(|s| s.target(now)).collect()
    }

    pub fn view(&self, now: Instant) -> Vec<ClusterNodeView> {
        self.lock().iter().map(|s| s.view(now)).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<NodeState>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
