//! Operator-facing events (log lines, metrics) and drop counters.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::AuthError;
use crate::policy::DenyReason;
use crate::stun::Method;

use super::allocation::{AllocationId, Counters};
use super::five_tuple::FiveTuple;
use super::tcp_relay::{ConnectionEnd, ConnectionId, Direction};

/// Why an allocation ended other than by expiry or a Refresh with LIFETIME 0.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CloseReason {
    /// The TCP/TLS connection it was made on closed.
    ClientClosed,
    /// The data path could not bind its relay address.
    RelayUnavailable,
    /// An operator ended it (the admin endpoint's `DELETE /api/allocations/{id}`).
    Disconnected,
}

/// The capacity limit that refused a new allocation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CapacityLimit {
    /// `max_allocations` (all shards together) reached: 508, or 300 to an alternate.
    Relay { max_allocations: usize },
    /// The user's `max_allocations_per_user` reached: 486.
    User { max_allocations_per_user: usize },
    /// The TURN REST username's `max_allocations_per_rest_user` reached: 486.
    RestUser {
        max_allocations_per_rest_user: usize,
    },
    /// `max_allocations_per_source` TURN REST allocations from `source` (the client's IPv4
    /// address, or the first address of its IPv6 /64): 486.
    Source {
        source: IpAddr,
        max_allocations_per_source: usize,
    },
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    AllocationCreated {
        id: AllocationId,
        user: Arc<str>,
        client: FiveTuple,
        /// Public relayed addresses (IPv4 first), one or two.
        relayed: Vec<SocketAddr>,
        lifetime: Duration,
    },
    AllocationRefreshed {
        id: AllocationId,
        user: Arc<str>,
        client: FiveTuple,
        lifetime: Duration,
    },
    AllocationExpired {
        id: AllocationId,
        user: Arc<str>,
        client: FiveTuple,
        counters: Counters,
    },
    /// Refresh with LIFETIME 0.
    AllocationDeleted {
        id: AllocationId,
        user: Arc<str>,
        client: FiveTuple,
        counters: Counters,
    },
    AllocationClosed {
        id: AllocationId,
        user: Arc<str>,
        client: FiveTuple,
        reason: CloseReason,
        counters: Counters,
    },
    /// A request carried credentials that did not verify (401/438 other than a plain
    /// challenge or a stale nonce).
    AuthFailed {
        user: Option<String>,
        client: FiveTuple,
        method: Method,
        reason: AuthError,
    },
    /// CreatePermission/ChannelBind for a peer the policy refuses (403).
    PeerDenied {
        user: Arc<str>,
        client: FiveTuple,
        peer: SocketAddr,
        reason: DenyReason,
    },
    /// Any other error response (after authentication, or 400/420 before it).
    RequestRejected {
        client: FiveTuple,
        method: Method,
        code: u16,
    },
    /// An Allocate hit a capacity limit (the 486/508/300 itself also comes as
    /// `RequestRejected` or `Redirected`).
    CapacityReached {
        user: Arc<str>,
        client: FiveTuple,
        limit: CapacityLimit,
    },
    /// A new allocation was refused and the client sent to `alternate` (300).
    Redirected {
        client: FiveTuple,
        alternate: SocketAddr,
    },
    /// RFC 6062: peer TCP connection `conn` of allocation `id` (control connection `client`)
    /// is spliced to the client data connection `data`.
    PeerConnectionBound {
        id: AllocationId,
        user: Arc<str>,
        client: FiveTuple,
        data: FiveTuple,
        peer: SocketAddr,
        conn: ConnectionId,
        direction: Direction,
    },
    /// RFC 6062: peer TCP connection `conn` ended, bound or not.
    PeerConnectionClosed {
        id: AllocationId,
        user: Arc<str>,
        client: FiveTuple,
        peer: SocketAddr,
        conn: ConnectionId,
        reason: ConnectionEnd,
    },
}

