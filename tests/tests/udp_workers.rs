//! Several UDP workers (`[udp] workers`) sharing the listeners through SO_REUSEPORT, in
//! the deployment of CONTEXT.md with the kernel fast path off, so every packet crosses
//! the workers: allocations land on different workers, hairpin between them works
//! without NAT reflection, and quotas count over all of them.
//!
//! Needs root, `coturn` and `target/debug/relay` (`cargo build -p relay-user`).

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use relay_tests::{
    Topology, TopologyOptions,
    coturn::Uclient,
    relay::{RelayProcess, field},
    turn_client::TurnClient,
};

const USER: &str = "alice";
const PASSWORD: &str = "pw";
const WORKERS: usize = 4;
/// `max_allocations_per_user` of the quota test.
const QUOTA: usize = 12;

fn config(topo: &Topology, per_user: usize) -> String {
    let a = topo.addrs;
    format!(
        r#"realm = "example.org"

[[listen]]
address = "{int}:3478"

[[listen]]
address = "{ext}:3478"

[relay]
address = "{ext}"
public_address = "{public}"
ports = "24000-29999"

[auth]
users = {{ {USER} = "{PASSWORD}" }}

[limits]
max_allocations_per_user = {per_user}
drain_timeout = 0

[udp]
workers = {WORKERS}

[xdp]
mode = "off"
"#,
        int = a.relay_internal,
        ext = a.relay_external,
        public = a.public,
    )
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
    let topo = Topology::new(TopologyOptions {
        nat_reflection: false,
    })
    .expect("build topology");
    let relay = RelayProcess::start(&topo.relay, &config(&topo, 100))
        .unwrap_or_else(|e| panic!("relay did not start: {e}"));
    let running = relay
        .wait_for_log("relay running", Duration::ZERO)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        field(&running, "udp_workers"),
        Some(WORKERS.to_string().as_str())
    );

    // Eight clients in pairs, each the peer of another's relayed address: with four
    // workers, pairs split across workers (all eight allocations on one: 1 in 16384).
    let mut u = Uclient::new(topo.addrs.public.into());
    u.user = Some(USER.into());
    u.password = Some(PASSWORD.into());
    u.client_to_client = true;
    u.no_rtcp = true;
    u.clients = 8;
    u.messages = 20;
    let run = u
        .run(&topo.client, Duration::from_secs(40))
        .unwrap_or_else(|e| panic!("turnutils_uclient: {e}"));
    eprintln!("{}: {:?}", run.command, run.summary);
    let ctx = || {
        format!(
            "{}\n----- relay log -----\n{}",
            run.describe(),
            relay.logs()
        )
    };
    assert!(run.success() && !run.timed_out, "uclient failed\n{}", ctx());
    assert_eq!(run.summary.send_msgs, Some(160), "{}", ctx());
    assert_eq!(run.summary.recv_msgs, Some(160), "{}", ctx());
    assert_eq!(run.summary.lost_packets, Some(0), "{}", ctx());
    let shards = shards_of_allocations(&relay);
    eprintln!("workers that made allocations: {shards:?}");
    assert!(
        shards.len() >= 2,
        "all allocations on one worker: {shards:?}\n{}",
        ctx()
    );
}

#[test]
fn user_quota_counts_over_all_workers() {
    let topo = Topology::new(TopologyOptions::default()).expect("build topology");
    let relay = RelayProcess::start(&topo.relay, &config(&topo, QUOTA))
        .unwrap_or_else(|e| panic!("relay did not start: {e}"));
    let server: SocketAddr = (topo.addrs.public, 3478).into();
    // Each client has its own source port, so SO_REUSEPORT spreads them over the workers
    // (all twelve allocations on one worker: 1 in 4^11). The allocations outlive the
    // clients' sockets.
    let outcomes: Vec<Option<u16>> = (0..QUOTA + 4)
        .map(|_| {
            let mut c = topo
                .client
                .run(move || TurnClient::new(server, USER, PASSWORD))
                .expect("enter client namespace")
                .expect("client socket");
            c.allocate().err().map(|e| e.code().unwrap_or(0))
        })
        .collect();
    let ok = outcomes.iter().filter(|o| o.is_none()).count();
    let quota = outcomes.iter().filter(|o| **o == Some(486)).count();
    let ctx = || format!("{outcomes:?}\n----- relay log -----\n{}", relay.logs());
    assert_eq!((ok, quota), (QUOTA, 4), "{}", ctx());
    let shards = shards_of_allocations(&relay);
    assert!(
        shards.len() >= 2,
        "the allocations all landed on one worker: {shards:?}\n{}",
        ctx()
    );
}
