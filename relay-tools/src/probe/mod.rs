//! `relay stun`: a one-shot reachability and credentials check against a STUN/TURN server,
//! the command-line twin of a media server's TURN status page.
//!
//! Always a Binding request (reachable? round trip, mapped address, SOFTWARE); with
//! credentials also a test Allocate (relayed address, lifetime, round trip) that is deleted
//! again at once. Over UDP, TCP or TLS (`--transport`, or a `turn:`/`turns:` URI); the
//! exchanges are the same, only the [`transport::Conn`] differs. Exit codes: see
//! [`report::exit`].

pub mod client;
pub mod flags;
pub mod report;
pub mod transport;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use rustls::pki_types::ServerName;

pub use client::{Credentials, ProbeOptions, Retransmit, probe, probe_conn};
use flags::nonempty;
pub use flags::{CredentialArgs, TlsArgs};
pub use report::{Report, Status, exit};
pub use transport::{DEFAULT_PORT, DEFAULT_TLS_PORT, Host, Target, Transport, Trust, parse_target};

/// Probe a STUN/TURN server: Binding, and with credentials a test allocation.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// The server: HOST[:PORT] (port 3478, TLS 5349; IPv6 as [ADDR]:PORT), or a URI such as
    /// turn:HOST:PORT?transport=tcp or turns:HOST:443.
    #[arg(value_name = "SERVER")]
    pub server: String,
    /// udp, tcp or tls (TURN over TLS, turns:); default: the URI's, else udp.
    #[arg(long, short = 't', value_name = "TRANSPORT")]
    pub transport: Option<Transport>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub credentials: CredentialArgs,
    /// Realm the server is expected to announce (a different one is reported as a warning).
    #[arg(long, value_name = "REALM")]
    pub realm: Option<String>,
    /// Longest wait for one request's answer, retransmissions included.
    #[arg(long = "timeout-ms", value_name = "MS", default_value_t = 3000)]
    pub timeout_ms: u64,
    /// Most transmissions of one request (RTO 500 ms, doubling).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub tries: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A command line that cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Why no probe ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// SERVER's host name has no address: nothing can be reached (exit 2).
    #[error("cannot resolve {name:?}: {detail} (check the name and this host's DNS)")]
    Resolve { name: String, detail: String },
}

impl ProbeError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ProbeError::Usage(_) => exit::USAGE,
            ProbeError::Resolve { .. } => exit::NO_ANSWER,
        }
    }
}

/// Runs the probe, prints the report (or the error on stderr), returns the exit code.
pub fn run(args: &ProbeArgs) -> i32 {
    match execute(args) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{report}");
            }
            report.exit_code
        }
        Err(e) => {
            eprintln!("relay stun: {e}");
            e.exit_code()
        }
    }
}

/// What `args` ask for, checked: where, over what, trusting what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub target: Target,
    pub transport: Transport,
    pub port: u16,
    /// TLS only: how the certificate is checked, and the name it must carry.
    pub trust: Option<(Trust, String)>,
}

/// Reconciles SERVER, `--transport` and the TLS flags.
pub fn plan(args: &ProbeArgs) -> Result<Plan, UsageError> {
    let target = parse_target(&args.server)?;
    let transport = match (target.transport, args.transport) {
        (Some(uri), Some(flag)) if uri != flag => {
            return Err(UsageError(format!(
                "SERVER {:?} means {uri}, but --transport {flag} was given",
                args.server
            )));
        }
        (uri, flag) => flag.or(uri).unwrap_or_default(),
    };
    let port = target.port.unwrap_or(transport.default_port());
    let trust = if transport == Transport::Tls {
        let trust = args.tls.trust();
        let name = match (&args.tls.sni, &target.host) {
            (Some(n), _) => nonempty("--sni", n)?.to_owned(),
            (None, Host::Name(n)) => n.clone(),
            (None, Host::Ip(ip)) => ip.to_string(),
        };
        Some((trust, name))
    } else {
        args.tls.refused_on(transport)?;
        None
    };
    Ok(Plan {
        target,
        transport,
        port,
        trust,
    })
}

