//! The allocation table: a slab of allocations indexed by client 5-tuple and by relayed port
//! (one index per family: there is one relay bind address per family, so the port names the
//! allocation). Per-user counts for the quota live in [`Shared`](super::Shared), across shards.

use std::net::SocketAddr;

use crate::fast_map::FastMap;

use super::allocation::{Allocation, AllocationId, Family};
use super::five_tuple::FiveTuple;

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    alloc: Option<Allocation>,
}

/// Low bits of an id's index: the slot. A table holds at most one allocation per relay port
/// of each family (2 × 65536 < 2^20), so slots never reach the shard bits.
const SLOT_BITS: u32 = 20;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;

#[derive(Debug)]
pub(crate) struct Table {
    /// The shard number, in the high bits of every id's index: ids of different shards differ.
    shard_bits: u32,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Looked up for every client datagram, by port for every peer datagram: see
    /// [`FastMap`] for the hasher.
    by_tuple: FastMap<FiveTuple, AllocationId>,
    by_port: [FastMap<u16, AllocationId>; 2],
}

impl Default for Table {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Table {
    /// Shard numbers past 4095 wrap: ids stay unique among 4096 live shards.
    pub(crate) fn new(shard: u32) -> Self {
        Self {
            shard_bits: (shard << SLOT_BITS) & !SLOT_MASK,
            slots: Vec::new(),
            free: Vec::new(),
            by_tuple: FastMap::default(),
            by_port: Default::default(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_tuple.len()
    }

    /// The id the next [`insert`](Self::insert) will use.
    pub(crate) fn next_id(&self) -> AllocationId {
        let (slot, generation) = match self.free.last() {
            Some(&i) => (i, self.slots[i as usize].generation),
            None => (self.slots.len() as u32, 0),
        };
        debug_assert!(slot <= SLOT_MASK, "allocation slots exhausted");
        AllocationId::new(self.shard_bits | slot, generation)
    }

    /// The slot of an id of this table; `None` for another shard's id.
    fn slot_of(&self, id: AllocationId) -> Option<usize> {
        let index = id.index();
        (index & !SLOT_MASK == self.shard_bits).then_some((index & SLOT_MASK) as usize)
    }

    /// Inserts an allocation whose `id` came from [`next_id`](Self::next_id). The caller has
    /// checked that the 5-tuple and relayed ports are free.
    pub(crate) fn insert(&mut self, alloc: Allocation) -> AllocationId {
        let id = self.next_id();
        debug_assert_eq!(alloc.id, id);
        debug_assert!(!self.by_tuple.contains_key(&alloc.client));
        self.by_tuple.insert(alloc.client, id);
        for (fam, r) in [Family::V4, Family::V6]
            .into_iter()
            .zip(alloc.relayed.iter())
        {
            if let Some(r) = r {
                self.by_port[fam.idx()].insert(r.bind.port(), id);
            }
        }
        match self.free.pop() {
            Some(i) => self.slots[i as usize].alloc = Some(alloc),
            None => self.slots.push(Slot {
                generation: 0,
                alloc: Some(alloc),
            }),
        }
        id
    }

    pub(crate) fn remove(&mut self, id: AllocationId) -> Option<Allocation> {
        let i = self.slot_of(id)?;
        let slot = self.slots.get_mut(i)?;
        if slot.alloc.as_ref()?.id != id {
            return None;
        }
        let alloc = slot.alloc.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(i as u32);
        self.by_tuple.remove(&alloc.client);
        for (fam, r) in [Family::V4, Family::V6]
            .into_iter()
            .zip(alloc.relayed.iter())
        {
            if let Some(r) = r {
                self.by_port[fam.idx()].remove(&r.bind.port());
            }
        }
        Some(alloc)
    }

    pub(crate) fn get(&self, id: AllocationId) -> Option<&Allocation> {
        self.slots
            .get(self.slot_of(id)?)?
            .alloc
            .as_ref()
            .filter(|a| a.id == id)
    }

    pub(crate) fn get_mut(&mut self, id: AllocationId) -> Option<&mut Allocation> {
        let i = self.slot_of(id)?;
        self.slots.get_mut(i)?.alloc.as_mut().filter(|a| a.id == id)
    }

    pub(crate) fn id_by_tuple(&self, t: &FiveTuple) -> Option<AllocationId> {
        self.by_tuple.get(t).copied()
    }

    pub(crate) fn id_by_port(&self, family: Family, port: u16) -> Option<AllocationId> {
        self.by_port[family.idx()].get(&port).copied()
    }

    /// The allocation whose relayed address is bound to `relay`: the port finds it, the
    /// address must match too.
    pub(crate) fn id_by_relay(&self, relay: SocketAddr) -> Option<AllocationId> {
        let family = Family::of(relay.ip());
        let id = self.id_by_port(family, relay.port())?;
        let a = self.get(id)?;
        a.relayed(family)
            .is_some_and(|r| r.bind == relay)
            .then_some(id)
    }

    /// Two distinct allocations mutably at once (hairpin forwarding counts on both sides).
    pub(crate) fn pair_mut(
        &mut self,
        a: AllocationId,
        b: AllocationId,
    ) -> Option<(&mut Allocation, &mut Allocation)> {
        let (ia, ib) = (self.slot_of(a)?, self.slot_of(b)?);
        if ia == ib || ia >= self.slots.len() || ib >= self.slots.len() {
            return None;
        }
        let (lo, hi) = (ia.min(ib), ia.max(ib));
        let (left, right) = self.slots.split_at_mut(hi);
        let (x, y) = (&mut left[lo], &mut right[0]);
        let (x, y) = (x.alloc.as_mut()?, y.alloc.as_mut()?);
        let (pa, pb) = if ia < ib { (x, y) } else { (y, x) };
        (pa.id == a && pb.id == b).then_some((pa, pb))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Allocation> {
        self.slots.iter().filter_map(|s| s.alloc.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::allocation::{Counters, Relayed};
    use crate::server::five_tuple::Transport;
    use std::time::{Duration, Instant};

    fn alloc(id: AllocationId, client_port: u16, relay_port: u16, user: &str) -> Allocation {
        let now = Instant::now();
        Allocation {
            id,
            client: FiveTuple::new(
                ([10, 0, 0, 1], client_port).into(),
                ([192, 0, 2, 1], 3478).into(),
                Transport::Udp,
            ),
            user: user.into(),
            credential: Default::default(),
            relayed: [
                Some(Relayed {
                    bind: ([10, 1, 1, 1], relay_port).into(),
                    public: ([198, 51, 100, 1], relay_port).into(),
                }),
                None,
            ],
            created: now,
            expires: now + Duration::from_secs(600),
            lifetime: Duration::from_secs(600),
            permissions: vec![],
            channels: vec![],
            limit: Default::default(),
            counters: Counters::default(),
            dont_fragment: false,
            last_response: None,
        }
    }

    #[test]
    fn insert_lookup_remove_and_ids_are_not_reused() {
        let mut t = Table::default();
        let id1 = t.next_id();
        t.insert(alloc(id1, 1000, 24000, "alice"));
        let id2 = t.next_id();
        t.insert(alloc(id2, 1001, 24001, "alice"));
        assert_ne!(id1, id2);
        assert_eq!(t.len(), 2);
        let tuple = t.get(id1).unwrap().client;
        assert_eq!(t.id_by_tuple(&tuple), Some(id1));
        assert_eq!(t.id_by_port(Family::V4, 24001), Some(id2));
        assert_eq!(t.id_by_port(Family::V6, 24001), None);
        assert_eq!(t.id_by_relay(([10, 1, 1, 1], 24001).into()), Some(id2));
        assert_eq!(
            t.id_by_relay(([10, 1, 1, 2], 24001).into()),
            None,
            "other address"
        );
        assert_eq!(
            t.id_by_relay(([10, 1, 1, 1], 24002).into()),
            None,
            "other port"
        );

        assert!(t.remove(id1).is_some());
        assert!(t.remove(id1).is_none());
        assert!(t.get(id1).is_none());
        assert_eq!(t.id_by_tuple(&tuple), None);
        assert_eq!(t.id_by_port(Family::V4, 24000), None);

        // The slot is reused under a new generation: the old id stays dead.
        let id3 = t.next_id();
        assert_eq!(id3.index(), id1.index());
        assert_ne!(id3, id1);
        t.insert(alloc(id3, 1000, 24000, "bob"));
        assert!(t.get(id1).is_none());
        assert!(t.get(id3).is_some());
        assert_eq!(t.iter().count(), 2);
    }

    #[test]
    fn per_allocation_state_is_small() {
        // Fixed part; permissions (48 B) and channels (56 B) live in short vectors.
        let size = std::mem::size_of::<Allocation>();
        assert!(size <= 400, "Allocation is {size} bytes");
        assert!(std::mem::size_of::<crate::server::allocation::Permission>() <= 48);
        assert!(std::mem::size_of::<crate::server::allocation::Channel>() <= 64);
    }

    #[test]
    fn ids_of_different_shards_differ_and_are_not_found_across() {
        let mut t0 = Table::new(0);
        let mut t1 = Table::new(1);
        let a = t0.next_id();
        t0.insert(alloc(a, 1, 24000, "a"));
        let b = t1.next_id();
        t1.insert(alloc(b, 1, 24000, "a"));
        assert_ne!(a, b, "first allocation of each shard");
        assert!(t0.get(a).is_some() && t1.get(b).is_some());
        assert!(t0.get(b).is_none() && t1.get(a).is_none());
        assert!(t0.remove(b).is_none());
        assert_eq!(t0.len(), 1);
        // The shard number wraps above the slot bits, never into them.
        let wrapped = Table::new(1 << (32 - SLOT_BITS));
        assert_eq!(wrapped.next_id(), Table::new(0).next_id());
    }

    #[test]
    fn pair_mut_gives_both_in_order() {
        let mut t = Table::default();
        let a = t.next_id();
        t.insert(alloc(a, 1, 24000, "a"));
        let b = t.next_id();
        t.insert(alloc(b, 2, 24001, "b"));
        let (x, y) = t.pair_mut(b, a).unwrap();
        assert_eq!((x.id, y.id), (b, a));
        assert!(t.pair_mut(a, a).is_none());
    }
}
