//! Operating the relay, end to end in the deployment of CONTEXT.md: the admin endpoint's
//! usage view and metrics during a live `turnutils_uclient` session (kernel counters
//! included), SIGHUP reloads (a new password while an allocation keeps relaying, a bad
//! config refused), SIGTERM drains, a full relay redirects to an alternate, and the admin
//! token.
//!
//! The admin endpoint listens on the relay host's loopback (127.0.0.1:9641 inside the
//! relay namespace); queries run on a thread that entered that namespace.
//!
//! Needs root, `coturn`, `nftables` and `target/debug/relay` (`cargo build -p relay-user`).

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use relay_admin_api::{AllocationView, AllocationsView, StatusView};
use relay_tests::{
    Topology, TopologyOptions,
    fixture::{
        Deployment, RELAY_PORTS, RelayConfig, UCLIENT_TIMEOUT, USER, start_relay, toml_list,
        turn_client, wait_until,
    },
    metrics::Metrics,
    relay_cli,
    turn_client::{TurnClient, TurnError},
};
use relay_tools::status::{AdminClient, StatusError};

const ADMIN: &str = "127.0.0.1:9641";
const TOKEN: &str = "admin-token-1";
const CHANNEL: u16 = 0x4000;
const LOG_WAIT: Duration = Duration::from_secs(5);

/// The settings the tests vary.
#[derive(Clone)]
struct Cfg {
    password: &'static str,
    token: &'static str,
    xdp: bool,
    max_allocations: usize,
    alternates: &'static [&'static str],
    drain_timeout: u64,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg {
            password: "pw",
            token: TOKEN,
            xdp: false,
            max_allocations: 100,
            alternates: &[],
            drain_timeout: 30,
        }
    }
}

/// The deployment's config: both NICs answer, relay ports on the external one, the NAT
/// address advertised, the media subnet allowed as peers, admin on loopback.
fn config(topo: &Topology, cfg: &Cfg) -> String {
    let xdp = if cfg.xdp {
        format!(
            "interfaces = [\"{}\", \"{}\"]\nmode = \"native\"\nforwarding = \"auto\"",
            topo.relay_external_if, topo.relay_internal_if
        )
    } else {
        "interfaces = []\nmode = \"off\"".to_owned()
    };
    RelayConfig {
        password: cfg.password.to_owned(),
        sections: format!(
            r#"[limits]
max_allocations = {max}
alternate_servers = {alternates}
drain_timeout = {drain}

[admin]
address = "{ADMIN}"
token = "{token}"

[xdp]
{xdp}
"#,
            max = cfg.max_allocations,
            alternates = toml_list(cfg.alternates),
            drain = cfg.drain_timeout,
            token = cfg.token,
        ),
        ..RelayConfig::deployment(&topo.addrs)
    }
    .to_string()
}

/// The deployment with the media host's echo peer, and with `cfg.xdp` ready for the
/// kernel path.
fn start(cfg: &Cfg) -> Deployment {
    let opts = TopologyOptions::default();
    let start = |t: &Topology| start_relay(&t.relay, &config(t, cfg));
    let env = if cfg.xdp {
        Deployment::start_kernel_path(opts, start)
    } else {
        Deployment::start(opts, start)
    }
    .with_media_peer();
    env.relay
        .wait_for_log("admin API listening", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    env
}

/// The relay's admin endpoint, queried from inside the relay namespace.
trait AdminApi {
    /// `f` with an admin client, on a thread inside the relay namespace.
    fn admin<T: Send + 'static>(
        &self,
        token: Option<&str>,
        f: impl FnOnce(AdminClient) -> T + Send + 'static,
    ) -> T;
    fn allocations(&self) -> AllocationsView;
    fn status(&self, token: &str) -> StatusView;
    fn metrics(&self) -> Metrics;
}

