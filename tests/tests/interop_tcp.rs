//! TURN over TCP and TLS end to end, through the deployment of CONTEXT.md: internet
//! clients reach the relay's public NAT address on TCP 3478 and on 443 (plain TCP and TLS
//! on one port), relaying goes over UDP to the media server's echo peer. coturn's
//! `turnutils_uclient -t`/`-S` and this crate's stream client drive it, on the io_uring
//! loop and on the epoll fallback (chosen by config, and forced by a seccomp filter that
//! forbids io_uring).
//!
//! Needs root, `coturn` (Debian package) and `target/debug/relay`.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use relay_proto::stun::{Class, Message, MessageWriter, Method};
use relay_tests::{
    Addresses, Netns, TopologyOptions,
    coturn::{Uclient, UclientRun},
    fixture::{
        Deployment, Listen, PASSWORD, RelayConfig, STREAM_TIMEOUT, UCLIENT_TIMEOUT, USER,
        start_tls_relay,
    },
    page::PageRun,
    read_uninterrupted,
    relay::field,
    seccomp,
    stream_client::{StreamClient, connect_tcp, connect_tcp_from},
    turn_client::new_txid,
};

const LOG_WAIT: Duration = Duration::from_secs(5);
const CHANNEL: u16 = 0x4000;

/// Knobs of the deployment config that the tests vary.
#[derive(Clone, Copy)]
struct Cfg {
    engine: &'static str,
    max_allocations: usize,
    per_source: u32,
    handshake_timeout: u64,
    idle_timeout: u64,
    /// `[tcp] relay_tcp`: RFC 6062 TCP allocations offered.
    relay_tcp: bool,
    /// `[limits] unauthenticated_rate` and `unauthenticated_global_rate`, both set to it;
    /// `None`: the relay's defaults.
    unauthenticated_rate: Option<u32>,
    /// `[tcp] workers`; `None`: the relay's default (one per CPU).
    workers: Option<usize>,
    /// `[log] level`; `None`: the relay's default.
    log_level: Option<&'static str>,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg {
            engine: "auto",
            max_allocations: 1800,
            per_source: 1000,
            handshake_timeout: 10,
            idle_timeout: 60,
            relay_tcp: false,
            unauthenticated_rate: None,
            workers: None,
            log_level: None,
        }
    }
}

/// Listeners on both NICs (UDP and TCP 3478), 443 on the external one for `turn:` over
/// TCP and `turns:` at once; relay ports on the external NIC, the NAT address advertised.
fn config(a: &Addresses, cfg: Cfg) -> String {
    let mut listen = Listen::both_nics(a, 3478, &["udp", "tcp"]);
    listen.push(Listen::new(a.relay_external, 443, &["tcp", "tls"]));
    config_with(a, cfg, listen)
}

fn config_with(a: &Addresses, cfg: Cfg, listen: Vec<Listen>) -> String {
    RelayConfig {
        listen,
        tls: true,
        sections: format!(
            r#"[limits]
max_allocations = {max}
{rate}

[tcp]
engine = "{engine}"
max_connections_per_source = {per_source}
handshake_timeout = {handshake}
idle_timeout = {idle}
relay_tcp = {relay_tcp}
{workers}
[xdp]
mode = "off"
{log}
"#,
            max = cfg.max_allocations,
            engine = cfg.engine,
            per_source = cfg.per_source,
            handshake = cfg.handshake_timeout,
            idle = cfg.idle_timeout,
            relay_tcp = cfg.relay_tcp,
            workers = cfg
                .workers
                .map(|n| format!("workers = {n}\n"))
                .unwrap_or_default(),
            log = cfg
                .log_level
                .map(|l| format!("[log]\nlevel = \"{l}\"\n"))
                .unwrap_or_default(),
            rate = cfg
                .unauthenticated_rate
                .map(|r| format!("unauthenticated_rate = {r}\nunauthenticated_global_rate = {r}"))
                .unwrap_or_default(),
        ),
        ..RelayConfig::deployment(a)
    }
    .to_string()
}

fn start(cfg: Cfg) -> Deployment {
    start_with(cfg, false)
}

/// `no_io_uring`: the relay runs under a seccomp filter that fails io_uring with EPERM.
fn start_with(cfg: Cfg, no_io_uring: bool) -> Deployment {
    // Thousands of sockets in one test process: lift the soft open-files limit.
    relay_sys::limits::raise_nofile();
    Deployment::start_tls(TopologyOptions::default(), |topo, leaf| {
        let conf = config(&topo.addrs, cfg);
        let start = || start_tls_relay(&topo.relay, &conf, leaf);
        if no_io_uring {
            seccomp::without_io_uring(start).expect("seccomp filter")
        } else {
            start()
        }
    })
}

/// uclient as an internet client over TCP (`tls`: TLS) to `port` of the NAT address.
fn uclient(env: &Deployment, port: u16, tls: bool) -> Uclient {
    let mut u = env.uclient();
    u.port = port;
    u.tcp = true;
    u.tls = tls;
    u.clients = 4;
    u.messages = 20;
    u
}

/// [`uclient`] with TCP relays (`-T`, which implies `-t -y -c`): the clients are each
/// other's peers.
fn uclient_tcp_relays(env: &Deployment, port: u16, tls: bool) -> Uclient {
    let mut u = uclient(env, port, tls);
    u.peer = None;
    u.peer_port = None;
    u.extra.push("-T".into());
    u
}

/// The deployment with the TCP/TLS loop on `engine`: "io_uring" (what `auto` picks on
/// this kernel) or "epoll" (chosen by config).
fn start_on(engine: &str) -> Deployment {
    let env = start(Cfg {
        engine: if engine == "epoll" { "epoll" } else { "auto" },
        // The RFC 6062 tests run on both engines.
        relay_tcp: true,
        ..Cfg::default()
    });
    assert_eq!(engine_in_use(&env), engine, "{}", env.relay.logs());
    env
}

/// The engine line the relay logged.
fn engine_in_use(env: &Deployment) -> String {
    env.relay
        .wait_for_log("TCP/TLS event loop running", LOG_WAIT)
        .ok()
        .and_then(|l| field(&l, "engine").map(str::to_owned))
        .unwrap_or_default()
}

