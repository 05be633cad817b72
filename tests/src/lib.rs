//! Test harness: the deployment this relay is made for (browsers on the internet, a
//! static-NAT firewall, a dual-NIC relay host, the media server inside; README "Tests"
//! draws it) built from network namespaces, veth pairs and nftables, so end-to-end tests
//! run real clients through it. Needs root (CI is root). The library is
//! the harness (topology, relay process, TURN clients, coturn and browser drivers); the
//! tests are in `tests/`.

pub mod browser;
pub mod bumped_ebpf;
pub mod cdp;
pub mod certs;
pub mod cmd;
pub mod container;
pub mod coturn;
pub mod fixture;
pub mod flood;
pub mod flood_config;
pub mod load_gen;
pub mod metrics;
pub mod netns;
pub mod page;
pub mod promql;
pub mod relay;
pub mod seccomp;
pub mod stream_client;
pub mod topology;
pub mod turn_client;
pub mod turn_codec;

pub use netns::Netns;
pub use topology::{Addresses, Topology, TopologyOptions};

/// `r.read(buf)`, again while it answers EINTR: a socket read with a timeout returns it
/// when the test process is stopped and continued (or takes any signal), and std's
/// `read_exact` retries it the same way.
pub fn read_uninterrupted(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// The `relay` binary of this workspace (debug build), as `cargo test --workspace` and
/// `cargo xtask test` build it before running any test.
pub fn relay_binary() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let bin = target.join("debug/relay");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p relay-user`, or run `cargo xtask test`)",
        bin.display()
    );
    bin
}

/// `relay` (see [`relay_binary`]) run inside `ns`, arguments to add: the operator's
/// command-line tools (`relay stun`, `relay status`, …) as a host in the topology runs them.
pub fn relay_cli(ns: &Netns) -> std::process::Command {
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", ns.name()]).arg(relay_binary());
    c
}

/// The workspace's top directory (this crate is one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
