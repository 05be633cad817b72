//! Project automation: `cargo xtask setup | build | run | test | bench | fuzz | package | image`.
//!
//! Everything a fresh machine lacks is installed here, idempotently, so the README's
//! two commands work on a clean clone.

mod bench;
mod image;
mod package;
mod setup;
mod util;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use util::{Cargo, root};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what builds and tests need (rust-src, bpf-linker, cargo-fuzz, Debian packages).
    Setup,
    /// Build the XDP object and the release `relay` binary.
    Build,
    /// Setup, build, then run `relay serve ARGS` as root.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, formatting, clippy, every test (root-only ones included) and a fuzz smoke run.
    Test {
        /// Seconds each fuzz target runs.
        #[arg(long, default_value_t = 20)]
        fuzz_seconds: u64,
    },
    /// coturn vs this relay (XDP, userspace) under `relay load` in network namespaces,
    /// results in bench-results/; then the criterion micro-benchmarks of the protocol core.
    Bench(bench::BenchArgs),
    /// The container image (buildah from scratch, nothing pulled): the release `relay`,
    /// the libraries it links and the example config, tagged localhost/relay:VERSION.
    Image(image::ImageArgs),
    /// Run every fuzz target for a bounded time.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Build the Debian package (target/package/relay_VERSION_ARCH.deb) from the release build.
    Package(package::PackageArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Setup => setup::all(),
        Cmd::Build => {
            setup::toolchain()?;
            build()
        }
        Cmd::Run { args } => {
            setup::toolchain()?;
            build()?;
            let relay = root().join("target/release/relay");
            let mut full = vec!["serve".to_owned()];
            full.extend(args);
            util::exec_as_root(&relay, &full)
        }
        Cmd::Test { fuzz_seconds } => {
            setup::all()?;
            test(fuzz_seconds)
        }
        Cmd::Bench(args) => {
            setup::toolchain()?;
            bench::run(args)
        }
        Cmd::Image(args) => image::run(args),
        Cmd::Fuzz { seconds } => {
            setup::fuzzer()?;
            fuzz(seconds)
        }
        Cmd::Package(args) => {
            setup::toolchain()?;
            package::run(args)
        }
    }
}

fn build() -> Result<()> {
    Cargo::new(["build", "--release", "-p", "relay-user"]).run("building the relay")?;
    println!("built {}", root().join("target/release/relay").display());
    Ok(())
}

fn test(fuzz_seconds: u64) -> Result<()> {
    util::require_root("the XDP and network-namespace tests")?;
    Cargo::new(["fmt", "--all", "--check"]).run("cargo fmt --check")?;
    Cargo::nightly(["fmt", "--check"])
        .dir(root().join("relay-ebpf"))
        .run("cargo fmt --check (relay-ebpf)")?;
    Cargo::new([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
    .run("clippy")?;
    Cargo::new(["test", "--workspace", "--all-targets"])
        .run("the test suite")
        .context("tests failed")?;
    // Doc tests are not covered by --all-targets.
    Cargo::new(["test", "--workspace", "--doc"]).run("doc tests")?;
    // The Debian package of the release build installs, checks and purges cleanly. The
    // release build is the cost: about 260 CPU-seconds from a clean target (3 minutes on
    // two idle cores; the kernel object is shared with the debug build), the package and
    // its check half a minute.
    build()?;
    let deb = package::build(&root().join("target/release/relay"))?;
    package::install_check(&deb)?;
    fuzz(fuzz_seconds)
}

fn fuzz(seconds: u64) -> Result<()> {
    for target in FUZZ_TARGETS {
        println!("fuzzing {target} for {seconds} s");
        Cargo::nightly(["fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048")
            .dir(root().join("fuzz"))
            .run(&format!("fuzz target {target}"))?;
    }
    Ok(())
}

const FUZZ_TARGETS: &[&str] = &[
    "stun_parse",
    "channel_data",
    "server",
    "proxy_header",
    "admin_query",
    "admin_status",
    "snapshot",
];
