//! `allow` entries with an optional protocol and port range: `"CIDR"`, `"CIDR PROTO"`,
//! `"CIDR PORTS"`, `"CIDR PROTO PORTS"` (PROTO `udp` or `tcp`, PORTS `N` or `N-M`), and the
//! scope a peer is judged in (who asks, over which relay protocol).
//!
//! The protocol is the one between relay and peer: `udp` for UDP allocations (RFC 8656),
//! `tcp` for RFC 6062 TCP allocations. A plain CIDR means both protocols and every port, as
//! it did before entries could carry ports.

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;

use ipnet::IpNet;

use super::RelayProtocol;
use crate::auth::CredentialKind;

/// Who asks to reach a peer, and over what: the two things besides the address that
/// choose the `allow` rules in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope {
    /// Which credential made the allocation: REST users may have their own `allow` list.
    pub kind: CredentialKind,
    /// The allocation's relay protocol.
    pub protocol: RelayProtocol,
}

impl Scope {
    /// A static user's UDP allocation (the media server's usual case).
    pub const STATIC_UDP: Scope = Scope {
        kind: CredentialKind::Static,
        protocol: RelayProtocol::Udp,
    };

    pub const fn new(kind: CredentialKind, protocol: RelayProtocol) -> Self {
        Self { kind, protocol }
    }
}

/// One `allow` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllowRule {
    /// Truncated to its network address.
    pub net: IpNet,
    /// `None`: both protocols.
    pub protocol: Option<RelayProtocol>,
    /// Inclusive; `1..=65535` when the entry names no ports.
    pub low: u16,
    pub high: u16,
}

impl AllowRule {
    /// Every port, both protocols (the plain CIDR form).
    pub fn any(net: IpNet) -> Self {
        Self {
            net: net.trunc(),
            protocol: None,
            low: 1,
            high: u16::MAX,
        }
    }

    pub(super) fn ports(&self) -> RangeInclusive<u16> {
        self.low..=self.high
    }

    /// Whether the entry applies to allocations of `protocol`.
    pub(super) fn carries(&self, protocol: RelayProtocol) -> bool {
        self.protocol.is_none_or(|p| p == protocol)
    }

    /// Whether it opens every port (the kernel may then take Send indications).
    pub fn all_ports(&self) -> bool {
        self.low <= 1 && self.high == u16::MAX
    }

    /// Whether it names exactly `ip` as one host (/32 or /128).
    pub(super) fn is_single_host(&self, ip: IpAddr) -> bool {
        self.net.prefix_len() == self.net.max_prefix_len() && self.net.addr() == ip
    }
}

impl From<IpNet> for AllowRule {
    fn from(net: IpNet) -> Self {
        Self::any(net)
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.net)?;
        if let Some(p) = self.protocol {
            write!(f, " {p}")?;
        }
        match (self.low, self.high) {
            (1, u16::MAX) => Ok(()),
            (l, h) if l == h => write!(f, " {l}"),
            (l, h) => write!(f, " {l}-{h}"),
        }
    }
}

/// Why an `allow` entry did not parse; the config loader adds the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("`{0}` is not a CIDR or IP")]
    Address(String),
    #[error("{net} has host bits set: write {network}, or {host} for one host")]
    HostBits {
        net: IpNet,
        network: IpNet,
        host: IpNet,
    },
    #[error("`{0}` is neither a protocol (udp, tcp) nor ports (N or N-M, 1-65535)")]
    Word(String),
    #[error("`{0}`: ports need 1 <= low <= high <= 65535")]
    Ports(String),
    #[error("`{0}`: write \"CIDR [udp|tcp] [N|N-M]\" (protocol before ports, each at most once)")]
    Shape(String),
}

/// A CIDR or a bare address (one host); host bits set are refused as ambiguous
/// (`192.0.2.10/24`: one host or the whole network?).
pub fn parse_net(s: &str) -> Result<IpNet, RuleError> {
    let net = s
        .parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| RuleError::Address(s.to_owned()))?;
    if net.trunc() != net {
        return Err(RuleError::HostBits {
            net,
            network: net.trunc(),
            host: IpNet::from(net.addr()),
        });
    }
    Ok(net)
}

