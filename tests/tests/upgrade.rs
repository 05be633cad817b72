//! `relay upgrade`: a running relay hands its sockets and allocations to a new process
//! while `relay load` keeps many allocations echoing through it, in the deployment of
//! CONTEXT.md, with the kernel fast path off and with XDP native on the topology's veths
//! (the program stays attached and its maps stay the same objects across the upgrades).
//! Every allocation survives two upgrades with next to no loss, and a client's Refresh,
//! CreatePermission and ChannelBind after the upgrades pass with the nonce it got before
//! them. A Chromium call through the relay (a data channel between two relay-only peer
//! connections) stays up across the upgrades without reconnecting: the same selected
//! candidate pair before and after, ICE never "disconnected", "failed" or restarted, every
//! message in order. An upgrade to a config the new process refuses leaves the old one
//! serving; a killed relay leaves nothing behind that stops a fresh start.
//!
//! With XDP, the first of the two upgrades goes to a changed kernel program, swapped
//! into the same bpf_links; an upgrade to a config with XDP off detaches the program.
//!
//! Needs root, `target/debug/relay` built with relay-user's `test-hooks` feature (`cargo
//! build -p relay-user --features test-hooks`; `cargo xtask test` builds it so), the
//! nightly toolchain that builds the kernel program (for its second build, with
//! relay-ebpf's `version-bump`), and Chromium (`cargo xtask setup` installs both).

use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use relay_proto::stun::{ChannelNumber, Lifetime, Method, RequestedTransport, XorPeerAddress};
use relay_tests::{
    Topology, TopologyOptions,
    fixture::{attach_pass, warm_neighbours},
    load_gen::{Echo, num, spawn_load},
    metrics::Metrics,
    page::PageCall,
    relay::{Launch, RelayProcess},
    turn_client::new_txid,
    turn_codec::{Attrs, Credentials},
};
use relay_user::xdp::XdpPath;

const USER: &str = "alice";
const PASSWORD: &str = "pw";
const ECHO_PORT: u16 = 7000;
/// The channel the test's own client binds before the upgrades and refreshes after them.
const CHANNEL: u16 = 0x4001;
/// Allocations and echoes per second of the load during the upgrades. A debug build on a
/// shared two-core box relays this in userspace with room to spare.
const ALLOCATIONS: usize = 1000;
const RATE: u32 = 5000;
/// `[xdp] mode = "off"`: the issue's bound for the userspace path.
const MAX_LOSS: f64 = 0.001;
/// With XDP the kernel relays the echoes; the bound is the issue's for the kernel path.
/// The shared two-core box does not carry more within it reliably: at 20,000/s the same
/// topology loses ~0.2% with no upgrade at all (load generator, echo and other builds
/// share the two cores), and as much with the two upgrades; at 10,000/s two runs
/// without upgrades lost nothing, and of three with them two lost nothing and one 27
/// datagrams (0.029%), not yet traced.
const RATE_XDP: u32 = 5000;
const MAX_LOSS_XDP: f64 = 0.0001;
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);

fn relay_config(t: &Topology, realm: &str, xdp: bool) -> String {
    let a = t.addrs;
    let xdp = if xdp {
        format!(
            "interfaces = [\"{}\", \"{}\"]\nmode = \"native\"\nforwarding = \"auto\"",
            t.relay_external_if, t.relay_internal_if
        )
    } else {
        "mode = \"off\"".to_owned()
    };
    format!(
        r#"realm = "{realm}"

[[listen]]
address = "{ext}:3478"
transports = ["udp"]

[relay]
address = "{ext}"
public_address = "{public}"
ports = "24000-29999"

[auth]
users = {{ {USER} = "{PASSWORD}" }}

[peers]
allow = ["192.0.2.0/24", "{client}/32"]

[limits]
max_allocations_per_user = 5000
unauthenticated_rate = 0
drain_timeout = 0

[udp]
workers = 2

[xdp]
{xdp}
"#,
        ext = a.relay_external,
        public = a.public,
        client = a.client,
    )
}

/// The relays the upgrades started: the harness's [`RelayProcess`] only knows the first
/// pid, so the later ones are killed here (declared after it, dropped before it: its log
/// readers end only once every process writing to the pipe is gone).
#[derive(Default)]
struct Successors(Mutex<Vec<u32>>);

impl Successors {
    fn add(&self, pid: u32) {
        self.0.lock().unwrap().push(pid);
    }
}

