//! One allocation's TURN client, as a small state machine the worker drives: it builds
//! each request into its own buffer, consumes the response, and says what to do next.
//!
//! Setup is what a browser does: Allocate, 401 challenge, authenticated Allocate, then
//! ChannelBind (channel mode) or CreatePermission (Send mode) for the echo peer. While
//! traffic runs the same requests refresh the permission and the allocation; at the end a
//! Refresh with LIFETIME 0 deletes it. Responses are not integrity-checked: the generator
//! measures the server, it does not defend against it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay_proto::auth::{Key, PasswordAlgorithm as KeyAlgorithm, try_long_term_key};
use relay_proto::stun::{
    BufferTooSmall, ChannelNumber, Class, ErrorCode, Lifetime, Message, MessageWriter, Method,
    Nonce, PasswordAlgorithm, PasswordAlgorithms, Realm, RequestedTransport, Software,
    TransactionId, Username, XorPeerAddress, XorRelayedAddress,
};

/// SOFTWARE of every request, so a server's log shows where the load came from.
const SOFTWARE: &str = concat!("relay-load/", env!("CARGO_PKG_VERSION"));
/// Room for the longest request we build (long usernames included).
const REQUEST_MAX: usize = 768;
/// A 438 (stale nonce) is answered with the new nonce this many times in a row.
const STALE_RETRIES: u8 = 3;

/// Long-term credentials (a configured user, or a TURN REST pair minted from a secret).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How data travels: ChannelData, Send/Data indications, or straight to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataMode {
    Channel,
    Send,
    /// No TURN server: the no-relay baseline of a benchmark.
    Direct,
}

/// Retransmission of one request (RFC 8489 §6.2.1, bounded by a deadline).
#[derive(Debug, Clone, Copy)]
pub struct Retransmit {
    pub rto: Duration,
    pub tries: u32,
    pub timeout: Duration,
}

/// What every session of a worker shares.
pub struct Ctx {
    pub peer: SocketAddr,
    pub mode: DataMode,
    pub channel: u16,
    pub credentials: Option<Credentials>,
    pub retransmit: Retransmit,
    /// Key derivation is an MD5/SHA-256 over username:realm:password: done once per
    /// realm and algorithm, not once per allocation.
    key_cache: Option<(String, KeyAlgorithm, Key)>,
    rng: u64,
}

impl Ctx {
    pub fn new(
        peer: SocketAddr,
        mode: DataMode,
        channel: u16,
        credentials: Option<Credentials>,
        retransmit: Retransmit,
    ) -> Self {
        let mut seed = [0u8; 8];
        // Transaction ids of a load generator need to be distinct, not secret.
        let _ = getrandom::fill(&mut seed);
        Self {
            peer,
            mode,
            channel,
            credentials,
            retransmit,
            key_cache: None,
            rng: u64::from_ne_bytes(seed) | 1,
        }
    }

    fn txid(&mut self) -> TransactionId {
        let mut id = [0u8; 12];
        for chunk in id.chunks_mut(4) {
            // xorshift64*
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let v = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
            chunk.copy_from_slice(&v.to_ne_bytes()[..4]);
        }
        TransactionId(id)
    }

    fn key(&mut self, realm: &str, alg: KeyAlgorithm) -> Result<Key, Failure> {
        if let Some((r, a, k)) = &self.key_cache
            && r == realm
            && *a == alg
        {
            return Ok(k.clone());
        }
        let c = self.credentials.as_ref().ok_or(Failure::Error(401))?;
        let k = try_long_term_key(alg, &c.username, realm, &c.password)
            .map_err(|_| Failure::BadResponse)?;
        self.key_cache = Some((realm.to_owned(), alg, k.clone()));
        Ok(k)
    }
}

/// Which request is outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Allocate,
    /// ChannelBind or CreatePermission, depending on the data mode.
    Bind,
    Refresh,
    Delete,
}

/// Why an allocation did not become usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// An error response's code.
    Error(u16),
    Timeout,
    /// ICMP unreachable or a local send error.
    Unreachable,
    /// A response without what it must carry (e.g. no XOR-RELAYED-ADDRESS).
    BadResponse,
    /// The local socket could not be made (open-file limit, no such address...).
    Socket,
    /// The TCP or TLS connection failed or was closed before the allocation was ready.
    Closed,
    /// The TLS handshake failed (certificate not trusted, wrong name, no common version).
    Tls,
}

impl Failure {
    /// The key failures are counted under in reports: the error code, or a word.
    pub fn label(self) -> String {
        match self {
            Failure::Error(c) => c.to_string(),
            Failure::Timeout => "timeout".into(),
            Failure::Unreachable => "unreachable".into(),
            Failure::BadResponse => "bad_response".into(),
            Failure::Socket => "socket".into(),
            Failure::Closed => "closed".into(),
            Failure::Tls => "tls".into(),
        }
    }
}

