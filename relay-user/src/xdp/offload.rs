//! Which permissions and channels of each UDP allocation the kernel holds.
//!
//! The maps are sized for [`PERMISSIONS_PER_ALLOCATION`] permissions and
//! [`CHANNELS_PER_ALLOCATION`] channels per allocation ([`relay_common::map_sizes`]), while
//! the core grants 256 of each. Written as they come, about `max_allocations / 32` clients
//! with many permissions would fill PERMISSIONS and every later call would fall back to
//! userspace. So each allocation gets its share: its first channels and permissions go to
//! the kernel, the others are served in userspace (the kernel passes up what it has no
//! entry for). When a kernel-held one ends, the oldest userspace-only one takes its place:
//! ICE creates permissions for every candidate of the remote side, and the pair it finally
//! nominates should reach the kernel once the unused candidates' permissions expire.
//!
//! A permission stays out of the kernel while a channel to its IP is served in userspace:
//! the kernel, finding the permission but not the channel, would answer that peer with Data
//! indications where the client bound a channel.
//!
//! Pure bookkeeping: the core's permission and channel changes in, map writes out.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use relay_common::{CHANNELS_PER_ALLOCATION, PERMISSIONS_PER_ALLOCATION};
use relay_proto::server::FiveTuple;

/// What the kernel holds per allocation: the sizing of the maps.
const PERMISSIONS: usize = PERMISSIONS_PER_ALLOCATION as usize;
const CHANNELS: usize = CHANNELS_PER_ALLOCATION as usize;

/// A write to the maps: the entry, and whether it goes in (`true`) or out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Write {
    Permission {
        client: FiveTuple,
        relay: SocketAddr,
        peer: IpAddr,
        /// The policy allows every port of `peer` (Send indications may stay in the kernel).
        any_port: bool,
        add: bool,
    },
    Channel {
        client: FiveTuple,
        relay: SocketAddr,
        peer: SocketAddr,
        channel: u16,
        add: bool,
    },
}

/// Per UDP allocation (by its client 5-tuple), the live permissions and channels.
#[derive(Default)]
pub struct Offload {
    allocations: HashMap<FiveTuple, Held>,
    /// Permissions and channels written to the kernel, all allocations together.
    in_kernel: (usize, usize),
}

/// One allocation's live permissions and channels, oldest first.
#[derive(Default)]
struct Held {
    permissions: Vec<Permission>,
    channels: Vec<Channel>,
}

struct Permission {
    relay: SocketAddr,
    peer: IpAddr,
    any_port: bool,
    in_kernel: bool,
}

struct Channel {
    relay: SocketAddr,
    peer: SocketAddr,
    number: u16,
    in_kernel: bool,
}

impl Offload {
    /// The core created (`add`) or removed a permission of `client`'s allocation: the map
    /// writes that follow, in order, go to `out`. `any_port` is the policy's answer for a
    /// new permission (a change of it arrives as a removal and a new creation).
    #[allow(clippy::too_many_arguments)]
    pub fn permission(
        &mut self,
        client: FiveTuple,
        relay: SocketAddr,
        peer: IpAddr,
        any_port: bool,
        add: bool,
        out: &mut Vec<Write>,
    ) {
        let start = out.len();
        let held = self.allocations.entry(client).or_default();
        let known = held.permissions.iter().position(|p| p.peer == peer);
        match (known, add) {
            (None, true) => held.permissions.push(Permission {
                relay,
                peer,
                any_port,
                in_kernel: false,
            }),
            (Some(i), false) => {
                let p = held.permissions.remove(i);
                if p.in_kernel {
                    out.push(p.write(client, false));
                }
            }
            // A repeated command: nothing changes.
            _ => {}
        }
        self.settle(client, start, out);
    }

