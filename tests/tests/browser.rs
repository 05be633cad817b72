//! A real browser through the relay: headless Chromium in the client namespace runs two
//! relay-only RTCPeerConnections whose only ICE server is the relay (reached through
//! the static NAT), and they exchange data-channel messages. Both relayed candidates
//! are the relay's public address, and the firewall does not reflect NAT, so every
//! packet between the peers must hairpin inside the relay between its own allocations.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use relay_tests::{
    TopologyOptions,
    browser::{Report, group_alive},
    fixture::{Deployment, Listen, RelayConfig, start_relay},
    page::PageRun,
    relay::field,
};

const MESSAGES: usize = 5;

/// UDP on the external NIC only, debug logs.
fn start() -> Deployment {
    let opts = TopologyOptions {
        nat_reflection: false,
    };
    Deployment::start(opts, |topo| {
        let a = topo.addrs;
        let config = RelayConfig {
            listen: vec![Listen::new(a.relay_external, 3478, &["udp"])],
            peers_allow: Vec::new(),
            sections: "[xdp]\nmode = \"off\"\n[log]\nlevel = \"debug\"\n".to_owned(),
            ..RelayConfig::deployment(&a)
        };
        start_relay(&topo.relay, &config.to_string())
    })
}

/// `type address port protocol relayProtocol` as the page reports a candidate.
struct Candidate<'a> {
    kind: &'a str,
    address: &'a str,
    port: u16,
}

fn candidate<'a>(report: &'a Report, key: &str) -> Candidate<'a> {
    let v = report
        .get(key)
        .unwrap_or_else(|| panic!("report has no {key}:\n{}", report.text));
    let mut f = v.split_whitespace();
    let (Some(kind), Some(address), Some(port)) = (f.next(), f.next(), f.next()) else {
        panic!("{key}={v} is not `type address port …`");
    };
    Candidate {
        kind,
        address,
        port: port
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v}: bad port")),
    }
}

/// Relay-side counters of one allocation, from its "allocation deleted/expired" line.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    to_peer: u64,
    to_client: u64,
}

