//! A small blocking TURN-over-UDP client built on the project's own codec
//! (`relay_proto::stun`), for tests that need to see exact error codes or drive two
//! allocations on different servers. Long-term credentials (MD5 key, MESSAGE-INTEGRITY),
//! 401/438 handled, RFC 8489-style retransmission with a short initial RTO.
//!
//! Create it on the thread that will use it, inside the namespace (`Netns::run`): the
//! socket belongs to the namespace it was opened in.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use relay_proto::stun::{
    AddressFamily, BufferTooSmall, ChannelNumber, Class, Lifetime, Message, MessageWriter, Method,
    RequestedAddressFamily, RequestedTransport, TransactionId, XorMappedAddress, XorPeerAddress,
    XorRelayedAddress, write_channel_data,
};

use crate::turn_codec::{self, Attrs, Credentials};

/// First retransmission timeout; doubles up to [`MAX_RTO`].
pub const INITIAL_RTO: Duration = Duration::from_millis(250);
pub const MAX_RTO: Duration = Duration::from_millis(1600);
/// Sends per transaction (1 + retransmissions): about 6 s in all.
pub const MAX_SENDS: u32 = 6;

#[derive(Debug)]
pub enum TurnError {
    Io(std::io::Error),
    /// No response after every retransmission.
    Timeout {
        method: Method,
    },
    /// An error response.
    Code {
        method: Method,
        code: u16,
        reason: String,
    },
    /// Something the client cannot use (missing attribute, bad integrity, …).
    Protocol(String),
}

impl TurnError {
    /// The error response code, if that is what it is.
    pub fn code(&self) -> Option<u16> {
        match self {
            TurnError::Code { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl std::fmt::Display for TurnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TurnError::Io(e) => write!(f, "I/O: {e}"),
            TurnError::Timeout { method } => write!(f, "no response to {method:?}"),
            TurnError::Code {
                method,
                code,
                reason,
            } => write!(f, "{method:?} error {code} {reason:?}"),
            TurnError::Protocol(s) => write!(f, "protocol: {s}"),
        }
    }
}

impl std::error::Error for TurnError {}

impl From<std::io::Error> for TurnError {
    fn from(e: std::io::Error) -> Self {
        TurnError::Io(e)
    }
}

impl From<BufferTooSmall> for TurnError {
    fn from(_: BufferTooSmall) -> Self {
        TurnError::Protocol("message does not fit the buffer".into())
    }
}

/// Application data that reached the client from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// From a Data indication's XOR-PEER-ADDRESS.
    pub peer: Option<SocketAddr>,
    /// From a ChannelData message.
    pub channel: Option<u16>,
    pub data: Vec<u8>,
}

/// One client 5-tuple (one UDP socket) talking to one TURN server.
pub struct TurnClient {
    sock: UdpSocket,
    server: SocketAddr,
    auth: Credentials,
    /// XOR-RELAYED-ADDRESS values of the last successful Allocate.
    pub relayed: Vec<SocketAddr>,
    /// XOR-MAPPED-ADDRESS of the last successful Allocate.
    pub mapped: Option<SocketAddr>,
    /// Data that arrived while a transaction waited for its response.
    pending: VecDeque<Received>,
}

static NEXT_TXID: AtomicU64 = AtomicU64::new(1);

