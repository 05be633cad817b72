//! The IP forwarding the kernel fast path needs, without turning the host into a router.
//!
//! `bpf_fib_lookup` answers BPF_FIB_LKUP_RET_FWD_DISABLED unless forwarding is on for the
//! interface the frame arrived on: `net.ipv4.conf.<if>.forwarding` for IPv4 and
//! `net.ipv6.conf.<if>.forwarding` for IPv6 (net/core/filter.c). Without it the program
//! passes every relayed packet up to userspace.
//!
//! IPv4 forwarding on an interface also lets the kernel stack route whatever arrives there,
//! so `auto` installs a table of the relay's own, `inet relay_guard`, whose forward-hook
//! chain drops what the stack would route from those interfaces. Frames the XDP program
//! redirects or sends back (XDP_TX) never reach netfilter: the fast path is unaffected.
//! IPv6 differs: the stack forwards only with `net.ipv6.conf.all.forwarding`, and the
//! per-interface switch selects router behaviour, under which the kernel ignores Router
//! Advertisements unless `accept_ra` is 2; `accept_ra = 1` is raised to 2 alongside.
//!
//! Every change is restored when the relay stops. The table also records the previous
//! values (in the comments of its `restore` chain, which nothing jumps to), so a relay
//! killed before it could restore them puts them back at its next start.

use std::{
    io::{self, Write as _},
    process::{Command, Stdio},
};

use crate::config::Forwarding;

/// The nftables table the relay owns (family inet).
pub const GUARD_TABLE: &str = "relay_guard";
/// Prefix of the records in the `restore` chain's rule comments.
const RECORD: &str = "relay-restore ";

/// One per-interface sysctl the relay may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Knob {
    V4Forwarding,
    V6Forwarding,
    V6AcceptRa,
}

impl Knob {
    /// Path under /proc/sys/net, with the interface name as a path component ('/' can
    /// never be part of one), which is also the record's form.
    fn rel_path(self, interface: &str) -> String {
        match self {
            Knob::V4Forwarding => format!("ipv4/conf/{interface}/forwarding"),
            Knob::V6Forwarding => format!("ipv6/conf/{interface}/forwarding"),
            Knob::V6AcceptRa => format!("ipv6/conf/{interface}/accept_ra"),
        }
    }

    /// The name `sysctl` takes: dots in interface names (VLANs) are written as '/'.
    fn sysctl_name(self, interface: &str) -> String {
        let i = interface.replace('.', "/");
        match self {
            Knob::V4Forwarding => format!("net.ipv4.conf.{i}.forwarding"),
            Knob::V6Forwarding => format!("net.ipv6.conf.{i}.forwarding"),
            Knob::V6AcceptRa => format!("net.ipv6.conf.{i}.accept_ra"),
        }
    }

    /// What `auto` sets it to.
    fn wanted(self) -> &'static str {
        match self {
            Knob::V4Forwarding | Knob::V6Forwarding => "1",
            Knob::V6AcceptRa => "2",
        }
    }

    fn read(self, interface: &str) -> io::Result<String> {
        let path = format!("/proc/sys/net/{}", self.rel_path(interface));
        Ok(std::fs::read_to_string(path)?.trim().to_owned())
    }

    fn write(self, interface: &str, value: &str) -> io::Result<()> {
        let path = format!("/proc/sys/net/{}", self.rel_path(interface));
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .write_all(value.as_bytes())
    }
}

/// A sysctl the relay changed, and what it was before.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Change {
    knob: Knob,
    interface: String,
    previous: String,
}

impl Change {
    fn record(&self) -> String {
        format!(
            "{RECORD}{}={}",
            self.knob.rel_path(&self.interface),
            self.previous
        )
    }

