//! The per-entity writes of [`XdpMaps`]: one permission, one channel (both directions),
//! one public IP (refcounted over the relayed addresses advertised on it). Each is one or
//! two map entries; the allocation bookkeeping they hang off stays in `maps.rs`.

use std::net::{IpAddr, SocketAddr};

use relay_common::{ChannelValue, ClientTarget, PERMISSION_SOME_PORTS};

use super::{
    super::writer::{Entry, Key, MapWriter, XdpMapsError},
    XdpMaps,
    keys::{channel_key, map_ip, peer_key, permission_key, port},
};

impl<W: MapWriter> XdpMaps<W> {
    fn target(
        &self,
        client: SocketAddr,
        listener: SocketAddr,
        channel: u16,
        slot: u32,
    ) -> ClientTarget {
        ClientTarget {
            client_ip: map_ip(client.ip()),
            listener_ip: map_ip(listener.ip()),
            client_port: port(client.port()),
            listener_port: port(listener.port()),
            channel: port(channel),
            flags: 0,
            _pad: [0; 1],
            slot,
        }
    }

    /// A permission for every port of `peer` (see [`Self::add_permission_for`]).
    pub fn add_permission(
        &mut self,
        client: SocketAddr,
        listener: SocketAddr,
        relay: SocketAddr,
        peer: IpAddr,
    ) -> Result<(), XdpMapsError> {
        self.add_permission_for(client, listener, relay, peer, true)
    }

    /// A permission for `peer`: its data reaches the client, and the client's bound
    /// channels reach it. `any_port`: the client may reach every port of `peer`, so the
    /// kernel forwards its Send indications too; otherwise they go up to userspace.
    pub fn add_permission_for(
        &mut self,
        client: SocketAddr,
        listener: SocketAddr,
        relay: SocketAddr,
        peer: IpAddr,
        any_port: bool,
    ) -> Result<(), XdpMapsError> {
        let slot = self.slot(relay)?;
        let mut value = self.target(client, listener, 0, slot);
        if !any_port {
            value.flags = PERMISSION_SOME_PORTS;
        }
        self.maps
            .insert(Entry::Permission(permission_key(relay, peer), value))
    }

    pub fn remove_permission(
        &mut self,
        relay: SocketAddr,
        peer: IpAddr,
    ) -> Result<(), XdpMapsError> {
        self.maps
            .remove(Key::Permission(permission_key(relay, peer)))
    }

    pub fn add_channel(
        &mut self,
        client: SocketAddr,
        listener: SocketAddr,
        relay: SocketAddr,
        peer: SocketAddr,
        channel: u16,
    ) -> Result<(), XdpMapsError> {
        let slot = self.slot(relay)?;
        let value = ChannelValue {
            relay_ip: map_ip(relay.ip()),
            peer_ip: map_ip(peer.ip()),
            relay_port: port(relay.port()),
            peer_port: port(peer.port()),
            slot,
        };
        let key = channel_key(client, listener, channel);
        self.maps.insert(Entry::Channel(key, value))?;
        let back = self.target(client, listener, channel, slot);
        if let Err(e) = self
            .maps
            .insert(Entry::PeerChannel(peer_key(relay, peer), back))
        {
            let _ = self.maps.remove(Key::Channel(key));
            return Err(e);
        }
        Ok(())
    }

    pub fn remove_channel(
        &mut self,
        client: SocketAddr,
        listener: SocketAddr,
        relay: SocketAddr,
        peer: SocketAddr,
        channel: u16,
    ) -> Result<(), XdpMapsError> {
        let a = self
            .maps
            .remove(Key::Channel(channel_key(client, listener, channel)));
        let b = self.maps.remove(Key::PeerChannel(peer_key(relay, peer)));
        a.and(b)
    }

    /// Counts one more relayed address advertised on `ip` (hairpin detection).
    pub fn add_public_ip(&mut self, ip: IpAddr) -> Result<(), XdpMapsError> {
        let ip = ip.to_canonical();
        let n = self.public_refs.entry(ip).or_insert(0);
        *n += 1;
        let n = *n;
        if n == 1
            && let Err(e) = self.maps.insert(Entry::PublicIp(map_ip(ip)))
        {
            self.public_refs.remove(&ip);
            return Err(e);
        }
        Ok(())
    }

    pub fn remove_public_ip(&mut self, ip: IpAddr) -> Result<(), XdpMapsError> {
        let ip = ip.to_canonical();
        match self.public_refs.get_mut(&ip) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.public_refs.remove(&ip);
                self.maps.remove(Key::PublicIp(map_ip(ip)))?;
            }
            None => {}
        }
        Ok(())
    }

    /// Permissions and channels written to the kernel (each allocation's share of its own:
    /// the others are served in userspace).
    pub fn permissions_and_channels(&self) -> (usize, usize) {
        self.offload.in_kernel()
    }
}
