//! The run's figures: one JSON object for machines (`--json`), a short text for people.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use super::echo::EchoStats;
use super::stats::{Percentiles, Second};

/// Exit codes of `relay load`.
pub mod exit {
    /// Every allocation was set up and, with traffic, echoes came back.
    pub const OK: i32 = 0;
    /// Some allocations failed, or no echo came back.
    pub const PARTIAL: i32 = 1;
    /// Not a single allocation could be set up.
    pub const NOTHING: i32 = 2;
    /// Bad command line (sysexits.h EX_USAGE).
    pub const USAGE: i32 = 64;
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The TURN server, or the echo peer with `--direct`.
    pub target: String,
    /// The echo peer as the relay reaches it.
    pub peer: String,
    /// channel, send or direct.
    pub mode: &'static str,
    pub transport: &'static str,
    /// none, long-term or rest.
    pub credentials: &'static str,
    pub threads: usize,
    pub payload_bytes: usize,
    pub setup: SetupReport,
    pub traffic: Option<TrafficReport>,
    /// Per second of the traffic window.
    pub seconds: Vec<Second>,
    pub cpu: CpuReport,
    pub watched: Option<WatchedReport>,
    /// The built-in echo peer's counts (`--echo`).
    pub echo: Option<EchoStats>,
    /// Refreshes of permissions, channels or allocations that failed during traffic.
    pub refresh_failures: u64,
    /// Allocations deleted at the end.
    pub deleted: u64,
    /// Stopped early by SIGINT/SIGTERM.
    pub interrupted: bool,
    pub exit_code: i32,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SetupReport {
    pub requested: usize,
    pub ready: u64,
    pub failed: u64,
    /// Failures by error code (or timeout, unreachable, bad_response, socket).
    pub failures: BTreeMap<String, u64>,
    /// From the first request to the last allocation ready.
    pub secs: f64,
    /// Allocations ready per second over `secs`.
    pub rate_per_sec: f64,
    /// From an allocation's first request to its channel/permission being in place.
    pub latency_us: Percentiles,
    /// 300 ALTERNATE-SERVER answers followed (`--follow-redirects`).
    pub redirects: u64,
    /// Allocations that the server a 300 named redirected again.
    pub redirected_again: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TrafficReport {
    pub duration_secs: f64,
    /// Packets per second asked for; null: as fast as possible.
    pub target_rate: Option<f64>,
    pub sent: u64,
    /// Echoes back, drain included.
    pub received: u64,
    pub received_in_window: u64,
    pub lost: u64,
    pub loss_ratio: f64,
    pub sent_per_sec: f64,
    pub received_per_sec: f64,
    pub send_errors: u64,
    pub last_send_error: Option<String>,
    /// Packets the pacer skipped because this host could not keep up.
    pub behind: u64,
    /// Datagrams that were not a probe of the allocation they arrived on.
    pub foreign: u64,
    /// Echoes dropped at this generator's own sockets (it was too busy to read them):
    /// part of `lost`, but this host's, not the server's.
    pub socket_drops: u64,
    pub rtt_us: Percentiles,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CpuReport {
    pub cpus: usize,
    pub setup: CpuPhase,
    pub traffic: CpuPhase,
}

/// CPU time spent during one phase, seconds summed over CPUs.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuPhase {
    pub wall_secs: f64,
    /// Whole box (/proc/stat): user, nice, system, irq, softirq, steal.
    pub box_busy_secs: f64,
    /// Share of the box's CPU time that was busy (0 to 1).
    pub box_busy_ratio: f64,
    /// This process, `--watch-pid`, `--count-pid` and the kernel's ksoftirqd threads:
    /// the run's own CPU, without other work on the box.
    pub group_secs: f64,
    pub group_us_per_packet: Option<f64>,
    /// The `--watch-pid` process (utime + stime of all its threads).
    pub watched_secs: Option<f64>,
    /// Traffic only: per packet sent or received, microseconds.
    pub box_us_per_packet: Option<f64>,
    pub watched_us_per_packet: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WatchedReport {
    pub pid: u32,
    pub rss_before_kib: Option<u64>,
    pub rss_after_setup_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
    /// Growth of the resident set during setup, divided by the allocations set up.
    pub rss_per_allocation_bytes: Option<f64>,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.setup;
        writeln!(
            f,
            "relay load: {} mode to {} (peer {}), {} threads, {} B payload",
            self.mode, self.target, self.peer, self.threads, self.payload_bytes
        )?;
        let mut failures = String::new();
        for (k, v) in &s.failures {
            let _ = write!(failures, " {k}:{v}");
        }
        writeln!(
            f,
            "  allocations  {}/{} ready, {} failed{}{}",
            s.ready,
            s.requested,
            s.failed,
            if failures.is_empty() { "" } else { " (" },
            if failures.is_empty() {
                String::new()
            } else {
                format!("{})", failures.trim_start())
            }
        )?;
        if s.redirects > 0 {
            writeln!(
                f,
                "  redirects    {} followed (300), {} redirected again",
                s.redirects, s.redirected_again
            )?;
        }
        if self.mode != "direct" {
            writeln!(
                f,
                "  setup        {:.2} s, {} allocations/s, latency p50 {:.2} ms p99 {:.2} ms",
                s.secs,
                si(s.rate_per_sec),
                s.latency_us.p50 / 1e3,
                s.latency_us.p99 / 1e3
            )?;
        }
        if let Some(t) = &self.traffic {
            writeln!(
                f,
                "  packets      sent {} ({}/s), received {} ({}/s), lost {} ({:.3}%)",
                t.sent,
                si(t.sent_per_sec),
                t.received,
                si(t.received_per_sec),
                t.lost,
                t.loss_ratio * 100.0
            )?;
            writeln!(
                f,
                "  rtt          p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us",
                t.rtt_us.p50, t.rtt_us.p90, t.rtt_us.p99, t.rtt_us.max
            )?;
            if t.send_errors > 0 || t.behind > 0 || t.foreign > 0 || t.socket_drops > 0 {
                writeln!(
                    f,
                    "  problems     {} send errors{}, {} behind schedule, {} foreign, \
                     {} dropped at this host's sockets",
                    t.send_errors,
                    t.last_send_error
                        .as_deref()
                        .map(|e| format!(" (last: {e})"))
                        .unwrap_or_default(),
                    t.behind,
                    t.foreign,
                    t.socket_drops
                )?;
            }
            let c = &self.cpu.traffic;
            write!(
                f,
                "  cpu          box {:.2} s busy of {:.1} s x {} CPUs ({:.0}%)",
                c.box_busy_secs,
                c.wall_secs,
                self.cpu.cpus,
                c.box_busy_ratio * 100.0
            )?;
            if let Some(us) = c.box_us_per_packet {
                write!(f, ", {us:.2} us/packet")?;
            }
            writeln!(f)?;
            if let Some(us) = c.group_us_per_packet {
                writeln!(
                    f,
                    "  cpu (run)    {:.2} s in this run's processes, {us:.2} us/packet",
                    c.group_secs
                )?;
            }
            if let (Some(w), Some(us)) = (c.watched_secs, c.watched_us_per_packet) {
                writeln!(f, "  watched      {w:.2} s CPU, {us:.2} us/packet")?;
            }
        }
        if let Some(w) = &self.watched
            && let Some(b) = w.rss_per_allocation_bytes
        {
            writeln!(
                f,
                "  memory       pid {} RSS {} -> {} KiB, {:.0} B/allocation",
                w.pid,
                w.rss_before_kib.unwrap_or(0),
                w.rss_after_setup_kib.unwrap_or(0),
                b
            )?;
        }
        if let Some(e) = &self.echo {
            writeln!(
                f,
                "  echo peer    received {}, echoed {}, dropped {}",
                e.received, e.echoed, e.dropped
            )?;
        }
        if self.refresh_failures > 0 {
            writeln!(f, "  refreshes    {} failed", self.refresh_failures)?;
        }
        if self.interrupted {
            writeln!(f, "  interrupted")?;
        }
        Ok(())
    }
}
