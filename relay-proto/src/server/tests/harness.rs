//! Test harness: fake clock, fixed credentials, a client-side message builder.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::auth::{CredentialStore, Key, NonceKey, PasswordAlgorithm as KeyAlg, long_term_key};
use crate::policy::PeerPolicy;
use crate::server::{
    ClientOutput, Command, Event, FiveTuple, PeerOutput, RelayAddr, Server, ServerConfig, Transport,
};
use crate::stun::{
    Class, ErrorCode, Message, MessageWriter, Method, Nonce, PasswordAlgorithm, PasswordAlgorithms,
    Realm, RequestedTransport, TransactionId, UserHash, Username,
};

pub const REALM: &str = "example.org";
pub const ALICE: (&str, &str) = ("alice", "wonderland");
pub const BOB: (&str, &str) = ("bob", "builder");
pub const SECRET: &[u8] = b"rest-shared-secret";
/// Unix time at the harness's t0.
pub const UNIX_T0: u64 = 1_700_000_000;

pub const RELAY4_BIND: [u8; 4] = [10, 0, 0, 5];
pub const RELAY4_PUBLIC: [u8; 4] = [203, 0, 113, 5];
pub const RELAY6: &str = "2001:db8::5";

pub fn relay4() -> RelayAddr {
    RelayAddr {
        bind: RELAY4_BIND.into(),
        public: RELAY4_PUBLIC.into(),
    }
}

pub fn relay6() -> RelayAddr {
    RelayAddr::direct(RELAY6.parse().unwrap())
}

pub fn listener() -> SocketAddr {
    ([192, 0, 2, 1], 3478).into()
}

/// Client number `n` over UDP (distinct source ports on one host).
pub fn udp(n: u16) -> FiveTuple {
    FiveTuple::new(
        ([192, 0, 2, 100], 40000 + n).into(),
        listener(),
        Transport::Udp,
    )
}

/// A UDP client at `ip`:`port` (a source of its own for the per-source quota).
pub fn udp_at(ip: &str, port: u16) -> FiveTuple {
    FiveTuple::new(
        SocketAddr::new(ip.parse().unwrap(), port),
        listener(),
        Transport::Udp,
    )
}

pub fn tcp(n: u16) -> FiveTuple {
    FiveTuple::new(
        ([192, 0, 2, 100], 40000 + n).into(),
        listener(),
        Transport::Tcp,
    )
}

/// A peer on the "internet" (documentation range, allowed by the default policy).
pub fn peer(last: u8, port: u16) -> SocketAddr {
    ([198, 51, 100, last], port).into()
}

pub fn config() -> ServerConfig {
    ServerConfig {
        realm: REALM.into(),
        software: Some("relay-test".into()),
        relay_v4: Some(relay4()),
        relay_v6: None,
        ports: 24000..=29999,
        port_seed: 42,
        ..ServerConfig::default()
    }
}

pub fn credentials() -> CredentialStore {
    let mut c = CredentialStore::new(REALM);
    c.add_user(ALICE.0, ALICE.1).unwrap();
    c.add_user(BOB.0, BOB.1).unwrap();
    c.add_shared_secret(SECRET);
    c
}

pub fn policy(config: &ServerConfig) -> PeerPolicy {
    let mut own: Vec<IpAddr> = Vec::new();
    for r in [config.relay_v4, config.relay_v6].into_iter().flatten() {
        own.push(r.bind);
        own.push(r.public);
    }
    PeerPolicy::new(vec![], vec![], own)
}

/// Client credentials.
#[derive(Clone, Debug)]
pub struct Cred {
    pub user: String,
    pub password: String,
    /// PASSWORD-ALGORITHM to send (with PASSWORD-ALGORITHMS as offered); `None`: neither.
    pub alg: Option<PasswordAlgorithm>,
    /// MESSAGE-INTEGRITY-SHA256 instead of MESSAGE-INTEGRITY.
    pub sha256: bool,
    /// USERHASH instead of USERNAME.
    pub userhash: bool,
    pub realm: String,
}

impl Cred {
    pub fn new(user: &str, password: &str) -> Self {
        Self {
            user: user.into(),
            password: password.into(),
            alg: None,
            sha256: false,
            userhash: false,
            realm: REALM.into(),
        }
    }
    /// A TURN REST credential for `name`, valid for an hour from the harness's t0.
    pub fn rest(name: &str) -> Self {
        let user = format!("{}:{name}", UNIX_T0 + 3600);
        let pw = crate::auth::rest::password(SECRET, &user);
        Self::new(&user, pw.as_str())
    }
    pub fn alice() -> Self {
        Self::new(ALICE.0, ALICE.1)
    }
    pub fn bob() -> Self {
        Self::new(BOB.0, BOB.1)
    }
    pub fn key(&self) -> Key {
        let alg = match self.alg {
            Some(PasswordAlgorithm::Sha256) => KeyAlg::Sha256,
            _ => KeyAlg::Md5,
        };
        long_term_key(alg, &self.user, &self.realm, &self.password)
    }
}

