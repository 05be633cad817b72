//! `/metrics`: one snapshot of the shards' cores, the XDP maps and the event counters per
//! scrape, encoded with prometheus-client (OpenMetrics text, which Prometheus reads).

use std::{fmt, net::SocketAddr, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};
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

type Labels = Vec<(&'static str, String)>;

impl Scrape {
    /// `relay_cluster_*{node}`: what this node knows of the others (`node` is the admin
    /// endpoint as configured).
    fn encode_cluster(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let node = |n: &relay_admin_api::ClusterNodeView| label("node", &n.node);
        family(
            enc,
            "relay_cluster_node_up",
            "1 while the cluster node's /api/status answers (polled every second).",
            MetricType::Gauge,
            self.cluster.iter().map(|n| (node(n), u64::from(n.up))),
        )?;
        family(
            enc,
            "relay_cluster_node_draining",
            "1 while the cluster node said it was draining.",
            MetricType::Gauge,
            self.cluster
                .iter()
                .map(|n| (node(n), u64::from(n.draining))),
        )?;
        family(
            enc,
            "relay_cluster_node_allocations",
            "Allocations the cluster node held when last heard from.",
            MetricType::Gauge,
            self.cluster
                .iter()
                .filter_map(|n| Some((node(n), n.allocations? as u64))),
        )?;
        family(
            enc,
            "relay_cluster_node_capacity",
            "The cluster node's max_allocations when last heard from.",
            MetricType::Gauge,
            self.cluster
                .iter()
                .filter_map(|n| Some((node(n), n.capacity? as u64))),
        )?;
        family(
            enc,
            "relay_cluster_node_last_heard_seconds",
            "Seconds since the cluster node last answered (absent if it never did); beyond 3 no client is redirected to it.",
            MetricType::Gauge,
            self.cluster
                .iter()
                .filter_map(|n| Some((node(n), n.last_heard_seconds?))),
        )
    }
}

fn family<V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, V)>,
) -> fmt::Result
where
    V: prometheus_client::encoding::EncodeCounterValue
        + prometheus_client::encoding::EncodeGaugeValue,
{
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        let mut s = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => s.encode_counter::<NoLabelSet, V, u64>(&v, None)?,
            _ => s.encode_gauge(&v)?,
        }
    }
    Ok(())
}

fn single<V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    v: V,
) -> fmt::Result
where
    V: prometheus_client::encoding::EncodeCounterValue
        + prometheus_client::encoding::EncodeGaugeValue,
{
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => m.encode_counter::<NoLabelSet, V, u64>(&v, None),
        _ => m.encode_gauge(&v),
    }
}

fn label(k: &'static str, v: impl ToString) -> Labels {
    vec![(k, v.to_string())]
}

