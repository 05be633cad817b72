//! The allocation state as one process hands it to the next (`relay upgrade`): a versioned
//! JSON document, so that a newer build can load what an older one wrote and an operator
//! can read it.
//!
//! Deadlines are durations from the `now` of the snapshot (`remaining_ms`): an `Instant`
//! means nothing in another process, and the unix clock may step while the handover runs.
//! The new process adds them to its own `now` on restore.
//!
//! What is not carried, and why: the cached last response of each allocation (a
//! retransmitted request is answered anew, which Refresh, CreatePermission and ChannelBind
//! allow), allocations on TCP/TLS client connections (the connection stays with the old
//! process, and so does its allocation), drop counters and events (they were exported
//! already), the port generator (the new one is seeded afresh; ports in use are taken out of
//! its pools).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::Server;
use super::allocation::{Allocation, Channel, Counters, Family, Permission, Relayed};
use super::command::Command;
use super::five_tuple::{FiveTuple, Transport};
use super::shared::{Limits, Owner, Reservation, Shared};
use super::tcp_relay::RelayProtocol;
use crate::auth::{CredentialKind, NonceKey};

/// The format this build writes. It loads this one and every older one listed in
/// [`Snapshot::from_json`].
pub const SNAPSHOT_VERSION: u32 = 1;

/// Everything one relay process hands over: one [`ShardSnapshot`] per data-path shard, the
/// state the shards share, the nonce key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// The nonce key in base64: nonces issued before the handover stay valid after it.
    pub nonce_key: String,
    pub shared: SharedSnapshot,
    pub shards: Vec<ShardSnapshot>,
}

