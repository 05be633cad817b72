//! The fast path's maps seen from the daemon: [`XdpMaps`] replays the protocol core's
//! [`Command`]s into them (UDP clients only: TCP/TLS allocations stay in userspace) and
//! reads the counters back.

use std::{
    collections::HashMap as StdHashMap,
    net::{IpAddr, SocketAddr},
};

use aya::{
    Ebpf,
    maps::{DevMapHash, HashMap, MapData, MapError, PerCpuArray, PerCpuValues, xdp::XdpMapError},
};
use relay_common::{
    ALLOC_COUNTERS_MAP, ALLOCATIONS_MAP, AllocCounters, CHANNELS_MAP, ChannelKey, ChannelValue,
    ClientTarget, Ip, PEER_CHANNELS_MAP, PERMISSIONS_MAP, PUBLIC_IPS_MAP, PeerKey, PermissionKey,
    REASON_COUNTERS_MAP, REDIRECT_MAP, RELAYS_PER_ALLOCATION, Reason, RelayKey, v4_mapped,
};
use relay_proto::server::{Command, Transport};

#[derive(Debug, thiserror::Error)]
pub enum XdpMapsError {
    #[error("XDP map `{0}` is missing from the object (or was already taken)")]
    Missing(&'static str),
    #[error("XDP map `{map}` has an unexpected type or layout: {source}")]
    Open {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "{op} in XDP map `{map}` failed: {source} (a full map means max_allocations is too low)"
    )]
    Update {
        map: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("adding ifindex {ifindex} to XDP map `{REDIRECT_MAP}` failed: {source}")]
    Redirect {
        ifindex: u32,
        #[source]
        source: XdpMapError,
    },
    #[error("no allocation counter slot left (all {0} in use): raise max_allocations")]
    SlotsExhausted(u32),
    #[error("relay address {0} has no allocation in the XDP maps")]
    UnknownRelay(SocketAddr),
    #[error("cannot size per-CPU values: {0}")]
    Cpus(String),
}

/// Map handles plus the daemon-side bookkeeping (counter slots, public IP refcounts).
pub struct XdpMaps {
    allocations: HashMap<MapData, RelayKey, u32>,
    channels: HashMap<MapData, ChannelKey, ChannelValue>,
    peer_channels: HashMap<MapData, PeerKey, ClientTarget>,
    permissions: HashMap<MapData, PermissionKey, ClientTarget>,
    public_ips: HashMap<MapData, Ip, u32>,
    alloc_counters: PerCpuArray<MapData, AllocCounters>,
    reasons: PerCpuArray<MapData, u64>,
    redirect: DevMapHash<MapData>,
    slots: StdHashMap<SocketAddr, u32>,
    free_slots: Vec<u32>,
    next_slot: u32,
    slot_capacity: u32,
    public_refs: StdHashMap<IpAddr, u32>,
    nr_cpus: usize,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, XdpMapsError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(XdpMapsError::Missing(name))?;
    T::try_from(map).map_err(|source| XdpMapsError::Open { map: name, source })
}

