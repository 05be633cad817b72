//! Binding requests (RFC 8489 §6.3.1): answered without authentication, so clients (and ICE)
//! can learn their reflexive address from the relay.

use crate::stun::{Message, XorMappedAddress};

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
        self.reply_success_with(msg, None, out, |w| {
            w.attr(&XorMappedAddress(from.client))?;
            Ok(())
        })
    }
}
