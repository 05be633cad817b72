//! The seam between what the daemon decides and the kernel's maps: [`MapWriter`] takes one
//! entry in or out of one fast-path map. [`KernelMaps`](super::KernelMaps) writes the
//! loaded program's maps; [`FakeMaps`](super::FakeMaps) keeps them in memory, so the
//! translation from the core's commands ([`XdpMaps`](super::XdpMaps)) is tested without
//! root.

use std::net::SocketAddr;

use aya::maps::{MapError, xdp::XdpMapError};
use relay_common::{
    ALLOCATIONS_MAP, CHANNELS_MAP, CLIENTS_MAP, ChannelKey, ChannelValue, ClientKey, ClientTarget,
    Ip, PEER_CHANNELS_MAP, PERMISSIONS_MAP, PUBLIC_IPS_MAP, PeerKey, PermissionKey, REDIRECT_MAP,
    RELAY_ADDRS_MAP, RelayKey, RelayValue, ShieldConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum XdpMapsError {
    #[error("XDP map `{0}` is missing from the object (or was already taken)")]
    Missing(&'static str),
    #[error("XDP map `{map}` has an unexpected type or layout: {source}")]
    Open {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "{op} in XDP map `{map}` failed: {source} (a full map means max_allocations is too low)"
    )]
    Update {
        map: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("adding ifindex {ifindex} to XDP map `{REDIRECT_MAP}` failed: {source}")]
    Redirect {
        ifindex: u32,
        #[source]
        source: XdpMapError,
    },
    #[error("no allocation counter slot left (all {0} in use): raise max_allocations")]
    SlotsExhausted(u32),
    #[error("relay address {0} has no allocation in the XDP maps")]
    UnknownRelay(SocketAddr),
    #[error("cannot size per-CPU values: {0}")]
    Cpus(String),
}

/// The error of a failed `op` ("insert", "remove", ...) on map `map`.
pub fn update_error(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> XdpMapsError {
    move |source| XdpMapsError::Update { map, op, source }
}

/// One entry of one map, as the kernel program reads it (see `relay_common`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Relay bind address → public address and counter slot.
    Allocation(RelayKey, RelayValue),
    /// A name of a relayed address (public, and bind behind a NAT) → bind address, slot.
    RelayAddr(RelayKey, RelayValue),
    /// Client 5-tuple and family → bind address and slot (Send indications).
    Client(ClientKey, RelayValue),
    /// Client's channel → relay and peer (ChannelData out).
    Channel(ChannelKey, ChannelValue),
    /// Relay and peer → client and channel (ChannelData in).
    PeerChannel(PeerKey, ClientTarget),
    /// Relay and peer IP → client (Data indications in), with its port flag.
    Permission(PermissionKey, ClientTarget),
    /// An IP that relayed addresses are advertised on (hairpin detection).
    PublicIp(Ip),
}

/// Where an [`Entry`] sits: its map and key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Allocation(RelayKey),
    RelayAddr(RelayKey),
    Client(ClientKey),
    Channel(ChannelKey),
    PeerChannel(PeerKey),
    Permission(PermissionKey),
    PublicIp(Ip),
}

impl Entry {
    pub fn key(&self) -> Key {
        match *self {
            Entry::Allocation(k, _) => Key::Allocation(k),
            Entry::RelayAddr(k, _) => Key::RelayAddr(k),
            Entry::Client(k, _) => Key::Client(k),
            Entry::Channel(k, _) => Key::Channel(k),
            Entry::PeerChannel(k, _) => Key::PeerChannel(k),
            Entry::Permission(k, _) => Key::Permission(k),
            Entry::PublicIp(ip) => Key::PublicIp(ip),
        }
    }
}

impl Key {
    /// The map's name in the object (for errors).
    pub fn map(&self) -> &'static str {
        match self {
            Key::Allocation(_) => ALLOCATIONS_MAP,
            Key::RelayAddr(_) => RELAY_ADDRS_MAP,
            Key::Client(_) => CLIENTS_MAP,
            Key::Channel(_) => CHANNELS_MAP,
            Key::PeerChannel(_) => PEER_CHANNELS_MAP,
            Key::Permission(_) => PERMISSIONS_MAP,
            Key::PublicIp(_) => PUBLIC_IPS_MAP,
        }
    }
}

/// Writes the fast-path maps, one entry at a time. Errors name the map and the operation.
pub trait MapWriter {
    /// Inserts `entry`, or replaces what its key held.
    fn insert(&mut self, entry: Entry) -> Result<(), XdpMapsError>;
    /// Removes what `key` holds; a key that holds nothing is an error, as in the kernel.
    fn remove(&mut self, key: Key) -> Result<(), XdpMapsError>;
    /// The value under a [`Key::RelayAddr`] or [`Key::Client`] (the maps read back: an
    /// entry is removed only while it still leads to the relayed address going away).
    fn relay_value(&self, key: Key) -> Option<RelayValue>;
    /// Zeroes counter slot `slot` (`ALLOC_COUNTERS`) for a new relayed address.
    fn zero_counters(&mut self, slot: u32) -> Result<(), XdpMapsError>;
    /// Writes the shield's settings (`SHIELD_CONFIG`).
    fn shield_config(&mut self, config: ShieldConfig) -> Result<(), XdpMapsError>;
}
