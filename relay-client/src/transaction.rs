//! One request on the wire: its bytes, and when to send them again or give up.

use std::time::{Duration, Instant};

use relay_proto::stun::TransactionId;

use crate::{Request, RequestId};

/// Retransmission schedule of one transaction (RFC 8489 §6.2.1, bounded by a deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retransmit {
    /// First retransmission timeout; doubles after every transmission up to `rto_max`.
    pub rto: Duration,
    pub rto_max: Duration,
    /// Most transmissions of one request (1 on streams, whatever this says).
    pub tries: u32,
    /// From a transaction's first transmission to giving up; the last transmission
    /// waits until then (RFC 8489's Rm × RTO, bounded).
    pub timeout: Duration,
}

impl Retransmit {
    /// RFC 8489 §6.2.1: RTO 500 ms, Rc = 7, the last wait Rm = 16 RTO: 39.5 s.
    pub const RFC8489: Retransmit = Retransmit {
        rto: Duration::from_millis(500),
        rto_max: Duration::MAX,
        tries: 7,
        timeout: Duration::from_millis(39_500),
    };
}

impl Default for Retransmit {
    fn default() -> Self {
        Self::RFC8489
    }
}

/// What a transaction's timer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tick {
    Wait,
    /// Send again (already marked due).
    Retransmit,
    Expired,
}

pub(crate) struct Transaction {
    pub(crate) id: RequestId,
    pub(crate) request: Request,
    pub(crate) txid: TransactionId,
    pub(crate) bytes: Vec<u8>,
    /// Signed with the credentials: a 401 to it means they are wrong.
    pub(crate) authenticated: bool,
    pub(crate) started: Instant,
    pub(crate) stale_retries: u8,
    /// Waiting in [`Client::poll_transmit`](crate::Client::poll_transmit).
    pub(crate) due: bool,
    pub(crate) sent: u32,
    next: Instant,
    deadline: Instant,
    rto: Duration,
    tries: u32,
}

impl Transaction {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: RequestId,
        request: Request,
        txid: TransactionId,
        bytes: Vec<u8>,
        authenticated: bool,
        rt: &Retransmit,
        stream: bool,
        now: Instant,
    ) -> Self {
        let deadline = now + rt.timeout;
        let tries = if stream { 1 } else { rt.tries.max(1) };
        Self {
            id,
            request,
            txid,
            bytes,
            authenticated,
            started: now,
            stale_retries: 0,
            due: true,
            sent: 0,
            next: if tries == 1 {
                deadline
            } else {
                (now + rt.rto).min(deadline)
            },
            deadline,
            rto: rt.rto,
            tries,
        }
    }

    pub(crate) fn timeout(&self) -> Instant {
        self.next
    }

    pub(crate) fn tick(&mut self, now: Instant, rt: &Retransmit) -> Tick {
        if now >= self.deadline {
            return Tick::Expired;
        }
        if now < self.next || self.due {
            return Tick::Wait;
        }
        // Transmissions are counted when drained, so a caller that drains late still
        // gets no more than `tries`.
        if self.sent >= self.tries {
            self.next = self.deadline;
            return Tick::Wait;
        }
        self.rto = self.rto.saturating_mul(2).min(rt.rto_max);
        // The last transmission waits until the deadline.
        self.next = if self.sent + 1 >= self.tries {
            self.deadline
        } else {
            (now + self.rto).min(self.deadline)
        };
        self.due = true;
        Tick::Retransmit
    }
}
