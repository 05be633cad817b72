//! The RFC 6062 splice's decisions, without sockets: whether a socket reads, what a
//! ConnectionBind's pairing comes to, what happens to bytes from an unspliced peer, how a
//! connect's outcome is taken, and how the survivor of a splice drains and times out.
//! [`State`](super::State) holds the sockets and carries these out; keeping them here
//! lets them be tested as plain functions of (input, now).

use std::time::Instant;

use super::FINISH_GRACE;
use crate::{shard::slab::Key, tcp::connection::Wire};

/// What decides whether a stream socket is read now (see [`wants_read`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadGate {
    /// It is being closed.
    pub closing: bool,
    /// It drains what it holds before closing (the other side of its splice ended).
    pub finishing: bool,
    /// Spliced with a socket of the other table.
    pub linked: bool,
    /// That socket's send queue is above the high-water mark.
    pub partner_full: bool,
    /// A peer connection (of a TCP allocation).
    pub peer: bool,
    /// Its own send queue is full, or a datagram for a peer waits for room.
    pub backed_up: bool,
}

/// Whether the loop should take more bytes from the socket now.
pub fn wants_read(g: ReadGate) -> bool {
    if g.closing || g.finishing {
        return false;
    }
    if g.linked {
        // Spliced: only the other side's queue matters (its own queue filling up is the
        // other direction).
        return !g.partner_full;
    }
    // A peer connection waits unread for its ConnectionBind.
    !g.peer && !g.backed_up
}

/// What `SpliceConnection` does, given what the tables hold (`None`: not there any more).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pairing {
    /// Both are there: each carries the other's bytes from now on.
    Link { data: Key, peer: Key },
    /// One side vanished in between: end the data connection if it is still known (it
    /// has nothing left to carry), and tell the core the connection is closed.
    Abort { close_data: Option<Key> },
}

/// Pairs the data connection found by its 5-tuple with the peer connection found by its
/// CONNECTION-ID; `data_live`/`peer_live` say whether a key still names a socket.
pub fn pair(data: Option<(Key, bool)>, peer: Option<(Key, bool)>) -> Pairing {
    match (data, peer) {
        (Some((data, true)), Some((peer, true))) => Pairing::Link { data, peer },
        (data, _) => Pairing::Abort {
            close_data: data.map(|(k, _)| k),
        },
    }
}

/// What bytes read from a peer connection come to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PeerBytes {
    /// Closing already, or nothing read.
    Ignore,
    /// To its spliced client data connection.
    Forward(Key),
    /// It is not read until spliced: bytes before are a loop's mistake, not the peer's
    /// data to keep.
    Close,
}

pub fn peer_bytes(closing: bool, len: usize, link: Option<Key>) -> PeerBytes {
    if closing || len == 0 {
        return PeerBytes::Ignore;
    }
    match link {
        Some(d) => PeerBytes::Forward(d),
        None => PeerBytes::Close,
    }
}

/// What a finished non-blocking connect to a peer comes to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Connected {
    /// An error on a socket that was not connecting (a later error the loop saw): the
    /// core heard of this connection already.
    Ignore,
    /// Tell the core it is up.
    Up,
    /// Forget it, close it, and tell the core (it answers 447).
    Failed,
}

pub fn connected(connecting: bool, failed: bool) -> Connected {
    match (connecting, failed) {
        (false, true) => Connected::Ignore,
        (_, false) => Connected::Up,
        (true, true) => Connected::Failed,
    }
}

/// What happens to a spliced socket whose partner ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Finish {
    /// Nothing left to send, or closing anyway: close now.
    Close,
    /// Send what is queued, closing at this time at the latest.
    DrainUntil(Instant),
    /// Draining already: its deadline stays.
    Draining,
}

pub fn finish(tx_empty: bool, closing: bool, finish_by: Option<Instant>, now: Instant) -> Finish {
    if tx_empty || closing {
        return Finish::Close;
    }
    match finish_by {
        None => Finish::DrainUntil(now + FINISH_GRACE),
        Some(_) => Finish::Draining,
    }
}

/// A draining socket has sent everything: it closes.
pub fn drained(finish_by: Option<Instant>, tx_empty: bool) -> bool {
    finish_by.is_some() && tx_empty
}

/// A draining socket ran out of time (the sweep closes it).
pub fn overdue(finish_by: Option<Instant>, now: Instant) -> bool {
    finish_by.is_some_and(|t| now >= t)
}

/// Spliced bytes for the peer side's queue: never dropped (TCP pushes back instead).
/// Returns whether the reader of the other side must pause.
pub fn queue_spliced(to: &mut Wire, bytes: &[u8]) -> bool {
    to.queue(bytes, false);
    to.tx_full
}

#[cfg(test)]
#[path = "splice_rules_tests.rs"]
mod tests;
