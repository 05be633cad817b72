//! TURN over UDP end to end, through the deployment of CONTEXT.md built from network
//! namespaces: coturn's own clients (`turnutils_uclient`, `turnutils_peer`) and this
//! crate's small TURN client against the `relay` daemon, with the relay listening on both
//! NICs, relaying on the external one and advertising the static-NAT public address.
//!
//! Needs root, `coturn` (Debian package) and `target/debug/relay`
//! (`cargo build -p relay-user`).

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use relay_proto::stun::AddressFamily;
use relay_tests::{
    TopologyOptions,
    coturn::{Uclient, UclientRun},
    fixture::{
        Deployment, Listen, PASSWORD, RELAY_PORTS, RelayConfig, USER, start_relay, turn_client,
    },
    relay::field,
    turn_client::{Received, TurnClient, TurnError},
};

const SECRET: &str = "north-secret";
const LOG_WAIT: Duration = Duration::from_secs(3);
/// An IPv6 relay address for the IPv4-mapped peer test (documentation range, so the
/// policy does not deny the relay's own family by default).
const RELAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x50);

/// Knobs of the deployment config that the tests vary.
#[derive(Clone, Copy)]
struct Cfg {
    max_allocations: usize,
    max_allocations_per_user: usize,
    relay6: bool,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg {
            max_allocations: 1800,
            max_allocations_per_user: 10,
            relay6: false,
        }
    }
}

/// The deployment, UDP only: listeners on both NICs, relay ports on the external NIC,
/// the NAT address advertised, the media subnet allowed as peers.
fn start(nat_reflection: bool, cfg: Cfg) -> Deployment {
    Deployment::start(TopologyOptions { nat_reflection }, |topo| {
        if cfg.relay6 {
            // The IPv6 relay address on the external NIC; no DAD, so it is usable at once.
            topo.relay
                .ip(&[
                    "addr",
                    "add",
                    &format!("{RELAY6}/64"),
                    "dev",
                    &topo.relay_external_if,
                    "nodad",
                ])
                .expect("add IPv6 relay address");
        }
        let config = RelayConfig {
            listen: Listen::both_nics(&topo.addrs, 3478, &["udp"]),
            relay6: cfg.relay6.then_some(RELAY6),
            shared_secrets: vec![SECRET.to_owned()],
            sections: format!(
                r#"[limits]
max_allocations = {max}
max_allocations_per_user = {per_user}

[xdp]
interfaces = []
mode = "off"
"#,
                max = cfg.max_allocations,
                per_user = cfg.max_allocations_per_user,
            ),
            ..RelayConfig::deployment(&topo.addrs)
        };
        start_relay(&topo.relay, &config.to_string())
    })
}

/// Runs `u` from the client host without loss; at least `allocations` allocations, each
/// advertising the NAT address.
fn run_through_nat(env: &Deployment, u: &Uclient, allocations: usize) -> UclientRun {
    let run = env.run_lossless(&env.topo.client, u);
    assert_public_relayed(env, &run, allocations);
    run
}

/// The relayed addresses of every "allocation created" line.
fn relayed_addresses(log: &str) -> Vec<SocketAddr> {
    log.lines()
        .filter(|l| l.contains("allocation created"))
        .filter_map(|l| field(l, "relayed"))
        .flat_map(|r| r.split(','))
        .map(|r| {
            r.parse()
                .unwrap_or_else(|e| panic!("relayed={r} is not an address: {e}"))
        })
        .collect()
}

