//! The core's commands as map entries, written to the in-memory maps (no root, no loaded
//! program): what `XdpMaps::apply` asks the kernel to hold for each command, and the
//! port flag the peer policy puts on a permission, the complete flag the shield reads. `xdp_forward` runs the same entries
//! through the kernel program.

#[path = "xdp_forward/core_driver.rs"]
#[allow(dead_code)]
mod core_driver;

use std::net::{IpAddr, SocketAddr};

use core_driver::Core;
use relay_common::{
    ALLOCATION_COMPLETE, ALLOCATIONS_MAP, CHANNELS_MAP, CLIENTS_MAP, ChannelKey, ClientKey,
    FAMILY_V4, PEER_CHANNELS_MAP, PERMISSION_SOME_PORTS, PERMISSIONS_MAP,
    PERMISSIONS_PER_ALLOCATION, PUBLIC_IPS_MAP, PeerKey, PermissionKey, RELAY_ADDRS_MAP, RelayKey,
};
use relay_proto::{
    policy::{AllowRule, PeerPolicy},
    server::{Command, Transport},
};
use relay_user::xdp::{Entry, FakeMaps, Key, MapWriter as _, XdpMaps, maps::map_ip};

const BIND: [u8; 4] = [10, 0, 0, 1];
const PUBLIC: [u8; 4] = [203, 0, 113, 50];

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn listener() -> SocketAddr {
    SocketAddr::from((BIND, 3478))
}

/// A core relaying on BIND advertised as PUBLIC, and empty in-memory maps.
fn setup() -> (Core, XdpMaps<FakeMaps>) {
    let core = Core::new(IpAddr::from(BIND), IpAddr::from(PUBLIC));
    (core, XdpMaps::with_writer(FakeMaps::default(), 16))
}

