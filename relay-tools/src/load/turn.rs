//! One allocation's TURN session for the worker: a `relay-client` [`Client`] and the
//! step it is on. The worker drives it with plain calls and sends what it says.
//!
//! Setup is what a browser does: Allocate, 401 challenge, authenticated Allocate, then
//! ChannelBind (channel mode) or CreatePermission (Send mode) for the echo peer. While
//! traffic runs the same requests refresh the permission and the allocation; at the end a
//! Refresh with LIFETIME 0 deletes it. The client checks responses' integrity, but the
//! generator does not act on it: it measures the server, it does not defend against it.

use std::net::SocketAddr;
use std::time::Instant;

use relay_client::{Client, Completed, Config, Event, Input, Outcome, Request, RequestId};
pub use relay_client::{Credentials, Retransmit};

/// SOFTWARE of every request, so a server's log shows where the load came from.
const SOFTWARE: &str = concat!("relay-load/", env!("CARGO_PKG_VERSION"));
/// A 438 (stale nonce) is answered with the new nonce this many times in a row.
const STALE_RETRIES: u8 = 3;

/// How data travels: ChannelData, Send/Data indications, or straight to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataMode {
    Channel,
    Send,
    /// No TURN server: the no-relay baseline of a benchmark.
    Direct,
}

/// What every session of a worker shares.
pub struct Ctx {
    pub peer: SocketAddr,
    /// Allocate again where a 300 ALTERNATE-SERVER points.
    pub follow_redirects: bool,
    pub mode: DataMode,
    pub channel: u16,
    config: Config,
    rng: u64,
}

impl Ctx {
    pub fn new(
        peer: SocketAddr,
        mode: DataMode,
        channel: u16,
        transport: relay_client::Transport,
        credentials: Option<Credentials>,
        retransmit: Retransmit,
    ) -> Self {
        let mut seed = [0u8; 8];
        // Transaction ids of a load generator need to be distinct, not secret.
        let _ = getrandom::fill(&mut seed);
        let mut config = Config::new(transport, credentials);
        config.retransmit = retransmit;
        config.software = Some(SOFTWARE.into());
        config.stale_retries = STALE_RETRIES;
        Self {
            peer,
            follow_redirects: false,
            mode,
            channel,
            config,
            rng: u64::from_ne_bytes(seed) | 1,
        }
    }

    /// A client for one more allocation, with a seed of its own.
    fn client(&mut self) -> Client {
        let mut seed = [0u8; 16];
        for chunk in seed.chunks_mut(8) {
            // xorshift64*
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            chunk.copy_from_slice(&self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D).to_ne_bytes());
        }
        Client::new(self.config.clone(), seed)
    }

    fn request(&self, step: Step) -> Request {
        match (step, self.mode) {
            (Step::Allocate, _) => Request::ALLOCATE,
            (Step::Bind, DataMode::Channel) => Request::ChannelBind {
                channel: self.channel,
                peer: self.peer,
            },
            (Step::Bind, _) => Request::CreatePermission {
                peers: vec![self.peer],
            },
            (Step::Refresh, _) => Request::Refresh { lifetime: None },
            (Step::Delete, _) => Request::DELETE,
        }
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
    /// Send what [`Session::transmit`] gives (a new request or a retransmission).
    Send,
    /// Nothing to do yet.
    Wait,
    /// The step finished; the session is idle (ready, or deleted after `Delete`).
    Done(Step),
    /// The Allocate was answered 300 ALTERNATE-SERVER naming this server.
    Redirect(SocketAddr),
    Failed(Failure),
}

/// One allocation's control state; its client is made at the first request.
#[derive(Default)]
pub struct Session {
    client: Option<Client>,
    pending: Option<(RequestId, Step)>,
    pub relayed: Option<SocketAddr>,
    /// 300s followed to get here.
    pub hops: u8,
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next datagram or frame to send into `buf` (at least
    /// [`relay_client::MAX_REQUEST`] bytes); its length.
    pub fn transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.client.as_mut()?.poll_transmit(buf).map(|t| t.len)
    }

    /// Gives up the outstanding request (the server is unreachable, the stream died,
    /// or another request replaces it).
    pub fn abandon(&mut self, now: Instant) {
        if let (Some(c), Some(_)) = (&mut self.client, self.pending.take()) {
            c.abandon(now);
            while c.poll_event().is_some() {}
        }
    }

