//! Scenario "flood" (issue 14): legitimate calls under a junk flood. `relay load` holds
//! 200 allocations at 10k echoes/s while trafgen floods the relay host's external NIC
//! from the client's link with spoofed junk (the namespace test's four kinds, from the
//! same configuration): coturn, the relay's userspace path and its XDP path side by side,
//! each measured for legitimate loss, server CPU during the flood and RSS before/after.
//!
//! Same layout and rate as the test: trafgen at 550k packets/s pinned to one core, the
//! relay NIC's receive work in a threaded NAPI kernel thread pinned to the other, both
//! under SCHED_FIFO (a sender of its own, a NIC whose softirq runs ahead of processes). GRO is on for that NIC so that veth
//! runs NAPI for it also without an XDP program (coturn, userspace), so every server gets
//! the same receive path.

#[path = "../../../tests/src/flood_config.rs"]
#[allow(dead_code)]
pub(super) mod config;
#[path = "../../../tests/src/flood.rs"]
#[allow(dead_code)] // shared with the tests, which use all of it
pub(super) mod runner;

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use serde::Serialize;

use super::{
    Scale, Scenario, Server,
    procs::{self, Hosts, Limits},
    topo::{RELAY_EXT, Topo},
};
use config::{FloodTarget, Junk, parse_mac, trafgen_config};
use runner::{FloodRun, Trafgen};

const ALLOCATIONS: usize = 200;
const ECHO_RATE: u64 = 10_000;
/// Load traffic before the flood starts (setup is done by then) and after it ends.
const LEAD: Duration = Duration::from_millis(1500);
const TRAIL: Duration = Duration::from_secs(1);
/// The namespace test's flood rate (its floor of 500k/s and a margin): faster, the NIC's
/// receive thread fills the second core of a two-core box, and every server's loss is
/// the box's.
const FLOOD_PPS: u64 = 550_000;
const FLOOD_CPU: usize = 0;
const NAPI_CPU: usize = 1;

/// One server under the flood.
#[derive(Debug, Clone, Serialize)]
pub struct FloodResult {
    pub server: Server,
    pub error: Option<String>,
    pub figures: Option<Figures>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub flood_secs: f64,
    /// What trafgen said it sent, and what the relay NIC received (packets/s).
    pub sent_pps: f64,
    pub reached_pps: f64,
    pub legit_ready: u64,
    /// Echoes the generator managed to send per second (of the 10k/s offered).
    pub legit_sent_pps: f64,
    pub legit_loss: f64,
    pub legit_rtt_p99_us: f64,
    /// Server process CPU during the flood, share of one core.
    pub server_cpu: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
}

pub fn flood_secs(scale: Scale) -> f64 {
    match scale {
        Scale::Quick => 5.0,
        Scale::Full => 10.0,
    }
}

/// The flood against each of `servers` (not the no-relay baseline: nothing to protect).
pub fn run_all(
    topo: &Topo,
    relay_bin: &Path,
    work: &Path,
    servers: &[Server],
    scale: Scale,
) -> Vec<FloodResult> {
    let flood = Duration::from_secs_f64(flood_secs(scale));
    servers
        .iter()
        .filter(|s| **s != Server::Direct)
        .map(|&server| {
            eprintln!("bench: flood against {}", server.label());
            let r = measure(topo, relay_bin, work, server, flood);
            match &r {
                Ok(f) => eprintln!(
                    "bench:   {:.0} packets/s reached the NIC; legitimate loss {:.3}%, server \
                     CPU {:.1}%, RSS {} -> {} KiB",
                    f.reached_pps,
                    f.legit_loss * 100.0,
                    f.server_cpu * 100.0,
                    f.rss_before_kib,
                    f.rss_after_kib
                ),
                Err(e) => eprintln!("bench: flood against {} failed: {e:#}", server.label()),
            }
            FloodResult {
                server,
                error: r.as_ref().err().map(|e| format!("{e:#}")),
                figures: r.ok(),
            }
        })
        .collect()
}

