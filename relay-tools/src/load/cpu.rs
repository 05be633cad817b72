//! The CPU time a run costs: the whole box's, a watched process's and the group of
//! processes that make up the run (see [`Counted`]), sampled at the edges of each phase.

use std::time::Instant;

use super::{
    report::CpuPhase,
    sys::{self, BoxCpu},
};

/// Which processes' CPU time a run adds up.
pub struct Counted {
    watch: Option<u32>,
    /// This process, the watched one, `--count-pid` ones and the kernel's softirq
    /// threads: the run's own cost, apart from whatever else the box is doing.
    group: Vec<u32>,
}

impl Counted {
    pub fn new(watch: Option<u32>, extra: &[u32]) -> Self {
        let mut group = vec![std::process::id()];
        group.extend(watch);
        group.extend_from_slice(extra);
        group.extend(sys::softirq_threads());
        group.sort_unstable();
        group.dedup();
        Self { watch, group }
    }
}

/// Whole-box, watched-process and group CPU at one instant.
#[derive(Clone, Copy)]
pub struct CpuMark {
    pub at: Instant,
    cpu: Option<BoxCpu>,
    watched: Option<f64>,
    group: f64,
}

impl CpuMark {
    pub fn now(c: &Counted) -> Self {
        Self {
            at: Instant::now(),
            cpu: BoxCpu::read().ok(),
            watched: c.watch.and_then(|p| sys::process_cpu_secs(p).ok()),
            // A process that is gone counts 0 at both ends.
            group: c
                .group
                .iter()
                .filter_map(|&p| sys::process_cpu_secs(p).ok())
                .sum(),
        }
    }

    pub fn since(&self, start: &CpuMark, cpus: usize, packets: Option<u64>) -> CpuPhase {
        let wall = (self.at - start.at).as_secs_f64();
        let (busy, total) = match (start.cpu, self.cpu) {
            (Some(a), Some(b)) => (
                (b.busy_secs - a.busy_secs).max(0.0),
                (b.total_secs - a.total_secs).max(0.0),
            ),
            _ => (0.0, 0.0),
        };
        let watched = match (start.watched, self.watched) {
            (Some(a), Some(b)) => Some((b - a).max(0.0)),
            _ => None,
        };
        let group = (self.group - start.group).max(0.0);
        let per = |secs: f64| packets.filter(|&p| p > 0).map(|p| secs * 1e6 / p as f64);
        CpuPhase {
            wall_secs: wall,
            box_busy_secs: busy,
            // Over the ticks /proc/stat counted, not wall x CPUs: the two edges of a
            // short phase are a tick apart at most, but ticks are what busy is made of.
            box_busy_ratio: if total > 0.0 {
                busy / total
            } else if wall > 0.0 {
                busy / (wall * cpus as f64)
            } else {
                0.0
            },
            group_secs: group,
            group_us_per_packet: per(group),
            watched_secs: watched,
            box_us_per_packet: per(busy),
            watched_us_per_packet: watched.and_then(per),
        }
    }
}