    /// Inverse of [`Change::record`] (the comment's text, without quotes).
    fn parse_record(text: &str) -> Option<Change> {
        let (path, previous) = text.strip_prefix(RECORD)?.rsplit_once('=')?;
        let parts: Vec<&str> = path.split('/').collect();
        let [family, "conf", interface, leaf] = parts[..] else {
            return None;
        };
        let knob = match (family, leaf) {
            ("ipv4", "forwarding") => Knob::V4Forwarding,
            ("ipv6", "forwarding") => Knob::V6Forwarding,
            ("ipv6", "accept_ra") => Knob::V6AcceptRa,
            _ => return None,
        };
        // Only ever written back into /proc/sys: a name and a small number, nothing else.
        if interface.is_empty()
            || previous.is_empty()
            || !previous.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(Change {
            knob,
            interface: interface.to_owned(),
            previous: previous.to_owned(),
        })
    }

    /// Puts the previous value back, unless someone changed the setting since.
    fn restore(&self) {
        let name = self.knob.sysctl_name(&self.interface);
        match self.knob.read(&self.interface) {
            Ok(now) if now == self.knob.wanted() => {
                match self.knob.write(&self.interface, &self.previous) {
                    Ok(()) => tracing::info!(sysctl = %name, value = %self.previous, "restored"),
                    Err(e) => tracing::warn!(sysctl = %name, value = %self.previous, error = %e,
                        "cannot restore: set it by hand"),
                }
            }
            Ok(now) => tracing::info!(sysctl = %name, value = %now,
                "changed by someone else while the relay ran; left as it is"),
            // The interface is gone, and its settings with it.
            Err(e) => tracing::debug!(sysctl = %name, error = %e, "not restored"),
        }
    }
}

/// What `auto` changed; dropping it restores the sysctls, then removes the table.
#[derive(Debug, Default)]
pub struct ForwardingGuard {
    changes: Vec<Change>,
    table: bool,
    /// Why forwarding is off where the fast path needs it, for the status page.
    off_reason: Option<String>,
    /// Taken over in an upgrade not yet committed: the previous process may still resume
    /// with it, so dropping it leaves the host alone ([`ForwardingGuard::arm`]).
    pending: bool,
}

impl ForwardingGuard {
    /// Why IP forwarding is off on the XDP interfaces (so the kernel cannot route relayed
    /// packets and passes them to userspace), if it is.
    pub fn off_reason(&self) -> Option<&str> {
        self.off_reason.as_deref()
    }

    /// Whether dropping it changes the host (sysctls to restore, a table to remove),
    /// which needs CAP_NET_ADMIN.
    pub fn restores_at_exit(&self) -> bool {
        self.table || !self.changes.is_empty()
    }
}

impl Drop for ForwardingGuard {
    fn drop(&mut self) {
        if self.pending {
            return;
        }
        // Forwarding off first, then the guard: never forwarding without it.
        for c in self.changes.iter().rev() {
            c.restore();
        }
        if self.table {
            match nft(&format!("delete table inet {GUARD_TABLE}\n")) {
                Ok(()) => {
                    tracing::info!(table = %format!("inet {GUARD_TABLE}"), "nftables guard removed")
                }
                Err(e) => tracing::warn!(error = %e,
                    "cannot remove the nftables table inet {GUARD_TABLE}: `nft delete table inet {GUARD_TABLE}`"),
            }
        }
    }
}

/// What a [`ForwardingGuard`] holds, as an upgrade hands it to the new process (the
/// records in the table's own form), which restores it at its exit instead.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct GuardState {
    pub records: Vec<String>,
    pub table: bool,
    pub off_reason: Option<String>,
}

impl ForwardingGuard {
    /// A copy of what this guard restores, for the new process.
    pub fn state(&self) -> GuardState {
        GuardState {
            records: self.changes.iter().map(Change::record).collect(),
            table: self.table,
            off_reason: self.off_reason.clone(),
        }
    }

    /// The guard the previous process handed over: the host keeps its settings and table,
    /// and this process restores them at its exit, once [armed](ForwardingGuard::arm).
    /// Until then dropping it changes nothing: a new process that fails before the
    /// handover commits must not undo the forwarding the old one resumes with.
    pub fn adopt(state: GuardState) -> Self {
        let changes: Vec<Change> = state
            .records
            .iter()
            .filter_map(|r| Change::parse_record(r))
            .collect();
        if state.table || !changes.is_empty() {
            tracing::info!(
                table = state.table,
                sysctls = changes.len(),
                "forwarding guard taken over from the previous process: restored when this one stops"
            );
        }
        Self {
            changes,
            table: state.table,
            off_reason: state.off_reason,
            pending: true,
        }
    }

