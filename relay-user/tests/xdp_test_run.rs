//! The kernel program run on crafted frames with BPF_PROG_TEST_RUN (needs root).

use aya::programs::{TestRun, TestRunOptions};
use relay_user::xdp::XdpPath;

const XDP_PASS: u32 = 2;

/// xdp_md as BPF_PROG_TEST_RUN takes it: data, data_end, data_meta, ingress_ifindex,
/// rx_queue_index, egress_ifindex.
fn xdp_md(ingress_ifindex: u32, len: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&len.to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx
}

#[test]
fn passes_frames_unchanged_and_counts_them() {
    let mut xdp = XdpPath::load().expect("load (run as root)");
    let frame: Vec<u8> = (0..98u8).collect();
    let ctx = xdp_md(1, frame.len() as u32); // lo exists in every namespace
    let mut out = vec![0u8; 256];
    for _ in 0..3 {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        let res = xdp.program_mut().test_run(opts).expect("test run");
        assert_eq!(res.return_value, XDP_PASS);
        assert_eq!(res.data_size_out as usize, frame.len());
        assert_eq!(&out[..frame.len()], &frame[..]);
    }
    let counters = xdp.iface_counters().expect("counters");
    let lo = counters
        .iter()
        .find(|(i, _)| *i == 1)
        .expect("lo counted")
        .1;
    assert_eq!(lo.packets, 3);
    assert_eq!(lo.bytes, 3 * frame.len() as u64);
}

/// The verifier walks every path of the program; this keeps that work (and the program
/// size) far from the kernel's limits (1M processed instructions) as paths are added, and
/// prints both figures for the record.
#[test]
fn verifier_work_stays_within_budget() {
    let mut xdp = XdpPath::load().expect("load (run as root)");
    let info = xdp.program_mut().info().expect("program info");
    let insns = info.size_translated().expect("xlated length") / 8;
    let verified = info
        .verified_instruction_count()
        .expect("verified_insns (kernel >= 5.16)");
    eprintln!("XDP program: {insns} instructions, verifier processed {verified}");
    assert!(insns < 16_384, "program grew to {insns} instructions");
    assert!(
        verified < 250_000,
        "verifier processed {verified} instructions (limit 1,000,000)"
    );
}

/// One run of `program` on `frame` arriving on lo: the action and the frame after it.
fn test_run(program: &mut aya::programs::Xdp, frame: &[u8]) -> (u32, Vec<u8>) {
    let ctx = xdp_md(1, frame.len() as u32);
    let mut out = vec![0u8; 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    let res = program.test_run(opts).expect("test run");
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

/// An IPv4 UDP frame whose payload starts with `first` (then zeros), 64 bytes of payload.
fn udp_frame(first: u8) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8 + 64];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((20 + 8 + 64) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[203, 0, 113, 10]);
    f[30..34].copy_from_slice(&[192, 0, 2, 10]);
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&7000u16.to_be_bytes());
    f[38..40].copy_from_slice(&(8u16 + 64).to_be_bytes());
    f[42] = first;
    f
}

/// The capacity benchmark's sink: relayed datagrams (ChannelData, or the blast's bare
/// payload) are counted and dropped; STUN and anything not IPv4 UDP pass, so the load
/// generator behind it still gets its answers.
#[test]
fn bench_sink_counts_and_drops_relayed_datagrams_only() {
    use relay_user::xdp::bench::{BenchProgram, BenchXdp};
    const XDP_DROP: u32 = 1;
    let mut sink = BenchXdp::load(&BenchProgram::Sink {
        interface: "lo".into(),
    })
    .expect("load (run as root)");
    let mut arp = udp_frame(0x40);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let cases = [
        (udp_frame(0x40), XDP_DROP), // ChannelData to a client
        (udp_frame(0xb5), XDP_DROP), // the blast's payload at the peer
        (udp_frame(0x01), XDP_PASS), // a STUN answer
        (udp_frame(0x00), XDP_PASS), // a STUN request
        (arp, XDP_PASS),
        (udp_frame(0x40)[..40].to_vec(), XDP_PASS), // truncated
    ];
    for (frame, want) in &cases {
        let (action, _) = test_run(sink.program_mut().unwrap(), frame);
        assert_eq!(action, *want, "{frame:02x?}");
    }
    let c = sink.counters().expect("counters");
    assert_eq!(c.packets, 2);
    assert_eq!(c.bytes, 2 * udp_frame(0x40).len() as u64);
}

/// The capacity benchmark's ceiling: every frame leaves with the egress NIC's MAC as
/// source and the next hop's as destination, redirected, nothing else changed.
#[test]
fn bench_redirect_rewrites_the_macs_and_redirects() {
    use relay_user::xdp::bench::{BenchProgram, BenchXdp};
    const XDP_REDIRECT: u32 = 4;
    let mut redirect = BenchXdp::load(&BenchProgram::Redirect {
        interface: "lo".into(),
        to: "lo".into(),
        dst_mac: "02:aa:bb:cc:dd:ee".into(),
    })
    .expect("load (run as root)");
    let frame = udp_frame(0x40);
    let (action, out) = test_run(redirect.program_mut().unwrap(), &frame);
    assert_eq!(action, XDP_REDIRECT);
    // lo's own MAC is all zeros.
    assert_eq!(
        &out[..12],
        &[2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(&out[12..], &frame[12..]);
    assert_eq!(redirect.counters().expect("counters").packets, 1);
}
