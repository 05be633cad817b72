//! Per-allocation state (RFC 8656 §2.2): kept small, permissions and channels in short vectors
//! (a WebRTC allocation has a handful of each; the configured caps bound them).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::five_tuple::FiveTuple;
use crate::auth::CredentialKind;

/// Opaque, never reused during the life of a [`Server`](super::Server): slot index in the low
/// 32 bits, slot generation in the high 32.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct AllocationId(pub(crate) u64);

impl AllocationId {
    pub(crate) const fn new(index: u32, generation: u32) -> Self {
        Self(((generation as u64) << 32) | index as u64)
    }
    pub(crate) const fn index(self) -> u32 {
        self.0 as u32
    }
    /// The raw value, for logs and map keys on the data path.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for AllocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// The hexadecimal form [`Display`](fmt::Display) writes (the admin endpoint's ids).
impl std::str::FromStr for AllocationId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(Self)
    }
}

/// IP family of a relayed address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    pub(crate) const fn idx(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }
}

/// One relayed transport address: where the relay socket binds and what the client is told.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Relayed {
    pub bind: SocketAddr,
    pub public: SocketAddr,
}

/// Traffic forwarded by the userspace data path for one allocation (the XDP path keeps its
/// own per-CPU counters).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Counters {
    /// Client → peer (Send indications and ChannelData), payload bytes.
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    /// Peer → client (Data indications and ChannelData), payload bytes.
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    /// Datagrams dropped over a bandwidth limit (`max_bps_per_allocation`,
    /// `max_bps_per_user`), both directions.
    pub bandwidth_dropped: u64,
}

impl Counters {
    pub(crate) fn count_to_peer(&mut self, bytes: usize) {
        self.to_peer_packets += 1;
        self.to_peer_bytes += bytes as u64;
    }
    pub(crate) fn count_to_client(&mut self, bytes: usize) {
        self.to_client_packets += 1;
        self.to_client_bytes += bytes as u64;
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Permission {
    pub ip: IpAddr,
    pub expires: Instant,
    /// The policy allows every port of `ip` to this allocation: the kernel fast path may
    /// take its Send indications (what `PermissionCreated` told the data paths).
    pub any_port: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Channel {
    pub number: u16,
    pub peer: SocketAddr,
    /// While bound: when the binding expires. While cooling: when the number and peer become
    /// free for other bindings.
    pub expires: Instant,
    pub cooling: bool,
}

impl Channel {
    pub(crate) fn is_active(&self, now: Instant) -> bool {
        !self.cooling && now < self.expires
    }
}

/// The last response sent on an allocation, for retransmissions (RFC 8489 §6.3.4).
#[derive(Clone, Debug)]
pub(crate) struct CachedResponse {
    pub method: u16,
    pub txid: [u8; 12],
    pub at: Instant,
    pub bytes: Box<[u8]>,
}

#[derive(Debug)]
pub(crate) struct Allocation {
    pub id: AllocationId,
    pub client: FiveTuple,
    pub user: Arc<str>,
    /// The credential it was made with: which peer `allow` list applies.
    pub credential: CredentialKind,
    /// Indexed by [`Family::idx`].
    pub relayed: [Option<Relayed>; 2],
    pub created: Instant,
    pub expires: Instant,
    pub lifetime: Duration,
    pub permissions: Vec<Permission>,
    pub channels: Vec<Channel>,
    pub counters: Counters,
    /// The bandwidth buckets its data is charged to.
    pub limit: super::bandwidth::AllocationLimit,
    pub dont_fragment: bool,
    pub last_response: Option<Box<CachedResponse>>,
}

impl Allocation {
    pub(crate) fn relayed(&self, family: Family) -> Option<&Relayed> {
        self.relayed[family.idx()].as_ref()
    }

    pub(crate) fn permission(&self, ip: IpAddr) -> Option<&Permission> {
        self.permissions.iter().find(|p| p.ip == ip)
    }

    pub(crate) fn has_permission(&self, ip: IpAddr, now: Instant) -> bool {
        self.permission(ip).is_some_and(|p| now < p.expires)
    }

    /// Whether a permission for `ip` can be installed or refreshed when an allocation may
    /// hold `max`.
    pub(crate) fn has_room_for_permission(&self, ip: IpAddr, max: usize) -> bool {
        self.permission(ip).is_some() || self.permissions.len() < max
    }

    /// Installs or refreshes; `true` if it was new (the data path must be told).
    pub(crate) fn install_permission(
        &mut self,
        ip: IpAddr,
        expires: Instant,
        any_port: bool,
    ) -> bool {
        match self.permissions.iter_mut().find(|p| p.ip == ip) {
            Some(p) => {
                p.expires = p.expires.max(expires);
                false
            }
            None => {
                self.permissions.push(Permission {
                    ip,
                    expires,
                    any_port,
                });
                true
            }
        }
    }

    pub(crate) fn channel_by_number(&self, number: u16) -> Option<&Channel> {
        self.channels.iter().find(|c| c.number == number)
    }

    pub(crate) fn channel_by_peer(&self, peer: SocketAddr) -> Option<&Channel> {
        self.channels.iter().find(|c| c.peer == peer)
    }

    /// Active channel bound to `peer`, for peer → client framing.
    pub(crate) fn active_channel_to(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.channel_by_peer(peer)
            .filter(|c| c.is_active(now))
            .map(|c| c.number)
    }

    pub(crate) fn alive(&self, now: Instant) -> bool {
        now < self.expires
    }
}

/// Read-only view of one allocation for the status page.
#[derive(Clone, Copy)]
pub struct AllocationInfo<'a> {
    pub(crate) a: &'a Allocation,
}

/// A permission as shown on the status page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PermissionInfo {
    pub peer: IpAddr,
    pub expires: Instant,
}

/// A channel binding as shown on the status page. `cooling`: expired, its number and peer are
/// held back for 5 minutes (RFC 8656 §12) and `expires` is when that ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChannelInfo {
    pub number: u16,
    pub peer: SocketAddr,
    pub expires: Instant,
    pub cooling: bool,
}

