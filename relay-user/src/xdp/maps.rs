//! The fast path's maps seen from the daemon: [`XdpMaps`] replays the protocol core's
//! [`Command`]s into them through a [`MapWriter`] (UDP clients only: TCP/TLS allocations
//! stay in userspace) and reads the counters back.
//!
//! One relayed address of a UDP allocation is several entries: ALLOCATIONS (bind address →
//! public address, slot), RELAY_ADDRS (public and bind address → bind address, slot: the
//! hairpin target), CLIENTS (client 5-tuple and family → bind address, slot: the sender of
//! a Send indication). Its IPs, public and bind, are in PUBLIC_IPS for every transport, so
//! the kernel recognises hairpin traffic even to TCP allocations (and passes it up).

mod commands;
mod entities;
mod keys;

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use relay_common::{
    AllocCounters, ClientKey, RELAYS_PER_ALLOCATION, Reason, SHIELD_ALL_CLIENTS_KNOWN, ShieldConfig,
};
use relay_proto::server::{FiveTuple, Transport};

pub use keys::map_ip;
pub(super) use keys::relay_key;
use keys::{client_key, flagged, names, relay_value};

use super::{
    bandwidth::{BandwidthBook, BandwidthLimits},
    kernel_maps::KernelMaps,
    offload::Offload,
    writer::{Entry, Key, MapWriter, XdpMapsError},
};

/// The map writer (the loaded program's maps, or [`FakeMaps`](super::FakeMaps) in tests)
/// plus the daemon-side bookkeeping: counter slots, public IP refcounts, each allocation's
/// share of the permission and channel maps.
pub struct XdpMaps<W: MapWriter = KernelMaps> {
    maps: W,
    /// By bind address.
    relays: HashMap<SocketAddr, Relay>,
    /// The bind addresses of each UDP client's (client, listener) relayed addresses (one
    /// per family), so flagging an allocation does not walk every relay.
    owned: HashMap<(SocketAddr, SocketAddr), Vec<SocketAddr>>,
    free_slots: Vec<u32>,
    next_slot: u32,
    slot_capacity: u32,
    public_refs: HashMap<IpAddr, u32>,
    /// Which permissions and channels are in the maps, per allocation.
    offload: Offload,
    /// Which bandwidth buckets each allocation and user holds.
    bandwidth: BandwidthBook,
    /// UDP clients (client, listener) with a failed permission or channel write: the maps
    /// may lack an entry the bookkeeping counts as written, so their allocations are never
    /// flagged [`ALLOCATION_COMPLETE`](relay_common::ALLOCATION_COMPLETE).
    tainted: HashSet<(SocketAddr, SocketAddr)>,
    /// The shield settings in force (see [`XdpMaps::set_shield`]).
    shield: ShieldConfig,
    /// A UDP allocation failed to reach CLIENTS: [`SHIELD_ALL_CLIENTS_KNOWN`] is off for good.
    clients_lost: bool,
}

/// What the maps hold for one relayed address, to take it out again.
#[derive(Clone, Copy)]
struct Relay {
    slot: u32,
    public: SocketAddr,
    client: Option<ClientKey>,
    /// The allocation (raw id) whose bandwidth buckets the slot is charged to.
    bandwidth: Option<u64>,
    /// A UDP client's (client, listener) addresses.
    owner: Option<(SocketAddr, SocketAddr)>,
    /// Flagged [`ALLOCATION_COMPLETE`](relay_common::ALLOCATION_COMPLETE) in the maps.
    complete: bool,
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

    /// Tells the shield where the relay listens (UDP listeners) and which IPs its relay
    /// sockets are bound to (wildcard binds name none).
    pub fn set_shield_addresses(
        &mut self,
        listeners: &[SocketAddr],
        relay_ips: &[IpAddr],
    ) -> Result<(), XdpMapsError> {
        for &l in listeners {
            self.maps.add_listener(relay_key(l))?;
        }
        for ip in relay_ips.iter().filter(|ip| !ip.is_unspecified()) {
            self.maps.add_relay_ip(map_ip(*ip))?;
        }
        Ok(())
    }
}

impl<W: MapWriter> XdpMaps<W> {
    /// Bookkeeping for maps sized for `max_allocations` (it bounds the counter slots).
    pub fn with_writer(maps: W, max_allocations: u32) -> Self {
        Self {
            maps,
            relays: HashMap::new(),
            owned: HashMap::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            slot_capacity: max_allocations.saturating_mul(RELAYS_PER_ALLOCATION),
            public_refs: HashMap::new(),
            offload: Offload::default(),
            bandwidth: BandwidthBook::new(BandwidthLimits::default(), max_allocations),
            tainted: HashSet::new(),
            shield: ShieldConfig::default(),
            clients_lost: false,
        }
    }

    /// Sets `[limits] max_bps_per_allocation` and `max_bps_per_user` for the allocations
    /// registered from now on (the daemon calls it once, before any).
    pub fn set_bandwidth_limits(&mut self, limits: BandwidthLimits) {
        let max_allocations = self.slot_capacity / RELAYS_PER_ALLOCATION;
        self.bandwidth = BandwidthBook::new(limits, max_allocations);
    }