/// An owned copy of a [`ClientOutput`] / [`PeerOutput`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    Nothing,
    Reply(Vec<u8>),
    ToPeer {
        relay: SocketAddr,
        peer: SocketAddr,
        payload: Vec<u8>,
    },
    ToClient {
        to: FiveTuple,
        bytes: Vec<u8>,
    },
    Drop(crate::server::DropReason),
}

impl Out {
    pub fn reply(self) -> Vec<u8> {
        match self {
            Out::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }
}

pub struct H {
    pub server: Server,
    pub t0: Instant,
    pub now: Instant,
    txid: u32,
}

impl H {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    pub fn with(f: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut cfg = config();
        f(&mut cfg);
        let t0 = Instant::now();
        let pol = policy(&cfg);
        let server = Server::new(cfg, credentials(), pol, NonceKey::new([7; 32]), t0, UNIX_T0);
        Self {
            server,
            t0,
            now: t0,
            txid: 0,
        }
    }

    /// Moves the clock and runs the timers.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
    }

    /// Moves the clock without running the timers.
    pub fn skip(&mut self, d: Duration) {
        self.now += d;
    }

    pub fn txid(&mut self) -> [u8; 12] {
        self.txid += 1;
        let mut t = [0xAA; 12];
        t[8..].copy_from_slice(&self.txid.to_be_bytes());
        t
    }

    pub fn client(&mut self, from: FiveTuple, packet: &[u8]) -> Out {
        let mut out = vec![0u8; 4096];
        match self.server.handle_client(self.now, from, packet, &mut out) {
            ClientOutput::Nothing => Out::Nothing,
            ClientOutput::Reply { len } => Out::Reply(out[..len].to_vec()),
            ClientOutput::ToPeer {
                relay,
                peer,
                payload,
            } => {
                // Zero copy: the payload is a slice of the input packet.
                let range = packet.as_ptr_range();
                assert!(range.contains(&payload.as_ptr()) || payload.is_empty());
                Out::ToPeer {
                    relay,
                    peer,
                    payload: payload.to_vec(),
                }
            }
            ClientOutput::ToClient { to, len } => Out::ToClient {
                to,
                bytes: out[..len].to_vec(),
            },
        }
    }

    pub fn peer(&mut self, relay: SocketAddr, peer: SocketAddr, payload: &[u8]) -> Out {
        let mut out = vec![0u8; 4096];
        match self
            .server
            .handle_peer(self.now, relay, peer, payload, &mut out)
        {
            PeerOutput::Drop(r) => Out::Drop(r),
            PeerOutput::ToClient { to, len } => Out::ToClient {
                to,
                bytes: out[..len].to_vec(),
            },
        }
    }

