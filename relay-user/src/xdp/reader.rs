//! What the kernel counted, read through handles of its own: [`XdpReader`] holds
//! duplicated descriptors of the counter maps and of ALLOCATIONS (relayed address →
//! counter slot), so the admin endpoint and the end-of-allocation log line read the
//! counters without the map writer's mutex, which the shards take to mirror commands.
//! A scrape that waits behind a shard's map update, or a shard that waits behind a scrape
//! walking thousands of slots, is what this avoids.

use std::{net::SocketAddr, os::fd::AsFd};

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap},
};
use relay_common::{
    ALLOC_COUNTERS_MAP, ALLOCATIONS_MAP, AllocCounters, IFACE_COUNTERS_MAP, IFACE_LOW_MAP,
    IFACE_LOW_MAX, IfaceCounters, REASON_COUNTERS_MAP, Reason, RelayKey, RelayValue,
    bandwidth::ALLOC_DROPS_MAP,
};

use super::{
    kernel_maps::MapSource,
    writer::{XdpMapsError, update_error as upd},
};

/// Read-only handles to the counter maps of a loaded program. Reads take `&self` and no
/// lock: each is one lookup syscall per key, atomic per CPU slot.
pub struct XdpReader {
    /// Relay bind address → public address and counter slot (written by the map writer).
    allocations: HashMap<MapData, RelayKey, RelayValue>,
    alloc_counters: PerCpuArray<MapData, AllocCounters>,
    /// Per counter slot: datagrams dropped over a bandwidth limit.
    alloc_drops: PerCpuArray<MapData, u64>,
    reasons: PerCpuArray<MapData, u64>,
    ifaces: PerCpuHashMap<MapData, u32, IfaceCounters>,
    /// The same, indexed by ifindex, for ifindexes below `IFACE_LOW_MAX`.
    ifaces_low: PerCpuArray<MapData, IfaceCounters>,
}

impl XdpReader {
    /// Duplicates the descriptors of the counter maps of `ebpf`. Call it before the map
    /// writer takes the maps out of the object ([`XdpPath`](super::XdpPath) does at load).
    pub(super) fn open(ebpf: &Ebpf) -> Result<Self, XdpMapsError> {
        Self::open_with(&mut |name| dup(ebpf, name))
    }

    /// Opens the handles through `get` (a loaded object's maps, or descriptors handed over).
    pub(super) fn open_with(get: &mut MapSource<'_>) -> Result<Self, XdpMapsError> {
        fn typed<T: TryFrom<Map, Error = MapError>>(
            get: &mut MapSource<'_>,
            name: &'static str,
        ) -> Result<T, XdpMapsError> {
            T::try_from(get(name)?).map_err(|source| XdpMapsError::Open { map: name, source })
        }
        Ok(Self {
            allocations: typed(get, ALLOCATIONS_MAP)?,
            alloc_counters: typed(get, ALLOC_COUNTERS_MAP)?,
            alloc_drops: typed(get, ALLOC_DROPS_MAP)?,
            reasons: typed(get, REASON_COUNTERS_MAP)?,
            ifaces: typed(get, IFACE_COUNTERS_MAP)?,
            ifaces_low: typed(get, IFACE_LOW_MAP)?,
        })
    }

    /// What the kernel relayed for the relayed address `relay` (its bind address), summed
    /// over CPUs. [`XdpMapsError::UnknownRelay`] when the maps do not hold it (a TCP/TLS
    /// client's, a failed insert, or already removed): userspace carried its traffic.
    pub fn allocation_counters(&self, relay: SocketAddr) -> Result<AllocCounters, XdpMapsError> {
        slot_counters(&self.alloc_counters, self.slot(relay)?)
    }

    /// Datagrams the kernel dropped over a bandwidth limit for the relayed address `relay`,
    /// summed over CPUs.
    pub fn bandwidth_drops(&self, relay: SocketAddr) -> Result<u64, XdpMapsError> {
        slot_drops(&self.alloc_drops, self.slot(relay)?)
    }

