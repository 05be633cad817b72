//! Response builders: every response carries SOFTWARE (if configured), MESSAGE-INTEGRITY or
//! MESSAGE-INTEGRITY-SHA256 when the request was authenticated (same key, same kind as the
//! request), and FINGERPRINT.

use crate::stun::{
    BufferTooSmall, Class, ErrorCode, IntegrityKind, Message, MessageWriter, Method, Software,
    TransactionId, UnknownAttributes, UnknownAttrs,
};

use super::Server;
use super::auth_check::Auth;
use super::event::Event;
use super::five_tuple::FiveTuple;

/// Standard reason phrases (RFC 8489 §14.8, RFC 8656 §18.10).
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
        486 => "Allocation Quota Reached",
        500 => "Server Error",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}

impl Server {
    /// Header plus nothing yet; SOFTWARE and integrity are added by [`Self::seal`].
    pub(crate) fn writer<'o>(
        out: &'o mut [u8],
        class: Class,
        method: Method,
        txid: TransactionId,
    ) -> Result<MessageWriter<'o>, BufferTooSmall> {
        MessageWriter::new(out, class, method, txid)
    }

    /// SOFTWARE, integrity (if authenticated) and FINGERPRINT; returns the message length.
    pub(crate) fn seal(
        &self,
        mut w: MessageWriter<'_>,
        auth: Option<&Auth>,
    ) -> Result<usize, BufferTooSmall> {
        if let Some(s) = &self.config.software {
            w.attr(&Software(s))?;
        }
        if let Some(auth) = auth {
            match auth.kind {
                IntegrityKind::Sha256 => w.integrity_sha256(auth.key.as_bytes())?,
                _ => w.integrity_sha1(auth.key.as_bytes())?,
            };
        }
        w.fingerprint()?;
        Ok(w.finish())
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
        extra: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), BufferTooSmall>,
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

    /// Builds an error response without logging it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn error_response(
        &self,
        method: Method,
        txid: TransactionId,
        auth: Option<&Auth>,
        code: u16,
        why: &str,
        out: &mut [u8],
        extra: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), BufferTooSmall>,
    ) -> Option<usize> {
        let build = || -> Result<usize, BufferTooSmall> {
            let mut w = Self::writer(out, Class::Error, method, txid)?;
            let reason = if why.is_empty() { reason(code) } else { why };
            w.attr(&ErrorCode { code, reason })?;
            extra(&mut w)?;
            self.seal(w, auth)
        };
        build().ok()
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
