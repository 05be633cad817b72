//! One load thread: it owns a slice of the allocations (one connected UDP socket, or one
//! TCP or TLS connection, each), sets them up with a ramp and a window of transactions in
//! flight, paces probe packets across them, reads echoes back through epoll (recvmmsg on
//! UDP, frames cut from the stream on TCP and TLS), and finally deletes them.
//!
//! Packets are sent in 1 ms ticks: each wake-up sends whatever the target rate says is
//! due, so the thread sleeps in epoll between ticks instead of spinning. Frames are built
//! once per send buffer; a packet only rewrites its 24 probe bytes.
//!
//! The TCP and TLS connections (opening, pumping, losing one) are in [`streams`]: the
//! stream transports' side, which UDP allocations never reach; this file keeps the phases,
//! the pacing and the UDP reads.

mod streams;

use std::{
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{Arc, atomic::Ordering, mpsc::Sender},
    time::{Duration, Instant},
};

use super::{
    control::{Alloc, Conn, Control, State},
    frame::{Arrival, Frame, ms_until, on_packet, prefill},
    listing::Listed,
    payload::{PROBE_LEN, Probe},
    plan::{Plan, Shared},
    stats::{SecondSample, SetupStats, TrafficStats, new_hist},
    sys::{self, DATAGRAM_MAX, Epoll, Mmsg},
    turn::{Ctx, DataMode, Failure, Session, Step},
};
use crate::probe::Transport;

/// How often retransmission timers and refresh deadlines are looked at.
const TIMER_SCAN: Duration = Duration::from_millis(5);
/// Datagrams read per recvmmsg.
const RECV_BATCH: usize = 32;
/// Without a rate, each loop sends this many before reading.
const MAX_RATE_STEP: u64 = 256;
/// A pacer that fell behind sends at most this much of the backlog at once, in seconds
/// of the target rate; the rest is counted as `behind`, not sent in a burst.
const CATCH_UP_SECS: f64 = 0.005;

/// What a worker hands back at the end.
pub struct Outcome {
    pub traffic: TrafficStats,
    pub refresh_failures: u64,
    pub deleted: u64,
}

pub struct Worker {
    plan: Plan,
    allocs: Vec<Alloc>,
    control: Control,
    epoll: Epoll,
    rx: Mmsg,
    tx: Mmsg,
    frame: Frame,
    /// One frame cut from a stream, handled while the stream is borrowed no more.
    scratch: Box<[u8]>,
    /// The first failed connect or connection has been reported.
    connect_error_shown: bool,
    traffic: TrafficStats,
    second: SecondSample,
    seconds: Sender<SecondSample>,
}

impl Worker {
    /// Opens this worker's sockets. A socket that cannot be made is a failed allocation
    /// (labelled `socket`), not a failed run.
    pub fn new(
        plan: Plan,
        shared: Arc<Shared>,
        seconds: Sender<SecondSample>,
    ) -> io::Result<(Self, Option<String>)> {
        let epoll = Epoll::new(256)?;
        let now = Instant::now();
        let mut allocs = Vec::with_capacity(plan.count);
        let mut first_error = None;
        let local = SocketAddr::new(plan.local, 0);
        for k in 0..plan.count {
            // Streams connect when their allocation's turn in the ramp comes.
            let udp =
                (plan.transport == Transport::Udp).then(|| sys::connected_udp(local, plan.target));
            let conn = match udp {
                None => None,
                Some(Ok(s)) => {
                    epoll.add(s.as_raw_fd(), k as u64)?;
                    Some(Conn::Udp(s))
                }
                Some(Err(e)) => {
                    first_error.get_or_insert_with(|| {
                        format!(
                            "cannot open a UDP socket from {local} to {}: {e}",
                            plan.target
                        )
                    });
                    None
                }
            };
            allocs.push(Alloc {
                conn,
                index: plan.first_index + k as u32,
                session: Session::new(),
                state: State::Idle,
                started: now,
                next_refresh: now,
                inflight: false,
                seq: 0,
            });
        }
        let ctx = (plan.mode != DataMode::Direct).then(|| {
            let mut ctx = Ctx::new(
                plan.peer,
                plan.mode,
                plan.channel,
                plan.transport.into(),
                plan.credentials.clone(),
                plan.retransmit,
            );
            ctx.follow_redirects = plan.follow_redirects;
            ctx
        });
        let mut tx = Mmsg::new(plan.burst);
        let frame = prefill(&mut tx, &plan);
        let worker = Self {
            control: Control {
                ctx,
                setup: SetupStats::new(),
                inflight: Vec::new(),
                refresh_failures: 0,
                deleted: 0,
                shared,
                out: vec![0; relay_client::MAX_REQUEST].into_boxed_slice(),
            },
            allocs,
            epoll,
            rx: Mmsg::new(RECV_BATCH),
            tx,
            frame,
            scratch: vec![0; DATAGRAM_MAX].into_boxed_slice(),
            connect_error_shown: false,
            traffic: TrafficStats::new(),
            second: SecondSample {
                index: 0,
                sent: 0,
                received: 0,
                rtt: new_hist(),
            },
            seconds,
            plan,
        };
        Ok((worker, first_error))
    }

