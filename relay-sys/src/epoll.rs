//! An owned epoll fd, registration by token (the daemon's shard slab uses `Key::token`),
//! and a wait that treats a signal as a turn with no events. Used by the daemon's
//! fallback loops (UDP workers, the TCP/TLS shard) and the load generator.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

pub struct Epoll(OwnedFd);

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; result checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just created, owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// `epoll_ctl(op)` of `fd` for `events`, reported with `token`.
    pub fn ctl(&self, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        ctl(self.0.as_raw_fd(), op, fd, events, token)
    }

    /// Watches `fd` for reading.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, token)
    }

    /// Waits at most `timeout_ms` for events into `events`; how many came (0 after a
    /// signal: the caller simply turns again).
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let room = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: `events` has room for `room` entries.
        let n =
            unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), room, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// `epoll_ctl` on a raw epoll fd (for callers that hold only its number).
pub fn ctl(epoll: RawFd, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: valid fds and event struct.
    if unsafe { libc::epoll_ctl(epoll, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readable_fd_is_reported_with_its_token() {
        let ep = Epoll::new().unwrap();
        let mut fds = [0; 2];
        // SAFETY: two ints for the pipe's ends.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both ends were just created and are owned here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        ep.add(r.as_raw_fd(), 42).unwrap();
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        assert_eq!(ep.wait(&mut events, 0).unwrap(), 0);
        // SAFETY: one byte from a live buffer into our pipe.
        assert_eq!(
            unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) },
            1
        );
        assert_eq!(ep.wait(&mut events, 1000).unwrap(), 1);
        let token = events[0].u64;
        assert_eq!(token, 42);
        assert!(ep.add(-1, 1).is_err());
    }
}
