//! The XDP fast path in `relay serve`, end to end in the deployment of CONTEXT.md: the
//! relay's program attached natively to both NICs of the relay host (external behind the
//! static NAT, internal towards the media server), coturn's `turnutils_uclient` as the
//! client and `turnutils_peer` on the media server as the peer.
//!
//! What is checked is what an operator would check: the log says the program is attached
//! natively and forwarding was enabled and guarded; no packet is lost; the kernel's
//! per-allocation counters (in the allocation's deletion line) account for the media while
//! the userspace counters beside them stay at zero, so after ChannelBind no data packet
//! reached the daemon; the host does not route; at exit the host's settings are back.
//!
//! veth only accepts frames redirected (or sent back with XDP_TX) into it when the other
//! end runs an XDP program too, so the firewall's and the media server's ends run one
//! that passes everything (this crate's program with empty maps).
//!
//! Needs root, `coturn`, `nftables` and `target/debug/relay` (`cargo build -p relay-user`).

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use relay_tests::{
    Addresses, Netns, Topology, TopologyOptions,
    coturn::{PeerProcess, Uclient, UclientRun},
    relay::{RelayProcess, field},
    turn_client::TurnClient,
};
use relay_user::xdp::{AttachMode, XdpPath};

const USER: &str = "alice";
const PASSWORD: &str = "pw";
const PEER_PORT: u16 = 3480;
const UCLIENT_TIMEOUT: Duration = Duration::from_secs(40);
/// How long to wait for the deletion lines after uclient exits (it deletes its
/// allocations on the way out).
const LOG_WAIT: Duration = Duration::from_secs(5);
const WORKERS: usize = 2;

/// The deployment's config with the fast path on both NICs, natively, two UDP workers.
fn config(topo: &Topology) -> String {
    config_with(topo, "auto")
}

/// [`config`] with `[xdp] forwarding = "{forwarding}"`.
fn config_with(topo: &Topology, forwarding: &str) -> String {
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

[peers]
allow = ["192.0.2.0/24"]

[limits]
# SIGTERM stops at once (no draining): the tests check what the relay restores at exit.
drain_timeout = 0

[udp]
workers = {WORKERS}

[xdp]
interfaces = ["{ext_if}", "{int_if}"]
mode = "native"
forwarding = "{forwarding}"
"#,
        int = a.relay_internal,
        ext = a.relay_external,
        public = a.public,
        ext_if = topo.relay_external_if,
        int_if = topo.relay_internal_if,
    )
}

/// Field order is drop order: processes, then the pass programs, then the namespaces.
struct Env {
    peer: PeerProcess,
    relay: Option<RelayProcess>,
    _pass: Vec<XdpPath>,
    topo: Topology,
}

impl Env {
    fn start() -> Env {
        Self::start_with(TopologyOptions::default())
    }

    fn start_with(opts: TopologyOptions) -> Env {
        Self::start_config(opts, config)
    }

    fn start_config(opts: TopologyOptions, config: fn(&Topology) -> String) -> Env {
        let topo = Topology::new(opts).expect("build topology");
        let pass = vec![
            attach_pass(&topo.firewall, topo.firewall_inside_if()),
            attach_pass(&topo.media, topo.media_if()),
        ];
        assert_eq!(
            sysctl(&topo.relay, &forwarding_key(&topo.relay_external_if)),
            "0",
            "a fresh namespace starts without forwarding"
        );
        let relay = RelayProcess::start(&topo.relay, &config(&topo))
            .unwrap_or_else(|e| panic!("relay did not start: {e}"));
        let a = topo.addrs;
        let peer = PeerProcess::start(&topo.media, a.media.into(), PEER_PORT)
            .unwrap_or_else(|e| panic!("turnutils_peer: {e}"));
        warm_neighbours(&topo);
        Env {
            peer,
            relay: Some(relay),
            _pass: pass,
            topo,
        }
    }

    fn relay(&self) -> &RelayProcess {
        self.relay.as_ref().expect("relay running")
    }

    fn addrs(&self) -> Addresses {
        self.topo.addrs
    }

