//! `relay status` over several nodes: one line per node (up, allocations/capacity, packets
//! per second in the kernel and in userspace, draining) and the totals. Packets per second
//! are the increase of `relay_packets` in `/metrics` over `--interval-ms`; every node is
//! asked at once, so a node that does not answer costs one timeout, not one per node.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use relay_admin_api::metrics::packets;
use serde::{Deserialize, Serialize};

use super::{AdminClient, StatusArgs, print_out};

/// `relay status --json` over a fleet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetView {
    pub nodes: Vec<FleetNode>,
    pub total: FleetTotal,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetNode {
    /// The admin endpoint asked.
    pub node: String,
    pub up: bool,
    /// Why it is counted down.
    pub error: Option<String>,
    pub allocations: Option<usize>,
    pub capacity: Option<usize>,
    pub draining: bool,
    /// Packets per second the XDP program forwarded (both directions).
    pub kernel_pps: Option<f64>,
    /// Packets per second the userspace paths relayed (UDP, TCP, TLS).
    pub userspace_pps: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FleetTotal {
    pub nodes: usize,
    pub up: usize,
    pub draining: usize,
    pub allocations: usize,
    /// Of the nodes that answered.
    pub capacity: usize,
    pub kernel_pps: f64,
    pub userspace_pps: f64,
}

/// Asks every node and prints; exit 0 when all answered, 2 when some did not.
pub(super) fn show(args: &StatusArgs, clients: &[(String, AdminClient)]) -> i32 {
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let view = gather(clients, interval);
    if args.json {
        match serde_json::to_string_pretty(&view) {
            Ok(text) => print_out(&format!("{text}\n")),
            Err(e) => {
                eprintln!("relay status: encoding JSON: {e}");
                return 1;
            }
        }
    } else {
        print_out(&render(&view));
    }
    if view.total.up == view.total.nodes {
        0
    } else {
        2
    }
}

/// Reads every node (in parallel) and sums them.
pub fn gather(clients: &[(String, AdminClient)], interval: Duration) -> FleetView {
    let nodes: Vec<FleetNode> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .map(|(url, c)| s.spawn(move || node(url, c, interval)))
            .collect();
        handles
            .into_iter()
            .zip(clients)
            .map(|(h, (url, _))| {
                h.join()
                    .unwrap_or_else(|_| down(url, "reading it failed".into()))
            })
            .collect()
    });
    let mut total = FleetTotal {
        nodes: nodes.len(),
        ..FleetTotal::default()
    };
    for n in nodes.iter().filter(|n| n.up) {
        total.up += 1;
        total.draining += usize::from(n.draining);
        total.allocations += n.allocations.unwrap_or(0);
        total.capacity += n.capacity.unwrap_or(0);
        total.kernel_pps += n.kernel_pps.unwrap_or(0.0);
        total.userspace_pps += n.userspace_pps.unwrap_or(0.0);
    }
    FleetView { nodes, total }
}

fn down(url: &str, error: String) -> FleetNode {
    FleetNode {
        node: url.to_owned(),
        up: false,
        error: Some(error),
        allocations: None,
        capacity: None,
        draining: false,
        kernel_pps: None,
        userspace_pps: None,
    }
}

fn node(url: &str, c: &AdminClient, interval: Duration) -> FleetNode {
    let status = match c.status() {
        Ok(s) => s,
        Err(e) => return down(url, e.to_string()),
    };
    let first = c.get("/metrics").ok().and_then(|(_, t)| packets(&t));
    let at = Instant::now();
    std::thread::sleep(interval);
    let second = c.get("/metrics").ok().and_then(|(_, t)| packets(&t));
    let secs = at.elapsed().as_secs_f64().max(0.001);
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    let (kernel_pps, userspace_pps) = match (first, second) {
        (Some(a), Some(b)) => (Some(rate(a.0, b.0)), Some(rate(a.1, b.1))),
        _ => (None, None),
    };
    FleetNode {
        node: url.to_owned(),
        up: true,
        error: None,
        allocations: status.allocations,
        capacity: Some(status.limits.max_allocations),
        draining: status.draining,
        kernel_pps,
        userspace_pps,
    }
}

/// The table, as printed.
pub fn render(view: &FleetView) -> String {
    let header = [
        "NODE",
        "UP",
        "ALLOCATIONS",
        "KERNEL PKT/S",
        "USERSPACE PKT/S",
        "DRAINING",
    ];
    let pps = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
    let mut rows: Vec<[String; 6]> = view
        .nodes
        .iter()
        .map(|n| {
            [
                n.node.clone(),
                if n.up { "up" } else { "DOWN" }.to_owned(),
                match (n.allocations, n.capacity) {
                    (Some(a), Some(c)) => format!("{a}/{c}"),
                    (None, Some(c)) => format!("?/{c}"),
                    _ => "-".to_owned(),
                },
                pps(n.kernel_pps),
                pps(n.userspace_pps),
                if !n.up {
                    "-"
                } else if n.draining {
                    "DRAINING"
                } else {
                    "no"
                }
                .to_owned(),
            ]
        })
        .collect();
    let t = &view.total;
    rows.push([
        "total".to_owned(),
        format!("{}/{}", t.up, t.nodes),
        format!("{}/{}", t.allocations, t.capacity),
        format!("{:.0}", t.kernel_pps),
        format!("{:.0}", t.userspace_pps),
        t.draining.to_string(),
    ]);
    let mut out = String::new();
    super::table(&mut out, header, &rows);
    for n in view.nodes.iter().filter(|n| !n.up) {
        let _ = writeln!(
            out,
            "{}: {}",
            n.node,
            n.error.as_deref().unwrap_or("no answer")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_line_per_node_and_totals() {
        let up = FleetNode {
            node: "http://192.0.2.1:9641".into(),
            up: true,
            error: None,
            allocations: Some(3),
            capacity: Some(10),
            draining: true,
            kernel_pps: Some(100.0),
            userspace_pps: Some(2.0),
        };
        let nodes = vec![up, down("http://192.0.2.2:9641", "refused".into())];
        let view = FleetView {
            total: FleetTotal {
                nodes: 2,
                up: 1,
                draining: 1,
                allocations: 3,
                capacity: 10,
                kernel_pps: 100.0,
                userspace_pps: 2.0,
            },
            nodes,
        };
        let text = render(&view);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains("3/10") && lines[1].contains("DRAINING"),
            "{text}"
        );
        assert!(lines[2].contains("DOWN"), "{text}");
        assert!(
            lines[3].starts_with("total") && lines[3].contains("1/2"),
            "{text}"
        );
        assert!(lines[4].contains("refused"), "{text}");
    }
}