impl Scrape {
    fn sum<T: std::iter::Sum<T>>(&self, f: impl Fn(&ShardStats) -> T) -> T {
        self.shards.iter().map(f).sum()
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let ev = &*self.events;
        family(
            &mut enc,
            "relay_build_info",
            "The running relay's version (value 1).",
            Gauge,
            [(label("version", env!("CARGO_PKG_VERSION")), 1u64)],
        )?;
        single(
            &mut enc,
            "relay_draining",
            "1 while draining (SIGTERM): new allocations are refused.",
            Gauge,
            u64::from(self.draining),
        )?;
        if !self.cluster.is_empty() {
            self.encode_cluster(&mut enc)?;
        }
        single(
            &mut enc,
            "relay_shards_unresponsive",
            "Data-path threads that did not answer this scrape (their figures are missing).",
            Gauge,
            self.shards_missing.len() as u64,
        )?;
        family(
            &mut enc,
            "relay_allocations_active",
            "Allocations (TURN relays) held now, per data-path thread.",
            Gauge,
            self.shards
                .iter()
                .map(|s| (label("shard", &s.name), s.allocations as u64)),
        )?;
        single(
            &mut enc,
            "relay_allocations_max",
            "limits.max_allocations in force.",
            Gauge,
            self.max_allocations as u64,
        )?;
        single(
            &mut enc,
            "relay_allocations_created",
            "Allocations created.",
            Counter,
            ev.allocations_created(),
        )?;
        family(
            &mut enc,
            "relay_allocations_ended",
            "Allocations that ended, by reason (expired, deleted by the client, client connection closed, relay port unavailable).",
            Counter,
            ev.allocations_ended().map(|(r, n)| (label("reason", r), n)),
        )?;
        single(
            &mut enc,
            "relay_allocations_redirected",
            "Allocate requests sent to an alternate server (300) because the relay was full or draining.",
            Counter,
            ev.redirected(),
        )?;
        family(
            &mut enc,
            "relay_allocations_refused",
            "Allocate requests refused by a quota (508 or 300 for the relay's, 486 for the others), by limit.",
            Counter,
            ev.refused().map(|(l, n)| (label("limit", l), n)),
        )?;
        family(
            &mut enc,
            "relay_auth_failures",
            "Requests whose credentials did not verify, by reason.",
            Counter,
            ev.auth_failures().map(|(r, n)| (label("reason", r), n)),
        )?;
        single(
            &mut enc,
            "relay_peers_denied",
            "CreatePermission/ChannelBind refused by the peer policy (403).",
            Counter,
            ev.peers_denied(),
        )?;
        let mut errors: Vec<(Labels, u64)> = Vec::new();
        if let Some(first) = self.shards.first() {
            for (i, (code, _)) in first.errors.iter().enumerate() {
                let n = self.sum(|s| s.errors.get(i).map_or(0, |e| e.1));
                errors.push((label("code", code), n));
            }
        }
        errors.push((label("code", "other"), self.sum(|s| s.errors_other)));
        family(
            &mut enc,
            "relay_error_responses",
            "Error responses sent, by STUN error code (401 includes the normal first challenge).",
            Counter,
            errors,
        )?;
        let mut packets = Vec::new();
        let mut bytes = Vec::new();
        for path in Path::ALL {
            let Some(t) = self.traffic[path as usize] else {
                continue;
            };
            let l = |dir: &str| {
                vec![
                    ("path", path.as_str().to_owned()),
                    ("direction", dir.to_owned()),
                ]
            };
            packets.push((l("to_peer"), t.to_peer_packets));
            packets.push((l("to_client"), t.to_client_packets));
            bytes.push((l("to_peer"), t.to_peer_bytes));
            bytes.push((l("to_client"), t.to_client_bytes));
        }
        family(
            &mut enc,
            "relay_packets",
            "Packets relayed, by data path (xdp, udp, tcp) and direction.",
            Counter,
            packets,
        )?;
        family(
            &mut enc,
            "relay_bytes",
            "Payload bytes relayed, by data path (xdp, udp, tcp) and direction.",
            Counter,
            bytes,
        )?;
        let mut drops = DropCounters::default()
            .iter()
            .map(|(r, _)| (r, 0u64))
            .collect::<Vec<_>>();
        for s in &self.shards {
            for (slot, (_, n)) in drops.iter_mut().zip(s.drops.iter()) {
                slot.1 += n;
            }
        }
        family(
            &mut enc,
            "relay_drops",
            "Packets the userspace path dropped without a reply, by reason.",
            Counter,
            drops
                .into_iter()
                .map(|(r, n)| (label("reason", r.as_str()), n)),
        )?;
        if !self.xdp_reasons.is_empty() {
            family(
                &mut enc,
                "relay_xdp_packets",
                "Packets the XDP program handled, by outcome: forwarded_*, data_indication, send_indication and hairpinned stayed in the kernel; relay_port_unused, peer_not_permitted, channel_unbound, send_no_allocation, unparsable, unauthenticated_rate and adjust_failed were dropped there; the others went up to userspace.",
                Counter,
                self.xdp_reasons
                    .iter()
                    .map(|(r, n)| (label("reason", r), *n)),
            )?;
        }
        if !self.xdp_maps.is_empty() {
            family(
                &mut enc,
                "relay_xdp_map_entries",
                "Entries the relay holds in the XDP maps (permissions and channels beyond an allocation's share of 8 and 4 are served in userspace).",
                Gauge,
                self.xdp_maps
                    .iter()
                    .map(|(m, n, _)| (label("map", m), *n as u64)),
            )?;
            family(
                &mut enc,
                "relay_xdp_map_capacity",
                "Capacity of the XDP maps (sized from limits.max_allocations at startup).",
                Gauge,
                self.xdp_maps
                    .iter()
                    .map(|(m, _, c)| (label("map", m), u64::from(*c))),
            )?;
        }
        single(
            &mut enc,
            "relay_permissions_active",
            "Permissions installed, all allocations together.",
            Gauge,
            self.sum(|s| s.permissions) as u64,
        )?;
        single(
            &mut enc,
            "relay_channels_active",
            "Channel bindings in force, all allocations together.",
            Gauge,
            self.sum(|s| s.channels) as u64,
        )?;
        // Ports are counted relay-wide by every shard: take one answer, never the sum.
        if let Some(s) = self.shards.first() {
            family(
                &mut enc,
                "relay_ports_in_use",
                "Relay ports allocated, reserved or quarantined, per family.",
                Gauge,
                [
                    (label("family", "ipv4"), u64::from(s.ports_in_use.0)),
                    (label("family", "ipv6"), u64::from(s.ports_in_use.1)),
                ],
            )?;
        }
        single(
            &mut enc,
            "relay_events_lost",
            "Core events discarded because the log could not keep up.",
            Counter,
            // The cores' queues, and the log thread's.
            self.sum(|s| s.events_lost) + crate::events::lost(),
        )?;
        family(
            &mut enc,
            "relay_config_reloads",
            "Configuration reloads (SIGHUP), by result.",
            Counter,
            [
                (label("result", "ok"), self.reloads.0),
                (label("result", "refused"), self.reloads.1),
            ],
        )?;
        if let Some(t) = &self.tcp {
            single(
                &mut enc,
                "relay_tcp_connections_open",
                "TURN client connections over TCP/TLS held now.",
                Gauge,
                t.held,
            )?;
            family(
                &mut enc,
                "relay_tcp_connections",
                "TURN client connections over TCP/TLS, by outcome: accepted, or refused at tcp.max_connections (limit), at the per-source limit (per_source), from outside a PROXY protocol listener's proxy_from (proxy_source), or for a missing or bad PROXY header (proxy_header).",
                Counter,
                [
                    (label("outcome", "accepted"), t.accepted),
                    (label("outcome", "limit"), t.refused_total),
                    (label("outcome", "per_source"), t.refused_per_source),
                    (label("outcome", "proxy_source"), t.refused_proxy_source),
                    (label("outcome", "proxy_header"), t.refused_proxy_header),
                ],
            )?;
            family(
                &mut enc,
                "relay_tcp_problems",
                "TCP/TLS path trouble: peer datagrams dropped for clients that do not read (backpressure), client reads paused on a full relay socket (stall), peer send and RFC 6062 connect errors.",
                Counter,
                [
                    (label("kind", "backpressure_drop"), t.dropped_backpressure),
                    (label("kind", "stall"), t.stalls),
                    (label("kind", "peer_send_error"), t.peer_send_errors),
                    (label("kind", "peer_connect_error"), t.peer_connect_errors),
                ],
            )?;
            family(
                &mut enc,
                "relay_tcp_worker_connections_open",
                "TURN client connections over TCP/TLS held now, by worker (shard name): how [tcp] workers share them.",
                Gauge,
                t.workers
                    .iter()
                    .map(|(w, held, _)| (label("worker", w), *held)),
            )?;
            family(
                &mut enc,
                "relay_tcp_worker_connections_accepted",
                "TURN client connections over TCP/TLS accepted, by worker (shard name).",
                Counter,
                t.workers
                    .iter()
                    .map(|(w, _, accepted)| (label("worker", w), *accepted)),
            )?;
        }
        Ok(())
    }
}
