//! The TURN fast path run on crafted frames with BPF_PROG_TEST_RUN (needs root).
//!
//! `bpf_fib_lookup` needs routes and neighbours, so every test runs on a thread that
//! unshares its network namespace and builds a small one: veth `xf0` (10.0.0.1/24,
//! fd00::1/64, forwarding on) with permanent neighbour entries for the client
//! (10.0.0.3, fd00::3) and the peer (10.0.0.2, fd00::2). Frames "arrive" on `xf0`, so a
//! successful lookup gives the same interface back and the program answers XDP_TX.
//! Addresses without a neighbour entry exercise the FIB-failure → XDP_PASS path.
//!
//! Send indications are in `xdp_forward/send.rs`, hairpin in `xdp_forward/hairpin.rs`
//! (which also drives the protocol core, `xdp_forward/core_driver.rs`, into the maps),
//! the shield's drops in `xdp_forward/shield.rs`.

#[path = "xdp_forward/core_driver.rs"]
mod core_driver;
#[path = "xdp_forward/hairpin.rs"]
mod hairpin;
#[path = "xdp_forward/send.rs"]
mod send;
#[path = "xdp_forward/shield.rs"]
mod shield;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::Command,
};

use aya::programs::{TestRun, TestRunOptions};
use relay_common::Reason;
use relay_proto::stun::{Class, Data, Message, Method, XorPeerAddress};
use relay_user::xdp::{XdpMaps, XdpPath};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const IF: &str = "xf0";
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread inside a fresh network namespace with the topology above.
fn in_netns<R: Send + 'static>(f: impl FnOnce(&mut Env) -> R + Send + 'static) -> R {
    std::thread::spawn(move || {
        // SAFETY: plain syscall; only this thread changes namespace.
        assert_eq!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            0,
            "unshare (run as root)"
        );
        sh(&["ip", "link", "set", "lo", "up"]);
        sh(&[
            "ip", "link", "add", IF, "type", "veth", "peer", "name", "xf1",
        ]);
        sh(&["ip", "link", "set", IF, "up"]);
        sh(&["ip", "link", "set", "xf1", "up"]);
        sh(&["ip", "addr", "add", "10.0.0.1/24", "dev", IF]);
        sh(&["ip", "addr", "add", "fd00::1/64", "dev", IF, "nodad"]);
        sh(&["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"]);
        sh(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        for (ip, mac) in [
            ("10.0.0.2", "02:00:00:00:00:02"),
            ("10.0.0.3", "02:00:00:00:00:03"),
            ("fd00::2", "02:00:00:00:00:02"),
            ("fd00::3", "02:00:00:00:00:03"),
        ] {
            sh(&[
                "ip",
                "neigh",
                "replace",
                ip,
                "lladdr",
                mac,
                "dev",
                IF,
                "nud",
                "permanent",
            ]);
        }
        let ifindex = {
            let name = std::ffi::CString::new(IF).unwrap();
            // SAFETY: valid C string.
            unsafe { libc::if_nametoindex(name.as_ptr()) }
        };
        // /sys shows the namespace it was mounted in, so ask `ip` for the MAC.
        let link = Command::new("ip")
            .args(["-o", "link", "show", IF])
            .output()
            .unwrap();
        let link = String::from_utf8(link.stdout).unwrap();
        let mac = link
            .split("link/ether ")
            .nth(1)
            .expect("MAC")
            .split(' ')
            .next()
            .unwrap();
        let mac: Vec<u8> = mac
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        let mut xdp = XdpPath::load_with(64).expect("load (run as root)");
        let maps = xdp.take_maps().expect("maps");
        let mut env = Env {
            xdp,
            maps,
            ifindex,
            mac: mac.try_into().unwrap(),
        };
        f(&mut env)
    })
    .join()
    .expect("test thread")
}

struct Env {
    xdp: XdpPath,
    maps: XdpMaps,
    ifindex: u32,
    mac: [u8; 6],
}

