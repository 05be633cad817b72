//! coturn's test clients (`turnutils_peer`, `turnutils_uclient`, Debian package `coturn`)
//! run inside namespaces: a peer guard killed on drop, and a client run with a hard
//! timeout whose summary lines are parsed.

use std::{
    io::Read,
    net::IpAddr,
    process::{Child, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::Netns;

pub const PEER_BIN: &str = "turnutils_peer";
pub const UCLIENT_BIN: &str = "turnutils_uclient";

/// A `turnutils_peer` (UDP echo peer) listening in a namespace; killed on drop.
pub struct PeerProcess {
    child: Child,
    pub address: IpAddr,
    pub port: u16,
}

impl PeerProcess {
    /// Starts `turnutils_peer -L address -p port` in `ns` and waits (up to 5 s) until the
    /// port is bound.
    pub fn start(ns: &Netns, address: IpAddr, port: u16) -> Result<Self, String> {
        let child = ns
            .command(PEER_BIN)
            .args(["-L", &address.to_string(), "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot spawn {PEER_BIN} (apt-get install coturn): {e}"))?;
        let mut peer = PeerProcess {
            child,
            address,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = peer.child.try_wait() {
                return Err(format!("{PEER_BIN} exited at once ({status})"));
            }
            let bound = ns
                .exec("ss", &["-Hnlu", &format!("sport = :{port}")])
                .map(|out| out.contains(&format!("{address}:{port}")))
                .unwrap_or(false);
            if bound {
                return Ok(peer);
            }
            if Instant::now() >= deadline {
                return Err(format!("{PEER_BIN} did not bind {address}:{port} in 5 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What to pass to `turnutils_uclient` (each flag checked against its `-h`).
#[derive(Clone, Debug)]
pub struct Uclient {
    /// TURN server address (the positional argument).
    pub server: IpAddr,
    /// `-p`: TURN server port.
    pub port: u16,
    /// `-u`
    pub user: Option<String>,
    /// `-w`
    pub password: Option<String>,
    /// `-W`: TURN REST "plain text" shared secret.
    pub secret: Option<String>,
    /// `-s`: Send indications instead of channels.
    pub send_indications: bool,
    /// `-y`: client-to-client (each client's peer is another client's relayed address).
    pub client_to_client: bool,
    /// `-e`: peer address.
    pub peer: Option<IpAddr>,
    /// `-r`: peer port.
    pub peer_port: Option<u16>,
    /// `-n`: messages per client.
    pub messages: u32,
    /// `-m`: number of clients.
    pub clients: u32,
    /// `-l`: message length.
    pub length: u32,
    /// `-c`: no RTCP allocations (otherwise each client also allocates an RTCP pair with
    /// EVEN-PORT / RESERVATION-TOKEN).
    pub no_rtcp: bool,
    /// `-X`: IPv4 relay address explicitly requested.
    pub ipv4_relay: bool,
    /// `-z`: per-session packet interval, ms.
    pub interval_ms: Option<u32>,
    /// `-t`: TCP to the TURN server (relaying stays UDP).
    pub tcp: bool,
    /// `-S`: TLS to the TURN server (with `-t`; DTLS without it).
    pub tls: bool,
    /// Anything else, appended before the server address.
    pub extra: Vec<String>,
}

impl Uclient {
    pub fn new(server: IpAddr) -> Self {
        Uclient {
            server,
            port: 3478,
            user: None,
            password: None,
            secret: None,
            send_indications: false,
            client_to_client: false,
            peer: None,
            peer_port: None,
            messages: 5,
            clients: 1,
            length: 100,
            no_rtcp: false,
            ipv4_relay: false,
            interval_ms: None,
            tcp: false,
            tls: false,
            extra: Vec::new(),
        }
    }

    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut opt = |flag: &str, v: String| {
            a.push(flag.to_owned());
            a.push(v);
        };
        opt("-p", self.port.to_string());
        if let Some(u) = &self.user {
            opt("-u", u.clone());
        }
        if let Some(w) = &self.password {
            opt("-w", w.clone());
        }
        if let Some(s) = &self.secret {
            opt("-W", s.clone());
        }
        if let Some(e) = self.peer {
            opt("-e", e.to_string());
        }
        if let Some(r) = self.peer_port {
            opt("-r", r.to_string());
        }
        opt("-n", self.messages.to_string());
        opt("-m", self.clients.to_string());
        opt("-l", self.length.to_string());
        if let Some(z) = self.interval_ms {
            opt("-z", z.to_string());
        }
        for (on, flag) in [
            (self.send_indications, "-s"),
            (self.client_to_client, "-y"),
            (self.no_rtcp, "-c"),
            (self.ipv4_relay, "-X"),
            (self.tcp, "-t"),
            (self.tls, "-S"),
        ] {
            if on {
                a.push(flag.to_owned());
            }
        }
        a.extend(self.extra.iter().cloned());
        a.push(self.server.to_string());
        a
    }

    /// Runs the client in `ns`, killing it after `timeout`.
    pub fn run(&self, ns: &Netns, timeout: Duration) -> Result<UclientRun, String> {
        run_uclient(ns, self.args(), timeout)
    }
}

/// Runs `turnutils_uclient args` in `ns` (killed after `timeout`) and parses its summary.
pub fn run_uclient(ns: &Netns, args: Vec<String>, timeout: Duration) -> Result<UclientRun, String> {
    {
        // uclient writes its log lines to stdout and, on some builds, a log file in the
        // working directory: run it in a private temp dir.
        let dir = std::env::temp_dir().join(format!("uclient-{}", crate::netns::unique_id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let result = run_with_timeout(ns, UCLIENT_BIN, &args, &dir, timeout);
        let _ = std::fs::remove_dir_all(&dir);
        let (output, status, timed_out) = result?;
        let summary = Summary::parse(&output);
        Ok(UclientRun {
            command: format!("{UCLIENT_BIN} {}", args.join(" ")),
            output,
            status,
            timed_out,
            summary,
        })
    }
}

/// Spawns `program args` in `ns`, collects stdout+stderr, kills it after `timeout`.
fn run_with_timeout(
    ns: &Netns,
    program: &str,
    args: &[String],
    dir: &std::path::Path,
    timeout: Duration,
) -> Result<(String, Option<ExitStatus>, bool), String> {
    let mut child = ns
        .command(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot spawn {program} (apt-get install coturn): {e}"))?;
    let collect = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = collect(child.stdout.take().map(|s| Box::new(s) as _));
    let err = collect(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + timeout;
    let (status, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(s)) => break (Some(s), false),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break (None, true);
            }
        }
    };
    let mut output = out.join().unwrap_or_default();
    output.push_str(&err.join().unwrap_or_default());
    Ok((output, status, timed_out))
}

/// One finished (or killed) `turnutils_uclient` run.
#[derive(Clone, Debug)]
pub struct UclientRun {
    pub command: String,
    pub output: String,
    /// `None` when it was killed at the timeout.
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    pub summary: Summary,
}

impl UclientRun {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// For assertion messages: the command, exit and the whole output.
    pub fn describe(&self) -> String {
        format!(
            "`{}` (status {:?}, timed out {}):\n{}",
            self.command, self.status, self.timed_out, self.output
        )
    }
}

/// The summary lines uclient prints at the end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// `Total lost packets N (x%)`
    pub lost_packets: Option<u64>,
    pub lost_percent: Option<f64>,
    /// `tot_send_msgs=N` (`tot_send_messages=` on older builds)
    pub send_msgs: Option<u64>,
    /// `tot_recv_msgs=N`
    pub recv_msgs: Option<u64>,
    /// Lines mentioning an error (case-insensitive "error", "cannot", "failed", "wrong").
    pub errors: Vec<String>,
}

impl Summary {
    pub fn parse(output: &str) -> Summary {
        let mut s = Summary::default();
        for line in output.lines() {
            if let Some(rest) = after(line, "Total lost packets ") {
                s.lost_packets = leading_number(rest).and_then(|n| n.parse().ok());
                s.lost_percent = rest
                    .split_once('(')
                    .and_then(|(_, p)| p.split_once('%'))
                    .and_then(|(p, _)| p.trim().parse().ok());
            }
            for key in ["tot_send_msgs=", "tot_send_messages="] {
                if let Some(rest) = after(line, key) {
                    s.send_msgs = leading_number(rest).and_then(|n| n.parse().ok());
                }
            }
            for key in ["tot_recv_msgs=", "tot_recv_messages="] {
                if let Some(rest) = after(line, key) {
                    s.recv_msgs = leading_number(rest).and_then(|n| n.parse().ok());
                }
            }
            let lower = line.to_ascii_lowercase();
            if ["error", "cannot", "failed", "wrong"]
                .iter()
                .any(|w| lower.contains(w))
            {
                s.errors.push(line.trim().to_owned());
            }
        }
        s
    }
}

fn after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.find(key).map(|i| &line[i + key.len()..])
}

fn leading_number(s: &str) -> Option<&str> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_summary() {
        let out = "0: start_mclient: tot_send_msgs=20, tot_recv_msgs=19\n\
                   0: start_mclient: tot_send_bytes ~ 2000, tot_recv_bytes ~ 1900\n\
                   0: Total transmit time is 2\n\
                   0: Total lost packets 1 (5.000000%), total send dropped 0 (0.000000%)\n\
                   0: error 401 (Unauthorized)\n";
        let s = Summary::parse(out);
        assert_eq!(s.send_msgs, Some(20));
        assert_eq!(s.recv_msgs, Some(19));
        assert_eq!(s.lost_packets, Some(1));
        assert_eq!(s.lost_percent, Some(5.0));
        assert_eq!(s.errors, vec!["0: error 401 (Unauthorized)"]);
    }
}
