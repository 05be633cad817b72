//! RFC 6062 data connections between workers. The kernel spreads client connections over
//! the workers by 4-tuple, so a data connection's ConnectionBind may reach a worker whose
//! core does not hold the peer connection it names. Each core draws CONNECTION-IDs that
//! say whose they are (`id % workers`, see `Server::shard_connection_ids`): a worker that
//! reads a ConnectionBind for another worker's id as the first frame of a connection stops
//! reading it and, once its loop has nothing in flight on the socket, moves the whole
//! connection there (socket, TLS session, bytes read but not processed, ConnectionBind
//! included, and its admission count). The owner adopts it and processes those bytes as if
//! just read: its core answers the ConnectionBind and the splice is made there.
//!
//! A connection moves at most once; one the owner cannot take (it has ended) stays and
//! gets this worker's core's answer (400, no such connection), as before.

use std::{
    sync::{Arc, atomic::Ordering, mpsc},
    time::Instant,
};

use relay_proto::server::ConnectionId;

use super::State;
use crate::{
    shard::{Waker, slab::Key},
    tcp::{conn::Conn, conn::IoState, limits::SharedAdmission},
};

/// A worker's ends of the channels that move connections: its own inbox, and every
/// worker's sender and wake-up (its own included, unused).
pub struct Moves {
    index: usize,
    to: Vec<(mpsc::Sender<Moved>, Arc<Waker>)>,
    inbox: mpsc::Receiver<Moved>,
}

impl Moves {
    /// One per worker, in worker order; `wakers[i]` wakes worker `i`'s loop.
    pub fn for_workers(wakers: &[Arc<Waker>]) -> Vec<Moves> {
        let (senders, inboxes): (Vec<_>, Vec<_>) =
            wakers.iter().map(|_| mpsc::channel::<Moved>()).unzip();
        let to: Vec<_> = senders.into_iter().zip(wakers.iter().cloned()).collect();
        inboxes
            .into_iter()
            .enumerate()
            .map(|(index, inbox)| Moves {
                index,
                to: to.clone(),
                inbox,
            })
            .collect()
    }

    pub fn index(&self) -> usize {
        self.index
    }
}

/// A connection on its way to another worker. Dropped on the way (the owner ended before
/// adopting it), it gives its admission count back: the socket closes with it.
pub struct Moved {
    conn: Option<Conn>,
    admission: SharedAdmission,
}

impl Drop for Moved {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take()
            && c.counted
        {
            self.admission.release(c.five.client.ip());
        }
    }
}

impl State {
    /// Whether `frame`, about to be handled on client connection `id`, is a ConnectionBind
    /// that another worker's core must answer; if so the connection stops being read and
    /// processed here (the frame stays unconsumed) and the loop moves it when it can (see
    /// [`move_out`](Self::move_out)).
    pub(super) fn bind_elsewhere(&mut self, id: Key, frame: &[u8]) -> bool {
        let Some(moves) = &self.moves else {
            return false;
        };
        let Some(c) = self.conns.get(id) else {
            return false;
        };
        // Only a fresh connection: the ConnectionBind must be its first frame (RFC 6062
        // §5.4), and one that moved already stays where it is.
        if c.last_frame.is_some() || c.moved || c.link.is_some() {
            return false;
        }
        let Some(conn) = ConnectionId::of_connection_bind(frame) else {
            return false;
        };
        let owner = conn.shard(moves.to.len());
        if owner == moves.index {
            return false;
        }
        let c = self.conns.get_mut(id).expect("checked above");
        c.moving = Some(owner);
        self.touch(id);
        true
    }

    /// Client connection `id` is moving and the loop holds nothing of it in flight (no
    /// receive armed, no send pending, out of its epoll set): it leaves this worker for
    /// its owner. If the owner has ended, it stays and this core answers its ConnectionBind.
    pub fn move_out(&mut self, id: Key, now: Instant) {
        let Some(owner) = self.conns.get(id).and_then(|c| c.moving) else {
            return;
        };
        let Some(mut c) = self.take_conn(id) else {
            return;
        };
        c.moving = None;
        c.moved = true;
        c.io = IoState::default();
        let client = c.five;
        let moves = self.moves.as_ref().expect("only moving with workers");
        let (to, waker) = &moves.to[owner];
        let parcel = Moved {
            conn: Some(c),
            admission: self.admission.clone(),
        };
        match to.send(parcel) {
            Ok(()) => {
                waker.wake();
                super::bump(&self.stats.moved_out);
                tracing::debug!(%client, worker = owner,
                    "RFC 6062 data connection moved to the worker holding its peer connection");
            }
            Err(mpsc::SendError(mut parcel)) => {
                tracing::warn!(%client, worker = owner,
                    "cannot move an RFC 6062 data connection to the worker holding its peer connection \
                     (that worker has ended: see earlier errors of its TCP/TLS thread); answering it here");
                if let Some(c) = parcel.conn.take() {
                    self.adopt(c, now);
                }
            }
        }
    }

    /// Takes the connections other workers moved here.
    pub fn adopt_moved(&mut self, now: Instant) {
        while let Some(moves) = &self.moves
            && let Ok(mut parcel) = moves.inbox.try_recv()
        {
            if let Some(c) = parcel.conn.take() {
                self.adopt(c, now);
            }
        }
    }

    /// A connection as if accepted here, then the bytes it holds as if just read.
    fn adopt(&mut self, c: Conn, now: Instant) {
        let key = (c.five.client, c.five.listener);
        let id = self.conns.insert(c);
        self.stats
            .held
            .store(self.conns.len() as u64, Ordering::Relaxed);
        self.by_tuple.insert(key, id);
        // Arms its receive (io_uring), joins the epoll set, sends what it has queued.
        self.touch(id);
        self.process_rx(id, now);
        self.check_rx_limit(id);
    }
}

#[cfg(test)]
#[path = "moves_tests.rs"]
mod tests;
