//! A slab whose keys carry a generation: a completion or readiness event queued for a
//! connection (or relay socket) that has since closed, and whose slot was reused, is
//! recognised as stale instead of reaching the newcomer.

/// Generations are kept to 28 bits so a key fits an io_uring `user_data` with a kind tag.
const GEN_MASK: u32 = (1 << 28) - 1;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Key {
    pub idx: u32,
    pub generation: u32,
}

impl Key {
    /// `kind` (4 bits) | generation (28 bits) | index (32 bits).
    pub fn token(self, kind: u8) -> u64 {
        (u64::from(kind) << 60)
            | (u64::from(self.generation & GEN_MASK) << 32)
            | u64::from(self.idx)
    }

    /// The token of what lives outside any slab (a listener by index, a wake-up, a send
    /// slot): generation 0, never stale.
    pub fn fixed_token(kind: u8, idx: usize) -> u64 {
        Key {
            idx: idx as u32,
            generation: 0,
        }
        .token(kind)
    }

    /// The kind and key of a token made by [`token`](Self::token).
    pub fn from_token(token: u64) -> (u8, Key) {
        let kind = (token >> 60) as u8;
        let generation = ((token >> 32) as u32) & GEN_MASK;
        (
            kind,
            Key {
                idx: token as u32,
                generation,
            },
        )
    }
}

struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

pub struct Slab<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    pub fn insert(&mut self, value: T) -> Key {
        self.len += 1;
        if let Some(idx) = self.free.pop() {
            let e = &mut self.entries[idx as usize];
            e.generation = (e.generation + 1) & GEN_MASK;
            e.value = Some(value);
            return Key {
                idx,
                generation: e.generation,
            };
        }
        let idx = u32::try_from(self.entries.len()).expect("fewer than 2^32 entries");
        self.entries.push(Entry {
            generation: 0,
            value: Some(value),
        });
        Key { idx, generation: 0 }
    }

    pub fn get(&self, k: Key) -> Option<&T> {
        self.entries
            .get(k.idx as usize)
            .filter(|e| e.generation == k.generation & GEN_MASK)
            .and_then(|e| e.value.as_ref())
    }

    pub fn get_mut(&mut self, k: Key) -> Option<&mut T> {
        self.entries
            .get_mut(k.idx as usize)
            .filter(|e| e.generation == k.generation & GEN_MASK)
            .and_then(|e| e.value.as_mut())
    }

    pub fn remove(&mut self, k: Key) -> Option<T> {
        let e = self
            .entries
            .get_mut(k.idx as usize)
            .filter(|e| e.generation == k.generation & GEN_MASK)?;
        let v = e.value.take()?;
        self.free.push(k.idx);
        self.len -= 1;
        Some(v)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys of every live entry (a snapshot: the slab may change while they are used).
    pub fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.entries.iter().enumerate().filter_map(|(i, e)| {
            e.value.as_ref().map(|_| Key {
                idx: i as u32,
                generation: e.generation,
            })
        })
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().filter_map(|e| e.value.as_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_keys_miss_after_reuse() {
        let mut s = Slab::default();
        let a = s.insert("a");
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_eq!(a.idx, b.idx, "slot reused");
        assert_eq!(s.get(a), None);
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn tokens_round_trip() {
        let k = Key {
            idx: 0xdead_beef,
            generation: GEN_MASK,
        };
        let (kind, back) = Key::from_token(k.token(0xa));
        assert_eq!((kind, back), (0xa, k));
    }
}
