//! One load thread: it owns a slice of the allocations (one connected UDP socket, or one
//! TCP or TLS connection, each), sets them up with a ramp and a window of transactions in
//! flight, paces probe packets across them, reads echoes back through epoll (recvmmsg on
//! UDP, frames cut from the stream on TCP and TLS), and finally deletes them.
//!
//! Packets are sent in 1 ms ticks: each wake-up sends whatever the target rate says is
//! due, so the thread sleeps in epoll between ticks instead of spinning. Frames are built
//! once per send buffer; a packet only rewrites its 24 probe bytes.

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc, Barrier, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::Sender,
    },
    time::{Duration, Instant},
};

use relay_proto::stun::{
    ChannelData, Class, Data, Message, Method, PacketKind, TransactionId, classify,
    write_channel_data,
};

use rustls::{ClientConfig, pki_types::ServerName};

use super::{
    payload::{PROBE_LEN, Probe},
    stats::{SecondSample, SetupStats, TrafficStats, new_hist},
    stream::{Fill, StreamConn, StreamError},
    sys::{self, DATAGRAM_MAX, Epoll, Mmsg},
    turn::{Credentials, Ctx, DataMode, Failure, Next, Retransmit, Session, Step},
};
use crate::probe::Transport;

/// Permissions last 300 s and channels 600 s (RFC 8656): refreshing every 240 s keeps
/// both, and the allocation, alive in runs of any length.
pub const REFRESH_EVERY: Duration = Duration::from_secs(240);
/// After a failed refresh, try again this soon.
const REFRESH_RETRY: Duration = Duration::from_secs(10);
/// How often retransmission timers and refresh deadlines are looked at.
const TIMER_SCAN: Duration = Duration::from_millis(5);
/// Datagrams read per recvmmsg.
const RECV_BATCH: usize = 32;
/// Without a rate, each loop sends this many before reading.
const MAX_RATE_STEP: u64 = 256;
/// A pacer that fell behind sends at most this much of the backlog at once, in seconds
/// of the target rate; the rest is counted as `behind`, not sent in a burst.
const CATCH_UP_SECS: f64 = 0.005;

/// What one worker does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Index of this worker's first allocation across the run.
    pub first_index: u32,
    pub count: usize,
    pub local: IpAddr,
    /// The TURN server, or the echo peer itself in direct mode.
    pub target: SocketAddr,
    /// The peer as the relay sees it (XOR-PEER-ADDRESS).
    pub peer: SocketAddr,
    pub mode: DataMode,
    /// How allocations reach the server; the echo peer is always UDP.
    pub transport: Transport,
    /// With `Transport::Tls`: the client configuration and the name the certificate
    /// must carry.
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    pub channel: u16,
    pub credentials: Option<Credentials>,
    pub retransmit: Retransmit,
    /// Allocations this worker starts per second; None: as fast as the window allows.
    pub ramp: Option<f64>,
    /// Setup transactions in flight at once.
    pub window: usize,
    /// Packets per second this worker sends; None: as fast as it can.
    pub rate: Option<f64>,
    /// Payload bytes per packet.
    pub size: usize,
    /// Packets sent back to back on one allocation.
    pub burst: usize,
    /// How long echoes are awaited after the window.
    pub drain: Duration,
    pub delete: bool,
}

/// What the workers and the main thread share.
pub struct Shared {
    pub epoch: Instant,
    pub stop: Arc<AtomicBool>,
    pub ready: AtomicU64,
    pub failed: AtomicU64,
    /// Traffic start and end, set by the main thread before it releases `barrier`.
    pub window: OnceLock<(Instant, Instant)>,
    pub barrier: Barrier,
}