    /// The handover committed: this process owns the host's forwarding now and restores
    /// it at its exit.
    pub fn arm(&mut self) {
        self.pending = false;
    }

    /// A new process took this guard over: this one exits without restoring anything.
    pub fn disarm(mut self) {
        self.changes.clear();
        self.table = false;
    }
}

/// Makes forwarding on `interfaces` what the fast path needs (`Auto`), or checks it and
/// says what to do (`Manual`). `ipv6`: whether the relay has IPv6 addresses to relay on.
/// Never fails: without forwarding the relay still works, in userspace. Without the
/// nftables guard, `Auto` changes nothing (see [`ForwardingGuard::off_reason`]).
pub fn setup(mode: Forwarding, interfaces: &[String], ipv6: bool) -> ForwardingGuard {
    let knobs: &[Knob] = if ipv6 {
        &[Knob::V4Forwarding, Knob::V6Forwarding, Knob::V6AcceptRa]
    } else {
        &[Knob::V4Forwarding]
    };
    let interfaces: Vec<&str> = interfaces
        .iter()
        .map(String::as_str)
        .filter(|i| {
            // Loopback carries only local traffic: there is nothing to route to or from.
            let lo = is_loopback(i);
            if lo {
                tracing::debug!(interface = i, "loopback: forwarding left alone");
            }
            !lo
        })
        .collect();
    match mode {
        Forwarding::Manual => {
            check_manual(&interfaces, knobs);
            ForwardingGuard::default()
        }
        Forwarding::Auto => {
            recover_leftover();
            enable(&interfaces, knobs)
        }
    }
}

fn check_manual(interfaces: &[&str], knobs: &[Knob]) {
    for &i in interfaces {
        for &knob in knobs.iter().filter(|k| **k != Knob::V6AcceptRa) {
            match knob.read(i) {
                Ok(v) if v != "0" => {}
                Ok(_) => tracing::warn!(
                    interface = i,
                    "[xdp] forwarding = \"manual\" and forwarding is OFF on `{i}`: the XDP fast path cannot \
                     route (bpf_fib_lookup answers FWD_DISABLED) and every relayed packet goes through \
                     userspace. Run `sysctl -w {}=1` and drop routed traffic from `{i}` in nftables \
                     (forward hook), or set [xdp] forwarding = \"auto\"",
                    knob.sysctl_name(i)
                ),
                Err(e) => {
                    tracing::warn!(interface = i, error = %e, "cannot read {}", knob.sysctl_name(i))
                }
            }
        }
    }
}

