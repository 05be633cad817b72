//! Three relay nodes behind the static-NAT firewall (three public addresses), one TURN REST
//! secret, each naming the other two in `[cluster] nodes`. `relay load` sends 3,000
//! Allocates at node 1, which holds at most 1,000: every one succeeds across the cluster by
//! following 300s, and none is redirected twice (a 300 never named a full or draining
//! node). Then node 2 drains: new allocations go to nodes 1 and 3, `relay status` over the
//! fleet shows it, and node 2 exits once its allocations have ended.
//!
//! Needs root and `target/debug/relay` (`cargo build -p relay-user`).

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use relay_tests::{
    Topology, TopologyOptions,
    fixture::wait_until,
    load_gen::{Echo, num, run_load, spawn_load},
    relay::RelayProcess,
    relay_binary,
};
use relay_tools::status::{AdminClient, FleetView};

const SECRET: &str = "fleet-secret";
const TOKEN: &str = "fleet-token";
const ECHO: &str = "192.0.2.10:7000";

struct Node {
    public: Ipv4Addr,
    external: Ipv4Addr,
    ports: (u16, u16),
    max_allocations: usize,
}

impl Node {
    fn admin(&self) -> SocketAddr {
        (self.external, 9641).into()
    }
}

fn config(me: &Node, others: &[&Node]) -> String {
    let nodes: Vec<String> = others
        .iter()
        .map(|n| {
            format!(
                "{{ turn = \"{}:3478\", admin = \"http://{}\" }}",
                n.public,
                n.admin()
            )
        })
        .collect();
    format!(
        r#"realm = "example.org"

[[listen]]
address = "{ext}:3478"

[relay]
address = "{ext}"
public_address = "{public}"
ports = "{lo}-{hi}"

[auth]
shared_secrets = ["{SECRET}"]

[peers]
allow = ["192.0.2.0/24"]

[limits]
max_allocations = {max}
max_allocations_per_rest_user = 10000
max_allocations_per_source = 10000
unauthenticated_rate = 0
unauthenticated_global_rate = 0
drain_timeout = 60

[udp]
workers = 1

[xdp]
mode = "off"

[admin]
address = "{admin}"
token = "{TOKEN}"

[cluster]
nodes = [{nodes}]
"#,
        ext = me.external,
        public = me.public,
        lo = me.ports.0,
        hi = me.ports.1,
        max = me.max_allocations,
        admin = me.admin(),
        nodes = nodes.join(", "),
    )
}

