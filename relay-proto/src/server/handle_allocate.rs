//! Allocate (RFC 8656 §7.2, dual stack per §7.2/RFC 8656 ADDITIONAL-ADDRESS-FAMILY).
//!
//! All checks and port choices happen before anything is recorded, and the response is
//! built before the allocation is inserted: a refused or unanswerable request leaves no state.
//! Quotas, ports and reservations are the relay's, shared by all shards: `Shared::admit`
//! checks and takes them in one step, `Shared::undo` gives them back.
//!
//! REQUESTED-TRANSPORT TCP (RFC 6062 §5.1) makes a TCP allocation: same ports from the same
//! pools, announced to the data path with `protocol: Tcp` so it listens instead of binding
//! a UDP socket.

use std::net::SocketAddr;
use std::time::Instant;

use crate::auth::CredentialKind;
use crate::stun::{
    AdditionalAddressFamily, AddressErrorCode, AddressFamily, AlternateServer, Attr, DontFragment,
    EvenPort, Lifetime, Message, RequestedAddressFamily, RequestedTransport, ReservationToken,
    XorMappedAddress, XorRelayedAddress,
};

use super::Server;
use super::allocation::{Allocation, Counters, Family, Relayed};
use super::auth_check::Auth;
use super::command::Command;
use super::event::{CapacityLimit, Event};
use super::five_tuple::FiveTuple;
use super::ports::Want;
use super::shared::{Owner, PortAsk, Refusal};
use super::tcp_relay::RelayProtocol;
use super::timers::TimerKey;

/// RFC 8656 §14.7: REQUESTED-TRANSPORT for UDP.
const UDP: u8 = 17;
/// RFC 6062 §6.1: REQUESTED-TRANSPORT for TCP.
const TCP: u8 = 6;

/// An optional attribute that must be well-formed if present: `Err(reason)` for 400.
pub(crate) fn optional<'a, A: Attr<'a>>(msg: &Message<'a>) -> Result<Option<A>, String> {
    match msg.attr::<A>() {
        None => Ok(None),
        Some(Ok(a)) => Ok(Some(a)),
        Some(Err(e)) => Err(format!("Malformed attribute: {e}")),
    }
}

pub(crate) const fn family_of(f: AddressFamily) -> Family {
    match f {
        AddressFamily::V4 => Family::V4,
        AddressFamily::V6 => Family::V6,
    }
}

/// Everything parsed out of an Allocate request.
struct Request {
    protocol: RelayProtocol,
    family: Family,
    /// RESERVATION-TOKEN (checked fresh when parsed; redeemed by `Shared::admit`).
    reserved: Option<[u8; 8]>,
    even: Option<bool>,
    additional_v6: bool,
    dont_fragment: bool,
    lifetime: Option<u32>,
}

