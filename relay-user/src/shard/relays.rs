//! The UDP relay sockets of a shard's allocations, the same table on every data path
//! (UDP workers, the TCP/TLS shard; epoll or io_uring): one slab whose keys carry a
//! generation (an event queued for a socket that has since closed, and whose slot was
//! reused, misses instead of reaching the newcomer), the one token encoding every loop
//! uses for them ([`Key::token`]), and how a loop learns to watch or forget a socket
//! ([`Registry`]). `T` is what a data path keeps per socket besides it (the TCP shard:
//! the connection stalled on it).

use std::{
    collections::VecDeque,
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, RawFd},
};

use relay_proto::fast_map::FastMap;

use super::slab::{Key, Slab};

/// A socket taken out of the table, with the key it had.
pub type Taken<T> = (Key, RelaySocket<T>);

pub struct RelaySocket<T> {
    pub sock: UdpSocket,
    /// The bind address (relay address and port).
    pub addr: SocketAddr,
    pub edge: T,
}

/// How a loop watches the relay sockets.
#[derive(Clone, Copy, Debug)]
pub enum Registry {
    /// Added to the epoll set `epoll` as they open, reported as `key.token(kind)` for
    /// `events`: a socket that cannot be watched is not opened (the core then answers
    /// with another port). Closing its fd takes a socket out of the set: closed sockets
    /// wait in [`RelaySockets::retire`] until [`RelaySockets::bury`].
    Epoll { epoll: RawFd, kind: u8, events: u32 },
    /// The loop (io_uring) arms and cancels its own watches, told by
    /// [`RelaySockets::next_change`].
    Queued,
}

/// What a loop with a [`Registry::Queued`] registry is told.
#[derive(Debug)]
pub enum Change {
    Opened(Key),
    /// Out of the table: the loop ends its watch (an armed receive holds the socket and
    /// its port open), then closes the socket, or [`RelaySockets::retire`]s it while
    /// queued sends may still name its fd.
    Closed(Key, UdpSocket),
}

pub struct RelaySockets<T> {
    slab: Slab<RelaySocket<T>>,
    /// Looked up for every datagram sent to a peer (keys: this relay's own addresses).
    by_addr: FastMap<SocketAddr, Key>,
    registry: Registry,
    changes: VecDeque<Change>,
    /// Closed sockets whose fd a batch's queued sends may still name: kept until those
    /// are handed to the kernel ([`bury`](Self::bury)), so a send can never reach
    /// whatever socket reuses the fd number.
    retired: Vec<UdpSocket>,
}

impl<T> Default for RelaySockets<T> {
    fn default() -> Self {
        Self {
            slab: Slab::default(),
            by_addr: FastMap::default(),
            registry: Registry::Queued,
            changes: VecDeque::new(),
            retired: Vec::new(),
        }
    }
}

impl<T> RelaySockets<T> {
    /// How the loop watches sockets: set by the loop before anything can be allocated.
    pub fn set_registry(&mut self, registry: Registry) {
        self.registry = registry;
    }

    /// Adds `sock`, just bound to `addr`, and has the loop watch it. A socket already in
    /// the table for `addr` (cannot happen: the port was bound just now) is closed as
    /// any other, never leaked. Fails, keeping nothing, when the epoll set refuses it.
    pub fn open(&mut self, addr: SocketAddr, sock: UdpSocket, edge: T) -> io::Result<Key> {
        let (key, old) = self.insert(addr, sock, edge);
        if let Some((old, r)) = old {
            self.unregister(old, r.sock);
        }
        match self.registry {
            Registry::Epoll {
                epoll,
                kind,
                events,
            } => {
                let fd = self.slab.get(key).map_or(-1, |r| r.sock.as_raw_fd());
                let add =
                    crate::epoll::ctl(epoll, libc::EPOLL_CTL_ADD, fd, events, key.token(kind));
                if let Err(e) = add {
                    self.by_addr.remove(&addr);
                    self.slab.remove(key);
                    return Err(e);
                }
            }
            Registry::Queued => self.changes.push_back(Change::Opened(key)),
        }
        Ok(key)
    }

    /// Takes the socket bound to `addr` out of the table and out of the loop's watch;
    /// returns what the data path kept for it.
    pub fn close(&mut self, addr: SocketAddr) -> Option<T> {
        let key = self.by_addr.remove(&addr)?;
        let r = self.slab.remove(key)?;
        self.unregister(key, r.sock);
        Some(r.edge)
    }

    fn unregister(&mut self, key: Key, sock: UdpSocket) {
        match self.registry {
            // Closing the fd (at the next bury) removes it from the epoll set; a stale
            // event for the key misses (its slot may be reused, with a new generation).
            Registry::Epoll { .. } => self.retired.push(sock),
            Registry::Queued => self.changes.push_back(Change::Closed(key, sock)),
        }
    }

    /// The next socket to watch or forget, in the order they opened and closed.
    pub fn next_change(&mut self) -> Option<Change> {
        self.changes.pop_front()
    }

    /// Hands `change` back for the next turn (the loop could not act on it now).
    pub fn defer(&mut self, change: Change) {
        self.changes.push_back(change);
    }

    /// Keeps a closed socket until [`bury`](Self::bury).
    pub fn retire(&mut self, sock: UdpSocket) {
        self.retired.push(sock);
    }

