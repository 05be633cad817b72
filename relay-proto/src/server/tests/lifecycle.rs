//! Refresh/delete, retransmissions, relay failures, malformed and unknown requests.

use std::net::SocketAddr;

use super::harness::*;
use crate::server::{CloseReason, Command, Event, RELAY_BIND_ATTEMPTS};
use crate::stun::{
    AddressFamily, Class, Lifetime, Message, Method, RequestedAddressFamily, RequestedTransport,
};

#[test]
fn refresh_with_lifetime_zero_deletes_and_its_retransmission_succeeds_again() {
    let mut h = H::new();
    let rel = h.allocate(udp(1));
    h.permit(udp(1), &Cred::alice(), &[peer(1, 1)]);
    h.commands();
    let (req, r) = h.request(udp(1), Method::REFRESH, &Cred::alice(), |w| {
        w.attr(&Lifetime(0)).unwrap();
    });
    assert_eq!(code(&r), None);
    assert_eq!(lifetime(&r), 0);
    Message::parse(&r)
        .unwrap()
        .verify_integrity(Cred::alice().key().as_bytes())
        .unwrap();
    assert_eq!(h.server.allocation_count(), 0);
    let cmds = h.commands();
    assert!(matches!(&cmds[..], [
        Command::PermissionRemoved { .. },
        Command::AllocationRemoved { public, .. },
    ] if *public == rel));
    assert!(
        h.events()
            .iter()
            .any(|e| matches!(e, Event::AllocationDeleted { .. }))
    );

    h.skip(secs(1));
    assert_eq!(
        h.client(udp(1), &req).reply(),
        r,
        "retransmitted delete: same success"
    );
    h.skip(secs(40));
    assert_eq!(code(&h.client(udp(1), &req).reply()), Some(437));
    // A new allocation on the same 5-tuple works.
    h.allocate(udp(1));
}

#[test]
fn refresh_family_mismatch_is_443() {
    let mut h = H::new();
    h.allocate(udp(1));
    let (_, r) = h.request(udp(1), Method::REFRESH, &Cred::alice(), |w| {
        w.attr(&RequestedAddressFamily(AddressFamily::V6)).unwrap();
    });
    assert_eq!(code(&r), Some(443));
    let (_, r) = h.request(udp(1), Method::REFRESH, &Cred::alice(), |w| {
        w.attr(&RequestedAddressFamily(AddressFamily::V4)).unwrap();
    });
    assert_eq!(code(&r), None);
}

#[test]
fn refresh_retransmission_is_answered_from_the_cache() {
    let mut h = H::new();
    h.allocate(udp(1));
    let (req, r) = h.request(udp(1), Method::REFRESH, &Cred::alice(), |w| {
        w.attr(&Lifetime(900)).unwrap();
    });
    assert_eq!(h.client(udp(1), &req).reply(), r);
}

#[test]
fn relay_bind_failed_removes_the_allocation_and_quarantines_the_port() {
    let mut h = H::with(|c| c.ports = 24000..=24000);
    let rel = h.allocate(udp(1));
    let bind = SocketAddr::new(RELAY4_BIND.into(), rel.port());
    h.commands();
    h.server.relay_bind_failed(h.now, bind);
    assert_eq!(h.server.allocation_count(), 0);
    // The request is answered again: no other port, so 508.
    let cmds = h.commands();
    assert!(
        matches!(&cmds[..], [Command::AllocationRemoved { relay, .. }, Command::SendToClient { message, .. }]
            if *relay == bind && code(message) == Some(508)),
        "{cmds:?}"
    );
    assert!(h.events().iter().any(|e| matches!(
        e,
        Event::AllocationClosed {
            reason: CloseReason::RelayUnavailable,
            ..
        }
    )));
    // The only port is quarantined: 508 until the quarantine ends.
    let r = h.allocate_with(udp(2), &Cred::alice(), |_| {});
    assert_eq!(code(&r), Some(508));
    h.advance(crate::server::PORT_QUARANTINE);
    assert_eq!(h.allocate(udp(2)).port(), 24000);
    // A report for a port nobody holds quarantines it as well.
    let mut h = H::with(|c| c.ports = 24000..=24000);
    h.server.relay_bind_failed(h.now, bind);
    assert_eq!(
        code(&h.allocate_with(udp(2), &Cred::alice(), |_| {})),
        Some(508)
    );
}

