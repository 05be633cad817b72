//! The fast path's maps seen from the daemon: [`XdpMaps`] replays the protocol core's
//! [`Command`]s into them through a [`MapWriter`] (UDP clients only: TCP/TLS allocations
//! stay in userspace) and reads the counters back.
//!
//! One relayed address of a UDP allocation is several entries: ALLOCATIONS (bind address →
//! public address, slot), RELAY_ADDRS (public and bind address → bind address, slot: the
//! hairpin target), CLIENTS (client 5-tuple and family → bind address, slot: the sender of
//! a Send indication). Its IPs, public and bind, are in PUBLIC_IPS for every transport, so
//! the kernel recognises hairpin traffic even to TCP allocations (and passes it up).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use relay_common::{
    AllocCounters, ChannelKey, ChannelValue, ClientKey, ClientTarget, FAMILY_V4, FAMILY_V6, Ip,
    PERMISSION_SOME_PORTS, PeerKey, PermissionKey, RELAYS_PER_ALLOCATION, Reason, RelayKey,
    RelayValue, v4_mapped,
};
use relay_proto::server::{Command, Transport};

use super::{
    bandwidth::{BandwidthBook, BandwidthLimits},
    kernel_maps::KernelMaps,
    offload::{Offload, Write},
    writer::{Entry, Key, MapWriter, XdpMapsError},
};

/// The map writer (the loaded program's maps, or [`FakeMaps`](super::FakeMaps) in tests)
/// plus the daemon-side bookkeeping: counter slots, public IP refcounts, each allocation's
/// share of the permission and channel maps.
pub struct XdpMaps<W: MapWriter = KernelMaps> {
    maps: W,
    /// By bind address.
    relays: HashMap<SocketAddr, Relay>,
    free_slots: Vec<u32>,
    next_slot: u32,
    slot_capacity: u32,
    public_refs: HashMap<IpAddr, u32>,
    /// Which permissions and channels are in the maps, per allocation.
    offload: Offload,
    /// Which bandwidth buckets each allocation and user holds.
    bandwidth: BandwidthBook,
}

/// What the maps hold for one relayed address, to take it out again.
#[derive(Clone, Copy)]
struct Relay {
    slot: u32,
    public: SocketAddr,
    client: Option<ClientKey>,
    /// The allocation (raw id) whose bandwidth buckets the slot is charged to.
    bandwidth: Option<u64>,
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

pub(super) fn relay_key(relay: SocketAddr) -> RelayKey {
    RelayKey {
        ip: map_ip(relay.ip()),
        port: port(relay.port()),
        _pad: [0; 2],
    }
}

impl XdpMaps<KernelMaps> {
    /// Takes the maps out of a loaded object; `max_allocations` must be what it was
    /// loaded with (it bounds the counter slots).
    pub(super) fn take(
        ebpf: &mut aya::Ebpf,
        max_allocations: u32,
        attached: &[u32],
    ) -> Result<Self, XdpMapsError> {
        let mut maps = KernelMaps::take(ebpf)?;
        for &ifindex in attached {
            maps.add_redirect_interface(ifindex)?;
        }
        Ok(Self::with_writer(maps, max_allocations))
    }

    /// Lets the program redirect to `ifindex` (every interface it is attached to).
    pub fn add_redirect_interface(&mut self, ifindex: u32) -> Result<(), XdpMapsError> {
        self.maps.add_redirect_interface(ifindex)
    }

    /// What the kernel relayed for the relayed address `relay`, summed over CPUs.
    pub fn allocation_counters(&self, relay: SocketAddr) -> Result<AllocCounters, XdpMapsError> {
        self.maps.allocation_counters(self.slot(relay)?)
    }

    /// Datagrams of the relayed address `relay` the kernel dropped over a bandwidth limit.
    pub fn bandwidth_drops(&self, relay: SocketAddr) -> Result<u64, XdpMapsError> {
        self.maps.bandwidth_drops(self.slot(relay)?)
    }

    /// Entries in the PERMISSIONS and CHANNELS maps (a walk over both: for tests and
    /// diagnostics, not for a hot path).
    pub fn kernel_entries(&self) -> Result<(usize, usize), XdpMapsError> {
        self.maps.kernel_entries()
    }

