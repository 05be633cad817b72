//! Capabilities after setup. Starting needs CAP_BPF and CAP_PERFMON (loading the kernel
//! program: the verifier refuses its packet-pointer arithmetic without CAP_PERFMON),
//! CAP_NET_ADMIN (attaching it, the forwarding sysctls and the nftables guard) and
//! CAP_NET_BIND_SERVICE for ports below 1024. Once the program runs, map updates go
//! through file descriptors already open, which needs no capability (since Linux 6.5), so
//! the relay drops every capability but those it still needs, from every set and the
//! bounding set, before any other thread exists: every thread it starts inherits only
//! the kept set.
//!
//! Raw `capget`/`capset`/`prctl` through `libc` (already a dependency) rather than the
//! `caps` crate: three syscalls, and the policy (what to keep, and why) is ours anyway.

use std::{fmt, io};

/// Capability numbers (linux/capability.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Cap {
    SetPcap = 8,
    NetBindService = 10,
    NetAdmin = 12,
    Perfmon = 38,
    Bpf = 39,
}

impl Cap {
    fn bit(self) -> u64 {
        1 << self as u32
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(NAMES[*self as usize])
    }
}

/// What the relay still needs once its program is loaded and attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// It changed the host's forwarding (sysctls, nftables table) and restores it at exit.
    pub teardown: bool,
    /// A port it binds later (listeners, admin, relay ports) is below
    /// net.ipv4.ip_unprivileged_port_start.
    pub low_ports: bool,
    /// It updates XDP maps on a kernel before 6.5, where every bpf() call needs CAP_BPF
    /// while unprivileged BPF is disabled.
    pub bpf_maps: bool,
    /// It runs XDP from a config file, so an upgrade may bring a changed kernel program:
    /// the successor inherits what loading it takes (see [`missing_for_loading`]).
    pub program_upgrade: bool,
}

impl Needs {
    /// The kept capabilities, each with why.
    pub fn kept(self) -> Vec<(Cap, &'static str)> {
        let mut kept = Vec::new();
        if self.teardown {
            kept.push((
                Cap::NetAdmin,
                "restoring the forwarding sysctls and removing the nftables guard at exit",
            ));
        }
        if self.low_ports {
            kept.push((
                Cap::NetBindService,
                "binding ports below net.ipv4.ip_unprivileged_port_start",
            ));
        }
        if self.bpf_maps {
            kept.push((Cap::Bpf, "XDP map updates (kernel before 6.5)"));
        }
        if self.program_upgrade {
            for cap in LOADING {
                if !kept.iter().any(|(c, _)| *c == cap) {
                    kept.push((
                        cap,
                        "passed on to a successor that loads a changed XDP program",
                    ));
                }
            }
        }
        kept
    }

