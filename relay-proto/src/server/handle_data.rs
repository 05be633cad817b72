//! The userspace data path: Send indications and ChannelData from clients, datagrams from
//! peers, and hairpinning between two allocations of this relay.
//!
//! Hairpin between shards: when the target relayed port belongs to another shard's
//! allocation, the datagram leaves from the sender's relay socket to the target's relay
//! socket on the bind address; the host kernel delivers it locally (no NAT reflection on the
//! firewall). The receiving shard sees it come from the bind address and presents it to its
//! client as coming from the public relayed address, the one that client knows.

use std::net::SocketAddr;
use std::time::Instant;

use crate::stun::{
    BufferTooSmall, ChannelData, Class, Data, Message, MessageWriter, Method, TransactionId,
    XorPeerAddress, write_channel_data,
};

use super::allocation::{Allocation, AllocationId, Family, Relayed};
use super::event::DropReason;
use super::five_tuple::FiveTuple;
use super::{ClientOutput, PeerOutput, Server};
use crate::policy::PeerVerdict;

/// Frames `payload` from `peer` for `to`'s client: ChannelData on a bound channel (padded on
/// stream transports), otherwise a Data indication with XOR-PEER-ADDRESS and DATA.
fn frame_for_client(
    to: &Allocation,
    now: Instant,
    peer: SocketAddr,
    payload: &[u8],
    txid: TransactionId,
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    match to.active_channel_to(peer, now) {
        Some(ch) => write_channel_data(out, ch, payload, to.client.transport.is_stream()),
        None => {
            let mut w = MessageWriter::new(out, Class::Indication, Method::DATA, txid)?;
            w.attr(&XorPeerAddress(peer))?.attr(&Data(payload))?;
            Ok(w.finish())
        }
    }
}

