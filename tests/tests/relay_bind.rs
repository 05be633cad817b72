//! Relay ports held by another program on the relay host: the data path cannot bind
//! the port the core chose, tells the core, and the core answers the client's Allocate
//! itself with another port (a deferred answer, for UDP and for TCP clients alike), or
//! 508 once no port can be bound. Four relay ports, three of them held.
//!
//! Needs root and `target/debug/relay` (`cargo build -p relay-user`).

use std::{net::UdpSocket, time::Duration};

use relay_tests::{
    TopologyOptions,
    fixture::{Deployment, Listen, PASSWORD, RELAY_PORTS, RelayConfig, start_relay, turn_client},
};

/// The relay's port range here, and the one port of it nobody holds.
const FIRST: u16 = 24000;
const LAST: u16 = 24003;

/// The relay with relay ports `FIRST..=LAST`, all but `LAST` bound by the test first
/// (the sockets are returned: they hold the ports until dropped).
fn start(engine: &str) -> (Deployment, Vec<UdpSocket>) {
    let mut held = Vec::new();
    let env = Deployment::start(TopologyOptions::default(), |t| {
        let ip = t.addrs.relay_external;
        for port in FIRST..LAST {
            let s = t
                .relay
                .run(move || UdpSocket::bind((ip, port)))
                .expect("enter namespace")
                .unwrap_or_else(|e| panic!("hold {ip}:{port}: {e}"));
            held.push(s);
        }
        let config = RelayConfig {
            listen: Listen::both_nics(&t.addrs, 3478, &["udp", "tcp"]),
            sections: format!("[udp]\nengine = \"{engine}\"\n\n[tcp]\nengine = \"{engine}\"\n\n[xdp]\nmode = \"off\"\n"),
            ..RelayConfig::deployment(&t.addrs)
        }
        .to_string();
        let whole = format!("ports = \"{}-{}\"", RELAY_PORTS.start(), RELAY_PORTS.end());
        assert!(config.contains(&whole), "{config}");
        let config = config.replace(&whole, &format!("ports = \"{FIRST}-{LAST}\""));
        start_relay(&t.relay, &config)
    });
    env.relay
        .wait_for_log("relay running", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    (env, held)
}

fn udp_client_gets_the_free_port(engine: &str) {
    let (env, _held) = start(engine);
    let mut c = turn_client(&env.topo.client, env.server(), PASSWORD);
    let relayed = c
        .allocate()
        .unwrap_or_else(|e| panic!("allocate: {e}\n{}", env.with_log("")));
    assert_eq!(relayed.port(), LAST, "{}", env.with_log(""));
    // Every port is held or taken now: the next Allocate is refused.
    let mut d = turn_client(&env.topo.client, env.server(), PASSWORD);
    let code = d.allocate().err().and_then(|e| e.code());
    assert_eq!(code, Some(508), "{}", env.with_log(""));
}

#[test]
fn udp_client_gets_the_free_port_on_io_uring() {
    udp_client_gets_the_free_port("auto");
}

#[test]
fn udp_client_gets_the_free_port_on_epoll() {
    udp_client_gets_the_free_port("epoll");
}

/// A stream client does not retransmit: without the core's deferred answer its
/// Allocate would go unanswered whenever the first port chosen was held.
fn tcp_client_gets_the_free_port(engine: &str) {
    let (env, _held) = start(engine);
    let mut c = env.tcp_client(3478);
    let relayed = c
        .allocate()
        .unwrap_or_else(|e| panic!("allocate: {e}\n{}", env.with_log("")));
    assert_eq!(relayed.port(), LAST, "{}", env.with_log(""));
    let mut d = env.tcp_client(3478);
    let code = d.allocate().err().and_then(|e| e.code());
    assert_eq!(code, Some(508), "{}", env.with_log(""));
}

#[test]
fn tcp_client_gets_the_free_port_on_io_uring() {
    tcp_client_gets_the_free_port("auto");
}

#[test]
fn tcp_client_gets_the_free_port_on_epoll() {
    tcp_client_gets_the_free_port("epoll");
}
