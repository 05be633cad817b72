//! The channel between the old and the new process: a `SOCK_SEQPACKET` socket pair, so
//! that every message keeps its boundary and the descriptors sent with it (SCM_RIGHTS)
//! arrive with exactly that message. A message is one kind byte and a payload; the
//! snapshot goes in chunks below the socket's buffer size.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

/// Descriptors per message: the kernel takes at most 253 (SCM_MAX_FD).
pub const FDS_PER_MESSAGE: usize = 200;
/// Payload bytes per message, well below the default socket buffer.
pub const CHUNK: usize = 32 * 1024;

/// A connected pair, both ends close-on-exec (the child's end is moved to fd 3 on spawn).
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into the array; checked below.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just created and belong to nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends `kind` and `payload`, with `fds` attached (duplicated into the receiver).
pub fn send(sock: &OwnedFd, kind: u8, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= FDS_PER_MESSAGE && payload.len() <= CHUNK);
    let mut bytes = Vec::with_capacity(1 + payload.len());
    bytes.push(kind);
    bytes.extend_from_slice(payload);
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    let mut control = vec![0u8; if fds.is_empty() { 0 } else { space }];
    // SAFETY: zeroed msghdr is a valid empty header; fields set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() as _;
        // SAFETY: the control buffer holds CMSG_SPACE(fd_bytes) bytes, enough for one
        // header and the descriptors.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fd_bytes as usize,
            );
        }
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One message: its kind, payload and descriptors. EOF (the peer closed or exited) is
/// `UnexpectedEof`; no message within `timeout` is `TimedOut`.
pub fn recv(sock: &OwnedFd, timeout: Duration) -> io::Result<(u8, Vec<u8>, Vec<OwnedFd>)> {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    if ready < 0 {
        return Err(io::Error::last_os_error());
    }
    if ready == 0 {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
    }
    let mut bytes = vec![0u8; 1 + CHUNK];
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((FDS_PER_MESSAGE * 4) as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: as in `send`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    // SAFETY: msg points at live buffers; received descriptors are close-on-exec.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / 4 {
                    let fd = std::ptr::read_unaligned(data.add(i * 4).cast::<RawFd>());
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors were cut off (MSG_CTRUNC)"));
    }
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other process closed the handover channel",
        ));
    }
    bytes.truncate(n as usize);
    let kind = bytes.remove(0);
    Ok((kind, bytes, fds))
}

/// Sends `fds` in messages of `kind` (no payload), [`FDS_PER_MESSAGE`] at a time.
pub fn send_fds(sock: &OwnedFd, kind: u8, fds: &[RawFd]) -> io::Result<()> {
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        send(sock, kind, &[], chunk)?;
    }
    Ok(())
}

/// Sends `bytes` in messages of `kind`, then an empty message of `end`.
pub fn send_chunked(sock: &OwnedFd, kind: u8, end: u8, bytes: &[u8]) -> io::Result<()> {
    for chunk in bytes.chunks(CHUNK) {
        send(sock, kind, chunk, &[])?;
    }
    send(sock, end, &[], &[])
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    #[test]
    fn descriptors_and_chunked_payloads_cross_and_keep_their_order() {
        let (a, b) = pair().unwrap();
        let socks: Vec<UdpSocket> = (0..450)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let fds: Vec<RawFd> = socks.iter().map(AsRawFd::as_raw_fd).collect();
        let text: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sender = std::thread::spawn(move || {
            send_fds(&a, b'F', &fds).unwrap();
            send_chunked(&a, b'J', b'E', &text).unwrap();
            a
        });
        let mut got_fds = Vec::new();
        let mut got_text = Vec::new();
        loop {
            let (kind, payload, fds) = recv(&b, Duration::from_secs(5)).unwrap();
            match kind {
                b'F' => got_fds.extend(fds),
                b'J' => got_text.extend(payload),
                b'E' => break,
                k => panic!("unexpected kind {k}"),
            }
        }
        let a = sender.join().unwrap();
        assert_eq!(got_text.len(), 100_000);
        assert!(
            got_text
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i % 251) as u8)
        );
        assert_eq!(got_fds.len(), socks.len());
        for (sock, fd) in socks.iter().zip(got_fds) {
            let theirs = UdpSocket::from(fd);
            assert_eq!(theirs.local_addr().unwrap(), sock.local_addr().unwrap());
        }
        drop(a);
        let eof = recv(&b, Duration::from_secs(5)).unwrap_err();
        assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
    }
}
