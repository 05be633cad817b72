//! Scenarios "tcp" and "tls" (issue 16): 1000 allocations, each over its own TCP or TLS
//! connection (`relay load --transport tcp|tls`), at rising echo rates, against coturn
//! and this relay: setup rate (the TLS handshake included), loss, RTT and the server's
//! CPU per packet. The relayed leg to the echo peer stays UDP. XDP plays no part in
//! streams, so the relay runs once, with XDP off.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;
use serde::Serialize;

use super::{
    Load, Scale, Scenario, Server,
    procs::{self, Hosts, Limits, LoadExtra, TLS_PORT, TlsFiles},
    topo::Topo,
};

pub const ALLOCATIONS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Tcp,
    Tls,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Tcp => "tcp",
            Stream::Tls => "tls",
        }
    }
}

/// One transport, server and rate.
#[derive(Debug, Clone, Serialize)]
pub struct StreamRun {
    pub stream: Stream,
    pub server: Server,
    pub rate: u64,
    pub error: Option<String>,
    pub load: Option<Load>,
}

impl StreamRun {
    /// The server process's CPU per packet sent or received, µs.
    pub fn process_us(&self) -> Option<f64> {
        self.load.as_ref()?.cpu.traffic.watched_us_per_packet
    }

    pub fn setup_rate(&self) -> Option<f64> {
        Some(self.load.as_ref()?.setup.rate_per_sec)
    }

    /// The server process's CPU per allocation set up (TCP connect, TLS handshake, TURN
    /// allocation), µs: what a setup costs the server whoever else shares the box. The
    /// setup rate alone is held down by the generator, which needs the same two cores.
    pub fn setup_us(&self) -> Option<f64> {
        let l = self.load.as_ref()?;
        let secs = l.cpu.setup.watched_secs?;
        (l.setup.ready > 0).then(|| secs * 1e6 / l.setup.ready as f64)
    }

    /// Carried: at most 0.1% lost and the echoes' RTT p99 within [`LATE_US`]. Loss is
    /// counted after a drain of a second, so a server past its capacity can send every
    /// echo back, seconds late, from its queues and still show no loss.
    pub fn carried(&self) -> bool {
        let Some(t) = self.load.as_ref().and_then(|l| l.traffic.as_ref()) else {
            return false;
        };
        t.loss_ratio <= 0.001 && t.rtt_us.p99 <= LATE_US
    }
}

/// An echo later than this is as good as lost for a call: WebRTC's jitter buffers hold
/// some hundreds of milliseconds at most (RTT p99, µs).
pub const LATE_US: f64 = 200_000.0;

fn rates(scale: Scale) -> (&'static [u64], f64) {
    match scale {
        Scale::Quick => (&[20_000, 80_000], 2.0),
        Scale::Full => (&[10_000, 25_000, 50_000, 100_000, 150_000], 10.0),
    }
}

/// The servers streams are measured on: coturn, and the relay once (userspace).
pub fn servers(servers: &[Server]) -> Vec<Server> {
    let mut out = Vec::new();
    if servers.contains(&Server::Coturn) {
        out.push(Server::Coturn);
    }
    if servers.contains(&Server::Userspace) || servers.contains(&Server::Xdp) {
        out.push(Server::Userspace);
    }
    out
}

