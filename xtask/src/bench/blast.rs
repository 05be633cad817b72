//! The tools of the capacity scenario: the frames trafgen blasts (one template per
//! allocation, written from `relay load --allocations-file`), and `relay bench-xdp`, the
//! benchmark's XDP programs (the counting sink, the bare redirect) run as a child that
//! answers each line on its stdin with its counters.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::{
    capacity::{Carrier, Way},
    topo::{MEDIA, Ns, RELAY_EXT},
};

/// First byte of a blasted payload: not STUN (the sink lets those through to the load
/// generator) and not ChannelData, so a frame that reaches the peer unwrapped is told
/// apart from one that did not.
const MARK: u8 = 0xb5;
/// The channel `relay load` binds on every allocation.
pub const CHANNEL: u16 = 0x4000;
/// The echo peer's port, the peer every allocation binds its channel to.
const PEER_PORT: u16 = 7000;

/// One allocation as `relay load --allocations-file` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    pub client: SocketAddrV4,
    pub channel: u16,
    pub relayed: SocketAddrV4,
}

/// Parses the file (`udp CLIENT SERVER CHANNEL RELAYED PEER` lines; `#` comments).
pub fn parse_listing(text: &str) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = (|| {
            let [_, client, _, channel, relayed, _] = f.as_slice() else {
                return None;
            };
            Some(Listed {
                client: client.parse().ok()?,
                channel: u16::from_str_radix(channel.strip_prefix("0x")?, 16).ok()?,
                relayed: relayed.parse().ok()?,
            })
        })();
        out.push(parsed.with_context(|| format!("allocations file line {}: {line:?}", n + 1))?);
    }
    Ok(out)
}

/// One frame template.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// ChannelData on this channel (client to relay), or the bare payload.
    pub channel: Option<u16>,
}

/// Ethernet addresses and the payload size shared by every template.
#[derive(Debug, Clone, Copy)]
pub struct Wire {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Application bytes per frame (after the ChannelData header, if any).
    pub payload: usize,
}

/// The trafgen configuration: one `{ … }` per frame, which trafgen sends round-robin, so
/// every allocation gets the same share. Checksums are trafgen's (static frames: computed
/// once); the TTL is set because trafgen's default is 0, which a routing host drops.
pub fn trafgen_config(wire: &Wire, frames: &[Frame]) -> String {
    let mut s = String::from("/* capacity blast (xtask bench/blast.rs) */\n");
    for f in frames {
        let header = match f.channel {
            Some(ch) => format!("c16({ch:#06x}), c16({}), ", wire.payload),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "{{\n  eth(da={}, sa={}),\n  ipv4(ttl=64, sa={}, da={}),\n  udp(sp={}, dp={}),\n  \
             {header}{MARK:#04x}, fill(0x00, {})\n}}",
            format_mac(&wire.dst_mac),
            format_mac(&wire.src_mac),
            f.src.ip(),
            f.dst.ip(),
            f.src.port(),
            f.dst.port(),
            wire.payload - 1,
        );
    }
    s
}

/// Client addresses for the ceilings, which have no relay to allocate through:
/// `n` ports of `ip` from 40000 up.
pub fn synthetic_clients(ip: Ipv4Addr, n: usize) -> Vec<SocketAddrV4> {
    (0..n)
        .map(|i| SocketAddrV4::new(ip, 40_000 + (i % 20_000) as u16))
        .collect()
}

/// The frames each carrier gets: the relay's as a client or peer sends them; the routing
/// ceiling's addressed to the far host itself (the same length: the ChannelData header's
/// 4 bytes become payload); the redirect's as the relay's (it never looks inside).
pub fn frames(carrier: Carrier, way: Way, clients: &[(SocketAddrV4, SocketAddrV4)]) -> Vec<Frame> {
    let listener = SocketAddrV4::new(RELAY_EXT, 3478);
    let peer = SocketAddrV4::new(MEDIA, PEER_PORT);
    clients
        .iter()
        .map(|&(client, relayed)| match (way, carrier) {
            (Way::ClientToPeer, Carrier::Routing) => Frame {
                src: client,
                dst: peer,
                channel: None,
            },
            (Way::ClientToPeer, _) => Frame {
                src: client,
                dst: listener,
                channel: Some(CHANNEL),
            },
            (Way::PeerToClient, Carrier::Routing) => Frame {
                src: peer,
                dst: client,
                channel: None,
            },
            (Way::PeerToClient, _) => Frame {
                src: peer,
                dst: relayed,
                channel: None,
            },
        })
        .collect()
}

pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `relay bench-xdp …` running in a namespace; stops (stdin closed) on drop.
pub struct XdpTool {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl XdpTool {
    /// Starts it and waits for its "attached" line.
    pub fn start(ns: &Ns, bin: &str, args: &[&str], log: &Path) -> Result<Self> {
        let mut cmd = ns.command(bin);
        cmd.arg("bench-xdp").args(args);
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("starting relay bench-xdp")?;
        let mut tool = Self::from_child(child)?;
        let mut line = String::new();
        tool.stdout.read_line(&mut line)?;
        if !line.contains("attached") {
            let why = std::fs::read_to_string(log).unwrap_or_default();
            bail!("relay bench-xdp {}: {}", args.join(" "), why.trim());
        }
        Ok(tool)
    }

    fn from_child(mut child: Child) -> Result<Self> {
        let stdin = child.stdin.take().context("piped stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("piped stdout")?);
        Ok(Self {
            child,
            stdin: Some(stdin),
            stdout,
        })
    }

    /// Packets the program counted so far.
    pub fn packets(&mut self) -> Result<u64> {
        let stdin = self.stdin.as_mut().context("stopped")?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        line.split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("relay bench-xdp answered {line:?}"))
    }
}

impl Drop for XdpTool {
    fn drop(&mut self) {
        // EOF on stdin detaches the program and ends the process.
        drop(self.stdin.take());
        super::procs::reap(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_relay_load_s_listing() {
        let text = "# transport client server channel relayed peer\n\
                    udp 203.0.113.10:40001 203.0.113.50:3478 0x4000 203.0.113.50:20001 192.0.2.10:7000\n";
        assert_eq!(
            parse_listing(text).unwrap(),
            vec![Listed {
                client: "203.0.113.10:40001".parse().unwrap(),
                channel: 0x4000,
                relayed: "203.0.113.50:20001".parse().unwrap(),
            }]
        );
        assert!(parse_listing("udp 1.2.3.4:5 x\n").is_err());
    }

    #[test]
    fn one_template_per_frame_with_the_channel_header_when_asked() {
        let wire = Wire {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            payload: 100,
        };
        let f = |channel| Frame {
            src: "203.0.113.10:40001".parse().unwrap(),
            dst: "203.0.113.50:3478".parse().unwrap(),
            channel,
        };
        let cfg = trafgen_config(&wire, &[f(Some(0x4000)), f(None)]);
        assert_eq!(cfg.matches('{').count(), 2, "{cfg}");
        assert!(cfg.contains("eth(da=02:00:00:00:00:02, sa=02:00:00:00:00:01)"));
        assert!(cfg.contains("udp(sp=40001, dp=3478)"));
        assert!(cfg.contains("c16(0x4000), c16(100), 0xb5, fill(0x00, 99)"));
        assert!(cfg.contains("\n  0xb5, fill(0x00, 99)"), "{cfg}");
    }
}