impl AdminApi for Deployment {
    fn admin<T: Send + 'static>(
        &self,
        token: Option<&str>,
        f: impl FnOnce(AdminClient) -> T + Send + 'static,
    ) -> T {
        let client = AdminClient::new(ADMIN.parse().unwrap(), token.map(str::to_owned));
        self.topo
            .relay
            .run(move || f(client))
            .expect("enter relay namespace")
    }

    fn allocations(&self) -> AllocationsView {
        self.admin(Some(TOKEN), |c| c.allocations())
            .unwrap_or_else(|e| panic!("/api/allocations: {e}\n{}", self.relay.logs()))
    }

    fn status(&self, token: &str) -> StatusView {
        let token = token.to_owned();
        self.admin(Some(&token), |c| c.status())
            .unwrap_or_else(|e| panic!("/api/status: {e}\n{}", self.relay.logs()))
    }

    fn metrics(&self) -> Metrics {
        let (code, text) = self
            .admin(Some(TOKEN), |c| c.get("/metrics"))
            .unwrap_or_else(|e| panic!("/metrics: {e}"));
        assert_eq!(code, 200, "{text}");
        Metrics::parse(&text)
    }
}

/// A client with a channel to the media server's echo peer, proven to relay.
fn connected_client(env: &Deployment, password: &str) -> TurnClient {
    let mut c = turn_client(&env.topo.client, env.server(), password);
    c.allocate().unwrap_or_else(|e| panic!("allocate: {e}"));
    c.create_permission(&[env.media_peer()])
        .unwrap_or_else(|e| panic!("CreatePermission: {e}"));
    c.channel_bind(CHANNEL, env.media_peer())
        .unwrap_or_else(|e| panic!("ChannelBind: {e}"));
    assert_echo(env, &mut c, b"hello");
    c
}

