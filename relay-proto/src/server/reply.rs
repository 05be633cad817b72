//! Response builders. An authenticated response carries SOFTWARE (if configured),
//! MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 (same key, same kind as the request) and
//! FINGERPRINT.
//!
//! An unauthenticated one (Binding answers, 401/438 challenges, 400s and 420s before
//! integrity) is as small as the RFCs allow, because anyone can elicit it with a spoofed
//! source: no SOFTWARE (optional, RFC 8489 §14.14), FINGERPRINT only when the request had it
//! (§7.3: the usage decides; a client that does not send it does not check it), and at most
//! [`AMPLIFICATION`] times the request's size over UDP (a stream's source is proven by its
//! handshake): an error whose reason phrase does not fit gets the standard one, then none,
//! and an answer that still does not fit is not sent
//! ([`DropReason::Amplification`](super::DropReason::Amplification)).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::stun::{
    BufferTooSmall, Class, ErrorCode, IntegrityKind, Message, MessageWriter, Method, Software,
    TransactionId, UnknownAttributes, UnknownAttrs,
};

use super::Server;
use super::auth_check::Auth;
use super::event::Event;
use super::five_tuple::FiveTuple;

/// How many times its own size an unauthenticated request's answer may be.
pub const AMPLIFICATION: usize = 4;

/// Standard reason phrases (RFC 8489 §14.8, RFC 8656 §18.10, RFC 6062 §6.3).
pub(crate) const fn reason(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthenticated",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        446 => "Connection Already Exists",
        447 => "Connection Timeout or Failure",
        486 => "Allocation Quota Reached",
        500 => "Server Error",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}

/// The error codes this server sends, in [`ErrorResponses`] order.
pub const ERROR_CODES: [u16; 16] = [
    300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 446, 447, 486, 500, 508,
];

/// Error responses sent, per code (the operator's "4xx/5xx by code"), counting plain 401
/// challenges and 438 stale-nonce retries too. Atomics because every error path ends in
/// the `&self` builder [`Server::error_response`]; only the owning thread writes them.
#[derive(Debug, Default)]
pub struct ErrorResponses {
    by_code: [AtomicU64; ERROR_CODES.len()],
    /// Codes not in [`ERROR_CODES`].
    other: AtomicU64,
}

impl ErrorResponses {
    fn slot(&self, code: u16) -> &AtomicU64 {
        match ERROR_CODES.iter().position(|c| *c == code) {
            Some(i) => &self.by_code[i],
            None => &self.other,
        }
    }

    fn bump(&self, code: u16) {
        self.slot(code).fetch_add(1, Ordering::Relaxed);
    }

    /// Responses sent with `code` (codes outside [`ERROR_CODES`] share one count).
    pub fn get(&self, code: u16) -> u64 {
        self.slot(code).load(Ordering::Relaxed)
    }

    /// Every code in [`ERROR_CODES`] with its count.
    pub fn iter(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        ERROR_CODES
            .iter()
            .zip(&self.by_code)
            .map(|(c, n)| (*c, n.load(Ordering::Relaxed)))
    }

    /// Responses with a code outside [`ERROR_CODES`].
    pub fn other(&self) -> u64 {
        self.other.load(Ordering::Relaxed)
    }
}

impl Server {
    /// Error responses sent so far, per code.
    pub fn error_responses(&self) -> &ErrorResponses {
        &self.error_responses
    }

