//! Several UDP workers (`[udp] workers`) sharing the listeners through SO_REUSEPORT, in
//! the deployment of CONTEXT.md with the kernel fast path off, so every packet crosses
//! the workers: allocations land on different workers, hairpin between them works
//! without NAT reflection, and quotas count over all of them. The io_uring loop (what
//! `[udp] engine = "auto"` picks here) and the epoll loop are both run.
//!
//! Needs root, `coturn` and `target/debug/relay` (`cargo build -p relay-user`).

use std::{collections::BTreeSet, time::Duration};

use relay_tests::{
    Topology, TopologyOptions,
    fixture::{
        Deployment, PASSWORD, RELAY_PORTS, RelayConfig, start_relay, turn_client, wait_until,
    },
    relay::{RelayProcess, field},
};

const WORKERS: usize = 4;
/// `max_allocations_per_user` of the quota test.
const QUOTA: usize = 12;

fn start(nat_reflection: bool, per_user: usize) -> Deployment {
    start_on("auto", nat_reflection, per_user)
}

/// The deployment with the UDP workers on `engine` ("auto" is io_uring on this kernel).
fn start_on(engine: &str, nat_reflection: bool, per_user: usize) -> Deployment {
    let env = Deployment::start(TopologyOptions { nat_reflection }, |t| {
        start_relay(&t.relay, &config(t, per_user, engine))
    });
    let line = env
        .relay
        .wait_for_log("answering TURN over UDP", Duration::ZERO)
        .unwrap_or_else(|e| panic!("{e}"));
    let expected = if engine == "epoll" {
        "epoll"
    } else {
        "io_uring"
    };
    assert_eq!(field(&line, "engine"), Some(expected), "{line}");
    env
}

fn config(topo: &Topology, per_user: usize, engine: &str) -> String {
    RelayConfig {
        peers_allow: Vec::new(),
        sections: format!(
            r#"[limits]
max_allocations_per_user = {per_user}
drain_timeout = 0

[udp]
workers = {WORKERS}
engine = "{engine}"

[xdp]
mode = "off"
"#
        ),
        ..RelayConfig::deployment(&topo.addrs)
    }
    .to_string()
}

/// The worker ("shard") that made each allocation. relay-proto puts the shard number in
/// the bits of an allocation id above its 20 slot bits, and ids are logged in hex.
fn shards_of_allocations(relay: &RelayProcess) -> BTreeSet<u64> {
    relay
        .log_lines("allocation created")
        .iter()
        .filter_map(|l| field(l, "id"))
        .map(|id| u64::from_str_radix(id, 16).expect("hex allocation id") >> 20)
        .collect()
}

#[test]
fn client_to_client_across_workers_without_nat_reflection() {
    client_to_client_across_workers("auto");
}

#[test]
fn client_to_client_across_workers_on_epoll() {
    client_to_client_across_workers("epoll");
}

fn client_to_client_across_workers(engine: &str) {
    let env = start_on(engine, false, 100);
    let running = env
        .relay
        .wait_for_log("relay running", Duration::ZERO)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        field(&running, "udp_workers"),
        Some(WORKERS.to_string().as_str())
    );

    // Eight clients in pairs, each the peer of another's relayed address: with four
    // workers, pairs split across workers (all eight allocations on one: 1 in 16384).
    let mut u = env.uclient();
    u.peer = None;
    u.peer_port = None;
    u.client_to_client = true;
    u.no_rtcp = true;
    u.clients = 8;
    u.messages = 20;
    let run = env.run_lossless(&env.topo.client, &u);
    let shards = shards_of_allocations(&env.relay);
    eprintln!("workers that made allocations: {shards:?}");
    assert!(
        shards.len() >= 2,
        "all allocations on one worker: {shards:?}\n{}",
        env.context(&run)
    );
}

#[test]
fn user_quota_counts_over_all_workers() {
    let env = start(true, QUOTA);
    // Each client has its own source port, so SO_REUSEPORT spreads them over the workers
    // (all twelve allocations on one worker: 1 in 4^11). The clients stay open until the
    // end: a closed client's ephemeral port can be handed to a later client, whose Allocate
    // then rightly gets 437 (its 5-tuple still holds an allocation).
    let mut clients = Vec::new();
    let outcomes: Vec<Option<u16>> = (0..QUOTA + 4)
        .map(|_| {
            let mut c = turn_client(&env.topo.client, env.server(), PASSWORD);
            let outcome = c.allocate().err().map(|e| e.code().unwrap_or(0));
            clients.push(c);
            outcome
        })
        .collect();
    let ok = outcomes.iter().filter(|o| o.is_none()).count();
    let quota = outcomes.iter().filter(|o| **o == Some(486)).count();
    let ctx = || env.with_log(format!("{outcomes:?}"));
    assert_eq!((ok, quota), (QUOTA, 4), "{}", ctx());
    let shards = shards_of_allocations(&env.relay);
    assert!(
        shards.len() >= 2,
        "the allocations all landed on one worker: {shards:?}\n{}",
        ctx()
    );
}

/// The relay sockets (bind address 198.51.100.50 in the relay host) listed by `ss`.
fn relay_sockets(env: &Deployment) -> BTreeSet<u16> {
    let out = env
        .topo
        .relay
        .exec("ss", &["-Huan"])
        .unwrap_or_else(|e| panic!("ss: {e}"));
    let bind = format!("{}:", env.addrs().relay_external);
    out.lines()
        .filter_map(|l| l.split_whitespace().find(|f| f.starts_with(&bind)))
        .filter_map(|f| f[bind.len()..].parse().ok())
        .filter(|p| RELAY_PORTS.contains(p))
        .collect()
}

/// An allocation's relay port is released when it ends: the io_uring loop must cancel
/// the socket's armed receive, which otherwise keeps the port bound after close.
fn relay_ports_are_released(engine: &str) {
    let env = start_on(engine, true, 100);
    let mut clients: Vec<_> = (0..6)
        .map(|_| turn_client(&env.topo.client, env.server(), PASSWORD))
        .collect();
    let ports: BTreeSet<u16> = clients
        .iter_mut()
        .map(|c| {
            c.allocate()
                .unwrap_or_else(|e| panic!("allocate: {e}"))
                .port()
        })
        .collect();
    assert_eq!(ports.len(), 6);
    let open = relay_sockets(&env);
    assert!(
        ports.is_subset(&open),
        "relay ports {ports:?} not all bound: {open:?}"
    );
    for c in &mut clients {
        assert_eq!(c.refresh(0).unwrap_or_else(|e| panic!("delete: {e}")), 0);
    }
    wait_until("relay ports released", Duration::from_secs(5), || {
        relay_sockets(&env).is_disjoint(&ports)
    });
    // The workers still serve: a new allocation gets a port and is bound.
    let mut c = turn_client(&env.topo.client, env.server(), PASSWORD);
    let port = c
        .allocate()
        .unwrap_or_else(|e| panic!("allocate: {e}"))
        .port();
    assert!(relay_sockets(&env).contains(&port), "{}", env.relay.logs());
}

#[test]
fn relay_ports_are_released_on_io_uring() {
    relay_ports_are_released("auto");
}

#[test]
fn relay_ports_are_released_on_epoll() {
    relay_ports_are_released("epoll");
}
