//! Several TCP/TLS workers (`[tcp] workers = 2`): the kernel spreads connections over
//! both workers (the per-worker metric says so), and `max_connections_per_source` and
//! `max_connections` hold for the relay, not per worker, wherever a source's
//! connections land. Clients connect from addresses of the relay namespace's loopback
//! (127.0.0.x) to a TCP listener there.
//!
//! Needs root and `target/debug/relay` (`cargo build -p relay-user`).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use relay_tests::{
    TopologyOptions,
    fixture::{Deployment, Listen, PASSWORD, RelayConfig, STREAM_TIMEOUT, USER, start_relay},
    relay::field,
    stream_client::{StreamClient, connect_tcp_from},
};
use relay_tools::status::AdminClient;

const ADMIN: &str = "127.0.0.1:9641";
const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 3478);
/// Enough that the connections land on both workers (all on one: 2^-15).
const MAX_CONNECTIONS: usize = 16;
const PER_SOURCE: usize = 2;
const LOG_WAIT: Duration = Duration::from_secs(5);

fn start() -> Deployment {
    let env = Deployment::start(TopologyOptions::default(), |t| {
        let mut listen = Listen::both_nics(&t.addrs, 3478, &["udp"]);
        listen.push(Listen::new(LISTEN.ip(), LISTEN.port(), &["tcp"]));
        let c = RelayConfig {
            listen,
            sections: format!(
                "[tcp]\nworkers = 2\nmax_connections = {MAX_CONNECTIONS}\n\
                 max_connections_per_source = {PER_SOURCE}\n\n[xdp]\nmode = \"off\"\n\n\
                 [admin]\naddress = \"{ADMIN}\"\n"
            ),
            ..RelayConfig::deployment(&t.addrs)
        };
        start_relay(&t.relay, &c.to_string())
    });
    let line = env
        .relay
        .wait_for_log("answering TURN over TCP", Duration::ZERO)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(field(&line, "workers"), Some("2"), "{line}");
    env
}

/// A connection to [`LISTEN`] from `127.0.0.{last}`, in the relay's namespace.
fn connect_from(env: &Deployment, last: u8) -> StreamClient<TcpStream> {
    let src = SocketAddr::from(([127, 0, 0, last], 0));
    let s = env
        .topo
        .relay
        .run(move || connect_tcp_from(src, LISTEN, STREAM_TIMEOUT))
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("connect from {src}: {e}"));
    StreamClient::new(s, USER, PASSWORD)
}

/// `relay_tcp_worker_connections_open` of each worker, and the relay's total.
fn open_connections(env: &Deployment) -> (Vec<(String, u64)>, u64) {
    let (code, text) = env
        .topo
        .relay
        .run(|| AdminClient::new(ADMIN.parse().unwrap(), None).get("/metrics"))
        .expect("enter relay namespace")
        .unwrap_or_else(|e| panic!("/metrics: {e}"));
    assert_eq!(code, 200, "{text}");
    let value = |l: &str| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64;
    let workers = text
        .lines()
        .filter_map(|l| l.strip_prefix("relay_tcp_worker_connections_open{worker=\""))
        .map(|l| (l.split('"').next().unwrap().to_owned(), value(l)))
        .collect();
    let total = text
        .lines()
        .find(|l| l.starts_with("relay_tcp_connections_open "))
        .map(value)
        .unwrap_or_else(|| panic!("no relay_tcp_connections_open in:\n{text}"));
    (workers, total)
}

#[test]
fn connections_spread_over_workers_within_the_relays_limits() {
    let env = start();
    // One source: the third connection is over the limit, whichever workers hold the two.
    let mut held = Vec::new();
    for _ in 0..PER_SOURCE {
        let mut c = connect_from(&env, 11);
        assert!(c.binding_answered(), "{}", env.relay.logs());
        held.push(c);
    }
    let mut over = connect_from(&env, 11);
    assert!(
        !over.binding_answered(),
        "a third connection from one source was served\n{}",
        env.relay.logs()
    );
    env.relay
        .wait_for_log("tcp.max_connections_per_source", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    // Other sources fill the relay: the connections land on both workers.
    for last in 12..(12 + (MAX_CONNECTIONS - PER_SOURCE) as u8) {
        let mut c = connect_from(&env, last);
        assert!(
            c.binding_answered(),
            "source 127.0.0.{last}\n{}",
            env.relay.logs()
        );
        held.push(c);
    }
    let (workers, total) = open_connections(&env);
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert!(
        workers.iter().all(|(_, n)| *n > 0),
        "connections on both workers: {workers:?}"
    );
    assert_eq!(total, MAX_CONNECTIONS as u64, "{workers:?}");
    // Neither worker holds max_connections, yet the relay does: a new source is refused,
    // whichever worker it reaches.
    let mut refused = connect_from(&env, 40);
    assert!(
        !refused.binding_answered(),
        "a connection beyond tcp.max_connections was served\n{}",
        env.relay.logs()
    );
    env.relay
        .wait_for_log("holds tcp.max_connections already", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    // A slot one worker frees serves a client of either.
    drop(held.pop());
    drop(held.pop());
    let mut freed = false;
    for _ in 0..50 {
        let mut c = connect_from(&env, 40);
        if c.binding_answered() {
            freed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(freed, "closed slots not freed\n{}", env.relay.logs());
}
