//! The io_uring event loop: multishot accept on every listener, multishot receive into a
//! ring of provided buffers (no buffer per connection while it is idle), one send in flight
//! per connection straight from its queue, multishot poll on relay sockets and on the
//! shard's wake-up eventfd, multishot `recvmsg` on relay sockets (the datagrams from peers
//! land in provided buffers of their own: no `recvfrom` per datagram, nor the one that used to
//! find the socket empty after each readiness). One thread, no syscall per connection per
//! round: the ring is submitted and reaped once per loop turn.
//!
//! Lifetimes the kernel sees: a send points into the connection's `tx.inflight`, so a
//! connection is freed only when no send and no receive is in flight (the socket is shut
//! down first, which completes both); provided buffers are handed back right after their
//! bytes were consumed (frames handled, the rest copied).
//!
//! RFC 6062 peer connections run the same receive and send as client connections under
//! their own kinds; a connect in progress is a one-shot writability poll, and a TCP
//! allocation's listener a multishot accept that is cancelled when the allocation goes.

mod relays;

use std::{
    io,
    net::TcpStream,
    os::fd::{AsRawFd, FromRawFd},
    time::{Duration, Instant},
};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use relay_proto::server::Server;

use super::{
    pace::Pace,
    state::{Side, State, Work, connect_outcome, token},
};
use crate::{
    shard::{Inbox, apply::DATAGRAM_MAX, slab::Key},
    uring::{
        BufRing, Completions, Unavailable, probe_multishot, push, recvmsg_source as source,
        sends::SendPool, setup_error, submit_and_wait,
    },
};

const WAKE: u8 = 1;
const ACCEPT: u8 = 2;
const RECV: u8 = 3;
const SEND: u8 = 4;
const RELAY_IN: u8 = 5;
const RELAY_OUT: u8 = 6;
/// Completions of cancels and poll removals: nothing to do.
const IGNORE: u8 = 7;
const PEER_RECV: u8 = 8;
const PEER_SEND: u8 = 9;
/// A peer connect in progress became writable (or failed).
const PEER_CONNECT: u8 = 10;
/// A TCP allocation's listener accepted a peer.
const RELAY_ACCEPT: u8 = 11;
/// A datagram to a peer left from a slot of the state's send pool.
const RELAY_SEND: u8 = 12;

