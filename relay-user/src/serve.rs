//! `relay serve`: logging, the core, the UDP data path and the XDP fast path, until
//! SIGINT/SIGTERM.

use std::time::Instant;

use anyhow::Context as _;

use crate::{
    cli::ServeArgs,
    config::{self, Config, Listener, Transport},
    shard::{self, Kernel, ShardHandle},
    udp::Dataplane,
    xdp::{AttachMode, XdpPath},
};

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (config, demo_password) = match &args.config {
        Some(path) => (config::load(path)?, None),
        None => {
            let (c, p) = crate::core::demo_config()?;
            (c, Some(p))
        }
    };
    let config = apply_flags(config, &args);
    crate::logging::init(&config.log_level).map_err(anyhow::Error::msg)?;
    if let Some(password) = demo_password {
        tracing::warn!(
            "no --config: demo relay on loopback only. realm `{}`, user `demo`, password `{password}` \
             (try: turnutils_uclient -u demo -w {password} -e 127.0.0.1 127.0.0.1)",
            config.realm
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

/// Command-line flags win over the file.
fn apply_flags(mut c: Config, args: &ServeArgs) -> Config {
    if !args.listen.is_empty() {
        c.listeners = args
            .listen
            .iter()
            .map(|a| Listener {
                address: *a,
                transports: vec![Transport::Udp],
            })
            .collect();
    }
    if !args.xdp_interfaces.is_empty() {
        c.xdp_interfaces = args.xdp_interfaces.clone();
    }
    if let Some(m) = args.xdp_mode {
        c.xdp_mode = m;
    }
    if let Some(l) = &args.log_level {
        c.log_level = l.clone();
    }
    c
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let (_xdp, kernel) = start_xdp(&config)?;
    let udp: Vec<_> = config
        .listeners
        .iter()
        .filter(|l| l.transports.contains(&Transport::Udp))
        .map(|l| l.address)
        .collect();
    let mut shards: Vec<ShardHandle> = Vec::new();
    let mut threads = Vec::new();
    let name = "udp-0".to_owned();
    let (handle, inbox) = shard::channel(&name).context("creating a shard wake-up eventfd")?;
    let server = crate::core::server(&config, Instant::now())?;
    threads.push(Dataplane::new(server, &udp, inbox, kernel.clone())?.spawn(&name)?);
    shards.push(handle);
    for r in [config.relay_v4, config.relay_v6].into_iter().flatten() {
        tracing::info!(
            bind = %r.bind, public = %r.public, ports = %format!("{}-{}", config.ports.low, config.ports.high),
            "relaying"
        );
    }
    tracing::info!(realm = %config.realm, users = config.users.len(), shared_secrets = config.shared_secrets.len(),
        max_allocations = config.max_allocations, "relay running; SIGTERM or Ctrl-C stops it");
    shutdown_signal().await;
    tracing::info!("shutting down");
    for s in &shards {
        s.stop();
    }
    let servers = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .filter_map(|t| t.join().ok())
            .collect::<Vec<_>>()
    })
    .await?;
    let allocations: usize = servers.iter().map(|s| s.allocation_count()).sum();
    tracing::info!(allocations, "stopped");
    Ok(())
}

/// Loads and attaches the kernel program and hands its maps to the shards. With `auto`,
/// a failure to load leaves the relay running on its userspace path, with the reason
/// logged; an explicit mode makes it fatal, because the operator asked for it.
fn start_xdp(config: &Config) -> anyhow::Result<(Option<XdpPath>, Kernel)> {
    let (mode, interfaces) = (config.xdp_mode, &config.xdp_interfaces);
    if mode == AttachMode::Off || interfaces.is_empty() {
        tracing::info!("XDP fast path off: relaying in userspace");
        return Ok((None, Kernel::off()));
    }
    let max = u32::try_from(config.max_allocations).unwrap_or(u32::MAX);
    let mut xdp = match XdpPath::load_with(max) {
        Ok(x) => x,
        Err(e) if mode == AttachMode::Auto => {
            tracing::warn!(error = %e, "XDP fast path unavailable: relaying in userspace");
            return Ok((None, Kernel::off()));
        }
        Err(e) => return Err(e.into()),
    };
    // Detached task: it ends with the runtime.
    drop(crate::xdp::spawn_log_pump(xdp.ebpf_mut()));
    for ifname in interfaces {
        xdp.attach(ifname, mode)
            .with_context(|| format!("[xdp] interfaces: `{ifname}`"))?;
    }
    let maps = xdp.take_maps().context("taking the XDP maps")?;
    Ok((Some(xdp), Kernel::new(maps)))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
