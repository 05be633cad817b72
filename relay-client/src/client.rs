//! The client state machine: requests in flight, what the server taught (realm, nonce,
//! key), and the allocation's relayed address, lifetime and channels.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay_proto::auth::PasswordAlgorithm as KeyAlgorithm;
use relay_proto::stun::{
    BufferTooSmall, ChannelData, Class, Data as DataAttr, Message, MessageWriter, Method,
    PacketKind, Software, XorPeerAddress, classify, write_channel_data,
};

use crate::auth::Auth;
use crate::transaction::{Tick, Transaction};
use crate::txid::TxidGen;
use crate::{
    Completed, Credentials, ErrorResponse, Event, MAX_REQUEST, Outcome, Request, RequestError,
    RequestId, Retransmit, Success, Transport, send_indication,
};

/// How long before the allocation expires an automatic refresh is sent (but not before
/// half its lifetime has passed).
const REFRESH_AHEAD: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Config {
    pub transport: Transport,
    /// Without them, a 401 is reported as an error.
    pub credentials: Option<Credentials>,
    pub retransmit: Retransmit,
    /// SOFTWARE of every request, so a server's log shows where a request came from.
    pub software: Option<String>,
    /// 438 (stale nonce) answers retried with the new nonce, per request.
    pub stale_retries: u8,
    /// Refresh the allocation before it expires (results arrive as [`Event::Completed`]).
    pub auto_refresh: bool,
}

impl Config {
    pub fn new(transport: Transport, credentials: Option<Credentials>) -> Self {
        Self {
            transport,
            credentials,
            retransmit: Retransmit::default(),
            software: None,
            stale_retries: 2,
            auto_refresh: false,
        }
    }
}

/// Metadata of a datagram or frame written by [`Client::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub len: usize,
}

/// What [`Client::handle_input`] made of a datagram or frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// Application data from a peer, borrowed from the input.
    Data(Data<'a>),
    /// A response to one of our requests.
    Response,
    /// Not for this client: a stray or late response, another message, garbage.
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Data<'a> {
    /// A Data indication's XOR-PEER-ADDRESS, or the peer a channel is bound to.
    pub peer: Option<SocketAddr>,
    /// Set when the data came as ChannelData.
    pub channel: Option<u16>,
    pub payload: &'a [u8],
}

pub struct Client {
    config: Config,
    auth: Option<Auth>,
    txids: TxidGen,
    next_id: u64,
    transactions: Vec<Transaction>,
    events: VecDeque<Event>,
    relayed: Vec<SocketAddr>,
    mapped: Option<SocketAddr>,
    /// When the allocation's refresh is due (`auto_refresh`).
    refresh_at: Option<Instant>,
    channels: Vec<(u16, SocketAddr)>,
}

impl Client {
    /// `seed` makes the transaction ids: draw it from the OS random source.
    pub fn new(config: Config, seed: [u8; 16]) -> Self {
        Self {
            config,
            auth: None,
            txids: TxidGen::new(seed),
            next_id: 0,
            transactions: Vec::new(),
            events: VecDeque::new(),
            relayed: Vec::new(),
            mapped: None,
            refresh_at: None,
            channels: Vec::new(),
        }
    }

    /// Sign requests for `realm` and `nonce` from the start, skipping the 401 round
    /// trip (MD5 key).
    pub fn prime(&mut self, realm: &str, nonce: &str) -> Result<(), RequestError> {
        let creds = self.config.credentials.as_ref().ok_or_else(|| {
            RequestError::Challenge("no credentials to sign requests with".into())
        })?;
        self.auth = Some(Auth::primed(creds, realm, nonce).map_err(RequestError::Challenge)?);
        Ok(())
    }

    /// Queues `request`; its result arrives as an [`Event::Completed`] with the id.
    pub fn request(&mut self, request: Request, now: Instant) -> Result<RequestId, RequestError> {
        self.next_id += 1;
        let id = RequestId(self.next_id);
        let t = self.transaction(id, request, now)?;
        self.transactions.push(t);
        Ok(id)
    }

