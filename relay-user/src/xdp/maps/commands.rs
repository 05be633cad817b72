//! [`XdpMaps::apply`]: the protocol core's [`Command`]s turned into map writes, with the
//! [`ALLOCATION_COMPLETE`] flag kept honest around them (cleared before partial writes,
//! set after complete ones). Apart from the bookkeeping in `maps.rs` because it is the
//! one place that knows the command set.
//!
//! [`ALLOCATION_COMPLETE`]: relay_common::ALLOCATION_COMPLETE

use std::net::SocketAddr;

use relay_proto::server::{Command, FiveTuple, Transport};

use super::{
    super::{
        offload::Write,
        writer::{Entry, MapWriter, XdpMapsError},
    },
    Relay, XdpMaps,
    keys::{flagged, own_ips, relay_key, relay_value},
};

impl<W: MapWriter> XdpMaps<W> {
    /// Flags `client`'s relayed addresses [`ALLOCATION_COMPLETE`] (`complete`) or not, in
    /// ALLOCATIONS and CLIENTS.
    ///
    /// [`ALLOCATION_COMPLETE`]: relay_common::ALLOCATION_COMPLETE
    fn mark(&mut self, client: FiveTuple, complete: bool) -> Result<(), XdpMapsError> {
        let binds = self.owned.get(&(client.client, client.listener));
        let mut changed: Vec<(SocketAddr, Relay)> = Vec::new();
        for bind in binds.into_iter().flatten() {
            if let Some(r) = self.relays.get_mut(bind)
                && r.complete != complete
            {
                r.complete = complete;
                changed.push((*bind, *r));
            }
        }
        let mut result = Ok(());
        for (bind, r) in changed {
            result = result.and(self.maps.insert(Entry::Allocation(
                relay_key(bind),
                flagged(relay_value(r.public, r.slot), complete),
            )));
            if let Some(key) = r.client {
                let v = flagged(relay_value(bind, r.slot), complete);
                result = result.and(self.maps.insert(Entry::Client(key, v)));
            }
        }
        result
    }

    /// Replays one command of the protocol core. Commands for TCP/TLS clients only touch
    /// the relay-IP set (hairpin detection); their data stays in userspace. Permissions and
    /// channels go through [`Offload`]: each allocation holds at most its share of the maps.
    ///
    /// [`Offload`]: crate::xdp::offload::Offload
    pub fn apply(&mut self, cmd: &Command) -> Result<(), XdpMapsError> {
        let mut writes = Vec::new();
        let udp_client = match cmd {
            Command::PermissionCreated { client, .. }
            | Command::PermissionRemoved { client, .. }
            | Command::ChannelBound { client, .. }
            | Command::ChannelUnbound { client, .. }
                if client.transport == Transport::Udp =>
            {
                Some(*client)
            }
            _ => None,
        };
        // Every step is tried (a removal that fails must not keep a promotion out, nor
        // leave entries behind); the first failure is returned.
        let mut result = Ok(());
        match cmd {
            Command::AllocationCreated {
                id,
                client,
                relay,
                public,
                user,
                ..
            } => {
                let udp = client.transport == Transport::Udp;
                let added = own_ips(*relay, *public)
                    .try_for_each(|ip| self.add_public_ip(ip))
                    .and_then(|()| match udp {
                        true => self
                            .add_udp_allocation(client.client, client.listener, *relay, *public)
                            .map(drop),
                        false => Ok(()),
                    });
                if added.is_err() && udp {
                    self.clients_unknown();
                }
                added?;
                if udp {
                    self.limit_bandwidth(*relay, id.as_u64(), user)?;
                }
            }
            Command::AllocationRemoved {
                client,
                relay,
                public,
                ..
            } => {
                if client.transport == Transport::Udp {
                    if let Some(id) = self.relays.get(relay).and_then(|r| r.bandwidth) {
                        self.bandwidth.detach(id);
                    }
                    result = self.remove_allocation(*relay);
                    // Its permissions and channels were removed just before; this only
                    // guards the bookkeeping against a command stream that skipped some.
                    self.offload.forget(*client, &mut writes);
                    self.tainted.remove(&(client.client, client.listener));
                }
                for ip in own_ips(*relay, *public) {
                    result = result.and(self.remove_public_ip(ip));
                }
            }
            Command::PermissionCreated {
                client,
                relay,
                peer,
                any_port,
                ..
            } if client.transport == Transport::Udp => {
                self.offload
                    .permission(*client, *relay, *peer, *any_port, true, &mut writes);
            }
            Command::PermissionRemoved {
                client,
                relay,
                peer,
                ..
            } if client.transport == Transport::Udp => {
                self.offload
                    .permission(*client, *relay, *peer, true, false, &mut writes);
            }
            Command::ChannelBound {
                client,
                relay,
                peer,
                channel,
                ..
            } if client.transport == Transport::Udp => {
                self.offload
                    .channel(*client, *relay, *peer, *channel, true, &mut writes);
            }
            Command::ChannelUnbound {
                client,
                relay,
                peer,
                channel,
                ..
            } if client.transport == Transport::Udp => {
                self.offload
                    .channel(*client, *relay, *peer, *channel, false, &mut writes);
            }
            _ => {}
        }
        // A partial allocation loses its flag before the writes, a complete one gets it
        // after them: the kernel never drops on the strength of entries not yet written.
        if let Some(c) = udp_client
            && !self.is_complete(c)
        {
            result = result.and(self.mark(c, false));
        }
        for w in writes {
            let written = self.write(w);
            if let (Err(_), Some(c)) = (&written, udp_client) {
                self.tainted.insert((c.client, c.listener));
                result = result.and(self.mark(c, false));
            }
            result = result.and(written);
        }
        if let Some(c) = udp_client
            && self.is_complete(c)
        {
            result = result.and(self.mark(c, true));
        }
        result
    }

    /// One permission or channel write, as [`Offload`] decided it.
    ///
    /// [`Offload`]: crate::xdp::offload::Offload
    fn write(&mut self, w: Write) -> Result<(), XdpMapsError> {
        match w {
            Write::Permission {
                client,
                relay,
                peer,
                any_port,
                add: true,
            } => self.add_permission_for(client.client, client.listener, relay, peer, any_port),
            Write::Permission {
                relay,
                peer,
                add: false,
                ..
            } => self.remove_permission(relay, peer),
            Write::Channel {
                client,
                relay,
                peer,
                channel,
                add: true,
            } => self.add_channel(client.client, client.listener, relay, peer, channel),
            Write::Channel {
                client,
                relay,
                peer,
                channel,
                add: false,
            } => self.remove_channel(client.client, client.listener, relay, peer, channel),
        }
    }
}
