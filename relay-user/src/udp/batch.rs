//! Receiving many datagrams per syscall with recvmmsg into buffers allocated once.

use std::{io, net::SocketAddr, os::fd::RawFd};

/// Largest datagram received (the shard's limit, the same on every path); bigger ones
/// are truncated by the kernel and dropped (MSG_TRUNC).
pub use crate::shard::apply::DATAGRAM_MAX;
pub const BATCH: usize = 32;

/// The mmsghdr array and the buffers, addresses and iovecs it points into, allocated
/// once per direction.
type Slots = relay_sys::mmsg::Slots<DATAGRAM_MAX>;

pub struct RecvBatch {
    slots: Slots,
    count: usize,
}

impl RecvBatch {
    pub fn new() -> Self {
        Self {
            slots: Slots::new(BATCH, true),
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
        }
        let n = s.recv(fd, BATCH);
        self.count = *n.as_ref().unwrap_or(&0);
        n
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
        let from = relay_sys::sockaddr::from_storage(&self.slots.addrs[i])?;
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
            slots: Slots::new(BATCH, true),
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
            if let Err(e) = relay_sys::sockaddr::send_raw(fd, bytes, to) {
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
        let (addr, len) = relay_sys::sockaddr::to_storage(to);
        s.addrs[i] = addr;
        s.hdrs[i].msg_hdr.msg_namelen = len;
        self.count += 1;
    }

    /// Sends what is queued. A datagram the kernel refuses is counted and skipped.
    pub fn flush(&mut self) {
        let mut done = 0;
        self.slots.link(self.count);
        while done < self.count {
            match self.slots.send(self.fd, done, self.count) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The first datagram failed: count it and go on with the rest.
                    self.fail(e);
                    done += 1;
                }
                Ok(n) => done += n,
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
