//! The control plane over the shards: configuration reload (SIGHUP), drain (SIGTERM,
//! SIGINT), and the queries the admin endpoint makes. It reaches each shard's core only
//! through [`ShardHandle::run`]: jobs run on the shard's thread between batches.

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
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    config::{AttachMode, Config, ConfigError},
    metrics::EventCounters,
    shard::{Kernel, ShardHandle},
};

/// How long a query waits for a shard's answer: a shard's loop runs jobs between batches,
/// so anything longer means it is stuck.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a drain looks at what is left.
const DRAIN_POLL: Duration = Duration::from_millis(250);
/// How often a drain logs its progress.
const DRAIN_REPORT: Duration = Duration::from_secs(5);

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

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload: this relay runs the demo settings (start it with --config)")]
    NoConfigFile,
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0:#}")]
    Credentials(anyhow::Error),
    #[error("{name}: {error:#}")]
    Hook { name: String, error: anyhow::Error },
}

/// What a successful reload changed.
#[derive(Debug)]
pub struct ReloadReport {
    pub users: usize,
    pub shared_secrets: usize,
    /// Shards that confirmed the new settings within [`QUERY_TIMEOUT`] (the others apply
    /// them when their loop next runs its jobs).
    pub shards_applied: usize,
    pub allocations_kept: usize,
    /// Keys whose change needs a restart; their old values stay in force.
    pub restart_needed: Vec<&'static str>,
}

/// The last reload, for `/api/status`.
#[derive(Clone, Debug)]
pub struct ReloadRecord {
    pub at_unix: u64,
    pub ok: bool,
    pub message: String,
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
    /// The TCP/TLS shard's connection counters, when it runs.
    tcp_stats: std::sync::OnceLock<Arc<crate::tcp::Stats>>,
    /// The process generation and when it took over (a handover), for the status page.
    generation: std::sync::OnceLock<(u64, Option<u64>)>,
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

    /// Registers the TCP/TLS shard's counters for the metrics (once, at startup).
    pub fn set_tcp_stats(&self, stats: Arc<crate::tcp::Stats>) {
        let _ = self.tcp_stats.set(stats);
    }

    pub fn tcp_stats(&self) -> Option<&crate::tcp::Stats> {
        self.tcp_stats.get().map(|s| &**s)
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

    /// Reads the config again and applies what can change at runtime: users, shared
    /// secrets, realm, peer policy, limits, alternate servers, drain timeout, admin token
    /// (and whatever the hooks reload). Allocations are kept. Nothing changes unless the
    /// whole new config is valid. Blocks (file I/O, shard round trips).
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let loader = self.loader.as_ref().ok_or(ReloadError::NoConfigFile)?;
        let new = loader()?;
        let old = self.config();
        let mut running = (*old).clone();
        running.realm = new.realm.clone();
        running.users = new.users.clone();
        running.shared_secrets = new.shared_secrets.clone();
        running.peers_allow = new.peers_allow.clone();
        running.peers_rest_allow = new.peers_rest_allow.clone();
        running.peers_deny = new.peers_deny.clone();
        running.max_allocations = new.max_allocations;
        running.max_allocations_per_user = new.max_allocations_per_user;
        running.max_allocations_per_rest_user = new.max_allocations_per_rest_user;
        running.max_allocations_per_source = new.max_allocations_per_source;
        running.unauthenticated_rate = new.unauthenticated_rate;
        running.unauthenticated_burst = new.unauthenticated_burst;
        running.unauthenticated_global_rate = new.unauthenticated_global_rate;
        running.unauthenticated_global_burst = new.unauthenticated_global_burst;
        running.alternate_servers = new.alternate_servers.clone();
        running.drain_timeout = new.drain_timeout;
        running.admin.token = new.admin.token.clone();
        running.tcp.relay_tcp = new.tcp.relay_tcp;

        // Built here to refuse the reload before any shard sees it; each shard builds its
        // own store from the same settings (a store is not shared between threads).
        crate::cores::credentials(&running).map_err(ReloadError::Credentials)?;
        for (name, hook) in lock(&self.hooks).iter() {
            hook(&new).map_err(|error| ReloadError::Hook {
                name: name.clone(),
                error,
            })?;
        }

        let running = Arc::new(running);
        let apply = running.clone();
        let answers = self.gather(QUERY_TIMEOUT, move |server| {
            match crate::cores::credentials(&apply) {
                Ok(c) => server.set_credentials(c),
                // Not expected: the same settings built a store above.
                Err(e) => tracing::error!(error = %format!("{e:#}"),
                    "reload: new credentials not applied on this shard"),
            }
            server.set_policy(crate::cores::policy(&apply));
            server.set_limits(relay_proto::server::Limits {
                max_allocations: apply.max_allocations,
                max_allocations_per_user: apply.max_allocations_per_user,
                max_allocations_per_rest_user: apply.max_allocations_per_rest_user,
                max_allocations_per_source: apply.max_allocations_per_source,
            });
            server
                .set_unauthenticated_limit(apply.unauthenticated_rate, apply.unauthenticated_burst);
            server.set_unauthenticated_global_limit(
                apply.unauthenticated_global_rate,
                apply.unauthenticated_global_burst,
            );
            server.set_alternate_servers(apply.alternate_servers.clone());
            server.set_relay_tcp(apply.tcp.relay_tcp);
            server.allocation_count()
        });
        let report = ReloadReport {
            users: running.users.len(),
            shared_secrets: running.shared_secrets.len(),
            shards_applied: answers.iter().flatten().count(),
            allocations_kept: answers.iter().flatten().sum(),
            restart_needed: restart_needed(&old, &new),
        };
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = running;
        Ok(report)
    }

