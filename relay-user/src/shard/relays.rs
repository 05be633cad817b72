//! The UDP relay sockets of a shard's allocations, the same table on both data paths:
//! one slab whose keys carry a generation (an event queued for a socket that has since
//! closed, and whose slot was reused, misses instead of reaching the newcomer) and the
//! one token encoding every loop uses for them ([`Key::token`]). `T` is what a data path
//! keeps per socket besides it (the TCP shard: the connection stalled on it).

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
};

use super::slab::{Key, Slab};

/// A socket taken out of the table, with the key it had.
pub type Taken<T> = (Key, RelaySocket<T>);

pub struct RelaySocket<T> {
    pub sock: UdpSocket,
    /// The bind address (relay address and port).
    pub addr: SocketAddr,
    pub edge: T,
}

pub struct RelaySockets<T> {
    slab: Slab<RelaySocket<T>>,
    by_addr: HashMap<SocketAddr, Key>,
}

impl<T> Default for RelaySockets<T> {
    fn default() -> Self {
        Self {
            slab: Slab::default(),
            by_addr: HashMap::new(),
        }
    }
}

impl<T> RelaySockets<T> {
    /// Adds `sock`, just bound to `addr`. A socket already in the table for `addr`
    /// (cannot happen: the port was bound just now) is returned for the caller to
    /// close, never leaked.
    pub fn insert(
        &mut self,
        addr: SocketAddr,
        sock: UdpSocket,
        edge: T,
    ) -> (Key, Option<Taken<T>>) {
        let key = self.slab.insert(RelaySocket { sock, addr, edge });
        let old = self
            .by_addr
            .insert(addr, key)
            .and_then(|old| Some((old, self.slab.remove(old)?)));
        (key, old)
    }

    /// Takes the socket bound to `addr` out of the table; the caller closes it once
    /// nothing in flight names it.
    pub fn close(&mut self, addr: SocketAddr) -> Option<Taken<T>> {
        let key = self.by_addr.remove(&addr)?;
        Some((key, self.slab.remove(key)?))
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

    #[test]
    fn a_closed_sockets_key_misses_after_its_slot_is_reused() {
        let mut t = RelaySockets::default();
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let sock = || UdpSocket::bind(any).unwrap();
        // The table keys by the address asked for (port 0 here: any port).
        let (a, old) = t.insert(any, sock(), 'a');
        assert!(old.is_none());
        let (_, closed) = t.close(any).unwrap();
        assert_eq!(closed.edge, 'a');
        let (b, _) = t.insert(any, sock(), 'b');
        assert_eq!(a.idx, b.idx, "slot reused");
        assert!(t.get(a).is_none(), "a stale key reached the new socket");
        assert_eq!(t.get(b).map(|r| r.edge), Some('b'));
        assert_eq!(t.by_addr(&any).map(|r| r.edge), Some('b'));
        assert!(
            t.close(SocketAddr::from((Ipv4Addr::LOCALHOST, 1)))
                .is_none()
        );
        assert_eq!(t.len(), 1);
    }
}
