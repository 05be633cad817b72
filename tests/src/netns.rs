//! One network namespace, deleted on drop (also while a failing test unwinds).

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::cmd::{self, CmdError};

/// Every namespace and interface the harness makes starts with this, so a sweep can
/// find leftovers of a killed run.
pub const PREFIX: &str = "rt";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `rt<pid>x<n>`, at most 12 bytes, so
/// that with a role suffix of up to three letters it fits the 15-byte interface limit.
pub fn unique_id() -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}x{n}", std::process::id())
}

#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(name: &str) -> Result<Self, CmdError> {
        cmd::run("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args…`
    pub fn ip(&self, args: &[&str]) -> Result<String, CmdError> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        cmd::run("ip", &full)
    }

    /// Runs a program inside the namespace and waits for it.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, CmdError> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        cmd::run("ip", &full)
    }

    /// Like [`exec`](Self::exec) with stdin.
    pub fn exec_input(
        &self,
        program: &str,
        args: &[&str],
        input: &str,
    ) -> Result<String, CmdError> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        cmd::run_input("ip", &full, Some(input))
    }

    /// A `Command` that starts `program` inside the namespace (for servers a test spawns).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), CmdError> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Runs `f` on a fresh thread that has entered this namespace: sockets it opens and
    /// interfaces it names live here. Network namespaces are per thread, so the test's
    /// own thread is untouched.
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::io::Result<R> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path)?;
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: valid fd of a namespace file; affects only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| std::io::Error::other("thread in namespace panicked"))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also removes the veth ends inside it and their peers.
        let _ = cmd::run("ip", &["netns", "delete", &self.name]);
    }
}

/// Removes namespaces left by earlier runs of this harness whose process is gone.
pub fn sweep_stale() {
    let Ok(list) = cmd::run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('x') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = cmd::run("ip", &["netns", "delete", name]);
        }
    }
}
