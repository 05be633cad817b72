//! The control plane over the shards: the `Control` handle, its accessors and the queries
//! the admin endpoint makes. It reaches each shard's core only through [`ShardHandle::run`]:
//! jobs run on the shard's thread between batches. Reload and drain live in submodules.

mod disconnect;
mod drain;
mod reload;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use relay_proto::server::Server;

pub use self::{disconnect::DisconnectError, drain::Signals, reload::ReloadRecord};
use crate::{
    config::{AttachMode, Config, ConfigError},
    metrics::EventCounters,
    shard::{Kernel, ShardHandle},
};

/// How long a query waits for a shard's answer: a shard's loop runs jobs between batches,
/// so anything longer means it is stuck.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Re-reads the configuration the relay was started with (file plus command-line flags).
pub type ConfigLoader = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;
/// Something else that reloads on SIGHUP (the TLS certificate): gets the new config, and
/// refuses the whole reload by returning an error.
pub type ReloadHook = Box<dyn Fn(&Config) -> anyhow::Result<()> + Send + Sync>;

/// One interface the kernel program runs on.
#[derive(Clone, Debug)]
pub struct XdpInterface {
    pub interface: String,
    pub ifindex: u32,
    /// `native` or `generic`.
    pub mode: &'static str,
}

/// The fast path as started.
#[derive(Clone, Debug)]
pub struct XdpStatus {
    /// `[xdp] mode` as configured.
    pub configured: AttachMode,
    /// Empty when the fast path is off.
    pub interfaces: Vec<XdpInterface>,
    /// Why it is off, when it is.
    pub off_reason: Option<String>,
    /// The `max_allocations` the maps were sized for (a reload does not resize them).
    pub sized_for: u32,
    /// Why IP forwarding is off on the XDP interfaces, when the fast path needs it and
    /// does not have it (its FIB lookups fail and every relayed packet goes up to userspace).
    pub forwarding_off: Option<String>,
}

