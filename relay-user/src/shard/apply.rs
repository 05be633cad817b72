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
    /// Closes stream client `client`'s connection (an operator ended its allocation).
    /// UDP data paths have no connection to close: the default does nothing.
    fn close_client(&mut self, _client: &FiveTuple) {}
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
            Command::CloseClient { client, .. } => edge.close_client(&client),
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

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use relay_proto::{
        auth::{PasswordAlgorithm, long_term_key},
        server::{ClientOutput, Transport},
        stun::{
            Class, ErrorCode, Message, MessageWriter, Method, Nonce, Realm, RequestedTransport,
            TransactionId, Username, XorRelayedAddress,
        },
    };

    use super::*;

    /// A data path without sockets: the first `fail` relay binds fail (port held by
    /// another program), what reaches the clients is recorded.
    struct FakeEdge {
        server: Server,
        mirror: Mirror,
        fail: usize,
        opened: Vec<SocketAddr>,
        closed: Vec<SocketAddr>,
        sent: Vec<(FiveTuple, Vec<u8>)>,
    }

    impl Edge for FakeEdge {
        fn server(&mut self) -> &mut Server {
            &mut self.server
        }

        fn mirror(&mut self) -> &mut Mirror {
            &mut self.mirror
        }

        fn open_relay(&mut self, relay: SocketAddr, _: RelayProtocol) -> io::Result<()> {
            if self.fail > 0 {
                self.fail -= 1;
                return Err(io::ErrorKind::AddrInUse.into());
            }
            self.opened.push(relay);
            Ok(())
        }

        fn close_relay(&mut self, relay: SocketAddr, _: RelayProtocol) {
            self.closed.push(relay);
        }

        fn send_to_client(&mut self, client: &FiveTuple, message: &[u8]) {
            self.sent.push((*client, message.to_vec()));
        }

        fn connect_peer(&mut self, _: Instant, _: ConnectionId, _: SocketAddr, _: SocketAddr) {
            unreachable!("no TCP allocation here")
        }

        fn splice(&mut self, _: Instant, _: ConnectionId, _: FiveTuple) {
            unreachable!("no TCP allocation here")
        }

        fn close_connection(&mut self, _: Instant, _: ConnectionId) {
            unreachable!("no TCP allocation here")
        }
    }

    fn relayed_port(reply: &[u8]) -> Option<u16> {
        let m = Message::parse(reply).unwrap();
        assert!(m.attr::<ErrorCode>().is_none(), "an error response");
        Some(m.attr::<XorRelayedAddress>()?.ok()?.0.port())
    }

    /// An authenticated Allocate from `client` (after the 401 that brings the nonce),
    /// handed to the core as the demo's user; the core's reply.
    fn allocate(server: &mut Server, password: &str, client: FiveTuple, now: Instant) -> Vec<u8> {
        allocate_as(server, ("demo", "relay.local", password), client, now)
    }

    /// The same for `(user, realm, password)`.
    pub(crate) fn allocate_as(
        server: &mut Server,
        (user, realm, password): (&str, &str, &str),
        client: FiveTuple,
        now: Instant,
    ) -> Vec<u8> {
        let mut out = vec![0; OUT_BYTES];
        let mut req = [0u8; 512];
        // An Allocate for UDP with transaction id `[txid; 12]`, then what `sign` adds.
        let mut build = |txid: u8, sign: &dyn Fn(&mut MessageWriter<'_>)| {
            let id = TransactionId([txid; 12]);
            let mut w = MessageWriter::new(&mut req, Class::Request, Method::ALLOCATE, id).unwrap();
            w.attr(&RequestedTransport(17)).unwrap();
            sign(&mut w);
            let n = w.finish();
            req[..n].to_vec()
        };
        let first = build(1, &|_| {});
        let ClientOutput::Reply { len } = server.handle_client(now, client, &first, &mut out)
        else {
            panic!("no 401")
        };
        let challenge = Message::parse(&out[..len]).unwrap();
        let nonce = challenge.attr::<Nonce>().unwrap().unwrap().0.to_owned();
        let key = long_term_key(PasswordAlgorithm::Md5, user, realm, password);
        let signed = build(2, &|w| {
            w.attr(&Username(user)).unwrap();
            w.attr(&Realm(realm)).unwrap();
            w.attr(&Nonce(&nonce)).unwrap();
            w.integrity_sha1(key.as_bytes()).unwrap();
        });
        match server.handle_client(now, client, &signed, &mut out) {
            ClientOutput::Reply { len } => out[..len].to_vec(),
            other => panic!("no answer to the Allocate: {other:?}"),
        }
    }

    #[test]
    fn a_failed_bind_voids_the_reply_in_hand_and_the_core_answers_with_the_bound_port() {
        let (config, password) = crate::cores::demo_config().unwrap();
        let now = Instant::now();
        let server = crate::cores::server(&config, now).unwrap();
        let counters = Arc::new(EventCounters::default());
        let mut edge = FakeEdge {
            server,
            mirror: Mirror::new(Kernel::off(), counters.clone()),
            fail: 2,
            opened: Vec::new(),
            closed: Vec::new(),
            sent: Vec::new(),
        };
        let client = FiveTuple {
            client: SocketAddr::from((Ipv4Addr::LOCALHOST, 40000)),
            listener: SocketAddr::from((Ipv4Addr::LOCALHOST, 3478)),
            transport: Transport::Udp,
        };
        let held = allocate(&mut edge.server, &password, client, now);
        let other = FiveTuple {
            client: SocketAddr::from((Ipv4Addr::LOCALHOST, 40001)),
            ..client
        };
        assert!(
            apply(&mut edge, now, Some(&client)),
            "the reply in hand names a port that could not be bound"
        );
        assert!(!apply(&mut edge, now, Some(&other)), "nothing left to void");
        assert_eq!(edge.opened.len(), 1, "{:?}", edge.opened);
        assert_eq!(edge.sent.len(), 1, "one deferred answer: {:?}", edge.sent);
        let (to, answer) = &edge.sent[0];
        assert_eq!(*to, client);
        assert_eq!(relayed_port(answer), Some(edge.opened[0].port()));
        assert_ne!(relayed_port(&held), Some(edge.opened[0].port()));
        assert_eq!(edge.server.allocation_count(), 1);
        // Three allocations made, two of them ended (counted here, not by a global).
        assert_eq!(counters.allocations_created(), 3);
        let ended: u64 = counters.allocations_ended().map(|(_, n)| n).sum();
        assert_eq!(ended, 2);
    }
}
