//! What `relay serve` asks of the XDP fast path: load and attach the kernel program (or
//! take the previous process's over), configure its maps, and make them this process's
//! when a handover commits. Apart from the serve sequence because it is the privileged,
//! kernel-facing part: it changes with the kernel program, not with the shards.

use anyhow::Context as _;

use crate::{
    config::{AttachMode, Config},
    shard::Kernel,
    xdp::{ForwardingGuard, XdpPath},
};

/// The kernel program (if it runs), its maps as the shards use them, and the forwarding
/// it needs (restored when dropped).
pub(super) type FastPath = (Option<XdpPath>, Kernel, Option<ForwardingGuard>);

/// What the relay needs capabilities for once the fast path is set up. `retiring`: a
/// taken-over program this process detaches at commit (the new config turns XDP off),
/// which is a bpf() call too.
pub(super) fn still_needed(
    config: &Config,
    (xdp, _, forwarding): &FastPath,
    config_file: bool,
    retiring: bool,
) -> crate::privileges::Needs {
    use crate::privileges::is_privileged_port;
    let low_ports = config
        .listeners
        .iter()
        .map(|l| l.address.port())
        .chain([config.admin.address.port(), config.ports.low])
        .any(is_privileged_port);
    crate::privileges::Needs {
        teardown: forwarding.as_ref().is_some_and(|f| f.restores_at_exit()),
        low_ports,
        bpf_maps: (xdp.is_some() || retiring) && crate::privileges::bpf_calls_need_cap(),
        program_upgrade: xdp.is_some() && config_file && config.xdp_program_upgrades,
    }
}

/// Loads and attaches the kernel program, makes forwarding what its FIB lookups need
/// (`[xdp] forwarding`), and hands its maps to the shards. With `auto`, a failure to load
/// leaves the relay running on its userspace path, with the reason logged; an explicit
/// mode makes it fatal, because the operator asked for it.
pub(super) fn start_xdp(config: &Config) -> anyhow::Result<FastPath> {
    let (mode, interfaces) = (config.xdp_mode, &config.xdp_interfaces);
    if mode == AttachMode::Off || interfaces.is_empty() {
        tracing::info!("XDP fast path off: relaying in userspace");
        return Ok((None, Kernel::off(), None));
    }
    let max = u32::try_from(config.max_allocations).unwrap_or(u32::MAX);
    let mut xdp = match XdpPath::load_with(max) {
        Ok(x) => x,
        Err(e) if mode == AttachMode::Auto => {
            tracing::warn!(error = %e, "XDP fast path unavailable: relaying in userspace");
            return Ok((None, Kernel::off(), None));
        }
        Err(e) => return Err(e.into()),
    };
    for ifname in interfaces {
        xdp.attach(ifname, mode)
            .with_context(|| format!("[xdp] interfaces: `{ifname}`"))?;
    }
    let mut maps = xdp.take_maps().context("taking the XDP maps")?;
    configure_maps(&mut maps, config);
    let attached: Vec<String> = xdp.attached().iter().map(|a| a.interface.clone()).collect();
    let ipv6 = config.relay_v6.is_some() || config.listeners.iter().any(|l| l.address.is_ipv6());
    let forwarding = crate::xdp::setup_forwarding(config.xdp_forwarding, &attached, ipv6);
    let kernel = Kernel::new(maps, xdp.reader());
    Ok((Some(xdp), kernel, Some(forwarding)))
}

/// Takes over the previous process's program, maps and forwarding guard
/// ([`crate::handover::kernel`]); with `swap`, this build's program is loaded onto the
/// maps, to replace the running one at commit. With `[xdp] mode = "off"` in the new
/// config the program is not run here: it comes back as the second value, to be
/// detached at commit ([`XdpPath::detach_now`]).
pub(super) fn adopt_xdp(
    config: &Config,
    handed: &crate::handover::kernel::KernelManifest,
    fds: Vec<std::os::fd::OwnedFd>,
    swap: Option<crate::xdp::swap::Prepared>,
) -> anyhow::Result<(FastPath, Option<XdpPath>)> {
    let (xdp, mut maps, forwarding) = crate::handover::kernel::adopt(handed, fds, swap)
        .context("taking over the XDP fast path")?;
    if config.xdp_mode == AttachMode::Off || config.xdp_interfaces.is_empty() {
        tracing::info!(
            "XDP fast path off in the new config: the running program is detached once the previous process commits"
        );
        return Ok(((None, Kernel::off(), Some(forwarding)), Some(xdp)));
    }
    let max = u32::try_from(config.max_allocations).unwrap_or(u32::MAX);
    if max != xdp.max_allocations() {
        tracing::warn!(
            maps_sized_for = xdp.max_allocations(),
            max_allocations = max,
            "max_allocations changed: the taken-over XDP maps keep their size until a restart"
        );
    }
    // What the old process knew about the maps' completeness stays true; the shield's
    // settings are written at commit ([`commit`]), so that a refused upgrade leaves the
    // old process's in the kernel.
    if handed.clients_lost {
        maps.set_clients_lost();
    }
    maps.set_bandwidth_limits(bandwidth_limits(config));
    let kernel = Kernel::new(maps, xdp.reader());
    Ok(((Some(xdp), kernel, Some(forwarding)), None))
}

/// The map writer's settings from the config (bandwidth limits, shield).
fn configure_maps(maps: &mut crate::xdp::XdpMaps, config: &Config) {
    maps.set_bandwidth_limits(bandwidth_limits(config));
    install_shield(maps, config);
}

fn bandwidth_limits(config: &Config) -> crate::xdp::BandwidthLimits {
    crate::xdp::BandwidthLimits {
        per_allocation: config.max_bps_per_allocation,
        per_user: config.max_bps_per_user,
    }
}

/// Writes the shield's listeners, relay addresses and settings from `config`.
fn install_shield(maps: &mut crate::xdp::XdpMaps, config: &Config) {
    // Without its settings the shield stays off: the program passes up what it does not
    // forward, as userspace's own checks expect.
    if let Err(e) = crate::xdp::shield::install(maps, config) {
        tracing::warn!(error = %e, "XDP shield not configured: junk and unauthenticated floods go up to userspace, which drops them at a higher cost");
    }
}

/// The new process's takeover once the old one committed: the host's forwarding and the
/// kernel's settings are this process's now (before, the old one could still resume with
/// its own). `retired`: the running program when the new config turns XDP off.
pub(super) fn commit(
    xdp: Option<&mut XdpPath>,
    kernel: &Kernel,
    forwarding: Option<&mut ForwardingGuard>,
    retired: Option<XdpPath>,
    config: &Config,
) {
    if let Some(f) = forwarding {
        f.arm();
    }
    if let Some(x) = xdp {
        x.mark_committed();
    }
    // The new config turns XDP off: the kernel must stop forwarding on maps nobody
    // updates from now on, though the old process may live on for its TCP/TLS
    // connections (its descriptors would keep the program attached).
    if let Some(mut x) = retired {
        x.detach_now();
    }
    kernel.with(|m| install_shield(m, config));
}
