//! The fallback event loop: level-triggered epoll over non-blocking sockets, for hosts
//! where io_uring is unavailable (kernel.io_uring_disabled, seccomp, old kernels) or
//! `[tcp] engine = "epoll"`. One thread, like the io_uring loop, driving the same
//! [`State`]; only how bytes move differs. RFC 6062 peer connections are watched like
//! client connections under their own kind (for writability while connecting), TCP
//! allocations' listeners like the client listeners.

use std::{
    io::{self, Read as _, Write as _},
    os::fd::{AsRawFd, RawFd},
    sync::atomic::Ordering,
    time::Instant,
};

use relay_proto::server::Server;

use super::{
    conn::Conn,
    state::{RelayChange, Side, State, Work, connect_outcome, token},
};
use crate::{
    epoll::{Epoll, ctl},
    shard::{Inbox, relays::Registry, slab::Key},
};

const WAKE: u8 = 1;
const LISTENER: u8 = 2;
const CONN: u8 = 3;
const RELAY: u8 = 4;
const PEER: u8 = 5;
const RELAY_LISTENER: u8 = 6;
/// Reads per readable connection per wake-up (fairness between connections).
const READS_PER_EVENT: usize = 4;
/// Accepts per readable listener per wake-up.
const ACCEPTS_PER_EVENT: usize = 64;
const READ_BUF: usize = 64 * 1024;

const IN: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
const OUT: u32 = libc::EPOLLOUT as u32;

pub struct EpollLoop {
    state: State,
    inbox: Inbox,
    epoll: Epoll,
    read_buf: Box<[u8]>,
    /// The client listeners left the epoll set (a new process took them over).
    listeners_off: bool,
}

impl EpollLoop {
    /// On failure the state and inbox come back (the caller still owns the core).
    #[allow(clippy::result_large_err)]
    pub fn new(state: State, inbox: Inbox) -> Result<Self, (io::Error, State, Inbox)> {
        let epoll = match Epoll::new() {
            Ok(e) => e,
            Err(e) => return Err((e, state, inbox)),
        };
        let mut me = Self {
            state,
            inbox,
            epoll,
            read_buf: vec![0; READ_BUF].into_boxed_slice(),
            listeners_off: false,
        };
        match me.register() {
            Ok(()) => {
                me.state.relays.set_registry(Registry::Epoll {
                    epoll: me.epoll.fd(),
                    kind: RELAY,
                    events: IN,
                });
                Ok(me)
            }
            Err(e) => Err((e, me.state, me.inbox)),
        }
    }

    fn register(&self) -> io::Result<()> {
        self.ctl(
            libc::EPOLL_CTL_ADD,
            self.inbox.waker.fd(),
            libc::EPOLLIN as u32,
            token(WAKE, 0),
        )?;
        for (i, l) in self.state.listeners.iter().enumerate() {
            l.sock.set_nonblocking(true)?;
            self.ctl(
                libc::EPOLL_CTL_ADD,
                l.sock.as_raw_fd(),
                libc::EPOLLIN as u32,
                token(LISTENER, i as u32),
            )?;
        }
        Ok(())
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.epoll.ctl(op, fd, events, token)
    }

