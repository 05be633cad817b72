//! What both io_uring event loops (TCP/TLS and UDP) share: why io_uring may be unusable,
//! the capability probe, rings of provided receive buffers, and the send pool ([`sends`]).

use std::{
    alloc::Layout,
    io,
    sync::atomic::{AtomicU16, Ordering},
};

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{IoUring, Probe, cqueue, squeue, types};

use crate::config::IoEngine;

pub mod sends;

/// Queues a submission, submitting first when the queue is full. `false` if it could not
/// be queued (the kernel refused to take the queue): the caller undoes what it prepared
/// and tries again later. Every entry must reference descriptors and memory that outlive
/// its operation (each loop's module comment says how).
pub fn push(ring: &mut IoUring, e: &squeue::Entry) -> bool {
    loop {
        // SAFETY: see above; the loops keep what their entries point at until the
        // completion.
        if unsafe { ring.submission().push(e) }.is_ok() {
            return true;
        }
        if let Err(err) = ring.submit() {
            tracing::warn!(error = %err, "io_uring submit failed");
            return false;
        }
    }
}

/// Why an io_uring loop cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("io_uring is disabled by sysctl kernel.io_uring_disabled={0}")]
    Sysctl(String),
    #[error(
        "io_uring_setup is not permitted ({0}): kernel.io_uring_disabled, a seccomp filter or a container policy"
    )]
    NotPermitted(io::Error),
    #[error("this kernel has no io_uring ({0})")]
    NoSyscall(io::Error),
    #[error("the kernel lacks {0}")]
    Missing(&'static str),
    #[error("{what}: {source}")]
    Failed {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

pub fn setup_error(e: io::Error) -> Unavailable {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => Unavailable::NotPermitted(e),
        Some(libc::ENOSYS) => Unavailable::NoSyscall(e),
        _ => Unavailable::Failed {
            what: "io_uring_setup",
            source: e,
        },
    }
}

/// A small ring on which the loop's needs are checked: not disabled by sysctl, extended
/// arguments (timeouts on waits, 5.11), and every opcode in `ops`.
pub fn probe_ring(ops: &[(u8, &'static str)]) -> Result<IoUring, Unavailable> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        let v = v.trim();
        if v == "2" {
            return Err(Unavailable::Sysctl(v.to_owned()));
        }
    }
    let ring = IoUring::new(8).map_err(setup_error)?;
    if !ring.params().is_feature_ext_arg() {
        return Err(Unavailable::Missing("IORING_FEAT_EXT_ARG (5.11)"));
    }
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|source| Unavailable::Failed {
            what: "IORING_REGISTER_PROBE",
            source,
        })?;
    for &(code, name) in ops {
        if !p.is_supported(code) {
            return Err(Unavailable::Missing(name));
        }
    }
    Ok(ring)
}

/// A two-buffer ring in group 7 on `ring`, proving provided-buffer rings work (5.19).
/// Drop it after the ring.
pub fn probe_buf_ring(ring: &IoUring) -> Result<BufRing, Unavailable> {
    BufRing::new(ring, 2, 64, 7).map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL) => Unavailable::Missing("provided-buffer rings (5.19)"),
        _ => Unavailable::Failed {
            what: "IORING_REGISTER_PBUF_RING",
            source: e,
        },
    })
}

/// A ring of provided buffers (IORING_REGISTER_PBUF_RING): the kernel picks one per
/// receive completion; we hand it back once its bytes are consumed.
pub struct BufRing {
    ring: *mut types::BufRingEntry,
    layout: Layout,
    mem: *mut u8,
    mem_layout: Layout,
    entries: u16,
    size: usize,
    tail: u16,
}

impl BufRing {
    /// [`new`](Self::new), its error as a reason the loop cannot run.
    pub fn registered(
        uring: &IoUring,
        entries: u16,
        size: usize,
        group: u16,
    ) -> Result<Self, Unavailable> {
        Self::new(uring, entries, size, group).map_err(|source| Unavailable::Failed {
            what: "registering receive buffers",
            source,
        })
    }

