//! The XDP maps as every shard sees them: one set of kernel maps, written under a mutex
//! by whichever shard's core issued the command (control-plane rate, never per packet).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use relay_common::AllocCounters;
use relay_proto::server::Command;

use crate::xdp::XdpMaps;

/// `None` inside when the fast path is off: commands are then ignored.
#[derive(Clone, Default)]
pub struct Kernel(Option<Arc<Mutex<XdpMaps>>>);

impl Kernel {
    pub fn off() -> Self {
        Self(None)
    }

    pub fn new(maps: XdpMaps) -> Self {
        Self(Some(Arc::new(Mutex::new(maps))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Mirrors one core command into the maps. A failure is logged and the flow simply
    /// stays on the userspace path, which serves every packet the kernel passes up.
    pub fn apply(&self, cmd: &Command) {
        let Some(maps) = &self.0 else { return };
        let mut maps = maps.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = maps.apply(cmd) {
            tracing::warn!(error = %e, command = ?cmd, "XDP map update failed; this flow stays in userspace");
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
        let mut maps = maps.lock().unwrap_or_else(|p| p.into_inner());
        Some(f(&mut maps))
    }
}
