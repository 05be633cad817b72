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
