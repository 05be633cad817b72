//! `relay bench-xdp` (hidden): loads one of the benchmark's XDP programs from the relay's
//! object (see `relay_common::bench`) for `cargo xtask bench`'s capacity scenario. It is
//! no part of the daemon: it attaches, then answers each line on stdin with the counters
//! (`packets bytes`), and detaches when stdin closes, so a bench that dies takes it along.

use std::{
    io::{BufRead as _, Write as _},
    path::Path,
};

use aya::{
    EbpfLoader,
    maps::{Array, DevMapHash, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use clap::{Args, Subcommand};
use relay_common::bench::{
    BENCH_COUNTERS_MAP, BENCH_DEVMAP, BENCH_REDIRECT_MAP, BENCH_REDIRECT_PROGRAM,
    BENCH_SINK_PROGRAM, BenchCounters, BenchRedirect, parse_mac,
};

use super::{OBJECT, ifindex, raise_memlock_limit};

#[derive(Debug, Args)]
pub struct BenchXdpArgs {
    #[command(subcommand)]
    pub program: BenchProgram,
}

#[derive(Debug, Subcommand)]
pub enum BenchProgram {
    /// Count and drop relayed datagrams arriving on INTERFACE (STUN and ARP pass).
    Sink {
        #[arg(long, value_name = "IFNAME")]
        interface: String,
    },
    /// Rewrite the MACs of everything arriving on INTERFACE and redirect it out of TO.
    Redirect {
        #[arg(long, value_name = "IFNAME")]
        interface: String,
        #[arg(long, value_name = "IFNAME")]
        to: String,
        /// The next hop's MAC (the far end of TO).
        #[arg(long = "dst-mac", value_name = "MAC")]
        dst_mac: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BenchXdpError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {0}: {1}")]
    Program(&'static str, aya::programs::ProgramError),
    #[error("the object has no program or map {0}: rebuild the relay")]
    Missing(&'static str),
    #[error("map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("devmap entry for ifindex {0}: {1}")]
    Devmap(u32, aya::maps::xdp::XdpMapError),
    #[error(transparent)]
    Interface(#[from] super::XdpError),
    #[error("{0:?} is not a MAC address (aa:bb:cc:dd:ee:ff)")]
    Mac(String),
    #[error("reading the MAC of {0}: {1}")]
    OwnMac(String, std::io::Error),
    #[error("stdin/stdout: {0}")]
    Io(#[from] std::io::Error),
}

pub fn run(args: &BenchXdpArgs) -> Result<(), BenchXdpError> {
    raise_memlock_limit();
    let mut ebpf = EbpfLoader::new().load(OBJECT)?;
    let (name, interface) = match &args.program {
        BenchProgram::Sink { interface } => (BENCH_SINK_PROGRAM, interface),
        BenchProgram::Redirect { interface, .. } => (BENCH_REDIRECT_PROGRAM, interface),
    };
    if let BenchProgram::Redirect { to, dst_mac, .. } = &args.program {
        let to_index = ifindex(to)?;
        let own = std::fs::read_to_string(Path::new("/sys/class/net").join(to).join("address"))
            .map_err(|e| BenchXdpError::OwnMac(to.clone(), e))?;
        let target = BenchRedirect {
            ifindex: to_index,
            dst_mac: parse_mac(dst_mac).ok_or_else(|| BenchXdpError::Mac(dst_mac.clone()))?,
            src_mac: parse_mac(&own).ok_or_else(|| BenchXdpError::Mac(own.clone()))?,
        };
        let mut redirect: Array<_, BenchRedirect> = Array::try_from(
            ebpf.map_mut(BENCH_REDIRECT_MAP)
                .ok_or(BenchXdpError::Missing(BENCH_REDIRECT_MAP))?,
        )
        .map_err(|e| BenchXdpError::Map(BENCH_REDIRECT_MAP, e))?;
        redirect
            .set(0, target, 0)
            .map_err(|e| BenchXdpError::Map(BENCH_REDIRECT_MAP, e))?;
        let mut devmap = DevMapHash::try_from(
            ebpf.map_mut(BENCH_DEVMAP)
                .ok_or(BenchXdpError::Missing(BENCH_DEVMAP))?,
        )
        .map_err(|e| BenchXdpError::Map(BENCH_DEVMAP, e))?;
        devmap
            .insert(to_index, to_index, None, 0)
            .map_err(|e| BenchXdpError::Devmap(to_index, e))?;
    }
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(BenchXdpError::Missing(name))?
        .try_into()
        .map_err(|e| BenchXdpError::Program(name, e))?;
    program
        .load()
        .map_err(|e| BenchXdpError::Program(name, e))?;
    let index = ifindex(interface)?;
    program
        .attach_to_if_index(index, XdpMode::Driver)
        .map_err(|e| BenchXdpError::Program(name, e))?;
    let counters: PerCpuArray<_, BenchCounters> = PerCpuArray::try_from(
        ebpf.map(BENCH_COUNTERS_MAP)
            .ok_or(BenchXdpError::Missing(BENCH_COUNTERS_MAP))?,
    )
    .map_err(|e| BenchXdpError::Map(BENCH_COUNTERS_MAP, e))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{name} attached to {interface}")?;
    out.flush()?;
    // One line in, one reading out; EOF detaches (dropping `ebpf` drops the link).
    for line in std::io::stdin().lock().lines() {
        line?;
        let values = counters
            .get(&0, 0)
            .map_err(|e| BenchXdpError::Map(BENCH_COUNTERS_MAP, e))?;
        let c = BenchCounters::sum(values.iter());
        writeln!(out, "{} {}", c.packets, c.bytes)?;
        out.flush()?;
    }
    Ok(())
}
