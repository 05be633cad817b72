//! What a probe found, and its two renderings: text for a terminal, one JSON object for
//! scripts and monitoring.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::transport::Transport;

/// Exit codes of `relay stun`.
pub mod exit {
    /// Everything asked for succeeded.
    pub const OK: i32 = 0;
    /// The server answered with an error (or an unusable response).
    pub const SERVER_ERROR: i32 = 1;
    /// No answer (timeout) or unreachable.
    pub const NO_ANSWER: i32 = 2;
    /// Bad command line (sysexits.h EX_USAGE).
    pub const USAGE: i32 = 64;
}

/// How one exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Success response.
    Ok,
    /// Error response; see [`StepReport::error`].
    Error,
    /// A response this probe cannot use (malformed, or missing a required attribute).
    BadResponse,
    /// No response within the tries and the time allowed.
    Timeout,
    /// ICMP unreachable or a local network error.
    Unreachable,
    /// Not attempted.
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::BadResponse => "bad_response",
            Status::Timeout => "timeout",
            Status::Unreachable => "unreachable",
            Status::Skipped => "skipped",
        }
    }

    fn no_answer(self) -> bool {
        matches!(self, Status::Timeout | Status::Unreachable)
    }
}

/// An error response's ERROR-CODE, with advice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorInfo {
    pub code: u16,
    pub reason: String,
    pub hint: Option<&'static str>,
    /// ALTERNATE-SERVER of a 300 (Try Alternate).
    pub alternate_server: Option<SocketAddr>,
}

/// The outcome of one request/response exchange.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepReport {
    pub status: Status,
    /// From the first transmission to the response (milliseconds, fractional).
    #[serde(serialize_with = "millis")]
    pub rtt_ms: Option<f64>,
    pub transmissions: u32,
    pub error: Option<ErrorInfo>,
    /// Human-readable detail for timeouts, unreachability and bad responses.
    pub detail: Option<String>,
}

impl StepReport {
    pub(super) fn failed(status: Status, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self {
            status,
            rtt_ms: None,
            transmissions: 0,
            error: None,
            detail: (!detail.is_empty()).then_some(detail),
        }
    }

    pub(super) fn answered(rtt: Duration, transmissions: u32) -> Self {
        Self {
            status: Status::Ok,
            rtt_ms: Some(rtt.as_secs_f64() * 1000.0),
            transmissions,
            error: None,
            detail: None,
        }
    }

    /// Marks the step as answered with the error response `e`.
    pub(super) fn fail_with(&mut self, e: &relay_client::ErrorResponse) {
        self.status = Status::Error;
        self.error = Some(e.into());
    }

    /// The server sent something back (success, error or garbage).
    pub fn answered_by_server(&self) -> bool {
        matches!(
            self.status,
            Status::Ok | Status::Error | Status::BadResponse
        )
    }
}

/// The Binding request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BindingReport {
    #[serde(flatten)]
    pub step: StepReport,
    /// XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS from a pre-RFC 5389 server).
    pub mapped_address: Option<SocketAddr>,
    /// The address came from MAPPED-ADDRESS, not XOR-MAPPED-ADDRESS.
    pub mapped_address_plain: bool,
    pub software: Option<String>,
}

impl Default for BindingReport {
    fn default() -> Self {
        Self {
            step: StepReport::failed(Status::Skipped, ""),
            mapped_address: None,
            mapped_address_plain: false,
            software: None,
        }
    }
}

/// Whether a success response's MESSAGE-INTEGRITY(-SHA256) verified with our key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Integrity {
    Verified,
    Missing,
    Mismatch,
}

impl Integrity {
    pub fn as_str(self) -> &'static str {
        match self {
            Integrity::Verified => "verified",
            Integrity::Missing => "missing",
            Integrity::Mismatch => "mismatch",
        }
    }
}

/// The test allocation and its deletion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllocationReport {
    pub username: String,
    /// The credentials were minted from a TURN REST shared secret (JSON: `"credentials":
    /// "rest_secret"`, else `"long_term"`).
    #[serde(rename = "credentials", serialize_with = "credential_kind")]
    pub rest: bool,
    /// REALM of the server's challenge.
    pub realm: Option<String>,
    /// "MD5" or "SHA-256".
    pub password_algorithm: Option<&'static str>,
    /// The authenticated Allocate (its round trip is the allocate RTT).
    #[serde(flatten)]
    pub step: StepReport,
    /// 438 Stale Nonce answers that were retried with the new nonce.
    pub stale_nonce_retries: u32,
    pub relayed_address: Option<SocketAddr>,
    pub mapped_address: Option<SocketAddr>,
    pub lifetime_secs: Option<u32>,
    pub response_integrity: Option<Integrity>,
    /// The Refresh LIFETIME 0 that deletes the allocation; `None` if there was none to delete.
    pub deleted: Option<StepReport>,
}

