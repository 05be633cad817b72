//! Socket setup for listeners and relay ports.

use std::{io, net::SocketAddr, net::UdpSocket, os::fd::AsRawFd};

/// Big receive buffers absorb bursts while the loop is busy (media is bursty).
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// A non-blocking UDP socket bound to `addr`, with large buffers.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(addr)?;
    sock.set_nonblocking(true)?;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: valid fd and a c_int option value. Failure only means smaller buffers.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &SOCKET_BUFFER as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    Ok(sock)
}

/// `sendto` without blocking; a full socket buffer drops the datagram (UDP semantics)
/// and reports it.
pub fn send_raw(fd: std::os::fd::RawFd, buf: &[u8], to: &SocketAddr) -> io::Result<()> {
    let (s, len) = super::sockaddr::to_storage(to);
    // SAFETY: buf and the address are valid for the call.
    let n = unsafe {
        libc::sendto(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            &s as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
