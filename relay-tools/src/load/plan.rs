//! What a load thread is told to do ([`Plan`]) and what all threads share ([`Shared`]).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Barrier, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rustls::{ClientConfig, pki_types::ServerName};

use super::{
    listing::Listed,
    turn::{Credentials, DataMode, Retransmit},
};
use crate::probe::Transport;

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
    /// Add the ready allocations to [`Shared::listed`] (`--allocations-file`).
    pub list: bool,
    /// Allocate again where a 300 ALTERNATE-SERVER points (UDP).
    pub follow_redirects: bool,
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
    /// The allocations ready after setup, when `--allocations-file` asks for them.
    pub listed: Mutex<Vec<Listed>>,
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
            listed: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub(super) fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}
