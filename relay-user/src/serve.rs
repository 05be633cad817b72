//! `relay serve`: logging, the core, the UDP data path and the XDP fast path, until
//! SIGINT/SIGTERM.
//!
//! This file is the sequence (load the config, take the kernel path, start the shards,
//! confirm a handover, serve until a signal, stop); what the steps ask of the kernel
//! program is in [`fast_path`], and how many workers run and whether a handover's
//! listeners fit the config in [`workers`]. The split follows what changes together: the
//! XDP setup moves with the kernel program, the worker counts with the listeners.

mod fast_path;
mod workers;

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use fast_path::{FastPath, adopt_xdp, start_xdp, still_needed};
use workers::{check_handed_listeners, shard_exited, tcp_workers_for, udp_workers};

use crate::{
    cli::ServeArgs,
    config::{Config, Listener, Transport},
    control::{ConfigLoader, Control, Signals, XdpStatus},
    handover::{Incoming, Pending, Running, control_socket},
    shard::{self, ShardHandle},
    udp::Dataplane,
    xdp::XdpPath,
};

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Started by a running relay to take over: it waits for our verdict, so every
    // failure before we confirm goes back to it (it keeps serving).
    let incoming = match crate::handover::Pending::from_env() {
        None => None,
        Some(Ok(i)) => Some(i),
        Some(Err(e)) => return Err(e.into()),
    };
    let refuser = incoming.as_ref().map(|i| i.refuser());
    let result = run_with(args, incoming);
    if let (Err(e), Some(refuser)) = (&result, refuser) {
        refuser.refuse(&format!("{e:#}"));
    }
    result
}