    /// Packets per [`Reason`], summed over CPUs.
    pub fn reason_counters(&self) -> Result<Vec<(Reason, u64)>, XdpMapsError> {
        self.maps.reason_counters()
    }
}

impl<W: MapWriter> XdpMaps<W> {
    /// Bookkeeping for maps sized for `max_allocations` (it bounds the counter slots).
    pub fn with_writer(maps: W, max_allocations: u32) -> Self {
        Self {
            maps,
            relays: HashMap::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            slot_capacity: max_allocations.saturating_mul(RELAYS_PER_ALLOCATION),
            public_refs: HashMap::new(),
            offload: Offload::default(),
            bandwidth: BandwidthBook::new(BandwidthLimits::default(), max_allocations),
        }
    }

    /// Sets `[limits] max_bps_per_allocation` and `max_bps_per_user` for the allocations
    /// registered from now on (the daemon calls it once, before any).
    pub fn set_bandwidth_limits(&mut self, limits: BandwidthLimits) {
        let max_allocations = self.slot_capacity / RELAYS_PER_ALLOCATION;
        self.bandwidth = BandwidthBook::new(limits, max_allocations);
    }

    /// The writer, to see what it holds (tests).
    pub fn writer(&self) -> &W {
        &self.maps
    }

    /// Replays one command of the protocol core. Commands for TCP/TLS clients only touch
    /// the relay-IP set (hairpin detection); their data stays in userspace. Permissions and
    /// channels go through [`Offload`]: each allocation holds at most its share of the maps.
    pub fn apply(&mut self, cmd: &Command) -> Result<(), XdpMapsError> {
        let mut writes = Vec::new();
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
                for ip in own_ips(*relay, *public) {
                    self.add_public_ip(ip)?;
                }
                if client.transport == Transport::Udp {
                    self.add_udp_allocation(client.client, client.listener, *relay, *public)?;
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
        for w in writes {
            result = result.and(self.write(w));
        }
        result
    }

    /// One permission or channel write, as [`Offload`] decided it.
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

    /// Registers a relayed address (`relay` = the socket's bind address, advertised as
    /// itself) and gives it a zeroed counter slot. Returns the slot. Send indications from
    /// its client stay in userspace: [`XdpMaps::add_udp_allocation`] registers those too.
    pub fn add_allocation(&mut self, relay: SocketAddr) -> Result<u32, XdpMapsError> {
        self.add_relay(relay, relay, None)
    }

    /// Registers the relayed address `relay` (bind address) of a UDP client's allocation,
    /// advertised as `public`: peer datagrams to `relay`, the client's Send indications to
    /// peers of `relay`'s family, and other clients' data hairpinned to `public` (or
    /// `relay`). Returns the counter slot.
    pub fn add_udp_allocation(
        &mut self,
        client: SocketAddr,
        listener: SocketAddr,
        relay: SocketAddr,
        public: SocketAddr,
    ) -> Result<u32, XdpMapsError> {
        self.add_relay(
            relay,
            public,
            Some(client_key(client, listener, relay.ip())),
        )
    }

    fn add_relay(
        &mut self,
        relay: SocketAddr,
        public: SocketAddr,
        client: Option<ClientKey>,
    ) -> Result<u32, XdpMapsError> {
        // Registered again (a retried command): start from a clean slate, same slot.
        let known = self.relays.get(&relay).copied();
        if let Some(old) = known {
            self.remove_entries(relay, &old)?;
        }
        let slot = match known {
            Some(old) => old.slot,
            None => self.new_slot()?,
        };
        let entry = Relay {
            slot,
            public,
            client,
            bandwidth: known.and_then(|k| k.bandwidth),
        };
        if let Err(e) = self.insert_entries(relay, &entry) {
            // Best effort: the entries that made it in come out again.
            let _ = self.remove_entries(relay, &entry);
            self.relays.remove(&relay);
            self.free_slots.push(slot);
            return Err(e);
        }
        self.relays.insert(relay, entry);
        Ok(slot)
    }

    /// Charges the relayed address `relay` to allocation `id`'s (raw id) and `user`'s
    /// bandwidth buckets, under the limits of [`Self::set_bandwidth_limits`] (once: a
    /// retried command finds it done).
    pub fn limit_bandwidth(
        &mut self,
        relay: SocketAddr,
        id: u64,
        user: &std::sync::Arc<str>,
    ) -> Result<(), XdpMapsError> {
        let Some(r) = self.relays.get_mut(&relay) else {
            return Err(XdpMapsError::UnknownRelay(relay));
        };
        if r.bandwidth.is_some() {
            return Ok(());
        }
        r.bandwidth = Some(id);
        let slot = r.slot;
        let (value, fresh) = self.bandwidth.attach(id, user);
        self.maps.set_bandwidth(slot, value, &fresh)
    }

    fn new_slot(&mut self) -> Result<u32, XdpMapsError> {
        let s = match self.free_slots.pop() {
            Some(s) => s,
            None if self.next_slot < self.slot_capacity => {
                self.next_slot += 1;
                self.next_slot - 1
            }
            None => return Err(XdpMapsError::SlotsExhausted(self.slot_capacity)),
        };
        // A reused slot starts unlimited until its allocation's buckets are set.
        let cleared = self.maps.zero_counters(s).and_then(|()| {
            self.maps
                .set_bandwidth(s, relay_common::SlotBandwidth::default(), &[])
        });
        if let Err(e) = cleared {
            self.free_slots.push(s);
            return Err(e);
        }
        Ok(s)
    }

    fn insert_entries(&mut self, relay: SocketAddr, r: &Relay) -> Result<(), XdpMapsError> {
        let bind = relay_value(relay, r.slot);
        self.maps.insert(Entry::Allocation(
            relay_key(relay),
            relay_value(r.public, r.slot),
        ))?;
        for named in names(relay, r.public) {
            self.maps.insert(Entry::RelayAddr(relay_key(named), bind))?;
        }
        if let Some(key) = r.client {
            self.maps.insert(Entry::Client(key, bind))?;
        }
        Ok(())
    }

    /// Removes what [`Self::insert_entries`] put in; the first failure is returned, after
    /// trying every entry.
    fn remove_entries(&mut self, relay: SocketAddr, r: &Relay) -> Result<(), XdpMapsError> {
        let mut result = self.maps.remove(Key::Allocation(relay_key(relay)));
        let ours = Some(relay_value(relay, r.slot));
        // Only while they still lead here (another relay may have taken the address).
        let keys = names(relay, r.public).map(|named| Key::RelayAddr(relay_key(named)));
        for key in keys.chain(r.client.map(Key::Client)) {
            if self.maps.relay_value(key) == ours {
                result = result.and(self.maps.remove(key));
            }
        }
        result
    }

    pub fn remove_allocation(&mut self, relay: SocketAddr) -> Result<(), XdpMapsError> {
        let Some(r) = self.relays.remove(&relay) else {
            return Err(XdpMapsError::UnknownRelay(relay));
        };
        self.free_slots.push(r.slot);
        self.remove_entries(relay, &r)
    }

    fn slot(&self, relay: SocketAddr) -> Result<u32, XdpMapsError> {
        self.relays
            .get(&relay)
            .map(|r| r.slot)
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

/// The IPs a relayed address can be named by: its public IP and, behind a static NAT, its
/// bind IP (a wildcard bind names nothing).
fn own_ips(relay: SocketAddr, public: SocketAddr) -> impl Iterator<Item = IpAddr> {
    let (public, bind) = (public.ip().to_canonical(), relay.ip().to_canonical());
    let bind = (bind != public && !bind.is_unspecified()).then_some(bind);
    std::iter::once(public).chain(bind)
}

/// The addresses a peer can name a relayed address by: public, and bind if different.
fn names(relay: SocketAddr, public: SocketAddr) -> impl Iterator<Item = SocketAddr> {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let bind =
        (canonical(relay) != canonical(public) && !relay.ip().is_unspecified()).then_some(relay);
    std::iter::once(public).chain(bind)
}

fn relay_value(addr: SocketAddr, slot: u32) -> RelayValue {
    RelayValue {
        ip: map_ip(addr.ip()),
        port: port(addr.port()),
        _pad: [0; 2],
        slot,
    }
}

fn client_key(client: SocketAddr, listener: SocketAddr, relay: IpAddr) -> ClientKey {
    ClientKey {
        client_ip: map_ip(client.ip()),
        listener_ip: map_ip(listener.ip()),
        client_port: port(client.port()),
        listener_port: port(listener.port()),
        family: match relay.to_canonical() {
            IpAddr::V4(_) => FAMILY_V4,
            IpAddr::V6(_) => FAMILY_V6,
        },
        _pad: [0; 3],
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
