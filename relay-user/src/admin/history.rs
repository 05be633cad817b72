//! `/api/history`: a ring of one sample a second over the last ten minutes (what the
//! console charts). A sampler task takes the relay's running totals each second (one job
//! per shard, as a `/metrics` scrape does, and the kernel counters through their own
//! handles) and keeps the rates between two looks. The ring's lock is shared only by the
//! sampler and admin requests, never by a data path.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{Extension, Json};
pub use relay_admin_api::{HistorySample, HistoryView, RateView};
use tokio::task::JoinHandle;

use super::prom::{self, Totals};
use crate::{
    control::Control,
    metrics::{Path, Traffic},
};

/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Ten minutes of samples.
pub const SAMPLES: usize = 600;

/// The running totals at one look.
#[derive(Clone, Copy, Debug)]
pub struct Look {
    pub at: Instant,
    pub at_unix_ms: u64,
    pub totals: Totals,
    /// Failed authentications so far, every reason together.
    pub auth_failures: u64,
}

#[derive(Default)]
struct Ring {
    samples: VecDeque<HistorySample>,
    last: Option<Look>,
}

/// The ring; `Arc`-shared by the sampler and the handlers.
#[derive(Default)]
pub struct History {
    ring: Mutex<Ring>,
}

impl History {
    /// Adds the rates between the previous look and `now` (the first look only sets
    /// the baseline); the oldest sample goes once there are [`SAMPLES`].
    pub fn record(&self, now: Look) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(prev) = ring.last
            && let Some(sample) = sample(&prev, &now)
        {
            if ring.samples.len() == SAMPLES {
                ring.samples.pop_front();
            }
            ring.samples.push_back(sample);
        }
        ring.last = Some(now);
    }

    pub fn view(&self) -> HistoryView {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        HistoryView {
            interval_s: INTERVAL.as_secs(),
            samples: ring.samples.iter().copied().collect(),
        }
    }
}

/// The rates from `prev` to `now`; `None` if no time passed. Totals that went back (an
/// allocation ended between the reads of its live and its retired counters) count as 0.
fn sample(prev: &Look, now: &Look) -> Option<HistorySample> {
    let secs = now.at.saturating_duration_since(prev.at).as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    let rate = |path: Path| {
        let (a, b): (Traffic, Traffic) = (
            prev.totals.traffic[path as usize],
            now.totals.traffic[path as usize],
        );
        RateView {
            packets_per_s: per_s(a.to_peer_packets, b.to_peer_packets)
                + per_s(a.to_client_packets, b.to_client_packets),
            bits_per_s: 8.0
                * (per_s(a.to_peer_bytes, b.to_peer_bytes)
                    + per_s(a.to_client_bytes, b.to_client_bytes)),
        }
    };
    Some(HistorySample {
        at_unix_ms: now.at_unix_ms,
        kernel: rate(Path::Xdp),
        userspace_udp: rate(Path::Udp),
        userspace_tcp: rate(Path::Tcp),
        allocations: now.totals.allocations,
        auth_failures_per_s: per_s(prev.auth_failures, now.auth_failures),
        forbidden_per_s: per_s(prev.totals.forbidden, now.totals.forbidden),
    })
}

/// One look at the relay. Blocks (shard round trips).
pub fn look(control: &Control) -> Look {
    let totals = prom::totals(control);
    Look {
        at: Instant::now(),
        at_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        totals,
        auth_failures: control.counters().auth_failures().map(|(_, n)| n).sum(),
    }
}

/// `GET /api/history`. Takes only the ring's lock (the sampler's), no shard's.
pub async fn serve(Extension(history): Extension<Arc<History>>) -> Json<HistoryView> {
    Json(history.view())
}

/// Samples every [`INTERVAL`] on the blocking pool until aborted.
pub fn spawn_sampler(control: Arc<Control>, history: Arc<History>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        // A slow look (a stuck shard waits QUERY_TIMEOUT) must not bunch samples up.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let c = control.clone();
            match tokio::task::spawn_blocking(move || look(&c)).await {
                Ok(l) => history.record(l),
                Err(e) => tracing::warn!(error = %e, "admin history: a sample failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, udp_packets: u64, kernel_bytes: u64, auth: u64, forbidden: u64) -> Look {
        let base = base();
        let mut totals = Totals::default();
        totals.traffic[Path::Udp as usize].to_peer_packets = udp_packets;
        totals.traffic[Path::Xdp as usize].to_client_bytes = kernel_bytes;
        totals.allocations = secs as usize;
        totals.forbidden = forbidden;
        Look {
            at: base + Duration::from_secs(secs),
            at_unix_ms: secs * 1000,
            totals,
            auth_failures: auth,
        }
    }

    fn base() -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    #[test]
    fn rates_are_differences_over_the_interval_and_the_ring_keeps_ten_minutes() {
        let h = History::default();
        h.record(at(0, 0, 0, 0, 0));
        assert!(h.view().samples.is_empty(), "the first look is a baseline");
        h.record(at(2, 100, 1000, 4, 2));
        let s = h.view().samples[0];
        assert_eq!(s.userspace_udp.packets_per_s, 50.0);
        assert_eq!(s.kernel.bits_per_s, 4000.0);
        assert_eq!(s.kernel.packets_per_s, 0.0);
        assert_eq!((s.auth_failures_per_s, s.forbidden_per_s), (2.0, 1.0));
        assert_eq!((s.allocations, s.at_unix_ms), (2, 2000));
        // A total that went back is no negative rate; no time passed, no sample.
        h.record(at(3, 50, 1000, 4, 2));
        assert_eq!(h.view().samples[1].userspace_udp.packets_per_s, 0.0);
        h.record(at(3, 50, 1000, 4, 2));
        assert_eq!(h.view().samples.len(), 2);
        for i in 4..(4 + SAMPLES as u64) {
            h.record(at(i, 0, 0, 4, 2));
        }
        let v = h.view();
        assert_eq!(v.samples.len(), SAMPLES);
        assert_eq!(v.interval_s, 1);
        assert_eq!(v.samples.last().unwrap().allocations, 3 + SAMPLES);
        assert!(
            v.samples
                .windows(2)
                .all(|w| w[0].at_unix_ms < w[1].at_unix_ms)
        );
    }
}
