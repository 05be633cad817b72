//! `relay serve`: logging, the core, the UDP data path and the XDP fast path, until
//! SIGINT/SIGTERM.

use std::time::Instant;

use anyhow::Context as _;

use crate::{
    cli::ServeArgs,
    config::{AttachMode, Config, Listener, Transport},
    control::{ConfigLoader, Control, Signals, XdpStatus},
    shard::{self, Kernel, ShardHandle},
    udp::Dataplane,
    xdp::{ForwardingGuard, XdpPath},
};

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (config, demo_password) = match &args.config {
        Some(path) => (crate::check::load(path)?, None),
        None => {
            let (c, p) = crate::cores::demo_config()?;
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
    // SIGHUP reads the same file again, with the same flags on top.
    let path = args.config.clone();
    let args = std::sync::Arc::new(args);
    let loader = path.clone().map(|p| {
        Box::new(move || crate::check::load(&p).map(|c| apply_flags(c, &args))) as ConfigLoader
    });
    // The privileged part, then the capabilities it needed go, while this is the only
    // thread: every thread started later inherits only what is kept.
    let fast_path = start_xdp(&config)?;
    crate::privileges::drop_after_setup(still_needed(&config, &fast_path))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, path, loader, fast_path))
}

/// The kernel program (if it runs), its maps as the shards use them, and the forwarding
/// it needs (restored when dropped).
type FastPath = (Option<XdpPath>, Kernel, Option<ForwardingGuard>);

/// What the relay needs capabilities for once the fast path is set up.
fn still_needed(config: &Config, (xdp, _, forwarding): &FastPath) -> crate::privileges::Needs {
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
        bpf_maps: xdp.is_some() && crate::privileges::bpf_calls_need_cap(),
    }
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
    if let Some(n) = args.udp_workers {
        c.udp_workers = n.into();
    }
    c
}

async fn serve(
    config: Config,
    path: Option<std::path::PathBuf>,
    loader: Option<ConfigLoader>,
    (mut xdp, kernel, forwarding): FastPath,
) -> anyhow::Result<()> {
    let signals = Signals::new().context("installing the SIGHUP/SIGTERM/SIGINT handlers")?;
    if let Some(x) = &mut xdp {
        // Detached task: it ends with the runtime.
        drop(crate::xdp::spawn_log_pump(x.ebpf_mut()));
    }
    let udp: Vec<_> = config
        .listeners
        .iter()
        .filter(|l| l.transports.contains(&Transport::Udp))
        .map(|l| l.address)
        .collect();
    // Every shard's core counts ports and quotas in `cores`, and checks nonces with its key.
    let local = local_prefixes();
    let cores =
        crate::cores::Cores::new(&config)?.with_local_prefixes(local.clone().unwrap_or_default());
    // The event counters: fed by every shard, read by the admin endpoint.
    let counters = std::sync::Arc::new(crate::metrics::EventCounters::default());
    let mirror = || shard::apply::Mirror::new(kernel.clone(), counters.clone());
    let mut shards: Vec<ShardHandle> = Vec::new();
    let mut threads = Vec::new();
    let workers = if udp.is_empty() {
        0
    } else {
        udp_workers(&config)
    };
    for addr in &udp {
        crate::udp::claim_listener(*addr).with_context(|| format!("listen {addr} (udp)"))?;
    }
    let engine = if workers > 0 {
        crate::udp::choose_engine(config.udp_engine)?
    } else {
        crate::config::IoEngine::Epoll
    };
    // All workers bind before any runs: the SO_REUSEPORT groups are complete, so the
    // worker a client hashes to cannot change after its first datagram.
    let mut planes = Vec::with_capacity(workers);
    for i in 0..workers {
        let name = format!("udp-{i}");
        let (handle, inbox) = shard::channel(&name).context("creating a shard wake-up eventfd")?;
        let server = cores.server(&config, Instant::now())?;
        planes.push((name, Dataplane::new(server, &udp, inbox, mirror(), engine)?));
        shards.push(handle);
    }
    for (name, plane) in planes {
        threads.push(plane.spawn(&name)?);
    }
    // TURN over TCP/TLS: one more shard, with its own core on the shared ports and quotas.
    let mut tls_reload = None;
    let mut tcp_stats = None;
    if crate::tcp::wanted(&config) {
        let (handle, inbox) = shard::channel("tcp").context("creating a shard wake-up eventfd")?;
        let server = cores.server(&config, Instant::now())?;
        let tcp = crate::tcp::spawn(server, &config, inbox, mirror())?;
        threads.push(tcp.thread);
        shards.push(handle);
        tls_reload = tcp.tls;
        tcp_stats = Some(tcp.stats);
    }
    let mut xdp_status = XdpStatus::of(&config, xdp.as_ref());
    xdp_status.forwarding_off = forwarding
        .as_ref()
        .and_then(|f| f.off_reason().map(str::to_owned));
    let control = std::sync::Arc::new(Control::new(
        config.clone(),
        path,
        loader,
        shards.clone(),
        kernel.clone(),
        counters.clone(),
        xdp_status,
    ));
    if let Some(stats) = tcp_stats {
        control.set_tcp_stats(stats);
    }
    if let Some(local) = local {
        let c = control.clone();
        if let Err(e) =
            crate::local_routes::watch(local, move |prefixes| c.set_local_prefixes(prefixes))
        {
            tracing::warn!(error = %e,
                "cannot follow the routing table: addresses added to this host later are not refused as peers until a restart");
        }
    }
    if let Some(w) = crate::cores::rest_policy_warning(&config) {
        tracing::warn!("{w}");
    }
    if kernel.is_on() {
        let k = kernel.clone();
        control.on_reload(
            "xdp shield",
            Box::new(move |c| {
                k.with(|m| crate::xdp::shield::reload(m, c))
                    .transpose()
                    .map(drop)
                    .context("updating the XDP shield's limits")
            }),
        );
    }
    if let Some(acceptor) = tls_reload {
        control.on_reload("tls", Box::new(crate::tcp::reload_hook(acceptor)));
    }
    let admin = match crate::admin::start(control.clone()).await {
        Ok(a) => a,
        Err(e) => {
            for s in &shards {
                s.stop();
            }
            return Err(e.into());
        }
    };
    for addr in &udp {
        tracing::info!(listen = %addr, workers, %engine, "answering TURN over UDP");
    }
    for r in [config.relay_v4, config.relay_v6].into_iter().flatten() {
        tracing::info!(
            bind = %r.bind, public = %r.public, ports = %format!("{}-{}", config.ports.low, config.ports.high),
            "relaying"
        );
    }
    tracing::info!(realm = %config.realm, users = config.users.len(), shared_secrets = config.shared_secrets.len(),
        max_allocations = config.max_allocations, udp_workers = workers, "relay running; SIGTERM or Ctrl-C stops it");
    // SIGHUP reloads; SIGTERM/SIGINT drain, a second one stops at once.
    let died = tokio::select! {
        _ = control.run_until_stopped(signals) => None,
        name = shard_exited(&threads) => Some(name),
    };
    if let Some(admin) = admin {
        admin.shutdown().await;
    }
    match &died {
        None => tracing::info!("shutting down"),
        // Its sockets left the SO_REUSEPORT groups, so clients now hash to other workers
        // that do not know their allocations: a restart is the only clean state.
        Some(name) => tracing::error!(shard = %name,
            "a data-path thread stopped on its own (see the error before); shutting down so that a supervisor restarts the relay"),
    }
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
    // Detach first, then put the host's forwarding back (the guard goes last).
    drop(xdp);
    drop(forwarding);
    // The last allocations' lines, and the summaries of throttled floods.
    crate::events::flush(std::time::Duration::from_secs(2));
    tracing::info!(allocations, "stopped");
    if let Some(name) = died {
        anyhow::bail!("data-path thread {name} stopped unexpectedly");
    }
    Ok(())
}

