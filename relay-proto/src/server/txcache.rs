//! Bounded memories that outlive an allocation.
//!
//! The last response of a live allocation is kept on the allocation itself (one per
//! allocation, see `Allocation::last_response`). Two things need memory beyond that:
//!
//! - [`Graveyard`]: the response to a Refresh with LIFETIME 0, so that its retransmission gets
//!   the same success instead of 437 (RFC 8656 §7.3 notes the problem);
//! - [`RedirectMemory`]: clients (IP and user) recently sent to an alternate server, so that
//!   one bounced back is not redirected again (no ping-pong between two full servers);
//! - [`BindFailures`]: Allocate transactions whose relay port the data path could not bind,
//!   so that re-submitting the request tries another port a bounded number of times.
//!
//! The graveyard is only consulted for a 5-tuple without an allocation, so a new allocation
//! on the same 5-tuple is never answered from it.
//!
//! Both hold only what authenticated requests caused, expire after a fixed time and are
//! capped; entries are kept in insertion order, which is also expiry order.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::TRANSACTION_TTL;
use super::five_tuple::FiveTuple;

/// Most responses kept for deleted allocations.
pub const GRAVEYARD_CAPACITY: usize = 4096;

type TxKey = (FiveTuple, u16, [u8; 12]);

#[derive(Debug, Default)]
pub(crate) struct Graveyard {
    map: HashMap<TxKey, (Instant, Box<[u8]>)>,
    order: VecDeque<(Instant, TxKey)>,
}

impl Graveyard {
    pub(crate) fn insert(
        &mut self,
        now: Instant,
        client: FiveTuple,
        method: u16,
        txid: [u8; 12],
        bytes: &[u8],
    ) {
        self.prune(now);
        while self.order.len() >= GRAVEYARD_CAPACITY {
            self.pop_oldest();
        }
        let key = (client, method, txid);
        self.map.insert(key, (now, bytes.into()));
        self.order.push_back((now, key));
    }

    pub(crate) fn get(
        &self,
        now: Instant,
        client: &FiveTuple,
        method: u16,
        txid: [u8; 12],
    ) -> Option<&[u8]> {
        if self.map.is_empty() {
            return None;
        }
        let (at, bytes) = self.map.get(&(*client, method, txid))?;
        // Entries past their TTL may linger until the next prune; do not answer from them.
        (now.saturating_duration_since(*at) < TRANSACTION_TTL).then_some(&bytes[..])
    }

