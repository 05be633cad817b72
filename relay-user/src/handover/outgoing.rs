//! The old process's side of an upgrade: stop the UDP workers (their sockets stay open
//! and keep queueing datagrams), hand sockets and snapshot to the new process, and either
//! exit (after its TCP/TLS connections, see [`super::tcp`]) or start the workers again.

use std::{
    os::fd::{AsRawFd as _, RawFd},
    path::Path,
    sync::Arc,
    thread::JoinHandle,
    time::Instant,
};

use relay_proto::server::Snapshot;

use super::{Manifest, WorkerSockets};
use crate::{
    admin::Admin,
    control::Control,
    cores::Cores,
    shard::ShardHandle,
    udp::Dataplane,
    xdp::{ForwardingGuard, XdpPath},
};

/// What a running relay needs to hand over.
pub struct Running {
    pub control: Arc<Control>,
    pub cores: Cores,
    /// The UDP workers' threads, in order, and their shards' handles.
    pub workers: Vec<JoinHandle<Dataplane>>,
    pub worker_shards: Vec<ShardHandle>,
    pub admin: Option<Admin>,
    /// The TCP/TLS workers, if any: their listeners go, their connections stay.
    pub tcp: Option<super::tcp::TcpSide>,
    /// The XDP fast path, when it runs (its links and maps go to the new process).
    pub xdp: Option<XdpPath>,
    /// The forwarding the fast path needs (the new process restores it at its exit).
    pub forwarding: Option<ForwardingGuard>,
    /// Started with --config (the demo is not upgraded).
    pub config_file: bool,
    pub generation: u64,
}

