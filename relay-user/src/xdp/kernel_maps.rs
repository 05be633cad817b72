//! The loaded program's maps: the [`MapWriter`] the daemon runs with, and the reads of
//! what the kernel counted.

use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
};
use relay_common::{
    ALLOC_COUNTERS_MAP, ALLOCATIONS_MAP, AllocCounters, CHANNELS_MAP, CLIENTS_MAP, ChannelKey,
    ChannelValue, ClientKey, ClientTarget, Ip, LISTENERS_MAP, PEER_CHANNELS_MAP, PERMISSIONS_MAP,
    PUBLIC_IPS_MAP, PeerKey, PermissionKey, REASON_COUNTERS_MAP, REDIRECT_MAP, RELAY_ADDRS_MAP,
    RELAY_IPS_MAP, Reason, RelayKey, RelayValue, SHIELD_CONFIG_MAP, ShieldConfig,
};

use super::writer::{Entry, Key, MapWriter, XdpMapsError, update_error as upd};

/// Handles to the fast-path maps of a loaded object.
pub struct KernelMaps {
    allocations: HashMap<MapData, RelayKey, RelayValue>,
    relay_addrs: HashMap<MapData, RelayKey, RelayValue>,
    clients: HashMap<MapData, ClientKey, RelayValue>,
    channels: HashMap<MapData, ChannelKey, ChannelValue>,
    peer_channels: HashMap<MapData, PeerKey, ClientTarget>,
    permissions: HashMap<MapData, PermissionKey, ClientTarget>,
    public_ips: HashMap<MapData, Ip, u32>,
    alloc_counters: PerCpuArray<MapData, AllocCounters>,
    reasons: PerCpuArray<MapData, u64>,
    redirect: DevMapHash<MapData>,
    shield: Array<MapData, ShieldConfig>,
    listeners: HashMap<MapData, RelayKey, u32>,
    relay_ips: HashMap<MapData, Ip, u32>,
    nr_cpus: usize,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, XdpMapsError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(XdpMapsError::Missing(name))?;
    T::try_from(map).map_err(|source| XdpMapsError::Open { map: name, source })
}

impl KernelMaps {
    /// Takes the maps out of a loaded object (once).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, XdpMapsError> {
        let nr_cpus =
            aya::util::nr_cpus().map_err(|(what, e)| XdpMapsError::Cpus(format!("{what}: {e}")))?;
        Ok(Self {
            allocations: take(ebpf, ALLOCATIONS_MAP)?,
            relay_addrs: take(ebpf, RELAY_ADDRS_MAP)?,
            clients: take(ebpf, CLIENTS_MAP)?,
            channels: take(ebpf, CHANNELS_MAP)?,
            peer_channels: take(ebpf, PEER_CHANNELS_MAP)?,
            permissions: take(ebpf, PERMISSIONS_MAP)?,
            public_ips: take(ebpf, PUBLIC_IPS_MAP)?,
            alloc_counters: take(ebpf, ALLOC_COUNTERS_MAP)?,
            reasons: take(ebpf, REASON_COUNTERS_MAP)?,
            redirect: take(ebpf, REDIRECT_MAP)?,
            shield: take(ebpf, SHIELD_CONFIG_MAP)?,
            listeners: take(ebpf, LISTENERS_MAP)?,
            relay_ips: take(ebpf, RELAY_IPS_MAP)?,
            nr_cpus,
        })
    }

    /// Lets the program redirect to `ifindex` (every interface it is attached to).
    pub fn add_redirect_interface(&mut self, ifindex: u32) -> Result<(), XdpMapsError> {
        self.redirect
            .insert(ifindex, ifindex, None, 0)
            .map_err(|source| XdpMapsError::Redirect { ifindex, source })
    }

    /// A UDP listener's address for the shield.
    pub fn add_listener(&mut self, address: RelayKey) -> Result<(), XdpMapsError> {
        self.listeners
            .insert(address, 1, 0)
            .map_err(upd(LISTENERS_MAP, "insert"))
    }

    /// An IP relay sockets are bound to, for the shield.
    pub fn add_relay_ip(&mut self, ip: Ip) -> Result<(), XdpMapsError> {
        self.relay_ips
            .insert(ip, 1, 0)
            .map_err(upd(RELAY_IPS_MAP, "insert"))
    }

    /// Counter slot `slot`, summed over CPUs.
    pub fn allocation_counters(&self, slot: u32) -> Result<AllocCounters, XdpMapsError> {
        let v = self
            .alloc_counters
            .get(&slot, 0)
            .map_err(upd(ALLOC_COUNTERS_MAP, "read"))?;
        Ok(AllocCounters::sum(v.iter()))
    }

    /// Entries in the PERMISSIONS and CHANNELS maps (a walk over both: for tests and
    /// diagnostics, not for a hot path).
    pub fn kernel_entries(&self) -> Result<(usize, usize), XdpMapsError> {
        let permissions = self
            .permissions
            .keys()
            .try_fold(0, |n, k| k.map(|_| n + 1))
            .map_err(upd(PERMISSIONS_MAP, "walk"))?;
        let channels = self
            .channels
            .keys()
            .try_fold(0, |n, k| k.map(|_| n + 1))
            .map_err(upd(CHANNELS_MAP, "walk"))?;
        Ok((permissions, channels))
    }

    /// Packets per [`Reason`], summed over CPUs.
    pub fn reason_counters(&self) -> Result<Vec<(Reason, u64)>, XdpMapsError> {
        let mut out = Vec::with_capacity(Reason::ALL.len());
        for &r in Reason::ALL {
            let v = self
                .reasons
                .get(&(r as u32), 0)
                .map_err(upd(REASON_COUNTERS_MAP, "read"))?;
            out.push((r, v.iter().sum()));
        }
        Ok(out)
    }
}

