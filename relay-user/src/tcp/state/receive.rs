//! Bytes read from a client connection, to the core: TLS detection and decryption
//! ([`Wire`](crate::tcp::connection::Wire)), the limit on what a paused connection may
//! still send, STUN/ChannelData framing, and the core's answer to each frame. Peer
//! connections' bytes go straight to their spliced client.

use std::time::Instant;

use relay_proto::{
    server::{ClientOutput, Transport},
    stun::frame_len,
};

use super::{
    Side, State, send_now,
    splice_rules::{self, PeerBytes},
    tls_session,
};
use crate::{
    shard::{apply, slab::Key},
    tcp::connection::Mode,
};

impl State {
    /// Bytes read from socket `id` of `side`.
    pub fn received_on(&mut self, side: Side, id: Key, data: &[u8], now: Instant) {
        match side {
            Side::Client => self.received(id, data, now),
            Side::Peer => {
                let Some(c) = self.peers.get(id) else { return };
                match splice_rules::peer_bytes(c.closing.is_some(), data.len(), c.link) {
                    PeerBytes::Ignore => {}
                    PeerBytes::Forward(d) => self.forward(Side::Peer, id, d, data),
                    PeerBytes::Close => self.close_on(Side::Peer, id, "read before being spliced"),
                }
            }
        }
    }