    pub fn pending_step(&self) -> Option<Step> {
        self.pending.map(|(_, step)| step)
    }

    /// Starts `step` (replacing any request still outstanding); the caller sends it.
    pub fn start(&mut self, ctx: &mut Ctx, step: Step, now: Instant) -> Next {
        self.abandon(now);
        let client = self.client.get_or_insert_with(|| ctx.client());
        match client.request(ctx.request(step), now) {
            Ok(id) => {
                self.pending = Some((id, step));
                Next::Send
            }
            Err(_) => Next::Failed(Failure::BadResponse),
        }
    }

    /// Retransmits when the timer is due; gives up after the tries or the deadline (the
    /// last transmission waits until the deadline).
    pub fn on_timer(&mut self, now: Instant) -> Next {
        let Some(client) = &mut self.client else {
            return Next::Wait;
        };
        if self.pending.is_none() || client.poll_timeout().is_none_or(|at| now < at) {
            return Next::Wait;
        }
        client.handle_timeout(now);
        self.finished().unwrap_or(Next::Send)
    }

    /// A STUN response arrived on this allocation's socket.
    pub fn on_response(&mut self, bytes: &[u8], now: Instant) -> Next {
        let Some(client) = &mut self.client else {
            return Next::Wait;
        };
        match client.handle_input(bytes, now) {
            // Finished, or answered with a challenge: the retry is queued.
            Input::Response => self.finished().unwrap_or(Next::Send),
            Input::Data(_) | Input::Ignored => Next::Wait,
        }
    }

    /// The outstanding request's end, if it came.
    fn finished(&mut self) -> Option<Next> {
        let client = self.client.as_mut()?;
        while let Some(Event::Completed(c)) = client.poll_event() {
            if let Some((id, step)) = self.pending
                && id == c.id
            {
                self.pending = None;
                return Some(self.next(step, c));
            }
        }
        None
    }

