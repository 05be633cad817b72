//! The probe's exchanges: Binding, then optionally a test Allocate (long-term
//! credentials, RFC 8489 §9.2 / RFC 8656 §7) that is deleted again with Refresh LIFETIME 0.
//! The TURN side is `relay-client`'s; this file turns its results into the report.
//!
//! Blocking and single-threaded on purpose: a one-shot diagnostic needs no runtime, and
//! [`probe`] takes the socket so tests (and callers that must probe from a given local
//! address, e.g. one NIC of a dual-homed host) choose where the requests come from.
//! [`probe_conn`] runs the same exchanges over any [`Conn`] (a TCP or TLS stream).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use relay_client::blocking::{self, DriveError, Link};
use relay_client::{
    Client, Completed, Config, ErrorResponse, Integrity as Checked, Outcome, Request, Success,
    Transport as ClientTransport, algorithm_name,
};
pub use relay_client::{Credentials, Retransmit};

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
/// The probe's schedule unless told otherwise: 4 tries within 3 s.
pub const RETRANSMIT: Retransmit = Retransmit {
    rto: INITIAL_RTO,
    rto_max: Duration::MAX,
    tries: 4,
    timeout: Duration::from_millis(3000),
};

/// What to probe and how.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub retransmit: Retransmit,
    /// With credentials, a test allocation follows the Binding.
    pub credentials: Option<Credentials>,
    /// The realm the operator expects; a different REALM from the server is a warning.
    pub expected_realm: Option<String>,
    /// Leave the test allocation in place instead of deleting it (tests, debugging).
    pub keep_allocation: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            retransmit: RETRANSMIT,
            credentials: None,
            expected_realm: None,
            keep_allocation: false,
        }
    }
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
    // Over a stream the client sends once and waits (RFC 8489 §6.2.2).
    let transport = if conn.retransmits() {
        ClientTransport::Udp
    } else {
        ClientTransport::Tcp
    };
    let mut config = Config::new(transport, opts.credentials.clone());
    config.retransmit = opts.retransmit;
    config.software = Some(SOFTWARE.into());
    config.stale_retries = 1;
    let mut p = Prober {
        link: ConnLink(conn),
        client: Client::new(config, seed()),
    };
    report.binding = p.binding();
    report.reachable = report.binding.step.answered_by_server();

    if let Some(creds) = &opts.credentials {
        report.allocation = Some(if report.reachable {
            let a = p.allocate(creds, opts.keep_allocation, &mut report.warnings);
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

/// A probe [`Conn`] as the client's link.
struct ConnLink<'c>(&'c mut dyn Conn);

impl Link for ConnLink<'_> {
    type Error = RecvError;

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.send(bytes)
    }

    fn recv(&mut self, buf: &mut [u8], until: Instant) -> Result<Option<usize>, RecvError> {
        self.0.recv(buf, until)
    }
}

struct Prober<'c> {
    link: ConnLink<'c>,
    client: Client,
}

