//! `cargo xtask bench`: coturn and this relay (XDP and userspace) under identical load
//! from `relay load`, in one run, on the namespace topology of `bench/topo.rs`; then the
//! criterion micro-benchmarks of the protocol core.
//!
//! Every scenario runs against each server in turn (a fresh process each time), plus a
//! no-relay baseline where the host only routes. Whole-box CPU busy time under load
//! minus the baseline's, per packet, is the relay's cost: on a box where load generator,
//! echo peer and server share two cores, that difference is what the relay adds.
//! Results go to `bench-results/` (not committed): `results.md`, `results.json` and the
//! PNG plots.

mod blast;
mod capacity;
mod capacity_table;
mod flood;
mod goals;
mod plot;
mod procs;
mod streams;
mod table;
mod topo;

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::util::{self, Cargo, root};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// quick: 3 s runs and 2 s blasts, a few points (meant to finish, criterion included,
    /// in under 10 minutes); full: the issues' scale (about 20 minutes).
    #[arg(long, value_enum, default_value_t = Scale::Full)]
    pub scale: Scale,
    /// Servers to measure (comma-separated); the no-relay baseline always runs.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Server::Coturn, Server::Userspace, Server::Xdp])]
    pub servers: Vec<Server>,
    /// Only the criterion micro-benchmarks.
    #[arg(long, conflicts_with = "no_criterion")]
    pub criterion_only: bool,
    /// Skip the criterion micro-benchmarks.
    #[arg(long)]
    pub no_criterion: bool,
    /// Only the scenarios whose name contains one of these (comma-separated), e.g.
    /// `--only "1000 alloc @ 50k"`; `--only flood`, `capacity`, `heavy`, `tcp` or `tls`
    /// runs that scenario alone.
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub only: Vec<String>,
    /// Use the relay binary already in target/release instead of building it.
    #[arg(long)]
    pub skip_build: bool,
    /// Where results go (default: bench-results/ in the workspace).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The coturn to measure (default: `turnserver` in PATH, Debian's package), e.g. a newer
    /// release built from source.
    #[arg(long, value_name = "PATH", default_value = "turnserver")]
    pub coturn: String,
    /// An argument added to coturn's command line (repeatable), e.g. `--coturn-arg=--udp-gso`.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub coturn_arg: Vec<String>,
    /// Extra arguments for criterion (e.g. a filter).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub criterion_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scale {
    Quick,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Server {
    /// No relay: the client sends straight to the echo peer through the routing host.
    Direct,
    /// coturn's turnserver (Debian package), userspace.
    Coturn,
    /// This relay with XDP off.
    Userspace,
    /// This relay with the XDP fast path attached natively.
    Xdp,
}

impl Server {
    pub fn label(self) -> &'static str {
        match self {
            Server::Direct => "no relay",
            Server::Coturn => "coturn",
            Server::Userspace => "relay userspace",
            Server::Xdp => "relay XDP",
        }
    }
}

/// One load shape, run against every server.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub allocations: usize,
    /// Echo packets per second offered (each comes back once).
    pub rate: u64,
    pub duration_secs: f64,
    /// Part of the offered-load sweep (1000 allocations) that the plots draw.
    pub sweep: bool,
}

fn scenarios(scale: Scale) -> Vec<Scenario> {
    let s = |allocations, rate, duration_secs, sweep| Scenario {
        name: format!("{allocations} alloc @ {}k/s", rate / 1000),
        allocations,
        rate,
        duration_secs,
        sweep,
    };
    match scale {
        Scale::Quick => vec![
            s(1, 50_000, 3.0, false),
            s(100, 50_000, 3.0, false),
            s(1000, 50_000, 3.0, true),
            s(1000, 150_000, 3.0, true),
            s(2000, 20_000, 3.0, false),
        ],
        Scale::Full => vec![
            s(1, 50_000, 10.0, false),
            s(100, 50_000, 10.0, false),
            s(1000, 25_000, 10.0, true),
            s(1000, 50_000, 10.0, true),
            s(1000, 100_000, 10.0, true),
            s(1000, 150_000, 10.0, true),
            s(1000, 200_000, 10.0, true),
            s(5000, 50_000, 10.0, false),
            s(10_000, 20_000, 10.0, false),
        ],
    }
}

