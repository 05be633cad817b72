//! RFC 6062 state: which allocations relay TCP, their peer connections and those
//! connections' deadlines. The handlers are in `handle_tcp_relay.rs`.
//!
//! A peer connection goes Connecting (Connect sent, the data path is dialling) → Pending
//! (established, waiting for the client's ConnectionBind) → Bound (spliced to a client data
//! connection), or starts Pending when a peer connected to the relayed address. It has its
//! own deadline heap, lazily pruned like the server's: an entry whose connection is gone or
//! whose deadline moved is a no-op when it comes due, and entries live at most
//! [`CONNECT_TIMEOUT`] or [`BIND_TIMEOUT`], so stale ones cannot pile up.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Key;
use crate::stun::{IntegrityKind, TransactionId};

use super::allocation::AllocationId;
use super::five_tuple::FiveTuple;
use super::ports::Rng;

/// RFC 6062 §5.2: a connect attempt to a peer is given at least 30 s before 447.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// RFC 6062 §5.2, §5.3: a peer connection not bound by a ConnectionBind within 30 s is closed.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// Peer connections (connecting, pending or bound) one allocation may hold: each is a socket
/// on the data path. Beyond it a Connect gets 508 and a peer's connection is refused.
pub const MAX_CONNECTIONS_PER_ALLOCATION: usize = 128;

/// Names one peer TCP connection of a TCP allocation (the CONNECTION-ID value). Unique among
/// the live connections of a [`Server`](super::Server), never 0, and drawn at random: a
/// ConnectionBind only checks the username, so a client sharing it (static credentials of a
/// deployment) must not be able to guess another client's pending connection.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ConnectionId(pub(crate) u32);

impl ConnectionId {
    /// The CONNECTION-ID value, for logs and the data path's tables.
    pub const fn as_u32(self) -> u32 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

// Defined beside the peer policy, whose rules name it; servers' code reaches it here.
pub use crate::policy::RelayProtocol;

/// Who opened a peer connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Direction {
    /// The relay, on the client's Connect request.
    Outgoing,
    /// The peer, to the relayed address (announced with a ConnectionAttempt indication).
    Incoming,
}

/// Why a peer TCP connection ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConnectionEnd {
    /// The data path could not connect (its error); the client got 447.
    ConnectFailed(io::ErrorKind),
    /// The connect attempt took longer than [`CONNECT_TIMEOUT`]; the client got 447.
    ConnectTimeout,
    /// No ConnectionBind within [`BIND_TIMEOUT`].
    BindTimeout,
    /// The data path reported the peer or the client data connection closed.
    Closed,
    /// Its allocation ended (expired, deleted, control connection closed, relay lost).
    AllocationEnded,
    /// A reloaded peer policy refuses the peer now.
    PeerDenied,
}

impl fmt::Display for ConnectionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionEnd::ConnectFailed(kind) => write!(f, "connect failed: {kind}"),
            ConnectionEnd::ConnectTimeout => f.write_str("connect timed out"),
            ConnectionEnd::BindTimeout => f.write_str("no ConnectionBind in time"),
            ConnectionEnd::Closed => f.write_str("closed"),
            ConnectionEnd::AllocationEnded => f.write_str("allocation ended"),
            ConnectionEnd::PeerDenied => f.write_str("peer denied by policy"),
        }
    }
}

/// What the deferred Connect response needs: the request's transaction and credentials.
pub(crate) struct DeferredConnect {
    pub txid: TransactionId,
    pub username: Arc<str>,
    pub key: Key,
    pub kind: IntegrityKind,
}

pub(crate) enum ConnState {
    Connecting(Box<DeferredConnect>),
    Pending,
    Bound(FiveTuple),
}

pub(crate) struct PeerConnection {
    pub allocation: AllocationId,
    /// The peer as the client knows it (XOR-PEER-ADDRESS).
    pub peer: SocketAddr,
    pub direction: Direction,
    pub state: ConnState,
    /// When the current state times out (`None` once bound).
    pub deadline: Option<Instant>,
}