    /// The core bound (`add`) or unbound a channel of `client`'s allocation.
    pub fn channel(
        &mut self,
        client: FiveTuple,
        relay: SocketAddr,
        peer: SocketAddr,
        channel: u16,
        add: bool,
        out: &mut Vec<Write>,
    ) {
        let start = out.len();
        let held = self.allocations.entry(client).or_default();
        let known = held.channels.iter().position(|c| c.number == channel);
        match (known, add) {
            (None, true) => held.channels.push(Channel {
                relay,
                peer,
                number: channel,
                in_kernel: false,
            }),
            (Some(i), false) => {
                let c = held.channels.remove(i);
                if c.in_kernel {
                    out.push(c.write(client, false));
                }
            }
            _ => {}
        }
        self.settle(client, start, out);
    }

    /// Reconciles `client`'s allocation with its share; `out` holds this change's writes
    /// from `start` on.
    fn settle(&mut self, client: FiveTuple, start: usize, out: &mut Vec<Write>) {
        if let Some(held) = self.allocations.get_mut(&client) {
            held.reconcile(client, out);
            if held.permissions.is_empty() && held.channels.is_empty() {
                self.allocations.remove(&client);
            }
        }
        for w in &out[start..] {
            let (n, add) = match w {
                Write::Permission { add, .. } => (&mut self.in_kernel.0, *add),
                Write::Channel { add, .. } => (&mut self.in_kernel.1, *add),
            };
            *n = if add { *n + 1 } else { n.saturating_sub(1) };
        }
    }

    /// `client`'s allocation ended: removals for whatever of it the kernel still holds
    /// (nothing, when the core removed its permissions and channels first, as it does).
    pub fn forget(&mut self, client: FiveTuple, out: &mut Vec<Write>) {
        let start = out.len();
        if let Some(held) = self.allocations.remove(&client) {
            let permissions = held.permissions.iter().filter(|p| p.in_kernel);
            out.extend(permissions.map(|p| p.write(client, false)));
            let channels = held.channels.iter().filter(|c| c.in_kernel);
            out.extend(channels.map(|c| c.write(client, false)));
        }
        self.settle(client, start, out);
    }

    /// Whether every live permission and channel of `client`'s allocation is in the kernel
    /// (the kernel may then drop what none of them allows).
    pub fn complete(&self, client: FiveTuple) -> bool {
        self.allocations.get(&client).is_none_or(|h| {
            h.permissions.iter().all(|p| p.in_kernel) && h.channels.iter().all(|c| c.in_kernel)
        })
    }

    /// Permissions and channels the kernel holds (as written), all allocations together.
    pub fn in_kernel(&self) -> (usize, usize) {
        self.in_kernel
    }

    /// Allocations with permissions or channels tracked (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.allocations.len()
    }
}

impl Permission {
    fn write(&self, client: FiveTuple, add: bool) -> Write {
        Write::Permission {
            client,
            relay: self.relay,
            peer: self.peer,
            any_port: self.any_port,
            add,
        }
    }
}

impl Channel {
    fn write(&self, client: FiveTuple, add: bool) -> Write {
        Write::Channel {
            client,
            relay: self.relay,
            peer: self.peer,
            channel: self.number,
            add,
        }
    }
}

