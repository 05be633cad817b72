//! Every allocation gets its share of the kernel maps (needs root: real maps).
//!
//! The maps hold PERMISSIONS_PER_ALLOCATION permissions and CHANNELS_PER_ALLOCATION
//! channels per allocation while the core allows 256 of each: one client with many
//! permissions must not fill them for everyone else.

#[path = "xdp_forward/core_driver.rs"]
#[allow(dead_code)]
mod core_driver;

use std::net::SocketAddr;

use core_driver::Core;
use relay_proto::server::Command;
use relay_user::xdp::XdpPath;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn peer(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 5000))
}

/// Kernel entries the commands ask for: (permissions, channels).
fn created(cmds: &[Command]) -> (usize, usize) {
    let perms = cmds
        .iter()
        .filter(|c| matches!(c, Command::PermissionCreated { .. }))
        .count();
    let chans = cmds
        .iter()
        .filter(|c| matches!(c, Command::ChannelBound { .. }))
        .count();
    (perms, chans)
}

#[test]
fn one_allocation_cannot_fill_the_maps_for_the_others() {
    // Maps sized for 2 allocations: 16 permissions, 8 channels.
    let mut xdp = XdpPath::load_with(2).expect("load (run as root)");
    let mut maps = xdp.take_maps().expect("maps");
    let listener = sa("10.0.0.1:3478");
    let (greedy, modest) = (sa("10.0.0.252:50000"), sa("10.0.0.253:50001"));
    let mut core = Core::new("10.0.0.1".parse().unwrap(), "203.0.113.50".parse().unwrap());

    core.allocate(greedy, listener);
    for i in 0..200u8 {
        core.permit(greedy, listener, peer(2 + i));
    }
    for i in 0..200u16 {
        core.bind(greedy, listener, 0x4000 + i, peer(2 + i as u8));
    }
    let cmds = core.commands();
    assert_eq!(created(&cmds), (200, 200), "the core grants them all");
    for cmd in &cmds {
        maps.apply(cmd)
            .unwrap_or_else(|e| panic!("the greedy allocation's {cmd:?} reached a full map: {e}"));
    }

    core.allocate(modest, listener);
    core.permit(modest, listener, peer(2));
    core.bind(modest, listener, 0x4000, peer(3));
    for cmd in core.commands() {
        maps.apply(&cmd)
            .unwrap_or_else(|e| panic!("the second allocation's {cmd:?} failed: {e}"));
    }
    // The greedy allocation: its first 4 channels, and the permissions of those 4 IPs (a
    // permission stays out while a channel to its IP is served in userspace, or the kernel
    // would answer that peer with Data indications). The modest one: all of its entries.
    let held = maps.kernel_entries().expect("count entries");
    assert_eq!(
        held,
        (4 + 2, 4 + 1),
        "(permissions, channels) in the kernel maps"
    );

    // Both allocations end: every entry leaves the maps.
    core.release(greedy, listener);
    core.release(modest, listener);
    for cmd in core.commands() {
        maps.apply(&cmd).unwrap();
    }
    assert_eq!(maps.kernel_entries().unwrap(), (0, 0));
}
