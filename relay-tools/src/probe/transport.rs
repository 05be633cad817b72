//! Where the probe's requests travel: a connected UDP socket, or a TCP or TLS stream that
//! carries STUN messages back to back (RFC 8489 §6.2.2, RFC 6062 framing), split with
//! [`relay_proto::stun::frame_len`]. The request/response logic in `client.rs` sees only
//! [`Conn`], so the three transports share it.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_proto::stun::frame_len;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, StreamOwned};

use super::UsageError;

/// Port of `turn:`/`stun:` and of TCP when SERVER has none (RFC 8489 §18.1).
pub const DEFAULT_PORT: u16 = 3478;
/// Port of `turns:`/`stuns:` and of TLS when SERVER has none (RFC 8489 §18.1).
pub const DEFAULT_TLS_PORT: u16 = 5349;
/// Room for the largest STUN message a stream can frame (20-byte header + 65535).
const STREAM_BUF: usize = 20 + 65_536;

/// How the probe reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
    /// TLS over TCP (`turns:`).
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tls => DEFAULT_TLS_PORT,
            Transport::Udp | Transport::Tcp => DEFAULT_PORT,
        }
    }
}

/// The command line's transport is the client's (which adds no CLI or JSON traits).
impl From<Transport> for relay_client::Transport {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Udp => relay_client::Transport::Udp,
            Transport::Tcp => relay_client::Transport::Tcp,
            Transport::Tls => relay_client::Transport::Tls,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The server's host as given: an address, or a name to resolve (and to send as SNI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

/// SERVER as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: Host,
    pub port: Option<u16>,
    /// The transport a URI names (`turns:`, `?transport=tcp`); `None` for HOST[:PORT].
    pub transport: Option<Transport>,
}

