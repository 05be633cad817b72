//! The client side of an allocation: which client, which of our listeners, which transport.

use std::fmt;
use std::net::SocketAddr;

/// Transport between the client and the relay (RFC 8656 §3.1: the "client-to-server" leg).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Stream transports carry ChannelData padded to 4 bytes (RFC 8656 §12.5).
    pub const fn is_stream(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        })
    }
}

/// A client's connection as the relay sees it: the client's source address, which of *our*
/// listener addresses it reached (a dual-NIC relay answers on internal and external listeners
/// at once) and the transport. Allocations are keyed by it (RFC 8656 §2.2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub listener: SocketAddr,
    pub transport: Transport,
}

impl FiveTuple {
    pub const fn new(client: SocketAddr, listener: SocketAddr, transport: Transport) -> Self {
        Self {
            client,
            listener,
            transport,
        }
    }
}

impl fmt::Display for FiveTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.transport, self.client, self.listener)
    }
}
