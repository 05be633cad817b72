//! Upgrading without dropping calls: the running relay starts a new `relay serve` (from
//! the binary just installed) and hands it everything a client's allocation lives on,
//! over a socket pair with SCM_RIGHTS: its member of every UDP listener's SO_REUSEPORT
//! group and every relay socket (so no port is unbound for a moment, and datagrams that
//! arrive meanwhile wait in the very sockets the new process reads next), and a snapshot
//! of the allocation table with the nonce key ([`relay_proto::server::Snapshot`]).
//!
//! Sequence: the old process starts the new one, which loads its config and answers `P`
//! (prepared) or `X` and a reason. Then the old process stops its UDP workers' loops (the
//! sockets stay open), sends the sockets and the manifest, and waits. The new process
//! restores, binds what it needs (admin endpoint), answers `O` (ready) or `X`; on `O` the
//! old one answers `A` (committed) and exits, and only then does the new one start
//! reading. On anything else the old one starts its workers again and keeps serving:
//! nothing was lost.
//!
//! Started by `relay upgrade --config FILE` through the control socket
//! ([`control_socket`]) or by SIGUSR2.

pub mod control_socket;
pub mod kernel;
mod outgoing;
pub mod tcp;
pub mod wire;

pub use outgoing::Running;

use std::{
    ffi::OsString,
    io,
    net::{SocketAddr, UdpSocket},
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use relay_proto::server::Snapshot;
use serde::{Deserialize, Serialize};

/// Names the new process's end of the channel (set by the old process).
pub const FD_ENV: &str = "RELAY_HANDOVER_FD";
/// Where the channel lands in the new process.
const CHILD_FD: RawFd = 3;
/// How long the new process may take to start and restore.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the new process waits for the old one to commit once it said ready.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

const PREPARED: u8 = b'P';
const FDS: u8 = b'F';
const JSON: u8 = b'J';
const END: u8 = b'E';
const READY: u8 = b'O';
const REFUSED: u8 = b'X';
const COMMITTED: u8 = b'A';

/// What goes with the descriptors: which socket is which, the allocation state, and the
/// generation (1 for a fresh start, one more per handover).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub generation: u64,
    /// One entry per UDP worker, in order; `snapshot.shards` has the same order.
    pub workers: Vec<WorkerSockets>,
    pub snapshot: Snapshot,
    /// The TCP/TLS client listeners, sent after every UDP descriptor (none from a build
    /// that did not hand them over).
    #[serde(default)]
    pub tcp: Vec<tcp::TcpGroup>,
    /// The XDP program and maps, when they run; their descriptors follow the sockets'
    /// (UDP, then TCP/TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<kernel::KernelManifest>,
}

/// The descriptors of one UDP worker, in the order they are sent: listeners, then relays.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSockets {
    pub listeners: Vec<SocketAddr>,
    pub relays: Vec<SocketAddr>,
}

/// One UDP worker's sockets as received: (address, socket) of its listeners and relays.
pub type Sockets = (Vec<(SocketAddr, UdpSocket)>, Vec<(SocketAddr, UdpSocket)>);

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot start {exe}: {error}")]
    Spawn { exe: String, error: io::Error },
    #[error("handover channel: {0}")]
    Channel(io::Error),
    #[error("the new process refused: {0}")]
    Refused(String),
    #[error("the new process exited before taking over ({0}); its log says why")]
    Exited(String),
    #[error("the new process did not get ready within {0:?}; it was stopped")]
    Timeout(Duration),
    #[error("{0}")]
    Manifest(String),
}

/// A new process started by the old one, prepared (config loaded, fast path decided)
/// and waiting for the sockets: the old process pauses only from here on.
pub struct Spawned {
    child: std::process::Child,
    sock: OwnedFd,
}