    /// [`reload`](Self::reload) with the operator's log lines and the status counters.
    pub fn reload_and_log(&self) {
        let path = self
            .config_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into());
        let result = self.reload();
        // Counted before the log line: whoever reacts to the line finds it in the status.
        let (ok, message) = match &result {
            Ok(_) => (true, "reloaded".to_owned()),
            Err(e) => (false, e.to_string()),
        };
        let counter = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_reload) = Some(ReloadRecord {
            at_unix: unix_now(),
            ok,
            message,
        });
        match result {
            Ok(r) => {
                tracing::info!(config = %path, users = r.users, shared_secrets = r.shared_secrets,
                    allocations_kept = r.allocations_kept,
                    shards = %format!("{}/{}", r.shards_applied, self.shards.len()),
                    "configuration reloaded: users, shared secrets, peer policy, limits, alternates and tcp.relay_tcp in force");
                if r.shards_applied < self.shards.len() {
                    tracing::warn!(
                        "some shards did not confirm the reload in time; they apply it when their loop next runs"
                    );
                }
                if let Some(w) = crate::cores::rest_policy_warning(&self.config()) {
                    tracing::warn!("{w}");
                }
                if !r.restart_needed.is_empty() {
                    tracing::warn!(keys = %r.restart_needed.join(", "),
                        "these changed keys take effect only after a restart; their old values stay in force");
                }
            }
            Err(e) => {
                tracing::error!(config = %path, error = %e,
                    "configuration reload refused; the previous configuration stays in force (check with `relay check --config FILE`)");
            }
        }
    }

    /// New allocations are refused from now on (300 to an alternate, else 508); existing
    /// ones keep working. Returns whether it was already draining.
    pub fn start_draining(&self) -> bool {
        let was = self.draining.swap(true, Ordering::SeqCst);
        for s in &self.shards {
            s.run(|server| server.set_draining(true));
        }
        was
    }

    /// Serves SIGHUP (reload) until SIGTERM or SIGINT, then drains: returns when no
    /// allocation is left, the drain timeout passed, or a second SIGTERM/SIGINT came.
    /// The caller then stops the shards.
    pub async fn run_until_stopped(self: &Arc<Self>, mut sig: Signals) {
        let first = loop {
            tokio::select! {
                _ = sig.hup.recv() => self.reload_in_background().await,
                _ = sig.term.recv() => break "SIGTERM",
                _ = sig.int.recv() => break "SIGINT",
            }
        };
        self.drain(first, &mut sig).await;
    }

    async fn reload_in_background(self: &Arc<Self>) {
        let me = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || me.reload_and_log()).await {
            tracing::error!(error = %e, "configuration reload task failed");
        }
    }

    async fn count_in_background(self: &Arc<Self>) -> Option<usize> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.allocation_count())
            .await
            .ok()
            .flatten()
    }

    async fn drain(self: &Arc<Self>, signal_name: &str, sig: &mut Signals) {
        let config = self.config();
        let timeout = config.drain_timeout;
        self.start_draining();
        let left = self.count_in_background().await;
        if timeout.is_zero() {
            tracing::info!(signal = signal_name, allocations = %count(left),
                "limits.drain_timeout = 0: stopping at once");
            return;
        }
        let refusal = if config.alternate_servers.is_empty() {
            "508 Insufficient Capacity".to_owned()
        } else {
            let alts: Vec<String> = config
                .alternate_servers
                .iter()
                .map(|a| a.to_string())
                .collect();
            format!("300 to {}", alts.join(", "))
        };
        tracing::info!(signal = signal_name, allocations = %count(left), timeout_s = timeout.as_secs(), new_allocations = %refusal,
            "draining: existing allocations are served until they end or the timeout passes; send SIGTERM again to stop at once");
        let start = Instant::now();
        let mut last_report = start;
        let mut tick = tokio::time::interval(DRAIN_POLL);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let left = self.count_in_background().await;
                    if left == Some(0) {
                        tracing::info!(waited_s = start.elapsed().as_secs(), "drained: no allocations left");
                        return;
                    }
                    if start.elapsed() >= timeout {
                        tracing::warn!(allocations = %count(left), timeout_s = timeout.as_secs(),
                            "drain timeout passed: stopping with allocations still open (raise limits.drain_timeout to wait longer)");
                        return;
                    }
                    if last_report.elapsed() >= DRAIN_REPORT {
                        last_report = Instant::now();
                        let remaining_s = timeout.saturating_sub(start.elapsed()).as_secs();
                        tracing::info!(allocations = %count(left), remaining_s, "draining");
                    }
                }
                _ = sig.term.recv() => return self.second_signal("SIGTERM").await,
                _ = sig.int.recv() => return self.second_signal("SIGINT").await,
                _ = sig.hup.recv() => self.reload_in_background().await,
            }
        }
    }

    async fn second_signal(self: &Arc<Self>, name: &str) {
        let left = self.count_in_background().await;
        tracing::warn!(signal = name, allocations = %count(left), "second signal while draining: stopping now");
    }
}

