//! The TURN server state machine (RFC 8656 over RFC 8489, dual stack per RFC 6156/8656).
//!
//! Sans-IO: every input carries `now`, the unix time is derived from the anchor given to
//! [`Server::new`], and randomness comes from [`ServerConfig::port_seed`]. Replies are written
//! into caller-owned buffers; what the data paths must do (open relay sockets, install
//! permissions and channels in the XDP maps) comes out of [`Server::poll_command`], what the
//! operator should see out of [`Server::poll_event`].
//!
//! Layout: `handle_*.rs` hold one request or data path each, `auth_check.rs` the long-term
//! credential mechanism, `reply.rs` the response builders, `table.rs`/`ports.rs`/`timers.rs`
//! the state the handlers share.

mod allocation;
mod auth_check;
mod command;
mod config;
mod event;
mod five_tuple;
mod handle_allocate;
mod handle_binding;
mod handle_channel_bind;
mod handle_data;
mod handle_permission;
mod handle_refresh;
mod ports;
mod reply;
mod table;
mod timers;
mod txcache;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::auth::{CredentialStore, NonceKey, Nonces};
use crate::policy::{PeerPolicy, PeerVerdict};
use crate::stun::{self, Class, Message, Method, PacketKind};

pub use allocation::{
    AllocationId, AllocationInfo, ChannelInfo, Counters, Family, PermissionInfo, Relayed,
};
pub use command::Command;
pub use config::{
    CHANNEL_COOLDOWN, PORT_QUARANTINE, RESERVATION_LIFETIME, RelayAddr, ServerConfig,
    TRANSACTION_TTL,
};
pub use event::{CloseReason, DropCounters, DropReason, Event, MAX_QUEUED_EVENTS};
pub use five_tuple::{FiveTuple, Transport};

use allocation::Allocation;
use event::EventQueue;
use ports::{PortPool, Rng};
use table::Table;
use timers::{TimerKey, Timers};
use txcache::{Graveyard, RedirectMemory};

/// What to do after [`Server::handle_client`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ClientOutput<'p> {
    /// Nothing to send (indication consumed, or packet dropped: see [`Server::drops`]).
    Nothing,
    /// A STUN response in `out[..len]`, to be sent back to the client on the same 5-tuple.
    Reply { len: usize },
    /// Send `payload` (a slice of the input packet) from relay socket `relay` (bind address)
    /// to `peer`.
    ToPeer {
        relay: SocketAddr,
        peer: SocketAddr,
        payload: &'p [u8],
    },
    /// Hairpin: a Data indication or ChannelData for another allocation's client is in
    /// `out[..len]`.
    ToClient { to: FiveTuple, len: usize },
}

/// What to do after [`Server::handle_peer`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PeerOutput {
    Drop(DropReason),
    /// ChannelData (padded on TCP/TLS) or a Data indication in `out[..len]`, for `to`.
    ToClient {
        to: FiveTuple,
        len: usize,
    },
}

/// An EVEN-PORT reservation (RFC 8656 §7.2, R bit): `port` is held for the token's owner.
#[derive(Clone, Copy, Debug)]
struct Reservation {
    family: Family,
    port: u16,
    expires: Instant,
}

/// How an allocation ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Removal {
    Expired,
    Deleted,
    Closed(CloseReason),
}

pub struct Server {
    config: ServerConfig,
    credentials: CredentialStore,
    policy: PeerPolicy,
    nonces: Nonces,
    anchor: Instant,
    unix_anchor: u64,
    table: Table,
    /// Indexed by [`Family::idx`]; `None` where that family has no relay address.
    pools: [Option<PortPool>; 2],
    reservations: HashMap<[u8; 8], Reservation>,
    quarantined: HashMap<(Family, u16), Instant>,
    timers: Timers,
    rng: Rng,
    commands: VecDeque<Command>,
    events: EventQueue,
    drops: DropCounters,
    graveyard: Graveyard,
    redirected: RedirectMemory,
    draining: bool,
    alternate_cursor: usize,
    indication_counter: u64,
}

