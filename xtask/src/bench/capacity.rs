//! Scenarios "capacity" and "heavy" (issue 16): the relay at saturation. `relay load`
//! sets up the allocations and holds them (refreshes, one probe a second), then trafgen
//! blasts their ChannelData at full speed from one core for a few seconds, one frame per
//! allocation in turn, written from the file `relay load --allocations-file` leaves. The
//! far side is `relay bench-xdp sink`, an XDP program that counts and drops: no echo
//! process takes CPU, so the relay is the only thing measured.
//!
//! Each way: client to peer (trafgen on the client's link, frames to the listener), and
//! peer to client (trafgen on the media host, frames to the relayed addresses). Two
//! ceilings run the same frames without a relay: the host routing them (addressed to the
//! far host itself), and `relay bench-xdp redirect` on the ingress NIC (MACs rewritten,
//! redirected out of the other NIC through a devmap: the limit of any kernel relay here).
//!
//! The ingress NIC's receive work runs in a threaded NAPI kernel thread pinned to the
//! core trafgen does not use (as a real NIC's interrupts land away from a remote
//! sender's), under the ordinary scheduler: the XDP path runs in that thread, a
//! userspace relay beside it. "heavy" is the same with one allocation and 1200-byte
//! payloads (a screen share or 1080p call), reported in Mbit/s.

use std::{
    net::SocketAddrV4,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;

use super::{
    Scale, Scenario, Server,
    blast::{self, Wire, XdpTool},
    busy_between, cpu_ticks,
    flood::{config::parse_mac, runner},
    procs::{self, Hosts, Limits, LoadExtra},
    topo::{CLIENT, MEDIA, RELAY_EXT, Side, Topo},
};

const TRAFGEN_CPU: usize = 0;
const NAPI_CPU: usize = 1;
/// Payload of the capacity frames (as `relay load`'s default probes).
pub const SMALL: usize = 100;
/// Payload of the heavy allocation (a video packet).
pub const LARGE: usize = 1200;
/// The paced rerun of the XDP path, as a share of what it delivered at full speed.
const BELOW_SATURATION: f64 = 0.9;
/// The longest setup of 1000 allocations waited for.
const SETUP_LIMIT: Duration = Duration::from_secs(60);

/// What carries the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Carrier {
    /// The relay host routes frames addressed to the far host: no relay.
    Routing,
    /// `relay bench-xdp redirect` on the ingress NIC: no relay, the kernel's limit.
    Redirect,
    Relay(Server),
}

