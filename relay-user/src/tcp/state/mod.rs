//! What both event loops share: the core, the client connections and the relay sockets.
//! The loops only move bytes (io_uring completions or epoll readiness) and tell this state
//! about it; it tells them back which connections have something to send, should stop or
//! resume reading, or must close, and which relay sockets to watch.
//!
//! Here: accepting (with the limits of [`super::limits`]), cutting each connection's
//! plaintext ([`super::connection::Wire`]) into STUN/ChannelData frames for the core, and
//! queueing what comes back. A client that does not read has data from its peers dropped
//! once [`HIGH_WATER`](super::stream::HIGH_WATER) bytes wait for it, as a UDP path would.
//! - `lifecycle`: accepting, closing and releasing connections;
//! - `moves`: RFC 6062 data connections moved to the worker whose core awaits them;
//! - `proxy`: the PROXY protocol header on listeners behind a load balancer;
//! - `receive`: bytes read, through TLS and framing, to the core;
//! - `relays`: the UDP relay sockets and the core's commands (through
//!   [`crate::shard::apply`]);
//! - `splice`: RFC 6062 TCP allocations, peer connections and the splice, deciding
//!   through `splice_rules` (the same decisions without sockets, unit-tested);
//! - `sweep`: timers and idle/handshake timeouts.

mod lifecycle;
mod moves;
mod proxy;
mod receive;
mod relays;
mod splice;
pub(super) mod splice_rules;
mod sweep;

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use relay_proto::server::{ConnectionId, FiveTuple, Server};
use rustls::ServerConnection;

use super::{conn::Conn, connection::Queued, limits::SharedAdmission, tls::TlsAcceptor};
pub use moves::Moves;
pub use relays::Origin;

use crate::{
    config::TcpSettings,
    shard::{
        apply::{self, DATAGRAM_MAX, Mirror},
        relays::{Change, RelaySockets},
        slab::{Key, Slab},
    },
    uring::sends::SendPool,
};

/// How often idle and handshake timeouts are checked.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long the survivor of a splice may take to send what it still holds once the other
/// side ended.
const FINISH_GRACE: Duration = Duration::from_secs(10);

/// Which table a stream socket lives in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    Client,
    /// An RFC 6062 peer connection.
    Peer,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Peer,
            Side::Peer => Side::Client,
        }
    }

    /// `client` or `peer`, whichever this side is (the loops' per-side token kinds).
    pub fn pick<T>(self, client: T, peer: T) -> T {
        match self {
            Side::Client => client,
            Side::Peer => peer,
        }
    }

    /// Why a connection on this side closes when the other end closed it.
    pub fn closed_remotely(self) -> &'static str {
        self.pick("client closed the connection", "peer closed the connection")
    }
}

/// A token for what lives outside the slabs (the wake-up, a client listener by index):
/// generation 0, never stale.
pub fn token(kind: u8, idx: u32) -> u64 {
    Key::fixed_token(kind, idx as usize)
}

/// What a non-blocking connect that has finished (its socket became writable) came to.
pub fn connect_outcome(stream: &TcpStream) -> io::Result<()> {
    match stream.take_error() {
        Ok(None) => Ok(()),
        Ok(Some(e)) | Err(e) => Err(e),
    }
}

/// The listening socket of a TCP allocation's relayed address.
pub struct RelayListener {
    pub sock: TcpListener,
    pub addr: SocketAddr,
}

pub struct StreamListener {
    pub addr: SocketAddr,
    pub plain: bool,
    pub tls: bool,
    pub sock: TcpListener,
    /// `proxy_protocol`: connections start with a PROXY header, from these networks only.
    pub proxy_from: Option<Vec<ipnet::IpNet>>,
}

/// What this shard keeps per relay socket (see [`RelaySockets`]).
#[derive(Default)]
pub struct RelayFlow {
    /// The connection stalled on this socket, if any.
    stalled: Option<Key>,
    /// Engine bookkeeping: a writability watch is armed.
    pub watching_out: bool,
}

/// What an event loop carries out next (see [`State::next_work`]).
pub enum Work {
    /// A relay socket to watch or forget (io_uring: an epoll registry queues nothing).
    Socket(Change),
    Relay(RelayChange),
    /// A connection whose sending, reading or closing state changed.
    Conn(Side, Key),
}

/// Watches for the loop to arm or end, besides the relay sockets' own.
pub enum RelayChange {
    /// A datagram waits for room in this socket: tell [`State::relay_writable`].
    WantWritable(Key),
    /// A TCP allocation's listener: accept peers with [`State::peer_accepted`].
    ListenerOpened(Key),
    /// Gone from the table: the loop stops accepting on it, then drops it.
    ListenerClosed(Key, TcpListener),
}

