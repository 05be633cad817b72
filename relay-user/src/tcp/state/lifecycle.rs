//! Client and peer connections coming and going: accepted within the limits of
//! [`crate::tcp::limits`] (counted per source until the socket is shut), closed with a
//! reason, and forgotten once the loop has nothing in flight for them, which ends the
//! allocation made on a client connection.

use std::{
    io,
    net::{SocketAddr, TcpStream},
    sync::atomic::Ordering,
    time::Instant,
};

use relay_proto::server::{FiveTuple, Transport};

use super::{Side, State, bump, canonical, tls_session};
use crate::{
    shard::slab::Key,
    tcp::{conn::Conn, connection::Mode, limits::Refusal},
};

impl State {
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
        // Behind a load balancer the client is known only from the PROXY header: the
        // per-source count waits for it (see `proxy_phase`). The total applies now, to
        // every socket held (those still waiting for their header included).
        let header_first = self.listeners[l].proxy_from.is_some();
        if header_first {
            if !self.proxy_source_allowed(l, peer, now) {
                return None;
            }
            let held = self.conns.len();
            if held >= self.settings.max_connections {
                self.refused(Refusal::Total { held }, peer, listener);
                return None;
            }
        } else if !self.admit(peer, listener) {
            return None;
        }
        let _ = stream.set_nodelay(true);
        let mode = match (plain, tls) {
            (true, true) => Mode::Detect,
            (true, false) => Mode::Plain,
            (false, _) => match tls_session(self.tls.as_ref()) {
                Some(s) => Mode::Tls(s),
                None => {
                    if !header_first {
                        self.admission.release(peer.ip());
                    }
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
        conn.counted = !header_first;
        conn.proxy_pending = header_first.then(Vec::new);
        let id = self.conns.insert(conn);
        self.stats
            .held
            .store(self.conns.len() as u64, Ordering::Relaxed);
        if !header_first {
            self.by_tuple.insert((peer, listener), id);
        }
        bump(&self.stats.accepted);
        tracing::debug!(client = %five, "TCP connection accepted");
        Some(id)
    }

    /// Counts a connection from `client` against the limits; a refusal is counted and
    /// logged.
    pub(super) fn admit(&mut self, client: SocketAddr, listener: SocketAddr) -> bool {
        match self.admission.admit(client.ip()) {
            Ok(()) => true,
            Err(r) => {
                self.refused(r, client, listener);
                false
            }
        }
    }

    fn refused(&mut self, r: Refusal, client: SocketAddr, listener: SocketAddr) {
        match r {
            Refusal::Total { held } => {
                let refused = bump(&self.stats.refused_total);
                if refused.is_power_of_two() {
                    tracing::warn!(%client, %listener, held, refused,
                        "TCP connection refused: the relay holds tcp.max_connections already (raise it, and the open-files limit)");
                }
            }
            Refusal::PerSource { source, held } => {
                let refused = bump(&self.stats.refused_per_source);
                if refused.is_power_of_two() {
                    tracing::warn!(%client, %source, %listener, held, refused,
                        "TCP connection refused: this source (an IPv4 address or an IPv6 /64) holds tcp.max_connections_per_source already \
                         (abuse, or many clients behind one NAT: then raise the limit)");
                }
            }
        }
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

    /// Takes client connection `id` out of this worker's tables (closed, or moving to
    /// another worker).
    pub(super) fn take_conn(&mut self, id: Key) -> Option<Conn> {
        let c = self.conns.remove(id)?;
        self.stats
            .held
            .store(self.conns.len() as u64, Ordering::Relaxed);
        if self.by_tuple.get(&(c.five.client, c.five.listener)) == Some(&id) {
            self.by_tuple.remove(&(c.five.client, c.five.listener));
        }
        Some(c)
    }

    /// Forgets a closed client connection (see [`release_on`](Self::release_on)).
    pub fn release(&mut self, id: Key, now: Instant) {
        let Some(c) = self.take_conn(id) else {
            return;
        };
        if c.counted {
            self.admission.release(c.five.client.ip());
        }
        if let Some(s) = &c.stall
            && let Some(r) = self.relays.get_mut(s.relay)
        {
            r.edge.stalled = None;
        }
        tracing::debug!(client = %c.five, reason = c.closing.as_deref().unwrap_or("closed"), "TCP connection closed");
        if let Some(p) = c.link {
            self.finish(Side::Peer, p, "client data connection closed", now);
        }
        self.server.client_closed(now, c.five);
        self.apply_commands(now);
    }
}
