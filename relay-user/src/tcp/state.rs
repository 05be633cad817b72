//! What both event loops share: the core, the client connections and the relay sockets,
//! and everything that happens between bytes arriving and bytes leaving. The loops only
//! move bytes (io_uring completions or epoll readiness) and tell this state about it; it
//! tells them back which connections have something to send, should stop or resume
//! reading, or must close, and which relay sockets to watch.
//!
//! Relay sockets are UDP sockets on the same relay address and port range as the UDP
//! path's; datagrams to peers leave with a non-blocking `sendto` right away. When one is
//! refused (socket buffer full), it is kept and its client connection stops reading until
//! the socket drains, so a slow peer side slows the TCP client down instead of losing data.
//! The other way, a client that does not read has data from its peers dropped once
//! [`HIGH_WATER`](super::stream::HIGH_WATER) bytes wait for it, as a UDP path would.
//!
//! RFC 6062 TCP allocations: a listening TCP socket per relayed address (`relay_listeners`)
//! and peer connections (`peers`, the same [`Conn`] as clients, in their own table). A
//! peer connection is not read until the core splices it to a client data connection;
//! from then on bytes go both ways unchanged, and each side stops reading while the
//! other's send queue is above [`HIGH_WATER`](super::stream::HIGH_WATER) (no loss: TCP pushes back on the sender).

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use relay_proto::{
    server::{ClientOutput, ConnectionId, FiveTuple, PeerOutput, RelayProtocol, Server, Transport},
    stun::frame_len,
};
use rustls::ServerConnection;
use socket2::{Domain, Protocol, Socket, Type};

use super::{
    conn::{Conn, Stall},
    connection::{Mode, Queued},
    limits::{Activity, Admission, Refusal, idle_verdict},
    slab::{Key, Slab},
    tls::TlsAcceptor,
};
use crate::{
    config::TcpSettings,
    shard::{
        Kernel,
        apply::{self, DATAGRAM_MAX, Edge, Mirror},
    },
    udp::bind_udp,
};

/// How often idle and handshake timeouts are checked.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Datagrams taken from one relay socket per readiness event (fairness).
const PEER_BATCH: usize = 64;
/// Pending peer connections per TCP relayed address.
const RELAY_BACKLOG: i32 = 128;
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
    Key { idx, generation: 0 }.token(kind)
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
}

pub struct Relay {
    pub sock: UdpSocket,
    pub addr: SocketAddr,
    /// The connection stalled on this socket, if any.
    stalled: Option<Key>,
    /// Engine bookkeeping: a writability watch is armed.
    pub watching_out: bool,
}

/// What an event loop carries out next (see [`State::next_work`]).
pub enum Work {
    Relay(RelayChange),
    /// A connection whose sending, reading or closing state changed.
    Conn(Side, Key),
}

/// Relay socket changes for the loop to register or unregister.
pub enum RelayChange {
    Opened(Key),
    /// Gone from the table; the loop unregisters it, then drops the socket.
    Closed(Key, UdpSocket),
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
    pub dropped_backpressure: AtomicU64,
    pub peer_send_errors: AtomicU64,
    pub stalls: AtomicU64,
    pub peer_connect_errors: AtomicU64,
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
    /// [`Conn::counted`]).
    admission: Admission,
    pub relays: Slab<Relay>,
    relay_by_addr: HashMap<SocketAddr, Key>,
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
}