fn measure(
    topo: &Topo,
    relay_bin: &Path,
    work: &Path,
    server: Server,
    flood: Duration,
) -> Result<Figures> {
    let tag = format!("flood-{server:?}").to_lowercase();
    let mut hosts = Hosts::start(topo, relay_bin, work, server, &tag, Limits::Defaults, None)?;
    let server_pid = hosts.pids().0.context("no server process")?;
    prepare_nic(topo)?;
    let config_path = work.join(format!("{tag}.trafgen"));
    std::fs::write(&config_path, trafgen_config(&target(topo)?, &Junk::ALL))?;
    let run = FloodRun {
        ns: topo.client.name().to_owned(),
        ifname: topo.client_if.clone(),
        config_path,
        cpu: FLOOD_CPU,
        duration: flood,
        rate: Some(FLOOD_PPS),
    };
    let sc = Scenario {
        name: "flood".into(),
        allocations: ALLOCATIONS,
        rate: ECHO_RATE,
        duration_secs: (LEAD + flood + TRAIL).as_secs_f64(),
        sweep: false,
    };
    let bin = hosts.bin.clone();
    let pids = hosts.pids();
    let figures = std::thread::scope(|s| -> Result<Figures> {
        let load = s.spawn(|| procs::run_load(topo, &bin, work, &tag, server, &sc, pids));
        // Setup of 200 allocations takes a fraction of LEAD.
        std::thread::sleep(LEAD);
        let rx = || runner::if_stat(topo.relay.name(), &topo.ext_if, "rx_packets");
        let rx0 = rx()?;
        let cpu0 = runner::cpu_time(server_pid).context("server CPU time")?;
        let rss_before_kib = runner::rss_kib(server_pid).context("server RSS")?;
        let window = Instant::now();
        let sent = Trafgen::start(&run)
            .context("starting trafgen (netsniff-ng; `cargo xtask setup` installs it)")?
            .wait()
            .map_err(|e| anyhow!(e))?;
        let window = window.elapsed();
        let cpu = runner::cpu_time(server_pid).context("server CPU time")? - cpu0;
        let rss_after_kib = runner::rss_kib(server_pid).context("server RSS")?;
        let reached = rx()? - rx0;
        let load = load
            .join()
            .map_err(|_| anyhow!("the load thread panicked"))??;
        let traffic = load.traffic.context("relay load reported no traffic")?;
        Ok(Figures {
            flood_secs: sent.elapsed.as_secs_f64(),
            sent_pps: sent.per_sec(),
            reached_pps: reached as f64 / sent.elapsed.as_secs_f64(),
            legit_ready: load.setup.ready,
            legit_sent_pps: traffic.sent_per_sec,
            legit_loss: traffic.loss_ratio,
            legit_rtt_p99_us: traffic.rtt_us.p99,
            server_cpu: cpu.as_secs_f64() / window.as_secs_f64(),
            rss_before_kib,
            rss_after_kib,
        })
    });
    hosts.stop();
    figures
}

/// GRO on (veth NAPI without XDP too), threaded NAPI, its thread on [`NAPI_CPU`].
fn prepare_nic(topo: &Topo) -> Result<()> {
    topo.relay
        .exec("ethtool", &["-K", &topo.ext_if, "gro", "on"])?;
    runner::set_threaded_napi(topo.relay.name(), &topo.ext_if)?;
    let threads = runner::napi_threads(&topo.ext_if);
    if threads.is_empty() {
        anyhow::bail!("no NAPI thread for {}", topo.ext_if);
    }
    for pid in threads {
        runner::pin(pid, NAPI_CPU).with_context(|| format!("pinning NAPI thread {pid}"))?;
        runner::realtime(pid).with_context(|| format!("NAPI thread {pid} under SCHED_FIFO"))?;
    }
    Ok(())
}

fn target(topo: &Topo) -> Result<FloodTarget> {
    let mac = |ns: &str, ifname: &str| -> Result<[u8; 6]> {
        let s = runner::sysfs_net(ns, ifname, "address")?;
        parse_mac(&s).with_context(|| format!("MAC of {ifname}: {s:?}"))
    };
    Ok(FloodTarget {
        src_mac: mac(topo.client.name(), &topo.client_if)?,
        dst_mac: mac(topo.relay.name(), &topo.ext_if)?,
        dst_ip: RELAY_EXT,
        listener_port: 3478,
        relay_ports: procs::PORTS.0..=procs::PORTS.1,
    })
}

/// The "Under a junk flood" table.
pub fn markdown(results: &[FloodResult]) -> String {
    let mut s = String::new();
    if results.is_empty() {
        return s;
    }
    let _ = writeln!(s, "## Under a junk flood\n");
    let _ = writeln!(
        s,
        "{ALLOCATIONS} allocations at {ECHO_RATE} echoes/s while trafgen (one core, \
         {FLOOD_PPS} packets/s) floods the \
         relay's external NIC with spoofed junk: random bytes to 3478, random datagrams to \
         relay ports, unbound ChannelData, 28-byte Allocates from 10,000 sources. *Reached* \
         is what the NIC received; *CPU* the server process during the flood (share of one \
         core).\n"
    );
    let _ = writeln!(
        s,
        "| server | flood sent/s | reached NIC/s | ready | echoes sent/s | legitimate loss % | RTT p99 (µs) | CPU | RSS before → after (MiB) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let Some(f) = &r.figures else {
            let why = super::table::why(&r.error);
            let _ = writeln!(s, "| {} | failed: {why} ||||||||", r.server.label());
            continue;
        };
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {} | {:.0} | {:.3} | {:.0} | {:.1}% | {:.1} → {:.1} |",
            r.server.label(),
            f.sent_pps,
            f.reached_pps,
            f.legit_ready,
            f.legit_sent_pps,
            f.legit_loss * 100.0,
            f.legit_rtt_p99_us,
            f.server_cpu * 100.0,
            f.rss_before_kib as f64 / 1024.0,
            f.rss_after_kib as f64 / 1024.0,
        );
    }
    s
}