impl AllocationReport {
    pub(super) fn skipped(username: &str, rest: bool, detail: &str) -> Self {
        Self {
            username: username.to_owned(),
            rest,
            realm: None,
            password_algorithm: None,
            step: StepReport::failed(Status::Skipped, detail),
            stale_nonce_retries: 0,
            relayed_address: None,
            mapped_address: None,
            lifetime_secs: None,
            response_integrity: None,
            deleted: None,
        }
    }

    pub(super) fn with(mut self, step: StepReport) -> Self {
        self.step = step;
        self
    }
}

/// Everything one probe found; `--json` prints it as one object with these field names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub server: SocketAddr,
    /// The host name SERVER gave (resolved to `server`; the TLS server name unless --sni).
    pub server_name: Option<String>,
    pub transport: Transport,
    pub local_address: Option<SocketAddr>,
    /// TCP/TLS: time to establish the TCP connection.
    #[serde(serialize_with = "millis")]
    pub connect_ms: Option<f64>,
    /// TLS: handshake time after the TCP connect.
    #[serde(serialize_with = "millis")]
    pub tls_handshake_ms: Option<f64>,
    /// The Binding request was answered.
    pub reachable: bool,
    pub binding: BindingReport,
    /// Present when credentials were given.
    pub allocation: Option<AllocationReport>,
    pub warnings: Vec<String>,
    pub exit_code: i32,
}

impl Report {
    pub fn new(server: SocketAddr) -> Self {
        Self {
            server,
            server_name: None,
            transport: Transport::Udp,
            local_address: None,
            connect_ms: None,
            tls_handshake_ms: None,
            reachable: false,
            binding: BindingReport::default(),
            allocation: None,
            warnings: Vec::new(),
            exit_code: exit::OK,
        }
    }

    /// A probe that could not send anything.
    pub(super) fn unreachable(mut self, detail: String) -> Self {
        self.binding.step = StepReport::failed(Status::Unreachable, detail);
        self.finish();
        self
    }

    /// Computes `exit_code`: 2 if any exchange got no answer, else 1 if any got an error.
    pub(super) fn finish(&mut self) {
        let mut steps = vec![&self.binding.step];
        if let Some(a) = &self.allocation {
            steps.push(&a.step);
            steps.extend(a.deleted.as_ref());
        }
        self.exit_code = if steps.iter().any(|s| s.status.no_answer()) {
            exit::NO_ANSWER
        } else if steps
            .iter()
            .any(|s| matches!(s.status, Status::Error | Status::BadResponse))
        {
            exit::SERVER_ERROR
        } else {
            exit::OK
        };
    }

    /// One JSON object (no trailing newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a probe report always serializes")
    }
}

/// Milliseconds to the microsecond: more digits would be noise.
fn millis<S: Serializer>(ms: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    ms.map(|v| (v * 1000.0).round() / 1000.0).serialize(s)
}

fn credential_kind<S: Serializer>(rest: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *rest { "rest_secret" } else { "long_term" })
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Advice for an exchange that got no usable answer.
fn no_answer_hint(status: Status, allocate: bool) -> Option<&'static str> {
    match (status, allocate) {
        (Status::Timeout, false) => Some(
            "no answer: a firewall drops the traffic to this address/port, wrong IP or port, or \
             the relay is down (browsers report this as \"relay candidate creation timeout\")",
        ),
        (Status::Timeout, true) => Some(
            "Binding is answered but Allocate is not: the server may be STUN-only, or TURN is \
             disabled (browsers report \"relay candidate creation timeout\")",
        ),
        (Status::Unreachable, _) => {
            Some("the request could not be delivered: check the address, the port and the routes")
        }
        _ => None,
    }
}

fn rtt(s: &StepReport) -> String {
    match s.rtt_ms {
        Some(ms) => format!(
            "{ms:.2} ms ({} transmission{})",
            s.transmissions,
            if s.transmissions == 1 { "" } else { "s" }
        ),
        None => "-".into(),
    }
}

fn line(f: &mut fmt::Formatter<'_>, label: &str, value: impl fmt::Display) -> fmt::Result {
    writeln!(f, "  {label:<17}{value}")
}