#[test]
fn three_nodes_share_3000_allocations_and_one_drains() {
    let t = Topology::new(TopologyOptions::default()).expect("topology");
    let (p2, e2) = t.add_relay_node(1).expect("second relay address");
    let (p3, e3) = t.add_relay_node(2).expect("third relay address");
    let n1 = Node {
        public: t.addrs.public,
        external: t.addrs.relay_external,
        ports: (20000, 23999),
        max_allocations: 1000,
    };
    let n2 = Node {
        public: p2,
        external: e2,
        ports: (24000, 27999),
        max_allocations: 5000,
    };
    let n3 = Node {
        public: p3,
        external: e3,
        ports: (28000, 31999),
        max_allocations: 5000,
    };
    let _echo = Echo::start(&t.media, ECHO, None);
    let start = |me: &Node, others: &[&Node]| {
        RelayProcess::start(&t.relay, &config(me, others))
            .unwrap_or_else(|e| panic!("relay did not start: {e}"))
    };
    let relay1 = start(&n1, &[&n2, &n3]);
    let relay2 = start(&n2, &[&n1, &n3]);
    let relay3 = start(&n3, &[&n1, &n2]);
    let logs = || {
        format!(
            "node 1:\n{}\nnode 2:\n{}\nnode 3:\n{}",
            relay1.logs(),
            relay2.logs(),
            relay3.logs()
        )
    };
    let status = |n: &Node| {
        let c = AdminClient::new(n.admin(), Some(TOKEN.into()));
        t.relay
            .run(move || c.status())
            .expect("enter namespace")
            .unwrap_or_else(|e| panic!("status of {}: {e}", n.admin()))
    };
    wait_until(
        "node 1 hears nodes 2 and 3",
        Duration::from_secs(10),
        || {
            let s = status(&n1);
            s.cluster.len() == 2 && s.cluster.iter().all(|n| n.up)
        },
    );

    // 3,000 Allocates at node 1, kept relaying for a while.
    let server = format!("{}:3478", n1.public);
    // `relay load` at node 1 as browsers would reach it: REST credentials, 300s followed.
    let args = |n: &'static str, more: &[&'static str]| -> Vec<String> {
        let mut a = [
            &server,
            "--secret",
            SECRET,
            "--peer",
            ECHO,
            "--follow-redirects",
            "-n",
            n,
        ]
        .map(str::to_owned)
        .to_vec();
        a.extend(more.iter().map(|s| s.to_string()));
        a
    };
    let first = args("3000", &["--rate", "300", "--duration", "25"]);
    let load = spawn_load(&t.client, &strs(&first));
    let counts = || [&n1, &n2, &n3].map(|n| status(n).allocations.unwrap_or(0));
    wait_until(
        "3000 allocations across the cluster",
        Duration::from_secs(40),
        || counts().iter().sum::<usize>() == 3000,
    );
    let before = counts();
    assert_eq!(before[0], 1000, "node 1 is full: {before:?}");
    assert!(
        before[1] > 0 && before[2] > 0,
        "both others got clients: {before:?}"
    );

    // Node 2 drains (its allocations hold it open); node 1 hears it.
    relay2.signal(libc::SIGTERM);
    wait_until(
        "node 1 sees node 2 draining",
        Duration::from_secs(10),
        || {
            status(&n1)
                .cluster
                .iter()
                .any(|n| n.turn.ip() == n2.public && n.draining)
        },
    );
    // The fleet as an operator sees it: node 1's config names the other two.
    let out = t
        .relay
        .exec(
            relay_binary().to_str().unwrap(),
            &[
                "status",
                "--config",
                relay1.config_path().to_str().unwrap(),
                "--interval-ms",
                "300",
                "--json",
            ],
        )
        .unwrap_or_else(|e| panic!("relay status: {e}"));
    let fleet: FleetView = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!((fleet.total.nodes, fleet.total.up), (3, 3), "{out}");
    assert_eq!(fleet.total.draining, 1, "{out}");
    assert!(fleet.nodes[1].draining && !fleet.nodes[2].draining, "{out}");
    assert!(
        fleet.total.userspace_pps > 0.0,
        "the load's traffic shows: {out}"
    );

    // New allocations while node 2 drains: node 1 is full, so all go to node 3.
    let second = args("200", &["--duration", "0", "--no-delete"]);
    let more = run_load(&t.client, &strs(&second), Duration::from_secs(30));
    let (code, r) = more.report();
    assert_eq!(code, 0, "{r:#}\n{}", logs());
    assert_eq!(num(&r, "setup.ready"), 200.0, "{r:#}");
    assert_eq!(num(&r, "setup.redirected_again"), 0.0, "{r:#}");
    let after = counts();
    assert_eq!(
        after[1], before[1],
        "node 2 took no new client while draining"
    );
    assert_eq!(after[2], before[2] + 200, "{before:?} then {after:?}");

    // The first load ends and deletes its allocations: node 2's drain is over.
    let (code, r) = load.finish(Duration::from_secs(60)).report();
    assert_eq!(code, 0, "{r:#}\n{}", logs());
    assert_eq!(num(&r, "setup.ready"), 3000.0, "{r:#}");
    assert_eq!(num(&r, "setup.failed"), 0.0, "{r:#}");
    assert_eq!(num(&r, "setup.redirects"), 2000.0, "{r:#}");
    assert_eq!(num(&r, "setup.redirected_again"), 0.0, "{r:#}");
    wait_until(
        "node 2 exits after its drain",
        Duration::from_secs(10),
        || relay2.exited(),
    );
}

fn strs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}
