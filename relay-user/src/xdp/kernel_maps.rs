//! The loaded program's maps: the [`MapWriter`] the daemon runs with, and the reads of
//! what the kernel counted.

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
};
use relay_common::{
    ALLOC_COUNTERS_MAP, ALLOCATIONS_MAP, AllocCounters, Bucket, CHANNELS_MAP, CLIENTS_MAP,
    ChannelKey, ChannelValue, ClientKey, ClientTarget, Ip, LISTENERS_MAP, PEER_CHANNELS_MAP,
    PERMISSIONS_MAP, PUBLIC_IP_BITS_MAP, PUBLIC_IPS_MAP, PeerKey, PermissionKey, PublicIpBits,
    REASON_COUNTERS_MAP, REDIRECT_MAP, RELAY_ADDRS_MAP, RELAY_IPS_MAP, Reason, RelayKey,
    RelayValue, SHIELD_CONFIG_MAP, ShieldConfig, SlotBandwidth,
    bandwidth::{ALLOC_DROPS_MAP, BANDWIDTH_MAP, SLOT_BANDWIDTH_MAP},
    public_ip_bit,
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
    /// The kernel's filter in front of `public_ips` (see `PUBLIC_IP_BITS_MAP`), and how
    /// many IPs in `public_ips` have each bit.
    public_bits: Array<MapData, PublicIpBits>,
    public_bit_refs: [u32; 256],
    /// IPs a running relay handed over already in PUBLIC_IPS and counted in
    /// `public_bit_refs`: the replay of its allocations inserts them again, which must
    /// not count them twice (the bit would then never clear).
    inherited_public: std::collections::HashSet<Ip>,
    alloc_counters: PerCpuArray<MapData, AllocCounters>,
    reasons: PerCpuArray<MapData, u64>,
    redirect: Redirect,
    slot_bandwidth: Array<MapData, SlotBandwidth>,
    buckets: Array<MapData, Bucket>,
    alloc_drops: PerCpuArray<MapData, u64>,
    shield: Array<MapData, ShieldConfig>,
    listeners: HashMap<MapData, RelayKey, u32>,
    relay_ips: HashMap<MapData, Ip, u32>,
    nr_cpus: usize,
}

/// Where the maps come from: a loaded object, or descriptors handed over by the previous
/// process ([`super::adopt`]).
pub(super) type MapSource<'a> = dyn FnMut(&'static str) -> Result<Map, XdpMapsError> + 'a;

fn take<T>(get: &mut MapSource<'_>, name: &'static str) -> Result<T, XdpMapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(get(name)?).map_err(|source| XdpMapsError::Open { map: name, source })
}

/// REDIRECT_IFACES, a DEVMAP_HASH. aya types it by a kernel feature probe (whether its
/// values may carry a program fd: 8 bytes, else 4), and that probe needs CAP_BPF: a
/// process that took the maps over without it guesses differently from the one that
/// created the map. So the map's own value size decides, and the entry is written as
/// the kernel reads it: the ifindex, then (8 bytes) a program fd of 0, which is none
/// (kernel/bpf/devmap.c only considers fd > 0).
enum Redirect {
    Plain(HashMap<MapData, u32, u32>),
    WithProgram(HashMap<MapData, u32, [u32; 2]>),
}

fn redirect(get: &mut MapSource<'_>) -> Result<Redirect, XdpMapsError> {
    let open = |source| XdpMapsError::Open {
        map: REDIRECT_MAP,
        source,
    };
    let data = match get(REDIRECT_MAP)? {
        Map::DevMapHash(d) => d,
        _ => {
            return Err(open(MapError::InvalidName {
                name: format!("{REDIRECT_MAP} (not a DEVMAP_HASH)"),
            }));
        }
    };
    if data.info().map_err(open)?.value_size() == 4 {
        HashMap::try_from(Map::HashMap(data))
            .map(Redirect::Plain)
            .map_err(open)
    } else {
        HashMap::try_from(Map::HashMap(data))
            .map(Redirect::WithProgram)
            .map_err(open)
    }
}

