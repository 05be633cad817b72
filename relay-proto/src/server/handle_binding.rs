//! Binding requests (RFC 8489 §6.3.1): answered without authentication, so clients (and ICE)
//! can learn their reflexive address from the relay.

use crate::stun::{Class, Message, XorMappedAddress};

use super::Server;
use super::five_tuple::FiveTuple;

impl Server {
    pub(crate) fn binding(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Option<usize> {
        let unknown = msg.unknown_comprehension_required();
        if !unknown.is_empty() {
            return self.reply_unknown(from, msg, None, &unknown, out);
        }
        let mut build = || {
            let mut w = Self::writer(out, Class::Success, msg.method(), msg.transaction_id())?;
            w.attr(&XorMappedAddress(from.client))?;
            self.seal(w, None)
        };
        build().ok()
    }
}