fn enable(interfaces: &[&str], knobs: &[Knob]) -> ForwardingGuard {
    let mut planned = Vec::new();
    for &i in interfaces {
        for &knob in knobs {
            let turn_on = match knob {
                Knob::V4Forwarding | Knob::V6Forwarding => "0",
                // 1 means "only while not forwarding"; 0 and 2 need nothing, and where IPv6
                // forwarding was on already, RAs were ignored already.
                Knob::V6AcceptRa => {
                    let v6_turned_on = planned
                        .iter()
                        .any(|c: &Change| c.knob == Knob::V6Forwarding && c.interface == i);
                    if !v6_turned_on {
                        continue;
                    }
                    "1"
                }
            };
            match knob.read(i) {
                Ok(v) if v == turn_on => planned.push(Change {
                    knob,
                    interface: i.to_owned(),
                    previous: v,
                }),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(interface = i, error = %e, "cannot read {}", knob.sysctl_name(i))
                }
            }
        }
    }
    if planned.is_empty() {
        if !interfaces.is_empty() {
            tracing::info!(interfaces = %interfaces.join(","),
                "IP forwarding already on for the XDP interfaces (host configuration): nothing changed");
        }
        return ForwardingGuard::default();
    }
    let routed: Vec<&str> = planned
        .iter()
        .filter(|c| c.knob == Knob::V4Forwarding)
        .map(|c| c.interface.as_str())
        .collect();
    // The guard goes in before forwarding is switched on, and without it forwarding
    // stays off (fail closed): per-interface forwarding would let the stack route
    // whatever arrives there, and the table is also the record that puts the settings
    // back after a crash. The fast path still runs; what it cannot route goes up to
    // userspace, which relays it.
    if let Err(e) = nft(&guard_script(&planned, &routed)) {
        let mut off: Vec<&str> = planned.iter().map(|c| c.interface.as_str()).collect();
        off.dedup();
        let off = off.join(",");
        tracing::warn!(error = %e, interfaces = %off,
            "cannot install the nftables guard ({e}): IP forwarding stays OFF on {off}, so the XDP \
             fast path passes relayed packets to userspace (slower, still relayed). Install nftables \
             (Debian package nftables) or make `nft` work for the relay (CAP_NET_ADMIN, nf_tables \
             module), then restart; or set [xdp] forwarding = \"manual\" and manage forwarding and \
             filtering yourself");
        return ForwardingGuard {
            off_reason: Some(format!(
                "the nftables guard could not be installed ({e}), so the relay left forwarding off on {off}"
            )),
            changes: Vec::new(),
            table: false,
            pending: false,
        };
    }
    if !routed.is_empty() {
        tracing::info!(table = %format!("inet {GUARD_TABLE}"), interfaces = %routed.join(","),
            "nftables guard installed: the kernel stack routes nothing from these interfaces \
             (XDP-forwarded media is not affected)");
    }
    let mut guard = ForwardingGuard {
        changes: Vec::new(),
        table: true,
        off_reason: None,
        pending: false,
    };
    for c in planned {
        let name = c.knob.sysctl_name(&c.interface);
        match c.knob.write(&c.interface, c.knob.wanted()) {
            Ok(()) => {
                match c.knob {
                    Knob::V6AcceptRa => {
                        tracing::info!(sysctl = %name, was = %c.previous, now = c.knob.wanted(),
                        "Router Advertisements stay accepted with IPv6 forwarding on; restored at shutdown")
                    }
                    _ => tracing::info!(sysctl = %name, was = %c.previous, now = c.knob.wanted(),
                        why = "the XDP fast path's FIB lookups need it", "forwarding enabled; restored at shutdown"),
                }
                guard.changes.push(c);
            }
            Err(e) => tracing::warn!(sysctl = %name, error = %e,
                "cannot enable it: the XDP fast path passes this interface's packets to userspace \
                 (set it by hand: `sysctl -w {name}={}`)", c.knob.wanted()),
        }
    }
    guard
}

/// The table: one forward-hook drop rule for the interfaces whose IPv4 forwarding the
/// relay turns on, and the records of every change. Replaced atomically (one nft
/// transaction: create if missing, delete, create).
fn guard_script(changes: &[Change], routed: &[&str]) -> String {
    let mut s = format!(
        "table inet {GUARD_TABLE}\ndelete table inet {GUARD_TABLE}\ntable inet {GUARD_TABLE} {{\n"
    );
    s.push_str(
        "  comment \"relay: XDP fast path forwarding guard; removed when the relay stops\"\n",
    );
    if !routed.is_empty() {
        let set: Vec<String> = routed.iter().map(|i| format!("\"{i}\"")).collect();
        s.push_str(&format!(
            "  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    \
             meta nfproto ipv4 iifname {{ {} }} counter drop comment \"the relay enabled forwarding for XDP only\"\n  }}\n",
            set.join(", ")
        ));
    }
    s.push_str("  chain restore {\n");
    for c in changes {
        s.push_str(&format!("    return comment \"{}\"\n", c.record()));
    }
    s.push_str("  }\n}\n");
    s
}

