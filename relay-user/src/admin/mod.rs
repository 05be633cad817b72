//! The admin HTTP endpoint, on its own address (loopback by default, never a TURN port):
//!
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text);
//! - `GET /api/allocations`: the "TURN relay usage" view as JSON;
//! - `GET /api/status`: listeners, XDP mode per interface, limits, version, as JSON;
//! - `GET /api/history`: the last ten minutes, one sample a second, as JSON;
//! - `DELETE /api/allocations/{id}`: ends one allocation;
//! - `GET /`: the operator's console (a live page);
//! - `GET /healthz`: `200 ok`, or `503 draining` once SIGTERM arrived.
//!
//! With `[admin] token`, every path but `/healthz` wants `Authorization: Bearer TOKEN` or
//! the console's session cookie ([`session`]).
//! With `[admin] tls`, it is served over TLS with the `[tls]` certificate ([`tls`]).
//! Handlers query the shards through [`Control`] on the blocking pool, so a slow shard
//! never stalls the runtime the signal handling runs on.
//!
//! Off loopback the endpoint faces anyone who can reach it, token or not: a request head
//! must arrive within `[admin] header_timeout` (from connecting, and between keep-alive
//! requests), heads are capped at [`MAX_HEAD`], and at most `[admin] max_connections` are
//! served at once; beyond that a new connection is closed at once (logged once per 10 s
//! with a count), so slow or idle clients cannot pile up.

pub mod console;
pub mod disconnect;
pub mod history;
pub mod prom;
pub mod session;
mod tls;
pub mod view;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Extension, Json, Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get},
};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, oneshot},
    task::JoinHandle,
};

use self::history::History;
use crate::{config::AdminSettings, control::Control, log_window::LogWindow};

/// Largest request head (request line and headers) read: ours are a few hundred bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// How long a shutdown waits for requests in flight (a client that stopped reading its
/// response would hold it forever).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "[admin] address {address}: cannot listen: {source} (another relay or service on that port? pick another with [admin] address)"
    )]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::AdminTlsError),
}

/// The running endpoint; [`shutdown`](Self::shutdown) stops it.
pub struct Admin {
    pub local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    sampler: JoinHandle<()>,
}

/// Binds `[admin] address` and serves it on the current runtime. A busy *default* address
/// only disables the endpoint, with a warning (two relays on one host); a configured one
/// that cannot be bound is an error.
pub async fn start(control: Arc<Control>) -> Result<Option<Admin>, AdminError> {
    let settings = control.config().admin.clone();
    let tls = tls::setup(&control)?;
    let listener = match TcpListener::bind(settings.address).await {
        Ok(l) => l,
        Err(source) if !settings.explicit => {
            tracing::warn!(address = %settings.address, error = %source,
                "admin API disabled: its default address is busy (set [admin] address to choose another)");
            return Ok(None);
        }
        Err(source) => {
            return Err(AdminError::Bind {
                address: settings.address,
                source,
            });
        }
    };
    let local_addr = listener.local_addr().unwrap_or(settings.address);
    let (stop, stopped) = oneshot::channel::<()>();
    let history = Arc::new(History::default());
    let sampler = history::spawn_sampler(control.clone(), history.clone());
    let app = router(control, history);
    let task = tokio::spawn(serve(listener, app, settings.clone(), stopped, tls));
    tracing::info!(address = %local_addr, token = settings.token.is_some(), tls = settings.tls,
        "admin API listening: / (console), /metrics, /api/allocations, /api/status, /api/history, /healthz");
    Ok(Some(Admin {
        local_addr,
        stop,
        task,
        sampler,
    }))
}