impl State {
    pub fn new(
        mut server: Server,
        kernel: Kernel,
        settings: TcpSettings,
        tls: Option<TlsAcceptor>,
        listeners: Vec<StreamListener>,
        now: Instant,
    ) -> Self {
        // Both loops carry out the RFC 6062 commands (see `apply_commands`); whether TCP
        // allocations are offered is `[tcp] relay_tcp`, in the core's config.
        server.enable_tcp_relays(true);
        let admission = Admission::new(
            settings.max_connections,
            settings.max_connections_per_source,
        );
        Self {
            server,
            mirror: Mirror::new(kernel),
            settings,
            tls,
            listeners,
            conns: Slab::default(),
            by_tuple: HashMap::new(),
            admission,
            relays: Slab::default(),
            relay_by_addr: HashMap::new(),
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
        }
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

    /// The loops' to-do list after a round: relay socket changes first, in the order they
    /// were made, then the touched connections one at a time (looking at one may add
    /// relay changes, which again come first). `None`: nothing left.
    pub fn next_work(&mut self) -> Option<Work> {
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

    // ----- connections ------------------------------------------------------------------

    /// A connection accepted on listener `l`. `None` if it was refused (limits) and
    /// closed; the reason is counted and logged.
    pub fn accept(&mut self, l: usize, stream: TcpStream, now: Instant) -> Option<Key> {
        let Ok(peer) = stream.peer_addr() else {
            return None; // reset before we looked
        };
        let peer = canonical(peer);
        let (listener, plain, tls) = {
            let l = &self.listeners[l];
            (l.addr, l.plain, l.tls)
        };
        match self.admission.admit(peer.ip()) {
            Ok(()) => {}
            Err(Refusal::Total { held }) => {
                let refused = bump(&self.stats.refused_total);
                if refused.is_power_of_two() {
                    tracing::warn!(client = %peer, %listener, held, refused,
                        "TCP connection refused: the relay holds tcp.max_connections already (raise it, and the open-files limit)");
                }
                return None;
            }
            Err(Refusal::PerSource { source, held }) => {
                let refused = bump(&self.stats.refused_per_source);
                if refused.is_power_of_two() {
                    tracing::warn!(client = %peer, %source, %listener, held, refused,
                        "TCP connection refused: this source (an IPv4 address or an IPv6 /64) holds tcp.max_connections_per_source already \
                         (abuse, or many clients behind one NAT: then raise the limit)");
                }
                return None;
            }
        }
        let _ = stream.set_nodelay(true);
        let mode = match (plain, tls) {
            (true, true) => Mode::Detect,
            (true, false) => Mode::Plain,
            (false, _) => match tls_session(self.tls.as_ref()) {
                Some(s) => Mode::Tls(s),
                None => {
                    self.admission.release(peer.ip());
                    return None;
                }
            },
        };
        let transport = if matches!(mode, Mode::Tls(_)) {
            Transport::Tls
        } else {
            Transport::Tcp
        };
        let five = FiveTuple::new(peer, listener, transport);
        let mut conn = Conn::new(stream, five, mode, now);
        conn.counted = true;
        let id = self.conns.insert(conn);
        self.stats
            .held
            .store(self.conns.len() as u64, Ordering::Relaxed);
        self.by_tuple.insert((peer, listener), id);
        bump(&self.stats.accepted);
        tracing::debug!(client = %five, "TCP connection accepted");
        Some(id)
    }

    /// The loop shut connection `id` down: the client sees the close now, so its source
    /// may connect again at once, though the socket is forgotten only when nothing is in
    /// flight any more.
    pub fn shut_on(&mut self, side: Side, id: Key) {
        if side == Side::Client
            && let Some(c) = self.conns.get_mut(id)
            && c.counted
        {
            c.counted = false;
            let ip = c.five.client.ip();
            self.admission.release(ip);
        }
    }

    /// Starts closing client connection `id` (once); the loop shuts the socket and calls
    /// [`release`](Self::release) when nothing is in flight.
    pub fn close(&mut self, id: Key, reason: impl Into<String>) {
        self.close_on(Side::Client, id, reason);
    }

    pub fn close_on(&mut self, side: Side, id: Key, reason: impl Into<String>) {
        if let Some(c) = self.table_mut(side).get_mut(id)
            && c.closing.is_none()
        {
            c.closing = Some(reason.into());
            self.touch_on(side, id);
        }
    }

    /// Closes `id` once what it has queued is sent (bounded by [`FINISH_GRACE`]).
    fn finish(&mut self, side: Side, id: Key, reason: &str, now: Instant) {
        let Some(c) = self.table_mut(side).get_mut(id) else {
            return;
        };
        if c.wire.tx.is_empty() || c.closing.is_some() {
            return self.close_on(side, id, reason);
        }
        if c.finish_by.is_none() {
            c.finish_by = Some(now + FINISH_GRACE);
            self.touch_on(side, id);
        }
    }

    /// Forgets a closed socket. A client connection: its allocation ends (RFC 8656: it
    /// is bound to the 5-tuple), its relay sockets close; a data connection takes its
    /// peer connection with it. A peer connection: the core hears of it (unless it asked
    /// for the close).
    pub fn release_on(&mut self, side: Side, id: Key, now: Instant) {
        match side {
            Side::Client => self.release(id, now),
            Side::Peer => {
                let Some(c) = self.peers.remove(id) else {
                    return;
                };
                let reason = c.closing.as_deref().unwrap_or("closed");
                tracing::debug!(peer = %c.five.client, relay = %c.five.listener, reason, "TCP peer connection closed");
                if let Some(conn) = c.relay_conn
                    && self.peer_by_conn.get(&conn) == Some(&id)
                {
                    self.peer_by_conn.remove(&conn);
                    if c.connecting {
                        self.server.peer_connected(
                            now,
                            conn,
                            Err(io::ErrorKind::ConnectionAborted),
                        );
                    } else {
                        self.server.connection_closed(now, conn);
                    }
                }
                if let Some(d) = c.link {
                    self.finish(Side::Client, d, "peer connection closed", now);
                }
                self.apply_commands(now);
            }
        }
    }

    /// Forgets a closed client connection (see [`release_on`](Self::release_on)).
    pub fn release(&mut self, id: Key, now: Instant) {
        let Some(c) = self.conns.remove(id) else {
            return;
        };
        self.stats
            .held
            .store(self.conns.len() as u64, Ordering::Relaxed);
        if self.by_tuple.get(&(c.five.client, c.five.listener)) == Some(&id) {
            self.by_tuple.remove(&(c.five.client, c.five.listener));
        }
        if c.counted {
            self.admission.release(c.five.client.ip());
        }
        if let Some(s) = &c.stall
            && let Some(r) = self.relays.get_mut(s.relay)
        {
            r.stalled = None;
        }
        tracing::debug!(client = %c.five, reason = c.closing.as_deref().unwrap_or("closed"), "TCP connection closed");
        if let Some(p) = c.link {
            self.finish(Side::Peer, p, "client data connection closed", now);
        }
        self.server.client_closed(now, c.five);
        self.apply_commands(now);
    }

    /// Bytes read from socket `id` of `side`.
    pub fn received_on(&mut self, side: Side, id: Key, data: &[u8], now: Instant) {
        match side {
            Side::Client => self.received(id, data, now),
            Side::Peer => {
                let Some(c) = self.peers.get(id) else { return };
                if c.closing.is_some() || data.is_empty() {
                    return;
                }
                match c.link {
                    Some(d) => self.forward(Side::Peer, id, d, data),
                    None => self.close_on(Side::Peer, id, "read before being spliced"),
                }
            }
        }
    }

    /// Spliced bytes from `from` (of `side`) to its partner `to`, as they are (a TLS data
    /// connection's partner gets plaintext; a peer's bytes are encrypted for the client).
    /// Reading `from` pauses while `to`'s queue is above the high-water mark.
    fn forward(&mut self, side: Side, from: Key, to: Key, bytes: &[u8]) {
        let full = match side {
            Side::Peer => {
                self.queue(to, bytes, false);
                match self.conns.get(to) {
                    Some(c) => c.wire.tx_full,
                    None => return,
                }
            }
            Side::Client => {
                let Some(p) = self.peers.get_mut(to) else {
                    return;
                };
                if p.closing.is_some() {
                    return;
                }
                // Spliced bytes are never dropped: reading pauses instead.
                p.wire.queue(bytes, false);
                let full = p.wire.tx_full;
                self.touch_on(Side::Peer, to);
                full
            }
        };
        if full && let Some(c) = self.table_mut(side).get_mut(from) {
            c.partner_full = true;
            self.touch_on(side, from);
        }
    }

    /// Bytes read from connection `id` (`data` may be a shared receive buffer: what is
    /// not consumed now is copied).
    pub fn received(&mut self, id: Key, data: &[u8], now: Instant) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.closing.is_some() || data.is_empty() {
            return;
        }
        if matches!(c.wire.mode, Mode::Detect) {
            let listener = c.five.listener;
            let tls_ok = self.listeners.iter().any(|l| l.addr == listener && l.tls);
            let tls = &self.tls;
            let c = self.conns.get_mut(id).expect("checked above");
            if let Err(why) = c.wire.detect(data[0], tls_ok, || tls_session(tls.as_ref())) {
                return self.close(id, why);
            }
            if c.wire.is_tls() {
                c.five.transport = Transport::Tls;
            }
        }
        let c = self.conns.get_mut(id).expect("checked above");
        match (&c.wire.mode, c.link) {
            (Mode::Tls(_), _) => self.tls_received(id, data, now),
            (_, Some(p)) => self.forward(Side::Client, id, p, data),
            _ => {
                if c.wire.rx.is_empty() && c.may_process() {
                    // The common case: frames straight from the receive buffer.
                    let used = self.frames(id, data, now);
                    if let Some(c) = self.conns.get_mut(id)
                        && c.closing.is_none()
                    {
                        c.wire.rx.extend_from_slice(&data[used..]);
                    }
                } else {
                    c.wire.rx.extend_from_slice(data);
                    self.process_rx(id, now);
                }
            }
        }
        self.check_rx_limit(id);
    }

    fn check_rx_limit(&mut self, id: Key) {
        if self.conns.get(id).is_some_and(|c| c.wire.overrun()) {
            self.close(
                id,
                "client sent more than 256 KiB beyond what the relay could take (not reading its responses?)",
            );
        }
    }

    /// Ciphertext in, plaintext into `rx`, handshake records out.
    fn tls_received(&mut self, id: Key, data: &[u8], now: Instant) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let done = c.wire.decrypt(data);
        if !c.wire.tx.is_empty() {
            self.touch(id);
        }
        if let Some(why) = done.failure {
            // The alert goes out before the close, so the client reports why (a closed
            // socket alone reads as "unexpected EOF").
            if let Some(c) = self.conns.get_mut(id) {
                send_now(c);
                if done.handshaking {
                    tracing::info!(client = %c.five, reason = %why, "TLS handshake failed");
                }
            }
            return self.close(id, why);
        }
        self.process_rx(id, now);
        if done.peer_closed {
            self.close(id, "client sent TLS close_notify");
        }
    }

