//! The io_uring loop's sends: a pool of slots the kernel reads from until each send's
//! completion, and the outbox that queues a datagram into one (or sends it at once with
//! sendto when it is too large for a slot or every slot is in flight).
//!
//! Datagrams of one size leaving one socket for one destination back to back (one busy
//! allocation: a video call, a screen share) are gathered into one slot and leave as one
//! UDP GSO send (`UDP_SEGMENT`): the kernel walks its send path once for the run and
//! cuts the datagrams at the end, the same datagrams on the wire. Anything else ends the
//! run first, so datagrams leave in the order they were pushed.

use std::{net::SocketAddr, os::fd::RawFd};

use io_uring::{IoUring, opcode, types};

use super::{SEND, push, token};
use crate::udp::plane::{Outbox, SendErrors};

/// Sends in flight at once; beyond, datagrams go out with a plain sendto.
pub(super) const SEND_SLOTS: usize = 1024;
/// Bytes of one send slot: room for a GSO run (the kernel takes at most 64 KiB per send).
/// The pool is zeroed lazily (calloc), so a slot costs memory only for the pages a send
/// wrote: one for a media datagram.
pub(super) const SEND_SLOT_BYTES: usize = 65_507;
/// Datagrams one GSO send carries at most (the kernel's UDP_MAX_SEGMENTS on older kernels).
const GSO_SEGMENTS: u16 = 64;
/// Datagrams larger than this are never gathered: a GSO segment that does not fit the
/// route's MTU fails the whole send, where a lone datagram would be fragmented (a run that
/// fails anyway is sent again datagram by datagram, see [`SendPool::completed`]).
const GSO_SEGMENT_MAX: usize = 1400;

/// `UDP_SEGMENT` of linux/udp.h (the libc crate has it for Android and uClibc only).
const UDP_SEGMENT: libc::c_int = 103;

/// `cmsghdr` plus one u16 (`UDP_SEGMENT`), padded: room for `CMSG_SPACE(2)`.
type Control = [u64; 4];

/// One send in flight: its bytes and destination, and for a GSO run the msghdr, iovec
/// and control message pointing at them. Boxed in a slice that never moves, so the
/// kernel may read it until the completion.
#[derive(Clone, Copy)]
struct SendSlot {
    buf: [u8; SEND_SLOT_BYTES],
    addr: libc::sockaddr_storage,
    iov: libc::iovec,
    hdr: libc::msghdr,
    control: Control,
    /// The run: socket, destination, bytes in `buf`, size and number of its datagrams.
    fd: RawFd,
    to: Option<SocketAddr>,
    len: usize,
    segment: usize,
    count: u16,
}

pub(super) struct SendPool {
    slots: Box<[SendSlot]>,
    pub(super) free: Vec<usize>,
    /// The slot of the run being gathered, not yet queued on the ring.
    open: Option<usize>,
}

// SAFETY: the raw pointers in the slots point into the pool's own boxed slice; the pool
// moves to its loop's thread once and is used there only.
unsafe impl Send for SendPool {}

impl SendPool {
    pub(super) fn new() -> Self {
        // SAFETY: all-zero is valid for these C structs and plain fields (`to`: None is
        // not all-zero, so it is written below); pointers are set per send.
        let mut slots = unsafe { Box::<[SendSlot]>::new_zeroed_slice(SEND_SLOTS).assume_init() };
        for s in slots.iter_mut() {
            s.to = None;
        }
        Self {
            slots,
            free: (0..SEND_SLOTS).rev().collect(),
            open: None,
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        SEND_SLOTS - self.free.len() - usize::from(self.open.is_some())
    }

    /// `fds` are about to close (their sends are submitted; the kernel holds its own
    /// references): the sends in flight on them must not be retried on those numbers.
    pub(super) fn closing(&mut self, fds: impl Iterator<Item = RawFd>) {
        for fd in fds {
            for s in self.slots.iter_mut().filter(|s| s.fd == fd) {
                s.fd = -1;
            }
        }
    }

    /// The completion of the send in `slot`. A GSO run the kernel refused as a whole (a
    /// segment over the route's MTU, a device without segmentation) goes again datagram
    /// by datagram, as it would have without GSO; then the slot is free.
    pub(super) fn completed(&mut self, slot: usize, res: i32, errors: &mut SendErrors) {
        let Some(s) = self.slots.get(slot) else {
            return;
        };
        if res < 0 {
            let gso_refused = s.count > 1
                && matches!(
                    -res,
                    libc::EINVAL | libc::EMSGSIZE | libc::EIO | libc::ENOTSUP
                );
            match s.to {
                // Its socket closed after the submit: the descriptor number may name
                // another socket by now, so the run is dropped, not sent there.
                Some(_) if gso_refused && s.fd < 0 => {
                    for _ in 0..s.count {
                        errors.record(std::io::Error::from_raw_os_error(-res));
                    }
                }
                Some(to) if gso_refused => {
                    for d in s.buf[..s.len].chunks(s.segment) {
                        send_now(s.fd, d, &to, errors);
                    }
                }
                _ => errors.record(std::io::Error::from_raw_os_error(-res)),
            }
        }
        self.free.push(slot);
    }
}

/// Sends queued on the ring while a batch of completions is handled.
pub(super) struct RingOutbox<'a> {
    pub(super) ring: &'a mut IoUring,
    pub(super) pool: &'a mut SendPool,
    pub(super) errors: &'a mut SendErrors,
}

