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
mod bandwidth;
mod bind_retry;
mod command;
mod config;
mod dispatch;
mod event;
mod five_tuple;
mod handle_allocate;
mod handle_binding;
mod handle_channel_bind;
mod handle_data;
mod handle_permission;
mod handle_refresh;
mod handle_tcp_relay;
mod lifecycle;
mod peer_policy;
mod ports;
mod redirect;
mod reply;
mod shared;
mod snapshot;
mod source_rate;
mod table;
mod tcp_relay;
mod timers;
mod txcache;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{CredentialStore, NonceKey, Nonces};
use crate::policy::PeerPolicy;
use crate::stun::{self, Class, Message, Method, PacketKind};

pub use allocation::{
    AllocationId, AllocationInfo, ChannelInfo, Counters, Family, PermissionInfo, Relayed,
};
pub use command::Command;
pub use config::{
    CHANNEL_COOLDOWN, DEFAULT_UNAUTHENTICATED_BURST, DEFAULT_UNAUTHENTICATED_GLOBAL_BURST,
    DEFAULT_UNAUTHENTICATED_GLOBAL_RATE, DEFAULT_UNAUTHENTICATED_RATE, PORT_QUARANTINE,
    RESERVATION_LIFETIME, RelayAddr, ServerConfig, TRANSACTION_TTL,
};
pub use event::{CapacityLimit, CloseReason, DropCounters, DropReason, Event, MAX_QUEUED_EVENTS};
pub use five_tuple::{FiveTuple, Transport};
pub use redirect::RedirectTarget;
pub use reply::{ERROR_CODES, ErrorResponses};
pub use shared::{Limits, Shared, source_of};
pub use snapshot::{
    AllocationSnapshot, ChannelSnapshot, CredentialName, FamilyName, PermissionSnapshot,
    QuarantineSnapshot, RelayedSnapshot, ReservationSnapshot, RestoreError, SNAPSHOT_VERSION,
    ShardSnapshot, SharedSnapshot, Snapshot, TransportName,
};
pub use tcp_relay::{
    BIND_TIMEOUT, CONNECT_TIMEOUT, ConnectionEnd, ConnectionId, Direction,
    MAX_CONNECTIONS_PER_ALLOCATION, RelayProtocol,
};
pub use txcache::RELAY_BIND_ATTEMPTS;

use allocation::Allocation;
use event::EventQueue;
use table::Table;
use tcp_relay::TcpRelays;
use timers::{TimerKey, Timers};
use txcache::{BindFailures, Graveyard, RedirectMemory};

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
    /// Port pools, reservations, quarantines and quotas, common to every shard.
    shared: Arc<Shared>,
    timers: Timers,
    /// RFC 6062: TCP allocations and their peer connections.
    tcp: TcpRelays,
    commands: VecDeque<Command>,
    events: EventQueue,
    drops: DropCounters,
    graveyard: Graveyard,
    redirected: RedirectMemory,
    bind_failures: BindFailures,
    /// The client and request of the last `handle_client` call if it created an
    /// allocation: the data path binds its relay ports before the answer leaves, and
    /// [`relay_bind_failed`](Server::relay_bind_failed) answers this request again with
    /// other ports. The buffer is reused (no allocation per Allocate).
    fresh_allocate: Option<FiveTuple>,
    fresh_request: Vec<u8>,
    draining: bool,
    redirects: redirect::Redirects,
    indication_counter: u64,
    error_responses: ErrorResponses,
    /// The request of the last `handle_client` verified its MESSAGE-INTEGRITY.
    authenticated: bool,
    /// The packet `handle_client` is answering.
    request: RequestShape,
}

/// What the unauthenticated answer to a packet may be: [`reply::AMPLIFICATION`] times its
/// size (`len`; unbounded over TCP/TLS), FINGERPRINT only if it had one.
#[derive(Clone, Copy, Default, Debug)]
struct RequestShape {
    len: usize,
    fingerprint: bool,
}

impl Server {
    /// `now` and `unix_now` anchor the clock: unix time at a later `now` is
    /// `unix_now + (now - anchor)` (nonces and TURN REST expiry use it). A single server:
    /// its port pools and quotas are its own.
    pub fn new(
        config: ServerConfig,
        credentials: CredentialStore,
        policy: PeerPolicy,
        nonce_key: NonceKey,
        now: Instant,
        unix_now: u64,
    ) -> Self {
        let shared = Shared::new(&config);
        Self::with_shared(
            config,
            credentials,
            policy,
            nonce_key,
            now,
            unix_now,
            shared,
        )
    }

