//! Issue 16's "Done when" items, each as this run measured it, printed last (after the
//! criterion benchmarks, so the run's duration is known).

use std::{fmt::Write as _, time::Duration};

use super::{
    Run, Scale, Scenario, Server,
    capacity::{Blast, Carrier, Figures, SATURATED, Way},
    streams::{self, Stream, StreamRun},
    table,
};

/// Everything the goals are read from.
pub struct Measured<'a> {
    pub scenarios: &'a [Scenario],
    pub runs: &'a [Run],
    pub capacity: &'a [Blast],
    pub heavy: &'a [Blast],
    pub streams: &'a [StreamRun],
    pub scale: Scale,
    pub elapsed: Duration,
}

const QUICK_LIMIT: Duration = Duration::from_secs(600);

/// The least ingress NAPI busy share from which a carrier's capacity is estimated as
/// delivered packets/s over that share (when the blast could not saturate it).
const PER_CORE_MIN_BUSY: f64 = 0.5;

pub fn markdown(m: &Measured) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Goals of issue 16 (speed at the limit)\n");
    let _ = writeln!(
        s,
        "A TCP/TLS rate counts as loss-free when at most 0.1% of the echoes were lost and \
         their RTT p99 stayed within {} ms (past its capacity a server can return every \
         echo, seconds late, from its queues).\n",
        super::streams::LATE_US / 1000.0
    );
    let _ = writeln!(s, "| goal | measured | met |");
    let _ = writeln!(s, "|---|---|---|");
    let mut row = |goal: &str, measured: String, met: Option<bool>| {
        let met = match met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "–",
        };
        let _ = writeln!(s, "| {goal} | {measured} | {met} |");
    };
    for way in [Way::ClientToPeer, Way::PeerToClient] {
        let pps = |c| delivered(m.capacity, c, 1000, way);
        let binding = way == Way::ClientToPeer;
        let (mut measured, mut met) = ratio_goal(
            pps(Carrier::Relay(Server::Xdp)),
            pps(Carrier::Redirect),
            0.9,
            "packets/s",
        );
        // A figure is the carrier's capacity only when its receive core was saturated
        // (delivered = offered holds at any load on a veth, see `capacity::SATURATED`);
        // otherwise it is trafgen's pace, a floor, and a floor makes no ratio of
        // capacities.
        let napi = |c| find(m.capacity, c, 1000, way).map(|f| f.napi_busy);
        if let (Some(x), Some(r)) = (napi(Carrier::Relay(Server::Xdp)), napi(Carrier::Redirect)) {
            measured += &format!("; ingress NAPI busy {:.0}% / {:.0}%", x * 100.0, r * 100.0);
            if x < SATURATED || r < SATURATED {
                measured += ": not both saturated, floors rather than capacities";
                met = None;
                // The NAPI thread does nothing but this packet work, so what one of its
                // cores carries is delivered over busy share: each carrier's capacity
                // at saturation, estimated. Only from a thread busy enough that its
                // fixed costs (wake-ups, polling an empty ring) are small beside it.
                let core = |c, busy| pps(c).and_then(|p| per_core(p, busy));
                if let (Some(xc), Some(rc)) = (
                    core(Carrier::Relay(Server::Xdp), x),
                    core(Carrier::Redirect, r),
                ) {
                    measured += &format!(
                        "; per busy NAPI core {xc:.0} vs {rc:.0} packets/s ({:.2}×, the verdict)",
                        xc / rc
                    );
                    met = Some(xc >= rc * 0.9);
                }
            }
        }
        let binding_met = met.filter(|_| binding);
        row(
            &format!(
                "capacity, 1000 alloc, {}: XDP path ≥ 90% of a bare XDP redirect{}",
                way.label(),
                if binding { "" } else { " (reported)" }
            ),
            measured,
            binding_met,
        );
        if binding {
            let paced = m.capacity.iter().find(|b| {
                b.carrier == Carrier::Relay(Server::Xdp) && b.way == way && b.paced_pps.is_some()
            });
            let figures = paced.and_then(|b| Some((b.paced_pps?, b.figures.as_ref()?)));
            row(
                "capacity, 1000 alloc, client → peer: XDP path without loss below its saturation \
                 (paced at 90% of what it delivered)",
                figures.map_or("not measured".into(), |(pps, f)| {
                    format!(
                        "{:.3}% lost at {pps}/s ({:.0}/s offered)",
                        (1.0 - f.ratio).max(0.0) * 100.0,
                        f.offered_pps
                    )
                }),
                figures.map(|(_, f)| lost_nothing(f)),
            );
        }
        let (measured, met) = ratio_goal(
            pps(Carrier::Relay(Server::Userspace)),
            pps(Carrier::Relay(Server::Coturn)),
            2.0,
            "packets/s",
        );
        row(
            &format!(
                "capacity, 1000 alloc, {}: userspace path ≥ 2× coturn{}",
                way.label(),
                if binding { "" } else { " (reported)" }
            ),
            measured,
            met.filter(|_| binding),
        );
    }
    for stream in [Stream::Tcp, Stream::Tls] {
        let name = stream.name().to_uppercase();
        if !m.streams.iter().any(|r| r.stream == stream) {
            row(
                &format!("{name}: CPU per packet, loss-free and setup rates"),
                "not run".into(),
                None,
            );
            continue;
        }
        let cpu = common_cpu(m.streams, stream);
        row(
            &format!("{name}: relay CPU per packet ≤ 1/2 of coturn's"),
            cpu.map_or(
                "not measured (no rate both carried: ≤ 0.1% lost, RTT p99 ≤ 200 ms)".into(),
                |(rate, ours, theirs)| {
                    format!(
                        "{ours:.2} vs {theirs:.2} µs/packet at {}k/s ({:.2}×)",
                        rate / 1000,
                        ours / theirs
                    )
                },
            ),
            cpu.map(|(_, ours, theirs)| ours <= theirs / 2.0),
        );
        let free = |server| streams::loss_free_rate(m.streams, stream, server);
        let top = m
            .streams
            .iter()
            .filter(|r| r.stream == stream)
            .map(|r| r.rate)
            .max();
        let (ours, theirs) = (free(Server::Userspace), free(Server::Coturn));
        let (measured, met) = match (ours, theirs) {
            (Some(o), Some(t)) if Some(t) == top => (
                format!(
                    "both loss-free at the highest rate tried ({}k/s): no ratio",
                    o / 1000
                ),
                None,
            ),
            (Some(o), Some(t)) => (
                format!(
                    "{}k/s vs {}k/s ({:.1}×)",
                    o / 1000,
                    t / 1000,
                    o as f64 / t as f64
                ),
                Some(o >= 2 * t),
            ),
            (Some(o), None) => (
                format!("{}k/s vs none of the rates tried", o / 1000),
                Some(true),
            ),
            (None, _) => (
                "relay loss-free at none of the rates tried".into(),
                Some(false),
            ),
        };
        row(
            &format!("{name}: loss-free rate ≥ 2× coturn's"),
            measured,
            met,
        );
        if stream == Stream::Tls {
            let setup = |server| {
                m.streams
                    .iter()
                    .filter(|r| r.stream == stream && r.server == server)
                    .filter_map(StreamRun::setup_rate)
                    .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))))
            };
            let (mut measured, met) = ratio_goal(
                setup(Server::Userspace),
                setup(Server::Coturn),
                2.0,
                "setups/s",
            );
            // What a setup costs each server: the rate is shared with the generator.
            let cost = |server| {
                let v: Vec<f64> = m
                    .streams
                    .iter()
                    .filter(|r| r.stream == stream && r.server == server)
                    .filter_map(StreamRun::setup_us)
                    .collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            if let (Some(o), Some(t)) = (cost(Server::Userspace), cost(Server::Coturn)) {
                let _ = write!(
                    measured,
                    "; server CPU per setup {o:.0} vs {t:.0} µs ({:.2}×)",
                    o / t
                );
            }
            row("TLS: setup rate ≥ 2× coturn's", measured, met);
        }
    }
    let mbps = |c| {
        m.heavy
            .iter()
            .find(|b| b.carrier == c)?
            .figures
            .as_ref()
            .map(|f| f.delivered_mbps)
    };
    let (mut measured, mut met) = ratio_goal(
        mbps(Carrier::Relay(Server::Xdp)),
        mbps(Carrier::Relay(Server::Coturn)),
        3.0,
        "Mbit/s",
    );
    // Lost nothing: its figure is a floor of its capacity, so short of the goal says
    // nothing yet.
    if met == Some(false)
        && find(m.heavy, Carrier::Relay(Server::Xdp), 1, Way::ClientToPeer)
            .is_some_and(lost_nothing)
    {
        measured += "; the XDP path lost nothing (delivered = offered): a floor";
        met = None;
    }
    row(
        "one heavy allocation: XDP path ≥ 3× coturn's Mbit/s",
        measured,
        met,
    );
    let at50 = m
        .scenarios
        .iter()
        .position(|x| x.allocations == 1000 && x.rate == 50_000);
    let p99 = at50
        .and_then(|k| table::find(m.runs, k, Server::Userspace))
        .and_then(|r| r.traffic())
        .map(|t| t.rtt_us.p99);
    row(
        "userspace, 1000 alloc @ 50k/s: RTT p99 < 1 ms",
        p99.map_or("not run".into(), |v| format!("{v:.0} µs")),
        p99.map(|v| v < 1000.0),
    );
    let cpu = at50.and_then(|k| {
        Some((
            table::added_us(m.runs, k, Server::Userspace)?,
            table::added_us(m.runs, k, Server::Coturn)?,
        ))
    });
    row(
        "userspace, 1000 alloc @ 50k/s: relay-added CPU per packet ≤ 2/3 of coturn's",
        cpu.map_or("not run".into(), |(o, t)| {
            format!("{o:.2} vs {t:.2} µs/packet ({:.2}×)", o / t)
        }),
        cpu.map(|(o, t)| o <= t * 2.0 / 3.0),
    );
    let secs = m.elapsed.as_secs_f64();
    row(
        "`cargo xtask bench --scale quick` under 10 minutes",
        format!("this run ({:?} scale): {:.0} s", m.scale, secs),
        (m.scale == Scale::Quick).then_some(m.elapsed < QUICK_LIMIT),
    );
    s
}