/// The host's locally routed prefixes (its own addresses), which the peer policy refuses
/// besides the configured ones; `None` (logged) if netlink cannot tell: then only the
/// configured listener, admin and relay addresses count as the relay host.
fn local_prefixes() -> Option<Vec<ipnet::IpNet>> {
    match crate::local_routes::dump() {
        Ok(p) => {
            tracing::info!(prefixes = p.len(), list = %crate::local_routes::list(&p),
                "peers at the addresses of this host are refused (relay addresses stay hairpins)");
            Some(p)
        }
        Err(e) => {
            tracing::warn!(error = %e,
                "cannot read the local routing table over netlink: only the configured listener, admin and relay addresses are refused as peers; other addresses of this host are not");
            None
        }
    }
}

/// `[udp] workers`, with 0 resolved to the CPUs this process may run on.
fn udp_workers(config: &Config) -> usize {
    match config.udp_workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Resolves when one of `threads` has ended (they only end on their own after a fatal
/// error or a panic); its name.
async fn shard_exited<T>(threads: &[std::thread::JoinHandle<T>]) -> String {
    loop {
        if let Some(t) = threads.iter().find(|t| t.is_finished()) {
            return t.thread().name().unwrap_or("unnamed").to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Loads and attaches the kernel program, makes forwarding what its FIB lookups need
/// (`[xdp] forwarding`), and hands its maps to the shards. With `auto`, a failure to load
/// leaves the relay running on its userspace path, with the reason logged; an explicit
/// mode makes it fatal, because the operator asked for it.
fn start_xdp(config: &Config) -> anyhow::Result<FastPath> {
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
    // Without its settings the shield stays off: the program passes up what it does not
    // forward, as userspace's own checks expect.
    if let Err(e) = crate::xdp::shield::install(&mut maps, config) {
        tracing::warn!(error = %e, "XDP shield not configured: junk and unauthenticated floods go up to userspace, which drops them at a higher cost");
    }
    let attached: Vec<String> = xdp.attached().iter().map(|a| a.interface.clone()).collect();
    let ipv6 = config.relay_v6.is_some() || config.listeners.iter().any(|l| l.address.is_ipv6());
    let forwarding = crate::xdp::setup_forwarding(config.xdp_forwarding, &attached, ipv6);
    Ok((Some(xdp), Kernel::new(maps), Some(forwarding)))
}