/// What the worker does after feeding the session an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Send [`Session::request`] (a new request or a retransmission).
    Send,
    /// Nothing to do yet.
    Wait,
    /// The step finished; the session is idle (ready, or deleted after `Delete`).
    Done(Step),
    Failed(Failure),
}

struct Auth {
    realm: String,
    nonce: String,
    algorithm: KeyAlgorithm,
    offered: Option<PasswordAlgorithms>,
    key: Key,
}

struct Pending {
    step: Step,
    txid: TransactionId,
    first_sent: Instant,
    next_retransmit: Instant,
    rto: Duration,
    sent: u32,
    stale_retries: u8,
}

/// One allocation's control state. Its request buffer is allocated once, at creation.
pub struct Session {
    auth: Option<Auth>,
    pending: Option<Pending>,
    req: Box<[u8; REQUEST_MAX]>,
    req_len: usize,
    pub relayed: Option<SocketAddr>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    pub fn new() -> Self {
        Self {
            auth: None,
            pending: None,
            req: Box::new([0; REQUEST_MAX]),
            req_len: 0,
            relayed: None,
        }
    }

    /// The request to (re)send.
    pub fn request(&self) -> &[u8] {
        &self.req[..self.req_len]
    }

    /// Gives up the outstanding request (the server is unreachable).
    pub fn abandon(&mut self) {
        self.pending = None;
    }

    pub fn pending_step(&self) -> Option<Step> {
        self.pending.as_ref().map(|p| p.step)
    }

    /// Builds the first request of `step`; the caller sends it.
    pub fn start(&mut self, ctx: &mut Ctx, step: Step, now: Instant) -> Next {
        self.pending = Some(Pending {
            step,
            txid: ctx.txid(),
            first_sent: now,
            next_retransmit: now + ctx.retransmit.rto,
            rto: ctx.retransmit.rto,
            sent: 1,
            stale_retries: 0,
        });
        self.build(ctx)
    }

    /// Retransmits when the timer is due; gives up after the tries or the deadline (the
    /// last transmission waits until the deadline).
    pub fn on_timer(&mut self, ctx: &Ctx, now: Instant) -> Next {
        let Some(p) = &mut self.pending else {
            return Next::Wait;
        };
        if now < p.next_retransmit {
            return Next::Wait;
        }
        let deadline = p.first_sent + ctx.retransmit.timeout;
        if now >= deadline {
            let step = p.step;
            self.pending = None;
            return if step == Step::Delete {
                Next::Done(Step::Delete)
            } else {
                Next::Failed(Failure::Timeout)
            };
        }
        if p.sent >= ctx.retransmit.tries {
            p.next_retransmit = deadline;
            return Next::Wait;
        }
        p.sent += 1;
        p.rto = p.rto.saturating_mul(2);
        p.next_retransmit = (now + p.rto).min(deadline);
        Next::Send
    }

    /// A STUN response arrived on this allocation's socket.
    pub fn on_response(&mut self, ctx: &mut Ctx, msg: &Message<'_>, now: Instant) -> Next {
        let Some(p) = &self.pending else {
            return Next::Wait;
        };
        let (step, stale_retries) = (p.step, p.stale_retries);
        if msg.transaction_id() != p.txid || !matches!(msg.class(), Class::Success | Class::Error) {
            return Next::Wait;
        }
        if msg.class() == Class::Success {
            if step == Step::Allocate {
                match msg.attr::<XorRelayedAddress>() {
                    Some(Ok(XorRelayedAddress(a))) => self.relayed = Some(a),
                    _ => {
                        self.pending = None;
                        return Next::Failed(Failure::BadResponse);
                    }
                }
            }
            self.pending = None;
            return Next::Done(step);
        }
        let code = match msg.attr::<ErrorCode>() {
            Some(Ok(e)) => e.code,
            _ => 0,
        };
        if step == Step::Delete {
            // Gone already (437) or refused: either way nothing is left to delete.
            self.pending = None;
            return Next::Done(Step::Delete);
        }
        let retry = match code {
            401 if self.auth.is_none() && step == Step::Allocate => self.take_challenge(ctx, msg),
            438 if stale_retries < STALE_RETRIES => self.take_challenge(ctx, msg),
            _ => Err(Failure::Error(code)),
        };
        match retry {
            Ok(()) => {
                let stale = stale_retries + u8::from(code == 438);
                self.start(ctx, step, now);
                if let Some(p) = &mut self.pending {
                    p.stale_retries = stale;
                }
                Next::Send
            }
            Err(f) => {
                self.pending = None;
                Next::Failed(f)
            }
        }
    }

