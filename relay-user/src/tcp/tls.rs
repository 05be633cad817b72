//! The TLS side of `turns:`: certificate chain and key from PEM files, a rustls server
//! config the event loop picks up at each accept, and reloading without a restart.
//!
//! Reload: [`TlsAcceptor::reload`] re-reads both files and swaps the config; connections
//! accepted afterwards use the new certificate, established ones keep theirs. It runs on
//! a file watcher (the files' modification time, size or inode changed, as when certbot
//! renews) and can be called by the control plane (SIGHUP, admin API) through the handle
//! `crate::tcp::spawn` returns. A reload that fails keeps the old certificate in service.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not valid PEM: {detail}")]
    BadPem {
        key: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{path} holds no private key (PKCS#8, PKCS#1 RSA or SEC1 EC, unencrypted)")]
    NoKey { path: PathBuf },
    #[error(
        "the certificate and key were refused: {detail} (does the key belong to the first certificate of the chain?)"
    )]
    Refused { detail: String },
}

impl TlsError {
    /// The config key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Read { key, .. } | TlsError::BadPem { key, .. } => match *key {
                "certificate" => "tls.certificate",
                _ => "tls.private_key",
            },
            TlsError::NoCertificate { .. } => "tls.certificate",
            TlsError::NoKey { .. } => "tls.private_key",
            TlsError::Refused { .. } => "tls",
        }
    }
}

/// Reads the chain and key and builds the server config (TLS 1.2 and 1.3, no client
/// certificates: TURN authenticates with its own credentials).
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read("certificate", &files.certificate)?;
    let key_pem = read("private_key", &files.private_key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            key: "certificate",
            path: files.certificate.clone(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.certificate.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: files.private_key.clone(),
        },
        e => TlsError::BadPem {
            key: "private_key",
            path: files.private_key.clone(),
            detail: e.to_string(),
        },
    })?;
    server_config(chain, key)
}

/// The server config for a parsed chain and key.
fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused {
            detail: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Refused {
            detail: e.to_string(),
        })?;
    // Our order, not the client's (rustls clients, for one, offer AES-256 first).
    config.ignore_client_order = true;
    // Stateless session tickets (TLS 1.3 PSK with a fresh ECDHE, so forward secrecy
    // stays; TLS 1.2 tickets too): a client that reconnects, as a browser's TURN-over-TLS
    // does after a network change, resumes without the certificate signature on our side
    // or its check on theirs. The default (a 256-session cache per config) forgot most
    // sessions of a busy relay, where OpenSSL servers such as coturn issue stateless
    // tickets by default. The keys (AEAD, rotated every 6 hours by rustls) live in this
    // process: a restart or an upgrade makes clients do a full handshake once.
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Refused {
        detail: format!("session tickets: {e}"),
    })?;
    Ok(Arc::new(config))
}

/// ring's suites, those hashing with SHA-256 first. The suite's hash runs the handshake's
/// transcript and key schedule: SHA-384 (AES-256-GCM) has no SHA extensions on x86, and
/// was a fifth of the relay's CPU per TLS handshake (perf, stop 24); SHA-256 has them.
/// AES-128-GCM also seals each record in 10 AES rounds instead of 14. ChaCha20 (SHA-256)
/// stays ahead of AES-256 for clients without AES hardware that offer no AES-128.
fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite as S;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        S::TLS13_AES_128_GCM_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        S::TLS13_CHACHA20_POLY1305_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => 1,
        _ => 2,
    });
    p
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

/// What identifies one version of a file: a renewal changes at least one of these.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// The current server config, shared between the event loop (which clones the `Arc` at
/// each accept) and whoever reloads it.
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: Arc<RwLock<(TlsFiles, Arc<ServerConfig>)>>,
}