/// The 16-byte map form of an address (IPv4, also when written v4-mapped, as `::ffff:a.b.c.d`).
pub fn map_ip(ip: IpAddr) -> Ip {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn port(p: u16) -> [u8; 2] {
    p.to_be_bytes()
}

fn relay_key(relay: SocketAddr) -> RelayKey {
    RelayKey {
        ip: map_ip(relay.ip()),
        port: port(relay.port()),
        _pad: [0; 2],
    }
}

fn upd(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> XdpMapsError {
    move |source| XdpMapsError::Update { map, op, source }
}

impl XdpMaps {
    /// Takes the maps out of a loaded object; `max_allocations` must be what it was
    /// loaded with (it bounds the counter slots).
    pub(super) fn take(
        ebpf: &mut Ebpf,
        max_allocations: u32,
        attached: &[u32],
    ) -> Result<Self, XdpMapsError> {
        let nr_cpus =
            aya::util::nr_cpus().map_err(|(what, e)| XdpMapsError::Cpus(format!("{what}: {e}")))?;
        let mut maps = Self {
            allocations: take(ebpf, ALLOCATIONS_MAP)?,
            channels: take(ebpf, CHANNELS_MAP)?,
            peer_channels: take(ebpf, PEER_CHANNELS_MAP)?,
            permissions: take(ebpf, PERMISSIONS_MAP)?,
            public_ips: take(ebpf, PUBLIC_IPS_MAP)?,
            alloc_counters: take(ebpf, ALLOC_COUNTERS_MAP)?,
            reasons: take(ebpf, REASON_COUNTERS_MAP)?,
            redirect: take(ebpf, REDIRECT_MAP)?,
            slots: StdHashMap::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            slot_capacity: max_allocations.saturating_mul(RELAYS_PER_ALLOCATION),
            public_refs: StdHashMap::new(),
            nr_cpus,
        };
        for &ifindex in attached {
            maps.add_redirect_interface(ifindex)?;
        }
        Ok(maps)
    }

    /// Lets the program redirect to `ifindex` (every interface it is attached to).
    pub fn add_redirect_interface(&mut self, ifindex: u32) -> Result<(), XdpMapsError> {
        self.redirect
            .insert(ifindex, ifindex, None, 0)
            .map_err(|source| XdpMapsError::Redirect { ifindex, source })
    }

    /// Replays one command of the protocol core. Commands for TCP/TLS clients only touch
    /// the public-IP set (hairpin detection); their data stays in userspace.
    pub fn apply(&mut self, cmd: &Command) -> Result<(), XdpMapsError> {
        match cmd {
            Command::AllocationCreated {
                client,
                relay,
                public,
                ..
            } => {
                self.add_public_ip(public.ip())?;
                if client.transport == Transport::Udp {
                    self.add_allocation(*relay)?;
                }
            }
            Command::AllocationRemoved {
                client,
                relay,
                public,
                ..
            } => {
                if client.transport == Transport::Udp {
                    self.remove_allocation(*relay)?;
                }
                self.remove_public_ip(public.ip())?;
            }
            Command::PermissionCreated {
                client,
                relay,
                peer,
                ..
            } if client.transport == Transport::Udp => {
                self.add_permission(client.client, client.listener, *relay, *peer)?;
            }
            Command::PermissionRemoved {
                client,
                relay,
                peer,
                ..
            } if client.transport == Transport::Udp => {
                self.remove_permission(*relay, *peer)?;
            }
            Command::ChannelBound {
                client,
                relay,
                peer,
                channel,
                ..
            } if client.transport == Transport::Udp => {
                self.add_channel(client.client, client.listener, *relay, *peer, *channel)?;
            }
            Command::ChannelUnbound {
                client,
                relay,
                peer,
                channel,
                ..
            } if client.transport == Transport::Udp => {
                self.remove_channel(client.client, client.listener, *relay, *peer, *channel)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Registers a relayed address (`relay` = the socket's bind address) and gives it a
    /// zeroed counter slot. Returns the slot.
    pub fn add_allocation(&mut self, relay: SocketAddr) -> Result<u32, XdpMapsError> {
        let slot = match self.slots.get(&relay) {
            Some(&s) => s,
            None => {
                let s = match self.free_slots.pop() {
                    Some(s) => s,
                    None if self.next_slot < self.slot_capacity => {
                        self.next_slot += 1;
                        self.next_slot - 1
                    }
                    None => return Err(XdpMapsError::SlotsExhausted(self.slot_capacity)),
                };
                let zero = PerCpuValues::try_from(vec![AllocCounters::default(); self.nr_cpus])
                    .map_err(|e| XdpMapsError::Cpus(e.to_string()))?;
                if let Err(e) = self.alloc_counters.set(s, zero, 0) {
                    self.free_slots.push(s);
                    return Err(upd(ALLOC_COUNTERS_MAP, "zeroing a slot")(e));
                }
                s
            }
        };
        if let Err(e) = self.allocations.insert(relay_key(relay), slot, 0) {
            if !self.slots.contains_key(&relay) {
                self.free_slots.push(slot);
            }
            return Err(upd(ALLOCATIONS_MAP, "insert")(e));
        }
        self.slots.insert(relay, slot);
        Ok(slot)
    }

    pub fn remove_allocation(&mut self, relay: SocketAddr) -> Result<(), XdpMapsError> {
        let Some(slot) = self.slots.remove(&relay) else {
            return Err(XdpMapsError::UnknownRelay(relay));
        };
        self.free_slots.push(slot);
        self.allocations
            .remove(&relay_key(relay))
            .map_err(upd(ALLOCATIONS_MAP, "remove"))
    }

    fn slot(&self, relay: SocketAddr) -> Result<u32, XdpMapsError> {
        self.slots
            .get(&relay)
            .copied()
            .ok_or(XdpMapsError::UnknownRelay(relay))
    }

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
            _pad: [0; 2],
            slot,
        }
    }

    pub fn add_permission(
        &mut self,
        client: SocketAddr,
        listener: SocketAddr,
        relay: SocketAddr,
        peer: IpAddr,
    ) -> Result<(), XdpMapsError> {
        let slot = self.slot(relay)?;
        let value = self.target(client, listener, 0, slot);
        self.permissions
            .insert(permission_key(relay, peer), value, 0)
            .map_err(upd(PERMISSIONS_MAP, "insert"))
    }

    pub fn remove_permission(
        &mut self,
        relay: SocketAddr,
        peer: IpAddr,
    ) -> Result<(), XdpMapsError> {
        self.permissions
            .remove(&permission_key(relay, peer))
            .map_err(upd(PERMISSIONS_MAP, "remove"))
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
        self.channels
            .insert(channel_key(client, listener, channel), value, 0)
            .map_err(upd(CHANNELS_MAP, "insert"))?;
        let back = self.target(client, listener, channel, slot);
        if let Err(e) = self.peer_channels.insert(peer_key(relay, peer), back, 0) {
            let _ = self
                .channels
                .remove(&channel_key(client, listener, channel));
            return Err(upd(PEER_CHANNELS_MAP, "insert")(e));
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
            .channels
            .remove(&channel_key(client, listener, channel))
            .map_err(upd(CHANNELS_MAP, "remove"));
        let b = self
            .peer_channels
            .remove(&peer_key(relay, peer))
            .map_err(upd(PEER_CHANNELS_MAP, "remove"));
        a.and(b)
    }

    /// Counts one more relayed address advertised on `ip` (hairpin detection).
    pub fn add_public_ip(&mut self, ip: IpAddr) -> Result<(), XdpMapsError> {
        let ip = ip.to_canonical();
        let n = self.public_refs.entry(ip).or_insert(0);
        *n += 1;
        let n = *n;
        if n == 1
            && let Err(e) = self.public_ips.insert(map_ip(ip), 1, 0)
        {
            self.public_refs.remove(&ip);
            return Err(upd(PUBLIC_IPS_MAP, "insert")(e));
        }
        Ok(())
    }

    pub fn remove_public_ip(&mut self, ip: IpAddr) -> Result<(), XdpMapsError> {
        let ip = ip.to_canonical();
        match self.public_refs.get_mut(&ip) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.public_refs.remove(&ip);
                self.public_ips
                    .remove(&map_ip(ip))
                    .map_err(upd(PUBLIC_IPS_MAP, "remove"))?;
            }
            None => {}
        }
        Ok(())
    }

    /// What the kernel relayed for the relayed address `relay`, summed over CPUs.
    pub fn allocation_counters(&self, relay: SocketAddr) -> Result<AllocCounters, XdpMapsError> {
        let slot = self.slot(relay)?;
        let v = self
            .alloc_counters
            .get(&slot, 0)
            .map_err(upd(ALLOC_COUNTERS_MAP, "read"))?;
        Ok(AllocCounters::sum(v.iter()))
    }

    /// Packets per [`Reason`], summed over CPUs.
    pub fn reason_counters(&self) -> Result<Vec<(Reason, u64)>, XdpMapsError> {
        let mut out = Vec::with_capacity(Reason::ALL.len());
        for &r in Reason::ALL {
            let v = self
                .reasons
                .get(&(r as u32), 0)
                .map_err(upd(REASON_COUNTERS_MAP, "read"))?;
            out.push((r, v.iter().sum()));
        }
        Ok(out)
    }
}

fn permission_key(relay: SocketAddr, peer: IpAddr) -> PermissionKey {
    PermissionKey {
        relay_ip: map_ip(relay.ip()),
        peer_ip: map_ip(peer),
        relay_port: port(relay.port()),
        _pad: [0; 2],
    }
}

fn channel_key(client: SocketAddr, listener: SocketAddr, channel: u16) -> ChannelKey {
    ChannelKey {
        client_ip: map_ip(client.ip()),
        listener_ip: map_ip(listener.ip()),
        client_port: port(client.port()),
        listener_port: port(listener.port()),
        channel: port(channel),
        _pad: [0; 2],
    }
}

fn peer_key(relay: SocketAddr, peer: SocketAddr) -> PeerKey {
    PeerKey {
        relay_ip: map_ip(relay.ip()),
        peer_ip: map_ip(peer.ip()),
        relay_port: port(relay.port()),
        peer_port: port(peer.port()),
    }
}
