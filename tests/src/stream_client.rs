//! A small blocking TURN client over a byte stream (TCP, or TLS with rustls), on the
//! project's own codec: RFC 8656 stream framing (`frame_len`, ChannelData padded to 4),
//! long-term credentials with 401/438 handled. Requests can be written and their
//! responses read in separate steps, so one thread can drive thousands of connections in
//! lockstep (write to all, then read from all).
//!
//! Open the socket inside the namespace (`Netns::run`): it belongs to the namespace it was
//! created in, whichever thread then uses it.

use std::{
    collections::VecDeque,
    io::{self, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use relay_proto::stun::{
    ChannelNumber, Class, Lifetime, Message, MessageWriter, Method, RequestedTransport,
    TransactionId, XorMappedAddress, XorPeerAddress, XorRelayedAddress, frame_len,
    write_channel_data,
};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned, pki_types::ServerName};

pub use crate::turn_codec::Attrs;
use crate::{
    turn_client::{Received, TurnError, new_txid},
    turn_codec::{self, Credentials},
};

/// TLS over a TCP socket, as the client side of `turns:`.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects with a read timeout (every blocking read gives up after it).
pub fn connect_tcp(server: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&server, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// As [`connect_tcp`], from the local address `src` (a source of the per-source limits).
pub fn connect_tcp_from(
    src: SocketAddr,
    server: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let domain = socket2::Domain::for_address(src);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    s.bind(&src.into())?;
    s.connect_timeout(&server.into(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    Ok(s.into())
}

/// TLS to `server`, verifying its chain against `roots` for the IP address `name`; the
/// handshake completes before this returns.
pub fn connect_tls(
    server: SocketAddr,
    roots: RootCertStore,
    name: IpAddr,
    timeout: Duration,
) -> io::Result<TlsStream> {
    start_tls(connect_tcp(server, timeout)?, roots, name)
}

/// TLS on a connected socket (which may have carried other bytes first, such as a PROXY
/// protocol header), as [`connect_tls`] does.
pub fn start_tls(sock: TcpStream, roots: RootCertStore, name: IpAddr) -> io::Result<TlsStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = ClientConnection::new(Arc::new(config), ServerName::IpAddress(name.into()))
        .map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// One client connection to one TURN server.
pub struct StreamClient<S> {
    pub stream: S,
    rx: Vec<u8>,
    auth: Credentials,
    /// XOR-RELAYED-ADDRESS of the last successful Allocate.
    pub relayed: Option<SocketAddr>,
    /// XOR-MAPPED-ADDRESS of the last successful Allocate.
    pub mapped: Option<SocketAddr>,
    pending: VecDeque<Received>,
}

impl<S: Read + Write> StreamClient<S> {
    pub fn new(stream: S, username: &str, password: &str) -> Self {
        Self {
            stream,
            rx: Vec::new(),
            auth: Credentials::new(username, password),
            relayed: None,
            mapped: None,
            pending: VecDeque::new(),
        }
    }

    /// Uses a realm and nonce learnt on another connection from the same IP (the relay's
    /// nonces are bound to the client IP), saving the 401 round trip.
    pub fn prime(&mut self, realm: &str, nonce: &str) {
        self.auth.prime(realm, nonce);
    }

    /// Sends an unsigned Binding request; `false` once the connection is closed (or the
    /// answer does not come).
    pub fn binding_answered(&mut self) -> bool {
        let mut buf = [0u8; 64];
        let txid = new_txid();
        let Ok(mut w) = MessageWriter::new(&mut buf, Class::Request, Method::BINDING, txid) else {
            return false;
        };
        if w.fingerprint().is_err() {
            return false;
        }
        let n = w.finish();
        self.stream.write_all(&buf[..n]).is_ok() && self.read_response(txid).is_ok()
    }

    /// The realm and nonce in use, once known.
    pub fn credentials(&self) -> Option<(String, String)> {
        self.auth.realm_and_nonce()
    }

    /// Writes one request (authenticated once a key is known); returns its id.
    pub fn write_request(
        &mut self,
        method: Method,
        attrs: Attrs<'_>,
    ) -> Result<TransactionId, TurnError> {
        let txid = new_txid();
        let mut buf = vec![0u8; 2048];
        let n = self.auth.write_request(&mut buf, method, txid, attrs)?;
        self.write_all(&buf[..n])?;
        Ok(txid)
    }

    /// Writes raw bytes (a test may split frames anywhere).
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// The next whole frame (STUN message or ChannelData with its padding).
    pub fn read_frame(&mut self) -> Result<Vec<u8>, TurnError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match frame_len(&self.rx) {
                Ok(Some(n)) => return Ok(self.rx.drain(..n).collect()),
                Ok(None) => {}
                Err(e) => return Err(TurnError::Protocol(format!("stream framing: {e}"))),
            }
            let n = crate::read_uninterrupted(&mut self.stream, &mut chunk)?;
            if n == 0 {
                return Err(TurnError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            self.rx.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until the response to `txid` (data arriving meanwhile is kept).
    pub fn read_response(&mut self, txid: TransactionId) -> Result<Vec<u8>, TurnError> {
        loop {
            let f = self.read_frame()?;
            if let Some(r) = turn_codec::received(&f) {
                self.pending.push_back(r);
                continue;
            }
            let Ok(msg) = Message::parse(&f) else {
                continue;
            };
            if msg.transaction_id() == txid && matches!(msg.class(), Class::Success | Class::Error)
            {
                return Ok(f);
            }
        }
    }

    /// A success response, or the error it carries.
    pub fn check(&self, method: Method, resp: &[u8]) -> Result<(), TurnError> {
        self.auth.check(method, resp)
    }

    /// One transaction, retried after a 401 challenge to an unsigned request or a 438
    /// stale nonce, three attempts at most.
    pub fn transact(&mut self, method: Method, attrs: Attrs<'_>) -> Result<Vec<u8>, TurnError> {
        for _ in 0..3 {
            let txid = self.write_request(method, attrs)?;
            let resp = self.read_response(txid)?;
            let err = match self.auth.check(method, &resp) {
                Ok(()) => return Ok(resp),
                Err(e) => e,
            };
            let fresh = match err.code() {
                Some(401) => !self.auth.has_key(),
                Some(438) => true,
                _ => return Err(err),
            };
            // A challenge's nonce is taken even when it is not retried.
            if !self.auth.absorb_challenge(&resp) || !fresh {
                return Err(err);
            }
        }
        Err(TurnError::Protocol(format!(
            "{method:?}: challenged again and again"
        )))
    }

    /// Writes a UDP Allocate (lockstep first half).
    pub fn write_allocate(&mut self) -> Result<TransactionId, TurnError> {
        self.write_request(Method::ALLOCATE, &|w| {
            w.attr(&RequestedTransport::UDP)?;
            Ok(())
        })
    }

    /// Takes an Allocate success response: the relayed and mapped addresses.
    pub fn take_allocation(&mut self, resp: &[u8]) -> Result<SocketAddr, TurnError> {
        self.check(Method::ALLOCATE, resp)?;
        let msg = Message::parse(resp).map_err(|e| TurnError::Protocol(e.to_string()))?;
        self.mapped = msg
            .attr::<XorMappedAddress>()
            .and_then(Result::ok)
            .map(|a| a.0);
        let relayed = msg
            .attr::<XorRelayedAddress>()
            .and_then(Result::ok)
            .map(|a| a.0)
            .ok_or_else(|| TurnError::Protocol("no XOR-RELAYED-ADDRESS".into()))?;
        self.relayed = Some(relayed);
        Ok(relayed)
    }

    pub fn allocate(&mut self) -> Result<SocketAddr, TurnError> {
        let resp = self.transact(Method::ALLOCATE, &|w| {
            w.attr(&RequestedTransport::UDP)?;
            Ok(())
        })?;
        self.take_allocation(&resp)
    }

    pub fn write_channel_bind(
        &mut self,
        channel: u16,
        peer: SocketAddr,
    ) -> Result<TransactionId, TurnError> {
        self.write_request(Method::CHANNEL_BIND, &|w| {
            w.attr(&ChannelNumber(channel))?;
            w.attr(&XorPeerAddress(peer))?;
            Ok(())
        })
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), TurnError> {
        self.transact(Method::CHANNEL_BIND, &|w| {
            w.attr(&ChannelNumber(channel))?;
            w.attr(&XorPeerAddress(peer))?;
            Ok(())
        })
        .map(drop)
    }

    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<(), TurnError> {
        self.transact(Method::CREATE_PERMISSION, &|w| {
            for p in peers {
                w.attr(&XorPeerAddress(*p))?;
            }
            Ok(())
        })
        .map(drop)
    }

    /// Refresh with LIFETIME `lifetime` (0 deletes the allocation).
    pub fn refresh(&mut self, lifetime: u32) -> Result<(), TurnError> {
        self.transact(Method::REFRESH, &|w| {
            w.attr(&Lifetime(lifetime))?;
            Ok(())
        })
        .map(drop)
    }

    /// ChannelData padded to 4 bytes, as stream transports require.
    pub fn send_channel_data(&mut self, channel: u16, data: &[u8]) -> Result<(), TurnError> {
        let mut buf = vec![0u8; data.len() + 8];
        let n = write_channel_data(&mut buf, channel, data, true)?;
        self.write_all(&buf[..n])?;
        Ok(())
    }

    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), TurnError> {
        let msg = turn_codec::send_indication(peer, data)?;
        self.write_all(&msg)?;
        Ok(())
    }

    /// The next Data indication or ChannelData (within the stream's read timeout).
    pub fn recv_data(&mut self) -> Result<Received, TurnError> {
        if let Some(r) = self.pending.pop_front() {
            return Ok(r);
        }
        loop {
            let f = self.read_frame()?;
            if let Some(r) = turn_codec::received(&f) {
                return Ok(r);
            }
        }
    }
}
