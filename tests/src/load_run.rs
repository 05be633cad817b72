//! Running `relay load` and its echo peer from a test: the echo as a guarded child
//! process, the generator to completion with a hard time limit, and its JSON report.

use std::{
    io::Read,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::Netns;

/// Hard limit for one `relay load` run.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// A process killed on drop (the echo peer when a test fails half-way).
pub struct Guard(Option<Child>);

impl Guard {
    /// SIGTERM, then the process's stdout once it has exited.
    pub fn finish(mut self) -> String {
        let mut child = self.0.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let mut out = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        let _ = child.wait();
        out
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `relay load echo` in `ns`, waiting until its socket is bound.
pub fn start_echo(ns: &Netns, listen: &str, drop_every: u64) -> Guard {
    let bin = crate::relay_binary();
    let child = ns
        .command(bin.to_str().unwrap())
        .args([
            "load",
            "echo",
            "--listen",
            listen,
            "--threads",
            "2",
            "--json",
        ])
        .args(["--drop-every", &drop_every.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn relay load echo");
    let guard = Guard(Some(child));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let bound = ns
            .exec("ss", &["-Hlun"])
            .map(|o| o.contains(listen))
            .unwrap_or(false);
        if bound {
            return guard;
        }
        assert!(Instant::now() < deadline, "echo peer did not bind {listen}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `relay load ARGS --json -q` in `ns`; returns the exit code and the parsed report.
pub fn load(ns: &Netns, args: &[&str]) -> (i32, Value) {
    finish_load(spawn_load(ns, args), args)
}

/// Starts `relay load ARGS --json -q` in `ns` (finish it with [`finish_load`]); killed
/// if dropped before.
pub fn spawn_load(ns: &Netns, args: &[&str]) -> Guard {
    let bin = crate::relay_binary();
    let child = ns
        .command(bin.to_str().unwrap())
        .arg("load")
        .args(args)
        .args(["--json", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relay load");
    Guard(Some(child))
}

/// Waits (at most [`LOAD_TIMEOUT`]) for a `relay load` from [`spawn_load`]; its exit code
/// and report.
pub fn finish_load(mut load: Guard, args: &[&str]) -> (i32, Value) {
    let mut child = load.0.take().expect("running");
    let deadline = Instant::now() + LOAD_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("relay load {args:?} did not finish within {LOAD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let report: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("relay load output is not JSON ({e}): {out}\nstderr: {err}"));
    (status.code().unwrap_or(-1), report)
}

/// The number at `path` (dot-separated keys) of a report.
pub fn num(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = &cur[key];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("`{path}` missing or not a number in {v:#}"))
}
