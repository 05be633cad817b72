//! The control socket through which `relay upgrade --config FILE` finds the relay running
//! that config: `$RUNTIME_DIRECTORY/relay-<hash>.sock` (systemd's RuntimeDirectory=), else
//! `/run/relay/relay-<hash>.sock`, the hash of the config file's canonical path. One
//! request per connection, one line each way: `upgrade EXE` → `ok TEXT` or `error TEXT`.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
    sync::{mpsc, oneshot},
};

/// Without systemd's RuntimeDirectory=.
const DEFAULT_DIR: &str = "/run/relay";
/// How long `relay upgrade` waits for the verdict (the new process has 30 s to start).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// An upgrade asked for: start `exe`; the verdict goes to `reply`, with a sender that
/// fires once the answer is written (a process that handed over waits for it before
/// exiting, or `relay upgrade` would see the socket close without an answer).
pub struct UpgradeRequest {
    pub exe: PathBuf,
    pub reply: oneshot::Sender<(Result<String, String>, oneshot::Sender<()>)>,
}

/// The control socket of the relay started with `config`.
pub fn path_for(config: &Path) -> PathBuf {
    let canonical = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_owned());
    // FNV-1a: stable across builds and processes (std's hasher is seeded per process).
    let hash = canonical
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let dir = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|d| {
            // systemd lists several directories separated by colons: the first one.
            let first = d.to_string_lossy().split(':').next().map(PathBuf::from);
            first.filter(|p| !p.as_os_str().is_empty())
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
    dir.join(format!("relay-{hash:016x}.sock"))
}

/// Listens at `path` (a file left there by a previous process is replaced) and passes
/// each request to `requests`. Runs until the runtime ends.
pub fn serve(path: &Path, requests: mpsc::Sender<UpgradeRequest>) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let requests = requests.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut read = tokio::io::BufReader::new(read);
                if read.read_line(&mut line).await.is_err() {
                    return;
                }
                let stopping = || (Err("the relay is stopping".to_owned()), None);
                let (answer, written) = match line.trim_end().strip_prefix("upgrade ") {
                    Some(exe) => {
                        let (reply, verdict) = oneshot::channel();
                        let asked = UpgradeRequest {
                            exe: PathBuf::from(exe),
                            reply,
                        };
                        if requests.send(asked).await.is_err() {
                            stopping()
                        } else {
                            verdict
                                .await
                                .map_or_else(|_| stopping(), |(a, w)| (a, Some(w)))
                        }
                    }
                    None => (Err(format!("unknown request {:?}", line.trim_end())), None),
                };
                let text = match answer {
                    Ok(t) => format!("ok {t}\n"),
                    Err(e) => format!("error {}\n", e.replace('\n', " ")),
                };
                let _ = write.write_all(text.as_bytes()).await;
                let _ = write.shutdown().await;
                if let Some(w) = written {
                    let _ = w.send(());
                }
            });
        }
    });
    Ok(())
}

/// `relay upgrade`: asks the relay running `config` to hand over to `exe`; the new
/// process's summary, or why it did not happen.
pub fn request_upgrade(config: &Path, exe: &Path) -> anyhow::Result<String> {
    let path = path_for(config);
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        anyhow::anyhow!(
            "no relay of {} answers at {} ({e}): is it running, with this --config path, \
             and the same RUNTIME_DIRECTORY?",
            config.display(),
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    writeln!(stream, "upgrade {}", exe.display())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let line = line.trim_end();
    match (line.strip_prefix("ok "), line.strip_prefix("error ")) {
        (Some(ok), _) => Ok(ok.to_owned()),
        (_, Some(error)) => anyhow::bail!("upgrade failed, the old process keeps serving: {error}"),
        _ if line.is_empty() => {
            anyhow::bail!("the relay closed the control socket without an answer")
        }
        _ => anyhow::bail!("unexpected answer {line:?}"),
    }
}
