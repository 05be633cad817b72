//! The datagrams both io_uring loops send from relay and listener sockets: a pool of
//! slots the kernel reads from until each send's completion. A loop turn's sends are put
//! on the ring together and leave with its next `io_uring_enter`: one system call for
//! all of them instead of one `sendto` each.
//!
//! Datagrams of one size leaving one socket for one destination back to back (one busy
//! allocation: a video call, a screen share) are gathered into one slot and leave as one
//! UDP GSO send (`UDP_SEGMENT`): the kernel walks its send path once for the run and
//! cuts the datagrams at the end, the same datagrams on the wire. Anything else ends the
//! run first, so datagrams leave in the order they were pushed.
//!
//! A datagram too large for a slot, or pushed while every slot is taken, is refused: the
//! caller sends it itself with `sendto`, so the pool bounds memory without dropping
//! anything. Each send carries a tag of the caller's (the TCP path: which client and
//! relay socket it was for, to stall that client when the socket had no room).

use std::{io, net::SocketAddr, os::fd::RawFd};

use io_uring::{opcode, squeue, types};

use relay_sys::sockaddr::{self, send_raw};

/// Sends in flight at once; beyond, datagrams go out with a plain sendto.
pub const SEND_SLOTS: usize = 1024;
/// Bytes of one send slot: room for a GSO run (the kernel takes at most 64 KiB per send).
/// The pool is zeroed lazily (calloc), so a slot costs memory only for the pages a send
/// wrote: one for a media datagram.
pub const SEND_SLOT_BYTES: usize = 65_507;
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

/// One send: its bytes and destination, and for a GSO run the msghdr, iovec and control
/// message pointing at them. Boxed in a slice that never moves, so the kernel may read
/// it until the completion. All-zero is a valid value (the pool is calloc'ed).
#[derive(Clone, Copy)]
struct Slot {
    buf: [u8; SEND_SLOT_BYTES],
    addr: libc::sockaddr_storage,
    iov: libc::iovec,
    hdr: libc::msghdr,
    control: Control,
    /// The socket; -1 once it closed with the send in flight (never sent again on its
    /// number, which may name another socket by then).
    fd: RawFd,
    /// Bytes in `buf`, size and number of its datagrams.
    len: usize,
    segment: usize,
    count: u16,
}

/// A send that failed, for the caller to count or act on.
pub struct Failed<'a, T> {
    pub tag: T,
    pub to: SocketAddr,
    /// The first datagram that failed (the slot is free again: copy it to keep it).
    pub bytes: &'a [u8],
    /// Datagrams lost with it (a GSO run fails as a whole), at least 1.
    pub lost: u16,
    pub error: io::Error,
}

pub struct SendPool<T> {
    slots: Box<[Slot]>,
    /// Per slot: destination and tag while it is taken (outside the zeroed slots: an
    /// all-zero `Option` is not guaranteed to be `None`).
    meta: Vec<Option<(SocketAddr, T)>>,
    free: Vec<usize>,
    /// The slot of the run being gathered.
    open: Option<usize>,
    /// Runs complete and not yet on the ring, in push order.
    ready: Vec<usize>,
}

// SAFETY: the raw pointers in the slots point into the pool's own boxed slice; the pool
// moves to its loop's thread once and is used there only.
unsafe impl<T: Send> Send for SendPool<T> {}

impl<T: Copy> Default for SendPool<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy> SendPool<T> {
    pub fn new() -> Self {
        // SAFETY: all-zero is valid for these C structs and plain fields; pointers are
        // set per send.
        let slots = unsafe { Box::<[Slot]>::new_zeroed_slice(SEND_SLOTS).assume_init() };
        Self {
            slots,
            meta: vec![None; SEND_SLOTS],
            free: (0..SEND_SLOTS).rev().collect(),
            open: None,
            ready: Vec::new(),
        }
    }

    /// Slots taken: gathering, waiting for the ring, or in flight.
    pub fn in_flight(&self) -> usize {
        SEND_SLOTS - self.free.len()
    }

    /// Copies `bytes` for `to` through `fd` into the pool: appended to the run being
    /// gathered when it has the same socket, destination and datagram size, else into a
    /// slot of its own. `false` when it is too large or every slot is taken: the caller
    /// sends it itself.
    pub fn push(&mut self, fd: RawFd, bytes: &[u8], to: &SocketAddr, tag: T) -> bool {
        if let Some(open) = self.open {
            let s = &mut self.slots[open];
            if s.fd == fd
                && s.segment == bytes.len()
                && s.count < GSO_SEGMENTS
                && s.len + bytes.len() <= SEND_SLOT_BYTES
                && self.meta[open].is_some_and(|(t, _)| t == *to)
            {
                s.buf[s.len..s.len + bytes.len()].copy_from_slice(bytes);
                s.len += bytes.len();
                s.count += 1;
                return true;
            }
            self.seal();
        }
        if bytes.len() > SEND_SLOT_BYTES {
            return false;
        }
        // Every slot is in flight (the far side is slower than we are): no reason to hold
        // this one back.
        let Some(slot) = self.free.pop() else {
            return false;
        };
        let s = &mut self.slots[slot];
        s.buf[..bytes.len()].copy_from_slice(bytes);
        s.addr = sockaddr::to_storage(to).0;
        s.fd = fd;
        s.len = bytes.len();
        s.segment = bytes.len();
        s.count = 1;
        self.meta[slot] = Some((*to, tag));
        self.open = Some(slot);
        if bytes.is_empty() || bytes.len() > GSO_SEGMENT_MAX {
            self.seal();
        }
        true
    }