    pub(crate) fn prune(&mut self, now: Instant) {
        while let Some(&(at, _)) = self.order.front() {
            if now.saturating_duration_since(at) < TRANSACTION_TTL {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Drops the oldest order entry, and its map entry unless that was re-inserted since.
    fn pop_oldest(&mut self) {
        if let Some((at, key)) = self.order.pop_front()
            && self.map.get(&key).is_some_and(|(t, _)| *t == at)
        {
            self.map.remove(&key);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Relay ports tried for one Allocate transaction before the answer is 508.
pub const RELAY_BIND_ATTEMPTS: u8 = 4;
/// Most Allocate transactions with failed binds remembered.
pub const BIND_FAILURES_CAPACITY: usize = 1024;

type AllocKey = (FiveTuple, [u8; 12]);

/// Failed relay binds per Allocate transaction (client 5-tuple, transaction id). The data
/// path re-submits a request whose relay port it could not bind; the count tells the
/// handler when to stop trying ports.
#[derive(Debug, Default)]
pub(crate) struct BindFailures {
    map: HashMap<AllocKey, (Instant, u8)>,
    order: VecDeque<(Instant, AllocKey)>,
}

impl BindFailures {
    pub(crate) fn record(&mut self, now: Instant, client: FiveTuple, txid: [u8; 12]) {
        self.prune(now);
        let key = (client, txid);
        if let Some((_, n)) = self.map.get_mut(&key) {
            *n = n.saturating_add(1);
            return;
        }
        while self.order.len() >= BIND_FAILURES_CAPACITY {
            if let Some((_, k)) = self.order.pop_front() {
                self.map.remove(&k);
            }
        }
        self.map.insert(key, (now, 1));
        self.order.push_back((now, key));
    }

    /// Failed binds for this transaction within [`TRANSACTION_TTL`] of the first.
    pub(crate) fn count(&self, now: Instant, client: &FiveTuple, txid: [u8; 12]) -> u8 {
        if self.map.is_empty() {
            return 0;
        }
        self.map
            .get(&(*client, txid))
            .filter(|(at, _)| now.saturating_duration_since(*at) < TRANSACTION_TTL)
            .map_or(0, |(_, n)| *n)
    }

    pub(crate) fn prune(&mut self, now: Instant) {
        while let Some(&(at, _)) = self.order.front() {
            if now.saturating_duration_since(at) < TRANSACTION_TTL {
                break;
            }
            if let Some((_, k)) = self.order.pop_front() {
                self.map.remove(&k);
            }
        }
    }
}

/// How long a redirected client is remembered.
pub const REDIRECT_MEMORY: Duration = Duration::from_secs(60);
/// Most redirected clients remembered.
pub const REDIRECT_CAPACITY: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct RedirectMemory {
    set: HashMap<(IpAddr, Arc<str>), Instant>,
    order: VecDeque<(Instant, (IpAddr, Arc<str>))>,
}

impl RedirectMemory {
    pub(crate) fn remember(&mut self, now: Instant, ip: IpAddr, user: &str) {
        self.prune(now);
        while self.order.len() >= REDIRECT_CAPACITY {
            if let Some((_, k)) = self.order.pop_front() {
                self.set.remove(&k);
            }
        }
        let key: (IpAddr, Arc<str>) = (ip, user.into());
        if self.set.insert(key.clone(), now).is_none() {
            self.order.push_back((now, key));
        }
    }

    pub(crate) fn contains(&self, now: Instant, ip: IpAddr, user: &str) -> bool {
        if self.set.is_empty() {
            return false;
        }
        let key: (IpAddr, Arc<str>) = (ip, user.into());
        self.set
            .get(&key)
            .is_some_and(|at| now.saturating_duration_since(*at) < REDIRECT_MEMORY)
    }

    pub(crate) fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < REDIRECT_MEMORY {
                break;
            }
            if let Some((_, k)) = self.order.pop_front() {
                self.set.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::five_tuple::Transport;

    fn tuple(port: u16) -> FiveTuple {
        FiveTuple::new(
            ([192, 0, 2, 7], port).into(),
            ([192, 0, 2, 1], 3478).into(),
            Transport::Udp,
        )
    }

    #[test]
    fn graveyard_expires_and_is_bounded() {
        let t0 = Instant::now();
        let mut g = Graveyard::default();
        g.insert(t0, tuple(1), 4, [1; 12], b"resp");
        assert_eq!(g.get(t0, &tuple(1), 4, [1; 12]), Some(&b"resp"[..]));
        assert_eq!(g.get(t0, &tuple(1), 3, [1; 12]), None);
        assert_eq!(g.get(t0, &tuple(2), 4, [1; 12]), None);
        let later = t0 + TRANSACTION_TTL;
        assert_eq!(g.get(later, &tuple(1), 4, [1; 12]), None);
        g.prune(later);
        assert_eq!(g.len(), 0);

        for i in 0..(GRAVEYARD_CAPACITY as u32 + 10) {
            let mut txid = [0u8; 12];
            txid[..4].copy_from_slice(&i.to_le_bytes());
            g.insert(t0, tuple(1), 4, txid, b"x");
        }
        assert_eq!(g.len(), GRAVEYARD_CAPACITY);
    }

    #[test]
    fn bind_failures_count_per_transaction_expire_and_are_bounded() {
        let t0 = Instant::now();
        let mut b = BindFailures::default();
        b.record(t0, tuple(1), [1; 12]);
        b.record(t0, tuple(1), [1; 12]);
        assert_eq!(b.count(t0, &tuple(1), [1; 12]), 2);
        assert_eq!(b.count(t0, &tuple(1), [2; 12]), 0);
        assert_eq!(b.count(t0, &tuple(2), [1; 12]), 0);
        assert_eq!(b.count(t0 + TRANSACTION_TTL, &tuple(1), [1; 12]), 0);
        b.prune(t0 + TRANSACTION_TTL);
        assert!(b.map.is_empty() && b.order.is_empty());
        for i in 0..(BIND_FAILURES_CAPACITY as u32 + 10) {
            let mut txid = [0u8; 12];
            txid[..4].copy_from_slice(&i.to_le_bytes());
            b.record(t0, tuple(1), txid);
        }
        assert_eq!(b.map.len(), BIND_FAILURES_CAPACITY);
    }

    #[test]
    fn redirect_memory_expires() {
        let t0 = Instant::now();
        let mut r = RedirectMemory::default();
        let ip: IpAddr = [192, 0, 2, 9].into();
        r.remember(t0, ip, "alice");
        assert!(r.contains(t0, ip, "alice"));
        assert!(!r.contains(t0, ip, "bob"));
        assert!(!r.contains(t0 + REDIRECT_MEMORY, ip, "alice"));
        r.prune(t0 + REDIRECT_MEMORY);
        assert!(r.set.is_empty() && r.order.is_empty());
    }
}