    /// A datagram or frame from the server.
    pub fn handle_input<'a>(&mut self, bytes: &'a [u8], now: Instant) -> Input<'a> {
        match classify(bytes) {
            PacketKind::ChannelData => match ChannelData::parse(bytes) {
                Ok(c) => Input::Data(Data {
                    peer: self.channel_peer(c.channel()),
                    channel: Some(c.channel()),
                    payload: c.payload(),
                }),
                Err(_) => Input::Ignored,
            },
            PacketKind::Stun => match Message::parse(bytes) {
                Ok(msg) => self.handle_message(&msg, now),
                Err(_) => Input::Ignored,
            },
            _ => Input::Ignored,
        }
    }

    /// The next datagram or frame to send, written into `buf` (at least
    /// [`MAX_REQUEST`] bytes, or the request stays queued).
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let t = self.transactions.iter_mut().find(|t| t.due)?;
        let len = t.bytes.len();
        let out = buf.get_mut(..len)?;
        out.copy_from_slice(&t.bytes);
        t.due = false;
        t.sent += 1;
        Some(Transmit { len })
    }

    /// When [`Client::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let refresh = self.refresh_at.filter(|_| self.config.auto_refresh);
        self.transactions
            .iter()
            .map(Transaction::timeout)
            .chain(refresh)
            .min()
    }

    /// Retransmissions, transactions that give up, the automatic refresh.
    pub fn handle_timeout(&mut self, now: Instant) {
        let rt = self.config.retransmit;
        let mut i = 0;
        while i < self.transactions.len() {
            match self.transactions[i].tick(now, &rt) {
                Tick::Wait | Tick::Retransmit => i += 1,
                Tick::Expired => {
                    let t = self.transactions.swap_remove(i);
                    self.complete(t, Outcome::Timeout, now);
                }
            }
        }
        if self.config.auto_refresh && self.refresh_at.is_some_and(|at| now >= at) {
            self.refresh_at = None;
            // A refresh that cannot be built is reported like any other failure.
            if let Err(e) = self.request(Request::Refresh { lifetime: None }, now) {
                let id = RequestId(self.next_id);
                self.events.push_back(Event::Completed(Completed {
                    id,
                    method: Method::REFRESH,
                    outcome: Outcome::Invalid(e.to_string()),
                    rtt: Duration::ZERO,
                    transmissions: 0,
                    stale_retries: 0,
                }));
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Gives up every request in flight (the link failed); each ends as
    /// [`Outcome::Abandoned`].
    pub fn abandon(&mut self, now: Instant) {
        for t in std::mem::take(&mut self.transactions) {
            self.complete(t, Outcome::Abandoned, now);
        }
    }

    /// A Send indication to `peer` into `buf`.
    pub fn send_indication(
        &mut self,
        peer: SocketAddr,
        data: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        send_indication(buf, self.txids.next(), peer, data)
    }

    /// ChannelData on `channel` into `buf` (padded on streams).
    pub fn channel_data(
        &self,
        channel: u16,
        data: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        write_channel_data(buf, channel, data, self.config.transport.is_stream())
    }

    /// XOR-RELAYED-ADDRESS values of the last successful Allocate.
    pub fn relayed(&self) -> &[SocketAddr] {
        &self.relayed
    }

    /// XOR-MAPPED-ADDRESS of the last successful Allocate.
    pub fn mapped(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// The realm and password algorithm of the last challenge.
    pub fn realm(&self) -> Option<(&str, KeyAlgorithm)> {
        self.auth.as_ref().map(|a| (a.realm.as_str(), a.algorithm))
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.transactions.len()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn channel_peer(&self, channel: u16) -> Option<SocketAddr> {
        self.channels
            .iter()
            .find(|(c, _)| *c == channel)
            .map(|(_, p)| *p)
    }

    /// A new transaction for `request`: fresh id, signed if a key is known.
    fn transaction(
        &mut self,
        id: RequestId,
        request: Request,
        now: Instant,
    ) -> Result<Transaction, RequestError> {
        let txid = self.txids.next();
        let mut buf = [0u8; MAX_REQUEST];
        let mut w = MessageWriter::new(&mut buf, Class::Request, request.method(), txid)?;
        request.write_attrs(&mut w)?;
        if let Some(s) = &self.config.software {
            w.attr(&Software(s))?;
        }
        let signer = self.auth.as_ref().zip(self.config.credentials.as_ref());
        if let Some((auth, creds)) = signer {
            auth.sign(&mut w, &creds.username)?;
        }
        w.fingerprint()?;
        let len = w.finish();
        Ok(Transaction::new(
            id,
            request,
            txid,
            buf[..len].to_vec(),
            signer.is_some(),
            &self.config.retransmit,
            self.config.transport.is_stream(),
            now,
        ))
    }

    fn handle_message<'a>(&mut self, msg: &Message<'a>, now: Instant) -> Input<'a> {
        if msg.class() == Class::Indication && msg.method() == Method::DATA {
            return match msg.attr::<DataAttr>() {
                Some(Ok(DataAttr(payload))) => Input::Data(Data {
                    peer: msg
                        .attr::<XorPeerAddress>()
                        .and_then(Result::ok)
                        .map(|p| p.0),
                    channel: None,
                    payload,
                }),
                _ => Input::Ignored,
            };
        }
        if !matches!(msg.class(), Class::Success | Class::Error) {
            return Input::Ignored;
        }
        let Some(i) = self
            .transactions
            .iter()
            .position(|t| t.txid == msg.transaction_id() && t.request.method() == msg.method())
        else {
            return Input::Ignored;
        };
        let t = self.transactions.swap_remove(i);
        if msg.class() == Class::Success {
            let mut s = Success::read(msg);
            if t.authenticated {
                s.integrity = self.auth.as_ref().map(|a| a.verify(msg));
            }
            self.learn(&t.request, &s, now);
            self.complete(t, Outcome::Success(s), now);
            return Input::Response;
        }
        let Some(e) = ErrorResponse::read(msg) else {
            self.complete(
                t,
                Outcome::Invalid("error response without a valid ERROR-CODE".into()),
                now,
            );
            return Input::Response;
        };
        match self.challenge(&t, e.code, msg) {
            Some(Ok(())) => self.retry(t, e.code == 438, now),
            Some(Err(why)) => self.complete(t, Outcome::Invalid(why), now),
            None => self.complete(t, Outcome::Error(e), now),
        }
        Input::Response
    }

    /// 401 to an unsigned request: learn realm and nonce; 438: take the new nonce.
    /// `None`: the error stands.
    fn challenge(
        &mut self,
        t: &Transaction,
        code: u16,
        msg: &Message<'_>,
    ) -> Option<Result<(), String>> {
        let creds = self.config.credentials.as_ref()?;
        match code {
            401 if !t.authenticated => {
                Some(Auth::from_challenge(msg, creds).map(|a| self.auth = Some(a)))
            }
            438 if t.stale_retries < self.config.stale_retries => {
                let auth = self.auth.as_mut()?;
                Some(auth.renew(msg, creds))
            }
            _ => None,
        }
    }

    /// The same request again as a new transaction, signed with what was learnt.
    fn retry(&mut self, old: Transaction, stale: bool, now: Instant) {
        match self.transaction(old.id, old.request.clone(), now) {
            Ok(mut t) => {
                t.stale_retries = old.stale_retries + u8::from(stale);
                self.transactions.push(t);
            }
            Err(e) => self.complete(old, Outcome::Invalid(e.to_string()), now),
        }
    }

    /// What a success changes in the allocation's state.
    fn learn(&mut self, request: &Request, s: &Success, now: Instant) {
        match request {
            Request::Allocate { .. } => {
                self.relayed.clone_from(&s.relayed);
                self.mapped = s.mapped;
                self.schedule_refresh(s.lifetime, now);
            }
            Request::Refresh { lifetime: Some(0) } => {
                self.relayed.clear();
                self.channels.clear();
                self.refresh_at = None;
            }
            Request::Refresh { .. } => self.schedule_refresh(s.lifetime, now),
            Request::ChannelBind { channel, peer } => {
                self.channels.retain(|(c, _)| c != channel);
                self.channels.push((*channel, *peer));
            }
            _ => {}
        }
    }

    fn schedule_refresh(&mut self, lifetime: Option<u32>, now: Instant) {
        self.refresh_at = lifetime.filter(|&l| l > 0).map(|l| {
            let l = Duration::from_secs(u64::from(l));
            now + l.saturating_sub(REFRESH_AHEAD).max(l / 2)
        });
    }

    fn complete(&mut self, t: Transaction, outcome: Outcome, now: Instant) {
        self.events.push_back(Event::Completed(Completed {
            id: t.id,
            method: t.request.method(),
            outcome,
            rtt: now.saturating_duration_since(t.started),
            transmissions: t.sent,
            stale_retries: t.stale_retries,
        }));
    }
}
