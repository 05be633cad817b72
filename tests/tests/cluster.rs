//! Two relays on one host, each naming the other in `[cluster] nodes` (different TURN
//! ports, relay port ranges and admin ports, as an operator first tries a cluster): a
//! full node answers Allocate with 300 towards the other, the client that follows it gets
//! its allocation there, and a draining node is no longer redirected to. Node 2 serves
//! its admin endpoint over TLS (`[admin] tls`), so node 1's poller and `relay status`
//! verify it with `[cluster] ca` / `--ca`.
//!
//! Needs root and `target/debug/relay` (`cargo build -p relay-user`).

use std::{net::SocketAddr, time::Duration};

use relay_admin_api::StatusView;
use relay_tests::{
    Netns,
    certs::TestCa,
    fixture::{REALM, wait_until},
    netns::unique_id,
    relay::RelayProcess,
    relay_binary,
    turn_client::TurnClient,
};
use relay_tools::status::{AdminClient, FleetView};

const TOKEN: &str = "fleet-token";

struct Node {
    turn: SocketAddr,
    admin: SocketAddr,
    ports: (u16, u16),
    max_allocations: usize,
    tls: bool,
}

fn config(me: &Node, other: &Node) -> String {
    let scheme = |n: &Node| if n.tls { "https" } else { "http" };
    format!(
        r#"realm = "{REALM}"

[[listen]]
address = "{turn}"

[relay]
address = "127.0.0.1"
ports = "{lo}-{hi}"

[auth]
users = {{ alice = "pw", bob = "pw", carol = "pw" }}

[udp]
workers = 1

[limits]
max_allocations = {max}
drain_timeout = 60

[admin]
address = "{admin}"
token = "{TOKEN}"
tls = {tls}

[tls]
certificate = "cert.pem"
private_key = "key.pem"

[cluster]
nodes = [{{ turn = "{other_turn}", admin = "{scheme}://{other_admin}" }}]
ca = "ca.pem"
"#,
        turn = me.turn,
        lo = me.ports.0,
        hi = me.ports.1,
        max = me.max_allocations,
        admin = me.admin,
        tls = me.tls,
        other_turn = other.turn,
        scheme = scheme(other),
        other_admin = other.admin,
    )
}

fn client(node: &Node, ca: &std::path::Path) -> AdminClient {
    let mut c = AdminClient::new(node.admin, Some(TOKEN.into()));
    c.timeout = Duration::from_secs(2);
    if node.tls {
        c.tls = Some(relay_admin_api::client::tls_config_from_ca(ca).expect("CA file"));
    }
    c
}

fn status(ns: &Netns, c: &AdminClient) -> StatusView {
    let c = c.clone();
    ns.run(move || c.status())
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("status: {e}"))
}

fn allocate(
    ns: &Netns,
    server: SocketAddr,
    user: &str,
) -> (
    TurnClient,
    Result<SocketAddr, relay_tests::turn_client::TurnError>,
) {
    let user = user.to_owned();
    let mut c = ns
        .run(move || TurnClient::new(server, &user, "pw"))
        .expect("enter namespace")
        .expect("client socket");
    let r = c.allocate();
    (c, r)
}

