//! RFC 6062, TURN extensions for TCP allocations: Connect, ConnectionBind, ConnectionAttempt
//! and the data path's reports about peer connections.
//!
//! The core never sees a byte of relayed TCP data. It decides which connections may exist
//! and tells the data path with commands (`ConnectPeer`, `SpliceConnection`,
//! `CloseConnection`, and `SendToClient` for the messages that answer nothing the client
//! just sent: the deferred Connect response and ConnectionAttempt indications). Invariants:
//! every Connect gets exactly one response; every connection id handed out ends with exactly
//! one `CloseConnection` and one [`Event::PeerConnectionClosed`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::stun::{
    BufferTooSmall, Class, ConnectionId as ConnectionIdAttr, Message, MessageWriter, Method,
    XorPeerAddress,
};

use super::allocation::{Allocation, AllocationId, Family};
use super::auth_check::Auth;
use super::command::Command;
use super::event::{DropReason, Event};
use super::five_tuple::FiveTuple;
use super::handle_allocate::optional;
use super::tcp_relay::{
    BIND_TIMEOUT, CONNECT_TIMEOUT, ConnState, ConnectionEnd, ConnectionId, DeferredConnect,
    Direction, MAX_CONNECTIONS_PER_ALLOCATION, PeerConnection, RelayProtocol,
};
use super::{ClientOutput, Server};
use crate::policy::DenyReason;

/// Room for a deferred Connect response: header, CONNECTION-ID or ERROR-CODE, the longest
/// SOFTWARE (RFC 8489: < 128 characters, 763 bytes), MESSAGE-INTEGRITY-SHA256, FINGERPRINT.
const DEFERRED_MAX: usize = 1024;
/// A ConnectionAttempt: header, XOR-PEER-ADDRESS (IPv6: 24), CONNECTION-ID (8).
const ATTEMPT_MAX: usize = 64;

impl Server {
    /// Whether this server's data path carries TCP relays. Off by default: the data path
    /// that serves TCP/TLS clients turns it on once it carries out `ConnectPeer`,
    /// `SendToClient`, `SpliceConnection`, `CloseConnection` and listens on `protocol: Tcp`
    /// relayed addresses. REQUESTED-TRANSPORT TCP is granted only when this is on *and* the
    /// operator offers TCP relays ([`ServerConfig::relay_tcp`]); otherwise 442, as from an
    /// RFC 8656-only relay.
    ///
    /// [`ServerConfig::relay_tcp`]: super::ServerConfig::relay_tcp
    pub fn enable_tcp_relays(&mut self, on: bool) {
        self.tcp.enabled = on;
    }

    /// This core is `index` of `count` that share one transport's client connections (the
    /// TCP/TLS workers): the CONNECTION-IDs it draws say so (`id % count == index`, see
    /// [`ConnectionId::shard`]), so a ConnectionBind that reaches another worker can be
    /// handed to this one. Unset, ids are any random value (one core).
    ///
    /// # Panics
    /// If `index >= count`.
    pub fn shard_connection_ids(&mut self, index: usize, count: usize) {
        self.tcp.set_shard(index, count);
    }

    pub fn tcp_relays_enabled(&self) -> bool {
        self.tcp.enabled
    }

    /// The operator's switch for RFC 6062 (SIGHUP): off, new TCP allocations get 442;
    /// existing ones keep working until they end.
    pub fn set_relay_tcp(&mut self, on: bool) {
        self.config.relay_tcp = on;
    }

    // ----- the data path's reports ----------------------------------------------------------

