//! The few Linux calls the load generator needs beyond std: epoll, batched UDP I/O on
//! connected sockets, the open-file limit, and CPU/memory readings from /proc. The calls
//! themselves are relay-sys's (shared with the daemon, the benches and the tests); what
//! stays here is the generator's use of them (its buffer sizes, its event buffer, seconds
//! rather than ticks).

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, RawFd},
};

use relay_sys::procfs;
pub use relay_sys::procfs::{rss_kib, softirq_threads};

/// Largest datagram the generator sends or expects back (payload cap plus TURN framing).
pub const DATAGRAM_MAX: usize = 2048;

/// Asks for socket buffers this big; the kernel caps them at `net.core.[rw]mem_max`.
/// Bursts of a thousand allocations' worth of echoes must not overflow one socket.
const SOCKET_BUFFER: libc::c_int = 1 << 20;

/// Raises the soft open-file limit to the hard one: every allocation is one socket.
/// Returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    relay_sys::limits::raise_nofile().unwrap_or(1024)
}

/// A non-blocking UDP socket bound to `local` and connected to `remote`: the kernel then
/// filters foreign senders and reports ICMP unreachable as ECONNREFUSED.
pub fn connected_udp(local: SocketAddr, remote: SocketAddr) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(local)?;
    sock.connect(remote)?;
    sock.set_nonblocking(true)?;
    set_buffers(sock.as_raw_fd());
    Ok(sock)
}

/// Best effort: a smaller buffer only means loss shows up earlier. Past
/// `net.core.rmem_max` when run as root: a generator's own socket is not where a relay's
/// loss should be measured.
pub fn set_buffers(fd: RawFd) {
    relay_sys::sockopt::set_buffers_force(fd, SOCKET_BUFFER);
}

/// Datagrams this socket's receive buffer dropped (the tool was too slow), 0 if unknown.
pub fn receive_drops(fd: RawFd) -> u64 {
    relay_sys::sockopt::receive_drops(fd).map_or(0, u64::from)
}

/// `send` on a connected socket without blocking.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<()> {
    // SAFETY: buf is valid for reads of its length.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Level-triggered epoll set (the daemon's, see [`relay_sys::epoll`]) with its own
/// event buffer; events carry a caller-chosen `u64` token.
pub struct Epoll {
    set: relay_sys::epoll::Epoll,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new(capacity: usize) -> io::Result<Self> {
        Ok(Self {
            set: relay_sys::epoll::Epoll::new()?,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
        })
    }

    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.set.add(fd, token)
    }

    /// A TCP or TLS stream: edge-triggered, readable or writable (a connect that
    /// completed, room for queued bytes) or closed. The owner reads and writes until
    /// EAGAIN on every wake-up.
    pub fn add_stream(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let events = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        self.set.ctl(libc::EPOLL_CTL_ADD, fd, events as u32, token)
    }

    /// Waits up to `timeout_ms` (0: poll); returns the ready tokens.
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<impl Iterator<Item = u64> + '_> {
        let n = self.set.wait(&mut self.events, timeout_ms)?;
        Ok(self.events[..n].iter().map(|e| e.u64))
    }
}

/// Buffers for recvmmsg/sendmmsg on connected sockets (no addresses), allocated once.
pub struct Mmsg {
    slots: relay_sys::mmsg::Slots<DATAGRAM_MAX>,
    lens: Vec<usize>,
}

impl Mmsg {
    pub fn new(batch: usize) -> Self {
        let slots = relay_sys::mmsg::Slots::new(batch, false);
        Self {
            lens: vec![0; slots.capacity()],
            slots,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    /// Buffer `i` to fill before [`send`](Self::send).
    pub fn buf_mut(&mut self, i: usize) -> &mut [u8; DATAGRAM_MAX] {
        &mut self.slots.bufs[i]
    }

    pub fn set_len(&mut self, i: usize, len: usize) {
        self.lens[i] = len.min(DATAGRAM_MAX);
    }

    fn link(&mut self, n: usize, recv: bool) {
        self.slots.link(n);
        for i in 0..n {
            self.slots.iovs[i].iov_len = if recv { DATAGRAM_MAX } else { self.lens[i] };
        }
    }

    /// Receives up to the batch size without blocking; no data is `Ok(0)`.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.capacity();
        self.link(n, true);
        let got = match self.slots.recv(fd, n) {
            Ok(got) => got,
            Err(e) => {
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                    _ => Err(e),
                };
            }
        };
        for i in 0..got {
            self.lens[i] = self.slots.hdrs[i].msg_len as usize;
        }
        Ok(got)
    }

    /// Datagram `i` of the last receive.
    pub fn get(&self, i: usize) -> &[u8] {
        &self.slots.bufs[i][..self.lens[i]]
    }

    /// Sends buffers `0..n` on `fd`; returns how many the kernel took (the rest hit a full
    /// buffer or an error, reported when nothing went out).
    pub fn send(&mut self, fd: RawFd, n: usize) -> io::Result<usize> {
        let n = n.min(self.capacity());
        self.link(n, false);
        self.slots.send(fd, 0, n)
    }
}

/// Whole-box CPU time (the `cpu` line of /proc/stat), in seconds summed over CPUs.
#[derive(Debug, Clone, Copy, Default)]
pub struct BoxCpu {
    pub busy_secs: f64,
    pub total_secs: f64,
}

impl BoxCpu {
    pub fn read() -> io::Result<Self> {
        let t = procfs::BoxTicks::read()?;
        let tck = procfs::ticks_per_second() as f64;
        Ok(Self {
            busy_secs: t.busy as f64 / tck,
            total_secs: t.total as f64 / tck,
        })
    }
}

/// utime + stime of a process (all its threads), seconds.
pub fn process_cpu_secs(pid: u32) -> io::Result<f64> {
    procfs::process_cpu(pid).map(|d| d.as_secs_f64())
}

pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