/// The figures of one blast.
fn find(blasts: &[Blast], carrier: Carrier, allocations: usize, way: Way) -> Option<&Figures> {
    blasts
        .iter()
        .find(|b| {
            b.carrier == carrier
                && b.allocations == allocations
                && b.way == way
                && b.paced_pps.is_none()
        })?
        .figures
        .as_ref()
}

/// Delivered everything offered (within the load generator's own probes).
fn lost_nothing(f: &Figures) -> bool {
    f.ratio >= 0.999
}

/// Delivered packets/s of one blast.
fn delivered(blasts: &[Blast], carrier: Carrier, allocations: usize, way: Way) -> Option<f64> {
    find(blasts, carrier, allocations, way).map(|f| f.delivered_pps)
}

/// `ours` against `factor` × `theirs`: the figures, and whether the goal is met.
/// Packets/s one busy core of the ingress NAPI thread carries: `delivered` over its busy
/// share, when that share is at least [`PER_CORE_MIN_BUSY`].
fn per_core(delivered: f64, busy: f64) -> Option<f64> {
    (busy >= PER_CORE_MIN_BUSY).then(|| delivered / busy)
}

fn ratio_goal(
    ours: Option<f64>,
    theirs: Option<f64>,
    factor: f64,
    unit: &str,
) -> (String, Option<bool>) {
    match (ours, theirs) {
        (Some(o), Some(t)) if t > 0.0 => (
            format!("{o:.0} vs {t:.0} {unit} ({:.2}×)", o / t),
            Some(o >= t * factor),
        ),
        _ => ("not measured".into(), None),
    }
}

