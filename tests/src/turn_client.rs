//! A small blocking TURN-over-UDP client for tests that need to see exact error codes or
//! drive two allocations on different servers: `relay-client`'s state machine (401/438
//! handled, retransmission with a short initial RTO) over a UDP socket.
//!
//! Create it on the thread that will use it, inside the namespace (`Netns::run`): the
//! socket belongs to the namespace it was opened in.

use std::{
    collections::VecDeque,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use relay_client::{
    Client, Completed, Config, Credentials, Data, Integrity, Outcome, Request, Retransmit,
    Transport,
    blocking::{self, DriveError, Link},
};
use relay_proto::stun::{AddressFamily, Class, Message, MessageWriter, Method};

use crate::turn_codec::Attrs;

/// First retransmission timeout; doubles up to [`MAX_RTO`].
pub const INITIAL_RTO: Duration = Duration::from_millis(250);
pub const MAX_RTO: Duration = Duration::from_millis(1600);
/// Sends per transaction (1 + retransmissions): about 6 s in all.
pub const MAX_SENDS: u32 = 6;

pub use crate::turn_codec::{Received, TurnError, new_txid};

/// One client 5-tuple (one UDP socket) talking to one TURN server.
pub struct TurnClient {
    link: UdpLink,
    client: Client,
    /// XOR-RELAYED-ADDRESS values of the last successful Allocate.
    pub relayed: Vec<SocketAddr>,
    /// XOR-MAPPED-ADDRESS of the last successful Allocate.
    pub mapped: Option<SocketAddr>,
    /// Data that arrived while a transaction waited for its response.
    pending: VecDeque<Received>,
}

/// RFC 8489's schedule, shortened for tests: sends at 0, 250, 750, 1750, 3350 and
/// 4950 ms, the last waiting until 6550 ms.
const RETRANSMIT: Retransmit = Retransmit {
    rto: INITIAL_RTO,
    rto_max: MAX_RTO,
    tries: MAX_SENDS,
    timeout: Duration::from_millis(6550),
};

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
        let mut config = Config::new(Transport::Udp, Some(Credentials::new(username, password)));
        config.retransmit = RETRANSMIT;
        let mut seed = [0u8; 16];
        seed[..12].copy_from_slice(&new_txid().0);
        Ok(TurnClient {
            link: UdpLink { sock, server },
            client: Client::new(config, seed),
            relayed: Vec::new(),
            mapped: None,
            pending: VecDeque::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.link.sock.local_addr().expect("bound socket")
    }

    pub fn server(&self) -> SocketAddr {
        self.link.server
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
        let resp = self.run(Request::Allocate { family, lifetime })?;
        self.mapped = resp.mapped.filter(|_| !resp.mapped_plain);
        let first = *resp.relayed.first().ok_or_else(|| {
            TurnError::Protocol("Allocate success without XOR-RELAYED-ADDRESS".into())
        })?;
        self.relayed = resp.relayed;
        Ok(first)
    }

    /// CreatePermission for every peer in one request.
    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<(), TurnError> {
        let peers = peers.to_vec();
        self.run(Request::CreatePermission { peers }).map(drop)
    }

    /// ChannelBind `channel` (0x4000..=0x4FFF) to `peer`.
    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), TurnError> {
        self.run(Request::ChannelBind { channel, peer }).map(drop)
    }

    /// Refresh with LIFETIME `lifetime` (0 deletes the allocation); returns the granted one.
    pub fn refresh(&mut self, lifetime: u32) -> Result<u32, TurnError> {
        let lifetime = Some(lifetime);
        Ok(self
            .run(Request::Refresh { lifetime })?
            .lifetime
            .unwrap_or(0))
    }

    /// A Send indication carrying `data` to `peer` (no response; may be lost).
    pub fn send_indication(&self, peer: SocketAddr, data: &[u8]) -> Result<(), TurnError> {
        let mut buf = vec![0u8; data.len() + 128];
        let n = relay_client::send_indication(&mut buf, new_txid(), peer, data)?;
        self.link.sock.send_to(&buf[..n], self.link.server)?;
        Ok(())
    }

    /// A ChannelData message on a bound channel.
    pub fn send_channel_data(&self, channel: u16, data: &[u8]) -> Result<(), TurnError> {
        let mut buf = vec![0u8; data.len() + 8];
        let n = self.client.channel_data(channel, data, &mut buf)?;
        self.link.sock.send_to(&buf[..n], self.link.server)?;
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
            let Some(n) = self.link.recv(&mut buf, deadline)? else {
                return Err(TurnError::Timeout {
                    method: Method::DATA,
                });
            };
            if let relay_client::Input::Data(d) =
                self.client.handle_input(&buf[..n], Instant::now())
            {
                return Ok(Received::from(d));
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
        // The attributes as the client's raw request carries them (see Request::Raw).
        let mut buf = vec![0u8; 2048];
        let mut w = MessageWriter::new(&mut buf, Class::Request, method, Request::RAW_TXID)?;
        attrs(&mut w)?;
        let n = w.finish();
        let msg = Message::parse(&buf[..n]).map_err(|e| TurnError::Protocol(e.to_string()))?;
        let attrs = msg.raw_attrs().map(|a| (a.typ, a.value.to_vec())).collect();
        Ok(self.run(Request::Raw { method, attrs })?.bytes)
    }

    /// Runs one request to its end; data arriving meanwhile is queued.
    fn run(&mut self, request: Request) -> Result<relay_client::Success, TurnError> {
        let method = request.method();
        let pending = &mut self.pending;
        let mut keep = |d: Data<'_>| pending.push_back(Received::from(d));
        let done = blocking::transact(&mut self.client, &mut self.link, request, &mut keep)
            .map_err(|e| match e {
                DriveError::Request(e) => TurnError::Protocol(e.to_string()),
                DriveError::Send(e) | DriveError::Recv(e) => TurnError::Io(e),
            })?;
        success(method, done)
    }
}

/// The success, or the error the request ended with.
fn success(method: Method, done: Completed) -> Result<relay_client::Success, TurnError> {
    match done.outcome {
        Outcome::Success(s) => match s.integrity {
            None | Some(Integrity::Verified) => Ok(s),
            Some(bad) => Err(TurnError::Protocol(format!(
                "{method:?} success response integrity: {bad:?}"
            ))),
        },
        Outcome::Error(e) => Err(TurnError::Code {
            method,
            code: e.code,
            reason: e.reason,
            alternate: e.alternate_server,
        }),
        Outcome::Timeout => Err(TurnError::Timeout { method }),
        Outcome::Invalid(why) => Err(TurnError::Protocol(format!("{method:?}: {why}"))),
        Outcome::Abandoned => Err(TurnError::Protocol(format!("{method:?}: abandoned"))),
    }
}

impl From<Data<'_>> for Received {
    fn from(d: Data<'_>) -> Self {
        Received {
            // A Data indication names its peer; ChannelData only its channel.
            peer: d.peer.filter(|_| d.channel.is_none()),
            channel: d.channel,
            data: d.payload.to_vec(),
        }
    }
}

/// The socket and the server it talks to, as the client's link.
struct UdpLink {
    sock: UdpSocket,
    server: SocketAddr,
}

impl Link for UdpLink {
    type Error = io::Error;

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sock.send_to(bytes, self.server).map(drop)
    }

    fn recv(&mut self, buf: &mut [u8], until: Instant) -> io::Result<Option<usize>> {
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(None);
            }
            self.sock.set_read_timeout(Some(until - now))?;
            match self.sock.recv_from(buf) {
                Ok((n, _)) => return Ok(Some(n)),
                Err(e) if is_timeout(&e) => continue,
                Err(e) => return Err(e),
            }
        }
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