    /// One shard of a relay: ports, reservations and quotas come from `shared`, which every
    /// shard holds (build it with [`Shared::new`] from the same config). Shards should get the
    /// same `nonce_key` so a nonce stays valid whichever shard checks it.
    ///
    /// # Panics
    /// If `shared` was built for another port range or other relay address families.
    pub fn with_shared(
        config: ServerConfig,
        credentials: CredentialStore,
        policy: PeerPolicy,
        nonce_key: NonceKey,
        now: Instant,
        unix_now: u64,
        shared: Arc<Shared>,
    ) -> Self {
        assert!(
            shared.fits(&config),
            "Server::with_shared: the Shared state was built for another port range or other \
             relay address families than this ServerConfig"
        );
        let nonces = Nonces::new(nonce_key, config.nonce_lifetime.as_secs().max(1));
        let tcp = TcpRelays::new(shared.draw_seed());
        Self {
            table: Table::new(shared.next_shard()),
            shared,
            nonces,
            credentials,
            policy,
            anchor: now,
            unix_anchor: unix_now,
            timers: Timers::default(),
            tcp,
            commands: VecDeque::new(),
            events: EventQueue::default(),
            drops: DropCounters::default(),
            graveyard: Graveyard::default(),
            redirected: RedirectMemory::default(),
            bind_failures: BindFailures::default(),
            fresh_allocate: None,
            fresh_request: Vec::new(),
            draining: false,
            redirects: redirect::Redirects::default(),
            indication_counter: 0,
            error_responses: ErrorResponses::default(),
            authenticated: false,
            request: RequestShape::default(),
            config,
        }
    }

    // ----- reload / operator controls -------------------------------------------------------

    /// New users and secrets (SIGHUP). Allocations stay; their next request is checked
    /// against the new store.
    pub fn set_credentials(&mut self, credentials: CredentialStore) {
        self.credentials = credentials;
    }

    /// New quotas, for every shard sharing this server's [`Shared`] (SIGHUP). Allocations
    /// over a lowered limit stay until they end.
    pub fn set_limits(&mut self, limits: Limits) {
        self.shared.set_limits(limits);
    }

    /// The quotas in force (the config's are only the initial ones).
    pub fn limits(&self) -> Limits {
        self.shared.limits()
    }

    /// The state this server shares with the other shards.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// New per-source limit for requests on 5-tuples without an allocation (SIGHUP); see
    /// [`ServerConfig::unauthenticated_rate`]. Buckets keep their tokens.
    pub fn set_unauthenticated_limit(&mut self, rate: u32, burst: u32) {
        self.config.unauthenticated_rate = rate;
        self.config.unauthenticated_burst = burst;
    }

    /// New global limit for the same requests, all sources together (SIGHUP); see
    /// [`ServerConfig::unauthenticated_global_rate`].
    pub fn set_unauthenticated_global_limit(&mut self, rate: u32, burst: u32) {
        self.config.unauthenticated_global_rate = rate;
        self.config.unauthenticated_global_burst = burst;
    }

    /// New alternate servers for 300 redirects (SIGHUP).
    pub fn set_alternate_servers(&mut self, alternates: Vec<SocketAddr>) {
        self.config.alternate_servers = alternates;
    }

    /// The other cluster nodes a full or draining shard may send clients to, as the control
    /// plane last heard from them (only healthy ones: up, not draining, heard from
    /// recently). Preferred over `alternate_servers`, which remain the fallback when none
    /// of them fits.
    pub fn set_redirect_targets(&mut self, targets: Vec<RedirectTarget>) {
        self.redirects.set_targets(targets);
    }

    /// The cluster snapshot in force.
    pub fn redirect_targets(&self) -> Vec<RedirectTarget> {
        self.redirects.targets().collect()
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
        self.authenticated = false;
        self.request = RequestShape {
            // Over TCP/TLS the handshake proved the source: nothing to amplify towards.
            len: if from.transport.is_stream() {
                usize::MAX
            } else {
                packet.len()
            },
            fingerprint: false,
        };
        // Nothing can be sent to port 0 (EINVAL): whoever claims it is spoofing.
        if from.client.port() == 0 {
            return self.drop_client(DropReason::SourcePortZero);
        }
        self.fresh_allocate = None;
        // RFC 6062: a spliced client data connection carries a peer's bytes, not STUN or
        // ChannelData; the data path must not frame it.
        if from.transport.is_stream() && self.tcp.is_data_connection(&from) {
            return self.drop_client(DropReason::Unexpected);
        }
        match stun::classify(packet) {
            PacketKind::ChannelData => self.client_channel_data(now, from, packet, out),
            PacketKind::Stun => self.client_stun(now, from, packet, out),
            PacketKind::Other => self.drop_client(DropReason::Malformed),
        }
    }

