//! TURN over TCP and TLS (RFC 8656 §3.1, `turn:…?transport=tcp` and `turns:`): `[tcp]
//! workers` shard threads, each owning its core, the client connections it accepted and
//! the relay sockets of their allocations, on an io_uring event loop, or an epoll one
//! where io_uring is unavailable.
//!
//! - `workers`: the listeners' SO_REUSEPORT groups, one member per worker, spread by
//!   connection (RFC 6062 data connections move to their core's worker: `state::moves`).
//! - `state`: everything both loops share: STUN/ChannelData framing over the stream
//!   (`frame_len`, ChannelData padding) for the core, with the connections' lifecycle,
//!   the relay sockets and the core's commands, the RFC 6062 splice and the timeouts in
//!   its submodules.
//! - `connection`: a connection's bytes without the socket (sans-IO): TLS detection and
//!   session, plaintext in, the send queue and its flow-control marks. `stream` is the
//!   send queue itself, `conn` a socket with its loop bookkeeping.
//! - `uring`: the io_uring loop and the probe that decides whether it can run.
//! - `epoll`: the fallback loop.
//! - `tls`: certificate loading and reload; `records`: plaintext into TLS records.
//! - `limits`: connections per source (IPv4 address or IPv6 /64) and in all, counted
//!   across the workers, and when an unauthenticated connection has been idle too long.
//!
//! RFC 6062 (TCP relay allocations) will add TCP sockets that are not client connections:
//! the state's slabs are keyed per kind (`Key::token` carries a kind tag), so a new kind of
//! socket is a new tag and table, not a change to the client path.

mod conn;
mod connection;
mod epoll;
mod limits;
mod pace;
mod records;
mod state;
mod stream;
#[cfg(test)]
mod test_tls;
pub mod tls;
mod uring;
mod workers;

