//! A relay port the data path could not bind (another program holds it): the core
//! voids the allocation, keeps the port out of circulation for a while, and answers the
//! Allocate that made it again itself, on another port (or 508 after
//! [`RELAY_BIND_ATTEMPTS`](super::RELAY_BIND_ATTEMPTS) failed ports), as a deferred
//! [`Command::SendToClient`]. The data path never hands the request back.

use std::net::SocketAddr;
use std::time::Instant;

use super::allocation::{AllocationId, Family};
use super::command::Command;
use super::event::CloseReason;
use super::five_tuple::FiveTuple;
use super::{ClientOutput, Removal, Server};
use crate::stun::Method;

impl Server {
    /// The data path could not bind `relay`: the allocation holding it ends (event
    /// [`CloseReason::RelayUnavailable`]) and the port is not handed out for
    /// [`PORT_QUARANTINE`](super::PORT_QUARANTINE).
    ///
    /// If that allocation was made by the request of the last
    /// [`handle_client`](Self::handle_client) call, the success response the data path
    /// holds for it is void (discard it): the core answers that request again at once,
    /// with other ports, and the answer comes as [`Command::SendToClient`] after the new
    /// allocation's `AllocationCreated` (so the data path binds before it sends). After
    /// [`RELAY_BIND_ATTEMPTS`](super::RELAY_BIND_ATTEMPTS) failed ports for one transaction that answer is 508.
    pub fn relay_bind_failed(&mut self, now: Instant, relay: SocketAddr) {
        let family = Family::of(relay.ip());
        let port = relay.port();
        let Some(id) = self.table.id_by_relay(relay) else {
            // Not (or no longer) allocated: still keep it out of circulation.
            self.quarantine(now, family, port);
            return;
        };
        let mut client = None;
        if let Some(a) = self.table.get(id)
            && let Some(r) = a
                .last_response
                .as_deref()
                .filter(|r| r.method == Method::ALLOCATE.0)
        {
            self.bind_failures.record(now, a.client, r.txid);
            client = Some(a.client);
        }
        // A deferred answer announcing this allocation may still wait in the queue
        // (the data path met this failure while carrying out an earlier one's
        // commands): it names a dead port.
        self.commands
            .retain(|c| !matches!(c, Command::SendToClient { id: i, .. } if *i == id));
        self.remove_allocation(
            now,
            id,
            Removal::Closed(CloseReason::RelayUnavailable),
            Some((family, port)),
        );
        if let Some(client) = client
            && Some(client) == self.fresh_allocate
        {
            self.answer_again(now, id, client);
        }
    }

    /// Hands the request that made a voided allocation to the handler again (another
    /// port, or 508) and queues the answer for the data path.
    fn answer_again(&mut self, now: Instant, id: AllocationId, client: FiveTuple) {
        let request = std::mem::take(&mut self.fresh_request);
        // An Allocate answer (success or error) is a few hundred bytes.
        let mut out = [0u8; 1024];
        if let ClientOutput::Reply { len } = self.handle_client(now, client, &request, &mut out) {
            // Named after the new allocation, if there is one, so that its own failed
            // bind can withdraw it.
            let id = self.table.id_by_tuple(&client).unwrap_or(id);
            self.commands.push_back(Command::SendToClient {
                id,
                client,
                message: out[..len].into(),
            });
        }
        if self.fresh_request.is_empty() {
            self.fresh_request = request;
        }
    }
}
