//! The UDP relay sockets of the TCP/TLS clients' allocations, and how this shard
//! carries out its core's commands (see [`crate::shard::apply`]). Datagrams to peers
//! leave with a non-blocking `sendto` right away; when one is refused (socket buffer
//! full) it is kept and its client connection stops reading until the socket drains, so
//! a slow peer side slows the TCP client down instead of losing data.

use std::{io, net::SocketAddr, os::fd::AsRawFd, sync::atomic::Ordering, time::Instant};

use relay_proto::server::{ConnectionId, FiveTuple, PeerOutput, RelayProtocol, Server};

use super::{RelayChange, RelayFlow, Side, State, bump};
use crate::{
    shard::{
        apply::{Edge, Mirror},
        slab::Key,
    },
    tcp::conn::Stall,
    udp::bind_udp,
};

/// Who a datagram in the io_uring loop's send pool was for, to stall its client if the
/// relay socket refused it (see [`State::peer_send_done`]).
#[derive(Clone, Copy)]
pub struct Origin {
    pub conn: Key,
    pub relay: Key,
}

/// Datagrams taken from one relay socket per readiness event (fairness).
const PEER_BATCH: usize = 64;

impl State {
    pub(super) fn send_to_peer(
        &mut self,
        id: Key,
        relay: SocketAddr,
        peer: SocketAddr,
        payload: &[u8],
    ) {
        let Some(rk) = self.relays.key(&relay) else {
            return;
        };
        let Some(r) = self.relays.get_mut(rk) else {
            return;
        };
        // io_uring: the loop sends it with its next submission. Not while a datagram
        // waits for room in this socket: that one goes first.
        if r.edge.stalled.is_none()
            && let Some(sends) = self.peer_sends.as_mut()
        {
            let origin = Origin {
                conn: id,
                relay: rk,
            };
            if sends.push(r.sock.as_raw_fd(), payload, &peer, origin) {
                return;
            }
        }
        match r.sock.send_to(payload, peer) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.stall(id, rk, peer, payload);
            }
            Err(e) => self.peer_send_failed(relay, peer, &e),
        }
    }

    /// Relay socket `rk` has no room for `payload`: it is kept, and client `id` stops
    /// reading until the socket drains.
    fn stall(&mut self, id: Key, rk: Key, peer: SocketAddr, payload: &[u8]) {
        let Some(r) = self.relays.get_mut(rk) else {
            return;
        };
        r.edge.stalled = Some(id);
        bump(&self.stats.stalls);
        if let Some(c) = self.conns.get_mut(id) {
            c.stall_buf.clear();
            c.stall_buf.extend_from_slice(payload);
            c.stall = Some(Stall { relay: rk, peer });
        }
        self.relay_changes.push_back(RelayChange::WantWritable(rk));
        self.touch(id);
    }

    fn peer_send_failed(&mut self, relay: SocketAddr, peer: SocketAddr, e: &io::Error) {
        let total = bump(&self.stats.peer_send_errors);
        if total > self.warned.0 && total.is_power_of_two() {
            self.warned.0 = total;
            tracing::warn!(%relay, %peer, error = %e, total,
                "sending to a peer failed (no route, or refused by the host's firewall)");
        }
    }

    /// The io_uring loop's send from slot `slot` completed with `res`. A socket without
    /// room (EAGAIN: the send does not wait) stalls its client as a refused `sendto`
    /// does, unless one datagram already waits on that socket: then this one is lost,
    /// as UDP may.
    pub fn peer_send_done(&mut self, slot: usize, res: i32) {
        let Some(sends) = self.peer_sends.as_mut() else {
            return;
        };
        let Some(f) = sends.completed(slot, res) else {
            return;
        };
        // Copied out of the pool (rare: a full socket buffer) for the stall to keep.
        let (o, peer, payload, e) = (f.tag, f.to, f.bytes.to_vec(), f.error);
        // The rest of a gathered run that failed as a whole is lost, as UDP may.
        for _ in 1..f.lost {
            bump(&self.stats.peer_send_errors);
        }
        let Some(relay) = self.relays.get(o.relay).map(|r| r.addr) else {
            return; // the allocation went meanwhile
        };
        if e.kind() != io::ErrorKind::WouldBlock {
            return self.peer_send_failed(relay, peer, &e);
        }
        let waiting = self
            .relays
            .get(o.relay)
            .is_some_and(|r| r.edge.stalled.is_some());
        if waiting || self.conns.get(o.conn).is_none_or(|c| c.stall.is_some()) {
            bump(&self.stats.peer_send_errors);
            return;
        }
        self.stall(o.conn, o.relay, peer, &payload);
    }

    /// The relay socket `rk` has room again: the stalled datagram goes, and its client
    /// connection resumes.
    pub fn relay_writable(&mut self, rk: Key, now: Instant) {
        let Some(r) = self.relays.get_mut(rk) else {
            return;
        };
        let Some(id) = r.edge.stalled else { return };
        let Some(c) = self.conns.get_mut(id) else {
            r.edge.stalled = None;
            return;
        };
        let Some(stall) = &c.stall else {
            r.edge.stalled = None;
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
        r.edge.stalled = None;
        c.stall = None;
        self.touch(id);
        self.process_rx(id, now);
    }

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
            self.peer_datagram_to(relay, from, &scratch[..n], &mut out, now);
        }
        self.scratch = scratch;
        self.out = out;
        self.warn_drops();
    }

    /// One datagram the io_uring loop received on relay socket `rk` (a multishot receive
    /// reads it inside the ring: no `recvfrom` per datagram, nor the one that finds the
    /// socket empty).
    pub fn peer_datagram(&mut self, rk: Key, from: SocketAddr, data: &[u8], now: Instant) {
        let Some(relay) = self.relays.get(rk).map(|r| r.addr) else {
            return;
        };
        let mut out = std::mem::take(&mut self.out);
        self.peer_datagram_to(relay, from, data, &mut out, now);
        self.out = out;
        self.warn_drops();
    }

    fn peer_datagram_to(
        &mut self,
        relay: SocketAddr,
        from: SocketAddr,
        data: &[u8],
        out: &mut [u8],
        now: Instant,
    ) {
        if let PeerOutput::ToClient { to, len } =
            self.server.handle_peer(now, relay, from, data, out)
        {
            self.deliver(&to, &out[..len]);
        }
    }

    pub(super) fn warn_drops(&mut self) {
        let d = self.stats.dropped_backpressure.load(Ordering::Relaxed);
        if d > self.warned.1 && d.is_power_of_two() && d >= 64 {
            self.warned.1 = d;
            tracing::warn!(
                dropped = d,
                "peer data dropped for TCP clients that do not read fast enough (their queue is full)"
            );
        }
    }

    pub(super) fn open_relay(&mut self, addr: SocketAddr) -> io::Result<()> {
        let sock = bind_udp(addr)?;
        self.relays.open(addr, sock, RelayFlow::default()).map(drop)
    }

    pub(super) fn close_relay(&mut self, addr: SocketAddr) {
        if let Some(flow) = self.relays.close(addr)
            && let Some(id) = flow.stalled
            && let Some(c) = self.conns.get_mut(id)
        {
            // The allocation is gone: its pending datagram has nowhere to go.
            c.stall = None;
            self.touch(id);
        }
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

    fn close_client(&mut self, client: &FiveTuple) {
        if let Some(&id) = self.by_tuple.get(&(client.client, client.listener)) {
            self.close(id, "disconnected by an operator (admin API)");
        }
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
