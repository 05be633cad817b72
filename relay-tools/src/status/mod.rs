//! `relay status`: the "TURN relay usage" view of a running relay, read from its admin
//! endpoint and printed as a table (or JSON); over several endpoints (`--admin` repeated,
//! or `--config` with `[cluster] nodes`) one line per node instead ([`fleet`]). Exit 0
//! shown, 1 the endpoint refused (401: token), 2 unreachable, 64 usage.

mod fleet;

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use clap::Args;

use relay_admin_api::{
    AllocationsView, StatusView,
    table::{self, duration},
};

pub use fleet::{FleetNode, FleetTotal, FleetView};
pub use relay_admin_api::client::{AdminClient, StatusError};

/// Environment variable read for the token when `--token` is not given.
pub const TOKEN_ENV: &str = "RELAY_ADMIN_TOKEN";

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Admin endpoint, `http://IP:PORT`, `https://IP:PORT` or `IP:PORT` (default:
    /// `[admin] address` of --config, else 127.0.0.1:9641). Repeat it for a fleet: one
    /// line per node and the totals.
    #[arg(long, value_name = "URL")]
    pub admin: Vec<String>,
    /// Take the admin address and token from this config file; with `[cluster] nodes`
    /// there, show the fleet (this node and those).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Bearer token (default: $RELAY_ADMIN_TOKEN, else `[admin] token` of --config).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// PEM file of the CA that signed the admin endpoints' certificates, for `https://`
    /// (default: `[cluster] ca` of --config).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Print the usage view as JSON (the document of /api/allocations; over a fleet the
    /// per-node lines and totals).
    #[arg(long)]
    pub json: bool,
    #[arg(long = "timeout-ms", value_name = "MS", default_value_t = 5000)]
    pub timeout_ms: u64,
    /// End allocation ID (the `id` of `--json`, or the console's) instead of showing the
    /// table: its kernel entries and relay port go, a TCP/TLS client's connection closes.
    #[arg(long, value_name = "ID")]
    pub disconnect: Option<String>,
    /// Over a fleet: packets per second are the counters' increase over this long.
    #[arg(long = "interval-ms", value_name = "MS", default_value_t = 1000)]
    pub interval_ms: u64,
}

/// What `relay status` takes from the relay's config file: the `[admin]` section.
#[derive(Clone, Debug)]
pub struct AdminSection {
    pub address: SocketAddr,
    pub token: Option<String>,
    /// `[admin] tls`: the endpoint is `https://`.
    pub tls: bool,
    /// `[cluster] nodes`' admin endpoints.
    pub cluster: Vec<String>,
    /// `[cluster] ca`.
    pub ca: Option<PathBuf>,
}

/// Reads `[admin]` from a config file; the error is the message to print. The daemon
/// supplies it (its config loader validates the whole file), so the tools need not
/// know the config format.
pub type ReadConfig<'a> = &'a dyn Fn(&Path) -> Result<AdminSection, String>;

/// What the flags describe: the endpoints to ask (one, or a fleet) and how.
pub struct Targets {
    pub clients: Vec<(String, AdminClient)>,
    /// More than one node asked for (`--admin` repeated, or `[cluster] nodes`).
    pub fleet: bool,
}

/// The clients the flags describe: --admin, --token and --ca win over --config.
pub fn targets(args: &StatusArgs, read_config: ReadConfig<'_>) -> Result<Targets, StatusError> {
    let config = args
        .config
        .as_deref()
        .map(read_config)
        .transpose()
        .map_err(StatusError::Config)?;
    let urls: Vec<String> = match (&args.admin[..], &config) {
        ([], Some(c)) => {
            let scheme = if c.tls { "https" } else { "http" };
            let own = format!("{scheme}://{}", loopback_if_wildcard(c.address));
            std::iter::once(own)
                .chain(c.cluster.iter().cloned())
                .collect()
        }
        ([], None) => vec![format!("http://{}", relay_admin_api::DEFAULT_ADDRESS)],
        (urls, _) => urls.to_vec(),
    };
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()))
        .or_else(|| config.as_ref().and_then(|c| c.token.clone()));
    let ca = args
        .ca
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.ca.clone()));
    let mut tls: Option<Arc<rustls::ClientConfig>> = None;
    let mut clients = Vec::with_capacity(urls.len());
    for url in &urls {
        let (address, https) = AdminClient::parse_url(url)?;
        let mut c = AdminClient::new(loopback_if_wildcard(address), token.clone());
        c.timeout = Duration::from_millis(args.timeout_ms.max(1));
        if https {
            if tls.is_none() {
                let Some(ca) = &ca else {
                    return Err(StatusError::Config(format!(
                        "{url} is https: pass --ca FILE (the CA that signed its [tls] certificate)"
                    )));
                };
                let config = relay_admin_api::client::tls_config_from_ca(ca)
                    .map_err(|e| StatusError::Config(format!("--ca {}: {e}", ca.display())))?;
                tls = Some(config);
            }
            c.tls = tls.clone();
        }
        clients.push((url.clone(), c));
    }
    Ok(Targets {
        fleet: clients.len() > 1,
        clients,
    })
}

