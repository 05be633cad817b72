//! The `relay` daemon as a test runs it: config written to a private temp dir, `relay
//! serve` started inside a namespace, its log collected line by line, and SIGTERM (then
//! SIGKILL) on drop, also while a failing test unwinds.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::Netns;

/// How long `start` waits for the "relay running" line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace between SIGTERM and SIGKILL on drop.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Everything the process printed, shared with the reader threads.
#[derive(Default)]
struct LogBuf {
    text: Mutex<String>,
    grew: Condvar,
}

impl LogBuf {
    fn push_line(&self, line: &str) {
        let mut t = self.text.lock().unwrap_or_else(|e| e.into_inner());
        t.push_str(&strip_ansi(line));
        t.push('\n');
        self.grew.notify_all();
    }

    fn snapshot(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Removes ANSI escape sequences (CSI `ESC [ … final`, and bare `ESC x`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        // CSI: parameters and intermediates, then one final byte in 0x40..=0x7e. Any
        // other escape is dropped with the byte after it.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// How [`RelayProcess::start_launched`] starts the relay beyond its config.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// Extra environment (e.g. a `PATH` with stand-ins for host tools).
    pub env: Vec<(String, String)>,
    /// A command the relay runs under, which execs it in place (e.g. `setpriv …`), so
    /// the child's pid stays the relay's.
    pub wrapper: Vec<String>,
    /// A command that stands in for the relay binary and takes its arguments (e.g.
    /// `podman run --network ns:/run/netns/NAME … IMAGE`, whose entrypoint is the relay).
    /// It starts outside the namespace and joins it itself; signals sent to the child
    /// must reach the relay (podman forwards them).
    pub program: Vec<String>,
}

/// A running `relay serve`. Dropping it stops the process and removes its temp dir.
pub struct RelayProcess {
    child: Child,
    dir: PathBuf,
    config_path: PathBuf,
    log: Arc<LogBuf>,
    readers: Vec<JoinHandle<()>>,
    namespace: String,
}

impl RelayProcess {
    /// Writes `config` (TOML) to a temp dir, starts the relay in `ns` and waits until it
    /// logs "relay running". Errors carry the whole log.
    pub fn start(ns: &Netns, config: &str) -> Result<Self, String> {
        Self::start_with_files(ns, config, &[])
    }

    /// Like [`start`](Self::start), also writing `files` (name, contents) beside the
    /// config, e.g. a `users_file` named relative to it.
    pub fn start_with_files(
        ns: &Netns,
        config: &str,
        files: &[(&str, &str)],
    ) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("relay-test-{}", crate::netns::unique_id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let config_path = dir.join("relay.toml");
        let write = |p: &Path, s: &str| {
            std::fs::write(p, s).map_err(|e| format!("write {}: {e}", p.display()))
        };
        let prepared = (|| {
            write(&config_path, config)?;
            for (name, contents) in files {
                write(&dir.join(name), contents)?;
            }
            Ok::<(), String>(())
        })();
        if let Err(e) = prepared {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }

        Self::launch(ns, dir, config_path, true, &Launch::default())
    }

    /// Like [`start`](Self::start), started as `launch` says (environment, a wrapper).
    pub fn start_launched(ns: &Netns, config: &str, launch: &Launch) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("relay-test-{}", crate::netns::unique_id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let config_path = dir.join("relay.toml");
        if let Err(e) = std::fs::write(&config_path, config) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!("write {}: {e}", config_path.display()));
        }
        Self::launch(ns, dir, config_path, true, launch)
    }

    /// `relay serve` with no config: the loopback demo, on 127.0.0.1:3478 of `ns`.
    pub fn start_demo(ns: &Netns) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("relay-test-{}", crate::netns::unique_id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let config_path = dir.join("no-config");
        Self::launch(ns, dir, config_path, false, &Launch::default())
    }

