//! `relay status`: the "TURN relay usage" view of a running relay, read from its admin
//! endpoint and printed as a table (or JSON). Exit 0 shown, 1 the endpoint refused
//! (401: token), 2 unreachable, 64 usage.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, body::Bytes, header};
use hyper_util::rt::TokioIo;

use relay_admin_api::{
    AllocationsView, DisconnectedView, StatusView,
    table::{self, duration},
};

/// Environment variable read for the token when `--token` is not given.
pub const TOKEN_ENV: &str = "RELAY_ADMIN_TOKEN";

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Admin endpoint, `http://IP:PORT` or `IP:PORT` (default: `[admin] address` of
    /// --config, else 127.0.0.1:9641).
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// Take the admin address and token from this config file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Bearer token (default: $RELAY_ADMIN_TOKEN, else `[admin] token` of --config).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Print the usage view as JSON (the document of /api/allocations).
    #[arg(long)]
    pub json: bool,
    #[arg(long = "timeout-ms", value_name = "MS", default_value_t = 5000)]
    pub timeout_ms: u64,
    /// End allocation ID (the `id` of `--json`, or the console's) instead of showing the
    /// table: its kernel entries and relay port go, a TCP/TLS client's connection closes.
    #[arg(long, value_name = "ID")]
    pub disconnect: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("`{0}` is not an admin address (expected http://IP:PORT or IP:PORT)")]
    BadUrl(String),
    /// The --config file could not be read; the message names the key at fault.
    #[error("{0}")]
    Config(String),
    #[error(
        "cannot reach the admin endpoint at {address}: {reason} (is the relay running? check [admin] address)"
    )]
    Unreachable { address: SocketAddr, reason: String },
    #[error("no answer from {address} within {timeout:?}")]
    Timeout {
        address: SocketAddr,
        timeout: Duration,
    },
    #[error("{path}: HTTP {code}: {body}{hint}")]
    Http {
        path: String,
        code: u16,
        body: String,
        hint: &'static str,
    },
    #[error("{path}: unexpected answer: {reason}")]
    Protocol { path: String, reason: String },
    #[error("`{0}` is not an allocation id (the hexadecimal `id` of `relay status --json`)")]
    BadId(String),
}

impl StatusError {
    /// 1 the endpoint answered with an error, 2 no answer, 64 usage.
    pub fn exit_code(&self) -> i32 {
        match self {
            StatusError::BadUrl(_) | StatusError::Config(_) | StatusError::BadId(_) => 64,
            StatusError::Unreachable { .. } | StatusError::Timeout { .. } => 2,
            StatusError::Http { .. } | StatusError::Protocol { .. } => 1,
        }
    }
}

/// Where and how to reach one relay's admin endpoint.
#[derive(Clone, Debug)]
pub struct AdminClient {
    pub address: SocketAddr,
    pub token: Option<String>,
    pub timeout: Duration,
}

impl AdminClient {
    pub fn new(address: SocketAddr, token: Option<String>) -> Self {
        Self {
            address,
            token,
            timeout: Duration::from_secs(5),
        }
    }