impl Env {
    /// Runs the program on `frame`; returns the action and the output frame.
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&self.ifindex.to_ne_bytes());
        let mut out = vec![0u8; 4096];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        let res = self.xdp.program_mut().test_run(opts).expect("test run");
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    fn reason(&self, r: Reason) -> u64 {
        self.maps
            .reason_counters()
            .unwrap()
            .into_iter()
            .find(|(x, _)| *x == r)
            .unwrap()
            .1
    }

    /// Asserts the frame goes up unchanged, counted under `why`.
    fn assert_pass(&mut self, frame: &[u8], why: Reason) {
        let before = self.reason(why);
        let (action, out) = self.run(frame);
        assert_eq!(action, XDP_PASS, "expected pass ({why:?})");
        assert_eq!(out, frame, "passed frame changed ({why:?})");
        assert_eq!(self.reason(why), before + 1, "reason {why:?} not counted");
    }
}

// ----- frame building and checking -----------------------------------------------------

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo(src: IpAddr, dst: IpAddr, len: usize) -> u32 {
    let a = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum16(&s.octets()) + sum16(&d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum16(&s.octets()) + sum16(&d.octets()),
        _ => panic!("mixed families"),
    };
    a + 17 + len as u32
}

fn udp_csum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    match !fold(pseudo(src, dst, udp.len()) + sum16(udp)) {
        0 => 0xffff,
        c => c,
    }
}

