//! What the kernel program costs per packet on its forwarding paths, measured with
//! BPF_PROG_TEST_RUN (needs root): `cargo run -p relay-user --example xdp_cost [RUNS]`.
//!
//! In a network namespace of its own (veth `xc0`, 10.0.0.1/24, permanent neighbours for
//! the client 10.0.0.3 and the peer 10.0.0.2, as in `tests/xdp_forward.rs`), one
//! allocation with a permission and a channel; then each case runs RUNS times (default
//! 200,000), one frame per run (`repeat = 1`: the program rewrites the frame, so a
//! repeated run would see its own output), in batches of 10,000 that take turns, and the
//! median and the best of the batches' mean per-run duration are printed (a shared box's
//! other work lands in some batches, not in the median). That includes the test run's own overhead (about 40 ns here), the same for
//! every build, so compare builds side by side: copy this binary per build and run them
//! alternately on the same box.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
};

use aya::programs::{TestRun, TestRunOptions};
use relay_proto::stun::{Class, Data, MessageWriter, Method, TransactionId, XorPeerAddress};
use relay_user::xdp::XdpPath;

const IF: &str = "xc0";
/// Runs per case in a row; cases (and builds) take turns batch by batch.
const BATCH: u32 = 10_000;
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x09];

/// The namespace's links, address and neighbours, as `ip -batch` reads them.
const TOPOLOGY: &str = "\
link set lo up
link add xc0 address 02:00:00:00:00:09 type veth peer name xc1
link set xc0 up
link set xc1 up
address add 10.0.0.1/24 dev xc0
neighbour replace 10.0.0.2 lladdr 02:00:00:00:00:02 dev xc0 nud permanent
neighbour replace 10.0.0.3 lladdr 02:00:00:00:00:03 dev xc0 nud permanent
";

/// Runs `program` with `args`, `stdin` on its standard input; panics unless it succeeds.
fn run(program: &str, args: &[&str], stdin: &str) {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("piped");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    let status = child.wait().expect("wait");
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// Sum of big-endian 16-bit words (odd tail padded with zero).
fn sum16(data: &[u8]) -> u32 {
    let words = data.chunks(2);
    words
        .map(|w| u32::from(w[0]) << 8 | u32::from(*w.get(1).unwrap_or(&0)))
        .sum()
}

fn fold16(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// An Ethernet/IPv4/UDP frame around `payload`, both checksums valid.
fn ipv4_frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 only");
    };
    let udp_len = 8 + payload.len();
    let mut f = Vec::with_capacity(14 + 20 + udp_len);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&s.octets());
    ip[16..20].copy_from_slice(&d.octets());
    let c = !fold16(sum16(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let pseudo = sum16(&s.octets()) + sum16(&d.octets()) + 17 + udp_len as u32;
    let c = match !fold16(pseudo + sum16(&udp)) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&udp);
    f
}

fn main() {
    let runs: u32 = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("RUNS: a number"))
        .unwrap_or(200_000);
    // SAFETY: plain syscall, before any other thread exists.
    assert_eq!(
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        0,
        "run as root"
    );
    run("ip", &["-batch", "-"], TOPOLOGY);
    run("sysctl", &["-qw", "net.ipv4.conf.all.forwarding=1"], "");
    let name = std::ffi::CString::new(IF).expect("no NUL");
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };

    let client: SocketAddr = "10.0.0.3:50000".parse().expect("literal");
    let listener: SocketAddr = "10.0.0.1:3478".parse().expect("literal");
    let relay: SocketAddr = "10.0.0.1:24000".parse().expect("literal");
    let peer: SocketAddr = "10.0.0.2:40000".parse().expect("literal");
    let mut xdp = XdpPath::load_with(1000).expect("load the XDP object (run as root)");
    let mut maps = xdp.take_maps().expect("maps");
    maps.add_udp_allocation(client, listener, relay, relay)
        .expect("allocation");
    maps.add_permission(client, listener, relay, peer.ip())
        .expect("permission");
    maps.add_channel(client, listener, relay, peer, 0x4001)
        .expect("channel");

    let payload = [0xb5u8; 100];
    let mut cd = vec![0x40, 0x01, 0, 100];
    cd.extend_from_slice(&payload);
    let mut send = vec![0u8; 512];
    let mut w = MessageWriter::new(
        &mut send,
        Class::Indication,
        Method::SEND,
        TransactionId([7; 12]),
    )
    .expect("buffer");
    w.attr(&XorPeerAddress(peer)).expect("fits");
    w.attr(&Data(&payload)).expect("fits");
    let n = w.finish();
    send.truncate(n);
    let cases = [
        (
            "ChannelData client -> peer",
            ipv4_frame(client, listener, &cd),
        ),
        (
            "Send indication client -> peer",
            ipv4_frame(client, listener, &send),
        ),
        (
            "peer -> client (ChannelData)",
            ipv4_frame(peer, relay, &payload),
        ),
    ];

    let mut ctx = [0u8; 24];
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0u8; 2048];
    let batches = (runs / BATCH).max(1);
    let mut means = vec![Vec::new(); cases.len()];
    let mut actions = vec![0u32; cases.len()];
    let program = xdp.program_mut();
    for _ in 0..batches {
        for (c, (_, frame)) in cases.iter().enumerate() {
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            let mut total = 0u128;
            for _ in 0..BATCH {
                let mut opts = TestRunOptions::new();
                opts.data_in = Some(frame);
                opts.data_out = Some(&mut out);
                opts.ctx_in = Some(&ctx);
                let res = program.test_run(opts).expect("test run");
                total += res.duration.as_nanos();
                actions[c] = res.return_value;
            }
            means[c].push(total as f64 / f64::from(BATCH));
        }
    }
    for (c, (what, _)) in cases.iter().enumerate() {
        let m = &mut means[c];
        m.sort_by(f64::total_cmp);
        // XDP_TX (3) is the forwarding answer on this one-interface topology.
        println!(
            "{what:32} median {:6.1} ns, best batch {:6.1} ns (action {}, {} runs)",
            m[m.len() / 2],
            m[0],
            actions[c],
            batches * BATCH
        );
    }
}
