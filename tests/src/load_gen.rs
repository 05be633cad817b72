//! `relay load` and its echo peer (`relay load echo`) as tests run them: the echo a guard
//! that stops it on drop, a load run bounded in time with its output collected.

use std::{
    io::Read,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::Netns;

/// How long the echo peer may take to bind.
const ECHO_BIND_WAIT: Duration = Duration::from_secs(5);

/// A running `relay load echo`, killed on drop (when a test fails half-way).
pub struct Echo(Option<Child>);

impl Echo {
    /// `relay load echo` in `ns` on `listen`, dropping every `drop_every`th datagram when
    /// given; returns once its socket is bound.
    pub fn start(ns: &Netns, listen: &str, drop_every: Option<u64>) -> Self {
        Self::start_under(ns, &[], listen, drop_every)
    }

    /// Like [`start`](Self::start), run under `wrapper` (e.g. `nice -n -10`).
    pub fn start_under(
        ns: &Netns,
        wrapper: &[&str],
        listen: &str,
        drop_every: Option<u64>,
    ) -> Self {
        let mut cmd = command(ns, wrapper);
        cmd.args([
            "load",
            "echo",
            "--listen",
            listen,
            "--threads",
            "2",
            "--json",
        ]);
        if let Some(n) = drop_every {
            cmd.args(["--drop-every", &n.to_string()]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn relay load echo");
        let echo = Self(Some(child));
        let deadline = Instant::now() + ECHO_BIND_WAIT;
        loop {
            let bound = ns
                .exec("ss", &["-Hlun"])
                .map(|o| o.contains(listen))
                .unwrap_or(false);
            if bound {
                return echo;
            }
            assert!(Instant::now() < deadline, "echo peer did not bind {listen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the process's stdout (its JSON stats) once it has exited.
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

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a `relay load` run printed.
pub struct LoadOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `relay load ARGS --json -q` in `ns`, killed (and the test failed) after `timeout`.
pub fn run_load(ns: &Netns, args: &[&str], timeout: Duration) -> LoadOutput {
    run_load_under(ns, &[], args, timeout)
}

/// Like [`run_load`], run under `wrapper` (e.g. `nice -n -10`).
pub fn run_load_under(
    ns: &Netns,
    wrapper: &[&str],
    args: &[&str],
    timeout: Duration,
) -> LoadOutput {
    spawn_load_under(ns, wrapper, args).finish(timeout)
}

/// Starts `relay load ARGS --json -q` in `ns` in the background (a test does something
/// to the relay meanwhile); [`RunningLoad::finish`] collects it.
pub fn spawn_load(ns: &Netns, args: &[&str]) -> RunningLoad {
    spawn_load_under(ns, &[], args)
}

fn spawn_load_under(ns: &Netns, wrapper: &[&str], args: &[&str]) -> RunningLoad {
    let mut child = command(ns, wrapper)
        .arg("load")
        .args(args)
        .args(["--json", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relay load");
    // Read while it runs: a full pipe would stall it.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    RunningLoad {
        child: Some(child),
        out: Some(out),
        err: Some(err),
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

/// A `relay load` started by [`spawn_load`], killed on drop (a test failing half-way).
pub struct RunningLoad {
    child: Option<Child>,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
    args: Vec<String>,
}

impl RunningLoad {
    /// Waits for it to end, killing it (and failing the test) after `timeout`.
    pub fn finish(mut self, timeout: Duration) -> LoadOutput {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "relay load {:?} did not finish within {timeout:?}",
                    self.args
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let join = |h: Option<std::thread::JoinHandle<String>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        LoadOutput {
            code: status.code().unwrap_or(-1),
            stdout: join(self.out.take()),
            stderr: join(self.err.take()),
        }
    }
}

impl Drop for RunningLoad {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl LoadOutput {
    /// The exit code and the JSON report (the test fails if it is not JSON).
    pub fn report(&self) -> (i32, serde_json::Value) {
        let report = serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "relay load output is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        });
        (self.code, report)
    }
}

/// The number at `path` (dot-separated keys) of a report.
pub fn num(v: &serde_json::Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = &cur[key];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("`{path}` missing or not a number in {v:#}"))
}

/// `relay` in `ns`, under `wrapper` when one is given.
fn command(ns: &Netns, wrapper: &[&str]) -> std::process::Command {
    let bin = crate::relay_binary();
    let bin = bin.to_str().expect("UTF-8 path");
    match wrapper.split_first() {
        None => ns.command(bin),
        Some((program, rest)) => {
            let mut c = ns.command(program);
            c.args(rest).arg(bin);
            c
        }
    }
}
