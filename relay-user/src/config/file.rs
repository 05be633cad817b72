//! The file as written: one struct per table, serde-checked, unknown keys refused.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// REALM of long-term credentials (the appliance used "TANDBERG").
    pub realm: Option<String>,
    /// SOFTWARE attribute in responses; empty string to omit.
    pub software: Option<String>,
    #[serde(default)]
    pub listen: Vec<ListenSection>,
    #[serde(default)]
    pub relay: RelaySection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub peers: PeersSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub udp: UdpSection,
    #[serde(default)]
    pub xdp: XdpSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub tcp: super::TcpSection,
    #[serde(default)]
    pub tls: super::TlsSection,
    #[serde(default)]
    pub cluster: super::ClusterSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    /// `IP:PORT` to answer TURN on.
    pub address: String,
    #[serde(default = "default_transports")]
    pub transports: Vec<Transport>,
    /// A PROXY protocol header (v1 or v2) precedes each connection's bytes: the relay sits
    /// behind a TCP load balancer (TCP and TLS listeners only).
    #[serde(default)]
    pub proxy_protocol: bool,
    /// CIDRs allowed to send that header (the load balancers); required with it.
    #[serde(default)]
    pub proxy_from: Vec<String>,
}

fn default_transports() -> Vec<Transport> {
    vec![Transport::Udp]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// Where relay ports bind (the external NIC's own address).
    pub address: Option<String>,
    /// What XOR-RELAYED-ADDRESS says (the static NAT address); default: `address`.
    pub public_address: Option<String>,
    /// IPv6 relay address for RFC 6156 / dual allocations, and its public form.
    pub address6: Option<String>,
    pub public_address6: Option<String>,
    /// `"LOW-HIGH"`, e.g. `"24000-29999"`.
    pub ports: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// TOML file with a `[users]` table, same shape as `users` here.
    pub users_file: Option<String>,
    /// Inline users: `name = "password"` or `name = { md5_key = "0x…" }`.
    #[serde(default)]
    pub users: std::collections::BTreeMap<String, super::UserEntry>,
    /// TURN REST API secrets; several at once while rotating.
    #[serde(default)]
    pub shared_secrets: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersSection {
    /// Peers despite the default deny (e.g. the internal media server): `"CIDR [udp|tcp]
    /// [N|N-M]"`; an address named here is reachable only on the protocols and ports named.
    #[serde(default)]
    pub allow: Vec<String>,
    /// CIDRs refused even when otherwise allowed.
    #[serde(default)]
    pub deny: Vec<String>,
    /// `[peers.rest]`: what REST-credential (shared secret) allocations may reach.
    pub rest: Option<RestPeersSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestPeersSection {
    /// Replaces `[peers] allow` for REST users; same grammar.
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Relays this node holds at once ("1800 TURN relays").
    pub max_allocations: Option<usize>,
    /// Per configured user (the operator's media servers).
    pub max_allocations_per_user: Option<usize>,
    /// Per TURN REST username (one browser).
    pub max_allocations_per_rest_user: Option<usize>,
    /// TURN REST allocations per client IPv4 address or IPv6 /64.
    pub max_allocations_per_source: Option<usize>,
    /// Requests per second from one IPv4 address or IPv6 /64 on 5-tuples without an
    /// allocation; 0 turns the limit off.
    pub unauthenticated_rate: Option<u32>,
    /// How many such requests may come at once before the rate applies.
    pub unauthenticated_burst: Option<u32>,
    /// The same requests from all sources together, per second; 0 turns it off.
    pub unauthenticated_global_rate: Option<u32>,
    /// How many of those may come at once before the global rate applies.
    pub unauthenticated_global_burst: Option<u32>,
    /// `IP:PORT` of other relays: full or draining, new clients get 300 towards them.
    #[serde(default)]
    pub alternate_servers: Vec<String>,
    /// Seconds SIGTERM waits for allocations to end before stopping.
    pub drain_timeout: Option<u64>,
    /// Payload bit/s per allocation, both directions together; 0: unlimited.
    pub max_bps_per_allocation: Option<u64>,
    /// Payload bit/s of all of one username's allocations together; 0: unlimited.
    pub max_bps_per_user: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpSection {
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// auto | native | generic | off
    pub mode: Option<String>,
    /// auto | manual: whether the relay enables IP forwarding on these interfaces (which
    /// the kernel's FIB lookup requires) and guards it with nftables.
    pub forwarding: Option<String>,
    /// Keep CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN after setup so that an upgrade can
    /// bring a changed kernel program (default true); false drops them and such an
    /// upgrade is refused with the reason.
    pub program_upgrades: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpSection {
    /// Data-path threads sharing the UDP listeners with SO_REUSEPORT; 0 = one per CPU.
    pub workers: Option<usize>,
    /// auto | io_uring | epoll
    pub engine: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// `IP:PORT` of the admin HTTP endpoint; default 127.0.0.1:9641.
    pub address: Option<String>,
    /// Bearer token for the admin endpoint (required off loopback).
    pub token: Option<String>,
    /// Seconds a connection may take to send a request head, from opening or since the
    /// previous response (the keep-alive idle timeout).
    pub header_timeout: Option<u64>,
    /// Connections served at once; further ones are closed at once.
    pub max_connections: Option<usize>,
    /// Serve the endpoint over TLS with the `[tls]` certificate.
    pub tls: Option<bool>,
}
