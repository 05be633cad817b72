//! The results table (markdown): the machine, the goals as ratios against coturn from
//! this one run, and every scenario's figures.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Run, Scenario, Server};

/// Where the figures came from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub coturn: Option<String>,
    pub date: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|v| v.split_once(':'))
            .map_or("unknown".into(), |(_, v)| v.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let out = |p: &str, a: &[&str]| crate::util::output(p, a).map(|s| s.trim().to_owned());
        let coturn = super::procs::coturn();
        Self {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: memory_kib / 1024.0 / 1024.0,
            kernel: out("uname", &["-r"]).unwrap_or_default(),
            coturn: out(coturn.0, &["--version"]).map(|v| {
                let extra = coturn.1;
                if extra.is_empty() {
                    v
                } else {
                    format!("{v} ({})", extra.join(" "))
                }
            }),
            date: out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
        }
    }
}

pub fn find(runs: &[Run], scenario: usize, server: Server) -> Option<&Run> {
    runs.iter()
        .find(|r| r.scenario == scenario && r.server == server && r.load.is_some())
}

/// CPU of the run's own processes (generator, echo, server, ksoftirqd) per packet sent
/// or received, microseconds. Unlike whole-box time it leaves out other work on the box.
pub fn run_us(r: &Run) -> Option<f64> {
    r.load.as_ref()?.cpu.traffic.group_us_per_packet
}

/// What the server adds per packet over the no-relay baseline of the same scenario.
pub fn added_us(runs: &[Run], scenario: usize, server: Server) -> Option<f64> {
    let base = run_us(find(runs, scenario, Server::Direct)?)?;
    Some(run_us(find(runs, scenario, server)?)? - base)
}

/// The first line of a run's error, for a table cell.
pub fn why(error: &Option<String>) -> &str {
    error.as_deref().unwrap_or("").lines().next().unwrap_or("")
}