use std::{
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use relay_proto::server::Server;

pub use state::Stats;
pub use tls::{TlsAcceptor, TlsError};
pub use uring::probe as probe_io_uring;

use crate::{
    config::{Config, IoEngine, Transport},
    event_loop::{EventLoop, Logs, run_loop},
    shard::{Inbox, apply::Mirror},
};

/// Environment override of `[tcp] engine` (auto | io_uring | epoll), for hosts where a
/// config change is harder than a unit-file drop-in.
pub const ENGINE_ENV: &str = "RELAY_TCP_ENGINE";
/// How often the certificate files are checked for a renewal.
pub const TLS_WATCH_EVERY: Duration = Duration::from_secs(2);
/// Pending connections per listener and worker (a burst of browsers reconnecting).
const BACKLOG: i32 = 4096;
/// What a worker logs about its event loop.
const LOGS: Logs = Logs {
    running: "TCP/TLS event loop running",
    running_at_info: true,
    fallback: "io_uring loop cannot start; serving TCP/TLS with epoll",
    failed: "cannot create the epoll instance; this worker's TCP/TLS clients are not served",
};

/// One TCP/TLS worker before it runs: its shard name (`tcp-0`, …), core and inbox.
pub struct Worker {
    pub name: String,
    pub server: Server,
    pub inbox: Inbox,
    pub mirror: Mirror,
}

/// The running TCP/TLS workers.
pub struct TcpShards {
    /// One per worker, named as its shard; joining gives its core back (for the final
    /// report).
    pub threads: Vec<JoinHandle<Server>>,
    /// Present when a listener serves TLS: `reload()` re-reads the certificate (SIGHUP);
    /// every worker reads the one it holds at its next handshake.
    pub tls: Option<TlsAcceptor>,
    /// Each worker's connection counters, by shard name, for the metrics.
    pub stats: Vec<(String, Arc<Stats>)>,
    /// What an upgrade hands over.
    pub hand_off: HandOff,
    /// The workers wait at it before they accept anything.
    pub gate: StartGate,
}

/// Holds the TCP/TLS workers back until the relay is committed to serving: an upgrade's
/// new process must not accept connections (nor allocate ports beside the old process)
/// before the old one committed the handover. Dropped unopened, the workers end without
/// having served.
pub struct StartGate(Arc<(Mutex<Option<bool>>, Condvar)>);

impl StartGate {
    fn new() -> Self {
        Self(Arc::new((Mutex::new(None), Condvar::new())))
    }

    /// The workers start serving.
    pub fn open(self) {
        self.set(true);
    }

    fn set(&self, go: bool) {
        let (state, cv) = &*self.0;
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        if s.is_none() {
            *s = Some(go);
        }
        cv.notify_all();
    }

    /// Waits until the gate opens (`true`) or is dropped (`false`).
    fn wait(gate: &(Mutex<Option<bool>>, Condvar)) -> bool {
        let (state, cv) = gate;
        let s = state.lock().unwrap_or_else(|p| p.into_inner());
        let s = cv
            .wait_while(s, |s| s.is_none())
            .unwrap_or_else(|p| p.into_inner());
        s.unwrap_or(false)
    }
}

impl Drop for StartGate {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// The client listeners as an upgrade sends them to the new process: each listener's
/// SO_REUSEPORT group, member `i` worker `i`'s (duplicates of the workers' descriptors:
/// the same sockets, so the group stays as it is), and the
/// switch that makes every worker stop accepting once the new process has them.
pub struct HandOff {
    pub groups: Vec<(std::net::SocketAddr, Vec<std::net::TcpListener>)>,
    listening: Arc<AtomicBool>,
}

impl HandOff {
    /// The workers stop accepting on the client listeners (each at its next wake-up:
    /// wake them); the connections they have stay theirs.
    pub fn stop_accepting(&self) {
        self.listening.store(false, Ordering::SeqCst);
    }
}

/// For the control plane's SIGHUP reload: loads the reloaded config's `[tls]` files (new
/// paths included); an error refuses the reload and the current certificate stays.
pub fn reload_hook(
    acceptor: TlsAcceptor,
) -> impl Fn(&Config) -> anyhow::Result<()> + Send + Sync + 'static {
    move |c: &Config| match &c.tls {
        Some(files) => acceptor
            .reload_from(files)
            .map_err(|e| anyhow::anyhow!("{}: {e}", e.key())),
        None => Ok(()),
    }
}

/// Whether the config has anything for these shards.
pub fn wanted(config: &Config) -> bool {
    config
        .listeners
        .iter()
        .any(|l| l.transports.iter().any(|t| *t != Transport::Udp))
}

/// Binds every TCP/TLS listener (one SO_REUSEPORT member per worker; a busy port is a
/// startup error naming it), or takes its group from `handed` (an upgrade: one member per
/// worker), loads the certificate, picks the engine and starts the workers.
pub fn spawn(
    workers: Vec<Worker>,
    config: &Config,
    mut handed: Vec<(std::net::SocketAddr, Vec<std::net::TcpListener>)>,
) -> anyhow::Result<TcpShards> {
    let n = workers.len();
    let mut groups = Vec::new();
    let mut listeners: Vec<Vec<state::StreamListener>> = (0..n).map(|_| Vec::new()).collect();
    for l in &config.listeners {
        let plain = l.transports.contains(&Transport::Tcp);
        let tls = l.transports.contains(&Transport::Tls);
        if !plain && !tls {
            continue;
        }
        let what = match (plain, tls) {
            (true, true) => "tcp+tls",
            (true, false) => "tcp",
            _ => "tls",
        };
        let group = match handed.iter().position(|(a, _)| *a == l.address) {
            Some(i) => {
                let (_, group) = handed.swap_remove(i);
                if group.len() != n {
                    anyhow::bail!(
                        "listen {} ({what}): {} handed-over listeners for {n} workers",
                        l.address,
                        group.len()
                    );
                }
                if let Err(e) = workers::spread_by_connection(&group[0]) {
                    tracing::warn!(listen = %l.address, error = %e,
                        "cannot take the previous relay's steering by client address off a handed-over listener; \
                         its connections still reach workers by client address (correct, but one NAT's clients share one worker)");
                }
                group
            }
            None => workers::bind_group(l.address, n)
                .map_err(crate::udp::with_bind_hint)
                .with_context(|| format!("listen {} ({what})", l.address))?,
        };
        let copies = group
            .iter()
            .map(std::net::TcpListener::try_clone)
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| {
                format!(
                    "listen {} ({what}): keeping its descriptors for an upgrade",
                    l.address
                )
            })?;
        groups.push((l.address, copies));
        tracing::info!(listen = %l.address, transports = what, workers = n, "answering TURN over TCP");
        for (mine, sock) in listeners.iter_mut().zip(group) {
            mine.push(state::StreamListener {
                addr: l.address,
                plain,
                tls,
                sock,
                proxy_from: l.proxy_from.clone(),
            });
        }
    }
    let tls = match &config.tls {
        Some(files)
            if config
                .listeners
                .iter()
                .any(|l| l.transports.contains(&Transport::Tls)) =>
        {
            Some(TlsAcceptor::new(files.clone()).map_err(|e| anyhow::anyhow!("{}: {e}", e.key()))?)
        }
        _ => None,
    };
    raise_open_files(config.tcp.max_connections);
    let engine = choose_engine(config.tcp.engine)?;
    let watch = Arc::new(Watch::start(tls.as_ref())?);
    // The limits are the relay's: every worker counts in the same admission.
    let admission = limits::SharedAdmission::new(
        config.tcp.max_connections,
        config.tcp.max_connections_per_source,
    );
    let listening = Arc::new(AtomicBool::new(true));
    let gate = StartGate::new();
    let held = gate.0.clone();
    let mut shards = TcpShards {
        threads: Vec::with_capacity(n),
        tls: tls.clone(),
        stats: Vec::with_capacity(n),
        hand_off: HandOff {
            groups,
            listening: listening.clone(),
        },
        gate,
    };
    // Several workers: RFC 6062 data connections move to the worker whose core awaits them.
    let mut moves = if n > 1 {
        let wakers: Vec<_> = workers.iter().map(|w| w.inbox.waker.clone()).collect();
        state::Moves::for_workers(&wakers)
    } else {
        Vec::new()
    }
    .into_iter();
    for (w, listeners) in workers.into_iter().zip(listeners) {
        let mut state = state::State::new(
            w.server,
            w.mirror,
            config.tcp.clone(),
            tls.clone(),
            listeners,
            admission.clone(),
            Instant::now(),
        );
        state.listening = listening.clone();
        if let Some(m) = moves.next() {
            state.set_moves(m, n);
        }
        shards.stats.push((w.name.clone(), state.stats.clone()));
        let watch = watch.clone();
        let (inbox, name) = (w.inbox, w.name.clone());
        let held = held.clone();
        let thread = std::thread::Builder::new()
            .name(w.name.clone())
            .spawn(move || {
                if !StartGate::wait(&held) {
                    drop(watch);
                    return state.server;
                }
                let server = run(&name, engine, state, inbox);
                drop(watch);
                server
            })
            .with_context(|| format!("starting the TCP/TLS thread {}", w.name))?;
        shards.threads.push(thread);
    }
    Ok(shards)
}

