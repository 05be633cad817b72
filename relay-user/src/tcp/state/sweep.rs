//! Time on the TCP shard: the core's timers, and the sweep that closes connections
//! idle or handshaking for too long, or splice survivors that did not drain in time.

use std::time::Instant;

use super::{SWEEP_EVERY, Side, State, splice_rules};
use crate::{
    shard::slab::Key,
    tcp::limits::{Activity, idle_verdict},
};

impl State {
    /// When [`tick`](Self::tick) is next due.
    pub fn deadline(&self) -> Instant {
        match self.server.poll_timeout() {
            Some(t) => t.min(self.next_sweep),
            None => self.next_sweep,
        }
    }

    /// Core timers, then idle and handshake timeouts.
    pub fn tick(&mut self, now: Instant) {
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
        self.apply_commands(now);
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY;
        self.expire_proxy_log(now);
        let mut keys = std::mem::take(&mut self.sweep_keys);
        keys.clear();
        keys.extend(self.conns.keys());
        for &id in &keys {
            let Some(c) = self.conns.get(id) else {
                continue;
            };
            if splice_rules::overdue(c.finish_by, now) {
                self.close(
                    id,
                    "client did not take the rest of its peer's data in time",
                );
                continue;
            }
            if c.closing.is_some() || c.link.is_some() || c.finish_by.is_some() {
                // Spliced data connections carry no frames: only the peer side ends them.
                continue;
            }
            let activity = Activity {
                accepted: c.accepted,
                first_frame: c.last_frame,
                last_authenticated: c.last_authenticated,
                has_allocation: self.server.allocation(&c.five).is_some(),
            };
            let why = idle_verdict(
                activity,
                self.settings.handshake_timeout,
                self.settings.idle_timeout,
                now,
            );
            match why {
                Some(_) if c.proxy_pending.is_some() => {
                    let (source, listener) = (c.five.client, c.five.listener);
                    super::bump(&self.stats.refused_proxy_header);
                    tracing::info!(%source, %listener,
                        "TCP connection refused: no complete PROXY header within tcp.handshake_timeout \
                         (is the load balancer sending the PROXY protocol?)");
                    self.close(id, "no PROXY header within tcp.handshake_timeout");
                }
                Some(why) => {
                    tracing::debug!(client = %c.five, reason = why, "closing TCP connection");
                    self.close(id, why);
                }
                None => {}
            }
        }
        keys.clear();
        keys.extend(self.peers.keys());
        for &id in &keys {
            if self
                .peers
                .get(id)
                .is_some_and(|c| splice_rules::overdue(c.finish_by, now))
            {
                self.close_on(
                    Side::Peer,
                    id,
                    "peer did not take the rest of the client's data in time",
                );
            }
        }
        self.sweep_keys = keys;
    }

    /// Starts closing every connection (shutdown).
    pub fn close_all(&mut self) {
        let keys: Vec<Key> = self.conns.keys().collect();
        for id in keys {
            self.close(id, "relay stopping");
        }
        let keys: Vec<Key> = self.peers.keys().collect();
        for id in keys {
            self.close_on(Side::Peer, id, "relay stopping");
        }
    }

    /// Sockets still held (client and peer connections).
    pub fn open_streams(&self) -> usize {
        self.conns.len() + self.peers.len()
    }
}
