//! The probe's STUN/TURN client: Binding, then optionally a test Allocate (long-term
//! credentials, RFC 8489 §9.2 / RFC 8656 §7) that is deleted again with Refresh LIFETIME 0.
//!
//! Blocking and single-threaded on purpose: a one-shot diagnostic needs no runtime, and
//! [`probe`] takes the socket so tests (and callers that must probe from a given local
//! address, e.g. one NIC of a dual-homed host) choose where the requests come from.
//! [`probe_conn`] runs the same exchanges over any [`Conn`] (a TCP or TLS stream).

use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};

use std::time::{Duration, Instant};

use relay_proto::auth::{Key, PasswordAlgorithm as KeyAlgorithm, rest, try_long_term_key};
use relay_proto::stun::{
    AlternateServer, Class, ErrorCode, Lifetime, MappedAddress, Message, MessageWriter, Method,
    Nonce, PasswordAlgorithm, PasswordAlgorithms, Realm, RequestedTransport, Software,
    TransactionId, Username, XorMappedAddress, XorRelayedAddress,
};

use super::report::{
    AllocationReport, BindingReport, ErrorInfo, Integrity, Report, Status, StepReport,
};
use super::transport::{Conn, Datagram, RecvError};

/// Initial retransmission timeout (RFC 8489 §6.2.1).
pub const INITIAL_RTO: Duration = Duration::from_millis(500);
/// How long REST credentials minted by the probe stay valid.
pub const REST_TTL_SECS: u64 = 86_400;
/// Name part of a REST username when none is given.
pub const REST_DEFAULT_NAME: &str = "probe";
/// SOFTWARE sent in every request, so the relay's log shows where a request came from.
const SOFTWARE: &str = concat!("relay-probe/", env!("CARGO_PKG_VERSION"));
/// Large enough for any STUN response a probe gets (the UDP-sized responses of RFC 8489).
const RECV_BUF: usize = 4096;
const SEND_BUF: usize = 1024;

/// Retransmission schedule of one transaction (RFC 8489 §6.2.1, bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retransmit {
    /// First retransmission timeout; doubles after every transmission.
    pub rto: Duration,
    /// Most transmissions of one request.
    pub tries: u32,
    /// Upper bound on one transaction, from its first transmission to giving up.
    pub timeout: Duration,
}

impl Default for Retransmit {
    fn default() -> Self {
        Self {
            rto: INITIAL_RTO,
            tries: 4,
            timeout: Duration::from_millis(3000),
        }
    }
}

/// Long-term credentials (a configured user, or a TURN REST name/password pair).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// Minted from a shared secret (reported, so the output says which mechanism failed).
    pub rest: bool,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("rest", &self.rest)
            .finish()
    }
}

impl Credentials {
    /// TURN REST credentials (coturn's `use-auth-secret`): username `<expiry>:<name>`,
    /// password base64(HMAC-SHA1(secret, username)).
    pub fn rest(secret: &[u8], name: Option<&str>, unix_now: u64) -> Self {
        let expiry = unix_now.saturating_add(REST_TTL_SECS);
        let username = format!(
            "{expiry}{}{}",
            rest::SEPARATOR,
            name.unwrap_or(REST_DEFAULT_NAME)
        );
        let password = rest::password(secret, &username).as_str().to_owned();
        Self {
            username,
            password,
            rest: true,
        }
    }
}

/// What to probe and how.
#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    pub retransmit: Retransmit,
    /// With credentials, a test allocation follows the Binding.
    pub credentials: Option<Credentials>,
    /// The realm the operator expects; a different REALM from the server is a warning.
    pub expected_realm: Option<String>,
    /// Leave the test allocation in place instead of deleting it (tests, debugging).
    pub keep_allocation: bool,
}

