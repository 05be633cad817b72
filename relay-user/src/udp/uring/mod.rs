//! The io_uring loop of a UDP worker. Every listener and relay socket has a multishot
//! receive armed into one ring of provided buffers, and every outgoing datagram is a
//! send queued on the ring (runs of equal datagrams to one destination gathered into one
//! GSO send, see [`SendPool`]): one `io_uring_enter` per loop turn submits all sends and
//! waits for the next completions, where the epoll loop makes an epoll_wait, a recvmmsg
//! per ready socket and a sendmmsg per socket written to. With one relay socket per
//! allocation, that is most of a relay's syscalls.
//!
//! Lifetimes the kernel sees: a send points into its slot of the send pool until its
//! completion; a receive buffer is handed back once its datagram was handled; a relay
//! socket whose allocation ended is kept (its key never reaches a newcomer) until the cancelled
//! receive's last completion (an armed receive would keep the port bound after close).

use std::{
    collections::{HashMap, HashSet},
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, RawFd},
    time::{Duration, Instant},
};

use io_uring::{IoUring, cqueue, opcode, types};

use super::{
    batch::DATAGRAM_MAX,
    plane::{Outbox, Plane, SendErrors},
};

use crate::{
    shard::{
        relays::{Change, Registry},
        slab::Key,
    },
    uring::{
        BufRing, Completions, Unavailable, push, recvmsg_source as source, sends::SendPool,
        setup_error, submit_and_wait,
    },
};

const WAKE: u8 = 1;
const LISTENER: u8 = 2;
const RELAY: u8 = 3;
const SEND: u8 = 4;
/// Completions of cancels: nothing to do.
const IGNORE: u8 = 5;

const RING_ENTRIES: u32 = 4096;
const CQ_ENTRIES: u32 = 4 * RING_ENTRIES;
/// Provided receive buffers: count (a power of two) and size (the recvmsg header, the
/// source address, then up to DATAGRAM_MAX of payload; larger datagrams are dropped as
/// truncated, as in the epoll loop). When they run out, every multishot receive that finds
/// none ends (ENOBUFS) and is armed again after the batch: at saturation with 1000 relay
/// sockets, 512 buffers made re-arming about a tenth of the loop's CPU (io_recvmsg_prep,
/// io_msg_copy_hdr in a profile of peer → client). 2048 was tried (stop 23) and taken back:
/// the ring hands buffers out in turn, so every one gets its first page touched within
/// seconds of traffic, 8 MiB resident per busy worker instead of 2, and the flood test's
/// "RSS flat within 8 MiB" failed (29.9 -> 44.9 MiB with two busy workers); the 50k echoes/s
/// figures did not differ between 512 and 2048 (BENCHMARKS.md, stop 23).
const BUFFERS: u16 = 512;
const BUFFER_SIZE: usize = RECVMSG_OUT + std::mem::size_of::<libc::sockaddr_in6>() + DATAGRAM_MAX;
/// `struct io_uring_recvmsg_out`, which the kernel writes in front of each datagram.
const RECVMSG_OUT: usize = 16;
const BUFFER_GROUP: u16 = 0;
/// Completions one wake-up waits for, and how long it waits for them once one is there.
/// Measured at 1000 allocations and 50k echoes/s: 32 and 50 µs cut the process's CPU
/// per packet by a tenth against no coalescing; 64 and 100 µs by a further fifth, for
/// about 150 µs more median RTT (BENCHMARKS.md). Tried 2026-12-07, side by side (quick
/// bench, release, 1000 allocations @ 50k/s; process µs/packet, RTT p50/p99 µs): 100 µs
/// 6.2, 361/649 (other runs p99 854, 1178); 60 µs 6.7-7.1, 287/651-982; 30 µs 7.2-7.5,
/// 170-194/406-493; adaptive (one completion when the last wake-up found one, the batch
/// doubling under load) 8.3-8.5, 171-182/483-704. Lower waits buy RTT with CPU per packet,
/// which sets the relay's capacity; the 100 µs stays.
/// The kernel's minimum wait runs from the start of the wait, and the turn's own sends
/// complete at submit: a turn that sent anything sleeps the whole 100 µs unless 64
/// completions come first. A count instead (wait for the queued submissions plus 4, at
/// most 200 µs: the wait ends at the 4th reception, at once when they are already
/// pending) was tried too (h16u, 2026-12-07): 6.1-6.8 µs/packet (mean 6.56), p50 289-408
/// µs, against 100 µs's 5.4-6.8 (6.06), 370-432 and 70 µs's 6.2-7.3 (6.66), 287-364 in the
/// same runs: one more point on the same curve (BENCHMARKS.md, "Userspace wait policy").
const COALESCE: usize = 64;
const COALESCE_WAIT_US: u32 = 100;
/// How long a stopping loop waits for cancelled receives before leaving anyway.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// `user_data` of what is not a relay socket (a listener or send slot by index).
fn token(kind: u8, index: usize) -> u64 {
    Key::fixed_token(kind, index)
}

