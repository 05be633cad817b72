//! The XDP program built a second time with relay-ebpf's `version-bump` feature: a
//! program that differs from the relay's embedded one and forwards the same, for the
//! test of an upgrade to a changed kernel program. A relay built with relay-user's
//! `test-hooks` feature (as `cargo test --workspace` builds it: this crate asks for it)
//! loads it when it takes over with `RELAY_TEST_XDP_OBJECT` naming it.
//!
//! Built as relay-user's build script builds the embedded one (the same command:
//! relay-user/ebpf_command.rs), into `target/bpf-bump`
//! (its own directory: the same one would replace the object relay-user embeds). Only
//! the eBPF crate compiles, once; later calls find it up to date.

use std::{path::PathBuf, sync::OnceLock};

/// The path of the bumped object, built on first use. Panics with the build's output
/// when it fails (the test cannot run without it).
pub fn object() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build).clone()
}

include!("../../relay-user/ebpf_command.rs");

fn build() -> PathBuf {
    let root = crate::workspace_root();
    let target = root.join("target/bpf-bump");
    let mut cmd = ebpf_command(&root, &target, std::env::consts::ARCH, &["version-bump"])
        .unwrap_or_else(|e| panic!("{e}"));
    let out = cmd
        .output()
        .expect("run rustup (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "building relay-ebpf with --features version-bump failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let object = target.join("bpfel-unknown-none/release/relay-ebpf");
    assert!(
        object.exists(),
        "{} missing after the build",
        object.display()
    );
    object
}
