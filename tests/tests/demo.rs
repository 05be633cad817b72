//! `relay serve` with no config (the first thing a new user runs) serves the command it
//! prints, with coturn's `turnutils_uclient` against a `turnutils_peer` on the same host,
//! in all three modes: channels, Send indications, client to client.
//!
//! Needs root, `coturn` and `target/debug/relay` (`cargo build -p relay-user`).

use std::{net::Ipv4Addr, time::Duration};

use relay_tests::{
    Netns,
    coturn::{PeerProcess, run_uclient},
    fixture::UCLIENT_TIMEOUT,
    netns::unique_id,
    relay::RelayProcess,
};

#[test]
fn demo_relay_serves_the_command_it_prints() {
    let ns = Netns::new(&format!("demo-{}", unique_id())).expect("namespace");
    let relay = RelayProcess::start_demo(&ns).unwrap_or_else(|e| panic!("{e}"));
    let line = relay
        .wait_for_log("demo relay on loopback", Duration::ZERO)
        .unwrap_or_else(|e| panic!("{e}"));
    // "... (try: turnutils_uclient -u demo -w PW -e 127.0.0.1 127.0.0.1)"
    let hint = line
        .split_once("(try: ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(cmd, _)| cmd.to_owned())
        .unwrap_or_else(|| panic!("no command in: {line}"));
    let mut printed: Vec<String> = hint.split_whitespace().map(str::to_owned).collect();
    assert_eq!(printed.remove(0), "turnutils_uclient", "{hint}");
    let (server, options) = printed.split_last().expect("server address in the hint");
    // uclient's default peer port.
    let _peer =
        PeerProcess::start(&ns, Ipv4Addr::LOCALHOST.into(), 3480).unwrap_or_else(|e| panic!("{e}"));

    for extra in [&[][..], &["-s"], &["-y"]] {
        // The printed command, with more traffic and the mode in front of the server.
        let mut args: Vec<String> = ["-n", "50", "-m", "4"].map(str::to_owned).to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(options.iter().cloned());
        if extra == ["-y"] {
            // Client to client: no peer address.
            let e = args.iter().position(|a| a == "-e").expect("-e in the hint");
            args.drain(e..e + 2);
        }
        args.push(server.clone());
        let run = run_uclient(&ns, args, UCLIENT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            run.success() && run.summary.lost_packets == Some(0) && run.summary.errors.is_empty(),
            "{}\nrelay log:\n{}",
            run.describe(),
            relay.logs()
        );
    }
}
