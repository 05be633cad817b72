//! ChannelBind (RFC 8656 §11.2): binds a channel number to a peer transport address and
//! installs or refreshes the permission for the peer's IP.

use std::net::SocketAddr;
use std::time::Instant;

use crate::stun::{CHANNEL_MAX, CHANNEL_MIN, ChannelNumber, Message, XorPeerAddress};

use super::Server;
use super::allocation::{Channel, Family};
use super::auth_check::Auth;
use super::command::Command;
use super::five_tuple::FiveTuple;
use super::handle_allocate::optional;
use super::timers::TimerKey;

impl Server {
    pub(crate) fn channel_bind(
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
        let (number, peer): (u16, SocketAddr) = match (
            optional::<ChannelNumber>(msg),
            optional::<XorPeerAddress>(msg),
        ) {
            (Ok(Some(ChannelNumber(n))), Ok(Some(XorPeerAddress(p)))) => (n, p),
            (Err(why), _) | (_, Err(why)) => return self.reply_error(from, msg, a, 400, &why, out),
            (Ok(None), _) => {
                return self.reply_error(from, msg, a, 400, "Missing CHANNEL-NUMBER", out);
            }
            (_, Ok(None)) => {
                return self.reply_error(from, msg, a, 400, "Missing XOR-PEER-ADDRESS", out);
            }
        };
        if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&number) {
            return self.reply_error(from, msg, a, 400, "Channel number out of range", out);
        }
        if let Err(code) = self.check_peer_port(id, peer) {
            return self.reply_error(from, msg, a, code, "", out);
        }
        let al = self.table.get(id)?;
        // RFC 8656 §11.2: a number bound (or cooling down) for another peer, or a peer bound
        // to another number, is refused; the same pair refreshes.
        if al.channel_by_number(number).is_some_and(|c| c.peer != peer) {
            return self.reply_error(from, msg, a, 400, "Channel bound to another peer", out);
        }
        if al.channel_by_peer(peer).is_some_and(|c| c.number != number) {
            return self.reply_error(from, msg, a, 400, "Peer bound to another channel", out);
        }
        let existing = al.channel_by_number(number).is_some();
        if !existing && al.channels.len() >= self.config.max_channels {
            return self.reply_error(from, msg, a, 508, "Too many channels", out);
        }
        if !al.has_room_for_permission(peer.ip(), self.config.max_permissions) {
            return self.reply_error(from, msg, a, 508, "Too many permissions", out);
        }
        let len = self.reply_success(msg, a, out)?;

        // Permission first, so the data path never has a channel without its permission.
        self.grant_permission(now, id, peer.ip());
        let expires = now + self.config.channel_lifetime;
        let al = self.table.get_mut(id)?;
        let relay = al.relayed(Family::of(peer.ip()))?.bind;
        let announce = match al.channels.iter_mut().find(|c| c.number == number) {
            Some(c) => {
                let was_cooling = c.cooling;
                c.cooling = false;
                c.expires = expires;
                was_cooling
            }
            None => {
                al.channels.push(Channel {
                    number,
                    peer,
                    expires,
                    cooling: false,
                });
                true
            }
        };
        if announce {
            self.commands.push_back(Command::ChannelBound {
                id,
                client: al.client,
                relay,
                peer,
                channel: number,
            });
        }
        self.schedule(expires, TimerKey::Channel(id, number));
        self.remember(now, id, msg, &out[..len]);
        Some(len)
    }
}
