//! One stream socket: a client connection (its 5-tuple, its TLS session if any, what it
//! sent that is not yet a whole frame) or an RFC 6062 peer connection of a TCP allocation;
//! what waits to be sent, and the flow-control state the event loops act on.
//!
//! A client data connection and its peer connection are spliced: each holds the other's
//! key (in the other table) and stops reading while the other's send queue is full.

use std::{net::SocketAddr, net::TcpStream, time::Instant};

use super::{
    connection::{Mode, Wire},
    state::splice_rules::{ReadGate, wants_read},
};
use crate::shard::slab::Key;
use relay_proto::server::{ConnectionId, FiveTuple};

/// Event-loop bookkeeping (each engine uses the fields it needs).
#[derive(Default, Debug)]
pub struct IoState {
    /// A receive (io_uring multishot recv) is armed.
    pub recv_armed: bool,
    /// A cancel of that receive was submitted and has not completed.
    pub recv_cancelling: bool,
    /// A send holds a pointer into the connection's `tx.inflight`.
    pub send_inflight: bool,
    /// The socket was shut down; the slot is freed once nothing is in flight.
    pub shut: bool,
    /// The epoll interest currently registered.
    pub epoll_mask: u32,
    /// On the state's `touched` list already.
    pub touched: bool,
    /// A writability poll (connect in progress) is armed (io_uring).
    pub poll_armed: bool,
    /// In the epoll set.
    pub registered: bool,
}

/// A datagram for a peer that the relay socket refused (buffer full): the connection
/// stops reading until it is sent, which pushes back on the client through TCP.
pub struct Stall {
    pub relay: Key,
    pub peer: SocketAddr,
}

pub struct Conn {
    pub stream: TcpStream,
    pub five: FiveTuple,
    /// Its bytes: TLS, frames not yet whole, the send queue and its marks.
    pub wire: Wire,
    pub accepted: Instant,
    /// When the last complete frame arrived; `None` before the first one.
    pub last_frame: Option<Instant>,
    /// When the last request whose MESSAGE-INTEGRITY verified arrived: only those keep a
    /// connection without an allocation open.
    pub last_authenticated: Option<Instant>,
    pub stall: Option<Stall>,
    /// Payload of the stalled datagram; keeps its capacity.
    pub stall_buf: Vec<u8>,
    /// Why it is being closed; set once.
    pub closing: Option<String>,
    /// Closes once its queue is sent, or at this time at the latest (the other end of a
    /// splice ended: what it sent still goes out).
    pub finish_by: Option<Instant>,
    /// A peer connection: the core's id for it. `None` for client connections.
    pub relay_conn: Option<ConnectionId>,
    /// A peer connection whose non-blocking connect has not completed.
    pub connecting: bool,
    /// Spliced with this socket of the other table (peer for a client data connection,
    /// client data connection for a peer).
    pub link: Option<Key>,
    /// The linked socket's queue is above the high-water mark: stop reading.
    pub partner_full: bool,
    /// Counts against `tcp.max_connections` and its source's limit. Cleared as soon as
    /// the socket is shut (the client has seen the close and may reconnect), which can
    /// be before the loop forgets it.
    pub counted: bool,
    /// On a `proxy_protocol` listener until the PROXY header is complete: the bytes of it
    /// received so far. The 5-tuple holds the balancer's address meanwhile.
    pub proxy_pending: Option<Vec<u8>>,
    /// An RFC 6062 data connection whose ConnectionBind is another worker's: not read nor
    /// processed here any more; the loop moves it to that worker once nothing of it is
    /// in flight (see `state::moves`).
    pub moving: Option<usize>,
    /// It came from another worker (a connection moves at most once).
    pub moved: bool,
    pub io: IoState,
}

impl Conn {
    pub fn new(stream: TcpStream, five: FiveTuple, mode: Mode, now: Instant) -> Self {
        Self {
            stream,
            five,
            wire: Wire::new(mode),
            accepted: now,
            last_frame: None,
            last_authenticated: None,
            stall: None,
            stall_buf: Vec::new(),
            closing: None,
            finish_by: None,
            relay_conn: None,
            connecting: false,
            link: None,
            partner_full: false,
            counted: false,
            proxy_pending: None,
            moving: None,
            moved: false,
            io: IoState::default(),
        }
    }

    /// A peer connection of a TCP allocation: not read until spliced.
    pub fn peer(stream: TcpStream, five: FiveTuple, conn: ConnectionId, now: Instant) -> Self {
        let mut c = Self::new(stream, five, Mode::Plain, now);
        c.relay_conn = Some(conn);
        c
    }

    /// Whether the loop should take more bytes from the socket now.
    pub fn wants_read(&self) -> bool {
        self.moving.is_none()
            && wants_read(ReadGate {
                closing: self.closing.is_some(),
                finishing: self.finish_by.is_some(),
                linked: self.link.is_some(),
                partner_full: self.partner_full,
                peer: self.relay_conn.is_some(),
                backed_up: self.wire.tx_full || self.stall.is_some(),
            })
    }

    /// Whether queued frames may be processed (same as reading, minus the socket).
    pub fn may_process(&self) -> bool {
        self.wants_read()
    }
}
