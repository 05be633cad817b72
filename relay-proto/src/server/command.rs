//! Commands for the data paths (userspace relay sockets, io_uring TCP, XDP maps).
//!
//! The data paths replay them in order. Every relayed address of an allocation gets its own
//! `AllocationCreated` (a dual-stack allocation emits two with the same id, one per family);
//! permissions and channels name the relayed address of their peer's family. When an
//! allocation goes, its channels are unbound and its permissions removed first, each with its
//! own command, then one `AllocationRemoved` per relayed address, so every `*Created` /
//! `ChannelBound` is matched by exactly one removal.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::allocation::AllocationId;
use super::five_tuple::FiveTuple;

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Command {
    /// Open (bind) the relay socket `relay` and map it to `client`. `public` is what the
    /// client was told (static NAT); peers send to `public`, packets arrive on `relay`.
    AllocationCreated {
        id: AllocationId,
        client: FiveTuple,
        relay: SocketAddr,
        public: SocketAddr,
        user: Arc<str>,
    },
    /// Close the relay socket `relay` and forget the allocation's mapping.
    AllocationRemoved {
        id: AllocationId,
        client: FiveTuple,
        relay: SocketAddr,
        public: SocketAddr,
    },
    /// Packets from any port of `peer` to `relay` may now go to the client.
    PermissionCreated {
        id: AllocationId,
        client: FiveTuple,
        relay: SocketAddr,
        peer: IpAddr,
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
}

impl Command {
    pub fn id(&self) -> AllocationId {
        match self {
            Command::AllocationCreated { id, .. }
            | Command::AllocationRemoved { id, .. }
            | Command::PermissionCreated { id, .. }
            | Command::PermissionRemoved { id, .. }
            | Command::ChannelBound { id, .. }
            | Command::ChannelUnbound { id, .. } => *id,
        }
    }
}
