//! Integer socket options.

use std::{io, os::fd::RawFd};

/// `setsockopt` of a `c_int` value.
pub fn set_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: valid fd and a c_int option value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Asks for receive and send buffers of `bytes` each; the kernel caps them at
/// `net.core.[rw]mem_max`. Best effort: a smaller buffer only means loss under bursts.
pub fn set_buffers(fd: RawFd, bytes: libc::c_int) {
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        let _ = set_int(fd, libc::SOL_SOCKET, opt, bytes);
    }
}

/// Like [`set_buffers`], but past `net.core.[rw]mem_max` where the process may
/// (`SO_RCVBUFFORCE` needs CAP_NET_ADMIN): for load tools whose own socket must not be
/// the place a burst is lost. Falls back to the capped request.
pub fn set_buffers_force(fd: RawFd, bytes: libc::c_int) {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int(fd, libc::SOL_SOCKET, force, bytes).is_err() {
            let _ = set_int(fd, libc::SOL_SOCKET, plain, bytes);
        }
    }
}

/// Datagrams the kernel dropped on this socket so far (a full receive buffer, mostly):
/// `SO_MEMINFO`'s `SK_MEMINFO_DROPS`. Lets a load tool tell its own losses from the
/// network's.
pub fn receive_drops(fd: RawFd) -> io::Result<u32> {
    // SK_MEMINFO_VARS is 9 in every kernel that has SO_MEMINFO (4.6+); DROPS is the last.
    const SK_MEMINFO_VARS: usize = 9;
    const SK_MEMINFO_DROPS: usize = 8;
    let mut v = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&v) as libc::socklen_t;
    // SAFETY: valid out-pointers of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            v.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < std::mem::size_of_val(&v) {
        return Err(io::Error::other("SO_MEMINFO answered without a drop count"));
    }
    Ok(v[SK_MEMINFO_DROPS])
}

#[cfg(test)]
mod tests {
    use std::{net::UdpSocket, os::fd::AsRawFd};

    #[test]
    fn buffers_are_raised_and_bad_fds_refused() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        super::set_buffers(s.as_raw_fd(), 1 << 18);
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid out-pointers of the sizes given.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0);
        // The kernel doubles what it grants (bookkeeping); the default is far smaller.
        assert!(v >= 1 << 18, "{v}");
        assert!(super::set_int(-1, libc::SOL_SOCKET, libc::SO_RCVBUF, 1).is_err());
    }

    #[test]
    fn receive_drops_counts_a_full_buffer() {
        use std::net::UdpSocket;
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        super::set_int(rx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 4096).unwrap();
        assert_eq!(super::receive_drops(rx.as_raw_fd()).unwrap(), 0);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            tx.send_to(&[0u8; 1000], rx.local_addr().unwrap()).unwrap();
        }
        // A 4 KiB buffer (the kernel doubles it, then counts skb overhead) holds a few of
        // the 200; loopback delivers synchronously, so the rest are dropped by now.
        assert!(super::receive_drops(rx.as_raw_fd()).unwrap() > 100);
        assert!(super::receive_drops(-1).is_err());
    }
}