impl Drop for Successors {
    fn drop(&mut self) {
        for &pid in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            // SAFETY: kill(2) of a relay this test started through `relay upgrade`.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// The deployment with the relay started in a runtime directory of its own (where the
/// control socket goes). Dropped in field order: the upgraded relays, then the first one,
/// then the namespaces.
struct Env {
    successors: Successors,
    relay: RelayProcess,
    /// With XDP: pass programs on the peers' veth ends (redirects into a veth need one).
    _pass: Vec<XdpPath>,
    t: Topology,
    runtime: PathBuf,
    xdp: bool,
}

impl Env {
    fn start(xdp: bool) -> Self {
        Self::start_with(xdp, None)
    }

    /// `successor_object`: the XDP object the relay's successors load instead of their
    /// embedded one (`RELAY_TEST_XDP_OBJECT`, honoured by a `test-hooks` build).
    fn start_with(xdp: bool, successor_object: Option<PathBuf>) -> Self {
        let t = Topology::new(TopologyOptions::default()).expect("topology");
        let runtime =
            std::env::temp_dir().join(format!("relay-upgrade-{}", relay_tests::netns::unique_id()));
        std::fs::create_dir_all(&runtime).unwrap();
        let mut pass = Vec::new();
        if xdp {
            pass.push(attach_pass(&t.firewall, t.firewall_inside_if()));
            pass.push(attach_pass(&t.media, t.media_if()));
        }
        let relay = start(&t, &runtime, xdp, successor_object);
        if xdp {
            warm_neighbours(&t);
        }
        Self {
            successors: Successors::default(),
            relay,
            _pass: pass,
            t,
            runtime,
            xdp,
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.runtime);
    }
}

fn start(
    t: &Topology,
    runtime: &Path,
    xdp: bool,
    successor_object: Option<PathBuf>,
) -> RelayProcess {
    let mut env = vec![(
        "RUNTIME_DIRECTORY".to_owned(),
        runtime.display().to_string(),
    )];
    if let Some(object) = successor_object {
        env.push((
            relay_user::xdp::swap::TEST_OBJECT_ENV.to_owned(),
            object.display().to_string(),
        ));
    }
    let launch = Launch {
        env,
        ..Launch::default()
    };
    RelayProcess::start_launched(&t.relay, &relay_config(t, "example.org", xdp), &launch)
        .expect("relay")
}

/// `relay upgrade --config FILE`: exit status and output.
fn upgrade(relay: &RelayProcess, runtime: &Path) -> (bool, String) {
    let mut child = Command::new(relay_tests::relay_binary())
        .args(["upgrade", "--config"])
        .arg(relay.config_path())
        .env("RUNTIME_DIRECTORY", runtime)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn relay upgrade");
    let deadline = Instant::now() + UPGRADE_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("relay upgrade did not finish within {UPGRADE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The new pid from `relay upgrade`'s summary ("... pid N (generation G) ...").
fn new_pid(summary: &str) -> u32 {
    summary
        .split("pid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {summary:?}"))
}

/// Relay sockets open in the relay host (one per allocation), counted with `ss`.
fn relay_sockets(t: &Topology) -> usize {
    let out = t
        .relay
        .exec("ss", &["-Huan", "sport", ">=", ":24000"])
        .unwrap_or_default();
    out.lines().count()
}

/// A TURN client that keeps its nonce: one UDP socket in the client host.
struct Client {
    sock: UdpSocket,
    server: SocketAddr,
    creds: Credentials,
}

impl Client {
    fn new(t: &Topology) -> Self {
        let server: SocketAddr = (t.addrs.public, 3478).into();
        let sock = t
            .client
            .run(|| UdpSocket::bind("0.0.0.0:0"))
            .unwrap()
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        Self {
            sock,
            server,
            creds: Credentials::new(USER, PASSWORD),
        }
    }

    /// One request, retransmitted until an answer comes (at most 5 tries); the answer.
    fn ask(&self, method: Method, attrs: Attrs<'_>) -> Vec<u8> {
        let mut buf = vec![0u8; 1500];
        let n = self
            .creds
            .write_request(&mut buf, method, new_txid(), attrs)
            .unwrap();
        let mut answer = vec![0u8; 1500];
        for _ in 0..5 {
            self.sock.send_to(&buf[..n], self.server).unwrap();
            if let Ok((len, _)) = self.sock.recv_from(&mut answer) {
                return answer[..len].to_vec();
            }
        }
        panic!("no answer to {method:?}");
    }

    /// Allocate: the 401 gives realm and nonce, the signed retry succeeds.
    fn allocate(&mut self) {
        let attrs: Attrs<'_> = &|w| w.attr(&RequestedTransport(17)).map(drop);
        let challenge = self.ask(Method::ALLOCATE, attrs);
        assert!(self.creds.absorb_challenge(&challenge), "no 401 challenge");
        let answer = self.ask(Method::ALLOCATE, attrs);
        self.creds
            .check(Method::ALLOCATE, &answer)
            .expect("Allocate");
    }

    /// ChannelData `data` on `channel`: the echo peer's answer must come back on it.
    fn channel_round_trip(&self, channel: u16, data: &[u8]) {
        let mut msg = Vec::with_capacity(4 + data.len() + 3);
        msg.extend_from_slice(&channel.to_be_bytes());
        msg.extend_from_slice(&(data.len() as u16).to_be_bytes());
        msg.extend_from_slice(data);
        msg.resize(msg.len().next_multiple_of(4), 0);
        let mut answer = vec![0u8; 1500];
        for _ in 0..5 {
            self.sock.send_to(&msg, self.server).unwrap();
            while let Ok((len, _)) = self.sock.recv_from(&mut answer) {
                if let Some(r) = relay_tests::turn_codec::received(&answer[..len]) {
                    assert_eq!(r.channel, Some(channel), "echo on another channel");
                    assert_eq!(r.data, data, "the echo changed the data");
                    return;
                }
            }
        }
        panic!("no echo on channel {channel:#06x}");
    }

    /// `method` signed with the nonce held: it must succeed (no new nonce is taken).
    fn must_pass(&self, method: Method, attrs: Attrs<'_>) {
        let answer = self.ask(method, attrs);
        self.creds
            .check(method, &answer)
            .unwrap_or_else(|e| panic!("{method:?} with the nonce from before: {e}"));
    }
}

/// Hard limit for the load run (10 s of traffic, setup, two upgrades).
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the Chromium call may last: the load's setup and run, the upgrades.
const CALL_MAX: Duration = Duration::from_secs(120);

/// The id of the XDP program attached to the relay's external interface, if any.
fn xdp_prog_id(t: &Topology) -> Option<u64> {
    let out = t
        .relay
        .exec("ip", &["-d", "link", "show", "dev", &t.relay_external_if])
        .unwrap_or_default();
    let rest = out.split("prog/xdp id ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The XDP bpf_links process `pid` holds, as (link id, program id), read from its
/// descriptors' fdinfo (the kernel's own account: bpf_link_show_fdinfo).
fn xdp_links(pid: u32) -> Vec<(u64, u64)> {
    let mut links = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return links;
    };
    for entry in dir.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if !text
            .lines()
            .any(|l| l.starts_with("link_type:") && l.ends_with("xdp"))
        {
            continue;
        }
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(link), Some(prog)) = (field("link_id:"), field("prog_id:")) {
            links.push((link, prog));
        }
    }
    links.sort_unstable();
    links.dedup();
    links
}

#[test]
fn allocations_and_nonces_survive_two_upgrades_under_load() {
    two_upgrades_under_load(false, RATE, MAX_LOSS);
}

#[test]
fn xdp_keeps_forwarding_through_two_upgrades_under_load() {
    two_upgrades_under_load(true, RATE_XDP, MAX_LOSS_XDP);
}

/// The echo peer in the media host (it drops nothing: one in a billion), and a client
/// with an allocation and [`CHANNEL`] bound to the echo, which answered once.
fn echo_and_channel(t: &Topology) -> (Echo, String, SocketAddr, Client) {
    let echo_addr = format!("{}:{ECHO_PORT}", t.addrs.media);
    let echo = Echo::start(&t.media, &echo_addr, Some(1_000_000_000));
    let peer: SocketAddr = echo_addr.parse().unwrap();
    let mut client = Client::new(t);
    client.allocate();
    client.must_pass(Method::CHANNEL_BIND, &|w| {
        w.attr(&ChannelNumber(CHANNEL))?;
        w.attr(&XorPeerAddress(peer)).map(drop)
    });
    client.channel_round_trip(CHANNEL, b"before the upgrades");
    (echo, echo_addr, peer, client)
}

/// With XDP, the first upgrade goes to a changed kernel program (relay-ebpf built with
/// `version-bump`, [`relay_tests::bumped_ebpf`]): the new process loads it onto the
/// running maps and swaps it into the same bpf_links; the second goes to the same
/// program as the first's.
fn two_upgrades_under_load(xdp: bool, rate: u32, max_loss: f64) {
    let env = Env::start_with(xdp, xdp.then(relay_tests::bumped_ebpf::object));
    let prog = xdp_prog_id(&env.t);
    assert_eq!(prog.is_some(), xdp, "XDP attached: {prog:?}");
    let links = xdp_links(env.relay.pid());
    assert_eq!(!links.is_empty(), xdp, "XDP links of the relay: {links:?}");
    let mut expected_prog = prog;
    let (t, relay, runtime, successors) = (&env.t, &env.relay, &env.runtime, &env.successors);
    // A client of our own whose nonce must stay good across the upgrades, with a channel
    // bound before them: the new processes must know it, and refreshing it (same number,
    // same peer) must pass with the old nonce.
    let (_echo, echo_addr, peer, client) = echo_and_channel(t);

    let server = format!("{}:3478", t.addrs.public);
    let (n, rate_arg) = (ALLOCATIONS.to_string(), rate.to_string());
    let args = [
        server.as_str(),
        "-u",
        USER,
        "-p",
        PASSWORD,
        "--peer",
        &echo_addr,
        "-n",
        &n,
        "--rate",
        &rate_arg,
        "--duration",
        "10",
    ];
    // The Chromium call, flowing before the load starts and ended after the upgrades.
    let ice = format!("turn:{}:3478?transport=udp", t.addrs.public);
    let call = PageCall::start(&t.client, relay, &ice, CALL_MAX);
    let load = spawn_load(&t.client, &args);
    // Traffic flows once every allocation has its relay socket.
    let deadline = Instant::now() + Duration::from_secs(30);
    // The load's, the test client's and Chromium's (one per peer connection).
    while relay_sockets(t) < ALLOCATIONS + 3 {
        assert!(
            Instant::now() < deadline,
            "the load's allocations were not all made: {} relay sockets",
            relay_sockets(t)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    for generation in [2, 3] {
        let (ok, summary) = upgrade(relay, runtime);
        assert!(ok, "relay upgrade failed: {summary}");
        successors.add(new_pid(&summary));
        assert!(
            summary.contains(&format!("(generation {generation})")),
            "{summary}"
        );
        relay
            .wait_for_log(&format!("generation={generation}"), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
        if xdp {
            // The same links throughout (never detached: the kernel kept forwarding);
            // the first upgrade swapped the changed program into them, the second kept it.
            let now = xdp_links(new_pid(&summary));
            let ids = |l: &[(u64, u64)]| l.iter().map(|(link, _)| *link).collect::<Vec<_>>();
            assert_eq!(
                ids(&now),
                ids(&links),
                "the XDP links changed: {now:?}, before {links:?}"
            );
            let attached = xdp_prog_id(t);
            assert!(
                now.iter().all(|(_, p)| Some(*p) == attached),
                "{now:?}, attached {attached:?}"
            );
            if generation == 2 {
                assert_ne!(
                    attached, prog,
                    "the changed kernel program was not swapped in (is target/debug/relay built with relay-user's test-hooks feature?)"
                );
                relay
                    .wait_for_log("replaced by this build's", Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("{e}"));
                expected_prog = attached;
            } else {
                assert_eq!(attached, expected_prog, "the XDP program changed");
            }
            // ... and runs on the maps the allocations are in: a program left on maps
            // of its own would forward nothing (every packet would go up to userspace,
            // which carries this rate too, so the loss bound alone would not tell).
            let before = kernel_forwarded(t);
            std::thread::sleep(Duration::from_secs(2));
            let forwarded = kernel_forwarded(t) - before;
            assert!(
                forwarded >= f64::from(rate),
                "the kernel forwarded {forwarded} packets in 2 s after generation \
                 {generation} took over (the load sends {rate}/s each way): the program does \
                 not see the allocations' maps"
            );
        } else {
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    let (code, report) = load.finish(LOAD_TIMEOUT).report();
    let call = call.finish(relay);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(num(&report, "setup.ready") as usize, ALLOCATIONS);
    let loss = num(&report, "traffic.loss_ratio");
    let sent = num(&report, "traffic.sent");
    eprintln!(
        "upgrade under load (xdp {xdp}): {ALLOCATIONS} allocations, {rate}/s, sent {sent}, loss {loss:.6}"
    );
    for (name, ns) in [
        ("relay", &t.relay),
        ("client", &t.client),
        ("media", &t.media),
    ] {
        let snmp = ns.exec(
            "nstat",
            &["-az", "UdpRcvbufErrors", "UdpSndbufErrors", "UdpInErrors"],
        );
        eprintln!("{name}: {}", snmp.unwrap_or_default().replace('\n', " | "));
    }
    assert!(loss <= max_loss, "loss {loss} over {max_loss}: {report:#}");
    call.assert_steady(relay, max_loss);
    // Deleting them at the end went to the newest process: it knew them all.
    assert_eq!(num(&report, "deleted") as usize, ALLOCATIONS, "{report:#}");

    // The nonce issued by the first process is good in the third.
    client.must_pass(Method::REFRESH, &|w| w.attr(&Lifetime(600)).map(drop));
    client.must_pass(Method::CREATE_PERMISSION, &|w| {
        w.attr(&XorPeerAddress(peer)).map(drop)
    });
    client.channel_round_trip(CHANNEL, b"after the upgrades");
    client.must_pass(Method::CHANNEL_BIND, &|w| {
        w.attr(&ChannelNumber(CHANNEL))?;
        w.attr(&XorPeerAddress(peer)).map(drop)
    });
    client.channel_round_trip(CHANNEL, b"after the refresh");
    let pauses = relay.log_lines("handed over:");
    assert_eq!(pauses.len(), 2, "{pauses:?}");
    for line in &pauses {
        eprintln!("{line}");
    }
}

#[test]
fn an_upgrade_to_a_config_the_new_process_refuses_leaves_the_old_one_serving() {
    let env = Env::start(false);
    let (t, relay, runtime, successors) = (&env.t, &env.relay, &env.runtime, &env.successors);
    let mut client = Client::new(t);
    client.allocate();

    relay.rewrite_config(&format!(
        "{}\nno_such_key = 1\n",
        relay_config(t, "example.org", false)
    ));
    let (ok, text) = upgrade(relay, runtime);
    assert!(!ok, "the upgrade passed: {text}");
    assert!(text.contains("no_such_key"), "reason not given: {text}");
    relay
        .wait_for_log("upgrade failed", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(relay.unexpected_stop().is_none());
    // The allocation is still there, in the old process, with its nonce.
    client.must_pass(Method::REFRESH, &|w| w.attr(&Lifetime(600)).map(drop));

    // With the config fixed, the same relay upgrades.
    relay.rewrite_config(&relay_config(t, "example.org", false));
    let (ok, summary) = upgrade(relay, runtime);
    assert!(ok, "{summary}");
    successors.add(new_pid(&summary));
    client.must_pass(Method::REFRESH, &|w| w.attr(&Lifetime(600)).map(drop));
}

/// What the XDP path needs on the relay host: each XDP interface's IPv4 forwarding
/// sysctl, and whether the `inet relay_guard` table is there.
fn forwarding_state(t: &Topology) -> (Vec<String>, bool) {
    let sysctls = [&t.relay_external_if, &t.relay_internal_if]
        .iter()
        .map(|i| {
            t.relay
                .exec("sysctl", &["-n", &format!("net.ipv4.conf.{i}.forwarding")])
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .collect();
    let table = t
        .relay
        .exec("nft", &["list", "table", "inet", "relay_guard"])
        .is_ok();
    (sysctls, table)
}

/// Packets the kernel relayed (both directions), from the relay's `/metrics`.
fn kernel_forwarded(t: &Topology) -> f64 {
    let m = Metrics::scrape(&t.relay, "127.0.0.1:9641", None);
    m.value("relay_xdp_packets_total{reason=\"forwarded_to_peer\"}")
        + m.value("relay_xdp_packets_total{reason=\"forwarded_to_client\"}")
}

#[test]
fn xdp_an_upgrade_the_new_process_refuses_after_taking_the_kernel_path_leaves_forwarding_on() {
    let env = Env::start(true);
    let (t, relay, runtime) = (&env.t, &env.relay, &env.runtime);
    let prog = xdp_prog_id(t);
    assert!(prog.is_some(), "XDP not attached");
    let (_echo, _, _, client) = echo_and_channel(t);
    let before = forwarding_state(t);
    assert_eq!(before, (vec!["1".to_owned(), "1".to_owned()], true));

    // Another UDP listener: the new process loads the config, takes the program, maps
    // and forwarding guard over, and only then finds the listeners differ and refuses.
    relay.rewrite_config(&relay_config(t, "example.org", true).replace(":3478\"", ":3479\""));
    let (ok, text) = upgrade(relay, runtime);
    assert!(!ok, "the upgrade passed: {text}");
    assert!(text.contains("UDP listeners"), "reason not given: {text}");
    relay
        .wait_for_log("upgrade failed", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(relay.unexpected_stop().is_none());
    // The refused process left the host as the old one set it up.
    assert_eq!(
        forwarding_state(t),
        before,
        "forwarding undone by the refused process"
    );
    assert_eq!(xdp_prog_id(t), prog, "the XDP program changed");
    // And the kernel still relays the old process's channel.
    let forwarded = kernel_forwarded(t);
    for i in 0..5u8 {
        client.channel_round_trip(CHANNEL, &[i; 64]);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while kernel_forwarded(t) < forwarded + 10.0 {
        assert!(
            Instant::now() < deadline,
            "the kernel relayed {} of the 10 datagrams after the refused upgrade",
            kernel_forwarded(t) - forwarded
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An upgrade to a config with `[xdp] mode = "off"`: the new process relays in userspace
/// and takes the program off the interfaces at commit, rather than leaving it forwarding
/// on maps nobody updates for as long as the old process lives (it may, for its TCP/TLS
/// connections); the allocation made before goes on relaying.
#[test]
fn xdp_an_upgrade_to_a_config_with_xdp_off_detaches_the_program() {
    let env = Env::start(true);
    let (t, relay, runtime) = (&env.t, &env.relay, &env.runtime);
    assert!(xdp_prog_id(t).is_some(), "XDP not attached");
    let (_echo, _, _, client) = echo_and_channel(t);
    relay.rewrite_config(&relay_config(t, "example.org", false));
    let (ok, summary) = upgrade(relay, runtime);
    assert!(ok, "relay upgrade failed: {summary}");
    env.successors.add(new_pid(&summary));
    relay
        .wait_for_log("the new config turns XDP off", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(xdp_prog_id(t), None, "the XDP program is still attached");
    client.channel_round_trip(CHANNEL, b"after XDP went off");
}

#[test]
fn sigusr2_upgrades_and_a_killed_relay_starts_again_cleanly() {
    sigusr2_then_kill(false);
}

#[test]
fn xdp_sigusr2_upgrades_and_a_killed_relay_starts_again_cleanly() {
    sigusr2_then_kill(true);
}

fn sigusr2_then_kill(xdp: bool) {
    let env = Env::start(xdp);
    let prog = xdp_prog_id(&env.t);
    let (t, relay, runtime, successors) = (&env.t, &env.relay, &env.runtime, &env.successors);
    let mut client = Client::new(t);
    client.allocate();

    // SIGUSR2: the binary at the relay's own path takes over.
    relay.signal(libc::SIGUSR2);
    let line = relay
        .wait_for_log("handed over:", UPGRADE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let pid = new_pid(&line);
    successors.add(pid);
    relay
        .wait_for_log("generation=2", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    client.must_pass(Method::REFRESH, &|w| w.attr(&Lifetime(600)).map(drop));
    assert_eq!(xdp_prog_id(t), prog, "the XDP program changed");

    // A crash is not a handover: after kill -9 a fresh start in the same runtime
    // directory finds the control socket file left behind, replaces it, and upgrades.
    // SAFETY: kill(2) of the relay this test made take over.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "pid {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The program detached with the last descriptor of its link (nothing is pinned).
    let deadline = Instant::now() + Duration::from_secs(3);
    while xdp_prog_id(t).is_some() {
        assert!(
            Instant::now() < deadline,
            "XDP still attached after the crash"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let again = start(t, runtime, env.xdp, None);
    if xdp {
        // The guard table the killed process took over is found and undone, then made
        // anew; the program attaches again.
        again
            .wait_for_log("did not stop cleanly", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            xdp_prog_id(t).is_some(),
            "XDP not attached after a fresh start"
        );
    }
    let after_crash = Successors::default();
    let (ok, summary) = upgrade(&again, runtime);
    assert!(ok, "{summary}");
    after_crash.add(new_pid(&summary));
}
