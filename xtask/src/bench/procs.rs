//! The processes of one measurement: the server under test on the relay host, the echo
//! peer on the media host, `relay load` on the client; each stopped when the run ends,
//! also on error.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Load, Scenario, Server,
    topo::{MEDIA, RELAY_EXT, Topo},
};

const REALM: &str = "bench";
const USER: &str = "bench";
const PASSWORD: &str = "bench-password";
const ECHO_PORT: u16 = 7000;
pub const PORTS: (u16, u16) = (20000, 59999);
/// TURN over TLS (RFC 8656's port), when a scenario asks for streams.
pub const TLS_PORT: u16 = 5349;
const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A child process stopped with SIGTERM (then SIGKILL) on drop.
pub struct Proc {
    child: Child,
    what: String,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: std::process::Command, what: &str, log: PathBuf) -> Result<Self> {
        let f = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Self {
            child,
            what: what.to_owned(),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `ready()` or the timeout; an exit on the way is an error with the log.
    fn wait_ready(&mut self, ready: impl Fn(&Self) -> bool) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ready(self) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}):\n{}",
                    self.what,
                    tail(&self.log_text())
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {START_TIMEOUT:?}:\n{}",
                    self.what,
                    tail(&self.log_text())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        reap(&mut self.child);
    }
}

/// Waits [`STOP_GRACE`] for a child told to stop, then kills it.
pub fn reap(child: &mut Child) {
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn listening(topo: &Topo, ns_relay: bool, addr: &str) -> bool {
    let ns = if ns_relay { &topo.relay } else { &topo.media };
    ns.exec("ss", &["-Hlun"])
        .map(|o| o.contains(addr))
        .unwrap_or(false)
}

/// One scenario against one server: fresh server and echo, then the load.
pub fn measure(
    topo: &Topo,
    relay_bin: &Path,
    work: &Path,
    server: Server,
    sc: &Scenario,
) -> Result<Load> {
    let tag = format!("{:?}-{}-{}", server, sc.allocations, sc.rate).to_lowercase();
    let mut hosts = Hosts::start(
        topo,
        relay_bin,
        work,
        server,
        &tag,
        Limits::LoadGenerator,
        None,
    )?;
    let load = run_load(topo, &hosts.bin, work, &tag, server, sc, hosts.pids());
    hosts.stop();
    load
}

/// A self-signed certificate and its key (PEM) for the TLS scenarios.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Made with openssl in `work` (the load generator runs with `--insecure`: the cost
    /// of a handshake does not depend on who vouches for the key).
    pub fn make(work: &Path) -> Result<Self> {
        let (cert, key) = (work.join("bench-cert.pem"), work.join("bench-key.pem"));
        let status = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=relay.bench"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running openssl")?;
        if !status.success() {
            bail!("openssl could not make a certificate ({status})");
        }
        Ok(Self { cert, key })
    }
}

/// The `[limits]` of the relay under test.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Limits {
    /// The per-source limit for unauthenticated requests off: the load generator opens
    /// thousands of allocations from one address, as coturn (which has no such limit)
    /// gets them.
    LoadGenerator,
    /// The relay's defaults, as deployed.
    Defaults,
}

/// The echo peer and the server under test (none for the no-relay baseline), running.
pub struct Hosts {
    pub bin: String,
    pub server: Option<Proc>,
    pub echo: Proc,
}

impl Hosts {
    /// The echo peer, then the server; with `streams`, the server also takes TURN over
    /// TCP (3478) and TLS (5349) with this certificate.
    pub fn start(
        topo: &Topo,
        relay_bin: &Path,
        work: &Path,
        server: Server,
        tag: &str,
        limits: Limits,
        streams: Option<&TlsFiles>,
    ) -> Result<Self> {
        let bin = relay_bin
            .to_str()
            .context("the relay binary's path is not UTF-8")?
            .to_owned();
        let mut echo_cmd = topo.media.command(&bin);
        echo_cmd.args(["load", "echo", "--listen", &format!("{MEDIA}:{ECHO_PORT}")]);
        let mut echo = Proc::spawn(
            echo_cmd,
            "the echo peer",
            work.join(format!("echo-{tag}.log")),
        )?;
        echo.wait_ready(|p| p.log_text().contains("echo peer listening"))?;
        let server = match server {
            Server::Direct => None,
            Server::Coturn => Some(start_coturn(topo, work, tag, streams)?),
            Server::Userspace | Server::Xdp => {
                Some(start_relay(topo, &bin, work, tag, server, limits, streams)?)
            }
        };
        Ok(Self { bin, server, echo })
    }

