//! The JSON documents of `/api/allocations` and `/api/status`, shared with the
//! `relay status` client. Field names are a contract with operators' scripts.

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use relay_proto::server::{AllocationInfo, Server};
use serde::{Deserialize, Serialize};

use crate::{control::Control, metrics::Traffic};

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

fn secs_until(t: Instant, now: Instant) -> u64 {
    t.saturating_duration_since(now).as_secs()
}

/// One allocation as the shard sees it; `shard` and `kernel` are filled in afterwards.
fn allocation(a: &AllocationInfo<'_>, now: Instant) -> AllocationView {
    let client = a.client();
    let userspace = Traffic::from(a.counters());
    AllocationView {
        id: a.id().to_string(),
        shard: String::new(),
        user: a.user().to_owned(),
        transport: client.transport.to_string(),
        client: client.client,
        listener: client.listener,
        relayed: a
            .relayed()
            .map(|r| RelayedView {
                public: r.public,
                bind: r.bind,
            })
            .collect(),
        permissions: a
            .permissions()
            .map(|p| PermissionView {
                peer: p.peer,
                remaining_s: secs_until(p.expires, now),
            })
            .collect(),
        channels: a
            .channels()
            .map(|c| ChannelView {
                number: c.number,
                peer: c.peer,
                remaining_s: secs_until(c.expires, now),
                cooling: c.cooling,
            })
            .collect(),
        userspace,
        kernel: None,
        total: userspace,
        age_s: now.saturating_duration_since(a.created()).as_secs(),
        lifetime_s: a.lifetime().as_secs(),
        remaining_s: secs_until(a.expires(), now),
    }
}

/// Every shard's allocations, with the kernel's counters added. Blocks.
pub fn allocations(control: &Control) -> AllocationsView {
    let answers = control.gather(crate::control::QUERY_TIMEOUT, |s: &mut Server| {
        let now = Instant::now();
        s.allocations()
            .map(|a| allocation(&a, now))
            .collect::<Vec<_>>()
    });
    // `gather` answers in shard order.
    let per_shard = answers
        .into_iter()
        .zip(control.shards().iter().map(|s| s.name.clone()));
    let mut missing = Vec::new();
    let mut list = Vec::new();
    for (answer, name) in per_shard {
        match answer {
            Some(v) => list.extend(v.into_iter().map(|mut a| {
                a.shard = name.clone();
                a
            })),
            None => missing.push(name),
        }
    }
    let kernel = control.kernel();
    if kernel.is_on() {
        kernel.with(|maps| {
            for a in list.iter_mut().filter(|a| a.transport == "udp") {
                let mut sum: Option<Traffic> = None;
                for r in &a.relayed {
                    if let Ok(c) = maps.allocation_counters(r.bind) {
                        sum.get_or_insert_with(Traffic::default).add(c.into());
                    }
                }
                if let Some(k) = sum {
                    a.total.add(k);
                }
                a.kernel = sum;
            }
        });
    }
    list.sort_by(|a, b| b.age_s.cmp(&a.age_s).then_with(|| a.id.cmp(&b.id)));
    AllocationsView {
        count: list.len(),
        draining: control.is_draining(),
        shards_missing: missing,
        allocations: list,
    }
}

/// The relay's settings and state. Blocks.
pub fn status(control: &Control) -> StatusView {
    let c = control.config();
    let answers = control.gather(crate::control::QUERY_TIMEOUT, |s: &mut Server| {
        (s.allocation_count(), s.ports_in_use())
    });
    let ports_in_use = answers.iter().flatten().map(|(_, p)| *p).next();
    let shards: Vec<ShardView> = control
        .shards()
        .iter()
        .zip(&answers)
        .map(|(s, a)| ShardView {
            name: s.name.clone(),
            allocations: a.map(|(n, _)| n),
        })
        .collect();
    let xdp = control.xdp();
    let (ok, refused, last) = control.reloads();
    let relay_addr = |r: Option<crate::config::RelayAddrs>| {
        r.map(|r| RelayAddrView {
            bind: r.bind,
            public: r.public,
        })
    };
    StatusView {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_unix: control.started_unix(),
        uptime_s: control.uptime().as_secs(),
        draining: control.is_draining(),
        config_file: control.config_path().map(|p| p.display().to_string()),
        realm: c.realm.clone(),
        listeners: c
            .listeners
            .iter()
            .map(|l| ListenerView {
                address: l.address,
                transports: l
                    .transports
                    .iter()
                    .map(|t| format!("{t:?}").to_lowercase())
                    .collect(),
            })
            .collect(),
        relay: RelayView {
            ipv4: relay_addr(c.relay_v4),
            ipv6: relay_addr(c.relay_v6),
            ports: format!("{}-{}", c.ports.low, c.ports.high),
            ports_in_use_v4: c.relay_v4.and(ports_in_use.map(|p| p.0)),
            ports_in_use_v6: c.relay_v6.and(ports_in_use.map(|p| p.1)),
        },
        xdp: XdpView {
            configured: xdp.configured.to_string(),
            interfaces: xdp
                .interfaces
                .iter()
                .map(|i| XdpInterfaceView {
                    name: i.interface.clone(),
                    ifindex: i.ifindex,
                    mode: i.mode.to_owned(),
                })
                .collect(),
            off_reason: xdp.off_reason.clone(),
            forwarding_off: xdp.forwarding_off.clone(),
        },
        limits: LimitsView {
            max_allocations: c.max_allocations,
            max_allocations_per_user: c.max_allocations_per_user,
            max_allocations_per_rest_user: c.max_allocations_per_rest_user,
            max_allocations_per_source: c.max_allocations_per_source,
            alternate_servers: c.alternate_servers.clone(),
            drain_timeout_s: c.drain_timeout.as_secs(),
        },
        allocations: shards.iter().map(|s| s.allocations).sum(),
        shards,
        reloads: ReloadsView {
            succeeded: ok,
            refused,
            last: last.map(|r| LastReloadView {
                at_unix: r.at_unix,
                ok: r.ok,
                message: r.message,
            }),
        },
        admin: AdminView {
            address: c.admin.address,
            token_required: c.admin.token.is_some(),
        },
    }
}
