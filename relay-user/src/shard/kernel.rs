//! The XDP maps as every shard sees them: one set of kernel maps, written under a mutex
//! by whichever shard's core issued the command (control-plane rate, never per packet),
//! and read back (counters, entry counts) without that mutex: a scrape never waits for a
//! shard, nor a shard for a scrape.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use relay_common::AllocCounters;
use relay_proto::server::Command;

use crate::{
    log_window::LogWindow,
    xdp::{XdpMaps, XdpReader},
};

/// `None` inside when the fast path is off: commands are then ignored.
#[derive(Clone, Default)]
pub struct Kernel(Option<Arc<Shared>>);

struct Shared {
    writer: Mutex<Inner>,
    reader: Arc<XdpReader>,
    /// Permissions and channels the maps hold, published by the writer after each
    /// command (the bookkeeping that knows them sits behind the writer's mutex).
    permissions: AtomicUsize,
    channels: AtomicUsize,
}

struct Inner {
    maps: XdpMaps,
    /// Map write failures: a full map fails every write for as long as it is full.
    failures: LogWindow,
}

impl Kernel {
    pub fn off() -> Self {
        Self(None)
    }

    /// `reader` reads the counters of the program `maps` came from
    /// ([`XdpPath::reader`](crate::xdp::XdpPath::reader)).
    pub fn new(maps: XdpMaps, reader: Arc<XdpReader>) -> Self {
        Self(Some(Arc::new(Shared {
            writer: Mutex::new(Inner {
                maps,
                failures: LogWindow::default(),
            }),
            reader,
            permissions: AtomicUsize::new(0),
            channels: AtomicUsize::new(0),
        })))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Mirrors one core command into the maps. A failure is logged and the flow simply
    /// stays on the userspace path, which serves every packet the kernel passes up.
    pub fn apply(&self, cmd: &Command) {
        let Some(shared) = &self.0 else { return };
        let mut inner = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(more) = inner.failures.expire(now) {
            let secs = LogWindow::WINDOW.as_secs();
            tracing::warn!(
                more,
                "{more} more XDP map updates failed in the last {secs} s; those flows stay in userspace"
            );
        }
        if let Err(e) = inner.maps.apply(cmd)
            && inner.failures.admit(now)
        {
            tracing::warn!(error = %e, command = ?cmd, "XDP map update failed; this flow stays in userspace (further failures are counted for 10 s)");
        }
        let (permissions, channels) = inner.maps.permissions_and_channels();
        shared.permissions.store(permissions, Ordering::Relaxed);
        shared.channels.store(channels, Ordering::Relaxed);
    }

    /// What the kernel relayed for the relayed address `relay` (its bind address), summed
    /// over CPUs. `None` when the fast path is off or `relay` is not in the maps (TCP/TLS
    /// clients, or already removed): then userspace carried all of its traffic. Takes no
    /// lock.
    pub fn allocation_counters(&self, relay: SocketAddr) -> Option<AllocCounters> {
        self.reader()?.allocation_counters(relay).ok()
    }

    /// The counters' read handles (admin, metrics), `None` when the fast path is off.
    pub fn reader(&self) -> Option<&XdpReader> {
        self.0.as_ref().map(|s| &*s.reader)
    }

    /// Permissions and channels written to the kernel (each allocation's share of its own:
    /// the others are served in userspace), as of the last command. Takes no lock.
    pub fn permissions_and_channels(&self) -> (usize, usize) {
        self.0.as_ref().map_or((0, 0), |s| {
            (
                s.permissions.load(Ordering::Relaxed),
                s.channels.load(Ordering::Relaxed),
            )
        })
    }

    /// The map writer itself, under its mutex: for tests and diagnostics. The data path
    /// writes through [`Kernel::apply`]; counters are read without it.
    pub fn with<T>(&self, f: impl FnOnce(&mut XdpMaps) -> T) -> Option<T> {
        let shared = self.0.as_ref()?;
        let mut inner = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
        Some(f(&mut inner.maps))
    }
}