    fn shared(&self) -> &Shared {
        &self.control.shared
    }

    /// Setup, then (after the main thread opens the window) traffic, drain, teardown.
    pub fn run(mut self, setup_done: Sender<SetupStats>) -> Outcome {
        self.setup();
        if self.plan.list {
            self.list();
        }
        let stats = std::mem::take(&mut self.control.setup);
        let _ = setup_done.send(stats);
        let shared = self.control.shared.clone();
        shared.barrier.wait();
        if let Some(&(start, end)) = shared.window.get() {
            self.traffic(start, end);
            self.drain(end);
            self.traffic.socket_drops = self
                .allocs
                .iter()
                .map(|a| match &a.conn {
                    Some(Conn::Udp(s)) => sys::receive_drops(s.as_raw_fd()),
                    _ => 0,
                })
                .sum();
        }
        if self.plan.delete {
            self.teardown();
        }
        Outcome {
            traffic: self.traffic,
            refresh_failures: self.control.refresh_failures,
            deleted: self.control.deleted,
        }
    }

    fn setup(&mut self) {
        let start = Instant::now();
        let n = self.allocs.len();
        let mut next = 0;
        let mut last_scan = start;
        while !self.shared().stopped() {
            let now = Instant::now();
            let allowed = match self.plan.ramp {
                Some(r) => (((now - start).as_secs_f64() * r) as usize + 1).min(n),
                None => n,
            };
            while next < allowed && self.control.inflight.len() < self.plan.window {
                if self.plan.transport != Transport::Udp {
                    self.connect(next);
                }
                let a = &mut self.allocs[next];
                if a.conn.is_none() {
                    a.state = State::Failed;
                    self.control.setup.fail(Failure::Socket.label());
                    self.control.shared.failed.fetch_add(1, Ordering::Relaxed);
                } else if let Some(ctx) = self.control.ctx.as_mut() {
                    a.state = State::Setup;
                    a.started = now;
                    self.control.setup.first_start.get_or_insert(now);
                    let step = a.session.start(ctx, Step::Allocate, now);
                    self.control.drive(a, next, step, now);
                } else {
                    // Direct: nothing to set up.
                    a.state = State::Ready;
                    self.control.setup.ready += 1;
                    self.control.shared.ready.fetch_add(1, Ordering::Relaxed);
                }
                next += 1;
            }
            if next == n && self.control.inflight.is_empty() {
                break;
            }
            let timeout = match self.plan.ramp {
                Some(r) if next < n => {
                    let at = start + Duration::from_secs_f64(next as f64 / r);
                    ms_until(now, at).min(5)
                }
                _ => 5,
            };
            self.poll(timeout, None);
            self.run_timers(&mut last_scan);
        }
        // Interrupted: whatever is still being set up will not be used.
        for a in &mut self.allocs {
            if a.state == State::Setup {
                a.state = State::Failed;
            }
        }
    }

    /// The ready UDP allocations, for `--allocations-file`.
    fn list(&self) {
        let listed = self.allocs.iter().filter_map(|a| {
            let (Some(Conn::Udp(s)), State::Ready) = (&a.conn, a.state) else {
                return None;
            };
            Some(Listed {
                client: s.local_addr().ok()?,
                server: self.plan.target,
                channel: self.plan.channel,
                relayed: a.session.relayed?,
                peer: self.plan.peer,
            })
        });
        self.shared()
            .listed
            .lock()
            .expect("not poisoned")
            .extend(listed);
    }