/// Validates `args`, connects (a fresh ephemeral UDP socket, or a TCP/TLS connection),
/// probes and returns the report.
pub fn execute(args: &ProbeArgs) -> Result<Report, ProbeError> {
    let plan = plan(args)?;
    let opts = options(args, unix_now())?;
    let tls = match &plan.trust {
        Some((trust, name)) => {
            let name = ServerName::try_from(name.clone())
                .map_err(|e| UsageError(format!("TLS server name {name:?}: {e}")))?;
            Some((transport::tls_config(trust)?, name))
        }
        None => None,
    };
    let (server, server_name) = match &plan.target.host {
        Host::Ip(ip) => (SocketAddr::new(*ip, plan.port), None),
        Host::Name(name) => (resolve(name, plan.port)?, Some(name.clone())),
    };
    let mut report = Report::new(server);
    report.server_name = server_name;
    report.transport = plan.transport;

    if plan.transport == Transport::Udp {
        let unspecified = match server {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        return Ok(match UdpSocket::bind((unspecified, 0)) {
            Ok(sock) => {
                let mut r = probe(&sock, server, &opts);
                r.server_name = report.server_name;
                r
            }
            // Cannot even open a socket (no IPv6 on this host, ...): nothing was reached.
            Err(e) => report.unreachable(format!("cannot open a UDP socket: {e}")),
        });
    }
    match transport::connect_stream(server, tls, opts.retransmit.timeout) {
        Ok(c) => {
            report.local_address = Some(c.local);
            report.connect_ms = Some(report::ms(c.connect));
            report.tls_handshake_ms = c.handshake.map(report::ms);
            let mut conn = c.conn;
            Ok(probe_conn(conn.as_mut(), report, &opts))
        }
        Err(failed) => {
            report.connect_ms = failed.connect.map(report::ms);
            let mut r = report.unreachable(failed.detail);
            if let Some(a) = &opts.credentials {
                r.allocation = Some(report::AllocationReport::skipped(
                    &a.username,
                    a.rest,
                    "not attempted: no connection",
                ));
                r.finish();
            }
            Ok(r)
        }
    }
}

/// The first address of `name` (the system resolver: /etc/hosts, DNS).
fn resolve(name: &str, port: u16) -> Result<SocketAddr, ProbeError> {
    let fail = |detail: String| ProbeError::Resolve {
        name: name.to_owned(),
        detail,
    };
    (name, port)
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .next()
        .ok_or_else(|| fail("no address".into()))
}

/// `IP:PORT`, `[IPv6]:PORT`, or a bare IP (port 3478): a numeric UDP server address (for
/// `relay load`, which does not resolve names).
pub fn parse_server(s: &str) -> Result<SocketAddr, UsageError> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(UsageError(format!("SERVER {s:?}: port 0")));
        }
        return Ok(a);
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        .map_err(|_| {
            UsageError(format!(
                "SERVER {s:?} is not IP:PORT or IP (a numeric address; resolve names first)"
            ))
        })
}