    /// The descriptors [`bury`](Self::bury) closes next.
    pub fn retired_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.retired.iter().map(|s| s.as_raw_fd())
    }

    /// Closes the retired sockets: call once the sends queued so far were handed to the
    /// kernel (which then holds its own reference to their sockets).
    pub fn bury(&mut self) {
        self.retired.clear();
    }

    fn insert(&mut self, addr: SocketAddr, sock: UdpSocket, edge: T) -> (Key, Option<Taken<T>>) {
        let key = self.slab.insert(RelaySocket { sock, addr, edge });
        let old = self
            .by_addr
            .insert(addr, key)
            .and_then(|old| Some((old, self.slab.remove(old)?)));
        (key, old)
    }

    pub fn get(&self, key: Key) -> Option<&RelaySocket<T>> {
        self.slab.get(key)
    }

    pub fn get_mut(&mut self, key: Key) -> Option<&mut RelaySocket<T>> {
        self.slab.get_mut(key)
    }

    /// The key of the socket bound to `addr`.
    pub fn key(&self, addr: &SocketAddr) -> Option<Key> {
        self.by_addr.get(addr).copied()
    }

    /// The socket bound to `addr`.
    pub fn by_addr(&self, addr: &SocketAddr) -> Option<&RelaySocket<T>> {
        self.slab.get(self.key(addr)?)
    }

    /// The bind address and fd of socket `key`, if it is open.
    pub fn addr_fd(&self, key: Key) -> Option<(SocketAddr, RawFd)> {
        self.slab.get(key).map(|r| (r.addr, r.sock.as_raw_fd()))
    }

    pub fn is_open(&self, key: Key) -> bool {
        self.slab.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Every open socket with its bind address (a handover passes them on).
    pub fn iter(&self) -> impl Iterator<Item = &RelaySocket<T>> + '_ {
        self.slab.keys().filter_map(|k| self.slab.get(k))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn any() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    fn sock() -> UdpSocket {
        UdpSocket::bind(any()).unwrap()
    }

    fn opened(c: Option<Change>) -> Key {
        match c {
            Some(Change::Opened(k)) => k,
            other => panic!("expected Opened, got {other:?}"),
        }
    }

    fn closed(c: Option<Change>) -> Key {
        match c {
            Some(Change::Closed(k, _)) => k,
            other => panic!("expected Closed, got {other:?}"),
        }
    }

    #[test]
    fn a_closed_sockets_key_misses_after_its_slot_is_reused() {
        let mut t = RelaySockets::default();
        // The table keys by the address asked for (port 0 here: any port).
        let a = t.open(any(), sock(), 'a').unwrap();
        assert_eq!(opened(t.next_change()), a);
        assert_eq!(t.close(any()), Some('a'));
        assert_eq!(closed(t.next_change()), a);
        let b = t.open(any(), sock(), 'b').unwrap();
        assert_eq!(a.idx, b.idx, "slot reused");
        assert!(t.get(a).is_none(), "a stale key reached the new socket");
        assert!(!t.is_open(a) && t.is_open(b));
        assert_eq!(t.get(b).map(|r| r.edge), Some('b'));
        assert_eq!(t.by_addr(&any()).map(|r| r.edge), Some('b'));
        assert!(
            t.close(SocketAddr::from((Ipv4Addr::LOCALHOST, 1)))
                .is_none()
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_queued_loop_hears_of_every_socket_in_order_and_of_a_replaced_one() {
        let mut t = RelaySockets::default();
        let a = t.open(any(), sock(), ()).unwrap();
        // The same address again: the old socket is closed before the new one opens.
        let b = t.open(any(), sock(), ()).unwrap();
        assert_eq!(opened(t.next_change()), a);
        assert_eq!(closed(t.next_change()), a);
        assert_eq!(opened(t.next_change()), b);
        assert!(t.next_change().is_none());
        assert_eq!(t.len(), 1);
        // A change the loop could not act on comes back at the next turn.
        t.close(any());
        let c = t.next_change().unwrap();
        t.defer(c);
        assert_eq!(closed(t.next_change()), b);
    }

    #[test]
    fn an_epoll_loop_watches_a_socket_from_its_opening_and_closes_it_at_the_bury() {
        let epoll = crate::epoll::Epoll::new().unwrap();
        let mut t = RelaySockets::default();
        t.set_registry(Registry::Epoll {
            epoll: epoll.fd(),
            kind: 7,
            events: libc::EPOLLIN as u32,
        });
        let s = sock();
        let bound = s.local_addr().unwrap();
        let key = t.open(bound, s, ()).unwrap();
        assert!(t.next_change().is_none(), "epoll registers at once");
        sock().send_to(b"x", bound).unwrap();
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        assert_eq!(epoll.wait(&mut events, 5000).unwrap(), 1);
        let token = events[0].u64;
        assert_eq!(token, key.token(7));

        t.close(bound);
        assert!(t.next_change().is_none());
        // Retired: the port stays bound until the bury.
        assert!(UdpSocket::bind(bound).is_err());
        t.bury();
        UdpSocket::bind(bound).expect("the port is free after the bury");
    }

    #[test]
    fn a_socket_the_epoll_set_refuses_is_not_opened() {
        let mut t = RelaySockets::default();
        t.set_registry(Registry::Epoll {
            epoll: -1,
            kind: 7,
            events: libc::EPOLLIN as u32,
        });
        assert!(t.open(any(), sock(), ()).is_err());
        assert!(t.is_empty() && t.key(&any()).is_none());
        assert!(t.next_change().is_none());
    }
}
