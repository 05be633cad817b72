//! The JSON documents of the relay's admin endpoint, `/api/allocations` and
//! `/api/status`: the daemon (relay-user's `admin` module) builds them, `relay status`
//! (relay-tools) reads them. Field names are a contract with operators' scripts.
//! Plain serde types; with the `client` feature also the endpoint's HTTP(S) client, which
//! the tools and the daemon's cluster poller share (the daemon does not link the tools,
//! nor the tools the daemon).

pub mod endpoint;
pub mod metrics;
pub mod query;
pub mod table;

use std::net::{IpAddr, SocketAddr};

#[cfg(feature = "client")]
pub mod client;

use relay_common::AllocCounters;
use relay_proto::server::Counters;
use serde::{Deserialize, Serialize};

/// Where the endpoint listens unless `[admin] address` says otherwise. Loopback only:
/// the usage view names users and client addresses.
pub const DEFAULT_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9641);

/// `/api/allocations`: the "TURN relay usage" view.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AllocationsView {
    pub count: usize,
    pub draining: bool,
    /// Shards that did not answer in time: their allocations are missing from the list.
    #[serde(default)]
    pub shards_missing: Vec<String>,
    /// Oldest first.
    pub allocations: Vec<AllocationView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AllocationView {
    /// Opaque, unique while the relay runs.
    pub id: String,
    /// The data-path thread that serves it.
    pub shard: String,
    pub user: String,
    /// `udp`, `tcp` or `tls`: how the client reaches the relay.
    pub transport: String,
    pub client: SocketAddr,
    /// The relay address the client talks to (which NIC).
    pub listener: SocketAddr,
    pub relayed: Vec<RelayedView>,
    pub permissions: Vec<PermissionView>,
    pub channels: Vec<ChannelView>,
    /// Relayed by the userspace data path.
    pub userspace: Traffic,
    /// Relayed by the kernel fast path; `None` when it is off or the client is on TCP/TLS.
    pub kernel: Option<Traffic>,
    /// Both paths together.
    pub total: Traffic,
    /// Datagrams dropped over `max_bps_per_allocation` or `max_bps_per_user`, both
    /// directions, both paths together.
    #[serde(default)]
    pub bandwidth_dropped: u64,
    pub age_s: u64,
    /// Lifetime granted by the last Allocate or Refresh.
    pub lifetime_s: u64,
    /// Until it expires unless refreshed.
    pub remaining_s: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct RelayedView {
    /// What the client was told (XOR-RELAYED-ADDRESS: the static NAT address).
    pub public: SocketAddr,
    /// Where the relay socket is bound (the external NIC).
    pub bind: SocketAddr,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct PermissionView {
    pub peer: IpAddr,
    pub remaining_s: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ChannelView {
    pub number: u16,
    pub peer: SocketAddr,
    pub remaining_s: u64,
    /// Expired: its number and peer are held back for 5 minutes (RFC 8656 §12).
    pub cooling: bool,
}

/// `/api/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub started_unix: u64,
    /// 1 for a process started afresh, one more for each upgrade it took over by
    /// (`relay upgrade`, SIGUSR2); 0 from a relay too old to say.
    #[serde(default)]
    pub generation: u64,
    /// When this process took over from the previous one; `None` after a fresh start.
    #[serde(default)]
    pub took_over_unix: Option<u64>,
    pub uptime_s: u64,
    pub draining: bool,
    pub config_file: Option<String>,
    pub realm: String,
    pub listeners: Vec<ListenerView>,
    pub relay: RelayView,
    pub xdp: XdpView,
    pub limits: LimitsView,
    /// All shards together; `None` if some shard did not answer.
    pub allocations: Option<usize>,
    pub shards: Vec<ShardView>,
    pub reloads: ReloadsView,
    pub admin: AdminView,
    /// The other nodes of `[cluster] nodes`, as this one last heard from them; empty
    /// without a cluster.
    #[serde(default)]
    pub cluster: Vec<ClusterNodeView>,
}

/// One other node of the cluster as this node knows it (`/api/status` `cluster`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterNodeView {
    /// Its admin endpoint, as configured (`[cluster] nodes` `admin`).
    pub node: String,
    /// Its public TURN address, where redirected clients go.
    pub turn: SocketAddr,
    /// Its last poll answered.
    pub up: bool,
    /// As of the last answer; `None` before any.
    pub allocations: Option<usize>,
    pub capacity: Option<usize>,
    pub draining: bool,
    /// Seconds since its last answer; `None` if it never answered.
    pub last_heard_seconds: Option<f64>,
    /// Why the last poll failed, when it did.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListenerView {
    pub address: SocketAddr,
    pub transports: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RelayView {
    pub ipv4: Option<RelayAddrView>,
    pub ipv6: Option<RelayAddrView>,
    /// `"LOW-HIGH"`.
    pub ports: String,
    pub ports_in_use_v4: Option<u32>,
    pub ports_in_use_v6: Option<u32>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct RelayAddrView {
    pub bind: IpAddr,
    pub public: IpAddr,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct XdpView {
    /// `[xdp] mode` as configured.
    pub configured: String,
    /// Empty when the fast path is off.
    pub interfaces: Vec<XdpInterfaceView>,
    pub off_reason: Option<String>,
    /// Why IP forwarding is off while the program runs (the kernel cannot route relayed
    /// packets, userspace relays them); absent when forwarding is as the fast path needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding_off: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct XdpInterfaceView {
    pub name: String,
    pub ifindex: u32,
    /// `native` or `generic`.
    pub mode: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LimitsView {
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    pub max_allocations_per_rest_user: usize,
    pub max_allocations_per_source: usize,
    /// Payload bit/s per allocation, both directions; 0: unlimited.
    #[serde(default)]
    pub max_bps_per_allocation: u64,
    /// Payload bit/s of all of one username's allocations; 0: unlimited.
    #[serde(default)]
    pub max_bps_per_user: u64,
    pub alternate_servers: Vec<SocketAddr>,
    pub drain_timeout_s: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardView {
    pub name: String,
    /// `None`: the shard did not answer in time.
    pub allocations: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReloadsView {
    pub succeeded: u64,
    pub refused: u64,
    pub last: Option<LastReloadView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LastReloadView {
    pub at_unix: u64,
    pub ok: bool,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdminView {
    pub address: SocketAddr,
    pub token_required: bool,
}

/// `/api/history`: what the relay relayed, held and refused, one sample a second over
/// the last ten minutes (the console's charts).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryView {
    /// Seconds between samples.
    pub interval_s: u64,
    /// Oldest first; at most ten minutes' worth.
    pub samples: Vec<HistorySample>,
}

/// One second of the relay: rates over the interval before `at_unix_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistorySample {
    pub at_unix_ms: u64,
    /// Relayed by the kernel fast path (UDP clients).
    pub kernel: RateView,
    /// Relayed by the userspace UDP data path (UDP clients, what the kernel passed up).
    pub userspace_udp: RateView,
    /// Relayed by the userspace TCP/TLS data path.
    pub userspace_tcp: RateView,
    /// Allocations held at the sample.
    pub allocations: usize,
    /// Requests whose credentials did not verify, per second.
    pub auth_failures_per_s: f64,
    /// 403 answers (peer refused by the policy), per second.
    pub forbidden_per_s: f64,
}

/// Packets and payload bits per second, both directions together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RateView {
    pub packets_per_s: f64,
    pub bits_per_s: f64,
}

/// `DELETE /api/allocations/{id}`: what was ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DisconnectedView {
    pub id: String,
    pub user: String,
    pub client: SocketAddr,
    pub transport: String,
}

/// Packets and payload bytes in both directions, a plain value for sums (and the traffic
/// fields of the usage view).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Traffic {
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

impl Traffic {
    pub const ZERO: Traffic = Traffic {
        to_peer_packets: 0,
        to_peer_bytes: 0,
        to_client_packets: 0,
        to_client_bytes: 0,
    };

    /// Field by field.
    pub fn max(self, o: Traffic) -> Traffic {
        Traffic {
            to_peer_packets: self.to_peer_packets.max(o.to_peer_packets),
            to_peer_bytes: self.to_peer_bytes.max(o.to_peer_bytes),
            to_client_packets: self.to_client_packets.max(o.to_client_packets),
            to_client_bytes: self.to_client_bytes.max(o.to_client_bytes),
        }
    }

    pub fn add(&mut self, o: Traffic) {
        self.to_peer_packets += o.to_peer_packets;
        self.to_peer_bytes += o.to_peer_bytes;
        self.to_client_packets += o.to_client_packets;
        self.to_client_bytes += o.to_client_bytes;
    }
}

impl From<Counters> for Traffic {
    fn from(c: Counters) -> Self {
        Self {
            to_peer_packets: c.to_peer_packets,
            to_peer_bytes: c.to_peer_bytes,
            to_client_packets: c.to_client_packets,
            to_client_bytes: c.to_client_bytes,
        }
    }
}

impl From<AllocCounters> for Traffic {
    fn from(c: AllocCounters) -> Self {
        Self {
            to_peer_packets: c.to_peer_packets,
            to_peer_bytes: c.to_peer_bytes,
            to_client_packets: c.to_client_packets,
            to_client_bytes: c.to_client_bytes,
        }
    }
}
