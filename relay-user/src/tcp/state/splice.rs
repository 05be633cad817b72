//! RFC 6062 TCP allocations: a listening TCP socket per relayed address, peer
//! connections accepted on it or dialled from it (`Connect`), and the splice of a peer
//! connection with a client data connection once the core says so. A peer connection is
//! not read until spliced; from then on bytes go both ways unchanged, and each side stops
//! reading while the other's send queue is above the high-water mark (no loss: TCP
//! pushes back on the sender).

use std::{
    io,
    net::{SocketAddr, TcpStream},
    time::Instant,
};

use relay_proto::server::{ConnectionId, FiveTuple, Transport};
use socket2::{Domain, Protocol, Socket, Type};

use super::{
    RelayChange, RelayListener, Side, State, bump, canonical,
    splice_rules::{self as rules, Connected, Finish, Pairing},
};
use crate::{shard::slab::Key, tcp::conn::Conn};

/// Pending peer connections per TCP relayed address.
const RELAY_BACKLOG: i32 = 128;

impl State {
    /// Closes `id` once what it has queued is sent (bounded by [`FINISH_GRACE`](super::FINISH_GRACE)).
    pub(super) fn finish(&mut self, side: Side, id: Key, reason: &str, now: Instant) {
        let Some(c) = self.table_mut(side).get_mut(id) else {
            return;
        };
        match rules::finish(c.wire.tx.is_empty(), c.closing.is_some(), c.finish_by, now) {
            Finish::Close => self.close_on(side, id, reason),
            Finish::DrainUntil(t) => {
                c.finish_by = Some(t);
                self.touch_on(side, id);
            }
            Finish::Draining => {}
        }
    }

    /// Spliced bytes from `from` (of `side`) to its partner `to`, as they are (a TLS data
    /// connection's partner gets plaintext; a peer's bytes are encrypted for the client).
    /// Reading `from` pauses while `to`'s queue is above the high-water mark.
    pub(super) fn forward(&mut self, side: Side, from: Key, to: Key, bytes: &[u8]) {
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
                let full = rules::queue_spliced(&mut p.wire, bytes);
                self.touch_on(Side::Peer, to);
                full
            }
        };
        if full && let Some(c) = self.table_mut(side).get_mut(from) {
            c.partner_full = true;
            self.touch_on(side, from);
        }
    }

    pub(super) fn open_listener(&mut self, addr: SocketAddr) -> io::Result<()> {
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

    pub(super) fn close_listener(&mut self, addr: SocketAddr) {
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
    pub(super) fn connect_peer(
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

    pub(super) fn connect_failed(&mut self, e: &io::Error, relay: SocketAddr, peer: SocketAddr) {
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
        let verdict = rules::connected(c.connecting, outcome.is_err());
        if verdict == Connected::Ignore {
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
        if verdict == Connected::Failed {
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
    pub(super) fn splice(&mut self, conn: ConnectionId, data: FiveTuple, now: Instant) {
        let d = self.by_tuple.get(&(data.client, data.listener)).copied();
        let p = self.peer_by_conn.get(&conn).copied();
        let found = (
            d.map(|d| (d, self.conns.get(d).is_some())),
            p.map(|p| (p, self.peers.get(p).is_some())),
        );
        match rules::pair(found.0, found.1) {
            Pairing::Link { data: d, peer: p } => {
                let c = self.conns.get_mut(d).expect("checked");
                c.link = Some(p);
                let peer = self.peers.get_mut(p).expect("checked");
                peer.link = Some(d);
                self.touch_on(Side::Client, d);
                self.touch_on(Side::Peer, p);
            }
            // One side vanished in between: end the other, the core cleans up.
            Pairing::Abort { close_data } => {
                if let Some(d) = close_data {
                    self.close(d, "its peer connection is gone");
                }
                self.server.connection_closed(now, conn);
            }
        }
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
