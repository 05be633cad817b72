//! Which peers a client may reach through the relay.
//!
//! A TURN relay is an open proxy into whatever network it sits in, so by default it refuses
//! peers in loopback, private, link-local (cloud metadata!), multicast and reserved space,
//! including IPv6 addresses that merely carry such an IPv4 address.
//!
//! Order of evaluation for a peer:
//! 1. explicit `deny` entries (plain address; IPv4 entries also match embedded IPv4) → Deny;
//! 2. one of the relay's relay addresses → Hairpin (plain form only: an embedded copy of an
//!    address of the relay host is refused, since it would leave through a translator or
//!    tunnel rather than reach our own allocation); any other address of the relay host (a
//!    listener, see [`PeerPolicy::with_host_addresses`]) → Deny, unless `allow` names exactly
//!    that address (/32 or /128): a broad `allow` entry that happens to contain the relay
//!    host must not open its TURN listeners or admin port to clients (a TURN loop);
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
    /// The relay host's other addresses (listeners), minus `relay_addresses`.
    host_addresses: Vec<IpAddr>,
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
            host_addresses: Vec::new(),
        }
    }

    /// The relay host's other addresses (its listeners): peers there are services of the
    /// relay host, not relays, and are refused unless allow-listed exactly (see
    /// [`is_host_allow_listed`](Self::is_host_allow_listed)). Relay addresses among them
    /// stay hairpins; spellings are normalised as in [`new`](Self::new).
    pub fn with_host_addresses(mut self, host: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut host: Vec<IpAddr> = host
            .into_iter()
            .map(|a| a.to_canonical())
            .filter(|a| !a.is_unspecified() && !self.relay_addresses.contains(a))
            .collect();
        host.sort_unstable();
        host.dedup();
        self.host_addresses = host;
        self
    }

    /// Whether `ip` is an address of the relay host (relay or listener address).
    pub fn is_host_address(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.relay_addresses.contains(&ip) || self.host_addresses.contains(&ip)
    }

    /// Whether the operator's `allow` list names exactly `ip` as a single host (/32 or
    /// /128), and `deny` does not cover it. Services of the relay host (its listeners, the
    /// admin API, ssh) are reachable only so: a broad entry that merely contains the relay
    /// host's address is not taken as consent.
    pub fn is_host_allow_listed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !self.deny.iter().any(|n| n.contains(&ip))
            && self
                .allow
                .iter()
                .any(|n| n.prefix_len() == n.max_prefix_len() && n.addr() == ip)
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
        if self.host_addresses.contains(&peer) {
            if self.is_host_allow_listed(peer) {
                return PeerVerdict::Allow;
            }
            // Name the rule the operator would look for: a default range (loopback admin
            // port) unless their allow list covers it, then the relay-host rule.
            let broadly_allowed = self.allow.iter().any(|n| n.contains(&peer));
            return PeerVerdict::Deny(match DefaultDeny::of(peer) {
                Some(range) if !broadly_allowed => DenyReason::Default(range),
                _ => DenyReason::RelayHost(peer),
            });
        }
        for &(form, v4) in embedded {
            if self.is_host_address(IpAddr::V4(v4)) {
                // A default range names the rule better (the loopback admin address).
                let inner = match DefaultDeny::of_v4(v4) {
                    Some(range) => EmbeddedDeny::Default(range),
                    None => EmbeddedDeny::RelayAddress(v4),
                };
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
