//! Socket setup for listeners and relay ports.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use relay_sys::sockopt::{set_buffers, set_int};

/// Big receive buffers absorb bursts while the loop is busy (media is bursty).
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// A non-blocking UDP socket bound to `addr`, with large buffers. Relay sockets use this:
/// without SO_REUSEPORT, a port some other socket holds (another shard's, the TCP path's,
/// another program's) fails loudly instead of silently sharing its traffic.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(addr)?;
    sock.set_nonblocking(true)?;
    set_buffers(sock.as_raw_fd(), SOCKET_BUFFER);
    Ok(sock)
}

/// One member of a listener's SO_REUSEPORT group: each UDP worker binds its own, and the
/// kernel spreads datagrams over them by a hash of the 4-tuple, so a client's datagrams
/// keep reaching the worker that holds its allocation. Call [`claim_listener`] first.
pub fn bind_udp_reuseport(addr: SocketAddr) -> io::Result<UdpSocket> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscall; result checked, then owned.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    if family == libc::AF_INET6 {
        // A specific IPv6 address never takes IPv4 anyway; say so explicitly.
        set_int(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    set_buffers(fd.as_raw_fd(), SOCKET_BUFFER);
    let (storage, len) = relay_sys::sockaddr::to_storage(&addr);
    // SAFETY: storage holds a sockaddr of `len` bytes.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    } < 0
    {
        return Err(with_bind_hint(io::Error::last_os_error()));
    }
    Ok(UdpSocket::from(fd))
}

/// Fails if any socket already holds `addr`. SO_REUSEPORT would otherwise let a second
/// relay (or any same-user program that also asks for it) join the listener's group and
/// silently take a share of the clients.
pub fn claim_listener(addr: SocketAddr) -> io::Result<()> {
    UdpSocket::bind(addr).map(drop).map_err(with_bind_hint)
}

/// What the operator should check when a listener cannot bind, for the errors that
/// have one likely cause.
pub fn bind_hint(e: &io::Error) -> Option<&'static str> {
    match e.raw_os_error()? {
        libc::EADDRNOTAVAIL => Some("the address is not on this host (check the NIC's IP)"),
        libc::EADDRINUSE => Some("another process holds it (coturn? another relay?)"),
        libc::EACCES => Some("ports below 1024 need CAP_NET_BIND_SERVICE or root"),
        _ => None,
    }
}

/// `e` with its [`bind_hint`] appended; the kind is kept. Callers add the
/// `listen ADDR (proto)` prefix.
pub fn with_bind_hint(e: io::Error) -> io::Error {
    match bind_hint(&e) {
        Some(hint) => io::Error::new(e.kind(), format!("{e}: {hint}")),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use std::{io, net::SocketAddr};

    use super::{claim_listener, with_bind_hint};

    #[test]
    fn bind_errors_carry_what_to_check() {
        let hint = |errno| with_bind_hint(io::Error::from_raw_os_error(errno)).to_string();
        assert!(
            hint(libc::EADDRNOTAVAIL)
                .ends_with("the address is not on this host (check the NIC's IP)")
        );
        assert!(
            hint(libc::EADDRINUSE).ends_with("another process holds it (coturn? another relay?)")
        );
        assert!(hint(libc::EACCES).ends_with("ports below 1024 need CAP_NET_BIND_SERVICE or root"));
        // Others pass through unchanged, OS text and all.
        let other = io::Error::from_raw_os_error(libc::EINVAL);
        assert_eq!(
            with_bind_hint(io::Error::from_raw_os_error(libc::EINVAL)).to_string(),
            other.to_string()
        );
    }

    #[test]
    fn a_held_listener_port_is_reported_with_the_hint() {
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = claim_listener(held.local_addr().unwrap()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains("coturn?"), "{e}");
        // 192.0.2.1 (documentation range) is on no host.
        let e = claim_listener("192.0.2.1:3478".parse::<SocketAddr>().unwrap()).unwrap_err();
        assert!(e.to_string().contains("not on this host"), "{e}");
    }
}
