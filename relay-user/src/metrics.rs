//! Counters fed by the core's events (one atomic add per event, by the shard whose core
//! emitted it: the shard's command applier holds them, handed over at startup, no global) and
//! by traffic of allocations that have ended. Everything else the metrics show is
//! read from the shards' cores and the XDP maps when `/metrics` is scraped, so the packet
//! paths pay nothing for it.

use std::sync::atomic::{AtomicU64, Ordering};

use relay_common::AllocCounters;
use relay_proto::{
    auth::AuthError,
    server::{CapacityLimit, CloseReason, Counters, Event, FiveTuple, Transport},
};

/// Why allocations ended, as the `reason` label of `relay_allocations_ended_total`.
pub const END_REASONS: [&str; 5] = [
    "expired",
    "deleted",
    "client_closed",
    "relay_unavailable",
    "disconnected",
];

/// Why authentication failed, as the `reason` label of `relay_auth_failures_total`.
pub const AUTH_REASONS: [&str; 8] = [
    "missing_credentials",
    "unknown_user",
    "bad_integrity",
    "stale_nonce",
    "invalid_nonce",
    "expired_credential",
    "unsupported_algorithm",
    "malformed_username",
];

/// Which quota refused an allocation, as the `limit` label of
/// `relay_allocations_refused_total` (`[limits]` key without `max_allocations_`).
pub const REFUSAL_LIMITS: [&str; 4] = ["relay", "per_user", "per_rest_user", "per_source"];

fn refusal_index(l: CapacityLimit) -> usize {
    match l {
        CapacityLimit::Relay { .. } => 0,
        CapacityLimit::User { .. } => 1,
        CapacityLimit::RestUser { .. } => 2,
        CapacityLimit::Source { .. } => 3,
    }
}

fn auth_reason_index(e: AuthError) -> usize {
    match e {
        AuthError::MissingCredentials => 0,
        AuthError::UnknownUser => 1,
        AuthError::BadIntegrity => 2,
        AuthError::StaleNonce => 3,
        AuthError::InvalidNonce => 4,
        AuthError::ExpiredCredential { .. } => 5,
        AuthError::UnsupportedAlgorithm => 6,
        AuthError::MalformedUsername => 7,
    }
}

/// The data paths of `relay_packets_total` / `relay_bytes_total`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Path {
    /// Forwarded by the kernel program.
    Xdp,
    /// The userspace UDP loop (clients over UDP, whatever the kernel passed up).
    Udp,
    /// The TCP/TLS loop.
    Tcp,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Xdp, Path::Udp, Path::Tcp];

    pub const fn as_str(self) -> &'static str {
        match self {
            Path::Xdp => "xdp",
            Path::Udp => "udp",
            Path::Tcp => "tcp",
        }
    }

    /// The userspace path that serves a client on `transport`.
    pub const fn of(transport: Transport) -> Path {
        match transport {
            Transport::Udp => Path::Udp,
            Transport::Tcp | Transport::Tls => Path::Tcp,
        }
    }

    const fn idx(self) -> usize {
        self as usize
    }
}

pub use relay_admin_api::Traffic;

#[derive(Default, Debug)]
struct AtomicTraffic([AtomicU64; 4]);

impl AtomicTraffic {
    fn add(&self, t: Traffic) {
        let v = [
            t.to_peer_packets,
            t.to_peer_bytes,
            t.to_client_packets,
            t.to_client_bytes,
        ];
        for (a, v) in self.0.iter().zip(v) {
            a.fetch_add(v, Ordering::Relaxed);
        }
    }

    fn get(&self) -> Traffic {
        let [a, b, c, d] = &self.0;
        Traffic {
            to_peer_packets: a.load(Ordering::Relaxed),
            to_peer_bytes: b.load(Ordering::Relaxed),
            to_client_packets: c.load(Ordering::Relaxed),
            to_client_bytes: d.load(Ordering::Relaxed),
        }
    }
}

/// The relay's event counters: one set, shared (`Arc`) by every shard that feeds it and
/// the admin endpoint that reads it; atomics, so neither waits for the other.
#[derive(Default, Debug)]
pub struct EventCounters {
    created: AtomicU64,
    ended: [AtomicU64; END_REASONS.len()],
    redirected: AtomicU64,
    auth_failures: [AtomicU64; AUTH_REASONS.len()],
    peers_denied: AtomicU64,
    /// Allocations refused by a quota, per [`REFUSAL_LIMITS`].
    refused: [AtomicU64; REFUSAL_LIMITS.len()],
    /// Traffic of allocations that have ended, per path: live ones are read from the
    /// cores and maps at scrape time, so the totals never go back.
    retired: [AtomicTraffic; Path::ALL.len()],
}

impl EventCounters {
    /// Feeds one core event into the counters.
    pub fn observe(&self, event: &Event) {
        observe(self, event)
    }

    /// What the kernel relayed for an allocation that ended (its counter slot's last
    /// values, read before the map entries went by the shard's command applier), so the XDP
    /// totals keep the traffic of ended allocations.
    pub fn kernel_allocation_retired(&self, c: AllocCounters) {
        self.retired[Path::Xdp.idx()].add(c.into());
    }
}

