//! The XDP program built a second time with relay-ebpf's `version-bump` feature: a
//! program that differs from the relay's embedded one and forwards the same, for the
//! test of an upgrade to a changed kernel program. A relay built with relay-user's
//! `test-hooks` feature (as `cargo test --workspace` builds it: this crate asks for it)
//! loads it when it takes over with `RELAY_TEST_XDP_OBJECT` naming it.
//!
//! Built as relay-user's build script builds the embedded one, into `target/bpf-bump`
//! (its own directory: the same one would replace the object relay-user embeds). Only
//! the eBPF crate compiles, once; later calls find it up to date.

use std::{path::PathBuf, process::Command, sync::OnceLock};

/// The path of the bumped object, built on first use. Panics with the build's output
/// when it fails (the test cannot run without it).
pub fn object() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build).clone()
}

fn build() -> PathBuf {
    let root = crate::workspace_root();
    let target = root.join("target/bpf-bump");
    let arch = std::env::consts::ARCH;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![root.join("target/tools/bin")];
    paths.extend(std::env::split_paths(&path));
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--bins"])
        .args(["--features", "version-bump"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(root.join("relay-ebpf"))
        .env("PATH", std::env::join_paths(paths).expect("PATH"));
    // The test's cargo settings describe the host build; none of them apply here.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" || key.starts_with("RUSTC") {
            cmd.env_remove(&*key);
        }
    }
    cmd.env_remove("RUSTFLAGS").env_remove("RUSTUP_TOOLCHAIN");
    let flags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ];
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
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
