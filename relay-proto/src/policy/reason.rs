//! Why a peer was refused: `Copy`, no heap, and a `Display` that names the rule for the
//! operator's 403 log line.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::RelayProtocol;
use super::rule::AllowRule;

/// A built-in default-deny range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DefaultDeny {
    /// 0.0.0.0/8, "this network" (includes the unspecified address).
    ThisNetwork,
    /// 127.0.0.0/8.
    Loopback,
    /// 10.0.0.0/8 (RFC 1918).
    Private10,
    /// 172.16.0.0/12 (RFC 1918).
    Private172,
    /// 192.168.0.0/16 (RFC 1918).
    Private192,
    /// 100.64.0.0/10, carrier-grade NAT shared space (RFC 6598).
    SharedCgnat,
    /// 169.254.0.0/16, includes the cloud metadata service 169.254.169.254.
    LinkLocal,
    /// 192.0.0.0/24, IETF protocol assignments.
    IetfProtocol,
    /// 198.18.0.0/15, benchmarking (RFC 2544).
    Benchmarking,
    /// 224.0.0.0/4.
    Multicast,
    /// 255.255.255.255, limited broadcast (checked before the rest of 240/4).
    Broadcast,
    /// 240.0.0.0/4, reserved.
    Reserved,
    /// ::/128.
    Unspecified6,
    /// ::1/128.
    Loopback6,
    /// fe80::/10.
    LinkLocal6,
    /// fec0::/10, deprecated site-local.
    SiteLocal6,
    /// fc00::/7, unique local addresses.
    UniqueLocal6,
    /// ff00::/8.
    Multicast6,
    /// 100::/64, discard-only (RFC 6666).
    Discard6,
    /// 2001:2::/48, benchmarking (RFC 5180).
    Benchmarking6,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

const fn v6(segments: [u16; 8], len: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

/// IPv4 default-deny ranges in match order (broadcast before the 240/4 that contains it).
pub(super) const V4_RANGES: [(DefaultDeny, Ipv4Net); 12] = [
    (DefaultDeny::ThisNetwork, v4(0, 0, 0, 0, 8)),
    (DefaultDeny::Loopback, v4(127, 0, 0, 0, 8)),
    (DefaultDeny::Private10, v4(10, 0, 0, 0, 8)),
    (DefaultDeny::Private172, v4(172, 16, 0, 0, 12)),
    (DefaultDeny::Private192, v4(192, 168, 0, 0, 16)),
    (DefaultDeny::SharedCgnat, v4(100, 64, 0, 0, 10)),
    (DefaultDeny::LinkLocal, v4(169, 254, 0, 0, 16)),
    (DefaultDeny::IetfProtocol, v4(192, 0, 0, 0, 24)),
    (DefaultDeny::Benchmarking, v4(198, 18, 0, 0, 15)),
    (DefaultDeny::Multicast, v4(224, 0, 0, 0, 4)),
    (DefaultDeny::Broadcast, v4(255, 255, 255, 255, 32)),
    (DefaultDeny::Reserved, v4(240, 0, 0, 0, 4)),
];

/// IPv6 default-deny ranges (the IPv4-embedding prefixes are handled separately).
pub(super) const V6_RANGES: [(DefaultDeny, Ipv6Net); 8] = [
    (DefaultDeny::Unspecified6, v6([0; 8], 128)),
    (DefaultDeny::Loopback6, v6([0, 0, 0, 0, 0, 0, 0, 1], 128)),
    (
        DefaultDeny::LinkLocal6,
        v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
    ),
    (
        DefaultDeny::SiteLocal6,
        v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
    ),
    (
        DefaultDeny::UniqueLocal6,
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
    ),
    (
        DefaultDeny::Multicast6,
        v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
    ),
    (DefaultDeny::Discard6, v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64)),
    (
        DefaultDeny::Benchmarking6,
        v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48),
    ),
];