    fn traffic(&mut self, start: Instant, end: Instant) {
        let ready: Vec<usize> = (0..self.allocs.len())
            .filter(|&i| self.allocs[i].state == State::Ready)
            .collect();
        let mut scheduled: u64 = 0;
        let mut cursor = 0;
        let mut next_second = start + Duration::from_secs(1);
        let mut last_scan = start;
        let catch_up = self
            .plan
            .rate
            .map_or(MAX_RATE_STEP, |r| ((r * CATCH_UP_SECS) as u64).max(1));
        // The main thread opens the window a moment ahead; wait for it.
        let now = Instant::now();
        if start > now {
            std::thread::sleep(start - now);
        }
        loop {
            let now = Instant::now();
            if now >= end || self.shared().stopped() {
                break;
            }
            while now >= next_second {
                self.end_second();
                next_second += Duration::from_secs(1);
            }
            let due = match self.plan.rate {
                Some(r) => {
                    let target = ((now - start).as_secs_f64() * r) as u64;
                    let mut due = target.saturating_sub(scheduled);
                    if due > catch_up {
                        self.traffic.behind += due - catch_up;
                        scheduled += due - catch_up;
                        due = catch_up;
                    }
                    due
                }
                None => MAX_RATE_STEP,
            };
            if !ready.is_empty() {
                scheduled += due;
                let mut left = due;
                while left > 0 {
                    let i = ready[cursor];
                    cursor = (cursor + 1) % ready.len();
                    let b = left.min(self.plan.burst as u64) as usize;
                    self.send_probes(i, b);
                    left -= b as u64;
                }
            }
            let timeout = match self.plan.rate {
                Some(r) => {
                    let at = start + Duration::from_secs_f64((scheduled + 1) as f64 / r);
                    ms_until(Instant::now(), at.min(end)).min(1)
                }
                None => 0,
            };
            self.poll(timeout, Some(end));
            let now = Instant::now();
            if now - last_scan >= TIMER_SCAN {
                last_scan = now;
                self.control.scan(&mut self.allocs, now);
                self.control.refresh_due(&mut self.allocs, now);
            }
        }
        // The last (possibly partial) second.
        if self.second.sent > 0 || self.second.received > 0 {
            self.end_second();
        }
    }

    /// Waits for the echoes still in flight, up to the drain time.
    fn drain(&mut self, end: Instant) {
        let until = end.max(Instant::now()) + self.plan.drain;
        loop {
            let now = Instant::now();
            if now >= until || self.traffic.received >= self.traffic.sent {
                break;
            }
            self.poll(ms_until(now, until).clamp(1, 10), Some(end));
            self.control.scan(&mut self.allocs, Instant::now());
        }
    }

    fn teardown(&mut self) {
        // Transactions of the traffic phase are abandoned: the delete replaces them.
        for &i in &self.control.inflight {
            self.allocs[i].inflight = false;
        }
        self.control.inflight.clear();
        let todo: Vec<usize> = (0..self.allocs.len())
            .filter(|&i| self.allocs[i].state == State::Ready)
            .collect();
        let mut next = 0;
        let mut last_scan = Instant::now();
        loop {
            let now = Instant::now();
            while next < todo.len() && self.control.inflight.len() < self.plan.window {
                let i = todo[next];
                if let Some(ctx) = self.control.ctx.as_mut() {
                    let a = &mut self.allocs[i];
                    let step = a.session.start(ctx, Step::Delete, now);
                    self.control.drive(a, i, step, now);
                }
                next += 1;
            }
            if next == todo.len() && self.control.inflight.is_empty() {
                break;
            }
            self.poll(5, None);
            self.run_timers(&mut last_scan);
        }
    }

    /// Reads whatever is ready, waiting up to `timeout_ms`. `window_end` is the end of
    /// the traffic window when probes count, None during setup and teardown.
    /// Retransmissions and refresh deadlines every [`TIMER_SCAN`]; in between, only
    /// forgets finished transactions so the setup window refills.
    fn run_timers(&mut self, last_scan: &mut Instant) {
        let now = Instant::now();
        if now - *last_scan >= TIMER_SCAN {
            *last_scan = now;
            self.control.scan(&mut self.allocs, now);
        } else {
            self.control.compact(&mut self.allocs);
        }
    }