/// Checks that this process may run the loop: the opcodes, provided-buffer rings (5.19)
/// and multishot recvmsg (6.0), the last by receiving one datagram over a socketpair.
pub fn probe() -> Result<(), Unavailable> {
    // SAFETY: all-zero is a valid msghdr (no name, no control).
    let msg: libc::msghdr = unsafe { std::mem::zeroed() };
    crate::uring::probe_multishot(
        &[
            (opcode::RecvMsgMulti::CODE, "IORING_OP_RECVMSG"),
            (opcode::Send::CODE, "IORING_OP_SEND"),
            (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
            (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD"),
            (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
        ],
        libc::SOCK_DGRAM,
        |fd| opcode::RecvMsgMulti::new(types::Fd(fd), &msg, 7).build(),
        "multishot recvmsg (6.0)",
    )
}

/// The memory the kernel writes (receive buffers) and reads (send slots). Closing the
/// ring does not wait for the kernel to finish with it, so unless the loop's `stop`
/// saw every operation complete (a panic, a stop past its grace period), it is leaked
/// rather than freed under the kernel.
struct Lent {
    bufs: Option<BufRing>,
    sends: Option<SendPool<()>>,
    idle: bool,
}

impl Drop for Lent {
    fn drop(&mut self) {
        if !self.idle {
            std::mem::forget(self.bufs.take());
            std::mem::forget(self.sends.take());
        }
    }
}

pub(super) struct UringLoop {
    // Field order is drop order: the ring goes before the memory it was lent.
    ring: IoUring,
    mem: Lent,
    plane: Plane,
    /// The recvmsg template every multishot receive uses: room for an IPv6 source, no
    /// control data.
    msg: Box<libc::msghdr>,
    /// Relay sockets with a multishot receive armed.
    armed: HashSet<Key>,
    /// Multishot receives armed (listeners and relays): the kernel may write into the
    /// buffers while any is.
    receiving: usize,
    /// Relay sockets whose allocation ended, kept until their receive is cancelled.
    closing: HashMap<Key, UdpSocket>,
    /// Receives that ended (out of buffers, an error) and are armed again after the batch.
    rearm_listeners: Vec<usize>,
    rearm_relays: Vec<Key>,
    cqes: Vec<(u64, i32, u32)>,
    errors: SendErrors,
    /// Datagrams dropped because they were larger than a receive buffer.
    truncated: u64,
    /// Receives that ended on an error other than running out of buffers or a cancel.
    recv_errors: u64,
    /// The wake-up poll could not be queued; queued again at the next turn.
    rearm_wake: bool,
    /// `io_uring_enter` failures that were retried.
    enter_errors: u64,
}

// SAFETY: the msghdr template holds no pointers (no name buffer, no iovec: the kernel
// writes into provided buffers); everything else is Send.
unsafe impl Send for UringLoop {}

impl UringLoop {
    /// Sets up the ring on the calling thread (the loop's: single issuer); on failure the
    /// plane comes back for the epoll loop.
    #[allow(clippy::result_large_err)] // once per worker at startup
    pub fn new(mut plane: Plane) -> Result<Self, (Unavailable, Plane)> {
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(RING_ENTRIES)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(CQ_ENTRIES)
                    .build(RING_ENTRIES)
            });
        let ring = match ring {
            Ok(r) => r,
            Err(e) => return Err((setup_error(e), plane)),
        };
        let bufs = match BufRing::registered(&ring, BUFFERS, BUFFER_SIZE, BUFFER_GROUP) {
            Ok(b) => b,
            Err(e) => return Err((e, plane)),
        };
        // SAFETY: all-zero is a valid msghdr.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        plane.relays.set_registry(Registry::Queued);
        let mut me = Self {
            ring,
            mem: Lent {
                bufs: Some(bufs),
                sends: Some(SendPool::new()),
                idle: false,
            },
            plane,
            msg,
            armed: HashSet::new(),
            receiving: 0,
            closing: HashMap::new(),
            rearm_listeners: Vec::new(),
            rearm_relays: Vec::new(),
            cqes: Vec::with_capacity(CQ_ENTRIES as usize),
            errors: SendErrors::default(),
            truncated: 0,
            recv_errors: 0,
            rearm_wake: false,
            enter_errors: 0,
        };
        // Allocations a handover restored get their relay sockets (armed by the first
        // `sync`) before the first datagram is read.
        me.plane.apply_commands(Instant::now());
        me.arm_wake();
        for l in 0..me.plane.listeners.len() {
            me.arm_listener(l);
        }
        Ok(me)
    }

    fn arm_wake(&mut self) {
        let e = opcode::PollAdd::new(types::Fd(self.plane.inbox.waker.fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(token(WAKE, 0));
        self.rearm_wake = !push(&mut self.ring, &e);
    }

    /// Queues a multishot receive on `fd` completing with `ud`; `false` if the ring
    /// refused it (the caller re-arms at the next turn).
    fn arm_recv(&mut self, fd: RawFd, ud: u64) -> bool {
        let e = opcode::RecvMsgMulti::new(types::Fd(fd), &*self.msg, BUFFER_GROUP)
            .build()
            .user_data(ud);
        let queued = push(&mut self.ring, &e);
        self.receiving += usize::from(queued);
        queued
    }

    fn arm_listener(&mut self, l: usize) {
        let fd = self.plane.listeners[l].sock.as_raw_fd();
        if !self.arm_recv(fd, token(LISTENER, l)) {
            self.rearm_listeners.push(l);
        }
    }

    fn arm_relay(&mut self, key: Key) {
        let Some((_, fd)) = self.plane.relays.addr_fd(key) else {
            return;
        };
        if self.arm_recv(fd, key.token(RELAY)) {
            self.armed.insert(key);
        } else {
            self.rearm_relays.push(key);
        }
    }

    /// Runs until the shard is told to stop; returns the plane (and with it the core).
    pub fn run(mut self) -> Plane {
        while !self.plane.inbox.stopping() {
            self.sync();
            let wait = Duration::from_millis(self.plane.wait_ms());
            match self.wait(wait) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOMEM)) => {
                    // Transient (memory pressure): try again shortly.
                    self.enter_errors += 1;
                    if self.enter_errors.is_power_of_two() {
                        tracing::warn!(error = %e, total = self.enter_errors, "io_uring_enter failed; retrying");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => {
                    tracing::error!(error = %e, "io_uring_enter failed; the UDP data path stops");
                    break;
                }
            }
            // The sends of the last batch are submitted: sockets closed meanwhile may go
            // (a refused GSO run of theirs is then not sent again on a reused number).
            if let Some(pool) = self.mem.sends.as_mut() {
                pool.closing(self.plane.relays.retired_fds());
            }
            self.plane.relays.bury();
            let now = Instant::now();
            self.reap_and_apply(now);
            self.plane.tick(now);
        }
        self.stop();
        self.plane
    }

    /// Arms receives on new relay sockets, cancels those of closed ones, and re-arms
    /// receives that ended: after every batch, before the next submit.
    fn sync(&mut self) {
        // In the order they opened and closed: a socket opened and closed in the same
        // batch is not armed (it is no longer open) and is then retired.
        let changes: Vec<Change> = std::iter::from_fn(|| self.plane.relays.next_change()).collect();
        for change in changes {
            match change {
                Change::Opened(key) => self.arm_relay(key),
                Change::Closed(key, sock) if self.armed.contains(&key) => {
                    let e = opcode::AsyncCancel::new(key.token(RELAY))
                        .build()
                        .user_data(token(IGNORE, 0));
                    if push(&mut self.ring, &e) {
                        self.closing.insert(key, sock);
                    } else {
                        self.plane.relays.defer(Change::Closed(key, sock));
                    }
                }
                Change::Closed(key, sock) => {
                    self.rearm_relays.retain(|k| *k != key);
                    // Sends of this batch may still name its fd: it goes after the submit.
                    self.plane.relays.retire(sock);
                }
            }
        }
        if self.rearm_wake {
            self.arm_wake();
        }
        let mut listeners = std::mem::take(&mut self.rearm_listeners);
        for l in listeners.drain(..) {
            self.arm_listener(l);
        }
        listeners.append(&mut self.rearm_listeners);
        self.rearm_listeners = listeners;
        let mut relays = std::mem::take(&mut self.rearm_relays);
        for key in relays.drain(..) {
            if self.plane.relays.is_open(key) && !self.armed.contains(&key) {
                self.arm_relay(key);
            }
        }
        relays.append(&mut self.rearm_relays);
        self.rearm_relays = relays;
        self.errors.report();
    }

    /// Submits what is queued and sleeps until completions arrive or `wait` passes.
    /// Where the kernel can (6.13), a wake-up gathers up to [`COALESCE`] completions
    /// for at most [`COALESCE_WAIT_US`]: under load one turn then serves many datagrams
    /// instead of one wake-up each, and at low rates a datagram waits at most that long.
    fn wait(&mut self, wait: Duration) -> io::Result<()> {
        if self.ring.params().is_feature_min_timeout() {
            submit_and_wait(&self.ring, COALESCE, wait, Some(COALESCE_WAIT_US))
        } else {
            submit_and_wait(&self.ring, 1, wait, None)
        }
    }

    /// The batch of completions, then what it decided: that happens before its
    /// datagrams leave (next submit).
    fn reap_and_apply(&mut self, now: Instant) {
        self.reap(now);
        self.flush_sends();
        self.plane.apply_commands(now);
    }

    /// Puts the batch's sends on the ring (the next submit sends them).
    fn flush_sends(&mut self) {
        if let Some(pool) = self.mem.sends.as_mut() {
            let ring = &mut self.ring;
            pool.submit(|e| push(ring, e), |slot| token(SEND, slot));
        }
    }
}

impl Completions for UringLoop {
    fn ring_and_buffer(&mut self) -> (&mut IoUring, &mut Vec<(u64, i32, u32)>) {
        (&mut self.ring, &mut self.cqes)
    }

    fn complete(&mut self, ud: u64, res: i32, flags: u32, now: Instant) {
        let (kind, key) = Key::from_token(ud);
        match kind {
            SEND => {
                if let Some(pool) = self.mem.sends.as_mut() {
                    sent(pool, key.idx as usize, res, &mut self.errors);
                }
            }
            LISTENER | RELAY => {
                if res >= 0
                    && let Some(bid) = cqueue::buffer_select(flags)
                {
                    self.datagram(kind, key, bid, res as usize, now);
                }
                if !cqueue::more(flags) {
                    self.ended(kind, key, res);
                }
            }
            WAKE => {
                self.plane.inbox.waker.clear();
                self.plane.inbox.run_jobs(&mut self.plane.server);
                if !cqueue::more(flags) {
                    self.arm_wake();
                }
            }
            _ => {}
        }
    }
}

impl UringLoop {
    /// A received datagram in buffer `bid`: handed to the core, the buffer given back.
    fn datagram(&mut self, kind: u8, key: Key, bid: u16, len: usize, now: Instant) {
        let Self {
            mem,
            plane,
            msg,
            errors,
            truncated,
            ..
        } = self;
        let (Some(bufs), Some(pool)) = (mem.bufs.as_mut(), mem.sends.as_mut()) else {
            return;
        };
        if let Ok(out) = types::RecvMsgOut::parse(bufs.get(bid, len), msg)
            && let Some(from) = source(out.name_data())
        {
            if out.is_payload_truncated() {
                *truncated += 1;
            } else {
                let mut tx = RingOutbox { pool, errors };
                match kind {
                    LISTENER => plane.client_datagram(
                        now,
                        key.idx as usize,
                        from,
                        out.payload_data(),
                        &mut tx,
                    ),
                    _ => {
                        if let Some(relay) = plane.relays.get(key).map(|r| r.addr) {
                            plane.peer_datagram(now, relay, from, out.payload_data(), &mut tx);
                        }
                    }
                }
            }
        }
        bufs.recycle(bid);
    }

    /// A multishot receive ended: a closing relay socket is released, anything else is
    /// armed again after the batch (ENOBUFS: the buffers handed back meanwhile serve it).
    fn ended(&mut self, kind: u8, key: Key, res: i32) {
        self.receiving -= 1;
        if kind == LISTENER {
            let index = key.idx as usize;
            if res < 0 && res != -libc::ENOBUFS {
                let addr = self.plane.listeners[index].addr;
                self.recv_failed(res, || format!("listener {addr}"));
            }
            self.rearm_listeners.push(index);
            return;
        }
        self.armed.remove(&key);
        if let Some(sock) = self.closing.remove(&key) {
            drop(sock);
        } else if self.plane.relays.is_open(key) {
            if res < 0 && res != -libc::ENOBUFS {
                let relay = self.plane.relays.get(key).map(|r| r.addr);
                self.recv_failed(res, || format!("relay socket {relay:?}"));
            }
            self.rearm_relays.push(key);
        }
    }

    /// Logs a receive that ended on an error, at 1, 2, 4, 8... failures so a persistent
    /// one cannot flood the log (it is armed again at every turn).
    fn recv_failed(&mut self, res: i32, what: impl FnOnce() -> String) {
        self.recv_errors += 1;
        if self.recv_errors.is_power_of_two() {
            tracing::warn!(socket = %what(), error = %io::Error::from_raw_os_error(-res),
                total = self.recv_errors, "UDP receive failed; armed again");
        }
    }

    /// Cancels every receive and waits (bounded) until the kernel holds no buffer and no
    /// send slot; past the grace period that memory is leaked rather than freed under it.
    fn stop(&mut self) {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(token(IGNORE, 0));
        push(&mut self.ring, &e);
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            let sending = self.mem.sends.as_ref().is_some_and(|p| p.in_flight() > 0);
            if (self.receiving == 0 && !sending) || Instant::now() >= deadline {
                break;
            }
            if self.wait(Duration::from_millis(50)).is_err() {
                break;
            }
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            let now = Instant::now();
            for &(ud, res, flags) in &cqes {
                let (kind, key) = Key::from_token(ud);
                let buffer = cqueue::buffer_select(flags);
                match kind {
                    SEND => {
                        if let Some(pool) = self.mem.sends.as_mut() {
                            sent(pool, key.idx as usize, res, &mut self.errors);
                        }
                    }
                    // Datagrams the kernel delivered before the cancel are still served:
                    // on a handover the sockets go on to the next process, and what this
                    // one read and dropped would be lost.
                    LISTENER | RELAY if res >= 0 && buffer.is_some() => {
                        self.datagram(kind, key, buffer.unwrap_or(0), res as usize, now);
                    }
                    _ => {
                        if let (Some(bid), Some(bufs)) = (buffer, self.mem.bufs.as_mut()) {
                            bufs.recycle(bid);
                        }
                    }
                }
                if matches!(kind, LISTENER | RELAY) && !cqueue::more(flags) {
                    self.receiving -= 1;
                    if kind == RELAY {
                        self.closing.remove(&key);
                    }
                }
            }
            self.cqes = cqes;
            self.flush_sends();
            self.plane.apply_commands(now);
        }
        if self.receiving > 0 || self.mem.sends.as_ref().is_some_and(|p| p.in_flight() > 0) {
            // `Lent` keeps (leaks) the memory the kernel may still use.
            tracing::warn!("UDP receives or sends still in flight at stop");
        } else {
            self.mem.idle = true;
        }
        if self.truncated > 0 {
            tracing::info!(
                datagrams = self.truncated,
                limit = DATAGRAM_MAX,
                "UDP datagrams dropped for being larger than the receive buffers"
            );
        }
    }
}

/// Where a batch's datagrams go: the send pool, or at once with sendto when it has no
/// room for them.
struct RingOutbox<'a> {
    pool: &'a mut SendPool<()>,
    errors: &'a mut SendErrors,
}

impl Outbox for RingOutbox<'_> {
    fn push(&mut self, fd: RawFd, bytes: &[u8], to: &SocketAddr) {
        if !self.pool.push(fd, bytes, to, ())
            && let Err(e) = relay_sys::sockaddr::send_raw(fd, bytes, to)
        {
            self.errors.record(e);
        }
    }
}

/// The completion of the send in `slot`: what failed is counted.
fn sent(pool: &mut SendPool<()>, slot: usize, res: i32, errors: &mut SendErrors) {
    if let Some(f) = pool.completed(slot, res) {
        errors.record_lost(f.error, u64::from(f.lost));
    }
}
