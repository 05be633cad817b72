//! The hash maps the data paths look up for every datagram: a client's 5-tuple, a relayed
//! port, a relay socket's address. With std's SipHash-1-3 (a dozen small `write` calls
//! for a 5-tuple), these lookups were the largest userspace item of a UDP worker at 1000
//! allocations: the core's `handle_client` with its 5-tuple lookup, the relay-socket
//! lookup and the key comparisons, 12% of its samples (BENCHMARKS.md, stop 24). foldhash,
//! the default hasher of hashbrown (which std's map is built on, so already in the build),
//! hashes the same keys in a few multiplications.
//!
//! Its seed is random per process and per map (address-space layout, the clock), as with
//! std's `RandomState`: a client picks its source address and port, so the keys of the
//! 5-tuple map are the sender's choice, but it sees neither the seed nor the table's
//! order. foldhash claims no more than that ("minimal DoS resistance"), which is what a
//! map needs whose keys a sender cannot multiply at will (one allocation per 5-tuple,
//! each authenticated, quotas per user and per source).

use std::collections::HashMap;

/// The hasher of [`FastMap`].
pub type FastState = foldhash::fast::RandomState;

/// A `HashMap` with [`FastState`]; make one with `FastMap::default()`.
pub type FastMap<K, V> = HashMap<K, V, FastState>;