    fn next(&mut self, step: Step, c: Completed) -> Next {
        if step == Step::Delete {
            // Gone already (437), refused or unanswered: nothing is left to delete.
            return Next::Done(Step::Delete);
        }
        match c.outcome {
            Outcome::Success(s) => {
                if step == Step::Allocate {
                    match s.relayed.first() {
                        Some(a) => self.relayed = Some(*a),
                        None => return Next::Failed(Failure::BadResponse),
                    }
                }
                Next::Done(step)
            }
            Outcome::Error(e) => match (step, e.code, e.alternate_server) {
                (Step::Allocate, 300, Some(to)) => Next::Redirect(to),
                _ => Next::Failed(Failure::Error(e.code)),
            },
            Outcome::Timeout => Next::Failed(Failure::Timeout),
            Outcome::Invalid(_) => Next::Failed(Failure::BadResponse),
            Outcome::Abandoned => Next::Failed(Failure::Unreachable),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use relay_proto::stun::{
        ChannelNumber, Class, ErrorCode, Message, MessageWriter, Method, Nonce, Realm,
        TransactionId, Username, XorRelayedAddress,
    };

    use super::*;

    fn ctx(creds: bool) -> Ctx {
        Ctx::new(
            "192.0.2.10:7000".parse().unwrap(),
            DataMode::Channel,
            0x4000,
            relay_client::Transport::Udp,
            creds.then(|| Credentials::new("alice", "pw")),
            Retransmit {
                rto: Duration::from_millis(100),
                rto_max: Duration::MAX,
                tries: 3,
                timeout: Duration::from_millis(1000),
            },
        )
    }

    /// What the session has to send now.
    fn sent(s: &mut Session) -> Vec<u8> {
        let mut buf = vec![0u8; relay_client::MAX_REQUEST];
        let n = s.transmit(&mut buf).expect("a datagram to send");
        buf.truncate(n);
        buf
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

    fn challenge(req: &[u8], code: u16, nonce: &str) -> Vec<u8> {
        answer(req, Class::Error, |w| {
            w.attr(&ErrorCode { code, reason: "" })
                .unwrap()
                .attr(&Realm("example.org"))
                .unwrap()
                .attr(&Nonce(nonce))
                .unwrap();
        })
    }

    #[test]
    fn challenge_then_allocate_then_bind() {
        let (mut c, mut s, now) = (ctx(true), Session::new(), Instant::now());
        assert_eq!(s.start(&mut c, Step::Allocate, now), Next::Send);
        let first = sent(&mut s);
        assert!(Message::parse(&first).unwrap().attr::<Username>().is_none());

        assert_eq!(
            s.on_response(&challenge(&first, 401, "n1"), now),
            Next::Send
        );
        let second = sent(&mut s);
        let m = Message::parse(&second).unwrap();
        assert!(matches!(m.attr::<Username>(), Some(Ok(Username("alice")))));
        let key = relay_proto::auth::long_term_key(
            relay_proto::auth::PasswordAlgorithm::Md5,
            "alice",
            "example.org",
            "pw",
        );
        m.verify_integrity(key.as_bytes()).unwrap();

        let relayed: SocketAddr = "203.0.113.50:24000".parse().unwrap();
        let ok = answer(&second, Class::Success, |w| {
            w.attr(&XorRelayedAddress(relayed)).unwrap();
        });
        assert_eq!(s.on_response(&ok, now), Next::Done(Step::Allocate));
        assert_eq!(s.relayed, Some(relayed));

        assert_eq!(s.start(&mut c, Step::Bind, now), Next::Send);
        let bind = sent(&mut s);
        let bind = Message::parse(&bind).unwrap();
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
        let req = sent(&mut s);
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
        assert_eq!(s.on_response(&buf[..n], now), Next::Wait);
        let full = answer(&req, Class::Error, |w| {
            w.attr(&ErrorCode {
                code: 508,
                reason: "full",
            })
            .unwrap();
        });
        assert_eq!(s.on_response(&full, now), Next::Failed(Failure::Error(508)));

        // Retransmissions at 100, 300 ms; the third try waits for the deadline.
        s.start(&mut c, Step::Bind, now);
        sent(&mut s);
        let ms = |m| now + Duration::from_millis(m);
        assert_eq!(s.on_timer(ms(50)), Next::Wait);
        assert_eq!(s.on_timer(ms(100)), Next::Send);
        sent(&mut s);
        assert_eq!(s.on_timer(ms(300)), Next::Send);
        sent(&mut s);
        assert_eq!(s.on_timer(ms(700)), Next::Wait);
        assert_eq!(s.on_timer(ms(1000)), Next::Failed(Failure::Timeout));

        // 438 is retried with the new nonce, a bounded number of times.
        s.start(&mut c, Step::Allocate, now);
        let first = sent(&mut s);
        assert_eq!(
            s.on_response(&challenge(&first, 401, "n1"), now),
            Next::Send
        );
        let mut req = sent(&mut s);
        for _ in 0..STALE_RETRIES {
            assert_eq!(s.on_response(&challenge(&req, 438, "n2"), now), Next::Send);
            req = sent(&mut s);
            assert!(matches!(
                Message::parse(&req).unwrap().attr::<Nonce>(),
                Some(Ok(Nonce("n2")))
            ));
        }
        assert_eq!(
            s.on_response(&challenge(&req, 438, "n3"), now),
            Next::Failed(Failure::Error(438))
        );

        // A delete that times out still ends the session.
        s.start(&mut c, Step::Delete, now);
        sent(&mut s);
        assert_eq!(
            s.on_timer(now + Duration::from_secs(2)),
            Next::Done(Step::Delete)
        );
    }

    #[test]
    fn a_300_on_allocate_names_the_alternate() {
        let (mut c, mut s, now) = (ctx(true), Session::new(), Instant::now());
        assert_eq!(s.start(&mut c, Step::Allocate, now), Next::Send);
        let first = sent(&mut s);
        assert_eq!(
            s.on_response(&challenge(&first, 401, "n1"), now),
            Next::Send
        );
        let second = sent(&mut s);
        let alt: SocketAddr = "203.0.113.52:3478".parse().unwrap();
        let redirect = answer(&second, Class::Error, |w| {
            w.attr(&ErrorCode {
                code: 300,
                reason: "",
            })
            .unwrap()
            .attr(&relay_proto::stun::AlternateServer(alt))
            .unwrap();
        });
        assert_eq!(s.on_response(&redirect, now), Next::Redirect(alt));
    }
}