impl Spawned {
    /// Starts `exe` with this process's arguments and waits until it is prepared. An
    /// `Err` (it refused its config, exited, took too long) costs nothing: nothing was
    /// paused yet.
    /// `program`: what describes the running XDP program ([`kernel::offer`]).
    pub fn start(exe: &Path, program: Vec<(&'static str, String)>) -> Result<Self, HandoverError> {
        let (ours, theirs) = wire::pair().map_err(HandoverError::Channel)?;
        let theirs_raw = theirs.as_raw_fd();
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let mut cmd = std::process::Command::new(exe);
        cmd.args(&args).env(FD_ENV, CHILD_FD.to_string());
        cmd.envs(program);
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl).
        unsafe {
            cmd.pre_exec(move || {
                if theirs_raw == CHILD_FD {
                    // dup2 onto itself would keep close-on-exec.
                    if libc::fcntl(CHILD_FD, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(theirs_raw, CHILD_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|error| HandoverError::Spawn {
            exe: exe.display().to_string(),
            error,
        })?;
        drop(theirs);
        let mut me = Self { child, sock: ours };
        match wire::recv(&me.sock, READY_TIMEOUT) {
            Ok((PREPARED, _, _)) => Ok(me),
            other => Err(me.fail(other)),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `fds` (in the manifest's order) and the manifest, and waits for the
    /// verdict. `Ok`: the new process's pid; it serves from now on and this process must
    /// not read again.
    pub fn hand_over(mut self, manifest: &Manifest, fds: &[RawFd]) -> Result<u32, HandoverError> {
        let json =
            serde_json::to_vec(manifest).map_err(|e| HandoverError::Manifest(e.to_string()))?;
        let sent = wire::send_fds(&self.sock, FDS, fds)
            .and_then(|()| wire::send_chunked(&self.sock, JSON, END, &json));
        let verdict = match sent {
            Ok(()) => wire::recv(&self.sock, READY_TIMEOUT),
            Err(e) => Err(e),
        };
        if let Ok((READY, _, _)) = verdict {
            match wire::send(&self.sock, COMMITTED, &[], &[]) {
                Ok(()) => return Ok(self.child.id()),
                Err(e) => return Err(self.fail(Err(e))),
            }
        }
        Err(self.fail(verdict))
    }

    /// The old process gave up before handing over (it resumes): the new process is
    /// stopped and reaped, not left waiting or a zombie until this one exits.
    pub fn abandon(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The error for an answer other than the expected one; the new process is stopped
    /// (it must not linger half-started, reading from sockets this process keeps).
    fn fail(&mut self, got: io::Result<(u8, Vec<u8>, Vec<OwnedFd>)>) -> HandoverError {
        let error = match got {
            Ok((REFUSED, why, _)) => {
                HandoverError::Refused(String::from_utf8_lossy(&why).into_owned())
            }
            Ok((kind, _, _)) => HandoverError::Channel(io::Error::other(format!(
                "unexpected message {:?}",
                kind as char
            ))),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => HandoverError::Timeout(READY_TIMEOUT),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // It exited (or closed the channel, then exits): give it a moment.
                let status = (0..50)
                    .find_map(|_| match self.child.try_wait() {
                        Ok(Some(s)) => Some(s.to_string()),
                        _ => {
                            std::thread::sleep(Duration::from_millis(20));
                            None
                        }
                    })
                    .unwrap_or_else(|| "closed the channel".to_owned());
                HandoverError::Exited(status)
            }
            Err(e) => HandoverError::Channel(e),
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
        error
    }
}

/// The new process's side, when the old one started it ([`FD_ENV`] set), before it
/// received anything: it prepares (config, logging, fast path) first.
pub struct Pending {
    sock: OwnedFd,
}

impl Pending {
    /// `None` on an ordinary start.
    pub fn from_env() -> Option<Result<Self, HandoverError>> {
        let raw = std::env::var(FD_ENV).ok()?;
        // SAFETY: removing our own variable before any other thread exists.
        unsafe { std::env::remove_var(FD_ENV) };
        let fd: RawFd = match raw.parse() {
            Ok(fd) => fd,
            Err(_) => {
                return Some(Err(HandoverError::Manifest(format!(
                    "{FD_ENV}={raw} is not a descriptor"
                ))));
            }
        };
        // SAFETY: the old process put the channel at this descriptor for us alone; it
        // becomes close-on-exec like every other.
        let sock = unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        };
        Some(Ok(Self { sock }))
    }

    /// Prepared: asks for the sockets and the manifest (the old process pauses now).
    pub fn receive(self) -> Result<Incoming, HandoverError> {
        let sock = self.sock;
        wire::send(&sock, PREPARED, &[], &[]).map_err(HandoverError::Channel)?;
        let mut fds = Vec::new();
        let mut json = Vec::new();
        loop {
            let (kind, payload, got) =
                wire::recv(&sock, READY_TIMEOUT).map_err(HandoverError::Channel)?;
            match kind {
                FDS => fds.extend(got),
                JSON => json.extend(payload),
                END => break,
                k => {
                    return Err(HandoverError::Manifest(format!(
                        "unexpected message {:?}",
                        k as char
                    )));
                }
            }
        }
        let manifest: Manifest = serde_json::from_slice(&json)
            .map_err(|e| HandoverError::Manifest(format!("the manifest: {e}")))?;
        let sockets: usize = manifest
            .workers
            .iter()
            .map(|w| w.listeners.len() + w.relays.len())
            .chain(manifest.tcp.iter().map(|g| g.members))
            .sum();
        let wanted = sockets + manifest.kernel.as_ref().map_or(0, |k| k.fd_count());
        if wanted != fds.len() {
            return Err(HandoverError::Manifest(format!(
                "{} descriptors arrived, the manifest names {wanted}",
                fds.len()
            )));
        }
        let kernel_fds = fds.split_off(sockets);
        let mut fds = fds.into_iter().map(UdpSocket::from);
        let mut take = |addrs: &[SocketAddr]| -> Vec<(SocketAddr, UdpSocket)> {
            addrs
                .iter()
                .zip(fds.by_ref())
                .map(|(a, s)| (*a, s))
                .collect()
        };
        let workers = manifest
            .workers
            .iter()
            .map(|w| (take(&w.listeners), take(&w.relays)))
            .collect();
        let tcp = tcp::groups(&manifest.tcp, fds.map(OwnedFd::from));
        Ok(Incoming {
            sock,
            manifest,
            workers,
            tcp,
            kernel_fds,
            retired_xdp: None,
        })
    }

    /// What tells the old process why this one will not take over, whenever startup
    /// fails (it keeps serving then); it works before and after [`receive`](Self::receive).
    pub fn refuser(&self) -> Refuser {
        Refuser(self.sock.try_clone().ok())
    }
}

/// What the new process received.
pub struct Incoming {
    sock: OwnedFd,
    pub manifest: Manifest,
    /// Per UDP worker, in the manifest's order.
    pub workers: Vec<Sockets>,
    /// The TCP/TLS client listeners' groups.
    pub tcp: Vec<tcp::Group>,
    /// The XDP maps' and links' descriptors ([`Manifest::kernel`]).
    pub kernel_fds: Vec<OwnedFd>,
    /// The taken-over XDP path when the new config turns XDP off: detached at commit.
    pub retired_xdp: Option<crate::xdp::XdpPath>,
}

impl Incoming {
    /// Ready: waits for the old process to commit (it stops reading and exits). After an
    /// `Err` this process must exit without reading: the old one may still serve.
    pub fn confirm(self) -> Result<(), HandoverError> {
        wire::send(&self.sock, READY, &[], &[]).map_err(HandoverError::Channel)?;
        match wire::recv(&self.sock, COMMIT_TIMEOUT) {
            Ok((COMMITTED, _, _)) => Ok(()),
            Ok((k, _, _)) => Err(HandoverError::Manifest(format!(
                "unexpected message {:?}",
                k as char
            ))),
            Err(e) => Err(HandoverError::Channel(e)),
        }
    }
}

/// See [`Pending::refuser`].
pub struct Refuser(Option<OwnedFd>);

impl Refuser {
    pub fn refuse(&self, reason: &str) {
        let Some(sock) = &self.0 else { return };
        let mut end = reason.len().min(wire::CHUNK);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        // After a confirmed handover the old process is gone: nobody to tell.
        let _ = wire::send(sock, REFUSED, &reason.as_bytes()[..end], &[]);
    }
}

/// The binary at this process's path: the one just installed there if the file was
/// replaced (`/proc/self/exe` then reads "PATH (deleted)"), as nginx does on SIGUSR2.
pub fn installed_exe() -> io::Result<PathBuf> {
    let link = std::fs::read_link("/proc/self/exe")?;
    let text = link.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => link,
    })
}