    fn uclient(&self, server: IpAddr) -> Uclient {
        let mut u = Uclient::new(server);
        u.user = Some(USER.into());
        u.password = Some(PASSWORD.into());
        u.peer = Some(self.peer.address);
        u.peer_port = Some(self.peer.port);
        u.no_rtcp = true;
        u
    }

    fn run(&self, ns: &Netns, u: &Uclient) -> UclientRun {
        let run = u
            .run(ns, UCLIENT_TIMEOUT)
            .unwrap_or_else(|e| panic!("turnutils_uclient: {e}"));
        eprintln!("{}: {:?}", run.command, run.summary);
        run
    }

    fn context(&self, run: &UclientRun) -> String {
        format!(
            "{}\n----- relay log -----\n{}",
            run.describe(),
            self.relay().logs()
        )
    }
}

/// This crate's program with empty maps: it passes every frame, and its presence lets the
/// veth end receive what the relay's program redirects or sends back into it.
fn attach_pass(ns: &Netns, ifname: String) -> XdpPath {
    ns.run(move || {
        let mut xdp = XdpPath::load_with(16).expect("load XDP program (run as root)");
        xdp.attach(&ifname, AttachMode::Native)
            .unwrap_or_else(|e| panic!("attach pass program to {ifname}: {e}"));
        xdp
    })
    .expect("enter namespace")
}

fn forwarding_key(ifname: &str) -> String {
    format!("net.ipv4.conf.{ifname}.forwarding")
}

fn sysctl(ns: &Netns, key: &str) -> String {
    ns.exec("sysctl", &["-n", key])
        .unwrap_or_else(|e| panic!("sysctl {key}: {e}"))
        .trim()
        .to_owned()
}