impl Server {
    /// `now` and `unix_now` anchor the clock: unix time at a later `now` is
    /// `unix_now + (now - anchor)` (nonces and TURN REST expiry use it).
    pub fn new(
        config: ServerConfig,
        credentials: CredentialStore,
        policy: PeerPolicy,
        nonce_key: NonceKey,
        now: Instant,
        unix_now: u64,
    ) -> Self {
        let pool = |r: &Option<RelayAddr>| r.map(|_| PortPool::new(config.ports.clone()));
        let pools = [pool(&config.relay_v4), pool(&config.relay_v6)];
        let nonces = Nonces::new(nonce_key, config.nonce_lifetime.as_secs().max(1));
        Self {
            rng: Rng::new(config.port_seed),
            pools,
            nonces,
            credentials,
            policy,
            anchor: now,
            unix_anchor: unix_now,
            table: Table::default(),
            reservations: HashMap::new(),
            quarantined: HashMap::new(),
            timers: Timers::default(),
            commands: VecDeque::new(),
            events: EventQueue::default(),
            drops: DropCounters::default(),
            graveyard: Graveyard::default(),
            redirected: RedirectMemory::default(),
            draining: false,
            alternate_cursor: 0,
            indication_counter: 0,
            config,
        }
    }

    // ----- reload / operator controls -------------------------------------------------------

    /// New users and secrets (SIGHUP). Allocations stay; their next request is checked
    /// against the new store.
    pub fn set_credentials(&mut self, credentials: CredentialStore) {
        self.credentials = credentials;
    }

    /// New peer policy (SIGHUP). Existing permissions (and channels) for peers the new policy
    /// denies are removed at once.
    pub fn set_policy(&mut self, policy: PeerPolicy) {
        self.policy = policy;
        let mut doomed: Vec<(AllocationId, IpAddr)> = Vec::new();
        for a in self.table.iter() {
            for p in &a.permissions {
                if matches!(self.policy.check(p.ip), PeerVerdict::Deny(_)) {
                    doomed.push((a.id, p.ip));
                }
            }
        }
        for (id, ip) in doomed {
            self.revoke_peer(id, ip);
        }
    }

    /// New quotas. Allocations over a lowered limit stay until they end.
    pub fn set_limits(&mut self, max_allocations: usize, max_allocations_per_user: usize) {
        self.config.max_allocations = max_allocations;
        self.config.max_allocations_per_user = max_allocations_per_user;
    }

