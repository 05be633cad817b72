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
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use relay_tests::{
    Netns, Topology, TopologyOptions,
    cmd::CmdError,
    coturn::Uclient,
    fixture::{self, Deployment, PASSWORD, RelayConfig, send_udp, start_relay, turn_client},
    relay::{Launch, RelayProcess, field},
};
use relay_tools::status::AdminClient;

/// How long to wait for the deletion lines after uclient exits (it deletes its
/// allocations on the way out).
const LOG_WAIT: Duration = Duration::from_secs(5);
/// How long a kernel counter may take to show packets already sent.
const COUNTER_WAIT: Duration = Duration::from_secs(5);
const WORKERS: usize = 2;

/// The deployment's config with the fast path on both NICs, natively, two UDP workers.
fn config(topo: &Topology) -> String {
    config_with(topo, "auto")
}

/// [`config`] with `[xdp] forwarding = "{forwarding}"`.
fn config_with(topo: &Topology, forwarding: &str) -> String {
    RelayConfig {
        sections: format!(
            r#"[limits]
# SIGTERM stops at once (no draining): the tests check what the relay restores at exit.
drain_timeout = 0

[udp]
workers = {WORKERS}

[xdp]
interfaces = ["{ext_if}", "{int_if}"]
mode = "native"
forwarding = "{forwarding}"
"#,
            ext_if = topo.relay_external_if,
            int_if = topo.relay_internal_if,
        ),
        ..RelayConfig::deployment(&topo.addrs)
    }
    .to_string()
}

fn start(opts: TopologyOptions) -> Deployment {
    start_config(opts, config)
}

fn start_config(opts: TopologyOptions, config: fn(&Topology) -> String) -> Deployment {
    Deployment::start_kernel_path(opts, |topo| {
        assert_eq!(
            sysctl(&topo.relay, &forwarding_key(&topo.relay_external_if)),
            "0",
            "a fresh namespace starts without forwarding"
        );
        start_relay(&topo.relay, &config(topo))
    })
    .with_media_peer()
}

