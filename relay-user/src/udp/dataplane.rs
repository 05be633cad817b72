//! A UDP worker: one thread that owns its shard's core, its own member of every
//! listener's SO_REUSEPORT group, and the relay sockets of the allocations its core made.
//! It waits on epoll, drains ready sockets in recvmmsg batches, hands each datagram to the
//! core, carries out the core's commands (relay sockets, XDP maps), sends what came back,
//! and logs the core's events.
//!
//! The kernel hashes a client's 4-tuple to the same group member every time, so all of a
//! client's datagrams reach the worker that holds its allocation, and peers reach it
//! through the allocation's relay socket. A single owner means no locks on the packet
//! path; the kernel fast path carries the bulk of the media, and these loops what it
//! passes up.

use std::{
    collections::HashMap,
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    thread::JoinHandle,
    time::Instant,
};

use anyhow::Context as _;
use relay_common::AllocCounters;
use relay_proto::server::{
    AllocationId, ClientOutput, Command, Event, FiveTuple, PeerOutput, RELAY_BIND_ATTEMPTS, Server,
    Transport,
};

use super::{
    batch::{BATCH, RecvBatch, SendBatch},
    socket::{bind_udp, bind_udp_reuseport},
};
use crate::shard::{Inbox, Kernel};

const WAKE: u64 = u64::MAX;
const RELAY_TOKEN_BASE: u64 = 1 << 32;
/// Batches taken from one socket before looking at the others (fairness).
const BATCHES_PER_WAKEUP: usize = 8;

struct Listener {
    addr: SocketAddr,
    sock: UdpSocket,
}

struct Relay {
    sock: UdpSocket,
    slot: usize,
}

pub struct Dataplane {
    server: Server,
    epoll: OwnedFd,
    inbox: Inbox,
    listeners: Vec<Listener>,
    /// What the core's commands act on; apart from the receive batch so that commands can
    /// be carried out while a received packet is still borrowed.
    relays: Relays,
    rx: RecvBatch,
    tx: SendBatch,
    out: Box<[u8]>,
    /// `tx.errors` when the last warning was logged.
    send_errors_logged: u64,
}

/// The relay sockets and the kernel mirror.
struct Relays {
    /// The worker's epoll set (owned by [`Dataplane::epoll`], which outlives this).
    epoll: RawFd,
    kernel: Kernel,
    sockets: HashMap<SocketAddr, Relay>,
    /// Relay token slot → its bind address; freed slots are reused.
    slots: Vec<Option<SocketAddr>>,
    free_slots: Vec<usize>,
    /// Kernel counters of allocations being removed, read before their map entries go,
    /// for the log line of the event that follows (same `apply_commands` call).
    ended: Vec<(AllocationId, AllocCounters)>,
}

