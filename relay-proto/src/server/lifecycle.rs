//! How allocations end (expiry, deletion, a closed client, a failed bind) with all their
//! commands and their event, and the timers that drive expiry.

// The core's own types, as `mod.rs` names them.
use super::*;

impl Server {
    /// Removes an allocation with all its commands and its event. `quarantine`: the relayed
    /// port that must not be reused for a while (the data path could not bind it).
    pub(super) fn remove_allocation(
        &mut self,
        now: Instant,
        id: AllocationId,
        why: Removal,
        quarantine: Option<(Family, u16)>,
    ) -> Option<Allocation> {
        let a = self.table.remove(id)?;
        // Peer connections close before their relayed address.
        let protocol = self.end_tcp_allocation(&a);
        for c in a.channels.iter().filter(|c| !c.cooling) {
            if let Some(r) = a.relayed(Family::of(c.peer.ip())) {
                self.commands.push_back(Command::ChannelUnbound {
                    id,
                    client: a.client,
                    relay: r.bind,
                    peer: c.peer,
                    channel: c.number,
                });
            }
        }
        for p in &a.permissions {
            if let Some(r) = a.relayed(Family::of(p.ip)) {
                self.commands.push_back(Command::PermissionRemoved {
                    id,
                    client: a.client,
                    relay: r.bind,
                    peer: p.ip,
                });
            }
        }
        for r in a.relayed.iter().flatten() {
            self.commands.push_back(Command::AllocationRemoved {
                id,
                client: a.client,
                relay: r.bind,
                public: r.public,
                protocol,
            });
        }
        // A quarantined port stays busy in the pool: the quarantine timer frees it.
        let owner = shared::Owner {
            user: &a.user,
            credential: a.credential,
            client: a.client.client.ip(),
        };
        if self.shared.release(now, owner, &a.relayed, quarantine)
            && let Some((family, port)) = quarantine
        {
            self.schedule(now + PORT_QUARANTINE, TimerKey::Quarantine(family, port));
        }
        let (user, client, counters) = (a.user.clone(), a.client, a.counters);
        self.events.push(match why {
            Removal::Expired => Event::AllocationExpired {
                id,
                user,
                client,
                counters,
            },
            Removal::Deleted => Event::AllocationDeleted {
                id,
                user,
                client,
                counters,
            },
            Removal::Closed(reason) => Event::AllocationClosed {
                id,
                user,
                client,
                reason,
                counters,
            },
        });
        Some(a)
    }

    /// Ends allocation `id` at an operator's request, as expiry would (kernel entries,
    /// relay sockets and port go the same way), and closes a stream client's connection
    /// so it sees the end at once; a UDP client's next Refresh gets 437. Returns the user
    /// and client it belonged to; `None` if this server holds no such allocation.
    pub fn disconnect(&mut self, now: Instant, id: AllocationId) -> Option<(Arc<str>, FiveTuple)> {
        let a =
            self.remove_allocation(now, id, Removal::Closed(CloseReason::Disconnected), None)?;
        if a.client.transport.is_stream() {
            self.commands.push_back(Command::CloseClient {
                id,
                client: a.client,
            });
        }
        Some((a.user, a.client))
    }

    /// Takes a free port out of circulation for [`PORT_QUARANTINE`].
    pub(super) fn quarantine(&mut self, now: Instant, family: Family, port: u16) {
        // Busy for another reason (reserved, another shard's allocation): left alone.
        if self.shared.quarantine(now, family, port) {
            self.schedule(now + PORT_QUARANTINE, TimerKey::Quarantine(family, port));
        }
    }