    /// 401 or 438: realm, nonce and password algorithm from the challenge.
    fn take_challenge(&mut self, ctx: &mut Ctx, msg: &Message<'_>) -> Result<(), Failure> {
        let (Some(Ok(Realm(realm))), Some(Ok(Nonce(nonce)))) =
            (msg.attr::<Realm>(), msg.attr::<Nonce>())
        else {
            return Err(Failure::BadResponse);
        };
        let (offered, algorithm) = match msg.attr::<PasswordAlgorithms>() {
            None => (None, KeyAlgorithm::Md5),
            Some(Err(_)) => return Err(Failure::BadResponse),
            Some(Ok(list)) if list.contains(&PasswordAlgorithm::Sha256) => {
                (Some(list), KeyAlgorithm::Sha256)
            }
            Some(Ok(list)) if list.contains(&PasswordAlgorithm::Md5) => {
                (Some(list), KeyAlgorithm::Md5)
            }
            Some(Ok(_)) => return Err(Failure::BadResponse),
        };
        let key = ctx.key(realm, algorithm)?;
        self.auth = Some(Auth {
            realm: realm.to_owned(),
            nonce: nonce.to_owned(),
            algorithm,
            offered,
            key,
        });
        Ok(())
    }

    fn build(&mut self, ctx: &mut Ctx) -> Next {
        let Some(p) = &self.pending else {
            return Next::Wait;
        };
        let (step, txid) = (p.step, p.txid);
        match self.write(ctx, step, txid) {
            Ok(n) => {
                self.req_len = n;
                Next::Send
            }
            Err(BufferTooSmall) => {
                self.pending = None;
                Next::Failed(Failure::BadResponse)
            }
        }
    }

