//! What the shards of one relay share: relay port pools, EVEN-PORT reservations, quarantined
//! ports and the allocation quotas.
//!
//! The daemon runs several data-path threads, each owning a [`Server`](super::Server).
//! SO_REUSEPORT spreads clients over them by 5-tuple, so the Allocate that redeems a
//! RESERVATION-TOKEN, or a user's next allocation, can land on any shard: ports and quotas
//! must be counted once for the whole relay. All of it sits behind one mutex, taken only when
//! an allocation is created or removed and when a port is quarantined or released by a timer
//! (control-plane rate). The data path reads atomics only ([`LivePorts`], the counters).
//!
//! Still sans-IO: callers pass `now`, and ports and tokens come from one generator seeded with
//! [`ServerConfig::port_seed`], so Servers driven from one thread behave deterministically.
//!
//! Split in three: this file holds the lock, the pools and what a request or timer does to
//! them; [`quota`] the limits and owners the counts are kept by (plain data); `handover`
//! the snapshot's side (taken and restored only at an upgrade).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::allocation::{Family, Relayed};
use super::config::{PORT_QUARANTINE, RESERVATION_LIFETIME, ServerConfig};
use super::ports::{LivePorts, PortPool, Rng, Want};
use super::source_rate::{Bucket, SourceBuckets};
use super::timers::TimerKey;
use crate::auth::CredentialKind;

mod handover;
mod quota;

pub(crate) use quota::Owner;
use quota::uncount;
pub use quota::{Limits, source_of};

/// An EVEN-PORT reservation (RFC 8656 §7.2, R bit): `port` is held for the token's owner.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Reservation {
    pub family: Family,
    pub port: u16,
    pub expires: Instant,
}

/// Where the primary relayed port of a new allocation comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PortAsk {
    /// The port held under this RESERVATION-TOKEN (its family is the reservation's).
    Reserved([u8; 8]),
    /// A fresh port of this family and kind.
    Pick(Family, Want),
}

/// Why [`Shared::admit`] refused; nothing was taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Refusal {
    /// `max_allocations` reached.
    Full,
    /// The username's quota (`max_allocations_per_user`, or `max_allocations_per_rest_user`
    /// for a TURN REST username) reached.
    UserQuota(CredentialKind),
    /// `max_allocations_per_source` reached for this source ([`source_of`]).
    SourceQuota(IpAddr),
    /// No free port of the wanted kind.
    NoPort,
    /// The RESERVATION-TOKEN is unknown, already used or expired; the reason phrase.
    Reservation(&'static str),
}

/// What [`Shared::admit`] took and counted. Inserting the allocation commits it; if the
/// allocation is not made after all, [`Shared::undo`] gives everything back.
#[must_use]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grant {
    pub family: Family,
    pub port: u16,
    /// ADDITIONAL-ADDRESS-FAMILY: the IPv6 port, or the ADDRESS-ERROR-CODE (440/508) for it.
    pub second: Option<Result<u16, u16>>,
    /// EVEN-PORT with R: the token now holding `port + 1`, and when it lapses.
    pub new_token: Option<([u8; 8], Instant)>,
    /// The reservation this allocation redeemed (restored by `undo`).
    redeemed: Option<([u8; 8], Reservation)>,
}

#[derive(Debug)]
struct State {
    /// Indexed by [`Family::idx`]; `None` where that family has no relay address.
    pools: [Option<PortPool>; 2],
    reservations: HashMap<[u8; 8], Reservation>,
    quarantined: HashMap<(Family, u16), Instant>,
    per_user: HashMap<Arc<str>, usize>,
    /// TURN REST allocations per source ([`source_of`]).
    per_source: HashMap<IpAddr, usize>,
    rng: Rng,
}

impl State {
    fn release_port(&mut self, family: Family, port: u16) {
        if let Some(pool) = &mut self.pools[family.idx()] {
            pool.release(port);
        }
    }