/// Accepts until `stopped`, each connection on a task of its own with a permit of
/// `max_connections`; then waits (a bounded time) for requests in flight.
async fn serve(
    listener: TcpListener,
    app: Router,
    settings: AdminSettings,
    mut stopped: oneshot::Receiver<()>,
    tls: Option<tls::AdminTls>,
) {
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    let mut refused = LogWindow::default();
    loop {
        let (stream, from) = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, typically: give the process a moment.
                    tracing::warn!(error = %e, "admin API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let now = Instant::now();
        if let Some(more) = refused.expire(now) {
            tracing::warn!(
                more,
                max_connections = settings.max_connections,
                "admin API: {more} more connections refused in the last 10 s (at max_connections)"
            );
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            if refused.admit(now) {
                tracing::warn!(%from, max_connections = settings.max_connections,
                    "admin API: connection refused, {} already open ([admin] max_connections); \
                     slow or idle clients are closed after [admin] header_timeout", settings.max_connections);
            }
            continue;
        };
        tls::spawn_connection(
            stream,
            from,
            &app,
            &settings,
            graceful.watcher(),
            permit,
            tls.as_ref().map(|t| &t.acceptor),
        );
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin API: requests still in flight after 5 s of shutdown were cut");
    }
}

impl Admin {
    /// Stops accepting and waits for requests in flight.
    pub async fn shutdown(self) {
        self.sampler.abort();
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// `history`: what `/api/history` serves (its sampler runs apart).
pub fn router(control: Arc<Control>, history: Arc<History>) -> Router<()> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/allocations", get(allocations))
        .route("/api/allocations/{id}", delete(disconnect::end))
        .route("/api/status", get(status))
        .route("/api/history", get(history::serve))
        .route_layer(middleware::from_fn_with_state(
            control.clone(),
            require_token,
        ))
        // The console checks the token itself: without it, a login form, not a bare 401.
        .route("/", get(console::page))
        .route("/healthz", get(healthz))
        .layer(Extension(history))
        .with_state(control)
}

/// The token is read per request, so a reload that changes it applies at once.
async fn require_token(
    State(control): State<Arc<Control>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = control.config().admin.token.clone() else {
        return next.run(request).await;
    };
    let Err(refusal) = session::check(&expected, request.headers()) else {
        return next.run(request).await;
    };
    let from = peer(&request);
    let why = refusal.as_str();
    tracing::warn!(%from, path = %request.uri().path(), reason = why,
        "admin request refused (401): send `Authorization: Bearer <[admin] token>`, or open /?token=<[admin] token> in a browser");
    let mut r = (
        StatusCode::UNAUTHORIZED,
        format!("401 Unauthorized: {why}\n"),
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"relay admin\""),
    );
    r
}

/// Who sent `request` (the admin client's address), for log lines; `-` if unknown.
pub fn peer(request: &Request) -> String {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "-".into())
}

/// Runs a blocking query on the blocking pool; a panic there becomes a 500.
pub(crate) async fn blocking<T: Send + 'static>(
    control: Arc<Control>,
    f: fn(&Control) -> T,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(move || f(&control))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "admin query failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "query failed\n").into_response()
        })
}

async fn metrics(State(control): State<Arc<Control>>) -> Response {
    match blocking(control, prom::render).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, prom::CONTENT_TYPE)], text).into_response(),
        Ok(Err(_)) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
        Err(r) => r,
    }
}

