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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused {
            detail: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Refused {
            detail: e.to_string(),
        })?;
    Ok(Arc::new(config))
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