/// Runs `u` from the client host without loss; its allocations were made over
/// `transport` and advertised the NAT address.
fn run_over(env: &Deployment, u: &Uclient, transport: &str) -> UclientRun {
    let run = env.run_lossless(&env.topo.client, u);
    let created = env.relay.log_lines("allocation created");
    let over: Vec<&String> = created
        .iter()
        .filter(|l| l.contains(&format!("client={transport} ")))
        .collect();
    assert!(
        !over.is_empty(),
        "no allocation over {transport}\n{}",
        env.context(&run)
    );
    let public = env.addrs().public.to_string();
    for l in over {
        let relayed = field(l, "relayed").unwrap_or("");
        assert!(
            relayed.starts_with(&format!("{public}:")),
            "relayed address is not the NAT address: {l}"
        );
    }
    run
}

// ---------------------------------------------------------------------------------------
// coturn's uclient over TCP and TLS, through the NAT to the media host's echo peer

#[test]
fn uclient_tcp_3478_channels_and_send_indications() {
    let env = start_on("io_uring").with_media_peer();
    // Channels, with RTCP allocations (EVEN-PORT / RESERVATION-TOKEN) over TCP as well.
    run_over(&env, &uclient(&env, 3478, false), "tcp");
    // Send/Data indications.
    let mut u = uclient(&env, 3478, false);
    u.send_indications = true;
    u.no_rtcp = true;
    run_over(&env, &u, "tcp");
}

#[test]
fn uclient_tls_and_tcp_on_443() {
    let env = start(Cfg::default()).with_media_peer();
    run_over(&env, &uclient(&env, 443, true), "tls");
    // Plain TCP on the same port: the first byte tells them apart.
    run_over(&env, &uclient(&env, 443, false), "tcp");
}

#[test]
fn epoll_engine_by_config_serves_tcp_and_tls() {
    let env = start_on("epoll").with_media_peer();
    run_over(&env, &uclient(&env, 3478, false), "tcp");
    run_over(&env, &uclient(&env, 443, true), "tls");
}

#[test]
fn io_uring_forbidden_by_seccomp_falls_back_to_epoll() {
    let env = start_with(Cfg::default(), true).with_media_peer();
    assert_eq!(engine_in_use(&env), "epoll", "{}", env.relay.logs());
    let line = env
        .relay
        .wait_for_log("io_uring unavailable", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        line.contains("not permitted") && line.contains("seccomp"),
        "the reason should say io_uring was refused: {line}"
    );
    run_over(&env, &uclient(&env, 3478, false), "tcp");
    run_over(&env, &uclient(&env, 443, true), "tls");
}

// ---------------------------------------------------------------------------------------
// This crate's stream client

#[test]
fn pipelined_requests_to_a_late_reader_epoll() {
    pipelined_requests_to_a_late_reader("epoll");
}

#[test]
fn pipelined_requests_to_a_late_reader_io_uring() {
    pipelined_requests_to_a_late_reader("io_uring");
}

/// `engine`: "io_uring" (what `auto` picks on this kernel) or "epoll".
fn pipelined_requests_to_a_late_reader(engine: &'static str) {
    // Every request must be answered for the replies to back up: no per-source or global
    // limit on unauthenticated requests (they would drop the excess unanswered).
    let env = start(Cfg {
        engine: if engine == "epoll" { "epoll" } else { "auto" },
        unauthenticated_rate: Some(0),
        ..Cfg::default()
    });
    assert_eq!(engine_in_use(&env), engine, "{}", env.relay.logs());
    pipelined_and_late_reader(&env);
}

/// Many requests written back to back in chunks that cut frames anywhere, by a client
/// that reads nothing until the relay stops taking them: the relay must stop reading while
/// its replies wait (backpressure), and every reply must still arrive, in order.
///
/// The client writes without blocking until its socket stays unwritable for
/// [`STALL`] (the relay stopped reading: its queue, both sockets' buffers and the client's
/// send buffer are full) or until it has written [`UNBOUNDED`] bytes, more than every
/// buffer on the way can hold (the relay kept reading: it would queue replies without
/// limit for a client that never reads them).
fn pipelined_and_late_reader(env: &Deployment) {
    /// Requests written per batch (28 bytes each).
    const BATCH: usize = 1000;
    /// Above the kernel's largest autotuned buffers (tcp_rmem and tcp_wmem maxima, 32 and
    /// 4 MiB here) plus the relay's own queues, on both sides.
    const UNBOUNDED: usize = 96 << 20;
    const STALL: Duration = Duration::from_secs(2);
    const DEADLINE: Duration = Duration::from_secs(60);
    let mut c = env.tcp_client(3478);
    let mut ids = Vec::new();
    let mut pending = Vec::with_capacity(BATCH * 28);
    let (mut at, mut written) = (0, 0);
    let mut buf = [0u8; 64];
    c.stream.set_nonblocking(true).expect("non-blocking");
    let started = Instant::now();
    let stalled = loop {
        if at == pending.len() {
            if written >= UNBOUNDED || started.elapsed() > DEADLINE {
                break false;
            }
            pending.clear();
            at = 0;
            for _ in 0..BATCH {
                let txid = new_txid();
                let mut w =
                    MessageWriter::new(&mut buf, Class::Request, Method::BINDING, txid).unwrap();
                w.fingerprint().unwrap();
                let n = w.finish();
                pending.extend_from_slice(&buf[..n]);
                ids.push(txid);
            }
        }
        let end = (at + 997).min(pending.len());
        match c.stream.write(&pending[at..end]) {
            Ok(n) => {
                at += n;
                written += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !writable_within(&c.stream, STALL) {
                    break true;
                }
            }
            Err(e) => panic!("write requests after {written} bytes: {e}"),
        }
    };
    assert!(
        stalled,
        "the client wrote {written} bytes of requests in {:?} without reading a reply, and the \
         relay kept reading them: it must stop reading a client that does not read",
        started.elapsed()
    );
    c.stream.set_nonblocking(false).expect("blocking");
    // The rest of the batch (a frame may be cut) goes out once the relay reads again.
    let mut writer = c.stream.try_clone().expect("clone socket");
    let rest = pending.split_off(at);
    let t = std::thread::spawn(move || writer.write_all(&rest).expect("write the rest"));
    for (i, txid) in ids.iter().enumerate() {
        let f = c
            .read_frame()
            .unwrap_or_else(|e| panic!("reply {i} of {}: {e}\n{}", ids.len(), env.relay.logs()));
        let m = Message::parse(&f).expect("reply parses");
        assert_eq!(m.transaction_id(), *txid, "reply {i} out of order");
        assert_eq!(m.class(), Class::Success);
    }
    t.join().expect("writer");
    eprintln!(
        "relay stopped reading after {written} bytes ({} requests); all replies arrived in order",
        ids.len()
    );
}