    /// Header plus nothing yet; SOFTWARE and integrity are added by [`Self::seal`].
    pub(crate) fn writer<'o>(
        out: &'o mut [u8],
        class: Class,
        method: Method,
        txid: TransactionId,
    ) -> Result<MessageWriter<'o>, BufferTooSmall> {
        MessageWriter::new(out, class, method, txid)
    }

    /// Authenticated: SOFTWARE, integrity and FINGERPRINT. Unauthenticated: FINGERPRINT if
    /// the request had one. Returns the message length.
    pub(crate) fn seal(
        &self,
        mut w: MessageWriter<'_>,
        auth: Option<&Auth>,
    ) -> Result<usize, BufferTooSmall> {
        match auth {
            Some(auth) => {
                if let Some(s) = &self.config.software {
                    w.attr(&Software(s))?;
                }
                match auth.kind {
                    IntegrityKind::Sha256 => w.integrity_sha256(auth.key.as_bytes())?,
                    _ => w.integrity_sha1(auth.key.as_bytes())?,
                };
                w.fingerprint()?;
            }
            None if self.request.fingerprint => {
                w.fingerprint()?;
            }
            None => {}
        }
        Ok(w.finish())
    }

    /// The most an unauthenticated answer to the request at hand may take.
    pub(crate) fn answer_budget(&self) -> usize {
        AMPLIFICATION.saturating_mul(self.request.len)
    }

    /// A success response to `msg` with no attributes of its own.
    pub(crate) fn reply_success(
        &self,
        msg: &Message<'_>,
        auth: Option<&Auth>,
        out: &mut [u8],
    ) -> Option<usize> {
        self.reply_success_with(msg, auth, out, |_| Ok(()))
    }

    /// A success response to `msg`; `attrs` adds the method's attributes.
    pub(crate) fn reply_success_with(
        &self,
        msg: &Message<'_>,
        auth: Option<&Auth>,
        out: &mut [u8],
        attrs: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), BufferTooSmall>,
    ) -> Option<usize> {
        let (method, txid) = (msg.method(), msg.transaction_id());
        self.success_response(method, txid, auth, out, attrs)
    }

    /// Builds a success response, also one that answers no message at hand (a deferred
    /// Connect response); `None`: it did not fit in `out`.
    pub(crate) fn success_response(
        &self,
        method: Method,
        txid: TransactionId,
        auth: Option<&Auth>,
        out: &mut [u8],
        attrs: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), BufferTooSmall>,
    ) -> Option<usize> {
        let build = || -> Result<usize, BufferTooSmall> {
            let mut w = Self::writer(out, Class::Success, method, txid)?;
            attrs(&mut w)?;
            self.seal(w, auth)
        };
        build().ok()
    }

    /// An error response with only ERROR-CODE; logs [`Event::RequestRejected`].
    pub(crate) fn reply_error(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        auth: Option<&Auth>,
        code: u16,
        why: &str,
        out: &mut [u8],
    ) -> Option<usize> {
        self.reply_error_with(from, msg, auth, code, why, out, |_| Ok(()))
    }

    /// An error response; `extra` adds attributes after ERROR-CODE.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reply_error_with(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        auth: Option<&Auth>,
        code: u16,
        why: &str,
        out: &mut [u8],
        extra: impl Fn(&mut MessageWriter<'_>) -> Result<(), BufferTooSmall>,
    ) -> Option<usize> {
        self.events.push(Event::RequestRejected {
            client: from,
            method: msg.method(),
            code,
        });
        self.error_response(
            msg.method(),
            msg.transaction_id(),
            auth,
            code,
            why,
            out,
            extra,
        )
    }

    /// Builds an error response without logging it. Unauthenticated, a reason phrase that
    /// does not fit in [`Self::answer_budget`] gives way to the standard one, then to none.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn error_response(
        &self,
        method: Method,
        txid: TransactionId,
        auth: Option<&Auth>,
        code: u16,
        why: &str,
        out: &mut [u8],
        extra: impl Fn(&mut MessageWriter<'_>) -> Result<(), BufferTooSmall>,
    ) -> Option<usize> {
        let mut build = |reason: &str| -> Result<usize, BufferTooSmall> {
            let mut w = Self::writer(out, Class::Error, method, txid)?;
            w.attr(&ErrorCode { code, reason })?;
            extra(&mut w)?;
            self.seal(w, auth)
        };
        let phrase = if why.is_empty() { reason(code) } else { why };
        let mut len = build(phrase);
        if auth.is_none() {
            // Shorter and shorter until it fits; the caller drops it if nothing does.
            for shorter in [reason(code), ""] {
                if matches!(len, Ok(n) if n > self.answer_budget()) {
                    len = build(shorter);
                }
            }
        }
        let len = len.ok();
        // One over budget will not be sent (`reply_or_drop`).
        if len.is_some_and(|n| auth.is_some() || n <= self.answer_budget()) {
            self.error_responses.bump(code);
        }
        len
    }

    /// 420 with the unknown comprehension-required attributes.
    pub(crate) fn reply_unknown(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        auth: Option<&Auth>,
        unknown: &UnknownAttrs,
        out: &mut [u8],
    ) -> Option<usize> {
        let list: UnknownAttributes = *unknown;
        self.reply_error_with(from, msg, auth, 420, "", out, |w| {
            w.attr(&list)?;
            Ok(())
        })
    }
}