    /// The outcome of a [`Command::ConnectPeer`]. `Ok`: the client gets the Connect success
    /// response with the CONNECTION-ID, the peer's IP a permission, and the connection
    /// [`BIND_TIMEOUT`] to be bound. `Err(kind)`: the client gets 447 and a
    /// `CloseConnection` follows. Returns `false` if the connection is not (or no longer)
    /// wanted: close the socket (a `CloseConnection` for it is queued or already was).
    pub fn peer_connected(
        &mut self,
        now: Instant,
        conn: ConnectionId,
        outcome: Result<(), io::ErrorKind>,
    ) -> bool {
        let Some(pc) = self.tcp.get(conn) else {
            return false;
        };
        if !matches!(pc.state, ConnState::Connecting(_)) {
            // A second report for the same attempt: the first one counted.
            return true;
        }
        let (id, peer) = (pc.allocation, pc.peer);
        if let Err(kind) = outcome {
            self.close_connection(conn, ConnectionEnd::ConnectFailed(kind));
            return false;
        }
        let Some(client) = self.table.get(id).map(|a| a.client) else {
            self.close_connection(conn, ConnectionEnd::AllocationEnded);
            return false;
        };
        let old = self
            .tcp
            .set_state(conn, ConnState::Pending, Some(now + BIND_TIMEOUT));
        if let Some(ConnState::Connecting(d)) = old {
            self.send_deferred(id, client, &d, Ok(conn));
        }
        // The client chose this peer: its IP is permitted from now on, as after a
        // CreatePermission (checked against the cap when the Connect came in).
        self.grant_permission(now, id, peer.ip());
        true
    }

    /// A peer opened a TCP connection from `peer` to the relayed address `relay` (bind
    /// address and port of a TCP allocation's listener). `Some(conn)`: keep it, unread,
    /// until `SpliceConnection` or `CloseConnection` for `conn`; the client is told with a
    /// ConnectionAttempt indication (a `SendToClient`). `None`: close it at once (no TCP
    /// allocation there, no permission for the peer's IP, or the allocation's
    /// [`MAX_CONNECTIONS_PER_ALLOCATION`] reached; counted in [`Server::drops`]).
    pub fn peer_connection_incoming(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
    ) -> Option<ConnectionId> {
        // Another allocation of this relay dialling (see `tcp_connect_target`) arrives from
        // the bind address.
        let peer = self.peer_as_clients_see_it(peer);
        let found = self
            .table
            .id_by_relay(relay)
            .filter(|id| self.tcp.is_tcp(*id))
            .and_then(|id| self.table.get(id))
            .filter(|a| a.alive(now));
        let Some(a) = found else {
            self.drops.bump(DropReason::NoAllocation);
            return None;
        };
        // RFC 6062 §5.3: without a permission the connection is closed once accepted.
        if !a.has_permission(peer.ip(), now) {
            self.drops.bump(DropReason::NoPermission);
            return None;
        }
        let (id, client) = (a.id, a.client);
        if self.tcp.connections_of(id).len() >= MAX_CONNECTIONS_PER_ALLOCATION {
            self.drops.bump(DropReason::ConnectionLimit);
            return None;
        }
        let conn = self.tcp.insert(PeerConnection {
            allocation: id,
            peer,
            direction: Direction::Incoming,
            state: ConnState::Pending,
            deadline: Some(now + BIND_TIMEOUT),
        })?;
        let txid = self.next_indication_txid();
        let mut buf = [0u8; ATTEMPT_MAX];
        let built = (|| {
            let mut w = MessageWriter::new(
                &mut buf,
                Class::Indication,
                Method::CONNECTION_ATTEMPT,
                txid,
            )?;
            w.attr(&XorPeerAddress(peer))?
                .attr(&ConnectionIdAttr(conn.as_u32()))?;
            Ok::<_, BufferTooSmall>(w.finish())
        })();
        match built {
            Ok(len) => self.commands.push_back(Command::SendToClient {
                id,
                client,
                message: buf[..len].into(),
            }),
            // Cannot happen with ATTEMPT_MAX; without the indication nobody would bind it.
            Err(BufferTooSmall) => {
                self.close_connection(conn, ConnectionEnd::Closed);
                return None;
            }
        }
        Some(conn)
    }

    /// The data path saw peer connection `conn` end: the peer or the client data connection
    /// closed or failed, or a connect attempt was aborted (the client then gets 447). A
    /// `CloseConnection` follows for whatever is still open. Unknown ids are ignored.
    pub fn connection_closed(&mut self, now: Instant, conn: ConnectionId) {
        let connecting = match self.tcp.get(conn) {
            None => return,
            Some(pc) => matches!(pc.state, ConnState::Connecting(_)),
        };
        if connecting {
            self.peer_connected(now, conn, Err(io::ErrorKind::ConnectionAborted));
        } else {
            self.close_connection(conn, ConnectionEnd::Closed);
        }
    }