/// ChannelData to the echo peer comes back on the channel.
fn assert_echo(env: &Deployment, c: &mut TurnClient, payload: &[u8]) {
    c.send_channel_data(CHANNEL, payload).expect("send");
    let got = c
        .recv_data(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{}", env.with_log(format!("no echo of {payload:?}: {e}"))));
    assert_eq!(got.channel, Some(CHANNEL));
    assert_eq!(got.data, payload);
}

#[test]
fn usage_view_and_metrics_follow_a_live_uclient_session() {
    let env = start(&Cfg {
        xdp: true,
        ..Cfg::default()
    });
    let a = env.topo.addrs;
    let mut u = env.uclient();
    u.no_rtcp = true;
    // Long enough to be looked at while it runs: 300 messages, one every 20 ms.
    u.messages = 300;
    u.interval_ms = Some(20);

    let (live, run) = std::thread::scope(|s| {
        let client_ns = &env.topo.client;
        let uclient = s.spawn(|| u.run(client_ns, UCLIENT_TIMEOUT));
        // The allocation, once media has gone both ways through the kernel.
        let mut seen: Option<AllocationView> = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !uclient.is_finished() {
            let view = env.allocations();
            // uclient also makes an allocation it never uses: take the one with a channel.
            seen = view
                .allocations
                .into_iter()
                .find(|al| al.user == USER && !al.channels.is_empty());
            let through_kernel = seen
                .as_ref()
                .and_then(|al| al.kernel)
                .is_some_and(|k| k.to_peer_packets >= 20 && k.to_client_packets >= 20);
            if through_kernel {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let metrics = env.metrics();
        let table = env.topo.relay.exec(
            relay_tests::relay_binary().to_str().unwrap(),
            &["status", "--admin", ADMIN, "--token", TOKEN],
        );
        let run = uclient.join().expect("uclient thread");
        ((seen, metrics, table), run)
    });
    let run = run.unwrap_or_else(|e| panic!("turnutils_uclient: {e}"));
    let context = env.context(&run);
    let (seen, metrics, table) = live;
    let al = seen.unwrap_or_else(|| panic!("alice's allocation never showed\n{context}"));

    // Who, from where, through which NIC, relayed where: the usage view's columns.
    assert_eq!(al.transport, "udp");
    assert_eq!(al.client.ip(), std::net::IpAddr::V4(a.client), "{al:?}");
    assert_eq!(al.listener, SocketAddr::from((a.relay_external, 3478)));
    assert_eq!(al.relayed.len(), 1);
    let r = al.relayed[0];
    assert_eq!(r.public.ip(), std::net::IpAddr::V4(a.public), "{al:?}");
    assert_eq!(
        r.bind,
        SocketAddr::from((a.relay_external, r.public.port()))
    );
    assert!(RELAY_PORTS.contains(&r.public.port()), "{al:?}");
    assert!(
        al.permissions
            .iter()
            .any(|p| p.peer == std::net::IpAddr::V4(a.media)),
        "{al:?}"
    );
    assert!(
        al.channels
            .iter()
            .any(|c| c.peer == env.media_peer() && !c.cooling),
        "{al:?}"
    );
    assert!(
        al.remaining_s > 0 && al.remaining_s <= al.lifetime_s,
        "{al:?}"
    );
    assert!(al.age_s < 60, "{al:?}");
    // Media went through the kernel in both directions, and the total adds both paths.
    let k = al
        .kernel
        .unwrap_or_else(|| panic!("no kernel counters: {al:?}\n{context}"));
    assert!(
        k.to_peer_packets >= 20 && k.to_client_packets >= 20,
        "{al:?}\n{context}"
    );
    assert!(k.to_peer_bytes >= 20 * 100, "{al:?}");
    assert_eq!(
        al.total.to_peer_packets,
        al.userspace.to_peer_packets + k.to_peer_packets
    );

    // The same session in the metrics, by path.
    assert!(metrics.sum("relay_allocations_active") >= 1.0);
    assert!(metrics.get("relay_allocations_created_total") >= 1.0);
    let xdp_to_peer = metrics.get("relay_packets_total{path=\"xdp\",direction=\"to_peer\"}");
    assert!(xdp_to_peer >= 20.0, "xdp to_peer {xdp_to_peer}");
    assert!(metrics.get("relay_packets_total{path=\"xdp\",direction=\"to_client\"}") >= 20.0);
    assert!(metrics.get("relay_bytes_total{path=\"xdp\",direction=\"to_peer\"}") >= 2000.0);
    assert!(metrics.get("relay_xdp_packets_total{reason=\"forwarded_to_peer\"}") >= 20.0);
    assert!(metrics.get("relay_xdp_map_entries{map=\"allocations\"}") >= 1.0);
    assert!(metrics.get("relay_xdp_map_entries{map=\"channels\"}") >= 1.0);
    let relays = relay_common::map_sizes(Cfg::default().max_allocations as u32)
        .iter()
        .find(|(name, _)| *name == relay_common::ALLOCATIONS_MAP)
        .map(|(_, n)| f64::from(*n))
        .unwrap();
    assert_eq!(
        metrics.get("relay_xdp_map_capacity{map=\"allocations\"}"),
        relays
    );
    assert_eq!(metrics.get("relay_draining"), 0.0);
    // The first Allocate of a session is always challenged.
    assert!(metrics.get("relay_error_responses_total{code=\"401\"}") >= 1.0);

    // `relay status` prints the same allocation as a table row.
    let table = table.unwrap_or_else(|e| panic!("relay status: {e}"));
    let row = table
        .lines()
        .find(|l| l.contains(&r.public.to_string()))
        .unwrap_or_else(|| panic!("no row for {}:\n{table}", r.public));
    assert!(row.contains(USER), "{row}");
    assert!(row.contains(&a.client.to_string()), "{row}");
    assert!(table.contains("CLIENT"), "{table}");

    // uclient deletes the allocation on exit; its kernel traffic stays in the totals.
    assert!(run.success(), "uclient failed\n{context}");
    let mut left = 0;
    wait_until("the allocation to end", LOG_WAIT, || {
        let view = env.allocations();
        left = view.count;
        view.allocations.iter().all(|other| other.id != al.id)
    });
    let after = env.metrics();
    assert!(after.get("relay_allocations_ended_total{reason=\"deleted\"}") >= 1.0);
    assert_eq!(after.sum("relay_allocations_active"), left as f64);
    assert!(
        after.get("relay_packets_total{path=\"xdp\",direction=\"to_peer\"}") >= xdp_to_peer,
        "kernel traffic of the ended allocation left the totals"
    );
    assert_eq!(
        after.get("relay_xdp_map_entries{map=\"allocations\"}"),
        left as f64
    );
    assert_eq!(after.get("relay_xdp_map_entries{map=\"channels\"}"), 0.0);
}

/// `/api/status` once its reload counts are `(succeeded, refused)`. The relay logs a
/// reload's outcome before it counts it, so right after the log line the status may
/// still show the previous counts: poll, and fail with the last status seen.
fn status_after_reloads(env: &Deployment, token: &str, want: (u64, u64)) -> StatusView {
    let deadline = Instant::now() + LOG_WAIT;
    loop {
        let status = env.status(token);
        let got = (status.reloads.succeeded, status.reloads.refused);
        if got == want {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "reloads (succeeded, refused) = {got:?}, want {want:?}: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_changes_a_password_while_an_allocation_keeps_relaying() {
    let env = start(&Cfg::default());
    let mut old = connected_client(&env, "pw");

    // New password and new admin token, then SIGHUP.
    let new_cfg = Cfg {
        password: "pw-new",
        token: "admin-token-2",
        ..Cfg::default()
    };
    env.relay.rewrite_config(&config(&env.topo, &new_cfg));
    env.relay.signal(libc::SIGHUP);
    env.relay
        .wait_for_log("configuration reloaded", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));

    // The allocation made with the old password still relays.
    assert_echo(&env, &mut old, b"after reload");
    // A new allocation with the old password is refused, with the new one it works.
    let mut refused = turn_client(&env.topo.client, env.server(), "pw");
    match refused.allocate() {
        Err(TurnError::Code { code: 401, .. }) => {}
        other => panic!("old password: expected 401, got {other:?}"),
    }
    connected_client(&env, "pw-new");
    // The token changed too: the old one is refused.
    let (code, _) = env.admin(Some(TOKEN), |c| c.get("/api/status")).unwrap();
    assert_eq!(code, 401);
    let status = status_after_reloads(&env, "admin-token-2", (1, 0));
    assert_eq!(status.allocations, Some(2));

    // A broken config is refused with its reason; the one in force stays.
    let broken = config(&env.topo, &new_cfg).replace(
        &format!("max_allocations = {}", new_cfg.max_allocations),
        "max_allocations = 0",
    );
    env.relay.rewrite_config(&broken);
    env.relay.signal(libc::SIGHUP);
    let line = env
        .relay
        .wait_for_log("configuration reload refused", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("limits.max_allocations"), "{line}");
    connected_client(&env, "pw-new");
    assert_echo(&env, &mut old, b"after refused reload");
    let status = status_after_reloads(&env, "admin-token-2", (1, 1));
    let last = status.reloads.last.expect("last reload");
    assert!(
        !last.ok && last.message.contains("limits.max_allocations"),
        "{last:?}"
    );
    assert!(env.relay.unexpected_stop().is_none());
}

#[test]
fn drain_refuses_new_allocations_and_lets_existing_ones_finish() {
    let cfg = Cfg {
        drain_timeout: 30,
        ..Cfg::default()
    };
    let env = start(&cfg);
    let mut existing = connected_client(&env, "pw");
    env.relay.signal(libc::SIGTERM);
    env.relay
        .wait_for_log("draining", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));

    let (code, body) = env.admin(None, |c| c.get("/healthz")).unwrap();
    assert_eq!((code, body.as_str()), (503, "draining\n"));
    assert!(env.allocations().draining);
    // New allocations: 508 (no alternate configured).
    match turn_client(&env.topo.client, env.server(), "pw").allocate() {
        Err(TurnError::Code { code: 508, .. }) => {}
        other => panic!("allocate while draining: expected 508, got {other:?}"),
    }
    // The existing one still relays and may refresh.
    assert_echo(&env, &mut existing, b"while draining");
    existing.refresh(600).expect("refresh while draining");
    assert_eq!(env.metrics().get("relay_draining"), 1.0);

    // Once it ends, the relay stops on its own, long before the drain timeout.
    let start = Instant::now();
    existing.refresh(0).expect("delete");
    wait_until("the relay to exit", Duration::from_secs(10), || {
        env.relay.exited()
    });
    assert!(start.elapsed() < Duration::from_secs(cfg.drain_timeout));
    let logs = env.relay.logs();
    assert!(logs.contains("drained: no allocations left"), "{logs}");
    assert!(!logs.contains("drain timeout passed"), "{logs}");
}

#[test]
fn a_second_sigterm_stops_a_drain_at_once() {
    let env = start(&Cfg {
        drain_timeout: 600,
        ..Cfg::default()
    });
    let _held = connected_client(&env, "pw");
    env.relay.signal(libc::SIGTERM);
    env.relay
        .wait_for_log("draining", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    env.relay.signal(libc::SIGTERM);
    wait_until("the relay to exit", Duration::from_secs(5), || {
        env.relay.exited()
    });
    let line = env
        .relay
        .wait_for_log("second signal while draining", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("allocations=1"), "{line}");
}

#[test]
fn a_full_relay_redirects_to_an_alternate() {
    let env = start(&Cfg {
        max_allocations: 1,
        alternates: &["203.0.113.60:3478"],
        ..Cfg::default()
    });
    let _first = connected_client(&env, "pw");
    // The media server's probe, from the internet side: 300 with ALTERNATE-SERVER.
    let out = relay_cli(&env.topo.client)
        .args([
            "stun",
            &env.server().to_string(),
            "-u",
            USER,
            "-p",
            "pw",
            "--json",
        ])
        .output()
        .expect("run relay stun");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("stun JSON");
    let error = &report["allocation"]["error"];
    assert_eq!(error["code"], 300, "{stdout}");
    assert_eq!(error["alternate_server"], "203.0.113.60:3478", "{stdout}");

    let m = env.metrics();
    assert_eq!(m.get("relay_allocations_redirected_total"), 1.0);
    assert_eq!(m.get("relay_error_responses_total{code=\"300\"}"), 1.0);
    let status = env.status(TOKEN);
    assert_eq!(status.limits.max_allocations, 1);
    assert_eq!(
        status.limits.alternate_servers,
        vec!["203.0.113.60:3478".parse::<SocketAddr>().unwrap()]
    );
}

#[test]
fn admin_token_is_enforced() {
    let env = start(&Cfg::default());
    for path in ["/metrics", "/api/allocations", "/api/status"] {
        let (anonymous, _) = env.admin(None, move |c| c.get(path)).unwrap();
        let (wrong, _) = env.admin(Some("guess"), move |c| c.get(path)).unwrap();
        let (right, _) = env.admin(Some(TOKEN), move |c| c.get(path)).unwrap();
        assert_eq!((anonymous, wrong, right), (401, 401, 200), "{path}");
    }
    let (code, _) = env.admin(None, |c| c.get("/healthz")).unwrap();
    assert_eq!(code, 200);
    match env.admin(None, |c| c.allocations()) {
        Err(e @ StatusError::Http { code: 401, .. }) => assert_eq!(e.exit_code(), 1),
        other => panic!("expected 401, got {other:?}"),
    }
    let refused = env
        .relay
        .wait_for_log("admin request refused (401)", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(refused.contains("from=127.0.0.1:"), "{refused}");
    // `relay status` without the token: exit 1 and what to do about it.
    let out = relay_cli(&env.topo.relay)
        .args(["status", "--admin", ADMIN])
        .env_remove("RELAY_ADMIN_TOKEN")
        .output()
        .expect("run relay status");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("--token"),
        "{stderr}"
    );
    // With the config file it finds address and token by itself.
    let out = relay_cli(&env.topo.relay)
        .args(["status", "--json", "--config"])
        .arg(env.relay.config_path())
        .output()
        .expect("run relay status");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view: AllocationsView = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(view.count, 0);
}

/// The shipped example is a config the relay accepts, and the unit waits for its drain.
#[test]
fn deploy_example_passes_relay_check() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let example = deploy.join("relay.example.toml");
    let out = Command::new(relay_tests::relay_binary())
        .args(["check", "--config"])
        .arg(&example)
        .output()
        .expect("run relay check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The deployment of CONTEXT.md: both NICs answer, NAT address advertised.
    assert!(
        stdout.contains("listen           192.0.2.50:3478 (udp, tcp)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("listen           198.51.100.50:3478 (udp, tcp)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("relay IPv4       bind 198.51.100.50 advertised as 203.0.113.50"),
        "{stdout}"
    );
    assert!(stdout.contains("relay ports      24000-29999"), "{stdout}");

    let number = |text: &str, key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|rest| {
                rest.trim_start_matches([' ', '='])
                    .split_whitespace()
                    .next()
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no `{key}` number"))
    };
    let toml = std::fs::read_to_string(&example).unwrap();
    let unit = std::fs::read_to_string(deploy.join("relay.service")).unwrap();
    assert!(
        number(&unit, "TimeoutStopSec") > number(&toml, "drain_timeout"),
        "systemd would kill the relay before its drain ends"
    );
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
}
