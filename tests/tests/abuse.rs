//! Unauthenticated abuse in the deployment of CONTEXT.md: a source flooding the relay with
//! minimal Allocates gets small answers (at most 4 times the request) and no more of them
//! than its `[limits] unauthenticated_burst` plus `unauthenticated_rate` per second.
//!
//! Needs root and `target/debug/relay` (`cargo build -p relay-user`).

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use relay_tests::{
    TopologyOptions,
    fixture::{Deployment, RelayConfig, start_relay},
    metrics::Metrics,
};

const RATE: u32 = 20;
const BURST: u32 = 40;
/// Requests in the flood: many times the burst.
const FLOOD: u32 = 400;
/// How long to wait for further answers once none came for a while, and at most overall.
const QUIET: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(15);
const ADMIN: &str = "127.0.0.1:9641";
const TOKEN: &str = "abuse-token";
const DROPS: &str = "relay_drops_total{reason=\"unauthenticated_rate\"}";

/// The smallest valid Allocate (header and REQUESTED-TRANSPORT UDP): 28 bytes.
fn minimal_allocate(n: u32) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[..2].copy_from_slice(&0x0003u16.to_be_bytes());
    p[2..4].copy_from_slice(&8u16.to_be_bytes());
    p[4..8].copy_from_slice(&0x2112_a442u32.to_be_bytes());
    p[8..12].copy_from_slice(&n.to_be_bytes());
    p[20..22].copy_from_slice(&0x0019u16.to_be_bytes());
    p[22..24].copy_from_slice(&4u16.to_be_bytes());
    p[24] = 17;
    p
}

#[test]
fn a_flood_of_minimal_allocates_gets_few_small_answers() {
    let env = Deployment::start(TopologyOptions::default(), |t| {
        let mut c = RelayConfig::deployment(&t.addrs);
        c.sections = format!(
            "[limits]\nunauthenticated_rate = {RATE}\nunauthenticated_burst = {BURST}\n\n\
             [admin]\naddress = \"{ADMIN}\"\ntoken = \"{TOKEN}\"\n"
        );
        start_relay(&t.relay, &c.to_string())
    });
    let server = env.server();
    let (sent, took, answers) = env
        .topo
        .client
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            let start = Instant::now();
            let sent: u32 = (0..FLOOD)
                .map(|n| u32::from(s.send_to(&minimal_allocate(n), server).is_ok()))
                .sum();
            let took = start.elapsed();
            s.set_read_timeout(Some(QUIET)).unwrap();
            let mut answers = Vec::new();
            let mut buf = [0u8; 1500];
            while start.elapsed() < MAX_WAIT {
                match s.recv_from(&mut buf) {
                    Ok((len, _)) => answers.push(buf[..len].to_vec()),
                    Err(_) => break,
                }
            }
            (sent, took, answers)
        })
        .expect("enter client namespace");
    assert!(sent >= BURST, "only {sent} requests left the client");
    // Every answer is a 401 (class error, method Allocate) within 4 x 28 bytes.
    for a in &answers {
        assert_eq!(u16::from_be_bytes([a[0], a[1]]), 0x0113, "{a:02x?}");
        assert!(a.len() <= 4 * 28, "a {}-byte answer to 28 bytes", a.len());
    }
    // The burst, then the rate while the flood lasted (and the time its tail took to
    // arrive), never the flood.
    let bound = BURST + (RATE as f64 * (took + Duration::from_millis(500)).as_secs_f64()) as u32;
    let n = answers.len() as u32;
    assert!(
        n >= BURST.min(sent) * 9 / 10,
        "{n} answers: the limit is too strict ({sent} sent)"
    );
    assert!(
        n <= bound + 1,
        "{n} answers to {sent} requests sent in {took:?}; at most {bound} expected\n{}",
        env.with_log("")
    );
    // The operator sees the excess in the metrics.
    let dropped = Metrics::scrape(&env.topo.relay, ADMIN, Some(TOKEN)).get(DROPS) as u32;
    assert!(
        dropped > 0 && n + dropped <= sent,
        "{dropped} dropped, {n} answered, {sent} sent"
    );
}