impl Carrier {
    pub fn label(self) -> &'static str {
        match self {
            Carrier::Routing => "ceiling: host routing",
            Carrier::Redirect => "ceiling: bare XDP redirect",
            Carrier::Relay(s) => s.label(),
        }
    }

    fn tag(self) -> String {
        match self {
            Carrier::Routing => "routing".into(),
            Carrier::Redirect => "redirect".into(),
            Carrier::Relay(s) => format!("{s:?}").to_lowercase(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Way {
    ClientToPeer,
    PeerToClient,
}

impl Way {
    pub fn label(self) -> &'static str {
        match self {
            Way::ClientToPeer => "client → peer",
            Way::PeerToClient => "peer → client",
        }
    }
}

/// One blast.
#[derive(Debug, Clone, Serialize)]
pub struct Blast {
    pub carrier: Carrier,
    pub allocations: usize,
    pub way: Way,
    pub payload: usize,
    /// trafgen paced at this many frames/s; None: full speed.
    pub paced_pps: Option<u64>,
    pub error: Option<String>,
    pub figures: Option<Figures>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub secs: f64,
    /// Allocations the blast went through (ready after setup; all for the ceilings).
    pub ready: usize,
    pub offered_pps: f64,
    pub delivered_pps: f64,
    /// Delivered over offered.
    pub ratio: f64,
    /// Application payload delivered, Mbit/s.
    pub delivered_mbps: f64,
    /// Whole box busy during the blast (0 to 1; trafgen holds one of its cores).
    pub box_busy: f64,
    /// Share of the blast the relay host's ingress NAPI thread ran (0 to 1): the core the
    /// carrier works on. Near 1, the carrier is at its capacity (see [`SATURATED`]).
    pub napi_busy: f64,
}

/// [`Figures::napi_busy`] from which a blast counts as the carrier's capacity. On a veth
/// the sender's frames stay charged to its socket (trafgen's transmit ring) until the
/// receiving side's NAPI frees them, so trafgen is held to the receiver's pace and
/// delivered = offered at almost any load: loss cannot tell a saturated carrier from a
/// slow sender, the receive core's busy time can. Below 1: a SCHED_FIFO thread gets at
/// most 95% of its core (the kernel's default real-time throttling), and /proc counts in
/// 10 ms ticks.
pub const SATURATED: f64 = 0.9;

fn blast_secs(scale: Scale) -> f64 {
    match scale {
        Scale::Quick => 2.0,
        Scale::Full => 5.0,
    }
}

/// Each server, for 1 and 1000 allocations, each way; the ceilings first at 1000.
pub fn run_capacity(
    topo: &Topo,
    relay_bin: &Path,
    work: &Path,
    servers: &[Server],
    scale: Scale,
) -> Vec<Blast> {
    let mut out = Vec::new();
    for allocations in [1, 1000] {
        for way in [Way::ClientToPeer, Way::PeerToClient] {
            // The ceilings where the goals compare against them (1000 allocations): they
            // do not look into frames, so one allocation would not change them.
            for carrier in carriers(servers)
                .into_iter()
                .filter(|c| allocations == 1000 || matches!(c, Carrier::Relay(_)))
            {
                let shape = Shape {
                    carrier,
                    allocations,
                    way,
                    payload: SMALL,
                    paced_pps: None,
                };
                let blast = one(topo, relay_bin, work, shape, scale);
                // Loss below saturation: the XDP path again at 90% of what it delivered.
                let below = blast
                    .figures
                    .as_ref()
                    .filter(|_| carrier == Carrier::Relay(Server::Xdp) && allocations == 1000)
                    .map(|f| (f.delivered_pps * BELOW_SATURATION) as u64);
                out.push(blast);
                if let Some(pps) = below {
                    let paced = Shape {
                        paced_pps: Some(pps),
                        ..shape
                    };
                    out.push(one(topo, relay_bin, work, paced, scale));
                }
            }
        }
    }
    out
}

/// One allocation, 1200-byte payloads, client to peer.
pub fn run_heavy(
    topo: &Topo,
    relay_bin: &Path,
    work: &Path,
    servers: &[Server],
    scale: Scale,
) -> Vec<Blast> {
    carriers(servers)
        .into_iter()
        .map(|carrier| {
            let shape = Shape {
                carrier,
                allocations: 1,
                way: Way::ClientToPeer,
                payload: LARGE,
                paced_pps: None,
            };
            one(topo, relay_bin, work, shape, scale)
        })
        .collect()
}

fn carriers(servers: &[Server]) -> Vec<Carrier> {
    let mut c = vec![Carrier::Routing, Carrier::Redirect];
    c.extend(
        servers
            .iter()
            .filter(|s| **s != Server::Direct)
            .map(|&s| Carrier::Relay(s)),
    );
    c
}

/// What one blast sends, and through what.
#[derive(Debug, Clone, Copy)]
struct Shape {
    carrier: Carrier,
    allocations: usize,
    way: Way,
    payload: usize,
    paced_pps: Option<u64>,
}

fn one(topo: &Topo, relay_bin: &Path, work: &Path, shape: Shape, scale: Scale) -> Blast {
    let Shape {
        carrier,
        allocations,
        way,
        payload,
        paced_pps,
    } = shape;
    eprintln!(
        "bench: blast {} ({allocations} alloc, {payload} B, {}{})",
        carrier.label(),
        way.label(),
        paced_pps.map_or(String::new(), |p| format!(", paced at {p}/s"))
    );
    let secs = Duration::from_secs_f64(blast_secs(scale));
    let r = measure(topo, relay_bin, work, shape, secs);
    match &r {
        Ok(f) => eprintln!(
            "bench:   offered {:.0}/s, delivered {:.0}/s ({:.1}%, {:.0} Mbit/s), box {:.0}% busy, \
             ingress NAPI {:.0}%",
            f.offered_pps,
            f.delivered_pps,
            f.ratio * 100.0,
            f.delivered_mbps,
            f.box_busy * 100.0,
            f.napi_busy * 100.0
        ),
        Err(e) => eprintln!("bench:   failed: {e:#}"),
    }
    Blast {
        carrier,
        allocations,
        way,
        payload,
        paced_pps,
        error: r.as_ref().err().map(|e| format!("{e:#}")),
        figures: r.ok(),
    }
}

fn measure(
    topo: &Topo,
    relay_bin: &Path,
    work: &Path,
    shape: Shape,
    secs: Duration,
) -> Result<Figures> {
    let Shape {
        carrier,
        allocations,
        way,
        payload,
        paced_pps,
    } = shape;
    let bin = relay_bin.to_str().context("relay path not UTF-8")?;
    let tag = format!(
        "blast-{}-{allocations}-{}-{payload}{}",
        carrier.tag(),
        match way {
            Way::ClientToPeer => "c2p",
            Way::PeerToClient => "p2c",
        },
        if paced_pps.is_some() { "-paced" } else { "" }
    );
    // Who sends, who sinks, and the relay host's NICs in the order frames cross them.
    let (send, sink, ingress, egress) = match way {
        Way::ClientToPeer => (Side::Client, Side::Media, &topo.ext_if, &topo.int_if),
        Way::PeerToClient => (Side::Media, Side::Client, &topo.int_if, &topo.ext_if),
    };
    let (send_ns, send_if) = topo.side(send);
    let (sink_ns, sink_if) = topo.side(sink);
    let mac = |ns: &str, ifname: &str| -> Result<[u8; 6]> {
        let s = runner::sysfs_net(ns, ifname, "address")?;
        parse_mac(&s).with_context(|| format!("MAC of {ifname}: {s:?}"))
    };
    let sink_mac = mac(sink_ns.name(), sink_if)?;
    let wire = Wire {
        src_mac: mac(send_ns.name(), send_if)?,
        dst_mac: mac(topo.relay.name(), ingress)?,
        payload,
    };

    let _pass = topo.without_pass(sink);
    let mut counter = XdpTool::start(
        sink_ns,
        bin,
        &["sink", "--interface", sink_if],
        &work.join(format!("{tag}-sink.log")),
    )?;
    let _redirect = match carrier {
        Carrier::Redirect => Some(XdpTool::start(
            &topo.relay,
            bin,
            &[
                "redirect",
                "--interface",
                ingress,
                "--to",
                egress,
                "--dst-mac",
                &blast::format_mac(&sink_mac),
            ],
            &work.join(format!("{tag}-redirect.log")),
        )?),
        _ => None,
    };
    let mut hosts = match carrier {
        Carrier::Relay(server) => Some(Hosts::start(
            topo,
            relay_bin,
            work,
            server,
            &tag,
            Limits::LoadGenerator,
            None,
        )?),
        _ => None,
    };
    let kernel_only = matches!(
        carrier,
        Carrier::Routing | Carrier::Redirect | Carrier::Relay(Server::Xdp)
    );
    prepare_ingress(topo, ingress, kernel_only)?;
    // Neighbour entries before the blast: the first frames must not wait for ARP.
    for ip in [CLIENT, MEDIA] {
        let _ = topo
            .relay
            .exec("ping", &["-c", "1", "-W", "1", &ip.to_string()]);
    }

    let list_path = work.join(format!("{tag}.allocations"));
    let _ = std::fs::remove_file(&list_path);
    let config_path = work.join(format!("{tag}.trafgen"));
    let result = std::thread::scope(|s| -> Result<Figures> {
        let load = match (carrier, &hosts) {
            (Carrier::Relay(server), Some(h)) => {
                let sc = Scenario {
                    name: tag.clone(),
                    allocations,
                    // Held, not exercised: one probe a second keeps the generator quiet.
                    rate: 1,
                    // Setup is not in this: the window opens when setup ends.
                    duration_secs: secs.as_secs_f64() + 1.5,
                    sweep: false,
                };
                let extra = LoadExtra {
                    port: None,
                    args: vec![
                        "--allocations-file".into(),
                        list_path.display().to_string(),
                        "--drain-ms".into(),
                        "100".into(),
                    ],
                };
                let (pids, tag) = (h.pids(), &tag);
                Some(s.spawn(move || {
                    procs::run_load_with(topo, bin, work, tag, server, &sc, pids, &extra)
                }))
            }
            _ => None,
        };
        let clients: Vec<(SocketAddrV4, SocketAddrV4)> = match &load {
            Some(handle) => {
                let deadline = Instant::now() + SETUP_LIMIT;
                while !list_path.exists() {
                    if handle.is_finished() || Instant::now() >= deadline {
                        bail!("relay load listed no allocations (see load-{tag}.log)");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let listed = blast::parse_listing(&std::fs::read_to_string(&list_path)?)?;
                if listed.is_empty() {
                    bail!("no allocation was set up (see load-{tag}.log)");
                }
                listed.iter().map(|l| (l.client, l.relayed)).collect()
            }
            None => blast::synthetic_clients(CLIENT, allocations)
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    let port = procs::PORTS.0 + i as u16;
                    (c, SocketAddrV4::new(RELAY_EXT, port))
                })
                .collect(),
        };
        let frames = blast::frames(carrier, way, &clients);
        std::fs::write(&config_path, blast::trafgen_config(&wire, &frames))?;
        let run = runner::FloodRun {
            ns: send_ns.name().to_owned(),
            ifname: send_if.to_owned(),
            config_path: config_path.clone(),
            cpu: TRAFGEN_CPU,
            duration: secs,
            rate: paced_pps,
        };
        let napi = runner::napi_threads(ingress);
        let napi_cpu = || -> Duration { napi.iter().filter_map(|&p| runner::cpu_time(p)).sum() };
        let before = counter.packets()?;
        let napi_before = napi_cpu();
        let ticks = cpu_ticks();
        let sent = runner::Trafgen::start(&run)
            .context("starting trafgen (netsniff-ng; `cargo xtask setup` installs it)")?
            .wait()
            .map_err(|e| anyhow!(e))?;
        let box_busy = busy_between(ticks, cpu_ticks());
        let napi_secs = napi_cpu().saturating_sub(napi_before).as_secs_f64();
        // Frames still in the rings when trafgen stops are delivered, or dropped, within
        // a few milliseconds.
        std::thread::sleep(Duration::from_millis(50));
        let delivered = counter.packets()? - before;
        if let Some(handle) = load {
            handle
                .join()
                .map_err(|_| anyhow!("the load thread panicked"))??;
        }
        let secs = sent.elapsed.as_secs_f64();
        let offered_pps = sent.per_sec();
        let delivered_pps = delivered as f64 / secs;
        Ok(Figures {
            secs,
            ready: clients.len(),
            offered_pps,
            delivered_pps,
            ratio: if offered_pps > 0.0 {
                delivered_pps / offered_pps
            } else {
                0.0
            },
            delivered_mbps: delivered_pps * payload as f64 * 8.0 / 1e6,
            box_busy,
            napi_busy: (napi_secs / secs.max(1e-9)).min(1.0),
        })
    });
    if let Some(h) = &mut hosts {
        h.stop();
    }
    result
}

/// GRO on (veth NAPI also without an XDP program), threaded NAPI, its thread on
/// [`NAPI_CPU`]. Where the carrier does all its work in that thread (the ceilings, the XDP
/// path) it runs under SCHED_FIFO, as a real NIC's receive softirq runs ahead of any
/// process: the carrier gets the whole core whatever else the box is doing, so its NAPI
/// core saturates and the figure is its capacity. A userspace relay needs the same core
/// for its own threads, so there the thread stays under the ordinary scheduler.
fn prepare_ingress(topo: &Topo, ifname: &str, realtime: bool) -> Result<()> {
    topo.relay.exec("ethtool", &["-K", ifname, "gro", "on"])?;
    runner::set_threaded_napi(topo.relay.name(), ifname)?;
    let threads = runner::napi_threads(ifname);
    if threads.is_empty() {
        bail!("no NAPI thread for {ifname}");
    }
    for pid in threads {
        runner::pin(pid, NAPI_CPU).with_context(|| format!("pinning NAPI thread {pid}"))?;
        if realtime {
            runner::realtime(pid).with_context(|| format!("NAPI thread {pid} to SCHED_FIFO"))?;
            continue;
        }
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a valid sched_param for SCHED_OTHER.
        if unsafe { libc::sched_setscheduler(pid as libc::pid_t, libc::SCHED_OTHER, &param) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("NAPI thread {pid} back to SCHED_OTHER"));
        }
    }
    Ok(())
}