/// Applies what the core said since the last call; returns the commands.
fn apply(core: &mut Core, maps: &mut XdpMaps<FakeMaps>) -> Vec<Command> {
    let cmds = core.commands();
    for c in &cmds {
        maps.apply(c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
    cmds
}

fn relay_key(a: SocketAddr) -> RelayKey {
    RelayKey {
        ip: map_ip(a.ip()),
        port: a.port().to_be_bytes(),
        _pad: [0; 2],
    }
}

fn permission_key(relay: SocketAddr, peer: IpAddr) -> Key {
    Key::Permission(PermissionKey {
        relay_ip: map_ip(relay.ip()),
        peer_ip: map_ip(peer),
        relay_port: relay.port().to_be_bytes(),
        _pad: [0; 2],
    })
}

fn counts(maps: &XdpMaps<FakeMaps>) -> [usize; 7] {
    [
        ALLOCATIONS_MAP,
        RELAY_ADDRS_MAP,
        CLIENTS_MAP,
        PERMISSIONS_MAP,
        CHANNELS_MAP,
        PEER_CHANNELS_MAP,
        PUBLIC_IPS_MAP,
    ]
    .map(|m| maps.writer().count(m))
}

#[test]
fn a_udp_allocation_is_its_relay_names_client_and_public_ips_until_removed() {
    let (mut core, mut maps) = setup();
    let client = sa("10.0.0.200:40000");
    let relay_public = core.allocate(client, listener());
    apply(&mut core, &mut maps);
    let relay_bind = SocketAddr::new(IpAddr::from(BIND), relay_public.port());

    let fake = maps.writer();
    // [allocations, relay names, clients, permissions, channels, peer channels, public IPs]
    assert_eq!(counts(&maps), [1, 2, 1, 0, 0, 0, 2]);
    let Some(Entry::Allocation(_, to)) = fake.get(Key::Allocation(relay_key(relay_bind))) else {
        panic!("no ALLOCATIONS entry under the bind address: {:?}", fake);
    };
    assert_eq!(
        to.ip,
        map_ip(relay_public.ip()),
        "advertised as the public address"
    );
    assert!(fake.zeroed(to.slot), "its counter slot starts at zero");
    for named in [relay_public, relay_bind] {
        let v = fake.relay_value(Key::RelayAddr(relay_key(named)));
        assert_eq!(
            v.map(|v| v.ip),
            Some(map_ip(relay_bind.ip())),
            "{named} leads to the bind address"
        );
    }
    for ip in [IpAddr::from(BIND), IpAddr::from(PUBLIC)] {
        assert_eq!(
            fake.get(Key::PublicIp(map_ip(ip))),
            Some(Entry::PublicIp(map_ip(ip)))
        );
    }

    core.release(client, listener());
    apply(&mut core, &mut maps);
    assert_eq!(
        counts(&maps),
        [0; 7],
        "every entry leaves with the allocation"
    );
}

#[test]
fn a_permission_carries_the_port_flag_the_policy_gives_it() {
    let (mut core, mut maps) = setup();
    let rules: Vec<AllowRule> = ["10.0.0.0/25", "10.0.0.128/25 udp 5000-5999"]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
    core.server.set_policy(
        PeerPolicy::new(
            vec![],
            vec![],
            vec![IpAddr::from(BIND), IpAddr::from(PUBLIC)],
        )
        .with_allow(rules),
    );
    let client = sa("10.0.0.200:40000");
    let relay_public = core.allocate(client, listener());
    let relay_bind = SocketAddr::new(IpAddr::from(BIND), relay_public.port());
    let (open, limited) = (sa("10.0.0.7:5000"), sa("10.0.0.130:5000"));
    core.permit(client, listener(), open);
    core.permit(client, listener(), limited);
    let cmds = apply(&mut core, &mut maps);
    let any_port: Vec<bool> = cmds
        .iter()
        .filter_map(|c| match c {
            Command::PermissionCreated { any_port, .. } => Some(*any_port),
            _ => None,
        })
        .collect();
    assert_eq!(any_port, [true, false], "the core's policy answers");

    let flags = |peer: SocketAddr| match maps.writer().get(permission_key(relay_bind, peer.ip())) {
        Some(Entry::Permission(_, target)) => target.flags,
        other => panic!("permission for {peer}: {other:?}"),
    };
    assert_eq!(
        flags(open),
        0,
        "every port: Send indications stay in the kernel"
    );
    assert_eq!(
        flags(limited),
        PERMISSION_SOME_PORTS,
        "some ports: Send indications go up to userspace, which checks the port"
    );
}

#[test]
fn a_channel_is_both_directions_until_unbound() {
    let (mut core, mut maps) = setup();
    let client = sa("10.0.0.200:40000");
    let relay_public = core.allocate(client, listener());
    let relay_bind = SocketAddr::new(IpAddr::from(BIND), relay_public.port());
    let peer = sa("10.0.0.7:5000");
    core.bind(client, listener(), 0x4000, peer);
    apply(&mut core, &mut maps);
    // A channel binding installs a permission for its peer, too.
    assert_eq!(counts(&maps)[3..6], [1, 1, 1]);
    let channel = Key::Channel(ChannelKey {
        client_ip: map_ip(client.ip()),
        listener_ip: map_ip(listener().ip()),
        client_port: client.port().to_be_bytes(),
        listener_port: listener().port().to_be_bytes(),
        channel: 0x4000u16.to_be_bytes(),
        _pad: [0; 2],
    });
    match maps.writer().get(channel) {
        Some(Entry::Channel(_, v)) => {
            assert_eq!(
                (v.relay_ip, v.relay_port),
                (map_ip(relay_bind.ip()), relay_bind.port().to_be_bytes())
            );
            assert_eq!(
                (v.peer_ip, v.peer_port),
                (map_ip(peer.ip()), peer.port().to_be_bytes())
            );
        }
        other => panic!("client → peer channel entry: {other:?}"),
    }
    let back = Key::PeerChannel(PeerKey {
        relay_ip: map_ip(relay_bind.ip()),
        peer_ip: map_ip(peer.ip()),
        relay_port: relay_bind.port().to_be_bytes(),
        peer_port: peer.port().to_be_bytes(),
    });
    match maps.writer().get(back) {
        Some(Entry::PeerChannel(_, t)) => {
            assert_eq!(t.channel, 0x4000u16.to_be_bytes());
            assert_eq!(
                (t.client_ip, t.client_port),
                (map_ip(client.ip()), client.port().to_be_bytes())
            );
        }
        other => panic!("peer → client channel entry: {other:?}"),
    }

    // The core unbinds when the allocation ends (a binding has no request of its own to go).
    core.release(client, listener());
    let cmds = apply(&mut core, &mut maps);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::ChannelUnbound { .. })),
        "{cmds:?}"
    );
    assert_eq!(counts(&maps), [0; 7]);
}

#[test]
fn tcp_clients_touch_only_the_relay_ip_set() {
    let (mut core, mut maps) = setup();
    core.transport = Transport::Tcp;
    let client = sa("10.0.0.200:40000");
    core.allocate(client, listener());
    core.permit(client, listener(), sa("10.0.0.7:5000"));
    core.bind(client, listener(), 0x4000, sa("10.0.0.8:5000"));
    let cmds = apply(&mut core, &mut maps);
    assert_eq!(
        cmds.len(),
        4,
        "allocation, two permissions, a channel: {cmds:?}"
    );
    assert_eq!(
        counts(&maps),
        [0, 0, 0, 0, 0, 0, 2],
        "only PUBLIC_IPS (hairpin detection): the data of TCP clients stays in userspace"
    );
    core.release(client, listener());
    apply(&mut core, &mut maps);
    assert_eq!(counts(&maps), [0; 7]);
}