    fn poll(&mut self, timeout_ms: i32, window_end: Option<Instant>) {
        let mut tokens = [0u64; 256];
        let n = match self.epoll.wait(timeout_ms) {
            Ok(ready) => {
                let mut n = 0;
                for t in ready {
                    tokens[n] = t;
                    n += 1;
                }
                n
            }
            Err(_) => 0,
        };
        for &t in &tokens[..n] {
            self.on_readable(t as usize, window_end);
        }
    }

    fn on_readable(&mut self, i: usize, window_end: Option<Instant>) {
        let fd = match &self.allocs[i].conn {
            Some(Conn::Udp(s)) => s.as_raw_fd(),
            Some(Conn::Stream(_)) => return self.on_stream(i, window_end),
            None => return,
        };
        // An ICMP error queued on the socket is reported (and cleared) by this read.
        let n = match self.rx.recv(fd) {
            Ok(n) => n,
            Err(e) => {
                // Port unreachable while setting up: nothing listens there, stop asking.
                let a = &mut self.allocs[i];
                if e.kind() == io::ErrorKind::ConnectionRefused && a.state == State::Setup {
                    let now = Instant::now();
                    a.session.abandon(now);
                    self.control.fail(a, Failure::Unreachable, now);
                }
                return;
            }
        };
        if n == 0 {
            return;
        }
        let arrival = Arrival::new(&self.control.shared, self.plan.mode, window_end);
        for k in 0..n {
            on_packet(
                &mut self.control,
                &mut self.allocs[i],
                i,
                &mut self.traffic,
                &mut self.second,
                self.rx.get(k),
                arrival,
            );
        }
    }

    /// Sends `b` probes back to back on allocation `i`.
    fn send_probes(&mut self, i: usize, b: usize) {
        let a = &mut self.allocs[i];
        let Some(conn) = a.conn.as_mut() else {
            // Its connection was lost: what would have been sent is not.
            self.traffic.send_errors += b as u64;
            return;
        };
        let now_ns = self.control.shared.ns(Instant::now());
        let at = self.frame.probe_at;
        for k in 0..b {
            let probe = Probe {
                alloc: a.index,
                seq: a.seq,
                sent_ns: now_ns,
            };
            a.seq += 1;
            probe.write(&mut self.tx.buf_mut(k)[at..at + PROBE_LEN]);
            self.tx.set_len(k, self.frame.len);
        }
        let result = match conn {
            Conn::Udp(s) if b == 1 => {
                sys::send(s.as_raw_fd(), &self.tx.buf_mut(0)[..self.frame.len])
                    .map(|()| 1)
                    .map_err(|e| e.to_string())
            }
            Conn::Udp(s) => self.tx.send(s.as_raw_fd(), b).map_err(|e| e.to_string()),
            Conn::Stream(s) => {
                // Frames back to back on the stream; one refused stops the burst.
                let mut took = 0;
                let mut err = None;
                for k in 0..b {
                    match s.send(&self.tx.buf_mut(k)[..self.frame.len]) {
                        Ok(()) => took += 1,
                        Err(e) => {
                            err = Some(e.to_string());
                            break;
                        }
                    }
                }
                match err {
                    Some(e) if took == 0 => Err(e),
                    Some(e) => {
                        self.traffic.last_send_error = Some(e);
                        Ok(took)
                    }
                    None => Ok(took),
                }
            }
        };
        let took = match result {
            Ok(n) => n,
            Err(e) => {
                self.traffic.last_send_error = Some(e);
                0
            }
        };
        self.traffic.sent += took as u64;
        self.second.sent += took as u64;
        self.traffic.send_errors += (b - took) as u64;
    }

    fn end_second(&mut self) {
        let index = self.second.index;
        let done = std::mem::replace(
            &mut self.second,
            SecondSample {
                index: index + 1,
                sent: 0,
                received: 0,
                rtt: new_hist(),
            },
        );
        let _ = self.seconds.send(done);
    }
}