/// A transaction id unique within the process (counter mixed with time and pid).
pub fn new_txid() -> TransactionId {
    let n = NEXT_TXID.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let a = splitmix(n ^ (u64::from(std::process::id()) << 32));
    let b = splitmix(t ^ n);
    let mut id = [0u8; 12];
    id[..8].copy_from_slice(&a.to_be_bytes());
    id[8..].copy_from_slice(&b.to_be_bytes()[..4]);
    TransactionId(id)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl TurnClient {
    /// Binds an ephemeral port on the wildcard address of `server`'s family.
    pub fn new(server: SocketAddr, username: &str, password: &str) -> std::io::Result<Self> {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        Self::bind(local, server, username, password)
    }

    /// Binds `local` (e.g. a specific client address of the namespace).
    pub fn bind(
        local: SocketAddr,
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> std::io::Result<Self> {
        let sock = UdpSocket::bind(local)?;
        Ok(TurnClient {
            sock,
            server,
            auth: Credentials::new(username, password),
            relayed: Vec::new(),
            mapped: None,
            pending: VecDeque::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("bound socket")
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The relayed address of `family`'s allocation, if any.
    pub fn relayed_v4(&self) -> Option<SocketAddr> {
        self.relayed.iter().copied().find(SocketAddr::is_ipv4)
    }

    /// Allocate (UDP relay, default family); returns the first relayed address.
    pub fn allocate(&mut self) -> Result<SocketAddr, TurnError> {
        self.allocate_with(None, None)
    }

    /// Allocate with an optional REQUESTED-ADDRESS-FAMILY and LIFETIME.
    pub fn allocate_with(
        &mut self,
        family: Option<AddressFamily>,
        lifetime: Option<u32>,
    ) -> Result<SocketAddr, TurnError> {
        let attrs = |w: &mut MessageWriter<'_>| {
            w.attr(&RequestedTransport::UDP)?;
            if let Some(f) = family {
                w.attr(&RequestedAddressFamily(f))?;
            }
            if let Some(l) = lifetime {
                w.attr(&Lifetime(l))?;
            }
            Ok(())
        };
        let resp = self.transact(Method::ALLOCATE, &attrs)?;
        let msg = Message::parse(&resp).map_err(|e| TurnError::Protocol(e.to_string()))?;
        let relayed: Vec<SocketAddr> = msg
            .attrs::<XorRelayedAddress>()
            .filter_map(Result::ok)
            .map(|a| a.0)
            .collect();
        self.mapped = msg
            .attr::<XorMappedAddress>()
            .and_then(Result::ok)
            .map(|a| a.0);
        let first = *relayed.first().ok_or_else(|| {
            TurnError::Protocol("Allocate success without XOR-RELAYED-ADDRESS".into())
        })?;
        self.relayed = relayed;
        Ok(first)
    }

    /// CreatePermission for every peer in one request.
    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<(), TurnError> {
        let attrs = |w: &mut MessageWriter<'_>| {
            for p in peers {
                w.attr(&XorPeerAddress(*p))?;
            }
            Ok(())
        };
        self.transact(Method::CREATE_PERMISSION, &attrs).map(drop)
    }

    /// ChannelBind `channel` (0x4000..=0x4FFF) to `peer`.
    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), TurnError> {
        let attrs = |w: &mut MessageWriter<'_>| {
            w.attr(&ChannelNumber(channel))?;
            w.attr(&XorPeerAddress(peer))?;
            Ok(())
        };
        self.transact(Method::CHANNEL_BIND, &attrs).map(drop)
    }

    /// Refresh with LIFETIME `lifetime` (0 deletes the allocation); returns the granted one.
    pub fn refresh(&mut self, lifetime: u32) -> Result<u32, TurnError> {
        let attrs = |w: &mut MessageWriter<'_>| {
            w.attr(&Lifetime(lifetime))?;
            Ok(())
        };
        let resp = self.transact(Method::REFRESH, &attrs)?;
        let msg = Message::parse(&resp).map_err(|e| TurnError::Protocol(e.to_string()))?;
        Ok(msg
            .attr::<Lifetime>()
            .and_then(Result::ok)
            .map(|l| l.0)
            .unwrap_or(0))
    }

    /// A Send indication carrying `data` to `peer` (no response; may be lost).
    pub fn send_indication(&self, peer: SocketAddr, data: &[u8]) -> Result<(), TurnError> {
        let msg = turn_codec::send_indication(peer, data)?;
        self.sock.send_to(&msg, self.server)?;
        Ok(())
    }

    /// A ChannelData message on a bound channel.
    pub fn send_channel_data(&self, channel: u16, data: &[u8]) -> Result<(), TurnError> {
        let mut buf = vec![0u8; data.len() + 8];
        let n = write_channel_data(&mut buf, channel, data, false)?;
        self.sock.send_to(&buf[..n], self.server)?;
        Ok(())
    }

    /// The next Data indication or ChannelData within `timeout`.
    pub fn recv_data(&mut self, timeout: Duration) -> Result<Received, TurnError> {
        if let Some(r) = self.pending.pop_front() {
            return Ok(r);
        }
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(TurnError::Timeout {
                    method: Method::DATA,
                });
            }
            self.sock.set_read_timeout(Some(deadline - now))?;
            let n = match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(e) if is_timeout(&e) => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(r) = turn_codec::received(&buf[..n]) {
                return Ok(r);
            }
        }
    }

    /// Everything that arrives within `window` (pending data first).
    pub fn drain_data(&mut self, window: Duration) -> Vec<Received> {
        let deadline = Instant::now() + window;
        let mut got: Vec<Received> = self.pending.drain(..).collect();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return got;
            }
            match self.recv_data(deadline - now) {
                Ok(r) => got.push(r),
                Err(_) => return got,
            }
        }
    }

    /// One request/response transaction with long-term credentials: a first attempt
    /// (unauthenticated until a realm is known), then one retry after 401 (new realm and
    /// nonce) or 438 (stale nonce). Returns the success response's bytes.
    pub fn transact(&mut self, method: Method, attrs: Attrs<'_>) -> Result<Vec<u8>, TurnError> {
        let mut stale = 0;
        loop {
            let authenticated = self.auth.has_key();
            let resp = self.round_trip(method, attrs)?;
            let err = match self.auth.check(method, &resp) {
                Ok(()) => return Ok(resp),
                Err(e) => e,
            };
            // A 401 to an unauthenticated attempt is the normal challenge; a 401 to an
            // authenticated one means the credentials are wrong. 438: new nonce, retry.
            let challenge = match err.code() {
                Some(401) => !authenticated,
                Some(438) => stale < 2,
                _ => false,
            };
            if challenge && self.auth.absorb_challenge(&resp) {
                if err.code() == Some(438) {
                    stale += 1;
                }
                continue;
            }
            return Err(err);
        }
    }

    /// Sends one request (authenticated when a key is known) with retransmissions and
    /// returns the matching response; data arriving meanwhile is queued.
    fn round_trip(&mut self, method: Method, attrs: Attrs<'_>) -> Result<Vec<u8>, TurnError> {
        let txid = new_txid();
        let mut req = vec![0u8; 2048];
        let n = self.auth.write_request(&mut req, method, txid, attrs)?;
        let req = &req[..n];
        let mut buf = vec![0u8; 65_536];
        let mut rto = INITIAL_RTO;
        for _ in 0..MAX_SENDS {
            self.sock.send_to(req, self.server)?;
            let deadline = Instant::now() + rto;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                self.sock.set_read_timeout(Some(deadline - now))?;
                let (len, from) = match self.sock.recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(e) if is_timeout(&e) => break,
                    Err(e) => return Err(e.into()),
                };
                let pkt = &buf[..len];
                if let Some(r) = turn_codec::received(pkt) {
                    self.pending.push_back(r);
                    continue;
                }
                if from != self.server {
                    continue;
                }
                let Ok(msg) = Message::parse(pkt) else {
                    continue;
                };
                if msg.transaction_id() == txid
                    && msg.method() == method
                    && matches!(msg.class(), Class::Success | Class::Error)
                {
                    return Ok(pkt.to_vec());
                }
            }
            rto = (rto * 2).min(MAX_RTO);
        }
        Err(TurnError::Timeout { method })
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// An address in an IP family, for building peers in tests.
pub fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}