#[test]
fn chromium_data_channel_through_relay_hairpin_without_nat_reflection() {
    let started = Instant::now();
    let env = start();
    let (a, relay) = (env.addrs(), &env.relay);
    let mut page = PageRun::data_channel(
        &env.topo.client,
        relay,
        &format!("turn:{}:3478?transport=udp", a.public),
        MESSAGES,
        &[],
    );
    let report = &page.report;

    // The selected pair of each connection is relay ⇄ relay on the public address.
    let public = a.public.to_string();
    let mut relayed_ports = Vec::new();
    for pc in ["pc1", "pc2"] {
        for side in ["local", "remote"] {
            let key = format!("{pc}.{side}");
            let c = candidate(report, &key);
            assert_eq!(c.kind, "relay", "{}", page.failure(&key, relay));
            assert_eq!(c.address, public, "{}", page.failure(&key, relay));
        }
        relayed_ports.push(candidate(report, &format!("{pc}.local")).port);
    }
    // Each side's remote candidate is the other's local one.
    assert_eq!(
        candidate(report, "pc1.remote").port,
        relayed_ports[1],
        "{}",
        page.failure("pc1.remote is not pc2.local", relay)
    );
    assert_eq!(
        candidate(report, "pc2.remote").port,
        relayed_ports[0],
        "{}",
        page.failure("pc2.remote is not pc1.local", relay)
    );
    assert_ne!(relayed_ports[0], relayed_ports[1]);

    // The relay's side: allocations on the public address, among them the two selected
    // ones, and traffic through both of them in both directions. The page closed its
    // peer connections, so Chrome released the allocations and the relay logged their
    // counters.
    let created = relay.log_lines("allocation created");
    let mut ids_by_port = BTreeMap::new();
    for line in &created {
        let relayed = field(line, "relayed").unwrap_or("");
        for addr in relayed.split(',') {
            if let Some((ip, port)) = addr.rsplit_once(':') {
                assert_eq!(
                    ip,
                    public,
                    "{}",
                    page.failure("relayed address is not the public one", relay)
                );
                if let (Ok(port), Some(id)) = (port.parse::<u16>(), field(line, "id")) {
                    ids_by_port.insert(port, id.to_owned());
                }
            }
        }
    }
    assert!(
        created.len() >= 2,
        "{}",
        page.failure("fewer than two allocations created", relay)
    );
    let counters_of = |id: &str| -> Option<Counters> {
        relay
            .logs()
            .lines()
            .filter(|l| l.contains("allocation deleted") || l.contains("allocation expired"))
            .find(|l| field(l, "id") == Some(id))
            .map(|l| Counters {
                to_peer: field(l, "to_peer_packets")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                to_client: field(l, "to_client_packets")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            })
    };
    let mut by_pc = Vec::new();
    for (pc, port) in ["pc1", "pc2"]
        .into_iter()
        .zip(relayed_ports.iter().copied())
    {
        let id = ids_by_port.get(&port).unwrap_or_else(|| {
            panic!(
                "{}",
                page.failure(
                    &format!("no allocation created with relayed {public}:{port} ({pc})"),
                    relay
                )
            )
        });
        let id_owned = id.clone();
        // Chrome sends its deallocations (Refresh, LIFETIME 0) when the page closes the
        // connections; allow them a moment to arrive.
        let line = relay.wait_for_line(Duration::from_secs(5), |l| {
            (l.contains("allocation deleted") || l.contains("allocation expired"))
                && field(l, "id") == Some(&id_owned)
        });
        if line.is_err() {
            panic!(
                "{}",
                page.failure(
                    &format!("allocation {id} ({pc}, relayed port {port}) was not released"),
                    relay
                )
            );
        }
        let c = counters_of(id).expect("line just seen");
        eprintln!("relay allocation {id} ({pc}, {public}:{port}): {c:?}");
        assert!(
            c.to_peer > 0 && c.to_client > 0,
            "{}",
            page.failure(
                &format!("allocation {id} ({pc}) relayed no traffic one way: {c:?}"),
                relay
            )
        );
        by_pc.push((id.clone(), c));
    }
    // Hairpin evidence: nothing else can reach the peers (no NAT reflection, no other
    // peers), so what one allocation hands its client must have been sent to its peer
    // by the other one, which the relay counts on both sides at once.
    if created.len() == 2 {
        let ((id1, c1), (id2, c2)) = (by_pc[0].clone(), by_pc[1].clone());
        assert!(
            c2.to_client <= c1.to_peer && c1.to_client <= c2.to_peer,
            "{}",
            page.failure(
                &format!(
                    "allocations {id1} {c1:?} and {id2} {c2:?} delivered more than the other sent"
                ),
                relay
            )
        );
    }

    if std::env::var_os("BROWSER_TEST_VERBOSE").is_some() {
        eprintln!(
            "----- Chromium ICE/TURN lines -----\n{}\n----- relay log -----\n{}",
            page.browser.ice_lines(usize::MAX),
            relay.logs()
        );
    }
    page.browser.kill();
    let group = page.browser.pgid();
    assert!(!group_alive(group), "Chromium processes survived");
    eprintln!(
        "browser test passed in {:?} (page elapsed_ms={})",
        started.elapsed(),
        report.get("elapsed_ms").unwrap_or("?")
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// The call the upgrade and flood tests hold up across what they do
/// ([`PageRun::call_during`]): one message each way every 20 ms for a few seconds after
/// a hello handshake, every message in order, the same candidate pair and ICE connected
/// throughout, no packet lost on a quiet relay.
#[test]
fn a_lasting_chromium_call_keeps_its_candidate_pair() {
    let env = start();
    let (a, relay) = (env.addrs(), &env.relay);
    let ice = format!("turn:{}:3478?transport=udp", a.public);
    let (page, ()) = PageRun::call_during(
        &env.topo.client,
        relay,
        &ice,
        Duration::from_secs(10),
        || std::thread::sleep(Duration::from_secs(3)),
    );
    let figures = page.assert_steady(relay, 0.0);
    assert!(figures.messages >= 40, "{figures:?}");
}