/// Resolves the relay host's next hops (the firewall, the media server) before media
/// flows: the program passes a packet up when the neighbour entry is missing, and the
/// test wants to see none passed up.
fn warm_neighbours(topo: &Topology) {
    let a = topo.addrs;
    let hops = [
        (a.firewall_inside, &topo.relay_external_if),
        (a.media, &topo.relay_internal_if),
    ];
    let ips = hops.map(|(ip, _)| ip);
    topo.relay
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            for ip in ips {
                s.send_to(b"arp", (ip, 9)).expect("send");
            }
        })
        .expect("enter relay namespace");
    let deadline = Instant::now() + Duration::from_secs(3);
    for (ip, dev) in hops {
        loop {
            let out = topo
                .relay
                .ip(&["neigh", "show", &ip.to_string(), "dev", dev])
                .unwrap_or_default();
            if out.contains("lladdr") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no neighbour entry for {ip}: {out}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Zero loss, everything sent came back, the client exited cleanly.
fn assert_lossless(env: &Env, run: &UclientRun, expected: u64) {
    assert!(!run.timed_out, "uclient hung\n{}", env.context(run));
    assert!(run.success(), "uclient failed\n{}", env.context(run));
    let s = &run.summary;
    assert_eq!(
        s.send_msgs,
        Some(expected),
        "messages sent\n{}",
        env.context(run)
    );
    assert_eq!(
        s.recv_msgs,
        Some(expected),
        "messages received\n{}",
        env.context(run)
    );
    assert_eq!(
        s.lost_packets,
        Some(0),
        "lost packets\n{}",
        env.context(run)
    );
}

/// Userspace and kernel counters of one ended allocation, from its deletion line.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Ended {
    to_peer: u64,
    to_client: u64,
    xdp_to_peer: u64,
    xdp_to_client: u64,
    xdp_to_peer_bytes: u64,
    xdp_to_client_bytes: u64,
}

/// Waits for `n` "allocation deleted" lines with traffic and returns their counters.
/// `what` ran the traffic (for the failure message).
fn ended_with_traffic(env: &Env, what: &str, n: usize) -> Vec<Ended> {
    let parse = |l: &str, k: &str| -> u64 {
        field(l, k)
            .unwrap_or_else(|| panic!("no {k}= in: {l}"))
            .parse()
            .unwrap_or_else(|e| panic!("{k}= in {l}: {e}"))
    };
    let collect = || -> Vec<Ended> {
        env.relay()
            .log_lines("allocation deleted by client")
            .iter()
            .map(|l| Ended {
                to_peer: parse(l, "to_peer_packets"),
                to_client: parse(l, "to_client_packets"),
                xdp_to_peer: parse(l, "xdp_to_peer_packets"),
                xdp_to_client: parse(l, "xdp_to_client_packets"),
                xdp_to_peer_bytes: parse(l, "xdp_to_peer_bytes"),
                xdp_to_client_bytes: parse(l, "xdp_to_client_bytes"),
            })
            .filter(|e| e.to_peer + e.to_client + e.xdp_to_peer + e.xdp_to_client > 0)
            .collect()
    };
    let deadline = Instant::now() + LOG_WAIT;
    loop {
        let got = collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} deleted allocations with traffic, got {got:?}\n{what}\n----- relay log -----\n{}",
            env.relay().logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The operator's view of startup: native on both NICs, forwarding enabled and guarded.
fn assert_startup_log(env: &Env) {
    let relay = env.relay();
    for ifname in [&env.topo.relay_external_if, &env.topo.relay_internal_if] {
        let attached = relay
            .log_lines("XDP program attached")
            .into_iter()
            .find(|l| field(l, "interface") == Some(ifname.as_str()))
            .unwrap_or_else(|| {
                panic!(
                    "no `XDP program attached` line for {ifname}:\n{}",
                    relay.logs()
                )
            });
        assert_eq!(field(&attached, "mode"), Some("native"), "{attached}");
        let key = forwarding_key(ifname);
        let enabled = relay
            .log_lines("forwarding enabled")
            .into_iter()
            .find(|l| field(l, "sysctl") == Some(key.as_str()))
            .unwrap_or_else(|| panic!("no `forwarding enabled` line for {key}:\n{}", relay.logs()));
        assert_eq!(field(&enabled, "was"), Some("0"), "{enabled}");
        assert_eq!(
            sysctl(&env.topo.relay, &key),
            "1",
            "{key} while the relay runs"
        );
    }
    let guard = relay
        .wait_for_log("nftables guard installed", Duration::ZERO)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(guard.contains("relay_guard"), "{guard}");
    let running = relay
        .wait_for_log("relay running", Duration::ZERO)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(field(&running, "udp_workers"), Some("2"), "{running}");
    let warnings: Vec<String> = relay.log_lines(" WARN ");
    assert!(warnings.is_empty(), "warnings at startup: {warnings:#?}");
}

/// Stops the relay; the host's forwarding and nftables are as they were before it ran.
fn assert_restored_after_stop(env: &mut Env) {
    let logs = env.relay.take().expect("relay running").stop();
    for ifname in [&env.topo.relay_external_if, &env.topo.relay_internal_if] {
        let key = forwarding_key(ifname);
        assert_eq!(
            sysctl(&env.topo.relay, &key),
            "0",
            "{key} after stop:\n{logs}"
        );
        assert!(
            logs.lines()
                .any(|l| l.contains("restored") && field(l, "sysctl") == Some(key.as_str())),
            "no `restored` line for {key}:\n{logs}"
        );
    }
    let table = env
        .topo
        .relay
        .exec("nft", &["list", "table", "inet", "relay_guard"]);
    assert!(table.is_err(), "guard table left behind: {table:?}\n{logs}");
    assert!(logs.contains("nftables guard removed"), "{logs}");
}

#[test]
fn uclient_channels_through_nat_are_relayed_in_the_kernel() {
    let mut env = Env::start();
    assert_startup_log(&env);
    let a = env.addrs();
    let (clients, messages) = (4u32, 50u32);
    let mut u = env.uclient(a.public.into());
    u.clients = clients;
    u.messages = messages;
    let run = env.run(&env.topo.client, &u);
    let expected = u64::from(clients * messages);
    assert_lossless(&env, &run, expected);

    let ended = ended_with_traffic(&env, &run.describe(), clients as usize);
    eprintln!("ended allocations: {ended:?}");
    for e in &ended {
        // After ChannelBind every datagram went through the kernel, none through the daemon.
        assert_eq!(
            (e.to_peer, e.to_client),
            (0, 0),
            "userspace relayed media: {e:?}\n{}",
            env.context(&run)
        );
        assert_eq!(
            e.xdp_to_peer,
            u64::from(messages),
            "{e:?}\n{}",
            env.context(&run)
        );
        assert_eq!(
            e.xdp_to_client,
            u64::from(messages),
            "{e:?}\n{}",
            env.context(&run)
        );
        assert_eq!(
            e.xdp_to_peer_bytes,
            e.xdp_to_peer * u64::from(u.length),
            "{e:?}"
        );
        assert_eq!(
            e.xdp_to_client_bytes,
            e.xdp_to_client * u64::from(u.length),
            "{e:?}"
        );
    }
    assert_eq!(
        ended
            .iter()
            .map(|e| e.xdp_to_peer + e.xdp_to_client)
            .sum::<u64>(),
        2 * expected,
        "kernel counters account for every data packet, both ways"
    );
    assert_restored_after_stop(&mut env);
}

/// The media server as the TURN client on the internal listener (its `serverAddress`),
/// with a peer on the internal network: both directions leave through the interface they
/// came in on (XDP_TX).
#[test]
fn media_server_on_internal_listener_is_relayed_in_the_kernel() {
    let env = Env::start();
    let a = env.addrs();
    let messages = 40u32;
    let mut u = env.uclient(a.relay_internal.into());
    u.clients = 2;
    u.messages = messages;
    let run = env.run(&env.topo.media, &u);
    assert_lossless(&env, &run, 2 * u64::from(messages));
    for e in ended_with_traffic(&env, &run.describe(), 2) {
        assert_eq!(
            (e.to_peer, e.to_client),
            (0, 0),
            "userspace relayed media: {e:?}\n{}",
            env.context(&run)
        );
        assert_eq!(
            (e.xdp_to_peer, e.xdp_to_client),
            (u64::from(messages), u64::from(messages)),
            "{e:?}"
        );
    }
}

/// Send indications are unwrapped in the kernel, and the peer's answers come back as Data
/// indications the kernel builds.
#[test]
fn send_and_data_indications_are_relayed_in_the_kernel() {
    let env = Env::start();
    let a = env.addrs();
    let messages = 40u32;
    let mut u = env.uclient(a.public.into());
    u.clients = 2;
    u.messages = messages;
    u.send_indications = true;
    let run = env.run(&env.topo.client, &u);
    assert_lossless(&env, &run, 2 * u64::from(messages));
    for e in ended_with_traffic(&env, &run.describe(), 2) {
        let m = u64::from(messages);
        assert_eq!(
            (e.to_peer, e.to_client),
            (0, 0),
            "userspace relayed media: {e:?}\n{}",
            env.context(&run)
        );
        assert_eq!(
            (e.xdp_to_peer, e.xdp_to_client),
            (m, m),
            "{e:?}\n{}",
            env.context(&run)
        );
    }
}

/// Two internet clients relaying to each other's relayed address, with a firewall that
/// refuses NAT reflection: the relay hands the packets over itself (hairpin).
#[test]
fn client_to_client_hairpin_without_nat_reflection() {
    let env = Env::start_with(TopologyOptions {
        nat_reflection: false,
    });
    let a = env.addrs();
    let messages = 40u32;
    let mut u = env.uclient(a.public.into());
    u.peer = None;
    u.peer_port = None;
    u.client_to_client = true;
    u.clients = 2;
    u.messages = messages;
    let run = env.run(&env.topo.client, &u);
    assert_lossless(&env, &run, 2 * u64::from(messages));
    let ended = ended_with_traffic(&env, &run.describe(), 2);
    eprintln!("ended allocations: {ended:?}");
    let total = |f: fn(&Ended) -> u64| ended.iter().map(f).sum::<u64>();
    assert_eq!(
        total(|e| e.to_peer + e.to_client),
        0,
        "userspace relayed media: {ended:?}\n{}",
        env.context(&run)
    );
    assert!(
        total(|e| e.xdp_to_peer) >= 2 * u64::from(messages),
        "{ended:?}\n{}",
        env.context(&run)
    );
}

/// A relay killed before it could restore the host's settings: the next one finds its
/// guard table, puts the recorded values back, and starts from the host's own state.
#[test]
fn forwarding_left_by_a_killed_relay_is_restored_by_the_next() {
    let mut env = Env::start();
    let key = forwarding_key(&env.topo.relay_external_if);
    let killed = env.relay.take().expect("relay running");
    // SAFETY: kill(2) on the pid of our own child, not reaped yet.
    unsafe { libc::kill(killed.pid() as libc::pid_t, libc::SIGKILL) };
    let logs = killed.stop();
    assert_eq!(
        sysctl(&env.topo.relay, &key),
        "1",
        "SIGKILL cannot restore:\n{logs}"
    );
    env.topo
        .relay
        .exec("nft", &["list", "table", "inet", "relay_guard"])
        .expect("the guard stays with the forwarding it guards");

    env.relay = Some(
        RelayProcess::start(&env.topo.relay, &config(&env.topo))
            .unwrap_or_else(|e| panic!("relay did not start again: {e}")),
    );
    let relay = env.relay();
    relay
        .wait_for_log("did not stop cleanly", Duration::ZERO)
        .unwrap_or_else(|e| panic!("{e}"));
    // Put back to 0 first, so this run enables it again and will restore 0 in turn.
    let enabled = relay
        .log_lines("forwarding enabled")
        .into_iter()
        .find(|l| field(l, "sysctl") == Some(key.as_str()))
        .unwrap_or_else(|| panic!("no `forwarding enabled` line for {key}:\n{}", relay.logs()));
    assert_eq!(field(&enabled, "was"), Some("0"), "{enabled}");
    // The restarted relay serves (and has had time to install its signal handlers).
    let server: SocketAddr = (env.addrs().public, 3478).into();
    let mut c = env
        .topo
        .client
        .run(move || TurnClient::new(server, USER, PASSWORD))
        .expect("enter client namespace")
        .expect("client socket");
    c.allocate()
        .unwrap_or_else(|e| panic!("allocate after the restart: {e}\n{}", env.relay().logs()));
    assert_restored_after_stop(&mut env);
}

/// Forwarding is on for the fast path, but the host still routes nothing: a datagram the
/// media server sends to the firewall through the relay host stops at the guard.
#[test]
fn relay_host_does_not_route_while_forwarding_is_on() {
    let mut env = Env::start();
    let a = env.addrs();
    let target: SocketAddr = (a.firewall_inside, 9999).into();
    let sink = env
        .topo
        .firewall
        .run(move || {
            let s = UdpSocket::bind(target).expect("bind on the firewall");
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s
        })
        .expect("enter firewall namespace");
    // The media server's default route is the relay host's internal address.
    env.topo
        .media
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            for _ in 0..3 {
                s.send_to(b"routed?", target).expect("send");
            }
        })
        .expect("enter media namespace");
    let mut buf = [0u8; 64];
    let got = sink.recv_from(&mut buf);
    assert!(
        got.is_err(),
        "the relay host routed media → firewall: {got:?}"
    );
    // Dropped by the guard, i.e. the stack would have routed it.
    let table = env
        .topo
        .relay
        .exec("nft", &["list", "table", "inet", "relay_guard"])
        .expect("guard table present while the relay runs");
    let dropped: u64 = table
        .split("counter packets ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in the guard table:\n{table}"));
    assert!(dropped >= 3, "guard counted {dropped} drops:\n{table}");
    assert_restored_after_stop(&mut env);
}

