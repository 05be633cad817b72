//! What the client can ask a TURN server, and how each request's own attributes are
//! written (the credentials and FINGERPRINT are added by the client).

use std::net::SocketAddr;

use relay_proto::stun::{
    AddressFamily, Attr, AttrType, BufferTooSmall, ChannelNumber, Class, Data, Lifetime,
    MessageWriter, Method, RequestedAddressFamily, RequestedTransport, TransactionId,
    XorPeerAddress,
};

/// Longest request the client builds (long usernames and attribute lists included).
pub const MAX_REQUEST: usize = 2048;

/// How the client reaches the server: datagrams are retransmitted, streams are not
/// (RFC 8489 §6.2.2), and ChannelData on a stream is padded to 4 (RFC 8656 §12.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn is_stream(self) -> bool {
        self != Transport::Udp
    }
}

/// A request, kept by the client so it can rebuild it after a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Binding,
    /// A UDP relay, with an optional REQUESTED-ADDRESS-FAMILY and LIFETIME.
    Allocate {
        family: Option<AddressFamily>,
        lifetime: Option<u32>,
    },
    /// LIFETIME 0 deletes the allocation; `None` asks for the server's default.
    Refresh {
        lifetime: Option<u32>,
    },
    /// One request for every peer (the port of each is ignored by the server).
    CreatePermission {
        peers: Vec<SocketAddr>,
    },
    ChannelBind {
        channel: u16,
        peer: SocketAddr,
    },
    /// Any method with raw attributes, written in order (tests that send what a
    /// well-behaved client would not). A XOR-PEER-ADDRESS value is taken as encoded for
    /// [`Request::RAW_TXID`] and re-encoded for each transaction (IPv6 addresses are
    /// XORed with the transaction id); one that does not decode goes out as given.
    Raw {
        method: Method,
        attrs: Vec<(AttrType, Vec<u8>)>,
    },
}

impl Request {
    /// Allocate with the defaults (UDP relay, the server's family and lifetime).
    pub const ALLOCATE: Request = Request::Allocate {
        family: None,
        lifetime: None,
    };
    /// Refresh LIFETIME 0.
    pub const DELETE: Request = Request::Refresh { lifetime: Some(0) };
    /// The transaction id [`Request::Raw`] address values are encoded for.
    pub const RAW_TXID: TransactionId = TransactionId([0; 12]);

    pub fn method(&self) -> Method {
        match self {
            Request::Binding => Method::BINDING,
            Request::Allocate { .. } => Method::ALLOCATE,
            Request::Refresh { .. } => Method::REFRESH,
            Request::CreatePermission { .. } => Method::CREATE_PERMISSION,
            Request::ChannelBind { .. } => Method::CHANNEL_BIND,
            Request::Raw { method, .. } => *method,
        }
    }

    /// The method's own attributes.
    pub(crate) fn write_attrs(&self, w: &mut MessageWriter<'_>) -> Result<(), BufferTooSmall> {
        match self {
            Request::Binding => {}
            Request::Allocate { family, lifetime } => {
                w.attr(&RequestedTransport::UDP)?;
                if let Some(f) = family {
                    w.attr(&RequestedAddressFamily(*f))?;
                }
                if let Some(l) = lifetime {
                    w.attr(&Lifetime(*l))?;
                }
            }
            Request::Refresh { lifetime } => {
                if let Some(l) = lifetime {
                    w.attr(&Lifetime(*l))?;
                }
            }
            Request::CreatePermission { peers } => {
                for p in peers {
                    w.attr(&XorPeerAddress(*p))?;
                }
            }
            Request::ChannelBind { channel, peer } => {
                w.attr(&ChannelNumber(*channel))?
                    .attr(&XorPeerAddress(*peer))?;
            }
            Request::Raw { attrs, .. } => {
                for (typ, value) in attrs {
                    match XorPeerAddress::decode(value, &Self::RAW_TXID) {
                        Ok(peer) if *typ == AttrType::XOR_PEER_ADDRESS => w.attr(&peer)?,
                        _ => w.raw_attr(*typ, value)?,
                    };
                }
            }
        }
        Ok(())
    }
}

/// Names one request across the transactions it takes (a challenge changes the id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// A request the client cannot build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Longer than [`MAX_REQUEST`] (a very long username or attribute list).
    TooLong,
    /// The server's challenge cannot be answered: the text says why.
    Challenge(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::TooLong => {
                f.write_str("request does not fit in one datagram (username too long?)")
            }
            RequestError::Challenge(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for RequestError {}

impl From<BufferTooSmall> for RequestError {
    fn from(_: BufferTooSmall) -> Self {
        RequestError::TooLong
    }
}

/// A Send indication carrying `data` to `peer` into `buf`; returns its length. A free
/// function so a sender that reuses one frame for every packet (the load generator) can
/// build it once.
pub fn send_indication(
    buf: &mut [u8],
    txid: TransactionId,
    peer: SocketAddr,
    data: &[u8],
) -> Result<usize, BufferTooSmall> {
    let mut w = MessageWriter::new(buf, Class::Indication, Method::SEND, txid)?;
    w.attr(&XorPeerAddress(peer))?.attr(&Data(data))?;
    Ok(w.finish())
}