/// A failed relay bind is answered by the core, not by the data path handing the same
/// Allocate back: the voided allocation goes, another port is allocated at once and its
/// success response comes as a `SendToClient` after its `AllocationCreated` (the socket
/// exists before the response leaves); after `RELAY_BIND_ATTEMPTS` failed ports that
/// deferred answer is 508. The dead allocation's response is never replayed.
#[test]
fn relay_bind_failed_answers_the_allocate_later_with_another_port_then_508() {
    let mut h = H::with(|c| c.ports = 24000..=24009);
    let (req, out) = h.ask(udp(1), Method::ALLOCATE, &Cred::alice(), |w| {
        w.attr(&RequestedTransport(17)).unwrap();
    });
    let first = out.reply();
    assert_eq!(code(&first), None, "{}", describe(&first));
    let mut tried = vec![relayed(&first)[0].port()];
    h.commands();
    for attempt in 1..=RELAY_BIND_ATTEMPTS {
        let bind = SocketAddr::new(RELAY4_BIND.into(), *tried.last().unwrap());
        h.server.relay_bind_failed(h.now, bind);
        let cmds = h.commands();
        assert!(
            matches!(cmds.first(), Some(Command::AllocationRemoved { relay, .. }) if *relay == bind),
            "{cmds:?}"
        );
        let answers: Vec<&[u8]> = cmds
            .iter()
            .filter_map(|c| match c {
                Command::SendToClient {
                    client, message, ..
                } if *client == udp(1) => Some(&message[..]),
                _ => None,
            })
            .collect();
        assert_eq!(
            answers.len(),
            1,
            "one deferred answer per failed bind: {cmds:?}"
        );
        let r = answers[0].to_vec();
        if attempt == RELAY_BIND_ATTEMPTS {
            assert_eq!(code(&r), Some(508), "{}", describe(&r));
            assert_eq!(h.server.allocation_count(), 0);
            assert_eq!(cmds.len(), 2, "508 creates nothing: {cmds:?}");
            // A retransmission of the request gets the same answer.
            assert_eq!(code(&h.client(udp(1), &req).reply()), Some(508));
            break;
        }
        assert_eq!(code(&r), None, "attempt {attempt}: {}", describe(&r));
        assert_ne!(r, first, "the dead allocation's response was replayed");
        assert_eq!(h.server.allocation_count(), 1);
        let port = relayed(&r)[0].port();
        assert!(!tried.contains(&port), "port {port} tried twice: {tried:?}");
        tried.push(port);
        let created = cmds.iter().position(|c| {
            matches!(
                c,
                Command::AllocationCreated { relay, .. } if relay.port() == port
            )
        });
        let sent = cmds
            .iter()
            .position(|c| matches!(c, Command::SendToClient { .. }));
        assert!(
            created < sent,
            "the socket is bound before the answer leaves: {cmds:?}"
        );
    }
}

/// The data path carries out commands in order and reports a failed bind as it meets
/// it, so a second failure comes while the first deferred answer is still queued: that
/// answer names the dead port and must go, leaving one answer (the last port's).
#[test]
fn relay_bind_failed_twice_in_one_drain_leaves_only_the_last_answer() {
    let mut h = H::with(|c| c.ports = 24000..=24009);
    let (_, out) = h.ask(udp(1), Method::ALLOCATE, &Cred::alice(), |w| {
        w.attr(&RequestedTransport(17)).unwrap();
    });
    let first = out.reply();
    let mut failures = 0;
    let mut bound = Vec::new();
    let mut answers = Vec::new();
    while let Some(cmd) = h.server.poll_command() {
        match cmd {
            Command::AllocationCreated { relay, .. } if failures < 3 => {
                failures += 1;
                h.server.relay_bind_failed(h.now, relay);
            }
            Command::AllocationCreated { relay, .. } => bound.push(relay.port()),
            Command::SendToClient { message, .. } => answers.push(message.to_vec()),
            _ => {}
        }
    }
    assert_eq!(bound.len(), 1, "{bound:?}");
    assert_eq!(
        answers.len(),
        1,
        "answers naming dead ports were sent: {answers:?}"
    );
    assert_eq!(code(&answers[0]), None, "{}", describe(&answers[0]));
    assert_eq!(relayed(&answers[0])[0].port(), bound[0]);
    assert_ne!(answers[0], first);
}

