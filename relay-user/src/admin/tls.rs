//! `[admin] tls = true`: the admin endpoint over TLS with the `[tls]` certificate, for
//! nodes that poll each other (bearer token included) across a network. The certificate
//! is the TURN listeners' one, loaded and reloaded by the same code
//! ([`crate::tcp::TlsAcceptor`]): on SIGHUP (a reload hook) and when its files change.
//!
//! Each connection's handshake runs on its own task under `[admin] header_timeout`, so a
//! client that opens a connection and stays silent holds it no longer than one that
//! sends half a request head.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use axum::{Extension, Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::Watcher,
    service::TowerToHyperService,
};
use tokio::{net::TcpStream, sync::OwnedSemaphorePermit};

use super::MAX_HEAD;
use crate::{config::AdminSettings, control::Control, tcp::TlsAcceptor};

/// How often the certificate files are looked at for a renewal.
const WATCH_EVERY: Duration = Duration::from_secs(10);

/// The certificate in service and the watcher thread's stop flag.
pub(super) struct AdminTls {
    pub acceptor: TlsAcceptor,
    stop: Arc<AtomicBool>,
}

impl Drop for AdminTls {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("[admin] tls: {0}")]
pub struct AdminTlsError(String);

/// Loads the `[tls]` certificate for the endpoint, when `[admin] tls` asks for it, and
/// has it reloaded with the rest of the config and when its files change.
pub(super) fn setup(control: &Control) -> Result<Option<AdminTls>, AdminTlsError> {
    let config = control.config();
    if !config.admin.tls {
        return Ok(None);
    }
    // Validation refuses `[admin] tls` without `[tls]`.
    let files = config
        .tls
        .clone()
        .ok_or_else(|| AdminTlsError("needs [tls] certificate and private_key".into()))?;
    let acceptor =
        TlsAcceptor::new(files).map_err(|e| AdminTlsError(format!("{}: {e}", e.key())))?;
    control.on_reload(
        "admin tls",
        Box::new(crate::tcp::reload_hook(acceptor.clone())),
    );
    let stop = Arc::new(AtomicBool::new(false));
    if let Err(e) = acceptor.spawn_watcher(WATCH_EVERY, stop.clone()) {
        tracing::warn!(error = %e,
            "admin API: no certificate watcher; a renewed [tls] certificate is served after SIGHUP");
    }
    Ok(Some(AdminTls { acceptor, stop }))
}

/// Serves one accepted connection on a task of its own (TLS first when `tls`), holding
/// `permit` until it ends.
pub(super) fn spawn_connection(
    stream: TcpStream,
    from: SocketAddr,
    app: &Router,
    settings: &AdminSettings,
    watcher: Watcher,
    permit: OwnedSemaphorePermit,
    tls: Option<&TlsAcceptor>,
) {
    let service = TowerToHyperService::new(app.clone().layer(Extension(ConnectInfo(from))));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_buf_size(MAX_HEAD);
    let handshake_timeout = settings.header_timeout;
    let tls = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.config()));
    tokio::spawn(async move {
        let served = match tls {
            None => watcher
                .watch(http.serve_connection(TokioIo::new(stream), service))
                .await
                .map_err(|e| e.to_string()),
            Some(tls) => match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => watcher
                    .watch(http.serve_connection(TokioIo::new(stream), service))
                    .await
                    .map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                Err(_) => Err("no TLS handshake within [admin] header_timeout".into()),
            },
        };
        if let Err(e) = served {
            tracing::debug!(%from, error = %e, "admin connection closed");
        }
        drop(permit);
    });
}