impl Server {
    pub(crate) fn send_indication<'p>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'p>,
        out: &mut [u8],
    ) -> ClientOutput<'p> {
        let Some(id) = self.table.id_by_tuple(&from) else {
            return self.drop_client(DropReason::NoAllocation);
        };
        if !msg.unknown_comprehension_required().is_empty() {
            return self.drop_client(DropReason::UnknownAttribute);
        }
        let (Some(Ok(XorPeerAddress(peer))), Some(Ok(Data(payload)))) =
            (msg.attr::<XorPeerAddress>(), msg.attr::<Data<'p>>())
        else {
            return self.drop_client(DropReason::MissingAttribute);
        };
        // DONT-FRAGMENT is accepted and needs no action: the userspace sockets never fragment
        // (IP_PMTUDISC_DO is the data path's default).
        self.relay_to_peer(now, id, peer, payload, out)
    }

    pub(crate) fn client_channel_data<'p>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        packet: &'p [u8],
        out: &mut [u8],
    ) -> ClientOutput<'p> {
        let Ok(cd) = ChannelData::parse(packet) else {
            return self.drop_client(DropReason::Malformed);
        };
        let Some(id) = self.table.id_by_tuple(&from) else {
            return self.drop_client(DropReason::NoAllocation);
        };
        let peer = self
            .table
            .get(id)
            .and_then(|a| a.channel_by_number(cd.channel()))
            .filter(|c| c.is_active(now))
            .map(|c| c.peer);
        match peer {
            Some(peer) => self.relay_to_peer(now, id, peer, cd.payload(), out),
            None => self.drop_client(DropReason::NoChannel),
        }
    }

    /// Client `id` sends `payload` to `peer`: checks the allocation is alive, has a relayed
    /// address of the peer's family and a permission for the peer IP; then either hands it to
    /// the data path or, for one of our own relayed addresses, delivers it internally.
    fn relay_to_peer<'p>(
        &mut self,
        now: Instant,
        id: AllocationId,
        peer: SocketAddr,
        payload: &'p [u8],
        out: &mut [u8],
    ) -> ClientOutput<'p> {
        let family = Family::of(peer.ip());
        let Some(a) = self.table.get(id).filter(|a| a.alive(now)) else {
            return self.drop_client(DropReason::NoAllocation);
        };
        let Some(relayed) = a.relayed(family).copied() else {
            return self.drop_client(DropReason::WrongFamily);
        };
        let Some(permission) = a.permission(peer.ip()).filter(|p| now < p.expires) else {
            return self.drop_client(DropReason::NoPermission);
        };
        if self.is_own_relay_ip(peer.ip()) {
            if self.config.ports.contains(&peer.port()) {
                if !self.within_limit(now, id, payload.len()) {
                    return ClientOutput::Nothing;
                }
                return self.hairpin(now, id, relayed, peer, payload, out);
            }
            // Any other port of the relay host (its listeners, admin, ssh) is a local
            // service, not a relay: off limits unless the operator allow-listed the address.
            if !self.policy.is_host_allow_listed(peer, self.scope(a)) {
                return self.drop_client(DropReason::RelayHostPort);
            }
        }
        // Permissions are per IP; the policy may allow only some ports of it.
        if !permission.any_port
            && matches!(
                self.policy.check_port(peer, self.scope(a)),
                PeerVerdict::Deny(_)
            )
        {
            return self.drop_client(DropReason::PeerPortDenied);
        }
        if !self.within_limit(now, id, payload.len()) {
            return ClientOutput::Nothing;
        }
        if let Some(a) = self.table.get_mut(id) {
            a.counters.count_to_peer(payload.len());
        }
        ClientOutput::ToPeer {
            relay: relayed.bind,
            peer,
            payload,
        }
    }

    /// Allocation `src` (relayed address `src_relayed`) sends to `dst`, one of our relayed
    /// addresses: the allocation owning that port receives it as if from the public relayed
    /// address of `src`, provided it has a permission for that IP. If another shard owns the
    /// port, the data path carries it there through the host (see the module comment).
    fn hairpin<'p>(
        &mut self,
        now: Instant,
        src: AllocationId,
        src_relayed: Relayed,
        dst: SocketAddr,
        payload: &'p [u8],
        out: &mut [u8],
    ) -> ClientOutput<'p> {
        let family = Family::of(dst.ip());
        let src_public = src_relayed.public;
        let target = match self.table.id_by_port(family, dst.port()) {
            Some(t) if t != src => t,
            // To its own relayed address.
            Some(_) => return self.drop_client(DropReason::NoAllocation),
            None => return self.hairpin_to_shard(src, src_relayed, dst, payload),
        };
        let txid = self.next_indication_txid();
        let ns = self.shared.bandwidth().ns(now);
        let Some((a, b)) = self.table.pair_mut(src, target) else {
            return self.drop_client(DropReason::NoAllocation);
        };
        if !b.alive(now) {
            self.drops.bump(DropReason::NoAllocation);
            return ClientOutput::Nothing;
        }
        if !b.has_permission(src_public.ip(), now) {
            self.drops.bump(DropReason::NoPermission);
            return ClientOutput::Nothing;
        }
        // The sender's limit was checked by the caller; this is the receiver's.
        if !b.limit.take(payload.len(), ns) {
            b.counters.bandwidth_dropped += 1;
            self.drops.bump(DropReason::BandwidthLimit);
            return ClientOutput::Nothing;
        }
        match frame_for_client(b, now, src_public, payload, txid, out) {
            Ok(len) => {
                a.counters.count_to_peer(payload.len());
                b.counters.count_to_client(payload.len());
                ClientOutput::ToClient { to: b.client, len }
            }
            Err(BufferTooSmall) => {
                self.drops.bump(DropReason::BufferTooSmall);
                ClientOutput::Nothing
            }
        }
    }

    /// The relayed port of `dst` is not ours: if another shard's allocation holds it, send
    /// from `src`'s relay socket to that port on the relay bind address.
    fn hairpin_to_shard<'p>(
        &mut self,
        src: AllocationId,
        src_relayed: Relayed,
        dst: SocketAddr,
        payload: &'p [u8],
    ) -> ClientOutput<'p> {
        let family = Family::of(dst.ip());
        let bind = self.relay_addr(family).map(|r| r.bind);
        let (Some(bind), true) = (bind, self.shared.is_live(family, dst.port())) else {
            return self.drop_client(DropReason::NoAllocation);
        };
        if let Some(a) = self.table.get_mut(src) {
            a.counters.count_to_peer(payload.len());
        }
        ClientOutput::ToPeer {
            relay: src_relayed.bind,
            peer: SocketAddr::new(bind, dst.port()),
            payload,
        }
    }

    /// Whether allocation `id`'s bandwidth limits let `bytes` of payload through at `now`
    /// (charged if so); a refusal is counted for the allocation and by reason.
    fn within_limit(&mut self, now: Instant, id: AllocationId, bytes: usize) -> bool {
        let ns = self.shared.bandwidth().ns(now);
        let Some(a) = self.table.get_mut(id) else {
            return true;
        };
        if a.limit.take(bytes, ns) {
            return true;
        }
        a.counters.bandwidth_dropped += 1;
        self.drops.bump(DropReason::BandwidthLimit);
        false
    }

    pub(crate) fn peer_data(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        payload: &[u8],
        out: &mut [u8],
    ) -> PeerOutput {
        // Another shard's allocation hairpinning arrives from the bind address.
        let peer = self.peer_as_clients_see_it(peer);
        let txid = self.next_indication_txid();
        let ns = self.shared.bandwidth().ns(now);
        let a = self
            .table
            .id_by_relay(relay)
            .and_then(|id| self.table.get_mut(id))
            .filter(|a| a.alive(now));
        let Some(a) = a else {
            self.drops.bump(DropReason::NoAllocation);
            return PeerOutput::Drop(DropReason::NoAllocation);
        };
        if !a.has_permission(peer.ip(), now) {
            self.drops.bump(DropReason::NoPermission);
            return PeerOutput::Drop(DropReason::NoPermission);
        }
        if !a.limit.take(payload.len(), ns) {
            a.counters.bandwidth_dropped += 1;
            self.drops.bump(DropReason::BandwidthLimit);
            return PeerOutput::Drop(DropReason::BandwidthLimit);
        }
        match frame_for_client(a, now, peer, payload, txid, out) {
            Ok(len) => {
                a.counters.count_to_client(payload.len());
                PeerOutput::ToClient { to: a.client, len }
            }
            Err(BufferTooSmall) => {
                self.drops.bump(DropReason::BufferTooSmall);
                PeerOutput::Drop(DropReason::BufferTooSmall)
            }
        }
    }
}
