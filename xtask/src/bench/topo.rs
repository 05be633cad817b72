//! The benchmark's hosts, as network namespaces joined by veth pairs:
//!
//! ```text
//!  client ────────── relay host ────────── media
//!  203.0.113.10   ext 203.0.113.50 | int 192.0.2.50   192.0.2.10 (echo peer)
//! ```
//!
//! The relay host has the deployment's two NICs: clients reach the external one, the
//! echo peer sits behind the internal one, so relayed traffic crosses the host from NIC
//! to NIC as it does in front of a media server. The static-NAT firewall of the test
//! topology is left out: its conntrack would cost every configuration the same and take
//! CPU from the measurement. With no relay running, the host routes (the baseline).
//!
//! Veth peers of the relay's NICs carry an XDP program that passes everything: a veth
//! only receives XDP-redirected frames when its peer runs XDP. Transmit checksum offload
//! is off everywhere, so locally sent packets carry real checksums XDP can rewrite.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    sync::Mutex,
};

use anyhow::{Context as _, Result, bail};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const RELAY_EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);
pub const RELAY_INT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
pub const MEDIA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

/// Namespaces are `rt<pid>xb<role>`, the test harness's pattern, so its sweep (and ours)
/// removes the leftovers of a killed run.
const PREFIX: &str = "rt";

/// Runs a program; a non-zero exit is an error carrying its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run `{program}` (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One namespace, deleted on drop.
pub struct Ns {
    name: String,
}