/// An allocation count for a log line ("unknown" when some shard did not answer).
fn count(n: Option<usize>) -> String {
    n.map_or_else(|| "unknown".to_owned(), |n| n.to_string())
}

/// SIGHUP, SIGTERM and SIGINT, caught from the moment this is made: install it first
/// thing, so that a reload or stop during startup waits instead of killing the process.
pub struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Needs a Tokio runtime.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Config keys read only at startup whose values differ between `old` and `new`.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |changed: bool, key: &'static str| {
        if changed {
            keys.push(key);
        }
    };
    check(old.listeners != new.listeners, "listen");
    check(
        old.relay_v4 != new.relay_v4 || old.relay_v6 != new.relay_v6,
        "relay.address",
    );
    check(old.ports != new.ports, "relay.ports");
    check(old.software != new.software, "software");
    check(
        old.xdp_interfaces != new.xdp_interfaces
            || old.xdp_mode != new.xdp_mode
            || old.xdp_forwarding != new.xdp_forwarding,
        "xdp",
    );
    check(old.udp_workers != new.udp_workers, "udp.workers");
    check(old.udp_engine != new.udp_engine, "udp.engine");
    check(old.tcp.restart_only() != new.tcp.restart_only(), "tcp");
    check(old.admin.address != new.admin.address, "admin.address");
    check(
        old.admin.header_timeout != new.admin.header_timeout,
        "admin.header_timeout",
    );
    check(
        old.admin.max_connections != new.admin.max_connections,
        "admin.max_connections",
    );
    check(old.log_level != new.log_level, "log.level");
    // The buckets are set up with the allocations (and the kernel's with its maps).
    check(
        old.max_bps_per_allocation != new.max_bps_per_allocation,
        "limits.max_bps_per_allocation",
    );
    check(
        old.max_bps_per_user != new.max_bps_per_user,
        "limits.max_bps_per_user",
    );
    keys
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

/// Shards without sockets, for tests of the control plane: each thread owns a core and
/// runs its jobs until stopped.
#[cfg(test)]
pub(crate) mod test_support {
    use std::{path::Path, thread::JoinHandle, time::Instant};

    use super::*;

    pub struct FakeShards {
        pub handles: Vec<ShardHandle>,
        threads: Vec<JoinHandle<()>>,
    }