/// uclient to `server` as alice, to the media host's echo peer, no RTCP allocations.
fn uclient(env: &Deployment, server: std::net::Ipv4Addr) -> Uclient {
    let mut u = env.uclient();
    u.server = server.into();
    u.no_rtcp = true;
    u
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

/// The relay's nftables guard table, if installed.
fn guard_table(topo: &Topology) -> Result<String, CmdError> {
    topo.relay
        .exec("nft", &["list", "table", "inet", "relay_guard"])
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

impl Ended {
    /// Packets to the peer and to the client through the daemon, then through the kernel,
    /// are `userspace` and `kernel`.
    #[track_caller]
    fn assert_paths(&self, userspace: (u64, u64), kernel: (u64, u64), context: &str) {
        assert_eq!(
            (self.to_peer, self.to_client),
            userspace,
            "packets (to peer, to client) through userspace: {self:?}\n{context}"
        );
        assert_eq!(
            (self.xdp_to_peer, self.xdp_to_client),
            kernel,
            "packets (to peer, to client) through the kernel: {self:?}\n{context}"
        );
    }
}

/// Waits for `n` "allocation deleted" lines with traffic and returns their counters.
/// `what` ran the traffic (for the failure message).
fn ended_with_traffic(env: &Deployment, what: &str, n: usize) -> Vec<Ended> {
    let parse = |l: &str, k: &str| -> u64 {
        field(l, k)
            .unwrap_or_else(|| panic!("no {k}= in: {l}"))
            .parse()
            .unwrap_or_else(|e| panic!("{k}= in {l}: {e}"))
    };
    let collect = || -> Vec<Ended> {
        env.relay
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
            "{}",
            env.with_log(format!(
                "expected {n} deleted allocations with traffic, got {got:?}\n{what}"
            ))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which data path should have relayed the media.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Kernel,
    Userspace,
}

/// Runs `u` in `ns` without loss; each of its allocations then relayed every message both
/// ways on `path` and none on the other. Returns their counters.
fn relay_all_on(env: &Deployment, ns: &Netns, u: &Uclient, path: Path) -> Vec<Ended> {
    let run = env.run_lossless(ns, u);
    let ended = ended_with_traffic(env, &run.describe(), u.clients as usize);
    eprintln!("ended allocations: {ended:?}");
    let (all, none) = ((u64::from(u.messages), u64::from(u.messages)), (0, 0));
    let (userspace, kernel) = match path {
        Path::Kernel => (none, all),
        Path::Userspace => (all, none),
    };
    for e in &ended {
        e.assert_paths(userspace, kernel, &env.context(&run));
    }
    ended
}

/// The relay's `forwarding enabled` line for sysctl `key`.
fn forwarding_enabled(env: &Deployment, key: &str) -> String {
    env.relay
        .log_lines("forwarding enabled")
        .into_iter()
        .find(|l| field(l, "sysctl") == Some(key))
        .unwrap_or_else(|| {
            panic!(
                "no `forwarding enabled` line for {key}:\n{}",
                env.relay.logs()
            )
        })
}

/// The operator's view of startup: native on both NICs, forwarding enabled and guarded.
fn assert_startup_log(env: &Deployment) {
    let relay = &env.relay;
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
        let enabled = forwarding_enabled(env, &key);
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
fn assert_restored_after_stop(env: Deployment) {
    let logs = env.relay.stop();
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
    let table = guard_table(&env.topo);
    assert!(table.is_err(), "guard table left behind: {table:?}\n{logs}");
    assert!(logs.contains("nftables guard removed"), "{logs}");
}

#[test]
fn uclient_channels_through_nat_are_relayed_in_the_kernel() {
    let env = start(TopologyOptions::default());
    assert_startup_log(&env);
    let (clients, messages) = (4u32, 50u32);
    let mut u = uclient(&env, env.addrs().public);
    u.clients = clients;
    u.messages = messages;
    // After ChannelBind every datagram went through the kernel, none through the daemon.
    let ended = relay_all_on(&env, &env.topo.client, &u, Path::Kernel);
    for e in &ended {
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
        2 * u64::from(clients * messages),
        "kernel counters account for every data packet, both ways"
    );
    assert_restored_after_stop(env);
}

/// The media server as the TURN client on the internal listener (its `serverAddress`),
/// with a peer on the internal network: both directions leave through the interface they
/// came in on (XDP_TX).
#[test]
fn media_server_on_internal_listener_is_relayed_in_the_kernel() {
    let env = start(TopologyOptions::default());
    let mut u = uclient(&env, env.addrs().relay_internal);
    u.clients = 2;
    u.messages = 40;
    relay_all_on(&env, &env.topo.media, &u, Path::Kernel);
}

/// Send indications are unwrapped in the kernel, and the peer's answers come back as Data
/// indications the kernel builds.
#[test]
fn send_and_data_indications_are_relayed_in_the_kernel() {
    let env = start(TopologyOptions::default());
    let mut u = uclient(&env, env.addrs().public);
    u.clients = 2;
    u.messages = 40;
    u.send_indications = true;
    relay_all_on(&env, &env.topo.client, &u, Path::Kernel);
}

/// Two internet clients relaying to each other's relayed address, with a firewall that
/// refuses NAT reflection: the relay hands the packets over itself (hairpin).
#[test]
fn client_to_client_hairpin_without_nat_reflection() {
    let env = start(TopologyOptions {
        nat_reflection: false,
    });
    let messages = 40u32;
    let mut u = uclient(&env, env.addrs().public);
    u.peer = None;
    u.peer_port = None;
    u.client_to_client = true;
    u.clients = 2;
    u.messages = messages;
    let run = env.run_lossless(&env.topo.client, &u);
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
    let mut env = start(TopologyOptions::default());
    let key = forwarding_key(&env.topo.relay_external_if);
    env.relay.signal(libc::SIGKILL);
    fixture::wait_until("the killed relay to exit", LOG_WAIT, || env.relay.exited());
    assert_eq!(
        sysctl(&env.topo.relay, &key),
        "1",
        "SIGKILL cannot restore:\n{}",
        env.relay.logs()
    );
    guard_table(&env.topo).expect("the guard stays with the forwarding it guards");

    let next = start_relay(&env.topo.relay, &config(&env.topo));
    drop(std::mem::replace(&mut env.relay, next));
    env.relay
        .wait_for_log("did not stop cleanly", Duration::ZERO)
        .unwrap_or_else(|e| panic!("{e}"));
    // Put back to 0 first, so this run enables it again and will restore 0 in turn.
    let enabled = forwarding_enabled(&env, &key);
    assert_eq!(field(&enabled, "was"), Some("0"), "{enabled}");
    // The restarted relay serves (and has had time to install its signal handlers).
    let mut c = turn_client(&env.topo.client, env.server(), PASSWORD);
    c.allocate()
        .unwrap_or_else(|e| panic!("allocate after the restart: {e}\n{}", env.relay.logs()));
    assert_restored_after_stop(env);
}

/// Forwarding is on for the fast path, but the host still routes nothing: a datagram the
/// media server sends to the firewall through the relay host stops at the guard.
#[test]
fn relay_host_does_not_route_while_forwarding_is_on() {
    let env = start(TopologyOptions::default());
    let target: SocketAddr = (env.addrs().firewall_inside, 9999).into();
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
    send_udp(&env.topo.media, target, b"routed?", 3);
    let mut buf = [0u8; 64];
    let got = sink.recv_from(&mut buf);
    assert!(
        got.is_err(),
        "the relay host routed media → firewall: {got:?}"
    );
    // Dropped by the guard, i.e. the stack would have routed it. The receive timeout
    // above does not prove all three reached the guard yet (veth delivers in a softirq,
    // late on a busy host): poll its counter.
    let guard_drops = || {
        let table = guard_table(&env.topo).expect("guard table present while the relay runs");
        let dropped: u64 = table
            .split("counter packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in the guard table:\n{table}"));
        (dropped, table)
    };
    let deadline = Instant::now() + COUNTER_WAIT;
    let (dropped, table) = loop {
        let (dropped, table) = guard_drops();
        if dropped >= 3 || Instant::now() >= deadline {
            break (dropped, table);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(dropped >= 3, "guard counted {dropped} drops:\n{table}");
    assert_restored_after_stop(env);
}

/// The CMS deployment: the media server allocates through the INTERNAL listener, a
/// browser through the NAT, each with a channel to the other's public relayed address.
/// Every packet is a hairpin between two allocations of this relay, across both NICs,
/// and none may reach the daemon once the channels are bound.
#[test]
fn media_server_and_browser_hairpin_in_the_kernel() {
    let env = start(TopologyOptions {
        nat_reflection: false,
    });
    let a = env.addrs();
    let ctx = |e: &dyn std::fmt::Display| env.with_log(e);
    let mut media = turn_client(&env.topo.media, (a.relay_internal, 3478).into(), PASSWORD);
    let mut browser = turn_client(&env.topo.client, env.server(), PASSWORD);
    let media_relayed = media.allocate().unwrap_or_else(|e| panic!("{}", ctx(&e)));
    let browser_relayed = browser.allocate().unwrap_or_else(|e| panic!("{}", ctx(&e)));
    media
        .channel_bind(0x4000, browser_relayed)
        .unwrap_or_else(|e| panic!("{}", ctx(&e)));
    browser
        .channel_bind(0x4001, media_relayed)
        .unwrap_or_else(|e| panic!("{}", ctx(&e)));

    const N: u64 = 50;
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
        e.assert_paths((0, 0), (N, N), &ctx(&format_args!("{ended:?}")));
    }
}

/// `[xdp] forwarding = "manual"` with forwarding off: the relay says exactly what to set,
/// changes nothing on the host, and relays everything in userspace (the program passes
/// what it cannot route).
#[test]
fn manual_forwarding_off_warns_and_falls_back_to_userspace() {
    let env = start_config(TopologyOptions::default(), |t| config_with(t, "manual"));
    for ifname in [&env.topo.relay_external_if, &env.topo.relay_internal_if] {
        let key = forwarding_key(ifname);
        let hint = format!("sysctl -w {key}=1");
        let warned = env.relay.log_lines(" WARN ");
        assert!(
            warned.iter().any(|l| l.contains(&hint)),
            "no warning naming `{hint}`:\n{}",
            env.relay.logs()
        );
        assert_eq!(
            sysctl(&env.topo.relay, &key),
            "0",
            "manual mode changed {key}"
        );
    }
    let table = guard_table(&env.topo);
    assert!(table.is_err(), "manual mode installed a guard: {table:?}");

    let mut u = uclient(&env, env.addrs().public);
    u.clients = 2;
    u.messages = 20;
    relay_all_on(&env, &env.topo.client, &u, Path::Userspace);
}

/// A PATH whose `nft` refuses every script as a host without nf_tables would, in a temp
/// dir that the returned guard removes.
struct FailingNft {
    dir: std::path::PathBuf,
}

/// What the stand-in prints, as nft does on a kernel without nf_tables.
const NFT_ERROR: &str = "Error: Could not process rule: Operation not supported";

impl FailingNft {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!(
            "relay-fake-nft-{}",
            relay_tests::netns::unique_id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let nft = dir.join("nft");
        std::fs::write(&nft, format!("#!/bin/sh\necho '{NFT_ERROR}' >&2\nexit 1\n"))
            .expect("write fake nft");
        std::fs::set_permissions(&nft, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self { dir }
    }

    fn launch(&self) -> Launch {
        let path = std::env::var("PATH").unwrap_or_default();
        Launch {
            env: vec![("PATH".into(), format!("{}:{path}", self.dir.display()))],
            ..Launch::default()
        }
    }
}

impl Drop for FailingNft {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `[xdp] forwarding = "auto"` on a host where nft refuses the guard: forwarding stays
/// off (fail closed: the host never routes unguarded), the program still runs on both
/// NICs and passes what it cannot route to userspace, which relays it; the log and
/// /api/status say why.
#[test]
fn forwarding_stays_off_when_the_guard_cannot_be_installed() {
    let nft = FailingNft::new();
    let launch = nft.launch();
    let env = Deployment::start_kernel_path(TopologyOptions::default(), |topo| {
        RelayProcess::start_launched(&topo.relay, &config(topo), &launch)
            .unwrap_or_else(|e| panic!("relay did not start: {e}"))
    })
    .with_media_peer();
    for ifname in [&env.topo.relay_external_if, &env.topo.relay_internal_if] {
        let key = forwarding_key(ifname);
        assert_eq!(
            sysctl(&env.topo.relay, &key),
            "0",
            "{key} turned on without its nftables guard:\n{}",
            env.relay.logs()
        );
        let link = env
            .topo
            .relay
            .ip(&["-d", "link", "show", "dev", ifname])
            .unwrap_or_else(|e| panic!("ip link show {ifname}: {e}"));
        assert!(
            link.contains("xdp") && link.contains("prog/xdp"),
            "no XDP program on {ifname}:\n{link}"
        );
    }
    let warned = env
        .relay
        .wait_for_log("forwarding stays OFF", Duration::ZERO)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        warned.contains(" WARN ") && warned.contains(NFT_ERROR) && warned.contains("nftables"),
        "the warning names neither nft's error nor what to do: {warned}"
    );
    let status = env
        .topo
        .relay
        .run(|| AdminClient::new("127.0.0.1:9641".parse().unwrap(), None).status())
        .expect("enter relay namespace")
        .unwrap_or_else(|e| panic!("/api/status: {e}\n{}", env.relay.logs()));
    let off = status.xdp.forwarding_off.clone().unwrap_or_default();
    assert!(
        off.contains(NFT_ERROR),
        "/api/status does not say why forwarding is off: {:?}",
        status.xdp
    );
    assert_eq!(status.xdp.interfaces.len(), 2, "{:?}", status.xdp);

    // ChannelData still reaches the peer and comes back, through userspace.
    let mut u = uclient(&env, env.addrs().public);
    u.clients = 2;
    u.messages = 20;
    relay_all_on(&env, &env.topo.client, &u, Path::Userspace);
}

/// The uid the relay runs as in [`runs_as_a_user_with_only_the_capabilities_it_keeps`]:
/// no account needed, nothing on the host owned by it.
const RELAY_UID: u32 = 64_000;
/// CAP_NET_ADMIN: all the relay keeps once its program runs (for teardown: restoring the
/// forwarding sysctls and removing the guard table).
const KEPT_CAPS: u64 = 1 << 12;

/// One `Name:\tvalue` line of a /proc status file.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
        .trim()
        .to_owned()
}

fn cap_mask(status: &str, name: &str) -> u64 {
    u64::from_str_radix(&status_field(status, name), 16).expect("hex capability mask")
}

/// As systemd starts it (`User=`, `AmbientCapabilities=`, `CapabilityBoundingSet=` of
/// deploy/relay.service): a non-root uid with the capabilities to start. Once its
/// program is attached it keeps CAP_NET_ADMIN alone, in every thread, and still relays in
/// the kernel, reloads on SIGHUP, and puts the host back at SIGTERM. With `[xdp]
/// program_upgrades = false`; by default it also keeps CAP_BPF and CAP_PERFMON for a
/// successor that loads a changed kernel program (README, "Upgrading without dropping
/// calls").
#[test]
fn runs_as_a_user_with_only_the_capabilities_it_keeps() {
    let caps = "-all,+bpf,+perfmon,+net_admin,+net_bind_service,+setpcap";
    let launch = Launch {
        wrapper: [
            "setpriv".to_owned(),
            format!("--reuid={RELAY_UID}"),
            format!("--regid={RELAY_UID}"),
            "--clear-groups".to_owned(),
            format!("--inh-caps={caps}"),
            format!("--ambient-caps={caps}"),
            format!("--bounding-set={caps}"),
        ]
        .into(),
        ..Launch::default()
    };
    let env = Deployment::start_kernel_path(TopologyOptions::default(), |topo| {
        let config = config(topo).replace(
            "forwarding = \"auto\"\n",
            "forwarding = \"auto\"\nprogram_upgrades = false\n",
        );
        assert!(config.contains("program_upgrades = false"), "{config}");
        RelayProcess::start_launched(&topo.relay, &config, &launch)
            .unwrap_or_else(|e| panic!("relay did not start: {e}"))
    })
    .with_media_peer();
    assert_startup_log(&env);
    let pid = env.relay.pid();
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the relay's threads")
        .map(|t| t.expect("task").path())
        .collect();
    assert!(tasks.len() > 1, "{tasks:?}");
    for task in &tasks {
        let status = std::fs::read_to_string(task.join("status")).expect("status");
        let who = format!("{} ({})", task.display(), status_field(&status, "Name"));
        assert_eq!(
            status_field(&status, "Uid"),
            format!("{RELAY_UID}\t{RELAY_UID}\t{RELAY_UID}\t{RELAY_UID}"),
            "{who}"
        );
        for set in ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"] {
            assert_eq!(
                cap_mask(&status, set),
                KEPT_CAPS,
                "{who}: {set} is {:#x}, not CAP_NET_ADMIN alone\n{}",
                cap_mask(&status, set),
                env.relay.logs()
            );
        }
    }
    let kept = env
        .relay
        .wait_for_log("capabilities dropped", Duration::ZERO)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(kept.contains("CAP_NET_ADMIN"), "{kept}");
    let kept_field = kept
        .split_whitespace()
        .find_map(|w| w.strip_prefix("kept="))
        .unwrap_or_else(|| panic!("no kept= in {kept}"));
    assert_eq!(kept_field, "CAP_NET_ADMIN", "{kept}");

    let mut u = uclient(&env, env.addrs().public);
    u.clients = 2;
    u.messages = 20;
    relay_all_on(&env, &env.topo.client, &u, Path::Kernel);

    env.relay.signal(libc::SIGHUP);
    env.relay
        .wait_for_log("configuration reloaded", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_restored_after_stop(env);
}
