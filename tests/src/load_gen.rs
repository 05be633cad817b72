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
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("relay load {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    LoadOutput {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
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