impl Held {
    /// Brings the kernel to the allocation's share: removals first, so the map has room for
    /// what replaces them.
    fn reconcile(&mut self, client: FiveTuple, out: &mut Vec<Write>) {
        let channel_wanted: Vec<bool> = (0..self.channels.len()).map(|i| i < CHANNELS).collect();
        let kept_out: HashSet<IpAddr> = self
            .channels
            .iter()
            .zip(&channel_wanted)
            .filter(|(_, wanted)| !**wanted)
            .map(|(c, _)| c.peer.ip())
            .collect();
        let mut room = PERMISSIONS;
        let permission_wanted: Vec<bool> = self
            .permissions
            .iter()
            .map(|p| {
                let wanted = room > 0 && !kept_out.contains(&p.peer);
                room -= usize::from(wanted);
                wanted
            })
            .collect();
        for (c, &wanted) in self.channels.iter_mut().zip(&channel_wanted) {
            if c.in_kernel && !wanted {
                c.in_kernel = false;
                out.push(c.write(client, false));
            }
        }
        for (p, &wanted) in self.permissions.iter_mut().zip(&permission_wanted) {
            if p.in_kernel && !wanted {
                p.in_kernel = false;
                out.push(p.write(client, false));
            }
        }
        for (p, &wanted) in self.permissions.iter_mut().zip(&permission_wanted) {
            if !p.in_kernel && wanted {
                p.in_kernel = true;
                out.push(p.write(client, true));
            }
        }
        for (c, &wanted) in self.channels.iter_mut().zip(&channel_wanted) {
            if !c.in_kernel && wanted {
                c.in_kernel = true;
                out.push(c.write(client, true));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_proto::server::Transport;

    fn client(n: u16) -> FiveTuple {
        FiveTuple::new(
            ([203, 0, 113, 7], 40000 + n).into(),
            ([198, 51, 100, 1], 3478).into(),
            Transport::Udp,
        )
    }

    fn relay(n: u16) -> SocketAddr {
        ([198, 51, 100, 1], 24000 + n).into()
    }

    fn ip(i: u16) -> IpAddr {
        IpAddr::from((u32::from_be_bytes([10, 1, 0, 0]) + u32::from(i)).to_be_bytes())
    }

    /// The core's commands, in short.
    #[derive(Clone, Copy)]
    enum Cmd {
        Permit(u16, u16),
        Revoke(u16, u16),
        Bind(u16, u16, u16),
        Unbind(u16, u16, u16),
    }
    use Cmd::*;

    fn perm(n: u16, i: u16, add: bool) -> Write {
        Write::Permission {
            client: client(n),
            relay: relay(n),
            peer: ip(i),
            any_port: true,
            add,
        }
    }

    fn chan(n: u16, channel: u16, i: u16, add: bool) -> Write {
        Write::Channel {
            client: client(n),
            relay: relay(n),
            peer: SocketAddr::new(ip(i), 5000),
            channel,
            add,
        }
    }

    /// Map writes for `cmds`; `held` follows the kernel's (permissions, channels).
    fn run(o: &mut Offload, cmds: &[Cmd], held: &mut (i64, i64)) -> Vec<Write> {
        let mut out = Vec::new();
        for &c in cmds {
            match c {
                Permit(n, i) | Revoke(n, i) => o.permission(
                    client(n),
                    relay(n),
                    ip(i),
                    true,
                    matches!(c, Permit(..)),
                    &mut out,
                ),
                Bind(n, ch, i) | Unbind(n, ch, i) => o.channel(
                    client(n),
                    relay(n),
                    SocketAddr::new(ip(i), 5000),
                    ch,
                    matches!(c, Bind(..)),
                    &mut out,
                ),
            }
        }
        for w in &out {
            match *w {
                Write::Permission { add, .. } => held.0 += if add { 1 } else { -1 },
                Write::Channel { add, .. } => held.1 += if add { 1 } else { -1 },
            }
        }
        out
    }

    #[test]
    fn an_allocation_holds_at_most_its_share_and_the_next_one_gets_its_own() {
        let mut o = Offload::default();
        let mut held = (0, 0);
        let permits: Vec<Cmd> = (0..256).map(|i| Permit(1, i)).collect();
        run(&mut o, &permits, &mut held);
        assert_eq!(held, (8, 0));
        let binds: Vec<Cmd> = (0..256).map(|i| Bind(1, 0x4000 + i, i)).collect();
        run(&mut o, &binds, &mut held);
        // The first 4 channels; of the permissions, those of IPs 0-3 only: every other IP
        // has a channel served in userspace.
        assert_eq!(held, (4, 4));
        let out = run(&mut o, &[Permit(2, 0), Bind(2, 0x4000, 1)], &mut held);
        assert_eq!(
            out,
            vec![perm(2, 0, true), chan(2, 0x4000, 1, true)],
            "a second allocation gets its entries"
        );
        assert_eq!(o.in_kernel(), (5, 5));
    }

    #[test]
    fn a_userspace_only_entry_is_promoted_when_a_kernel_one_ends() {
        let mut o = Offload::default();
        let mut held = (0, 0);
        let permits: Vec<Cmd> = (0..10).map(|i| Permit(1, i)).collect();
        run(&mut o, &permits, &mut held);
        assert_eq!(held, (8, 0));
        // A userspace-only permission ends: nothing to write.
        assert!(run(&mut o, &[Revoke(1, 9)], &mut held).is_empty());
        // A kernel one ends: its removal, then the oldest waiting one (IP 8) comes in.
        let out = run(&mut o, &[Revoke(1, 0)], &mut held);
        assert_eq!(out, vec![perm(1, 0, false), perm(1, 8, true)]);

        let binds: Vec<Cmd> = (0..5).map(|i| Bind(1, 0x4000 + i, 20 + i)).collect();
        run(&mut o, &binds, &mut held);
        assert_eq!(held, (8, 4));
        let out = run(&mut o, &[Unbind(1, 0x4001, 21)], &mut held);
        assert_eq!(
            out,
            vec![chan(1, 0x4001, 21, false), chan(1, 0x4004, 24, true)]
        );
        // Everything ends: nothing left in the kernel or in the bookkeeping.
        let mut rest: Vec<Cmd> = (1..=8).map(|i| Revoke(1, i)).collect();
        rest.extend([0, 2, 3, 4].map(|c| Unbind(1, 0x4000 + c, 20 + c)));
        run(&mut o, &rest, &mut held);
        assert_eq!(held, (0, 0));
        assert_eq!(o.tracked(), 0);
        assert_eq!(o.in_kernel(), (0, 0));
    }

    #[test]
    fn a_permission_waits_while_a_channel_to_its_ip_is_in_userspace() {
        let mut o = Offload::default();
        let mut held = (0, 0);
        let binds: Vec<Cmd> = (0..4).map(|i| Bind(1, 0x4000 + i, i)).collect();
        run(&mut o, &binds, &mut held);
        run(&mut o, &[Permit(1, 7)], &mut held);
        assert_eq!(held, (1, 4));
        // A fifth channel, to IP 7: served in userspace, so IP 7's permission leaves.
        let out = run(&mut o, &[Bind(1, 0x4004, 7)], &mut held);
        assert_eq!(out, vec![perm(1, 7, false)]);
        // A kernel channel ends: the fifth comes in, and IP 7's permission with it.
        let out = run(&mut o, &[Unbind(1, 0x4000, 0)], &mut held);
        assert_eq!(
            out,
            vec![
                chan(1, 0x4000, 0, false),
                perm(1, 7, true),
                chan(1, 0x4004, 7, true)
            ]
        );
    }

    #[test]
    fn an_allocation_that_ends_with_entries_left_takes_them_out() {
        let mut o = Offload::default();
        let mut held = (0, 0);
        run(
            &mut o,
            &[Permit(1, 0), Bind(1, 0x4000, 0), Permit(2, 1)],
            &mut held,
        );
        let mut out = Vec::new();
        o.forget(client(1), &mut out);
        assert_eq!(out, vec![perm(1, 0, false), chan(1, 0x4000, 0, false)]);
        assert_eq!((o.in_kernel(), o.tracked()), ((1, 0), 1));
    }

    /// A permission the policy limits to some ports reaches the kernel flagged so (its Send
    /// indications then go up for the port check), also when it is promoted later.
    #[test]
    fn a_port_limited_permission_keeps_its_flag_in_the_kernel() {
        let mut o = Offload::default();
        let mut out = Vec::new();
        o.permission(client(1), relay(1), ip(0), false, true, &mut out);
        assert_eq!(
            out,
            vec![Write::Permission {
                client: client(1),
                relay: relay(1),
                peer: ip(0),
                any_port: false,
                add: true,
            }]
        );
    }
}