    fn uncount(&mut self, owner: Owner<'_>) {
        uncount(&mut self.per_user, &**owner.user);
        if let Some(source) = owner.source() {
            uncount(&mut self.per_source, &source);
        }
    }
}

/// The relay-wide state every shard's [`Server`](super::Server) holds an `Arc` of; build it
/// once with [`Shared::new`] and pass it to [`Server::with_shared`](super::Server::with_shared).
pub struct Shared {
    state: Mutex<State>,
    /// Ports held by live allocations, per family (same `None`s as the pools).
    live: [Option<LivePorts>; 2],
    /// The subset of `live` held by RFC 6062 TCP allocations: the only ports of the relay
    /// address a Connect may dial (anything else listening there is not ours).
    tcp: [Option<LivePorts>; 2],
    ports: RangeInclusive<u16>,
    /// Written under the lock, read without it.
    allocations: AtomicUsize,
    max_allocations: AtomicUsize,
    max_allocations_per_user: AtomicUsize,
    max_allocations_per_rest_user: AtomicUsize,
    max_allocations_per_source: AtomicUsize,
    next_shard: AtomicU32,
    /// Requests per source on 5-tuples without an allocation (behind its own lock).
    sources: SourceBuckets,
    /// Bandwidth limits and the users' buckets.
    bandwidth: super::bandwidth::Limits,
}

impl Shared {
    /// Pools for the families `config` has relay addresses for, over `config.ports`; quotas
    /// from `config`'s limits; the port and token generator seeded with `config.port_seed`.
    pub fn new(config: &ServerConfig) -> Arc<Self> {
        let has = |r: &Option<super::RelayAddr>| r.is_some();
        let families = [has(&config.relay_v4), has(&config.relay_v6)];
        let pools = families.map(|on| on.then(|| PortPool::new(config.ports.clone())));
        let live = families.map(|on| on.then(|| LivePorts::new(config.ports.clone())));
        let tcp = families.map(|on| on.then(|| LivePorts::new(config.ports.clone())));
        Arc::new(Self {
            state: Mutex::new(State {
                pools,
                reservations: HashMap::new(),
                quarantined: HashMap::new(),
                per_user: HashMap::new(),
                per_source: HashMap::new(),
                rng: Rng::new(config.port_seed),
            }),
            live,
            tcp,
            ports: config.ports.clone(),
            allocations: AtomicUsize::new(0),
            max_allocations: AtomicUsize::new(config.max_allocations),
            max_allocations_per_user: AtomicUsize::new(config.max_allocations_per_user),
            max_allocations_per_rest_user: AtomicUsize::new(config.max_allocations_per_rest_user),
            max_allocations_per_source: AtomicUsize::new(config.max_allocations_per_source),
            next_shard: AtomicU32::new(0),
            sources: SourceBuckets::new(config.port_seed),
            bandwidth: super::bandwidth::Limits::new(
                config.max_bps_per_allocation,
                config.max_bps_per_user,
            ),
        })
    }

    /// Takes a token from the bucket of `ip`'s source ([`source_of`]), then from the
    /// global one; `false`: the request gets no answer. A rate of 0: that bucket is off.
    pub(crate) fn admit_unauthenticated(
        &self,
        now: Instant,
        ip: IpAddr,
        source: Bucket,
        global: Bucket,
    ) -> bool {
        self.sources.allow(now, ip, source, global)
    }

    pub(crate) fn bandwidth(&self) -> &super::bandwidth::Limits {
        &self.bandwidth
    }

    /// `(max_bps_per_allocation, max_bps_per_user)` in bit/s, 0 for none.
    pub fn bandwidth_limits(&self) -> (u64, u64) {
        self.bandwidth.bps()
    }

    // ----- admin view -----------------------------------------------------------------------

    /// Allocations held on all shards (lock-free).
    pub fn allocation_count(&self) -> usize {
        self.allocations.load(Ordering::Relaxed)
    }

    /// Allocations `user` holds on all shards.
    pub fn user_allocation_count(&self, user: &str) -> usize {
        self.lock().per_user.get(user).copied().unwrap_or(0)
    }

