//! Receiving many datagrams per syscall with recvmmsg into buffers allocated once.

use std::{io, net::SocketAddr, os::fd::RawFd};

/// Largest datagram we relay; bigger ones are counted and dropped (MSG_TRUNC).
pub const DATAGRAM_MAX: usize = 4096;
pub const BATCH: usize = 32;

pub struct RecvBatch {
    bufs: Vec<[u8; DATAGRAM_MAX]>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    count: usize,
}

// SAFETY: the raw pointers inside only ever point into this struct's own heap buffers
// and are rewritten before every recvmmsg; moving the struct to another thread is fine.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new() -> Self {
        // SAFETY: all-zero is valid for these C structs; pointers are set before each use.
        Self {
            bufs: vec![[0; DATAGRAM_MAX]; BATCH],
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH
            ],
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            count: 0,
        }
    }

    /// Receives up to [`BATCH`] datagrams. `Ok(0)` never happens: no data is
    /// `Err(WouldBlock)`.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: DATAGRAM_MAX,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by self.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = n as usize;
        Ok(self.count)
    }

    /// Datagram `i` of the last batch: its source and bytes, or None if it was truncated
    /// or has no IP source.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.count {
            return None;
        }
        let h = &self.hdrs[i];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let from = super::sockaddr::from_storage(&self.addrs[i])?;
        Some((from, &self.bufs[i][..h.msg_len as usize]))
    }
}

/// Outgoing datagrams gathered while a receive batch is processed and sent with one
/// sendmmsg per run of datagrams leaving through the same socket.
pub struct SendBatch {
    bufs: Vec<[u8; DATAGRAM_MAX]>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    fd: RawFd,
    count: usize,
    /// Datagrams the kernel refused (full socket buffer, no route), since start.
    pub errors: u64,
    pub last_error: Option<io::Error>,
}

// SAFETY: as for RecvBatch, the pointers only point into the struct's own heap buffers.
unsafe impl Send for SendBatch {}

impl SendBatch {
    pub fn new() -> Self {
        // SAFETY: all-zero is valid for these C structs; pointers are set before use.
        Self {
            bufs: vec![[0; DATAGRAM_MAX]; BATCH],
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH
            ],
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            fd: -1,
            count: 0,
            errors: 0,
            last_error: None,
        }
    }

    /// Queues `bytes` for `to` on socket `fd`, flushing first when the socket changes or
    /// the batch is full. Oversized datagrams go out at once with sendto.
    pub fn push(&mut self, fd: RawFd, bytes: &[u8], to: &SocketAddr) {
        if bytes.len() > DATAGRAM_MAX {
            self.flush();
            if let Err(e) = super::socket::send_raw(fd, bytes, to) {
                self.fail(e, 1);
            }
            return;
        }
        if self.count == BATCH || (self.count > 0 && fd != self.fd) {
            self.flush();
        }
        let i = self.count;
        self.fd = fd;
        self.bufs[i][..bytes.len()].copy_from_slice(bytes);
        self.iovs[i].iov_len = bytes.len();
        let (addr, len) = super::sockaddr::to_storage(to);
        self.addrs[i] = addr;
        self.hdrs[i].msg_hdr.msg_namelen = len;
        self.count += 1;
    }

    /// Sends what is queued. A datagram the kernel refuses is counted and skipped.
    pub fn flush(&mut self) {
        let mut done = 0;
        for i in 0..self.count {
            self.iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        while done < self.count {
            let left = (self.count - done) as u32;
            // SAFETY: headers point at live buffers owned by self.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd,
                    self.hdrs[done..].as_mut_ptr(),
                    left,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first datagram failed: count it and go on with the rest.
                self.fail(e, 1);
                done += 1;
            } else {
                done += n as usize;
            }
        }
        self.count = 0;
    }

    fn fail(&mut self, e: io::Error, n: u64) {
        self.errors += n;
        self.last_error = Some(e);
    }
}
