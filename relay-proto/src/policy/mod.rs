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
//! 3. explicit `allow` entries (operator exceptions such as an internal media server) of the
//!    allocation's protocol skip the default deny of step 4; an IPv4 entry also vouches for
//!    that address when it is embedded, so `::ffff:192.0.2.10` is allowed by `192.0.2.0/24`
//!    exactly like `192.0.2.10`;
//! 4. default-deny ranges, then every embedded IPv4 address not vouched for by `allow` → Deny;
//! 5. an address some `allow` entry names (directly or embedded) is confined to the
//!    protocols and ports of the entries naming it → Deny outside them; otherwise Allow.
//!
//! The `allow` list depends on who asks ([`Scope`]): REST-credential allocations (browsers)
//! use their own list when one is configured, static users (the media server) the main one.
//! "Relay host" in step 2 means every address the host's kernel delivers locally (the
//! daemon keeps that prefix list current from the routing table), not only the configured
//! ones: secondary and SLAAC addresses, or an internal NIC that is no listener.
//!
//! An IPv6 `allow` entry covering an embedding prefix (say `2002::/16`) allows the whole
//! prefix without looking at the embedded addresses: that is what the operator asked for.
//! Local-use NAT64 (64:ff9b:1::/48) is judged under every RFC 6052 layout at once, so without
//! an `allow` entry most such addresses are refused; the translator's layout is unknown here.
//! The documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32)
//! are deliberately not denied: test networks use them as "the internet".

mod embedded;
mod reason;
mod rule;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;

use crate::auth::CredentialKind;

pub use reason::{AllowList, DefaultDeny, DenyReason, EmbeddedDeny, EmbeddingForm};
pub use rule::{AllowRule, RuleError, Scope, parse_net};

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
    allow: Vec<AllowRule>,
    /// `[peers.rest] allow`: the list REST-credential allocations use instead of `allow`.
    rest_allow: Option<Vec<AllowRule>>,
    deny: Vec<IpNet>,
    relay_addresses: Vec<IpAddr>,
    /// The relay host's other addresses (listeners), minus `relay_addresses`.
    host_addresses: Vec<IpAddr>,
    /// Prefixes the host's kernel delivers locally (RTN_LOCAL routes), kept current by the
    /// daemon: every address of the host, secondary and SLAAC ones included.
    local: Vec<IpNet>,
}

