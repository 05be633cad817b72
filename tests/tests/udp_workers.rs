//! Several UDP workers (`[udp] workers`) sharing the listeners through SO_REUSEPORT, in
//! the deployment of CONTEXT.md with the kernel fast path off, so every packet crosses
//! the workers: allocations land on different workers, hairpin between them works
//! without NAT reflection, and quotas count over all of them.
//!
//! Needs root, `coturn` and `target/debug/relay` (`cargo build -p relay-user`).

use std::{collections::BTreeSet, time::Duration};

use relay_tests::{
    Topology, TopologyOptions,
    fixture::{Deployment, PASSWORD, RelayConfig, start_relay, turn_client},
    relay::{RelayProcess, field},
};

const WORKERS: usize = 4;
/// `max_allocations_per_user` of the quota test.
const QUOTA: usize = 12;

fn start(nat_reflection: bool, per_user: usize) -> Deployment {
    Deployment::start(TopologyOptions { nat_reflection }, |t| {
        start_relay(&t.relay, &config(t, per_user))
    })
}

fn config(topo: &Topology, per_user: usize) -> String {
    RelayConfig {
        peers_allow: Vec::new(),
        sections: format!(
            r#"[limits]
max_allocations_per_user = {per_user}
drain_timeout = 0

[udp]
workers = {WORKERS}

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
    let env = start(false, 100);
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
    // (all twelve allocations on one worker: 1 in 4^11). The allocations outlive the
    // clients' sockets.
    let outcomes: Vec<Option<u16>> = (0..QUOTA + 4)
        .map(|_| {
            let mut c = turn_client(&env.topo.client, env.server(), PASSWORD);
            c.allocate().err().map(|e| e.code().unwrap_or(0))
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
