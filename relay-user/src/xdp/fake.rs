//! The fast-path maps in memory: a [`MapWriter`] for tests of what the daemon writes,
//! without root or a loaded program. It keeps what the kernel would hold, and nothing of
//! its limits: no map is ever full.

use std::collections::{BTreeSet, HashMap};

use aya::maps::MapError;
use relay_common::{RelayValue, ShieldConfig};

use super::writer::{Entry, Key, MapWriter, XdpMapsError, update_error};

#[derive(Debug, Default)]
pub struct FakeMaps {
    entries: HashMap<Key, Entry>,
    /// Counter slots zeroed so far.
    zeroed: BTreeSet<u32>,
    /// The shield settings last written.
    pub shield: Option<ShieldConfig>,
}

impl FakeMaps {
    /// What `key` holds.
    pub fn get(&self, key: Key) -> Option<Entry> {
        self.entries.get(&key).copied()
    }

    /// Entries in the map named `map` (`relay_common::PERMISSIONS_MAP`, ...).
    pub fn count(&self, map: &str) -> usize {
        self.entries.keys().filter(|k| k.map() == map).count()
    }

    /// Whether counter slot `slot` has been zeroed.
    pub fn zeroed(&self, slot: u32) -> bool {
        self.zeroed.contains(&slot)
    }
}

impl MapWriter for FakeMaps {
    fn insert(&mut self, entry: Entry) -> Result<(), XdpMapsError> {
        self.entries.insert(entry.key(), entry);
        Ok(())
    }

    fn remove(&mut self, key: Key) -> Result<(), XdpMapsError> {
        match self.entries.remove(&key) {
            Some(_) => Ok(()),
            None => Err(update_error(key.map(), "remove")(MapError::KeyNotFound)),
        }
    }

    fn relay_value(&self, key: Key) -> Option<RelayValue> {
        match self.entries.get(&key)? {
            Entry::RelayAddr(_, v) | Entry::Client(_, v) => Some(*v),
            _ => None,
        }
    }

    fn zero_counters(&mut self, slot: u32) -> Result<(), XdpMapsError> {
        self.zeroed.insert(slot);
        Ok(())
    }

    fn shield_config(&mut self, config: ShieldConfig) -> Result<(), XdpMapsError> {
        self.shield = Some(config);
        Ok(())
    }
}