/// A table left by a relay that did not stop cleanly: put its recorded values back and
/// remove it, so this run starts from the host's own settings.
fn recover_leftover() {
    let listing = match nft_output(&["list", "table", "inet", GUARD_TABLE]) {
        Ok(Some(l)) => l,
        _ => return,
    };
    let changes: Vec<Change> = listing
        .lines()
        .filter_map(|l| {
            l.split_once("comment \"")
                .map(|(_, c)| c.trim_end_matches('"'))
        })
        .filter_map(Change::parse_record)
        .collect();
    tracing::warn!(table = %format!("inet {GUARD_TABLE}"), records = changes.len(),
        "found the forwarding guard of a relay that did not stop cleanly: restoring what it changed");
    for c in changes.iter().rev() {
        c.restore();
    }
    if let Err(e) = nft(&format!("delete table inet {GUARD_TABLE}\n")) {
        tracing::warn!(error = %e, "cannot remove the leftover table inet {GUARD_TABLE}");
    }
}

#[derive(Debug, thiserror::Error)]
enum NftError {
    #[error("`nft` not found (Debian package nftables)")]
    Missing,
    #[error("running nft: {0}")]
    Io(#[from] io::Error),
    #[error("nft refused the rules: {0}")]
    Refused(String),
}

/// Runs an nft script (`nft -f -`).
fn nft(script: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => NftError::Missing,
            _ => NftError::Io(e),
        })?;
    // An nft that fails early may exit before reading the script (EPIPE here): what it
    // said on stderr is the error worth reporting then.
    let written = child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes());
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(written?)
    } else {
        Err(NftError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// `nft ARGS`: `Ok(None)` when nft ran and failed (e.g. no such table).
fn nft_output(args: &[&str]) -> Result<Option<String>, NftError> {
    let out = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => NftError::Missing,
            _ => NftError::Io(e),
        })?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// IFF_LOOPBACK, asked of the kernel (names can be anything).
fn is_loopback(interface: &str) -> bool {
    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return false;
    }
    // SAFETY: plain syscalls on a socket we own; ifreq is zero-initialised and the name
    // fits with its NUL.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return false;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(name) {
            *d = *s as libc::c_char;
        }
        let ok = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0;
        libc::close(fd);
        ok && (req.ifr_ifru.ifru_flags as libc::c_int & libc::IFF_LOOPBACK) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_including_dotted_names() {
        for (knob, interface) in [
            (Knob::V4Forwarding, "eth1"),
            (Knob::V6Forwarding, "eth0.100"),
            (Knob::V6AcceptRa, "rt12x3re"),
        ] {
            let c = Change {
                knob,
                interface: interface.into(),
                previous: "1".into(),
            };
            assert!(c.record().len() <= 128, "nft comments hold 128 bytes");
            assert_eq!(Change::parse_record(&c.record()), Some(c));
        }
        assert_eq!(
            Knob::V6Forwarding.sysctl_name("eth0.100"),
            "net.ipv6.conf.eth0/100.forwarding"
        );
        for bad in [
            "relay-restore ipv4/conf/eth1/rp_filter=0",
            "relay-restore ipv4/conf//forwarding=0",
            "relay-restore ipv4/conf/eth1/forwarding=",
            "relay-restore ipv4/conf/eth1/forwarding=1; rm",
            "other ipv4/conf/eth1/forwarding=0",
        ] {
            assert_eq!(Change::parse_record(bad), None, "{bad}");
        }
    }

    #[test]
    fn guard_drops_only_what_was_turned_on() {
        let changes = [
            Change {
                knob: Knob::V4Forwarding,
                interface: "ext".into(),
                previous: "0".into(),
            },
            Change {
                knob: Knob::V6AcceptRa,
                interface: "int".into(),
                previous: "1".into(),
            },
        ];
        let s = guard_script(&changes, &["ext"]);
        assert!(s.contains("hook forward"), "{s}");
        assert!(s.contains("iifname { \"ext\" } counter drop"), "{s}");
        assert!(!s.contains("\"int\""), "{s}");
        assert!(s.contains("relay-restore ipv6/conf/int/accept_ra=1"), "{s}");
        let only_v6 = guard_script(&changes[1..], &[]);
        assert!(!only_v6.contains("hook forward"), "{only_v6}");
    }
}