    /// Ends the run being gathered: it goes to the ring with the next [`submit`](Self::submit).
    pub fn seal(&mut self) {
        if let Some(slot) = self.open.take() {
            self.ready.push(slot);
        }
    }

    /// Seals the open run and puts every complete run on the ring through `queue`
    /// (`false`: the ring takes nothing now; what is left goes at the next call), each
    /// with the user data `user_data(slot)`.
    pub fn submit(
        &mut self,
        mut queue: impl FnMut(&squeue::Entry) -> bool,
        mut user_data: impl FnMut(usize) -> u64,
    ) {
        self.seal();
        let mut sent = 0;
        for &slot in &self.ready {
            let e = entry(&mut self.slots[slot]).user_data(user_data(slot));
            if !queue(&e) {
                break;
            }
            sent += 1;
        }
        self.ready.drain(..sent);
    }

    /// `fds` are about to close. Runs on them not yet on the ring are dropped (the
    /// socket's allocation ended); those in flight complete, but a refused one is not
    /// sent again on their numbers.
    pub fn closing(&mut self, fds: impl IntoIterator<Item = RawFd>) {
        for fd in fds {
            if self.open.is_some_and(|s| self.slots[s].fd == fd) {
                self.ready.extend(self.open.take());
            }
            let (slots, meta, free) = (&self.slots, &mut self.meta, &mut self.free);
            self.ready.retain(|&s| {
                let keep = slots[s].fd != fd;
                if !keep {
                    meta[s] = None;
                    free.push(s);
                }
                keep
            });
            // Only taken slots can hold a send of `fd`: their meta is contiguous, the
            // slots themselves are 64 KiB apart (a closing socket per ended allocation
            // would otherwise touch 1,024 pages).
            for (s, _) in self.meta.iter().enumerate().filter(|(_, m)| m.is_some()) {
                if self.slots[s].fd == fd {
                    self.slots[s].fd = -1;
                }
            }
        }
    }

    /// The completion of the send in `slot`; the slot is free again. A GSO run the
    /// kernel refused as a whole (a segment over the route's MTU, a device without
    /// segmentation) goes again datagram by datagram, as it would have without GSO.
    /// What failed is returned.
    pub fn completed(&mut self, slot: usize, res: i32) -> Option<Failed<'_, T>> {
        let (to, tag) = self.meta.get_mut(slot)?.take()?;
        self.free.push(slot);
        if res >= 0 {
            return None;
        }
        let s = &self.slots[slot];
        let error = io::Error::from_raw_os_error(-res);
        let gso_refused = s.count > 1
            && matches!(
                -res,
                libc::EINVAL | libc::EMSGSIZE | libc::EIO | libc::ENOTSUP
            );
        // Its socket closed after the submit: the number may name another socket by
        // now, so the run is dropped, not sent there.
        if !gso_refused || s.fd < 0 {
            return Some(Failed {
                tag,
                to,
                bytes: &s.buf[..s.segment.min(s.len)],
                lost: s.count,
                error,
            });
        }
        let mut failed: Option<(&[u8], io::Error)> = None;
        let mut lost = 0;
        for d in s.buf[..s.len].chunks(s.segment) {
            if let Err(e) = send_raw(s.fd, d, &to) {
                lost += 1;
                failed.get_or_insert((d, e));
            }
        }
        failed.map(|(bytes, error)| Failed {
            tag,
            to,
            bytes,
            lost,
            error,
        })
    }
}

/// The ring entry of a slot's send. MSG_DONTWAIT: a full socket buffer completes with
/// EAGAIN at once, as `sendto` would, instead of parking the send (and its slot) until
/// there is room.
fn entry(s: &mut Slot) -> squeue::Entry {
    if s.count == 1 {
        // A send with its destination in the entry (sendto, kernel 6.0 like the
        // multishot receive both loops' probes require) rather than a sendmsg: the kernel
        // then neither copies a msghdr nor imports an iovec per datagram (about 4% of the
        // loop's CPU in a profile at saturation).
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
fn gso_header(s: &mut Slot) {
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

#[cfg(test)]
mod tests;