    fn launch(
        ns: &Netns,
        dir: PathBuf,
        config_path: PathBuf,
        with_config: bool,
        launch: &Launch,
    ) -> Result<Self, String> {
        let bin = crate::relay_binary();
        let bin = bin.to_str().expect("utf-8 path");
        let mut cmd = match (launch.program.split_first(), launch.wrapper.split_first()) {
            (Some((program, args)), _) => {
                let mut c = std::process::Command::new(program);
                c.args(args);
                c
            }
            (None, Some((program, args))) => {
                let mut c = ns.command(program);
                c.args(args).arg(bin);
                c
            }
            (None, None) => ns.command(bin),
        };
        cmd.arg("serve");
        if with_config {
            cmd.arg("--config").arg(&config_path);
        }
        cmd.current_dir(&dir)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.envs(launch.env.iter().map(|(k, v)| (k, v)));
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("cannot spawn {bin}: {e}"));
            }
        };
        let log = Arc::new(LogBuf::default());
        let mut readers = Vec::new();
        if let Some(out) = child.stderr.take() {
            readers.push(spawn_reader(out, log.clone()));
        }
        if let Some(out) = child.stdout.take() {
            readers.push(spawn_reader(out, log.clone()));
        }
        let relay = RelayProcess {
            child,
            dir,
            config_path,
            log,
            readers,
            namespace: ns.name().to_owned(),
        };
        relay.wait_started()?;
        Ok(relay)
    }

    fn wait_started(&self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut text = self.log.text.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if text.contains("relay running") {
                return Ok(());
            }
            // `try_wait` needs `&mut Child`; the pid is enough to see it exited.
            if !process_alive(self.child.id()) {
                drop(text);
                // Give the readers a moment to drain the pipe.
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!(
                    "relay exited before it was running; log:\n{}",
                    self.logs()
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(text);
                return Err(format!(
                    "relay not running after {START_TIMEOUT:?}; log:\n{}",
                    self.logs()
                ));
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            text = self
                .log
                .grew
                .wait_timeout(text, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Everything the relay printed so far, ANSI escapes removed.
    pub fn logs(&self) -> String {
        self.log.snapshot()
    }

    /// Waits until some log line contains `pattern`; returns that line (the first one).
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> Result<String, String> {
        self.wait_for_line(timeout, |l| l.contains(pattern))
            .map_err(|log| {
                format!("no log line containing {pattern:?} within {timeout:?}; log:\n{log}")
            })
    }

    /// Waits until some log line satisfies `pred`; `Err` carries the whole log.
    pub fn wait_for_line(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        self.wait_until(timeout, |text| {
            text.lines().find(|l| pred(l)).map(str::to_owned)
        })
    }

    /// Log lines containing `pattern` and satisfying `pred`, once there are at least `n` of
    /// them or `timeout` passed (then whatever there is). Event lines (allocations, refused
    /// peers...) are written by the relay's logging thread a moment after the request that
    /// caused them was answered: a test that counts them right after its request waits here.
    pub fn wait_for_lines(
        &self,
        pattern: &str,
        pred: impl Fn(&str) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Vec<String> {
        let matching = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.contains(pattern) && pred(l))
                .map(str::to_owned)
                .collect()
        };
        self.wait_until(timeout, |text| {
            let lines = matching(text);
            (lines.len() >= n).then_some(lines)
        })
        .unwrap_or_else(|text| matching(&text))
    }

    /// Waits until `found` answers for the log so far, woken as it grows; `Err` carries
    /// the whole log when `timeout` passes first.
    fn wait_until<T>(
        &self,
        timeout: Duration,
        found: impl Fn(&str) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        let mut text = self.log.text.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(t) = found(&text) {
                return Ok(t);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(text.clone());
            }
            text = self
                .log
                .grew
                .wait_timeout(text, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Log lines containing `pattern`.
    pub fn log_lines(&self, pattern: &str) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|l| l.contains(pattern))
            .map(str::to_owned)
            .collect()
    }

    /// `None` while the relay runs as started; otherwise why not (it exited, or it was
    /// told to shut down by a signal the test did not send), for assertion messages.
    pub fn unexpected_stop(&self) -> Option<String> {
        if !process_alive(self.child.id()) {
            return Some(format!(
                "relay (pid {}) is no longer running",
                self.child.id()
            ));
        }
        self.logs()
            .lines()
            .find(|l| l.contains("shutting down"))
            .map(|l| format!("relay was stopped by a signal from outside the test: {l}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has ended (a zombie counts as ended).
    pub fn exited(&self) -> bool {
        !process_alive(self.child.id())
    }

    /// Sends `sig` to the relay (SIGHUP reloads, SIGTERM drains, SIGKILL leaves the host
    /// as it was).
    pub fn signal(&self, sig: libc::c_int) {
        // `ip netns exec` execs the program in place, so the child's pid is the relay's.
        // SAFETY: plain kill(2) on our own child's pid, which is not reaped before drop.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill({sig}) of the relay failed");
    }

    /// Replaces the config file in place (SIGHUP reads it again).
    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(&self.config_path, config)
            .unwrap_or_else(|e| panic!("rewrite {}: {e}", self.config_path.display()));
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The namespace it runs in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; waits for the exit and the log's end.
    pub fn stop(mut self) -> String {
        self.terminate();
        self.logs()
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            self.join_readers();
            return;
        }
        // `ip netns exec` execs the program in place, so the child's pid is the relay's.
        // SAFETY: plain kill(2) on our own child's pid, which is not reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        self.join_readers();
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.terminate();
        if std::thread::panicking() {
            eprintln!(
                "----- relay log ({}) -----\n{}----- end of relay log -----",
                self.namespace,
                self.logs()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_reader(out: impl Read + Send + 'static, log: Arc<LogBuf>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    log.push_line(line.trim_end_matches(['\n', '\r']));
                }
            }
        }
    })
}

/// Whether `pid` still runs (a zombie counts as gone).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name, is the state.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The value of `key=` in a tracing log line: `key=value` up to the next space, or the
/// inside of `key="value"`. Values with spaces (`rule=loopback 127.0.0.0/8`) are cut at
/// the first space: match those with `contains`.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("{key}=");
    let mut from = 0;
    while let Some(pos) = line[from..].find(&needle) {
        let at = from + pos;
        // Must start a field: beginning of line or after a space.
        if at == 0 || line.as_bytes()[at - 1] == b' ' {
            let rest = &line[at + needle.len()..];
            // `&str` fields are Debug-formatted: `user="alice"`.
            if let Some(quoted) = rest.strip_prefix('"') {
                let end = quoted.find('"').unwrap_or(quoted.len());
                return Some(&quoted[..end]);
            }
            let end = rest.find(' ').unwrap_or(rest.len());
            return Some(&rest[..end]);
        }
        from = at + needle.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ansi() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2024\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"),
            "2024  INFO x"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn fields() {
        let l = "INFO allocation created id=7 user=alice client=udp 1.2.3.4:5 -> 6.7.8.9:3478 relayed=203.0.113.50:24001 lifetime_s=600";
        assert_eq!(field(l, "user"), Some("alice"));
        assert_eq!(field(l, "relayed"), Some("203.0.113.50:24001"));
        assert_eq!(field(l, "id"), Some("7"));
        assert_eq!(field(l, "nope"), None);
        let l = "WARN authentication failed (401/438): x user=\"alice\" client=udp 1.2.3.4:5 -> 6.7.8.9:3478 reason=wrong password";
        assert_eq!(field(l, "user"), Some("alice"));
        assert_eq!(field(l, "reason"), Some("wrong"));
    }
}