    /// The server's and the echo peer's pids.
    pub fn pids(&self) -> (Option<u32>, u32) {
        (self.server.as_ref().map(Proc::pid), self.echo.pid())
    }

    pub fn stop(&mut self) {
        if let Some(s) = &mut self.server {
            s.stop();
        }
        self.echo.stop();
    }
}

fn start_relay(
    topo: &Topo,
    bin: &str,
    work: &Path,
    tag: &str,
    server: Server,
    limits: Limits,
    streams: Option<&TlsFiles>,
) -> Result<Proc> {
    let mode = if server == Server::Xdp {
        "native"
    } else {
        "off"
    };
    let unauthenticated = match limits {
        Limits::LoadGenerator => {
            "# The load generator opens thousands of allocations from one address, as coturn \
             (which\n# has no such limit) gets them: the limits for unauthenticated requests \
             are off.\nunauthenticated_rate = 0\nunauthenticated_global_rate = 0\n"
        }
        Limits::Defaults => "",
    };
    let listen = match streams {
        None => format!("[[listen]]\naddress = \"{RELAY_EXT}:3478\"\n"),
        // One TCP or TLS connection per allocation, all from the load generator's one
        // address: the per-source connection limit is off.
        Some(t) => format!(
            "[[listen]]\naddress = \"{RELAY_EXT}:3478\"\ntransports = [\"udp\", \"tcp\"]\n\n\
             [[listen]]\naddress = \"{RELAY_EXT}:{TLS_PORT}\"\ntransports = [\"tls\"]\n\n\
             [tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n\n\
             [tcp]\nmax_connections = 20000\nmax_connections_per_source = 20000\n",
            t.cert.display(),
            t.key.display()
        ),
    };
    let config = format!(
        r#"realm = "{REALM}"

{listen}
[relay]
address = "{RELAY_EXT}"
ports = "{lo}-{hi}"

[auth]
users = {{ {USER} = "{PASSWORD}" }}

[peers]
allow = ["192.0.2.0/24"]

[limits]
max_allocations = 20000
{unauthenticated}
[xdp]
interfaces = ["{ext}", "{int}"]
mode = "{mode}"

[log]
level = "info"
"#,
        lo = PORTS.0,
        hi = PORTS.1,
        ext = topo.ext_if,
        int = topo.int_if,
    );
    let path = work.join(format!("relay-{tag}.toml"));
    std::fs::write(&path, config)?;
    let mut cmd = topo.relay.command(bin);
    cmd.args(["serve", "--config"])
        .arg(&path)
        .env("NO_COLOR", "1");
    let mut p = Proc::spawn(cmd, "the relay", work.join(format!("relay-{tag}.log")))?;
    p.wait_ready(|p| p.log_text().contains("relay running"))?;
    Ok(p)
}

/// The coturn a run measures: `cargo xtask bench --coturn PATH` (a newer release built
/// from source beside Debian's) and `--coturn-arg` extras (e.g. its opt-in fast paths).
static COTURN: OnceLock<(String, Vec<String>)> = OnceLock::new();

/// Sets the coturn of this run (once, before any scenario starts).
pub fn use_coturn(bin: &str, extra: &[String]) {
    let _ = COTURN.set((bin.to_owned(), extra.to_vec()));
}

/// The turnserver binary of this run, and the arguments added to the bench's own.
pub fn coturn() -> (&'static str, &'static [String]) {
    COTURN
        .get()
        .map_or(("turnserver", &[][..]), |(b, a)| (b.as_str(), a.as_slice()))
}

