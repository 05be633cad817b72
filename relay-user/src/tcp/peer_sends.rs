//! Datagrams to peers handed to the io_uring loop instead of one `sendto` each: a pool
//! of slots the kernel reads from until each send's completion. The loop submits what
//! was queued with its next `io_uring_enter`, so a wake-up that relays many datagrams
//! makes one system call for all of them.
//!
//! A datagram too large for a slot, or one queued while every slot is in flight, goes
//! out with a plain `sendto` as before (the caller's fallback), so the pool bounds memory
//! without dropping anything.

use std::{net::SocketAddr, os::fd::RawFd};

use crate::shard::slab::Key;

/// Sends in flight at once.
const SLOTS: usize = 1024;
/// Bytes of one slot: media datagrams fit; larger ones take the `sendto` path.
const SLOT_BYTES: usize = 2048;

/// Who a send was for, to stall its client if the socket refused it (see
/// [`State::peer_send_refused`](super::state::State)).
#[derive(Clone, Copy)]
pub struct Origin {
    pub conn: Key,
    pub relay: Key,
    pub peer: SocketAddr,
}

/// One send in flight: its bytes, destination and the msghdr pointing at them. In a
/// boxed slice that never moves, so the kernel may read it until the completion.
#[derive(Clone, Copy)]
struct Slot {
    buf: [u8; SLOT_BYTES],
    addr: libc::sockaddr_storage,
    iov: libc::iovec,
    hdr: libc::msghdr,
    origin: Option<Origin>,
}

pub struct PeerSends {
    slots: Box<[Slot]>,
    free: Vec<usize>,
    /// Queued since the loop last looked: (slot, relay socket).
    fresh: Vec<(usize, RawFd)>,
}

// SAFETY: the raw pointers in the slots point into the pool's own boxed slice; the pool
// moves to its loop's thread once and is used there only.
unsafe impl Send for PeerSends {}

impl Default for PeerSends {
    fn default() -> Self {
        // SAFETY: all-zero is valid for these C structs; pointers are set per send.
        let empty: Slot = unsafe { std::mem::zeroed() };
        Self {
            slots: vec![empty; SLOTS].into_boxed_slice(),
            free: (0..SLOTS).rev().collect(),
            fresh: Vec::new(),
        }
    }
}

impl PeerSends {
    /// Copies `bytes` into a free slot for the loop to send on `fd`; `false` when it is
    /// too large or no slot is free (the caller sends it itself).
    pub fn queue(&mut self, fd: RawFd, bytes: &[u8], origin: Origin) -> bool {
        if bytes.len() > SLOT_BYTES {
            return false;
        }
        let Some(i) = self.free.pop() else {
            return false;
        };
        let s = &mut self.slots[i];
        s.buf[..bytes.len()].copy_from_slice(bytes);
        let to = socket2::SockAddr::from(origin.peer);
        // SAFETY: `to` holds `to.len()` bytes of a sockaddr, at most a sockaddr_storage.
        unsafe {
            std::ptr::copy_nonoverlapping(
                to.as_ptr().cast::<u8>(),
                (&mut s.addr as *mut libc::sockaddr_storage).cast::<u8>(),
                to.len() as usize,
            );
        }
        s.iov = libc::iovec {
            iov_base: s.buf.as_mut_ptr().cast(),
            iov_len: bytes.len(),
        };
        s.hdr.msg_name = (&mut s.addr as *mut libc::sockaddr_storage).cast();
        s.hdr.msg_namelen = to.len();
        s.hdr.msg_iov = &mut s.iov;
        s.hdr.msg_iovlen = 1;
        s.hdr.msg_control = std::ptr::null_mut();
        s.hdr.msg_controllen = 0;
        s.hdr.msg_flags = 0;
        s.origin = Some(origin);
        self.fresh.push((i, fd));
        true
    }

    /// The sends queued since the last call, for the loop to submit, but those whose
    /// relay socket closed meanwhile (`open` says which are open): the descriptor number
    /// they hold may already name another socket.
    pub fn take_fresh(&mut self, into: &mut Vec<(usize, RawFd)>, open: impl Fn(Key) -> bool) {
        for (i, fd) in std::mem::take(&mut self.fresh) {
            if self.slots[i].origin.is_some_and(|o| open(o.relay)) {
                into.push((i, fd));
            } else {
                self.done(i);
            }
        }
    }

    /// The header the kernel reads for slot `i`'s send.
    pub fn header(&self, i: usize) -> *const libc::msghdr {
        &self.slots[i].hdr
    }

    /// Slot `i`'s send completed (or was never submitted): the slot is free again; what
    /// it held is returned for the caller to act on a refusal.
    pub fn done(&mut self, i: usize) -> Option<(Origin, &[u8])> {
        let s = self.slots.get_mut(i)?;
        let origin = s.origin.take()?;
        self.free.push(i);
        let s = &self.slots[i];
        Some((origin, &s.buf[..s.iov.iov_len]))
    }

    pub fn in_flight(&self) -> usize {
        SLOTS - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(port: u16) -> Origin {
        Origin {
            conn: Key {
                idx: 0,
                generation: 0,
            },
            relay: Key {
                idx: 1,
                generation: 0,
            },
            peer: SocketAddr::from(([192, 0, 2, 1], port)),
        }
    }

    #[test]
    fn slots_hold_bytes_and_address_until_done() {
        let mut p = PeerSends::default();
        assert!(p.queue(3, b"hello", origin(9)));
        assert!(!p.queue(3, &[0; SLOT_BYTES + 1], origin(9)), "too large");
        let mut fresh = Vec::new();
        p.take_fresh(&mut fresh, |_| true);
        assert_eq!(fresh.len(), 1);
        let (slot, fd) = fresh[0];
        assert_eq!(fd, 3);
        // SAFETY: the header points into the pool, which lives.
        let hdr = unsafe { &*p.header(slot) };
        assert_eq!(hdr.msg_iovlen, 1);
        // SAFETY: as above.
        let iov = unsafe { &*hdr.msg_iov };
        // SAFETY: as above.
        let sent = unsafe { std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len) };
        assert_eq!(sent, b"hello");
        assert_eq!(p.in_flight(), 1);
        let (o, bytes) = p.done(slot).expect("in flight");
        assert_eq!((o.peer.port(), bytes), (9, &b"hello"[..]));
        assert!(p.done(slot).is_none(), "freed once");
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn a_full_pool_refuses() {
        let mut p = PeerSends::default();
        for _ in 0..SLOTS {
            assert!(p.queue(3, b"x", origin(1)));
        }
        assert!(!p.queue(3, b"x", origin(1)));
    }

    #[test]
    fn sends_of_closed_relay_sockets_are_not_submitted() {
        let mut p = PeerSends::default();
        assert!(p.queue(3, b"x", origin(1)));
        let mut fresh = Vec::new();
        p.take_fresh(&mut fresh, |_| false);
        assert!(fresh.is_empty());
        assert_eq!(p.in_flight(), 0, "its slot is free again");
    }
}