impl Dataplane {
    /// Binds this worker's member of every listener's SO_REUSEPORT group now, so that a
    /// failure is a startup error naming the address (check with
    /// [`claim_listener`](super::claim_listener) first that nobody else holds it).
    /// `inbox` brings control-plane jobs (reload, drain, admin queries); `kernel` mirrors
    /// the core's commands into the XDP maps when the fast path is on.
    pub fn new(
        server: Server,
        listen: &[SocketAddr],
        inbox: Inbox,
        kernel: Kernel,
    ) -> anyhow::Result<Self> {
        // SAFETY: plain syscalls; results checked.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error()).context("epoll_create1");
        }
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        epoll_add(epoll.as_raw_fd(), inbox.waker.fd(), WAKE)?;
        let mut listeners = Vec::new();
        for (i, addr) in listen.iter().enumerate() {
            let sock = bind_udp_reuseport(*addr).with_context(|| format!("listen {addr} (udp)"))?;
            epoll_add(epoll.as_raw_fd(), sock.as_raw_fd(), i as u64)?;
            listeners.push(Listener { addr: *addr, sock });
        }
        let relays = Relays {
            epoll: epoll.as_raw_fd(),
            kernel,
            sockets: HashMap::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            ended: Vec::with_capacity(4),
        };
        Ok(Self {
            server,
            epoll,
            inbox,
            listeners,
            relays,
            rx: RecvBatch::new(),
            tx: SendBatch::new(),
            out: vec![0; 65536].into_boxed_slice(),
            send_errors_logged: 0,
        })
    }

    /// Runs the loop on its own thread until the shard is told to stop; joining gives
    /// the core back (for the final report).
    pub fn spawn(mut self, name: &str) -> anyhow::Result<JoinHandle<Server>> {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                self.run();
                self.server
            })
            .context("starting a dataplane thread")
    }

    fn run(&mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        while !self.inbox.stopping() {
            let timeout = match self.server.poll_timeout() {
                // Round up so we never wake just before the deadline and spin.
                Some(t) => {
                    t.saturating_duration_since(Instant::now())
                        .as_millis()
                        .min(1000) as i32
                        + 1
                }
                None => 1000,
            };
            // SAFETY: events has room for 64 entries.
            let n = unsafe {
                libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 64, timeout)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "epoll_wait failed; the UDP data path stops");
                return;
            }
            for ev in &events[..n as usize] {
                let token = ev.u64;
                if token == WAKE {
                    self.inbox.waker.clear();
                    self.inbox.run_jobs(&mut self.server);
                } else {
                    self.drain(token);
                }
            }
            let now = Instant::now();
            if self.server.poll_timeout().is_some_and(|t| t <= now) {
                self.server.handle_timeout(now);
            }
            self.relays.apply_commands(&mut self.server, now, None);
            crate::events::flush_rate_limited();
        }
    }

    /// Reads a ready socket until it is empty or has had its share.
    fn drain(&mut self, token: u64) {
        let relay = if token >= RELAY_TOKEN_BASE {
            match self
                .relays
                .slots
                .get((token - RELAY_TOKEN_BASE) as usize)
                .copied()
                .flatten()
            {
                Some(addr) => Some(addr),
                None => return, // closed since the event was queued
            }
        } else {
            None
        };
        let fd = match relay {
            Some(addr) => match self.relays.sockets.get(&addr) {
                Some(r) => r.sock.as_raw_fd(),
                None => return,
            },
            None => self.listeners[token as usize].sock.as_raw_fd(),
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
                    None => {
                        let listener = &self.listeners[token as usize];
                        let five = FiveTuple {
                            client: from,
                            listener: listener.addr,
                            transport: Transport::Udp,
                        };
                        let mut output =
                            self.server.handle_client(now, five, packet, &mut self.out);
                        // A reply may announce an allocation: its relay socket must exist
                        // before the response leaves. If the port cannot be bound the core
                        // voids that allocation and the same request, handed in again, gets
                        // another port (or 508 once the core has given up: the loop ends).
                        for _ in 0..=RELAY_BIND_ATTEMPTS {
                            if !matches!(output, ClientOutput::Reply { .. })
                                || !self
                                    .relays
                                    .apply_commands(&mut self.server, now, Some(&five))
                            {
                                break;
                            }
                            output = self.server.handle_client(now, five, packet, &mut self.out);
                        }
                        match output {
                            ClientOutput::Nothing => {}
                            ClientOutput::Reply { len } => {
                                self.tx
                                    .push(listener.sock.as_raw_fd(), &self.out[..len], &from)
                            }
                            ClientOutput::ToPeer {
                                relay,
                                peer,
                                payload,
                            } => {
                                if let Some(r) = self.relays.sockets.get(&relay) {
                                    self.tx.push(r.sock.as_raw_fd(), payload, &peer);
                                }
                            }
                            ClientOutput::ToClient { to, len } => queue_to_client(
                                &mut self.tx,
                                &self.listeners,
                                &to,
                                &self.out[..len],
                            ),
                        }
                    }
                    Some(relay_addr) => {
                        match self
                            .server
                            .handle_peer(now, relay_addr, from, packet, &mut self.out)
                        {
                            PeerOutput::Drop(_) => {}
                            PeerOutput::ToClient { to, len } => queue_to_client(
                                &mut self.tx,
                                &self.listeners,
                                &to,
                                &self.out[..len],
                            ),
                        }
                    }
                }
            }
            // Commands first: a new allocation gets its socket, and a permission or channel
            // its XDP map entry, before the response that lets the client use it leaves.
            self.relays.apply_commands(&mut self.server, now, None);
            self.tx.flush();
            if self.tx.errors > self.send_errors_logged && self.tx.errors.is_power_of_two() {
                self.send_errors_logged = self.tx.errors;
                let error = self
                    .tx
                    .last_error
                    .as_ref()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                tracing::warn!(%error, total = self.tx.errors, "UDP sends failed (socket buffer full or no route)");
            }
            if n < BATCH {
                return;
            }
        }
    }
}