/// Ethernet + IP + UDP around `payload` with valid checksums; `to_mac` is the receiver.
fn frame(
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    from_mac: [u8; 6],
    to_mac: [u8; 6],
) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let c = udp_csum(src.ip(), dst.ip(), &udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&to_mac);
    f.extend_from_slice(&from_mac);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 17, 17, 0, 0];
            ip[2..4].copy_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = !fold(sum16(&ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(udp.len() as u16).to_be_bytes());
            f.extend_from_slice(&[17, 20]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    f.extend_from_slice(&udp);
    f
}

struct Parsed {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
}

/// Parses an output frame, checking every length and checksum by full recomputation.
fn parse(f: &[u8]) -> Parsed {
    let (src_ip, dst_ip, l4): (IpAddr, IpAddr, usize) = match [f[12], f[13]] {
        [0x08, 0x00] => {
            let ip = &f[14..34];
            assert_eq!(ip[0], 0x45);
            assert_eq!(fold(sum16(ip)), 0xffff, "IPv4 header checksum");
            assert_eq!(
                u16::from_be_bytes([ip[2], ip[3]]) as usize,
                f.len() - 14,
                "IPv4 total length"
            );
            assert_eq!(ip[9], 17);
            assert!(ip[8] > 1, "TTL");
            let s: [u8; 4] = ip[12..16].try_into().unwrap();
            let d: [u8; 4] = ip[16..20].try_into().unwrap();
            (Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into(), 34)
        }
        [0x86, 0xdd] => {
            let ip = &f[14..54];
            assert_eq!(ip[0] >> 4, 6);
            assert_eq!(
                u16::from_be_bytes([ip[4], ip[5]]) as usize,
                f.len() - 54,
                "IPv6 payload length"
            );
            assert_eq!(ip[6], 17);
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            (Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into(), 54)
        }
        other => panic!("ethertype {other:?}"),
    };
    let udp = &f[l4..];
    assert_eq!(
        u16::from_be_bytes([udp[4], udp[5]]) as usize,
        udp.len(),
        "UDP length"
    );
    let csum = u16::from_be_bytes([udp[6], udp[7]]);
    if csum != 0 {
        assert_eq!(
            fold(pseudo(src_ip, dst_ip, udp.len()) + sum16(udp)),
            0xffff,
            "UDP checksum"
        );
    }
    Parsed {
        dst_mac: f[0..6].try_into().unwrap(),
        src_mac: f[6..12].try_into().unwrap(),
        src: SocketAddr::new(src_ip, u16::from_be_bytes([udp[0], udp[1]])),
        dst: SocketAddr::new(dst_ip, u16::from_be_bytes([udp[2], udp[3]])),
        payload: udp[8..].to_vec(),
    }
}

fn channel_data(channel: u16, payload: &[u8], pad: usize) -> Vec<u8> {
    let mut v = channel.to_be_bytes().to_vec();
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v.extend(std::iter::repeat_n(0xee, pad));
    v
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Family {
    client: SocketAddr,
    listener: SocketAddr,
    relay: SocketAddr,
    peer: SocketAddr,
    /// A peer without a neighbour entry.
    far_peer: SocketAddr,
}

fn v4() -> Family {
    Family {
        client: sa("10.0.0.3:50000"),
        listener: sa("10.0.0.1:3478"),
        relay: sa("10.0.0.1:24000"),
        peer: sa("10.0.0.2:40000"),
        far_peer: sa("10.0.0.9:40000"),
    }
}

fn v6() -> Family {
    Family {
        client: sa("[fd00::3]:50000"),
        listener: sa("[fd00::1]:3478"),
        relay: sa("[fd00::1]:24000"),
        peer: sa("[fd00::2]:40000"),
        far_peer: sa("[fd00::9]:40000"),
    }
}

fn setup_channel(env: &mut Env, f: &Family, channel: u16) {
    env.maps.add_allocation(f.relay).unwrap();
    env.maps
        .add_permission(f.client, f.listener, f.relay, f.peer.ip())
        .unwrap();
    env.maps
        .add_channel(f.client, f.listener, f.relay, f.peer, channel)
        .unwrap();
}

// ----- tests --------------------------------------------------------------------------

fn client_to_peer(f: Family) {
    in_netns(move |env| {
        setup_channel(env, &f, 0x4001);
        for (len, pad) in [
            (0usize, 0usize),
            (1, 3),
            (5, 3),
            (6, 2),
            (7, 1),
            (100, 0),
            (1200, 0),
            (3, 0),
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let input = frame(
                f.client,
                f.listener,
                &channel_data(0x4001, &payload, pad),
                CLIENT_MAC,
                env.mac,
            );
            let before = env.reason(Reason::ForwardedToPeer);
            let (action, out) = env.run(&input);
            assert_eq!(action, XDP_TX, "len {len} pad {pad}");
            let p = parse(&out);
            assert_eq!(p.src, f.relay);
            assert_eq!(p.dst, f.peer);
            assert_eq!(p.payload, payload);
            assert_eq!(p.dst_mac, PEER_MAC);
            assert_eq!(p.src_mac, env.mac);
            assert_eq!(env.reason(Reason::ForwardedToPeer), before + 1);
        }
        let c = env.maps.allocation_counters(f.relay).unwrap();
        assert_eq!(c.to_peer_packets, 8);
        assert_eq!(c.to_peer_bytes, 1 + 5 + 6 + 7 + 100 + 1200 + 3);
    });
}

#[test]
fn channel_data_client_to_peer_ipv4() {
    client_to_peer(v4());
}

#[test]
fn channel_data_client_to_peer_ipv6() {
    client_to_peer(v6());
}

fn peer_to_client_channel(f: Family) {
    in_netns(move |env| {
        setup_channel(env, &f, 0x7ffe);
        for len in [0usize, 1, 2, 3, 4, 333, 1000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
            let input = frame(f.peer, f.relay, &payload, PEER_MAC, env.mac);
            let (action, out) = env.run(&input);
            assert_eq!(action, XDP_TX);
            let p = parse(&out);
            assert_eq!(p.src, f.listener);
            assert_eq!(p.dst, f.client);
            assert_eq!(p.dst_mac, CLIENT_MAC);
            assert_eq!(p.payload, channel_data(0x7ffe, &payload, 0));
        }
        assert_eq!(
            env.maps
                .allocation_counters(f.relay)
                .unwrap()
                .to_client_packets,
            7
        );
    });
}

#[test]
fn channel_data_peer_to_client_ipv4() {
    peer_to_client_channel(v4());
}

#[test]
fn channel_data_peer_to_client_ipv6() {
    peer_to_client_channel(v6());
}

fn data_indication(f: Family) {
    in_netns(move |env| {
        env.maps.add_allocation(f.relay).unwrap();
        env.maps
            .add_permission(f.client, f.listener, f.relay, f.peer.ip())
            .unwrap();
        let mut txids = std::collections::HashSet::new();
        for len in [0usize, 1, 2, 3, 4, 5, 501] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 3 + 9) as u8).collect();
            // Any port of the permitted peer IP.
            let from = SocketAddr::new(f.peer.ip(), 40000 + len as u16);
            let input = frame(from, f.relay, &payload, PEER_MAC, env.mac);
            let before = env.reason(Reason::DataIndication);
            let (action, out) = env.run(&input);
            assert_eq!(action, XDP_TX);
            let p = parse(&out);
            assert_eq!(p.src, f.listener);
            assert_eq!(p.dst, f.client);
            assert_eq!(p.payload.len() % 4, 0, "STUN message padded");
            let msg = Message::parse(&p.payload).expect("valid STUN message");
            assert_eq!(msg.class(), Class::Indication);
            assert_eq!(msg.method(), Method::DATA);
            let xpa = msg
                .attr::<XorPeerAddress>()
                .expect("XOR-PEER-ADDRESS")
                .unwrap();
            assert_eq!(xpa.0, from);
            let data = msg.attr::<Data>().expect("DATA").unwrap();
            assert_eq!(data.0, &payload[..]);
            txids.insert(msg.transaction_id());
            assert_eq!(env.reason(Reason::DataIndication), before + 1);
        }
        assert_eq!(txids.len(), 7, "transaction ids are random");
    });
}