/// Binding, then (with credentials) Allocate + delete, from `sock` to `server`.
///
/// `sock` is connected to `server` (so ICMP port-unreachable is reported and only the
/// server's datagrams are read); it must not be used for anything else meanwhile.
pub fn probe(sock: &UdpSocket, server: SocketAddr, opts: &ProbeOptions) -> Report {
    let mut report = Report::new(server);
    if let Err(e) = sock.connect(server) {
        report.binding.step = StepReport::failed(Status::Unreachable, io_detail(&e));
        report.finish();
        return report;
    }
    report.local_address = sock.local_addr().ok();
    probe_conn(&mut Datagram(sock), report, opts)
}

/// Binding, then (with credentials) Allocate + delete over `conn`; `report` already says
/// where to and how (transport, local address, connection timings).
pub fn probe_conn(conn: &mut dyn Conn, mut report: Report, opts: &ProbeOptions) -> Report {
    let mut client = Client {
        conn,
        rt: opts.retransmit,
        buf: vec![0; RECV_BUF],
    };
    report.binding = client.binding();
    report.reachable = report.binding.step.answered_by_server();

    if let Some(creds) = &opts.credentials {
        report.allocation = Some(if report.reachable {
            let a = client.allocate(creds, opts.keep_allocation, &mut report.warnings);
            if let (Some(expected), Some(got)) = (&opts.expected_realm, &a.realm)
                && expected != got
            {
                report.warnings.push(format!(
                    "server realm is \"{got}\", expected \"{expected}\" (clients derive the key \
                     from the server's realm)"
                ));
            }
            a
        } else {
            AllocationReport::skipped(
                &creds.username,
                creds.rest,
                "not attempted: the Binding request got no answer",
            )
        });
    }
    report.finish();
    report
}

/// Why a transaction ended without a response.
#[derive(Debug)]
enum NoAnswer {
    Timeout {
        transmissions: u32,
        waited: Duration,
    },
    Unreachable(String),
    /// Bytes came back that are not STUN framing (a stream to some other service).
    Garbled(String),
}

impl NoAnswer {
    fn from_recv(e: RecvError) -> Self {
        match e {
            RecvError::Io(e) => NoAnswer::Unreachable(io_detail(&e)),
            RecvError::Closed => {
                NoAnswer::Unreachable("the server closed the connection before answering".into())
            }
            RecvError::Framing(detail) => NoAnswer::Garbled(detail),
        }
    }

    fn into_step(self) -> StepReport {
        match self {
            NoAnswer::Timeout {
                transmissions,
                waited,
            } => {
                let mut s = StepReport::failed(
                    Status::Timeout,
                    format!(
                        "no answer after {transmissions} transmission{} in {} ms",
                        if transmissions == 1 { "" } else { "s" },
                        waited.as_millis()
                    ),
                );
                s.transmissions = transmissions;
                s
            }
            NoAnswer::Unreachable(detail) => StepReport::failed(Status::Unreachable, detail),
            NoAnswer::Garbled(detail) => StepReport::failed(Status::BadResponse, detail),
        }
    }
}

/// A response matched to its request.
struct Answer {
    len: usize,
    rtt: Duration,
    transmissions: u32,
}

impl Answer {
    fn step(&self) -> StepReport {
        StepReport::answered(self.rtt, self.transmissions)
    }
}

/// Authentication state after a challenge.
struct Auth {
    username: String,
    realm: String,
    nonce: String,
    /// PASSWORD-ALGORITHMS as offered, echoed back with PASSWORD-ALGORITHM (RFC 8489 §9.2.4).
    offered: Option<PasswordAlgorithms>,
    algorithm: KeyAlgorithm,
    key: Key,
}

struct Client<'c> {
    conn: &'c mut dyn Conn,
    rt: Retransmit,
    buf: Vec<u8>,
}