fn scenario_where(sc: &[Scenario], f: impl Fn(&Scenario) -> bool) -> Option<usize> {
    sc.iter().position(f)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

pub fn markdown(m: &Machine, sc: &[Scenario], runs: &[Run]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmark results\n");
    let _ = writeln!(
        s,
        "{} ({} vCPU, {:.0} GiB), Linux {}, coturn {}, {}. Load generator, echo peer and \
         server share the box; every figure below comes from this one run.\n",
        m.cpu,
        m.cpus,
        m.memory_gib,
        m.kernel,
        m.coturn.as_deref().unwrap_or("absent"),
        m.date
    );
    let noisy: Vec<String> = runs
        .iter()
        .filter(|r| r.background_busy >= 0.05)
        .map(|r| {
            format!(
                "{} / {} ({:.0}%)",
                sc[r.scenario].name,
                r.server.label(),
                r.background_busy * 100.0
            )
        })
        .collect();
    if !noisy.is_empty() {
        let _ = writeln!(
            s,
            "**Other work kept the box busy before some runs; their CPU figures include it:** {}\n",
            noisy.join(", ")
        );
    }
    goals(&mut s, sc, runs);
    let _ = writeln!(s, "\n## All runs\n");
    let _ = writeln!(
        s,
        "Rates are echo packets per second (each crosses the relay twice). CPU per packet is \
         CPU time over packets sent plus received: *box* is the whole box (/proc/stat), *run* \
         the run's own processes (generator, echo peer, server, ksoftirqd; other work on the \
         box left out); *added* is *run* minus the no-relay baseline of the same scenario; \
         *process* is the server process alone. Memory is the server's RSS growth during \
         setup per allocation.\n"
    );
    for (k, scn) in sc.iter().enumerate() {
        let _ = writeln!(
            s,
            "### {} allocations, {} echoes/s offered, {} s\n",
            scn.allocations, scn.rate, scn.duration_secs
        );
        let _ = writeln!(
            s,
            "| server | ready | setup/s | sent/s | back/s | loss % | RTT p50 / p90 / p99 / max (µs) | box busy | box µs/pkt | run µs/pkt | added µs/pkt | process µs/pkt | RSS B/alloc |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in runs.iter().filter(|r| r.scenario == k) {
            let Some(l) = &r.load else {
                let _ = writeln!(
                    s,
                    "| {} | failed: {} ||||||||||||",
                    r.server.label(),
                    r.error
                        .as_deref()
                        .unwrap_or("")
                        .lines()
                        .next()
                        .unwrap_or("")
                );
                continue;
            };
            let t = l.traffic.as_ref();
            let failures = if l.setup.failed > 0 {
                format!(
                    " ({} failed: {})",
                    l.setup.failed,
                    l.setup
                        .failures
                        .iter()
                        .map(|(k, v)| format!("{k}×{v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            } else {
                String::new()
            };
            let direct = r.server == Server::Direct;
            let _ = writeln!(
                s,
                "| {} | {}{} | {} | {} | {} | {} | {} | {:.0}% | {} | {} | {} | {} | {} |",
                r.server.label(),
                l.setup.ready,
                failures,
                if direct {
                    "–".into()
                } else {
                    format!("{:.0}", l.setup.rate_per_sec)
                },
                opt(t.map(|t| t.sent_per_sec), 0),
                opt(t.map(|t| t.received_per_sec), 0),
                opt(t.map(|t| t.loss_ratio * 100.0), 3),
                t.map_or("–".into(), |t| format!(
                    "{:.0} / {:.0} / {:.0} / {:.0}",
                    t.rtt_us.p50, t.rtt_us.p90, t.rtt_us.p99, t.rtt_us.max
                )),
                l.cpu.traffic.box_busy_ratio * 100.0,
                opt(l.cpu.traffic.box_us_per_packet, 2),
                opt(l.cpu.traffic.group_us_per_packet, 2),
                if direct {
                    "–".into()
                } else {
                    opt(added_us(runs, k, r.server), 2)
                },
                opt(l.cpu.traffic.watched_us_per_packet, 2),
                opt(
                    l.watched.as_ref().and_then(|w| w.rss_per_allocation_bytes),
                    0
                ),
            );
        }
        let _ = writeln!(s);
    }
    s
}

/// The issues' goals, each as measured in this run.
fn goals(s: &mut String, sc: &[Scenario], runs: &[Run]) {
    let _ = writeln!(s, "## Goals\n");
    let _ = writeln!(s, "| goal | measured | met |");
    let _ = writeln!(s, "|---|---|---|");
    let mut row = |goal: &str, measured: String, met: Option<bool>| {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(s, "| {goal} | {measured} | {met} |");
    };
    let at150 = scenario_where(sc, |x| x.allocations == 1000 && x.rate == 150_000);
    let at50 = scenario_where(sc, |x| x.allocations == 1000 && x.rate == 50_000);
    // CPU per packet compares servers that all keep up: past saturation a server that
    // drops packets looks cheap per packet. The highest sweep point where every server
    // (and the baseline) lost at most 0.1%.
    let cpu_k = (0..sc.len())
        .filter(|&k| sc[k].sweep)
        .filter(|&k| {
            let r: Vec<&Run> = runs.iter().filter(|r| r.scenario == k).collect();
            !r.is_empty()
                && r.iter()
                    .all(|r| r.traffic().is_some_and(|t| t.loss_ratio <= 0.001))
        })
        .max_by_key(|&k| sc[k].rate);
    let at = cpu_k.map_or(String::new(), |k| {
        format!("1000 alloc, {}k/s", sc[k].rate / 1000)
    });
    let process_us = |k: usize, server| {
        find(runs, k, server)?
            .load
            .as_ref()?
            .cpu
            .traffic
            .watched_us_per_packet
    };
    for (server, limit, frac) in [
        (Server::Xdp, 0.1, "1/10"),
        (Server::Userspace, 2.0 / 3.0, "2/3"),
    ] {
        let text = format!(
            "{}: relay-added CPU per packet ≤ {frac} of coturn's ({at})",
            server.label()
        );
        let got = cpu_k.and_then(|k| {
            Some((
                added_us(runs, k, server)?,
                added_us(runs, k, Server::Coturn)?,
            ))
        });
        match got {
            Some((ours, coturn)) => row(
                &text,
                format!(
                    "{ours:.2} vs {coturn:.2} µs/packet: ratio {:.3}",
                    ours / coturn
                ),
                Some(ours <= limit * coturn),
            ),
            None => row(&text, "not measured".into(), None),
        }
        let text = format!(
            "{}: server process CPU per packet ≤ {frac} of coturn's ({at})",
            server.label()
        );
        let got =
            cpu_k.and_then(|k| Some((process_us(k, server)?, process_us(k, Server::Coturn)?)));
        match got {
            Some((ours, coturn)) => row(
                &text,
                format!(
                    "{ours:.2} vs {coturn:.2} µs/packet: ratio {:.3}",
                    ours / coturn
                ),
                Some(ours <= limit * coturn),
            ),
            None => row(&text, "not measured".into(), None),
        }
    }
    match at150
        .and_then(|k| find(runs, k, Server::Xdp))
        .and_then(|r| r.traffic())
    {
        Some(t) => row(
            "XDP: loss ≤ 0.1% at 150k echoes/s, 1000 allocations",
            format!(
                "{:.3}% ({:.0} echoes/s back)",
                t.loss_ratio * 100.0,
                t.received_per_sec
            ),
            Some(t.loss_ratio <= 0.001),
        ),
        None => row(
            "XDP: loss ≤ 0.1% at 150k echoes/s",
            "not measured".into(),
            None,
        ),
    }
    for server in [Server::Xdp, Server::Userspace] {
        let text = format!(
            "{}: RTT p99 < 1 ms at 50k echoes/s, 1000 allocations",
            server.label()
        );
        match at50
            .and_then(|k| find(runs, k, server))
            .and_then(|r| r.traffic())
        {
            Some(t) => row(
                &text,
                format!("{:.0} µs", t.rtt_us.p99),
                Some(t.rtt_us.p99 < 1000.0),
            ),
            None => row(&text, "not measured".into(), None),
        }
    }
    // Setup rate and memory from the run with the most allocations below 10,000 (the
    // 10,000 run measures holding them).
    let setup_k = (0..sc.len())
        .filter(|&k| sc[k].allocations > 1 && sc[k].allocations < 10_000)
        .max_by_key(|&k| sc[k].allocations);
    let rate = |server| {
        setup_k
            .and_then(|k| find(runs, k, server))
            .and_then(|r| r.load.as_ref())
            .map(|l| l.setup.rate_per_sec)
    };
    for server in [Server::Xdp, Server::Userspace] {
        let text = format!(
            "{}: allocation setup rate ≥ 2× coturn's ({} allocations)",
            server.label(),
            setup_k.map_or(0, |k| sc[k].allocations)
        );
        match (rate(server), rate(Server::Coturn)) {
            (Some(o), Some(c)) if c > 0.0 => row(
                &text,
                format!("{o:.0}/s vs {c:.0}/s: {:.2}×", o / c),
                Some(o >= 2.0 * c),
            ),
            _ => row(&text, "not measured".into(), None),
        }
    }
    let mem = |server| {
        setup_k
            .and_then(|k| find(runs, k, server))
            .and_then(|r| r.load.as_ref()?.watched.as_ref()?.rss_per_allocation_bytes)
    };
    row(
        "memory per allocation (server RSS growth during setup)",
        [Server::Coturn, Server::Userspace, Server::Xdp]
            .iter()
            .map(|&sv| {
                format!(
                    "{} {}",
                    sv.label(),
                    opt(mem(sv).map(|b| b / 1024.0), 2) + " KiB"
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        None,
    );
    let held = scenario_where(sc, |x| x.allocations >= 10_000);
    for server in [Server::Coturn, Server::Userspace, Server::Xdp] {
        let text = format!(
            "{}: 10,000 concurrent allocations held with traffic",
            server.label()
        );
        match held
            .and_then(|k| find(runs, k, server))
            .and_then(|r| r.load.as_ref())
        {
            Some(l) => {
                let loss = l.traffic.as_ref().map_or(1.0, |t| t.loss_ratio);
                row(
                    &text,
                    format!("{} ready, {:.3}% loss", l.setup.ready, loss * 100.0),
                    Some(l.setup.ready >= 10_000 && l.traffic.is_some()),
                )
            }
            None => row(&text, "not measured".into(), None),
        }
    }
}