    /// Peer TCP connections held (connecting, waiting for ConnectionBind or spliced).
    pub fn tcp_connection_count(&self) -> usize {
        self.tcp.len()
    }

    /// What allocation `id`'s relayed addresses carry; `None` if there is no such allocation.
    pub fn relay_protocol(&self, id: AllocationId) -> Option<RelayProtocol> {
        self.table.get(id)?;
        Some(if self.tcp.is_tcp(id) {
            RelayProtocol::Tcp
        } else {
            RelayProtocol::Udp
        })
    }

    // ----- requests -------------------------------------------------------------------------

    /// `true` if `from` holds a TCP allocation.
    pub(crate) fn relays_tcp(&self, from: &FiveTuple) -> bool {
        self.table
            .id_by_tuple(from)
            .is_some_and(|id| self.tcp.is_tcp(id))
    }

    /// Connect and ConnectionBind: authenticated like every other TURN request. Not cached
    /// for retransmissions: they only come over TCP/TLS, where clients do not retransmit.
    pub(crate) fn tcp_relay_request<'p>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> ClientOutput<'p> {
        // RFC 6062 §5.1, §5.4: over UDP neither can ever succeed; no challenge needed.
        if !from.transport.is_stream() {
            let why = "Connect and ConnectionBind need a TCP or TLS connection";
            return self.reject(from, msg, None, 400, why, out);
        }
        let auth = match self.authenticate_request(now, from, msg, out) {
            Ok(a) => a,
            Err(reply) => return self.reply_or_drop(reply),
        };
        if msg.method() == Method::CONNECT {
            self.connect(now, from, msg, &auth, out)
        } else {
            self.connection_bind(now, from, msg, &auth, out)
        }
    }

