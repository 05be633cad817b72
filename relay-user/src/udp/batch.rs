//! Receiving many datagrams per syscall with recvmmsg into buffers allocated once.

use std::{io, net::SocketAddr, os::fd::RawFd};

/// Largest datagram received (the shard's limit, the same on every path); bigger ones
/// are truncated by the kernel and dropped (MSG_TRUNC).
pub use crate::shard::apply::DATAGRAM_MAX;
pub const BATCH: usize = 32;

/// The mmsghdr array and the buffers, addresses and iovecs it points into, allocated
/// once and shared by both directions.
struct Slots {
    bufs: Vec<[u8; DATAGRAM_MAX]>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside only ever point into this struct's own heap buffers
// and are rewritten by `link` before every syscall; moving it to another thread is fine.
unsafe impl Send for Slots {}

impl Slots {
    fn new() -> Self {
        // SAFETY: all-zero is valid for these C structs; `link` sets the pointers.
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
        }
    }

    /// Points headers `0..n` at their buffer, iovec and address; lengths are the
    /// caller's (recv: whole buffers, send: what was queued).
    fn link(&mut self, n: usize) {
        for i in 0..n {
            self.iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
    }
}

pub struct RecvBatch {
    slots: Slots,
    count: usize,
}

impl RecvBatch {
    pub fn new() -> Self {
        Self {
            slots: Slots::new(),
            count: 0,
        }
    }

    /// Receives up to [`BATCH`] datagrams. `Ok(0)` never happens: no data is
    /// `Err(WouldBlock)`.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let s = &mut self.slots;
        s.link(BATCH);
        for i in 0..BATCH {
            s.iovs[i].iov_len = DATAGRAM_MAX;
            s.hdrs[i].msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            s.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by self.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                s.hdrs.as_mut_ptr(),
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
        let h = &self.slots.hdrs[i];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let from = super::sockaddr::from_storage(&self.slots.addrs[i])?;
        Some((from, &self.slots.bufs[i][..h.msg_len as usize]))
    }
}

/// Outgoing datagrams gathered while a receive batch is processed and sent with one
/// sendmmsg per run of datagrams leaving through the same socket.
pub struct SendBatch {
    slots: Slots,
    fd: RawFd,
    count: usize,
    /// Datagrams the kernel refused (full socket buffer, no route), since start.
    pub errors: super::plane::SendErrors,
}

impl SendBatch {
    pub fn new() -> Self {
        Self {
            slots: Slots::new(),
            fd: -1,
            count: 0,
            errors: Default::default(),
        }
    }

    /// Queues `bytes` for `to` on socket `fd`, flushing first when the socket changes or
    /// the batch is full. Oversized datagrams go out at once with sendto.
    pub fn push(&mut self, fd: RawFd, bytes: &[u8], to: &SocketAddr) {
        if bytes.len() > DATAGRAM_MAX {
            self.flush();
            if let Err(e) = super::socket::send_raw(fd, bytes, to) {
                self.fail(e);
            }
            return;
        }
        if self.count == BATCH || (self.count > 0 && fd != self.fd) {
            self.flush();
        }
        let (i, s) = (self.count, &mut self.slots);
        self.fd = fd;
        s.bufs[i][..bytes.len()].copy_from_slice(bytes);
        s.iovs[i].iov_len = bytes.len();
        let (addr, len) = super::sockaddr::to_storage(to);
        s.addrs[i] = addr;
        s.hdrs[i].msg_hdr.msg_namelen = len;
        self.count += 1;
    }

    /// Sends what is queued. A datagram the kernel refuses is counted and skipped.
    pub fn flush(&mut self) {
        let mut done = 0;
        self.slots.link(self.count);
        while done < self.count {
            let left = (self.count - done) as u32;
            // SAFETY: headers point at live buffers owned by self.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd,
                    self.slots.hdrs[done..].as_mut_ptr(),
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
                self.fail(e);
                done += 1;
            } else {
                done += n as usize;
            }
        }
        self.count = 0;
    }

    fn fail(&mut self, e: io::Error) {
        self.errors.record(e);
    }
}

impl super::plane::Outbox for SendBatch {
    fn push(&mut self, fd: RawFd, bytes: &[u8], to: &SocketAddr) {
        SendBatch::push(self, fd, bytes, to)
    }
}
