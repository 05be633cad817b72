//! The io_uring loop's sends: a pool of slots the kernel reads from until each send's
//! completion, and the outbox that queues a datagram into one (or sends it at once with
//! sendto when it is too large for a slot or every slot is in flight).

use std::{net::SocketAddr, os::fd::RawFd};

use io_uring::{IoUring, opcode, types};

use super::{SEND, push, token};
use crate::udp::plane::{Outbox, SendErrors};

/// Sends in flight at once; beyond, datagrams go out with a plain sendto.
pub(super) const SEND_SLOTS: usize = 1024;
/// Bytes of one send slot: media datagrams fit; a larger one (up to the shard's
/// `DATAGRAM_MAX`) goes out with a plain sendto instead of making every slot 64 KiB.
pub(super) const SEND_SLOT_BYTES: usize = 4096;

/// One send in flight: its bytes, destination and the msghdr pointing at them. Boxed in
/// a slice that never moves, so the kernel may read it until the completion.
#[derive(Clone, Copy)]
struct SendSlot {
    buf: [u8; SEND_SLOT_BYTES],
    addr: libc::sockaddr_storage,
    iov: libc::iovec,
    hdr: libc::msghdr,
}

pub(super) struct SendPool {
    slots: Box<[SendSlot]>,
    pub(super) free: Vec<usize>,
}

// SAFETY: the raw pointers in the slots point into the pool's own boxed slice; the pool
// moves to its loop's thread once and is used there only.
unsafe impl Send for SendPool {}

impl SendPool {
    pub(super) fn new() -> Self {
        // SAFETY: all-zero is valid for these C structs; pointers are set per send.
        let empty: SendSlot = unsafe { std::mem::zeroed() };
        Self {
            slots: vec![empty; SEND_SLOTS].into_boxed_slice(),
            free: (0..SEND_SLOTS).rev().collect(),
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        SEND_SLOTS - self.free.len()
    }
}

/// Sends queued on the ring while a batch of completions is handled.
pub(super) struct RingOutbox<'a> {
    pub(super) ring: &'a mut IoUring,
    pub(super) pool: &'a mut SendPool,
    pub(super) errors: &'a mut SendErrors,
}

impl Outbox for RingOutbox<'_> {
    fn push(&mut self, fd: RawFd, bytes: &[u8], to: &SocketAddr) {
        let slot = match self.pool.free.pop() {
            Some(i) if bytes.len() <= SEND_SLOT_BYTES => i,
            Some(i) => {
                self.pool.free.push(i);
                return send_now(fd, bytes, to, self.errors);
            }
            // Every slot is in flight (the peer side is slower than we are): no reason to
            // hold this one back.
            None => return send_now(fd, bytes, to, self.errors),
        };
        let s = &mut self.pool.slots[slot];
        s.buf[..bytes.len()].copy_from_slice(bytes);
        let (addr, len) = crate::udp::sockaddr::to_storage(to);
        s.addr = addr;
        s.iov = libc::iovec {
            iov_base: s.buf.as_mut_ptr().cast(),
            iov_len: bytes.len(),
        };
        s.hdr.msg_name = (&mut s.addr as *mut libc::sockaddr_storage).cast();
        s.hdr.msg_namelen = len;
        s.hdr.msg_iov = &mut s.iov;
        s.hdr.msg_iovlen = 1;
        s.hdr.msg_control = std::ptr::null_mut();
        s.hdr.msg_controllen = 0;
        s.hdr.msg_flags = 0;
        // MSG_DONTWAIT: a full socket buffer drops the datagram, as the epoll loop does,
        // instead of parking the send (and its slot) until there is room.
        let e = opcode::SendMsg::new(types::Fd(fd), &s.hdr)
            .flags(libc::MSG_DONTWAIT as u32)
            .build()
            .user_data(token(SEND, slot));
        if !push(self.ring, &e) {
            self.pool.free.push(slot);
            send_now(fd, bytes, to, self.errors);
        }
    }
}

fn send_now(fd: RawFd, bytes: &[u8], to: &SocketAddr, errors: &mut SendErrors) {
    if let Err(e) = crate::udp::socket::send_raw(fd, bytes, to) {
        errors.record(e);
    }
}
