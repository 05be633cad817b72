//! Taking over the kernel fast path of the previous process on an upgrade
//! ([`crate::handover`]): its program stays attached and its maps stay the same kernel
//! objects, so packets keep being forwarded while userspace changes hands.
//!
//! The previous process sends a descriptor of every map the daemon uses and of every
//! bpf_link; this one opens the maps on them (map lookups and updates through a
//! descriptor need no capability on Linux 6.5+, so a new process that inherited none
//! works) and holds the links, which keep the program attached for as long as any
//! descriptor of them is open. With the same program nothing is loaded or attached
//! anew, so none of the capabilities loading needs (CAP_BPF, CAP_PERFMON,
//! CAP_NET_ADMIN) is needed either; a changed program is loaded onto the same maps
//! ([`super::swap`]).

use std::{
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    sync::Arc,
};

use relay_common::{
    ALLOC_COUNTERS_MAP, ALLOCATIONS_MAP, CHANNELS_MAP, CLIENTS_MAP, IFACE_COUNTERS_MAP,
    IFACE_LOW_MAP, LISTENERS_MAP, PEER_CHANNELS_MAP, PERMISSIONS_MAP, PUBLIC_IP_BITS_MAP,
    PUBLIC_IPS_MAP, REASON_COUNTERS_MAP, REDIRECT_MAP, RELAY_ADDRS_MAP, RELAY_IPS_MAP,
    SHIELD_CONFIG_MAP,
    bandwidth::{ALLOC_DROPS_MAP, BANDWIDTH_MAP, SLOT_BANDWIDTH_MAP},
};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{
    Attached, XdpMaps, XdpMapsError, XdpPath, XdpReader,
    attach::Link,
    kernel_maps::KernelMaps,
    reader::{dup, from_fd},
};

/// Every map the daemon opens (map writer and counters reader), in the order their
/// descriptors travel.
pub const HANDED_MAPS: &[&str] = &[
    ALLOCATIONS_MAP,
    RELAY_ADDRS_MAP,
    CLIENTS_MAP,
    CHANNELS_MAP,
    PEER_CHANNELS_MAP,
    PERMISSIONS_MAP,
    PUBLIC_IPS_MAP,
    PUBLIC_IP_BITS_MAP,
    ALLOC_COUNTERS_MAP,
    REASON_COUNTERS_MAP,
    REDIRECT_MAP,
    SLOT_BANDWIDTH_MAP,
    BANDWIDTH_MAP,
    ALLOC_DROPS_MAP,
    SHIELD_CONFIG_MAP,
    LISTENERS_MAP,
    RELAY_IPS_MAP,
    IFACE_COUNTERS_MAP,
    IFACE_LOW_MAP,
];

/// Names the kernel object this build embeds: the first 16 hex digits of its SHA-256.
/// Two builds with the same tag run the same program on the same map layout (the
/// layout is part of the object: BTF and map definitions).
pub fn program_tag() -> String {
    let digest = sha2::Sha256::digest(super::swap::object());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// One attached interface, as the manifest carries it (its link's descriptor travels
/// beside it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachedInfo {
    pub interface: String,
    pub ifindex: u32,
    pub mode: String,
}

/// The map descriptors a loaded path keeps for a later handover (duplicates: the map
/// writer takes the object's own handles).
pub(super) fn dup_handed(ebpf: &aya::Ebpf) -> Result<Vec<(&'static str, OwnedFd)>, XdpMapsError> {
    HANDED_MAPS
        .iter()
        .map(|&name| {
            let map = dup(ebpf, name)?;
            let fd = map_fd(&map, name)?
                .try_clone_to_owned()
                .map_err(|e| XdpMapsError::Cpus(format!("dup of {name}: {e}")))?;
            Ok((name, fd))
        })
        .collect()
}

pub(super) fn map_fd<'a>(
    map: &'a aya::maps::Map,
    name: &'static str,
) -> Result<BorrowedFd<'a>, XdpMapsError> {
    use aya::maps::Map;
    match map {
        Map::HashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::Array(d)
        | Map::DevMapHash(d) => Ok(d.fd().as_fd()),
        _ => Err(XdpMapsError::Missing(name)),
    }
}