#[test]
fn data_indication_ipv4() {
    data_indication(v4());
}

#[test]
fn data_indication_ipv6() {
    data_indication(v6());
}

#[test]
fn everything_else_passes_unchanged() {
    in_netns(|env| {
        let f = v4();
        setup_channel(env, &f, 0x4001);
        let mac = env.mac;
        let good = frame(
            f.client,
            f.listener,
            &channel_data(0x4001, b"hello", 0),
            CLIENT_MAC,
            mac,
        );

        // Unknown channel, unknown client, STUN on the listener.
        let p = frame(
            f.client,
            f.listener,
            &channel_data(0x4002, b"hello", 0),
            CLIENT_MAC,
            mac,
        );
        env.assert_pass(&p, Reason::UnknownChannel);
        let p = frame(
            sa("10.0.0.3:50001"),
            f.listener,
            &channel_data(0x4001, b"x", 0),
            CLIENT_MAC,
            mac,
        );
        env.assert_pass(&p, Reason::UnknownChannel);
        let mut stun = vec![0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[7; 12]);
        env.assert_pass(
            &frame(f.client, f.listener, &stun, CLIENT_MAC, mac),
            Reason::NotChannelData,
        );
        // Length field beyond the datagram; more than 3 bytes after the payload.
        let mut bad = channel_data(0x4001, b"hello", 0);
        bad[3] = 9;
        env.assert_pass(
            &frame(f.client, f.listener, &bad, CLIENT_MAC, mac),
            Reason::Malformed,
        );
        let padded = channel_data(0x4001, b"hello", 4);
        env.assert_pass(
            &frame(f.client, f.listener, &padded, CLIENT_MAC, mac),
            Reason::BadPadding,
        );

        // A peer without permission; a permitted peer IP to a relay port we do not know.
        let p = frame(sa("10.0.0.7:1000"), f.relay, b"data", PEER_MAC, mac);
        env.assert_pass(&p, Reason::NoPermission);
        let p = frame(f.peer, sa("10.0.0.1:24001"), b"\x01ata", PEER_MAC, mac);
        env.assert_pass(&p, Reason::NotChannelData);

        // Fragments (MF set, or an offset), IP options, not UDP, not IP.
        let mut frag = good.clone();
        frag[20] |= 0x20;
        env.assert_pass(&frag, Reason::Fragment);
        let mut frag = good.clone();
        frag[21] = 0x10;
        env.assert_pass(&frag, Reason::Fragment);
        let mut opts = good.clone();
        opts[14] = 0x46;
        env.assert_pass(&opts, Reason::IpOptions);
        let mut tcp = good.clone();
        tcp[23] = 6;
        env.assert_pass(&tcp, Reason::NotUdp);
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        env.assert_pass(&arp, Reason::NotIp);

        // IPv6 with a hop-by-hop header in front of UDP.
        let f6 = v6();
        let mut ext = frame(
            f6.client,
            f6.listener,
            &channel_data(0x4001, b"hi", 0),
            CLIENT_MAC,
            mac,
        );
        ext[20] = 0;
        env.assert_pass(&ext, Reason::Ipv6ExtHeader);

        // Every truncation of a frame the program would forward (BPF_PROG_TEST_RUN
        // refuses frames shorter than an Ethernet header, as no driver delivers them).
        for len in 14..good.len() {
            let (action, out) = env.run(&good[..len]);
            assert_eq!(action, XDP_PASS, "truncated to {len}");
            assert_eq!(out, &good[..len]);
        }
        // And the whole frame still goes through.
        assert_eq!(env.run(&good).0, XDP_TX);
    });
}