    /// Builds a message; with `cred`, signs it with USERNAME/USERHASH, REALM, `nonce`.
    pub fn build(
        &mut self,
        class: Class,
        method: Method,
        txid: [u8; 12],
        cred: Option<(&Cred, &str)>,
        f: impl FnOnce(&mut MessageWriter<'_>),
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let mut w = MessageWriter::new(&mut buf, class, method, TransactionId(txid)).unwrap();
        f(&mut w);
        if let Some((c, nonce)) = cred {
            if c.userhash {
                let h = crate::auth::user_hash(&c.user, &c.realm);
                w.attr(&UserHash(h)).unwrap();
            } else {
                w.attr(&Username(&c.user)).unwrap();
            }
            w.attr(&Realm(&c.realm)).unwrap();
            w.attr(&Nonce(nonce)).unwrap();
            if let Some(alg) = c.alg {
                let offered = PasswordAlgorithms::from_slice(&[
                    PasswordAlgorithm::Sha256,
                    PasswordAlgorithm::Md5,
                ]);
                w.attr(&offered).unwrap();
                w.attr(&alg).unwrap();
            }
            let key = c.key();
            if c.sha256 {
                w.integrity_sha256(key.as_bytes()).unwrap();
            } else {
                w.integrity_sha1(key.as_bytes()).unwrap();
            }
        }
        w.fingerprint().unwrap();
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    /// Gets a nonce the way a client does: an unauthenticated Allocate, answered 401.
    pub fn nonce(&mut self, from: FiveTuple) -> String {
        let txid = self.txid();
        let req = self.build(Class::Request, Method::ALLOCATE, txid, None, |w| {
            w.attr(&RequestedTransport(17)).unwrap();
        });
        let reply = self.client(from, &req).reply();
        assert_eq!(code(&reply), Some(401));
        let m = Message::parse(&reply).unwrap();
        m.attr::<Nonce>().unwrap().unwrap().0.to_owned()
    }

    /// An authenticated request with a fresh nonce, whatever comes out (a Connect is
    /// answered later); returns the request bytes (for retransmission) and the output.
    pub fn ask(
        &mut self,
        from: FiveTuple,
        method: Method,
        cred: &Cred,
        f: impl FnOnce(&mut MessageWriter<'_>),
    ) -> (Vec<u8>, Out) {
        let nonce = self.nonce(from);
        let txid = self.txid();
        let req = self.build(Class::Request, method, txid, Some((cred, &nonce)), f);
        let out = self.client(from, &req);
        (req, out)
    }

    /// [`ask`](Self::ask) for a request answered at once; returns the request bytes and the
    /// reply.
    pub fn request(
        &mut self,
        from: FiveTuple,
        method: Method,
        cred: &Cred,
        f: impl FnOnce(&mut MessageWriter<'_>),
    ) -> (Vec<u8>, Vec<u8>) {
        let (req, out) = self.ask(from, method, cred, f);
        (req, out.reply())
    }

    /// Authenticated Allocate (UDP) with extra attributes.
    pub fn allocate_with(
        &mut self,
        from: FiveTuple,
        cred: &Cred,
        f: impl FnOnce(&mut MessageWriter<'_>),
    ) -> Vec<u8> {
        self.request(from, Method::ALLOCATE, cred, |w| {
            w.attr(&RequestedTransport(17)).unwrap();
            f(w);
        })
        .1
    }

    /// Allocates for alice and returns the XOR-RELAYED-ADDRESS.
    pub fn allocate(&mut self, from: FiveTuple) -> SocketAddr {
        let reply = self.allocate_with(from, &Cred::alice(), |_| {});
        assert_eq!(code(&reply), None, "allocate failed: {}", describe(&reply));
        relayed(&reply)[0]
    }

    pub fn permit(&mut self, from: FiveTuple, cred: &Cred, peers: &[SocketAddr]) -> Vec<u8> {
        self.request(from, Method::CREATE_PERMISSION, cred, |w| {
            for p in peers {
                w.attr(&crate::stun::XorPeerAddress(*p)).unwrap();
            }
        })
        .1
    }

    pub fn bind(&mut self, from: FiveTuple, cred: &Cred, channel: u16, p: SocketAddr) -> Vec<u8> {
        self.request(from, Method::CHANNEL_BIND, cred, |w| {
            w.attr(&crate::stun::ChannelNumber(channel)).unwrap();
            w.attr(&crate::stun::XorPeerAddress(p)).unwrap();
        })
        .1
    }

    pub fn refresh(&mut self, from: FiveTuple, cred: &Cred, lifetime: Option<u32>) -> Vec<u8> {
        self.request(from, Method::REFRESH, cred, |w| {
            if let Some(l) = lifetime {
                w.attr(&crate::stun::Lifetime(l)).unwrap();
            }
        })
        .1
    }

    /// A Send indication (never signed).
    pub fn send(&mut self, from: FiveTuple, to: SocketAddr, data: &[u8]) -> Out {
        let txid = self.txid();
        let ind = self.build(Class::Indication, Method::SEND, txid, None, |w| {
            w.attr(&crate::stun::XorPeerAddress(to)).unwrap();
            w.attr(&crate::stun::Data(data)).unwrap();
        });
        self.client(from, &ind)
    }

    /// The bind address of `from`'s (first) relayed address: where its peers' datagrams
    /// arrive.
    pub fn relay_bind(&self, from: FiveTuple) -> SocketAddr {
        self.server
            .allocation(&from)
            .unwrap()
            .relayed()
            .next()
            .unwrap()
            .bind
    }

    pub fn commands(&mut self) -> Vec<Command> {
        std::iter::from_fn(|| self.server.poll_command()).collect()
    }

    pub fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }
}

/// ERROR-CODE of a response, `None` for a success.
pub fn code(reply: &[u8]) -> Option<u16> {
    let m = Message::parse(reply).expect("reply parses");
    match m.class() {
        Class::Success => None,
        Class::Error => Some(m.attr::<ErrorCode>().expect("error code").unwrap().code),
        c => panic!("unexpected class {c:?}"),
    }
}

pub fn describe(reply: &[u8]) -> String {
    let m = Message::parse(reply).unwrap();
    match m.attr::<ErrorCode>() {
        Some(Ok(e)) => format!("{} {}", e.code, e.reason),
        _ => format!("{:?}", m.class()),
    }
}

/// XOR-RELAYED-ADDRESS values of a response.
pub fn relayed(reply: &[u8]) -> Vec<SocketAddr> {
    let m = Message::parse(reply).unwrap();
    m.attrs::<crate::stun::XorRelayedAddress>()
        .map(|a| a.unwrap().0)
        .collect()
}

/// The bind address behind an IPv4 relayed (public) address.
pub fn bind_of(relayed: SocketAddr) -> SocketAddr {
    SocketAddr::new(RELAY4_BIND.into(), relayed.port())
}

/// XOR-PEER-ADDRESS and DATA of a Data indication; panics on anything else.
pub fn data_indication(bytes: &[u8]) -> (SocketAddr, Vec<u8>) {
    let m = Message::parse(bytes).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Indication, Method::DATA));
    let peer = m.attr::<crate::stun::XorPeerAddress>().unwrap().unwrap().0;
    let data = m.attr::<crate::stun::Data>().unwrap().unwrap().0;
    (peer, data.to_vec())
}

pub fn lifetime(reply: &[u8]) -> u32 {
    let m = Message::parse(reply).unwrap();
    m.attr::<crate::stun::Lifetime>().unwrap().unwrap().0
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(s: u64) -> Duration {
    Duration::from_millis(s)
}