/// The relay-wide part: quotas in force (a SIGHUP may have changed them), EVEN-PORT
/// reservations and quarantined ports.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SharedSnapshot {
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    pub max_allocations_per_rest_user: usize,
    pub max_allocations_per_source: usize,
    pub reservations: Vec<ReservationSnapshot>,
    pub quarantined: Vec<QuarantineSnapshot>,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReservationSnapshot {
    /// The RESERVATION-TOKEN, 16 hex digits.
    pub token: String,
    /// The reserved port, on the relay address of the family of `family`.
    pub family: FamilyName,
    pub port: u16,
    pub remaining_ms: u64,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct QuarantineSnapshot {
    pub family: FamilyName,
    pub port: u16,
    pub remaining_ms: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FamilyName {
    Ipv4,
    Ipv6,
}

/// One shard's allocations.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ShardSnapshot {
    pub allocations: Vec<AllocationSnapshot>,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AllocationSnapshot {
    pub client: SocketAddr,
    /// Which of our listener addresses the client reached.
    pub listener: SocketAddr,
    pub transport: TransportName,
    pub user: String,
    pub credential: CredentialName,
    /// One entry per relayed address (two for a dual-stack allocation).
    pub relayed: Vec<RelayedSnapshot>,
    /// How long it has existed.
    pub age_ms: u64,
    pub remaining_ms: u64,
    /// The lifetime granted by the last Allocate or Refresh.
    pub lifetime_secs: u64,
    pub permissions: Vec<PermissionSnapshot>,
    pub channels: Vec<ChannelSnapshot>,
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    /// Datagrams dropped over a bandwidth limit. Added within format 1: absent means 0,
    /// and 0 is left out, so earlier snapshots load and read the same.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bandwidth_dropped: u64,
    pub dont_fragment: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RelayedSnapshot {
    pub bind: SocketAddr,
    pub public: SocketAddr,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PermissionSnapshot {
    pub peer: IpAddr,
    pub remaining_ms: u64,
    /// The policy allows every port of `peer` (the kernel path may take its Sends).
    pub any_port: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ChannelSnapshot {
    pub number: u16,
    pub peer: SocketAddr,
    /// Bound: until the binding expires. Cooling: until number and peer are free again.
    pub remaining_ms: u64,
    pub cooling: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportName {
    Udp,
    Tcp,
    Tls,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialName {
    Static,
    Rest,
}

/// Why a snapshot was not restored. The old process keeps serving then.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error(
        "snapshot format {found} is newer than this build reads ({supported}); upgrade to a build that reads it, or restart instead"
    )]
    Version { found: u32, supported: u32 },
    #[error("the snapshot is not valid JSON of its format: {0}")]
    Syntax(String),
    #[error("the snapshot's nonce key is not 32 bytes of base64")]
    NonceKey,
    #[error("reservation token `{0}` is not 16 hex digits")]
    Token(String),
    #[error(
        "{0} port {1} of the snapshot is outside this relay's `ports` range, taken twice, or of a family without a relay address here"
    )]
    Port(&'static str, u16),
    #[error("allocation of {0} appears twice in the snapshot")]
    DuplicateClient(FiveTuple),
    #[error("allocation of {0} is on a TCP/TLS connection, which stays with the old process")]
    StreamClient(FiveTuple),
    #[error("allocation of {0} has no relayed address")]
    NoRelayed(FiveTuple),
    #[error("the snapshot has {found} shards, this relay runs {running}")]
    Shards { found: usize, running: usize },
}

impl Snapshot {
    pub fn new(nonce_key: &NonceKey, shared: SharedSnapshot, shards: Vec<ShardSnapshot>) -> Self {
        Self {
            version: SNAPSHOT_VERSION,
            nonce_key: STANDARD.encode(nonce_key.bytes()),
            shared,
            shards,
        }
    }

    pub fn to_json(&self) -> String {
        // Plain data (strings, numbers, addresses): serialising it cannot fail.
        serde_json::to_string(self).expect("a snapshot serialises")
    }

    /// Reads format 1 (the only one so far). A later format adds its reader here, and the
    /// golden file of the previous one stays under test.
    pub fn from_json(json: &str) -> Result<Self, RestoreError> {
        #[derive(Deserialize)]
        struct Head {
            version: u32,
        }
        let head: Head =
            serde_json::from_str(json).map_err(|e| RestoreError::Syntax(e.to_string()))?;
        if head.version > SNAPSHOT_VERSION {
            return Err(RestoreError::Version {
                found: head.version,
                supported: SNAPSHOT_VERSION,
            });
        }
        serde_json::from_str(json).map_err(|e| RestoreError::Syntax(e.to_string()))
    }

    pub fn nonce_key(&self) -> Result<NonceKey, RestoreError> {
        let bytes = STANDARD
            .decode(&self.nonce_key)
            .map_err(|_| RestoreError::NonceKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| RestoreError::NonceKey)?;
        Ok(NonceKey::new(key))
    }

    /// Allocations in all shards.
    pub fn allocation_count(&self) -> usize {
        self.shards.iter().map(|s| s.allocations.len()).sum()
    }
}

fn remaining(now: Instant, at: Instant) -> u64 {
    millis(at.saturating_duration_since(now))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// No deadline of a relay lies further ahead (lifetimes are capped at an hour by default,
/// cool-downs and quarantines are minutes); a snapshot claiming more is clamped, so a
/// broken or hostile one cannot overflow the clock.
const MAX_REMAINING: Duration = Duration::from_secs(7 * 24 * 3600);

fn after(now: Instant, ms: u64) -> Instant {
    now + Duration::from_millis(ms).min(MAX_REMAINING)
}

fn family_name(f: Family) -> FamilyName {
    match f {
        Family::V4 => FamilyName::Ipv4,
        Family::V6 => FamilyName::Ipv6,
    }
}

fn family_of(f: FamilyName) -> Family {
    match f {
        FamilyName::Ipv4 => Family::V4,
        FamilyName::Ipv6 => Family::V6,
    }
}

fn family_label(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

impl Shared {
    /// Quotas, reservations and quarantines at `now`.
    pub fn snapshot(&self, now: Instant) -> SharedSnapshot {
        let limits = self.limits();
        let (reservations, quarantined) = self.held_ports();
        SharedSnapshot {
            max_allocations: limits.max_allocations,
            max_allocations_per_user: limits.max_allocations_per_user,
            max_allocations_per_rest_user: limits.max_allocations_per_rest_user,
            max_allocations_per_source: limits.max_allocations_per_source,
            reservations: reservations
                .into_iter()
                .map(|(token, r)| ReservationSnapshot {
                    token: format!("{:016x}", u64::from_be_bytes(token)),
                    family: family_name(r.family),
                    port: r.port,
                    remaining_ms: remaining(now, r.expires),
                })
                .collect(),
            quarantined: quarantined
                .into_iter()
                .map(|(family, port, until)| QuarantineSnapshot {
                    family: family_name(family),
                    port,
                    remaining_ms: remaining(now, until),
                })
                .collect(),
        }
    }

    /// Takes over the quotas, reservations and quarantines of `snap`, before any shard
    /// restores its allocations. On an error, what was restored before it stays: the caller
    /// drops this state and keeps the old process serving.
    pub fn restore(&self, now: Instant, snap: &SharedSnapshot) -> Result<(), RestoreError> {
        self.set_limits(Limits {
            max_allocations: snap.max_allocations,
            max_allocations_per_user: snap.max_allocations_per_user,
            max_allocations_per_rest_user: snap.max_allocations_per_rest_user,
            max_allocations_per_source: snap.max_allocations_per_source,
        });
        for r in &snap.reservations {
            let token = u64::from_str_radix(&r.token, 16)
                .ok()
                .filter(|_| r.token.len() == 16)
                .ok_or_else(|| RestoreError::Token(r.token.clone()))?
                .to_be_bytes();
            let family = family_of(r.family);
            let reservation = Reservation {
                family,
                port: r.port,
                expires: after(now, r.remaining_ms),
            };
            if !self.restore_reservation(token, reservation) {
                return Err(RestoreError::Port(family_label(family), r.port));
            }
        }
        for q in &snap.quarantined {
            let family = family_of(q.family);
            if !self.restore_quarantine(family, q.port, after(now, q.remaining_ms)) {
                return Err(RestoreError::Port(family_label(family), q.port));
            }
        }
        Ok(())
    }
}

impl Server {
    /// This shard's allocations at `now`, for the next process. Allocations on TCP/TLS
    /// client connections are left out: the connection, and with it the allocation, stays
    /// with this process until it ends.
    pub fn snapshot(&self, now: Instant) -> ShardSnapshot {
        let allocations = self
            .table
            .iter()
            .filter(|a| !a.client.transport.is_stream())
            .map(|a| allocation_snapshot(a, now))
            .collect();
        ShardSnapshot { allocations }
    }

    /// Takes over the allocations of `snap` (after [`Shared::restore`]): they count against
    /// the shared ports and quotas, their timers run from `now`, and the commands that
    /// install them in the data paths (relay sockets, kernel map entries) come out of
    /// [`poll_command`](Self::poll_command) as for new ones. Returns how many it restored.
    /// On an error, the allocations restored before it stay: the caller drops this server.
    pub fn restore(&mut self, now: Instant, snap: &ShardSnapshot) -> Result<usize, RestoreError> {
        for s in &snap.allocations {
            let a = self.allocation_from(now, s)?;
            let owner = Owner {
                user: &a.user,
                credential: a.credential,
                client: a.client.client.ip(),
            };
            self.shared
                .adopt(owner, &a.relayed)
                .map_err(|(family, port)| RestoreError::Port(family_label(family), port))?;
            let id = self.table.insert(a);
            self.announce_restored(id);
        }
        self.compact_timers();
        Ok(snap.allocations.len())
    }

    /// A table entry for `s`, with the id the table gives next; checks what the table and
    /// the pools cannot.
    fn allocation_from(
        &self,
        now: Instant,
        s: &AllocationSnapshot,
    ) -> Result<Allocation, RestoreError> {
        let transport = match s.transport {
            TransportName::Udp => Transport::Udp,
            TransportName::Tcp => Transport::Tcp,
            TransportName::Tls => Transport::Tls,
        };
        let client = FiveTuple::new(s.client, s.listener, transport);
        if transport.is_stream() {
            return Err(RestoreError::StreamClient(client));
        }
        if self.table.id_by_tuple(&client).is_some() {
            return Err(RestoreError::DuplicateClient(client));
        }
        let mut relayed: [Option<Relayed>; 2] = [None, None];
        for r in &s.relayed {
            let family = Family::of(r.bind.ip());
            if relayed[family.idx()].is_some() || !self.config.ports.contains(&r.bind.port()) {
                return Err(RestoreError::Port(family_label(family), r.bind.port()));
            }
            relayed[family.idx()] = Some(Relayed {
                bind: r.bind,
                public: r.public,
            });
        }
        if relayed.iter().all(Option::is_none) {
            return Err(RestoreError::NoRelayed(client));
        }
        Ok(Allocation {
            id: self.table.next_id(),
            client,
            user: Arc::from(s.user.as_str()),
            credential: match s.credential {
                CredentialName::Static => CredentialKind::Static,
                CredentialName::Rest => CredentialKind::Rest,
            },
            relayed,
            created: now
                .checked_sub(Duration::from_millis(s.age_ms))
                .unwrap_or(now),
            expires: after(now, s.remaining_ms),
            lifetime: Duration::from_secs(s.lifetime_secs),
            permissions: s
                .permissions
                .iter()
                .map(|p| Permission {
                    ip: p.peer,
                    expires: after(now, p.remaining_ms),
                    any_port: p.any_port,
                })
                .collect(),
            channels: s
                .channels
                .iter()
                .map(|c| Channel {
                    number: c.number,
                    peer: c.peer,
                    expires: after(now, c.remaining_ms),
                    cooling: c.cooling,
                })
                .collect(),
            counters: Counters {
                to_peer_packets: s.to_peer_packets,
                to_peer_bytes: s.to_peer_bytes,
                to_client_packets: s.to_client_packets,
                to_client_bytes: s.to_client_bytes,
                bandwidth_dropped: s.bandwidth_dropped,
            },
            // The buckets start full: a handover pauses the data for tens of milliseconds.
            limit: self
                .shared
                .bandwidth()
                .for_allocation(&Arc::from(s.user.as_str())),
            dont_fragment: s.dont_fragment,
            last_response: None,
        })
    }

    /// The commands a new allocation with these permissions and channels would have
    /// produced: the data paths of the new process learn it the same way.
    fn announce_restored(&mut self, id: super::AllocationId) {
        let Some(a) = self.table.get(id) else { return };
        for r in a.relayed.iter().flatten() {
            self.commands.push_back(Command::AllocationCreated {
                id,
                client: a.client,
                relay: r.bind,
                public: r.public,
                user: a.user.clone(),
                protocol: RelayProtocol::Udp,
            });
        }
        for p in &a.permissions {
            if let Some(r) = a.relayed(Family::of(p.ip)) {
                self.commands.push_back(Command::PermissionCreated {
                    id,
                    client: a.client,
                    relay: r.bind,
                    peer: p.ip,
                    any_port: p.any_port,
                });
            }
        }
        for c in a.channels.iter().filter(|c| !c.cooling) {
            if let Some(r) = a.relayed(Family::of(c.peer.ip())) {
                self.commands.push_back(Command::ChannelBound {
                    id,
                    client: a.client,
                    relay: r.bind,
                    peer: c.peer,
                    channel: c.number,
                });
            }
        }
    }
}

fn allocation_snapshot(a: &Allocation, now: Instant) -> AllocationSnapshot {
    AllocationSnapshot {
        client: a.client.client,
        listener: a.client.listener,
        transport: match a.client.transport {
            Transport::Udp => TransportName::Udp,
            Transport::Tcp => TransportName::Tcp,
            Transport::Tls => TransportName::Tls,
        },
        user: a.user.to_string(),
        credential: match a.credential {
            CredentialKind::Static => CredentialName::Static,
            CredentialKind::Rest => CredentialName::Rest,
        },
        relayed: a
            .relayed
            .iter()
            .flatten()
            .map(|r| RelayedSnapshot {
                bind: r.bind,
                public: r.public,
            })
            .collect(),
        age_ms: millis(now.saturating_duration_since(a.created)),
        remaining_ms: remaining(now, a.expires),
        lifetime_secs: a.lifetime.as_secs(),
        permissions: a
            .permissions
            .iter()
            .map(|p| PermissionSnapshot {
                peer: p.ip,
                remaining_ms: remaining(now, p.expires),
                any_port: p.any_port,
            })
            .collect(),
        channels: a
            .channels
            .iter()
            .map(|c| ChannelSnapshot {
                number: c.number,
                peer: c.peer,
                remaining_ms: remaining(now, c.expires),
                cooling: c.cooling,
            })
            .collect(),
        to_peer_packets: a.counters.to_peer_packets,
        to_peer_bytes: a.counters.to_peer_bytes,
        to_client_packets: a.counters.to_client_packets,
        to_client_bytes: a.counters.to_client_bytes,
        bandwidth_dropped: a.counters.bandwidth_dropped,
        dont_fragment: a.dont_fragment,
    }
}
