//! The relay as a container: the image `cargo xtask image` builds (from the debug binary
//! the other tests run), and `podman run` arguments that start it in a namespace of the
//! topology the way the Kubernetes DaemonSet does (the host's network, the capabilities
//! of deploy/kubernetes/daemonset.yaml). Images and containers are removed on drop, also
//! while a failing test unwinds.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use crate::{Netns, netns::unique_id};

/// The capabilities the DaemonSet grants (deploy/kubernetes/daemonset.yaml and
/// deploy/relay.service say why each one).
pub const CAPABILITIES: &[&str] = &["BPF", "PERFMON", "NET_ADMIN", "NET_BIND_SERVICE", "SETPCAP"];

/// Processes the container may run (its RLIMIT_NPROC). podman sets this limit whether
/// asked or not, to a default above what a box without CAP_SYS_RESOURCE (this CI's)
/// may grant; the relay needs a few dozen threads.
const NPROC: u64 = 4096;

/// An image built by `cargo xtask image` for one test run, removed on drop.
pub struct Image {
    pub tag: String,
}

impl Image {
    /// `cargo xtask image --binary BINARY --tag localhost/relay:test-…`: the same code as
    /// the operator's command, from the binary the tests run.
    pub fn build(binary: &Path) -> Result<Self, String> {
        let tag = format!("localhost/relay:test-{}", unique_id());
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["run", "--quiet", "--package", "xtask", "--", "image"])
            .arg("--binary")
            .arg(binary)
            .args(["--tag", &tag])
            .current_dir(crate::workspace_root())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        // Built or not, a tag may exist: the guard removes it.
        let image = Self { tag };
        if !out.status.success() {
            return Err(format!(
                "`cargo xtask image` failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
        Ok(image)
    }

    /// What `podman image inspect` says of `format` (a Go template).
    pub fn inspect(&self, format: &str) -> String {
        podman(&["image", "inspect", "--format", format, &self.tag])
            .unwrap_or_else(|e| panic!("podman image inspect: {e}"))
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman(&["rmi", "--force", &self.tag]);
    }
}

/// A container name for one `podman run`, force-removed on drop: a relay that did not
/// stop on SIGTERM (the harness kills the podman client, not the container) goes too.
/// Declare it before the process that runs it, so it drops after.
pub struct Container {
    pub name: String,
}

impl Container {
    pub fn new() -> Self {
        Self {
            name: format!("relay-{}", unique_id()),
        }
    }

    /// `podman run …` in the network namespace of `ns`, running `image`'s entrypoint (the
    /// relay) with the arguments that follow ([`Launch::program`](crate::relay::Launch)).
    /// The temp dir is shared at the same path, so a config the harness writes there is
    /// where the relay looks for it.
    pub fn run_args(&self, ns: &Netns, image: &Image) -> Vec<String> {
        let tmp = std::env::temp_dir();
        let tmp = tmp.to_str().expect("utf-8 temp dir");
        let nofile = hard_limit(libc::RLIMIT_NOFILE);
        let mut args: Vec<String> = [
            "podman",
            // crun refuses cgroups in hybrid mode (this CI's); runc runs there and on
            // unified hosts alike.
            "--runtime",
            "runc",
            "run",
            "--rm",
            "--name",
            &self.name,
            // hostNetwork of the DaemonSet: the relay sees the node's NICs, here those
            // of the relay host's namespace. (podman itself runs outside it: inside `ip
            // netns exec` it would find no cgroup mounts.)
            "--network",
            &format!("ns:/run/netns/{}", ns.name()),
            "--cap-drop",
            "ALL",
            // io_uring is outside the default seccomp profile (the DaemonSet says
            // Unconfined too).
            "--security-opt",
            "seccomp=unconfined",
            // allowPrivilegeEscalation: false, readOnlyRootFilesystem, the emptyDir for
            // the control socket.
            "--security-opt",
            "no-new-privileges",
            "--read-only",
            "--tmpfs",
            "/run/relay",
            "--env",
            "RUNTIME_DIRECTORY=/run/relay",
            "--ulimit",
            &format!("nofile={nofile}:{nofile}"),
            "--ulimit",
            &format!("nproc={NPROC}:{NPROC}"),
            "--volume",
            &format!("{tmp}:{tmp}"),
        ]
        .map(str::to_owned)
        .into();
        for cap in CAPABILITIES {
            args.extend(["--cap-add".to_owned(), format!("CAP_{cap}")]);
        }
        args.push(image.tag.clone());
        args
    }
}

impl Default for Container {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.name]);
    }
}

/// Runs podman; stdout, or the error with its stderr.
pub fn podman(args: &[&str]) -> Result<String, crate::cmd::CmdError> {
    crate::cmd::run("podman", args)
}

/// This process's hard limit of `resource` (at most 2^20): what podman may set in the
/// container without CAP_SYS_RESOURCE.
fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes into the struct we own.
    let r = unsafe { libc::getrlimit(resource, &mut limit) };
    assert_eq!(r, 0, "getrlimit");
    limit.rlim_max.min(1 << 20)
}
