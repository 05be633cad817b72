//! `[tcp] workers`: the TCP/TLS listeners shared by several event-loop threads.
//!
//! Each worker has its own member of every listener's SO_REUSEPORT group (one accept
//! queue per worker, no acceptor thread and no hand-off: a connection is accepted by the
//! worker that serves it until it closes). Which member the kernel picks is not its
//! default 4-tuple hash: a classic BPF program on the group picks by the client's source
//! (IPv4 address, IPv6 /64), so every connection of one client lands on one worker. RFC
//! 6062 needs that: a client's data connection (ConnectionBind) must reach the worker
//! whose core holds its allocation and the pending peer connection. The limits are
//! counted across workers all the same ([`super::limits::SharedAdmission`]): a group
//! member that is gone (a worker that ended) sends its clients to the kernel's hash.

use std::{
    io,
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd,
};

use socket2::{Domain, Protocol, Socket, Type};

use super::BACKLOG;

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h): class | size or op | source.
/// BPF_LD | BPF_W | BPF_ABS (both 0).
const LD_W_ABS: u16 = 0x20;
/// BPF_LD (0) | BPF_B | BPF_ABS.
const LD_B_ABS: u16 = 0x10 | 0x20;
const ALU_RSH_K: u16 = 0x04 | 0x70;
const ALU_XOR_X: u16 = 0x04 | 0xa0 | 0x08;
const ALU_MUL_K: u16 = 0x04 | 0x20;
const ALU_MOD_K: u16 = 0x04 | 0x90;
const JMP_JEQ_K: u16 = 0x05 | 0x10;
const JMP_JA: u16 = 0x05;
const MISC_TAX: u16 = 0x07;
const RET_A: u16 = 0x06 | 0x10;
/// Loads relative to the IP header (the program starts at the TCP payload).
const NET: u32 = libc::SKF_NET_OFF as u32;

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The group member (worker index) for a connection: a mix of the source IPv4 address,
/// or of the first 64 bits of an IPv6 source, modulo `workers`. A dual-stack listener
/// sees IPv4 packets as IPv4, so a client has one worker on both kinds of listener.
pub fn steering_program(workers: u32) -> Vec<libc::sock_filter> {
    vec![
        op(LD_B_ABS, 0, 0, NET),      // 0: A = version << 4 | IHL
        op(ALU_RSH_K, 0, 0, 4),       // 1
        op(JMP_JEQ_K, 2, 0, 6),       // 2: IPv6 → 5
        op(LD_W_ABS, 0, 0, NET + 12), // 3: A = IPv4 source
        op(JMP_JA, 0, 0, 4),          // 4: → 9 (X is 0: the xor keeps A)
        op(LD_W_ABS, 0, 0, NET + 8),  // 5: IPv6 source, bits 0-31
        op(MISC_TAX, 0, 0, 0),        // 6
        op(LD_W_ABS, 0, 0, NET + 12), // 7: bits 32-63
        op(ALU_XOR_X, 0, 0, 0),       // 8
        // Fibonacci hashing: neighbouring addresses go to different workers.
        op(ALU_MUL_K, 0, 0, 0x9E37_79B1), // 9
        op(ALU_RSH_K, 0, 0, 16),          // 10
        op(ALU_MOD_K, 0, 0, workers),     // 11
        op(RET_A, 0, 0, 0),               // 12
    ]
}

/// The worker [`steering_program`] picks for `ip`, computed the same way (tests).
#[cfg(test)]
fn steered(ip: std::net::IpAddr, workers: u32) -> u32 {
    let word = match ip {
        std::net::IpAddr::V4(v4) => u32::from(v4),
        std::net::IpAddr::V6(v6) => {
            let b = v6.octets();
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
                ^ u32::from_be_bytes([b[4], b[5], b[6], b[7]])
        }
    };
    (word.wrapping_mul(0x9E37_79B1) >> 16) % workers
}

/// One listener's group: member `i` is worker `i`'s. `by_source`: steer by the sender's
/// address. Off behind a load balancer (`proxy_protocol`): every connection comes from the
/// balancer's few addresses, so steering would put them all on one worker; the kernel's
/// per-connection hash spreads them instead (RFC 6062 data connections behind a balancer
/// may then miss their allocation's worker: browsers never open them).
pub fn bind_group(
    addr: SocketAddr,
    workers: usize,
    by_source: bool,
) -> io::Result<Vec<TcpListener>> {
    if workers <= 1 {
        return Ok(vec![bind_one(addr, false)?]);
    }
    // SO_REUSEPORT would let another relay (or any same-user program asking for it) join
    // the group and take a share of the clients: the address must be free first.
    drop(bind_one(addr, false)?);
    let group = (0..workers)
        .map(|_| bind_one(addr, true))
        .collect::<io::Result<Vec<_>>>()?;
    if !by_source {
        return Ok(group);
    }
    if let Err(e) = steer(&group[0], workers as u32) {
        tracing::warn!(listen = %addr, error = %e,
            "cannot steer TCP/TLS connections by client address; the kernel spreads them by connection instead, \
             so an RFC 6062 data connection (ConnectionBind) may reach a worker without its allocation (400)");
    }
    Ok(group)
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

/// Attaches the steering program to the group of `member` (one member is enough).
fn steer(member: &TcpListener, workers: u32) -> io::Result<()> {
    let mut prog = steering_program(workers);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: setsockopt with a valid program description of the size passed; the kernel
    // copies the program before returning.
    let r = unsafe {
        libc::setsockopt(
            member.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr, TcpStream},
        time::Duration,
    };

    use super::*;

    #[test]
    fn spreads_sources_and_keeps_an_ipv6_slash_64_together() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        let on: Vec<u32> = (1..=64)
            .map(|i| steered(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)), 4))
            .collect();
        for w in 0..4 {
            assert!(
                on.contains(&w),
                "worker {w} gets none of 64 neighbours: {on:?}"
            );
        }
        assert_eq!(
            steered(a("2001:db8:1:2::a"), 4),
            steered(a("2001:db8:1:2:ffff::b"), 4)
        );
    }

    /// Connections from one source all reach one member of the group, and sources
    /// spread over the members (the kernel runs the program: loopback, 127.0.0.x
    /// sources).
    #[test]
    fn the_kernel_steers_by_source_address() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let group = bind_group(addr, 2, true).unwrap();
        for l in &group {
            l.set_nonblocking(true).unwrap();
        }
        let mut held = Vec::new();
        for src in 1..=8u8 {
            let from = Ipv4Addr::new(127, 0, 0, 10 + src);
            let want = steered(IpAddr::V4(from), 2) as usize;
            for _ in 0..3 {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
                s.connect(&addr.into()).unwrap();
                held.push(TcpStream::from(s));
                let got = accept_somewhere(&group);
                assert_eq!(got, want, "source {from}");
            }
        }
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