#[test]
fn a_public_ip_stays_while_any_allocation_is_advertised_on_it() {
    let (mut core, mut maps) = setup();
    let (a, b) = (sa("10.0.0.200:40000"), sa("10.0.0.201:40000"));
    core.allocate(a, listener());
    core.transport = Transport::Tcp;
    core.allocate(b, listener());
    apply(&mut core, &mut maps);
    let public = Key::PublicIp(map_ip(IpAddr::from(PUBLIC)));
    assert!(maps.writer().get(public).is_some());

    core.transport = Transport::Udp;
    core.release(a, listener());
    apply(&mut core, &mut maps);
    assert!(
        maps.writer().get(public).is_some(),
        "the TCP allocation is still advertised on {PUBLIC:?}: hairpin traffic to it must be recognised"
    );
    assert_eq!(counts(&maps), [0, 0, 0, 0, 0, 0, 2]);

    core.transport = Transport::Tcp;
    core.release(b, listener());
    apply(&mut core, &mut maps);
    assert_eq!(counts(&maps), [0; 7]);
}

/// An upgrade: the kernel's maps stay (the old process's entries are in them), the new
/// process's bookkeeping starts empty, and the restored core announces every allocation
/// again, whose entries overwrite the same keys. PUBLIC_IPS' reference counts are rebuilt
/// from those announcements, neither reset (the IP would vanish with the first release)
/// nor doubled (it would outlive the last).
#[test]
fn public_ip_references_are_rebuilt_not_doubled_across_a_handover() {
    let (mut core, mut old) = setup();
    let (a, b) = (sa("10.0.0.200:40000"), sa("10.0.0.201:40000"));
    core.allocate(a, listener());
    core.allocate(b, listener());
    let announced = apply(&mut core, &mut old);
    let before = counts(&old);
    let mut new = XdpMaps::with_writer(old.into_writer(), 16);
    for c in &announced {
        new.apply(c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
    assert_eq!(
        counts(&new),
        before,
        "the replay wrote the same entries over them"
    );
    let public = Key::PublicIp(map_ip(IpAddr::from(PUBLIC)));
    core.release(a, listener());
    apply(&mut core, &mut new);
    assert!(
        new.writer().get(public).is_some(),
        "the other allocation is still advertised on {PUBLIC:?}"
    );
    core.release(b, listener());
    apply(&mut core, &mut new);
    assert_eq!(
        counts(&new),
        [0; 7],
        "the last release removes the public IP"
    );
}

/// Whether the allocation of `client` at `relay_bind` is flagged complete, in ALLOCATIONS
/// and CLIENTS alike.
fn flagged_complete(maps: &XdpMaps<FakeMaps>, client: SocketAddr, relay_bind: SocketAddr) -> bool {
    let fake = maps.writer();
    let Some(Entry::Allocation(_, a)) = fake.get(Key::Allocation(relay_key(relay_bind))) else {
        panic!("no ALLOCATIONS entry for {relay_bind}");
    };
    let key = Key::Client(ClientKey {
        client_ip: map_ip(client.ip()),
        listener_ip: map_ip(listener().ip()),
        client_port: client.port().to_be_bytes(),
        listener_port: listener().port().to_be_bytes(),
        family: FAMILY_V4,
        _pad: [0; 3],
    });
    let c = fake.relay_value(key).expect("CLIENTS entry");
    assert_eq!(a._pad, c._pad, "ALLOCATIONS and CLIENTS agree");
    assert_eq!(c.slot, a.slot);
    a._pad[0] & ALLOCATION_COMPLETE != 0
}

#[test]
fn an_allocation_is_flagged_complete_only_while_the_kernel_holds_all_it_has() {
    let (mut core, mut maps) = setup();
    let client = sa("10.0.0.200:40000");
    let relay_public = core.allocate(client, listener());
    let relay_bind = SocketAddr::new(IpAddr::from(BIND), relay_public.port());
    apply(&mut core, &mut maps);
    assert!(
        flagged_complete(&maps, client, relay_bind),
        "a new allocation has nothing elsewhere"
    );
    // Its share of permissions fits the kernel.
    let share = PERMISSIONS_PER_ALLOCATION as u8;
    for n in 0..share {
        core.permit(client, listener(), sa(&format!("10.0.0.{}:5000", 10 + n)));
    }
    apply(&mut core, &mut maps);
    assert!(flagged_complete(&maps, client, relay_bind));
    // One more is served in userspace only: the kernel must pass up strangers again.
    core.permit(client, listener(), sa("10.0.0.99:5000"));
    apply(&mut core, &mut maps);
    assert!(!flagged_complete(&maps, client, relay_bind));
    assert_eq!(counts(&maps)[3], usize::from(share));
    // A second allocation of another client is unaffected.
    let other = sa("10.0.0.201:40000");
    let other_public = core.allocate(other, listener());
    apply(&mut core, &mut maps);
    let other_bind = SocketAddr::new(IpAddr::from(BIND), other_public.port());
    assert!(flagged_complete(&maps, other, other_bind));
    assert!(!flagged_complete(&maps, client, relay_bind));
    // The client's next allocation starts over, complete.
    core.release(client, listener());
    apply(&mut core, &mut maps);
    let again = core.allocate(client, listener());
    apply(&mut core, &mut maps);
    let again_bind = SocketAddr::new(IpAddr::from(BIND), again.port());
    assert!(flagged_complete(&maps, client, again_bind));
}
