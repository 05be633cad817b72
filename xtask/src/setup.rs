//! Idempotent installation of what a fresh machine lacks. Each step checks first and is
//! a fast no-op when the thing is already there.

use std::{fs, os::unix::fs::symlink, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::util::{Cargo, is_root, output, tools_dir};

/// Debian packages the tests and benchmarks use: coturn for turnutils_uclient,
/// turnutils_peer and turnserver; ethtool, nftables and iproute2 for the namespace
/// topology; chromium for the real-browser WebRTC test; DejaVu for the bench plots;
/// netsniff-ng for trafgen, the junk flood's packet generator (test and bench "flood");
/// dpkg-dev for dpkg-shlibdeps (the Debian package's Depends, `cargo xtask package`).
/// buildah for `cargo xtask image`, podman and runc to run it in the container test (runc:
/// crun refuses hosts with hybrid cgroups); binutils' strip for the image's binary.
const APT_PACKAGES: &[&str] = &[
    "coturn",
    "ethtool",
    "nftables",
    "iproute2",
    "chromium",
    "fonts-dejavu-core",
    "netsniff-ng",
    "dpkg-dev",
    "buildah",
    "podman",
    "runc",
    "binutils",
];

pub fn all() -> Result<()> {
    toolchain()?;
    fuzzer()?;
    apt_packages()
}

/// What building the kernel program needs.
pub fn toolchain() -> Result<()> {
    rust_src()?;
    bpf_linker()
}

fn rust_src() -> Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .context("the nightly toolchain is missing: `rustup toolchain install nightly`")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to nightly (build-std needs core's sources)");
    let ok = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .status()
        .context("running rustup")?
        .success();
    if !ok {
        bail!("`rustup component add rust-src --toolchain nightly` failed");
    }
    Ok(())
}

/// The LLVM major version of the nightly toolchain, e.g. 22: bpf-linker must be built
/// against exactly that LLVM, because it links the bitcode nightly rustc emits.
fn nightly_llvm_major() -> Result<u32> {
    let vv = output("rustc", &["+nightly", "-vV"]).context("cannot run `rustc +nightly -vV`")?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` does not say its LLVM version")?;
    version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("odd LLVM version `{version}`"))
}

fn bpf_linker() -> Result<()> {
    let major = nightly_llvm_major()?;
    let tools = tools_dir();
    let binary = tools.join("bin/bpf-linker");
    let stamp = tools.join("bpf-linker.llvm");
    let built_for = fs::read_to_string(&stamp).ok();
    if binary.exists() && built_for.as_deref().map(str::trim) == Some(&major.to_string()) {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker against nightly's LLVM {major} (about a minute)");
    let prefix = tools.join("llvm");
    link_nightly_llvm(&prefix.join("lib"), major)?;
    Cargo::new(["install", "bpf-linker", "--version", "^0.13", "--force", "--no-default-features"])
        .arg("--features")
        .arg(format!("llvm-{major}"))
        .arg("--root")
        .arg(&tools)
        .env("LLVM_PREFIX", &prefix)
        .run("building bpf-linker")
        .context(
            "bpf-linker did not build; it needs nightly's libLLVM (see `rustc +nightly --print sysroot`/lib)",
        )?;
    fs::write(&stamp, format!("{major}\n")).context("writing the bpf-linker stamp")?;
    Ok(())
}

/// There is no LLVM dev package of nightly's version: point llvm-sys at the shared
/// library that ships inside the nightly toolchain instead.
fn link_nightly_llvm(lib: &Path, major: u32) -> Result<()> {
    let sysroot =
        output("rustc", &["+nightly", "--print", "sysroot"]).context("nightly sysroot")?;
    let sys_lib = Path::new(sysroot.trim()).join("lib");
    let wanted = format!("libLLVM.so.{major}");
    let real = fs::read_dir(&sys_lib)
        .with_context(|| format!("reading {}", sys_lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&wanted))
        })
        .with_context(|| format!("no {wanted}* in {}", sys_lib.display()))?;
    fs::create_dir_all(lib)?;
    let real_name = real.file_name().expect("a file");
    for name in [Path::new("libLLVM.so"), Path::new(real_name)] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&real, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

/// cargo-fuzz, for the fuzz smoke run in `cargo xtask test`.
pub fn fuzzer() -> Result<()> {
    if tools_dir().join("bin/cargo-fuzz").exists() {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz");
    Cargo::new(["install", "cargo-fuzz", "--locked", "--root"])
        .arg(tools_dir())
        .run("installing cargo-fuzz")
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}: install them as root (`apt-get install {}`)",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {missing:?}");
    let apt = |args: &[&str]| -> Result<()> {
        let ok = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?
            .success();
        if !ok {
            bail!("`apt-get {}` failed", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)?;
    // The coturn package starts a system-wide turnserver on 3478; the tests and
    // benchmarks run their own, so stop it if the package enabled it.
    if missing.contains(&"coturn") {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "coturn"])
            .status();
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", package])
        .is_some_and(|s| s.contains("install ok installed"))
}
