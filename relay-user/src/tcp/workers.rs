//! `[tcp] workers`: the TCP/TLS listeners shared by several event-loop threads.
//!
//! Each worker has its own member of every listener's SO_REUSEPORT group (one accept
//! queue per worker, no acceptor thread): the kernel's 4-tuple hash picks the member, so
//! connections spread over the workers one by one, also those of many clients behind one
//! address (a NAT, a load generator) and their TLS handshakes. A connection is served by
//! the worker that accepted it until it closes, except an RFC 6062 data connection whose
//! ConnectionBind names another worker's peer connection: that one moves there (see
//! `state::moves`). The limits are counted across workers all the same
//! ([`super::limits::SharedAdmission`]).

use std::{
    io,
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd,
};

use socket2::{Domain, Protocol, Socket, Type};

use super::BACKLOG;

/// SO_DETACH_REUSEPORT_BPF (asm-generic/socket.h, Linux 5.2); not in every libc.
const SO_DETACH_REUSEPORT_BPF: libc::c_int = 68;

/// One listener's group: member `i` is worker `i`'s.
pub fn bind_group(addr: SocketAddr, workers: usize) -> io::Result<Vec<TcpListener>> {
    if workers <= 1 {
        return Ok(vec![bind_one(addr, false)?]);
    }
    // SO_REUSEPORT would let another relay (or any same-user program asking for it) join
    // the group and take a share of the clients: the address must be free first.
    drop(bind_one(addr, false)?);
    (0..workers).map(|_| bind_one(addr, true)).collect()
}

fn bind_one(addr: SocketAddr, reuseport: bool) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std's TcpListener::bind: a restart binds while old connections are in TIME_WAIT.
    sock.set_reuse_address(true)?;
    if reuseport {
        sock.set_reuse_port(true)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(sock.into())
}

/// A group handed over by an upgrade from a relay that steered connections by client
/// address (a classic BPF program on the group) spreads them by connection again, as
/// this one binds its groups. Nothing attached is fine.
pub fn spread_by_connection(member: &TcpListener) -> io::Result<()> {
    let zero: libc::c_int = 0;
    // SAFETY: setsockopt on our socket with an int the kernel ignores.
    let r = unsafe {
        libc::setsockopt(
            member.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_DETACH_REUSEPORT_BPF,
            (&zero as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match io::Error::last_os_error() {
        _ if r == 0 => Ok(()),
        e if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        e => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpStream, time::Duration};

    use super::*;

    /// Connections from one source address spread over the members (the kernel's
    /// 4-tuple hash, loopback), and a group without a program detaches nothing.
    #[test]
    fn connections_from_one_address_spread_over_the_workers() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let group = bind_group(addr, 2).unwrap();
        spread_by_connection(&group[0]).unwrap();
        for l in &group {
            l.set_nonblocking(true).unwrap();
        }
        let mut held = Vec::new();
        let mut on = [0; 2];
        for _ in 0..32 {
            held.push(TcpStream::connect(addr).unwrap());
            on[accept_somewhere(&group)] += 1;
        }
        // All 32 on one member: a chance of 2^-31 with the hash.
        assert!(on[0] > 0 && on[1] > 0, "{on:?}");
    }

    #[test]
    fn a_busy_address_is_refused_before_joining_a_group() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(bind_group(taken.local_addr().unwrap(), 2).is_err());
    }

    fn accept_somewhere(group: &[TcpListener]) -> usize {
        for _ in 0..200 {
            for (i, l) in group.iter().enumerate() {
                if l.accept().is_ok() {
                    return i;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no member accepted the connection");
    }
}
