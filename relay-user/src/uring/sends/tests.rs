use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use io_uring::IoUring;

use super::{SEND_SLOT_BYTES, SEND_SLOTS, SendPool};

fn pair() -> (UdpSocket, UdpSocket) {
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (tx, rx)
}

fn received(rx: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let mut b = [0u8; 2048];
            let k = rx.recv(&mut b).unwrap();
            b[..k].to_vec()
        })
        .collect()
}

/// What arrives within 300 ms.
fn drain(rx: &UdpSocket) -> Vec<Vec<u8>> {
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 2048];
    while let Ok(k) = rx.recv(&mut b) {
        got.push(b[..k].to_vec());
    }
    got
}

/// Submits the pool's runs and completes them; the user data is the slot.
fn submit_and_complete(ring: &mut IoUring, pool: &mut SendPool<u32>, runs: usize) -> u64 {
    pool.submit(
        // SAFETY: the entries point into the pool, which outlives their completions.
        |e| unsafe { ring.submission().push(e) }.is_ok(),
        |slot| slot as u64,
    );
    ring.submit_and_wait(runs).unwrap();
    let done: Vec<(u64, i32)> = ring
        .completion()
        .map(|c| (c.user_data(), c.result()))
        .collect();
    assert_eq!(done.len(), runs);
    let mut failed = 0;
    for (ud, res) in done {
        failed += pool
            .completed(ud as usize, res)
            .map_or(0, |f| u64::from(f.lost));
    }
    failed
}

/// Runs a ring that takes everything would get now.
fn submitted(pool: &mut SendPool<u32>) -> usize {
    let mut queued = 0;
    pool.submit(
        |_| {
            queued += 1;
            true
        },
        |s| s as u64,
    );
    queued
}

#[test]
fn gathered_runs_arrive_as_the_datagrams_pushed_in_order() {
    let mut ring = IoUring::new(64).unwrap();
    let (tx, rx) = pair();
    let to = rx.local_addr().unwrap();
    let mut pool = SendPool::new();
    // 70 of one size (a run of 64, the most one GSO send carries, then one of 6), a
    // shorter one and one of the first size again: four sends.
    let sent: Vec<Vec<u8>> = (0..70u8)
        .map(|i| vec![i; 100])
        .chain([vec![200; 40], vec![201; 100]])
        .collect();
    for d in &sent {
        assert!(pool.push(tx.as_raw_fd(), d, &to, 7));
    }
    assert_eq!(submit_and_complete(&mut ring, &mut pool, 4), 0);
    assert_eq!(received(&rx, sent.len()), sent);
    assert_eq!(pool.in_flight(), 0);
}

#[test]
fn runs_of_two_sockets_or_destinations_stay_apart() {
    let mut ring = IoUring::new(64).unwrap();
    let (tx, rx) = pair();
    let (_, rx2) = pair();
    let (to, to2) = (rx.local_addr().unwrap(), rx2.local_addr().unwrap());
    let mut pool = SendPool::new();
    for i in 0..3u8 {
        assert!(pool.push(tx.as_raw_fd(), &[i; 50], &to, 1));
        assert!(pool.push(tx.as_raw_fd(), &[i; 50], &to2, 2));
    }
    assert_eq!(submit_and_complete(&mut ring, &mut pool, 6), 0);
    let want: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 50]).collect();
    assert_eq!(received(&rx, 3), want);
    assert_eq!(received(&rx2, 3), want);
}

#[test]
fn a_datagram_too_large_or_past_the_last_slot_is_refused() {
    let mut pool = SendPool::new();
    let to: SocketAddr = "192.0.2.1:9".parse().unwrap();
    assert!(!pool.push(3, &vec![0; SEND_SLOT_BYTES + 1], &to, 0u32));
    // Datagrams of growing size: no run forms, each takes a slot.
    for i in 0..SEND_SLOTS {
        assert!(pool.push(3, &vec![0; i + 1], &to, 0));
    }
    assert!(!pool.push(3, b"x", &to, 0));
    assert_eq!(pool.in_flight(), SEND_SLOTS);
}

#[test]
fn a_failed_send_gives_back_its_tag_and_bytes() {
    let mut pool = SendPool::new();
    let to: SocketAddr = "192.0.2.1:9".parse().unwrap();
    assert!(pool.push(3, b"hello", &to, 42u32));
    let mut slots = Vec::new();
    pool.submit(
        |_| true,
        |slot| {
            slots.push(slot);
            slot as u64
        },
    );
    let f = pool.completed(slots[0], -libc::EAGAIN).expect("failed");
    assert_eq!((f.tag, f.to, f.bytes, f.lost), (42, to, &b"hello"[..], 1));
    assert_eq!(f.error.kind(), std::io::ErrorKind::WouldBlock);
    assert!(pool.completed(slots[0], 0).is_none(), "freed once");
    assert_eq!(pool.in_flight(), 0);
}

#[test]
fn sends_of_a_closing_socket_not_yet_on_the_ring_are_dropped() {
    let mut pool = SendPool::new();
    let to: SocketAddr = "192.0.2.1:9".parse().unwrap();
    assert!(pool.push(3, b"a", &to, 0u32));
    assert!(pool.push(4, b"b", &to, 0));
    assert!(pool.push(3, b"cc", &to, 0));
    pool.closing([3]);
    assert_eq!(submitted(&mut pool), 1, "only socket 4's send goes");
    assert_eq!(pool.in_flight(), 1);
}

#[test]
fn a_ring_that_takes_nothing_keeps_the_runs_for_the_next_submit() {
    let mut pool = SendPool::new();
    let to: SocketAddr = "192.0.2.1:9".parse().unwrap();
    assert!(pool.push(3, b"a", &to, 0u32));
    assert!(pool.push(4, b"b", &to, 0));
    pool.submit(|_| false, |s| s as u64);
    assert_eq!(submitted(&mut pool), 2);
}

/// A run of three datagrams queued and refused by the kernel as a whole (a segment over
/// the route's MTU); `closed`: its socket closed after the submit. What reached the
/// destination, and the datagrams counted lost.
fn refused_run(closed: bool) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, u16) {
    let (tx, rx) = pair();
    let to = rx.local_addr().unwrap();
    let mut pool = SendPool::new();
    let sent = vec![vec![1u8; 300], vec![2; 300], vec![3; 300]];
    for d in &sent {
        assert!(pool.push(tx.as_raw_fd(), d, &to, ()));
    }
    let mut slot = None;
    pool.submit(|_| true, |s| *slot.insert(s) as u64);
    if closed {
        // Its number may belong to another socket by the completion (here: the same
        // one, still open, which would receive a resend).
        pool.closing([tx.as_raw_fd()]);
    }
    let lost = pool
        .completed(slot.unwrap(), -libc::EMSGSIZE)
        .map_or(0, |f| f.lost);
    assert_eq!(pool.in_flight(), 0);
    (sent, drain(&rx), lost)
}

#[test]
fn a_run_the_kernel_refuses_goes_again_datagram_by_datagram() {
    let (sent, got, lost) = refused_run(false);
    assert_eq!(got, sent);
    assert_eq!(lost, 0);
}

#[test]
fn a_refused_run_of_a_closed_socket_is_dropped_not_resent_on_its_number() {
    let (_, got, lost) = refused_run(true);
    assert!(got.is_empty(), "sent on a closed socket's number: {got:?}");
    assert_eq!(lost, 3);
}