    /// Whether the packet of the last [`handle_client`](Self::handle_client) call was a
    /// request whose MESSAGE-INTEGRITY verified (whatever the answer). A stream data path
    /// keeps a connection without an allocation open only for such requests: anyone can
    /// send Bindings or collect 401s.
    pub fn last_request_authenticated(&self) -> bool {
        self.authenticated
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

    /// A TCP/TLS client connection closed: the allocation made on it ends (RFC 8656 §5: the
    /// allocation is bound to the 5-tuple, which no longer exists). A client data connection
    /// (RFC 6062) takes its peer connection with it.
    pub fn client_closed(&mut self, now: Instant, from: FiveTuple) {
        if let Some(id) = self.table.id_by_tuple(&from) {
            self.remove_allocation(now, id, Removal::Closed(CloseReason::ClientClosed), None);
        } else if let Some(conn) = self.tcp.by_data(&from) {
            self.connection_closed(now, conn);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.timers.next(), self.tcp.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires allocations, permissions, channel bindings, channel cool-downs, reservations
    /// and port quarantines due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((_, key)) = self.timers.pop_due(now) {
            self.fire(now, key);
        }
        while let Some(conn) = self.tcp.pop_due(now) {
            self.connection_deadline(now, conn);
        }
        self.graveyard.prune(now);
        self.redirected.prune(now);
        self.bind_failures.prune(now);
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

    /// Allocations held by this server (all shards: [`Shared::allocation_count`]).
    pub fn allocation_count(&self) -> usize {
        self.table.len()
    }

    /// Relay ports in use (allocated, reserved or quarantined) per family, all shards
    /// together: (v4, v6).
    pub fn ports_in_use(&self) -> (u32, u32) {
        self.shared.ports_in_use()
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

    /// A reply written to `out` goes back to the client; one that did not fit is a drop, and
    /// so is an unauthenticated one more than [`reply::AMPLIFICATION`] times the request.
    fn reply_or_drop<'p>(&mut self, reply: Option<usize>) -> ClientOutput<'p> {
        match reply {
            Some(len) if !self.authenticated && len > self.answer_budget() => {
                self.drop_client(DropReason::Amplification)
            }
            Some(len) => ClientOutput::Reply { len },
            None => self.drop_client(DropReason::BufferTooSmall),
        }
    }

    /// Transaction id for an indication the server sends (Data, ConnectionAttempt): unique
    /// per server, no randomness needed (RFC 8656 §10.3 leaves its value to the server).
    fn next_indication_txid(&mut self) -> stun::TransactionId {
        self.indication_counter = self.indication_counter.wrapping_add(1);
        let mut t = [0u8; 12];
        t[..4].copy_from_slice(b"rly\0");
        t[4..].copy_from_slice(&self.indication_counter.to_be_bytes());
        stun::TransactionId(t)
    }

    /// A peer on the relay bind address and a relay port is another allocation of this
    /// relay (a hairpinning datagram, or a Connect dialled to the bind address): its
    /// clients know it by the public address, and permitted that one.
    fn peer_as_clients_see_it(&self, peer: SocketAddr) -> SocketAddr {
        match self.relay_addr(Family::of(peer.ip())) {
            Some(r)
                if peer.ip() == r.bind
                    && r.bind != r.public
                    && self.config.ports.contains(&peer.port()) =>
            {
                SocketAddr::new(r.public, peer.port())
            }
            _ => peer,
        }
    }

    fn clamp_lifetime(&self, requested: Option<u32>) -> Duration {
        let default = self.config.default_lifetime;
        let max = self.config.max_lifetime.max(default);
        match requested {
            None => default,
            Some(secs) => Duration::from_secs(u64::from(secs)).clamp(default, max),
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("allocations", &self.table.len())
            .field("shared", &self.shared)
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}