    /// Removes the permission for `ip`, the channels and TCP connections to it (policy
    /// reload).
    pub(crate) fn revoke_peer(&mut self, id: AllocationId, ip: IpAddr) {
        let Some(a) = self.table.get_mut(id) else {
            return;
        };
        let Some(relay) = a.relayed(Family::of(ip)).map(|r| r.bind) else {
            return;
        };
        let client = a.client;
        let mut unbound = Vec::new();
        a.channels.retain(|c| {
            if c.peer.ip() == ip {
                if !c.cooling {
                    unbound.push((c.peer, c.number));
                }
                false
            } else {
                true
            }
        });
        a.permissions.retain(|p| p.ip != ip);
        for (peer, channel) in unbound {
            self.commands.push_back(Command::ChannelUnbound {
                id,
                client,
                relay,
                peer,
                channel,
            });
        }
        self.commands.push_back(Command::PermissionRemoved {
            id,
            client,
            relay,
            peer: ip,
        });
        self.close_connections_to(id, |peer| peer.ip() == ip, ConnectionEnd::PeerDenied);
    }

    pub(super) fn fire(&mut self, now: Instant, key: TimerKey) {
        match key {
            TimerKey::Allocation(id) => {
                if self.table.get(id).is_some_and(|a| a.expires <= now) {
                    self.remove_allocation(now, id, Removal::Expired, None);
                }
            }
            TimerKey::Permission(id, ip) => {
                let Some(a) = self.table.get_mut(id) else {
                    return;
                };
                let Some(i) = a.permissions.iter().position(|p| p.ip == ip) else {
                    return;
                };
                if a.permissions[i].expires > now {
                    return;
                }
                a.permissions.swap_remove(i);
                if let Some(r) = a.relayed(Family::of(ip)) {
                    self.commands.push_back(Command::PermissionRemoved {
                        id,
                        client: a.client,
                        relay: r.bind,
                        peer: ip,
                    });
                }
            }
            TimerKey::Channel(id, number) => {
                let Some(a) = self.table.get_mut(id) else {
                    return;
                };
                let Some(i) = a.channels.iter().position(|c| c.number == number) else {
                    return;
                };
                let c = a.channels[i];
                if c.expires > now {
                    return;
                }
                if c.cooling {
                    a.channels.swap_remove(i);
                    return;
                }
                let until = c.expires + CHANNEL_COOLDOWN;
                a.channels[i].cooling = true;
                a.channels[i].expires = until;
                if let Some(r) = a.relayed(Family::of(c.peer.ip())) {
                    self.commands.push_back(Command::ChannelUnbound {
                        id,
                        client: a.client,
                        relay: r.bind,
                        peer: c.peer,
                        channel: number,
                    });
                }
                if until <= now {
                    a.channels.swap_remove(i);
                } else {
                    self.schedule(until, TimerKey::Channel(id, number));
                }
            }
            TimerKey::Reservation(token) => self.shared.expire_reservation(now, token),
            TimerKey::Quarantine(family, port) => {
                self.shared.expire_quarantine(now, family, port);
            }
        }
    }

    /// Every deadline change gets its own heap entry (the old one fires as a no-op). The
    /// bound is kept here, on insert, not when a timer comes due: a quiet shard under a
    /// refresh flood may have nothing due for an hour while every request pushes an entry.
    /// A rebuild costs O(live objects) and happens only once the heap has doubled since the
    /// last one, so it is amortised O(1) per insert.
    pub(super) fn schedule(&mut self, at: Instant, key: TimerKey) {
        self.timers.schedule(at, key);
        if self.timers.needs_compaction() {
            self.compact_timers();
        }
    }

    pub(super) fn compact_timers(&mut self) {
        let mut live = Vec::with_capacity(self.timers.len() / 2);
        for a in self.table.iter() {
            live.push((a.expires, TimerKey::Allocation(a.id)));
            for p in &a.permissions {
                live.push((p.expires, TimerKey::Permission(a.id, p.ip)));
            }
            for c in &a.channels {
                live.push((c.expires, TimerKey::Channel(a.id, c.number)));
            }
        }
        self.shared.deadlines(&mut live);
        self.timers.rebuild(live);
    }

    /// Number of timer entries (live and stale), for tests of the compaction bound.
    #[cfg(test)]
    pub(super) fn timer_entries(&self) -> usize {
        self.timers.len()
    }
}
