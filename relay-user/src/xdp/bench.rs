//! `relay bench-xdp` (hidden): loads one of the benchmark's XDP programs from the relay's
//! object (see `relay_common::bench`) for `cargo xtask bench`'s capacity scenario. It is
//! no part of the daemon: it attaches, then answers each line on stdin with the counters
//! (`packets bytes`), and detaches when stdin closes, so a bench that dies takes it along.

use std::{
    io::{BufRead as _, Write as _},
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
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

/// A bench program loaded (and, for the redirect, its target set), not attached yet.
pub struct BenchXdp {
    ebpf: Ebpf,
    name: &'static str,
}

impl BenchXdp {
    pub fn load(program: &BenchProgram) -> Result<Self, BenchXdpError> {
        raise_memlock_limit();
        let mut ebpf = EbpfLoader::new().load(OBJECT)?;
        let name = match program {
            BenchProgram::Sink { .. } => BENCH_SINK_PROGRAM,
            BenchProgram::Redirect { .. } => BENCH_REDIRECT_PROGRAM,
        };
        if let BenchProgram::Redirect { to, dst_mac, .. } = program {
            set_redirect(&mut ebpf, to, dst_mac)?;
        }
        let mut bench = Self { ebpf, name };
        let prog = bench.program_mut()?;
        prog.load().map_err(|e| BenchXdpError::Program(name, e))?;
        Ok(bench)
    }

    pub fn program_mut(&mut self) -> Result<&mut Xdp, BenchXdpError> {
        let name = self.name;
        self.ebpf
            .program_mut(name)
            .ok_or(BenchXdpError::Missing(name))?
            .try_into()
            .map_err(|e| BenchXdpError::Program(name, e))
    }

    /// Attaches natively; detached when `self` drops.
    pub fn attach(&mut self, interface: &str) -> Result<(), BenchXdpError> {
        let index = ifindex(interface)?;
        let name = self.name;
        self.program_mut()?
            .attach_to_if_index(index, XdpMode::Driver)
            .map_err(|e| BenchXdpError::Program(name, e))?;
        Ok(())
    }

    /// What the program counted so far, summed over CPUs.
    pub fn counters(&self) -> Result<BenchCounters, BenchXdpError> {
        let counters: PerCpuArray<_, BenchCounters> = PerCpuArray::try_from(
            self.ebpf
                .map(BENCH_COUNTERS_MAP)
                .ok_or(BenchXdpError::Missing(BENCH_COUNTERS_MAP))?,
        )
        .map_err(|e| BenchXdpError::Map(BENCH_COUNTERS_MAP, e))?;
        let values = counters
            .get(&0, 0)
            .map_err(|e| BenchXdpError::Map(BENCH_COUNTERS_MAP, e))?;
        Ok(BenchCounters::sum(values.iter()))
    }
}

/// The redirect's egress interface (devmap entry) and the MACs it writes: its own, and
/// `dst_mac`, the far end's.
fn set_redirect(ebpf: &mut Ebpf, to: &str, dst_mac: &str) -> Result<(), BenchXdpError> {
    let to_index = ifindex(to)?;
    let own = std::fs::read_to_string(Path::new("/sys/class/net").join(to).join("address"))
        .map_err(|e| BenchXdpError::OwnMac(to.to_owned(), e))?;
    let target = BenchRedirect {
        ifindex: to_index,
        dst_mac: parse_mac(dst_mac).ok_or_else(|| BenchXdpError::Mac(dst_mac.to_owned()))?,
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
        .map_err(|e| BenchXdpError::Devmap(to_index, e))
}

pub fn run(args: &BenchXdpArgs) -> Result<(), BenchXdpError> {
    let interface = match &args.program {
        BenchProgram::Sink { interface } | BenchProgram::Redirect { interface, .. } => interface,
    };
    let mut bench = BenchXdp::load(&args.program)?;
    bench.attach(interface)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} attached to {interface}", bench.name)?;
    out.flush()?;
    // One line in, one reading out; EOF detaches (dropping `bench` drops the link).
    for line in std::io::stdin().lock().lines() {
        line?;
        let c = bench.counters()?;
        writeln!(out, "{} {}", c.packets, c.bytes)?;
        out.flush()?;
    }
    Ok(())
}
