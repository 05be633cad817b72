//! The echo peer: every datagram goes back to where it came from, from the same port.
//! Several threads each own an SO_REUSEPORT socket on the one port, so the kernel spreads
//! the relay's many 5-tuples across cores; each reads and answers in batches.
//!
//! `drop_every = N` swallows every Nth datagram a thread receives instead of answering
//! it: a known loss of 1/N for checking what the load generator reports.

use std::{
    io,
    mem::MaybeUninit,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::sys::{self, DATAGRAM_MAX};

const BATCH: usize = 64;
/// Receive buffer of each echo socket. One socket carries the echoes of every allocation
/// its thread serves: at 5,000/s a thread kept off the CPU for half a second (a loaded test
/// box) has 2,500 datagrams waiting, about 2.5 MiB with the kernel's overhead.
const SOCKET_BUFFER: libc::c_int = 8 << 20;
/// How often a blocked thread looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// What the echo did, summed over its threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EchoStats {
    pub received: u64,
    pub echoed: u64,
    pub dropped: u64,
    pub send_errors: u64,
    /// Datagrams the kernel dropped at the echo's own sockets (their buffers were full:
    /// the echo was too slow), not lost by what is under test.
    pub socket_drops: u64,
}

impl EchoStats {
    fn add(&mut self, o: EchoStats) {
        self.received += o.received;
        self.echoed += o.echoed;
        self.dropped += o.dropped;
        self.send_errors += o.send_errors;
        self.socket_drops += o.socket_drops;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("echo peer cannot listen on {addr}: {source}")]
pub struct EchoError {
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// A running echo peer; [`Echo::stop`] ends it and returns the counts.
pub struct Echo {
    pub local: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<EchoStats>>,
}

impl Echo {
    /// Binds `threads` sockets on `listen` (port 0: one ephemeral port for all) and starts
    /// answering.
    pub fn start(
        listen: SocketAddr,
        threads: usize,
        drop_every: Option<u64>,
    ) -> Result<Self, EchoError> {
        let err = |source| EchoError {
            addr: listen,
            source,
        };
        let first = reuseport_socket(listen).map_err(err)?;
        let local = first
            .local_addr()
            .map_err(err)?
            .as_socket()
            .ok_or_else(|| err(io::Error::other("not an IP socket")))?;
        let mut sockets = vec![first];
        for _ in 1..threads.max(1) {
            sockets.push(reuseport_socket(local).map_err(err)?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for (k, sock) in sockets.into_iter().enumerate() {
            let stop = stop.clone();
            let h = std::thread::Builder::new()
                .name(format!("echo-{k}"))
                .spawn(move || serve(&sock, drop_every, &stop))
                .map_err(err)?;
            handles.push(h);
        }
        Ok(Self {
            local,
            stop,
            threads: handles,
        })
    }

    pub fn stop(self) -> EchoStats {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = EchoStats::default();
        for h in self.threads {
            if let Ok(s) = h.join() {
                total.add(s);
            }
        }
        total
    }
}

fn reuseport_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    s.bind(&SockAddr::from(addr))?;
    s.set_read_timeout(Some(STOP_POLL))?;
    relay_sys::sockopt::set_buffers_force(s.as_raw_fd(), SOCKET_BUFFER);
    Ok(s)
}

/// One thread: recvmmsg (wait for one, take what is there), then sendmmsg the kept ones
/// back to their sources.
fn serve(sock: &Socket, drop_every: Option<u64>, stop: &AtomicBool) -> EchoStats {
    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; DATAGRAM_MAX]; BATCH];
    // SAFETY: all-zero is valid for these C structs; pointers are set before each call.
    let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut iovs = vec![MaybeUninit::<libc::iovec>::zeroed(); BATCH];
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut out_iovs = vec![MaybeUninit::<libc::iovec>::zeroed(); BATCH];
    let mut out: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut stats = EchoStats::default();
    let mut count: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        for i in 0..BATCH {
            iovs[i].write(libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: DATAGRAM_MAX,
            });
            let h = &mut hdrs[i];
            h.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = iovs[i].as_mut_ptr();
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: headers point at live buffers; the socket's read timeout bounds the wait.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let mut kept = 0;
        for i in 0..n as usize {
            stats.received += 1;
            count += 1;
            if drop_every.is_some_and(|d| count.is_multiple_of(d)) {
                stats.dropped += 1;
                continue;
            }
            out_iovs[kept].write(libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: hdrs[i].msg_len as usize,
            });
            let h = &mut out[kept];
            h.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = hdrs[i].msg_hdr.msg_namelen;
            h.msg_hdr.msg_iov = out_iovs[kept].as_mut_ptr();
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            kept += 1;
        }
        let mut done = 0;
        while done < kept {
            // SAFETY: the first `kept` headers point at live buffers and addresses.
            let s = unsafe {
                libc::sendmmsg(
                    fd,
                    out[done..].as_mut_ptr(),
                    (kept - done) as libc::c_uint,
                    0,
                )
            };
            if s < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first one failed (no route, full buffer): count it, go on.
                stats.send_errors += 1;
                done += 1;
            } else {
                stats.echoed += s as u64;
                done += s as usize;
            }
        }
    }
    stats.socket_drops = sys::receive_drops(fd);
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn echoes_from_the_same_port_and_drops_every_nth() {
        let echo = Echo::start("127.0.0.1:0".parse().unwrap(), 1, Some(4)).unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.connect(echo.local).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = 0;
        for i in 0..8u8 {
            c.send(&[i; 10]).unwrap();
            let mut buf = [0u8; 64];
            // Datagrams 4 and 8 are dropped: wait less for those.
            if (i + 1) % 4 == 0 {
                c.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
            }
            if let Ok(n) = c.recv(&mut buf) {
                assert_eq!(&buf[..n], &[i; 10]);
                got += 1;
            }
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        assert_eq!(got, 6);
        let s = echo.stop();
        assert_eq!(
            s,
            EchoStats {
                received: 8,
                echoed: 6,
                dropped: 2,
                send_errors: 0,
                socket_drops: 0
            }
        );
    }
}