impl Ns {
    fn new(name: String) -> Result<Self> {
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec` execs it, so
    /// the child's pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(drop)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "delete", &self.name]);
    }
}

/// The three hosts. Dropping it detaches the pass programs and deletes the namespaces
/// (and with them every veth).
pub struct Topo {
    /// The client's end of the link to the relay's external NIC (where the flood starts).
    pub client_if: String,
    pub ext_if: String,
    pub int_if: String,
    /// The media host's end of the link to the relay's internal NIC.
    pub media_if: String,
    // Links before namespaces: closing them detaches the programs first. Client's, then
    // media's; a scenario may swap one for its own program ([`Topo::without_pass`]).
    pass: Mutex<[Option<OwnedFd>; 2]>,
    pub client: Ns,
    pub relay: Ns,
    pub media: Ns,
}

impl Topo {
    pub fn new() -> Result<Self> {
        sweep_stale();
        let id = format!("{PREFIX}{}xb", std::process::id());
        let client = Ns::new(format!("{id}c"))?;
        let relay = Ns::new(format!("{id}r"))?;
        let media = Ns::new(format!("{id}m"))?;
        let (client_if, ext_if) = (format!("{id}cl"), format!("{id}re"));
        let (int_if, media_if) = (format!("{id}ri"), format!("{id}md"));
        link(&client, &client_if, &relay, &ext_if)?;
        link(&relay, &int_if, &media, &media_if)?;

        addr(&client, &client_if, CLIENT)?;
        addr(&relay, &ext_if, RELAY_EXT)?;
        addr(&relay, &int_if, RELAY_INT)?;
        addr(&media, &media_if, MEDIA)?;
        client.ip(&[
            "route",
            "add",
            "192.0.2.0/24",
            "via",
            &RELAY_EXT.to_string(),
        ])?;
        media.ip(&["route", "add", "default", "via", &RELAY_INT.to_string()])?;
        // Routing for the no-relay baseline, and the forwarding flag the kernel's FIB
        // lookup (bpf_fib_lookup) wants on both NICs before XDP may redirect between them.
        relay.sysctl("net.ipv4.ip_forward", "1")?;
        for ifname in [&ext_if, &int_if] {
            relay.sysctl(&format!("net.ipv4.conf.{ifname}.forwarding"), "1")?;
        }
        let pass = [
            Some(attach_pass(&client, &client_if)?),
            Some(attach_pass(&media, &media_if)?),
        ];
        Ok(Self {
            client_if,
            ext_if,
            int_if,
            media_if,
            pass: Mutex::new(pass),
            client,
            relay,
            media,
        })
    }
}

/// An outer host of the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Media,
}

impl Topo {
    pub fn side(&self, side: Side) -> (&Ns, &str) {
        match side {
            Side::Client => (&self.client, &self.client_if),
            Side::Media => (&self.media, &self.media_if),
        }
    }

    /// Detaches the pass program of `side`'s link, so another XDP program (the capacity
    /// scenario's counting sink) can take its place; the guard puts it back.
    pub fn without_pass(&self, side: Side) -> PassGuard<'_> {
        drop(self.pass.lock().expect("not poisoned")[side as usize].take());
        PassGuard { topo: self, side }
    }
}

/// Re-attaches a pass program on drop (see [`Topo::without_pass`]).
pub struct PassGuard<'a> {
    topo: &'a Topo,
    side: Side,
}

impl Drop for PassGuard<'_> {
    fn drop(&mut self) {
        let (ns, ifname) = self.topo.side(self.side);
        match attach_pass(ns, ifname) {
            Ok(fd) => self.topo.pass.lock().expect("not poisoned")[self.side as usize] = Some(fd),
            Err(e) => eprintln!("bench: re-attaching the pass program to {ifname}: {e:#}"),
        }
    }
}

/// A veth pair, one end in each namespace, up, with transmit checksum offload off.
fn link(a: &Ns, a_if: &str, b: &Ns, b_if: &str) -> Result<()> {
    run(
        "ip",
        &[
            "link",
            "add",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    )?;
    for (ns, ifname) in [(a, a_if), (b, b_if)] {
        ns.exec("ethtool", &["-K", ifname, "tx", "off"])?;
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

fn addr(ns: &Ns, ifname: &str, ip: Ipv4Addr) -> Result<()> {
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", ifname])
        .map(drop)
}

/// Deletes bench namespaces whose process is gone.
fn sweep_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some((pid, rest)) = name.strip_prefix(PREFIX).and_then(|r| r.split_once('x')) else {
            continue;
        };
        if !rest.starts_with('b') {
            continue;
        }
        if let Ok(pid) = pid.parse::<u32>()
            && pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = run("ip", &["netns", "delete", name]);
        }
    }
}

/// Loads `r0 = XDP_PASS; exit` and links it natively to `ifname` inside `ns`. The link
/// lasts as long as the returned fd (or the interface).
fn attach_pass(ns: &Ns, ifname: &str) -> Result<OwnedFd> {
    let path = format!("/run/netns/{}", ns.name());
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    let ifname = ifname.to_owned();
    std::thread::scope(|s| {
        s.spawn(move || -> Result<OwnedFd> {
            // SAFETY: a namespace fd; only this thread moves.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            bpf::xdp_pass_link(&ifname)
                .with_context(|| format!("attaching an XDP pass program to {ifname}"))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
    })
}

/// Just enough of bpf(2) for a two-instruction XDP program.
mod bpf {
    use super::*;

    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const BPF_XDP: u32 = 37;
    const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
    const XDP_PASS: i32 = 2;

    /// Room for the union bpf_attr; unused fields must be zero.
    #[repr(C, align(8))]
    struct Attr([u8; 128]);

    impl Attr {
        fn put32(&mut self, off: usize, v: u32) {
            self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        }
        fn put64(&mut self, off: usize, v: u64) {
            self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        }
    }

    fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<OwnedFd> {
        // SAFETY: attr is a valid, zero-padded bpf_attr of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr.0.as_mut_ptr(),
                attr.0.len() as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd the kernel handed us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    pub fn xdp_pass_link(ifname: &str) -> Result<OwnedFd> {
        // BPF_ALU64|BPF_MOV|BPF_K r0 = XDP_PASS; BPF_JMP|BPF_EXIT.
        let mut insns = [0u8; 16];
        insns[0] = 0xb7;
        insns[4..8].copy_from_slice(&XDP_PASS.to_ne_bytes());
        insns[8] = 0x95;
        let license = b"GPL\0";
        let mut load = Attr([0; 128]);
        load.put32(0, BPF_PROG_TYPE_XDP);
        load.put32(4, 2);
        load.put64(8, insns.as_ptr() as u64);
        load.put64(16, license.as_ptr() as u64);
        load.0[48..53].copy_from_slice(b"pass\0");
        load.put32(68, BPF_XDP);
        let prog = bpf(BPF_PROG_LOAD, &mut load).context("BPF_PROG_LOAD")?;

        let name = std::ffi::CString::new(ifname)?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {ifname}");
        }
        let mut link = Attr([0; 128]);
        link.put32(0, prog.as_raw_fd() as u32);
        link.put32(4, ifindex);
        link.put32(8, BPF_XDP);
        link.put32(12, XDP_FLAGS_DRV_MODE);
        // The link holds the program; the program fd can go.
        bpf(BPF_LINK_CREATE, &mut link).context("BPF_LINK_CREATE (native XDP)")
    }
}
