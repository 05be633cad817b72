//! The control side of a load thread's allocations: each one's socket, state and TURN
//! session, and the bookkeeping that chains setup steps, refreshes and failures.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use super::{
    plan::Shared,
    stats::SetupStats,
    stream::{StreamConn, StreamError},
    sys,
    turn::{Ctx, Failure, Next, Session, Step},
};

/// Permissions last 300 s and channels 600 s (RFC 8656): refreshing every 240 s keeps
/// both, and the allocation, alive in runs of any length.
pub const REFRESH_EVERY: Duration = Duration::from_secs(240);
/// After a failed refresh, try again this soon.
const REFRESH_RETRY: Duration = Duration::from_secs(10);
/// 300s followed for one allocation: a second hop is a node that was full or draining
/// when the first named it (worth counting); a third would be a loop.
const MAX_HOPS: u8 = 2;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Idle,
    Setup,
    Ready,
    Failed,
    Deleted,
}

/// An allocation's way to the server.
pub(super) enum Conn {
    Udp(UdpSocket),
    Stream(Box<StreamConn>),
}

impl Conn {
    /// Sends one whole datagram or frame without blocking.
    pub(super) fn send(&mut self, buf: &[u8]) -> Result<(), StreamError> {
        match self {
            Conn::Udp(s) => Ok(sys::send(s.as_raw_fd(), buf)?),
            Conn::Stream(s) => s.send(buf),
        }
    }
}

pub(super) struct Alloc {
    pub(super) conn: Option<Conn>,
    pub(super) index: u32,
    pub(super) session: Session,
    pub(super) state: State,
    pub(super) started: Instant,
    pub(super) next_refresh: Instant,
    pub(super) inflight: bool,
    pub(super) seq: u64,
}

/// Control-plane bookkeeping, apart from the sockets and buffers so both can be
/// borrowed at once.
pub(super) struct Control {
    pub(super) ctx: Option<Ctx>,
    pub(super) setup: SetupStats,
    pub(super) inflight: Vec<usize>,
    pub(super) refresh_failures: u64,
    pub(super) deleted: u64,
    pub(super) shared: Arc<Shared>,
    /// Where a session's request is written before it is sent.
    pub(super) out: Box<[u8]>,
}

impl Control {
    /// Carries out what a session asked for, chaining the setup and refresh steps.
    pub(super) fn drive(&mut self, a: &mut Alloc, i: usize, next: Next, now: Instant) {
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
            Next::Redirect(to) => self.redirect(a, i, to, now),
        }
    }

    /// A 300 ALTERNATE-SERVER: with `--follow-redirects`, the allocation starts over at
    /// `to` from the same UDP socket (connected there now), with a new client (the new
    /// server has its own nonces); else, or over a stream, or after `MAX_HOPS`, it failed.
    fn redirect(&mut self, a: &mut Alloc, i: usize, to: SocketAddr, now: Instant) {
        let Some(ctx) = self.ctx.as_mut() else {
            return;
        };
        let hops = a.session.hops + 1;
        let moved = match &a.conn {
            Some(Conn::Udp(s)) if ctx.follow_redirects && hops <= MAX_HOPS => s.connect(to).is_ok(),
            _ => false,
        };
        if !moved {
            self.fail(a, Failure::Error(300), now);
            return;
        }
        self.setup.redirects += 1;
        if hops > 1 {
            self.setup.redirected_again += 1;
        }
        a.session.abandon(now);
        a.session = Session::new();
        a.session.hops = hops;
        let next = a.session.start(ctx, Step::Allocate, now);
        self.drive(a, i, next, now);
    }

    pub(super) fn fail(&mut self, a: &mut Alloc, f: Failure, now: Instant) {
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
    pub(super) fn scan(&mut self, allocs: &mut [Alloc], now: Instant) {
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
    pub(super) fn compact(&mut self, allocs: &mut [Alloc]) {
        self.inflight.retain(|&i| {
            let pending = allocs[i].session.pending_step().is_some();
            allocs[i].inflight = pending;
            pending
        });
    }

    /// Starts the refresh of every ready allocation whose time has come.
    pub(super) fn refresh_due(&mut self, allocs: &mut [Alloc], now: Instant) {
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