impl<'a> AllocationInfo<'a> {
    pub fn id(&self) -> AllocationId {
        self.a.id
    }
    pub fn client(&self) -> FiveTuple {
        self.a.client
    }
    pub fn user(&self) -> &'a str {
        &self.a.user
    }
    /// One entry per relayed address (two for a dual-stack allocation).
    pub fn relayed(&self) -> impl Iterator<Item = Relayed> + 'a {
        self.a.relayed.iter().flatten().copied()
    }
    pub fn permissions(&self) -> impl Iterator<Item = PermissionInfo> + 'a {
        self.a.permissions.iter().map(|p| PermissionInfo {
            peer: p.ip,
            expires: p.expires,
        })
    }
    pub fn channels(&self) -> impl Iterator<Item = ChannelInfo> + 'a {
        self.a.channels.iter().map(|c| ChannelInfo {
            number: c.number,
            peer: c.peer,
            expires: c.expires,
            cooling: c.cooling,
        })
    }
    pub fn created(&self) -> Instant {
        self.a.created
    }
    pub fn expires(&self) -> Instant {
        self.a.expires
    }
    /// The lifetime granted by the last Allocate/Refresh.
    pub fn lifetime(&self) -> Duration {
        self.a.lifetime
    }
    pub fn counters(&self) -> Counters {
        self.a.counters
    }
    pub fn dont_fragment(&self) -> bool {
        self.a.dont_fragment
    }
}

impl fmt::Debug for AllocationInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllocationInfo")
            .field("id", &self.a.id)
            .field("client", &self.a.client)
            .field("user", &self.a.user)
            .field("relayed", &self.a.relayed)
            .field("permissions", &self.a.permissions.len())
            .field("channels", &self.a.channels.len())
            .field("expires", &self.a.expires)
            .field("counters", &self.a.counters)
            .finish()
    }
}
