//! Where a full or draining relay sends new clients (300 ALTERNATE-SERVER).
//!
//! Two sources, both inputs to the core: the cluster's published snapshot of the other
//! nodes ([`RedirectTarget`]s, refreshed by the control plane from their `/api/status`)
//! and the static `alternate_servers`, the fallback when no cluster node qualifies. The
//! core does no I/O here: it only picks among what it was handed.

use std::net::SocketAddr;

/// Another node of the cluster as last heard: its public TURN address and its load. The
/// control plane hands over only nodes it considers healthy (up, not draining, heard from
/// recently); the core still skips a full one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RedirectTarget {
    /// Public TURN address clients are sent to.
    pub turn: SocketAddr,
    /// Allocations it held when last heard from.
    pub allocations: usize,
    /// Its `max_allocations`.
    pub capacity: usize,
}

/// The targets of the last snapshot and how many clients this shard sent to each since:
/// between two snapshots the count is added to the load, so a burst of redirects spreads
/// over the nodes instead of piling onto the one that was least loaded a second ago, and
/// stops at a node's capacity.
#[derive(Debug, Default)]
pub(crate) struct Redirects {
    targets: Vec<(RedirectTarget, usize)>,
    /// Round-robin position in the static alternates.
    cursor: usize,
}

impl Redirects {
    pub(crate) fn set_targets(&mut self, targets: Vec<RedirectTarget>) {
        self.targets = targets.into_iter().map(|t| (t, 0)).collect();
    }

    pub(crate) fn targets(&self) -> impl Iterator<Item = RedirectTarget> + '_ {
        self.targets.iter().map(|(t, _)| *t)
    }

    /// The least-loaded cluster node with room (load: allocations plus the clients sent
    /// there since the snapshot, over capacity) of the client's family and other than the
    /// listener the client reached; else round-robin over `statics` likewise filtered.
    pub(crate) fn pick(
        &mut self,
        v4: bool,
        listener: SocketAddr,
        statics: &[SocketAddr],
    ) -> Option<SocketAddr> {
        let fits = |a: &SocketAddr| a.is_ipv4() == v4 && *a != listener;
        let best = self
            .targets
            .iter_mut()
            .filter(|(t, sent)| fits(&t.turn) && t.allocations + *sent < t.capacity)
            // Compare a/b < c/d as a*d < c*b, in u128 so nothing overflows.
            .min_by(|(a, sa), (b, sb)| {
                let la = (a.allocations + *sa) as u128 * b.capacity as u128;
                let lb = (b.allocations + *sb) as u128 * a.capacity as u128;
                la.cmp(&lb)
            });
        if let Some((t, sent)) = best {
            *sent += 1;
            return Some(t.turn);
        }
        let candidates: Vec<SocketAddr> = statics.iter().copied().filter(fits).collect();
        if candidates.is_empty() {
            return None;
        }
        let pick = candidates[self.cursor % candidates.len()];
        self.cursor = self.cursor.wrapping_add(1);
        Some(pick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(port: u16, allocations: usize, capacity: usize) -> RedirectTarget {
        RedirectTarget {
            turn: ([192, 0, 2, 10], port).into(),
            allocations,
            capacity,
        }
    }

    const LISTENER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(192, 0, 2, 1),
        3478,
    ));

    #[test]
    fn least_loaded_first_and_never_a_full_one() {
        let mut r = Redirects::default();
        r.set_targets(vec![t(1, 90, 100), t(2, 10, 100), t(3, 5, 5)]);
        let statics = [SocketAddr::from(([198, 51, 100, 1], 3478))];
        // Node 2 is least loaded until the clients sent there make it as loaded as node 1.
        let mut to = std::collections::HashMap::new();
        for _ in 0..80 {
            *to.entry(r.pick(true, LISTENER, &statics).unwrap().port())
                .or_insert(0) += 1;
        }
        assert_eq!(to.get(&2), Some(&80));
        for _ in 0..20 {
            r.pick(true, LISTENER, &statics).unwrap();
        }
        // Both full now (node 3 always was): the static alternate.
        assert_eq!(r.pick(true, LISTENER, &statics), Some(statics[0]));
        // A new snapshot starts the counts again.
        r.set_targets(vec![t(1, 0, 10)]);
        assert_eq!(r.pick(true, LISTENER, &statics).map(|a| a.port()), Some(1));
    }

    #[test]
    fn family_and_own_listener_are_filtered() {
        let mut r = Redirects::default();
        let own = RedirectTarget {
            turn: LISTENER,
            allocations: 0,
            capacity: 10,
        };
        r.set_targets(vec![own, t(7, 9, 10)]);
        assert_eq!(r.pick(false, LISTENER, &[]), None);
        assert_eq!(r.pick(true, LISTENER, &[]).map(|a| a.port()), Some(7));
        assert_eq!(r.pick(true, LISTENER, &[LISTENER]), None);
    }
}