    /// Drain (SIGTERM): new allocations are refused (300 towards an alternate server if one
    /// is configured, else 508); existing ones keep working and can be refreshed.
    pub fn set_draining(&mut self, on: bool) {
        self.draining = on;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    // ----- inputs ---------------------------------------------------------------------------

    /// One UDP datagram, or one TCP/TLS frame cut with [`stun::frame_len`], from a client.
    pub fn handle_client<'p>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        packet: &'p [u8],
        out: &mut [u8],
    ) -> ClientOutput<'p> {
        match stun::classify(packet) {
            PacketKind::ChannelData => self.client_channel_data(now, from, packet, out),
            PacketKind::Stun => self.client_stun(now, from, packet, out),
            PacketKind::Other => self.drop_client(DropReason::Malformed),
        }
    }

    /// A datagram that arrived from `peer` on relay socket `relay` (bind address and port).
    pub fn handle_peer(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        payload: &[u8],
        out: &mut [u8],
    ) -> PeerOutput {
        self.peer_data(now, relay, peer, payload, out)
    }

    /// The data path could not bind `relay`: the allocation holding it ends (event
    /// [`CloseReason::RelayUnavailable`]) and the port is not handed out for
    /// [`PORT_QUARANTINE`].
    pub fn relay_unavailable(&mut self, now: Instant, relay: SocketAddr) {
        let family = Family::of(relay.ip());
        let port = relay.port();
        if let Some(id) = self.table.id_by_port(family, port) {
            let owns = self
                .table
                .get(id)
                .and_then(|a| a.relayed(family))
                .is_some_and(|r| r.bind == relay);
            if owns {
                self.remove_allocation(
                    now,
                    id,
                    Removal::Closed(CloseReason::RelayUnavailable),
                    Some((family, port)),
                );
                return;
            }
        }
        // Not (or no longer) allocated: still keep it out of circulation.
        self.quarantine(now, family, port);
    }

    /// A TCP/TLS client connection closed: the allocation made on it ends (RFC 8656 §5: the
    /// allocation is bound to the 5-tuple, which no longer exists).
    pub fn client_closed(&mut self, now: Instant, from: FiveTuple) {
        if let Some(id) = self.table.id_by_tuple(&from) {
            self.remove_allocation(now, id, Removal::Closed(CloseReason::ClientClosed), None);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Expires allocations, permissions, channel bindings, channel cool-downs, reservations
    /// and port quarantines due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((_, key)) = self.timers.pop_due(now) {
            self.fire(now, key);
        }
        if self.timers.needs_compaction() {
            self.compact_timers();
        }
        self.graveyard.prune(now);
        self.redirected.prune(now);
    }

    // ----- outputs --------------------------------------------------------------------------

    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    /// Events discarded because more than [`MAX_QUEUED_EVENTS`] were waiting.
    pub fn events_lost(&self) -> u64 {
        self.events.lost
    }

    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    pub fn allocations(&self) -> impl Iterator<Item = AllocationInfo<'_>> {
        self.table.iter().map(|a| AllocationInfo { a })
    }

    pub fn allocation(&self, client: &FiveTuple) -> Option<AllocationInfo<'_>> {
        let id = self.table.id_by_tuple(client)?;
        self.table.get(id).map(|a| AllocationInfo { a })
    }

    pub fn allocation_count(&self) -> usize {
        self.table.len()
    }

    /// Relay ports in use (allocated, reserved or quarantined) per family: (v4, v6).
    pub fn ports_in_use(&self) -> (u32, u32) {
        let used = |p: &Option<PortPool>| p.as_ref().map_or(0, PortPool::used);
        (used(&self.pools[0]), used(&self.pools[1]))
    }

    // ----- shared internals -----------------------------------------------------------------

    fn unix_now(&self, now: Instant) -> u64 {
        self.unix_anchor + now.saturating_duration_since(self.anchor).as_secs()
    }

    fn relay_addr(&self, family: Family) -> Option<RelayAddr> {
        match family {
            Family::V4 => self.config.relay_v4,
            Family::V6 => self.config.relay_v6,
        }
    }

    /// `true` if `ip` is one of our relay addresses (bind or public): traffic to it stays
    /// inside the relay.
    fn is_own_relay_ip(&self, ip: IpAddr) -> bool {
        self.relay_addr(Family::of(ip))
            .is_some_and(|r| r.is_own(ip))
    }

    fn drop_client<'p>(&mut self, why: DropReason) -> ClientOutput<'p> {
        self.drops.bump(why);
        ClientOutput::Nothing
    }

    fn clamp_lifetime(&self, requested: Option<u32>) -> Duration {
        let default = self.config.default_lifetime;
        let max = self.config.max_lifetime.max(default);
        match requested {
            None => default,
            Some(secs) => Duration::from_secs(u64::from(secs)).clamp(default, max),
        }
    }

    fn client_stun<'p>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        packet: &'p [u8],
        out: &mut [u8],
    ) -> ClientOutput<'p> {
        let msg = match Message::parse(packet) {
            Ok(m) => m,
            Err(e) => return self.malformed_stun(from, packet, e, out),
        };
        match msg.class() {
            Class::Request => match self.request(now, from, &msg, out) {
                Some(len) => ClientOutput::Reply { len },
                None => self.drop_client(DropReason::BufferTooSmall),
            },
            Class::Indication => self.indication(now, from, &msg, out),
            Class::Success | Class::Error => self.drop_client(DropReason::Unexpected),
        }
    }

    /// A packet that starts like STUN but does not parse: a request whose header is intact
    /// gets 400 (RFC 8489 §6.3.1); anything else is dropped.
    fn malformed_stun<'p>(
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
                match reply {
                    Some(len) => ClientOutput::Reply { len },
                    None => self.drop_client(DropReason::BufferTooSmall),
                }
            }
            _ => self.drop_client(DropReason::Malformed),
        }
    }

    fn indication<'p>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'p>,
        out: &mut [u8],
    ) -> ClientOutput<'p> {
        match msg.method() {
            Method::SEND => self.send_indication(now, from, msg, out),
            // Binding indications are keepalives (RFC 8489 §6.3.2): nothing to do.
            Method::BINDING => ClientOutput::Nothing,
            _ => self.drop_client(DropReason::Unexpected),
        }
    }

    /// Dispatches a request; returns the length of the response in `out` (`None`: it did not
    /// fit).
    fn request(
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
                let auth = match self.authenticate(now, from, msg, out) {
                    Ok(a) => a,
                    Err(reply) => return reply,
                };
                let unknown = msg.unknown_comprehension_required();
                if !unknown.is_empty() {
                    return self.reply_unknown(from, msg, Some(&auth), &unknown, out);
                }
                match method {
                    Method::ALLOCATE => self.allocate(now, from, msg, &auth, out),
                    Method::REFRESH => self.refresh(now, from, msg, &auth, out),
                    Method::CREATE_PERMISSION => self.create_permission(now, from, msg, &auth, out),
                    _ => self.channel_bind(now, from, msg, &auth, out),
                }
            }
            // Connect / ConnectionBind (RFC 6062) need TCP allocations, which this server
            // does not make; everything else is unknown.
            _ => self.reply_error(from, msg, None, 400, "Unsupported method", out),
        }
    }

    /// A cached response to a retransmitted request: `Some(reply)` if this (5-tuple, method,
    /// transaction) was answered in the last [`TRANSACTION_TTL`].
    fn replay(
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
    fn remember(&mut self, now: Instant, id: AllocationId, msg: &Message<'_>, bytes: &[u8]) {
        if let Some(a) = self.table.get_mut(id) {
            a.last_response = Some(Box::new(allocation::CachedResponse {
                method: msg.method().0,
                txid: msg.transaction_id().0,
                at: now,
                bytes: bytes.into(),
            }));
        }
    }

    // ----- allocation lifecycle -------------------------------------------------------------

    /// Removes an allocation with all its commands and its event. `quarantine`: the relayed
    /// port that must not be reused for a while (the data path could not bind it).
    fn remove_allocation(
        &mut self,
        now: Instant,
        id: AllocationId,
        why: Removal,
        quarantine: Option<(Family, u16)>,
    ) -> Option<Allocation> {
        let a = self.table.remove(id)?;
        for c in a.channels.iter().filter(|c| !c.cooling) {
            if let Some(r) = a.relayed(Family::of(c.peer.ip())) {
                self.commands.push_back(Command::ChannelUnbound {
                    id,
                    client: a.client,
                    relay: r.bind,
                    peer: c.peer,
                    channel: c.number,
                });
            }
        }
        for p in &a.permissions {
            if let Some(r) = a.relayed(Family::of(p.ip)) {
                self.commands.push_back(Command::PermissionRemoved {
                    id,
                    client: a.client,
                    relay: r.bind,
                    peer: p.ip,
                });
            }
        }
        for (family, r) in [Family::V4, Family::V6]
            .into_iter()
            .zip(a.relayed.iter())
            .filter_map(|(f, r)| Some((f, (*r)?)))
        {
            self.commands.push_back(Command::AllocationRemoved {
                id,
                client: a.client,
                relay: r.bind,
                public: r.public,
            });
            if quarantine == Some((family, r.bind.port())) {
                // Still marked busy in the pool: the quarantine timer frees it.
                self.quarantined
                    .insert((family, r.bind.port()), now + PORT_QUARANTINE);
                self.timers.schedule(
                    now + PORT_QUARANTINE,
                    TimerKey::Quarantine(family, r.bind.port()),
                );
            } else if let Some(pool) = &mut self.pools[family.idx()] {
                pool.release(r.bind.port());
            }
        }
        let (user, client, counters) = (a.user.clone(), a.client, a.counters);
        self.events.push(match why {
            Removal::Expired => Event::AllocationExpired {
                id,
                user,
                client,
                counters,
            },
            Removal::Deleted => Event::AllocationDeleted {
                id,
                user,
                client,
                counters,
            },
            Removal::Closed(reason) => Event::AllocationClosed {
                id,
                user,
                client,
                reason,
                counters,
            },
        });
        Some(a)
    }

    /// Takes a free port out of circulation for [`PORT_QUARANTINE`].
    fn quarantine(&mut self, now: Instant, family: Family, port: u16) {
        let Some(pool) = &mut self.pools[family.idx()] else {
            return;
        };
        if !pool.take(port) && !self.quarantined.contains_key(&(family, port)) {
            // Busy for another reason (reserved): leave it alone.
            return;
        }
        self.quarantined
            .insert((family, port), now + PORT_QUARANTINE);
        self.timers
            .schedule(now + PORT_QUARANTINE, TimerKey::Quarantine(family, port));
    }

    /// Removes the permission for `ip` and the channels to it (policy reload).
    fn revoke_peer(&mut self, id: AllocationId, ip: IpAddr) {
        let Some(a) = self.table.get_mut(id) else {
            return;
        };
        let Some(relay) = a.relayed(Family::of(ip)).map(|r| r.bind) else {
            return;
        };
        let client = a.client;
        let mut unbound = Vec::new();
        a.channels.retain(|c| {
            if c.peer.ip() == ip {
                if !c.cooling {
                    unbound.push((c.peer, c.number));
                }
                false
            } else {
                true
            }
        });
        a.permissions.retain(|p| p.ip != ip);
        for (peer, channel) in unbound {
            self.commands.push_back(Command::ChannelUnbound {
                id,
                client,
                relay,
                peer,
                channel,
            });
        }
        self.commands.push_back(Command::PermissionRemoved {
            id,
            client,
            relay,
            peer: ip,
        });
    }

    fn fire(&mut self, now: Instant, key: TimerKey) {
        match key {
            TimerKey::Allocation(id) => {
                if self.table.get(id).is_some_and(|a| a.expires <= now) {
                    self.remove_allocation(now, id, Removal::Expired, None);
                }
            }
            TimerKey::Permission(id, ip) => {
                let Some(a) = self.table.get_mut(id) else {
                    return;
                };
                let Some(i) = a.permissions.iter().position(|p| p.ip == ip) else {
                    return;
                };
                if a.permissions[i].expires > now {
                    return;
                }
                a.permissions.swap_remove(i);
                if let Some(r) = a.relayed(Family::of(ip)) {
                    self.commands.push_back(Command::PermissionRemoved {
                        id,
                        client: a.client,
                        relay: r.bind,
                        peer: ip,
                    });
                }
            }
            TimerKey::Channel(id, number) => {
                let Some(a) = self.table.get_mut(id) else {
                    return;
                };
                let Some(i) = a.channels.iter().position(|c| c.number == number) else {
                    return;
                };
                let c = a.channels[i];
                if c.expires > now {
                    return;
                }
                if c.cooling {
                    a.channels.swap_remove(i);
                    return;
                }
                let until = c.expires + CHANNEL_COOLDOWN;
                a.channels[i].cooling = true;
                a.channels[i].expires = until;
                if let Some(r) = a.relayed(Family::of(c.peer.ip())) {
                    self.commands.push_back(Command::ChannelUnbound {
                        id,
                        client: a.client,
                        relay: r.bind,
                        peer: c.peer,
                        channel: number,
                    });
                }
                if until <= now {
                    a.channels.swap_remove(i);
                } else {
                    self.timers.schedule(until, TimerKey::Channel(id, number));
                }
            }
            TimerKey::Reservation(token) => {
                if let Some(r) = self.reservations.get(&token).copied()
                    && r.expires <= now
                {
                    self.reservations.remove(&token);
                    if let Some(pool) = &mut self.pools[r.family.idx()] {
                        pool.release(r.port);
                    }
                }
            }
            TimerKey::Quarantine(family, port) => {
                if let Some(&until) = self.quarantined.get(&(family, port))
                    && until <= now
                {
                    self.quarantined.remove(&(family, port));
                    if let Some(pool) = &mut self.pools[family.idx()] {
                        pool.release(port);
                    }
                }
            }
        }
    }

    fn compact_timers(&mut self) {
        let mut live = Vec::with_capacity(self.timers.len() / 2);
        for a in self.table.iter() {
            live.push((a.expires, TimerKey::Allocation(a.id)));
            for p in &a.permissions {
                live.push((p.expires, TimerKey::Permission(a.id, p.ip)));
            }
            for c in &a.channels {
                live.push((c.expires, TimerKey::Channel(a.id, c.number)));
            }
        }
        for (token, r) in &self.reservations {
            live.push((r.expires, TimerKey::Reservation(*token)));
        }
        for (&(family, port), &until) in &self.quarantined {
            live.push((until, TimerKey::Quarantine(family, port)));
        }
        self.timers.rebuild(live);
    }

    /// Number of timer entries (live and stale), for tests of the compaction bound.
    #[cfg(test)]
    fn timer_entries(&self) -> usize {
        self.timers.len()
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("allocations", &self.table.len())
            .field("reservations", &self.reservations.len())
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}