/// The CMS deployment: the media server allocates through the INTERNAL listener, a
/// browser through the NAT, each with a channel to the other's public relayed address.
/// Every packet is a hairpin between two allocations of this relay, across both NICs,
/// and none may reach the daemon once the channels are bound.
#[test]
fn media_server_and_browser_hairpin_in_the_kernel() {
    let env = Env::start_with(TopologyOptions {
        nat_reflection: false,
    });
    let a = env.addrs();
    let client_in = |ns: &Netns, server: SocketAddr| {
        ns.run(move || TurnClient::new(server, USER, PASSWORD))
            .expect("enter namespace")
            .expect("client socket")
    };
    let ctx =
        |e: &dyn std::fmt::Display| format!("{e}\n----- relay log -----\n{}", env.relay().logs());
    let mut media = client_in(&env.topo.media, (a.relay_internal, 3478).into());
    let mut browser = client_in(&env.topo.client, (a.public, 3478).into());
    let media_relayed = media.allocate().unwrap_or_else(|e| panic!("{}", ctx(&e)));
    let browser_relayed = browser.allocate().unwrap_or_else(|e| panic!("{}", ctx(&e)));
    media
        .channel_bind(0x4000, browser_relayed)
        .unwrap_or_else(|e| panic!("{}", ctx(&e)));
    browser
        .channel_bind(0x4001, media_relayed)
        .unwrap_or_else(|e| panic!("{}", ctx(&e)));

    const N: usize = 50;
    for i in 0..N {
        let (to_browser, to_media) = (format!("m->b {i:03}"), format!("b->m {i:03}"));
        media
            .send_channel_data(0x4000, to_browser.as_bytes())
            .unwrap();
        browser
            .send_channel_data(0x4001, to_media.as_bytes())
            .unwrap();
        for (who, c, want, channel) in [
            ("browser", &mut browser, to_browser, 0x4001),
            ("media", &mut media, to_media, 0x4000),
        ] {
            let got = c
                .recv_data(Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("{}", ctx(&format!("{who} lost {want:?}: {e}"))));
            assert_eq!(got.data, want.as_bytes(), "{}", ctx(&who));
            assert_eq!(got.channel, Some(channel), "{}", ctx(&who));
        }
    }
    media.refresh(0).unwrap_or_else(|e| panic!("{}", ctx(&e)));
    browser.refresh(0).unwrap_or_else(|e| panic!("{}", ctx(&e)));
    let ended = ended_with_traffic(&env, "media server + browser", 2);
    eprintln!("ended allocations: {ended:?}");
    for e in &ended {
        assert_eq!(
            (e.to_peer, e.to_client),
            (0, 0),
            "userspace relayed media: {ended:?}\n{}",
            ctx(&"")
        );
        assert_eq!(
            (e.xdp_to_peer, e.xdp_to_client),
            (N as u64, N as u64),
            "{ended:?}\n{}",
            ctx(&"")
        );
    }
}

