//! `/metrics`' encoding: every family the scrape reports, its name, help and labels, from
//! one [`Scrape`](super::Scrape). Apart from the collection (`prom.rs`: shard round trips,
//! map reads, the counters' floor) because it is the long, flat list an operator reads
//! against the dashboards, and it changes with every new figure while the collection does
//! not.

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
};
use relay_proto::server::DropCounters;

use super::{Scrape, ShardStats};
use crate::metrics::Path;

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
            single(
                &mut enc,
                "relay_tcp_data_connections_moved",
                "RFC 6062 data connections whose ConnectionBind reached another [tcp] workers thread than the one holding their peer connection, handed over to that one.",
                Counter,
                t.moved,
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
