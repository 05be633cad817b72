//! The XDP maps as every shard sees them: one set of kernel maps, written under a mutex
//! by whichever shard's core issued the command (control-plane rate, never per packet).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use relay_common::AllocCounters;
use relay_proto::server::Command;

use crate::{log_window::LogWindow, xdp::XdpMaps};

/// `None` inside when the fast path is off: commands are then ignored.
#[derive(Clone, Default)]
pub struct Kernel(Option<Arc<Mutex<Inner>>>);

struct Inner {
    maps: XdpMaps,
    /// Map write failures: a full map fails every write for as long as it is full.
    failures: LogWindow,
}

impl Kernel {
    pub fn off() -> Self {
        Self(None)
    }

    pub fn new(maps: XdpMaps) -> Self {
        Self(Some(Arc::new(Mutex::new(Inner {
            maps,
            failures: LogWindow::default(),
        }))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Mirrors one core command into the maps. A failure is logged and the flow simply
    /// stays on the userspace path, which serves every packet the kernel passes up.
    pub fn apply(&self, cmd: &Command) {
        let Some(maps) = &self.0 else { return };
        let mut inner = maps.lock().unwrap_or_else(|p| p.into_inner());
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
    }

    /// What the kernel relayed for the relayed address `relay` (its bind address), summed
    /// over CPUs. `None` when the fast path is off or `relay` is not in the maps (TCP/TLS
    /// clients, or already removed): then userspace carried all of its traffic.
    pub fn allocation_counters(&self, relay: SocketAddr) -> Option<AllocCounters> {
        self.with(|m| m.allocation_counters(relay).ok()).flatten()
    }

    /// Direct access for counters (admin, metrics, deletion logs).
    pub fn with<T>(&self, f: impl FnOnce(&mut XdpMaps) -> T) -> Option<T> {
        let maps = self.0.as_ref()?;
        let mut inner = maps.lock().unwrap_or_else(|p| p.into_inner());
        Some(f(&mut inner.maps))
    }
}
