//! PROXY protocol in front of the relay's TLS and TCP listeners (issue 17). The client
//! host is the TCP load balancer (203.0.113.10, the only address in `proxy_from`):
//! [`Balancer`] forwards clients on addresses of their own (100.64.0.x, which the relay
//! never sees on the wire) as HAProxy's `send-proxy-v2` does, one relay connection per
//! client starting with a v2 header that names it; the TLS session begins after the
//! header. Headers the tests need exactly (v1, LOCAL, from the wrong sender, none at
//! all) are written straight onto a connection from the client host.
//!
//! Needs root and `target/debug/relay`.

use std::{
    io::{self, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use relay_proto::{
    proxy_header::{Addresses, Command, encode_v1, encode_v2},
    stun::{Class, Message, MessageWriter, Method, XorMappedAddress},
};
use relay_tests::{
    TopologyOptions,
    fixture::{Deployment, PASSWORD, RelayConfig, STREAM_TIMEOUT, USER, start_tls_relay},
    read_uninterrupted,
    stream_client::{StreamClient, TlsStream, start_tls},
    turn_client::new_txid,
};
use relay_tools::status::AdminClient;

const LOG_WAIT: Duration = Duration::from_secs(5);
/// TURN over TLS behind the balancer (v2 headers).
const TLS_PORT: u16 = 443;
/// TURN over plain TCP behind the balancer (v1 headers).
const TCP_PORT: u16 = 3479;
const PER_SOURCE: u32 = 2;
/// Where [`Balancer`] listens on the client host.
const BALANCER_PORT: u16 = 8443;
const HANDSHAKE_TIMEOUT: u64 = 2;

/// Clients behind the balancer (carrier-grade NAT space: not on any link of the test).
fn client(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([100, 64, 0, last], port))
}

/// `engine`: `[tcp] engine` (the header phase lives in the state both loops share);
/// `extra`: further TOML tables.
fn start(engine: &'static str, extra: &'static str) -> Deployment {
    Deployment::start_tls(TopologyOptions::default(), |topo, leaf| {
        let a = topo.addrs;
        let behind_lb = |port: u16, transports: &str| {
            format!(
                "[[listen]]\naddress = \"{}:{port}\"\ntransports = [{transports}]\n\
                 proxy_protocol = true\nproxy_from = [\"{}/32\"]\n\n",
                a.relay_external, a.client
            )
        };
        let sections = format!(
            "{}{}[tcp]\nengine = \"{engine}\"\nmax_connections_per_source = {PER_SOURCE}\nhandshake_timeout = {HANDSHAKE_TIMEOUT}\n\n\
             [xdp]\nmode = \"off\"\n\n{extra}",
            behind_lb(TLS_PORT, "\"tls\""),
            behind_lb(TCP_PORT, "\"tcp\""),
        );
        let conf = RelayConfig {
            tls: true,
            sections,
            ..RelayConfig::deployment(&a)
        };
        start_tls_relay(&topo.relay, &conf.to_string(), leaf)
    })
}

/// A TCP connection from `source` to `to`, with a read timeout (call it inside the
/// namespace that owns `source`).
fn dial(source: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(source, 0).into())?;
    s.connect_timeout(&to.into(), STREAM_TIMEOUT)?;
    s.set_read_timeout(Some(STREAM_TIMEOUT))?;
    s.set_tcp_nodelay(true)?;
    Ok(s.into())
}

/// A TCP connection to `port` of the NAT address from `source` (an address of the client
/// host), with `header` written first.
fn connect_with(env: &Deployment, source: IpAddr, port: u16, header: Vec<u8>) -> TcpStream {
    let server = SocketAddr::from((env.addrs().public, port));
    env.topo
        .client
        .run(move || {
            let mut s = dial(source, server)?;
            s.write_all(&header)?;
            Ok::<TcpStream, io::Error>(s)
        })
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("connect {server} from {source}: {e}"))
}

/// TURN over TLS through the balancer for `header`; `Err` if the relay refused it.
fn tls_via(
    env: &Deployment,
    source: IpAddr,
    header: Vec<u8>,
) -> std::io::Result<StreamClient<TlsStream>> {
    let sock = connect_with(env, source, TLS_PORT, header);
    let roots = env.ca.as_ref().expect("TLS deployment").roots();
    let tls = start_tls(sock, roots, env.addrs().public.into())?;
    Ok(StreamClient::new(tls, USER, PASSWORD))
}

