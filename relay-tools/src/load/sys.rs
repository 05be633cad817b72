//! The few Linux calls the load generator needs beyond std: epoll, batched UDP I/O on
//! connected sockets, the open-file limit, and CPU/memory readings from /proc.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, RawFd},
};

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

/// Clock ticks per second of /proc's CPU times.
fn clk_tck() -> f64 {
    // SAFETY: plain sysconf query.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Whole-box CPU time from the first line of /proc/stat, in seconds summed over CPUs.
#[derive(Debug, Clone, Copy, Default)]
pub struct BoxCpu {
    pub busy_secs: f64,
    pub total_secs: f64,
}

impl BoxCpu {
    pub fn read() -> io::Result<Self> {
        let text = std::fs::read_to_string("/proc/stat")?;
        Self::parse(&text).ok_or_else(|| io::Error::other("/proc/stat has no `cpu` line"))
    }

    /// user nice system idle iowait irq softirq steal (guest time is inside user).
    fn parse(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        if v.len() < 8 {
            return None;
        }
        let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
        let total = busy + v[3] + v[4];
        let tck = clk_tck();
        Some(Self {
            busy_secs: busy as f64 / tck,
            total_secs: total as f64 / tck,
        })
    }
}

/// utime + stime of a process (all its threads), seconds.
pub fn process_cpu_secs(pid: u32) -> io::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_process_cpu(&text)
        .map(|ticks| ticks as f64 / clk_tck())
        .ok_or_else(|| io::Error::other(format!("cannot parse /proc/{pid}/stat")))
}

/// Fields after the command name (which may hold spaces and parentheses): state is the
/// first, utime and stime the 12th and 13th.
fn parse_process_cpu(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of a process, KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/status has no VmRSS")))
}

/// The kernel's per-CPU softirq threads: network work deferred under load runs there.
pub fn softirq_threads() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        comm.starts_with("ksoftirqd/").then_some(pid)
    })
    .collect()
}

pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy_excludes_idle_and_iowait() {
        let t = "cpu  100 10 50 1000 30 5 7 3 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let c = BoxCpu::parse(t).unwrap();
        let tck = clk_tck();
        assert!((c.busy_secs - 175.0 / tck).abs() < 1e-9);
        assert!((c.total_secs - 1205.0 / tck).abs() < 1e-9);
        assert!(BoxCpu::parse("intr 1 2 3\n").is_none());
    }

    #[test]
    fn process_stat_with_awkward_name() {
        // comm may contain spaces and ')'.
        let t = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 17 4 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_process_cpu(t), Some(21));
    }

    #[test]
    fn own_process_readings() {
        let pid = std::process::id();
        assert!(process_cpu_secs(pid).unwrap() >= 0.0);
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(BoxCpu::read().unwrap().total_secs > 0.0);
    }
}