impl Server {
    pub(crate) fn allocate(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        auth: &Auth,
        out: &mut [u8],
    ) -> Option<usize> {
        let a = Some(auth);
        if self.table.id_by_tuple(&from).is_some() {
            return self.reply_error(from, msg, a, 437, "", out);
        }
        let req = match self.parse_allocate(now, from, msg) {
            Ok(r) => r,
            Err((code, why)) => return self.reply_error(from, msg, a, code, &why, out),
        };
        if self.relay_addr(req.family).is_none() {
            return self.reply_error(from, msg, a, 440, "", out);
        }
        if self.draining {
            return self.refuse_capacity(now, from, msg, auth, out);
        }
        // The data path could not bind the ports this transaction got: stop trying.
        let failed = self.bind_failures.count(now, &from, msg.transaction_id().0);
        if failed >= super::RELAY_BIND_ATTEMPTS {
            let why = "No relay port could be bound";
            return self.reply_error(from, msg, a, 508, why, out);
        }

        // Quotas and ports. From here on every failure must give back what was taken.
        let ask = match req.reserved {
            Some(token) => PortAsk::Reserved(token),
            None => PortAsk::Pick(
                req.family,
                match req.even {
                    None => Want::Any,
                    Some(false) => Want::Even,
                    Some(true) => Want::EvenPair,
                },
            ),
        };
        let owner = Owner {
            user: &auth.username,
            credential: auth.credential,
            client: from.client.ip(),
        };
        let grant = match self.shared.admit(now, owner, ask, req.additional_v6) {
            Ok(g) => g,
            Err(Refusal::Full) => {
                let max_allocations = self.shared.limits().max_allocations;
                self.capacity_reached(from, auth, CapacityLimit::Relay { max_allocations });
                return self.refuse_capacity(now, from, msg, auth, out);
            }
            Err(Refusal::UserQuota(credential)) => {
                let limits = self.shared.limits();
                let limit = match credential {
                    CredentialKind::Static => CapacityLimit::User {
                        max_allocations_per_user: limits.max_allocations_per_user,
                    },
                    CredentialKind::Rest => CapacityLimit::RestUser {
                        max_allocations_per_rest_user: limits.max_allocations_per_rest_user,
                    },
                };
                self.capacity_reached(from, auth, limit);
                return self.reply_error(from, msg, a, 486, "", out);
            }
            Err(Refusal::SourceQuota(source)) => {
                let limit = CapacityLimit::Source {
                    source,
                    max_allocations_per_source: self.shared.limits().max_allocations_per_source,
                };
                self.capacity_reached(from, auth, limit);
                return self.reply_error(from, msg, a, 486, "", out);
            }
            Err(Refusal::NoPort) => {
                return self.reply_error(from, msg, a, 508, "No relay port available", out);
            }
            Err(Refusal::Reservation(why)) => return self.reply_error(from, msg, a, 508, why, out),
        };
        let port = grant.port;
        let (second, address_error) = match grant.second {
            None => (None, None),
            Some(Ok(p)) => (Some(p), None),
            Some(Err(code)) => (None, Some(code)),
        };
        let new_token = grant.new_token;

        let relayed_of = |s: &Self, family: Family, port: u16| {
            s.relay_addr(family).map(|r| Relayed {
                bind: SocketAddr::new(r.bind, port),
                public: SocketAddr::new(r.public, port),
            })
        };
        let mut relayed = [None, None];
        relayed[grant.family.idx()] = relayed_of(self, grant.family, port);
        if let Some(p) = second {
            relayed[Family::V6.idx()] = relayed_of(self, Family::V6, p);
        }
        let lifetime = self.clamp_lifetime(req.lifetime);

        // The response first: if it cannot be written, nothing happened.
        let built = self.reply_success_with(msg, a, out, |w| {
            for r in relayed.iter().flatten() {
                w.attr(&XorRelayedAddress(r.public))?;
            }
            if let Some(code) = address_error {
                w.attr(&AddressErrorCode {
                    family: AddressFamily::V6,
                    code,
                    reason: super::reply::reason(code),
                })?;
            }
            w.attr(&Lifetime(lifetime.as_secs().min(u64::from(u32::MAX)) as u32))?;
            if let Some((t, _)) = new_token {
                w.attr(&ReservationToken(t))?;
            }
            w.attr(&XorMappedAddress(from.client))?;
            Ok(())
        });
        let Some(len) = built else {
            self.shared.undo(owner, grant);
            return None;
        };

        if let Some((token, expires)) = new_token {
            self.schedule(expires, TimerKey::Reservation(token));
        }
        let id = self.table.next_id();
        let user = auth.username.clone();
        self.table.insert(Allocation {
            id,
            client: from,
            user: user.clone(),
            credential: auth.credential,
            relayed,
            created: now,
            expires: now + lifetime,
            lifetime,
            permissions: Vec::new(),
            channels: Vec::new(),
            counters: Counters::default(),
            limit: self.shared.bandwidth().for_allocation(&user),
            dont_fragment: req.dont_fragment,
            last_response: None,
        });
        self.schedule(now + lifetime, TimerKey::Allocation(id));
        for r in relayed.iter().flatten() {
            self.commands.push_back(Command::AllocationCreated {
                id,
                client: from,
                relay: r.bind,
                public: r.public,
                user: user.clone(),
                protocol: req.protocol,
            });
        }
        if req.protocol == RelayProtocol::Tcp {
            self.tcp.add_allocation(id);
            // Every shard's Connect may dial it now (and only it: see `tcp_connect_target`).
            for r in relayed.iter().flatten() {
                self.shared.mark_tcp(Family::of(r.bind.ip()), r.bind.port());
            }
        }
        self.events.push(Event::AllocationCreated {
            id,
            user,
            client: from,
            relayed: relayed.iter().flatten().map(|r| r.public).collect(),
            lifetime,
        });
        self.remember(now, id, msg, &out[..len]);
        self.fresh_allocate = Some(from);
        self.fresh_request.clear();
        self.fresh_request.extend_from_slice(msg.as_bytes());
        Some(len)
    }