/// Whether `stream` becomes writable within `wait` (poll(2) on POLLOUT).
fn writable_within(stream: &TcpStream, wait: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, for the duration of the call.
    let n = unsafe { libc::poll(&mut fd, 1, ms) };
    assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
    n == 1 && fd.revents & libc::POLLOUT != 0
}

#[test]
fn thousands_of_connections_and_allocations_keep_working() {
    const N: usize = 5000;
    const BATCH: usize = 200;
    let env = start(Cfg {
        max_allocations: N + 100,
        per_source: N as u32 + 100,
        // All from one address, as fast as the relay answers.
        unauthenticated_rate: Some(0),
        ..Cfg::default()
    })
    .with_media_peer();
    let peer = env.media_peer();
    let started = Instant::now();
    let mut first = env.tcp_client(3478);
    first.allocate().expect("first allocation");
    let (realm, nonce) = first.credentials().expect("learnt realm and nonce");
    drop(first);
    let server = SocketAddr::from((env.addrs().public, 3478));
    let mut clients: Vec<StreamClient<TcpStream>> = env
        .topo
        .client
        .run(move || {
            (0..N)
                .map(|i| {
                    let s = connect_tcp(server, STREAM_TIMEOUT)
                        .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                    let mut c = StreamClient::new(s, USER, PASSWORD);
                    c.prime(&realm, &nonce);
                    c
                })
                .collect()
        })
        .expect("enter namespace");
    let connected = started.elapsed();

    // Lockstep: every request written, then every response read.
    let ctx =
        |what: &str, i: usize, e: &dyn std::fmt::Display| format!("{what} on connection {i}: {e}");
    let ids: Vec<_> = clients
        .iter_mut()
        .map(|c| c.write_allocate().expect("write Allocate"))
        .collect();
    for (i, (c, id)) in clients.iter_mut().zip(ids).enumerate() {
        let resp = c
            .read_response(id)
            .unwrap_or_else(|e| panic!("{}", ctx("Allocate", i, &e)));
        c.take_allocation(&resp)
            .unwrap_or_else(|e| panic!("{}", ctx("Allocate", i, &e)));
    }
    let ids: Vec<_> = clients
        .iter_mut()
        .map(|c| {
            c.write_channel_bind(CHANNEL, peer)
                .expect("write ChannelBind")
        })
        .collect();
    for (i, (c, id)) in clients.iter_mut().zip(ids).enumerate() {
        let resp = c
            .read_response(id)
            .unwrap_or_else(|e| panic!("{}", ctx("ChannelBind", i, &e)));
        c.check(Method::CHANNEL_BIND, &resp)
            .unwrap_or_else(|e| panic!("{}", ctx("ChannelBind", i, &e)));
    }
    let allocated = started.elapsed();
    let mut relayed: Vec<SocketAddr> = clients.iter().filter_map(|c| c.relayed).collect();
    relayed.sort();
    relayed.dedup();
    assert_eq!(
        relayed.len(),
        N,
        "every allocation has its own relayed address"
    );

    // Two rounds of echo through every allocation, a few seconds apart. Odd payload
    // lengths: ChannelData padding both ways. Batches keep the echo peer's socket buffer
    // from overflowing (that would be the test's loss, not the relay's).
    for round in 0..2 {
        if round > 0 {
            std::thread::sleep(Duration::from_secs(2));
        }
        for (b, chunk) in clients.chunks_mut(BATCH).enumerate() {
            for (j, c) in chunk.iter_mut().enumerate() {
                let msg = format!("r{round}-c{}", b * BATCH + j);
                c.send_channel_data(CHANNEL, msg.as_bytes()).expect("send");
            }
            for (j, c) in chunk.iter_mut().enumerate() {
                let i = b * BATCH + j;
                let want = format!("r{round}-c{i}");
                let got = c
                    .recv_data()
                    .unwrap_or_else(|e| panic!("{}", ctx("echo", i, &e)));
                assert_eq!(got.channel, Some(CHANNEL), "connection {i}");
                assert_eq!(got.data, want.as_bytes(), "connection {i}");
            }
        }
    }
    let echoed = started.elapsed();
    assert!(env.relay.unexpected_stop().is_none());
    assert!(
        env.relay
            .wait_for_lines(
                "allocation created",
                |_| true,
                N + 1,
                Duration::from_secs(10)
            )
            .len()
            > N,
        "allocation lines"
    );

    // Closing the connections ends their allocations (the 5-tuple is gone).
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(15);
    let closed = loop {
        let n = env
            .relay
            .log_lines("allocation closed")
            .iter()
            .filter(|l| l.contains("client connection closed"))
            .count();
        if n > N || Instant::now() >= deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // The N, and the first connection that learnt the nonce.
    assert_eq!(closed, N + 1, "allocations ended with their connections");
    eprintln!(
        "{N} connections: connected in {connected:?}, allocated+bound by {allocated:?}, \
         two echo rounds by {echoed:?}, all closed by {:?}",
        started.elapsed()
    );
}

#[test]
fn per_source_limit_and_handshake_timeout_against_slowloris() {
    let env = start(Cfg {
        per_source: 3,
        handshake_timeout: 2,
        ..Cfg::default()
    });
    let server = SocketAddr::from((env.addrs().public, 3478));
    // Three silent connections (a slowloris holding sockets), then a fourth.
    let mut socks: Vec<TcpStream> = env
        .topo
        .client
        .run(move || {
            (0..4)
                .map(|_| connect_tcp(server, STREAM_TIMEOUT).expect("connect"))
                .collect()
        })
        .expect("enter namespace");
    let mut fourth = socks.pop().expect("four");
    let mut b = [0u8; 16];
    let r = read_uninterrupted(&mut fourth, &mut b);
    assert!(
        matches!(r, Ok(0) | Err(_))
            && !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the fourth connection from one source must be closed at once: {r:?}"
    );
    env.relay
        .wait_for_log("tcp.max_connections_per_source", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    // The silent ones are closed by the handshake timeout (2 s, swept every second).
    let t0 = Instant::now();
    for (i, s) in socks.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        let r = read_uninterrupted(s, &mut b);
        assert!(
            matches!(r, Ok(0))
                || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "silent connection {i} not closed: {r:?}\n{}",
            env.relay.logs()
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(6));
    // Their slots are free again.
    let mut c = env.tcp_client(3478);
    c.allocate()
        .unwrap_or_else(|e| panic!("allocation after the sweep: {e}\n{}", env.relay.logs()));
}

#[test]
fn tls_certificate_reloads_without_restart() {
    let env = start(Cfg::default());
    let a = env.addrs();
    let leaf_a_der = {
        let c = env.tls_client();
        c.stream.conn.peer_certificates().expect("certificate")[0].clone()
    };
    let mut old = env.tls_client();
    old.allocate().expect("allocate over TLS");
    assert_eq!(old.stream.conn.peer_certificates().unwrap()[0], leaf_a_der);

    // Renew: new key and certificate, written the way certbot does (rename into place).
    let ca = env.ca.as_ref().expect("a TLS deployment");
    let leaf_b = ca.leaf("relay-b", &[&a.public.to_string()]);
    let dir = env
        .relay
        .config_path()
        .parent()
        .expect("config dir")
        .to_owned();
    for (name, pem) in [
        ("key.pem", &leaf_b.key_pem),
        ("cert.pem", &leaf_b.chain_pem),
    ] {
        let tmp = dir.join(format!("{name}.new"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
    env.relay
        .wait_for_log("TLS certificate reloaded", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    let new = env.tls_client();
    let served = new.stream.conn.peer_certificates().expect("certificate")[0].clone();
    assert_eq!(
        served, leaf_b.der,
        "new connections get the renewed certificate"
    );
    assert_ne!(served, leaf_a_der);
    // The connection made before keeps working, with its allocation.
    old.refresh(600)
        .unwrap_or_else(|e| panic!("refresh on the old connection: {e}"));
    // No worker restarted: one loop started per `[tcp] workers` (one per CPU here).
    let line = env
        .relay
        .wait_for_log("answering TURN over TCP", Duration::ZERO)
        .unwrap_or_else(|e| panic!("{e}"));
    let workers: usize = field(&line, "workers").expect("workers").parse().unwrap();
    assert_eq!(
        env.relay.log_lines("TCP/TLS event loop running").len(),
        workers
    );
}

#[test]
fn stream_framing_padding_and_bad_bytes() {
    let env = start(Cfg::default()).with_media_peer();
    let peer = env.media_peer();
    let mut c = env.tcp_client(3478);
    c.allocate().expect("allocate");
    c.channel_bind(CHANNEL, peer).expect("channel bind");
    // Every payload length modulo 4, each message written one byte at a time.
    for len in 1..=9usize {
        let payload: Vec<u8> = (0..len as u8).collect();
        let mut frame = vec![0u8; len + 8];
        let n = relay_proto::stun::write_channel_data(&mut frame, CHANNEL, &payload, true).unwrap();
        for byte in &frame[..n] {
            c.write_all(std::slice::from_ref(byte)).unwrap();
        }
        let got = c.recv_data().expect("echo");
        assert_eq!(got.data, payload, "payload of {len} bytes");
    }
    // A Send indication works too (the peer has a permission through the channel).
    c.send_indication(peer, b"indication").unwrap();
    assert_eq!(c.recv_data().expect("echo").data, b"indication");
    // Garbage (neither STUN nor ChannelData): the relay closes the connection.
    c.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
    let r = c.read_frame();
    assert!(r.is_err(), "connection not closed after garbage: {r:?}");
    let line = env
        .relay
        .wait_for_log("not STUN or ChannelData framing", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        line.contains(&format!("client=tcp {}:", env.addrs().client)),
        "{line}"
    );
    // Its allocation ended with it.
    env.relay
        .wait_for_log("client connection closed", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn tls_client_through_nat_relays_to_media_peer() {
    let env = start(Cfg::default()).with_media_peer();
    let peer = env.media_peer();
    let mut c = env.tls_client();
    let relayed = c.allocate().expect("allocate over TLS");
    assert_eq!(relayed.ip(), IpAddr::V4(env.addrs().public));
    assert_eq!(
        c.mapped.map(|m| m.ip()),
        Some(IpAddr::V4(env.addrs().client))
    );
    c.channel_bind(CHANNEL, peer).expect("channel bind");
    for i in 0..50 {
        let msg = format!("tls message {i}");
        c.send_channel_data(CHANNEL, msg.as_bytes()).unwrap();
        assert_eq!(c.recv_data().expect("echo").data, msg.as_bytes());
    }
    c.refresh(0).expect("delete");
    let line = env
        .relay
        .wait_for_log("allocation deleted by client", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("client=tls "), "{line}");
    assert_eq!(field(&line, "to_peer_packets"), Some("50"), "{line}");
}

// ---------------------------------------------------------------------------------------
// A browser with only a `turns:` server on 443

#[test]
fn chromium_data_channel_with_only_turns_on_443() {
    const MESSAGES: usize = 5;
    let env = Deployment::start_tls(
        TopologyOptions {
            nat_reflection: false,
        },
        |topo, leaf| {
            let a = topo.addrs;
            // Nothing but TLS on 443: no UDP, no plain TCP.
            let config = RelayConfig {
                listen: vec![Listen::new(a.relay_external, 443, &["tls"])],
                peers_allow: Vec::new(),
                tls: true,
                sections: "[xdp]\nmode = \"off\"\n".to_owned(),
                ..RelayConfig::deployment(&a)
            };
            start_tls_relay(&topo.relay, &config.to_string(), leaf)
        },
    );
    let public = env.addrs().public;
    // The test CA is not in the browser's trust store.
    let page = PageRun::data_channel(
        &env.topo.client,
        &env.relay,
        &format!("turns:{public}:443?transport=tcp"),
        MESSAGES,
        &["--ignore-certificate-errors"],
    );
    for pc in ["pc1.local", "pc2.local"] {
        let c = page.report.get(pc).unwrap_or("");
        assert!(
            c.starts_with(&format!("relay {public} ")) && c.ends_with(" tls"),
            "{pc}={c}: want a relay candidate on the public address over TLS\n{}",
            page.failure(pc, &env.relay)
        );
    }
    let over_tls = env
        .relay
        .wait_for_lines(
            "allocation created",
            |l| l.contains("client=tls "),
            2,
            Duration::from_secs(5),
        )
        .len();
    assert!(
        over_tls >= 2,
        "{}",
        page.failure("allocations over TLS", &env.relay)
    );
}

// ---------------------------------------------------------------------------------------
// RFC 6062 TCP allocations: Connect, ConnectionBind, ConnectionAttempt

const TCP_ECHO_PORT: u16 = 3481;

/// A TCP echo server on the media host: every accepted connection gets its bytes back.
/// Stops accepting when dropped; connection threads end on EOF or a read timeout.
struct TcpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpEcho {
    fn start(ns: &Netns, addr: SocketAddr) -> TcpEcho {
        let listener = ns
            .run(move || std::net::TcpListener::bind(addr))
            .expect("enter namespace")
            .unwrap_or_else(|e| panic!("bind echo {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        std::thread::spawn(move || echo(s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TcpEcho {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn echo(mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(UCLIENT_TIMEOUT));
    let mut buf = [0u8; 16 * 1024];
    loop {
        match read_uninterrupted(&mut s, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Allocate with REQUESTED-TRANSPORT TCP on the control connection.
fn allocate_tcp(c: &mut StreamClient<TcpStream>) -> SocketAddr {
    let resp = c
        .transact(Method::ALLOCATE, &|w| {
            w.attr(&relay_proto::stun::RequestedTransport::TCP)?;
            Ok(())
        })
        .unwrap_or_else(|e| panic!("TCP Allocate: {e}"));
    c.take_allocation(&resp).expect("relayed address")
}

fn connection_id(resp: &[u8]) -> u32 {
    let msg = Message::parse(resp).expect("parse");
    msg.attr::<relay_proto::stun::ConnectionId>()
        .and_then(Result::ok)
        .map(|c| c.0)
        .expect("CONNECTION-ID")
}

/// Connect (RFC 6062) from the allocation on `control` to `peer`: the CONNECTION-ID of the
/// peer connection the relay opened.
fn connect(env: &Deployment, control: &mut StreamClient<TcpStream>, peer: SocketAddr) -> u32 {
    let resp = control
        .transact(Method::CONNECT, &|w| {
            w.attr(&relay_proto::stun::XorPeerAddress(peer))?;
            Ok(())
        })
        .unwrap_or_else(|e| panic!("Connect {peer}: {e}\n{}", env.relay.logs()));
    connection_id(&resp)
}

/// A new connection from the client host that binds peer connection `conn` to itself;
/// afterwards it carries raw bytes.
fn connection_bind(env: &Deployment, control: &StreamClient<TcpStream>, conn: u32) -> TcpStream {
    let mut data = env.tcp_client(3478);
    let (realm, nonce) = control.credentials().expect("credentials");
    data.prime(&realm, &nonce);
    data.write_request(Method::CONNECTION_BIND, &|w| {
        w.attr(&relay_proto::stun::ConnectionId(conn))?;
        Ok(())
    })
    .expect("write ConnectionBind");
    // Read exactly the response: the peer's bytes may follow it in the same segment.
    let mut resp = vec![0u8; 20];
    data.stream
        .read_exact(&mut resp)
        .unwrap_or_else(|e| panic!("ConnectionBind response: {e}\n{}", env.relay.logs()));
    let body = usize::from(u16::from_be_bytes([resp[2], resp[3]]));
    resp.resize(20 + body, 0);
    data.stream
        .read_exact(&mut resp[20..])
        .expect("response body");
    data.check(Method::CONNECTION_BIND, &resp)
        .unwrap_or_else(|e| panic!("ConnectionBind: {e}\n{}", env.relay.logs()));
    data.stream
}

/// Writes `total` patterned bytes on `s` from another thread while reading what comes
/// back; returns whether the echo matched byte for byte. Several times the relay's
/// high-water mark, so both directions hit backpressure.
fn echo_round_trip(s: &TcpStream, total: usize) -> Result<(), String> {
    let pattern = |i: usize| (i % 251) as u8;
    let mut writer = s.try_clone().map_err(|e| e.to_string())?;
    let w = std::thread::spawn(move || {
        let chunk: Vec<u8> = (0..total).map(pattern).collect();
        for part in chunk.chunks(7919) {
            writer.write_all(part)?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut reader = s.try_clone().map_err(|e| e.to_string())?;
    let mut got = 0usize;
    let mut buf = [0u8; 32 * 1024];
    while got < total {
        let n = read_uninterrupted(&mut reader, &mut buf)
            .map_err(|e| format!("read after {got} of {total} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("EOF after {got} of {total} bytes"));
        }
        for (k, b) in buf[..n].iter().enumerate() {
            if *b != pattern(got + k) {
                return Err(format!("byte {} differs", got + k));
            }
        }
        got += n;
    }
    w.join()
        .map_err(|_| "writer panicked".to_string())?
        .map_err(|e| format!("write: {e}"))
}

/// Connect to the media host's echo, bind it, a megabyte both ways; then the media host
/// connects to the relayed address, the client hears a ConnectionAttempt, binds it and
/// talks to that peer; closing the peer closes the data connection.
fn tcp_relay_connect_bind_and_attempt(env: &Deployment) {
    let a = env.addrs();
    let _echo = TcpEcho::start(&env.topo.media, (a.media, TCP_ECHO_PORT).into());
    let mut control = env.tcp_client(3478);
    let relayed = allocate_tcp(&mut control);
    assert_eq!(
        relayed.ip(),
        IpAddr::from(a.public),
        "relayed is the NAT address"
    );

    // Outgoing: Connect, then ConnectionBind on a second connection.
    let peer: SocketAddr = (a.media, TCP_ECHO_PORT).into();
    let conn = connect(env, &mut control, peer);
    let data = connection_bind(env, &control, conn);
    echo_round_trip(&data, 1 << 20)
        .unwrap_or_else(|e| panic!("echo through the relay: {e}\n{}", env.relay.logs()));
    drop(data);

    // A peer that refuses: 447, and the allocation carries on.
    let closed: SocketAddr = (a.media, TCP_ECHO_PORT + 1).into();
    let refused = control.transact(Method::CONNECT, &|w| {
        w.attr(&relay_proto::stun::XorPeerAddress(closed))?;
        Ok(())
    });
    assert_eq!(
        refused.as_ref().err().and_then(|e| e.code()),
        Some(447),
        "Connect to a closed port: {refused:?}\n{}",
        env.relay.logs()
    );

    // Incoming: the media host (permitted since the Connect) dials the relayed port.
    let relay_addr: SocketAddr = (a.relay_external, relayed.port()).into();
    let mut peer_side = env
        .topo
        .media
        .run(move || connect_tcp(relay_addr, STREAM_TIMEOUT))
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("peer connect to {relay_addr}: {e}"));
    let attempt = loop {
        let f = control
            .read_frame()
            .unwrap_or_else(|e| panic!("waiting for ConnectionAttempt: {e}\n{}", env.relay.logs()));
        let msg = Message::parse(&f).expect("STUN");
        if msg.method() == Method::CONNECTION_ATTEMPT && msg.class() == Class::Indication {
            let from = msg
                .attr::<relay_proto::stun::XorPeerAddress>()
                .and_then(Result::ok)
                .map(|p| p.0)
                .expect("XOR-PEER-ADDRESS");
            assert_eq!(
                from.ip(),
                IpAddr::from(a.media),
                "attempt names the media host"
            );
            break connection_id(&f);
        }
    };
    // Bytes the peer sends before the bind wait in the relay, unread.
    peer_side.write_all(b"early ").expect("peer write");
    let mut data = connection_bind(env, &control, attempt);
    data.write_all(b"hello peer").expect("client write");
    let mut got = [0u8; 10];
    peer_side.read_exact(&mut got).expect("peer read");
    assert_eq!(&got, b"hello peer");
    peer_side.write_all(b"hello client").expect("peer write");
    let mut got = [0u8; 18];
    data.read_exact(&mut got).expect("client read");
    assert_eq!(&got, b"early hello client");
    // The peer leaves: the data connection follows.
    drop(peer_side);
    let mut rest = [0u8; 1];
    let n = data.read(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "data connection closed after the peer left");
    // The control connection and its allocation are still fine.
    control
        .refresh(600)
        .expect("Refresh after the data connections ended");
}

#[test]
fn tcp_allocation_connect_bind_and_attempt_io_uring() {
    let env = start_on("io_uring");
    tcp_relay_connect_bind_and_attempt(&env);
}

#[test]
fn tcp_allocation_connect_bind_and_attempt_epoll() {
    let env = start_on("epoll");
    tcp_relay_connect_bind_and_attempt(&env);
}

/// Peers for [`data_connections_reach_their_allocation_on_any_worker`]: one echo each
/// (a Connect to a peer that has a connection already is 446).
const SPREAD_PEERS: u16 = 12;
const SPREAD_PEER_PORT: u16 = 3490;

/// `[tcp] workers = 2`: the kernel spreads connections by 4-tuple, so of twelve data
/// connections from one address (other source ports) some reach the worker without the
/// allocation (all on its owner: 2^-12) and move to the one that holds it. Every
/// ConnectionBind succeeds and bytes go both ways on each; half are TLS (the session moves
/// with the socket), half plain. The control connection stays usable.
fn data_connections_reach_their_allocation_on_any_worker(engine: &'static str) {
    let env = start(Cfg {
        engine: if engine == "epoll" { "epoll" } else { "auto" },
        relay_tcp: true,
        workers: Some(2),
        log_level: Some("info,relay_user::tcp=debug"),
        ..Cfg::default()
    });
    assert_eq!(engine_in_use(&env), engine, "{}", env.relay.logs());
    let a = env.addrs();
    let _echoes: Vec<TcpEcho> = (0..SPREAD_PEERS)
        .map(|i| TcpEcho::start(&env.topo.media, (a.media, SPREAD_PEER_PORT + i).into()))
        .collect();
    let mut control = env.tcp_client(3478);
    allocate_tcp(&mut control);
    let mut plain = Vec::new();
    let mut tls = Vec::new();
    for i in 0..SPREAD_PEERS {
        let peer: SocketAddr = (a.media, SPREAD_PEER_PORT + i).into();
        let conn = connect(&env, &mut control, peer);
        if i % 2 == 0 {
            plain.push(connection_bind(&env, &control, conn));
        } else {
            let mut data = env.tls_client();
            let (realm, nonce) = control.credentials().expect("credentials");
            data.prime(&realm, &nonce);
            data.transact(Method::CONNECTION_BIND, &|w| {
                w.attr(&relay_proto::stun::ConnectionId(conn))?;
                Ok(())
            })
            .unwrap_or_else(|e| panic!("ConnectionBind over TLS: {e}\n{}", env.relay.logs()));
            tls.push(data.stream);
        }
    }
    // Every data connection open at once, then bytes on each.
    for (i, data) in plain.iter().enumerate() {
        echo_round_trip(data, 256 * 1024)
            .unwrap_or_else(|e| panic!("plain data connection {i}: {e}\n{}", env.relay.logs()));
    }
    for (i, data) in tls.iter_mut().enumerate() {
        echo_in_steps(data, 64 * 1024)
            .unwrap_or_else(|e| panic!("TLS data connection {i}: {e}\n{}", env.relay.logs()));
    }
    let moved = env
        .relay
        .log_lines("RFC 6062 data connection moved to the worker");
    assert!(
        !moved.is_empty(),
        "no data connection reached the other worker (2^-12), or moves are not logged\n{}",
        env.relay.logs()
    );
    assert!(
        env.relay.log_lines("cannot move").is_empty(),
        "{}",
        env.relay.logs()
    );
    control
        .refresh(600)
        .expect("Refresh after the data connections");
}

/// Writes `total` patterned bytes in 4 KiB steps, reading each step's echo back before
/// the next (one thread: a TLS stream cannot be split).
fn echo_in_steps<S: Read + Write>(s: &mut S, total: usize) -> Result<(), String> {
    let pattern = |i: usize| (i % 251) as u8;
    let mut at = 0;
    while at < total {
        let step: Vec<u8> = (at..(at + 4096).min(total)).map(pattern).collect();
        s.write_all(&step)
            .map_err(|e| format!("write at {at}: {e}"))?;
        let mut got = vec![0u8; step.len()];
        s.read_exact(&mut got)
            .map_err(|e| format!("read at {at} of {total}: {e}"))?;
        if got != step {
            return Err(format!("bytes from {at} differ"));
        }
        at += step.len();
    }
    Ok(())
}

#[test]
fn data_connections_reach_their_allocation_on_any_worker_io_uring() {
    data_connections_reach_their_allocation_on_any_worker("io_uring");
}

#[test]
fn data_connections_reach_their_allocation_on_any_worker_epoll() {
    data_connections_reach_their_allocation_on_any_worker("epoll");
}

/// coturn's uclient with TCP relays (`-T`, which implies `-t -y -c`): each client
/// allocates a TCP relay, Connects to another client's relayed address (through the
/// relay's own public address), both sides bind their connections, and the messages go
/// round with no loss.
#[test]
fn uclient_tcp_relay_client_to_client() {
    let env = start_on("io_uring");
    let run = run_over(&env, &uclient_tcp_relays(&env, 3478, false), "tcp");
    let spliced = env.relay.wait_for_lines(
        "TCP peer connection spliced",
        |_| true,
        4,
        Duration::from_secs(5),
    );
    let outgoing = spliced.iter().filter(|l| l.contains("Outgoing")).count();
    let incoming = spliced.iter().filter(|l| l.contains("Incoming")).count();
    assert!(
        outgoing >= 2 && incoming >= 2,
        "peer connections spliced: {outgoing} outgoing, {incoming} incoming\n{}",
        env.context(&run)
    );
}

/// The same over TLS on 443 (`-T -S`), on the epoll loop: the data connections are TLS,
/// the peer side gets plaintext.
#[test]
fn uclient_tcp_relay_over_tls_on_epoll() {
    let env = start_on("epoll");
    let run = run_over(&env, &uclient_tcp_relays(&env, 443, true), "tls");
    let spliced = env.relay.wait_for_lines(
        "TCP peer connection spliced",
        |_| true,
        4,
        Duration::from_secs(5),
    );
    assert!(spliced.len() >= 4, "{}", env.context(&run));
}

// ---------------------------------------------------------------------------------------
// Hardening: RFC 6062 only when offered, Connect only to TCP allocations, large datagrams
// over TLS, slots held without authenticating

/// Allocate with REQUESTED-TRANSPORT TCP; the error code if refused.
fn try_allocate_tcp<S: Read + Write>(c: &mut StreamClient<S>) -> Result<SocketAddr, Option<u16>> {
    let resp = c
        .transact(Method::ALLOCATE, &|w| {
            w.attr(&relay_proto::stun::RequestedTransport::TCP)?;
            Ok(())
        })
        .map_err(|e| e.code())?;
    c.take_allocation(&resp).map_err(|e| e.code())
}

#[test]
fn tcp_allocations_are_442_until_relay_tcp_is_turned_on() {
    let env = start(Cfg::default());
    // The default: over TCP and over TLS, REQUESTED-TRANSPORT TCP is not offered.
    let mut tcp = env.tcp_client(3478);
    assert_eq!(
        try_allocate_tcp(&mut tcp),
        Err(Some(442)),
        "TCP allocation over TCP with relay_tcp unset\n{}",
        env.relay.logs()
    );
    let mut tls = env.tls_client();
    assert_eq!(
        try_allocate_tcp(&mut tls),
        Err(Some(442)),
        "TCP allocation over TLS with relay_tcp unset"
    );
    // UDP allocations on the same connection are unaffected.
    tcp.allocate().expect("UDP allocation over TCP");

    // Turned on by a reload, without a restart.
    let on = Cfg {
        relay_tcp: true,
        ..Cfg::default()
    };
    env.relay.rewrite_config(&config(&env.addrs(), on));
    env.relay.signal(libc::SIGHUP);
    let line = env
        .relay
        .wait_for_log("configuration reloaded", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        env.relay
            .log_lines("take effect only after a restart")
            .is_empty(),
        "relay_tcp is reloadable: {line}\n{}",
        env.relay.logs()
    );
    let mut c = env.tcp_client(3478);
    let relayed = try_allocate_tcp(&mut c).unwrap_or_else(|e| {
        panic!(
            "TCP allocation with relay_tcp on: {e:?}\n{}",
            env.relay.logs()
        )
    });
    assert_eq!(relayed.ip(), IpAddr::from(env.addrs().public));
    let mut c = env.tls_client();
    try_allocate_tcp(&mut c).expect("TCP allocation over TLS with relay_tcp on");
}

/// Connect from `c`'s TCP allocation to `peer`; the CONNECTION-ID or the error code.
fn try_connect(c: &mut StreamClient<TcpStream>, peer: SocketAddr) -> Result<u32, Option<u16>> {
    c.transact(Method::CONNECT, &|w| {
        w.attr(&relay_proto::stun::XorPeerAddress(peer))?;
        Ok(())
    })
    .map(|r| connection_id(&r))
    .map_err(|e| e.code())
}

#[test]
fn connect_to_the_relay_address_reaches_only_tcp_allocations() {
    let env = start(Cfg {
        relay_tcp: true,
        ..Cfg::default()
    });
    let a = env.addrs();
    // Something else of the relay host listens on a port of the relay range.
    let host_port = *relay_tests::fixture::RELAY_PORTS.end();
    let host_addr: SocketAddr = (a.relay_external, host_port).into();
    let host = env
        .topo
        .relay
        .run(move || std::net::TcpListener::bind(host_addr))
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("bind {host_addr}: {e}"));
    host.set_nonblocking(true).unwrap();

    let mut dialler = env.tcp_client(3478);
    allocate_tcp(&mut dialler);
    let mut target = env.tcp_client(3478);
    let target_relayed = allocate_tcp(&mut target);
    let mut udp = env.tcp_client(3478);
    let udp_relayed = udp.allocate().expect("UDP allocation");
    assert_ne!(
        target_relayed.port(),
        host_port,
        "the pool skipped a bound port"
    );

    // Refused: the host's listener (public and bind address) and a UDP allocation's port.
    for peer in [
        SocketAddr::new(a.public.into(), host_port),
        host_addr,
        udp_relayed,
    ] {
        let got = try_connect(&mut dialler, peer);
        assert_eq!(
            got,
            Err(Some(403)),
            "Connect to {peer}\n{}",
            env.relay.logs()
        );
    }
    let denied = env.relay.wait_for_lines(
        "no TCP allocation holds that port",
        |_| true,
        3,
        Duration::from_secs(5),
    );
    assert_eq!(
        denied.len(),
        3,
        "one refused-peer line each\n{}",
        env.relay.logs()
    );
    match host.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the host's listener got a connection: {other:?}"),
    }

    // Another TCP allocation is a peer: it permits the dialler's relayed address first.
    let dialler_relayed = dialler.relayed.expect("relayed");
    target
        .create_permission(&[dialler_relayed])
        .expect("permission");
    let conn = try_connect(&mut dialler, target_relayed)
        .unwrap_or_else(|e| panic!("Connect to a TCP allocation: {e:?}\n{}", env.relay.logs()));
    assert_ne!(conn, 0);
    let attempt = target.read_frame().expect("ConnectionAttempt");
    let msg = Message::parse(&attempt).expect("STUN");
    assert_eq!(msg.method(), Method::CONNECTION_ATTEMPT);
}

#[test]
fn a_tls_client_keeps_its_allocation_through_datagrams_over_64_kib() {
    const BIG: usize = 65_507; // the largest UDP payload over IPv4
    let env = start(Cfg::default());
    let a = env.addrs();
    let mut c = env.tls_client();
    let relayed = c.allocate().expect("allocate over TLS");
    let peer_addr: SocketAddr = (a.media, 3490).into();
    c.create_permission(&[peer_addr]).expect("permission");
    let peer = env
        .topo
        .media
        .run(move || std::net::UdpSocket::bind(peer_addr))
        .expect("enter namespace")
        .expect("bind the peer");
    // The relayed port on the external NIC, as the media host reaches it.
    let to: SocketAddr = (a.relay_external, relayed.port()).into();
    for i in 0..3u8 {
        // A Data indication of 65,544 bytes: more than rustls buffers at once (64 KiB).
        let payload = vec![i; BIG];
        peer.send_to(&payload, to).expect("peer send");
        let got = c
            .recv_data()
            .unwrap_or_else(|e| panic!("datagram {i} of {BIG} bytes: {e}\n{}", env.relay.logs()));
        assert_eq!(got.data.len(), BIG, "datagram {i}");
        assert!(got.data.iter().all(|b| *b == i), "datagram {i} intact");
    }
    // A small one still follows, and the allocation lives on.
    peer.send_to(b"small", to).expect("peer send");
    assert_eq!(c.recv_data().expect("small datagram").data, b"small");
    c.refresh(600)
        .unwrap_or_else(|e| panic!("refresh: {e}\n{}", env.relay.logs()));
    assert!(
        env.relay.log_lines("TLS write").is_empty(),
        "{}",
        env.relay.logs()
    );
}

#[test]
fn only_authenticated_requests_keep_a_connection_without_allocation_open() {
    const IDLE: u64 = 2;
    let env = start(Cfg {
        idle_timeout: IDLE,
        ..Cfg::default()
    });
    let mut unsigned = env.tcp_client(3478);
    let mut signed = env.tcp_client(3478);
    // The signed one learns a nonce (a 401 does not count) and then sends Refreshes: no
    // allocation (437), but each request verifies.
    assert_eq!(signed.refresh(600).err().and_then(|e| e.code()), Some(437));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(IDLE + 5);
    let closed_after = loop {
        if !unsigned.binding_answered() {
            break started.elapsed();
        }
        assert_eq!(
            signed.refresh(600).err().and_then(|e| e.code()),
            Some(437),
            "the authenticated connection stays open\n{}",
            env.relay.logs()
        );
        assert!(
            Instant::now() < deadline,
            "a connection sending unsigned Bindings every 500 ms is still open after {:?} \
             (tcp.idle_timeout = {IDLE} s)\n{}",
            started.elapsed(),
            env.relay.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        closed_after >= Duration::from_secs(IDLE - 1),
        "closed too early: {closed_after:?}"
    );
}

#[test]
fn connections_from_one_ipv6_slash_64_count_as_one_source() {
    // Addresses on the relay host's loopback: its listener, two sources of one /64 and
    // one of another.
    const LISTEN: &str = "2001:db8:5::50";
    let srcs: [&str; 4] = [
        "2001:db8:5::a",
        "2001:db8:5::b",
        "2001:db8:5::c",
        "2001:db8:6::a",
    ];
    let env = Deployment::start_tls(TopologyOptions::default(), |topo, leaf| {
        for a in std::iter::once(LISTEN).chain(srcs) {
            topo.relay
                .ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{a}/64"),
                    "dev",
                    "lo",
                    "nodad",
                ])
                .unwrap_or_else(|e| panic!("add {a}: {e}"));
        }
        let mut listen = Listen::both_nics(&topo.addrs, 3478, &["udp", "tcp"]);
        listen.push(Listen::new(topo.addrs.relay_external, 443, &["tcp", "tls"]));
        listen.push(Listen::new(
            LISTEN.parse::<IpAddr>().unwrap(),
            3478,
            &["tcp"],
        ));
        let cfg = Cfg {
            per_source: 2,
            ..Cfg::default()
        };
        start_tls_relay(&topo.relay, &config_with(&topo.addrs, cfg, listen), leaf)
    });
    let server: SocketAddr = (LISTEN.parse::<IpAddr>().unwrap(), 3478).into();
    let connect_from = |src: &str| {
        let src: SocketAddr = (src.parse::<IpAddr>().unwrap(), 0).into();
        let s = env
            .topo
            .relay
            .run(move || connect_tcp_from(src, server, STREAM_TIMEOUT))
            .expect("enter namespace")
            .unwrap_or_else(|e| panic!("connect from {src}: {e}"));
        StreamClient::new(s, USER, PASSWORD)
    };
    let mut first = connect_from(srcs[0]);
    let mut second = connect_from(srcs[1]);
    assert!(first.binding_answered() && second.binding_answered());
    // A third address of the same /64 is over the limit of 2; another /64 is not.
    let mut third = connect_from(srcs[2]);
    assert!(
        !third.binding_answered(),
        "a third connection from the same /64 was served\n{}",
        env.relay.logs()
    );
    let line = env
        .relay
        .wait_for_log("tcp.max_connections_per_source", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("2001:db8:5::/64"), "{line}");
    let mut other = connect_from(srcs[3]);
    assert!(other.binding_answered(), "another /64 is another source");
}
