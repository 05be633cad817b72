//! A scrape (and a console page load, and a history sample) reads the kernel's counters
//! without the shards' map writer. Needs root: it loads the XDP program (its maps are
//! what the reader and the writer share).

use std::{
    net::SocketAddr,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use relay_common::AllocCounters;

use super::{console, history, prom, tests::control_with, view};
use crate::{control::test_support::*, shard::Kernel, xdp::XdpPath};

#[test]
fn a_scrape_completes_while_a_shard_holds_the_map_writer() {
    let mut xdp = XdpPath::load_with(4).expect("load the XDP program (run as root)");
    let maps = xdp.take_maps().expect("take the maps");
    let kernel = Kernel::new(maps, xdp.reader());
    let relay: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    kernel
        .with(|m| m.add_allocation(relay))
        .expect("fast path on")
        .expect("register a relayed address");
    let config = parse_config(&config_text(""));
    let shards = FakeShards::start(&config, 1);
    let control = control_with(config, &shards, kernel.clone());

    // A shard in the middle of a map update: it holds the writer until told to let go
    // (20 s at most, so a failing run still ends).
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = {
        let kernel = kernel.clone();
        thread::spawn(move || {
            kernel.with(|_| {
                held_tx.send(()).unwrap();
                let _ = release_rx.recv_timeout(Duration::from_secs(20));
            })
        })
    };
    held_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the holder took the map writer");

    let (done_tx, done_rx) = mpsc::channel();
    let scraper = {
        let (control, kernel) = (control.clone(), kernel.clone());
        thread::spawn(move || {
            let metrics = prom::render(&control).expect("render /metrics");
            let allocations = view::allocations(&control).count;
            // What `GET /` and the history sampler read.
            let page = console::render(&view::status(&control), &view::allocations(&control));
            assert!(page.contains("id=\"allocs\""));
            history::look(&control);
            // What the end-of-allocation log line reads.
            let ended = kernel.allocation_counters(relay);
            let _ = done_tx.send((metrics, allocations, ended));
        })
    };
    let started = Instant::now();
    let answer = done_rx.recv_timeout(Duration::from_secs(5));
    let waited = started.elapsed();
    let _ = release_tx.send(());
    holder.join().unwrap();
    scraper.join().unwrap();

    let (metrics, allocations, ended) = answer.unwrap_or_else(|_| {
        panic!("/metrics, /api/allocations, the console page, a history sample and the kernel counters still waiting for the shards' map writer after {waited:?}")
    });
    assert_eq!(allocations, 0);
    assert!(
        metrics.contains("relay_xdp_packets_total{reason="),
        "{metrics}"
    );
    assert!(
        metrics.contains("relay_xdp_map_entries{map=\"permissions\"} 0"),
        "{metrics}"
    );
    assert_eq!(ended, Some(AllocCounters::default()));
    let unknown: SocketAddr = "127.0.0.1:50001".parse().unwrap();
    assert_eq!(kernel.allocation_counters(unknown), None);
}