pub fn run_all(
    topo: &Topo,
    relay_bin: &Path,
    work: &Path,
    streams: &[Stream],
    servers: &[Server],
    scale: Scale,
) -> Vec<StreamRun> {
    if streams.is_empty() || servers.is_empty() {
        return Vec::new();
    }
    let tls = match TlsFiles::make(work) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("bench: no certificate for the tls scenario: {e:#}");
            None
        }
    };
    let (rates, secs) = rates(scale);
    let mut out = Vec::new();
    for &stream in streams {
        for &server in servers {
            for &rate in rates {
                eprintln!(
                    "bench: {ALLOCATIONS} {} allocations @ {}k/s against {}",
                    stream.name(),
                    rate / 1000,
                    server.label()
                );
                let r = match &tls {
                    Some(tls) => measure(topo, relay_bin, work, stream, server, rate, secs, tls),
                    None => Err(anyhow::anyhow!("no certificate (openssl failed)")),
                };
                if let Ok(load) = &r
                    && let Some(t) = &load.traffic
                {
                    eprintln!(
                        "bench:   setup {:.0}/s, {:.0}/s back, loss {:.3}%, rtt p99 {:.0} us, \
                         server {:.2} us/packet",
                        load.setup.rate_per_sec,
                        t.received_per_sec,
                        t.loss_ratio * 100.0,
                        t.rtt_us.p99,
                        load.cpu.traffic.watched_us_per_packet.unwrap_or(0.0)
                    );
                }
                if let Err(e) = &r {
                    eprintln!("bench:   failed: {e:#}");
                }
                out.push(StreamRun {
                    stream,
                    server,
                    rate,
                    error: r.as_ref().err().map(|e| format!("{e:#}")),
                    load: r.ok(),
                });
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)] // the run's coordinates, each used once
fn measure(
    topo: &Topo,
    relay_bin: &Path,
    work: &Path,
    stream: Stream,
    server: Server,
    rate: u64,
    secs: f64,
    tls: &TlsFiles,
) -> Result<Load> {
    let tag = format!("{}-{:?}-{rate}", stream.name(), server).to_lowercase();
    let mut hosts = Hosts::start(
        topo,
        relay_bin,
        work,
        server,
        &tag,
        Limits::LoadGenerator,
        Some(tls),
    )?;
    let sc = Scenario {
        name: tag.clone(),
        allocations: ALLOCATIONS,
        rate,
        duration_secs: secs,
        sweep: false,
    };
    let mut args = vec!["--transport".to_owned(), stream.name().to_owned()];
    if stream == Stream::Tls {
        // Self-signed: what the handshake costs does not depend on who signed the key.
        args.push("--insecure".into());
    }
    let extra = LoadExtra {
        port: (stream == Stream::Tls).then_some(TLS_PORT),
        args,
    };
    let load = procs::run_load_with(
        topo,
        &hosts.bin,
        work,
        &tag,
        server,
        &sc,
        hosts.pids(),
        &extra,
    );
    hosts.stop();
    load
}

/// The highest rate this server ran at with at most 0.1% loss.
pub fn loss_free_rate(runs: &[StreamRun], stream: Stream, server: Server) -> Option<u64> {
    runs.iter()
        .filter(|r| r.stream == stream && r.server == server)
        .filter(|r| r.carried())
        .map(|r| r.rate)
        .max()
}

/// The "TURN over TCP and TLS" table.
pub fn markdown(runs: &[StreamRun]) -> String {
    let mut s = String::new();
    if runs.is_empty() {
        return s;
    }
    let _ = writeln!(s, "## TURN over TCP and TLS\n");
    let _ = writeln!(
        s,
        "{ALLOCATIONS} allocations, one TCP or TLS connection each, echoes at rising rates \
         (the relayed leg is UDP). *Setup/s* includes the TLS handshake, *µs/setup* is the \
         server process's CPU per allocation set up; *process µs/pkt* is the server \
         process's CPU per packet sent or received.\n"
    );
    let _ = writeln!(
        s,
        "| transport | server | echoes/s offered | ready | setup/s | µs/setup | sent/s | back/s | loss % | RTT p50 / p99 (µs) | process µs/pkt |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let Some(l) = &r.load else {
            let why = super::table::why(&r.error);
            let _ = writeln!(
                s,
                "| {} | {} | {} | failed: {why} ||||||||",
                r.stream.name(),
                r.server.label(),
                r.rate
            );
            continue;
        };
        let t = l.traffic.as_ref();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            r.stream.name(),
            r.server.label(),
            r.rate,
            l.setup.ready,
            l.setup.rate_per_sec,
            r.setup_us().map_or("–".into(), |v| format!("{v:.0}")),
            t.map_or("–".into(), |t| format!("{:.0}", t.sent_per_sec)),
            t.map_or("–".into(), |t| format!("{:.0}", t.received_per_sec)),
            t.map_or("–".into(), |t| format!("{:.3}", t.loss_ratio * 100.0)),
            t.map_or("–".into(), |t| format!(
                "{:.0} / {:.0}",
                t.rtt_us.p50, t.rtt_us.p99
            )),
            l.cpu
                .traffic
                .watched_us_per_packet
                .map_or("–".into(), |v| format!("{v:.2}")),
        );
    }
    let _ = writeln!(s);
    s
}
