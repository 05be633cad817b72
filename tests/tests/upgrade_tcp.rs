//! An upgrade with TURN over TCP and TLS (issue 15): the new process takes the TCP/TLS
//! listeners (plain, TLS and PROXY protocol ones, two workers' worth), the connections
//! open at the time (RFC 6062 ones included) stay with the old process, which keeps
//! relaying them until they end
//! (or `limits.drain_timeout` passes) and then exits; new connections reach the new
//! process; UDP allocations move to the new process as without TCP.
//!
//! Needs root and `target/debug/relay` (`cargo build -p relay-user`).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use relay_proto::stun::{ConnectionId, Message, Method, RequestedTransport, XorPeerAddress};
use relay_tests::{
    TopologyOptions,
    fixture::{Deployment, Listen, PASSWORD, RelayConfig, start_tls_relay, turn_client},
    relay::field,
    stream_client::StreamClient,
};
use relay_tools::status::AdminClient;

const ADMIN: &str = "127.0.0.1:9641";
const CHANNEL: u16 = 0x4001;
const UPGRADE_WAIT: Duration = Duration::from_secs(60);
const LOG_WAIT: Duration = Duration::from_secs(10);
/// How long the old process may take to exit once its last connection ended (it looks
/// every 250 ms, then stops its workers).
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// How much longer than the drain timeout the new process keeps the old one's ports.
const QUARANTINE_MARGIN: Duration = Duration::from_secs(10);

/// UDP and TCP on 3478 of both NICs, TCP and TLS on 443, a TLS listener behind a load
/// balancer (PROXY protocol) on 8443; two TCP/TLS workers.
fn start(engine: &str, drain_timeout: u64) -> Deployment {
    Deployment::start_tls(TopologyOptions::default(), |topo, leaf| {
        let a = topo.addrs;
        let mut listen = Listen::both_nics(&a, 3478, &["udp", "tcp"]);
        listen.push(Listen::new(a.relay_external, 443, &["tcp", "tls"]));
        let conf = RelayConfig {
            listen,
            tls: true,
            sections: format!(
                "[[listen]]\naddress = \"{}:8443\"\ntransports = [\"tls\"]\n\
                 proxy_protocol = true\nproxy_from = [\"{}/32\"]\n\n\
                 [limits]\ndrain_timeout = {drain_timeout}\n\n\
                 [tcp]\nworkers = 2\nengine = \"{engine}\"\nrelay_tcp = true\n\n\
                 [xdp]\nmode = \"off\"\n\n[admin]\naddress = \"{ADMIN}\"\n",
                a.relay_external, a.client
            ),
            ..RelayConfig::deployment(&a)
        };
        start_tls_relay(&topo.relay, &conf.to_string(), leaf)
    })
    .with_media_peer()
}

/// The process an upgrade started (the harness only knows the first one): killed when
/// the test ends, passed or not.
struct Successor(u32);

impl Drop for Successor {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the relay this test's upgrade started.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
    }
}

/// Running (a zombie, which the harness reaps only at the end, is not).
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')));
    exists && !zombie
}