    /// Turns the kernel shield on or off with `config` (see `relay_common::shield`).
    /// [`SHIELD_ALL_CLIENTS_KNOWN`] is only kept while every UDP allocation made it into
    /// the maps: the first failure clears it for good.
    pub fn set_shield(&mut self, mut config: ShieldConfig) -> Result<(), XdpMapsError> {
        if self.clients_lost {
            config.flags &= !SHIELD_ALL_CLIENTS_KNOWN;
        }
        self.shield = config;
        self.maps.shield_config(config)
    }

    /// Whether some UDP allocation failed to reach CLIENTS (so the kernel cannot know
    /// every client); an upgrade carries it to the new process.
    pub fn clients_lost(&self) -> bool {
        self.clients_lost
    }

    /// The previous process had lost a client (see [`XdpMaps::clients_lost`]): the
    /// shield settings written from now on keep [`SHIELD_ALL_CLIENTS_KNOWN`] off.
    pub fn set_clients_lost(&mut self) {
        self.clients_lost = true;
    }

    /// A UDP allocation is missing from CLIENTS: the kernel can no longer tell ChannelData
    /// from strangers by their absence there.
    fn clients_unknown(&mut self) {
        self.clients_lost = true;
        if self.shield.flags & SHIELD_ALL_CLIENTS_KNOWN != 0 {
            self.shield.flags &= !SHIELD_ALL_CLIENTS_KNOWN;
            if let Err(e) = self.maps.shield_config(self.shield) {
                tracing::warn!(error = %e, "cannot update the XDP shield settings after a failed map write: ChannelData from unknown 5-tuples may be dropped until restart");
            }
        }
    }

    /// Whether the kernel holds every permission and channel of `client`'s allocation.
    fn is_complete(&self, client: FiveTuple) -> bool {
        self.offload.complete(client) && !self.tainted.contains(&(client.client, client.listener))
    }

    /// The writer, to see what it holds (tests).
    pub fn writer(&self) -> &W {
        &self.maps
    }

    /// The writer, bookkeeping dropped: what a process handing over leaves in the kernel
    /// (tests of the new process's replay over it).
    pub fn into_writer(self) -> W {
        self.maps
    }

    /// Registers a relayed address (`relay` = the socket's bind address, advertised as
    /// itself) and gives it a zeroed counter slot. Returns the slot. Send indications from
    /// its client stay in userspace: [`XdpMaps::add_udp_allocation`] registers those too.
    pub fn add_allocation(&mut self, relay: SocketAddr) -> Result<u32, XdpMapsError> {
        self.add_relay(relay, relay, None, None)
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
            Some((client, listener)),
        )
    }

    fn add_relay(
        &mut self,
        relay: SocketAddr,
        public: SocketAddr,
        client: Option<ClientKey>,
        owner: Option<(SocketAddr, SocketAddr)>,
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
        let complete = owner.is_some_and(|(client, listener)| {
            self.is_complete(FiveTuple {
                client,
                listener,
                transport: Transport::Udp,
            })
        });
        let entry = Relay {
            slot,
            public,
            client,
            bandwidth: known.and_then(|k| k.bandwidth),
            owner,
            complete,
        };
        if let Err(e) = self.insert_entries(relay, &entry) {
            // Best effort: the entries that made it in come out again.
            let _ = self.remove_entries(relay, &entry);
            if let Some(old) = self.relays.remove(&relay) {
                self.disown(relay, old.owner);
            }
            self.free_slots.push(slot);
            return Err(e);
        }
        if let Some(old) = self.relays.insert(relay, entry) {
            self.disown(relay, old.owner);
        }
        if let Some(o) = owner {
            self.owned.entry(o).or_default().push(relay);
        }
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

    /// `relay` no longer belongs to `owner`'s allocation.
    fn disown(&mut self, relay: SocketAddr, owner: Option<(SocketAddr, SocketAddr)>) {
        let Some(o) = owner else { return };
        if let Some(binds) = self.owned.get_mut(&o) {
            binds.retain(|b| *b != relay);
            if binds.is_empty() {
                self.owned.remove(&o);
            }
        }
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
            flagged(relay_value(r.public, r.slot), r.complete),
        ))?;
        for named in names(relay, r.public) {
            self.maps.insert(Entry::RelayAddr(relay_key(named), bind))?;
        }
        if let Some(key) = r.client {
            self.maps
                .insert(Entry::Client(key, flagged(bind, r.complete)))?;
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
            if self.maps.relay_value(key).map(|v| flagged(v, false)) == ours {
                result = result.and(self.maps.remove(key));
            }
        }
        result
    }

    pub fn remove_allocation(&mut self, relay: SocketAddr) -> Result<(), XdpMapsError> {
        let Some(r) = self.relays.remove(&relay) else {
            return Err(XdpMapsError::UnknownRelay(relay));
        };
        self.disown(relay, r.owner);
        self.free_slots.push(r.slot);
        self.remove_entries(relay, &r)
    }

    fn slot(&self, relay: SocketAddr) -> Result<u32, XdpMapsError> {
        self.relays
            .get(&relay)
            .map(|r| r.slot)
            .ok_or(XdpMapsError::UnknownRelay(relay))
    }
}
