//! `relay stun`: a one-shot reachability and credentials check against a STUN/TURN server,
//! the command-line twin of a media server's TURN status page.
//!
//! Always a Binding request (reachable? round trip, mapped address, SOFTWARE); with
//! credentials also a test Allocate (relayed address, lifetime, round trip) that is deleted
//! again at once. Exit codes: see [`report::exit`].

pub mod client;
pub mod report;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;

pub use client::{Credentials, DEFAULT_PORT, ProbeOptions, Retransmit, probe};
pub use report::{Report, Status, exit};

/// Probe a STUN/TURN server: Binding, and with credentials a test allocation.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// The server, IP:PORT or IP (port 3478); IPv6 as [ADDR]:PORT or ADDR.
    #[arg(value_name = "SERVER")]
    pub server: String,
    /// Long-term credential username; with --secret, the name part of the REST username.
    #[arg(long, short = 'u', value_name = "USER")]
    pub user: Option<String>,
    /// Long-term credential password (needs --user).
    #[arg(long, short = 'p', value_name = "PASSWORD")]
    pub password: Option<String>,
    /// TURN REST shared secret: the probe mints "<now+86400>:<user or probe>" and its password.
    #[arg(long, value_name = "SECRET")]
    pub secret: Option<String>,
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

/// Runs the probe, prints the report (or the usage error on stderr), returns the exit code.
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
            exit::USAGE
        }
    }
}

/// Validates `args`, probes from a fresh ephemeral UDP socket and returns the report.
pub fn execute(args: &ProbeArgs) -> Result<Report, UsageError> {
    let server = parse_server(&args.server)?;
    let opts = options(args, unix_now())?;
    let unspecified = match server {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let sock = match UdpSocket::bind((unspecified, 0)) {
        Ok(s) => s,
        Err(e) => {
            // Cannot even open a socket (no IPv6 on this host, ...): nothing was reached.
            let detail = format!("cannot open a UDP socket: {e}");
            return Ok(Report::new_unreachable(server, detail));
        }
    };
    Ok(probe(&sock, server, &opts))
}

/// `IP:PORT`, `[IPv6]:PORT`, or a bare IP (port 3478).
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
    let credentials = match (&args.user, &args.password, &args.secret) {
        (_, Some(_), Some(_)) => {
            return Err(UsageError(
                "--password and --secret exclude each other (--secret derives the password)".into(),
            ));
        }
        (Some(user), Some(password), None) => Some(Credentials {
            username: nonempty("--user", user)?.to_owned(),
            password: nonempty("--password", password)?.to_owned(),
            rest: false,
        }),
        (None, Some(_), None) => {
            return Err(UsageError("--password needs --user".into()));
        }
        (Some(_), None, None) => {
            return Err(UsageError(
                "--user needs --password (or --secret for TURN REST credentials)".into(),
            ));
        }
        (user, None, Some(secret)) => {
            let secret = nonempty("--secret", secret)?;
            let name = user.as_deref().map(|u| nonempty("--user", u)).transpose()?;
            Some(Credentials::rest(secret.as_bytes(), name, unix_now))
        }
        (None, None, None) => None,
    };
    if let Some(r) = &args.realm {
        nonempty("--realm", r)?;
    }
    Ok(ProbeOptions {
        retransmit: Retransmit {
            rto: client::INITIAL_RTO,
            tries: args.tries,
            timeout: Duration::from_millis(args.timeout_ms),
        },
        credentials,
        expected_realm: args.realm.clone(),
        keep_allocation: false,
    })
}

fn nonempty<'a>(flag: &str, v: &'a str) -> Result<&'a str, UsageError> {
    if v.is_empty() {
        Err(UsageError(format!("{flag} must not be empty")))
    } else {
        Ok(v)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProbeArgs,
    }

    fn args(v: &[&str]) -> ProbeArgs {
        Cli::try_parse_from(std::iter::once("stun").chain(v.iter().copied()))
            .unwrap()
            .args
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
        assert_eq!(run(&args(&["not-an-ip"])), exit::USAGE);
        assert_eq!(run(&args(&["127.0.0.1", "-u", "alice"])), exit::USAGE);
    }

    #[test]
    fn debug_hides_password() {
        let c = Credentials::rest(b"s", None, 0);
        assert!(!format!("{c:?}").contains(&c.password));
    }
}