impl Client<'_> {
    fn binding(&mut self) -> BindingReport {
        let mut out = BindingReport::default();
        let txid = new_transaction_id();
        let mut req = [0u8; SEND_BUF];
        let n = match build(&mut req, Method::BINDING, txid, |_| Ok(()), None) {
            Ok(n) => n,
            Err(detail) => {
                out.step = StepReport::failed(Status::BadResponse, detail);
                return out;
            }
        };
        let answer = match self.transact(&req[..n], txid, Method::BINDING) {
            Ok(a) => a,
            Err(e) => {
                out.step = e.into_step();
                return out;
            }
        };
        let msg = match Message::parse(&self.buf[..answer.len]) {
            Ok(m) => m,
            Err(e) => {
                out.step = StepReport::failed(Status::BadResponse, e.to_string());
                return out;
            }
        };
        out.step = answer.step();
        out.software = text_attr::<Software>(&msg);
        if msg.class() == Class::Error {
            out.step.fail_with(&msg);
            return out;
        }
        out.mapped_address = match msg.attr::<XorMappedAddress>() {
            Some(Ok(XorMappedAddress(a))) => Some(a),
            _ => match msg.attr::<MappedAddress>() {
                Some(Ok(MappedAddress(a))) => {
                    out.mapped_address_plain = true;
                    Some(a)
                }
                _ => None,
            },
        };
        if out.mapped_address.is_none() {
            out.step.status = Status::BadResponse;
            out.step.detail = Some("success response without XOR-MAPPED-ADDRESS".into());
        }
        out
    }

    fn allocate(
        &mut self,
        creds: &Credentials,
        keep: bool,
        warnings: &mut Vec<String>,
    ) -> AllocationReport {
        let mut out = AllocationReport::skipped(&creds.username, creds.rest, "");

        // 1. Unauthenticated Allocate: expect a 401 challenge with REALM and NONCE.
        let txid = new_transaction_id();
        let mut req = [0u8; SEND_BUF];
        let n = match build(&mut req, Method::ALLOCATE, txid, allocate_attrs, None) {
            Ok(n) => n,
            Err(detail) => return out.with(StepReport::failed(Status::BadResponse, detail)),
        };
        let answer = match self.transact(&req[..n], txid, Method::ALLOCATE) {
            Ok(a) => a,
            Err(e) => return out.with(e.into_step()),
        };
        let msg = match Message::parse(&self.buf[..answer.len]) {
            Ok(m) => m,
            Err(e) => return out.with(StepReport::failed(Status::BadResponse, e.to_string())),
        };
        if msg.class() == Class::Success {
            // No authentication at all: report the allocation, then delete it.
            warnings.push("the server allocated a relay address without authentication".into());
            out.step = answer.step();
            read_allocation(&msg, &mut out, None);
            if !keep {
                out.deleted = Some(self.delete(None));
            }
            return out;
        }
        let challenge = match error_code(&msg) {
            Some(401) => match Auth::from_challenge(&msg, creds) {
                Ok(auth) => auth,
                Err(detail) => {
                    return out.with(StepReport::failed(Status::BadResponse, detail));
                }
            },
            _ => {
                let mut s = answer.step();
                s.fail_with(&msg);
                return out.with(s);
            }
        };
        let mut auth = challenge;
        out.realm = Some(auth.realm.clone());
        out.password_algorithm = Some(algorithm_name(auth.algorithm));

        // 2. Authenticated Allocate; one retry on 438 with the fresh nonce.
        let mut stale_retries = 0;
        loop {
            let txid = new_transaction_id();
            let n = match build(
                &mut req,
                Method::ALLOCATE,
                txid,
                allocate_attrs,
                Some(&auth),
            ) {
                Ok(n) => n,
                Err(detail) => return out.with(StepReport::failed(Status::BadResponse, detail)),
            };
            let answer = match self.transact(&req[..n], txid, Method::ALLOCATE) {
                Ok(a) => a,
                Err(e) => return out.with(e.into_step()),
            };
            let msg = match Message::parse(&self.buf[..answer.len]) {
                Ok(m) => m,
                Err(e) => {
                    return out.with(StepReport::failed(Status::BadResponse, e.to_string()));
                }
            };
            out.step = answer.step();
            if msg.class() == Class::Success {
                read_allocation(&msg, &mut out, Some(&auth));
                if out.step.status == Status::Ok && !keep {
                    out.deleted = Some(self.delete(Some(&mut auth)));
                }
                return out;
            }
            if error_code(&msg) == Some(438) && stale_retries == 0 {
                stale_retries += 1;
                out.stale_nonce_retries = stale_retries;
                match auth.renew(&msg, creds) {
                    Ok(()) => continue,
                    Err(detail) => {
                        return out.with(StepReport::failed(Status::BadResponse, detail));
                    }
                }
            }
            out.step.fail_with(&msg);
            return out;
        }
    }

    /// Refresh LIFETIME 0 (authenticated unless the server allocated without auth).
    fn delete(&mut self, mut auth: Option<&mut Auth>) -> StepReport {
        let mut req = [0u8; SEND_BUF];
        let mut stale_retried = false;
        loop {
            let txid = new_transaction_id();
            let attrs = |w: &mut MessageWriter<'_>| w.attr(&Lifetime(0)).map(|_| ());
            let n = match build(&mut req, Method::REFRESH, txid, attrs, auth.as_deref()) {
                Ok(n) => n,
                Err(detail) => return StepReport::failed(Status::BadResponse, detail),
            };
            let answer = match self.transact(&req[..n], txid, Method::REFRESH) {
                Ok(a) => a,
                Err(e) => return e.into_step(),
            };
            let msg = match Message::parse(&self.buf[..answer.len]) {
                Ok(m) => m,
                Err(e) => return StepReport::failed(Status::BadResponse, e.to_string()),
            };
            let mut step = answer.step();
            if msg.class() == Class::Success {
                return step;
            }
            if let (Some(438), Some(a), false) =
                (error_code(&msg), auth.as_deref_mut(), stale_retried)
            {
                stale_retried = true;
                if a.renew_nonce(&msg).is_ok() {
                    continue;
                }
            }
            step.fail_with(&msg);
            return step;
        }
    }

    /// Sends `req` until a response with `txid` arrives, the tries are used up or the
    /// transaction's time is; the response is left in `self.buf`.
    fn transact(
        &mut self,
        req: &[u8],
        txid: TransactionId,
        method: Method,
    ) -> Result<Answer, NoAnswer> {
        let start = Instant::now();
        let deadline = start + self.rt.timeout;
        let tries = if self.conn.retransmits() {
            self.rt.tries.max(1)
        } else {
            1
        };
        let mut rto = self.rt.rto;
        let mut transmissions = 0;
        while transmissions < tries {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if let Err(e) = self.conn.send(req) {
                return Err(NoAnswer::Unreachable(io_detail(&e)));
            }
            transmissions += 1;
            // The last transmission waits for whatever time is left (RFC 8489's Rm*RTO,
            // bounded by the transaction's deadline).
            let wait_until = if transmissions == tries {
                deadline
            } else {
                (now + rto).min(deadline)
            };
            if let Some(len) = self.recv_until(wait_until, txid, method)? {
                return Ok(Answer {
                    len,
                    rtt: start.elapsed(),
                    transmissions,
                });
            }
            rto = rto.saturating_mul(2);
        }
        Err(NoAnswer::Timeout {
            transmissions,
            waited: start.elapsed(),
        })
    }

    /// Reads until a response to `txid`/`method` or `until`; other messages are dropped.
    fn recv_until(
        &mut self,
        until: Instant,
        txid: TransactionId,
        method: Method,
    ) -> Result<Option<usize>, NoAnswer> {
        loop {
            let Some(len) = self
                .conn
                .recv(&mut self.buf, until)
                .map_err(NoAnswer::from_recv)?
            else {
                return Ok(None);
            };
            if let Ok(m) = Message::parse(&self.buf[..len])
                && m.transaction_id() == txid
                && m.method() == method
                && matches!(m.class(), Class::Success | Class::Error)
            {
                return Ok(Some(len));
            }
        }
    }
}