impl RingOutbox<'_> {
    /// Queues the run being gathered, if any. Call before the ring is submitted.
    pub(super) fn flush(&mut self) {
        let Some(slot) = self.pool.open.take() else {
            return;
        };
        let s = &mut self.pool.slots[slot];
        let e = if s.count == 1 {
            // A send with its destination in the entry (sendto, kernel 6.0 like the
            // multishot receive the probe requires) rather than a sendmsg: the kernel
            // then neither copies a msghdr nor imports an iovec per datagram (about 4% of
            // the loop's CPU in a profile at saturation).
            // MSG_DONTWAIT: a full socket buffer drops the datagram, as the epoll loop
            // does, instead of parking the send (and its slot) until there is room.
            opcode::Send::new(types::Fd(s.fd), s.buf.as_ptr(), s.len as u32)
                .dest_addr((&s.addr as *const libc::sockaddr_storage).cast())
                .dest_addr_len(addr_len(&s.addr))
                .flags(libc::MSG_DONTWAIT)
                .build()
        } else {
            gso_header(s);
            opcode::SendMsg::new(types::Fd(s.fd), &s.hdr)
                .flags(libc::MSG_DONTWAIT as u32)
                .build()
        };
        if !push(self.ring, &e.user_data(token(SEND, slot))) {
            let s = &self.pool.slots[slot];
            if let Some(to) = s.to {
                for d in s.buf[..s.len].chunks(s.segment) {
                    send_now(s.fd, d, &to, self.errors);
                }
            }
            self.pool.free.push(slot);
        }
    }
}

impl Outbox for RingOutbox<'_> {
    fn push(&mut self, fd: RawFd, bytes: &[u8], to: &SocketAddr) {
        if let Some(open) = self.pool.open {
            let s = &mut self.pool.slots[open];
            if s.fd == fd
                && s.segment == bytes.len()
                && s.count < GSO_SEGMENTS
                && s.len + bytes.len() <= SEND_SLOT_BYTES
                && s.to.as_ref() == Some(to)
            {
                s.buf[s.len..s.len + bytes.len()].copy_from_slice(bytes);
                s.len += bytes.len();
                s.count += 1;
                return;
            }
            self.flush();
        }
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
        s.addr = crate::udp::sockaddr::to_storage(to).0;
        s.fd = fd;
        s.to = Some(*to);
        s.len = bytes.len();
        s.segment = bytes.len();
        s.count = 1;
        self.pool.open = Some(slot);
        if bytes.is_empty() || bytes.len() > GSO_SEGMENT_MAX {
            self.flush();
        }
    }
}

fn addr_len(addr: &libc::sockaddr_storage) -> libc::socklen_t {
    let len = if i32::from(addr.ss_family) == libc::AF_INET6 {
        std::mem::size_of::<libc::sockaddr_in6>()
    } else {
        std::mem::size_of::<libc::sockaddr_in>()
    };
    len as libc::socklen_t
}

/// Points the slot's msghdr at its bytes and destination with a `UDP_SEGMENT` control
/// message of its datagrams' size.
fn gso_header(s: &mut SendSlot) {
    s.iov = libc::iovec {
        iov_base: s.buf.as_mut_ptr().cast(),
        iov_len: s.len,
    };
    s.hdr.msg_name = (&mut s.addr as *mut libc::sockaddr_storage).cast();
    s.hdr.msg_namelen = addr_len(&s.addr);
    s.hdr.msg_iov = &mut s.iov;
    s.hdr.msg_iovlen = 1;
    s.hdr.msg_flags = 0;
    s.control = [0; 4];
    s.hdr.msg_control = s.control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    s.hdr.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as _;
    // SAFETY: msg_control points at `control`, which holds CMSG_SPACE(2) bytes, aligned
    // for cmsghdr (u64); CMSG_FIRSTHDR/CMSG_DATA stay inside it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&s.hdr);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), s.segment as u16);
    }
}