#[test]
fn a_full_node_redirects_to_the_other_and_not_to_a_draining_one() {
    let ns = Netns::new(&format!("cluster-{}", unique_id())).expect("namespace");
    let ca = TestCa::new("cluster test CA");
    let leaf = ca.leaf("relay", &["127.0.0.1"]);
    let n1 = Node {
        turn: "127.0.0.1:3478".parse().unwrap(),
        admin: "127.0.0.1:9641".parse().unwrap(),
        ports: (24000, 24099),
        max_allocations: 2,
        tls: false,
    };
    let n2 = Node {
        turn: "127.0.0.1:3479".parse().unwrap(),
        admin: "127.0.0.1:9642".parse().unwrap(),
        ports: (24100, 24199),
        max_allocations: 100,
        tls: true,
    };
    let files = [
        ("cert.pem", leaf.chain_pem.as_str()),
        ("key.pem", leaf.key_pem.as_str()),
        ("ca.pem", ca.pem.as_str()),
    ];
    let start = |me: &Node, other: &Node| {
        RelayProcess::start_with_files(&ns, &config(me, other), &files)
            .unwrap_or_else(|e| panic!("relay did not start: {e}"))
    };
    let relay1 = start(&n1, &n2);
    let relay2 = start(&n2, &n1);
    let ca_path = relay1.config_path().with_file_name("ca.pem");
    let (c1, c2) = (client(&n1, &ca_path), client(&n2, &ca_path));
    let logs = || format!("node 1:\n{}\nnode 2:\n{}", relay1.logs(), relay2.logs());

    // Each hears the other (node 1 over TLS).
    wait_until(
        "both nodes hear each other",
        Duration::from_secs(10),
        || {
            let up = |c: &AdminClient| status(&ns, c).cluster.first().is_some_and(|n| n.up);
            up(&c1) && up(&c2)
        },
    );
    let view = status(&ns, &c1).cluster;
    assert_eq!(view[0].turn, n2.turn);
    assert_eq!(view[0].capacity, Some(100));
    assert!(
        view[0].last_heard_seconds.is_some_and(|s| s < 3.0),
        "{view:?}"
    );

    // Fill node 1.
    let mut held = Vec::new();
    for _ in 0..2 {
        let (c, r) = allocate(&ns, n1.turn, "alice");
        r.unwrap_or_else(|e| panic!("allocation on node 1: {e}\n{}", logs()));
        held.push(c);
    }
    // The third is sent to node 2, and following the 300 succeeds there.
    let (_, r) = allocate(&ns, n1.turn, "alice");
    let e = r.expect_err("node 1 is full");
    assert_eq!(
        (e.code(), e.alternate()),
        (Some(300), Some(n2.turn)),
        "{e}\n{}",
        logs()
    );
    let (c, r) = allocate(&ns, n2.turn, "alice");
    let relayed = r.unwrap_or_else(|e| panic!("allocation on node 2: {e}\n{}", logs()));
    assert!((24100..=24199).contains(&relayed.port()), "{relayed}");
    held.push(c);
    let metrics = {
        let c = c1.clone();
        ns.run(move || c.get("/metrics")).unwrap().unwrap().1
    };
    assert!(
        metrics.contains("relay_cluster_node_up{node=\"https://127.0.0.1:9642\"} 1"),
        "{metrics}"
    );

    // The fleet as `relay status` shows it.
    let relay = relay_binary();
    let fleet = |ns: &Netns| -> FleetView {
        let out = ns
            .exec(
                relay.to_str().unwrap(),
                &[
                    "status",
                    "--admin",
                    "http://127.0.0.1:9641",
                    "--admin",
                    "https://127.0.0.1:9642",
                    "--ca",
                    ca_path.to_str().unwrap(),
                    "--token",
                    TOKEN,
                    "--interval-ms",
                    "200",
                    "--json",
                ],
            )
            .unwrap_or_else(|e| panic!("relay status: {e}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let view = fleet(&ns);
    assert_eq!(view.nodes.len(), 2);
    assert_eq!(
        (view.total.up, view.total.allocations, view.total.capacity),
        (2, 3, 102)
    );
    assert_eq!(view.nodes[0].allocations, Some(2));

    // Node 2's admin certificate is reloaded on SIGHUP: one from another CA makes node 1
    // count it unreachable (its poller verifies), the right one brings it back.
    let dir2 = relay2.config_path().parent().unwrap().to_owned();
    let install = |leaf: &relay_tests::certs::Leaf| {
        std::fs::write(dir2.join("cert.pem"), &leaf.chain_pem).unwrap();
        std::fs::write(dir2.join("key.pem"), &leaf.key_pem).unwrap();
        relay2.signal(libc::SIGHUP);
    };
    install(&TestCa::new("some other CA").leaf("relay", &["127.0.0.1"]));
    wait_until(
        "node 1 refuses node 2's new certificate",
        Duration::from_secs(10),
        || {
            let s = status(&ns, &c1);
            let n = &s.cluster[0];
            !n.up && n.error.as_deref().is_some_and(|e| e.contains("TLS"))
        },
    );
    install(&ca.leaf("relay", &["127.0.0.1"]));
    wait_until("node 1 hears node 2 again", Duration::from_secs(10), || {
        status(&ns, &c1).cluster[0].up
    });

    // Node 2 drains (SIGTERM; its allocation holds it open): node 1 stops sending
    // clients there and refuses them itself (no static alternate).
    relay2.signal(libc::SIGTERM);
    wait_until(
        "node 1 sees node 2 draining",
        Duration::from_secs(10),
        || status(&ns, &c1).cluster.first().is_some_and(|n| n.draining),
    );
    let (_, r) = allocate(&ns, n1.turn, "bob");
    let e = r.expect_err("node 1 is full");
    assert_eq!(e.code(), Some(508), "{e}\n{}", logs());
    let view = fleet(&ns);
    assert!(
        view.nodes[1].draining && view.total.draining == 1,
        "{view:?}"
    );

    drop(held);
}