    fn write(
        &mut self,
        ctx: &Ctx,
        step: Step,
        txid: TransactionId,
    ) -> Result<usize, BufferTooSmall> {
        let method = match (step, ctx.mode) {
            (Step::Allocate, _) => Method::ALLOCATE,
            (Step::Bind, DataMode::Channel) => Method::CHANNEL_BIND,
            (Step::Bind, _) => Method::CREATE_PERMISSION,
            (Step::Refresh | Step::Delete, _) => Method::REFRESH,
        };
        let mut w = MessageWriter::new(&mut self.req[..], Class::Request, method, txid)?;
        match step {
            Step::Allocate => {
                w.attr(&RequestedTransport::UDP)?;
            }
            Step::Bind => {
                if ctx.mode == DataMode::Channel {
                    w.attr(&ChannelNumber(ctx.channel))?;
                }
                w.attr(&XorPeerAddress(ctx.peer))?;
            }
            Step::Refresh => {}
            Step::Delete => {
                w.attr(&Lifetime(0))?;
            }
        }
        w.attr(&Software(SOFTWARE))?;
        if let (Some(a), Some(c)) = (&self.auth, &ctx.credentials) {
            w.attr(&Username(&c.username))?
                .attr(&Realm(&a.realm))?
                .attr(&Nonce(&a.nonce))?;
            if let Some(offered) = &a.offered {
                let chosen = match a.algorithm {
                    KeyAlgorithm::Md5 => PasswordAlgorithm::Md5,
                    KeyAlgorithm::Sha256 => PasswordAlgorithm::Sha256,
                };
                w.attr(offered)?.attr(&chosen)?;
            }
            match a.algorithm {
                KeyAlgorithm::Md5 => w.integrity_sha1(a.key.as_bytes())?,
                KeyAlgorithm::Sha256 => w.integrity_sha256(a.key.as_bytes())?,
            };
        }
        w.fingerprint()?;
        Ok(w.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_proto::stun::MessageWriter;

    fn ctx(creds: bool) -> Ctx {
        Ctx::new(
            "192.0.2.10:7000".parse().unwrap(),
            DataMode::Channel,
            0x4000,
            creds.then(|| Credentials {
                username: "alice".into(),
                password: "pw".into(),
            }),
            Retransmit {
                rto: Duration::from_millis(100),
                tries: 3,
                timeout: Duration::from_millis(1000),
            },
        )
    }

    fn answer(req: &[u8], class: Class, attrs: impl FnOnce(&mut MessageWriter<'_>)) -> Vec<u8> {
        let m = Message::parse(req).unwrap();
        let mut buf = vec![0u8; 512];
        let mut w = MessageWriter::new(&mut buf, class, m.method(), m.transaction_id()).unwrap();
        attrs(&mut w);
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    #[test]
    fn challenge_then_allocate_then_bind() {
        let (mut c, mut s, now) = (ctx(true), Session::new(), Instant::now());
        assert_eq!(s.start(&mut c, Step::Allocate, now), Next::Send);
        let first = Message::parse(s.request()).unwrap();
        assert_eq!(first.method(), Method::ALLOCATE);
        assert!(first.attr::<Username>().is_none());

        let challenge = answer(s.request(), Class::Error, |w| {
            w.attr(&ErrorCode {
                code: 401,
                reason: "Unauthorized",
            })
            .unwrap()
            .attr(&Realm("example.org"))
            .unwrap()
            .attr(&Nonce("n1"))
            .unwrap();
        });
        let m = Message::parse(&challenge).unwrap();
        assert_eq!(s.on_response(&mut c, &m, now), Next::Send);
        let second = Message::parse(s.request()).unwrap();
        assert!(matches!(
            second.attr::<Username>(),
            Some(Ok(Username("alice")))
        ));
        let key = relay_proto::auth::long_term_key(KeyAlgorithm::Md5, "alice", "example.org", "pw");
        second.verify_integrity(key.as_bytes()).unwrap();

        let relayed: SocketAddr = "203.0.113.50:24000".parse().unwrap();
        let ok = answer(s.request(), Class::Success, |w| {
            w.attr(&XorRelayedAddress(relayed)).unwrap();
        });
        let m = Message::parse(&ok).unwrap();
        assert_eq!(s.on_response(&mut c, &m, now), Next::Done(Step::Allocate));
        assert_eq!(s.relayed, Some(relayed));

        assert_eq!(s.start(&mut c, Step::Bind, now), Next::Send);
        let bind = Message::parse(s.request()).unwrap();
        assert_eq!(bind.method(), Method::CHANNEL_BIND);
        assert!(matches!(
            bind.attr::<ChannelNumber>(),
            Some(Ok(ChannelNumber(0x4000)))
        ));
    }

    #[test]
    fn errors_timeouts_and_stale_nonces() {
        let (mut c, mut s, now) = (ctx(true), Session::new(), Instant::now());
        s.start(&mut c, Step::Allocate, now);
        // A response to another transaction is ignored.
        let mut buf = [0u8; 64];
        let w = MessageWriter::new(
            &mut buf,
            Class::Success,
            Method::ALLOCATE,
            TransactionId([9; 12]),
        )
        .unwrap();
        let n = w.finish();
        assert_eq!(
            s.on_response(&mut c, &Message::parse(&buf[..n]).unwrap(), now),
            Next::Wait
        );
        let full = answer(s.request(), Class::Error, |w| {
            w.attr(&ErrorCode {
                code: 508,
                reason: "full",
            })
            .unwrap();
        });
        assert_eq!(
            s.on_response(&mut c, &Message::parse(&full).unwrap(), now),
            Next::Failed(Failure::Error(508))
        );

        // Retransmissions at 100, 300 ms; the third try waits for the deadline.
        s.start(&mut c, Step::Bind, now);
        assert_eq!(s.on_timer(&c, now + Duration::from_millis(50)), Next::Wait);
        assert_eq!(s.on_timer(&c, now + Duration::from_millis(100)), Next::Send);
        assert_eq!(s.on_timer(&c, now + Duration::from_millis(300)), Next::Send);
        assert_eq!(s.on_timer(&c, now + Duration::from_millis(700)), Next::Wait);
        assert_eq!(
            s.on_timer(&c, now + Duration::from_millis(1000)),
            Next::Failed(Failure::Timeout)
        );

        // 438 is retried with the new nonce, a bounded number of times.
        s.start(&mut c, Step::Refresh, now);
        for _ in 0..STALE_RETRIES {
            let stale = answer(s.request(), Class::Error, |w| {
                w.attr(&ErrorCode {
                    code: 438,
                    reason: "Stale Nonce",
                })
                .unwrap()
                .attr(&Realm("example.org"))
                .unwrap()
                .attr(&Nonce("n2"))
                .unwrap();
            });
            assert_eq!(
                s.on_response(&mut c, &Message::parse(&stale).unwrap(), now),
                Next::Send
            );
            assert!(matches!(
                Message::parse(s.request()).unwrap().attr::<Nonce>(),
                Some(Ok(Nonce("n2")))
            ));
        }
        let stale = answer(s.request(), Class::Error, |w| {
            w.attr(&ErrorCode {
                code: 438,
                reason: "Stale Nonce",
            })
            .unwrap()
            .attr(&Realm("example.org"))
            .unwrap()
            .attr(&Nonce("n3"))
            .unwrap();
        });
        assert_eq!(
            s.on_response(&mut c, &Message::parse(&stale).unwrap(), now),
            Next::Failed(Failure::Error(438))
        );

        // A delete that times out still ends the session.
        s.start(&mut c, Step::Delete, now);
        assert_eq!(
            s.on_timer(&c, now + Duration::from_secs(2)),
            Next::Done(Step::Delete)
        );
    }
}