async fn allocations(State(control): State<Arc<Control>>) -> Response {
    match blocking(control, view::allocations).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn status(State(control): State<Arc<Control>>) -> Response {
    match blocking(control, view::status).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn healthz(State(control): State<Arc<Control>>) -> Response {
    if control.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

#[cfg(test)]
mod scrape_tests;
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use relay_tools::status::AdminClient;

    use super::*;

    use crate::{config::AttachMode, control::test_support::*, shard::Kernel};

    /// A control plane over `shards`, without a config file to reload or a fast path.
    fn control(config: crate::config::Config, shards: &FakeShards) -> Arc<Control> {
        control_with(config, shards, Kernel::off())
    }

    /// A control plane over `shards` and the XDP maps `kernel`, without a config file.
    pub(super) fn control_with(
        config: crate::config::Config,
        shards: &FakeShards,
        kernel: Kernel,
    ) -> Arc<Control> {
        Arc::new(Control::new(
            config,
            None,
            None,
            shards.handles.clone(),
            kernel,
            Default::default(),
            crate::control::XdpStatus {
                configured: AttachMode::Off,
                interfaces: vec![],
                off_reason: Some("test".into()),
                sized_for: 10,
                forwarding_off: None,
            },
        ))
    }

    /// A control plane over two fake shards, its admin endpoint on an ephemeral loopback
    /// port with `token`.
    fn serve(token: Option<&str>) -> (tokio::runtime::Runtime, Arc<Control>, Admin, FakeShards) {
        serve_with(token, |_| {})
    }

    pub(super) fn serve_with(
        token: Option<&str>,
        f: impl FnOnce(&mut crate::config::AdminSettings),
    ) -> (tokio::runtime::Runtime, Arc<Control>, Admin, FakeShards) {
        let mut config = parse_config(&config_text(""));
        config.admin.address = "127.0.0.1:0".parse().unwrap();
        config.admin.explicit = true;
        config.admin.token = token.map(str::to_owned);
        f(&mut config.admin);
        let shards = FakeShards::start(&config, 2);
        let control = control(config, &shards);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let admin = rt
            .block_on(start(control.clone()))
            .unwrap()
            .expect("explicit address");
        (rt, control, admin, shards)
    }

    #[test]
    fn token_guards_everything_but_healthz() {
        let (rt, control, admin, _shards) = serve(Some("s3cret"));
        let addr = admin.local_addr;
        let anonymous = AdminClient::new(addr, None);
        let wrong = AdminClient::new(addr, Some("guess".into()));
        let right = AdminClient::new(addr, Some("s3cret".into()));
        for path in ["/metrics", "/api/allocations", "/api/status"] {
            assert_eq!(anonymous.get(path).unwrap().0, 401, "{path}");
            assert_eq!(wrong.get(path).unwrap().0, 401, "{path}");
            assert_eq!(right.get(path).unwrap().0, 200, "{path}");
        }
        assert_eq!(anonymous.get("/healthz").unwrap(), (200, "ok\n".into()));
        let e = anonymous.allocations().unwrap_err();
        assert_eq!(e.exit_code(), 1, "{e}");
        assert!(e.to_string().contains("--token"), "{e}");

        let view = right.allocations().unwrap();
        assert_eq!((view.count, view.draining), (0, false));
        let status = right.status().unwrap();
        assert_eq!(status.shards.len(), 2);
        assert_eq!(status.allocations, Some(0));
        assert!(status.admin.token_required);
        let (code, text) = right.get("/metrics").unwrap();
        assert_eq!(code, 200);
        assert!(
            text.contains("relay_allocations_active{shard=\"fake-1\"} 0"),
            "{text}"
        );
        assert!(text.contains("relay_draining 0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");

        control.start_draining();
        assert_eq!(
            anonymous.get("/healthz").unwrap(),
            (503, "draining\n".into())
        );
        assert!(right.allocations().unwrap().draining);
        rt.block_on(admin.shutdown());
    }

    #[test]
    fn without_a_token_loopback_is_open() {
        let (rt, _control, admin, _shards) = serve(None);
        let c = AdminClient::new(admin.local_addr, None);
        assert_eq!(c.get("/api/status").unwrap().0, 200);
        assert_eq!(c.get("/nope").unwrap().0, 404);
        rt.block_on(admin.shutdown());
    }

    /// Whether the server closed `s` (EOF or reset) before `deadline`, and the bytes it
    /// sent before that.
    fn closed_by(s: &mut std::net::TcpStream, deadline: std::time::Instant) -> (bool, usize) {
        use std::io::Read;
        let (mut buf, mut got) = ([0u8; 512], 0);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return (false, got);
            }
            s.set_read_timeout(Some(left)).unwrap();
            match s.read(&mut buf) {
                Ok(0) => return (true, got),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (true, got),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    #[test]
    fn slow_clients_are_cut_after_the_header_timeout_and_connections_are_capped() {
        use std::io::Write;
        use std::time::{Duration, Instant};
        let (rt, _control, admin, _shards) = serve_with(None, |a| {
            a.header_timeout = Duration::from_secs(1);
            a.max_connections = 3;
        });
        let addr = admin.local_addr;
        let opened = Instant::now();
        // Slowloris: connections that send nothing, or half a request head.
        let mut slow: Vec<_> = (0..3)
            .map(|i| {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                if i == 1 {
                    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                        .unwrap();
                }
                s
            })
            .collect();
        // Beyond the cap: closed at once, its request unanswered.
        let mut extra = std::net::TcpStream::connect(addr).unwrap();
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            closed_by(&mut extra, opened + Duration::from_secs(5)),
            (true, 0),
            "a connection beyond max_connections must be closed unanswered"
        );
        // The slow ones are closed once the header timeout has passed, not before.
        for (i, s) in slow.iter_mut().enumerate() {
            assert!(
                closed_by(s, Instant::now() + Duration::from_secs(5)).0,
                "slow connection {i} still open 5 s after the 1 s header timeout"
            );
        }
        assert!(opened.elapsed() >= Duration::from_millis(900));
        // Room again: a normal request is served.
        let c = AdminClient::new(addr, None);
        assert_eq!(c.get("/healthz").unwrap(), (200, "ok\n".into()));
        // A keep-alive connection left idle after its response is closed the same way.
        let mut idle = std::net::TcpStream::connect(addr).unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let asked = Instant::now();
        let (closed, answer) = closed_by(&mut idle, asked + Duration::from_secs(5));
        assert!(
            closed && answer > 0,
            "idle keep-alive connection still open 5 s after its response"
        );
        assert!(asked.elapsed() >= Duration::from_millis(900));
        rt.block_on(admin.shutdown());
    }

    #[test]
    fn a_busy_default_address_is_a_warning_a_configured_one_an_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut config = parse_config(&config_text(""));
        config.admin.address = taken.local_addr().unwrap();
        let shards = FakeShards::start(&config, 1);
        let make = |explicit: bool| {
            let mut c = config.clone();
            c.admin.explicit = explicit;
            control(c, &shards)
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        assert!(rt.block_on(start(make(false))).unwrap().is_none());
        let e = rt.block_on(start(make(true))).err().expect("bind error");
        assert!(e.to_string().contains("[admin] address"), "{e}");
    }
}
