//! `/metrics`: one snapshot of the shards' cores, the XDP maps and the event counters per
//! scrape, encoded with prometheus-client (OpenMetrics text, which Prometheus reads).
//!
//! This file collects (one [`Look`] at the shards, the XDP maps and the counters); the
//! families, their help texts and labels are in [`encode`], the part that grows with each
//! new figure.

mod encode;

use std::{fmt, net::SocketAddr, sync::Arc};

use prometheus_client::registry::Registry;
use relay_common::map_sizes;
use relay_proto::server::{DropCounters, Server};

use crate::{
    control::{Control, QUERY_TIMEOUT},
    metrics::{EventCounters, Path, Traffic},
};

/// The media type prometheus-client's text encoder produces.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What one shard reports at a scrape.
#[derive(Debug)]
struct ShardStats {
    name: String,
    allocations: usize,
    ports_in_use: (u32, u32),
    drops: DropCounters,
    errors: Vec<(u16, u64)>,
    errors_other: u64,
    events_lost: u64,
    /// Userspace traffic of live allocations, by [`Path`] (the XDP slot stays empty).
    live: [Traffic; 3],
    permissions: usize,
    /// Bound channels (not cooling down).
    channels: usize,
    /// The relayed addresses of this shard's UDP clients, which the XDP maps hold.
    udp_relays: Vec<SocketAddr>,
}

fn shard_stats(s: &mut Server) -> ShardStats {
    let mut st = ShardStats {
        name: String::new(),
        allocations: s.allocation_count(),
        ports_in_use: s.ports_in_use(),
        drops: *s.drops(),
        errors: s.error_responses().iter().collect(),
        errors_other: s.error_responses().other(),
        events_lost: s.events_lost(),
        live: [Traffic::default(); 3],
        permissions: 0,
        channels: 0,
        udp_relays: Vec::new(),
    };
    for a in s.allocations() {
        let path = Path::of(a.client().transport);
        st.live[path as usize].add(a.counters().into());
        let permissions = a.permissions().count();
        let channels = a.channels().filter(|c| !c.cooling).count();
        st.permissions += permissions;
        st.channels += channels;
        if path == Path::Udp {
            st.udp_relays.extend(a.relayed().map(|r| r.bind));
        }
    }
    st
}