impl Auth {
    fn from_challenge(msg: &Message<'_>, creds: &Credentials) -> Result<Self, String> {
        let realm = text_attr::<Realm>(msg).ok_or("401 challenge without REALM")?;
        let nonce = text_attr::<Nonce>(msg).ok_or("401 challenge without NONCE")?;
        let (offered, algorithm) = match msg.attr::<PasswordAlgorithms>() {
            None => (None, KeyAlgorithm::Md5),
            Some(Err(e)) => return Err(format!("malformed PASSWORD-ALGORITHMS: {e}")),
            Some(Ok(list)) => {
                let alg = if list.contains(&PasswordAlgorithm::Sha256) {
                    KeyAlgorithm::Sha256
                } else if list.contains(&PasswordAlgorithm::Md5) {
                    KeyAlgorithm::Md5
                } else {
                    return Err("server offers no password algorithm this probe supports \
                                (neither SHA-256 nor MD5)"
                        .into());
                };
                (Some(list), alg)
            }
        };
        let key = try_long_term_key(algorithm, &creds.username, &realm, &creds.password)
            .map_err(|e| format!("cannot derive the key: {e}"))?;
        Ok(Self {
            username: creds.username.clone(),
            realm,
            nonce,
            offered,
            algorithm,
            key,
        })
    }