impl Shared {
    pub fn new(workers: usize, stop: Arc<AtomicBool>) -> Self {
        Self {
            epoch: Instant::now(),
            stop,
            ready: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            window: OnceLock::new(),
            barrier: Barrier::new(workers + 1),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

/// What a worker hands back at the end.
pub struct Outcome {
    pub traffic: TrafficStats,
    pub refresh_failures: u64,
    pub deleted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Setup,
    Ready,
    Failed,
    Deleted,
}

/// An allocation's way to the server.
enum Conn {
    Udp(UdpSocket),
    Stream(Box<StreamConn>),
}

impl Conn {
    /// Sends one whole datagram or frame without blocking.
    fn send(&mut self, buf: &[u8]) -> Result<(), StreamError> {
        match self {
            Conn::Udp(s) => Ok(sys::send(s.as_raw_fd(), buf)?),
            Conn::Stream(s) => s.send(buf),
        }
    }
}

struct Alloc {
    conn: Option<Conn>,
    index: u32,
    session: Session,
    state: State,
    started: Instant,
    next_refresh: Instant,
    inflight: bool,
    seq: u64,
}

/// Control-plane bookkeeping, apart from the sockets and buffers so both can be
/// borrowed at once.
struct Control {
    ctx: Option<Ctx>,
    setup: SetupStats,
    inflight: Vec<usize>,
    refresh_failures: u64,
    deleted: u64,
    shared: Arc<Shared>,
    /// Where a session's request is written before it is sent.
    out: Box<[u8]>,
}

impl Control {
    /// Carries out what a session asked for, chaining the setup and refresh steps.
    fn drive(&mut self, a: &mut Alloc, i: usize, next: Next, now: Instant) {
        let Some(ctx) = self.ctx.as_mut() else {
            return;
        };
        let next = match next {
            Next::Done(Step::Allocate) => a.session.start(ctx, Step::Bind, now),
            Next::Done(Step::Bind) if a.state == State::Ready => {
                a.session.start(ctx, Step::Refresh, now)
            }
            other => other,
        };
        match next {
            Next::Send => {
                if let Some(c) = &mut a.conn {
                    // A lost request is retransmitted by its timer (on UDP; a stream that
                    // fails is noticed when it is read).
                    while let Some(n) = a.session.transmit(&mut self.out) {
                        let _ = c.send(&self.out[..n]);
                    }
                }
                if !a.inflight {
                    a.inflight = true;
                    self.inflight.push(i);
                }
            }
            Next::Wait => {}
            Next::Done(Step::Bind) => {
                a.state = State::Ready;
                a.next_refresh = now + REFRESH_EVERY;
                self.setup.ready += 1;
                self.setup.last_done = Some(now);
                let _ = self
                    .setup
                    .latency
                    .record(now.saturating_duration_since(a.started).as_nanos() as u64);
                self.shared.ready.fetch_add(1, Ordering::Relaxed);
            }
            Next::Done(Step::Refresh) => a.next_refresh = now + REFRESH_EVERY,
            Next::Done(Step::Delete) => {
                a.state = State::Deleted;
                self.deleted += 1;
            }
            Next::Done(Step::Allocate) => unreachable!("chained to Bind above"),
            Next::Failed(f) => self.fail(a, f, now),
        }
    }

    fn fail(&mut self, a: &mut Alloc, f: Failure, now: Instant) {
        match a.state {
            State::Ready => {
                // A refresh failed: the allocation may still carry traffic; retry soon.
                self.refresh_failures += 1;
                a.next_refresh = now + REFRESH_RETRY;
            }
            _ => {
                a.state = State::Failed;
                self.setup.fail(f.label());
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Retransmissions and refresh deadlines; forgets finished transactions.
    fn scan(&mut self, allocs: &mut [Alloc], now: Instant) {
        let mut k = 0;
        while k < self.inflight.len() {
            let i = self.inflight[k];
            let next = allocs[i].session.on_timer(now);
            self.drive(&mut allocs[i], i, next, now);
            if allocs[i].session.pending_step().is_none() {
                allocs[i].inflight = false;
                self.inflight.swap_remove(k);
            } else {
                k += 1;
            }
        }
    }

    /// Forgets finished transactions at once, so the setup window refills without
    /// waiting for the next timer scan.
    fn compact(&mut self, allocs: &mut [Alloc]) {
        self.inflight.retain(|&i| {
            let pending = allocs[i].session.pending_step().is_some();
            allocs[i].inflight = pending;
            pending
        });
    }

    /// Starts the refresh of every ready allocation whose time has come.
    fn refresh_due(&mut self, allocs: &mut [Alloc], now: Instant) {
        let Some(ctx) = self.ctx.as_mut() else {
            return;
        };
        let mut due = Vec::new();
        for (i, a) in allocs.iter_mut().enumerate() {
            if a.state == State::Ready && !a.inflight && now >= a.next_refresh {
                due.push((i, a.session.start(ctx, Step::Bind, now)));
            }
        }
        for (i, next) in due {
            self.drive(&mut allocs[i], i, next, now);
        }
    }
}

/// The frame every send buffer holds; a packet rewrites only the probe in it.
struct Frame {
    len: usize,
    probe_at: usize,
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
            Ctx::new(
                plan.peer,
                plan.mode,
                plan.channel,
                plan.transport.into(),
                plan.credentials.clone(),
                plan.retransmit,
            )
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
        let stats = std::mem::take(&mut self.control.setup);
        let _ = setup_done.send(stats);
        let shared = self.control.shared.clone();
        shared.barrier.wait();
        if let Some(&(start, end)) = shared.window.get() {
            self.traffic(start, end);
            self.drain(end);
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
            let now = Instant::now();
            if now - last_scan >= TIMER_SCAN {
                last_scan = now;
                self.control.scan(&mut self.allocs, now);
            } else {
                self.control.compact(&mut self.allocs);
            }
        }
        // Interrupted: whatever is still being set up will not be used.
        for a in &mut self.allocs {
            if a.state == State::Setup {
                a.state = State::Failed;
            }
        }
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
            let now = Instant::now();
            if now - last_scan >= TIMER_SCAN {
                last_scan = now;
                self.control.scan(&mut self.allocs, now);
            } else {
                self.control.compact(&mut self.allocs);
            }
        }
    }

    /// Reads whatever is ready, waiting up to `timeout_ms`. `window_end` is the end of
    /// the traffic window when probes count, None during setup and teardown.
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

    /// Opens allocation `i`'s TCP or TLS connection; a failure leaves it without one
    /// (a `socket` failure), reported once.
    fn connect(&mut self, i: usize) {
        let local = SocketAddr::new(self.plan.local, 0);
        let tls = self.plan.tls.as_ref().map(|(c, n)| (c, n));
        let result = StreamConn::connect(local, self.plan.target, tls).and_then(|s| {
            self.epoll.add_stream(s.fd(), i as u64)?;
            Ok(s)
        });
        match result {
            Ok(s) => self.allocs[i].conn = Some(Conn::Stream(Box::new(s))),
            Err(e) if !self.connect_error_shown => {
                self.connect_error_shown = true;
                eprintln!(
                    "relay load: cannot open a {} connection from {local} to {}: {e}",
                    self.plan.transport, self.plan.target
                );
            }
            Err(_) => {}
        }
    }

    /// A stream woke up: write what waits, then read and handle every whole frame.
    fn on_stream(&mut self, i: usize, window_end: Option<Instant>) {
        let arrival = Arrival::new(&self.control.shared, self.plan.mode, window_end);
        let result = 'io: loop {
            let Some(Conn::Stream(s)) = self.allocs[i].conn.as_mut() else {
                return;
            };
            if let Err(e) = s.flush() {
                break 'io Err(e);
            }
            let fill = match s.fill() {
                Ok(f) => f,
                Err(e) => break 'io Err(e),
            };
            loop {
                let Some(Conn::Stream(s)) = self.allocs[i].conn.as_mut() else {
                    return;
                };
                match s.next_frame(&mut self.scratch) {
                    Ok(Some(n)) => on_packet(
                        &mut self.control,
                        &mut self.allocs[i],
                        i,
                        &mut self.traffic,
                        &mut self.second,
                        &self.scratch[..n],
                        arrival,
                    ),
                    Ok(None) => break,
                    Err(e) => break 'io Err(e),
                }
            }
            if fill == Fill::Drained {
                break Ok(());
            }
        };
        if let Err(e) = result {
            self.stream_lost(i, &e);
        }
    }

    /// A stream failed: its allocation is gone with it (RFC 8656 §3.1).
    fn stream_lost(&mut self, i: usize, e: &StreamError) {
        let now = Instant::now();
        let a = &mut self.allocs[i];
        // Closing the socket also takes it out of the epoll set.
        a.conn = None;
        a.session.abandon(now);
        match a.state {
            State::Setup => {
                let why = match e {
                    StreamError::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        Failure::Unreachable
                    }
                    StreamError::Tls(_) => Failure::Tls,
                    _ => Failure::Closed,
                };
                if !self.connect_error_shown {
                    // The counts say how many; the first reason says why.
                    self.connect_error_shown = true;
                    eprintln!(
                        "relay load: allocation {}: {} connection to {}: {e}",
                        a.index, self.plan.transport, self.plan.target
                    );
                }
                self.control.fail(a, why, now);
            }
            State::Ready => {
                // Its probes from now on count as send errors.
                a.state = State::Failed;
                self.traffic.last_send_error = Some(format!(
                    "{} connection of allocation {}: {e}",
                    self.plan.transport, a.index
                ));
            }
            State::Idle | State::Failed | State::Deleted => {}
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

/// When and how an arrival counts.
#[derive(Clone, Copy)]
struct Arrival {
    now: Instant,
    now_ns: u64,
    mode: DataMode,
    /// Probes count (traffic window or drain), not setup or teardown.
    counting: bool,
    in_window: bool,
}

impl Arrival {
    fn new(shared: &Shared, mode: DataMode, window_end: Option<Instant>) -> Self {
        let now = Instant::now();
        Self {
            now,
            now_ns: shared.ns(now),
            mode,
            counting: window_end.is_some(),
            in_window: window_end.is_some_and(|end| now < end),
        }
    }
}

/// One datagram or frame from the server (or the peer, in direct mode): a response
/// for the session, or an echoed probe to account.
fn on_packet(
    control: &mut Control,
    a: &mut Alloc,
    i: usize,
    traffic: &mut TrafficStats,
    second: &mut SecondSample,
    d: &[u8],
    at: Arrival,
) {
    let payload = match (at.mode, classify(d)) {
        (DataMode::Direct, _) => Some(d),
        (DataMode::Channel, PacketKind::ChannelData) => {
            ChannelData::parse(d).ok().map(|c| c.payload())
        }
        (_, PacketKind::Stun) => {
            let Ok(msg) = Message::parse(d) else {
                traffic.foreign += u64::from(at.counting);
                return;
            };
            if msg.class() == Class::Indication && msg.method() == Method::DATA {
                match msg.attr::<Data>() {
                    Some(Ok(Data(p))) => Some(p),
                    _ => None,
                }
            } else {
                if control.ctx.is_some() {
                    let next = a.session.on_response(d, at.now);
                    control.drive(a, i, next, at.now);
                }
                return;
            }
        }
        _ => None,
    };
    if !at.counting {
        return;
    }
    match payload.and_then(Probe::read) {
        Some(p) if p.alloc == a.index => {
            let rtt = at.now_ns.saturating_sub(p.sent_ns);
            traffic.received += 1;
            let _ = traffic.rtt.record(rtt.max(1));
            if at.in_window {
                traffic.received_in_window += 1;
                second.received += 1;
                let _ = second.rtt.record(rtt.max(1));
            }
        }
        _ => traffic.foreign += 1,
    }
}

/// Whole milliseconds from `now` to `at`, rounded up (epoll's unit); 0 when past.
fn ms_until(now: Instant, at: Instant) -> i32 {
    let d = at.saturating_duration_since(now);
    if d.is_zero() {
        0
    } else {
        d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
    }
}

/// Writes the constant part of every packet (framing and filler) into each send buffer.
fn prefill(tx: &mut Mmsg, plan: &Plan) -> Frame {
    // Filler a capture shows as ours; the probe overwrites the first bytes.
    let mut payload = vec![0u8; plan.size];
    for (k, b) in payload.iter_mut().enumerate() {
        *b = b"relay-load "[k % 11];
    }
    let mut frame = Frame {
        len: 0,
        probe_at: 0,
    };
    for k in 0..tx.capacity() {
        let buf = tx.buf_mut(k);
        frame = match plan.mode {
            DataMode::Direct => {
                buf[..plan.size].copy_from_slice(&payload);
                Frame {
                    len: plan.size,
                    probe_at: 0,
                }
            }
            DataMode::Channel => {
                // Streams carry ChannelData padded to 4 (RFC 8656 §12.5).
                let pad = plan.transport != Transport::Udp;
                let len = write_channel_data(&mut buf[..], plan.channel, &payload, pad)
                    .expect("payload fits a send buffer");
                Frame { len, probe_at: 4 }
            }
            DataMode::Send => {
                // A fixed transaction id: indications are not transactions, and a constant
                // XOR-PEER-ADDRESS lets every packet reuse the frame.
                let txid = TransactionId(*b"relay-load-1");
                let len = relay_client::send_indication(&mut buf[..], txid, plan.peer, &payload)
                    .expect("payload fits a send buffer");
                // DATA is last: its value starts where its padded value ends, minus padding.
                let padded = (plan.size + 3) & !3;
                Frame {
                    len,
                    probe_at: len - padded,
                }
            }
        };
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::payload::MAGIC;
    use relay_proto::stun::XorPeerAddress;

    fn plan(mode: DataMode, size: usize) -> Plan {
        Plan {
            first_index: 0,
            count: 1,
            local: "127.0.0.1".parse().unwrap(),
            target: "127.0.0.1:3478".parse().unwrap(),
            peer: "192.0.2.10:7000".parse().unwrap(),
            mode,
            transport: Transport::Udp,
            tls: None,
            channel: 0x4001,
            credentials: None,
            retransmit: Retransmit {
                rto: Duration::from_millis(100),
                rto_max: Duration::MAX,
                tries: 2,
                timeout: Duration::from_secs(1),
            },
            ramp: None,
            window: 8,
            rate: None,
            size,
            burst: 2,
            drain: Duration::ZERO,
            delete: false,
        }
    }

    #[test]
    fn frames_carry_the_probe_where_receivers_look() {
        for (mode, size) in [
            (DataMode::Direct, 24),
            (DataMode::Channel, 101),
            (DataMode::Send, 101),
            (DataMode::Send, 160),
        ] {
            let p = plan(mode, size);
            let mut tx = Mmsg::new(2);
            let f = prefill(&mut tx, &p);
            let probe = Probe {
                alloc: 3,
                seq: 9,
                sent_ns: 77,
            };
            probe.write(&mut tx.buf_mut(1)[f.probe_at..f.probe_at + PROBE_LEN]);
            let pkt = &tx.buf_mut(1)[..f.len];
            let payload = match mode {
                DataMode::Direct => pkt,
                DataMode::Channel => {
                    let c = ChannelData::parse(pkt).unwrap();
                    assert_eq!(c.channel(), 0x4001);
                    c.payload()
                }
                DataMode::Send => {
                    let m = Message::parse(pkt).unwrap();
                    assert_eq!((m.class(), m.method()), (Class::Indication, Method::SEND));
                    assert!(
                        matches!(m.attr::<XorPeerAddress>(), Some(Ok(XorPeerAddress(a))) if a == p.peer)
                    );
                    match m.attr::<Data>() {
                        Some(Ok(Data(d))) => d,
                        other => panic!("{other:?}"),
                    }
                }
            };
            assert_eq!(payload.len(), size, "{mode:?}");
            assert_eq!(Probe::read(payload), Some(probe), "{mode:?}");
            assert_eq!(&payload[..4], &MAGIC);
        }
    }

    #[test]
    fn ms_until_rounds_up() {
        let now = Instant::now();
        assert_eq!(ms_until(now, now), 0);
        assert_eq!(ms_until(now + Duration::from_millis(1), now), 0);
        assert_eq!(ms_until(now, now + Duration::from_micros(10)), 1);
        assert_eq!(ms_until(now, now + Duration::from_micros(1500)), 2);
    }
}
