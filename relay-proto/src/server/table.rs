//! The allocation table: a slab of allocations indexed by client 5-tuple and by relayed port
//! (one index per family: there is one relay bind address per family, so the port names the
//! allocation), plus per-user counts for the quota.

use std::collections::HashMap;
use std::sync::Arc;

use super::allocation::{Allocation, AllocationId, Family};
use super::five_tuple::FiveTuple;

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    alloc: Option<Allocation>,
}

#[derive(Debug, Default)]
pub(crate) struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_tuple: HashMap<FiveTuple, AllocationId>,
    by_port: [HashMap<u16, AllocationId>; 2],
    per_user: HashMap<Arc<str>, usize>,
}

impl Table {
    pub(crate) fn len(&self) -> usize {
        self.by_tuple.len()
    }

    pub(crate) fn user_count(&self, user: &str) -> usize {
        self.per_user.get(user).copied().unwrap_or(0)
    }

    /// The id the next [`insert`](Self::insert) will use.
    pub(crate) fn next_id(&self) -> AllocationId {
        match self.free.last() {
            Some(&i) => AllocationId::new(i, self.slots[i as usize].generation),
            None => AllocationId::new(self.slots.len() as u32, 0),
        }
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
        *self.per_user.entry(alloc.user.clone()).or_insert(0) += 1;
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
        let slot = self.slots.get_mut(id.index() as usize)?;
        if slot.alloc.as_ref()?.id != id {
            return None;
        }
        let alloc = slot.alloc.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index());
        self.by_tuple.remove(&alloc.client);
        for (fam, r) in [Family::V4, Family::V6]
            .into_iter()
            .zip(alloc.relayed.iter())
        {
            if let Some(r) = r {
                self.by_port[fam.idx()].remove(&r.bind.port());
            }
        }
        if let Some(n) = self.per_user.get_mut(&alloc.user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&alloc.user);
            }
        }
        Some(alloc)
    }

    pub(crate) fn get(&self, id: AllocationId) -> Option<&Allocation> {
        self.slots
            .get(id.index() as usize)?
            .alloc
            .as_ref()
            .filter(|a| a.id == id)
    }

    pub(crate) fn get_mut(&mut self, id: AllocationId) -> Option<&mut Allocation> {
        self.slots
            .get_mut(id.index() as usize)?
            .alloc
            .as_mut()
            .filter(|a| a.id == id)
    }

    pub(crate) fn id_by_tuple(&self, t: &FiveTuple) -> Option<AllocationId> {
        self.by_tuple.get(t).copied()
    }

    pub(crate) fn id_by_port(&self, family: Family, port: u16) -> Option<AllocationId> {
        self.by_port[family.idx()].get(&port).copied()
    }

    /// Two distinct allocations mutably at once (hairpin forwarding counts on both sides).
    pub(crate) fn pair_mut(
        &mut self,
        a: AllocationId,
        b: AllocationId,
    ) -> Option<(&mut Allocation, &mut Allocation)> {
        let (ia, ib) = (a.index() as usize, b.index() as usize);
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
        assert_eq!(t.user_count("alice"), 2);
        let tuple = t.get(id1).unwrap().client;
        assert_eq!(t.id_by_tuple(&tuple), Some(id1));
        assert_eq!(t.id_by_port(Family::V4, 24001), Some(id2));
        assert_eq!(t.id_by_port(Family::V6, 24001), None);

        assert!(t.remove(id1).is_some());
        assert!(t.remove(id1).is_none());
        assert!(t.get(id1).is_none());
        assert_eq!(t.id_by_tuple(&tuple), None);
        assert_eq!(t.id_by_port(Family::V4, 24000), None);
        assert_eq!(t.user_count("alice"), 1);

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
