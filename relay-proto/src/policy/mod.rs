//! Which peers a client may reach through the relay.
//!
//! A TURN relay is an open proxy into whatever network it sits in, so by default it refuses
//! peers in loopback, private, link-local (cloud metadata!), multicast and reserved space,
//! including IPv6 addresses that merely carry such an IPv4 address.
//!
//! Order of evaluation for a peer:
//! 1. explicit `deny` entries (plain address; IPv4 entries also match embedded IPv4) → Deny;
//! 2. one of the relay's own addresses → Hairpin (plain form only: an embedded copy of a
//!    relay address is refused, since it would leave through a translator or tunnel rather
//!    than reach our own allocation);
//! 3. explicit `allow` entries (operator exceptions such as an internal media server) → Allow;
//!    an IPv4 entry also vouches for that address when it is embedded, so
//!    `::ffff:192.0.2.10` is allowed by `192.0.2.0/24` exactly like `192.0.2.10`;
//! 4. default-deny ranges, then every embedded IPv4 address not vouched for by `allow` → Deny;
//! 5. otherwise Allow.
//!
//! An IPv6 `allow` entry covering an embedding prefix (say `2002::/16`) allows the whole
//! prefix without looking at the embedded addresses: that is what the operator asked for.
//! Local-use NAT64 (64:ff9b:1::/48) is judged under every RFC 6052 layout at once, so without
//! an `allow` entry most such addresses are refused; the translator's layout is unknown here.
//! The documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32)
//! are deliberately not denied: test networks use them as "the internet".

mod embedded;
mod reason;

use std::net::IpAddr;

use ipnet::IpNet;

pub use reason::{DefaultDeny, DenyReason, EmbeddedDeny, EmbeddingForm};

use embedded::{Embedded, embedded_v4};

/// The verdict on a peer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerVerdict {
    /// Relay to it.
    Allow,
    /// One of the relay's own addresses: deliver to the allocation behind it, never out.
    Hairpin,
    /// Refuse (403 Forbidden); the reason goes into the log line.
    Deny(DenyReason),
}

/// The peer address policy. Cheap to query; build it once from the configuration.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    relay_addresses: Vec<IpAddr>,
}

impl PeerPolicy {
    /// `relay_addresses`: the relay's own public and bind addresses. IPv4-mapped spellings
    /// are normalised to IPv4, and unspecified (wildcard bind) addresses are dropped so that
    /// a peer of 0.0.0.0 or :: is refused rather than treated as a hairpin.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>, relay_addresses: Vec<IpAddr>) -> Self {
        let mut relay_addresses: Vec<IpAddr> = relay_addresses
            .into_iter()
            .map(|a| a.to_canonical())
            .filter(|a| !a.is_unspecified())
            .collect();
        relay_addresses.sort_unstable();
        relay_addresses.dedup();
        Self {
            allow: allow.into_iter().map(|n| n.trunc()).collect(),
            deny: deny.into_iter().map(|n| n.trunc()).collect(),
            relay_addresses,
        }
    }

    /// Whether the operator's `allow` list names `ip` (and `deny` does not). The server asks
    /// this for a peer on one of the relay's own addresses but outside the relay port
    /// range: a service on the relay host, reachable only when explicitly allowed.
    pub fn is_allow_listed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !self.deny.iter().any(|n| n.contains(&ip)) && self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Judges `peer` (see the module docs for the order of the rules).
    pub fn check(&self, peer: IpAddr) -> PeerVerdict {
        let embedded = match peer {
            IpAddr::V6(a) => embedded_v4(a),
            IpAddr::V4(_) => Embedded::none(),
        };
        let embedded = embedded.as_slice();

        if let Some(net) = self.deny.iter().find(|n| n.contains(&peer)) {
            return PeerVerdict::Deny(DenyReason::Configured(*net));
        }
        for &(form, v4) in embedded {
            if let Some(net) = self.deny.iter().find_map(|n| match n {
                IpNet::V4(n) if n.contains(&v4) => Some(*n),
                _ => None,
            }) {
                let inner = EmbeddedDeny::Configured(net);
                return PeerVerdict::Deny(DenyReason::Embedded { form, inner });
            }
        }

        if self.relay_addresses.contains(&peer) {
            return PeerVerdict::Hairpin;
        }
        for &(form, v4) in embedded {
            if self.relay_addresses.contains(&IpAddr::V4(v4)) {
                let inner = EmbeddedDeny::RelayAddress(v4);
                return PeerVerdict::Deny(DenyReason::Embedded { form, inner });
            }
        }

        if self.allow.iter().any(|n| n.contains(&peer)) {
            return PeerVerdict::Allow;
        }

        if let Some(range) = DefaultDeny::of(peer) {
            return PeerVerdict::Deny(DenyReason::Default(range));
        }
        for &(form, v4) in embedded {
            let vouched = self.allow.iter().any(|n| match n {
                IpNet::V4(n) => n.contains(&v4),
                IpNet::V6(_) => false,
            });
            if vouched {
                continue;
            }
            if let Some(range) = DefaultDeny::of_v4(v4) {
                let inner = EmbeddedDeny::Default(range);
                return PeerVerdict::Deny(DenyReason::Embedded { form, inner });
            }
        }
        PeerVerdict::Allow
    }
}

#[cfg(test)]
mod tests;