fn start_coturn(topo: &Topo, work: &Path, tag: &str, streams: Option<&TlsFiles>) -> Result<Proc> {
    let log = work.join(format!("coturn-{tag}.log"));
    let (bin, extra) = coturn();
    let mut cmd = topo.relay.command(bin);
    cmd.args(["-n", "--no-cli", "--no-dtls", "--no-tcp-relay"]);
    match streams {
        None => {
            cmd.arg("--no-tls");
        }
        Some(t) => {
            cmd.args(["--tls-listening-port", &TLS_PORT.to_string()])
                .arg("--cert")
                .arg(&t.cert)
                .arg("--pkey")
                .arg(&t.key);
        }
    }
    cmd.args([
        "--listening-ip",
        &RELAY_EXT.to_string(),
        "--listening-port",
        "3478",
        "--relay-ip",
        &RELAY_EXT.to_string(),
        "--min-port",
        &PORTS.0.to_string(),
        "--max-port",
        &PORTS.1.to_string(),
        "--realm",
        REALM,
        "--lt-cred-mech",
        "--user",
        &format!("{USER}:{PASSWORD}"),
        &format!("--allowed-peer-ip={MEDIA}"),
        "--simple-log",
        "--log-file",
    ])
    .arg(work.join(format!("coturn-{tag}.turnlog")))
    .arg("--pidfile")
    .arg(work.join(format!("coturn-{tag}.pid")))
    .args(extra);
    let mut p = Proc::spawn(cmd, "coturn", log)?;
    let addr = format!("{RELAY_EXT}:3478");
    p.wait_ready(|_| listening(topo, true, &addr))?;
    // coturn binds before its relay threads are up; give them a moment.
    std::thread::sleep(Duration::from_millis(300));
    Ok(p)
}

pub fn run_load(
    topo: &Topo,
    bin: &str,
    work: &Path,
    tag: &str,
    server: Server,
    sc: &Scenario,
    pids: (Option<u32>, u32),
) -> Result<Load> {
    run_load_with(
        topo,
        bin,
        work,
        tag,
        server,
        sc,
        pids,
        &LoadExtra::default(),
    )
}

/// What a scenario changes in `relay load`'s command line.
#[derive(Debug, Clone, Default)]
pub struct LoadExtra {
    /// The server's port (default 3478).
    pub port: Option<u16>,
    /// Appended to the command line: flags the standard ones (`-n`, `--rate`,
    /// `--duration`, `--burst`...) leave out, which clap would refuse twice.
    pub args: Vec<String>,
}

#[allow(clippy::too_many_arguments)] // one call per scenario kind; a struct would only rename them
pub fn run_load_with(
    topo: &Topo,
    bin: &str,
    work: &Path,
    tag: &str,
    server: Server,
    sc: &Scenario,
    (server_pid, echo_pid): (Option<u32>, u32),
    extra: &LoadExtra,
) -> Result<Load> {
    let mut cmd = topo.client.command(bin);
    cmd.arg("load");
    let peer = format!("{MEDIA}:{ECHO_PORT}");
    if server == Server::Direct {
        cmd.args([&peer, "--direct"]);
    } else {
        cmd.args([
            &format!("{RELAY_EXT}:{}", extra.port.unwrap_or(3478)),
            "-u",
            USER,
            "-p",
            PASSWORD,
            "--peer",
            &peer,
        ]);
    }
    cmd.args([
        "-n",
        &sc.allocations.to_string(),
        "--rate",
        &sc.rate.to_string(),
        "--duration",
        &sc.duration_secs.to_string(),
        // Two packets back to back per allocation turn, as video frames come: halves the
        // generator's send syscalls, leaving the CPU to what is measured.
        "--burst",
        "2",
        "--json",
        "--quiet",
    ]);
    if let Some(pid) = server_pid {
        cmd.args(["--watch-pid", &pid.to_string()]);
    }
    cmd.args(["--count-pid", &echo_pid.to_string()]);
    cmd.args(&extra.args);
    let stderr = File::create(work.join(format!("load-{tag}.log")))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("starting relay load")?;
    // Setup of 10,000 allocations, the window, drain and teardown, with room to spare.
    let limit = Duration::from_secs_f64(sc.duration_secs) + Duration::from_secs(120);
    let deadline = Instant::now() + limit;
    let mut stdout = child.stdout.take().context("piped stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("relay load did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = reader.join().unwrap_or_default();
    // Exit 1 (some allocations failed) still has figures worth keeping.
    if text.trim().is_empty() {
        let log = std::fs::read_to_string(work.join(format!("load-{tag}.log"))).unwrap_or_default();
        bail!("relay load printed nothing ({status}):\n{}", tail(&log));
    }
    std::fs::write(work.join(format!("load-{tag}.json")), &text)?;
    serde_json::from_str(&text).context("parsing relay load's JSON")
}