/// `HOST`, `HOST:PORT`, `[IPv6]:PORT`, or a URI of RFC 7064/7065:
/// `turn:HOST[:PORT][?transport=udp|tcp]`, `turns:HOST[:PORT][?transport=tcp]`,
/// `stun:HOST[:PORT]`, `stuns:HOST[:PORT]`.
pub fn parse_target(s: &str) -> Result<Target, UsageError> {
    let s = s.trim();
    let bad = |why: &str| UsageError(format!("SERVER {s:?}: {why}"));
    let (scheme, rest) = match s.split_once(':') {
        Some((scheme @ ("turn" | "turns" | "stun" | "stuns"), rest)) => (Some(scheme), rest),
        _ => (None, s),
    };
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) if scheme.is_some() => (h, Some(q)),
        Some(_) => return Err(bad("a query needs a turn: or turns: URI")),
        None => (rest, None),
    };
    let mut transport = match scheme {
        Some("turns" | "stuns") => Some(Transport::Tls),
        Some(_) => Some(Transport::Udp),
        None => None,
    };
    if let Some(q) = query {
        let secure = transport == Some(Transport::Tls);
        transport = match (q, secure) {
            ("transport=udp", false) => Some(Transport::Udp),
            ("transport=tcp", false) => Some(Transport::Tcp),
            ("transport=tcp", true) => Some(Transport::Tls),
            ("transport=udp", true) => {
                return Err(bad(
                    "turns: over UDP is DTLS, which this probe does not speak",
                ));
            }
            _ => return Err(bad("the only query is transport=udp or transport=tcp")),
        };
    }
    let (host, port) = split_host_port(hostport).ok_or_else(|| bad("not HOST[:PORT]"))?;
    if port == Some(0) {
        return Err(bad("port 0"));
    }
    let host = match host.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) if valid_name(host) => Host::Name(host.to_owned()),
        Err(_) => return Err(bad("not an IP address or a host name")),
    };
    Ok(Target {
        host,
        port,
        transport,
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 address.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match s.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address.
        Some((h, _)) if h.contains(':') => Some((s, None)),
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((s, None)),
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// How the TLS probe decides whether to trust the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The host's trust store (what the operating system's browsers and tools use).
    System,
    /// Only the CA certificates in this PEM file (a private or self-signed CA).
    CaFile(std::path::PathBuf),
    /// No verification at all (`--insecure`): reachability only, never for production.
    Insecure,
}

/// A rustls client configuration for `trust` (ring provider, as the relay's server side).
pub fn tls_config(trust: &Trust) -> Result<Arc<ClientConfig>, UsageError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| UsageError(format!("TLS setup: {e}")))?;
    let config = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
        Trust::System => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), |e| e.to_string());
                return Err(UsageError(format!(
                    "no usable CA certificates in the system trust store ({why}): install \
                     ca-certificates, or pass --ca FILE (or --insecure)"
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::CaFile(path) => builder
            .with_root_certificates(ca_file(path)?)
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn ca_file(path: &Path) -> Result<RootCertStore, UsageError> {
    relay_admin_api::client::roots_from_pem_file(path)
        .map_err(|why| UsageError(format!("--ca {}: {why}", path.display())))
}

/// `--insecure`: any certificate, any name. Handshake signatures are still checked, so
/// the probe does talk to the holder of the certificate it was shown.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why reading the next message failed.
#[derive(Debug)]
pub enum RecvError {
    Io(io::Error),
    /// The server closed the stream.
    Closed,
    /// The stream does not carry STUN framing (wrong protocol on that port?).
    Framing(String),
}

/// One connection to the server, as the transaction logic needs it.
pub trait Conn {
    /// Sends one whole STUN message.
    fn send(&mut self, msg: &[u8]) -> io::Result<()>;
    /// The next whole message from the server into `buf`, or `None` once `until` passed.
    fn recv(&mut self, buf: &mut [u8], until: Instant) -> Result<Option<usize>, RecvError>;
    /// Requests are retransmitted only over UDP; a stream delivers or fails (RFC 8489
    /// §6.2.2), so over TCP/TLS one transmission waits for the whole timeout.
    fn retransmits(&self) -> bool;
}

fn time_left(until: Instant) -> Option<Duration> {
    let left = until.saturating_duration_since(Instant::now());
    // set_read_timeout refuses zero; sub-microsecond leftovers round up.
    (!left.is_zero()).then(|| left.max(Duration::from_micros(1)))
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A UDP socket connected to the server.
pub struct Datagram<'s>(pub &'s UdpSocket);

impl Conn for Datagram<'_> {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.0.send(msg).map(|_| ())
    }

    fn recv(&mut self, buf: &mut [u8], until: Instant) -> Result<Option<usize>, RecvError> {
        loop {
            let Some(left) = time_left(until) else {
                return Ok(None);
            };
            self.0.set_read_timeout(Some(left)).map_err(RecvError::Io)?;
            match self.0.recv(buf) {
                Ok(len) => return Ok(Some(len)),
                Err(e) if timed_out(&e) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
    }

    fn retransmits(&self) -> bool {
        true
    }
}

/// A byte stream whose reads can be bounded in time.
pub trait TimedIo: Read + Write {
    fn set_read_timeout(&mut self, t: Duration) -> io::Result<()>;
}

impl TimedIo for TcpStream {
    fn set_read_timeout(&mut self, t: Duration) -> io::Result<()> {
        TcpStream::set_read_timeout(self, Some(t))
    }
}

impl TimedIo for StreamOwned<ClientConnection, TcpStream> {
    fn set_read_timeout(&mut self, t: Duration) -> io::Result<()> {
        self.sock.set_read_timeout(Some(t))
    }
}

/// STUN messages over a TCP or TLS stream.
pub struct Stream<S> {
    io: S,
    rx: Vec<u8>,
    filled: usize,
}

impl<S: TimedIo> Stream<S> {
    pub fn new(io: S) -> Self {
        Self {
            io,
            rx: vec![0; STREAM_BUF],
            filled: 0,
        }
    }
}

impl<S: TimedIo> Conn for Stream<S> {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.io.write_all(msg)?;
        self.io.flush()
    }

    fn recv(&mut self, buf: &mut [u8], until: Instant) -> Result<Option<usize>, RecvError> {
        loop {
            let framed = frame_len(&self.rx[..self.filled])
                .map_err(|e| RecvError::Framing(format!("not STUN framing: {e}")))?;
            if let Some(n) = framed {
                if n > buf.len() {
                    return Err(RecvError::Framing(format!(
                        "a {n}-byte message, larger than any STUN response"
                    )));
                }
                buf[..n].copy_from_slice(&self.rx[..n]);
                self.rx.copy_within(n..self.filled, 0);
                self.filled -= n;
                return Ok(Some(n));
            }
            let Some(left) = time_left(until) else {
                return Ok(None);
            };
            self.io.set_read_timeout(left).map_err(RecvError::Io)?;
            match self.io.read(&mut self.rx[self.filled..]) {
                // Bytes that never made a frame: another protocol (HTTP looks like ChannelData).
                Ok(0) if self.filled > 0 => {
                    return Err(RecvError::Framing(format!(
                        "not STUN framing: {} bytes without a whole STUN message, then the \
                         server closed the connection",
                        self.filled
                    )));
                }
                Ok(0) => return Err(RecvError::Closed),
                Ok(n) => self.filled += n,
                Err(e) if timed_out(&e) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(RecvError::Closed);
                }
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
    }

    fn retransmits(&self) -> bool {
        false
    }
}

/// An established TCP or TLS connection and what it took.
pub struct Connected {
    pub conn: Box<dyn Conn>,
    pub local: SocketAddr,
    pub connect: Duration,
    /// TLS handshake time; `None` over plain TCP.
    pub handshake: Option<Duration>,
}

/// A connection that could not be established.
#[derive(Debug)]
pub struct ConnectFailed {
    /// Set when the TCP connect worked and the TLS handshake did not.
    pub connect: Option<Duration>,
    pub detail: String,
}

/// Connects to `server` (TCP), then with `tls` runs the handshake, each within `timeout`.
pub fn connect_stream(
    server: SocketAddr,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    timeout: Duration,
) -> Result<Connected, ConnectFailed> {
    let start = Instant::now();
    let tcp = TcpStream::connect_timeout(&server, timeout).map_err(|e| ConnectFailed {
        connect: None,
        detail: connect_detail(&e, timeout),
    })?;
    let connect = start.elapsed();
    // Requests are small and answered one at a time: do not let Nagle hold them back.
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().map_err(|e| ConnectFailed {
        connect: Some(connect),
        detail: e.to_string(),
    })?;
    let Some((config, name)) = tls else {
        return Ok(Connected {
            conn: Box::new(Stream::new(tcp)),
            local,
            connect,
            handshake: None,
        });
    };
    let failed = |detail: String| ConnectFailed {
        connect: Some(connect),
        detail,
    };
    let mut tcp = tcp;
    let mut tls =
        ClientConnection::new(config, name).map_err(|e| failed(format!("TLS setup: {e}")))?;
    let hs_start = Instant::now();
    let deadline = hs_start + timeout;
    while tls.is_handshaking() {
        let Some(left) = time_left(deadline) else {
            return Err(failed(format!(
                "TLS handshake: no answer within {} ms (is TLS served on this port?)",
                timeout.as_millis()
            )));
        };
        tcp.set_read_timeout(Some(left))
            .and_then(|()| tcp.set_write_timeout(Some(left)))
            .map_err(|e| failed(e.to_string()))?;
        match tls.complete_io(&mut tcp) {
            Ok(_) => {}
            Err(e) if timed_out(&e) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(handshake_detail(&e))),
        }
    }
    Ok(Connected {
        conn: Box::new(Stream::new(StreamOwned::new(tls, tcp))),
        local,
        connect,
        handshake: Some(hs_start.elapsed()),
    })
}

fn connect_detail(e: &io::Error, timeout: Duration) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            "connection refused: nothing listens on that TCP port, or a firewall rejects it".into()
        }
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => format!(
            "TCP connect: no answer within {} ms (a firewall drops it, or wrong address)",
            timeout.as_millis()
        ),
        _ => format!("TCP connect: {e}"),
    }
}

fn handshake_detail(e: &io::Error) -> String {
    let what = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => {
            return format!(
                "TLS handshake: the server's certificate is not trusted ({c:?}): check that it \
                 is valid for the name probed (--sni), or trust its CA with --ca FILE \
                 (--insecure skips the check)"
            );
        }
        Some(t) => t.to_string(),
        None if e.kind() == io::ErrorKind::UnexpectedEof => {
            "the server closed the connection (is TLS served on this port?)".into()
        }
        None => e.to_string(),
    };
    format!("TLS handshake: {what}")
}