/// A TCP load balancer on the client host: accepts clients on 203.0.113.10:8443 and, for
/// each, connects to the relay's TLS port, writes a v2 header naming the client, then
/// copies bytes both ways until either side closes.
struct Balancer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Balancer {
    fn start(env: &Deployment) -> Self {
        let a = env.addrs();
        let addr = SocketAddr::from((a.client, BALANCER_PORT));
        let backend = SocketAddr::from((a.public, TLS_PORT));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        env.topo
            .client
            .run(move || -> io::Result<()> {
                let listener = TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                // Threads started here stay in the client namespace.
                std::thread::spawn(move || {
                    while !flag.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((front, from)) => {
                                std::thread::spawn(move || forward(front, from, addr, backend));
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            Err(_) => return,
                        }
                    }
                });
                Ok(())
            })
            .expect("enter namespace")
            .expect("bind the balancer");
        Self { addr, stop }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One client through the balancer: the header, then both directions.
fn forward(mut front: TcpStream, from: SocketAddr, to: SocketAddr, backend: SocketAddr) {
    let connect = || -> io::Result<TcpStream> {
        let mut s = dial(to.ip(), backend)?;
        s.set_read_timeout(None)?;
        let header = encode_v2(
            Command::Proxy,
            Some(Addresses {
                source: from,
                destination: to,
            }),
            &[(0xea, b"\x01vpce-0123456789abcdef0")],
        );
        s.write_all(&header)?;
        Ok(s)
    };
    let Ok(mut back) = connect() else {
        return;
    };
    let (Ok(mut front2), Ok(mut back2)) = (front.try_clone(), back.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut front, &mut back);
        let _ = back.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut back2, &mut front2);
    let _ = front2.shutdown(Shutdown::Both);
    let _ = up.join();
}

/// TURN over TLS from `from` (an address of the client host) through `balancer`: the
/// client's own address and port, and the client; `Err` if the relay refused it.
fn tls_through(
    env: &Deployment,
    balancer: &Balancer,
    from: IpAddr,
) -> (SocketAddr, io::Result<StreamClient<TlsStream>>) {
    let to = balancer.addr;
    let sock = env
        .topo
        .client
        .run(move || dial(from, to))
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("connect {to} from {from}: {e}"));
    let me = sock.local_addr().expect("local address");
    let roots = env.ca.as_ref().expect("TLS deployment").roots();
    let tls = start_tls(sock, roots, env.addrs().public.into());
    (me, tls.map(|t| StreamClient::new(t, USER, PASSWORD)))
}

fn v2(client: SocketAddr, env: &Deployment) -> Vec<u8> {
    let destination = SocketAddr::from((env.addrs().public, TLS_PORT));
    encode_v2(
        Command::Proxy,
        Some(Addresses {
            source: client,
            destination,
        }),
        &[(0xea, b"\x01vpce-0123456789abcdef0")],
    )
}

/// XOR-MAPPED-ADDRESS of an unsigned Binding, `None` if the connection is closed.
fn mapped<S: std::io::Read + Write>(c: &mut StreamClient<S>) -> Option<SocketAddr> {
    let mut buf = [0u8; 64];
    let txid = new_txid();
    let mut w = MessageWriter::new(&mut buf, Class::Request, Method::BINDING, txid).unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    c.write_all(&buf[..n]).ok()?;
    let resp = c.read_response(txid).ok()?;
    let m = Message::parse(&resp).ok()?;
    Some(m.attr::<XorMappedAddress>()?.ok()?.0)
}

/// The connection is closed by the relay (EOF or reset), not left open.
fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    match read_uninterrupted(s, &mut b) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn metrics(env: &Deployment) -> String {
    let admin = AdminClient::new("127.0.0.1:9641".parse().unwrap(), None);
    let (code, text) = env
        .topo
        .relay
        .run(move || admin.get("/metrics"))
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("/metrics: {e}"));
    assert_eq!(code, 200, "{text}");
    text
}

#[test]
fn tls_behind_a_v2_balancer_uses_the_client_address_everywhere_io_uring() {
    tls_behind_a_v2_balancer("auto");
}

#[test]
fn tls_behind_a_v2_balancer_uses_the_client_address_everywhere_epoll() {
    tls_behind_a_v2_balancer("epoll");
}

