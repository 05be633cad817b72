//! The tests' oracle against the server: a client-side codec kept apart from
//! `relay-client` on purpose. Long-term credentials and the requests they sign, the check
//! of a response (integrity, error code), Send indications and the application data a
//! client receives, written from RFC 8489/8656 without the shared client's state
//! machine, so a mistake there cannot hide the same mistake in the server. The lockstep
//! stream client ([`stream_client`](crate::stream_client)) is built on it. The wire codec
//! is relay-proto's; coturn's `turnutils_uclient` and the browsers check the wire itself.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use relay_proto::{
    auth::{Key, PasswordAlgorithm, long_term_key},
    stun::{
        BufferTooSmall, ChannelData, Class, Data, ErrorCode, Message, MessageWriter, Method, Nonce,
        PacketKind, Realm, TransactionId, Username, XorPeerAddress, classify,
    },
};

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
        /// ALTERNATE-SERVER of a 300.
        alternate: Option<SocketAddr>,
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

    /// ALTERNATE-SERVER of a 300 response.
    pub fn alternate(&self) -> Option<SocketAddr> {
        match self {
            TurnError::Code { alternate, .. } => *alternate,
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
                ..
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

/// Attributes of one request besides the authentication ones.
pub type Attrs<'f> = &'f dyn Fn(&mut MessageWriter<'_>) -> Result<(), BufferTooSmall>;

/// Long-term credentials as a client holds them: its username and password and, once a
/// server has challenged it, the realm, the nonce and the key derived from them.
pub struct Credentials {
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<Key>,
}

impl Credentials {
    pub fn new(username: &str, password: &str) -> Self {
        Self {
            username: username.to_owned(),
            password: password.to_owned(),
            realm: None,
            nonce: None,
            key: None,
        }
    }

    /// Whether requests are signed yet.
    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// Uses `realm` and `nonce` from now on, with the MD5 key for them.
    pub fn prime(&mut self, realm: &str, nonce: &str) {
        self.realm = Some(realm.to_owned());
        self.nonce = Some(nonce.to_owned());
        self.key = Some(long_term_key(
            PasswordAlgorithm::Md5,
            &self.username,
            realm,
            &self.password,
        ));
    }

    /// The realm and nonce in use, once known.
    pub fn realm_and_nonce(&self) -> Option<(String, String)> {
        Some((self.realm.clone()?, self.nonce.clone()?))
    }

    /// Encodes a request into `buf`: `attrs`, then (once a key is known) USERNAME, REALM,
    /// NONCE and MESSAGE-INTEGRITY, FINGERPRINT last. Returns its length.
    pub fn write_request(
        &self,
        buf: &mut [u8],
        method: Method,
        txid: TransactionId,
        attrs: Attrs<'_>,
    ) -> Result<usize, BufferTooSmall> {
        let mut w = MessageWriter::new(buf, Class::Request, method, txid)?;
        attrs(&mut w)?;
        if let (Some(key), Some(realm), Some(nonce)) = (&self.key, &self.realm, &self.nonce) {
            w.attr(&Username(&self.username))?;
            w.attr(&Realm(realm))?;
            w.attr(&Nonce(nonce))?;
            w.integrity_sha1(key.as_bytes())?;
        }
        w.fingerprint()?;
        Ok(w.finish())
    }

    /// `Ok` for a success response to `method` (its MESSAGE-INTEGRITY checked once a key
    /// is known), otherwise the error it carries.
    pub fn check(&self, method: Method, resp: &[u8]) -> Result<(), TurnError> {
        let msg = Message::parse(resp).map_err(|e| TurnError::Protocol(e.to_string()))?;
        if msg.class() == Class::Success {
            if let Some(key) = &self.key {
                msg.verify_integrity(key.as_bytes()).map_err(|e| {
                    TurnError::Protocol(format!("{method:?} success response integrity: {e:?}"))
                })?;
            }
            return Ok(());
        }
        match msg.attr::<ErrorCode>() {
            Some(Ok(e)) => Err(TurnError::Code {
                method,
                code: e.code,
                reason: e.reason.to_owned(),
                alternate: msg
                    .attr::<relay_proto::stun::AlternateServer>()
                    .and_then(Result::ok)
                    .map(|a| a.0),
            }),
            _ => Err(TurnError::Protocol(format!(
                "{method:?} error response without a valid ERROR-CODE"
            ))),
        }
    }

    /// Takes the realm (when present) and the nonce of a challenge (a 401 or 438 error
    /// response); `true` when a realm and a nonce are now known and the key is derived.
    pub fn absorb_challenge(&mut self, resp: &[u8]) -> bool {
        let Ok(msg) = Message::parse(resp) else {
            return false;
        };
        let nonce = msg.attr::<Nonce>().and_then(Result::ok).map(|n| n.0);
        if let Some(r) = msg.attr::<Realm>().and_then(Result::ok).map(|r| r.0) {
            self.realm = Some(r.to_owned());
        }
        match (nonce, self.realm.clone()) {
            (Some(n), Some(r)) => {
                self.prime(&r, n);
                true
            }
            _ => false,
        }
    }
}

/// A Send indication carrying `data` to `peer`.
pub fn send_indication(peer: SocketAddr, data: &[u8]) -> Result<Vec<u8>, BufferTooSmall> {
    let mut buf = vec![0u8; data.len() + 128];
    let mut w = MessageWriter::new(&mut buf, Class::Indication, Method::SEND, new_txid())?;
    w.attr(&XorPeerAddress(peer))?;
    w.attr(&Data(data))?;
    let n = w.finish();
    buf.truncate(n);
    Ok(buf)
}

/// A Data indication or a ChannelData message (stream padding allowed) as [`Received`];
/// `None` for anything else.
pub fn received(pkt: &[u8]) -> Option<Received> {
    match classify(pkt) {
        PacketKind::ChannelData => {
            let cd = ChannelData::parse(pkt).ok()?;
            Some(Received {
                peer: None,
                channel: Some(cd.channel()),
                data: cd.payload().to_vec(),
            })
        }
        PacketKind::Stun => {
            let msg = Message::parse(pkt).ok()?;
            if msg.class() != Class::Indication || msg.method() != Method::DATA {
                return None;
            }
            Some(Received {
                peer: Some(msg.attr::<XorPeerAddress>().and_then(Result::ok)?.0),
                channel: None,
                data: msg.attr::<Data>().and_then(Result::ok)?.0.to_vec(),
            })
        }
        PacketKind::Other => None,
    }
}
