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
use crate::stun::{
    Class, ConnectionId as ConnectionIdAttr, IntegrityKind, Message, Method, TransactionId,
};

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

    /// Which of `count` cores drew this id (see [`Server::shard_connection_ids`]): a data
    /// path whose connections spread over several cores sends a ConnectionBind there.
    ///
    /// [`Server::shard_connection_ids`]: super::Server::shard_connection_ids
    pub fn shard(self, count: usize) -> usize {
        (self.0 % count.max(1) as u32) as usize
    }

    /// The CONNECTION-ID of `frame` if it is a ConnectionBind request (unauthenticated:
    /// only for routing it to the core that can check it).
    pub fn of_connection_bind(frame: &[u8]) -> Option<Self> {
        // The message type first: every connection's first frame comes here, and most
        // are not ConnectionBinds (an Allocate, a Binding) and need no parse.
        if frame.get(..2) != Some(&[0x00, 0x0B]) {
            return None;
        }
        let msg = Message::parse(frame).ok()?;
        if msg.class() != Class::Request || msg.method() != Method::CONNECTION_BIND {
            return None;
        }
        match msg.attr::<ConnectionIdAttr>()? {
            Ok(ConnectionIdAttr(c)) => Some(Self(c)),
            Err(_) => None,
        }
    }
}

/// An id of shard `index` of `count` made from the random `raw`: its multiple of `count`
/// plus `index`, so `id % count == index` and the rest of the bits stay random. `None`
/// past `u32::MAX` (the caller draws again).
fn fit(raw: u32, index: u32, count: u32) -> Option<u32> {
    (raw - raw % count).checked_add(index)
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
    /// This core's index among the cores that share client connections, and their count:
    /// its ids are `index` modulo `count` ((0, 1): any id).
    shard: (u32, u32),
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
            shard: (0, 1),
            #[cfg(test)]
            script: Vec::new(),
        }
    }

    /// Ids from now on say that they are core `index`'s of `count`.
    pub(crate) fn set_shard(&mut self, index: usize, count: usize) {
        assert!(index < count, "connection id shard {index} of {count}");
        self.shard = (index as u32, count as u32);
    }

    /// A random id of this core's shard, if the draw fits in 32 bits.
    fn draw_id(&mut self) -> Option<u32> {
        // The low half of a keyed hash output.
        let raw = self.ids.next_u64() as u32;
        #[cfg(test)]
        let raw = self.script.pop().unwrap_or(raw);
        fit(raw, self.shard.0, self.shard.1)
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
            if let Some(c) = self.draw_id().map(ConnectionId)
                && c.0 != 0
                && !self.conns.contains_key(&c)
            {
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
    fn ids_of_a_shard_say_which_core_drew_them_and_stay_random() {
        let a = AllocationId::new(1, 0);
        let mut seen = std::collections::HashSet::new();
        for (seed, (index, count)) in [(0, 1), (0, 2), (1, 2), (2, 3), (5, 6)]
            .into_iter()
            .enumerate()
        {
            let mut t = TcpRelays::new(11 + seed as u64);
            t.set_shard(index, count);
            t.add_allocation(a);
            for port in 0..64 {
                let c = t.insert(conn(a, port, None)).unwrap();
                assert_eq!(c.shard(count), index, "{c} of shard {index}/{count}");
                assert!(seen.insert(c.0), "{c} drawn twice");
            }
        }
        // A draw past u32::MAX once fitted to its shard, and one that fits to 0, are
        // drawn again.
        let mut t = TcpRelays::new(3);
        t.set_shard(2, 3);
        t.add_allocation(a);
        t.script = vec![7, 0, u32::MAX];
        assert_eq!(t.insert(conn(a, 1, None)).unwrap().0, 2);
        assert_eq!(t.insert(conn(a, 2, None)).unwrap().0, 8);
        assert_eq!(fit(u32::MAX, 2, 3), None);
        assert_eq!(fit(0, 0, 2), Some(0));
    }

    #[test]
    fn a_connection_bind_is_told_apart_by_its_connection_id() {
        use crate::stun::MessageWriter;
        let mut buf = [0u8; 128];
        let txid = TransactionId([1; 12]);
        let mut w =
            MessageWriter::new(&mut buf, Class::Request, Method::CONNECTION_BIND, txid).unwrap();
        w.attr(&ConnectionIdAttr(0x1234_5677)).unwrap();
        let len = w.finish();
        let id = ConnectionId::of_connection_bind(&buf[..len]).unwrap();
        assert_eq!((id.0, id.shard(2), id.shard(1)), (0x1234_5677, 1, 0));
        let mut w = MessageWriter::new(&mut buf, Class::Request, Method::CONNECT, txid).unwrap();
        w.attr(&ConnectionIdAttr(9)).unwrap();
        let len = w.finish();
        assert_eq!(ConnectionId::of_connection_bind(&buf[..len]), None);
        assert_eq!(ConnectionId::of_connection_bind(b"\x40\x00\x00\x00"), None);
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
