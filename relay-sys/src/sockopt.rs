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
}
