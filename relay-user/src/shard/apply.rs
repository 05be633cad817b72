//! How a shard carries out what its core decided, for both data paths: one match over
//! every [`Command`], the XDP mirror, the failed-bind report, and the events' log lines
//! with the kernel's counters of the allocations that ended. A data path supplies only
//! the socket work, through [`Edge`].

use std::{io, net::SocketAddr, sync::Arc, time::Instant};

use relay_common::AllocCounters;
use relay_proto::server::{
    AllocationId, Command, ConnectionId, Event, FiveTuple, RelayProtocol, Server,
};

use super::Kernel;
use crate::metrics::EventCounters;

/// Largest datagram taken from a peer, on every path: 65,535 (the IPv4 total length)
/// less 20 (the IPv4 header) and 8 (the UDP header), the largest payload one IPv4 UDP
/// datagram can carry. Larger ones (only IPv6 can send them) are truncated by the
/// kernel and dropped, whatever transport the client uses.
pub const DATAGRAM_MAX: usize = 65_535 - 20 - 8;
/// The core's output buffer: a datagram of [`DATAGRAM_MAX`] bytes wrapped in a Data
/// indication (header, XOR-PEER-ADDRESS, DATA, padding) for a client.
pub const OUT_BYTES: usize = DATAGRAM_MAX + 128;

/// The socket work of one data path. Methods that name RFC 6062 peer connections are
/// never called on a shard whose core has TCP relays off (the UDP workers).
pub trait Edge {
    fn server(&mut self) -> &mut Server;
    fn mirror(&mut self) -> &mut Mirror;
    /// Binds relayed address `relay`: a UDP socket, or a listening TCP socket.
    fn open_relay(&mut self, relay: SocketAddr, protocol: RelayProtocol) -> io::Result<()>;
    fn close_relay(&mut self, relay: SocketAddr, protocol: RelayProtocol);
    /// A message of the core for `client` (a deferred Allocate answer, an RFC 6062
    /// ConnectionAttempt).
    fn send_to_client(&mut self, client: &FiveTuple, message: &[u8]);
    fn connect_peer(
        &mut self,
        now: Instant,
        conn: ConnectionId,
        relay: SocketAddr,
        peer: SocketAddr,
    );
    fn splice(&mut self, now: Instant, conn: ConnectionId, data: FiveTuple);
    fn close_connection(&mut self, now: Instant, conn: ConnectionId);
}

/// The kernel maps as this shard writes them, and the counters of allocations ended in
/// the current [`apply`] call (read before their map entries go, for the log line of
/// the event that follows).
pub struct Mirror {
    kernel: Kernel,
    ended: Vec<(AllocationId, AllocCounters)>,
    /// The relay's event counters, fed here (not by the log thread).
    counters: Arc<EventCounters>,
}

impl Mirror {
    pub fn new(kernel: Kernel, counters: Arc<EventCounters>) -> Self {
        Self {
            kernel,
            ended: Vec::with_capacity(4),
            counters,
        }
    }

    fn apply(&mut self, cmd: &Command) {
        if let Command::AllocationRemoved { id, relay, .. } = cmd
            && let Some(c) = self.kernel.allocation_counters(*relay)
        {
            self.ended.push((*id, c));
        }
        self.kernel.apply(cmd);
    }

    /// The kernel's counters for allocation `id`, over both relayed addresses of a dual one.
    fn total(&self, id: AllocationId) -> Option<AllocCounters> {
        let mut found = self
            .ended
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, c)| c)
            .peekable();
        found.peek()?;
        Some(AllocCounters::sum(found))
    }
}

/// Carries out the core's commands, then logs its events. `true` if a relay port of an
/// allocation for `client` could not be bound: the reply the caller holds for that client
/// is void (the core answers again through [`Command::SendToClient`], already carried out).
pub fn apply(edge: &mut impl Edge, now: Instant, client: Option<&FiveTuple>) -> bool {
    let mut bind_failed = false;
    while let Some(cmd) = edge.server().poll_command() {
        edge.mirror().apply(&cmd);
        match cmd {
            Command::AllocationCreated {
                relay,
                client: c,
                protocol,
                ..
            } => {
                if let Err(e) = edge.open_relay(relay, protocol) {
                    tracing::warn!(%relay, %protocol, client = %c, error = %e,
                        "cannot bind relay port (another program holds it? keep the relay port range out of net.ipv4.ip_local_port_range); the core voids the allocation and answers the request with another port");
                    edge.server().relay_bind_failed(now, relay);
                    bind_failed |= Some(&c) == client;
                }
            }
            Command::AllocationRemoved {
                relay, protocol, ..
            } => edge.close_relay(relay, protocol),
            // Permissions and channels only matter to the kernel fast path (above).
            Command::PermissionCreated { .. }
            | Command::PermissionRemoved { .. }
            | Command::ChannelBound { .. }
            | Command::ChannelUnbound { .. } => {}
            Command::SendToClient {
                client, message, ..
            } => edge.send_to_client(&client, &message),
            Command::ConnectPeer {
                conn, relay, peer, ..
            } => edge.connect_peer(now, conn, relay, peer),
            Command::SpliceConnection { conn, data, .. } => edge.splice(now, conn, data),
            Command::CloseConnection { conn, .. } => edge.close_connection(now, conn),
        }
    }
    while let Some(event) = edge.server().poll_event() {
        let kernel = match &event {
            Event::AllocationExpired { id, .. }
            | Event::AllocationDeleted { id, .. }
            | Event::AllocationClosed { id, .. } => edge.mirror().total(*id),
            _ => None,
        };
        let counters = &edge.mirror().counters;
        counters.observe(&event);
        if let Some(k) = kernel {
            counters.kernel_allocation_retired(k);
        }
        crate::events::log_with_kernel(event, kernel);
    }
    edge.mirror().ended.clear();
    bind_failed
}