    /// After 438 on the Allocate: new nonce, and whatever else the challenge changed.
    fn renew(&mut self, msg: &Message<'_>, creds: &Credentials) -> Result<(), String> {
        *self = Self::from_challenge(msg, creds)?;
        Ok(())
    }

    /// After 438 on the Refresh: the allocation is bound to the key, so only the nonce moves.
    fn renew_nonce(&mut self, msg: &Message<'_>) -> Result<(), String> {
        self.nonce = text_attr::<Nonce>(msg).ok_or("438 without NONCE")?;
        Ok(())
    }
}

fn allocate_attrs(w: &mut MessageWriter<'_>) -> Result<(), relay_proto::stun::BufferTooSmall> {
    w.attr(&RequestedTransport::UDP).map(|_| ())
}

/// A request: method-specific attributes, SOFTWARE, the credentials if any, FINGERPRINT.
fn build(
    buf: &mut [u8],
    method: Method,
    txid: TransactionId,
    attrs: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), relay_proto::stun::BufferTooSmall>,
    auth: Option<&Auth>,
) -> Result<usize, String> {
    let too_long = |_| "request does not fit in one datagram (username too long?)".to_owned();
    let mut w = MessageWriter::new(buf, Class::Request, method, txid).map_err(too_long)?;
    attrs(&mut w).map_err(too_long)?;
    w.attr(&Software(SOFTWARE)).map_err(too_long)?;
    if let Some(a) = auth {
        // The key and the integrity attributes must agree with what we tell the server.
        w.attr(&Username(&a.username))
            .and_then(|w| w.attr(&Realm(&a.realm)))
            .and_then(|w| w.attr(&Nonce(&a.nonce)))
            .map_err(too_long)?;
        if let Some(offered) = &a.offered {
            let chosen = match a.algorithm {
                KeyAlgorithm::Md5 => PasswordAlgorithm::Md5,
                KeyAlgorithm::Sha256 => PasswordAlgorithm::Sha256,
            };
            w.attr(offered)
                .and_then(|w| w.attr(&chosen))
                .map_err(too_long)?;
        }
        match a.algorithm {
            KeyAlgorithm::Md5 => w.integrity_sha1(a.key.as_bytes()),
            KeyAlgorithm::Sha256 => w.integrity_sha256(a.key.as_bytes()),
        }
        .map_err(too_long)?;
    }
    w.fingerprint().map_err(too_long)?;
    Ok(w.finish())
}

/// Reads XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS and LIFETIME of an Allocate success and
/// checks its integrity.
fn read_allocation(msg: &Message<'_>, out: &mut AllocationReport, auth: Option<&Auth>) {
    out.relayed_address = match msg.attr::<XorRelayedAddress>() {
        Some(Ok(XorRelayedAddress(a))) => Some(a),
        _ => None,
    };
    out.mapped_address = match msg.attr::<XorMappedAddress>() {
        Some(Ok(XorMappedAddress(a))) => Some(a),
        _ => None,
    };
    out.lifetime_secs = match msg.attr::<Lifetime>() {
        Some(Ok(Lifetime(s))) => Some(s),
        _ => None,
    };
    out.response_integrity = auth.map(|a| match msg.verify_integrity(a.key.as_bytes()) {
        Ok(()) => Integrity::Verified,
        Err(relay_proto::stun::IntegrityError::Missing) => Integrity::Missing,
        Err(_) => Integrity::Mismatch,
    });
    if out.relayed_address.is_none() {
        out.step.status = Status::BadResponse;
        out.step.detail = Some("success response without XOR-RELAYED-ADDRESS".into());
    }
}