    /// Bytes read from connection `id` (`data` may be a shared receive buffer: what is
    /// not consumed now is copied).
    pub fn received(&mut self, id: Key, data: &[u8], now: Instant) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.closing.is_some() || data.is_empty() {
            return;
        }
        // Behind a load balancer the PROXY header comes first, before TLS.
        let data = if c.proxy_pending.is_some() {
            match self.proxy_phase(id, data) {
                Some(used) if used < data.len() => &data[used..],
                _ => return,
            }
        } else {
            data
        };
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if matches!(c.wire.mode, Mode::Detect) {
            let listener = c.five.listener;
            let tls_ok = self.listeners.iter().any(|l| l.addr == listener && l.tls);
            let tls = &self.tls;
            let c = self.conns.get_mut(id).expect("checked above");
            if let Err(why) = c.wire.detect(data[0], tls_ok, || tls_session(tls.as_ref())) {
                return self.close(id, why);
            }
            if c.wire.is_tls() {
                c.five.transport = Transport::Tls;
            }
        }
        let c = self.conns.get_mut(id).expect("checked above");
        match (&c.wire.mode, c.link) {
            (Mode::Tls(_), _) => self.tls_received(id, data, now),
            (_, Some(p)) => self.forward(Side::Client, id, p, data),
            _ => {
                if c.wire.rx.is_empty() && c.may_process() {
                    // The common case: frames straight from the receive buffer.
                    let used = self.frames(id, data, now);
                    if let Some(c) = self.conns.get_mut(id)
                        && c.closing.is_none()
                    {
                        c.wire.rx.extend_from_slice(&data[used..]);
                    }
                } else {
                    c.wire.rx.extend_from_slice(data);
                    self.process_rx(id, now);
                }
            }
        }
        self.check_rx_limit(id);
    }

    pub(super) fn check_rx_limit(&mut self, id: Key) {
        let in_flight = self.rx_in_flight;
        if self
            .conns
            .get(id)
            .is_some_and(|c| c.wire.overrun(in_flight))
        {
            self.close(
                id,
                "client sent more than the relay holds for a connection it stopped reading (not reading its responses?)",
            );
        }
    }

    /// Ciphertext in, plaintext into `rx`, handshake records out.
    fn tls_received(&mut self, id: Key, data: &[u8], now: Instant) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let done = c.wire.decrypt(data);
        if !c.wire.tx.is_empty() {
            self.touch(id);
        }
        if let Some(why) = done.failure {
            // The alert goes out before the close, so the client reports why (a closed
            // socket alone reads as "unexpected EOF").
            if let Some(c) = self.conns.get_mut(id) {
                send_now(c);
                if done.handshaking {
                    tracing::info!(client = %c.five, reason = %why, "TLS handshake failed");
                }
            }
            return self.close(id, why);
        }
        self.process_rx(id, now);
        if done.peer_closed {
            self.close(id, "client sent TLS close_notify");
        }
    }

    /// Processes whole frames waiting in `rx` (after a pause, or TLS plaintext).
    pub(super) fn process_rx(&mut self, id: Key, now: Instant) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.wire.rx.is_empty() || !c.may_process() {
            return;
        }
        let mut rx = std::mem::take(&mut c.wire.rx);
        if let Some(p) = c.link {
            // Spliced (TLS plaintext): no frames any more.
            self.forward(Side::Client, id, p, &rx);
            rx.clear();
            if let Some(c) = self.conns.get_mut(id) {
                c.wire.rx = rx;
            }
            return;
        }
        let used = self.frames(id, &rx, now);
        match self.conns.get_mut(id) {
            Some(c) => {
                let mut rx = rx;
                rx.drain(..used);
                // Bytes may have been added meanwhile only if the connection closed.
                c.wire.rx = rx;
            }
            None => drop(rx),
        }
    }

    /// Handles the whole frames at the start of `buf` until it runs out, the connection
    /// pauses or closes; returns the bytes consumed.
    fn frames(&mut self, id: Key, buf: &[u8], now: Instant) -> usize {
        let mut at = 0;
        loop {
            match self.conns.get(id) {
                Some(c) if c.may_process() => {}
                _ => return at,
            }
            match frame_len(&buf[at..]) {
                Ok(Some(n)) => {
                    if self.bind_elsewhere(id, &buf[at..at + n]) {
                        // Unconsumed: the worker it moves to handles it.
                        return at;
                    }
                    self.frame(id, &buf[at..at + n], now);
                    at += n;
                    // A ConnectionBind spliced it: the rest is the peer's (RFC 6062 §5.4).
                    if let Some(p) = self.conns.get(id).and_then(|c| c.link) {
                        if at < buf.len() {
                            self.forward(Side::Client, id, p, &buf[at..]);
                        }
                        return buf.len();
                    }
                }
                Ok(None) => return at,
                Err(e) => {
                    let client = self.conns.get(id).map(|c| c.five);
                    if let Some(client) = client {
                        tracing::info!(%client, error = %e, "closing TCP connection: not STUN or ChannelData framing");
                    }
                    self.close(id, format!("stream framing: {e}"));
                    return at;
                }
            }
        }
    }

    fn frame(&mut self, id: Key, frame: &[u8], now: Instant) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        c.last_frame = Some(now);
        let five = c.five;
        let mut out = std::mem::take(&mut self.out);
        let mut output = self.server.handle_client(now, five, frame, &mut out);
        // A reply may announce an allocation: its relay socket must exist before the
        // response leaves. If the port cannot be bound the core voids that allocation and
        // answers again itself (another port, or 508, queued already): this reply is void.
        if matches!(output, ClientOutput::Reply { .. }) && apply::apply(self, now, Some(&five)) {
            output = ClientOutput::Nothing;
        }
        // Only a request whose integrity verified keeps a connection without an
        // allocation open (see `limits::idle_verdict`).
        if self.server.last_request_authenticated()
            && let Some(c) = self.conns.get_mut(id)
        {
            c.last_authenticated = Some(now);
        }
        match output {
            ClientOutput::Nothing => {}
            ClientOutput::Reply { len } => self.queue(id, &out[..len], false),
            ClientOutput::ToPeer {
                relay,
                peer,
                payload,
            } => self.send_to_peer(id, relay, peer, payload),
            ClientOutput::ToClient { to, len } => self.deliver(&to, &out[..len]),
        }
        self.out = out;
        // An Allocate's relay socket must exist before the next frame uses it.
        self.apply_commands(now);
    }
}
