//! Test harness: the real deployment shape of ../shared/CONTEXT.md built from network
//! namespaces, veth pairs and nftables, so end-to-end tests run real clients through a
//! static-NAT firewall to a dual-NIC relay host. Needs root (CI is root). The library is
//! the harness (topology, relay process, TURN clients, coturn and browser drivers); the
//! tests are in `tests/`.

pub mod browser;
pub mod certs;
pub mod cmd;
pub mod coturn;
pub mod fixture;
pub mod load_run;
pub mod netns;
pub mod page;
pub mod relay;
pub mod seccomp;
pub mod stream_client;
pub mod topology;
pub mod turn_client;
pub mod turn_codec;

pub use netns::Netns;
pub use topology::{Addresses, Topology, TopologyOptions};

/// The `relay` binary of this workspace (debug build), as `cargo test --workspace` and
/// `cargo xtask test` build it before running any test.
pub fn relay_binary() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/relay");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p relay-user`, or run `cargo xtask test`)",
        bin.display()
    );
    bin
}
