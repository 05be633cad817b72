//! Refresh (RFC 8656 §7.3): LIFETIME 0 deletes, anything else re-clamps the lifetime.

use std::time::Instant;

use crate::stun::{Lifetime, Message, RequestedAddressFamily};

use super::allocation::AllocationId;
use super::auth_check::Auth;
use super::event::Event;
use super::five_tuple::FiveTuple;
use super::handle_allocate::{family_of, optional};
use super::timers::TimerKey;
use super::{Removal, Server};

impl Server {
    /// The allocation on `from` if `auth` may use it: `Err` holds the 437/441 reply. The
    /// same username verified by another kind of credential (a configured user whose name
    /// looks like a REST one) is a different identity: the peer policy differs by kind.
    pub(crate) fn owned_allocation(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        auth: &Auth,
        out: &mut [u8],
    ) -> Result<AllocationId, Option<usize>> {
        let Some(id) = self.table.id_by_tuple(&from) else {
            return Err(self.reply_error(from, msg, Some(auth), 437, "", out));
        };
        let same_user = self
            .table
            .get(id)
            .is_some_and(|a| *a.user == *auth.username && a.credential == auth.credential);
        if !same_user {
            return Err(self.reply_error(from, msg, Some(auth), 441, "", out));
        }
        Ok(id)
    }

    pub(crate) fn refresh(
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
        let (raf, lifetime) = match (
            optional::<RequestedAddressFamily>(msg),
            optional::<Lifetime>(msg),
        ) {
            (Ok(raf), Ok(l)) => (raf, l.map(|l| l.0)),
            (Err(why), _) | (_, Err(why)) => return self.reply_error(from, msg, a, 400, &why, out),
        };
        if let Some(RequestedAddressFamily(f)) = raf {
            let has = self
                .table
                .get(id)
                .is_some_and(|al| al.relayed(family_of(f)).is_some());
            if !has {
                return self.reply_error(from, msg, a, 443, "", out);
            }
        }

        if lifetime == Some(0) {
            let len = self.reply_success_with(msg, a, out, |w| {
                w.attr(&Lifetime(0))?;
                Ok(())
            })?;
            self.remove_allocation(now, id, Removal::Deleted, None);
            self.graveyard.insert(
                now,
                from,
                msg.method().0,
                msg.transaction_id().0,
                &out[..len],
            );
            return Some(len);
        }

        let granted = self.clamp_lifetime(lifetime);
        let len = self.reply_success_with(msg, a, out, |w| {
            w.attr(&Lifetime(granted.as_secs().min(u64::from(u32::MAX)) as u32))?;
            Ok(())
        })?;
        let al = self.table.get_mut(id)?;
        let expires = now + granted;
        al.expires = expires;
        al.lifetime = granted;
        let (user, client) = (al.user.clone(), al.client);
        // Every deadline change gets its own heap entry; the old one fires as a no-op.
        self.schedule(expires, TimerKey::Allocation(id));
        self.events.push(Event::AllocationRefreshed {
            id,
            user,
            client,
            lifetime: granted,
        });
        self.remember(now, id, msg, &out[..len]);
        Some(len)
    }
}