    impl FakeShards {
        pub fn start(config: &Config, n: usize) -> Self {
            let cores = crate::cores::Cores::new(config).unwrap();
            let mut handles = Vec::new();
            let mut threads = Vec::new();
            for i in 0..n {
                let (handle, inbox) = crate::shard::channel(format!("fake-{i}")).unwrap();
                let mut server = cores.server(config, Instant::now()).unwrap();
                threads.push(std::thread::spawn(move || {
                    while !inbox.stopping() {
                        inbox.run_jobs(&mut server);
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }));
                handles.push(handle);
            }
            Self { handles, threads }
        }

        /// Stops shard `i` and waits for its thread.
        pub fn stop(&mut self, i: usize) {
            self.handles[i].stop();
            let t = self.threads.remove(i);
            t.join().unwrap();
        }
    }

    impl Drop for FakeShards {
        fn drop(&mut self) {
            for h in &self.handles {
                h.stop();
            }
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    /// A loopback relay config with `extra` appended.
    pub fn config_text(extra: &str) -> String {
        format!(
            "realm = \"example.org\"\n[[listen]]\naddress = \"127.0.0.1:3478\"\n\
             [auth]\nusers = {{ alice = \"pw\" }}\n{extra}"
        )
    }

    /// `text` validated as a config file in the current folder.
    pub fn parse_config(text: &str) -> Config {
        let file: crate::config::ConfigFile = toml::from_str(text).unwrap();
        file.validate(Path::new(".")).unwrap()
    }

    pub fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    pub fn control_for(path: &Path, shards: &FakeShards) -> Control {
        let config = crate::config::load(path).unwrap();
        let p = path.to_owned();
        Control::new(
            config,
            Some(path.to_owned()),
            Some(Box::new(move || crate::config::load(&p))),
            shards.handles.clone(),
            Kernel::off(),
            Default::default(),
            XdpStatus {
                configured: AttachMode::Off,
                interfaces: vec![],
                off_reason: Some("test".into()),
                sized_for: 10,
                forwarding_off: None,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{test_support::*, *};

    fn temp_config(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("relay-control-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        write(&path, text);
        path
    }

    #[test]
    fn reload_applies_runtime_keys_and_keeps_startup_ones() {
        let path = temp_config("apply", &config_text("[limits]\nmax_allocations = 10\n"));
        let shards = FakeShards::start(&crate::config::load(&path).unwrap(), 2);
        let control = control_for(&path, &shards);
        write(
            &path,
            &config_text(
                "[limits]\nmax_allocations = 20\nalternate_servers = [\"203.0.113.60:3478\"]\n\
                 drain_timeout = 7\nmax_allocations_per_rest_user = 3\n\
                 max_allocations_per_source = 40\nunauthenticated_rate = 5\n\
                 unauthenticated_burst = 6\n[admin]\ntoken = \"new\"\n",
            )
            .replace("127.0.0.1:3478", "127.0.0.1:3479"),
        );
        let report = control.reload().unwrap();
        assert_eq!(report.shards_applied, 2);
        assert_eq!(report.restart_needed, vec!["listen"]);
        let c = control.config();
        assert_eq!(c.max_allocations, 20);
        assert_eq!(c.drain_timeout, Duration::from_secs(7));
        assert_eq!(c.admin.token.as_deref(), Some("new"));
        // The listener needs a restart: the one in force stays.
        assert_eq!(c.listeners[0].address.port(), 3478);
        let rest_quotas = control.gather(QUERY_TIMEOUT, |s| {
            let l = s.limits();
            (
                l.max_allocations_per_rest_user,
                l.max_allocations_per_source,
            )
        });
        for q in rest_quotas {
            assert_eq!(q, Some((3, 40)), "REST quotas reloaded on every shard");
        }
        let rates = control.gather(QUERY_TIMEOUT, |s| {
            let c = s.config();
            (c.unauthenticated_rate, c.unauthenticated_burst)
        });
        for r in rates {
            assert_eq!(
                r,
                Some((5, 6)),
                "unauthenticated limit reloaded on every shard"
            );
        }
        let alternates = control.gather(QUERY_TIMEOUT, |s| {
            (
                s.config().alternate_servers.clone(),
                s.limits().max_allocations,
            )
        });
        for a in alternates {
            let (alts, max) = a.expect("shard answered");
            assert_eq!(alts, vec!["203.0.113.60:3478".parse().unwrap()]);
            assert_eq!(max, 20);
        }
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn relay_tcp_is_applied_by_a_reload_and_the_rest_of_tcp_is_not() {
        let path = temp_config("relay-tcp", &config_text(""));
        let shards = FakeShards::start(&crate::config::load(&path).unwrap(), 2);
        let control = control_for(&path, &shards);
        let offered = |c: &Control| c.gather(QUERY_TIMEOUT, |s| s.config().relay_tcp);
        assert_eq!(offered(&control), vec![Some(false); 2]);
        write(&path, &config_text("[tcp]\nrelay_tcp = true\n"));
        let report = control.reload().unwrap();
        assert!(
            report.restart_needed.is_empty(),
            "{:?}",
            report.restart_needed
        );
        assert!(control.config().tcp.relay_tcp);
        assert_eq!(offered(&control), vec![Some(true); 2]);
        write(
            &path,
            &config_text("[tcp]\nrelay_tcp = true\nmax_connections = 7\n"),
        );
        let report = control.reload().unwrap();
        assert_eq!(report.restart_needed, vec!["tcp"]);
        assert_eq!(
            control.config().tcp.max_connections,
            crate::config::TcpSettings::default().max_connections
        );
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn bandwidth_limits_need_a_restart() {
        let path = temp_config(
            "bandwidth",
            &config_text("[limits]\nmax_allocations = 10\n"),
        );
        let shards = FakeShards::start(&crate::config::load(&path).unwrap(), 1);
        let control = control_for(&path, &shards);
        write(
            &path,
            &config_text("[limits]\nmax_allocations = 10\nmax_bps_per_user = 800000\n"),
        );
        let report = control.reload().unwrap();
        assert_eq!(report.restart_needed, vec!["limits.max_bps_per_user"]);
        assert_eq!(control.config().max_bps_per_user, 0);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_bad_config_or_a_failing_hook_changes_nothing() {
        let path = temp_config("refuse", &config_text("[limits]\nmax_allocations = 10\n"));
        let shards = FakeShards::start(&crate::config::load(&path).unwrap(), 1);
        let control = control_for(&path, &shards);

        write(&path, &config_text("[limits]\nmax_allocations = 0\n"));
        match control.reload() {
            Err(ReloadError::Config(e)) => assert_eq!(e.key, "limits.max_allocations"),
            other => panic!("expected a config error, got {other:?}"),
        }
        control.reload_and_log();
        assert_eq!(control.reloads().1, 1);
        assert!(!control.reloads().2.unwrap().ok);

        control.on_reload(
            "tls",
            Box::new(|_| Err(anyhow::anyhow!("tls.certificate: no such file"))),
        );
        write(&path, &config_text("[limits]\nmax_allocations = 30\n"));
        match control.reload() {
            Err(e @ ReloadError::Hook { .. }) => {
                assert!(e.to_string().contains("tls: tls.certificate"), "{e}")
            }
            other => panic!("expected a hook error, got {other:?}"),
        }
        assert_eq!(control.config().max_allocations, 10);
        let max = control.gather(QUERY_TIMEOUT, |s| s.limits().max_allocations);
        assert_eq!(max, vec![Some(10)]);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn the_demo_has_nothing_to_reload() {
        let (config, _) = crate::cores::demo_config().unwrap();
        let shards = FakeShards::start(&config, 1);
        let control = Control::new(
            config,
            None,
            None,
            shards.handles.clone(),
            Kernel::off(),
            Default::default(),
            XdpStatus::of(&crate::cores::demo_config().unwrap().0, None),
        );
        assert!(matches!(control.reload(), Err(ReloadError::NoConfigFile)));
    }

    #[test]
    fn gather_does_not_wait_for_ended_shards() {
        let path = temp_config("gather", &config_text(""));
        let mut shards = FakeShards::start(&crate::config::load(&path).unwrap(), 3);
        let control = control_for(&path, &shards);
        shards.stop(1);
        let start = Instant::now();
        let got = control.gather(Duration::from_secs(10), |s| s.allocation_count());
        assert_eq!(got, vec![Some(0), None, Some(0)]);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(control.allocation_count(), None);

        assert!(!control.start_draining());
        assert!(control.is_draining());
        let draining = control.gather(QUERY_TIMEOUT, |s| s.is_draining());
        assert_eq!(draining, vec![Some(true), None, Some(true)]);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