impl DefaultDeny {
    /// The range this rule covers.
    pub fn net(self) -> IpNet {
        let in_v4 = V4_RANGES
            .iter()
            .find(|(r, _)| *r == self)
            .map(|(_, n)| IpNet::V4(*n));
        let in_v6 = V6_RANGES
            .iter()
            .find(|(r, _)| *r == self)
            .map(|(_, n)| IpNet::V6(*n));
        // Every variant is in exactly one table (tested); the fallback is never used.
        in_v4.or(in_v6).unwrap_or(IpNet::V4(V4_RANGES[0].1))
    }

    /// The first default-deny range containing `ip`.
    pub fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(a) => Self::of_v4(a),
            IpAddr::V6(a) => V6_RANGES
                .iter()
                .find(|(_, n)| n.contains(&a))
                .map(|(r, _)| *r),
        }
    }

    pub(super) fn of_v4(a: Ipv4Addr) -> Option<Self> {
        V4_RANGES
            .iter()
            .find(|(_, n)| n.contains(&a))
            .map(|(r, _)| *r)
    }

    fn describe(self) -> &'static str {
        match self {
            Self::ThisNetwork => "\"this network\" 0.0.0.0/8",
            Self::Loopback => "loopback 127.0.0.0/8",
            Self::Private10 => "private network 10.0.0.0/8 (RFC 1918)",
            Self::Private172 => "private network 172.16.0.0/12 (RFC 1918)",
            Self::Private192 => "private network 192.168.0.0/16 (RFC 1918)",
            Self::SharedCgnat => "carrier-grade NAT space 100.64.0.0/10 (RFC 6598)",
            Self::LinkLocal => "link-local 169.254.0.0/16 (incl. cloud metadata)",
            Self::IetfProtocol => "IETF protocol assignments 192.0.0.0/24",
            Self::Benchmarking => "benchmarking 198.18.0.0/15",
            Self::Multicast => "multicast 224.0.0.0/4",
            Self::Broadcast => "broadcast 255.255.255.255",
            Self::Reserved => "reserved 240.0.0.0/4",
            Self::Unspecified6 => "unspecified ::",
            Self::Loopback6 => "loopback ::1",
            Self::LinkLocal6 => "link-local fe80::/10",
            Self::SiteLocal6 => "site-local fec0::/10 (deprecated)",
            Self::UniqueLocal6 => "unique local fc00::/7",
            Self::Multicast6 => "multicast ff00::/8",
            Self::Discard6 => "discard-only 100::/64",
            Self::Benchmarking6 => "benchmarking 2001:2::/48",
        }
    }
}

impl fmt::Display for DefaultDeny {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// How an IPv6 address carries an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmbeddingForm {
    /// ::ffff:0:0/96.
    Ipv4Mapped,
    /// ::/96 (deprecated IPv4-compatible).
    Ipv4Compatible,
    /// ::ffff:0:0:0/96 (SIIT IPv4-translated).
    Ipv4Translated,
    /// 2002::/16, IPv4 in bits 16..48.
    SixToFour,
    /// 2001::/32, the Teredo server's IPv4 in bits 32..64.
    TeredoServer,
    /// 2001::/32, the client's IPv4 in the last 32 bits, inverted.
    TeredoClient,
    /// 64:ff9b::/96 (RFC 6052 well-known prefix).
    Nat64,
    /// 64:ff9b:1::/48 (RFC 8215 local use), read with an RFC 6052 prefix length of 48, 56,
    /// 64 or 96 (the translator's layout is not known here).
    Nat64Local {
        /// The RFC 6052 prefix length this reading assumed.
        prefix_len: u8,
    },
}

