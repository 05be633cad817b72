//! `relay load` and its echo peer, checked against a known loss: the echo drops every
//! Nth datagram, and the loss the load generator reports must be 1/N. Through the relay
//! in the static-NAT deployment of CONTEXT.md (channel and Send mode, long-term and REST
//! credentials), over UDP, TCP and TLS to the relay, and straight to the echo with no
//! relay.
//!
//! Needs root and `target/debug/relay` (`cargo build -p relay-user`).

use std::time::Duration;

use relay_tests::{
    Netns, Topology, TopologyOptions,
    certs::TestCa,
    fixture::start_tls_relay,
    load_gen::{Echo, num, run_load},
    netns,
    relay::RelayProcess,
};
use serde_json::Value;

const USER: &str = "alice";
const PASSWORD: &str = "pw";
const SECRET: &str = "north-secret";
const ECHO_PORT: u16 = 7000;
/// Hard limit for one `relay load` run (each run here lasts a few seconds).
const LOAD_TIMEOUT: Duration = Duration::from_secs(40);

/// UDP and TCP on 3478; with `tls`, TLS on 443 too (certificate files beside the config,
/// as `start_tls_relay` writes them).
fn relay_config(t: &Topology) -> String {
    let a = t.addrs;
    format!(
        r#"realm = "example.org"

[[listen]]
address = "{ext}:3478"
transports = ["udp", "tcp"]

[relay]
address = "{ext}"
public_address = "{public}"
ports = "24000-29999"

[auth]
users = {{ {USER} = "{PASSWORD}" }}
shared_secrets = ["{SECRET}"]

[peers]
allow = ["192.0.2.0/24", "{client}/32"]

[xdp]
mode = "off"
"#,
        ext = a.relay_external,
        public = a.public,
        client = a.client,
    )
}

fn start_echo(ns: &Netns, listen: &str, drop_every: u64) -> Echo {
    Echo::start(ns, listen, Some(drop_every))
}

/// Runs `relay load ARGS --json -q` in `ns`; returns the exit code and the parsed report.
fn load(ns: &Netns, args: &[&str]) -> (i32, Value) {
    run_load(ns, args, LOAD_TIMEOUT).report()
}

/// Loss must be 1/N give or take a sliver: the drops are exact per echo thread, and a
/// round at the end of the window may be split.
fn assert_loss(report: &Value, n: u64) {
    let loss = num(report, "traffic.loss_ratio");
    let want = 1.0 / n as f64;
    assert!(
        (loss - want).abs() < 0.01,
        "reported loss {loss:.4}, the echo dropped 1/{n} = {want:.4}: {report:#}"
    );
}

