//! The epoll loop of a UDP worker: waits on epoll, drains ready sockets in recvmmsg
//! batches, and sends what the core returned with one sendmmsg per run of datagrams
//! leaving through the same socket. It runs where io_uring cannot (see
//! [`super::uring`]).

use std::{io, os::fd::AsRawFd, time::Instant};

use anyhow::Context as _;

use super::{
    batch::{BATCH, RecvBatch, SendBatch},
    plane::{LISTENER, Plane, RELAY, WAKE},
};
use crate::{
    epoll::Epoll,
    shard::{relays::Registry, slab::Key},
};

/// Batches taken from one socket before looking at the others (fairness).
const BATCHES_PER_WAKEUP: usize = 8;

pub(super) struct EpollLoop {
    plane: Plane,
    epoll: Epoll,
    rx: RecvBatch,
    tx: SendBatch,
}

impl EpollLoop {
    #[allow(clippy::result_large_err)] // once per worker at startup
    pub fn new(mut plane: Plane) -> Result<Self, (anyhow::Error, Plane)> {
        match Self::epoll(&plane) {
            Ok(epoll) => {
                plane.relays.set_registry(Registry::Epoll {
                    epoll: epoll.fd(),
                    kind: RELAY,
                    events: libc::EPOLLIN as u32,
                });
                // Allocations a handover restored get their relay sockets before the
                // first datagram is read (else its answer would find none).
                plane.apply_commands(std::time::Instant::now());
                Ok(Self {
                    plane,
                    epoll,
                    rx: RecvBatch::new(),
                    tx: SendBatch::new(),
                })
            }
            Err(e) => Err((e, plane)),
        }
    }

    fn epoll(plane: &Plane) -> anyhow::Result<Epoll> {
        let epoll = Epoll::new().context("epoll_create1")?;
        epoll
            .add(plane.inbox.waker.fd(), Key::fixed_token(WAKE, 0))
            .context("epoll_ctl")?;
        for (i, l) in plane.listeners.iter().enumerate() {
            epoll
                .add(l.sock.as_raw_fd(), Key::fixed_token(LISTENER, i))
                .with_context(|| format!("epoll_ctl (listener {})", l.addr))?;
        }
        Ok(epoll)
    }

    pub fn run(mut self) -> Plane {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        while !self.plane.inbox.stopping() {
            let timeout = self.plane.wait_ms() as i32;
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "epoll_wait failed; the UDP data path stops");
                    break;
                }
            };
            for ev in &events[..n] {
                let (kind, key) = Key::from_token(ev.u64);
                if kind == WAKE {
                    self.plane.inbox.waker.clear();
                    self.plane.inbox.run_jobs(&mut self.plane.server);
                } else {
                    self.drain(kind, key);
                }
            }
            // Nothing is queued here (every drain flushed): what the timers closed goes.
            self.plane.tick(Instant::now());
            self.plane.relays.bury();
        }
        self.plane
    }

    /// Reads a ready socket until it is empty or has had its share.
    fn drain(&mut self, kind: u8, key: Key) {
        let (relay, fd) = match kind {
            RELAY => match self.plane.relays.addr_fd(key) {
                Some((addr, fd)) => (Some(addr), fd),
                None => return, // closed since the event was queued
            },
            LISTENER => match self.plane.listeners.get(key.idx as usize) {
                Some(l) => (None, l.sock.as_raw_fd()),
                None => return,
            },
            _ => return,
        };
        for _ in 0..BATCHES_PER_WAKEUP {
            let n = match self.rx.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "recvmmsg");
                    return;
                }
            };
            let now = Instant::now();
            for i in 0..n {
                let Some((from, packet)) = self.rx.get(i) else {
                    continue;
                };
                match relay {
                    None => self.plane.client_datagram(
                        now,
                        key.idx as usize,
                        from,
                        packet,
                        &mut self.tx,
                    ),
                    Some(addr) => self
                        .plane
                        .peer_datagram(now, addr, from, packet, &mut self.tx),
                }
            }
            self.plane.apply_commands(now);
            self.tx.flush();
            self.plane.relays.bury();
            self.tx.errors.report();
            if n < BATCH {
                return;
            }
        }
    }
}
