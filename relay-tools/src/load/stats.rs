//! What workers count, and how their counts merge into one run.

use std::collections::BTreeMap;
use std::time::Instant;

use hdrhistogram::Histogram;

/// Latencies in nanoseconds, 3 significant digits, up to a minute.
pub type Hist = Histogram<u64>;

pub fn new_hist() -> Hist {
    Histogram::new_with_bounds(100, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a histogram in microseconds, for reports.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Hist) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// One worker's allocation setup.
pub struct SetupStats {
    pub ready: u64,
    pub failures: BTreeMap<String, u64>,
    pub first_start: Option<Instant>,
    pub last_done: Option<Instant>,
    /// Time from the first request to the allocation being usable.
    pub latency: Hist,
    /// 300 ALTERNATE-SERVER answers followed (`--follow-redirects`).
    pub redirects: u64,
    /// Allocations redirected again by the server a 300 sent them to.
    pub redirected_again: u64,
}

impl SetupStats {
    pub fn new() -> Self {
        Self {
            ready: 0,
            failures: BTreeMap::new(),
            first_start: None,
            last_done: None,
            latency: new_hist(),
            redirects: 0,
            redirected_again: 0,
        }
    }

    pub fn fail(&mut self, label: String) {
        *self.failures.entry(label).or_default() += 1;
    }

    pub fn merge(&mut self, o: &SetupStats) {
        self.ready += o.ready;
        self.redirects += o.redirects;
        self.redirected_again += o.redirected_again;
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        self.first_start = earliest(self.first_start, o.first_start);
        self.last_done = latest(self.last_done, o.last_done);
        // Same bounds on both sides: cannot fail.
        let _ = self.latency.add(&o.latency);
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

impl Default for SetupStats {
    fn default() -> Self {
        Self::new()
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn latest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// One worker's traffic phase.
pub struct TrafficStats {
    /// Packets handed to the kernel during the traffic window.
    pub sent: u64,
    /// Echoes back, whenever they arrived (drain included): loss is `sent - received`.
    pub received: u64,
    /// Echoes that arrived inside the window: the received rate.
    pub received_in_window: u64,
    /// Sends the kernel refused (full buffer, ICMP unreachable...).
    pub send_errors: u64,
    pub last_send_error: Option<String>,
    /// Packets the pacer could not send in time (this host was too busy).
    pub behind: u64,
    /// Datagrams that were no probe of the allocation they arrived on.
    pub foreign: u64,
    /// Echoes the kernel dropped at the generator's own UDP sockets (full buffers: this
    /// host was too busy to read them), counted in the loss but not the relay's.
    pub socket_drops: u64,
    pub rtt: Hist,
}

impl TrafficStats {
    pub fn new() -> Self {
        Self {
            sent: 0,
            received: 0,
            received_in_window: 0,
            send_errors: 0,
            last_send_error: None,
            behind: 0,
            foreign: 0,
            socket_drops: 0,
            rtt: new_hist(),
        }
    }

    pub fn merge(&mut self, o: &TrafficStats) {
        self.sent += o.sent;
        self.received += o.received;
        self.received_in_window += o.received_in_window;
        self.send_errors += o.send_errors;
        if o.last_send_error.is_some() {
            self.last_send_error.clone_from(&o.last_send_error);
        }
        self.behind += o.behind;
        self.foreign += o.foreign;
        self.socket_drops += o.socket_drops;
        let _ = self.rtt.add(&o.rtt);
    }
}

impl Default for TrafficStats {
    fn default() -> Self {
        Self::new()
    }
}

/// One worker's counts for one second of the traffic window.
pub struct SecondSample {
    pub index: usize,
    pub sent: u64,
    pub received: u64,
    pub rtt: Hist,
}

/// One second of the run, all workers merged.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Second {
    /// Seconds since traffic started (1 = the first second).
    pub t: usize,
    pub sent: u64,
    pub received: u64,
    pub rtt_us: Percentiles,
}

/// Merges workers' samples by second.
#[derive(Default)]
pub struct Seconds {
    slots: Vec<(u64, u64, Option<Hist>, usize)>,
}

impl Seconds {
    pub fn add(&mut self, s: SecondSample) {
        if self.slots.len() <= s.index {
            self.slots.resize_with(s.index + 1, || (0, 0, None, 0));
        }
        let slot = &mut self.slots[s.index];
        slot.0 += s.sent;
        slot.1 += s.received;
        slot.3 += 1;
        match &mut slot.2 {
            Some(h) => {
                let _ = h.add(&s.rtt);
            }
            None => slot.2 = Some(s.rtt),
        }
    }

    /// The newest second every one of `workers` has reported (1-based, as `Second::t`).
    pub fn latest_complete(&self, workers: usize) -> Option<usize> {
        self.slots
            .iter()
            .rposition(|s| s.3 >= workers)
            .map(|i| i + 1)
    }

    /// Second `t` (1-based), merged.
    pub fn second(&self, t: usize) -> Second {
        let i = t - 1;
        let (sent, received, h, _) = &self.slots[i];
        Second {
            t: i + 1,
            sent: *sent,
            received: *received,
            rtt_us: h.as_ref().map(Percentiles::of).unwrap_or_default(),
        }
    }

    pub fn all(&self) -> Vec<Second> {
        (1..=self.slots.len()).map(|t| self.second(t)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_microseconds() {
        let mut h = new_hist();
        for v in 1..=100u64 {
            h.record(v * 1000).unwrap();
        }
        let p = Percentiles::of(&h);
        assert!((p.p50 - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99 - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.max - 100.0).abs() < 0.1, "{p:?}");
        assert_eq!(Percentiles::of(&new_hist()).max, 0.0);
    }

    #[test]
    fn seconds_merge_by_index() {
        let mut s = Seconds::default();
        let sample = |index, sent| SecondSample {
            index,
            sent,
            received: sent,
            rtt: new_hist(),
        };
        s.add(sample(0, 10));
        s.add(sample(1, 5));
        s.add(sample(0, 7));
        assert_eq!(s.latest_complete(2), Some(1));
        assert_eq!(s.latest_complete(1), Some(2));
        let all = s.all();
        assert_eq!((all[0].sent, all[1].sent), (17, 5));
    }
}