fn error_code(msg: &Message<'_>) -> Option<u16> {
    match msg.attr::<ErrorCode>() {
        Some(Ok(e)) => Some(e.code),
        _ => None,
    }
}

/// The error a response carries, with the operator hint for its code.
pub(super) fn error_info(msg: &Message<'_>) -> Option<ErrorInfo> {
    let Some(Ok(e)) = msg.attr::<ErrorCode>() else {
        return None;
    };
    Some(ErrorInfo {
        code: e.code,
        // coturn NUL-terminates some reason phrases.
        reason: e.reason.trim_end_matches('\0').to_owned(),
        hint: hint(e.code),
        alternate_server: match msg.attr::<AlternateServer>() {
            Some(Ok(AlternateServer(a))) => Some(a),
            _ => None,
        },
    })
}

/// What an operator should look at for a STUN/TURN error code.
pub fn hint(code: u16) -> Option<&'static str> {
    Some(match code {
        300 => "the server redirects clients to its ALTERNATE-SERVER; probe that address",
        400 => "the server found the request malformed (version mismatch or a proxy mangling it?)",
        401 => "check username/password or shared secret and realm",
        403 => {
            "credentials accepted but the request is forbidden by the server's policy \
                (user disabled, or relaying denied for this client)"
        }
        420 => "the server does not support an attribute this probe requires",
        437 => {
            "an allocation already exists for this client address/port (allocation \
                mismatch): wait for it to expire or probe from another local port"
        }
        438 => "clock skew or nonce problem",
        440 => "address family not supported by the relay",
        441 => "wrong credentials for the existing allocation",
        442 => "the relay does not offer UDP relaying",
        486 => "allocation quota reached (this user's, or this source's for TURN REST credentials)",
        500 => "server error: check the relay's log",
        508 => "relay full (no relay ports or capacity left)",
        _ => return None,
    })
}

pub(super) fn algorithm_name(a: KeyAlgorithm) -> &'static str {
    match a {
        KeyAlgorithm::Md5 => "MD5",
        KeyAlgorithm::Sha256 => "SHA-256",
    }
}

fn text_attr<'a, A>(msg: &Message<'a>) -> Option<String>
where
    A: relay_proto::stun::Attr<'a> + AsStr<'a>,
{
    match msg.attr::<A>() {
        Some(Ok(a)) => Some(a.as_str().to_owned()),
        _ => None,
    }
}

/// The text attributes' string, for [`text_attr`].
trait AsStr<'a> {
    fn as_str(&self) -> &'a str;
}

impl<'a> AsStr<'a> for Software<'a> {
    fn as_str(&self) -> &'a str {
        self.0
    }
}

impl<'a> AsStr<'a> for Realm<'a> {
    fn as_str(&self) -> &'a str {
        self.0
    }
}

impl<'a> AsStr<'a> for Nonce<'a> {
    fn as_str(&self) -> &'a str {
        self.0
    }
}

fn io_detail(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            "port unreachable (ICMP): nothing listens on that UDP port, or a firewall rejects it"
                .into()
        }
        io::ErrorKind::HostUnreachable => format!("host unreachable: {e}"),
        io::ErrorKind::NetworkUnreachable => format!("network unreachable: {e}"),
        _ => e.to_string(),
    }
}

/// 96 random bits (RFC 8489 §6) from the kernel's CSPRNG, like every other secret the
/// relay draws (see `crate::cores::random`).
pub fn new_transaction_id() -> TransactionId {
    let mut id = [0u8; 12];
    getrandom::fill(&mut id).expect("the kernel's random source (getrandom) is unavailable");
    TransactionId(id)
}