fn observe(c: &EventCounters, event: &Event) {
    let end = |i: usize, client: &FiveTuple, counters: &Counters| {
        c.ended[i].fetch_add(1, Ordering::Relaxed);
        c.retired[Path::of(client.transport).idx()].add((*counters).into());
    };
    match event {
        Event::AllocationCreated { .. } => {
            c.created.fetch_add(1, Ordering::Relaxed);
        }
        Event::AllocationExpired {
            client, counters, ..
        } => end(0, client, counters),
        Event::AllocationDeleted {
            client, counters, ..
        } => end(1, client, counters),
        Event::AllocationClosed {
            client,
            counters,
            reason,
            ..
        } => {
            let i = match reason {
                CloseReason::ClientClosed => 2,
                CloseReason::RelayUnavailable => 3,
                CloseReason::Disconnected => 4,
            };
            end(i, client, counters);
        }
        Event::AuthFailed { reason, .. } => {
            c.auth_failures[auth_reason_index(*reason)].fetch_add(1, Ordering::Relaxed);
        }
        Event::PeerDenied { .. } => {
            c.peers_denied.fetch_add(1, Ordering::Relaxed);
        }
        Event::Redirected { .. } => {
            c.redirected.fetch_add(1, Ordering::Relaxed);
        }
        Event::CapacityReached { limit, .. } => {
            c.refused[refusal_index(*limit)].fetch_add(1, Ordering::Relaxed);
        }
        // Refreshes, other rejections (counted per code by the core) and events
        // without a counter of their own.
        _ => {}
    }
}

impl EventCounters {
    pub fn allocations_created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// `(reason, count)` in [`END_REASONS`] order.
    pub fn allocations_ended(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        END_REASONS
            .iter()
            .zip(&self.ended)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
    }

    pub fn redirected(&self) -> u64 {
        self.redirected.load(Ordering::Relaxed)
    }

    /// `(reason, count)` in [`AUTH_REASONS`] order.
    pub fn auth_failures(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        AUTH_REASONS
            .iter()
            .zip(&self.auth_failures)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
    }

    /// `(limit, count)` in [`REFUSAL_LIMITS`] order.
    pub fn refused(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        REFUSAL_LIMITS
            .iter()
            .zip(&self.refused)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
    }

    pub fn peers_denied(&self) -> u64 {
        self.peers_denied.load(Ordering::Relaxed)
    }

    /// Traffic of ended allocations on `path`.
    pub fn retired(&self, path: Path) -> Traffic {
        self.retired[path.idx()].get()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use relay_proto::stun::Method;

    use super::*;

    #[test]
    fn events_move_their_counters() {
        let c = &EventCounters::default();
        let bad = |c: &EventCounters| c.auth_failures().find(|(r, _)| *r == "bad_integrity");
        let (redirected, bad0) = (c.redirected(), bad(c).unwrap().1);
        let client = FiveTuple {
            client: SocketAddr::from(([203, 0, 113, 10], 40000)),
            listener: SocketAddr::from(([192, 0, 2, 50], 3478)),
            transport: Transport::Tls,
        };
        c.observe(&Event::Redirected {
            client,
            alternate: SocketAddr::from(([203, 0, 113, 60], 3478)),
        });
        c.observe(&Event::AuthFailed {
            user: Some("alice".into()),
            client,
            method: Method::ALLOCATE,
            reason: AuthError::BadIntegrity,
        });
        assert_eq!(
            (c.redirected(), bad(c).unwrap().1),
            (redirected + 1, bad0 + 1)
        );

        let refused = |c: &EventCounters| c.refused().find(|(l, _)| *l == "per_source").unwrap().1;
        let before = refused(c);
        c.observe(&Event::CapacityReached {
            user: "1700000000:b1".into(),
            client,
            limit: CapacityLimit::Source {
                source: client.client.ip(),
                max_allocations_per_source: 1000,
            },
        });
        assert_eq!(refused(c), before + 1);
    }

    #[test]
    fn kernel_traffic_of_ended_allocations_is_kept() {
        let c = EventCounters::default();
        c.kernel_allocation_retired(AllocCounters {
            to_peer_packets: 3,
            to_peer_bytes: 300,
            to_client_packets: 2,
            to_client_bytes: 200,
        });
        let after = c.retired(Path::Xdp);
        assert_eq!((after.to_peer_packets, after.to_client_bytes), (3, 200));
        assert_eq!(c.retired(Path::Udp), Traffic::ZERO);
    }

    #[test]
    fn label_tables_match_their_enums() {
        assert_eq!(
            AUTH_REASONS[auth_reason_index(AuthError::MalformedUsername)],
            "malformed_username"
        );
        assert_eq!(
            AUTH_REASONS[auth_reason_index(AuthError::ExpiredCredential { expired_at: 1 })],
            "expired_credential"
        );
        assert_eq!(Path::of(Transport::Tls), Path::Tcp);
        assert_eq!(Path::ALL.map(Path::as_str), ["xdp", "udp", "tcp"]);
    }
}
