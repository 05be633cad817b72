//! A UDP worker: one thread that owns its shard's core, its own member of every
//! listener's SO_REUSEPORT group, and the relay sockets of the allocations its core made.
//! It hands each datagram to the core, carries out the core's commands (relay sockets,
//! XDP maps), sends what came back, and logs the core's events; an io_uring loop where
//! the kernel allows it, else an epoll loop.
//!
//! The kernel hashes a client's 4-tuple to the same group member every time, so all of a
//! client's datagrams reach the worker that holds its allocation, and peers reach it
//! through the allocation's relay socket. A single owner means no locks on the packet
//! path; the kernel fast path carries the bulk of the media, and these loops what it
//! passes up.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, RawFd},
    thread::JoinHandle,
};

use anyhow::Context as _;
use relay_proto::server::Server;

use super::{
    epoll::EpollLoop,
    plane::{Listener, Plane},
    socket::bind_udp_reuseport,
    uring::{self, UringLoop},
};
use crate::{
    config::IoEngine,
    event_loop::{EventLoop, Logs, run_loop},
    shard::{Inbox, apply::Mirror},
};

/// Overrides `[udp] engine` (tests run both loops on one config).
pub const ENGINE_ENV: &str = "RELAY_UDP_ENGINE";
/// What a worker logs about its event loop.
const LOGS: Logs = Logs {
    running: "UDP worker running",
    running_at_info: false,
    fallback: "io_uring loop cannot start; this UDP worker uses epoll",
    failed: "cannot create the epoll instance; this UDP worker stops",
};

/// A socket's address and descriptor.
pub type Bound = (SocketAddr, RawFd);

pub struct Dataplane {
    plane: Plane,
    engine: IoEngine,
}

impl Dataplane {
    /// Binds this worker's member of every listener's SO_REUSEPORT group now, so that a
    /// failure is a startup error naming the address (check with
    /// [`claim_listener`](super::claim_listener) first that nobody else holds it).
    /// `inbox` brings control-plane jobs (reload, drain, admin queries); `mirror` carries
    /// the core's commands into the XDP maps when the fast path is on, and its events
    /// into the counters; `engine` comes
    /// from [`choose_engine`].
    pub fn new(
        server: Server,
        listen: &[SocketAddr],
        inbox: Inbox,
        mirror: Mirror,
        engine: IoEngine,
    ) -> anyhow::Result<Self> {
        let mut listeners = Vec::new();
        for addr in listen {
            let sock = bind_udp_reuseport(*addr).with_context(|| format!("listen {addr} (udp)"))?;
            listeners.push(Listener { addr: *addr, sock });
        }
        Ok(Self {
            plane: Plane::new(server, listeners, Vec::new(), inbox, mirror),
            engine,
        })
    }

    /// A worker on the sockets a previous process handed over: its member of every
    /// listener's SO_REUSEPORT group (in the listeners' order) and the relay sockets of
    /// the allocations `server` restored. Nothing is bound: no port is free for a moment.
    pub fn adopt(
        server: Server,
        listeners: Vec<(SocketAddr, UdpSocket)>,
        relays: Vec<(SocketAddr, UdpSocket)>,
        inbox: Inbox,
        mirror: Mirror,
        engine: IoEngine,
    ) -> Self {
        let listeners = listeners
            .into_iter()
            .map(|(addr, sock)| Listener { addr, sock })
            .collect();
        Self {
            plane: Plane::new(server, listeners, relays, inbox, mirror),
            engine,
        }
    }

    /// Runs the loop on its own thread until the shard is told to stop; joining gives
    /// the worker back, with its core and sockets (for the final report, or a handover).
    pub fn spawn(self, name: &str) -> anyhow::Result<JoinHandle<Dataplane>> {
        let name_owned = name.to_owned();
        let engine = self.engine;
        // A stop left over from a handover that failed is cleared: the loop runs again.
        self.plane.inbox.resume();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || Dataplane {
                plane: run(self.plane, engine, &name_owned),
                engine,
            })
            .context("starting a dataplane thread")
    }

    pub fn server(&self) -> &Server {
        &self.plane.server
    }

    /// This worker's listener sockets (in the listeners' order) and relay sockets, each
    /// with its address; valid while `self` lives.
    pub fn sockets(&self) -> (Vec<Bound>, Vec<Bound>) {
        let listeners = self
            .plane
            .listeners
            .iter()
            .map(|l| (l.addr, l.sock.as_raw_fd()))
            .collect();
        (listeners, self.plane.relay_sockets().collect())
    }
}

impl EventLoop for UringLoop {
    type Parts = Plane;
    type Output = Plane;
    type Error = crate::uring::Unavailable;
    const ENGINE: &'static str = "io_uring";

    /// The ring is built here: it belongs to this thread (single issuer).
    fn start(plane: Plane) -> Result<Self, (Self::Error, Plane)> {
        Self::new(plane)
    }

    fn run(self) -> Plane {
        self.run()
    }
}

impl EventLoop for EpollLoop {
    type Parts = Plane;
    type Output = Plane;
    type Error = anyhow::Error;
    const ENGINE: &'static str = "epoll";

    fn start(plane: Plane) -> Result<Self, (Self::Error, Plane)> {
        Self::new(plane)
    }

    fn run(self) -> Plane {
        self.run()
    }
}

fn run(plane: Plane, engine: IoEngine, name: &str) -> Plane {
    run_loop::<UringLoop, EpollLoop>(engine, plane, &LOGS, name)
}

/// `[udp] engine`, overridden by `RELAY_UDP_ENGINE`; with `auto`, io_uring if the probe
/// passes, else epoll with the reason logged. `io_uring` that cannot run is an error.
pub fn choose_engine(configured: IoEngine) -> anyhow::Result<IoEngine> {
    crate::uring::choose_engine(configured, ENGINE_ENV, "udp.engine", "UDP", uring::probe)
}