    fn slot(&self, relay: SocketAddr) -> Result<u32, XdpMapsError> {
        match self.allocations.get(&super::maps::relay_key(relay), 0) {
            Ok(v) => Ok(v.slot),
            Err(MapError::KeyNotFound) => Err(XdpMapsError::UnknownRelay(relay)),
            Err(e) => Err(upd(ALLOCATIONS_MAP, "read")(e)),
        }
    }

    /// Packets per [`Reason`], summed over CPUs.
    pub fn reason_counters(&self) -> Result<Vec<(Reason, u64)>, XdpMapsError> {
        reason_counters(&self.reasons)
    }

    /// Packets and bytes seen per ingress ifindex, summed over CPUs, by ifindex.
    pub fn iface_counters(&self) -> Result<Vec<(u32, IfaceCounters)>, XdpMapsError> {
        let mut out = Vec::new();
        for ifindex in 0..IFACE_LOW_MAX {
            let per_cpu = self
                .ifaces_low
                .get(&ifindex, 0)
                .map_err(upd(IFACE_LOW_MAP, "read"))?;
            let sum = IfaceCounters::sum(per_cpu.iter());
            if sum.packets != 0 {
                out.push((ifindex, sum));
            }
        }
        for entry in self.ifaces.iter() {
            let (ifindex, per_cpu) = entry.map_err(upd(IFACE_COUNTERS_MAP, "walk"))?;
            out.push((ifindex, IfaceCounters::sum(per_cpu.iter())));
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out)
    }
}

/// Counter slot `slot` of ALLOC_COUNTERS, summed over CPUs.
pub(super) fn slot_counters(
    map: &PerCpuArray<MapData, AllocCounters>,
    slot: u32,
) -> Result<AllocCounters, XdpMapsError> {
    let v = map.get(&slot, 0).map_err(upd(ALLOC_COUNTERS_MAP, "read"))?;
    Ok(AllocCounters::sum(v.iter()))
}

/// Bandwidth drops of counter slot `slot` in ALLOC_DROPS, summed over CPUs.
pub(super) fn slot_drops(map: &PerCpuArray<MapData, u64>, slot: u32) -> Result<u64, XdpMapsError> {
    let v = map.get(&slot, 0).map_err(upd(ALLOC_DROPS_MAP, "read"))?;
    Ok(v.iter().sum())
}

/// Every [`Reason`]'s count in REASON_COUNTERS, summed over CPUs.
pub(super) fn reason_counters(
    map: &PerCpuArray<MapData, u64>,
) -> Result<Vec<(Reason, u64)>, XdpMapsError> {
    let mut out = Vec::with_capacity(Reason::ALL.len());
    for &r in Reason::ALL {
        let v = map
            .get(&(r as u32), 0)
            .map_err(upd(REASON_COUNTERS_MAP, "read"))?;
        out.push((r, v.iter().sum()));
    }
    Ok(out)
}

/// A second handle to map `name` of `ebpf`, on a duplicated descriptor: it stays valid
/// after the map writer takes the map out of the object.
pub(super) fn dup(ebpf: &Ebpf, name: &'static str) -> Result<Map, XdpMapsError> {
    let open = |source| XdpMapsError::Open { map: name, source };
    let data = match ebpf.map(name).ok_or(XdpMapsError::Missing(name))? {
        Map::HashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::Array(d)
        | Map::DevMapHash(d) => d,
        _ => {
            return Err(open(MapError::InvalidName {
                name: format!("{name} (not a map type the relay uses)"),
            }));
        }
    };
    let fd = data.fd().as_fd().try_clone_to_owned().map_err(|io_error| {
        open(MapError::SyscallError(aya::sys::SyscallError {
            call: "dup",
            io_error,
        }))
    })?;
    from_fd(fd, name)
}

/// A map handle on `fd` (a duplicate, or one the previous process handed over).
pub(super) fn from_fd(fd: std::os::fd::OwnedFd, name: &'static str) -> Result<Map, XdpMapsError> {
    let open = |source| XdpMapsError::Open { map: name, source };
    let data = MapData::from_fd(fd).map_err(open)?;
    Map::from_map_data(data).map_err(open)
}