    /// Processes whole frames waiting in `rx` (after a pause, or TLS plaintext).
    fn process_rx(&mut self, id: Key, now: Instant) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.wire.rx.is_empty() || !c.may_process() {
            return;
        }
        let mut rx = std::mem::take(&mut c.wire.rx);
        if let Some(p) = c.link {
            // Spliced (TLS plaintext): no frames any more.
            self.forward(Side::Client, id, p, &rx);
            rx.clear();
            if let Some(c) = self.conns.get_mut(id) {
                c.wire.rx = rx;
            }
            return;
        }
        let used = self.frames(id, &rx, now);
        match self.conns.get_mut(id) {
            Some(c) => {
                let mut rx = rx;
                rx.drain(..used);
                // Bytes may have been added meanwhile only if the connection closed.
                c.wire.rx = rx;
            }
            None => drop(rx),
        }
    }

    /// Handles the whole frames at the start of `buf` until it runs out, the connection
    /// pauses or closes; returns the bytes consumed.
    fn frames(&mut self, id: Key, buf: &[u8], now: Instant) -> usize {
        let mut at = 0;
        loop {
            match self.conns.get(id) {
                Some(c) if c.may_process() => {}
                _ => return at,
            }
            match frame_len(&buf[at..]) {
                Ok(Some(n)) => {
                    self.frame(id, &buf[at..at + n], now);
                    at += n;
                    // A ConnectionBind spliced it: the rest is the peer's (RFC 6062 §5.4).
                    if let Some(p) = self.conns.get(id).and_then(|c| c.link) {
                        if at < buf.len() {
                            self.forward(Side::Client, id, p, &buf[at..]);
                        }
                        return buf.len();
                    }
                }
                Ok(None) => return at,
                Err(e) => {
                    let client = self.conns.get(id).map(|c| c.five);
                    if let Some(client) = client {
                        tracing::info!(%client, error = %e, "closing TCP connection: not STUN or ChannelData framing");
                    }
                    self.close(id, format!("stream framing: {e}"));
                    return at;
                }
            }
        }
    }

    fn frame(&mut self, id: Key, frame: &[u8], now: Instant) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        c.last_frame = Some(now);
        let five = c.five;
        let mut out = std::mem::take(&mut self.out);
        let mut output = self.server.handle_client(now, five, frame, &mut out);
        // A reply may announce an allocation: its relay socket must exist before the
        // response leaves. If the port cannot be bound the core voids that allocation and
        // answers again itself (another port, or 508, queued already): this reply is void.
        if matches!(output, ClientOutput::Reply { .. }) && apply::apply(self, now, Some(&five)) {
            output = ClientOutput::Nothing;
        }
        // Only a request whose integrity verified keeps a connection without an
        // allocation open (see `limits::idle_verdict`).
        if self.server.last_request_authenticated()
            && let Some(c) = self.conns.get_mut(id)
        {
            c.last_authenticated = Some(now);
        }
        match output {
            ClientOutput::Nothing => {}
            ClientOutput::Reply { len } => self.queue(id, &out[..len], false),
            ClientOutput::ToPeer {
                relay,
                peer,
                payload,
            } => self.send_to_peer(id, relay, peer, payload),
            ClientOutput::ToClient { to, len } => self.deliver(&to, &out[..len]),
        }
        self.out = out;
        // An Allocate's relay socket must exist before the next frame uses it.
        self.apply_commands(now);
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

    fn send_to_peer(&mut self, id: Key, relay: SocketAddr, peer: SocketAddr, payload: &[u8]) {
        let Some(&rk) = self.relay_by_addr.get(&relay) else {
            return;
        };
        let Some(r) = self.relays.get_mut(rk) else {
            return;
        };
        match r.sock.send_to(payload, peer) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                r.stalled = Some(id);
                bump(&self.stats.stalls);
                if let Some(c) = self.conns.get_mut(id) {
                    c.stall_buf.clear();
                    c.stall_buf.extend_from_slice(payload);
                    c.stall = Some(Stall { relay: rk, peer });
                }
                self.relay_changes.push_back(RelayChange::WantWritable(rk));
                self.touch(id);
            }
            Err(e) => {
                let total = bump(&self.stats.peer_send_errors);
                if total > self.warned.0 && total.is_power_of_two() {
                    self.warned.0 = total;
                    tracing::warn!(%relay, %peer, error = %e, total,
                        "sending to a peer failed (no route, or refused by the host's firewall)");
                }
            }
        }
    }

    /// The relay socket `rk` has room again: the stalled datagram goes, and its client
    /// connection resumes.
    pub fn relay_writable(&mut self, rk: Key, now: Instant) {
        let Some(r) = self.relays.get_mut(rk) else {
            return;
        };
        let Some(id) = r.stalled else { return };
        let Some(c) = self.conns.get_mut(id) else {
            r.stalled = None;
            return;
        };
        let Some(stall) = &c.stall else {
            r.stalled = None;
            return;
        };
        match r.sock.send_to(&c.stall_buf, stall.peer) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.relay_changes.push_back(RelayChange::WantWritable(rk));
                return;
            }
            // Sent, or failed for good (counted like any other send error).
            Ok(_) => {}
            Err(_) => {
                bump(&self.stats.peer_send_errors);
            }
        }
        r.stalled = None;
        c.stall = None;
        self.touch(id);
        self.process_rx(id, now);
    }

    /// `n` bytes of `id`'s queue went out: below the low-water mark, whoever waited for
    /// room (itself, or its splice partner) reads again.
    pub fn sent_on(&mut self, side: Side, id: Key, n: usize, now: Instant) {
        let Some(c) = self.table_mut(side).get_mut(id) else {
            return;
        };
        let resumed = c.wire.sent(n);
        if c.finish_by.is_some() && c.wire.tx.is_empty() {
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

    // ----- relay sockets ----------------------------------------------------------------

    /// Datagrams from peers waiting on relay socket `rk`.
    pub fn peer_readable(&mut self, rk: Key, now: Instant) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut out = std::mem::take(&mut self.out);
        for _ in 0..PEER_BATCH {
            let Some(r) = self.relays.get(rk) else { break };
            let relay = r.addr;
            let (n, from) = match r.sock.recv_from(&mut scratch) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP errors surface here (ECONNREFUSED): nothing to do, try the next.
                Err(_) => continue,
            };
            if let PeerOutput::ToClient { to, len } =
                self.server
                    .handle_peer(now, relay, from, &scratch[..n], &mut out)
            {
                self.deliver(&to, &out[..len]);
            }
        }
        self.scratch = scratch;
        self.out = out;
        self.warn_drops();
    }

    fn warn_drops(&mut self) {
        let d = self.stats.dropped_backpressure.load(Ordering::Relaxed);
        if d > self.warned.1 && d.is_power_of_two() && d >= 64 {
            self.warned.1 = d;
            tracing::warn!(
                dropped = d,
                "peer data dropped for TCP clients that do not read fast enough (their queue is full)"
            );
        }
    }

    /// Relay sockets follow the core's commands; events become log lines.
    pub fn apply_commands(&mut self, now: Instant) {
        apply::apply(self, now, None);
    }

    fn open_relay(&mut self, addr: SocketAddr) -> io::Result<()> {
        let sock = bind_udp(addr)?;
        let key = self.relays.insert(Relay {
            sock,
            addr,
            stalled: None,
            watching_out: false,
        });
        if let Some(old) = self.relay_by_addr.insert(addr, key) {
            // Cannot happen (the port was bound just now), but never leak a socket.
            if let Some(r) = self.relays.remove(old) {
                self.relay_changes
                    .push_back(RelayChange::Closed(old, r.sock));
            }
        }
        self.relay_changes.push_back(RelayChange::Opened(key));
        Ok(())
    }

    // ----- RFC 6062 TCP relays -----------------------------------------------------------

    fn open_listener(&mut self, addr: SocketAddr) -> io::Result<()> {
        let sock = relay_socket(addr)?;
        sock.listen(RELAY_BACKLOG)?;
        let key = self.relay_listeners.insert(RelayListener {
            sock: sock.into(),
            addr,
        });
        if let Some(old) = self.listener_by_addr.insert(addr, key)
            && let Some(l) = self.relay_listeners.remove(old)
        {
            self.relay_changes
                .push_back(RelayChange::ListenerClosed(old, l.sock));
        }
        self.relay_changes
            .push_back(RelayChange::ListenerOpened(key));
        Ok(())
    }

    fn close_listener(&mut self, addr: SocketAddr) {
        if let Some(key) = self.listener_by_addr.remove(&addr)
            && let Some(l) = self.relay_listeners.remove(key)
        {
            self.relay_changes
                .push_back(RelayChange::ListenerClosed(key, l.sock));
        }
    }

    /// A peer connected to the listener `lk` (a TCP allocation's relayed address).
    pub fn peer_accepted(&mut self, lk: Key, stream: TcpStream, now: Instant) {
        let Some(relay) = self.relay_listeners.get(lk).map(|l| l.addr) else {
            return;
        };
        let Ok(peer) = stream.peer_addr() else {
            return; // reset before we looked
        };
        let peer = canonical(peer);
        let Some(conn) = self.server.peer_connection_incoming(now, relay, peer) else {
            // No permission, no allocation, or its connection limit: dropping closes it.
            tracing::debug!(%peer, %relay, "TCP peer connection refused");
            self.apply_commands(now);
            return;
        };
        if stream.set_nonblocking(true).is_err() {
            self.server.connection_closed(now, conn);
            self.apply_commands(now);
            return;
        }
        let _ = stream.set_nodelay(true);
        let five = FiveTuple::new(peer, relay, Transport::Tcp);
        let pk = self.peers.insert(Conn::peer(stream, five, conn, now));
        self.peer_by_conn.insert(conn, pk);
        self.touch_on(Side::Peer, pk);
        // The ConnectionAttempt for the client.
        self.apply_commands(now);
    }

    /// `ConnectPeer`: a non-blocking connect from the relayed address; the loop watches
    /// for writability and calls [`connect_done`](Self::connect_done).
    fn connect_peer(
        &mut self,
        conn: ConnectionId,
        relay: SocketAddr,
        peer: SocketAddr,
        now: Instant,
    ) {
        let started = relay_socket(relay).and_then(|s| {
            s.set_tcp_nodelay(true)?;
            match s.connect(&peer.into()) {
                Ok(()) => Ok((s, false)),
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok((s, true)),
                Err(e) => Err(e),
            }
        });
        let (sock, in_progress) = match started {
            Ok(x) => x,
            Err(e) => {
                self.connect_failed(&e, relay, peer);
                // Refused: the core answers 447 and sends CloseConnection.
                self.server.peer_connected(now, conn, Err(e.kind()));
                return;
            }
        };
        let five = FiveTuple::new(peer, relay, Transport::Tcp);
        let mut c = Conn::peer(sock.into(), five, conn, now);
        c.connecting = in_progress;
        let pk = self.peers.insert(c);
        self.peer_by_conn.insert(conn, pk);
        self.touch_on(Side::Peer, pk);
        if !in_progress {
            self.connect_done(pk, Ok(()), now);
        }
    }

    fn connect_failed(&mut self, e: &io::Error, relay: SocketAddr, peer: SocketAddr) {
        let total = bump(&self.stats.peer_connect_errors);
        if total > self.warned.2 && total.is_power_of_two() {
            self.warned.2 = total;
            tracing::info!(%relay, %peer, error = %e, total,
                "RFC 6062 Connect to a peer failed (peer down, no route, or a firewall on the way)");
        }
    }

    /// The connect of peer socket `pk` completed (`Ok`) or failed.
    pub fn connect_done(&mut self, pk: Key, outcome: io::Result<()>, now: Instant) {
        let Some(c) = self.peers.get_mut(pk) else {
            return;
        };
        if !c.connecting && outcome.is_err() {
            return;
        }
        c.connecting = false;
        let (conn, five) = (c.relay_conn, c.five);
        self.touch_on(Side::Peer, pk);
        let Some(conn) = conn else { return };
        let kind = match outcome {
            Ok(()) => Ok(()),
            Err(e) => {
                self.connect_failed(&e, five.listener, five.client);
                Err(e.kind())
            }
        };
        if kind.is_err() {
            // The core answers 447 and sends CloseConnection (which finds nothing to do).
            self.peer_by_conn.remove(&conn);
            self.close_on(Side::Peer, pk, "connect failed");
        }
        if !self.server.peer_connected(now, conn, kind) {
            self.peer_by_conn.remove(&conn);
            self.close_on(Side::Peer, pk, "not wanted any more");
        }
        self.apply_commands(now);
    }

    /// `SpliceConnection`: the client data connection `data` and peer connection `conn`
    /// carry each other's bytes from now on.
    fn splice(&mut self, conn: ConnectionId, data: FiveTuple, now: Instant) {
        let d = self.by_tuple.get(&(data.client, data.listener)).copied();
        let p = self.peer_by_conn.get(&conn).copied();
        match (d, p) {
            (Some(d), Some(p)) if self.conns.get(d).is_some() && self.peers.get(p).is_some() => {
                let c = self.conns.get_mut(d).expect("checked");
                c.link = Some(p);
                let peer = self.peers.get_mut(p).expect("checked");
                peer.link = Some(d);
                self.touch_on(Side::Client, d);
                self.touch_on(Side::Peer, p);
            }
            // One side vanished in between: end the other, the core cleans up.
            (d, _) => {
                if let Some(d) = d {
                    self.close(d, "its peer connection is gone");
                }
                self.server.connection_closed(now, conn);
            }
        }
    }

    fn close_relay(&mut self, addr: SocketAddr) {
        let Some(key) = self.relay_by_addr.remove(&addr) else {
            return;
        };
        let Some(r) = self.relays.remove(key) else {
            return;
        };
        if let Some(id) = r.stalled
            && let Some(c) = self.conns.get_mut(id)
        {
            // The allocation is gone: its pending datagram has nowhere to go.
            c.stall = None;
            self.touch(id);
        }
        self.relay_changes
            .push_back(RelayChange::Closed(key, r.sock));
    }

    // ----- time -------------------------------------------------------------------------

    /// When [`tick`](Self::tick) is next due.
    pub fn deadline(&self) -> Instant {
        match self.server.poll_timeout() {
            Some(t) => t.min(self.next_sweep),
            None => self.next_sweep,
        }
    }

    /// Core timers, then idle and handshake timeouts.
    pub fn tick(&mut self, now: Instant) {
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
        self.apply_commands(now);
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY;
        let mut keys = std::mem::take(&mut self.sweep_keys);
        keys.clear();
        keys.extend(self.conns.keys());
        for &id in &keys {
            let Some(c) = self.conns.get(id) else {
                continue;
            };
            if c.finish_by.is_some_and(|t| now >= t) {
                self.close(
                    id,
                    "client did not take the rest of its peer's data in time",
                );
                continue;
            }
            if c.closing.is_some() || c.link.is_some() || c.finish_by.is_some() {
                // Spliced data connections carry no frames: only the peer side ends them.
                continue;
            }
            let activity = Activity {
                accepted: c.accepted,
                first_frame: c.last_frame,
                last_authenticated: c.last_authenticated,
                has_allocation: self.server.allocation(&c.five).is_some(),
            };
            let why = idle_verdict(
                activity,
                self.settings.handshake_timeout,
                self.settings.idle_timeout,
                now,
            );
            if let Some(why) = why {
                tracing::debug!(client = %c.five, reason = why, "closing TCP connection");
                self.close(id, why);
            }
        }
        keys.clear();
        keys.extend(self.peers.keys());
        for &id in &keys {
            if self
                .peers
                .get(id)
                .is_some_and(|c| c.finish_by.is_some_and(|t| now >= t))
            {
                self.close_on(
                    Side::Peer,
                    id,
                    "peer did not take the rest of the client's data in time",
                );
            }
        }
        self.sweep_keys = keys;
    }

    /// Starts closing every connection (shutdown).
    pub fn close_all(&mut self) {
        let keys: Vec<Key> = self.conns.keys().collect();
        for id in keys {
            self.close(id, "relay stopping");
        }
        let keys: Vec<Key> = self.peers.keys().collect();
        for id in keys {
            self.close_on(Side::Peer, id, "relay stopping");
        }
    }

    /// Sockets still held (client and peer connections).
    pub fn open_streams(&self) -> usize {
        self.conns.len() + self.peers.len()
    }
}