/// The highest rate both servers carried (lost at most 0.1%, RTT p99 within
/// [`streams::LATE_US`]), with each one's process CPU per packet there (past saturation a
/// server that drops, or queues, looks cheap per packet).
fn common_cpu(runs: &[StreamRun], stream: Stream) -> Option<(u64, f64, f64)> {
    let at = |server, rate| {
        runs.iter()
            .find(|r| r.stream == stream && r.server == server && r.rate == rate)
            .filter(|r| r.carried())
            .and_then(StreamRun::process_us)
    };
    runs.iter()
        .filter(|r| r.stream == stream)
        .map(|r| r.rate)
        .filter_map(|rate| {
            Some((
                rate,
                at(Server::Userspace, rate)?,
                at(Server::Coturn, rate)?,
            ))
        })
        .max_by_key(|&(rate, _, _)| rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Load, LoadTraffic};

    fn run(server: Server, rate: u64, loss: f64, us: f64) -> StreamRun {
        let mut load = Load {
            traffic: Some(LoadTraffic {
                loss_ratio: loss,
                ..LoadTraffic::default()
            }),
            ..Load::default()
        };
        load.cpu.traffic.watched_us_per_packet = Some(us);
        StreamRun {
            stream: Stream::Tcp,
            server,
            rate,
            error: None,
            load: Some(load),
        }
    }

    fn late(mut r: StreamRun, p99_us: f64) -> StreamRun {
        if let Some(t) = r.load.as_mut().and_then(|l| l.traffic.as_mut()) {
            t.rtt_us.p99 = p99_us;
        }
        r
    }

    #[test]
    fn ratios_say_met_only_with_both_figures() {
        assert_eq!(ratio_goal(Some(200.0), Some(100.0), 2.0, "x").1, Some(true));
        assert_eq!(
            ratio_goal(Some(199.0), Some(100.0), 2.0, "x").1,
            Some(false)
        );
        assert_eq!(ratio_goal(None, Some(100.0), 2.0, "x").1, None);
        assert_eq!(ratio_goal(Some(1.0), Some(0.0), 2.0, "x").1, None);
    }

    #[test]
    fn capacity_per_napi_core_is_delivered_over_busy_share() {
        // Stop 24's quiet run: the XDP path 92% busy, the redirect 73%, about the same
        // packets/s delivered: per core the redirect carries 1.27x more.
        let xdp = per_core(1_042_424.0, 0.92).unwrap();
        let redirect = per_core(1_051_473.0, 0.73).unwrap();
        assert!((xdp / redirect - 0.787).abs() < 0.001, "{}", xdp / redirect);
        assert_eq!(per_core(1_000_000.0, 0.3), None, "too idle to extrapolate");
    }

    #[test]
    fn stream_cpu_compares_the_highest_rate_both_carry() {
        let runs = [
            run(Server::Coturn, 10_000, 0.0, 8.0),
            run(Server::Userspace, 10_000, 0.0, 5.0),
            run(Server::Coturn, 40_000, 0.2, 3.0),
            run(Server::Userspace, 40_000, 0.0, 4.0),
            // Nothing lost, every echo back, but 0.9 s late: not carried.
            late(run(Server::Coturn, 80_000, 0.0, 2.0), 900_000.0),
            run(Server::Userspace, 80_000, 0.0, 1.5),
        ];
        assert_eq!(common_cpu(&runs, Stream::Tcp), Some((10_000, 5.0, 8.0)));
        assert_eq!(common_cpu(&runs, Stream::Tls), None);
        assert_eq!(
            streams::loss_free_rate(&runs, Stream::Tcp, Server::Userspace),
            Some(80_000)
        );
        assert_eq!(
            streams::loss_free_rate(&runs, Stream::Tcp, Server::Coturn),
            Some(10_000)
        );
    }
}
