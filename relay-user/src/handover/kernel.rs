//! The kernel half of an upgrade: the XDP program stays attached and its maps stay the
//! same kernel objects; the old process sends their descriptors after the sockets, over
//! the same SCM_RIGHTS channel, and the forwarding guard's records in the manifest. The
//! new process opens the maps on those descriptors and holds the links
//! ([`crate::xdp::adopt`]); nothing is pinned in bpffs, so a crash of either process
//! leaves no kernel object behind (a bpf_link detaches and a map is freed when the last
//! descriptor closes) and the guard table is recovered by the next start as before.
//!
//! The program must be the same: the old process names its object
//! ([`program_tag`](crate::xdp::adopt::program_tag)) in [`PROGRAM_ENV`], and a new build
//! whose object differs refuses before the old one pauses anything (see
//! [`changed_program`]).

use std::os::fd::{BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::xdp::{
    ForwardingGuard, GuardState, XdpMaps, XdpPath,
    adopt::{AdoptError, AttachedInfo, program_tag},
};

/// The old process's kernel object tag, for the new process to compare before it says
/// it is prepared.
pub const PROGRAM_ENV: &str = "RELAY_HANDOVER_XDP_PROGRAM";

/// What the manifest says about the kernel path (its descriptors follow the sockets':
/// the maps, then one per link).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KernelManifest {
    /// [`program_tag`] of the running program.
    pub program: String,
    /// What the maps were sized for (they keep that size).
    pub max_allocations: u32,
    pub attached: Vec<AttachedInfo>,
    pub forwarding: GuardState,
    /// A UDP allocation of the old process failed to reach CLIENTS: the kernel does not
    /// know every client, and the new process must not claim it does.
    #[serde(default)]
    pub clients_lost: bool,
}

impl KernelManifest {
    /// How many descriptors follow the sockets.
    pub fn fd_count(&self) -> usize {
        crate::xdp::adopt::HANDED_MAPS.len() + self.attached.len()
    }
}

/// The old process's side: the manifest entry and the descriptors, in their order.
pub fn describe<'a>(
    xdp: &'a XdpPath,
    max_allocations: u32,
    forwarding: Option<&ForwardingGuard>,
    clients_lost: bool,
) -> Result<(KernelManifest, Vec<BorrowedFd<'a>>), AdoptError> {
    let (maps, links) = xdp.handover_fds()?;
    let mut fds = maps;
    let mut attached = Vec::with_capacity(links.len());
    for (info, fd) in links {
        attached.push(info);
        fds.push(fd);
    }
    let manifest = KernelManifest {
        program: program_tag(),
        max_allocations,
        attached,
        forwarding: forwarding.map(ForwardingGuard::state).unwrap_or_default(),
        clients_lost,
    };
    Ok((manifest, fds))
}

/// The new process, before it says it is prepared: why it cannot take over the running
/// program, if it cannot. `None` also when the old process runs no XDP program.
pub fn changed_program() -> Option<String> {
    let theirs = std::env::var(PROGRAM_ENV).ok()?;
    // SAFETY: read once before any other thread exists.
    unsafe { std::env::remove_var(PROGRAM_ENV) };
    let ours = program_tag();
    (!theirs.is_empty() && theirs != ours).then(|| {
        format!(
            "this build's XDP program ({ours}) differs from the running one ({theirs}): swapping a changed \
             kernel program in during an upgrade is not implemented yet; restart the relay to run it \
             (allocations are lost), or upgrade to a build with the same kernel program"
        )
    })
}

/// The new process's side: the path (holding the links), its map writer, and the guard
/// (not armed: see [`ForwardingGuard::adopt`]).
pub fn adopt(
    manifest: &KernelManifest,
    fds: Vec<OwnedFd>,
) -> Result<(XdpPath, XdpMaps, ForwardingGuard), AdoptError> {
    let (path, maps) = XdpPath::adopt(manifest.max_allocations, &manifest.attached, fds)?;
    Ok((
        path,
        maps,
        ForwardingGuard::adopt(manifest.forwarding.clone()),
    ))
}