/// The certificate watcher: one for all workers, stopped when the last of them ends.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Watch {
    fn start(tls: Option<&TlsAcceptor>) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = match tls {
            Some(t) => Some(
                t.spawn_watcher(TLS_WATCH_EVERY, stop.clone())
                    .context("starting the TLS certificate watcher")?,
            ),
            None => None,
        };
        Ok(Self {
            stop,
            thread: Mutex::new(thread),
        })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.get_mut().ok().and_then(Option::take) {
            let _ = t.join();
        }
    }
}

/// What a TCP/TLS worker's loops are built from: its state and inbox.
pub struct Parts {
    state: state::State,
    inbox: Inbox,
}

/// A worker none of whose loops could start gives its core back.
impl From<Parts> for Server {
    fn from(parts: Parts) -> Self {
        parts.state.server
    }
}

impl EventLoop for uring::UringLoop {
    type Parts = Parts;
    type Output = Server;
    type Error = crate::uring::Unavailable;
    const ENGINE: &'static str = "io_uring";

    fn start(Parts { state, inbox }: Parts) -> Result<Self, (Self::Error, Parts)> {
        Self::new(state, inbox).map_err(|(e, state, inbox)| (e, Parts { state, inbox }))
    }

    fn run(self) -> Server {
        self.run()
    }
}

impl EventLoop for epoll::EpollLoop {
    type Parts = Parts;
    type Output = Server;
    type Error = std::io::Error;
    const ENGINE: &'static str = "epoll";

    fn start(Parts { state, inbox }: Parts) -> Result<Self, (Self::Error, Parts)> {
        Self::new(state, inbox).map_err(|(e, state, inbox)| (e, Parts { state, inbox }))
    }

    fn run(self) -> Server {
        self.run()
    }
}

fn run(worker: &str, engine: IoEngine, state: state::State, inbox: Inbox) -> Server {
    let parts = Parts { state, inbox };
    run_loop::<uring::UringLoop, epoll::EpollLoop>(engine, parts, &LOGS, worker)
}

/// `[tcp] engine`, overridden by `RELAY_TCP_ENGINE`; with `auto`, io_uring if the probe
/// passes, else epoll with the reason logged. `io_uring` that cannot run is an error.
fn choose_engine(configured: IoEngine) -> anyhow::Result<IoEngine> {
    crate::uring::choose_engine(
        configured,
        ENGINE_ENV,
        "tcp.engine",
        "TCP/TLS",
        uring::probe,
    )
}

/// Each connection is a descriptor: lift the soft limit to the hard one, and say so when
/// even that is below what `[tcp] max_connections` needs.
fn raise_open_files(max_connections: usize) {
    let Some(open_files) = relay_sys::limits::raise_nofile() else {
        return;
    };
    // Every connection can carry two relay sockets (dual-stack allocation).
    let need = (max_connections as u64).saturating_mul(2) + 1024;
    if open_files < need {
        tracing::warn!(
            open_files,
            needed = need,
            "open-files limit below what tcp.max_connections needs: raise LimitNOFILE (or ulimit -n)"
        );
    }
}
