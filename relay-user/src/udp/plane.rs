//! What both UDP event loops (epoll and io_uring) share: the shard's core, its member of
//! every listener's SO_REUSEPORT group, the relay sockets of the allocations its core made,
//! and what happens to one datagram. The loops differ only in how they wait, receive and
//! send; this is the rest.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, RawFd},
    time::Instant,
};

use relay_proto::server::{
    ClientOutput, ConnectionId, FiveTuple, PeerOutput, RelayProtocol, Server, Transport,
};

use super::socket::bind_udp;
use crate::shard::{
    Inbox,
    apply::{self, Edge, Mirror},
    relays::RelaySockets,
    slab::Key,
};

/// Where a loop puts a datagram to send: `bytes` to `to` through socket `fd`.
pub(super) trait Outbox {
    fn push(&mut self, fd: RawFd, bytes: &[u8], to: &SocketAddr);
}

pub(super) struct Listener {
    pub addr: SocketAddr,
    pub sock: UdpSocket,
}

/// How relay sockets join the loop's wait set.
pub(super) enum Registry {
    /// Added to this epoll set when opened (token: [`relay_token`]); closing the fd leaves it.
    Epoll(RawFd),
    /// The io_uring loop arms a multishot receive on each socket in `opened`, and cancels
    /// the one of each socket in `closed`, which it keeps until the cancel completes: an
    /// armed receive holds the socket (and its port) open after close.
    Uring {
        opened: Vec<Key>,
        closed: Vec<(Key, UdpSocket)>,
    },
}

/// The relay sockets.
pub(super) struct Relays {
    pub registry: Registry,
    table: RelaySockets<()>,
    /// Sockets a previous process bound (handover), by address: the restored core's
    /// `AllocationCreated` takes its socket from here instead of binding the port anew.
    adopted: std::collections::HashMap<SocketAddr, UdpSocket>,
    /// Closed relay sockets whose fd a batch's queued sends may still name: kept until
    /// those are handed to the kernel ([`bury`](Self::bury)), so a send can never reach
    /// whatever socket reuses the fd number.
    retired: Vec<UdpSocket>,
}

impl Relays {
    /// The bind address and socket of relay socket `key`, if it is open.
    pub fn get(&self, key: Key) -> Option<(SocketAddr, RawFd)> {
        let r = self.table.get(key)?;
        Some((r.addr, r.sock.as_raw_fd()))
    }

    /// The bind address of relay socket `key`, if it is open.
    pub fn addr(&self, key: Key) -> Option<SocketAddr> {
        self.table.get(key).map(|r| r.addr)
    }

    /// Keeps a closed socket until [`bury`](Self::bury).
    pub fn retire(&mut self, sock: UdpSocket) {
        self.retired.push(sock);
    }

    /// Closes the retired sockets: call once the sends queued so far were handed to the
    /// kernel (which then holds its own reference to their sockets).
    pub fn bury(&mut self) {
        self.retired.clear();
    }

    pub fn is_open(&self, key: Key) -> bool {
        self.table.get(key).is_some()
    }