/// The shard's own counters, shared with the admin endpoint (atomics: the loop bumps,
/// a scrape reads, neither waits).
#[derive(Default, Debug)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub refused_total: AtomicU64,
    pub refused_per_source: AtomicU64,
    /// Connections to a `proxy_protocol` listener from outside its `proxy_from`.
    pub refused_proxy_source: AtomicU64,
    /// Connections whose PROXY header was bad, or claimed a client already connected.
    pub refused_proxy_header: AtomicU64,
    pub dropped_backpressure: AtomicU64,
    pub peer_send_errors: AtomicU64,
    pub stalls: AtomicU64,
    pub peer_connect_errors: AtomicU64,
    /// RFC 6062 data connections this worker handed to the worker holding their peer
    /// connection (see `moves`).
    pub moved_out: AtomicU64,
    /// Client connections open now (gauge).
    pub held: AtomicU64,
}

/// Adds one and returns the new total.
fn bump(c: &AtomicU64) -> u64 {
    c.fetch_add(1, Ordering::Relaxed) + 1
}

pub struct State {
    pub server: Server,
    mirror: Mirror,
    pub settings: TcpSettings,
    tls: Option<TlsAcceptor>,
    pub listeners: Vec<StreamListener>,
    pub conns: Slab<Conn>,
    by_tuple: HashMap<(SocketAddr, SocketAddr), Key>,
    /// Client connections counted against `tcp.max_connections` and per source (see
    /// [`Conn::counted`]), together with the other workers.
    admission: SharedAdmission,
    /// Refusals of senders outside `proxy_from`, for the log.
    proxy_refused: proxy::RefusedSources,
    pub relays: RelaySockets<RelayFlow>,
    /// RFC 6062 peer connections.
    pub peers: Slab<Conn>,
    /// Peer connections the core still knows: an entry leaves on `CloseConnection` (or
    /// when we report the connection closed), so each id is reported at most once.
    peer_by_conn: HashMap<ConnectionId, Key>,
    pub relay_listeners: Slab<RelayListener>,
    listener_by_addr: HashMap<SocketAddr, Key>,
    out: Box<[u8]>,
    scratch: Box<[u8]>,
    /// Connections whose sending, reading or closing state changed since the loop last
    /// looked (each once: see `IoState::touched`).
    touched: Vec<(Side, Key)>,
    relay_changes: VecDeque<RelayChange>,
    next_sweep: Instant,
    sweep_keys: Vec<Key>,
    pub stats: Arc<Stats>,
    /// `stats` values when the last warnings were logged.
    warned: (u64, u64, u64),
    /// Bytes a connection's socket side may still deliver after reading it paused, on
    /// top of `RX_LIMIT` before it counts as overrun (see [`Wire::overrun`]): 0 on epoll
    /// (it reads only when told to), the provided-buffer ring on io_uring.
    ///
    /// [`Wire::overrun`]: super::connection::Wire::overrun
    pub rx_in_flight: usize,
    /// Cleared when a new process took the client listeners over (upgrade): the loop
    /// stops accepting on them and serves the connections it has until they end.
    pub listening: Arc<AtomicBool>,
    /// io_uring: datagrams to peers wait here for the loop's next submission (see
    /// [`SendPool`]); epoll sends each at once.
    pub peer_sends: Option<SendPool<Origin>>,
    /// With several workers: where RFC 6062 data connections for other workers' cores go,
    /// and where theirs for this one arrive.
    moves: Option<Moves>,
}

impl State {
    pub fn new(
        mut server: Server,
        mirror: Mirror,
        settings: TcpSettings,
        tls: Option<TlsAcceptor>,
        listeners: Vec<StreamListener>,
        admission: SharedAdmission,
        now: Instant,
    ) -> Self {
        // Both loops carry out the RFC 6062 commands (see `apply_commands`); whether TCP
        // allocations are offered is `[tcp] relay_tcp`, in the core's config.
        server.enable_tcp_relays(true);
        Self {
            server,
            mirror,
            settings,
            tls,
            listeners,
            conns: Slab::default(),
            by_tuple: HashMap::new(),
            admission,
            proxy_refused: proxy::refused_sources(),
            relays: RelaySockets::default(),
            peers: Slab::default(),
            peer_by_conn: HashMap::new(),
            relay_listeners: Slab::default(),
            listener_by_addr: HashMap::new(),
            out: vec![0; apply::OUT_BYTES].into_boxed_slice(),
            scratch: vec![0; DATAGRAM_MAX].into_boxed_slice(),
            touched: Vec::new(),
            relay_changes: VecDeque::new(),
            next_sweep: now + SWEEP_EVERY,
            sweep_keys: Vec::new(),
            stats: Arc::default(),
            warned: (0, 0, 0),
            rx_in_flight: 0,
            listening: Arc::new(AtomicBool::new(true)),
            peer_sends: None,
            moves: None,
        }
    }