    /// Parses and cross-checks the attributes (RFC 8656 §7.2 steps 3-6); `Err((code, why))`.
    fn parse_allocate(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
    ) -> Result<Request, (u16, String)> {
        let bad = |why: String| (400, why);
        let protocol = match optional::<RequestedTransport>(msg).map_err(bad)? {
            None => return Err((400, "Missing REQUESTED-TRANSPORT".into())),
            Some(RequestedTransport(UDP)) => RelayProtocol::Udp,
            // RFC 6062 §5.1 answers a TCP relay asked over UDP with 400; 442 tells an RFC 8656
            // client plainly that this transport is not offered to it.
            // Offered only when the operator turned it on and the data path carries it.
            Some(RequestedTransport(TCP))
                if from.transport.is_stream() && self.config.relay_tcp && self.tcp.enabled =>
            {
                RelayProtocol::Tcp
            }
            Some(_) => return Err((442, String::new())),
        };
        let dont_fragment = optional::<DontFragment>(msg).map_err(bad)?.is_some();
        let token = optional::<ReservationToken>(msg).map_err(bad)?;
        let even = optional::<EvenPort>(msg).map_err(bad)?;
        // RFC 6062 §5.1: none of these mean anything for a TCP relay.
        if protocol == RelayProtocol::Tcp && (dont_fragment || token.is_some() || even.is_some()) {
            return Err(bad(
                "DONT-FRAGMENT, EVEN-PORT or RESERVATION-TOKEN with a TCP relay".into(),
            ));
        }
        let raf = optional::<RequestedAddressFamily>(msg).map_err(bad)?;
        let aaf = optional::<AdditionalAddressFamily>(msg).map_err(bad)?;
        let lifetime = optional::<Lifetime>(msg).map_err(bad)?.map(|l| l.0);
        if raf.is_some() && aaf.is_some() {
            return Err(bad(
                "REQUESTED-ADDRESS-FAMILY and ADDITIONAL-ADDRESS-FAMILY together".into(),
            ));
        }
        if token.is_some() && (even.is_some() || raf.is_some() || aaf.is_some()) {
            return Err(bad(
                "RESERVATION-TOKEN with EVEN-PORT or an address family".into()
            ));
        }
        if aaf.is_some_and(|f| f.0 != AddressFamily::V6) {
            return Err(bad("ADDITIONAL-ADDRESS-FAMILY must be IPv6".into()));
        }
        let mut family = raf.map_or(Family::V4, |f| family_of(f.0));
        let mut reserved = None;
        if let Some(ReservationToken(t)) = token {
            // Issued by any shard. Checked here so that its 508 comes before 440 or quota
            // answers; `admit` redeems it atomically (another shard may be quicker).
            family = self
                .shared
                .reservation_family(now, t)
                .map_err(|why| (508, why.to_owned()))?;
            reserved = Some(t);
        }
        Ok(Request {
            protocol,
            family,
            reserved,
            even: even.map(|e| e.0),
            additional_v6: aaf.is_some(),
            dont_fragment,
            lifetime,
        })
    }

    fn capacity_reached(&mut self, from: FiveTuple, auth: &Auth, limit: CapacityLimit) {
        self.events.push(Event::CapacityReached {
            user: auth.username.clone(),
            client: from,
            limit,
        });
    }

    /// Full or draining: 300 towards an alternate server when one fits, else 508.
    fn refuse_capacity(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        auth: &Auth,
        out: &mut [u8],
    ) -> Option<usize> {
        match self.pick_alternate(now, from, &auth.username) {
            Some(alt) => {
                self.redirected
                    .remember(now, from.client.ip(), &auth.username);
                self.events.push(Event::Redirected {
                    client: from,
                    alternate: alt,
                });
                self.reply_error_with(from, msg, Some(auth), 300, "", out, |w| {
                    w.attr(&AlternateServer(alt))?;
                    Ok(())
                })
            }
            None => self.reply_error(from, msg, Some(auth), 508, "", out),
        }
    }

    /// The least-loaded cluster node, else round-robin over the static alternates (see
    /// [`super::redirect`]). A client we redirected a moment ago (it came back) gets no
    /// static alternate again: that could be a ping-pong between two full relays. Cluster
    /// nodes are only offered while they have room, so they stay open to it (and to the
    /// many clients of one address and TURN REST name, as a load generator is).
    fn pick_alternate(&mut self, now: Instant, from: FiveTuple, user: &str) -> Option<SocketAddr> {
        let statics: &[SocketAddr] = if self.redirected.contains(now, from.client.ip(), user) {
            &[]
        } else {
            &self.config.alternate_servers
        };
        self.redirects
            .pick(from.client.is_ipv4(), from.listener, statics)
    }
}
