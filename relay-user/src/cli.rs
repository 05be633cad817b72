//! Command line of the `relay` binary.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::AttachMode;

#[derive(Debug, Parser)]
#[command(
    name = "relay",
    version,
    about = "TURN relay with an XDP (eBPF) fast path"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay. Without a config file it serves a demo on 127.0.0.1:3478.
    Serve(ServeArgs),
    /// Probe a STUN/TURN server: reachability, round trip, mapped address and, with
    /// credentials, a test allocation. Exit 0 ok, 1 error answer, 2 no answer, 64 usage.
    #[cfg(feature = "tools")]
    Stun(relay_tools::probe::ProbeArgs),
    /// The "TURN relay usage" view of a running relay, from its admin endpoint: one row
    /// per allocation. Exit 0 shown, 1 refused (token), 2 unreachable, 64 usage.
    #[cfg(feature = "tools")]
    Status(relay_tools::status::StatusArgs),
    /// Load generator for any TURN server: thousands of allocations, packets through them
    /// to an echo peer, setup rate, loss, RTT and CPU figures. `relay load echo`: the peer.
    /// Exit 0 all set up, 1 some failed or nothing came back, 2 none set up, 64 usage.
    #[cfg(feature = "tools")]
    Load(Box<relay_tools::load::LoadCommand>),
    /// Hand the running relay of this config over to this binary without dropping a
    /// call: it starts a new `relay serve` from this binary's path and passes it its
    /// sockets and allocations. Exit 0 once the new process serves, 1 with the reason if
    /// not (the old one then keeps serving).
    Upgrade {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: prints the settings it resolves to, or the key at fault.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Benchmark XDP programs for `cargo xtask bench` (a counting sink, a bare redirect).
    #[command(name = "bench-xdp", hide = true)]
    BenchXdp(crate::xdp::bench::BenchXdpArgs),
}

/// Flags override the config file for the settings operators change most.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Address to answer TURN on (repeat for several, e.g. internal and external NIC).
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// Interface to attach the XDP program to (repeat for several).
    #[arg(long = "xdp-interface", value_name = "IFNAME")]
    pub xdp_interfaces: Vec<String>,
    /// auto (native, else generic), native, generic or off.
    #[arg(long = "xdp-mode", value_name = "MODE")]
    pub xdp_mode: Option<AttachMode>,
    /// error, warn, info, debug, trace, off, or directives such as "info,relay_user=debug".
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// UDP data-path threads sharing the listeners (SO_REUSEPORT); 0 = one per CPU.
    #[arg(long = "udp-workers", value_name = "N",
          value_parser = clap::value_parser!(u16).range(0..=crate::config::MAX_UDP_WORKERS as i64))]
    pub udp_workers: Option<u16>,
}