impl fmt::Display for EmbeddingForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ipv4Mapped => f.write_str("IPv4-mapped IPv6"),
            Self::Ipv4Compatible => f.write_str("IPv4-compatible IPv6"),
            Self::Ipv4Translated => f.write_str("IPv4-translated IPv6"),
            Self::SixToFour => f.write_str("6to4"),
            Self::TeredoServer => f.write_str("Teredo server address"),
            Self::TeredoClient => f.write_str("Teredo client address"),
            Self::Nat64 => f.write_str("NAT64 64:ff9b::/96"),
            Self::Nat64Local { prefix_len } => {
                write!(f, "local-use NAT64 64:ff9b:1::/48 (read as /{prefix_len})")
            }
        }
    }
}

/// Why the IPv4 address embedded in an IPv6 peer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmbeddedDeny {
    /// It is in a default-deny range.
    Default(DefaultDeny),
    /// It is in a configured IPv4 deny entry.
    Configured(Ipv4Net),
    /// It is an address of the relay host; only the plain form of a relay address is a
    /// hairpin.
    RelayAddress(Ipv4Addr),
}

impl fmt::Display for EmbeddedDeny {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default(r) => r.fmt(f),
            Self::Configured(net) => write!(f, "configured deny {net}"),
            Self::RelayAddress(a) => write!(f, "the relay's own address {a}"),
        }
    }
}

/// Which rule refused a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// A built-in default-deny range.
    Default(DefaultDeny),
    /// An explicit `deny` entry from the configuration.
    Configured(IpNet),
    /// An IPv6 address whose embedded IPv4 address is refused.
    Embedded {
        /// How the IPv4 address is embedded.
        form: EmbeddingForm,
        /// Why the IPv4 address is refused.
        inner: EmbeddedDeny,
    },
    /// An address of the relay host that is not a relay address (a listener): its services
    /// are off limits unless `allow` names the address exactly.
    RelayHost(IpAddr),
    /// A relay address with a port outside the relay port range: a service of the relay
    /// host, not an allocation (ChannelBind and Connect carry the port).
    RelayHostPort(SocketAddr),
    /// A Connect to a relay address and a port of the relay range that no RFC 6062 TCP
    /// allocation holds: whatever listens there belongs to the host.
    NoTcpRelay(SocketAddr),
    /// An address `allow` entries name, but none for this protocol and port.
    NotInAllowEntry {
        ip: IpAddr,
        /// `None`: a permission (no port), refused because no entry carries the protocol.
        port: Option<u16>,
        protocol: RelayProtocol,
        /// The list that was in force.
        list: AllowList,
        /// The first entry naming the address, for the log line.
        rule: AllowRule,
    },
}

/// Which `allow` list judged a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AllowList {
    /// `[peers] allow`: static users, and REST users when `[peers.rest]` is absent.
    Main,
    /// `[peers.rest] allow`: REST-credential allocations.
    Rest,
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Main => "[peers] allow",
            Self::Rest => "[peers.rest] allow",
        })
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default(r) => r.fmt(f),
            Self::Configured(net) => write!(f, "configured deny {net}"),
            Self::Embedded { form, inner } => write!(f, "{form} of {inner}"),
            Self::RelayHost(ip) => write!(
                f,
                "relay host address {ip} (delivered locally on the relay host, not a relay \
                 address; allow it as a single-host entry to reach its services)"
            ),
            Self::RelayHostPort(peer) => write!(
                f,
                "relay host port {peer} (outside the relay port range: a service of the relay \
                 host, not an allocation)"
            ),
            Self::NoTcpRelay(peer) => write!(
                f,
                "relay address {peer} (no TCP allocation holds that port: a Connect reaches \
                 only another TCP allocation of this relay)"
            ),
            Self::NotInAllowEntry {
                ip,
                port,
                protocol,
                list,
                rule,
            } => match port {
                Some(port) => write!(
                    f,
                    "{protocol} port {port} of {ip} is outside the {list} entries naming the \
                     address (such as \"{rule}\")"
                ),
                None => write!(
                    f,
                    "{protocol} to {ip} is not in the {list} entries naming the address (such \
                     as \"{rule}\")"
                ),
            },
        }
    }
}