    /// This is one of several workers: its core draws CONNECTION-IDs of its own, and
    /// ConnectionBinds for the others' move there.
    pub fn set_moves(&mut self, moves: Moves, workers: usize) {
        self.server.shard_connection_ids(moves.index(), workers);
        self.moves = Some(moves);
    }

    pub fn table(&self, side: Side) -> &Slab<Conn> {
        match side {
            Side::Client => &self.conns,
            Side::Peer => &self.peers,
        }
    }

    pub fn table_mut(&mut self, side: Side) -> &mut Slab<Conn> {
        match side {
            Side::Client => &mut self.conns,
            Side::Peer => &mut self.peers,
        }
    }

    /// The loops' to-do list after a round: relay sockets opened and closed, then the
    /// other relay changes, each in the order they were made, then the touched
    /// connections one at a time (looking at one may add relay changes, which again come
    /// first). `None`: nothing left.
    pub fn next_work(&mut self) -> Option<Work> {
        if let Some(change) = self.relays.next_change() {
            return Some(Work::Socket(change));
        }
        if let Some(change) = self.relay_changes.pop_front() {
            return Some(Work::Relay(change));
        }
        let (side, id) = self.touched.pop()?;
        Some(Work::Conn(side, id))
    }

    /// Puts client connection `id` on the list the loop looks at after this round.
    pub fn touch(&mut self, id: Key) {
        self.touch_on(Side::Client, id);
    }

    pub fn touch_on(&mut self, side: Side, id: Key) {
        if let Some(c) = self.table_mut(side).get_mut(id)
            && !c.io.touched
        {
            c.io.touched = true;
            self.touched.push((side, id));
        }
    }

    /// Appends a frame to `id`'s send queue (see [`Wire::queue`]).
    fn queue(&mut self, id: Key, bytes: &[u8], droppable: bool) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.closing.is_some() {
            return;
        }
        match c.wire.queue(bytes, droppable) {
            Queued::Yes => self.touch(id),
            Queued::Dropped => {
                bump(&self.stats.dropped_backpressure);
            }
            Queued::Failed(why) => self.close(id, why),
        }
    }

    /// Sends `message` (from the core) on the control connection `client`, if still here.
    fn send_to_client(&mut self, client: &FiveTuple, message: &[u8]) {
        if let Some(&id) = self.by_tuple.get(&(client.client, client.listener)) {
            self.queue(id, message, false);
        }
    }

    /// Hairpin or peer data for a stream client of this shard.
    fn deliver(&mut self, to: &FiveTuple, bytes: &[u8]) {
        if !to.transport.is_stream() {
            return; // UDP clients belong to the UDP shards
        }
        if let Some(&id) = self.by_tuple.get(&(to.client, to.listener)) {
            self.queue(id, bytes, true);
        }
    }

    /// `n` bytes of `id`'s queue went out: below the low-water mark, whoever waited for
    /// room (itself, or its splice partner) reads again.
    pub fn sent_on(&mut self, side: Side, id: Key, n: usize, now: Instant) {
        let Some(c) = self.table_mut(side).get_mut(id) else {
            return;
        };
        let resumed = c.wire.sent(n);
        if splice_rules::drained(c.finish_by, c.wire.tx.is_empty()) {
            return self.close_on(side, id, "sent what was left after the other side closed");
        }
        if resumed {
            let link = c.link;
            self.touch_on(side, id);
            match link {
                Some(other) => {
                    let other_side = side.other();
                    if let Some(o) = self.table_mut(other_side).get_mut(other) {
                        o.partner_full = false;
                        self.touch_on(other_side, other);
                    }
                    if other_side == Side::Client {
                        self.process_rx(other, now);
                    }
                }
                None if side == Side::Client => self.process_rx(id, now),
                None => {}
            }
        }
    }

    /// Relay sockets follow the core's commands; events become log lines.
    pub fn apply_commands(&mut self, now: Instant) {
        apply::apply(self, now, None);
    }
}

/// A new TLS session, if this shard serves TLS.
fn tls_session(acceptor: Option<&TlsAcceptor>) -> Option<Box<ServerConnection>> {
    match ServerConnection::new(acceptor?.config()) {
        Ok(s) => Some(Box::new(s)),
        Err(e) => {
            tracing::error!(error = %e, "cannot start a TLS session; check [tls]");
            None
        }
    }
}

/// Sends what is queued with one non-blocking `send`, unless the loop has a send in
/// flight; for the last words before a close.
fn send_now(c: &mut Conn) {
    use std::os::fd::AsRawFd;
    if c.io.send_inflight {
        return;
    }
    let fd = c.stream.as_raw_fd();
    let buf = c.wire.tx.peek();
    if buf.is_empty() {
        return;
    }
    // SAFETY: send(2) from a live buffer on our socket; it does not block.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n > 0 {
        c.wire.tx.advance(n as usize);
    }
}

/// IPv4-mapped IPv6 addresses as plain IPv4, so limits and logs see one client once.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}
