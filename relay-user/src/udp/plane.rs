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
};

/// Where a loop puts a datagram to send: `bytes` to `to` through socket `fd`.
pub(super) trait Outbox {
    fn push(&mut self, fd: RawFd, bytes: &[u8], to: &SocketAddr);
}

pub(super) struct Listener {
    pub addr: SocketAddr,
    pub sock: UdpSocket,
}

/// Kinds of the epoll loop's tokens ([`Key::token`](crate::shard::slab::Key::token), the
/// encoding every loop uses).
pub(super) const LISTENER: u8 = 1;
pub(super) const RELAY: u8 = 2;
pub(super) const WAKE: u8 = 3;

/// One worker's core, listeners and relay sockets.
pub(super) struct Plane {
    pub server: Server,
    pub inbox: Inbox,
    pub listeners: Vec<Listener>,
    /// Apart from the core so that commands can be carried out while a received packet
    /// is still borrowed.
    pub relays: RelaySockets<()>,
    mirror: Mirror,
    /// Sockets a previous process bound (handover), by address: the restored core's
    /// `AllocationCreated` takes its socket from here instead of binding the port anew.
    adopted: std::collections::HashMap<SocketAddr, UdpSocket>,
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
            // Its registry is set by the loop before anything can be allocated.
            relays: RelaySockets::default(),
            mirror,
            adopted: adopted.into_iter().collect(),
            deferred: Vec::new(),
            out: vec![0; apply::OUT_BYTES].into_boxed_slice(),
        }
    }

    /// Every open relay socket with its bind address (a handover passes them on).
    pub fn relay_sockets(&self) -> impl Iterator<Item = (SocketAddr, RawFd)> + '_ {
        self.relays.iter().map(|r| (r.addr, r.sock.as_raw_fd()))
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
                if let Some(r) = self.relays.by_addr(&relay) {
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
            RelayProtocol::Udp => {
                let sock = match self.adopted.remove(&relay) {
                    Some(sock) => sock,
                    None => bind_udp(relay)?,
                };
                self.relays.open(relay, sock, ()).map(drop)
            }
            RelayProtocol::Tcp => Err(std::io::Error::other(
                "TCP allocations are served by the TCP shard",
            )),
        }
    }

    fn close_relay(&mut self, relay: SocketAddr, _: RelayProtocol) {
        self.relays.close(relay);
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
        self.record_lost(e, 1);
    }

    /// `lost` datagrams failed with `e` (a GSO run fails as a whole).
    pub fn record_lost(&mut self, e: std::io::Error, lost: u64) {
        self.total += lost;
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
