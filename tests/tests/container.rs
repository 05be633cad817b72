//! The container image end to end. `cargo xtask image` builds it (the operator's command,
//! given the debug `relay` the other tests run: a release build would add minutes to CI,
//! and the image code is the same either way); podman runs it in the relay host's
//! namespace as the Kubernetes DaemonSet runs it on a node: the host's network, only the
//! DaemonSet's capabilities, seccomp unconfined for io_uring, XDP native on both NICs and
//! `forwarding = "manual"` on a host whose forwarding is already on (a Kubernetes node's
//! is). From the internet side `relay stun` gets an allocation on the public address, and
//! `turnutils_uclient` relays through the NAT to the media host, in the kernel.
//!
//! Needs root, podman, buildah and runc (`cargo xtask setup`), coturn's tools and
//! `target/debug/relay`. The image and the container are removed at the end, also when
//! the test fails.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use relay_tests::{
    Topology, TopologyOptions,
    container::{Container, Image},
    fixture::{Deployment, PASSWORD, RelayConfig, USER},
    relay::{Launch, RelayProcess, field},
    relay_binary, relay_cli,
};

/// How long an ended allocation's log line may take.
const LOG_WAIT: Duration = Duration::from_secs(5);

/// The deployment's config with the fast path on both NICs, forwarding left to the host.
fn config(topo: &Topology) -> String {
    RelayConfig {
        sections: format!(
            r#"[limits]
drain_timeout = 0

[xdp]
interfaces = ["{ext_if}", "{int_if}"]
mode = "native"
forwarding = "manual"
"#,
            ext_if = topo.relay_external_if,
            int_if = topo.relay_internal_if,
        ),
        ..RelayConfig::deployment(&topo.addrs)
    }
    .to_string()
}

#[test]
fn the_image_answers_stun_and_relays_uclient_in_the_kernel() {
    let image = Image::build(&relay_binary()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        image.inspect("{{json .Config.Entrypoint}}").trim(),
        r#"["/usr/local/bin/relay"]"#
    );
    // Declared before the deployment, so the container is removed after the relay stops.
    let container = Container::new();
    let env = Deployment::start_kernel_path(TopologyOptions::default(), |topo| {
        for ifname in [&topo.relay_external_if, &topo.relay_internal_if] {
            topo.relay
                .sysctl(&format!("net.ipv4.conf.{ifname}.forwarding"), "1")
                .expect("forwarding on, as on a Kubernetes node");
        }
        let launch = Launch {
            program: container.run_args(&topo.relay, &image),
            ..Launch::default()
        };
        RelayProcess::start_launched(&topo.relay, &config(topo), &launch)
            .unwrap_or_else(|e| panic!("containerised relay did not start: {e}"))
    })
    .with_media_peer();

    for ifname in [&env.topo.relay_external_if, &env.topo.relay_internal_if] {
        let attached = env
            .relay
            .log_lines("XDP program attached")
            .into_iter()
            .find(|l| field(l, "interface") == Some(ifname.as_str()))
            .unwrap_or_else(|| {
                panic!(
                    "no `XDP program attached` on {ifname}\n{}",
                    env.with_log("")
                )
            });
        assert_eq!(field(&attached, "mode"), Some("native"), "{attached}");
    }

    // Everything the daemon needs works inside the container: io_uring (seccomp), the
    // capabilities it drops after setup, the admin endpoint; nothing warns.
    let engine = env
        .relay
        .wait_for_log("answering TURN over UDP", Duration::ZERO)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(field(&engine, "engine"), Some("io_uring"), "{engine}");
    let warnings = env.relay.log_lines(" WARN ");
    assert!(warnings.is_empty(), "warnings at startup: {warnings:#?}");

    // The media server's probe from the internet: Binding and an allocation on the NAT
    // address, answered by the relay in the container.
    let out = relay_cli(&env.topo.client)
        .args([
            "stun",
            &env.server().to_string(),
            "-u",
            USER,
            "-p",
            PASSWORD,
        ])
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("run relay stun");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ctx = || env.with_log(format!("relay stun: {stdout}"));
    assert_eq!(out.status.code(), Some(0), "{}", ctx());
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("stun JSON");
    let public = env.addrs().public;
    let relayed: SocketAddr = report["allocation"]["relayed_address"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no relayed address\n{}", ctx()));
    assert_eq!(relayed.ip(), public, "{}", ctx());
    let mapped: SocketAddr = report["binding"]["mapped_address"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no mapped address\n{}", ctx()));
    assert_eq!(mapped.ip(), env.addrs().client, "{}", ctx());

    // coturn's client through the NAT to the media host's echo peer: every message back,
    // and after ChannelBind through the kernel program the container loaded.
    let mut u = env.uclient();
    u.clients = 2;
    u.messages = 20;
    u.no_rtcp = true;
    let run = env.run_lossless(&env.topo.client, &u);
    let ended = env.relay.wait_for_lines(
        "allocation deleted",
        |l| field(l, "xdp_to_peer_packets").is_some_and(|n| n != "0"),
        u.clients as usize,
        LOG_WAIT,
    );
    assert_eq!(
        ended.len(),
        u.clients as usize,
        "allocations that relayed in the kernel\n{}",
        env.context(&run)
    );
}