#[test]
fn fib_failure_and_hairpin_pass_up() {
    in_netns(|env| {
        let f = v4();
        let mac = env.mac;
        env.maps.add_allocation(f.relay).unwrap();
        for peer in [
            f.far_peer,
            sa("192.0.2.1:9"),
            f.peer,
            sa("203.0.113.50:24010"),
        ] {
            env.maps
                .add_permission(f.client, f.listener, f.relay, peer.ip())
                .unwrap();
        }
        // No neighbour entry for the peer: userspace sends it (and resolves the neighbour).
        env.maps
            .add_channel(f.client, f.listener, f.relay, f.far_peer, 0x4003)
            .unwrap();
        let p = frame(
            f.client,
            f.listener,
            &channel_data(0x4003, b"far", 0),
            CLIENT_MAC,
            mac,
        );
        env.assert_pass(&p, Reason::FibNoNeighbour);
        // Unroutable destination.
        env.maps
            .add_channel(f.client, f.listener, f.relay, sa("192.0.2.1:9"), 0x4004)
            .unwrap();
        let p = frame(
            f.client,
            f.listener,
            &channel_data(0x4004, b"x", 0),
            CLIENT_MAC,
            mac,
        );
        env.assert_pass(&p, Reason::FibFailed);
        // Too big for the MTU (1500) once rewritten: a jumbo input.
        env.maps
            .add_channel(f.client, f.listener, f.relay, f.peer, 0x4005)
            .unwrap();
        let big = vec![1u8; 1600];
        let p = frame(
            f.client,
            f.listener,
            &channel_data(0x4005, &big, 0),
            CLIENT_MAC,
            mac,
        );
        env.assert_pass(&p, Reason::TooBig);
        // Hairpin to a relayed address the maps do not know: userspace delivers it.
        env.maps
            .add_public_ip("203.0.113.50".parse().unwrap())
            .unwrap();
        env.maps
            .add_channel(
                f.client,
                f.listener,
                f.relay,
                sa("203.0.113.50:24010"),
                0x4006,
            )
            .unwrap();
        let p = frame(
            f.client,
            f.listener,
            &channel_data(0x4006, b"x", 0),
            CLIENT_MAC,
            mac,
        );
        env.assert_pass(&p, Reason::Hairpin);
    });
}

/// Permissions expire before channels (5 vs 10 minutes): a bound channel without its
/// permission no longer forwards, in either direction, until the permission is back.
#[test]
fn channel_without_permission_passes_up() {
    in_netns(|env| {
        let f = v4();
        setup_channel(env, &f, 0x4001);
        let mac = env.mac;
        let to_peer = frame(
            f.client,
            f.listener,
            &channel_data(0x4001, b"hello", 0),
            CLIENT_MAC,
            mac,
        );
        let to_client = frame(f.peer, f.relay, b"hi", PEER_MAC, mac);
        assert_eq!(env.run(&to_peer).0, XDP_TX);
        assert_eq!(env.run(&to_client).0, XDP_TX);
        env.maps.remove_permission(f.relay, f.peer.ip()).unwrap();
        env.assert_pass(&to_peer, Reason::NoPermission);
        env.assert_pass(&to_client, Reason::NoPermission);
        env.maps
            .add_permission(f.client, f.listener, f.relay, f.peer.ip())
            .unwrap();
        assert_eq!(env.run(&to_peer).0, XDP_TX);
        assert_eq!(env.run(&to_client).0, XDP_TX);
    });
}

#[test]
fn ipv4_without_udp_checksum_stays_without() {
    in_netns(|env| {
        let f = v4();
        setup_channel(env, &f, 0x4001);
        let mut input = frame(
            f.client,
            f.listener,
            &channel_data(0x4001, b"nocsum", 2),
            CLIENT_MAC,
            env.mac,
        );
        input[40] = 0;
        input[41] = 0;
        let (action, out) = env.run(&input);
        assert_eq!(action, XDP_TX);
        let p = parse(&out);
        assert_eq!(p.payload, b"nocsum");
        assert_eq!(&out[40..42], &[0, 0]);
    });
}