fn parse_ports(s: &str) -> Result<Option<(u16, u16)>, RuleError> {
    if !s.starts_with(|c: char| c.is_ascii_digit()) {
        return Ok(None);
    }
    let (low, high) = s.split_once('-').unwrap_or((s, s));
    let bad = || RuleError::Ports(s.to_owned());
    let low: u16 = low.parse().map_err(|_| bad())?;
    let high: u16 = high.parse().map_err(|_| bad())?;
    if low == 0 || low > high {
        return Err(bad());
    }
    Ok(Some((low, high)))
}

impl FromStr for AllowRule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, RuleError> {
        let mut words = s.split_whitespace();
        let net = parse_net(words.next().unwrap_or(""))?;
        let mut rule = AllowRule::any(net);
        let (mut protocol_seen, mut ports_seen) = (false, false);
        for w in words {
            let protocol = match w.to_ascii_lowercase().as_str() {
                "udp" => Some(RelayProtocol::Udp),
                "tcp" => Some(RelayProtocol::Tcp),
                _ => None,
            };
            if let Some(p) = protocol {
                if protocol_seen || ports_seen {
                    return Err(RuleError::Shape(s.to_owned()));
                }
                protocol_seen = true;
                rule.protocol = Some(p);
                continue;
            }
            let Some((low, high)) = parse_ports(w)? else {
                return Err(RuleError::Word(w.to_owned()));
            };
            if ports_seen {
                return Err(RuleError::Shape(s.to_owned()));
            }
            ports_seen = true;
            (rule.low, rule.high) = (low, high);
        }
        Ok(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> AllowRule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn the_four_forms() {
        let r = rule("192.0.2.0/24");
        assert_eq!((r.protocol, r.low, r.high), (None, 1, 65535));
        assert!(r.all_ports());
        let r = rule("192.0.2.10/32 udp");
        assert_eq!(
            (r.protocol, r.low, r.high),
            (Some(RelayProtocol::Udp), 1, 65535)
        );
        let r = rule("192.0.2.10 5432");
        assert_eq!((r.protocol, r.low, r.high), (None, 5432, 5432));
        assert_eq!(r.net, "192.0.2.10/32".parse::<IpNet>().unwrap());
        let r = rule("  2001:db8::/64   TCP  10000-20000 ");
        assert_eq!(
            (r.protocol, r.low, r.high),
            (Some(RelayProtocol::Tcp), 10000, 20000)
        );
        assert!(!r.all_ports());
        // Display gives the canonical spelling back.
        for s in [
            "192.0.2.0/24",
            "192.0.2.10/32 udp",
            "192.0.2.10/32 5432",
            "2001:db8::/64 tcp 10000-20000",
            "0.0.0.0/0 udp 1-65535",
        ] {
            let shown = rule(s).to_string();
            assert_eq!(rule(&shown), rule(s), "{s} shown as {shown}");
        }
        assert_eq!(
            rule("192.0.2.10/32 udp 1-65535").to_string(),
            "192.0.2.10/32 udp"
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = |s: &str| s.parse::<AllowRule>().unwrap_err();
        assert_eq!(err("192.0.2.300"), RuleError::Address("192.0.2.300".into()));
        assert_eq!(err(""), RuleError::Address(String::new()));
        assert!(matches!(err("192.0.2.10/24"), RuleError::HostBits { .. }));
        assert!(err("192.0.2.10/24").to_string().contains("192.0.2.0/24"));
        assert_eq!(err("192.0.2.0/24 sctp"), RuleError::Word("sctp".into()));
        assert_eq!(err("192.0.2.0/24 0"), RuleError::Ports("0".into()));
        assert_eq!(err("192.0.2.0/24 20-10"), RuleError::Ports("20-10".into()));
        assert_eq!(err("192.0.2.0/24 70000"), RuleError::Ports("70000".into()));
        assert_eq!(err("192.0.2.0/24 1-x"), RuleError::Ports("1-x".into()));
        for shape in [
            "192.0.2.0/24 80 udp",
            "192.0.2.0/24 udp tcp",
            "192.0.2.0/24 80 90",
        ] {
            assert_eq!(err(shape), RuleError::Shape(shape.into()), "{shape}");
        }
    }
}
