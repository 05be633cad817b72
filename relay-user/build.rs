//! Builds the XDP program (relay-ebpf) with the nightly toolchain and hands its path to
//! the crate as `RELAY_EBPF_OBJECT`, so a plain `cargo build` embeds a kernel object
//! compiled from the same sources. `cargo xtask setup` installs what this needs.
//!
//! `RELAY_EBPF_OBJECT=/path/to/object` skips the build and embeds that file instead.

use std::{
    env,
    path::{Path, PathBuf},
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
    println!("cargo:rerun-if-changed=ebpf_command.rs");
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

include!("ebpf_command.rs");

fn build_ebpf(root: &Path) -> Result<PathBuf, String> {
    // aya-ebpf picks its register layout from this cfg: the host's architecture.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").map_err(|e| e.to_string())?;
    let target_dir = root.join("target/bpf");
    let mut cmd = ebpf_command(root, &target_dir, &arch, &[])?;
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