/// The figures of `relay load --json` the bench uses.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Load {
    pub setup: LoadSetup,
    pub traffic: Option<LoadTraffic>,
    pub cpu: LoadCpu,
    pub watched: Option<LoadWatched>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct LoadSetup {
    pub requested: usize,
    pub ready: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub rate_per_sec: f64,
    pub latency_us: Pct,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct LoadTraffic {
    pub sent: u64,
    pub received: u64,
    pub loss_ratio: f64,
    pub sent_per_sec: f64,
    pub received_per_sec: f64,
    pub behind: u64,
    pub rtt_us: Pct,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
pub struct Pct {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct LoadCpu {
    pub cpus: usize,
    /// Setup of the allocations (TLS handshakes included): CPU per setup from it.
    #[serde(default)]
    pub setup: LoadCpuPhase,
    pub traffic: LoadCpuPhase,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct LoadCpuPhase {
    pub box_busy_secs: f64,
    pub box_busy_ratio: f64,
    pub watched_secs: Option<f64>,
    /// Generator, echo, server and ksoftirqd: the run's own CPU.
    #[serde(default)]
    pub group_us_per_packet: Option<f64>,
    pub box_us_per_packet: Option<f64>,
    pub watched_us_per_packet: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct LoadWatched {
    pub rss_after_setup_kib: Option<u64>,
    pub rss_per_allocation_bytes: Option<f64>,
}

/// One scenario against one server.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub scenario: usize,
    pub server: Server,
    /// Share of the box busy with other work just before the run (0 to 1): whole-box CPU
    /// figures only mean something when this is near 0.
    pub background_busy: f64,
    /// Why the run produced no figures (the server did not start, the load timed out...).
    pub error: Option<String>,
    pub load: Option<Load>,
}

impl Run {
    pub fn traffic(&self) -> Option<&LoadTraffic> {
        self.load.as_ref()?.traffic.as_ref()
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    // The whole run, build included: what "quick finishes in under 10 minutes" means.
    let started = std::time::Instant::now();
    if args.criterion_only {
        return criterion(&args.criterion_args);
    }
    util::require_root("the benchmark's network namespaces and XDP")?;
    if !args.skip_build {
        Cargo::new(["build", "--release", "-p", "relay-user"]).run("building the relay")?;
    }
    let mut servers = vec![Server::Direct];
    servers.extend(
        args.servers
            .iter()
            .copied()
            .filter(|s| *s != Server::Direct),
    );
    servers.sort();
    servers.dedup();
    if servers.contains(&Server::Coturn) && util::output(&args.coturn, &["--version"]).is_none() {
        bail!(
            "coturn's turnserver ({}) is missing: `cargo xtask setup` installs Debian's (package \
             coturn); --coturn PATH names another build",
            args.coturn
        );
    }
    procs::use_coturn(&args.coturn, &args.coturn_arg);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root().join("bench-results"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let work = out.join("work");
    std::fs::create_dir_all(&work)?;
    // A private copy: a rebuild in the workspace during the run must not change it.
    let relay = work.join("relay");
    std::fs::copy(root().join("target/release/relay"), &relay)
        .context("copying target/release/relay (build it: cargo xtask build)")?;

    let mut scenarios = scenarios(args.scale);
    let named =
        |name: &str| args.only.is_empty() || args.only.iter().any(|o| name.contains(o.as_str()));
    let with_flood = named("flood");
    let (with_capacity, with_heavy) = (named("capacity"), named("heavy"));
    let with_streams: Vec<streams::Stream> = [streams::Stream::Tcp, streams::Stream::Tls]
        .into_iter()
        .filter(|s| named(s.name()))
        .collect();
    if !args.only.is_empty() {
        scenarios.retain(|sc| args.only.iter().any(|o| sc.name.contains(o.as_str())));
        if scenarios.is_empty()
            && !with_flood
            && !with_capacity
            && !with_heavy
            && with_streams.is_empty()
        {
            bail!(
                "--only {:?} matches no scenario at scale {:?}",
                args.only,
                args.scale
            );
        }
    }
    let topo = topo::Topo::new().context("building the namespace topology")?;
    let mut runs = Vec::new();
    for (k, sc) in scenarios.iter().enumerate() {
        for &server in &servers {
            let background_busy = quiet_box();
            eprintln!(
                "bench: {} against {} (box {:.0}% busy beforehand)",
                sc.name,
                server.label(),
                background_busy * 100.0
            );
            let (error, load) = match procs::measure(&topo, &relay, &work, server, sc) {
                Ok(load) => (None, Some(load)),
                Err(e) => {
                    eprintln!(
                        "bench: {} against {} failed: {e:#}",
                        sc.name,
                        server.label()
                    );
                    (Some(format!("{e:#}")), None)
                }
            };
            let run = Run {
                scenario: k,
                server,
                background_busy,
                error,
                load,
            };
            if let Some(t) = run.traffic() {
                eprintln!(
                    "bench:   {:.0}/s back, loss {:.3}%, rtt p99 {:.0} us, run {:.2} us/packet",
                    t.received_per_sec,
                    t.loss_ratio * 100.0,
                    t.rtt_us.p99,
                    run.load
                        .as_ref()
                        .and_then(|l| l.cpu.traffic.group_us_per_packet)
                        .unwrap_or(0.0)
                );
            }
            runs.push(run);
        }
    }
    let flooded = if with_flood {
        flood::run_all(&topo, &relay, &work, &servers, args.scale)
    } else {
        Vec::new()
    };
    let capacity = if with_capacity {
        capacity::run_capacity(&topo, &relay, &work, &servers, args.scale)
    } else {
        Vec::new()
    };
    let heavy = if with_heavy {
        capacity::run_heavy(&topo, &relay, &work, &servers, args.scale)
    } else {
        Vec::new()
    };
    let streamed = streams::run_all(
        &topo,
        &relay,
        &work,
        &with_streams,
        &streams::servers(&servers),
        args.scale,
    );
    drop(topo);

    let machine = table::Machine::read();
    let json = serde_json::json!({
        "machine": machine,
        "scenarios": scenarios,
        "runs": runs,
        "flood": flooded,
        "capacity": capacity,
        "heavy": heavy,
        "streams": streamed,
    });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let md = table::markdown(&machine, &scenarios, &runs)
        + &flood::markdown(&flooded)
        + &capacity_table::markdown(&capacity, &heavy)
        + &streams::markdown(&streamed);
    std::fs::write(out.join("results.md"), &md)?;
    let plotted = plot::all(&out, &scenarios, &runs);
    println!("{md}");
    match plotted {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
        }
        Err(e) => eprintln!("bench: plots not written: {e:#}"),
    }
    if !args.no_criterion {
        criterion(&args.criterion_args)?;
    }
    let goals = goals::markdown(&goals::Measured {
        scenarios: &scenarios,
        runs: &runs,
        capacity: &capacity,
        heavy: &heavy,
        streams: &streamed,
        scale: args.scale,
        elapsed: started.elapsed(),
    });
    std::fs::write(out.join("results.md"), md + "\n" + &goals)?;
    println!("{goals}");
    println!("wrote {}", out.join("results.md").display());
    Ok(())
}

/// Busy share of the whole box over `window`, from /proc/stat.
fn busy_ratio(window: std::time::Duration) -> f64 {
    let a = cpu_ticks();
    std::thread::sleep(window);
    busy_between(a, cpu_ticks())
}

/// Busy and total ticks of the whole box so far, from /proc/stat.
fn cpu_ticks() -> Option<relay_sys::procfs::BoxTicks> {
    relay_sys::procfs::BoxTicks::read().ok()
}

/// Busy share of the box between two [`cpu_ticks`] readings (0 to 1).
fn busy_between(
    a: Option<relay_sys::procfs::BoxTicks>,
    b: Option<relay_sys::procfs::BoxTicks>,
) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => a.busy_share_until(b),
        _ => 0.0,
    }
}

/// Waits (up to a minute) for other work on the box to calm down, since whole-box CPU
/// is what the bench measures; returns the busy share it settled for.
fn quiet_box() -> f64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let busy = busy_ratio(std::time::Duration::from_secs(1));
        if busy < 0.05 || std::time::Instant::now() >= deadline {
            return busy;
        }
    }
}

fn criterion(args: &[String]) -> Result<()> {
    // `--benches`: only the criterion targets get the arguments (the lib's libtest
    // harness would refuse criterion flags such as `--quick`).
    let mut c = Cargo::new(["bench", "-p", "relay-benches", "--benches"]);
    if !args.is_empty() {
        c.arg("--").args(args);
    }
    c.run("criterion benchmarks")
}