    pub fn new(uring: &IoUring, entries: u16, size: usize, group: u16) -> io::Result<Self> {
        assert!(entries.is_power_of_two());
        let layout = Layout::from_size_align(
            usize::from(entries) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        let mem_layout =
            Layout::from_size_align(usize::from(entries) * size, 64).map_err(io::Error::other)?;
        // SAFETY: non-zero sizes; checked for null below.
        let ring = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        let mem = unsafe { std::alloc::alloc(mem_layout) };
        if ring.is_null() || mem.is_null() {
            // SAFETY: freeing only what was allocated with these layouts.
            unsafe {
                if !ring.is_null() {
                    std::alloc::dealloc(ring.cast(), layout);
                }
                if !mem.is_null() {
                    std::alloc::dealloc(mem, mem_layout);
                }
            }
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut me = Self {
            ring,
            layout,
            mem,
            mem_layout,
            entries,
            size,
            tail: 0,
        };
        // SAFETY: the ring memory is page-aligned, sized for `entries`, and lives as long
        // as `me`; `me` is dropped only after the io_uring instance (see the loop's drop
        // order), which unregisters it.
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(ring as u64, entries, group, 0)?;
        }
        for bid in 0..entries {
            me.add(bid);
        }
        me.publish();
        Ok(me)
    }

    fn add(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (self.entries - 1));
        // SAFETY: idx < entries; the entry is ours to write until the tail is published.
        let e = unsafe { &mut *self.ring.add(idx) };
        // SAFETY: bid < entries, so the buffer lies inside `mem`.
        e.set_addr(unsafe { self.mem.add(usize::from(bid) * self.size) } as u64);
        e.set_len(self.size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry's reserved field and is shared
        // with the kernel, which reads it atomically.
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The bytes the kernel put in buffer `bid`.
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        let len = len.min(self.size);
        // SAFETY: bid < entries (the kernel only returns ids we gave it); the kernel is
        // done writing this buffer until we hand it back.
        unsafe { std::slice::from_raw_parts(self.mem.add(usize::from(bid) * self.size), len) }
    }

    pub fn recycle(&mut self, bid: u16) {
        if bid < self.entries {
            self.add(bid);
            self.publish();
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts.
        unsafe {
            std::alloc::dealloc(self.ring.cast(), self.layout);
            std::alloc::dealloc(self.mem, self.mem_layout);
        }
    }
}

// SAFETY: the raw pointers point to heap memory owned by the ring; it moves to its loop's
// thread once and is used there only.
unsafe impl Send for BufRing {}

/// Submits what is queued and sleeps until `want` completions are there or `wait`
/// passes; with `min_wait_us` (kernels with IORING_FEAT_MIN_TIMEOUT), returns once that
/// long has passed with at least one completion. A timeout or a signal is not an error.
pub fn submit_and_wait(
    ring: &IoUring,
    want: usize,
    wait: std::time::Duration,
    min_wait_us: Option<u32>,
) -> io::Result<()> {
    let ts = types::Timespec::new()
        .sec(wait.as_secs())
        .nsec(wait.subsec_nanos());
    let mut args = types::SubmitArgs::new().timespec(&ts);
    if let Some(us) = min_wait_us {
        args = args.min_wait_usec(us);
    }
    match ring.submitter().submit_with_args(want, &args) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETIME | libc::EINTR | libc::EBUSY)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Resolves a transport's engine setting: `env` (e.g. `RELAY_UDP_ENGINE`) overrides
/// `configured` (from config key `key`); `auto` is io_uring if `probe` passes, else epoll
/// with the reason logged; `io_uring` that cannot run is an error. `what` names the
/// transport in the log line.
pub fn choose_engine(
    configured: IoEngine,
    env: &str,
    key: &str,
    what: &str,
    probe: fn() -> Result<(), Unavailable>,
) -> anyhow::Result<IoEngine> {
    use anyhow::Context as _;
    let (engine, source) = match std::env::var(env) {
        Ok(v) => (
            v.parse::<IoEngine>()
                .map_err(|e| anyhow::anyhow!("{env}: {e}"))?,
            env,
        ),
        Err(_) => (configured, key),
    };
    match engine {
        IoEngine::Epoll => {
            tracing::info!(
                engine = "epoll",
                "{source} = \"epoll\": io_uring not used for {what}"
            );
            Ok(IoEngine::Epoll)
        }
        IoEngine::IoUring => {
            probe().with_context(|| format!("{source} = \"io_uring\""))?;
            Ok(IoEngine::IoUring)
        }
        IoEngine::Auto => match probe() {
            Ok(()) => Ok(IoEngine::IoUring),
            Err(reason) => {
                tracing::warn!(%reason, "io_uring unavailable; serving {what} with epoll");
                Ok(IoEngine::Epoll)
            }
        },
    }
}

/// Takes every completion off the queue into `into` (cleared first) as (user data,
/// result, flags), so the loop can act on them while it pushes new submissions.
pub fn completions(ring: &mut IoUring, into: &mut Vec<(u64, i32, u32)>) {
    into.clear();
    into.extend(
        ring.completion()
            .map(|c| (c.user_data(), c.result(), c.flags())),
    );
}

/// What a loop on a ring does with completions; [`reap`](Self::reap) is the same for
/// every loop: take the whole queue, then act on each entry while pushing submissions.
pub trait Completions {
    /// The loop's ring and its reusable completion buffer.
    fn ring_and_buffer(&mut self) -> (&mut IoUring, &mut Vec<(u64, i32, u32)>);

    /// One completion: user data, result, flags.
    fn complete(&mut self, ud: u64, res: i32, flags: u32, now: std::time::Instant);

    fn reap(&mut self, now: std::time::Instant) {
        let (ring, buffer) = self.ring_and_buffer();
        let mut cqes = std::mem::take(buffer);
        completions(ring, &mut cqes);
        for &(ud, res, flags) in &cqes {
            self.complete(ud, res, flags, now);
        }
        *self.ring_and_buffer().1 = cqes;
    }
}

/// Checks that a loop's needs are met here: the opcodes in `ops` (see [`probe_ring`]),
/// provided-buffer rings, and a multishot receive that really delivers: `recv` builds it
/// (buffer group 7) for one end of an AF_UNIX socketpair of `kind` (SOCK_STREAM or
/// SOCK_DGRAM), a byte is written into the other end, and the completion must say the
/// receive stays armed. `missing` names the feature when it does not.
pub fn probe_multishot(
    ops: &[(u8, &'static str)],
    kind: libc::c_int,
    recv: impl FnOnce(RawFd) -> squeue::Entry,
    missing: &'static str,
) -> Result<(), Unavailable> {
    let mut ring = probe_ring(ops)?;
    let bufs = probe_buf_ring(&ring)?;
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            kind | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } < 0
    {
        return Err(Unavailable::Failed {
            what: "socketpair",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let entry = recv(a.as_raw_fd()).user_data(1);
    // SAFETY: the entry references a descriptor (and whatever the caller's closure
    // borrowed) that outlive the ring's use of it.
    unsafe { ring.submission().push(&entry) }.map_err(|_| Unavailable::Missing("SQ space"))?;
    // SAFETY: one-byte write from a valid buffer.
    unsafe { libc::write(b.as_raw_fd(), b"x".as_ptr().cast(), 1) };
    ring.submit_and_wait(1)
        .map_err(|source| Unavailable::Failed {
            what: "io_uring_enter",
            source,
        })?;
    let cqe = ring
        .completion()
        .next()
        .ok_or(Unavailable::Missing("a completion for the probe"))?;
    let ok = cqe.result() > 0 && cqueue::more(cqe.flags());
    drop((a, b));
    // The ring goes first (it holds the registration), then the probe's buffers.
    drop(ring);
    drop(bufs);
    if ok {
        Ok(())
    } else {
        Err(Unavailable::Missing(missing))
    }
}

/// The source address the kernel wrote into a multishot `recvmsg`'s name field.
pub fn recvmsg_source(name: &[u8]) -> Option<std::net::SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let n = name
        .len()
        .min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: copying at most the storage's size of plain bytes into it.
    unsafe {
        std::ptr::copy_nonoverlapping(
            name.as_ptr(),
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            n,
        );
    }
    relay_sys::sockaddr::from_storage(&storage)
}
