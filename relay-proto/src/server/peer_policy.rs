//! The peer policy in force, and what changes when it changes: a reload (SIGHUP) or a new
//! set of locally routed prefixes (an address added to the relay host) re-judges every
//! permission, channel and TCP peer connection, so nothing refused now keeps working.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::policy::{PeerPolicy, PeerVerdict, Scope};

use super::Server;
use super::allocation::{Allocation, AllocationId, Family};
use super::command::Command;
use super::tcp_relay::{ConnectionEnd, RelayProtocol, TcpRelays};

/// Who allocation `a` is to the policy: its credential kind and relay protocol.
pub(crate) fn scope_of(a: &Allocation, tcp: &TcpRelays) -> Scope {
    let protocol = if tcp.is_tcp(a.id) {
        RelayProtocol::Tcp
    } else {
        RelayProtocol::Udp
    };
    Scope::new(a.credential, protocol)
}

/// What a changed policy does to one allocation.
#[derive(Default)]
struct Doomed {
    /// Permissions now refused (with their channels and connections).
    peers: Vec<(AllocationId, IpAddr)>,
    /// Permissions whose "every port" answer changed: the data paths are told again.
    rescoped: Vec<(AllocationId, IpAddr, bool)>,
    /// Channels and TCP peer connections to a port now refused.
    ports: Vec<(AllocationId, SocketAddr)>,
}

impl Server {
    pub(crate) fn scope(&self, a: &Allocation) -> Scope {
        scope_of(a, &self.tcp)
    }

    /// New peer policy (SIGHUP). The locally routed prefixes in force are kept (they come
    /// from the host, not the config). Existing permissions, channels and TCP connections
    /// for peers the new policy denies are removed at once.
    pub fn set_policy(&mut self, mut policy: PeerPolicy) {
        policy.set_local_prefixes(self.policy.local_prefixes().iter().copied());
        self.policy = policy;
        self.reapply_policy();
    }

    /// The prefixes the relay host's kernel delivers locally (its addresses): peers there
    /// are refused from now on, and existing permissions for them removed.
    pub fn set_local_prefixes(&mut self, prefixes: impl IntoIterator<Item = IpNet>) {
        self.policy.set_local_prefixes(prefixes);
        self.reapply_policy();
    }

    fn reapply_policy(&mut self) {
        let mut doomed = Doomed::default();
        for a in self.table.iter() {
            let scope = self.scope(a);
            for p in &a.permissions {
                if matches!(self.policy.check_ip(p.ip, scope), PeerVerdict::Deny(_)) {
                    doomed.peers.push((a.id, p.ip));
                    continue;
                }
                let any_port = self.policy.allows_every_port(p.ip, scope);
                if any_port != p.any_port {
                    doomed.rescoped.push((a.id, p.ip, any_port));
                }
            }
            let channels = a.channels.iter().map(|c| c.peer);
            let connections = self
                .tcp
                .connections_of(a.id)
                .iter()
                .filter_map(|c| self.tcp.get(*c).map(|pc| pc.peer));
            for peer in channels.chain(connections) {
                if !doomed.peers.contains(&(a.id, peer.ip()))
                    && self.peer_port_refusal(a, peer).is_some()
                {
                    doomed.ports.push((a.id, peer));
                }
            }
        }
        for (id, ip) in doomed.peers {
            self.revoke_peer(id, ip);
        }
        for (id, ip, any_port) in doomed.rescoped {
            self.rescope_permission(id, ip, any_port);
        }
        for (id, peer) in doomed.ports {
            self.revoke_peer_port(id, peer);
        }
    }

    /// Tells the data paths again about the permission for `ip`, with a new `any_port`:
    /// removed and created, so every `PermissionCreated` keeps its one removal.
    fn rescope_permission(&mut self, id: AllocationId, ip: IpAddr, any_port: bool) {
        let Some(a) = self.table.get_mut(id) else {
            return;
        };
        let Some(relay) = a.relayed(Family::of(ip)).map(|r| r.bind) else {
            return;
        };
        let Some(p) = a.permissions.iter_mut().find(|p| p.ip == ip) else {
            return;
        };
        p.any_port = any_port;
        let client = a.client;
        self.commands.push_back(Command::PermissionRemoved {
            id,
            client,
            relay,
            peer: ip,
        });
        self.commands.push_back(Command::PermissionCreated {
            id,
            client,
            relay,
            peer: ip,
            any_port,
        });
    }

    /// Removes the channel and TCP connections to `peer` (one port of a permitted IP).
    fn revoke_peer_port(&mut self, id: AllocationId, peer: SocketAddr) {
        let Some(a) = self.table.get_mut(id) else {
            return;
        };
        let Some(relay) = a.relayed(Family::of(peer.ip())).map(|r| r.bind) else {
            return;
        };
        let client = a.client;
        if let Some(i) = a.channels.iter().position(|c| c.peer == peer) {
            let c = a.channels.swap_remove(i);
            if !c.cooling {
                self.commands.push_back(Command::ChannelUnbound {
                    id,
                    client,
                    relay,
                    peer,
                    channel: c.number,
                });
            }
        }
        self.close_connections_to(id, |p| p == peer, ConnectionEnd::PeerDenied);
    }
}