    /// Every open relay socket with its bind address.
    pub fn sockets(&self) -> impl Iterator<Item = (SocketAddr, RawFd)> + '_ {
        self.table.iter().map(|r| (r.addr, r.sock.as_raw_fd()))
    }

    fn open_relay(&mut self, relay: SocketAddr) -> std::io::Result<()> {
        let sock = match self.adopted.remove(&relay) {
            Some(sock) => sock,
            None => bind_udp(relay)?,
        };
        let (key, old) = self.table.insert(relay, sock, ());
        if let Some((old, r)) = old {
            self.unregister(old, r.sock);
        }
        match &mut self.registry {
            Registry::Epoll(epoll) => {
                let fd = self.table.get(key).map(|r| r.sock.as_raw_fd());
                let add = crate::epoll::ctl(
                    *epoll,
                    libc::EPOLL_CTL_ADD,
                    fd.unwrap_or(-1),
                    libc::EPOLLIN as u32,
                    relay_token(key),
                );
                if let Err(e) = add {
                    self.table.close(relay);
                    return Err(e);
                }
            }
            Registry::Uring { opened, .. } => opened.push(key),
        }
        Ok(())
    }

    fn close_relay(&mut self, relay: SocketAddr) {
        if let Some((key, r)) = self.table.close(relay) {
            self.unregister(key, r.sock);
        }
    }

    fn unregister(&mut self, key: Key, sock: UdpSocket) {
        match &mut self.registry {
            // Closing the fd (at the next bury) removes it from the epoll set; a stale
            // event for the key misses (its slot may be reused, with a new generation).
            Registry::Epoll(_) => self.retired.push(sock),
            Registry::Uring { closed, .. } => closed.push((key, sock)),
        }
    }
}

/// Kinds of the epoll loop's tokens ([`Key::token`], the encoding every loop uses).
pub(super) const LISTENER: u8 = 1;
pub(super) const RELAY: u8 = 2;
pub(super) const WAKE: u8 = 3;

/// The epoll token of relay socket `key`.
pub(super) fn relay_token(key: Key) -> u64 {
    key.token(RELAY)
}

/// One worker's core, listeners and relay sockets.
pub(super) struct Plane {
    pub server: Server,
    pub inbox: Inbox,
    pub listeners: Vec<Listener>,
    /// Apart from the core so that commands can be carried out while a received packet
    /// is still borrowed.
    pub relays: Relays,
    mirror: Mirror,
    /// Answers of the core to UDP clients (`SendToClient`: a deferred Allocate answer),
    /// sent by [`client_datagram`](Self::client_datagram), the only input that makes them.
    deferred: Vec<(FiveTuple, Box<[u8]>)>,
    out: Box<[u8]>,
}

impl Plane {
    /// `adopted`: relay sockets a previous process handed over, for the allocations its
    /// restored core announces (empty on a fresh start).
    pub fn new(
        server: Server,
        listeners: Vec<Listener>,
        adopted: Vec<(SocketAddr, UdpSocket)>,
        inbox: Inbox,
        mirror: Mirror,
    ) -> Self {
        Self {
            server,
            inbox,
            listeners,
            relays: Relays {
                // Set by the loop before anything can be allocated.
                registry: Registry::Epoll(-1),
                table: RelaySockets::default(),
                adopted: adopted.into_iter().collect(),
                retired: Vec::new(),
            },
            mirror,
            deferred: Vec::new(),
            out: vec![0; apply::OUT_BYTES].into_boxed_slice(),
        }
    }

    /// A datagram from a client on listener `l`.
    pub fn client_datagram(
        &mut self,
        now: Instant,
        l: usize,
        from: SocketAddr,
        packet: &[u8],
        tx: &mut impl Outbox,
    ) {
        let five = FiveTuple {
            client: from,
            listener: self.listeners[l].addr,
            transport: Transport::Udp,
        };
        let mut output = self.server.handle_client(now, five, packet, &mut self.out);
        // A reply may announce an allocation: its relay socket must exist before the
        // response leaves. If the port cannot be bound the core voids that allocation and
        // answers again itself (another port, or 508): this reply is void.
        if matches!(output, ClientOutput::Reply { .. }) && apply::apply(self, now, Some(&five)) {
            output = ClientOutput::Nothing;
        }
        for (to, message) in self.deferred.drain(..) {
            to_client(tx, &self.listeners, &to, &message);
        }
        match output {
            ClientOutput::Nothing => {}
            ClientOutput::Reply { len } => {
                tx.push(self.listeners[l].sock.as_raw_fd(), &self.out[..len], &from)
            }
            ClientOutput::ToPeer {
                relay,
                peer,
                payload,
            } => {
                if let Some(r) = self.relays.table.by_addr(&relay) {
                    tx.push(r.sock.as_raw_fd(), payload, &peer);
                }
            }
            ClientOutput::ToClient { to, len } => {
                to_client(tx, &self.listeners, &to, &self.out[..len])
            }
        }
    }

