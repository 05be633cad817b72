//! recvmmsg/sendmmsg slots: buffers, iovecs and headers allocated once and pointed at
//! each other before every call (the pointers are not kept across moves). The daemon's
//! UDP loops use them with an address per datagram, the load generator without
//! (connected sockets).

use std::{io, os::fd::RawFd};

/// `batch` datagrams of up to `SIZE` bytes each.
pub struct Slots<const SIZE: usize> {
    pub bufs: Vec<[u8; SIZE]>,
    /// One per buffer when addressed, empty otherwise.
    pub addrs: Vec<libc::sockaddr_storage>,
    pub iovs: Vec<libc::iovec>,
    pub hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside only ever point into this struct's own heap buffers
// and are rewritten by `link` before every syscall; moving it to another thread is fine.
unsafe impl<const SIZE: usize> Send for Slots<SIZE> {}

impl<const SIZE: usize> Slots<SIZE> {
    /// `addressed`: each datagram carries its peer's address (unconnected sockets).
    pub fn new(batch: usize, addressed: bool) -> Self {
        let batch = batch.max(1);
        Self {
            bufs: vec![[0; SIZE]; batch],
            // SAFETY: all-zero is a valid sockaddr_storage.
            addrs: vec![unsafe { std::mem::zeroed() }; if addressed { batch } else { 0 }],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                batch
            ],
            // SAFETY: all-zero is a valid mmsghdr; `link` sets the pointers.
            hdrs: vec![unsafe { std::mem::zeroed() }; batch],
        }
    }

    /// How many datagrams one call moves at most.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// Points headers `0..n` at their buffer, iovec and address (if addressed). Lengths
    /// are the caller's: `iovs[i].iov_len` (receive: `SIZE`, send: the datagram's) and,
    /// addressed, `msg_namelen`.
    pub fn link(&mut self, n: usize) {
        for i in 0..n {
            self.iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            let m = &mut h.msg_hdr;
            match self.addrs.get_mut(i) {
                Some(a) => m.msg_name = (a as *mut libc::sockaddr_storage).cast(),
                None => {
                    m.msg_name = std::ptr::null_mut();
                    m.msg_namelen = 0;
                }
            }
            m.msg_iov = &mut self.iovs[i];
            m.msg_iovlen = 1;
            m.msg_control = std::ptr::null_mut();
            m.msg_controllen = 0;
            m.msg_flags = 0;
        }
    }

    /// `recvmmsg` into headers `0..n` (linked, lengths set) without blocking; how many
    /// came. No data is `Err(WouldBlock)`.
    pub fn recv(&mut self, fd: RawFd, n: usize) -> io::Result<usize> {
        let n = n.min(self.capacity());
        // SAFETY: the caller linked headers 0..n to buffers owned by self.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(got as usize)
    }

    /// `sendmmsg` of headers `from..to` (linked, lengths set) without blocking; how many
    /// the kernel took.
    pub fn send(&mut self, fd: RawFd, from: usize, to: usize) -> io::Result<usize> {
        let to = to.min(self.capacity());
        if from >= to {
            return Ok(0);
        }
        // SAFETY: the caller linked headers from..to to buffers owned by self.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs[from..to].as_mut_ptr(),
                (to - from) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::{net::UdpSocket, os::fd::AsRawFd};

    use super::Slots;

    #[test]
    fn a_batch_goes_out_and_comes_back_with_its_lengths_and_source() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        let mut tx = Slots::<64>::new(3, false);
        for (i, len) in [5usize, 1, 64].into_iter().enumerate() {
            tx.bufs[i][..len].fill(i as u8 + 1);
            tx.iovs[i].iov_len = len;
        }
        tx.link(3);
        assert_eq!(tx.send(a.as_raw_fd(), 0, 3).unwrap(), 3);
        let mut rx = Slots::<64>::new(4, true);
        rx.link(4);
        for i in 0..4 {
            rx.iovs[i].iov_len = 64;
            rx.hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        let mut got = 0;
        for _ in 0..100 {
            match rx.recv(b.as_raw_fd(), 4) {
                Ok(n) => {
                    got = n;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, 3);
        let lens: Vec<u32> = rx.hdrs[..3].iter().map(|h| h.msg_len).collect();
        assert_eq!(lens, [5, 1, 64]);
        assert_eq!(rx.bufs[2][63], 3);
        let port = a.local_addr().unwrap().port();
        // SAFETY: an AF_INET source fills a sockaddr_in.
        let sin: libc::sockaddr_in =
            unsafe { std::ptr::read((&rx.addrs[0] as *const libc::sockaddr_storage).cast()) };
        assert_eq!(u16::from_be(sin.sin_port), port);
        assert!(matches!(
            rx.recv(b.as_raw_fd(), 4),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        ));
        assert_eq!(tx.send(a.as_raw_fd(), 2, 2).unwrap(), 0);
    }
}