    /// TURN REST allocations from `source` ([`source_of`] of a client IP) on all shards.
    pub fn source_allocation_count(&self, source: IpAddr) -> usize {
        let source = source_of(source);
        self.lock().per_source.get(&source).copied().unwrap_or(0)
    }

    /// Relay ports in use (allocated, reserved or quarantined) per family: (v4, v6).
    pub fn ports_in_use(&self) -> (u32, u32) {
        let s = self.lock();
        let used = |p: &Option<PortPool>| p.as_ref().map_or(0, PortPool::used);
        (used(&s.pools[0]), used(&s.pools[1]))
    }

    /// EVEN-PORT reservations waiting for their second Allocate.
    pub fn reservation_count(&self) -> usize {
        self.lock().reservations.len()
    }

    /// Ports kept out of circulation because a data path could not bind them.
    pub fn quarantined_count(&self) -> usize {
        self.lock().quarantined.len()
    }

    /// The quotas in force (lock-free).
    pub fn limits(&self) -> Limits {
        Limits {
            max_allocations: self.max_allocations.load(Ordering::Relaxed),
            max_allocations_per_user: self.max_allocations_per_user.load(Ordering::Relaxed),
            max_allocations_per_rest_user: self
                .max_allocations_per_rest_user
                .load(Ordering::Relaxed),
            max_allocations_per_source: self.max_allocations_per_source.load(Ordering::Relaxed),
        }
    }

    /// New quotas for every shard (SIGHUP). Allocations over a lowered limit stay until they
    /// end; only new ones are refused.
    pub fn set_limits(&self, limits: Limits) {
        let Limits {
            max_allocations,
            max_allocations_per_user,
            max_allocations_per_rest_user,
            max_allocations_per_source,
        } = limits;
        let store = |a: &AtomicUsize, v| a.store(v, Ordering::Relaxed);
        store(&self.max_allocations, max_allocations);
        store(&self.max_allocations_per_user, max_allocations_per_user);
        store(
            &self.max_allocations_per_rest_user,
            max_allocations_per_rest_user,
        );
        store(&self.max_allocations_per_source, max_allocations_per_source);
    }

    // ----- for the Servers ------------------------------------------------------------------

    /// A number for a new Server, carried in its allocation ids so they stay distinct
    /// across shards.
    pub(crate) fn next_shard(&self) -> u32 {
        self.next_shard.fetch_add(1, Ordering::Relaxed)
    }

    /// `true` if a Server with `config` can share this state: same port range, and pools for
    /// exactly the families it relays.
    pub(crate) fn fits(&self, config: &ServerConfig) -> bool {
        self.ports == config.ports
            && self.live[0].is_some() == config.relay_v4.is_some()
            && self.live[1].is_some() == config.relay_v6.is_some()
    }

    /// `true` if `port` is held by a live allocation of some shard (lock-free: data path).
    pub(crate) fn is_live(&self, family: Family, port: u16) -> bool {
        self.live[family.idx()]
            .as_ref()
            .is_some_and(|l| l.contains(port))
    }

    /// `true` if `port` is the relayed port of a live RFC 6062 TCP allocation of some shard
    /// (lock-free).
    pub(crate) fn is_tcp_relay(&self, family: Family, port: u16) -> bool {
        self.tcp[family.idx()]
            .as_ref()
            .is_some_and(|l| l.contains(port))
    }

    /// A TCP allocation now listens on `port` (cleared by [`release`](Self::release)).
    pub(crate) fn mark_tcp(&self, family: Family, port: u16) {
        if let Some(l) = &self.tcp[family.idx()] {
            l.set(port);
        }
    }

    /// A seed for a generator of a Server's own (CONNECTION-IDs), drawn from the relay's
    /// generator: distinct per Server, unpredictable without `port_seed`.
    pub(crate) fn draw_seed(&self) -> u64 {
        self.lock().rng.next_u64()
    }