fn send_now(fd: RawFd, bytes: &[u8], to: &SocketAddr, errors: &mut SendErrors) {
    if let Err(e) = crate::udp::socket::send_raw(fd, bytes, to) {
        errors.record(e);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{SocketAddr, UdpSocket},
        os::fd::AsRawFd,
        time::Duration,
    };

    use io_uring::IoUring;

    use super::{RingOutbox, SEND_SLOTS, SendPool};
    use crate::{
        shard::slab::Key,
        udp::plane::{Outbox, SendErrors},
    };

    fn pair() -> (UdpSocket, UdpSocket) {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (tx, rx)
    }

    fn received(rx: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| {
                let mut b = [0u8; 2048];
                let k = rx.recv(&mut b).unwrap();
                b[..k].to_vec()
            })
            .collect()
    }

    /// Pushes `sent` through `from` to `to`, then queues the open run if `flush`.
    fn push_all(
        ring: &mut IoUring,
        pool: &mut SendPool,
        errors: &mut SendErrors,
        (from, to): (&UdpSocket, SocketAddr),
        sent: &[Vec<u8>],
        flush: bool,
    ) {
        let mut out = RingOutbox { ring, pool, errors };
        for d in sent {
            out.push(from.as_raw_fd(), d, &to);
        }
        if flush {
            out.flush();
        }
    }

    #[test]
    fn gathered_runs_arrive_as_the_datagrams_pushed_in_order() {
        let mut ring = IoUring::new(64).unwrap();
        let (tx, rx) = pair();
        let to = rx.local_addr().unwrap();
        let (mut pool, mut errors) = (SendPool::new(), SendErrors::default());
        // 70 of one size (a run of 64, the most one GSO send carries, then one of 6), a
        // shorter one and one of the first size again: four sends.
        let sent: Vec<Vec<u8>> = (0..70u8)
            .map(|i| vec![i; 100])
            .chain([vec![200; 40], vec![201; 100]])
            .collect();
        push_all(&mut ring, &mut pool, &mut errors, (&tx, to), &sent, true);
        ring.submit_and_wait(4).unwrap();
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        assert_eq!(done.len(), 4);
        for (ud, res) in done {
            assert!(res >= 0, "send failed: {res}");
            pool.completed(Key::from_token(ud).1.idx as usize, res, &mut errors);
        }
        assert_eq!(received(&rx, sent.len()), sent);
        assert_eq!(errors.total, 0);
        assert_eq!(pool.free.len(), SEND_SLOTS);
    }

    /// A run of three datagrams queued and refused by the kernel as a whole (a segment
    /// over the route's MTU); `closed`: its socket closed after the submit. What reached
    /// the destination, and the errors counted.
    fn refused_run(closed: bool) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, u64) {
        let mut ring = IoUring::new(8).unwrap();
        let (tx, rx) = pair();
        let to = rx.local_addr().unwrap();
        let (mut pool, mut errors) = (SendPool::new(), SendErrors::default());
        let sent = vec![vec![1u8; 300], vec![2; 300], vec![3; 300]];
        push_all(&mut ring, &mut pool, &mut errors, (&tx, to), &sent, false);
        let slot = pool.open.take().unwrap();
        if closed {
            // Its number may belong to another socket by the completion (here: the same
            // one, still open, which would receive a resend).
            pool.closing([tx.as_raw_fd()].into_iter());
        }
        pool.completed(slot, -libc::EMSGSIZE, &mut errors);
        assert_eq!(pool.free.len(), SEND_SLOTS);
        rx.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 2048];
        while let Ok(k) = rx.recv(&mut b) {
            got.push(b[..k].to_vec());
        }
        (sent, got, errors.total)
    }

    #[test]
    fn a_run_the_kernel_refuses_goes_again_datagram_by_datagram() {
        let (sent, got, errors) = refused_run(false);
        assert_eq!(got, sent);
        assert_eq!(errors, 0);
    }

    #[test]
    fn a_refused_run_of_a_closed_socket_is_dropped_not_resent_on_its_number() {
        let (_, got, errors) = refused_run(true);
        assert!(got.is_empty(), "sent on a closed socket's number: {got:?}");
        assert_eq!(errors, 3);
    }
}