    /// A datagram from a peer on the relay socket bound to `relay`.
    pub fn peer_datagram(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        from: SocketAddr,
        packet: &[u8],
        tx: &mut impl Outbox,
    ) {
        match self
            .server
            .handle_peer(now, relay, from, packet, &mut self.out)
        {
            PeerOutput::Drop(_) => {}
            PeerOutput::ToClient { to, len } => {
                to_client(tx, &self.listeners, &to, &self.out[..len])
            }
        }
    }

    /// Carries out what the core decided while handling a batch. Call before the batch's
    /// datagrams leave: a new allocation gets its socket, and a permission or channel its
    /// XDP map entry, before the response that lets the client use it.
    pub fn apply_commands(&mut self, now: Instant) {
        apply::apply(self, now, None);
    }

    /// The core's timers, then what they decided; between batches.
    pub fn tick(&mut self, now: Instant) {
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
        self.apply_commands(now);
    }

    /// How long the loop may sleep: until the core's next timer, at most a second,
    /// rounded up so it never wakes just before the deadline and spins.
    pub fn wait_ms(&self) -> u64 {
        match self.server.poll_timeout() {
            Some(t) => {
                t.saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(1000) as u64
                    + 1
            }
            None => 1000,
        }
    }
}

/// UDP workers have TCP relays off: the core never makes a TCP allocation or a peer
/// connection here, so the RFC 6062 methods have nothing to do.
impl Edge for Plane {
    fn server(&mut self) -> &mut Server {
        &mut self.server
    }

    fn mirror(&mut self) -> &mut Mirror {
        &mut self.mirror
    }

    fn open_relay(&mut self, relay: SocketAddr, protocol: RelayProtocol) -> std::io::Result<()> {
        match protocol {
            RelayProtocol::Udp => self.relays.open_relay(relay),
            RelayProtocol::Tcp => Err(std::io::Error::other(
                "TCP allocations are served by the TCP shard",
            )),
        }
    }

    fn close_relay(&mut self, relay: SocketAddr, _: RelayProtocol) {
        self.relays.close_relay(relay);
    }

    fn send_to_client(&mut self, client: &FiveTuple, message: &[u8]) {
        self.deferred.push((*client, message.into()));
    }

    fn connect_peer(&mut self, _: Instant, _: ConnectionId, _: SocketAddr, _: SocketAddr) {}

    fn splice(&mut self, _: Instant, _: ConnectionId, _: FiveTuple) {}

    fn close_connection(&mut self, _: Instant, _: ConnectionId) {}
}

fn to_client(tx: &mut impl Outbox, listeners: &[Listener], to: &FiveTuple, bytes: &[u8]) {
    match listeners.iter().find(|l| l.addr == to.listener) {
        Some(l) if to.transport == Transport::Udp => tx.push(l.sock.as_raw_fd(), bytes, &to.client),
        _ => {} // stream clients are served by the TCP path
    }
}

/// Logs failed sends now and then (at 1, 2, 4, 8... failures) so a full socket buffer
/// or a missing route is visible without a line per datagram.
#[derive(Default)]
pub(super) struct SendErrors {
    pub total: u64,
    logged: u64,
    last: Option<std::io::Error>,
}

impl SendErrors {
    pub fn record(&mut self, e: std::io::Error) {
        self.total += 1;
        self.last = Some(e);
    }

    pub fn report(&mut self) {
        if self.total > self.logged && self.total.is_power_of_two() {
            self.logged = self.total;
            let error = self
                .last
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_default();
            tracing::warn!(%error, total = self.total, "UDP sends failed (socket buffer full or no route)");
        }
    }
}
