//! `[limits] max_bps_per_allocation` end to end, on both data paths: a client sending
//! 2 Mbit/s of ChannelData to a peer on the media host through an allocation limited to
//! 800 kbit/s gets 800 kbit/s delivered (within 10%), the rest is dropped and counted for
//! the allocation (`/api/allocations` `bandwidth_dropped`) and by reason in the metrics;
//! another allocation on the same relay, sending below the limit, loses nothing.
//!
//! Needs root and `target/debug/relay` (`cargo build -p relay-user`).

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use relay_tests::{
    Topology, TopologyOptions,
    fixture::{Deployment, PASSWORD, RelayConfig, start_relay, turn_client},
    turn_client::TurnClient,
};
use relay_tools::status::AdminClient;

const ADMIN: &str = "127.0.0.1:9641";
const LIMIT_BPS: u64 = 800_000;
const CHANNEL: u16 = 0x4000;
/// How long the clients send.
const SEND_FOR: Duration = Duration::from_secs(5);
/// The fast sender: 1000 bytes every 4 ms, 2 Mbit/s.
const FAST: (usize, Duration) = (1000, Duration::from_millis(4));
/// The other allocation: 250 bytes every 20 ms, 100 kbit/s.
const SLOW: (usize, Duration) = (250, Duration::from_millis(20));
/// A sink stops counting this long after its last datagram.
const QUIET: Duration = Duration::from_secs(1);
/// How long a sink waits for its first datagram.
const FIRST: Duration = Duration::from_secs(5);

fn config(topo: &Topology, xdp: bool) -> String {
    let xdp = if xdp {
        format!(
            "interfaces = [\"{}\", \"{}\"]\nmode = \"native\"",
            topo.relay_external_if, topo.relay_internal_if
        )
    } else {
        "mode = \"off\"".to_owned()
    };
    RelayConfig {
        sections: format!(
            "[limits]\nmax_bps_per_allocation = {LIMIT_BPS}\ndrain_timeout = 0\n\n\
             [admin]\naddress = \"{ADMIN}\"\n\n[xdp]\n{xdp}\n"
        ),
        ..RelayConfig::deployment(&topo.addrs)
    }
    .to_string()
}

fn start(xdp: bool) -> Deployment {
    let opts = TopologyOptions::default();
    let start = |t: &Topology| start_relay(&t.relay, &config(t, xdp));
    if xdp {
        Deployment::start_kernel_path(opts, start)
    } else {
        Deployment::start(opts, start)
    }
}

/// A UDP socket on the media host: the peer.
fn sink(env: &Deployment, port: u16) -> UdpSocket {
    let at: SocketAddr = (env.addrs().media, port).into();
    env.topo
        .media
        .run(move || {
            let s = UdpSocket::bind(at).expect("bind the sink");
            s.set_read_timeout(Some(FIRST)).unwrap();
            s
        })
        .expect("enter media namespace")
}

/// A client with an allocation and a channel to `peer`.
fn client(env: &Deployment, peer: SocketAddr) -> TurnClient {
    let mut c = turn_client(&env.topo.client, env.server(), PASSWORD);
    c.allocate().expect("allocate");
    c.create_permission(&[peer]).expect("permission");
    c.channel_bind(CHANNEL, peer).expect("channel bind");
    c
}

/// Sends `size`-byte ChannelData every `gap` for [`SEND_FOR`] on an absolute schedule;
/// returns the datagrams sent.
fn pace(c: &TurnClient, (size, gap): (usize, Duration)) -> u64 {
    let payload = vec![0x5a; size];
    let start = Instant::now();
    let mut next = start;
    let mut sent = 0;
    while next < start + SEND_FOR {
        c.send_channel_data(CHANNEL, &payload).expect("send");
        sent += 1;
        next += gap;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    sent
}

/// Datagrams and bytes that reach `s` until it has been quiet for [`QUIET`].
fn count(s: &UdpSocket) -> (u64, u64) {
    let mut buf = [0u8; 2048];
    let (mut n, mut bytes) = (0, 0);
    while let Ok(len) = s.recv(&mut buf) {
        if n == 0 {
            s.set_read_timeout(Some(QUIET)).unwrap();
        }
        n += 1;
        bytes += len as u64;
    }
    (n, bytes)
}

fn admin<T: Send + 'static>(
    env: &Deployment,
    f: impl FnOnce(AdminClient) -> T + Send + 'static,
) -> T {
    let c = AdminClient::new(ADMIN.parse().unwrap(), None);
    env.topo
        .relay
        .run(move || f(c))
        .expect("enter relay namespace")
}

