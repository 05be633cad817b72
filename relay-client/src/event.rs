//! What the client reports: each request's end, answered or not.

use std::net::SocketAddr;
use std::time::Duration;

use relay_proto::stun::{
    AlternateServer, ErrorCode, Lifetime, MappedAddress, Message, Method, Software,
    XorMappedAddress, XorRelayedAddress,
};

use crate::RequestId;

/// The output of [`Client::poll_event`](crate::Client::poll_event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request ended (after the client's own 401/438 retries). Refreshes the client
    /// starts on its own schedule end here too, under ids it chose.
    Completed(Completed),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub id: RequestId,
    pub method: Method,
    pub outcome: Outcome,
    /// From the last transaction's first transmission to its answer (or to giving up).
    pub rtt: Duration,
    /// Transmissions of the last transaction.
    pub transmissions: u32,
    /// 438 answers retried with a fresh nonce.
    pub stale_retries: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success(Success),
    Error(ErrorResponse),
    /// No answer within the retransmission schedule.
    Timeout,
    /// An answer the client cannot use (a challenge without REALM, a request that does
    /// not fit...): the text says what.
    Invalid(String),
    /// Given up by the caller ([`Client::abandon`](crate::Client::abandon)).
    Abandoned,
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success(_))
    }

    /// The error response's code, if that is what it is.
    pub fn code(&self) -> Option<u16> {
        match self {
            Outcome::Error(e) => Some(e.code),
            _ => None,
        }
    }
}

/// A success response's attributes that clients use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Success {
    /// XOR-RELAYED-ADDRESS values (one per family).
    pub relayed: Vec<SocketAddr>,
    /// XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS (`mapped_plain`).
    pub mapped: Option<SocketAddr>,
    pub mapped_plain: bool,
    pub lifetime: Option<u32>,
    pub software: Option<String>,
    /// `None`: the request went unauthenticated, so there is nothing to check.
    pub integrity: Option<Integrity>,
    /// The whole response, for callers that read more.
    pub bytes: Vec<u8>,
}

/// MESSAGE-INTEGRITY of a response to a signed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    Verified,
    Missing,
    Mismatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    pub code: u16,
    /// coturn NUL-terminates some reason phrases: trimmed.
    pub reason: String,
    pub alternate_server: Option<SocketAddr>,
    pub software: Option<String>,
}

impl Success {
    pub(crate) fn read(msg: &Message<'_>) -> Self {
        let xor = msg.attr::<XorMappedAddress>().and_then(Result::ok);
        let plain = msg.attr::<MappedAddress>().and_then(Result::ok);
        Self {
            relayed: msg
                .attrs::<XorRelayedAddress>()
                .filter_map(Result::ok)
                .map(|a| a.0)
                .collect(),
            mapped: xor.map(|a| a.0).or(plain.map(|a| a.0)),
            mapped_plain: xor.is_none() && plain.is_some(),
            lifetime: msg.attr::<Lifetime>().and_then(Result::ok).map(|l| l.0),
            software: software(msg),
            integrity: None,
            bytes: msg.as_bytes().to_vec(),
        }
    }
}

impl ErrorResponse {
    /// `None` when ERROR-CODE is missing or malformed.
    pub(crate) fn read(msg: &Message<'_>) -> Option<Self> {
        let e = msg.attr::<ErrorCode>()?.ok()?;
        Some(Self {
            code: e.code,
            reason: e.reason.trim_end_matches('\0').to_owned(),
            alternate_server: msg
                .attr::<AlternateServer>()
                .and_then(Result::ok)
                .map(|a| a.0),
            software: software(msg),
        })
    }
}

fn software(msg: &Message<'_>) -> Option<String> {
    msg.attr::<Software>()
        .and_then(Result::ok)
        .map(|s| s.0.to_owned())
}