/// A failed bind of an allocation made by an earlier input (not the request just
/// handled) voids it and quarantines the port, but there is nothing to answer.
#[test]
fn relay_bind_failed_for_an_older_allocation_answers_nothing() {
    let mut h = H::with(|c| c.ports = 24000..=24009);
    let rel = h.allocate(udp(1));
    h.allocate(udp(2));
    h.commands();
    let bind = SocketAddr::new(RELAY4_BIND.into(), rel.port());
    h.server.relay_bind_failed(h.now, bind);
    let cmds = h.commands();
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, Command::SendToClient { .. })),
        "{cmds:?}"
    );
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn unknown_method_request_is_400_and_malformed_request_is_400() {
    let mut h = H::new();
    let txid = h.txid();
    let req = h.build(
        Class::Request,
        crate::stun::Method(0x0123),
        txid,
        None,
        |_| {},
    );
    assert_eq!(code(&h.client(udp(1), &req).reply()), Some(400));
    let req = h.build(Class::Request, Method::CONNECT, txid, None, |_| {});
    assert_eq!(code(&h.client(udp(1), &req).reply()), Some(400));

    // An attribute running past the end: 400 with the request's transaction id.
    let mut req = h.build(Class::Request, Method::ALLOCATE, txid, None, |w| {
        w.attr(&RequestedTransport(17)).unwrap();
    });
    req.truncate(28); // header + REQUESTED-TRANSPORT
    req[3] = 8;
    req[23] = 40; // attribute length 40
    let reply = h.client(udp(1), &req).reply();
    assert_eq!(code(&reply), Some(400));
    assert_eq!(Message::parse(&reply).unwrap().transaction_id().0, txid);

    // Garbage after a good header of an indication: dropped, no reply.
    let mut ind = h.build(Class::Indication, Method::SEND, txid, None, |_| {});
    ind.truncate(20);
    ind[3] = 4;
    assert_eq!(h.client(udp(1), &ind), Out::Nothing);
    // Bad fingerprint: not for us, dropped.
    let mut req = h.build(Class::Request, Method::BINDING, txid, None, |_| {});
    let last = req.len() - 1;
    req[last] ^= 1;
    assert_eq!(h.client(udp(1), &req), Out::Nothing);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn a_tiny_output_buffer_never_panics_and_creates_nothing() {
    let mut h = H::new();
    let nonce = h.nonce(udp(1));
    let txid = h.txid();
    let req = h.build(
        Class::Request,
        Method::ALLOCATE,
        txid,
        Some((&Cred::alice(), &nonce)),
        |w| {
            w.attr(&RequestedTransport(17)).unwrap();
        },
    );
    let mut out = [0u8; 40];
    let r = h.server.handle_client(h.now, udp(1), &req, &mut out);
    assert_eq!(r, crate::server::ClientOutput::Nothing);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.ports_in_use(), (0, 0));
    assert!(h.commands().is_empty());
}

#[test]
fn status_page_lists_allocations() {
    let mut h = H::new();
    h.allocate(udp(1));
    h.allocate(udp(2));
    h.bind(udp(2), &Cred::alice(), 0x4000, peer(1, 1));
    let infos: Vec<_> = h.server.allocations().collect();
    assert_eq!(infos.len(), 2);
    let b = infos.iter().find(|i| i.client() == udp(2)).unwrap();
    assert_eq!(b.channels().count(), 1);
    assert_eq!(b.permissions().count(), 1);
    assert_eq!(b.created(), h.t0);
    assert!(format!("{b:?}").contains("alice"));
}

#[test]
fn an_operator_disconnect_ends_the_allocation_like_expiry_and_refresh_gets_437() {
    let mut h = H::new();
    let rel = h.allocate(udp(1));
    h.permit(udp(1), &Cred::alice(), &[peer(1, 1)]);
    h.bind(udp(1), &Cred::alice(), 0x4000, peer(1, 1));
    h.commands();
    h.events();
    let id = h.server.allocations().next().unwrap().id();
    // The admin endpoint names it by its printed form.
    assert_eq!(id.to_string().parse(), Ok(id));

    let (user, client) = h.server.disconnect(h.now, id).expect("found");
    assert_eq!((&*user, client), ("alice", udp(1)));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.ports_in_use(), (0, 0));
    let cmds = h.commands();
    assert!(
        matches!(&cmds[..], [
            Command::ChannelUnbound { .. },
            Command::PermissionRemoved { .. },
            Command::AllocationRemoved { public, .. },
        ] if *public == rel),
        "a UDP client has no connection to close: {cmds:?}"
    );
    assert!(h.events().iter().any(|e| matches!(
        e,
        Event::AllocationClosed { reason: CloseReason::Disconnected, user, .. } if &**user == "alice"
    )));
    assert_eq!(code(&h.refresh(udp(1), &Cred::alice(), None)), Some(437));
    // Gone is gone: a second disconnect finds nothing.
    assert_eq!(h.server.disconnect(h.now, id), None);
}

#[test]
fn an_operator_disconnect_closes_a_stream_clients_connection_last() {
    let mut h = H::new();
    h.allocate(tcp(1));
    h.commands();
    let id = h.server.allocations().next().unwrap().id();
    assert!(h.server.disconnect(h.now, id).is_some());
    let cmds = h.commands();
    assert!(
        matches!(&cmds[..], [
            Command::AllocationRemoved { .. },
            Command::CloseClient { client, .. },
        ] if *client == tcp(1)),
        "{cmds:?}"
    );
    // Ids of another server (or junk) are not found.
    assert_eq!("zz".parse::<crate::server::AllocationId>().ok(), None);
}