impl KernelMaps {
    /// Takes the maps out of a loaded object (once).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, XdpMapsError> {
        Self::open_with(&mut |name| ebpf.take_map(name).ok_or(XdpMapsError::Missing(name)))
    }

    /// Opens every map through `ebpf`.
    pub(super) fn open_with(ebpf: &mut MapSource<'_>) -> Result<Self, XdpMapsError> {
        let nr_cpus =
            aya::util::nr_cpus().map_err(|(what, e)| XdpMapsError::Cpus(format!("{what}: {e}")))?;
        let public_ips: HashMap<MapData, Ip, u32> = take(ebpf, PUBLIC_IPS_MAP)?;
        // Handed over by a running relay: its IPs are in already, their bits set.
        let mut public_bit_refs = [0u32; 256];
        let mut inherited_public = std::collections::HashSet::new();
        for ip in public_ips.keys() {
            let ip = ip.map_err(upd(PUBLIC_IPS_MAP, "walk"))?;
            public_bit_refs[public_ip_bit(&ip) as usize] += 1;
            inherited_public.insert(ip);
        }
        Ok(Self {
            allocations: take(ebpf, ALLOCATIONS_MAP)?,
            relay_addrs: take(ebpf, RELAY_ADDRS_MAP)?,
            clients: take(ebpf, CLIENTS_MAP)?,
            channels: take(ebpf, CHANNELS_MAP)?,
            peer_channels: take(ebpf, PEER_CHANNELS_MAP)?,
            permissions: take(ebpf, PERMISSIONS_MAP)?,
            public_ips,
            public_bits: take(ebpf, PUBLIC_IP_BITS_MAP)?,
            public_bit_refs,
            inherited_public,
            alloc_counters: take(ebpf, ALLOC_COUNTERS_MAP)?,
            reasons: take(ebpf, REASON_COUNTERS_MAP)?,
            redirect: redirect(ebpf)?,
            slot_bandwidth: take(ebpf, SLOT_BANDWIDTH_MAP)?,
            buckets: take(ebpf, BANDWIDTH_MAP)?,
            alloc_drops: take(ebpf, ALLOC_DROPS_MAP)?,
            shield: take(ebpf, SHIELD_CONFIG_MAP)?,
            listeners: take(ebpf, LISTENERS_MAP)?,
            relay_ips: take(ebpf, RELAY_IPS_MAP)?,
            nr_cpus,
        })
    }

    /// Lets the program redirect to `ifindex` (every interface it is attached to).
    pub fn add_redirect_interface(&mut self, ifindex: u32) -> Result<(), XdpMapsError> {
        match &mut self.redirect {
            Redirect::Plain(m) => m.insert(ifindex, ifindex, 0),
            Redirect::WithProgram(m) => m.insert(ifindex, [ifindex, 0], 0),
        }
        .map_err(Into::into)
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
        super::reader::slot_counters(&self.alloc_counters, slot)
    }

    /// Datagrams counter slot `slot` dropped over a bandwidth limit, summed over CPUs.
    pub fn bandwidth_drops(&self, slot: u32) -> Result<u64, XdpMapsError> {
        super::reader::slot_drops(&self.alloc_drops, slot)
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
        super::reader::reason_counters(&self.reasons)
    }
}

impl KernelMaps {
    /// Counts an IP in (`add`) or out of PUBLIC_IPS for its bit, and writes the kernel's
    /// filter when the bit turns on or off.
    fn count_public_bit(&mut self, ip: &Ip, add: bool) -> Result<(), XdpMapsError> {
        let bit = public_ip_bit(ip) as usize;
        let refs = &mut self.public_bit_refs[bit];
        let before = *refs;
        *refs = if add {
            before + 1
        } else {
            before.saturating_sub(1)
        };
        if (before == 0) == (*refs == 0) {
            return Ok(());
        }
        let mut bits = PublicIpBits::default();
        for (b, _) in self
            .public_bit_refs
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
        {
            bits.set(b as u32);
        }
        self.public_bits
            .set(0, bits, 0)
            .map_err(upd(PUBLIC_IP_BITS_MAP, "write"))
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
            Entry::PublicIp(ip) => {
                // The bit first: the kernel must never see the IP without it. An IP the
                // previous process left in the map is counted already.
                if !self.inherited_public.remove(&ip) {
                    self.count_public_bit(&ip, true)?;
                }
                self.public_ips.insert(ip, 1, 0)
            }
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
        result.map_err(upd(key.map(), "remove"))?;
        if let Key::PublicIp(ip) = key {
            self.inherited_public.remove(&ip);
            // After the IP is out (a bit left set only costs the kernel a lookup).
            self.count_public_bit(&ip, false)?;
        }
        Ok(())
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
            .map_err(upd(ALLOC_COUNTERS_MAP, "zeroing a slot"))?;
        let zero = PerCpuValues::try_from(vec![0u64; self.nr_cpus])
            .map_err(|e| XdpMapsError::Cpus(e.to_string()))?;
        self.alloc_drops
            .set(slot, zero, 0)
            .map_err(upd(ALLOC_DROPS_MAP, "zeroing a slot"))
    }

    fn set_bandwidth(
        &mut self,
        slot: u32,
        value: SlotBandwidth,
        fresh: &[(u32, Bucket)],
    ) -> Result<(), XdpMapsError> {
        for &(index, bucket) in fresh {
            self.buckets
                .set(index, bucket, 0)
                .map_err(upd(BANDWIDTH_MAP, "resetting a bucket"))?;
        }
        self.slot_bandwidth
            .set(slot, value, 0)
            .map_err(upd(SLOT_BANDWIDTH_MAP, "update"))
    }
}