impl TlsAcceptor {
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let config = load(&files)?;
        Ok(Self {
            inner: Arc::new(RwLock::new((files, config))),
        })
    }

    /// Re-reads the files. On success new connections get the new certificate; on
    /// failure nothing changes and the error says which file is at fault.
    pub fn reload(&self) -> Result<(), TlsError> {
        let files = self.files();
        self.reload_from(&files)
    }

    /// Like [`reload`](Self::reload) with other paths (a reloaded `[tls]` table); they are
    /// kept only if they load.
    pub fn reload_from(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let config = load(files)?;
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = (files.clone(), config);
        Ok(())
    }

    pub fn files(&self) -> TlsFiles {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// The config new connections use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// A thread that reloads when either file changes (checked every `every`), until
    /// `stop` is set. Failures are logged and retried at the next change.
    pub fn spawn_watcher(
        &self,
        every: Duration,
        stop: Arc<AtomicBool>,
    ) -> io::Result<JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("tls-watch".into())
            .spawn(move || {
                let stamps = |f: &TlsFiles| (stamp(&f.certificate), stamp(&f.private_key));
                let mut seen = stamps(&me.files());
                let tick = Duration::from_millis(200).min(every);
                let mut waited = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    waited += tick;
                    if waited < every {
                        continue;
                    }
                    waited = Duration::ZERO;
                    let files = me.files();
                    let now = stamps(&files);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    match me.reload_from(&files) {
                        Ok(()) => tracing::info!(
                            certificate = %files.certificate.display(),
                            private_key = %files.private_key.display(),
                            "TLS certificate reloaded: new turns: connections use it"
                        ),
                        Err(e) => tracing::warn!(key = e.key(), error = %e,
                            "TLS certificate files changed but cannot be loaded; the previous certificate stays in service"),
                    }
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use rustls::{
        CipherSuite, ClientConfig, ClientConnection, RootCertStore, ServerConnection,
        pki_types::ServerName,
    };

    use super::*;
    use crate::tcp::test_tls::handshake;

    /// A rustls client with its default suites and session store, trusting `roots`.
    fn client_config(roots: RootCertStore) -> ClientConfig {
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }

    /// The relay's server config for a fresh self-signed `relay.test`, and roots trusting it.
    fn relay_test_server() -> (Arc<ServerConfig>, RootCertStore) {
        let ck = rcgen::generate_simple_self_signed(vec!["relay.test".into()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let server = server_config(vec![cert.clone()], key).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        (server, roots)
    }

    /// A client that offers AES-256-GCM first (rustls' default order) gets AES-128-GCM.
    #[test]
    fn the_server_picks_aes_128_gcm_over_the_clients_first_choice() {
        let (server, roots) = relay_test_server();
        let client = client_config(roots);
        assert_eq!(
            client.crypto_provider().cipher_suites[0].suite(),
            CipherSuite::TLS13_AES_256_GCM_SHA384,
            "the client prefers AES-256"
        );
        let mut s = ServerConnection::new(server).unwrap();
        let name = ServerName::try_from("relay.test").unwrap();
        let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
        handshake(&mut s, &mut c);
        let suite = s.negotiated_cipher_suite().map(|s| s.suite());
        assert_eq!(suite, Some(CipherSuite::TLS13_AES_128_GCM_SHA256));
    }

    /// A client resumes its session after many other clients had theirs: the tickets are
    /// stateless (the default 256-session cache would have forgotten it).
    #[test]
    fn a_client_resumes_after_many_others_had_sessions() {
        let (server, roots) = relay_test_server();
        // Each call is a client of its own (its own session store).
        let client = || Arc::new(client_config(roots.clone()));
        let name = ServerName::try_from("relay.test").unwrap();
        let connect = |config: &Arc<ClientConfig>| {
            let mut s = ServerConnection::new(server.clone()).unwrap();
            let mut c = ClientConnection::new(config.clone(), name.clone()).unwrap();
            handshake(&mut s, &mut c);
            c.handshake_kind()
        };
        let first = client();
        assert_eq!(connect(&first), Some(rustls::HandshakeKind::Full));
        for _ in 0..300 {
            connect(&client());
        }
        assert_eq!(connect(&first), Some(rustls::HandshakeKind::Resumed));
    }
}