/// Everything one scrape shows.
#[derive(Debug)]
struct Scrape {
    shards: Vec<ShardStats>,
    shards_missing: Vec<String>,
    draining: bool,
    max_allocations: usize,
    /// Traffic of live and ended allocations per [`Path`]; `None` for XDP when it is off.
    traffic: [Option<Traffic>; 3],
    /// `(reason, packets)` from the kernel program.
    xdp_reasons: Vec<(&'static str, u64)>,
    /// `(map, entries, capacity)`.
    xdp_maps: Vec<(&'static str, usize, u32)>,
    reloads: (u64, u64),
    tcp: Option<TcpFigures>,
    /// The event counters the shards feed.
    events: Arc<EventCounters>,
    /// The other nodes of `[cluster] nodes` as last heard.
    cluster: Vec<relay_admin_api::ClusterNodeView>,
}

/// The TCP/TLS workers' connection counters at scrape time, summed, with the open
/// connections of each worker.
#[derive(Clone, Debug)]
struct TcpFigures {
    held: u64,
    accepted: u64,
    refused_total: u64,
    refused_per_source: u64,
    refused_proxy_source: u64,
    refused_proxy_header: u64,
    dropped_backpressure: u64,
    stalls: u64,
    peer_send_errors: u64,
    peer_connect_errors: u64,
    moved: u64,
    /// (worker, connections open, accepted).
    workers: Vec<(String, u64, u64)>,
}

impl TcpFigures {
    fn of(workers: &[(String, Arc<crate::tcp::Stats>)]) -> Self {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let sum = |f: fn(&crate::tcp::Stats) -> &std::sync::atomic::AtomicU64| {
            workers.iter().map(|(_, s)| get(f(s))).sum()
        };
        Self {
            held: sum(|s| &s.held),
            accepted: sum(|s| &s.accepted),
            refused_total: sum(|s| &s.refused_total),
            refused_per_source: sum(|s| &s.refused_per_source),
            refused_proxy_source: sum(|s| &s.refused_proxy_source),
            refused_proxy_header: sum(|s| &s.refused_proxy_header),
            dropped_backpressure: sum(|s| &s.dropped_backpressure),
            stalls: sum(|s| &s.stalls),
            peer_send_errors: sum(|s| &s.peer_send_errors),
            peer_connect_errors: sum(|s| &s.peer_connect_errors),
            moved: sum(|s| &s.moved_out),
            workers: workers
                .iter()
                .map(|(name, s)| (name.clone(), get(&s.held), get(&s.accepted)))
                .collect(),
        }
    }
}

/// What one look at the shards and the kernel's counters gives: each shard's figures and
/// the traffic relayed so far per [`Path`] (live and ended allocations). `/metrics` and the
/// console's history both read it.
struct Look {
    shards: Vec<ShardStats>,
    shards_missing: Vec<String>,
    /// `None` for XDP when it is off.
    traffic: [Option<Traffic>; 3],
}

/// Blocks (shard round trips, map reads).
fn look(control: &Control) -> Look {
    // Ended allocations first, live ones after: one that ends in between is then missed
    // by this look (the floor of `/metrics` hides that), never counted twice.
    let retired = Path::ALL.map(|p| control.counters().retired(p));
    let answers = control.gather(QUERY_TIMEOUT, shard_stats);
    let mut shards = Vec::new();
    let mut shards_missing = Vec::new();
    for (answer, handle) in answers.into_iter().zip(control.shards()) {
        match answer {
            Some(mut st) => {
                st.name = handle.name.clone();
                shards.push(st);
            }
            None => shards_missing.push(handle.name.clone()),
        }
    }
    let mut traffic = [None; 3];
    for path in [Path::Udp, Path::Tcp] {
        let mut t = retired[path as usize];
        for s in &shards {
            t.add(s.live[path as usize]);
        }
        traffic[path as usize] = Some(t);
    }
    if let Some(reader) = control.kernel().reader() {
        // Read through the counters' own handles: the shards' map writer is not waited for.
        let mut t = retired[Path::Xdp as usize];
        for relay in shards.iter().flat_map(|s| &s.udp_relays) {
            // A relay the maps do not hold (its insert failed) is served in userspace.
            if let Ok(c) = reader.allocation_counters(*relay) {
                t.add(c.into());
            }
        }
        traffic[Path::Xdp as usize] = Some(t);
    }
    Look {
        shards,
        shards_missing,
        traffic,
    }
}

/// The figures the console's history samples, as running totals.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    /// Per [`Path`]; zero for XDP when it is off.
    pub traffic: [Traffic; 3],
    pub allocations: usize,
    /// 403 answers sent (peer refused by the policy, and the like).
    pub forbidden: u64,
}

/// Blocks, as [`render`].
pub fn totals(control: &Control) -> Totals {
    let l = look(control);
    Totals {
        traffic: l.traffic.map(Option::unwrap_or_default),
        allocations: l.shards.iter().map(|s| s.allocations).sum(),
        forbidden: l
            .shards
            .iter()
            .flat_map(|s| &s.errors)
            .filter(|(code, _)| *code == 403)
            .map(|(_, n)| n)
            .sum(),
    }
}

/// Collects and encodes. Blocks (shard round trips, map reads).
pub fn render(control: &Control) -> Result<String, fmt::Error> {
    let Look {
        shards,
        shards_missing,
        traffic,
    } = look(control);
    let kernel = control.kernel();
    let (mut xdp_reasons, mut xdp_maps) = (Vec::new(), Vec::new());
    if let Some(reader) = kernel.reader() {
        match reader.reason_counters() {
            Ok(r) => xdp_reasons = r.into_iter().map(|(r, n)| (r.name(), n)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the XDP reason counters")
            }
        }
        let in_kernel = kernel.permissions_and_channels();
        let sum = |f: fn(&ShardStats) -> usize| shards.iter().map(f).sum::<usize>();
        // Permissions and channels beyond an allocation's share stay in userspace.
        let entries = [sum(|s| s.udp_relays.len()), in_kernel.0, in_kernel.1];
        let sizes = map_sizes(control.xdp().sized_for);
        let capacity = |name: &str| {
            sizes
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, c)| *c)
        };
        xdp_maps = vec![
            (
                "allocations",
                entries[0],
                capacity(relay_common::ALLOCATIONS_MAP),
            ),
            (
                "permissions",
                entries[1],
                capacity(relay_common::PERMISSIONS_MAP),
            ),
            ("channels", entries[2], capacity(relay_common::CHANNELS_MAP)),
        ];
    }
    let (ok, refused, _) = control.reloads();
    let scrape = Scrape {
        shards,
        shards_missing,
        draining: control.is_draining(),
        max_allocations: control.config().max_allocations,
        traffic: monotonic(traffic),
        xdp_reasons,
        xdp_maps,
        reloads: (ok, refused),
        tcp: control.tcp_stats().map(TcpFigures::of),
        events: control.counters().clone(),
        cluster: control.cluster().view(std::time::Instant::now()),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Counters must never go back (Prometheus would take it for a restart): each traffic
/// figure is at least what the previous scrape reported.
fn monotonic(now: [Option<Traffic>; 3]) -> [Option<Traffic>; 3] {
    static FLOOR: std::sync::Mutex<[Traffic; 3]> = std::sync::Mutex::new([Traffic::ZERO; 3]);
    let mut floor = FLOOR.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = now;
    for (t, f) in out.iter_mut().zip(floor.iter_mut()) {
        if let Some(t) = t {
            *f = f.max(*t);
            *t = *f;
        }
    }
    out
}
