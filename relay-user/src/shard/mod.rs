//! A shard is one data-path thread (a UDP worker, the TCP/TLS loop) that owns its own
//! sans-IO [`Server`]. Shards share nothing on the packet path; what must be global
//! (port pools, quotas) lives in the core's shared state, what the kernel needs goes
//! through [`Kernel`], and the control plane (admin API, SIGHUP, SIGTERM) reaches a
//! shard only through its [`ShardHandle`]: closures run on the shard's thread between
//! batches, so the core never needs a lock.

pub mod apply;
mod kernel;
#[cfg(test)]
mod mirror_tests;
pub mod relays;
pub mod slab;

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use relay_proto::server::Server;

pub use kernel::Kernel;

/// Work for a shard: runs on its thread with its core.
pub type Job = Box<dyn FnOnce(&mut Server) + Send>;

/// An eventfd the shard's loop waits on (epoll or io_uring) besides its sockets.
#[derive(Debug)]
pub struct Waker(OwnedFd);

impl Waker {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; result checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: 8-byte write to an eventfd we own. EAGAIN (counter full) still wakes.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter after a wake-up (the loop calls this when the fd is readable).
    pub fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading the 8-byte counter into an 8-byte buffer.
        unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The shard side: what its loop polls.
pub struct Inbox {
    pub waker: Arc<Waker>,
    jobs: mpsc::Receiver<Job>,
    stop: Arc<AtomicBool>,
}

impl Inbox {
    /// Runs every queued job against `server`. The loop must call this after its waker
    /// fired, then carry out the core's commands (a reload can revoke permissions).
    pub fn run_jobs(&self, server: &mut Server) {
        while let Ok(job) = self.jobs.try_recv() {
            job(server);
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Clears a stop, for a loop started again on the same shard (a handover that failed
    /// gives the old process its shards back).
    pub fn resume(&self) {
        self.stop.store(false, Ordering::SeqCst);
    }
}

/// The control plane's side of one shard.
#[derive(Clone)]
pub struct ShardHandle {
    /// For logs and the status page: "udp-0", "tcp".
    pub name: String,
    waker: Arc<Waker>,
    jobs: mpsc::Sender<Job>,
    stop: Arc<AtomicBool>,
}

/// A connected pair: the handle for the control plane, the inbox for the shard's loop.
pub fn channel(name: impl Into<String>) -> io::Result<(ShardHandle, Inbox)> {
    let waker = Arc::new(Waker::new()?);
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    Ok((
        ShardHandle {
            name: name.into(),
            waker: waker.clone(),
            jobs: tx,
            stop: stop.clone(),
        },
        Inbox {
            waker,
            jobs: rx,
            stop,
        },
    ))
}

impl ShardHandle {
    /// Queues `job` for the shard's thread. `false` if the shard has ended.
    pub fn run(&self, job: impl FnOnce(&mut Server) + Send + 'static) -> bool {
        let ok = self.jobs.send(Box::new(job)).is_ok();
        self.waker.wake();
        ok
    }

    /// Runs `f` on the shard and waits for its answer (admin queries). `None` if the shard
    /// has ended or did not answer within `timeout`.
    pub fn query<T: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut Server) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        if !self.run(move |s| {
            let _ = tx.send(f(s));
        }) {
            return None;
        }
        rx.recv_timeout(timeout).ok()
    }

    /// Asks the shard's loop to end; it returns its core to whoever joins it.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
    }
}
