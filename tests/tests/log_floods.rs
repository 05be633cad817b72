//! Floods do not flood the log: a source sending thousands of bad requests, or a client
//! asking for refused peers over and over, gets its first line in full and then one
//! summary line when the 10 s window ends, in the deployment of CONTEXT.md.
//!
//! Needs root and `target/debug/relay` (`cargo build -p relay-user`).

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use relay_tests::{
    TopologyOptions,
    fixture::{Deployment, PASSWORD, RelayConfig, start_relay, turn_client},
    relay::field,
};

/// The relay's throttling window, and how much later its summary line may come (the log
/// thread wakes once a second).
const SUMMARY_WAIT: Duration = Duration::from_secs(10 + 5);
/// Lines a throttled flood may leave: the first in full (and a second window's first,
/// should the flood straddle one).
const HANDFUL: usize = 3;

fn start() -> Deployment {
    Deployment::start(TopologyOptions::default(), |t| {
        start_relay(&t.relay, &RelayConfig::deployment(&t.addrs).to_string())
    })
}

/// A Binding request whose only attribute claims more bytes than follow: the relay
/// answers 400 (RFC 8489 §6.3.1) before any authentication.
fn malformed_binding(n: u32) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[..2].copy_from_slice(&0x0001u16.to_be_bytes());
    p[2..4].copy_from_slice(&8u16.to_be_bytes());
    p[4..8].copy_from_slice(&0x2112_a442u32.to_be_bytes());
    // A new transaction each time, so no retransmission cache can answer it.
    p[8..12].copy_from_slice(&n.to_be_bytes());
    // USERNAME, 100 bytes claimed, 4 present.
    p[20..22].copy_from_slice(&0x0006u16.to_be_bytes());
    p[22..24].copy_from_slice(&100u16.to_be_bytes());
    p
}

/// Checks that a flood (`what`) left at most [`HANDFUL`] lines containing `pattern`, and
/// a summary line containing `summary` (waited for until [`SUMMARY_WAIT`]); returns it.
#[track_caller]
fn assert_throttled(env: &Deployment, pattern: &str, summary: &str, what: &str) -> String {
    let found = env
        .relay
        .wait_for_line(SUMMARY_WAIT, |l| l.contains(summary));
    let lines = env.relay.log_lines(pattern).len();
    assert!(lines <= HANDFUL, "{lines} `{pattern}` lines for {what}");
    found.unwrap_or_else(|log| panic!("no `{summary}` line within {SUMMARY_WAIT:?}:\n{log}"))
}

#[test]
fn bad_requests_from_one_source_leave_a_handful_of_lines() {
    const N: u32 = 10_000;
    let env = start();
    let server = env.server();
    let sent = env
        .topo
        .client
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            let mut sent = 0u32;
            for n in 0..N {
                // A full socket buffer drops a datagram, as any flood does.
                sent += u32::from(s.send_to(&malformed_binding(n), server).is_ok());
            }
            // The relay answers: it saw them as requests to reject.
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 256];
            let reply = s.recv_from(&mut buf).map(|(len, _)| buf[..len].to_vec());
            (sent, reply)
        })
        .expect("enter client namespace");
    let (sent, reply) = sent;
    let reply = reply.unwrap_or_else(|e| panic!("no answer to a malformed request: {e}"));
    assert_eq!(
        u16::from_be_bytes([reply[0], reply[1]]),
        0x0111,
        "a Binding error response"
    );
    let summary = assert_throttled(
        &env,
        "request rejected",
        "more requests rejected from",
        &format!("{sent} bad requests from one source"),
    );
    let more: u64 = field(&summary, "more")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no more= in: {summary}"));
    assert!(more > 0, "{summary}");
    // The firewall's static NAT leaves internet sources as they are.
    assert_eq!(
        field(&summary, "client_ip"),
        Some(env.addrs().client.to_string().as_str()),
        "{summary}"
    );
}

#[test]
fn refused_peers_from_one_client_leave_a_handful_of_lines() {
    const N: usize = 300;
    let env = start();
    let mut c = turn_client(&env.topo.client, env.server(), PASSWORD);
    c.allocate()
        .unwrap_or_else(|e| panic!("allocate: {}", env.with_log(e)));
    let refused: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    for _ in 0..N {
        let r = c.create_permission(&[refused]);
        assert!(r.is_err(), "a loopback peer was permitted");
    }
    let summary = assert_throttled(
        &env,
        "peer refused (403)",
        "more peers refused (403)",
        &format!("{N} refused permissions of one client"),
    );
    assert_eq!(
        field(&summary, "more"),
        Some((N - 1).to_string().as_str()),
        "{summary}"
    );
}