pub(crate) struct TcpRelays {
    /// The data path carries TCP relays (see `Server::enable_tcp_relays`).
    pub enabled: bool,
    /// TCP allocations and their connections, oldest first.
    allocations: HashMap<AllocationId, Vec<ConnectionId>>,
    conns: HashMap<ConnectionId, PeerConnection>,
    /// Bound connections by their client data connection.
    by_data: HashMap<FiveTuple, ConnectionId>,
    deadlines: BinaryHeap<Reverse<(Instant, ConnectionId)>>,
    /// Where CONNECTION-IDs come from (keyed: seen ids do not tell the next ones).
    ids: Rng,
    /// Tests: ids drawn before the generator's, last first.
    #[cfg(test)]
    script: Vec<u32>,
}

impl TcpRelays {
    /// `seed`: this server's CONNECTION-ID generator (see [`Shared::draw_seed`]).
    ///
    /// [`Shared::draw_seed`]: super::Shared
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            enabled: false,
            allocations: HashMap::new(),
            conns: HashMap::new(),
            by_data: HashMap::new(),
            deadlines: BinaryHeap::new(),
            ids: Rng::new(seed),
            #[cfg(test)]
            script: Vec::new(),
        }
    }

    fn draw_id(&mut self) -> u32 {
        #[cfg(test)]
        if let Some(id) = self.script.pop() {
            return id;
        }
        // The low half of a keyed hash output.
        self.ids.next_u64() as u32
    }

    pub(crate) fn add_allocation(&mut self, id: AllocationId) {
        self.allocations.insert(id, Vec::new());
    }

    pub(crate) fn is_tcp(&self, id: AllocationId) -> bool {
        self.allocations.contains_key(&id)
    }

    /// Forgets a TCP allocation; returns its connections, which the caller closes.
    pub(crate) fn remove_allocation(
        &mut self,
        id: AllocationId,
    ) -> Vec<(ConnectionId, PeerConnection)> {
        let ids = self.allocations.remove(&id).unwrap_or_default();
        ids.into_iter()
            .filter_map(|c| self.forget(c).map(|pc| (c, pc)))
            .collect()
    }

    /// Connections of allocation `id`, oldest first.
    pub(crate) fn connections_of(&self, id: AllocationId) -> &[ConnectionId] {
        self.allocations.get(&id).map_or(&[], Vec::as_slice)
    }

    /// The live connection of allocation `id` to `peer`, in any state.
    pub(crate) fn find(&self, id: AllocationId, peer: SocketAddr) -> Option<ConnectionId> {
        self.connections_of(id)
            .iter()
            .copied()
            .find(|c| self.conns.get(c).is_some_and(|pc| pc.peer == peer))
    }

    /// Records a new connection of a TCP allocation and its first deadline. `None` if the
    /// allocation is not (or no longer) a TCP one.
    pub(crate) fn insert(&mut self, conn: PeerConnection) -> Option<ConnectionId> {
        if !self.allocations.contains_key(&conn.allocation) {
            return None;
        }
        // Random, never 0 (some clients treat 0 as "absent"), never an id still in use
        // (at most MAX_CONNECTIONS_PER_ALLOCATION per allocation: a retry is rare).
        let id = loop {
            let c = ConnectionId(self.draw_id());
            if c.0 != 0 && !self.conns.contains_key(&c) {
                break c;
            }
        };
        self.allocations
            .get_mut(&conn.allocation)
            .expect("checked above")
            .push(id);
        if let Some(at) = conn.deadline {
            self.deadlines.push(Reverse((at, id)));
        }
        self.conns.insert(id, conn);
        Some(id)
    }

    pub(crate) fn get(&self, id: ConnectionId) -> Option<&PeerConnection> {
        self.conns.get(&id)
    }

    /// Moves `id` to a new state with a new deadline; returns the state it left.
    pub(crate) fn set_state(
        &mut self,
        id: ConnectionId,
        state: ConnState,
        deadline: Option<Instant>,
    ) -> Option<ConnState> {
        let pc = self.conns.get_mut(&id)?;
        if let ConnState::Bound(data) = &state {
            self.by_data.insert(*data, id);
        }
        let old = std::mem::replace(&mut pc.state, state);
        pc.deadline = deadline;
        if let Some(at) = deadline {
            self.deadlines.push(Reverse((at, id)));
        }
        Some(old)
    }

    /// The bound connection whose client data connection is `data`.
    pub(crate) fn by_data(&self, data: &FiveTuple) -> Option<ConnectionId> {
        self.by_data.get(data).copied()
    }

    /// `true` if `from` is a spliced client data connection (free when there are none).
    pub(crate) fn is_data_connection(&self, from: &FiveTuple) -> bool {
        !self.by_data.is_empty() && self.by_data.contains_key(from)
    }

    /// Removes a connection from every index.
    pub(crate) fn forget(&mut self, id: ConnectionId) -> Option<PeerConnection> {
        let pc = self.conns.remove(&id)?;
        if let Some(list) = self.allocations.get_mut(&pc.allocation) {
            list.retain(|c| *c != id);
        }
        if let ConnState::Bound(data) = &pc.state {
            self.by_data.remove(data);
        }
        Some(pc)
    }

    /// Earliest deadline (possibly a stale one: a harmless early wake-up).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// A connection whose current deadline has passed at `now`; stale entries are skipped.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<ConnectionId> {
        while let Some(&Reverse((at, id))) = self.deadlines.peek() {
            if at > now {
                return None;
            }
            self.deadlines.pop();
            let due = self
                .conns
                .get(&id)
                .and_then(|pc| pc.deadline)
                .is_some_and(|d| d <= now);
            if due {
                return Some(id);
            }
        }
        None
    }

    /// Peer connections held, all allocations together.
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::five_tuple::Transport;

    fn conn(allocation: AllocationId, peer_port: u16, deadline: Option<Instant>) -> PeerConnection {
        PeerConnection {
            allocation,
            peer: ([198, 51, 100, 1], peer_port).into(),
            direction: Direction::Incoming,
            state: ConnState::Pending,
            deadline,
        }
    }

    #[test]
    fn ids_skip_zero_and_live_ones_and_indexes_follow_removal() {
        let t0 = Instant::now();
        let a = AllocationId::new(1, 0);
        let mut t = TcpRelays::new(7);
        assert!(t.insert(conn(a, 1, None)).is_none(), "not a TCP allocation");
        t.add_allocation(a);
        let c1 = t.insert(conn(a, 1, Some(t0))).unwrap();
        // A generator replaying c1's id, then 0, then a fresh one: both are skipped.
        let fresh = Rng::new(8).next_u64() as u32;
        t.script = vec![fresh, 0, c1.0];
        let c2 = t.insert(conn(a, 2, None)).unwrap();
        assert_eq!(c2.0, fresh, "skips the live id and 0");
        let c3 = t.insert(conn(a, 3, None)).unwrap();
        assert!(![0, c1.0, c2.0].contains(&c3.0));
        assert_eq!(t.find(a, ([198, 51, 100, 1], 2).into()), Some(c2));

        let data = FiveTuple::new(
            ([192, 0, 2, 100], 5).into(),
            ([192, 0, 2, 1], 3478).into(),
            Transport::Tcp,
        );
        t.set_state(c2, ConnState::Bound(data), None);
        assert_eq!(t.by_data(&data), Some(c2));
        assert!(t.forget(c2).is_some());
        assert_eq!(t.by_data(&data), None);
        assert_eq!(t.connections_of(a), &[c1, c3]);

        let gone = t.remove_allocation(a);
        assert_eq!(gone.len(), 2);
        assert_eq!(t.len(), 0);
        assert!(!t.is_tcp(a));
    }

    #[test]
    fn stale_deadlines_are_skipped() {
        let t0 = Instant::now();
        let a = AllocationId::new(1, 0);
        let mut t = TcpRelays::new(1);
        t.add_allocation(a);
        let c = t.insert(conn(a, 1, Some(t0 + BIND_TIMEOUT))).unwrap();
        let gone = t.insert(conn(a, 2, Some(t0 + BIND_TIMEOUT))).unwrap();
        t.forget(gone);
        // Moved later: the first entry is stale.
        t.set_state(c, ConnState::Pending, Some(t0 + BIND_TIMEOUT * 2));
        assert_eq!(t.next_deadline(), Some(t0 + BIND_TIMEOUT));
        assert_eq!(t.pop_due(t0 + BIND_TIMEOUT), None);
        assert_eq!(t.pop_due(t0 + BIND_TIMEOUT * 2), Some(c));
        assert_eq!(t.next_deadline(), None);
    }
}