impl Edge for State {
    fn server(&mut self) -> &mut Server {
        &mut self.server
    }

    fn mirror(&mut self) -> &mut Mirror {
        &mut self.mirror
    }

    fn open_relay(&mut self, relay: SocketAddr, protocol: RelayProtocol) -> io::Result<()> {
        match protocol {
            RelayProtocol::Udp => self.open_relay(relay),
            RelayProtocol::Tcp => self.open_listener(relay),
        }
    }

    fn close_relay(&mut self, relay: SocketAddr, protocol: RelayProtocol) {
        match protocol {
            RelayProtocol::Udp => self.close_relay(relay),
            RelayProtocol::Tcp => self.close_listener(relay),
        }
    }

    fn send_to_client(&mut self, client: &FiveTuple, message: &[u8]) {
        self.send_to_client(client, message);
    }

    fn connect_peer(
        &mut self,
        now: Instant,
        conn: ConnectionId,
        relay: SocketAddr,
        peer: SocketAddr,
    ) {
        self.connect_peer(conn, relay, peer, now);
    }

    fn splice(&mut self, now: Instant, conn: ConnectionId, data: FiveTuple) {
        self.splice(conn, data, now);
    }

    fn close_connection(&mut self, now: Instant, conn: ConnectionId) {
        if let Some(p) = self.peer_by_conn.remove(&conn) {
            let data = self.peers.get(p).and_then(|c| c.link);
            self.finish(Side::Peer, p, "closed by the relay core", now);
            if let Some(d) = data {
                self.finish(Side::Client, d, "peer connection closed", now);
            }
        }
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

/// A non-blocking TCP socket bound to a relayed address, beside the allocation's
/// listener and its other peer connections (RFC 6062 §5.2: they share the address).
fn relay_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
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