    /// The family a RESERVATION-TOKEN holds a port of; `Err(reason)` for 508. An expired
    /// reservation whose timer has not fired yet is reaped here.
    pub(crate) fn reservation_family(
        &self,
        now: Instant,
        token: [u8; 8],
    ) -> Result<Family, &'static str> {
        let mut s = self.lock();
        match s.reservations.get(&token).copied() {
            Some(r) if now < r.expires => Ok(r.family),
            Some(r) => {
                s.reservations.remove(&token);
                s.release_port(r.family, r.port);
                Err("Reservation expired")
            }
            None => Err("Unknown RESERVATION-TOKEN"),
        }
    }

    /// Checks the quotas and takes the ports of a new allocation by `owner`, counting it at
    /// once so that two shards cannot both admit the last one.
    pub(crate) fn admit(
        &self,
        now: Instant,
        owner: Owner<'_>,
        ask: PortAsk,
        additional_v6: bool,
    ) -> Result<Grant, Refusal> {
        let limits = self.limits();
        let mut s = self.lock();
        if self.allocations.load(Ordering::Relaxed) >= limits.max_allocations {
            return Err(Refusal::Full);
        }
        let held = s.per_user.get(owner.user).copied().unwrap_or(0);
        if held >= limits.per_user(owner.credential) {
            return Err(Refusal::UserQuota(owner.credential));
        }
        let source = owner.source();
        if let Some(source) = source
            && s.per_source.get(&source).copied().unwrap_or(0) >= limits.max_allocations_per_source
        {
            return Err(Refusal::SourceQuota(source));
        }
        let (family, port, redeemed, new_token) = match ask {
            PortAsk::Reserved(token) => match s.reservations.get(&token).copied() {
                Some(r) if now < r.expires => {
                    // Already busy in the pool: it moves from the reservation to the allocation.
                    s.reservations.remove(&token);
                    (r.family, r.port, Some((token, r)), None)
                }
                Some(r) => {
                    s.reservations.remove(&token);
                    s.release_port(r.family, r.port);
                    return Err(Refusal::Reservation("Reservation expired"));
                }
                None => return Err(Refusal::Reservation("Unknown RESERVATION-TOKEN")),
            },
            PortAsk::Pick(family, want) => {
                let random = s.rng.next_u64();
                let Some(pool) = &mut s.pools[family.idx()] else {
                    return Err(Refusal::NoPort);
                };
                let Some(port) = pool.allocate(random, want) else {
                    return Err(Refusal::NoPort);
                };
                let new_token = (want == Want::EvenPair).then(|| {
                    let token = loop {
                        let t = s.rng.token();
                        if !s.reservations.contains_key(&t) {
                            break t;
                        }
                    };
                    let expires = now + RESERVATION_LIFETIME;
                    let r = Reservation {
                        family,
                        port: port + 1,
                        expires,
                    };
                    s.reservations.insert(token, r);
                    (token, expires)
                });
                (family, port, None, new_token)
            }
        };
        let second = additional_v6.then(|| {
            let random = s.rng.next_u64();
            match &mut s.pools[Family::V6.idx()] {
                None => Err(440),
                Some(pool) => pool.allocate(random, Want::Any).ok_or(508),
            }
        });
        self.mark_live(family, port, true);
        if let Some(Ok(p)) = second {
            self.mark_live(Family::V6, p, true);
        }
        *s.per_user.entry(owner.user.clone()).or_insert(0) += 1;
        if let Some(source) = source {
            *s.per_source.entry(source).or_insert(0) += 1;
        }
        self.allocations.fetch_add(1, Ordering::Relaxed);
        Ok(Grant {
            family,
            port,
            second,
            new_token,
            redeemed,
        })
    }

    /// Gives back everything `grant` took: the allocation was not made after all.
    pub(crate) fn undo(&self, owner: Owner<'_>, grant: Grant) {
        let mut s = self.lock();
        self.mark_live(grant.family, grant.port, false);
        match grant.redeemed {
            Some((token, r)) => {
                s.reservations.insert(token, r);
            }
            None => s.release_port(grant.family, grant.port),
        }
        if let Some((token, _)) = grant.new_token {
            s.reservations.remove(&token);
            s.release_port(grant.family, grant.port + 1);
        }
        if let Some(Ok(p)) = grant.second {
            self.mark_live(Family::V6, p, false);
            s.release_port(Family::V6, p);
        }
        s.uncount(owner);
        self.allocations.fetch_sub(1, Ordering::Relaxed);
    }

    /// An allocation of `owner` with these relayed addresses ended. `quarantine`: the port that
    /// stays busy for [`PORT_QUARANTINE`]; returns `true` if it was put there (the caller
    /// schedules the timer that frees it).
    pub(crate) fn release(
        &self,
        now: Instant,
        owner: Owner<'_>,
        relayed: &[Option<Relayed>; 2],
        quarantine: Option<(Family, u16)>,
    ) -> bool {
        let mut s = self.lock();
        let mut quarantined = false;
        for (family, r) in [Family::V4, Family::V6].into_iter().zip(relayed) {
            let Some(r) = r else { continue };
            let port = r.bind.port();
            self.mark_live(family, port, false);
            if quarantine == Some((family, port)) {
                s.quarantined.insert((family, port), now + PORT_QUARANTINE);
                quarantined = true;
            } else {
                s.release_port(family, port);
            }
        }
        s.uncount(owner);
        self.allocations.fetch_sub(1, Ordering::Relaxed);
        quarantined
    }

    /// Takes a port no allocation holds out of circulation for [`PORT_QUARANTINE`]; `true` if
    /// the caller must schedule the timer. A port reserved or in use stays as it is.
    pub(crate) fn quarantine(&self, now: Instant, family: Family, port: u16) -> bool {
        let mut s = self.lock();
        let Some(pool) = &mut s.pools[family.idx()] else {
            return false;
        };
        if !pool.take(port) && !s.quarantined.contains_key(&(family, port)) {
            return false;
        }
        s.quarantined.insert((family, port), now + PORT_QUARANTINE);
        true
    }

    /// Reservation timer: frees the reserved port if the token is still unused and due.
    pub(crate) fn expire_reservation(&self, now: Instant, token: [u8; 8]) {
        let mut s = self.lock();
        if let Some(r) = s.reservations.get(&token).copied()
            && r.expires <= now
        {
            s.reservations.remove(&token);
            s.release_port(r.family, r.port);
        }
    }

    /// Quarantine timer: frees the port if its (possibly extended) quarantine is over.
    pub(crate) fn expire_quarantine(&self, now: Instant, family: Family, port: u16) {
        let mut s = self.lock();
        if let Some(&until) = s.quarantined.get(&(family, port))
            && until <= now
        {
            s.quarantined.remove(&(family, port));
            s.release_port(family, port);
        }
    }

    /// Deadlines of every reservation and quarantine, for a Server rebuilding its timers. A
    /// shard may thus also wake for another shard's entry: expiry is idempotent, the first
    /// timer to fire frees the port and the others find nothing to do.
    pub(crate) fn deadlines(&self, out: &mut Vec<(Instant, TimerKey)>) {
        let s = self.lock();
        for (token, r) in &s.reservations {
            out.push((r.expires, TimerKey::Reservation(*token)));
        }
        for (&(family, port), &until) in &s.quarantined {
            out.push((until, TimerKey::Quarantine(family, port)));
        }
    }

    fn mark_live(&self, family: Family, port: u16, on: bool) {
        if let Some(l) = &self.live[family.idx()] {
            if on { l.set(port) } else { l.clear(port) }
        }
        if !on && let Some(l) = &self.tcp[family.idx()] {
            l.clear(port);
        }
    }

    /// The state stays consistent even if a shard panicked while holding the lock: no
    /// section below can panic half-way.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Without the generator: its seed would predict reservation tokens.
        f.debug_struct("Shared")
            .field("ports", &self.ports)
            .field("allocations", &self.allocation_count())
            .field("limits", &self.limits())
            .finish_non_exhaustive()
    }
}
