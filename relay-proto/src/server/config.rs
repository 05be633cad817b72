//! Server configuration.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

/// Relay addresses of one IP family. With static NAT (a cloud VM, an Expressway-E style DMZ
/// box) the relay sockets bind to the external NIC's private address and clients are told the
/// public one in XOR-RELAYED-ADDRESS. Without NAT both are the same.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RelayAddr {
    pub bind: IpAddr,
    pub public: IpAddr,
}

impl RelayAddr {
    /// No NAT: bind and advertise the same address.
    pub const fn direct(ip: IpAddr) -> Self {
        Self {
            bind: ip,
            public: ip,
        }
    }

    /// `true` if `ip` is this relay's bind or public address.
    pub fn is_own(&self, ip: IpAddr) -> bool {
        ip == self.bind || ip == self.public
    }
}

/// Everything [`Server`](super::Server) needs to know at construction. The port range, the
/// relay families, the limits and the port seed also build the [`Shared`](super::Shared)
/// state, which owns them from then on: limits change with
/// [`Server::set_limits`](super::Server::set_limits) and are read back with
/// [`Server::limits`](super::Server::limits).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The realm, for the operator's reference: REALM in 401/438 (and the realm keys are
    /// derived with) is the [`CredentialStore`](crate::auth::CredentialStore)'s, which must
    /// be built with this same string.
    pub realm: String,
    /// SOFTWARE attribute on every response, if set.
    pub software: Option<String>,
    /// IPv4 relay addresses; `None`: IPv4 allocations are refused with 440.
    pub relay_v4: Option<RelayAddr>,
    /// IPv6 relay addresses; `None`: IPv6 allocations are refused with 440.
    pub relay_v6: Option<RelayAddr>,
    /// Relay port range, shared by both families (each family has its own pool).
    pub ports: RangeInclusive<u16>,
    /// Lifetime granted when the client asks for less (or nothing).
    pub default_lifetime: Duration,
    /// Upper bound on a granted lifetime.
    pub max_lifetime: Duration,
    /// RFC 8656 §9: 300 s.
    pub permission_lifetime: Duration,
    /// RFC 8656 §12: 600 s.
    pub channel_lifetime: Duration,
    /// How long a NONCE stays fresh before 438.
    pub nonce_lifetime: Duration,
    /// Total allocations, all shards together; beyond it new ones get 508 (or 300 towards an
    /// alternate server). Initial value (see the struct's note).
    pub max_allocations: usize,
    /// Allocations per configured (static) username, all shards together; beyond it 486.
    /// Initial value.
    pub max_allocations_per_user: usize,
    /// Allocations per TURN REST username, all shards together; beyond it 486. Initial
    /// value.
    pub max_allocations_per_rest_user: usize,
    /// Allocations made with TURN REST credentials per client source (IPv4 address, IPv6
    /// /64), all shards together; beyond it 486. Static users are not counted. Initial value.
    pub max_allocations_per_source: usize,
    /// Permissions per allocation; a CreatePermission/ChannelBind beyond it gets 508.
    pub max_permissions: usize,
    /// Channels per allocation; a ChannelBind beyond it gets 508.
    pub max_channels: usize,
    /// Where to send clients (300 ALTERNATE-SERVER) when full or draining.
    pub alternate_servers: Vec<SocketAddr>,
    /// Injected randomness for relay port choice, reservation tokens and CONNECTION-IDs
    /// (one generator in [`Shared`](super::Shared) serves all shards and seeds each
    /// server's own).
    pub port_seed: u64,
    /// RFC 6062 TCP allocations (REQUESTED-TRANSPORT TCP) offered to TCP/TLS clients. Off by
    /// default: a TCP relay lets a client open TCP connections from the relay host, which
    /// an operator should choose. Off, such Allocates get 442 as from an RFC 8656-only
    /// relay. Changed at run time with [`Server::set_relay_tcp`](super::Server::set_relay_tcp).
    pub relay_tcp: bool,
    /// Requests per second a source ([`source_of`](super::source_of)) may send on 5-tuples
    /// that hold no allocation, all shards together; the excess gets no answer (drop reason
    /// [`DropReason::UnauthenticatedRate`](super::DropReason::UnauthenticatedRate)).
    /// 0: no limit.
    pub unauthenticated_rate: u32,
    /// How many such requests a source may send at once before the rate applies.
    pub unauthenticated_burst: u32,
    /// Requests per second on 5-tuples without an allocation from all sources together,
    /// counted after each source's own bucket let them through; the excess gets no answer
    /// (same drop reason). 0: no limit.
    pub unauthenticated_global_rate: u32,
    /// How many such requests may come at once before the global rate applies.
    pub unauthenticated_global_burst: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            realm: "turn".into(),
            software: None,
            relay_v4: None,
            relay_v6: None,
            ports: 49152..=65535,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            max_allocations: 65536,
            max_allocations_per_user: usize::MAX,
            max_allocations_per_rest_user: usize::MAX,
            max_allocations_per_source: usize::MAX,
            max_permissions: 256,
            max_channels: 256,
            alternate_servers: Vec::new(),
            port_seed: 0,
            relay_tcp: false,
            unauthenticated_rate: DEFAULT_UNAUTHENTICATED_RATE,
            unauthenticated_burst: DEFAULT_UNAUTHENTICATED_BURST,
            unauthenticated_global_rate: DEFAULT_UNAUTHENTICATED_GLOBAL_RATE,
            unauthenticated_global_burst: DEFAULT_UNAUTHENTICATED_GLOBAL_BURST,
        }
    }
}

/// Sized for a NAT of a few hundred browsers, each starting a few allocations (every
/// allocation costs a 401 and an Allocate) within a couple of seconds.
pub const DEFAULT_UNAUTHENTICATED_RATE: u32 = 200;
/// A flash crowd of about a thousand browsers joining within a few seconds (each a 401 and
/// an Allocate per candidate family) fits; a flood of spoofed sources, each under its own
/// rate, costs at most this many answers a second.
pub const DEFAULT_UNAUTHENTICATED_GLOBAL_RATE: u32 = 5000;
/// Burst of the global bucket.
pub const DEFAULT_UNAUTHENTICATED_GLOBAL_BURST: u32 = 10_000;
/// See [`DEFAULT_UNAUTHENTICATED_RATE`].
pub const DEFAULT_UNAUTHENTICATED_BURST: u32 = 400;

/// RFC 8656 §7.1: EVEN-PORT reservations are kept for about 30 seconds.
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// RFC 8656 §12: after a channel binding expires, its number and peer stay unavailable for
/// binding to anything else for 5 minutes.
pub const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);
/// A relay port the data path could not bind is not handed out again for this long.
pub const PORT_QUARANTINE: Duration = Duration::from_secs(60);
/// RFC 8489 §6.3: a server should remember a response for 40 s (Rc × RTO) to answer
/// retransmissions of non-idempotent requests.
pub const TRANSACTION_TTL: Duration = Duration::from_secs(40);