    /// `http://IP:PORT`, `http://IP:PORT/` or `IP:PORT`.
    pub fn parse_address(url: &str) -> Result<SocketAddr, StatusError> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        rest.parse()
            .map_err(|_| StatusError::BadUrl(url.to_owned()))
    }

    /// GET `path`; returns the status code and the body.
    pub fn get(&self, path: &str) -> Result<(u16, String), StatusError> {
        self.send(hyper::Method::GET, path)
    }

    /// `method` on `path`; returns the status code and the body.
    pub fn send(&self, method: hyper::Method, path: &str) -> Result<(u16, String), StatusError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StatusError::Unreachable {
                address: self.address,
                reason: format!("no async runtime: {e}"),
            })?;
        rt.block_on(async {
            tokio::time::timeout(self.timeout, self.send_async(method, path))
                .await
                .map_err(|_| StatusError::Timeout {
                    address: self.address,
                    timeout: self.timeout,
                })?
        })
    }

    async fn send_async(
        &self,
        method: hyper::Method,
        path: &str,
    ) -> Result<(u16, String), StatusError> {
        let unreachable = |reason: String| StatusError::Unreachable {
            address: self.address,
            reason,
        };
        let protocol = |reason: String| StatusError::Protocol {
            path: path.to_owned(),
            reason,
        };
        let stream = tokio::net::TcpStream::connect(self.address)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.address.to_string());
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| protocol(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| protocol(e.to_string()))?;
        let code = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| protocol(e.to_string()))?
            .to_bytes();
        conn.abort();
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }

    /// GET `path` expecting 200 and a JSON document.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, StatusError> {
        self.json(hyper::Method::GET, path)
    }

    /// `method` on `path` expecting 200 and a JSON document.
    fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
    ) -> Result<T, StatusError> {
        let (code, body) = self.send(method, path)?;
        if code != 200 {
            let hint = match code {
                401 => " (pass the [admin] token with --token or $RELAY_ADMIN_TOKEN)",
                _ => "",
            };
            return Err(StatusError::Http {
                path: path.to_owned(),
                code,
                body: body.trim().to_owned(),
                hint,
            });
        }
        serde_json::from_str(&body).map_err(|e| StatusError::Protocol {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    pub fn allocations(&self) -> Result<AllocationsView, StatusError> {
        self.get_json("/api/allocations")
    }

    pub fn status(&self) -> Result<StatusView, StatusError> {
        self.get_json("/api/status")
    }

    /// Ends allocation `id` (`DELETE /api/allocations/{id}`).
    pub fn disconnect(&self, id: &str) -> Result<DisconnectedView, StatusError> {
        // Ids are hex; anything else is refused by the relay, never sent as a path.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StatusError::BadId(id.to_owned()));
        }
        self.json(hyper::Method::DELETE, &format!("/api/allocations/{id}"))
    }
}

/// What `relay status` takes from the relay's config file: the `[admin]` section.
#[derive(Clone, Debug)]
pub struct AdminSection {
    pub address: SocketAddr,
    pub token: Option<String>,
}

/// Reads `[admin]` from a config file; the error is the message to print. The daemon
/// supplies it (its config loader validates the whole file), so the tools need not
/// know the config format.
pub type ReadConfig<'a> = &'a dyn Fn(&Path) -> Result<AdminSection, String>;

/// The client the flags describe: --admin and --token win over --config.
pub fn client(args: &StatusArgs, read_config: ReadConfig<'_>) -> Result<AdminClient, StatusError> {
    let config = args
        .config
        .as_deref()
        .map(read_config)
        .transpose()
        .map_err(StatusError::Config)?;
    let address = match (&args.admin, &config) {
        (Some(url), _) => AdminClient::parse_address(url)?,
        (None, Some(c)) => c.address,
        (None, None) => relay_admin_api::DEFAULT_ADDRESS,
    };
    let address = if address.ip().is_unspecified() {
        // Listening on every address: the loopback one is among them.
        let lo = match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        SocketAddr::new(lo, address.port())
    } else {
        address
    };
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()))
        .or_else(|| config.and_then(|c| c.token));
    let mut c = AdminClient::new(address, token);
    c.timeout = Duration::from_millis(args.timeout_ms.max(1));
    Ok(c)
}

/// `relay status`; returns the exit code.
pub fn run(args: &StatusArgs, read_config: ReadConfig<'_>) -> i32 {
    match show(args, read_config) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("relay status: {e}");
            e.exit_code()
        }
    }
}

fn show(args: &StatusArgs, read_config: ReadConfig<'_>) -> Result<(), StatusError> {
    let client = client(args, read_config)?;
    if let Some(id) = &args.disconnect {
        let d = client.disconnect(id)?;
        print_out(&format!(
            "disconnected allocation {} of {} ({} {})\n",
            d.id, d.user, d.transport, d.client
        ));
        return Ok(());
    }
    let view = client.allocations()?;
    if args.json {
        let text = serde_json::to_string_pretty(&view).map_err(|e| StatusError::Protocol {
            path: "/api/allocations".into(),
            reason: e.to_string(),
        })?;
        print_out(&format!("{text}\n"));
        return Ok(());
    }
    let status = client.status()?;
    print_out(&render(&status, &view));
    Ok(())
}

/// Writes to stdout; a closed pipe (`relay status | head`) is not an error.
fn print_out(text: &str) {
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
    let mut widths = header.map(str::len);
    for r in &rows {
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
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_or_without_scheme() {
        let a: SocketAddr = "127.0.0.1:9641".parse().unwrap();
        assert_eq!(
            AdminClient::parse_address("http://127.0.0.1:9641").unwrap(),
            a
        );
        assert_eq!(
            AdminClient::parse_address("http://127.0.0.1:9641/").unwrap(),
            a
        );
        assert_eq!(AdminClient::parse_address("127.0.0.1:9641").unwrap(), a);
        assert!(AdminClient::parse_address("https://127.0.0.1:9641").is_err());
        assert!(AdminClient::parse_address("localhost").is_err());
    }

    #[test]
    fn unreachable_endpoint_is_exit_2() {
        // A port nothing listens on: bind one, learn it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = AdminClient::new(port, None).allocations().unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
    }
}