impl MapWriter for KernelMaps {
    fn insert(&mut self, entry: Entry) -> Result<(), XdpMapsError> {
        let result = match entry {
            Entry::Allocation(k, v) => self.allocations.insert(k, v, 0),
            Entry::RelayAddr(k, v) => self.relay_addrs.insert(k, v, 0),
            Entry::Client(k, v) => self.clients.insert(k, v, 0),
            Entry::Channel(k, v) => self.channels.insert(k, v, 0),
            Entry::PeerChannel(k, v) => self.peer_channels.insert(k, v, 0),
            Entry::Permission(k, v) => self.permissions.insert(k, v, 0),
            Entry::PublicIp(ip) => self.public_ips.insert(ip, 1, 0),
        };
        result.map_err(upd(entry.key().map(), "insert"))
    }

    fn remove(&mut self, key: Key) -> Result<(), XdpMapsError> {
        let result = match &key {
            Key::Allocation(k) => self.allocations.remove(k),
            Key::RelayAddr(k) => self.relay_addrs.remove(k),
            Key::Client(k) => self.clients.remove(k),
            Key::Channel(k) => self.channels.remove(k),
            Key::PeerChannel(k) => self.peer_channels.remove(k),
            Key::Permission(k) => self.permissions.remove(k),
            Key::PublicIp(ip) => self.public_ips.remove(ip),
        };
        result.map_err(upd(key.map(), "remove"))
    }

    fn relay_value(&self, key: Key) -> Option<RelayValue> {
        match &key {
            Key::RelayAddr(k) => self.relay_addrs.get(k, 0).ok(),
            Key::Client(k) => self.clients.get(k, 0).ok(),
            _ => None,
        }
    }

    fn shield_config(&mut self, config: ShieldConfig) -> Result<(), XdpMapsError> {
        self.shield
            .set(0, config, 0)
            .map_err(upd(SHIELD_CONFIG_MAP, "write"))
    }

    fn zero_counters(&mut self, slot: u32) -> Result<(), XdpMapsError> {
        let zero = PerCpuValues::try_from(vec![AllocCounters::default(); self.nr_cpus])
            .map_err(|e| XdpMapsError::Cpus(e.to_string()))?;
        self.alloc_counters
            .set(slot, zero, 0)
            .map_err(upd(ALLOC_COUNTERS_MAP, "zeroing a slot"))
    }
}