impl Prober<'_> {
    fn binding(&mut self) -> BindingReport {
        let mut out = BindingReport::default();
        let (done, step) = match self.transact(Request::Binding) {
            Exchange::Answered(done, step) => (done, step),
            Exchange::Failed(step) => {
                out.step = step;
                return out;
            }
        };
        out.step = step;
        match done.outcome {
            Outcome::Success(s) => {
                out.software = s.software;
                out.mapped_address = s.mapped;
                out.mapped_address_plain = s.mapped_plain;
                if out.mapped_address.is_none() {
                    out.step.status = Status::BadResponse;
                    out.step.detail = Some("success response without XOR-MAPPED-ADDRESS".into());
                }
            }
            Outcome::Error(e) => {
                out.software.clone_from(&e.software);
                out.step.fail_with(&e);
            }
            _ => unreachable!("transact returns answers only"),
        }
        out
    }

    fn allocate(
        &mut self,
        creds: &Credentials,
        keep: bool,
        warnings: &mut Vec<String>,
    ) -> AllocationReport {
        let out = AllocationReport::skipped(&creds.username, creds.rest, "");
        // The client answers the 401 challenge and one 438 itself.
        let answer = self.transact(Request::ALLOCATE);
        let mut out = self.learnt(out);
        let (done, step) = match answer {
            Exchange::Answered(done, step) => (done, step),
            Exchange::Failed(step) => return out.with(step),
        };
        out.step = step;
        out.stale_nonce_retries = u32::from(done.stale_retries);
        match done.outcome {
            Outcome::Success(s) => {
                let signed = s.integrity.is_some();
                if !signed {
                    warnings
                        .push("the server allocated a relay address without authentication".into());
                }
                read_allocation(&s, &mut out);
                if (!signed || out.step.status == Status::Ok) && !keep {
                    out.deleted = Some(self.delete());
                }
            }
            Outcome::Error(e) => out.step.fail_with(&e),
            _ => unreachable!("transact returns answers only"),
        }
        out
    }

    /// Realm and password algorithm of the challenge, if there was one.
    fn learnt(&self, mut out: AllocationReport) -> AllocationReport {
        if let Some((realm, alg)) = self.client.realm() {
            out.realm = Some(realm.to_owned());
            out.password_algorithm = Some(algorithm_name(alg));
        }
        out
    }

    /// Refresh LIFETIME 0 (signed unless the server allocated without authentication).
    fn delete(&mut self) -> StepReport {
        match self.transact(Request::DELETE) {
            Exchange::Answered(done, mut step) => {
                if let Outcome::Error(e) = &done.outcome {
                    step.fail_with(e);
                }
                step
            }
            Exchange::Failed(step) => step,
        }
    }

    /// Runs `request` to its end.
    fn transact(&mut self, request: Request) -> Exchange {
        let done = match blocking::transact(&mut self.client, &mut self.link, request, &mut |_| {})
        {
            Ok(done) => done,
            Err(DriveError::Request(e)) => {
                return Exchange::Failed(StepReport::failed(Status::BadResponse, e.to_string()));
            }
            Err(DriveError::Send(e)) => {
                return Exchange::Failed(StepReport::failed(Status::Unreachable, io_detail(&e)));
            }
            Err(DriveError::Recv(e)) => return Exchange::Failed(recv_failure(e)),
        };
        let mut step = StepReport::answered(done.rtt, done.transmissions);
        match &done.outcome {
            Outcome::Success(_) | Outcome::Error(_) => return Exchange::Answered(done, step),
            Outcome::Timeout => {
                let n = done.transmissions;
                step = StepReport::failed(
                    Status::Timeout,
                    format!(
                        "no answer after {n} transmission{} in {} ms",
                        if n == 1 { "" } else { "s" },
                        done.rtt.as_millis()
                    ),
                );
                step.transmissions = n;
            }
            Outcome::Invalid(detail) => {
                step.status = Status::BadResponse;
                step.detail = Some(detail.clone());
            }
            Outcome::Abandoned => {
                step = StepReport::failed(Status::Unreachable, "the exchange was abandoned");
            }
        }
        Exchange::Failed(step)
    }
}

/// How one request ended, as the report sees it.
enum Exchange {
    /// A success or error response, and the step it makes.
    Answered(Completed, StepReport),
    /// No usable answer: the step says why.
    Failed(StepReport),
}

fn recv_failure(e: RecvError) -> StepReport {
    match e {
        RecvError::Io(e) => StepReport::failed(Status::Unreachable, io_detail(&e)),
        RecvError::Closed => StepReport::failed(
            Status::Unreachable,
            "the server closed the connection before answering",
        ),
        // Bytes came back that are not STUN framing (a stream to some other service).
        RecvError::Framing(detail) => StepReport::failed(Status::BadResponse, detail),
    }
}

/// XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS, LIFETIME and integrity of an Allocate success.
fn read_allocation(s: &Success, out: &mut AllocationReport) {
    out.relayed_address = s.relayed.first().copied();
    out.mapped_address = s.mapped.filter(|_| !s.mapped_plain);
    out.lifetime_secs = s.lifetime;
    out.response_integrity = s.integrity.map(|i| match i {
        Checked::Verified => Integrity::Verified,
        Checked::Missing => Integrity::Missing,
        Checked::Mismatch => Integrity::Mismatch,
    });
    if out.relayed_address.is_none() {
        out.step.status = Status::BadResponse;
        out.step.detail = Some("success response without XOR-RELAYED-ADDRESS".into());
    }
}

impl From<&ErrorResponse> for ErrorInfo {
    fn from(e: &ErrorResponse) -> Self {
        Self {
            code: e.code,
            reason: e.reason.clone(),
            hint: hint(e.code),
            alternate_server: e.alternate_server,
        }
    }
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

/// 128 bits from the kernel's CSPRNG for the client's transaction ids (RFC 8489 §6: ids
/// an off-path attacker cannot guess).
fn seed() -> [u8; 16] {
    let mut seed = [0u8; 16];
    getrandom::fill(&mut seed).expect("the kernel's random source (getrandom) is unavailable");
    seed
}