/// `[xdp] forwarding = "manual"` with forwarding off: the relay says exactly what to set,
/// changes nothing on the host, and relays everything in userspace (the program passes
/// what it cannot route).
#[test]
fn manual_forwarding_off_warns_and_falls_back_to_userspace() {
    let env = Env::start_config(TopologyOptions::default(), |t| config_with(t, "manual"));
    for ifname in [&env.topo.relay_external_if, &env.topo.relay_internal_if] {
        let key = forwarding_key(ifname);
        let hint = format!("sysctl -w {key}=1");
        let warned = env.relay().log_lines(" WARN ");
        assert!(
            warned.iter().any(|l| l.contains(&hint)),
            "no warning naming `{hint}`:\n{}",
            env.relay().logs()
        );
        assert_eq!(
            sysctl(&env.topo.relay, &key),
            "0",
            "manual mode changed {key}"
        );
    }
    let table = env
        .topo
        .relay
        .exec("nft", &["list", "table", "inet", "relay_guard"]);
    assert!(table.is_err(), "manual mode installed a guard: {table:?}");

    let messages = 20u32;
    let mut u = env.uclient(env.addrs().public.into());
    u.clients = 2;
    u.messages = messages;
    let run = env.run(&env.topo.client, &u);
    assert_lossless(&env, &run, 2 * u64::from(messages));
    for e in ended_with_traffic(&env, &run.describe(), 2) {
        let m = u64::from(messages);
        assert_eq!(
            (e.to_peer, e.to_client),
            (m, m),
            "{e:?}\n{}",
            env.context(&run)
        );
        assert_eq!(
            (e.xdp_to_peer, e.xdp_to_client),
            (0, 0),
            "{e:?}\n{}",
            env.context(&run)
        );
    }
}