/// Why this path cannot be handed over, if it cannot.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(
        "XDP on `{0}` is attached through netlink (no XDP bpf_link on this kernel, before 5.9): it cannot be handed over; restart to upgrade"
    )]
    Netlink(String),
    #[error("{expected} map descriptors and {links} link descriptors expected, {got} arrived")]
    Count {
        expected: usize,
        links: usize,
        got: usize,
    },
    #[error("opening the handed-over maps: {0}")]
    Maps(#[source] XdpMapsError),
    #[error("loading this build's XDP program onto the running maps: {0}")]
    Swap(#[source] super::XdpError),
}

impl XdpPath {
    /// What travels to the new process: (map name, descriptor) for [`HANDED_MAPS`], and
    /// each attached interface with its link's descriptor.
    #[allow(clippy::type_complexity)]
    pub fn handover_fds(
        &self,
    ) -> Result<(Vec<BorrowedFd<'_>>, Vec<(AttachedInfo, BorrowedFd<'_>)>), AdoptError> {
        let maps = self.handed.iter().map(|(_, fd)| fd.as_fd()).collect();
        let mut links = Vec::with_capacity(self.attached.len());
        for a in &self.attached {
            let Link::Fd(fd) = &a.link else {
                return Err(AdoptError::Netlink(a.interface.clone()));
            };
            let info = AttachedInfo {
                interface: a.interface.clone(),
                ifindex: a.ifindex,
                mode: a.mode.to_owned(),
            };
            links.push((info, fd.as_fd()));
        }
        Ok((maps, links))
    }

    /// Takes over what the previous process ran: `fds` are its [`HANDED_MAPS`]
    /// descriptors then one per `attached` link. Returns the path (which holds the links:
    /// dropping it detaches) and the map writer, with bookkeeping empty: the restored
    /// allocations replay their entries into it, overwriting what the maps hold with the
    /// same keys and values (the counter slots are assigned and zeroed anew).
    /// With `swap` (this build's program differs), the program is loaded onto the
    /// handed maps here, and swapped into the links at commit ([`XdpPath::mark_committed`]).
    pub fn adopt(
        max_allocations: u32,
        attached: &[AttachedInfo],
        fds: Vec<OwnedFd>,
        swap: Option<super::swap::Prepared>,
    ) -> Result<(Self, XdpMaps), AdoptError> {
        let expected = HANDED_MAPS.len();
        if fds.len() != expected + attached.len() {
            return Err(AdoptError::Count {
                expected,
                links: attached.len(),
                got: fds.len(),
            });
        }
        let mut fds = fds.into_iter();
        let handed: Vec<(&'static str, OwnedFd)> =
            HANDED_MAPS.iter().copied().zip(fds.by_ref()).collect();
        let mut open = |name: &'static str| {
            let (_, fd) = handed
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or(XdpMapsError::Missing(name))?;
            let fd = fd
                .try_clone()
                .map_err(|e| XdpMapsError::Cpus(format!("dup of {name}: {e}")))?;
            from_fd(fd, name)
        };
        let ebpf = match swap {
            Some(p) => Some(p.load_onto(&handed).map_err(AdoptError::Swap)?),
            None => None,
        };
        let reader = Arc::new(XdpReader::open_with(&mut open).map_err(AdoptError::Maps)?);
        let mut kernel = KernelMaps::open_with(&mut open).map_err(AdoptError::Maps)?;
        let attached: Vec<Attached> = attached
            .iter()
            .zip(fds)
            .map(|(a, fd)| Attached {
                interface: a.interface.clone(),
                ifindex: a.ifindex,
                mode: if a.mode == "native" {
                    "native"
                } else {
                    "generic"
                },
                link: Link::Fd(fd),
            })
            .collect();
        for a in &attached {
            kernel
                .add_redirect_interface(a.ifindex)
                .map_err(AdoptError::Maps)?;
            if ebpf.is_some() {
                tracing::info!(interface = %a.interface, ifindex = a.ifindex, mode = a.mode,
                    "XDP link taken over from the previous process; this build's program is loaded onto the same maps and replaces the running one at commit");
            } else {
                tracing::info!(interface = %a.interface, ifindex = a.ifindex, mode = a.mode,
                    "XDP program taken over from the previous process: still attached, same maps");
            }
        }
        let max_allocations = max_allocations.max(1);
        let maps = XdpMaps::with_writer(kernel, max_allocations);
        let path = Self {
            ebpf,
            attached,
            max_allocations,
            reader,
            handed,
            handed_over: false,
            adopted_uncommitted: true,
            swap_failed: false,
        };
        Ok((path, maps))
    }
}

impl XdpPath {
    /// What the maps were sized for.
    pub fn max_allocations(&self) -> u32 {
        self.max_allocations
    }
}