/// The value of the sample of `metric` with `reason="{reason}"`, 0 if absent.
fn metric(text: &str, metric: &str, reason: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

fn limit_holds(xdp: bool) {
    let env = start(xdp);
    env.relay
        .wait_for_log("admin API listening", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    let (fast_sink, slow_sink) = (sink(&env, 5000), sink(&env, 5001));
    let fast_peer = fast_sink.local_addr().unwrap();
    let slow_peer = slow_sink.local_addr().unwrap();
    let (fast, slow) = (client(&env, fast_peer), client(&env, slow_peer));
    let fast_relayed = fast.relayed_v4().expect("relayed address");

    let (sent, (got, bytes), slow_sent, (slow_got, _)) = std::thread::scope(|s| {
        let counted = [s.spawn(|| count(&fast_sink)), s.spawn(|| count(&slow_sink))];
        let sent = [s.spawn(|| pace(&fast, FAST)), s.spawn(|| pace(&slow, SLOW))];
        let [sent, slow_sent] = sent.map(|t| t.join().unwrap());
        let [got, slow_got] = counted.map(|t| t.join().unwrap());
        (sent, got, slow_sent, slow_got)
    });
    let bps = bytes * 8 / SEND_FOR.as_secs();
    let path = if xdp { "xdp" } else { "userspace" };
    eprintln!(
        "{path}: sent {sent} ({} bit/s), delivered {got} ({bps} bit/s); other allocation \
         {slow_got}/{slow_sent}",
        sent * FAST.0 as u64 * 8 / SEND_FOR.as_secs()
    );
    assert!(
        (LIMIT_BPS * 9 / 10..=LIMIT_BPS * 11 / 10).contains(&bps),
        "{path}: {bps} bit/s delivered of a {LIMIT_BPS} bit/s limit\n{}",
        env.relay.logs()
    );
    assert_eq!(
        slow_got, slow_sent,
        "{path}: the other allocation lost data"
    );

    let view = admin(&env, |c| c.allocations()).expect("/api/allocations");
    let a = view
        .allocations
        .iter()
        .find(|a| a.relayed.iter().any(|r| r.public == fast_relayed))
        .expect("the limited allocation listed");
    eprintln!("{path}: bandwidth_dropped {}", a.bandwidth_dropped);
    // Each datagram is either delivered or counted (a few may still be in flight).
    assert!(
        a.bandwidth_dropped + got >= sent - 5 && a.bandwidth_dropped + got <= sent,
        "{path}: {} dropped + {got} delivered of {sent}",
        a.bandwidth_dropped
    );
    if xdp {
        let kernel = a.kernel.expect("kernel counters");
        assert!(
            kernel.to_peer_packets + 5 >= got,
            "{path}: the kernel did not relay it: {kernel:?}"
        );
    }
    let others = view.allocations.iter().filter(|o| o.id != a.id);
    assert!(others.map(|o| o.bandwidth_dropped).all(|d| d == 0));

    let status = admin(&env, |c| c.status()).expect("/api/status");
    assert_eq!(status.limits.max_bps_per_allocation, LIMIT_BPS);
    let (code, text) = admin(&env, |c| c.get("/metrics")).expect("/metrics");
    assert_eq!(code, 200);
    let by_reason = if xdp {
        metric(&text, "relay_xdp_packets", "bandwidth_limit")
    } else {
        metric(&text, "relay_drops", "bandwidth_limit")
    };
    assert_eq!(by_reason, a.bandwidth_dropped, "{path}: metrics by reason");
}

#[test]
fn allocation_limit_holds_in_the_kernel() {
    limit_holds(true);
}

#[test]
fn allocation_limit_holds_in_userspace() {
    limit_holds(false);
}