/// Listening on every address: the loopback one is among them.
fn loopback_if_wildcard(address: SocketAddr) -> SocketAddr {
    if !address.ip().is_unspecified() {
        return address;
    }
    let lo = match address {
        SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    SocketAddr::new(lo, address.port())
}

/// The client of a single-node run (the first endpoint the flags name).
pub fn client(args: &StatusArgs, read_config: ReadConfig<'_>) -> Result<AdminClient, StatusError> {
    let t = targets(args, read_config)?;
    t.clients
        .into_iter()
        .next()
        .map(|(_, c)| c)
        .ok_or_else(|| StatusError::Config("no admin endpoint to ask".into()))
}

/// `relay status`; returns the exit code.
pub fn run(args: &StatusArgs, read_config: ReadConfig<'_>) -> i32 {
    match show(args, read_config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("relay status: {e}");
            e.exit_code()
        }
    }
}

fn show(args: &StatusArgs, read_config: ReadConfig<'_>) -> Result<i32, StatusError> {
    let targets = targets(args, read_config)?;
    if targets.fleet && args.disconnect.is_some() {
        // An allocation id is one relay's: never guess which node of a fleet to ask.
        return Err(StatusError::Config(
            "--disconnect ends an allocation on one relay: give one --admin".into(),
        ));
    }
    if targets.fleet {
        return Ok(fleet::show(args, &targets.clients));
    }
    let Some((_, client)) = targets.clients.first() else {
        return Err(StatusError::Config("no admin endpoint to ask".into()));
    };
    if let Some(id) = &args.disconnect {
        let d = client.disconnect(id)?;
        print_out(&format!(
            "disconnected allocation {} of {} ({} {})\n",
            d.id, d.user, d.transport, d.client
        ));
        return Ok(0);
    }
    let view = client.allocations()?;
    if args.json {
        let text = serde_json::to_string_pretty(&view).map_err(|e| StatusError::Protocol {
            path: "/api/allocations".into(),
            reason: e.to_string(),
        })?;
        print_out(&format!("{text}\n"));
        return Ok(0);
    }
    let status = client.status()?;
    print_out(&render(&status, &view));
    Ok(0)
}

/// Writes to stdout; a closed pipe (`relay status | head`) is not an error.
pub(crate) fn print_out(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// The header and the table, as printed.
pub fn render(status: &StatusView, view: &AllocationsView) -> String {
    let mut out = String::new();
    let xdp = table::xdp(&status.xdp);
    // After a handover: which generation serves, and when it took over.
    let generation = match status.took_over_unix {
        Some(at) => format!(
            "  generation {} (took over {} ago)",
            status.generation,
            duration(
                status
                    .uptime_s
                    .saturating_sub(at.saturating_sub(status.started_unix))
            )
        ),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "relay {} up {}{generation}{}  allocations {}/{}  xdp: {}",
        status.version,
        duration(status.uptime_s),
        if view.draining { "  DRAINING" } else { "" },
        view.count,
        status.limits.max_allocations,
        xdp
    );
    if !view.shards_missing.is_empty() {
        let _ = writeln!(
            out,
            "warning: no answer from {}: their allocations are not listed",
            view.shards_missing.join(", ")
        );
    }
    if view.allocations.is_empty() {
        out.push_str("no allocations\n");
        return out;
    }
    let header = table::COLUMNS;
    let rows: Vec<[String; 12]> = view.allocations.iter().map(table::row).collect();
    table(&mut out, header, &rows);
    out
}

/// Left-aligned columns two spaces apart, as wide as their widest cell; the last column
/// unpadded.
pub(crate) fn table<const N: usize>(out: &mut String, header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for r in rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells);
    }
}