/// Why a packet was dropped without a reply.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DropReason {
    /// Neither STUN nor ChannelData, or a malformed STUN message that is not a request.
    Malformed,
    /// No allocation on this 5-tuple / relay address.
    NoAllocation,
    /// No (unexpired) permission for the peer IP.
    NoPermission,
    /// ChannelData on a channel that is not bound.
    NoChannel,
    /// Send indication without XOR-PEER-ADDRESS or DATA.
    MissingAttribute,
    /// An indication with unknown comprehension-required attributes (RFC 8489 §6.3).
    UnknownAttribute,
    /// The peer's family has no relayed address in this allocation.
    WrongFamily,
    /// A response, or an indication of a method the server does not take.
    Unexpected,
    /// `out` could not hold the reply.
    BufferTooSmall,
    /// Data for the relay's own address on a port outside the relay range (a service on
    /// the relay host itself) whose address the operator did not allow-list.
    RelayHostPort,
    /// A Send indication or ChannelData to a port of a permitted peer that the peer policy
    /// does not allow this allocation (permissions are per IP, `allow` entries may name
    /// ports).
    PeerPortDenied,
    /// A peer's TCP connection to a relayed address refused: the allocation holds
    /// [`MAX_CONNECTIONS_PER_ALLOCATION`](super::MAX_CONNECTIONS_PER_ALLOCATION) already.
    ConnectionLimit,
    /// A request on a 5-tuple without an allocation, beyond its source's
    /// `unauthenticated_rate`.
    UnauthenticatedRate,
    /// An unauthenticated request whose answer would be more than 4 times its size (an
    /// amplification vector); usually a request too small to be a real one.
    Amplification,
    /// A packet from source port 0, which no real client uses (and sending to it fails).
    SourcePortZero,
    /// Data over the allocation's `max_bps_per_allocation` or its user's
    /// `max_bps_per_user`.
    BandwidthLimit,
}

impl DropReason {
    pub const ALL: [DropReason; 16] = [
        DropReason::Malformed,
        DropReason::NoAllocation,
        DropReason::NoPermission,
        DropReason::NoChannel,
        DropReason::MissingAttribute,
        DropReason::UnknownAttribute,
        DropReason::WrongFamily,
        DropReason::Unexpected,
        DropReason::BufferTooSmall,
        DropReason::RelayHostPort,
        DropReason::PeerPortDenied,
        DropReason::ConnectionLimit,
        DropReason::UnauthenticatedRate,
        DropReason::Amplification,
        DropReason::SourcePortZero,
        DropReason::BandwidthLimit,
    ];

    const fn idx(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoAllocation => "no_allocation",
            DropReason::NoPermission => "no_permission",
            DropReason::NoChannel => "no_channel",
            DropReason::MissingAttribute => "missing_attribute",
            DropReason::UnknownAttribute => "unknown_attribute",
            DropReason::WrongFamily => "wrong_family",
            DropReason::Unexpected => "unexpected",
            DropReason::BufferTooSmall => "buffer_too_small",
            DropReason::RelayHostPort => "relay_host_port",
            DropReason::PeerPortDenied => "peer_port_denied",
            DropReason::ConnectionLimit => "connection_limit",
            DropReason::UnauthenticatedRate => "unauthenticated_rate",
            DropReason::Amplification => "amplification",
            DropReason::SourcePortZero => "source_port_zero",
            DropReason::BandwidthLimit => "bandwidth_limit",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Packets dropped, per reason (a counter rather than an event per packet, so a flood cannot
/// fill the event queue).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DropCounters([u64; DropReason::ALL.len()]);

impl DropCounters {
    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r.idx()]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.0[r.idx()]))
    }
    pub(crate) fn bump(&mut self, r: DropReason) {
        self.0[r.idx()] += 1;
    }
}

/// The most events kept when the caller does not drain them; older ones are discarded.
pub const MAX_QUEUED_EVENTS: usize = 65536;

#[derive(Debug, Default)]
pub(crate) struct EventQueue {
    q: VecDeque<Event>,
    pub lost: u64,
}

impl EventQueue {
    pub(crate) fn push(&mut self, e: Event) {
        if self.q.len() >= MAX_QUEUED_EVENTS {
            self.q.pop_front();
            self.lost += 1;
        }
        self.q.push_back(e);
    }
    pub(crate) fn pop(&mut self) -> Option<Event> {
        self.q.pop_front()
    }
}
