//! Builds the JSON documents of `/api/allocations` and `/api/status` (their types live
//! in `relay-admin-api`, shared with the `relay status` client) from the shards' state.

use std::time::Instant;

pub use relay_admin_api::{
    AdminView, AllocationView, AllocationsView, ChannelView, LastReloadView, LimitsView,
    ListenerView, PermissionView, RelayAddrView, RelayView, RelayedView, ReloadsView, ShardView,
    StatusView, XdpInterfaceView, XdpView,
};
use relay_proto::server::{AllocationInfo, Server};

use crate::{control::Control, metrics::Traffic};

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
        bandwidth_dropped: a.counters().bandwidth_dropped,
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
    // Read through the counters' own handles: the shards' map writer is not waited for.
    if let Some(reader) = kernel.reader() {
        for a in list.iter_mut().filter(|a| a.transport == "udp") {
            let mut sum: Option<Traffic> = None;
            for r in &a.relayed {
                if let Ok(c) = reader.allocation_counters(r.bind) {
                    sum.get_or_insert_with(Traffic::default).add(c.into());
                }
                a.bandwidth_dropped += reader.bandwidth_drops(r.bind).unwrap_or(0);
            }
            if let Some(k) = sum {
                a.total.add(k);
            }
            a.kernel = sum;
        }
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
        generation: control.generation().0,
        took_over_unix: control.generation().1,
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
            max_bps_per_allocation: c.max_bps_per_allocation,
            max_bps_per_user: c.max_bps_per_user,
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
        cluster: control.cluster().view(std::time::Instant::now()),
    }
}