/// Every figure the issue asks for is in the JSON, with sane values.
fn assert_figures(report: &Value, allocations: u64) {
    assert_eq!(num(report, "setup.requested") as u64, allocations);
    assert_eq!(num(report, "setup.ready") as u64, allocations, "{report:#}");
    assert_eq!(num(report, "setup.failed"), 0.0);
    assert!(report["setup"]["failures"].as_object().unwrap().is_empty());
    let sent = num(report, "traffic.sent");
    let received = num(report, "traffic.received");
    assert!(sent > 0.0 && received > 0.0 && received <= sent);
    assert_eq!(num(report, "traffic.lost"), sent - received);
    assert!(num(report, "traffic.sent_per_sec") > 0.0);
    assert!(num(report, "traffic.received_per_sec") > 0.0);
    let (p50, p90, p99, max) = (
        num(report, "traffic.rtt_us.p50"),
        num(report, "traffic.rtt_us.p90"),
        num(report, "traffic.rtt_us.p99"),
        num(report, "traffic.rtt_us.max"),
    );
    assert!(
        0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{report:#}"
    );
    let seconds = report["seconds"].as_array().unwrap();
    assert!(!seconds.is_empty());
    assert!(seconds.iter().all(|s| s["sent"].as_u64().is_some()));
    assert!(num(report, "cpu.cpus") >= 1.0);
    assert!(num(report, "cpu.traffic.box_busy_secs") >= 0.0);
    assert!(num(report, "cpu.traffic.box_us_per_packet") >= 0.0);
}

#[test]
fn channel_mode_through_the_relay_reports_the_echo_drops() {
    let t = Topology::new(TopologyOptions::default()).expect("topology");
    let relay = RelayProcess::start(&t.relay, &relay_config(&t)).expect("relay");
    let listen = format!("{}:{ECHO_PORT}", t.addrs.media);
    let echo = start_echo(&t.media, &listen, 10);
    let pid = relay.pid().to_string();
    let server = format!("{}:3478", t.addrs.public);
    let listing =
        std::env::temp_dir().join(format!("relay-load-{}.allocations", std::process::id()));
    let (code, r) = load(
        &t.client,
        &[
            &server,
            "-u",
            USER,
            "-p",
            PASSWORD,
            "--peer",
            &listen,
            "-n",
            "20",
            "--rate",
            "2000",
            "--duration",
            "3",
            "--watch-pid",
            &pid,
            "--allocations-file",
            listing.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{r:#}");
    // The allocations as a frame sender needs them: one line each, from the client's
    // address to the server, the channel, the relayed address (advertised) and the peer.
    let text = std::fs::read_to_string(&listing).expect("the allocations file");
    let _ = std::fs::remove_file(&listing);
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 20, "{text}");
    for line in lines {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 6, "{line}");
        assert_eq!(f[0], "udp");
        assert!(f[1].starts_with(&format!("{}:", t.addrs.client)), "{line}");
        assert_eq!(f[2], server);
        assert_eq!(f[3], "0x4000");
        let relayed: std::net::SocketAddr = f[4].parse().expect("relayed address");
        assert_eq!(relayed.ip(), t.addrs.public);
        assert!((24000..=29999).contains(&relayed.port()), "{line}");
        assert_eq!(f[5], listen);
    }
    assert_eq!(r["mode"], "channel");
    assert_eq!(r["credentials"], "long-term");
    assert_figures(&r, 20);
    assert_loss(&r, 10);
    // The watched process is the relay: its CPU and memory are reported.
    assert!(num(&r, "cpu.traffic.watched_secs") >= 0.0);
    assert!(num(&r, "watched.rss_after_setup_kib") > 0.0);
    assert!(r["watched"]["rss_per_allocation_bytes"].is_number());
    // Every allocation was deleted at the end.
    assert_eq!(num(&r, "deleted"), 20.0);

    // What the echo dropped is exactly what the generator lost.
    let stats: Value = serde_json::from_str(&echo.finish()).expect("echo JSON");
    let (lost, dropped) = (num(&r, "traffic.lost"), num(&stats, "dropped"));
    assert!(
        (lost - dropped).abs() <= 0.01 * num(&r, "traffic.sent"),
        "lost {lost}, echo dropped {dropped}"
    );
    assert!(relay.unexpected_stop().is_none());
}

#[test]
fn send_mode_rest_credentials_and_the_built_in_echo() {
    let t = Topology::new(TopologyOptions::default()).expect("topology");
    let _relay = RelayProcess::start(&t.relay, &relay_config(&t)).expect("relay");
    // The echo runs inside `relay load` on the client host; the relay reaches it
    // through the firewall.
    let echo = format!("{}:{ECHO_PORT}", t.addrs.client);
    let server = format!("{}:3478", t.addrs.public);
    let (code, r) = load(
        &t.client,
        &[
            &server,
            "--secret",
            SECRET,
            "--mode",
            "send",
            "--echo",
            &echo,
            "--echo-drop-every",
            "5",
            "-n",
            "10",
            "--rate",
            "1500",
            "--duration",
            "2",
        ],
    );
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["mode"], "send");
    assert_eq!(r["credentials"], "rest");
    assert_figures(&r, 10);
    assert_loss(&r, 5);
    assert!(num(&r, "echo.dropped") > 0.0);
}

#[test]
fn direct_mode_against_a_plain_echo() {
    netns::sweep_stale();
    let ns = Netns::new(&netns::unique_id()).expect("namespace");
    let echo = "127.0.0.1:7001";
    let (code, r) = load(
        &ns,
        &[
            echo,
            "--direct",
            "--echo",
            echo,
            "--echo-drop-every",
            "4",
            "-n",
            "8",
            "--rate",
            "4000",
            "--duration",
            "2",
        ],
    );
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["mode"], "direct");
    assert_figures(&r, 8);
    assert_loss(&r, 4);
}

#[test]
fn refused_allocations_are_counted_by_error_code() {
    let t = Topology::new(TopologyOptions::default()).expect("topology");
    let _relay = RelayProcess::start(&t.relay, &relay_config(&t)).expect("relay");
    let listen = format!("{}:{ECHO_PORT}", t.addrs.media);
    let server = format!("{}:3478", t.addrs.public);
    let (code, r) = load(
        &t.client,
        &[
            &server,
            "-u",
            USER,
            "-p",
            "wrong",
            "--peer",
            &listen,
            "-n",
            "6",
            "--duration",
            "1",
        ],
    );
    assert_eq!(code, 2, "no allocation could be made: {r:#}");
    assert_eq!(num(&r, "setup.ready"), 0.0);
    assert_eq!(num(&r, "setup.failures.401"), 6.0, "{r:#}");
    assert!(r["traffic"].is_null(), "no traffic without allocations");
}

