//! Builds the XDP program (relay-ebpf) with the nightly toolchain and hands its path to
//! the crate as `RELAY_EBPF_OBJECT`, so a plain `cargo build` embeds a kernel object
//! compiled from the same sources. `cargo xtask setup` installs what this needs.
//!
//! `RELAY_EBPF_OBJECT=/path/to/object` skips the build and embeds that file instead.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    println!("cargo:rerun-if-env-changed=RELAY_EBPF_OBJECT");
    if let Ok(prebuilt) = env::var("RELAY_EBPF_OBJECT") {
        println!("cargo:rerun-if-changed={prebuilt}");
        println!("cargo:rustc-env=RELAY_EBPF_OBJECT={prebuilt}");
        return;
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest
        .parent()
        .expect("relay-user sits in the workspace root");
    for dir in [
        "relay-ebpf/src",
        "relay-ebpf/Cargo.toml",
        "relay-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    match build_ebpf(root) {
        Ok(object) => println!("cargo:rustc-env=RELAY_EBPF_OBJECT={}", object.display()),
        Err(why) => {
            eprintln!("error: could not build the XDP program (relay-ebpf): {why}");
            eprintln!(
                "hint: run `cargo xtask setup` (installs rust-src for nightly and bpf-linker)"
            );
            std::process::exit(1);
        }
    }
}

fn build_ebpf(root: &Path) -> Result<PathBuf, String> {
    // aya-ebpf picks its register layout from this cfg: the host's architecture.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").map_err(|e| e.to_string())?;
    let target_dir = root.join("target/bpf");
    let tools = root.join("target/tools/bin");
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tools];
    paths.extend(env::split_paths(&path));
    let path = env::join_paths(paths).map_err(|e| e.to_string())?;

    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--bins"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(root.join("relay-ebpf"))
        .env("PATH", path);
    // The outer cargo's settings describe the host build; none of them apply here.
    for (key, _) in env::vars_os() {
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
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("nightly cargo build failed:\n{stderr}"));
    }
    let object = target_dir.join("bpfel-unknown-none/release/relay-ebpf");
    if !object.exists() {
        return Err(format!(
            "build succeeded but {} is missing",
            object.display()
        ));
    }
    Ok(object)
}