    fn mask(self) -> u64 {
        self.kept().iter().fold(0, |m, (c, _)| m | c.bit())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("reading this process's capabilities: {0}")]
    Get(#[source] io::Error),
    #[error("dropping capabilities: {0}")]
    Set(#[source] io::Error),
    #[error("raising ambient capability {0} (for nft at exit): {1}")]
    Ambient(Cap, #[source] io::Error),
    #[error(
        "{0} threads already run: capabilities are per thread, so they must be dropped before any other starts"
    )]
    Threads(usize),
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// (effective, permitted, inheritable) of the calling thread, as 64-bit masks.
fn get() -> io::Result<(u64, u64, u64)> {
    let mut h = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget with a v3 header and the two data structs v3 expects.
    if unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |f: fn(&Data) -> u32| u64::from(f(&d[0])) | (u64::from(f(&d[1])) << 32);
    Ok((
        join(|d| d.effective),
        join(|d| d.permitted),
        join(|d| d.inheritable),
    ))
}

fn set(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let mut h = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |m: u64| [m as u32, (m >> 32) as u32];
    let (e, p, i) = (split(effective), split(permitted), split(inheritable));
    let d = [0, 1].map(|n| Data {
        effective: e[n],
        permitted: p[n],
        inheritable: i[n],
    });
    // SAFETY: capset with a v3 header and the two data structs v3 expects.
    if unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn prctl(op: libc::c_int, a: libc::c_ulong, b: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(op, a, b, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The highest capability this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

/// Capability names by number (linux/capability.h), for the log.
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

fn names(mask: u64) -> String {
    let mut out: Vec<String> = Vec::new();
    for bit in 0..64usize {
        if mask & (1 << bit) != 0 {
            out.push(
                NAMES
                    .get(bit)
                    .map_or_else(|| format!("cap {bit}"), |n| (*n).to_owned()),
            );
        }
    }
    if out.is_empty() {
        "none".to_owned()
    } else {
        out.join(",")
    }
}

/// Drops every capability `needs` does not keep: from the bounding set (when the relay
/// may: CAP_SETPCAP), the ambient, inheritable, permitted and effective sets; the kept
/// ones go into the ambient set, so the `nft` the relay runs at exit has them too when
/// the relay is not root. Also sets no_new_privs. Call before any other thread starts.
pub fn drop_after_setup(needs: Needs) -> Result<(), PrivilegeError> {
    let n = threads();
    if n > 1 {
        return Err(PrivilegeError::Threads(n));
    }
    let (effective, permitted, _) = get().map_err(PrivilegeError::Get)?;
    if permitted == 0 {
        tracing::debug!("no capabilities held: nothing to drop");
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map_err(PrivilegeError::Set)?;
        return Ok(());
    }
    let keep = needs.mask() & permitted;
    let missing = needs.mask() & !permitted;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    let mut bounding_kept = 0u64;
    let can_shrink_bounding = effective & Cap::SetPcap.bit() != 0;
    for cap in 0..=last_cap() {
        let c = libc::c_ulong::from(cap);
        let in_bounding = prctl(libc::PR_CAPBSET_READ, c, 0).is_ok_and(|r| r == 1);
        if !in_bounding {
            continue;
        }
        if keep & (1 << cap) != 0 || !can_shrink_bounding {
            bounding_kept |= 1 << cap;
            continue;
        }
        prctl(libc::PR_CAPBSET_DROP, c, 0).map_err(PrivilegeError::Set)?;
    }
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
    )
    .map_err(PrivilegeError::Set)?;
    set(keep, keep, keep).map_err(PrivilegeError::Set)?;
    for (cap, _) in needs.kept() {
        if keep & cap.bit() != 0 {
            prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap as libc::c_ulong,
            )
            .map_err(|e| PrivilegeError::Ambient(cap, e))?;
        }
    }
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map_err(PrivilegeError::Set)?;
    let why: Vec<String> = needs
        .kept()
        .iter()
        .filter(|(c, _)| keep & c.bit() != 0)
        .map(|(c, why)| format!("{c} ({why})"))
        .collect();
    // SAFETY: getuid never fails.
    let uid = unsafe { libc::getuid() };
    tracing::info!(uid, kept = %names(keep), dropped = %names(permitted & !keep),
        "capabilities dropped after setup; keeping {}", if why.is_empty() { "none".to_owned() } else { why.join(", ") });
    if bounding_kept & !keep != 0 {
        tracing::info!(bounding = %names(bounding_kept),
            "the bounding set stays as the supervisor set it (the relay lacks CAP_SETPCAP to shrink it)");
    }
    for (cap, why) in needs.kept() {
        if missing & cap.bit() != 0 {
            tracing::warn!(capability = %cap,
                "the relay does not hold {cap}, needed later for {why}: grant it (AmbientCapabilities= in the unit)");
        }
    }
    Ok(())
}

/// What loading the XDP program takes: map and program creation (CAP_BPF), the
/// verifier's packet-pointer arithmetic (CAP_PERFMON), an XDP program type
/// (CAP_NET_ADMIN).
const LOADING: [Cap; 3] = [Cap::Bpf, Cap::Perfmon, Cap::NetAdmin];

/// The capabilities loading the XDP program takes that this process lacks (effective
/// set), comma-separated; empty when it has them all.
pub fn missing_for_loading() -> String {
    let effective = get().map_or(0, |(e, _, _)| e);
    let missing = LOADING
        .iter()
        .filter(|c| effective & c.bit() == 0)
        .fold(0u64, |m, c| m | c.bit());
    if missing == 0 {
        String::new()
    } else {
        names(missing)
    }
}

/// Whether `port` needs CAP_NET_BIND_SERVICE to be bound.
pub fn is_privileged_port(port: u16) -> bool {
    let start: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    port != 0 && u32::from(port) < start
}

/// Whether every bpf() call needs CAP_BPF here: kernels before 6.5 check it for all
/// commands while unprivileged BPF is disabled (the default on most distributions).
pub fn bpf_calls_need_cap() -> bool {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .map(|s| s.trim() != "0")
        .unwrap_or(true);
    disabled && kernel_before(6, 5)
}

fn kernel_before(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    parse_release(&release).is_none_or(|v| v < (major, minor))
}

/// `6.18.44-foo` → (6, 18).
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_what_is_needed() {
        assert_eq!(Needs::default().mask(), 0);
        let all = Needs {
            teardown: true,
            low_ports: true,
            bpf_maps: true,
            program_upgrade: false,
        };
        assert_eq!(all.mask(), (1 << 12) | (1 << 10) | (1 << 39));
        let upgrade = Needs {
            program_upgrade: true,
            ..Needs::default()
        };
        assert_eq!(names(upgrade.mask()), "CAP_NET_ADMIN,CAP_PERFMON,CAP_BPF");
        assert_eq!(upgrade.kept().len(), 3);
        assert_eq!(
            Needs {
                teardown: true,
                ..upgrade
            }
            .kept()
            .len(),
            3,
            "CAP_NET_ADMIN listed once"
        );
        assert_eq!(
            names(all.mask()),
            "CAP_NET_BIND_SERVICE,CAP_NET_ADMIN,CAP_BPF"
        );
        assert_eq!(names(1 << 38), "CAP_PERFMON");
        assert_eq!(names(1 << 50), "cap 50");
    }

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v1300\n"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_release("junk"), None);
    }
}
