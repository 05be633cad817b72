//! Commands for the data paths (userspace relay sockets, io_uring TCP, XDP maps).
//!
//! The data paths replay them in order. Every relayed address of an allocation gets its own
//! `AllocationCreated` (a dual-stack allocation emits two with the same id, one per family);
//! permissions and channels name the relayed address of their peer's family. When an
//! allocation goes, its channels are unbound and its permissions removed first, each with its
//! own command, then one `AllocationRemoved` per relayed address, so every `*Created` /
//! `ChannelBound` is matched by exactly one removal.
//!
//! TCP allocations (RFC 6062, `protocol: Tcp`) add peer connections: each [`ConnectionId`]
//! the core hands out (in `ConnectPeer`, or returned by
//! [`Server::peer_connection_incoming`](super::Server::peer_connection_incoming)) ends with
//! exactly one `CloseConnection`, which comes before its allocation's `AllocationRemoved`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::allocation::AllocationId;
use super::five_tuple::FiveTuple;
use super::tcp_relay::{ConnectionId, RelayProtocol};

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Command {
    /// Open (bind) the relay socket `relay` and map it to `client`. `public` is what the
    /// client was told (static NAT); peers send to `public`, packets arrive on `relay`.
    /// `protocol`: a UDP socket, or (RFC 6062) a TCP socket listening on `relay`.
    AllocationCreated {
        id: AllocationId,
        client: FiveTuple,
        relay: SocketAddr,
        public: SocketAddr,
        user: Arc<str>,
        protocol: RelayProtocol,
    },
    /// Close the relay socket `relay` and forget the allocation's mapping.
    AllocationRemoved {
        id: AllocationId,
        client: FiveTuple,
        relay: SocketAddr,
        public: SocketAddr,
        protocol: RelayProtocol,
    },
    /// Packets from any port of `peer` to `relay` may now go to the client. `any_port`: the
    /// peer policy lets the client reach every port of `peer` too, so the kernel may forward
    /// its Send indications (which name any port); when `false` they must come up to the
    /// core, which checks the port. Bound channels were checked at bind and may stay in the
    /// kernel either way.
    PermissionCreated {
        id: AllocationId,
        client: FiveTuple,
        relay: SocketAddr,
        peer: IpAddr,
        any_port: bool,
    },
    PermissionRemoved {
        id: AllocationId,
        client: FiveTuple,
        relay: SocketAddr,
        peer: IpAddr,
    },
    /// ChannelData on `channel` from `client` goes to `peer` from `relay`, and packets from
    /// `peer` to `relay` go to the client as ChannelData on `channel`.
    ChannelBound {
        id: AllocationId,
        client: FiveTuple,
        relay: SocketAddr,
        peer: SocketAddr,
        channel: u16,
    },
    ChannelUnbound {
        id: AllocationId,
        client: FiveTuple,
        relay: SocketAddr,
        peer: SocketAddr,
        channel: u16,
    },
    /// RFC 6062 Connect: open a TCP connection to `peer` from `relay` (bind the socket to the
    /// relayed address, SO_REUSEADDR/SO_REUSEPORT beside its listener) and report the outcome
    /// with [`Server::peer_connected`](super::Server::peer_connected). Do not read from it
    /// until `SpliceConnection`: the kernel buffers what the peer sends meanwhile.
    ConnectPeer {
        id: AllocationId,
        conn: ConnectionId,
        relay: SocketAddr,
        peer: SocketAddr,
    },
    /// Send `message` (a whole STUN message: a deferred Connect response, a
    /// ConnectionAttempt indication, or the Allocate answer that follows a
    /// [`relay_bind_failed`](super::Server::relay_bind_failed)) to `client` (any
    /// transport: on its control connection, or as a datagram from its listener), in
    /// order with the responses returned by `handle_client`. Dropped if a stream client's
    /// connection is gone.
    SendToClient {
        id: AllocationId,
        client: FiveTuple,
        message: Box<[u8]>,
    },
    /// RFC 6062 ConnectionBind succeeded on the client data connection `data` (its response
    /// was the `handle_client` reply just before): from now on that connection carries no
    /// STUN; pipe its bytes (including any already read after the ConnectionBind) to the peer
    /// connection `conn` and the peer's bytes back, as they are.
    SpliceConnection {
        id: AllocationId,
        conn: ConnectionId,
        data: FiveTuple,
    },
    /// Close the peer connection `conn` (connecting, waiting or spliced) and, if spliced, its
    /// client data connection. Nothing to report back.
    CloseConnection {
        id: AllocationId,
        conn: ConnectionId,
    },
    /// Close the TCP/TLS connection of stream client `client` (an operator ended its
    /// allocation: the client must see it gone, not wait for a Refresh to fail). Comes
    /// after the allocation's `AllocationRemoved`; never for a UDP client.
    CloseClient { id: AllocationId, client: FiveTuple },
}

impl Command {
    pub fn id(&self) -> AllocationId {
        match self {
            Command::AllocationCreated { id, .. }
            | Command::AllocationRemoved { id, .. }
            | Command::PermissionCreated { id, .. }
            | Command::PermissionRemoved { id, .. }
            | Command::ChannelBound { id, .. }
            | Command::ChannelUnbound { id, .. }
            | Command::ConnectPeer { id, .. }
            | Command::SendToClient { id, .. }
            | Command::SpliceConnection { id, .. }
            | Command::CloseConnection { id, .. }
            | Command::CloseClient { id, .. } => *id,
        }
    }
}