fn tls_behind_a_v2_balancer(engine: &'static str) {
    let env = start(engine, "");
    let a = env.addrs();
    let balancer = IpAddr::from(a.client);
    // Alice and bob: addresses of the client host that only the balancer talks to.
    let (alice_ip, bob_ip) = (client(7, 0).ip(), client(8, 0).ip());
    for ip in [alice_ip, bob_ip] {
        env.topo
            .client
            .ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])
            .unwrap_or_else(|e| panic!("add {ip}: {e}"));
    }
    let lb = Balancer::start(&env);

    // XOR-MAPPED-ADDRESS, the allocation, its log line and the admin API: the client of
    // the header.
    let (alice, c) = tls_through(&env, &lb, alice_ip);
    let mut c = c.expect("TLS through the balancer");
    assert_eq!(mapped(&mut c), Some(alice), "{}", env.relay.logs());
    c.allocate()
        .unwrap_or_else(|e| panic!("allocate through the balancer: {e}\n{}", env.relay.logs()));
    assert_eq!(c.mapped, Some(alice));
    let line = env
        .relay
        .wait_for_log("allocation created", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains(&alice.to_string()), "{line}");
    assert!(
        !line.contains(&a.client.to_string()),
        "the balancer in the log: {line}"
    );
    let admin = AdminClient::new("127.0.0.1:9641".parse().unwrap(), None);
    let view = env
        .topo
        .relay
        .run(move || admin.allocations())
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("/api/allocations: {e}"));
    assert_eq!(view.allocations.len(), 1, "{view:?}");
    assert_eq!(
        (
            view.allocations[0].client,
            view.allocations[0].transport.as_str()
        ),
        (alice, "tls")
    );

    // The per-source limit counts header clients: alice's third connection is refused,
    // bob (another client through the same balancer) is served.
    let (alice2, second) = tls_through(&env, &lb, alice_ip);
    let mut second = second.expect("alice's second connection");
    assert_eq!(mapped(&mut second), Some(alice2));
    let (_, third) = tls_through(&env, &lb, alice_ip);
    assert!(
        third.map_or(true, |mut t| mapped(&mut t).is_none()),
        "a third connection of alice was served (max_connections_per_source = {PER_SOURCE})\n{}",
        env.relay.logs()
    );
    let line = env
        .relay
        .wait_for_log("tcp.max_connections_per_source", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains(&format!("source={alice_ip}")), "{line}");
    let (bob, b) = tls_through(&env, &lb, bob_ip);
    let mut b = b.expect("bob through the balancer");
    assert_eq!(mapped(&mut b), Some(bob), "{}", env.relay.logs());

    // A health check (LOCAL) is the balancer's own connection.
    let local = encode_v2(Command::Local, None, &[]);
    let mut h = tls_via(&env, balancer, local).expect("health check");
    let seen = mapped(&mut h).expect("health check answered");
    assert_eq!(seen.ip(), balancer);

    // The same header from an address outside proxy_from is refused, and so is a client
    // that skips the balancer (a ClientHello where the header belongs).
    let client2 = IpAddr::from(a.client2);
    let mut outside = connect_with(&env, client2, TLS_PORT, v2(client(9, 40001), &env));
    assert!(closed(&mut outside), "a header from {client2} was accepted");
    let line = env
        .relay
        .wait_for_log("proxy_from", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains(&client2.to_string()), "{line}");
    assert!(
        tls_via(&env, balancer, Vec::new()).is_err(),
        "TLS without a PROXY header was served"
    );
    env.relay
        .wait_for_log("bad PROXY protocol header", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let m = metrics(&env);
    for outcome in ["proxy_source", "proxy_header", "per_source"] {
        let series = format!("relay_tcp_connections_total{{outcome=\"{outcome}\"}} 1");
        assert!(m.contains(&series), "no `{series}` in\n{m}");
    }
}

#[test]
fn plain_tcp_behind_a_v1_balancer_and_a_silent_one_times_out() {
    let env = start("epoll", "");
    let balancer = IpAddr::from(env.addrs().client);
    let carol = client(10, 50000);
    let destination = SocketAddr::from((env.addrs().public, TCP_PORT));
    let header = encode_v1(Some(Addresses {
        source: carol,
        destination,
    }));
    assert!(header.starts_with(b"PROXY TCP4 100.64.0.10 "));
    let sock = connect_with(&env, balancer, TCP_PORT, header);
    let mut c = StreamClient::new(sock, USER, PASSWORD);
    assert_eq!(mapped(&mut c), Some(carol), "{}", env.relay.logs());
    c.allocate()
        .unwrap_or_else(|e| panic!("allocate over v1: {e}\n{}", env.relay.logs()));
    assert_eq!(c.mapped, Some(carol));

    // Half a header, then nothing: closed by tcp.handshake_timeout.
    let mut silent = connect_with(&env, balancer, TCP_PORT, b"PROXY TCP4 100.64".to_vec());
    silent
        .set_read_timeout(Some(Duration::from_secs(HANDSHAKE_TIMEOUT + 4)))
        .unwrap();
    assert!(
        closed(&mut silent),
        "a connection without its header stayed open"
    );
    env.relay
        .wait_for_log("no complete PROXY header", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn the_unauthenticated_rate_limit_counts_header_clients() {
    let env = start(
        "auto",
        "[limits]\nunauthenticated_rate = 1\nunauthenticated_burst = 4\nunauthenticated_global_rate = 0\n",
    );
    let balancer = IpAddr::from(env.addrs().client);
    let alice = client(7, 40001);
    let mut c = tls_via(&env, balancer, v2(alice, &env)).expect("alice");
    // Dropped requests get no answer: wait briefly for each.
    c.stream
        .sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let answered = (0..10).filter(|_| mapped(&mut c).is_some()).count();
    assert!(
        (4..=6).contains(&answered),
        "{answered} of 10 Bindings in ~3 s answered at 1/s with a burst of 4\n{}",
        env.relay.logs()
    );
    // Bob, through the same balancer, has his own budget.
    let bob = client(8, 40001);
    let mut b = tls_via(&env, balancer, v2(bob, &env)).expect("bob");
    assert_eq!(mapped(&mut b), Some(bob), "{}", env.relay.logs());
    let m = metrics(&env);
    assert!(
        m.lines().any(|l| l.contains("unauthenticated_rate")
            && !l.starts_with('#')
            && !l.ends_with(" 0")),
        "no unauthenticated_rate drops counted\n{m}"
    );
}