const RING_ENTRIES: u32 = 4096;
/// Provided receive buffers: count (a power of two) and size.
const BUFFERS: u16 = 1024;
const BUFFER_SIZE: usize = 16 * 1024;
const BUFFER_GROUP: u16 = 0;
/// Provided buffers of the relay sockets' receives: each holds the recvmsg header, the
/// peer's address and a datagram of up to DATAGRAM_MAX (as the epoll loop's `recvfrom`
/// takes). Running out ends a receive without losing data (it stays in the socket until
/// the receive is re-armed).
const RELAY_BUFFERS: u16 = 256;
const RELAY_BUFFER_SIZE: usize = 16 + std::mem::size_of::<libc::sockaddr_in6>() + DATAGRAM_MAX;
const RELAY_BUFFER_GROUP: u16 = 1;
/// How long a stopping loop waits for in-flight operations before leaving anyway.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Checks that this process may use io_uring with everything the loop needs: ring
/// creation, the opcodes, provided-buffer rings (5.19) and multishot receive (6.0), the
/// last by receiving one byte over a socketpair.
pub fn probe() -> Result<(), Unavailable> {
    probe_multishot(
        &[
            (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT"),
            (opcode::RecvMulti::CODE, "IORING_OP_RECV"),
            (opcode::RecvMsgMulti::CODE, "IORING_OP_RECVMSG"),
            (opcode::Send::CODE, "IORING_OP_SEND"),
            (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
            (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD"),
            (opcode::PollRemove::CODE, "IORING_OP_POLL_REMOVE"),
            (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
        ],
        libc::SOCK_STREAM,
        |fd| opcode::RecvMulti::new(types::Fd(fd), 7).build(),
        "multishot receive (6.0)",
    )
}

pub struct UringLoop {
    // Field order is drop order: the ring (and with it the kernel's use of the buffers)
    // goes before the buffers.
    ring: IoUring,
    bufs: Option<BufRing>,
    relay_bufs: Option<BufRing>,
    /// The template of relay sockets' multishot `recvmsg`: room for the peer's address,
    /// no control data. Boxed: the kernel reads it when a receive is armed.
    msg: Box<libc::msghdr>,
    state: State,
    inbox: Inbox,
    cqes: Vec<(u64, i32, u32)>,
    /// Listeners whose multishot accept ended on an error; re-armed at the next tick.
    accept_rearm: Vec<usize>,
    /// The same for TCP allocations' listeners.
    relay_accept_rearm: Vec<Key>,
    stopping: bool,
    accept_errors: u64,
    /// The client listeners' accepts were cancelled (a new process took them over).
    listeners_off: bool,
    /// Wake-ups gather completions (deferred task work and IORING_FEAT_MIN_TIMEOUT).
    /// Without deferred task work the kernel wakes the loop for each completion anyway
    /// (stop 23 measured no gain), so it is used only with it.
    coalesce: bool,
    /// How long a wake-up waits for more completions.
    pace: Pace,
}

impl UringLoop {
    /// Sets up the ring on the calling thread; on failure the state comes back for the
    /// epoll loop.
    #[allow(clippy::result_large_err)]
    pub fn new(state: State, inbox: Inbox) -> Result<Self, (Unavailable, State, Inbox)> {
        // Must be built on the thread that runs the loop (single issuer). Deferred task
        // work (6.1): completions are made when the loop waits, not by interrupting it,
        // and a datagram or segment arriving wakes the loop only once enough completions
        // are ready (see `wait`). Kernels without these flags still run the loop, slower.
        let deferred = IoUring::builder()
            .setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(RING_ENTRIES);
        let coalesce = deferred
            .as_ref()
            .is_ok_and(|r| r.params().is_feature_min_timeout());
        let ring = deferred
            .or_else(|_| {
                IoUring::builder()
                    .setup_coop_taskrun()
                    .setup_single_issuer()
                    .build(RING_ENTRIES)
            })
            .or_else(|_| IoUring::new(RING_ENTRIES));
        let ring = match ring {
            Ok(r) => r,
            Err(e) => return Err((setup_error(e), state, inbox)),
        };
        let bufs = match BufRing::registered(&ring, BUFFERS, BUFFER_SIZE, BUFFER_GROUP) {
            Ok(b) => b,
            Err(e) => return Err((e, state, inbox)),
        };
        let relay_bufs = match BufRing::registered(
            &ring,
            RELAY_BUFFERS,
            RELAY_BUFFER_SIZE,
            RELAY_BUFFER_GROUP,
        ) {
            Ok(b) => b,
            Err(e) => return Err((e, state, inbox)),
        };
        // SAFETY: all-zero is a valid msghdr (no name buffer, no iovec: the kernel puts
        // both into the provided buffer).
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        let mut state = state;
        // The multishot receive of a connection whose reading paused keeps filling
        // provided buffers until its cancel lands: at most the ring's worth of bytes that
        // were already on their way, kept rather than counted as an overrun.
        state.rx_in_flight = usize::from(BUFFERS) * BUFFER_SIZE;
        state.peer_sends = Some(SendPool::new());
        let mut me = Self {
            ring,
            bufs: Some(bufs),
            relay_bufs: Some(relay_bufs),
            msg,
            state,
            inbox,
            cqes: Vec::with_capacity(RING_ENTRIES as usize * 2),
            accept_rearm: Vec::new(),
            relay_accept_rearm: Vec::new(),
            stopping: false,
            accept_errors: 0,
            listeners_off: false,
            coalesce,
            pace: Pace::default(),
        };
        let wake = opcode::PollAdd::new(types::Fd(me.inbox.waker.fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(token(WAKE, 0));
        me.push(wake);
        for l in 0..me.state.listeners.len() {
            me.arm_accept(l);
        }
        Ok(me)
    }

    /// Queues a submission (see [`push`]; one the ring refuses is lost, as it always
    /// was here: the kernel failed to take the queue).
    fn push(&mut self, e: squeue::Entry) {
        push(&mut self.ring, &e);
    }

    fn arm_accept(&mut self, l: usize) {
        let fd = self.state.listeners[l].sock.as_raw_fd();
        let e = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(token(ACCEPT, l as u32));
        self.push(e);
    }

    /// Runs until the shard is told to stop; returns the core.
    pub fn run(mut self) -> Server {
        while !self.inbox.stopping() {
            self.sync(Instant::now());
            let wait = self
                .state
                .deadline()
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1))
                + Duration::from_millis(1);
            if let Err(e) = self.wait(wait) {
                tracing::error!(error = %e, "io_uring_enter failed; the TCP/TLS data path stops");
                break;
            }
            let now = Instant::now();
            self.reap(now);
            if self.state.deadline() <= now {
                self.state.tick(now);
                for l in std::mem::take(&mut self.accept_rearm) {
                    self.arm_accept(l);
                }
                for k in std::mem::take(&mut self.relay_accept_rearm) {
                    self.arm_relay_accept(k);
                }
            }
        }
        self.stop();
        self.state.server
    }

    /// Submits what is queued and sleeps until completions arrive or `wait` passes.
    /// Where the kernel can (6.13, with deferred task work), a wake-up gathers several
    /// completions for as long as [`Pace`] says from the rate they come at: at 20k echoes/s
    /// over 1000 connections one turn then serves several frames and datagrams instead of
    /// one wake-up (and two context switches) each; a quiet loop does not wait.
    fn wait(&mut self, wait: Duration) -> io::Result<()> {
        if !self.coalesce {
            return submit_and_wait(&self.ring, 1, wait, None);
        }
        // `cqes` still holds the last turn's completions.
        let (want, min_wait_us) = self.pace.next(self.cqes.len(), Instant::now());
        submit_and_wait(&self.ring, want, wait, min_wait_us)
    }

    /// Closes every connection and waits (bounded) until the kernel holds none of their
    /// buffers.
    fn stop(&mut self) {
        self.stopping = true;
        self.state.close_all();
        let deadline = Instant::now() + STOP_GRACE;
        let busy = |s: &State| {
            s.open_streams() > 0 || s.peer_sends.as_ref().is_some_and(|p| p.in_flight() > 0)
        };
        while busy(&self.state) && Instant::now() < deadline {
            self.sync(Instant::now());
            if self.wait(Duration::from_millis(50)).is_err() {
                break;
            }
            self.reap(Instant::now());
        }
        if busy(&self.state) {
            // The kernel may still write into receive buffers or read send queues: keep
            // that memory alive for the rest of the process rather than free it under it.
            tracing::warn!(
                connections = self.state.open_streams(),
                "TCP connections still in flight at stop"
            );
            std::mem::forget(self.bufs.take());
            std::mem::forget(self.relay_bufs.take());
            std::mem::forget(self.state.peer_sends.take());
            for c in self.state.conns.values_mut() {
                std::mem::forget(std::mem::take(&mut c.wire.tx));
            }
            for c in self.state.peers.values_mut() {
                std::mem::forget(std::mem::take(&mut c.wire.tx));
            }
        }
    }
}

impl Completions for UringLoop {
    fn ring_and_buffer(&mut self) -> (&mut IoUring, &mut Vec<(u64, i32, u32)>) {
        (&mut self.ring, &mut self.cqes)
    }

    fn complete(&mut self, ud: u64, res: i32, flags: u32, now: Instant) {
        let (kind, key) = Key::from_token(ud);
        let more = cqueue::more(flags);
        match kind {
            WAKE => {
                if !more {
                    let wake =
                        opcode::PollAdd::new(types::Fd(self.inbox.waker.fd()), libc::POLLIN as u32)
                            .multi(true)
                            .build()
                            .user_data(token(WAKE, 0));
                    self.push(wake);
                }
                self.inbox.waker.clear();
                self.inbox.run_jobs(&mut self.state.server);
                self.state.apply_commands(now);
                if !self.stopping {
                    // A stopping loop leaves them in the channel: dropped with it, they
                    // close and give their admission count back.
                    self.state.adopt_moved(now);
                }
                self.stop_listening_if_asked();
            }
            ACCEPT => {
                let l = key.idx as usize;
                if res >= 0 {
                    // SAFETY: the kernel just created this descriptor for us.
                    let stream = unsafe { TcpStream::from_raw_fd(res) };
                    if !self.stopping
                        && let Some(id) = self.state.accept(l, stream, now)
                    {
                        self.state.touch(id); // arms its receive
                    }
                } else if !self.listeners_off {
                    let e = io::Error::from_raw_os_error(-res);
                    self.accept_errors += 1;
                    if self.accept_errors.is_power_of_two() {
                        super::epoll::accept_error(&e, self.state.listeners[l].addr);
                    }
                }
                if !more && !self.listeners_off {
                    // Ended (out of descriptors, typically): try again at the next tick
                    // rather than spin.
                    self.accept_rearm.push(l);
                }
            }
            RECV => self.received(Side::Client, key, res, flags, now),
            PEER_RECV => self.received(Side::Peer, key, res, flags, now),
            SEND | PEER_SEND => {
                let side = if kind == SEND {
                    Side::Client
                } else {
                    Side::Peer
                };
                let Some(c) = self.state.table_mut(side).get_mut(key) else {
                    return;
                };
                c.io.send_inflight = false;
                if res >= 0 {
                    self.state.sent_on(side, key, res as usize, now);
                } else {
                    let e = io::Error::from_raw_os_error(-res);
                    self.state.close_on(side, key, format!("send: {e}"));
                }
                self.state.touch_on(side, key);
            }
            PEER_CONNECT => {
                let Some(c) = self.state.peers.get_mut(key) else {
                    return;
                };
                c.io.poll_armed = false;
                if c.closing.is_some() || !c.connecting {
                    return self.state.touch_on(Side::Peer, key);
                }
                let outcome = if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    connect_outcome(&c.stream)
                };
                self.state.connect_done(key, outcome, now);
            }
            RELAY_ACCEPT => {
                if res >= 0 {
                    // SAFETY: the kernel just created this descriptor for us.
                    let stream = unsafe { TcpStream::from_raw_fd(res) };
                    if !self.stopping {
                        self.state.peer_accepted(key, stream, now);
                    }
                } else if -res != libc::ECANCELED
                    && let Some(l) = self.state.relay_listeners.get(key)
                {
                    let e = io::Error::from_raw_os_error(-res);
                    self.accept_errors += 1;
                    if self.accept_errors.is_power_of_two() {
                        super::epoll::accept_error(&e, l.addr);
                    }
                }
                if !more && self.state.relay_listeners.get(key).is_some() {
                    self.relay_accept_rearm.push(key);
                }
            }
            RELAY_IN => self.datagram(key, res, flags, now),
            RELAY_SEND => self.state.peer_send_done(key.idx as usize, res),
            RELAY_OUT => {
                if let Some(r) = self.state.relays.get_mut(key) {
                    r.edge.watching_out = false;
                    self.state.relay_writable(key, now);
                }
            }
            _ => {}
        }
    }
}

impl UringLoop {
    fn received(&mut self, side: Side, id: Key, res: i32, flags: u32, now: Instant) {
        let more = cqueue::more(flags);
        if res > 0 {
            let Some(bid) = cqueue::buffer_select(flags) else {
                return self
                    .state
                    .close_on(side, id, "receive completed without a buffer");
            };
            let bufs = self
                .bufs
                .as_mut()
                .expect("buffers live while the loop runs");
            self.state
                .received_on(side, id, bufs.get(bid, res as usize), now);
            bufs.recycle(bid);
        } else if res == 0 {
            self.state.close_on(side, id, side.closed_remotely());
        } else if -res != libc::ENOBUFS && -res != libc::ECANCELED {
            let e = io::Error::from_raw_os_error(-res);
            self.state.close_on(side, id, format!("receive: {e}"));
        }
        if !more && let Some(c) = self.state.table_mut(side).get_mut(id) {
            // Ended (cancelled, out of buffers, closed): the sync decides what next.
            c.io.recv_armed = false;
            c.io.recv_cancelling = false;
            self.state.touch_on(side, id);
        }
    }

    /// After an upgrade the new process accepts on the same listening sockets: the
    /// multishot accepts are cancelled (not shut down: that would stop the new process's
    /// accepts too) and the connections this loop has stay. A connection accepted before
    /// the cancel landed is served here like the others.
    fn stop_listening_if_asked(&mut self) {
        if self.listeners_off
            || self
                .state
                .listening
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        self.listeners_off = true;
        self.accept_rearm.clear();
        for l in 0..self.state.listeners.len() {
            let e = opcode::AsyncCancel::new(token(ACCEPT, l as u32))
                .build()
                .user_data(token(IGNORE, 0));
            self.push(e);
        }
    }

    /// Turns the state's requests into submissions.
    fn sync(&mut self, now: Instant) {
        while let Some(work) = self.state.next_work() {
            match work {
                Work::Socket(change) => self.relay_socket(change),
                Work::Relay(change) => self.relay_change(change),
                Work::Conn(side, id) => self.conn(side, id, now),
            }
        }
        // A full socket buffer completes a send with EAGAIN at once: the state then
        // stalls the client.
        if let Some(sends) = self.state.peer_sends.as_mut() {
            let ring = &mut self.ring;
            sends.submit(|e| push(ring, e), |slot| token(RELAY_SEND, slot as u32));
        }
    }

    /// One connection's submissions: its send, its receive, its connect, or its end.
    fn conn(&mut self, side: Side, id: Key, now: Instant) {
        let Some(c) = self.state.table_mut(side).get_mut(id) else {
            return;
        };
        c.io.touched = false;
        let fd = c.stream.as_raw_fd();
        let recv_token = id.token(side.pick(RECV, PEER_RECV));
        if c.closing.is_some() {
            if !c.io.shut {
                c.io.shut = true;
                if c.io.poll_armed {
                    let e = opcode::PollRemove::new(id.token(PEER_CONNECT))
                        .build()
                        .user_data(token(IGNORE, 0));
                    self.push(e);
                }
                let c = self.state.table_mut(side).get_mut(id).expect("still here");
                // Completes a pending receive (EOF) and send (EPIPE).
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
                self.state.shut_on(side, id);
                let c = self.state.table_mut(side).get_mut(id).expect("still here");
                if c.io.recv_armed && !c.io.recv_cancelling {
                    c.io.recv_cancelling = true;
                    let e = opcode::AsyncCancel::new(recv_token)
                        .build()
                        .user_data(token(IGNORE, 0));
                    self.push(e);
                }
            }
            let c = self.state.table(side).get(id).expect("still here");
            if !c.io.recv_armed && !c.io.send_inflight && !c.io.poll_armed {
                self.state.release_on(side, id, now);
            }
            return;
        }
        if c.connecting {
            if !c.io.poll_armed {
                c.io.poll_armed = true;
                let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32)
                    .build()
                    .user_data(id.token(PEER_CONNECT));
                self.push(e);
            }
            return;
        }
        if c.moving.is_some() {
            // Another worker reads it next: first this loop's receive must have ended (its
            // last completion delivered what it still read) and its send completed, so no
            // byte is lost or reordered and the kernel holds no pointer into its queue.
            // Their completions touch it again.
            if c.io.recv_armed {
                if !c.io.recv_cancelling {
                    c.io.recv_cancelling = true;
                    let e = opcode::AsyncCancel::new(recv_token)
                        .build()
                        .user_data(token(IGNORE, 0));
                    self.push(e);
                }
            } else if !c.io.send_inflight {
                self.state.move_out(id, now);
            }
            return;
        }
        if !c.io.send_inflight {
            let buf = c.wire.tx.peek();
            if !buf.is_empty() {
                let (ptr, len) = (buf.as_ptr(), buf.len() as u32);
                c.io.send_inflight = true;
                let e = opcode::Send::new(types::Fd(fd), ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(id.token(side.pick(SEND, PEER_SEND)));
                self.push(e);
            }
        }
        let c = self.state.table_mut(side).get_mut(id).expect("still here");
        if c.wants_read() && !c.io.recv_armed {
            c.io.recv_armed = true;
            let e = opcode::RecvMulti::new(types::Fd(fd), BUFFER_GROUP)
                .build()
                .user_data(recv_token);
            self.push(e);
        } else if !c.wants_read() && c.io.recv_armed && !c.io.recv_cancelling {
            // Backpressure: stop taking bytes; what arrives before the cancel lands is kept.
            c.io.recv_cancelling = true;
            let e = opcode::AsyncCancel::new(recv_token)
                .build()
                .user_data(token(IGNORE, 0));
            self.push(e);
        }
    }
}