/// Every allocation advertised the public NAT address with a port of the range, never
/// the external NIC's own address; at least `min` of them.
fn assert_public_relayed(env: &Deployment, run: &UclientRun, min: usize) {
    let a = env.addrs();
    let log = env.relay.logs();
    let relayed = relayed_addresses(&log);
    assert!(
        relayed.len() >= min,
        "expected at least {min} allocations, got {relayed:?}\n{}",
        env.context(run)
    );
    for r in &relayed {
        assert_eq!(
            r.ip(),
            IpAddr::V4(a.public),
            "relayed address {r} is not the public NAT address\n{}",
            env.context(run)
        );
        assert!(
            RELAY_PORTS.contains(&r.port()),
            "relayed port of {r} outside {RELAY_PORTS:?}"
        );
    }
    assert!(
        !log.contains(&format!("relayed={}", a.relay_external)),
        "the external NIC's address leaked into XOR-RELAYED-ADDRESS:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------
// coturn's uclient through the NAT to the media host's echo peer

#[test]
fn uclient_channels_through_nat_to_media_peer() {
    let env = start(true, Cfg::default()).with_media_peer();
    let mut u = env.uclient();
    u.clients = 4;
    u.messages = 20;
    // Default RTCP on: each client also allocates with EVEN-PORT / RESERVATION-TOKEN.
    run_through_nat(&env, &u, 4);
}

#[test]
fn uclient_send_indications_through_nat_to_media_peer() {
    let env = start(true, Cfg::default()).with_media_peer();
    let mut u = env.uclient();
    u.clients = 4;
    u.messages = 20;
    u.send_indications = true;
    u.no_rtcp = true;
    run_through_nat(&env, &u, 4);
}

#[test]
fn uclient_rest_shared_secret() {
    let env = start(true, Cfg::default()).with_media_peer();
    let mut u = env.uclient();
    u.password = None;
    u.secret = Some(SECRET.into());
    u.clients = 2;
    u.messages = 20;
    u.no_rtcp = true;
    let run = run_through_nat(&env, &u, 2);
    // The allocations ran under the REST name (`<expiry>:alice`), not the static user.
    let rest_user = env
        .relay
        .log_lines("allocation created")
        .iter()
        .filter_map(|l| field(l, "user").map(str::to_owned))
        .find(|u| u.ends_with(&format!(":{USER}")) || u.starts_with(&format!("{USER}:")));
    assert!(
        rest_user.is_some(),
        "no allocation under a REST username\n{}",
        env.context(&run)
    );
}

#[test]
fn uclient_client_to_client_hairpins_without_nat_reflection() {
    // The firewall drops inside → public-address traffic: the relay must hand packets
    // between its own relayed addresses internally.
    let env = start(false, Cfg::default());
    let mut u = env.uclient();
    u.peer = None;
    u.peer_port = None;
    u.client_to_client = true;
    u.clients = 2;
    u.messages = 20;
    u.no_rtcp = true;
    run_through_nat(&env, &u, 2);
}

#[test]
fn uclient_wrong_password_is_refused_and_logged() {
    let env = start(true, Cfg::default()).with_media_peer();
    let mut u = env.uclient();
    u.password = Some("not-the-password".into());
    u.no_rtcp = true;
    let run = env.run(&env.topo.client, &u);
    let a = env.addrs();
    assert!(
        !run.timed_out,
        "uclient hung on a refused allocation\n{}",
        env.context(&run)
    );
    assert!(
        !run.success() || run.summary.recv_msgs.unwrap_or(0) == 0,
        "uclient relayed data with a wrong password\n{}",
        env.context(&run)
    );
    assert!(
        relayed_addresses(&env.relay.logs()).is_empty(),
        "an allocation was created with a wrong password\n{}",
        env.context(&run)
    );
    let line = env
        .relay
        .wait_for_line(LOG_WAIT, |l| {
            l.contains("authentication failed") && field(l, "user") == Some(USER)
        })
        .unwrap_or_else(|log| panic!("no `authentication failed` line for {USER}:\n{log}"));
    assert!(
        line.contains(&format!("client=udp {}:", a.client)),
        "client address missing: {line}"
    );
    let reason = line.split_once(" reason=").map_or("", |(_, r)| r.trim());
    assert!(!reason.is_empty(), "no reason= in: {line}");
    assert!(
        reason.contains("password"),
        "reason should point at the password: {line}"
    );
}

// ---------------------------------------------------------------------------------------
// This crate's TURN client

/// Waits for `want` among incoming data (other payloads are ignored, e.g. duplicates).
fn expect_data(c: &mut TurnClient, want: &[u8], what: &str) -> Received {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        match c.recv_data(Duration::from_millis(200)) {
            Ok(r) if r.data == want => return r,
            Ok(r) => seen.push(r),
            Err(_) => {}
        }
    }
    panic!(
        "{what}: {:?} never arrived (got {seen:?})",
        String::from_utf8_lossy(want)
    );
}

/// The media server allocates through the INTERNAL listener; a browser allocates through
/// the NAT. Each peers with the other's public relayed address, so every packet
/// hairpins inside the relay (relayed → relayed), both directions, with and without NAT
/// reflection on the firewall.
#[test]
fn media_server_internal_listener_to_browser_relayed_address() {
    for nat_reflection in [false, true] {
        let env = start(nat_reflection, Cfg::default());
        let a = env.addrs();
        let ctx = |e: &dyn std::fmt::Display| {
            env.with_log(format!("nat_reflection={nat_reflection}: {e}"))
        };

        let mut media = turn_client(&env.topo.media, (a.relay_internal, 3478).into(), PASSWORD);
        let mut browser = turn_client(&env.topo.client, env.server(), PASSWORD);
        let media_relayed = media.allocate().unwrap_or_else(|e| panic!("{}", ctx(&e)));
        let browser_relayed = browser.allocate().unwrap_or_else(|e| panic!("{}", ctx(&e)));
        for (who, r) in [("media", media_relayed), ("browser", browser_relayed)] {
            assert_eq!(r.ip(), IpAddr::V4(a.public), "{who} relayed {r}");
            assert!(RELAY_PORTS.contains(&r.port()), "{who} relayed {r}");
        }
        assert_ne!(media_relayed, browser_relayed);
        // The browser's server-reflexive address is its own (static NAT is inbound only).
        assert_eq!(browser.mapped.map(|m| m.ip()), Some(IpAddr::V4(a.client)));

        media
            .create_permission(&[browser_relayed])
            .unwrap_or_else(|e| panic!("{}", ctx(&e)));
        browser
            .create_permission(&[media_relayed])
            .unwrap_or_else(|e| panic!("{}", ctx(&e)));

        // media → browser, Send indication in, Data indication out.
        media
            .send_indication(browser_relayed, b"media->browser send")
            .unwrap();
        let got = expect_data(
            &mut browser,
            b"media->browser send",
            &ctx(&"media → browser"),
        );
        assert_eq!(got.peer, Some(media_relayed), "{}", ctx(&"Data peer"));

        // browser → media, ChannelData in, Data indication out (no channel on media's side).
        browser
            .channel_bind(0x4000, media_relayed)
            .unwrap_or_else(|e| panic!("{}", ctx(&e)));
        browser
            .send_channel_data(0x4000, b"browser->media channel")
            .unwrap();
        let got = expect_data(
            &mut media,
            b"browser->media channel",
            &ctx(&"browser → media"),
        );
        assert_eq!(got.peer, Some(browser_relayed), "{}", ctx(&"Data peer"));

        // media binds a channel too: browser's data now arrives as ChannelData.
        media
            .channel_bind(0x4001, browser_relayed)
            .unwrap_or_else(|e| panic!("{}", ctx(&e)));
        browser
            .send_channel_data(0x4000, b"browser->media on channel")
            .unwrap();
        let got = expect_data(
            &mut media,
            b"browser->media on channel",
            &ctx(&"browser → media (channel)"),
        );
        assert_eq!(got.channel, Some(0x4001), "{}", ctx(&"ChannelData channel"));
        media
            .send_channel_data(0x4001, b"media->browser channel")
            .unwrap();
        let got = expect_data(
            &mut browser,
            b"media->browser channel",
            &ctx(&"media → browser (channel)"),
        );
        assert_eq!(got.channel, Some(0x4000), "{}", ctx(&"ChannelData channel"));

        // Both allocations went to the same relayed address family and were counted.
        media.refresh(0).unwrap_or_else(|e| panic!("{}", ctx(&e)));
        browser.refresh(0).unwrap_or_else(|e| panic!("{}", ctx(&e)));
        let deleted = env
            .relay
            .wait_for_line(LOG_WAIT, |l| {
                l.contains("allocation deleted by client")
                    && l.contains(&format!("client=udp {}:", a.media))
            })
            .unwrap_or_else(|log| panic!("media allocation not deleted:\n{log}"));
        assert!(
            field(&deleted, "to_peer_packets").is_some_and(|n| n != "0")
                && field(&deleted, "to_client_packets").is_some_and(|n| n != "0"),
            "media allocation counted no traffic: {deleted}"
        );
    }
}

#[test]
fn denied_peers_get_403_with_the_rule_logged() {
    let env = start(
        true,
        Cfg {
            relay6: true,
            ..Cfg::default()
        },
    );
    let a = env.addrs();
    let mut c = turn_client(&env.topo.client, env.server(), PASSWORD);
    let relayed = c.allocate().expect("allocate");
    assert!(relayed.is_ipv4(), "default family is IPv4: {relayed}");

    // An allowed peer first, so a 403 below is the policy, not a broken request.
    c.create_permission(&[(a.media, 9).into()])
        .expect("permission to the allowed media subnet");

    for (peer, rule) in [
        ("127.0.0.1:9", "loopback 127.0.0.0/8"),
        ("10.0.0.1:9", "10.0.0.0/8"),
    ] {
        let peer: SocketAddr = peer.parse().unwrap();
        let err = c.create_permission(&[peer]).expect_err("must be refused");
        assert_eq!(err.code(), Some(403), "{peer}: {err}");
        let line = env
            .relay
            .wait_for_line(LOG_WAIT, |l| {
                l.contains("peer refused (403)") && field(l, "peer") == Some(&peer.to_string())
            })
            .unwrap_or_else(|log| panic!("no `peer refused (403)` line for {peer}:\n{log}"));
        assert!(line.contains("rule=") && line.contains(rule), "{line}");
        assert_eq!(field(&line, "user"), Some(USER), "{line}");
    }

    // ::ffff:127.0.0.1 on an IPv4-only allocation: no relayed address of that family, so
    // 443 (Peer Address Family Mismatch); a 403 is acceptable too (then it must be logged).
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:9".parse().unwrap();
    let err = c
        .create_permission(&[mapped])
        .expect_err("IPv4-mapped loopback must be refused");
    assert!(
        matches!(err.code(), Some(443 | 403)),
        "IPv4-mapped loopback on an IPv4 allocation: {err}"
    );

    // With an IPv6 allocation the family matches, and the policy must see through the
    // mapping: 403, logged with the rule.
    let mut c6 = turn_client(&env.topo.client, env.server(), PASSWORD);
    let relayed6 = c6
        .allocate_with(Some(AddressFamily::V6), None)
        .unwrap_or_else(|e| panic!("IPv6 allocation: {e}\n{}", env.relay.logs()));
    assert_eq!(relayed6.ip(), IpAddr::V6(RELAY6), "IPv6 relayed address");
    let err = c6
        .create_permission(&[mapped])
        .expect_err("IPv4-mapped loopback must be refused");
    assert_eq!(
        err.code(),
        Some(403),
        "{mapped} on an IPv6 allocation: {err}"
    );
    let line = env
        .relay
        .wait_for_line(LOG_WAIT, |l| {
            l.contains("peer refused (403)") && l.contains("::ffff:127.0.0.1")
        })
        .unwrap_or_else(|log| panic!("no `peer refused (403)` line for {mapped}:\n{log}"));
    assert!(
        line.contains("rule=") && line.contains("127.0.0.0/8"),
        "rule should name the embedded loopback range: {line}"
    );

    // ChannelBind runs the same check.
    let err = c
        .channel_bind(0x4002, "127.0.0.1:9".parse().unwrap())
        .expect_err("ChannelBind to loopback must be refused");
    assert_eq!(err.code(), Some(403), "ChannelBind to 127.0.0.1: {err}");

    // Nothing reaches the relay host's loopback, whatever the spelling of the address.
    let sink = env
        .topo
        .relay
        .run(|| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind loopback sink");
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s
        })
        .expect("enter relay namespace");
    let port = sink.local_addr().unwrap().port();
    c.send_indication((std::net::Ipv4Addr::LOCALHOST, port).into(), b"to loopback")
        .unwrap();
    c6.send_indication(
        (std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped(), port).into(),
        b"to mapped loopback",
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let leaked = sink.recv_from(&mut buf);
    assert!(
        leaked.is_err(),
        "a Send indication reached the relay host's loopback: {leaked:?} {:?}",
        leaked
            .as_ref()
            .map(|(n, _)| String::from_utf8_lossy(&buf[..*n]).into_owned())
    );

    // The refusals changed nothing else: the allocation still works for allowed peers.
    c.create_permission(&[(a.media, 9).into()])
        .expect("allocation still usable after the refusals");
}

/// Allocates `n` times as alice from separate client sockets; returns the clients and
/// the outcome of each.
fn allocate_n(env: &Deployment, n: usize) -> Vec<(TurnClient, Result<SocketAddr, TurnError>)> {
    (0..n)
        .map(|_| {
            let mut c = turn_client(&env.topo.client, env.server(), PASSWORD);
            let r = c.allocate();
            (c, r)
        })
        .collect()
}

#[test]
fn per_user_quota_486_and_total_quota_508() {
    // Per user: the third allocation of alice → 486 Allocation Quota Reached.
    let env = start(
        true,
        Cfg {
            max_allocations_per_user: 2,
            ..Cfg::default()
        },
    );
    let mut got = allocate_n(&env, 3);
    for (i, (_, r)) in got.iter().take(2).enumerate() {
        assert!(
            r.is_ok(),
            "allocation {i} within quota: {r:?}\n{}",
            env.relay.logs()
        );
    }
    let third = got[2]
        .1
        .as_ref()
        .expect_err("third allocation over the user quota");
    assert_eq!(third.code(), Some(486), "{third}\n{}", env.relay.logs());
    // Releasing one frees a slot for the user.
    got[0].0.refresh(0).expect("delete the first allocation");
    let retry = got[2].0.allocate();
    assert!(
        retry.is_ok(),
        "allocation after one was released: {retry:?}\n{}",
        env.relay.logs()
    );
    drop(got);
    drop(env);

    // In total: the third allocation on the relay → 508 Insufficient Capacity.
    let env = start(
        true,
        Cfg {
            max_allocations: 2,
            ..Cfg::default()
        },
    );
    let got = allocate_n(&env, 3);
    for (i, (_, r)) in got.iter().take(2).enumerate() {
        assert!(
            r.is_ok(),
            "allocation {i} within capacity: {r:?}\n{}",
            env.relay.logs()
        );
    }
    let third = got[2]
        .1
        .as_ref()
        .expect_err("third allocation over capacity");
    assert_eq!(third.code(), Some(508), "{third}\n{}", env.relay.logs());
}