impl Running {
    /// Hands over to `exe`; `Ok`: a summary, and this process must exit now (its workers
    /// are stopped). `Err`: why not; everything runs as before.
    pub async fn upgrade(&mut self, exe: &Path) -> Result<String, String> {
        self.refusal(exe)?;
        // The new process loads its config and decides its fast path while this one
        // still serves; a refusal here costs nothing.
        let exe_owned = exe.to_owned();
        let program = self
            .xdp
            .as_ref()
            .map(super::kernel::offer)
            .unwrap_or_default();
        let spawned =
            tokio::task::spawn_blocking(move || super::Spawned::start(&exe_owned, program))
                .await
                .map_err(|e| format!("handover task: {e}"))?
                .map_err(|e| e.to_string())?;
        let started = Instant::now();
        // The admin address is bound anew by the new process.
        if let Some(admin) = self.admin.take() {
            admin.shutdown().await;
        }
        for s in &self.worker_shards {
            s.stop();
        }
        let threads = std::mem::take(&mut self.workers);
        let joined = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .map(JoinHandle::join)
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| format!("joining the UDP workers: {e}"))?;
        let mut planes = Vec::with_capacity(joined.len());
        for (i, p) in joined.into_iter().enumerate() {
            // A worker that panicked lost its sockets: nothing to hand over or resume;
            // the serve loop notices it ended and stops the relay.
            planes.push(p.map_err(|_| format!("UDP worker udp-{i} had stopped (panic)"))?);
        }
        let now = Instant::now();
        let snapshot = Snapshot::new(
            &self.cores.nonce_key(),
            self.cores.shared().snapshot(now),
            planes.iter().map(|p| p.server().snapshot(now)).collect(),
        );
        let mut snapshot = snapshot;
        let allocations = snapshot.allocation_count();
        let drain = self.control.config().drain_timeout;
        let (tcp_groups, tcp_fds) = match &self.tcp {
            Some(t) => match t.held_ports(drain).await {
                Ok(held) => {
                    snapshot.shared.quarantined.extend(held);
                    t.listeners()
                }
                Err(e) => {
                    spawned.abandon();
                    self.resume(planes).await;
                    return Err(e);
                }
            },
            None => Default::default(),
        };
        let mut fds: Vec<RawFd> = Vec::new();
        let mut workers = Vec::with_capacity(planes.len());
        for p in &planes {
            let (listeners, relays) = p.sockets();
            fds.extend(listeners.iter().map(|(_, fd)| *fd));
            fds.extend(relays.iter().map(|(_, fd)| *fd));
            workers.push(WorkerSockets {
                listeners: listeners.into_iter().map(|(a, _)| a).collect(),
                relays: relays.into_iter().map(|(a, _)| a).collect(),
            });
        }
        fds.extend(tcp_fds);
        let relay_sockets = fds.len();
        let clients_lost = self
            .control
            .kernel()
            .with(|m| m.clients_lost())
            .unwrap_or(false);
        let described = self.xdp.as_ref().map(|x| {
            super::kernel::describe(
                x,
                x.max_allocations(),
                self.forwarding.as_ref(),
                clients_lost,
            )
            .map(|(k, kfds)| (k, kfds.iter().map(|fd| fd.as_raw_fd()).collect::<Vec<_>>()))
        });
        let kernel = match described {
            Some(Ok((k, kfds))) => {
                fds.extend(kfds);
                Some(k)
            }
            Some(Err(e)) => {
                spawned.abandon();
                self.resume(planes).await;
                return Err(e.to_string());
            }
            None => None,
        };
        let manifest = Manifest {
            generation: self.generation,
            workers,
            snapshot,
            tcp: tcp_groups,
            kernel,
        };
        tracing::info!(exe = %exe.display(), pid = spawned.pid(), allocations, sockets = relay_sockets,
            "upgrade: the new process is prepared; UDP workers paused, handing over");
        // The planes (and their sockets) stay alive until the new process has its copies.
        let (verdict, planes) = tokio::task::spawn_blocking(move || {
            let v = spawned.hand_over(&manifest, &fds);
            (v, planes)
        })
        .await
        .map_err(|e| format!("handover task: {e}"))?;
        match verdict {
            Ok(pid) => {
                let paused_ms = started.elapsed().as_millis();
                notify_main_pid(pid);
                drop(planes);
                // The new process holds the links and maps, and restores forwarding at
                // its exit: this one lets go of both without undoing anything.
                if let Some(x) = self.xdp.as_mut() {
                    x.mark_handed_over();
                }
                if let Some(f) = self.forwarding.take() {
                    f.disarm();
                }
                let staying = match &self.tcp {
                    Some(t) => {
                        t.let_go(&self.control);
                        format!(
                            "; {} TCP/TLS connections stay with pid {} until they end",
                            t.connections(),
                            std::process::id()
                        )
                    }
                    None => String::new(),
                };
                Ok(format!(
                    "pid {pid} (generation {}) took over {allocations} allocations and {relay_sockets} sockets; UDP paused {paused_ms} ms{staying}",
                    self.generation + 1
                ))
            }
            Err(e) => {
                self.resume(planes).await;
                Err(e.to_string())
            }
        }
    }

    /// Why this relay cannot hand over (checked before anything stops).
    fn refusal(&self, exe: &Path) -> Result<(), String> {
        if !self.config_file {
            return Err("the demo relay (no --config) cannot be upgraded".into());
        }
        if let Some(x) = &self.xdp {
            x.handover_fds().map_err(|e| e.to_string())?;
        }
        if !exe.is_file() {
            return Err(format!("{} is not a file", exe.display()));
        }
        Ok(())
    }

    /// The handover failed: the same workers start again on the same sockets, and the
    /// admin endpoint comes back.
    async fn resume(&mut self, planes: Vec<Dataplane>) {
        for (i, p) in planes.into_iter().enumerate() {
            match p.spawn(&format!("udp-{i}")) {
                Ok(t) => self.workers.push(t),
                Err(e) => {
                    tracing::error!(worker = i, error = %e, "cannot restart a UDP worker after the failed upgrade")
                }
            }
        }
        match crate::admin::start(self.control.clone()).await {
            Ok(a) => self.admin = a,
            Err(e) => {
                tracing::error!(error = %e, "cannot restart the admin endpoint after the failed upgrade")
            }
        }
    }
}

/// Under systemd (NOTIFY_SOCKET set; the unit has NotifyAccess=main or all): the new
/// process is the service's main process from now on, so that this one exiting does not
/// stop the service.
fn notify_main_pid(pid: u32) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell systemd the new main pid");
            return;
        }
    };
    let message = format!("MAINPID={pid}");
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(message.as_bytes(), &a))
    } else {
        sock.send_to(message.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot tell systemd the new main pid: the unit may stop when this process exits");
    }
}
