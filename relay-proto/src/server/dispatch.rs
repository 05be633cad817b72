//! STUN from a client: requests authenticated and handed to their method's handler,
//! retransmissions answered from the transaction cache, indications, and what is
//! malformed.

// The core's own types, as `mod.rs` names them.
use super::source_rate::Bucket;
use super::*;

impl Server {
    pub(super) fn client_stun<'p>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        packet: &'p [u8],
        out: &mut [u8],
    ) -> ClientOutput<'p> {
        if !self.admit_request(now, from, packet) {
            return self.drop_client(DropReason::UnauthenticatedRate);
        }
        let msg = match Message::parse(packet) {
            Ok(m) => m,
            Err(e) => return self.malformed_stun(from, packet, e, out),
        };
        self.request.fingerprint = msg.has_fingerprint();
        match msg.class() {
            // RFC 6062: a Connect is answered later, a ConnectionBind turns the connection
            // into a data connection; both have their own dispatch.
            Class::Request if matches!(msg.method(), Method::CONNECT | Method::CONNECTION_BIND) => {
                self.tcp_relay_request(now, from, &msg, out)
            }
            Class::Request => {
                let reply = self.request(now, from, &msg, out);
                self.reply_or_drop(reply)
            }
            Class::Indication => self.indication(now, from, &msg, out),
            Class::Success | Class::Error => self.drop_client(DropReason::Unexpected),
        }
    }

    /// `false` if `packet` is a request (by its header) on a 5-tuple without an allocation
    /// and its source has used up its `unauthenticated_rate` (or all sources together the
    /// `unauthenticated_global_rate`). An established 5-tuple is
    /// never limited; every other request counts, whether it verifies or not.
    fn admit_request(&self, now: Instant, from: FiveTuple, packet: &[u8]) -> bool {
        let is_request = packet
            .first_chunk::<2>()
            .is_some_and(|t| stun::decode_type(u16::from_be_bytes(*t)).0 == Class::Request);
        if !is_request || self.table.id_by_tuple(&from).is_some() {
            return true;
        }
        let c = &self.config;
        let source = Bucket {
            rate: c.unauthenticated_rate,
            burst: c.unauthenticated_burst,
        };
        let global = Bucket {
            rate: c.unauthenticated_global_rate,
            burst: c.unauthenticated_global_burst,
        };
        self.shared
            .admit_unauthenticated(now, from.client.ip(), source, global)
    }

    /// A packet that starts like STUN but does not parse: a request whose header is intact
    /// gets 400 (RFC 8489 §6.3.1); anything else is dropped.
    pub(super) fn malformed_stun<'p>(
        &mut self,
        from: FiveTuple,
        packet: &[u8],
        err: stun::ParseError,
        out: &mut [u8],
    ) -> ClientOutput<'p> {
        use stun::ParseError as E;
        let answerable = !matches!(
            err,
            E::TooShort(_) | E::NotStun | E::BadMagicCookie(_) | E::BadFingerprint
        );
        let header = packet
            .first_chunk::<{ stun::HEADER_LEN }>()
            .map(|h| stun::decode_type(u16::from_be_bytes([h[0], h[1]])));
        match header {
            Some((Class::Request, method)) if answerable => {
                let mut txid = [0u8; 12];
                txid.copy_from_slice(&packet[8..20]);
                self.events.push(Event::RequestRejected {
                    client: from,
                    method,
                    code: 400,
                });
                let reply = self.error_response(
                    method,
                    stun::TransactionId(txid),
                    None,
                    400,
                    "Malformed message",
                    out,
                    |_| Ok(()),
                );
                self.reply_or_drop(reply)
            }
            _ => self.drop_client(DropReason::Malformed),
        }
    }

    pub(super) fn indication<'p>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'p>,
        out: &mut [u8],
    ) -> ClientOutput<'p> {
        match msg.method() {
            // A TCP allocation has no UDP socket to send from (RFC 6062 §5: data goes over
            // the data connections).
            Method::SEND if self.relays_tcp(&from) => self.drop_client(DropReason::Unexpected),
            Method::SEND => self.send_indication(now, from, msg, out),
            // Binding indications are keepalives (RFC 8489 §6.3.2): nothing to do.
            Method::BINDING => ClientOutput::Nothing,
            _ => self.drop_client(DropReason::Unexpected),
        }
    }

    /// Dispatches a request; returns the length of the response in `out` (`None`: it did not
    /// fit).
    pub(super) fn request(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Option<usize> {
        let method = msg.method();
        let txid = msg.transaction_id();
        if let Some(len) = self.replay(now, &from, method, txid.0, out) {
            return len;
        }
        match method {
            Method::BINDING => self.binding(from, msg, out),
            Method::ALLOCATE
            | Method::REFRESH
            | Method::CREATE_PERMISSION
            | Method::CHANNEL_BIND => {
                let auth = match self.authenticate_request(now, from, msg, out) {
                    Ok(a) => a,
                    Err(reply) => return reply,
                };
                match method {
                    Method::ALLOCATE => self.allocate(now, from, msg, &auth, out),
                    Method::REFRESH => self.refresh(now, from, msg, &auth, out),
                    Method::CREATE_PERMISSION => self.create_permission(now, from, msg, &auth, out),
                    // Channels relay datagrams; a TCP allocation has none.
                    _ if self.relays_tcp(&from) => {
                        let why = "ChannelBind on a TCP allocation";
                        self.reply_error(from, msg, Some(&auth), 400, why, out)
                    }
                    _ => self.channel_bind(now, from, msg, &auth, out),
                }
            }
            _ => self.reply_error(from, msg, None, 400, "Unsupported method", out),
        }
    }

    /// What every TURN request (Binding aside) passes before its handler: the long-term
    /// credentials, then 420 for comprehension-required attributes we do not know.
    /// `Err` holds the reply already written to `out` (`Err(None)`: it did not fit).
    pub(super) fn authenticate_request(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Result<auth_check::Auth, Option<usize>> {
        let auth = self.authenticate(now, from, msg, out)?;
        let unknown = msg.unknown_comprehension_required();
        if !unknown.is_empty() {
            return Err(self.reply_unknown(from, msg, Some(&auth), &unknown, out));
        }
        Ok(auth)
    }

    /// A cached response to a retransmitted request: `Some(reply)` if this (5-tuple, method,
    /// transaction) was answered in the last [`TRANSACTION_TTL`].
    pub(super) fn replay(
        &mut self,
        now: Instant,
        from: &FiveTuple,
        method: Method,
        txid: [u8; 12],
        out: &mut [u8],
    ) -> Option<Option<usize>> {
        let cached = match self
            .table
            .id_by_tuple(from)
            .and_then(|id| self.table.get(id))
        {
            Some(a) => a
                .last_response
                .as_deref()
                .filter(|c| c.txid == txid && c.method == method.0)
                .filter(|c| now.saturating_duration_since(c.at) < TRANSACTION_TTL)
                .map(|c| &c.bytes[..]),
            None => self.graveyard.get(now, from, method.0, txid),
        }?;
        Some(out.get_mut(..cached.len()).map(|o| {
            o.copy_from_slice(cached);
            cached.len()
        }))
    }

    /// Remembers `out[..len]` as the response to this request on allocation `id`.
    pub(super) fn remember(
        &mut self,
        now: Instant,
        id: AllocationId,
        msg: &Message<'_>,
        bytes: &[u8],
    ) {
        if let Some(a) = self.table.get_mut(id) {
            a.last_response = Some(Box::new(allocation::CachedResponse {
                method: msg.method().0,
                txid: msg.transaction_id().0,
                at: now,
                bytes: bytes.into(),
            }));
        }
    }
}
