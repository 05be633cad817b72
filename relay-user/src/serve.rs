//! `relay serve`: sets up logging, the XDP fast path and the listeners, then runs until
//! SIGINT/SIGTERM.

use anyhow::Context as _;

use crate::{
    cli::ServeArgs,
    xdp::{AttachMode, XdpPath},
};

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    crate::logging::init(args.log_level.as_deref().unwrap_or("info"))
        .map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mode = args.xdp_mode.unwrap_or_default();
    let interfaces = if args.xdp_interfaces.is_empty() && args.config.is_none() {
        // The demo runs on loopback, so that is where the program goes.
        vec!["lo".to_owned()]
    } else {
        args.xdp_interfaces.clone()
    };
    let _xdp = start_xdp(mode, &interfaces)?;
    tracing::info!("relay running; Ctrl-C or SIGTERM stops it");
    shutdown_signal().await;
    tracing::info!("shutting down");
    Ok(())
}

/// Loads and attaches the kernel program. With `auto`, a failure to load leaves the
/// relay running on its userspace path, with the reason logged; an explicit mode makes
/// it fatal, because the operator asked for it.
fn start_xdp(mode: AttachMode, interfaces: &[String]) -> anyhow::Result<Option<XdpPath>> {
    if mode == AttachMode::Off || interfaces.is_empty() {
        tracing::info!("XDP fast path off: relaying in userspace");
        return Ok(None);
    }
    let mut xdp = match XdpPath::load() {
        Ok(x) => x,
        Err(e) if mode == AttachMode::Auto => {
            tracing::warn!(error = %e, "XDP fast path unavailable: relaying in userspace");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(pump) = crate::xdp::spawn_log_pump(xdp.ebpf_mut()) {
        drop(pump); // detached task; it ends with the runtime
    }
    for ifname in interfaces {
        xdp.attach(ifname, mode)
            .with_context(|| format!("[xdp] interfaces: `{ifname}`"))?;
    }
    Ok(Some(xdp))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