impl Relays {
    /// Relay sockets follow the core's allocation commands; events become log lines.
    /// `true` if a relay port of an allocation for `client` could not be bound: the core
    /// voided it, and its Allocate must be handed to the core again.
    fn apply_commands(
        &mut self,
        server: &mut Server,
        now: Instant,
        client: Option<&FiveTuple>,
    ) -> bool {
        let mut bind_failed = false;
        while let Some(cmd) = server.poll_command() {
            if let Command::AllocationRemoved { id, relay, .. } = &cmd
                && let Some(c) = self.kernel.allocation_counters(*relay)
            {
                self.ended.push((*id, c));
            }
            self.kernel.apply(&cmd);
            match cmd {
                Command::AllocationCreated {
                    relay, client: c, ..
                } => {
                    if let Err(e) = self.open_relay(relay) {
                        tracing::warn!(%relay, client = %c, error = %e,
                            "cannot bind relay port (another program holds it? keep the relay port range out of net.ipv4.ip_local_port_range); the core voids the allocation and the request is retried on another port");
                        server.relay_unavailable(now, relay);
                        bind_failed |= Some(&c) == client;
                    }
                }
                Command::AllocationRemoved { relay, .. } => self.close_relay(relay),
                // Permissions and channels only matter to the kernel fast path (above).
                Command::PermissionCreated { .. }
                | Command::PermissionRemoved { .. }
                | Command::ChannelBound { .. }
                | Command::ChannelUnbound { .. } => {}
                // RFC 6062 TCP allocations exist only for TCP/TLS clients: not on this shard.
                Command::ConnectPeer { .. }
                | Command::SendToClient { .. }
                | Command::SpliceConnection { .. }
                | Command::CloseConnection { .. } => {}
            }
        }
        while let Some(event) = server.poll_event() {
            let kernel = match &event {
                Event::AllocationExpired { id, .. }
                | Event::AllocationDeleted { id, .. }
                | Event::AllocationClosed { id, .. } => kernel_total(&self.ended, *id),
                _ => None,
            };
            crate::events::log_with_kernel(event, kernel);
        }
        self.ended.clear();
        bind_failed
    }

    fn open_relay(&mut self, relay: SocketAddr) -> io::Result<()> {
        let sock = bind_udp(relay)?;
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        if let Err(e) = epoll_add(self.epoll, sock.as_raw_fd(), RELAY_TOKEN_BASE + slot as u64) {
            self.free_slots.push(slot);
            return Err(io::Error::other(e));
        }
        self.slots[slot] = Some(relay);
        self.sockets.insert(relay, Relay { sock, slot });
        Ok(())
    }

    fn close_relay(&mut self, relay: SocketAddr) {
        if let Some(r) = self.sockets.remove(&relay) {
            // Closing the fd removes it from the epoll set.
            self.slots[r.slot] = None;
            self.free_slots.push(r.slot);
        }
    }
}

/// The kernel's counters for allocation `id`, over both relayed addresses of a dual one.
fn kernel_total(
    ended: &[(AllocationId, AllocCounters)],
    id: AllocationId,
) -> Option<AllocCounters> {
    let mut found = ended
        .iter()
        .filter(|(i, _)| *i == id)
        .map(|(_, c)| c)
        .peekable();
    found.peek()?;
    Some(AllocCounters::sum(found))
}

fn queue_to_client(tx: &mut SendBatch, listeners: &[Listener], to: &FiveTuple, bytes: &[u8]) {
    match listeners.iter().find(|l| l.addr == to.listener) {
        Some(l) if to.transport == Transport::Udp => tx.push(l.sock.as_raw_fd(), bytes, &to.client),
        _ => {} // stream clients are served by the TCP path
    }
}

fn epoll_add(epoll: RawFd, fd: RawFd, token: u64) -> anyhow::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: valid fds and event struct.
    if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error()).context("epoll_ctl");
    }
    Ok(())
}
