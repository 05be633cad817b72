//! The prefixes this host's kernel delivers locally (RTN_LOCAL routes of the `local`
//! table, IPv4 and IPv6): every address of the host, secondary and SLAAC ones included, and
//! AnyIP ranges (`ip route add local 192.0.2.0/24 dev lo`). The peer policy refuses peers
//! there, so a client cannot reach the host's own services through a relay.
//!
//! Kept current by a thread subscribed to the kernel's route notifications: a change in the
//! `local` table triggers a full re-dump (no incremental bookkeeping to get wrong), and a
//! re-dump every [`REDUMP`] covers notifications lost to a full socket buffer. The dump
//! and the notifications are a few lines of netlink over `libc` rather than a netlink
//! crate: one request, one fixed message layout.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use ipnet::IpNet;

/// Re-dump at least this often, whatever the notifications said.
pub const REDUMP: Duration = Duration::from_secs(30);

const NLMSG_HDR: usize = 16;
const RTMSG: usize = 12;
const RTA_HDR: usize = 4;
const RECV_BUF: usize = 64 * 1024;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn netlink_socket(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa.nl_groups = groups;
    // SAFETY: sa is a valid sockaddr_nl of the given length.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn recv(fd: &OwnedFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The RTM_GETROUTE dump request for every family.
fn dump_request(seq: u32) -> [u8; NLMSG_HDR + RTMSG] {
    let mut m = [0u8; NLMSG_HDR + RTMSG];
    m[0..4].copy_from_slice(&((NLMSG_HDR + RTMSG) as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&libc::RTM_GETROUTE.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    // rtmsg: family AF_UNSPEC (all), the rest zero; the table is filtered here.
    m
}

/// Dumps the kernel's locally delivered prefixes now.
pub fn dump() -> io::Result<Vec<IpNet>> {
    let fd = netlink_socket(0)?;
    let req = dump_request(1);
    // SAFETY: req is valid for its length; the kernel is the default destination.
    let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; RECV_BUF];
    let mut out = Vec::new();
    loop {
        let n = recv(&fd, &mut buf, 0)?;
        if parse(&buf[..n], &mut out)? == Parsed::Done {
            break;
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    More,
    Done,
}

/// Adds the RTN_LOCAL routes of the `local` table found in `buf` (netlink messages) to
/// `out`; `Done` at NLMSG_DONE.
fn parse(mut buf: &[u8], out: &mut Vec<IpNet>) -> io::Result<Parsed> {
    while buf.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        if len < NLMSG_HDR || len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        let body = &buf[NLMSG_HDR..len];
        match kind as libc::c_int {
            libc::NLMSG_DONE => return Ok(Parsed::Done),
            libc::NLMSG_ERROR => {
                let errno = body
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    .unwrap_or(0);
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(-errno));
                }
            }
            _ if kind == libc::RTM_NEWROUTE => {
                if let Some(net) = local_route(body) {
                    out.push(net);
                }
            }
            _ => {}
        }
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(Parsed::More)
}

/// The prefix of one RTM_NEWROUTE body if it is an RTN_LOCAL route of the `local` table.
fn local_route(body: &[u8]) -> Option<IpNet> {
    let rtm = body.get(..RTMSG)?;
    let (family, dst_len, table, kind) = (rtm[0], rtm[1], rtm[4], rtm[7]);
    if kind != libc::RTN_LOCAL {
        return None;
    }
    let mut table = u32::from(table);
    let mut dst: Option<IpAddr> = None;
    let mut attrs = &body[RTMSG..];
    while attrs.len() >= RTA_HDR {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < RTA_HDR || len > attrs.len() {
            break;
        }
        let data = &attrs[RTA_HDR..len];
        match ty {
            libc::RTA_TABLE if data.len() == 4 => {
                table = u32::from_ne_bytes(data.try_into().expect("4 bytes"));
            }
            libc::RTA_DST => {
                dst = match (family as libc::c_int, data.len()) {
                    (libc::AF_INET, 4) => {
                        Some(Ipv4Addr::from(<[u8; 4]>::try_from(data).ok()?).into())
                    }
                    (libc::AF_INET6, 16) => {
                        Some(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?).into())
                    }
                    _ => None,
                };
            }
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    if table != u32::from(libc::RT_TABLE_LOCAL) {
        return None;
    }
    let dst = dst.or(match family as libc::c_int {
        libc::AF_INET => Some(Ipv4Addr::UNSPECIFIED.into()),
        libc::AF_INET6 => Some(Ipv6Addr::UNSPECIFIED.into()),
        _ => None,
    })?;
    IpNet::new(dst, dst_len).ok().map(|n| n.trunc())
}

/// Whether a notification batch in `buf` touches the `local` table.
fn touches_local_table(mut buf: &[u8]) -> bool {
    while buf.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        if len < NLMSG_HDR || len > buf.len() {
            return true;
        }
        let local = buf
            .get(NLMSG_HDR + 4)
            .is_some_and(|t| *t == libc::RT_TABLE_LOCAL);
        if (kind == libc::RTM_NEWROUTE || kind == libc::RTM_DELROUTE) && local {
            return true;
        }
        buf = &buf[align4(len).min(buf.len())..];
    }
    false
}

/// Watches the routing table and calls `changed` with the new prefix list whenever the
/// locally delivered prefixes differ from `current`. Runs for the life of the process (a
/// detached thread). Errors: the subscription could not be made.
pub fn watch(
    mut current: Vec<IpNet>,
    changed: impl Fn(&[IpNet]) + Send + 'static,
) -> io::Result<()> {
    let groups = (libc::RTMGRP_IPV4_ROUTE | libc::RTMGRP_IPV6_ROUTE) as u32;
    let fd = netlink_socket(groups)?;
    let timeout = libc::timeval {
        tv_sec: REDUMP.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: timeout is a valid timeval of the given length.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    std::thread::Builder::new()
        .name("local-routes".into())
        .spawn(move || {
            let mut buf = vec![0u8; RECV_BUF];
            loop {
                let redump = match recv(&fd, &mut buf, 0) {
                    Ok(n) => touches_local_table(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                    // Timeout (SO_RCVTIMEO), or notifications lost (ENOBUFS): look again.
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.raw_os_error() == Some(libc::ENOBUFS) =>
                    {
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e,
                            "route notifications failed; re-reading the local routing table every {} s instead",
                            REDUMP.as_secs());
                        std::thread::sleep(REDUMP);
                        true
                    }
                };
                if !redump {
                    continue;
                }
                // A burst (an interface coming up adds several routes) makes one dump.
                while recv(&fd, &mut buf, libc::MSG_DONTWAIT).is_ok() {}
                match dump() {
                    Ok(now) if now != current => {
                        tracing::debug!(before = current.len(), after = now.len(),
                            prefixes = %list(&now), "locally routed addresses changed");
                        changed(&now);
                        current = now;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e,
                        "reading the local routing table failed; the previous relay-host addresses stay in force"),
                }
            }
        })?;
    Ok(())
}

/// The prefixes as one line, for logs.
pub fn list(prefixes: &[IpNet]) -> String {
    prefixes
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((RTA_HDR + data.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(data);
        a.resize(align4(a.len()), 0);
        a
    }

    fn route(family: u8, dst_len: u8, table: u8, kind: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![family, dst_len, 0, 0, table, 2, 254, kind, 0, 0, 0, 0];
        for a in attrs {
            body.extend_from_slice(a);
        }
        message(libc::RTM_NEWROUTE, &body)
    }

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m.resize(align4(m.len()), 0);
        m
    }

    #[test]
    fn keeps_local_routes_of_the_local_table() {
        let v4 = libc::AF_INET as u8;
        let v6 = libc::AF_INET6 as u8;
        let local = libc::RT_TABLE_LOCAL;
        let mut buf = Vec::new();
        buf.extend(route(
            v4,
            32,
            local,
            libc::RTN_LOCAL,
            &[attr(1, &[192, 0, 2, 50])],
        ));
        buf.extend(route(
            v4,
            8,
            local,
            libc::RTN_LOCAL,
            &[attr(1, &[127, 0, 0, 0])],
        ));
        // Broadcast in the local table, and a unicast route of the main table: not ours.
        buf.extend(route(
            v4,
            32,
            local,
            libc::RTN_BROADCAST,
            &[attr(1, &[192, 0, 2, 255])],
        ));
        buf.extend(route(
            v4,
            24,
            254,
            libc::RTN_UNICAST,
            &[attr(1, &[192, 0, 2, 0])],
        ));
        // The table in RTA_TABLE wins over the byte in rtmsg.
        let mut addr6 = [0u8; 16];
        addr6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        addr6[15] = 0x77;
        buf.extend(route(
            v6,
            128,
            252,
            libc::RTN_LOCAL,
            &[attr(15, &255u32.to_ne_bytes()), attr(1, &addr6)],
        ));
        let mut out = Vec::new();
        assert_eq!(parse(&buf, &mut out).unwrap(), Parsed::More);
        let want: Vec<IpNet> = ["192.0.2.50/32", "127.0.0.0/8", "2001:db8::77/128"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(out, want);
        assert_eq!(
            parse(&message(libc::NLMSG_DONE as u16, &[0; 4]), &mut out).unwrap(),
            Parsed::Done
        );
        let err = message(libc::NLMSG_ERROR as u16, &(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            parse(&err, &mut out).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        assert!(touches_local_table(&route(
            v4,
            32,
            local,
            libc::RTN_LOCAL,
            &[]
        )));
        assert!(!touches_local_table(&route(
            v4,
            24,
            254,
            libc::RTN_UNICAST,
            &[]
        )));
    }

    /// The host this runs on has at least its loopback address locally routed.
    #[test]
    fn dump_sees_loopback() {
        let prefixes = dump().expect("netlink route dump");
        let lo: IpAddr = Ipv4Addr::LOCALHOST.into();
        assert!(
            prefixes.iter().any(|n| n.contains(&lo)),
            "no local route for 127.0.0.1 in {prefixes:?}"
        );
    }
}