impl XdpStatus {
    /// What `xdp` (`None`: not loaded) runs as, for the status page.
    pub fn of(config: &Config, xdp: Option<&crate::xdp::XdpPath>) -> Self {
        let interfaces: Vec<XdpInterface> = xdp
            .map(|x| {
                x.attached()
                    .iter()
                    .map(|a| XdpInterface {
                        interface: a.interface.clone(),
                        ifindex: a.ifindex,
                        mode: a.mode,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let off_reason = match xdp {
            Some(_) => None,
            None if config.xdp_mode == AttachMode::Off => Some("[xdp] mode = \"off\"".to_owned()),
            None if config.xdp_interfaces.is_empty() => Some("no [xdp] interfaces".to_owned()),
            None => Some("the program could not be loaded (see the startup log)".to_owned()),
        };
        Self {
            configured: config.xdp_mode,
            interfaces,
            off_reason,
            sized_for: u32::try_from(config.max_allocations).unwrap_or(u32::MAX),
            forwarding_off: None,
        }
    }
}

pub struct Control {
    shards: Vec<ShardHandle>,
    kernel: Kernel,
    counters: Arc<EventCounters>,
    /// The settings in force (keys that need a restart keep their startup values).
    config: RwLock<Arc<Config>>,
    config_path: Option<PathBuf>,
    loader: Option<ConfigLoader>,
    hooks: Mutex<Vec<(String, ReloadHook)>>,
    draining: AtomicBool,
    started: Instant,
    started_unix: u64,
    xdp: XdpStatus,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_reload: Mutex<Option<ReloadRecord>>,
    /// The TCP/TLS workers' connection counters by shard name, when they run.
    tcp_stats: std::sync::OnceLock<Vec<(String, Arc<crate::tcp::Stats>)>>,
    /// The process generation and when it took over (a handover), for the status page.
    generation: std::sync::OnceLock<(u64, Option<u64>)>,
    /// The other nodes of `[cluster] nodes` as last heard (the poller writes it).
    cluster: Arc<crate::cluster::Cluster>,
}

impl Control {
    /// `loader` is `None` for the demo (no config file); `config_path` is shown on the
    /// status page.
    pub fn new(
        config: Config,
        config_path: Option<PathBuf>,
        loader: Option<ConfigLoader>,
        shards: Vec<ShardHandle>,
        kernel: Kernel,
        counters: Arc<EventCounters>,
        xdp: XdpStatus,
    ) -> Self {
        Self {
            shards,
            kernel,
            counters,
            config: RwLock::new(Arc::new(config)),
            config_path,
            loader,
            hooks: Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            started_unix: unix_now(),
            xdp,
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload: Mutex::new(None),
            tcp_stats: std::sync::OnceLock::new(),
            generation: std::sync::OnceLock::new(),
            cluster: Arc::default(),
        }
    }

    /// Set once at startup: `took_over` after a handover (unix time), `None` after a
    /// fresh start (generation 1).
    pub fn set_generation(&self, generation: u64, took_over_unix: Option<u64>) {
        let _ = self.generation.set((generation, took_over_unix));
    }

    /// (generation, when it took over).
    pub fn generation(&self) -> (u64, Option<u64>) {
        self.generation.get().copied().unwrap_or((1, None))
    }

    /// Registers the TCP/TLS workers' counters for the metrics (once, at startup).
    pub fn set_tcp_stats(&self, stats: Vec<(String, Arc<crate::tcp::Stats>)>) {
        let _ = self.tcp_stats.set(stats);
    }

    /// The other cluster nodes as last heard.
    pub fn cluster(&self) -> &Arc<crate::cluster::Cluster> {
        &self.cluster
    }

    /// Each TCP/TLS worker's counters by shard name; `None` without TCP/TLS listeners.
    pub fn tcp_stats(&self) -> Option<&[(String, Arc<crate::tcp::Stats>)]> {
        self.tcp_stats.get().map(Vec::as_slice)
    }

    /// Runs `hook` on every reload, after the new config validated and before the shards
    /// get it; an error refuses the reload. `name` appears in the refusal.
    pub fn on_reload(&self, name: impl Into<String>, hook: ReloadHook) {
        lock(&self.hooks).push((name.into(), hook));
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.as_deref()
    }

    pub fn shards(&self) -> &[ShardHandle] {
        &self.shards
    }

    /// Hands every shard the cluster nodes it may redirect to now (the cluster poller
    /// calls it after each round).
    pub fn publish_redirect_targets(&self) {
        let targets = self.cluster.targets(Instant::now());
        for shard in self.shards() {
            let t = targets.clone();
            shard.run(move |server| server.set_redirect_targets(t));
        }
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The event counters the shards feed.
    pub fn counters(&self) -> &Arc<EventCounters> {
        &self.counters
    }

    pub fn xdp(&self) -> &XdpStatus {
        &self.xdp
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn started_unix(&self) -> u64 {
        self.started_unix
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// (succeeded, refused, the last one).
    pub fn reloads(&self) -> (u64, u64, Option<ReloadRecord>) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
            lock(&self.last_reload).clone(),
        )
    }

    /// Runs `f` on every shard and waits up to `timeout` in all for the answers, in shard
    /// order; `None` for a shard that has ended or did not answer in time. Blocks: call it
    /// from a blocking context.
    pub fn gather<T: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl Fn(&mut Server) -> T + Send + Sync + 'static,
    ) -> Vec<Option<T>> {
        let f = Arc::new(f);
        let (tx, rx) = mpsc::channel();
        let mut pending = 0;
        for (i, shard) in self.shards.iter().enumerate() {
            let (tx, f) = (tx.clone(), f.clone());
            if shard.run(move |server| {
                let _ = tx.send((i, f(server)));
            }) {
                pending += 1;
            }
        }
        // Jobs dropped unrun (their shard ended) drop their sender: recv then fails early.
        drop(tx);
        let mut out: Vec<Option<T>> = self.shards.iter().map(|_| None).collect();
        let deadline = Instant::now() + timeout;
        while pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((i, v)) => {
                    out[i] = Some(v);
                    pending -= 1;
                }
                Err(_) => break,
            }
        }
        out
    }

    /// The relay host's locally routed prefixes changed (an address was added or removed):
    /// every shard refuses peers there from now on and drops what it held for them.
    pub fn set_local_prefixes(&self, prefixes: &[IpNet]) {
        let prefixes: Arc<[IpNet]> = prefixes.into();
        let answers = self.gather(QUERY_TIMEOUT, move |server| {
            server.set_local_prefixes(prefixes.iter().copied());
        });
        if answers.iter().any(Option::is_none) {
            tracing::warn!(
                "some shards did not confirm the new relay-host addresses in time; they apply them when their loop next runs"
            );
        }
    }

    /// Allocations on every shard; `None` if some shard did not answer.
    pub fn allocation_count(&self) -> Option<usize> {
        self.gather(QUERY_TIMEOUT, |s| s.allocation_count())
            .into_iter()
            .sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