/// Over TCP: one connection per allocation, ChannelData framed on the stream, the echo
/// (UDP behind the relay) dropping every 5th probe.
#[test]
fn tcp_channel_mode_reports_the_echo_drops() {
    let t = Topology::new(TopologyOptions::default()).expect("topology");
    let relay = RelayProcess::start(&t.relay, &relay_config(&t)).expect("relay");
    let listen = format!("{}:{ECHO_PORT}", t.addrs.media);
    let echo = start_echo(&t.media, &listen, 5);
    let server = format!("{}:3478", t.addrs.public);
    let (code, r) = load(
        &t.client,
        &[
            &server,
            "--transport",
            "tcp",
            "-u",
            USER,
            "-p",
            PASSWORD,
            "--peer",
            &listen,
            "-n",
            "20",
            "--rate",
            "2000",
            "--burst",
            "2",
            "--duration",
            "3",
        ],
    );
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["transport"], "tcp");
    assert_eq!(r["mode"], "channel");
    assert_figures(&r, 20);
    assert_loss(&r, 5);
    assert_eq!(num(&r, "traffic.send_errors"), 0.0, "{r:#}");
    assert_eq!(num(&r, "deleted"), 20.0);
    let stats: Value = serde_json::from_str(&echo.finish()).expect("echo JSON");
    let (lost, dropped) = (num(&r, "traffic.lost"), num(&stats, "dropped"));
    assert!(
        (lost - dropped).abs() <= 0.01 * num(&r, "traffic.sent"),
        "lost {lost}, echo dropped {dropped}"
    );
    // The relay saw the allocations arrive over TCP.
    assert_over(&relay, "tcp", 20);
    assert!(relay.unexpected_stop().is_none());
}

/// The relay logged at least `n` allocations created over `transport`.
fn assert_over(relay: &RelayProcess, transport: &str, n: usize) {
    let created = relay.log_lines("allocation created");
    let over = created
        .iter()
        .filter(|l| l.contains(&format!("client={transport} ")))
        .count();
    assert!(
        over >= n,
        "{over} of {n} allocations over {transport}: {created:#?}"
    );
}

/// Over TLS on 443, the relay's certificate checked against the test CA; Send mode.
#[test]
fn tls_send_mode_verifies_the_certificate_and_reports_the_echo_drops() {
    let t = Topology::new(TopologyOptions::default()).expect("topology");
    let ca = TestCa::new("load test CA");
    let leaf = ca.leaf("relay", &[&t.addrs.public.to_string()]);
    let config = format!(
        "{}\n[[listen]]\naddress = \"{}:443\"\ntransports = [\"tls\"]\n\n\
         [tls]\ncertificate = \"cert.pem\"\nprivate_key = \"key.pem\"\n",
        relay_config(&t),
        t.addrs.relay_external
    );
    let relay = start_tls_relay(&t.relay, &config, &leaf);
    let ca_file = relay
        .config_path()
        .parent()
        .expect("config dir")
        .join("load-ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("write CA file");
    let listen = format!("{}:{ECHO_PORT}", t.addrs.media);
    let _echo = start_echo(&t.media, &listen, 5);
    let server = format!("{}:443", t.addrs.public);
    let ca_arg = ca_file.to_str().unwrap();
    let common = [
        server.as_str(),
        "--transport",
        "tls",
        "--ca",
        ca_arg,
        "-u",
        USER,
        "-p",
        PASSWORD,
        "--peer",
        &listen,
    ];
    let mut args = common.to_vec();
    args.extend([
        "--mode",
        "send",
        "-n",
        "10",
        "--rate",
        "1500",
        "--duration",
        "2",
    ]);
    let (code, r) = load(&t.client, &args);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["transport"], "tls");
    assert_eq!(r["mode"], "send");
    assert_figures(&r, 10);
    assert_loss(&r, 5);
    assert_over(&relay, "tls", 10);

    // A certificate for another name is refused: every allocation fails, none is made.
    let mut args = common.to_vec();
    args.extend(["--sni", "other.example", "-n", "3", "--duration", "1"]);
    let (code, r) = load(&t.client, &args);
    assert_eq!(code, 2, "{r:#}");
    assert_eq!(num(&r, "setup.ready"), 0.0);
    assert_eq!(num(&r, "setup.failures.tls"), 3.0, "{r:#}");
    assert!(relay.unexpected_stop().is_none());
}