fn step_failure(f: &mut fmt::Formatter<'_>, s: &StepReport, allocate: bool) -> fmt::Result {
    if let Some(e) = &s.error {
        line(f, "error", format_args!("{} {}", e.code, e.reason))?;
        if let Some(alt) = e.alternate_server {
            line(f, "alternate server", alt)?;
        }
        if let Some(h) = e.hint {
            line(f, "hint", h)?;
        }
    }
    if let Some(d) = &s.detail {
        line(f, "detail", d)?;
    }
    if let Some(h) = no_answer_hint(s.status, allocate) {
        line(f, "hint", h)?;
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "STUN Binding to {}", self.server)?;
        if let Some(n) = &self.server_name {
            write!(f, " ({n})")?;
        }
        write!(f, " over {}", self.transport.as_str().to_uppercase())?;
        match self.local_address {
            Some(l) => writeln!(f, " from {l}")?,
            None => writeln!(f)?,
        }
        if let Some(c) = self.connect_ms {
            line(f, "tcp connect", format_args!("{c:.2} ms"))?;
        }
        if let Some(h) = self.tls_handshake_ms {
            line(f, "tls handshake", format_args!("{h:.2} ms"))?;
        }
        let b = &self.binding;
        line(f, "reachable", if self.reachable { "yes" } else { "no" })?;
        if b.step.answered_by_server() {
            line(f, "round-trip", rtt(&b.step))?;
        }
        if b.step.status != Status::Ok {
            line(f, "result", b.step.status.as_str())?;
        }
        if let Some(m) = b.mapped_address {
            let plain = if b.mapped_address_plain {
                " (MAPPED-ADDRESS, not XOR)"
            } else {
                ""
            };
            line(f, "mapped address", format_args!("{m}{plain}"))?;
        }
        if let Some(s) = &b.software {
            line(f, "software", s)?;
        }
        step_failure(f, &b.step, false)?;

        if let Some(a) = &self.allocation {
            let how = if a.rest {
                "TURN REST secret"
            } else {
                "long-term credentials"
            };
            writeln!(f, "TURN Allocate (UDP relay) as \"{}\" ({how})", a.username)?;
            if let Some(r) = &a.realm {
                line(f, "realm", r)?;
            }
            if let Some(p) = a.password_algorithm {
                line(f, "password algo", p)?;
            }
            line(f, "result", a.step.status.as_str())?;
            if a.step.answered_by_server() {
                line(f, "round-trip", rtt(&a.step))?;
            }
            if a.stale_nonce_retries > 0 {
                line(f, "stale nonce", "438 answered, retried with the new nonce")?;
            }
            if let Some(r) = a.relayed_address {
                line(f, "relayed address", r)?;
            }
            if let Some(m) = a.mapped_address {
                line(f, "mapped address", m)?;
            }
            if let Some(l) = a.lifetime_secs {
                line(f, "lifetime", format_args!("{l} s"))?;
            }
            if let Some(i) = a.response_integrity {
                line(f, "integrity", i.as_str())?;
            }
            step_failure(f, &a.step, true)?;
            if let Some(d) = &a.deleted {
                match d.status {
                    Status::Ok => line(
                        f,
                        "deleted",
                        format_args!(
                            "yes (Refresh LIFETIME 0 answered in {:.2} ms)",
                            d.rtt_ms.unwrap_or_default()
                        ),
                    )?,
                    s => {
                        line(f, "deleted", format_args!("no ({})", s.as_str()))?;
                        step_failure(f, d, true)?;
                    }
                }
            }
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        let verdict = match self.exit_code {
            exit::OK => "OK",
            exit::SERVER_ERROR => "FAILED (server answered with an error)",
            _ => "FAILED (no answer)",
        };
        writeln!(f, "result: {verdict} (exit {})", self.exit_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_precedence() {
        let mut r = Report::new("127.0.0.1:3478".parse().unwrap());
        r.binding.step = StepReport::failed(Status::Ok, "");
        r.finish();
        assert_eq!(r.exit_code, exit::OK);
        let mut a = AllocationReport::skipped("u", false, "");
        a.step = StepReport::failed(Status::Error, "");
        a.deleted = Some(StepReport::failed(Status::Timeout, ""));
        r.allocation = Some(a.clone());
        r.finish();
        assert_eq!(r.exit_code, exit::NO_ANSWER);
        a.deleted = None;
        r.allocation = Some(a);
        r.finish();
        assert_eq!(r.exit_code, exit::SERVER_ERROR);
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["server"], "127.0.0.1:3478");
        assert_eq!(json["transport"], "udp");
        assert!(json["local_address"].is_null());
        assert_eq!(json["binding"]["status"], "ok");
        assert_eq!(json["allocation"]["status"], "error");
        assert_eq!(json["allocation"]["credentials"], "long_term");
        assert_eq!(json["warnings"], serde_json::json!([]));
        assert_eq!(json["exit_code"], 1);
    }
}
