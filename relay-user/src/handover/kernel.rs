//! The kernel half of an upgrade: the XDP program stays attached and its maps stay the
//! same kernel objects; the old process sends their descriptors after the sockets, over
//! the same SCM_RIGHTS channel, and the forwarding guard's records in the manifest. The
//! new process opens the maps on those descriptors and holds the links
//! ([`crate::xdp::adopt`]); nothing is pinned in bpffs, so a crash of either process
//! leaves no kernel object behind (a bpf_link detaches and a map is freed when the last
//! descriptor closes) and the guard table is recovered by the next start as before.
//!
//! The old process names its object ([`program_tag`](crate::xdp::adopt::program_tag)) in
//! [`PROGRAM_ENV`] and its maps' layouts in [`MAPS_ENV`]. A new build whose object differs
//! loads its own program onto the same maps and swaps it into the links at commit
//! ([`crate::xdp::swap`]); one whose maps are laid out differently, or that lacks the
//! capabilities to load a program, refuses before the old one pauses anything (see
//! [`changed_program`]).

use std::os::fd::{BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::xdp::{
    ForwardingGuard, GuardState, XdpMaps, XdpPath,
    adopt::{AdoptError, AttachedInfo, program_tag},
    swap::{MapLayouts, Prepared},
};

/// The old process's kernel object tag, for the new process to compare before it says
/// it is prepared.
pub const PROGRAM_ENV: &str = "RELAY_HANDOVER_XDP_PROGRAM";
/// The old process's shared maps' layouts ([`MapLayouts`], JSON).
pub const MAPS_ENV: &str = "RELAY_HANDOVER_XDP_MAPS";

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
        program: xdp.running_tag(),
        max_allocations,
        attached,
        forwarding: forwarding.map(ForwardingGuard::state).unwrap_or_default(),
        clients_lost,
    };
    Ok((manifest, fds))
}

/// The old process's side, when it starts the new one: what tells it the running
/// program (environment variables).
pub fn offer(xdp: &XdpPath) -> Vec<(&'static str, String)> {
    let mut env = vec![(PROGRAM_ENV, xdp.running_tag())];
    match MapLayouts::of(crate::xdp::swap::object(), xdp.max_allocations()) {
        Ok(l) => env.push((MAPS_ENV, serde_json::to_string(&l).unwrap_or_default())),
        Err(e) => {
            tracing::warn!(error = %e, "cannot describe the XDP maps: a successor with another kernel program will refuse")
        }
    }
    env
}

/// Drops the old process's description of its program from this process's environment,
/// so that its own successor never takes it for this process's: after
/// [`changed_program`] read it, or at once when the new config runs no XDP program.
pub fn forget_running_program() {
    // SAFETY: called once before any other thread exists.
    unsafe {
        std::env::remove_var(PROGRAM_ENV);
        std::env::remove_var(MAPS_ENV);
    }
}

/// The new process, before it says it is prepared: `Ok(None)` when it runs the same
/// program as the running relay (or that one runs none), `Ok(Some)` with this build's
/// program loaded (maps not yet bound) when it differs and can be swapped in, `Err` with
/// why it cannot.
pub fn changed_program() -> Result<Option<Prepared>, String> {
    let theirs = std::env::var(PROGRAM_ENV).ok();
    let layouts = std::env::var(MAPS_ENV).ok();
    forget_running_program();
    let Some(theirs) = theirs.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let ours = program_tag();
    if theirs == ours {
        return Ok(None);
    }
    let changed =
        format!("this build's XDP program ({ours}) differs from the running one ({theirs})");
    let running: MapLayouts = layouts
        .as_deref()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            format!("{changed}, and the running relay (an older build) does not describe its maps: restart to run it (allocations are lost)")
        })?;
    let this = MapLayouts::of(crate::xdp::swap::object(), running.max_allocations)
        .map_err(|e| format!("{changed}: {e}"))?;
    if let Some(why) = this.incompatible(&running) {
        return Err(format!(
            "{changed} and cannot take its maps over ({why}): maps are not migrated; restart to run it (allocations are lost)"
        ));
    }
    let missing = crate::privileges::missing_for_loading();
    if !missing.is_empty() {
        return Err(format!(
            "{changed}; loading it needs {missing}, which this process did not inherit (the running relay keeps them for its successor only when it runs XDP from a config file with `[xdp] program_upgrades` on: see README, \"Upgrading without dropping calls\")"
        ));
    }
    let prepared = Prepared::new().map_err(|e| format!("{changed}; loading it: {e}"))?;
    tracing::info!(
        ours,
        theirs,
        "this build's XDP program differs from the running one: same map layouts, it will be loaded onto the running maps and swapped in at commit"
    );
    Ok(Some(prepared))
}

/// The new process's side: the path (holding the links), its map writer, and the guard
/// (not armed: see [`ForwardingGuard::adopt`]).
pub fn adopt(
    manifest: &KernelManifest,
    fds: Vec<OwnedFd>,
    swap: Option<Prepared>,
) -> Result<(XdpPath, XdpMaps, ForwardingGuard), AdoptError> {
    let (path, maps) = XdpPath::adopt(manifest.max_allocations, &manifest.attached, fds, swap)?;
    Ok((
        path,
        maps,
        ForwardingGuard::adopt(manifest.forwarding.clone()),
    ))
}