    /// RFC 6062 §5.2. Answered now only when refused; otherwise the data path dials and the
    /// response follows its [`peer_connected`](Self::peer_connected) report.
    fn connect<'p>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        auth: &Auth,
        out: &mut [u8],
    ) -> ClientOutput<'p> {
        let a = Some(auth);
        let id = match self.owned_allocation(from, msg, auth, out) {
            Ok(id) => id,
            Err(reply) => return self.reply_or_drop(reply),
        };
        if !self.tcp.is_tcp(id) {
            let why = "Connect needs a TCP allocation";
            return self.reject(from, msg, a, 400, why, out);
        }
        let peer = match optional::<XorPeerAddress>(msg) {
            Ok(Some(XorPeerAddress(p))) => p,
            Ok(None) => return self.reject(from, msg, a, 400, "Missing XOR-PEER-ADDRESS", out),
            Err(why) => return self.reject(from, msg, a, 400, &why, out),
        };
        if let Err(code) = self.check_peer_port(id, peer) {
            return self.reject(from, msg, a, code, "", out);
        }
        let Some(target) = self.tcp_connect_target(id, peer) else {
            // A port of the relay address that no TCP allocation holds: whatever listens
            // there (a UDP allocation's port has nothing of ours) is the host's, not a peer.
            if let Some(al) = self.table.get(id) {
                self.events.push(Event::PeerDenied {
                    user: al.user.clone(),
                    client: al.client,
                    peer,
                    reason: DenyReason::NoTcpRelay(peer),
                });
            }
            let why = "No TCP allocation of this relay on that port";
            return self.reject(from, msg, a, 403, why, out);
        };
        if self.tcp.find(id, peer).is_some() {
            return self.reject(from, msg, a, 446, "", out);
        }
        // check_peer found the allocation and its relayed address of the peer's family.
        let Some((relay, room_for_permission)) = self.table.get(id).and_then(|al| {
            let relay = al.relayed(Family::of(peer.ip()))?.bind;
            let room = al.has_room_for_permission(peer.ip(), self.config.max_permissions);
            Some((relay, room))
        }) else {
            return self.reject(from, msg, a, 437, "", out);
        };
        if self.tcp.connections_of(id).len() >= MAX_CONNECTIONS_PER_ALLOCATION {
            return self.reject(from, msg, a, 508, "Too many connections", out);
        }
        if !room_for_permission {
            return self.reject(from, msg, a, 508, "Too many permissions", out);
        }
        let deferred = DeferredConnect {
            txid: msg.transaction_id(),
            username: auth.username.clone(),
            key: auth.key.clone(),
            kind: auth.kind,
        };
        let Some(conn) = self.tcp.insert(PeerConnection {
            allocation: id,
            peer,
            direction: Direction::Outgoing,
            state: ConnState::Connecting(Box::new(deferred)),
            deadline: Some(now + CONNECT_TIMEOUT),
        }) else {
            return self.reject(from, msg, a, 437, "", out);
        };
        self.commands.push_back(Command::ConnectPeer {
            id,
            conn,
            relay,
            peer: target,
        });
        ClientOutput::Nothing
    }

    /// RFC 6062 §5.4, on a new TCP/TLS connection: with the same credentials as the
    /// allocation, it turns that connection into the client data connection of `conn`.
    fn connection_bind<'p>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        auth: &Auth,
        out: &mut [u8],
    ) -> ClientOutput<'p> {
        let a = Some(auth);
        // The control connection must stay one, and a data connection carries no more STUN.
        if self.table.id_by_tuple(&from).is_some() || self.tcp.by_data(&from).is_some() {
            let why = "ConnectionBind belongs on a new connection";
            return self.reject(from, msg, a, 400, why, out);
        }
        let conn = match optional::<ConnectionIdAttr>(msg) {
            Ok(Some(ConnectionIdAttr(c))) => ConnectionId(c),
            Ok(None) => return self.reject(from, msg, a, 400, "Missing CONNECTION-ID", out),
            Err(why) => return self.reject(from, msg, a, 400, &why, out),
        };
        let pending = self
            .tcp
            .get(conn)
            .filter(|pc| matches!(pc.state, ConnState::Pending))
            .map(|pc| (pc.allocation, pc.peer, pc.direction));
        let found = pending.and_then(|(id, ..)| self.table.get(id).filter(|al| al.alive(now)));
        let (Some((id, peer, direction)), Some(al)) = (pending, found) else {
            let why = "No pending connection with this CONNECTION-ID";
            return self.reject(from, msg, a, 400, why, out);
        };
        if *al.user != *auth.username {
            return self.reject(from, msg, a, 441, "", out);
        }
        let (user, client) = (al.user.clone(), al.client);
        let Some(len) = self.reply_success(msg, a, out) else {
            return self.drop_client(DropReason::BufferTooSmall);
        };
        self.tcp.set_state(conn, ConnState::Bound(from), None);
        self.commands.push_back(Command::SpliceConnection {
            id,
            conn,
            data: from,
        });
        self.events.push(Event::PeerConnectionBound {
            id,
            user,
            client,
            data: from,
            peer,
            conn,
            direction,
        });
        ClientOutput::Reply { len }
    }

    // ----- lifecycle ------------------------------------------------------------------------

    /// `conn`'s deadline passed: a Connect still waiting gets 447, an unbound connection
    /// closes.
    pub(crate) fn connection_deadline(&mut self, _now: Instant, conn: ConnectionId) {
        let reason = match self.tcp.get(conn).map(|pc| &pc.state) {
            Some(ConnState::Connecting(_)) => ConnectionEnd::ConnectTimeout,
            Some(ConnState::Pending) => ConnectionEnd::BindTimeout,
            Some(ConnState::Bound(_)) | None => return,
        };
        self.close_connection(conn, reason);
    }

    /// Allocation `a` is gone: its peer connections close. Returns what it relayed.
    pub(crate) fn end_tcp_allocation(&mut self, a: &Allocation) -> RelayProtocol {
        if !self.tcp.is_tcp(a.id) {
            return RelayProtocol::Udp;
        }
        for (conn, pc) in self.tcp.remove_allocation(a.id) {
            let end = ConnectionEnd::AllocationEnded;
            self.connection_ended(conn, pc, a.user.clone(), a.client, end);
        }
        RelayProtocol::Tcp
    }

    /// Closes allocation `id`'s connections to the peers `doomed` picks (a revoked
    /// permission, or a port the policy refuses now).
    pub(crate) fn close_connections_to(
        &mut self,
        id: AllocationId,
        doomed: impl Fn(SocketAddr) -> bool,
        reason: ConnectionEnd,
    ) {
        let doomed: Vec<ConnectionId> = self
            .tcp
            .connections_of(id)
            .iter()
            .copied()
            .filter(|c| self.tcp.get(*c).is_some_and(|pc| doomed(pc.peer)))
            .collect();
        for conn in doomed {
            self.close_connection(conn, reason);
        }
    }

    fn close_connection(&mut self, conn: ConnectionId, reason: ConnectionEnd) {
        let Some(pc) = self.tcp.forget(conn) else {
            return;
        };
        let owner = self
            .table
            .get(pc.allocation)
            .map(|a| (a.user.clone(), a.client));
        match owner {
            Some((user, client)) => self.connection_ended(conn, pc, user, client, reason),
            // Unreachable: an allocation's removal takes its connections first.
            None => self.commands.push_back(Command::CloseConnection {
                id: pc.allocation,
                conn,
            }),
        }
    }

    /// The one place a connection ends: a Connect still waiting gets its 447, the data path
    /// closes the sockets, the operator sees why.
    fn connection_ended(
        &mut self,
        conn: ConnectionId,
        pc: PeerConnection,
        user: Arc<str>,
        client: FiveTuple,
        reason: ConnectionEnd,
    ) {
        let id = pc.allocation;
        if let ConnState::Connecting(d) = &pc.state {
            self.send_deferred(id, client, d, Err(447));
        }
        self.commands
            .push_back(Command::CloseConnection { id, conn });
        self.events.push(Event::PeerConnectionClosed {
            id,
            user,
            client,
            peer: pc.peer,
            conn,
            reason,
        });
    }

    // ----- helpers --------------------------------------------------------------------------

    /// The Connect response, signed with the request's key, for the control connection.
    fn send_deferred(
        &mut self,
        id: AllocationId,
        client: FiveTuple,
        d: &DeferredConnect,
        result: Result<ConnectionId, u16>,
    ) {
        let auth = Auth {
            username: d.username.clone(),
            key: d.key.clone(),
            credential: self.table.get(id).map(|a| a.credential).unwrap_or_default(),
            kind: d.kind,
        };
        let mut buf = [0u8; DEFERRED_MAX];
        let (method, txid, a) = (Method::CONNECT, d.txid, Some(&auth));
        let len = match result {
            Ok(conn) => self.success_response(method, txid, a, &mut buf, |w| {
                w.attr(&ConnectionIdAttr(conn.as_u32()))?;
                Ok(())
            }),
            Err(code) => self.error_response(method, txid, a, code, "", &mut buf, |_| Ok(())),
        };
        if let Some(len) = len {
            self.commands.push_back(Command::SendToClient {
                id,
                client,
                message: buf[..len].into(),
            });
        }
    }

    fn reject<'p>(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        auth: Option<&Auth>,
        code: u16,
        why: &str,
        out: &mut [u8],
    ) -> ClientOutput<'p> {
        let reply = self.reply_error(from, msg, auth, code, why, out);
        self.reply_or_drop(reply)
    }

    /// Where the data path dials for a Connect to `peer`: another TCP allocation of this
    /// relay (any shard's) is reached on the bind address, which the host delivers locally
    /// (a static-NAT firewall would not reflect a connection to the public one); other
    /// ports of the relay range are refused, as the UDP hairpin refuses ports no allocation
    /// holds; ports outside the range only when the operator allow-listed the address.
    /// `None`: refused.
    fn tcp_connect_target(&self, id: AllocationId, peer: SocketAddr) -> Option<SocketAddr> {
        if !self.is_own_relay_ip(peer.ip()) {
            return Some(peer);
        }
        if self.config.ports.contains(&peer.port()) {
            let family = Family::of(peer.ip());
            if !self.shared.is_tcp_relay(family, peer.port()) {
                return None;
            }
            let bind = self.relay_addr(family)?.bind;
            return Some(SocketAddr::new(bind, peer.port()));
        }
        let a = self.table.get(id)?;
        self.policy
            .is_host_allow_listed(peer, self.scope(a))
            .then_some(peer)
    }
}