impl PeerPolicy {
    /// `relay_addresses`: the relay's own public and bind addresses. IPv4-mapped spellings
    /// are normalised to IPv4, and unspecified (wildcard bind) addresses are dropped so that
    /// a peer of 0.0.0.0 or :: is refused rather than treated as a hairpin. `allow` entries
    /// here cover every port and both protocols (see [`with_allow`](Self::with_allow)).
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>, relay_addresses: Vec<IpAddr>) -> Self {
        let mut relay_addresses: Vec<IpAddr> = relay_addresses
            .into_iter()
            .map(|a| a.to_canonical())
            .filter(|a| !a.is_unspecified())
            .collect();
        relay_addresses.sort_unstable();
        relay_addresses.dedup();
        Self {
            allow: allow.into_iter().map(AllowRule::any).collect(),
            rest_allow: None,
            deny: deny.into_iter().map(|n| n.trunc()).collect(),
            relay_addresses,
            host_addresses: Vec::new(),
            local: Vec::new(),
        }
    }

    /// Replaces the `allow` list with entries that may carry a protocol and ports.
    pub fn with_allow(mut self, allow: Vec<AllowRule>) -> Self {
        self.allow = allow;
        self
    }

    /// The `allow` list for REST-credential allocations (`[peers.rest] allow`); `None`:
    /// they use the main list.
    pub fn with_rest_allow(mut self, rest: Option<Vec<AllowRule>>) -> Self {
        self.rest_allow = rest;
        self
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

    /// The prefixes the relay host routes locally (its kernel's RTN_LOCAL routes): a peer
    /// inside one is a service of the relay host, refused like a listener address. Relay
    /// addresses inside them stay hairpins.
    pub fn set_local_prefixes(&mut self, prefixes: impl IntoIterator<Item = IpNet>) {
        let mut local: Vec<IpNet> = prefixes.into_iter().map(|n| n.trunc()).collect();
        local.sort_unstable();
        local.dedup();
        self.local = local;
    }

    /// The locally routed prefixes in force.
    pub fn local_prefixes(&self) -> &[IpNet] {
        &self.local
    }

    /// Whether `ip` is an address of the relay host: a relay or listener address, or inside
    /// a locally routed prefix.
    pub fn is_host_address(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.relay_addresses.contains(&ip)
            || self.host_addresses.contains(&ip)
            || self.local.iter().any(|n| n.contains(&ip))
    }

    /// The `allow` list in force for `kind`.
    fn rules(&self, kind: CredentialKind) -> &[AllowRule] {
        match (kind, &self.rest_allow) {
            (CredentialKind::Rest, Some(rest)) => rest,
            _ => &self.allow,
        }
    }

    /// Whether the `allow` list of `scope` names exactly `peer`'s address as a single host
    /// (/32 or /128), for its protocol and port, and `deny` does not cover it. Services of
    /// the relay host (its listeners, the admin API, ssh) are reachable only so: a broad
    /// entry that merely contains the relay host's address is not taken as consent.
    pub fn is_host_allow_listed(&self, peer: SocketAddr, scope: Scope) -> bool {
        self.host_rule(peer.ip(), Some(peer.port()), scope)
    }

    /// [`is_host_allow_listed`](Self::is_host_allow_listed) for some port (`None`) or one.
    fn host_rule(&self, ip: IpAddr, port: Option<u16>, scope: Scope) -> bool {
        let ip = ip.to_canonical();
        !self.deny.iter().any(|n| n.contains(&ip))
            && self.rules(scope.kind).iter().any(|r| {
                r.is_single_host(ip)
                    && r.carries(scope.protocol)
                    && port.is_none_or(|p| r.ports().contains(&p))
            })
    }

    /// Judges `peer` on some port, for a static user's UDP allocation (see
    /// [`check_ip`](Self::check_ip)).
    pub fn check(&self, peer: IpAddr) -> PeerVerdict {
        self.check_ip(peer, Scope::STATIC_UDP)
    }

    /// Judges `peer` for a permission (TURN permissions are per IP): allowed if `scope` may
    /// reach some port of it. See the module docs for the order of the rules.
    pub fn check_ip(&self, peer: IpAddr, scope: Scope) -> PeerVerdict {
        self.judge(peer, None, scope)
    }

    /// Judges `peer` with its port (ChannelBind, Connect, and every datagram a client sends
    /// to a peer whose permission does not cover every port).
    pub fn check_port(&self, peer: SocketAddr, scope: Scope) -> PeerVerdict {
        self.judge(peer.ip(), Some(peer.port()), scope)
    }

    /// Whether `scope` may reach every port of `peer` (allowed or hairpin): only then may
    /// the kernel fast path take Send indications for the permission, since it does not
    /// check ports. A hairpin counts as every port: the relay port range is checked apart.
    pub fn allows_every_port(&self, peer: IpAddr, scope: Scope) -> bool {
        match self.check_ip(peer, scope) {
            PeerVerdict::Hairpin => true,
            PeerVerdict::Deny(_) => false,
            PeerVerdict::Allow if self.is_host_address(peer) => {
                let ip = peer.to_canonical();
                self.rules(scope.kind)
                    .iter()
                    .any(|r| r.is_single_host(ip) && r.carries(scope.protocol) && r.all_ports())
            }
            PeerVerdict::Allow => {
                let rules = self.rules(scope.kind);
                let mut covering = covering(rules, peer).peekable();
                covering.peek().is_none()
                    || covering.any(|r| r.carries(scope.protocol) && r.all_ports())
            }
        }
    }

    fn judge(&self, peer: IpAddr, port: Option<u16>, scope: Scope) -> PeerVerdict {
        let rules = self.rules(scope.kind);
        // Entries of the other protocol do not vouch for an address (they still confine
        // it, below).
        let allows = |ip: &IpAddr| {
            rules
                .iter()
                .any(|r| r.carries(scope.protocol) && r.net.contains(ip))
        };
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
        if self.host_addresses.contains(&peer) || self.local.iter().any(|n| n.contains(&peer)) {
            if self.host_rule(peer, port, scope) {
                return PeerVerdict::Allow;
            }
            // Name the rule the operator would look for: a default range (loopback admin
            // port) unless their allow list covers it, then the relay-host rule.
            return PeerVerdict::Deny(match DefaultDeny::of(peer) {
                Some(range) if !allows(&peer) => DenyReason::Default(range),
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

        // Named only by entries of the other protocol: say so (below), not which default
        // range.
        let other_protocol_only = {
            let mut named = covering(rules, peer).peekable();
            named.peek().is_some() && !named.any(|r| r.carries(scope.protocol))
        };
        if !allows(&peer) && !other_protocol_only {
            if let Some(range) = DefaultDeny::of(peer) {
                return PeerVerdict::Deny(DenyReason::Default(range));
            }
            for &(form, v4) in embedded {
                if allows(&IpAddr::V4(v4)) {
                    continue;
                }
                if let Some(range) = DefaultDeny::of_v4(v4) {
                    let inner = EmbeddedDeny::Default(range);
                    return PeerVerdict::Deny(DenyReason::Embedded { form, inner });
                }
            }
        }
        self.confine(peer, port, scope)
    }

    /// The last rule: an address that some `allow` entry names (directly or, for an IPv4
    /// entry, embedded in an IPv6 address) is reachable only on the protocols and ports of
    /// the entries naming it; addresses no entry names are not confined.
    fn confine(&self, peer: IpAddr, port: Option<u16>, scope: Scope) -> PeerVerdict {
        let rules = self.rules(scope.kind);
        let mut covering = covering(rules, peer).peekable();
        let Some(&&first) = covering.peek() else {
            return PeerVerdict::Allow;
        };
        let fits = |r: &AllowRule| {
            r.carries(scope.protocol) && port.is_none_or(|p| r.ports().contains(&p))
        };
        if covering.any(fits) {
            return PeerVerdict::Allow;
        }
        PeerVerdict::Deny(DenyReason::NotInAllowEntry {
            ip: peer,
            port,
            protocol: scope.protocol,
            list: match scope.kind {
                CredentialKind::Rest if self.rest_allow.is_some() => AllowList::Rest,
                _ => AllowList::Main,
            },
            rule: first,
        })
    }
}

/// The entries naming `peer`: their network contains it, or (IPv4 entries) one of the IPv4
/// addresses it embeds.
fn covering(rules: &[AllowRule], peer: IpAddr) -> impl Iterator<Item = &AllowRule> {
    let embedded = match peer {
        IpAddr::V6(a) => embedded_v4(a),
        IpAddr::V4(_) => Embedded::none(),
    };
    rules.iter().filter(move |r| {
        r.net.contains(&peer)
            || embedded.as_slice().iter().any(|&(_, v4)| match r.net {
                IpNet::V4(n) => n.contains(&v4),
                IpNet::V6(_) => false,
            })
    })
}

/// What an allocation's relayed addresses carry (REQUESTED-TRANSPORT).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum RelayProtocol {
    /// RFC 8656: a UDP socket; Send/ChannelData out, Data/ChannelData in.
    Udp,
    /// RFC 6062: a listening TCP socket; peer connections are spliced to client data
    /// connections.
    Tcp,
}

impl fmt::Display for RelayProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelayProtocol::Udp => "udp",
            RelayProtocol::Tcp => "tcp",
        })
    }
}

#[cfg(test)]
mod tests;