/// Credentials and timing from the flags; `unix_now` dates REST usernames.
pub fn options(args: &ProbeArgs, unix_now: u64) -> Result<ProbeOptions, UsageError> {
    if args.tries == 0 {
        return Err(UsageError("--tries must be at least 1".into()));
    }
    if args.timeout_ms == 0 {
        return Err(UsageError("--timeout-ms must be at least 1".into()));
    }
    let credentials = args
        .credentials
        .resolve(client::REST_DEFAULT_NAME, unix_now)?;
    if let Some(r) = &args.realm {
        nonempty("--realm", r)?;
    }
    Ok(ProbeOptions {
        retransmit: Retransmit {
            tries: args.tries,
            timeout: Duration::from_millis(args.timeout_ms),
            ..client::RETRANSMIT
        },
        credentials,
        expected_realm: args.realm.clone(),
        keep_allocation: false,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> ProbeArgs {
        crate::test_cli::parse("stun", v).unwrap()
    }

    #[test]
    fn server_forms() {
        assert_eq!(
            parse_server("192.0.2.1").unwrap(),
            "192.0.2.1:3478".parse().unwrap()
        );
        assert_eq!(
            parse_server("192.0.2.1:5349").unwrap(),
            "192.0.2.1:5349".parse().unwrap()
        );
        assert_eq!(parse_server("::1").unwrap(), "[::1]:3478".parse().unwrap());
        assert_eq!(
            parse_server("[::1]").unwrap(),
            "[::1]:3478".parse().unwrap()
        );
        assert_eq!(
            parse_server("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        for bad in ["turn.example.org", "1.2.3.4:x", "1.2.3.4:0", ""] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uri_and_transport_forms() {
        let p = |v: &[&str]| plan(&args(v));
        let got = p(&["turn:192.0.2.1:443?transport=tcp"]).unwrap();
        assert_eq!((got.transport, got.port), (Transport::Tcp, 443));
        let got = p(&["turns:turn.example.org"]).unwrap();
        assert_eq!(
            (got.transport, got.port),
            (Transport::Tls, DEFAULT_TLS_PORT)
        );
        assert_eq!(got.target.host, Host::Name("turn.example.org".into()));
        assert_eq!(
            got.trust,
            Some((Trust::System, "turn.example.org".to_owned()))
        );
        let got = p(&["turns:[2001:db8::1]:443?transport=tcp", "--insecure"]).unwrap();
        assert_eq!((got.transport, got.port), (Transport::Tls, 443));
        assert_eq!(got.trust, Some((Trust::Insecure, "2001:db8::1".to_owned())));
        let got = p(&[
            "192.0.2.1",
            "-t",
            "tls",
            "--ca",
            "ca.pem",
            "--sni",
            "r.example",
        ])
        .unwrap();
        assert_eq!(got.port, DEFAULT_TLS_PORT);
        assert_eq!(
            got.trust,
            Some((Trust::CaFile("ca.pem".into()), "r.example".to_owned()))
        );
        let got = p(&["stun:192.0.2.1"]).unwrap();
        assert_eq!((got.transport, got.port), (Transport::Udp, DEFAULT_PORT));
        let got = p(&["192.0.2.1:80", "--transport", "tcp"]).unwrap();
        assert_eq!(
            (got.transport, got.port, got.trust),
            (Transport::Tcp, 80, None)
        );
        for bad in [
            &["turns:192.0.2.1", "-t", "udp"][..],
            &["turn:192.0.2.1?transport=tcp", "-t", "udp"],
            &["turns:192.0.2.1?transport=udp"],
            &["turn:192.0.2.1?transport=sctp"],
            &["192.0.2.1?transport=tcp"],
            &["192.0.2.1", "--insecure"],
            &["192.0.2.1", "-t", "tcp", "--ca", "x.pem"],
            &["bad_name!"],
            &["turn:192.0.2.1:0"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        // --ca and --insecure exclude each other at parse time.
        let both = ["turns:h", "--ca", "a", "--insecure"];
        assert!(crate::test_cli::parse::<ProbeArgs>("stun", &both).is_err());
    }

    #[test]
    fn tls_trust_errors_are_usage_errors() {
        let e = transport::tls_config(&Trust::CaFile("/nonexistent/ca.pem".into())).unwrap_err();
        assert!(e.0.contains("/nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("relay-probe-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = transport::tls_config(&Trust::CaFile(empty)).unwrap_err();
        assert!(e.0.contains("no CERTIFICATE"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(transport::tls_config(&Trust::Insecure).is_ok());
    }

    #[test]
    fn credentials_from_flags() {
        let o = options(&args(&["1.2.3.4"]), 0).unwrap();
        assert!(o.credentials.is_none());
        assert_eq!(o.retransmit.tries, 4);
        assert_eq!(o.retransmit.timeout, Duration::from_millis(3000));

        let o = options(&args(&["1.2.3.4", "-u", "alice", "-p", "pw"]), 0).unwrap();
        let c = o.credentials.unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("alice", "pw"));
        assert!(!c.rest);

        let o = options(&args(&["1.2.3.4", "--secret", "north"]), 1_000).unwrap();
        let c = o.credentials.unwrap();
        assert_eq!(c.username, "87400:probe");
        assert_eq!(
            c.password,
            relay_proto::auth::rest::password(b"north", "87400:probe").as_str()
        );
        assert!(c.rest);
        let o = options(&args(&["1.2.3.4", "--secret", "s", "--user", "bob"]), 0).unwrap();
        assert_eq!(o.credentials.unwrap().username, "86400:bob");

        for bad in [
            &["1.2.3.4", "-u", "alice"][..],
            &["1.2.3.4", "-p", "pw"],
            &["1.2.3.4", "-u", "a", "-p", "pw", "--secret", "s"],
            &["1.2.3.4", "-u", "a", "-p", ""],
            &["1.2.3.4", "--tries", "0"],
            &["1.2.3.4", "--timeout-ms", "0"],
        ] {
            assert!(options(&args(bad), 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn usage_errors_exit_64() {
        assert_eq!(run(&args(&["not_a_host!"])), exit::USAGE);
        assert_eq!(run(&args(&["127.0.0.1", "--insecure"])), exit::USAGE);
        assert_eq!(run(&args(&["127.0.0.1", "-u", "alice"])), exit::USAGE);
    }

    #[test]
    fn debug_hides_password() {
        let c = Credentials::rest(b"s", "probe", 0, 60);
        assert!(!format!("{c:?}").contains(&c.password));
    }
}
