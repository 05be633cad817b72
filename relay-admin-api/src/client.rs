//! The admin endpoint's HTTP(S) client: one GET per connection, bearer token, a bounded
//! wait. `relay status` (relay-tools) and the daemon's cluster poller both use it; over
//! `https://` it verifies the endpoint's certificate against the CA file it was given.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, body::Bytes, header};
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};

use crate::{AllocationsView, DisconnectedView, StatusView};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("`{0}` is not an admin address (expected http://IP:PORT, https://IP:PORT or IP:PORT)")]
    BadUrl(String),
    /// The --config or --ca file could not be used; the message names the key at fault.
    #[error("{0}")]
    Config(String),
    #[error(
        "cannot reach the admin endpoint at {address}: {reason} (is the relay running? check [admin] address)"
    )]
    Unreachable { address: SocketAddr, reason: String },
    #[error(
        "TLS with the admin endpoint at {address} failed: {reason} (is [admin] tls on there, and was its certificate signed by the CA given, for this IP?)"
    )]
    Tls { address: SocketAddr, reason: String },
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
            StatusError::Unreachable { .. }
            | StatusError::Timeout { .. }
            | StatusError::Tls { .. } => 2,
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
    /// `Some`: over TLS, verified with this config (its roots: the CA file).
    pub tls: Option<Arc<ClientConfig>>,
}

impl AdminClient {
    pub fn new(address: SocketAddr, token: Option<String>) -> Self {
        Self {
            address,
            token,
            timeout: Duration::from_secs(5),
            tls: None,
        }
    }

    /// `http://IP:PORT`, `https://IP:PORT` (a trailing `/` allowed) or `IP:PORT`: the
    /// address and whether it is over TLS.
    pub fn parse_url(url: &str) -> Result<(SocketAddr, bool), StatusError> {
        crate::endpoint::parse_url(url).ok_or_else(|| StatusError::BadUrl(url.to_owned()))
    }

    /// GET `path`; returns the status code and the body. Blocks on a runtime of its own:
    /// not from async code (use [`get_async`](Self::get_async) there).
    pub fn get(&self, path: &str) -> Result<(u16, String), StatusError> {
        self.send(Method::GET, path)
    }

    /// `method` on `path`; returns the status code and the body. Blocks, as
    /// [`get`](Self::get) does.
    pub fn send(&self, method: Method, path: &str) -> Result<(u16, String), StatusError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StatusError::Unreachable {
                address: self.address,
                reason: format!("no async runtime: {e}"),
            })?;
        rt.block_on(self.send_async(method, path))
    }

    /// GET `path` within the client's timeout.
    pub async fn get_async(&self, path: &str) -> Result<(u16, String), StatusError> {
        self.send_async(Method::GET, path).await
    }

    /// `method` on `path` within the client's timeout.
    pub async fn send_async(
        &self,
        method: Method,
        path: &str,
    ) -> Result<(u16, String), StatusError> {
        tokio::time::timeout(self.timeout, self.unbounded(method, path))
            .await
            .map_err(|_| StatusError::Timeout {
                address: self.address,
                timeout: self.timeout,
            })?
    }

    async fn unbounded(&self, method: Method, path: &str) -> Result<(u16, String), StatusError> {
        let unreachable = |reason: String| StatusError::Unreachable {
            address: self.address,
            reason,
        };
        let stream = tokio::net::TcpStream::connect(self.address)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match &self.tls {
            None => self.exchange(method, path, stream).await,
            Some(config) => {
                let name = ServerName::IpAddress(self.address.ip().into());
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| StatusError::Tls {
                        address: self.address,
                        reason: e.to_string(),
                    })?;
                self.exchange(method, path, stream).await
            }
        }
    }

    async fn exchange<S>(
        &self,
        method: Method,
        path: &str,
        stream: S,
    ) -> Result<(u16, String), StatusError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let protocol = |reason: String| StatusError::Protocol {
            path: path.to_owned(),
            reason,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| StatusError::Unreachable {
                address: self.address,
                reason: e.to_string(),
            })?;
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

    /// Checks `code` is 200 and parses `body` as JSON.
    pub fn parse_json<T: serde::de::DeserializeOwned>(
        path: &str,
        (code, body): (u16, String),
    ) -> Result<T, StatusError> {
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

    /// GET `path` expecting 200 and a JSON document.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, StatusError> {
        self.json(Method::GET, path)
    }

    /// `method` on `path` expecting 200 and a JSON document.
    pub fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<T, StatusError> {
        Self::parse_json(path, self.send(method, path)?)
    }

    pub fn allocations(&self) -> Result<AllocationsView, StatusError> {
        self.get_json("/api/allocations")
    }

    pub fn status(&self) -> Result<StatusView, StatusError> {
        self.get_json("/api/status")
    }

    /// Ends allocation `id` (`DELETE /api/allocations/{id}`).
    pub fn disconnect(&self, id: &str) -> Result<DisconnectedView, StatusError> {
        // Ids are hex; anything else is refused here, never sent as a path.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StatusError::BadId(id.to_owned()));
        }
        self.json(Method::DELETE, &format!("/api/allocations/{id}"))
    }
}

/// The CA certificates of a PEM file as trust anchors; the error says what is wrong with
/// the file (the caller names the flag or key).
pub fn roots_from_pem_file(path: &Path) -> Result<RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("not a PEM certificate file: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CERTIFICATE block in the file".into());
    }
    Ok(roots)
}

/// A client config that trusts only the CAs of `path` (ring, as the relay's server side).
pub fn tls_config_from_ca(path: &Path) -> Result<Arc<ClientConfig>, String> {
    let roots = roots_from_pem_file(path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_is_a_usage_error() {
        let e = AdminClient::parse_url("localhost").unwrap_err();
        assert!(matches!(e, StatusError::BadUrl(_)), "{e}");
        assert_eq!(e.exit_code(), 64);
    }

    #[test]
    fn a_disconnect_id_that_is_not_hex_is_refused_before_any_request() {
        // Port 9 (discard) is not asked: the id is checked first, a usage error (64).
        let c = AdminClient::new("127.0.0.1:9".parse().unwrap(), None);
        for id in ["", "../metrics", "12 34", "zz"] {
            let e = c.disconnect(id).unwrap_err();
            assert!(matches!(e, StatusError::BadId(_)), "{id:?}: {e}");
            assert_eq!(e.exit_code(), 64);
        }
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

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("admin-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "nothing here\n").unwrap();
        assert!(
            tls_config_from_ca(&path)
                .unwrap_err()
                .contains("no CERTIFICATE")
        );
        std::fs::remove_file(&path).unwrap();
    }
}