    /// Runs until the shard is told to stop; returns the core.
    pub fn run(mut self) -> Server {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        while !self.inbox.stopping() {
            let now = Instant::now();
            // Round up so the loop never wakes just before the deadline and spins.
            let timeout = self
                .state
                .deadline()
                .saturating_duration_since(now)
                .as_millis()
                .min(1000) as i32
                + 1;
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "epoll_wait failed; the TCP/TLS data path stops");
                    break;
                }
            };
            let now = Instant::now();
            for ev in &events[..n] {
                let (ready, tok) = (ev.events, ev.u64);
                self.dispatch(ready, tok, now);
            }
            if self.state.deadline() <= now {
                self.state.tick(now);
            }
            self.sync(now);
        }
        self.state.close_all();
        self.sync(Instant::now());
        self.state.server
    }

    fn dispatch(&mut self, ready: u32, tok: u64, now: Instant) {
        let (kind, key) = Key::from_token(tok);
        match kind {
            WAKE => {
                self.inbox.waker.clear();
                self.inbox.run_jobs(&mut self.state.server);
                self.state.apply_commands(now);
                self.state.adopt_moved(now);
                self.stop_listening_if_asked();
            }
            LISTENER if self.listeners_off => {}
            LISTENER => self.accept(key.idx as usize, now),
            RELAY_LISTENER => self.accept_peers(key, now),
            CONN | PEER => {
                let side = if kind == CONN {
                    Side::Client
                } else {
                    Side::Peer
                };
                let gone = ready & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
                if side == Side::Peer
                    && let Some(c) = self.state.peers.get(key)
                    && c.connecting
                {
                    if ready & OUT != 0 || gone {
                        let outcome = match connect_outcome(&c.stream) {
                            Ok(()) if gone => {
                                Err(io::Error::from(io::ErrorKind::ConnectionRefused))
                            }
                            outcome => outcome,
                        };
                        self.state.connect_done(key, outcome, now);
                    }
                    return;
                }
                if gone
                    && !self
                        .state
                        .table(side)
                        .get(key)
                        .is_some_and(|c| c.wants_read())
                {
                    // Reported even without interest: a paused connection must not spin.
                    return self
                        .state
                        .close_on(side, key, "connection reset or hung up");
                }
                if ready & IN != 0 || gone {
                    self.read(side, key, now);
                }
                if ready & OUT != 0 {
                    self.state.touch_on(side, key);
                }
            }
            RELAY => {
                let ep = self.epoll.fd();
                if ready & OUT != 0
                    && let Some(r) = self.state.relays.get_mut(key)
                {
                    r.edge.watching_out = false;
                    if let Err(e) = ctl(
                        ep,
                        libc::EPOLL_CTL_MOD,
                        r.sock.as_raw_fd(),
                        IN,
                        key.token(RELAY),
                    ) {
                        tracing::warn!(error = %e, "epoll_ctl on a relay socket");
                    }
                    self.state.relay_writable(key, now);
                }
                if ready & (libc::EPOLLIN | libc::EPOLLERR) as u32 != 0 {
                    self.state.peer_readable(key, now);
                }
            }
            _ => {}
        }
    }

    /// After an upgrade the new process accepts on the same listening sockets: this loop
    /// stops watching them (the sockets stay open; closing them here would not unbind
    /// them, the new process holds them too) and keeps its connections.
    fn stop_listening_if_asked(&mut self) {
        if self.listeners_off || self.state.listening.load(Ordering::SeqCst) {
            return;
        }
        self.listeners_off = true;
        for l in &self.state.listeners {
            if let Err(e) = self.ctl(libc::EPOLL_CTL_DEL, l.sock.as_raw_fd(), 0, 0) {
                tracing::warn!(listen = %l.addr, error = %e, "cannot stop watching a handed-over listener");
            }
        }
    }

    fn accept(&mut self, l: usize, now: Instant) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let stream = match self.state.listeners[l].sock.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    accept_error(&e, self.state.listeners[l].addr);
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let Some(id) = self.state.accept(l, stream, now) else {
                continue;
            };
            let fd = self.state.conns.get(id).map(|c| c.stream.as_raw_fd());
            if let Some(fd) = fd {
                match self.ctl(libc::EPOLL_CTL_ADD, fd, IN, id.token(CONN)) {
                    Ok(()) => {
                        if let Some(c) = self.state.conns.get_mut(id) {
                            c.io.epoll_mask = IN;
                            c.io.registered = true;
                        }
                    }
                    Err(e) => self.state.close(id, format!("epoll_ctl: {e}")),
                }
            }
        }
    }

    /// Peers connecting to a TCP allocation's listener `k`.
    fn accept_peers(&mut self, k: Key, now: Instant) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let Some(l) = self.state.relay_listeners.get(k) else {
                return;
            };
            let stream = match l.sock.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    accept_error(&e, l.addr);
                    return;
                }
            };
            self.state.peer_accepted(k, stream, now);
        }
    }

    fn read(&mut self, side: Side, id: Key, now: Instant) {
        for _ in 0..READS_PER_EVENT {
            let Some(c) = self.state.table(side).get(id) else {
                return;
            };
            if !c.wants_read() {
                return;
            }
            let n = match (&c.stream).read(&mut self.read_buf) {
                Ok(0) => return self.state.close_on(side, id, side.closed_remotely()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.state.close_on(side, id, format!("receive: {e}")),
            };
            self.state.received_on(side, id, &self.read_buf[..n], now);
            if n < self.read_buf.len() {
                return;
            }
        }
    }

    /// Carries out what the state asked for: relay sockets to (un)watch, data to send,
    /// reading to pause or resume, connections to close.
    fn sync(&mut self, now: Instant) {
        while let Some(work) = self.state.next_work() {
            match work {
                // An epoll registry queues none: sockets join the set as they open.
                Work::Socket(_) => {}
                Work::Relay(change) => self.relay_change(change),
                Work::Conn(side, id) => self.conn(side, id, now),
            }
        }
        // Closing a relay socket's fd takes it out of the set.
        self.state.relays.bury();
    }

    /// One touched connection: sends what it can, updates its interest, or releases it.
    fn conn(&mut self, side: Side, id: Key, now: Instant) {
        let Some(c) = self.state.table_mut(side).get_mut(id) else {
            return;
        };
        c.io.touched = false;
        if c.closing.is_some() {
            // Closing the socket also takes it out of the epoll set.
            return self.state.release_on(side, id, now);
        }
        if c.moving.is_some() {
            // Out of this set first: the worker it moves to watches it in its own.
            let (registered, fd) = (c.io.registered, c.stream.as_raw_fd());
            if registered && let Err(e) = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0) {
                return self.state.close_on(side, id, format!("epoll_ctl: {e}"));
            }
            return self.state.move_out(id, now);
        }
        if let Err(e) = self.flush(side, id, now) {
            return self.state.close_on(side, id, format!("send: {e}"));
        }
        self.update_interest(side, id);
    }

    fn relay_change(&mut self, change: RelayChange) {
        match change {
            RelayChange::ListenerOpened(k) => {
                if let Some(l) = self.state.relay_listeners.get(k)
                    && let Err(e) = self.ctl(
                        libc::EPOLL_CTL_ADD,
                        l.sock.as_raw_fd(),
                        libc::EPOLLIN as u32,
                        k.token(RELAY_LISTENER),
                    )
                {
                    tracing::warn!(relay = %l.addr, error = %e, "cannot watch a TCP relay listener; peers cannot connect to it");
                }
            }
            RelayChange::ListenerClosed(_, sock) => drop(sock),
            RelayChange::WantWritable(k) => {
                let ep = self.epoll.fd();
                if let Some(r) = self.state.relays.get_mut(k)
                    && !r.edge.watching_out
                {
                    r.edge.watching_out = true;
                    let _ = ctl(
                        ep,
                        libc::EPOLL_CTL_MOD,
                        r.sock.as_raw_fd(),
                        IN | OUT,
                        k.token(RELAY),
                    );
                }
            }
        }
    }

    /// Writes what `id` has queued until its socket is full.
    fn flush(&mut self, side: Side, id: Key, now: Instant) -> io::Result<()> {
        loop {
            let Some(c) = self.state.table_mut(side).get_mut(id) else {
                return Ok(());
            };
            if c.closing.is_some() || c.connecting {
                return Ok(());
            }
            let Conn { stream, wire, .. } = c;
            let buf = wire.tx.peek();
            if buf.is_empty() {
                return Ok(());
            }
            match (&*stream).write(buf) {
                Ok(n) => self.state.sent_on(side, id, n, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Read interest while the connection may read, write interest while it has a queue
    /// or is connecting. Peer connections join the set here, on their first look.
    fn update_interest(&mut self, side: Side, id: Key) {
        let Some(c) = self.state.table_mut(side).get_mut(id) else {
            return;
        };
        if c.closing.is_some() || c.io.touched {
            return; // handled when it comes off the list again
        }
        let mask = if c.connecting {
            OUT
        } else {
            (if c.wants_read() { IN } else { 0 }) | if c.wire.tx.is_empty() { 0 } else { OUT }
        };
        if mask != c.io.epoll_mask || !c.io.registered {
            let fd = c.stream.as_raw_fd();
            let op = if c.io.registered {
                libc::EPOLL_CTL_MOD
            } else {
                libc::EPOLL_CTL_ADD
            };
            c.io.epoll_mask = mask;
            c.io.registered = true;
            if let Err(e) = self.ctl(op, fd, mask, id.token(side.pick(CONN, PEER))) {
                self.state.close_on(side, id, format!("epoll_ctl: {e}"));
            }
        }
    }
}

/// Logged once per kind of failure burst: running out of descriptors is the one an
/// operator must act on.
pub fn accept_error(e: &io::Error, listener: std::net::SocketAddr) {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => tracing::warn!(%listener, error = %e,
            "cannot accept TCP connections: out of file descriptors (raise LimitNOFILE / ulimit -n)"),
        Some(libc::ECONNABORTED | libc::EINTR) => {}
        _ => tracing::warn!(%listener, error = %e, "accept failed"),
    }
}
