//! The core's events as operator log lines: who, from where, what happened, and for
//! failures what to check.

use relay_proto::server::{CloseReason, Event};

pub fn log(event: Event) {
    match event {
        Event::AllocationCreated {
            id,
            user,
            client,
            relayed,
            lifetime,
        } => {
            let relayed: Vec<String> = relayed.iter().map(|a| a.to_string()).collect();
            tracing::info!(%id, %user, %client, relayed = %relayed.join(","), lifetime_s = lifetime.as_secs(), "allocation created");
        }
        Event::AllocationRefreshed {
            id,
            user,
            client,
            lifetime,
        } => {
            tracing::debug!(%id, %user, %client, lifetime_s = lifetime.as_secs(), "allocation refreshed");
        }
        Event::AllocationExpired {
            id,
            user,
            client,
            counters: c,
        } => {
            tracing::info!(%id, %user, %client, to_peer_packets = c.to_peer_packets, to_client_packets = c.to_client_packets,
                to_peer_bytes = c.to_peer_bytes, to_client_bytes = c.to_client_bytes, "allocation expired");
        }
        Event::AllocationDeleted {
            id,
            user,
            client,
            counters: c,
        } => {
            tracing::info!(%id, %user, %client, to_peer_packets = c.to_peer_packets, to_client_packets = c.to_client_packets,
                to_peer_bytes = c.to_peer_bytes, to_client_bytes = c.to_client_bytes, "allocation deleted by client");
        }
        Event::AllocationClosed {
            id,
            user,
            client,
            reason,
            counters: c,
        } => {
            let why = match reason {
                CloseReason::ClientClosed => "client connection closed",
                CloseReason::RelayUnavailable => {
                    "relay port could not be bound (check the port range is free)"
                }
            };
            tracing::warn!(%id, %user, %client, reason = why, to_peer_packets = c.to_peer_packets,
                to_client_packets = c.to_client_packets, "allocation closed");
        }
        Event::AuthFailed {
            user,
            client,
            method,
            reason,
        } => {
            let user = user.as_deref().unwrap_or("-");
            tracing::warn!(user, %client, %method, %reason,
                "authentication failed (401/438): check the client's username, password or shared secret, and the realm");
        }
        Event::PeerDenied {
            user,
            client,
            peer,
            reason,
        } => {
            tracing::warn!(%user, %client, %peer, rule = %reason,
                "peer refused (403): add it to [peers] allow if it is a legitimate internal peer");
        }
        Event::RequestRejected {
            client,
            method,
            code,
        } => {
            tracing::info!(%client, %method, code, "request rejected");
        }
        Event::Redirected { client, alternate } => {
            tracing::info!(%client, %alternate, "allocation redirected to alternate server (300)");
        }
    }
}