/// SIGUSR2 to the relay: the binary at its path takes over. The new process.
fn upgrade(env: &Deployment) -> Successor {
    env.relay.signal(libc::SIGUSR2);
    let line = env
        .relay
        .wait_for_log("handed over:", UPGRADE_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let pid = line
        .split("pid ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    let successor = Successor(pid);
    env.relay
        .wait_for_log("generation=2", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    successor
}

/// GET `path` on the admin endpoint (the new process's, after an upgrade).
fn admin(env: &Deployment, path: &'static str) -> String {
    let (code, text) = env
        .topo
        .relay
        .run(move || AdminClient::new(ADMIN.parse().unwrap(), None).get(path))
        .expect("enter relay namespace")
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(code, 200, "{text}");
    text
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}")) as u64
}

/// `n` ChannelData messages echoed by the media peer, tagged `what`.
fn echoes<S: std::io::Read + std::io::Write>(c: &mut StreamClient<S>, what: &str, n: usize) {
    for i in 0..n {
        let msg = format!("{what} {i}");
        c.send_channel_data(CHANNEL, msg.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: send: {e}"));
        let got = c
            .recv_data()
            .unwrap_or_else(|e| panic!("{what}: no echo: {e}"));
        assert_eq!(got.data, msg.as_bytes(), "{what}");
    }
}

/// An RFC 6062 TCP allocation on a control connection, connected (Connect, then
/// ConnectionBind on a data connection) to a one-connection TCP echo on the media host:
/// (control, data); the data connection carries raw bytes to the echo.
fn tcp_allocation_to_echo(env: &Deployment) -> (StreamClient<TcpStream>, TcpStream) {
    let echo_at: SocketAddr = (env.addrs().media, 3481).into();
    let listener = env
        .topo
        .media
        .run(move || TcpListener::bind(echo_at))
        .expect("enter namespace")
        .expect("bind the TCP echo");
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            if s.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    let mut control = env.tcp_client(3478);
    let resp = control
        .transact(Method::ALLOCATE, &|w| {
            w.attr(&RequestedTransport::TCP).map(drop)
        })
        .expect("TCP Allocate");
    control.take_allocation(&resp).expect("relayed address");
    let resp = control
        .transact(Method::CONNECT, &|w| {
            w.attr(&XorPeerAddress(echo_at)).map(drop)
        })
        .expect("Connect");
    let conn = Message::parse(&resp)
        .ok()
        .and_then(|m| m.attr::<ConnectionId>().and_then(Result::ok))
        .expect("CONNECTION-ID")
        .0;
    let mut data = env.tcp_client(3478);
    let (realm, nonce) = control.credentials().expect("credentials");
    data.prime(&realm, &nonce);
    // The echo says nothing first: the response is all the relay sends before the bytes.
    let txid = data
        .write_request(Method::CONNECTION_BIND, &|w| {
            w.attr(&ConnectionId(conn)).map(drop)
        })
        .expect("ConnectionBind");
    let resp = data.read_response(txid).expect("ConnectionBind response");
    data.check(Method::CONNECTION_BIND, &resp)
        .expect("ConnectionBind");
    (control, data.stream)
}

/// `bytes` through the data connection to the echo and back.
fn raw_echo(data: &mut TcpStream, bytes: &[u8]) {
    data.write_all(bytes).expect("write to the peer");
    let mut got = vec![0u8; bytes.len()];
    data.read_exact(&mut got).expect("the peer's echo");
    assert_eq!(got, bytes);
}

fn wait_exit(pid: u32, timeout: Duration) -> Duration {
    let start = Instant::now();
    while alive(pid) {
        assert!(
            start.elapsed() < timeout,
            "the old process {pid} still runs {timeout:?} after its last connection ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn tcp_and_tls_sessions_stay_with_the_old_process_new_ones_reach_the_new_one() {
    let env = start("auto", 120);
    let peer = env.media_peer();
    let old_pid = env.relay.pid();

    // A UDP allocation: it moves to the new process.
    let mut udp = turn_client(&env.topo.client, env.server(), PASSWORD);
    udp.allocate().expect("UDP allocate");
    udp.channel_bind(CHANNEL, peer).expect("UDP channel bind");
    // A TURN-over-TLS session and a TURN-over-TCP one, open across the upgrade.
    let mut tls = env.tls_client();
    let tls_relayed = tls.allocate().expect("allocate over TLS");
    tls.channel_bind(CHANNEL, peer).expect("TLS channel bind");
    echoes(&mut tls, "tls before", 5);
    let mut tcp: StreamClient<TcpStream> = env.tcp_client(3478);
    let tcp_relayed = tcp.allocate().expect("allocate over TCP");
    tcp.channel_bind(CHANNEL, peer).expect("TCP channel bind");
    echoes(&mut tcp, "tcp before", 5);
    // An RFC 6062 TCP allocation with a peer connection spliced to its data connection.
    let (mut control, mut data) = tcp_allocation_to_echo(&env);
    raw_echo(&mut data, b"spliced before");

    let _new = upgrade(&env);
    let took_over = env
        .relay
        .wait_for_log("took over from the previous process", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(field(&took_over, "allocations"), Some("1"), "{took_over}");
    assert!(alive(old_pid), "the old process left with connections open");

    // The open sessions keep relaying, through the old process, and keep their
    // allocations (a Refresh on the same connection passes).
    echoes(&mut tls, "tls after", 20);
    echoes(&mut tcp, "tcp after", 20);
    tls.refresh(600)
        .expect("Refresh over the old TLS connection");
    tcp.refresh(600)
        .expect("Refresh over the old TCP connection");
    raw_echo(&mut data, b"spliced after the upgrade");
    control
        .refresh(600)
        .expect("Refresh of the TCP allocation after the upgrade");

    // The admin endpoint is the new process's: generation 2, none of the old
    // connections. A new TLS connection is served there.
    let status = admin(&env, "/api/status");
    assert!(status.contains("\"generation\":2"), "{status}");
    let metrics = admin(&env, "/metrics");
    assert_eq!(metric(&metrics, "relay_tcp_connections_open"), 0);
    // Its port pool counts the UDP allocation's port and, quarantined, the three the old
    // process's TLS, TCP and RFC 6062 allocations hold: it does not hand them out
    // meanwhile.
    assert_eq!(
        metric(&metrics, "relay_ports_in_use{family=\"ipv4\"}"),
        4,
        "{metrics}"
    );
    let mut fresh = env.tls_client();
    let fresh_relayed = fresh
        .allocate()
        .expect("allocate over a new TLS connection");
    fresh.channel_bind(CHANNEL, peer).expect("channel bind");
    echoes(&mut fresh, "new tls", 5);
    assert_eq!(
        metric(&admin(&env, "/metrics"), "relay_tcp_connections_open"),
        1,
        "the new TLS connection is not the new process's"
    );
    // The old process's relay ports are not handed out again while it holds them.
    assert_ne!(fresh_relayed.port(), tls_relayed.port());
    assert_ne!(fresh_relayed.port(), tcp_relayed.port());

    // The UDP allocation is the new process's.
    udp.refresh(600).expect("UDP Refresh after the upgrade");
    udp.send_channel_data(CHANNEL, b"udp after").unwrap();
    let got = udp.recv_data(Duration::from_secs(5)).expect("UDP echo");
    assert_eq!(got.data, b"udp after");

    // The old process serves until its last connection ends, then exits.
    drop(tls);
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        alive(old_pid),
        "the old process left with a TCP connection open"
    );
    echoes(&mut tcp, "tcp alone", 5);
    drop(tcp);
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        alive(old_pid),
        "the old process left with a TCP allocation open"
    );
    raw_echo(&mut data, b"spliced alone");
    drop(data);
    drop(control);
    let took = wait_exit(old_pid, EXIT_WAIT);
    env.relay
        .wait_for_log(
            "the last TCP/TLS connection of the old process ended",
            LOG_WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("old process exited {took:?} after its last connection closed");
    // The new process goes on.
    echoes(&mut fresh, "new tls after the old exit", 5);
}

#[test]
fn the_old_process_closes_what_is_left_after_the_drain_timeout() {
    const DRAIN: u64 = 3;
    let env = start("epoll", DRAIN);
    let peer = env.media_peer();
    let old_pid = env.relay.pid();
    let mut tls = env.tls_client();
    tls.allocate().expect("allocate over TLS");
    tls.channel_bind(CHANNEL, peer).expect("TLS channel bind");

    let _new = upgrade(&env);
    let handed = Instant::now();
    echoes(&mut tls, "tls after", 10);
    let took = wait_exit(old_pid, Duration::from_secs(DRAIN) + EXIT_WAIT);
    let lingered = handed.elapsed();
    assert!(
        lingered >= Duration::from_secs(DRAIN),
        "the old process left after {lingered:?}, before limits.drain_timeout"
    );
    env.relay
        .wait_for_log("drain timeout passed", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("old process exited {lingered:?} after the handover ({took:?} of waiting)");
    // Its connection ended with it; the client reconnects to the new process.
    assert!(tls.read_frame().is_err(), "the old connection still open");
    let mut again = env.tls_client();
    again.allocate().expect("allocate after reconnecting");
    again.channel_bind(CHANNEL, peer).expect("channel bind");
    echoes(&mut again, "reconnected", 5);
    // The old allocation's port, quarantined in the new process for the drain timeout
    // and a margin, goes back to its pool: only the new allocation's is in use then.
    let deadline = handed + Duration::from_secs(DRAIN) + QUARANTINE_MARGIN + LOG_WAIT;
    let in_use = || {
        metric(
            &admin(&env, "/metrics"),
            "relay_ports_in_use{family=\"ipv4\"}",
        )
    };
    while in_use() != 1 {
        assert!(
            Instant::now() < deadline,
            "relay ports in use stay {} after the quarantine",
            in_use()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
