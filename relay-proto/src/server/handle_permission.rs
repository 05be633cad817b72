//! CreatePermission (RFC 8656 §9): all peers are checked first, then all are installed, so a
//! refused request changes nothing.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::policy::{DenyReason, PeerVerdict};
use crate::stun::{Message, XorPeerAddress};

use super::Server;
use super::allocation::{Allocation, AllocationId, Family};
use super::auth_check::Auth;
use super::command::Command;
use super::event::Event;
use super::five_tuple::FiveTuple;
use super::peer_policy::scope_of;
use super::timers::TimerKey;

/// Most XOR-PEER-ADDRESS attributes looked at in one CreatePermission.
const MAX_PEERS_PER_REQUEST: usize = 32;

impl Server {
    /// 443 if the allocation has no relayed address of the peer's family, 403 (and
    /// [`Event::PeerDenied`]) if the policy refuses it.
    pub(crate) fn check_peer(&mut self, id: AllocationId, peer: SocketAddr) -> Result<(), u16> {
        let Some(a) = self.table.get(id) else {
            return Err(437);
        };
        if a.relayed(Family::of(peer.ip())).is_none() {
            return Err(443);
        }
        let scope = self.scope(a);
        match self.policy.check_ip(peer.ip(), scope) {
            PeerVerdict::Allow | PeerVerdict::Hairpin => Ok(()),
            PeerVerdict::Deny(reason) => {
                self.events.push(Event::PeerDenied {
                    user: a.user.clone(),
                    client: a.client,
                    peer,
                    reason,
                });
                Err(403)
            }
        }
    }

    /// [`check_peer`](Self::check_peer) for a request that names the peer's port
    /// (ChannelBind, Connect): the port must be one the policy allows, and a relay address
    /// with a port outside the relay range is a service of the relay host, refused (403,
    /// [`Event::PeerDenied`]) unless the operator allow-listed the address exactly.
    /// Answering 200 and then dropping the data would leave the client with a channel that
    /// silently goes nowhere.
    pub(crate) fn check_peer_port(
        &mut self,
        id: AllocationId,
        peer: SocketAddr,
    ) -> Result<(), u16> {
        self.check_peer(id, peer)?;
        let a = self.table.get(id).ok_or(437u16)?;
        let reason = match self.peer_port_refusal(a, peer) {
            Some(reason) => reason,
            None => return Ok(()),
        };
        self.events.push(Event::PeerDenied {
            user: a.user.clone(),
            client: a.client,
            peer,
            reason,
        });
        Err(403)
    }

    /// Why allocation `a` may not reach `peer` on its port, if it may not (its IP passed
    /// [`check_peer`](Self::check_peer)).
    pub(crate) fn peer_port_refusal(&self, a: &Allocation, peer: SocketAddr) -> Option<DenyReason> {
        let scope = self.scope(a);
        if let PeerVerdict::Deny(reason) = self.policy.check_port(peer, scope) {
            return Some(reason);
        }
        let host_port = self.is_own_relay_ip(peer.ip())
            && !self.config.ports.contains(&peer.port())
            && !self.policy.is_host_allow_listed(peer, scope);
        host_port.then_some(DenyReason::RelayHostPort(peer))
    }

    /// Installs or refreshes a permission (the caller checked peer and capacity); emits
    /// `PermissionCreated` when it is new.
    pub(crate) fn grant_permission(&mut self, now: Instant, id: AllocationId, ip: IpAddr) {
        let expires = now + self.config.permission_lifetime;
        let Some(a) = self.table.get_mut(id) else {
            return;
        };
        let Some(relay) = a.relayed(Family::of(ip)).map(|r| r.bind) else {
            return;
        };
        let any_port = self.policy.allows_every_port(ip, scope_of(a, &self.tcp));
        if a.install_permission(ip, expires, any_port) {
            self.commands.push_back(Command::PermissionCreated {
                id,
                client: a.client,
                relay,
                peer: ip,
                any_port,
            });
        }
        self.schedule(expires, TimerKey::Permission(id, ip));
    }

    pub(crate) fn create_permission(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        auth: &Auth,
        out: &mut [u8],
    ) -> Option<usize> {
        let a = Some(auth);
        let id = match self.owned_allocation(from, msg, auth, out) {
            Ok(id) => id,
            Err(reply) => return reply,
        };
        let mut peers: Vec<IpAddr> = Vec::new();
        for p in msg.attrs::<XorPeerAddress>() {
            let XorPeerAddress(peer) = match p {
                Ok(p) => p,
                Err(e) => {
                    let why = format!("Malformed attribute: {e}");
                    return self.reply_error(from, msg, a, 400, &why, out);
                }
            };
            if peers.len() >= MAX_PEERS_PER_REQUEST {
                return self.reply_error(from, msg, a, 400, "Too many XOR-PEER-ADDRESS", out);
            }
            if let Err(code) = self.check_peer(id, peer) {
                return self.reply_error(from, msg, a, code, "", out);
            }
            if !peers.contains(&peer.ip()) {
                peers.push(peer.ip());
            }
        }
        if peers.is_empty() {
            return self.reply_error(from, msg, a, 400, "Missing XOR-PEER-ADDRESS", out);
        }
        let fresh = {
            let al = self.table.get(id)?;
            let new = peers
                .iter()
                .filter(|ip| al.permission(**ip).is_none())
                .count();
            al.permissions.len() + new <= self.config.max_permissions
        };
        if !fresh {
            return self.reply_error(from, msg, a, 508, "Too many permissions", out);
        }
        let len = self.reply_success(msg, a, out)?;
        for ip in peers {
            self.grant_permission(now, id, ip);
        }
        self.remember(now, id, msg, &out[..len]);
        Some(len)
    }
}