fn run_with(args: ServeArgs, incoming: Option<Pending>) -> anyhow::Result<()> {
    if incoming.is_some() && args.config.is_none() {
        anyhow::bail!("a handover needs a config file (the demo relay cannot be upgraded)");
    }
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
    // A new build whose kernel program differs loads it now (or refuses, saying why)
    // before the old process pauses; it is bound to the running maps once they arrive.
    let xdp_on =
        config.xdp_mode != crate::config::AttachMode::Off && !config.xdp_interfaces.is_empty();
    let swap = match incoming {
        Some(_) if xdp_on => {
            crate::xdp::swap::use_test_object().map_err(anyhow::Error::msg)?;
            crate::handover::kernel::changed_program().map_err(anyhow::Error::msg)?
        }
        Some(_) => {
            // No program of ours to compare: the running one's description must not
            // reach this process's own successor, which would take it for ours.
            crate::handover::kernel::forget_running_program();
            None
        }
        None => None,
    };
    // Prepared: the old process pauses and sends its sockets, allocations and kernel
    // state now.
    let mut incoming = match incoming {
        Some(p) => Some(p.receive().context("receiving the handover")?),
        None => None,
    };
    // The privileged part, then the capabilities it needed go, while this is the only
    // thread: every thread started later inherits only what is kept. A handover takes
    // the running program and maps over instead: nothing privileged to do.
    let handed_kernel = incoming.as_mut().and_then(|i| {
        let k = i.manifest.kernel.clone()?;
        Some((k, std::mem::take(&mut i.kernel_fds)))
    });
    let fast_path = match handed_kernel {
        Some((k, fds)) => {
            let (fast_path, retired) = adopt_xdp(&config, &k, fds, swap)?;
            if let Some(i) = incoming.as_mut() {
                i.retired_xdp = retired;
            }
            fast_path
        }
        None => start_xdp(&config)?,
    };
    let retiring = incoming.as_ref().is_some_and(|i| i.retired_xdp.is_some());
    crate::privileges::drop_after_setup(still_needed(
        &config,
        &fast_path,
        path.is_some(),
        retiring,
    ))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, path, loader, fast_path, incoming))
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
                proxy_from: None,
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
    (mut xdp, kernel, mut forwarding): FastPath,
    incoming: Option<Incoming>,
) -> anyhow::Result<()> {
    let signals = Signals::new().context("installing the SIGHUP/SIGTERM/SIGINT handlers")?;
    let mut usr2 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
        .context("installing the SIGUSR2 handler")?;
    if let Some(ebpf) = xdp.as_mut().and_then(XdpPath::loaded_mut) {
        // Detached task: it ends with the runtime.
        drop(crate::xdp::spawn_log_pump(ebpf));
    }
    let udp: Vec<_> = config
        .listeners
        .iter()
        .filter(|l| l.transports.contains(&Transport::Udp))
        .map(|l| l.address)
        .collect();
    // Every shard's core counts ports and quotas in `cores`, and checks nonces with its key.
    let local = local_prefixes();
    let mut cores =
        crate::cores::Cores::new(&config)?.with_local_prefixes(local.clone().unwrap_or_default());
    if let Some(i) = &incoming {
        let snap = &i.manifest.snapshot;
        let key = snap.nonce_key().context("the handed-over snapshot")?;
        cores = cores.with_nonce_key(*key.bytes());
        cores
            .shared()
            .restore(Instant::now(), &snap.shared)
            .context("restoring the handed-over reservations and quarantines")?;
    }
    // The event counters: fed by every shard, read by the admin endpoint.
    let counters = std::sync::Arc::new(crate::metrics::EventCounters::default());
    let mirror = || shard::apply::Mirror::new(kernel.clone(), counters.clone());
    let mut shards: Vec<ShardHandle> = Vec::new();
    let workers = match &incoming {
        // The sockets' SO_REUSEPORT groups decide which worker a client reaches: the
        // handed-over count stays.
        Some(i) => check_handed_listeners(&config, &udp, &i.manifest)?,
        None if udp.is_empty() => 0,
        None => udp_workers(&config),
    };
    if incoming.is_none() {
        for addr in &udp {
            crate::udp::claim_listener(*addr).with_context(|| format!("listen {addr} (udp)"))?;
        }
    }
    let engine = if workers > 0 {
        crate::udp::choose_engine(config.udp_engine)?
    } else {
        crate::config::IoEngine::Epoll
    };
    // All workers bind before any runs: the SO_REUSEPORT groups are complete, so the
    // worker a client hashes to cannot change after its first datagram.
    let mut planes = Vec::with_capacity(workers);
    let mut incoming = incoming;
    let mut handed = incoming.as_mut().map(|i| std::mem::take(&mut i.workers));
    let mut restored = 0;
    for i in 0..workers {
        let name = format!("udp-{i}");
        let (handle, inbox) = shard::channel(&name).context("creating a shard wake-up eventfd")?;
        let now = Instant::now();
        let mut server = cores.server(&config, now)?;
        let plane = match (&incoming, handed.as_mut()) {
            (Some(inc), Some(sockets)) => {
                let shard = inc
                    .manifest
                    .snapshot
                    .shards
                    .get(i)
                    .cloned()
                    .unwrap_or_default();
                restored += server
                    .restore(now, &shard)
                    .with_context(|| format!("restoring the allocations of {name}"))?;
                let (listeners, relays) = std::mem::take(&mut sockets[i]);
                Dataplane::adopt(server, listeners, relays, inbox, mirror(), engine)
            }
            _ => Dataplane::new(server, &udp, inbox, mirror(), engine)?,
        };
        planes.push((name, plane));
        shards.push(handle);
    }
    // TURN over TCP/TLS: `[tcp] workers` more shards, each with its own core on the shared
    // ports and quotas.
    let mut tls_reload = None;
    let mut tcp_stats = Vec::new();
    let mut tcp_threads = Vec::new();
    let mut tcp_hand_off = None;
    let mut tcp_gate = None;
    let handed_tcp = incoming
        .as_mut()
        .map(|i| std::mem::take(&mut i.tcp))
        .unwrap_or_default();
    if crate::tcp::wanted(&config) || !handed_tcp.is_empty() {
        let count = tcp_workers_for(&config, &handed_tcp)?;
        let mut tcp_workers = Vec::new();
        for i in 0..count {
            let name = format!("tcp-{i}");
            let (handle, inbox) =
                shard::channel(&name).context("creating a shard wake-up eventfd")?;
            let mut server = cores.server(&config, Instant::now())?;
            if incoming.is_some() {
                // No allocation comes to these (they stayed with the old process), but
                // the timers of the handed-over quarantines (the ports the old process's
                // TCP/TLS allocations hold) must run here too: a relay without UDP
                // workers has no other core to free those ports.
                server
                    .restore(Instant::now(), &Default::default())
                    .with_context(|| format!("starting {name} after the handover"))?;
            }
            tcp_workers.push(crate::tcp::Worker {
                name,
                server,
                inbox,
                mirror: mirror(),
            });
            shards.push(handle);
        }
        let tcp = crate::tcp::spawn(tcp_workers, &config, handed_tcp)?;
        tcp_threads = tcp.threads;
        tls_reload = tcp.tls;
        tcp_stats = tcp.stats;
        tcp_hand_off = Some(tcp.hand_off);
        tcp_gate = Some(tcp.gate);
    }
    let mut xdp_status = XdpStatus::of(&config, xdp.as_ref());
    xdp_status.forwarding_off = forwarding
        .as_ref()
        .and_then(|f| f.off_reason().map(str::to_owned));
    let control = std::sync::Arc::new(Control::new(
        config.clone(),
        path.clone(),
        loader,
        shards.clone(),
        kernel.clone(),
        counters.clone(),
        xdp_status,
    ));
    let tcp_side = tcp_hand_off.map(|hand_off| crate::handover::tcp::TcpSide {
        hand_off,
        shards: shards[workers..].to_vec(),
        stats: tcp_stats.iter().map(|(_, s)| s.clone()).collect(),
    });
    if !tcp_stats.is_empty() {
        control.set_tcp_stats(tcp_stats);
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
    let stop_all = |shards: &[ShardHandle]| shards.iter().for_each(ShardHandle::stop);
    // `[cluster] nodes`: polled for the shards' redirect targets (idle without nodes; a
    // reload may add some). Ends with the runtime.
    let (config_of, publisher) = (control.clone(), control.clone());
    let cluster_poller = tokio::spawn(crate::cluster::poll::run(
        control.cluster().clone(),
        move || config_of.config(),
        move || publisher.publish_redirect_targets(),
    ));
    let admin = match crate::admin::start(control.clone()).await {
        Ok(a) => a,
        Err(e) => {
            stop_all(&shards);
            return Err(e.into());
        }
    };
    // Taking over: the old process stops reading once we are ready; only then do our
    // workers start.
    let generation = match incoming {
        Some(mut i) => {
            let generation = i.manifest.generation + 1;
            let retired = i.retired_xdp.take();
            if let Err(e) = i.confirm() {
                stop_all(&shards);
                return Err(e).context("the old process did not commit the handover");
            }
            // Committed: the host's forwarding and the kernel's settings are this
            // process's now (before, the old one could still resume with its own).
            fast_path::commit(xdp.as_mut(), &kernel, forwarding.as_mut(), retired, &config);
            let took_over = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            control.set_generation(generation, Some(took_over));
            tracing::info!(
                generation,
                allocations = restored,
                workers,
                "took over from the previous process: its sockets and allocations are served here now"
            );
            generation
        }
        None => {
            control.set_generation(1, None);
            1
        }
    };
    // Serving for good (a handover committed): the TCP/TLS workers accept from now on.
    if let Some(gate) = tcp_gate {
        gate.open();
    }
    let mut worker_threads = Vec::with_capacity(planes.len());
    for (name, plane) in planes {
        worker_threads.push(plane.spawn(&name)?);
    }
    let (upgrades, mut upgrade_requests) = tokio::sync::mpsc::channel(4);
    let control_socket = path.as_deref().map(control_socket::path_for);
    if let Some(p) = &control_socket
        && let Err(e) = control_socket::serve(p, upgrades)
    {
        // Not running under a unit with RuntimeDirectory= and not allowed into /run:
        // upgrades were not set up, which is no fault; anything else is.
        let unset = std::env::var_os("RUNTIME_DIRECTORY").is_none()
            && matches!(
                e.raw_os_error(),
                Some(libc::EACCES | libc::EPERM | libc::EROFS)
            );
        if unset {
            tracing::info!(path = %p.display(), error = %e,
                "no control socket: `relay upgrade` cannot reach this relay (set RUNTIME_DIRECTORY, as RuntimeDirectory= does, to a writable directory); SIGUSR2 still upgrades it");
        } else {
            tracing::warn!(path = %p.display(), error = %e,
                "no control socket: `relay upgrade` cannot reach this relay; SIGUSR2 still upgrades it");
        }
    }
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
        max_allocations = config.max_allocations, udp_workers = workers, generation,
        "relay running; SIGTERM or Ctrl-C stops it, SIGUSR2 or `relay upgrade` hands over to a new binary");
    let mut running = Running {
        control: control.clone(),
        cores,
        workers: worker_threads,
        worker_shards: shards[..workers].to_vec(),
        admin,
        tcp: tcp_side,
        xdp,
        forwarding,
        config_file: path.is_some(),
        generation,
    };
    // SIGHUP reloads; SIGTERM/SIGINT drain, a second one stops at once; SIGUSR2 and
    // `relay upgrade` hand over.
    let stopped = control.run_until_stopped(signals);
    tokio::pin!(stopped);
    let end = loop {
        let asked = tokio::select! {
            _ = &mut stopped => break End::Stopped,
            name = shard_exited(&running.workers, &tcp_threads) => break End::Died(name),
            _ = usr2.recv() => match crate::handover::installed_exe() {
                Ok(exe) => (exe, None),
                Err(e) => {
                    tracing::error!(error = %e, "SIGUSR2: cannot tell which binary to start (/proc/self/exe); no upgrade");
                    continue;
                }
            },
            Some(r) = upgrade_requests.recv() => (r.exe, Some(r.reply)),
        };
        let (exe, reply) = asked;
        let verdict = running.upgrade(&exe).await;
        match &verdict {
            Ok(summary) => {
                tracing::info!(exe = %exe.display(), "handed over: {summary}; this process exits (once the TCP/TLS connections that stay have ended, if any)")
            }
            Err(e) => tracing::error!(exe = %exe.display(), error = %e,
                "upgrade failed; this process keeps serving, nothing was lost"),
        }
        let done = verdict.is_ok();
        if let Some(reply) = reply {
            let (written, answered) = tokio::sync::oneshot::channel();
            if reply.send((verdict, written)).is_ok() {
                // `relay upgrade` gets its answer before this process goes away.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), answered).await;
            }
        }
        if done {
            break End::HandedOver;
        }
    };
    cluster_poller.abort();
    if let Some(admin) = running.admin.take() {
        admin.shutdown().await;
    }
    match &end {
        End::Stopped => tracing::info!("shutting down"),
        // The open TCP/TLS connections stay here until they end.
        End::HandedOver => {
            if let Some(t) = &running.tcp {
                t.linger(control.config().drain_timeout).await;
            }
        }
        // Its sockets left the SO_REUSEPORT groups, so clients now hash to other workers
        // that do not know their allocations: a restart is the only clean state.
        End::Died(name) => tracing::error!(shard = %name,
            "a data-path thread stopped on its own (see the error before); shutting down so that a supervisor restarts the relay"),
    }
    stop_all(&shards);
    let workers = std::mem::take(&mut running.workers);
    let servers = tokio::task::spawn_blocking(move || {
        let mut n = 0;
        for t in workers {
            n += t.join().map_or(0, |p| p.server().allocation_count());
        }
        for t in tcp_threads {
            n += t.join().map_or(0, |s| s.allocation_count());
        }
        n
    })
    .await?;
    let allocations = if matches!(end, End::HandedOver) {
        0
    } else {
        servers
    };
    if !matches!(end, End::HandedOver)
        && let Some(p) = &control_socket
    {
        let _ = std::fs::remove_file(p);
    }
    // Detach first, then put the host's forwarding back (the guard goes last).
    drop(running.xdp.take());
    drop(running.forwarding.take());
    // The last allocations' lines, and the summaries of throttled floods.
    crate::events::flush(std::time::Duration::from_secs(2));
    tracing::info!(allocations, "stopped");
    if let End::Died(name) = end {
        anyhow::bail!("data-path thread {name} stopped unexpectedly");
    }
    Ok(())
}

/// Why the serve loop ended.
enum End {
    /// SIGTERM/SIGINT (after the drain).
    Stopped,
    /// A data-path thread ended on its own.
    Died(String),
    /// A new process took over.
    HandedOver,
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
