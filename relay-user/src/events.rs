//! The core's events as operator log lines: who, from where, what happened, and for
//! failures what to check.
//!
//! Data-path threads only count an event (metrics) and queue it; the `events-log` thread
//! formats and writes the lines, so neither a slow stderr (a journal that cannot keep up)
//! nor a flood of lines holds up packet handling. A full queue drops the event, counted in
//! `relay_events_lost`. Floods are throttled there too ([`crate::log_limit`]): auth
//! failures and rejected requests per source, refused peers per source and rule, capacity
//! refusals per limit get one line per window in full and one summary line for the
//! repeats.

use std::{
    net::SocketAddr,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::{Duration, Instant},
};

use relay_common::AllocCounters;
use relay_proto::{
    auth::AuthError,
    policy::DenyReason,
    server::{CapacityLimit, CloseReason, Counters, Event},
    stun::Method,
};

use crate::log_limit::{Limiter, Source, Summary, WINDOW};

/// Events waiting for the log thread: a few seconds of a busy relay's events, a bounded
/// few MB. Beyond, they are dropped and counted.
const QUEUE: usize = 8192;

/// Events dropped because the log thread's queue was full (or the thread is gone).
pub fn lost() -> u64 {
    LOST.load(Ordering::Relaxed)
}

/// Waits (at most `timeout`) until the log thread has written every event queued so far,
/// and writes the summaries of every throttled window at once: the last lines at exit.
pub fn flush(timeout: Duration) {
    let Some(tx) = &*QUEUE_TX else { return };
    let (ack_tx, ack) = mpsc::sync_channel(1);
    if tx.send(Msg::Flush(ack_tx)).is_ok() {
        let _ = ack.recv_timeout(timeout);
    }
}

// Events are the common case and travel unboxed: boxing would put an allocation per
// event on the data path. Flush is once per run.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(Event, Option<AllocCounters>),
    Flush(SyncSender<()>),
}

static LOST: AtomicU64 = AtomicU64::new(0);

/// The log thread's queue, started at the first event.
static QUEUE_TX: LazyLock<Option<SyncSender<Msg>>> = LazyLock::new(|| {
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let spawned = std::thread::Builder::new()
        .name("events-log".into())
        .spawn(move || {
            let mut w = Writer::default();
            loop {
                // Wakes at least once a second to write the summaries of ended windows.
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(Msg::Event(event, kernel)) => write(&mut w, event, kernel, Instant::now()),
                    Ok(Msg::Flush(ack)) => {
                        w.expire(Instant::now() + WINDOW);
                        let _ = ack.send(());
                    }
                    Err(RecvTimeoutError::Timeout) => w.expire(Instant::now()),
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the events log thread: core events go unlogged (counted in relay_events_lost)");
            None
        }
    }
});

fn queue(msg: Msg) {
    let full = match &*QUEUE_TX {
        Some(tx) => matches!(
            tx.try_send(msg),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_))
        ),
        None => true,
    };
    if full {
        LOST.fetch_add(1, Ordering::Relaxed);
    }
}

/// The last line of an allocation that expired or was deleted: both paths' traffic.
fn ended(
    what: &str,
    id: &dyn std::fmt::Display,
    user: &dyn std::fmt::Display,
    client: &dyn std::fmt::Display,
    c: &Counters,
    kernel: Option<&AllocCounters>,
) {
    let k = |f: fn(&AllocCounters) -> u64| kernel.map(f);
    tracing::info!(%id, %user, %client, to_peer_packets = c.to_peer_packets, to_client_packets = c.to_client_packets,
        to_peer_bytes = c.to_peer_bytes, to_client_bytes = c.to_client_bytes,
        xdp_to_peer_packets = k(|k| k.to_peer_packets), xdp_to_client_packets = k(|k| k.to_client_packets),
        xdp_to_peer_bytes = k(|k| k.to_peer_bytes), xdp_to_client_bytes = k(|k| k.to_client_bytes),
        "{what}");
}

/// As [`log`]. `kernel`: what the XDP fast path relayed for an allocation that ended (read
/// before its map entries went), added to its last line as `xdp_*` fields beside the
/// userspace counters; the two together are the allocation's traffic.
pub fn log_with_kernel(event: Event, kernel: Option<AllocCounters>) {
    queue(Msg::Event(event, kernel));
}

/// The log thread's state: one limiter per kind of flood.
struct Writer {
    /// Auth failures per source (coturn's uclient retries a wrong password about 30
    /// times in 25 ms; a scanner far more). One table for all shards: a client's retries
    /// from new ports may land on any of them.
    auth: Limiter<Source, (Option<String>, AuthError)>,
    /// Refused peers per client source and rule (a client probing the internal network
    /// hits one rule over and over; each rule it hits is still seen).
    peers: Limiter<(Source, DenyReason), (Arc<str>, SocketAddr)>,
    /// Other error responses per source: anyone can send malformed requests.
    rejected: Limiter<Source, (Method, u16)>,
    /// Allocations refused for capacity, per limit: the relay's, one user's quota or one
    /// source's. A full relay under load refuses hundreds a second.
    capacity: Limiter<CapacityKey, (CapacityLimit, Arc<str>)>,
}

impl Default for Writer {
    fn default() -> Self {
        // Sources counted one by one; beyond, together (memory bound under a
        // spoofed-source flood).
        const MAX_SOURCES: usize = 4096;
        const MAX_USERS: usize = 1024;
        Self {
            auth: Limiter::new(MAX_SOURCES),
            peers: Limiter::new(MAX_SOURCES),
            rejected: Limiter::new(MAX_SOURCES),
            capacity: Limiter::new(MAX_USERS),
        }
    }
}

impl Writer {
    /// Logs the summaries of the windows that have ended by `now`.
    fn expire(&mut self, now: Instant) {
        self.auth.expire(now, auth_summary);
        self.peers.expire(now, peers_summary);
        self.rejected.expire(now, rejected_summary);
        self.capacity.expire(now, capacity_summary);
    }
}

/// One event's line, unless its flood is throttled.
fn write(w: &mut Writer, event: Event, kernel: Option<AllocCounters>, now: Instant) {
    let k = |f: fn(&AllocCounters) -> u64| kernel.as_ref().map(f);
    // Ended windows first: a repeat after its window ended starts a new one.
    w.expire(now);
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
            ended(
                "allocation expired",
                &id,
                &user,
                &client,
                &c,
                kernel.as_ref(),
            );
        }
        Event::AllocationDeleted {
            id,
            user,
            client,
            counters: c,
        } => {
            ended(
                "allocation deleted by client",
                &id,
                &user,
                &client,
                &c,
                kernel.as_ref(),
            );
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
                CloseReason::Disconnected => "disconnected by an operator (admin API)",
            };
            // A TCP/TLS client hanging up is how calls normally end; a port that could not
            // be bound needs the operator.
            match reason {
                CloseReason::ClientClosed | CloseReason::Disconnected => {
                    tracing::info!(%id, %user, %client, reason = why,
                to_peer_packets = c.to_peer_packets, to_client_packets = c.to_client_packets,
                xdp_to_peer_packets = k(|k| k.to_peer_packets),
                xdp_to_client_packets = k(|k| k.to_client_packets), "allocation closed")
                }
                CloseReason::RelayUnavailable => {
                    tracing::warn!(%id, %user, %client, reason = why,
                to_peer_packets = c.to_peer_packets, to_client_packets = c.to_client_packets,
                "allocation closed")
                }
            }
        }
        Event::AuthFailed {
            user,
            client,
            method,
            reason,
        } => {
            // Repeats from the same source within the window are counted, then summed up.
            let source = Source::of(client.client.ip());
            if w.auth.admit(source, now, (user.clone(), reason)) {
                let user = user.as_deref().unwrap_or("-");
                tracing::warn!(user, %client, %method, %reason,
                "authentication failed (401/438): check the client's username, password or shared secret, and the realm");
            }
        }
        Event::PeerDenied {
            user,
            client,
            peer,
            reason,
        } => {
            let source = Source::of(client.client.ip());
            if w.peers.admit((source, reason), now, (user.clone(), peer)) {
                tracing::warn!(%user, %client, %peer, rule = %reason,
                "peer refused (403): add it to [peers] allow if it is a legitimate internal peer");
            }
        }
        Event::RequestRejected {
            client,
            method,
            code,
        } => {
            let source = Source::of(client.client.ip());
            if w.rejected.admit(source, now, (method, code)) {
                tracing::info!(%client, %method, code, "request rejected");
            }
        }
        Event::CapacityReached {
            user,
            client,
            limit,
        } => {
            // A full relay refuses every new call: one line per window, then a count.
            let key = match limit {
                CapacityLimit::Relay { .. } => CapacityKey::Relay,
                CapacityLimit::User { .. } | CapacityLimit::RestUser { .. } => {
                    CapacityKey::User(user.clone())
                }
                CapacityLimit::Source { source, .. } => CapacityKey::Source(source),
            };
            if w.capacity.admit(key, now, (limit, user.clone())) {
                capacity_first(&user, &client, limit);
            }
        }
        Event::Redirected { client, alternate } => {
            tracing::info!(%client, %alternate, "allocation redirected to alternate server (300)");
        }
        Event::PeerConnectionBound {
            id,
            user,
            client,
            data,
            peer,
            conn,
            direction,
        } => {
            tracing::info!(%id, %user, %client, %data, %peer, %conn, ?direction, "TCP peer connection spliced");
        }
        Event::PeerConnectionClosed {
            id,
            user,
            client,
            peer,
            conn,
            reason,
        } => {
            use relay_proto::server::ConnectionEnd as End;
            match reason {
                End::ConnectFailed(_) | End::ConnectTimeout => {
                    tracing::info!(%id, %user, %client, %peer, %conn, %reason,
                "TCP connect to peer failed (447): is the peer listening and reachable from the relay address?")
                }
                End::BindTimeout => tracing::info!(%id, %user, %client, %peer, %conn, %reason,
                "TCP peer connection closed: the client sent no ConnectionBind within 30 s"),
                _ => {
                    tracing::debug!(%id, %user, %client, %peer, %conn, %reason, "TCP peer connection closed")
                }
            }
        }
    }
}

/// Whose capacity limit a refusal hit: the relay's, one user's quota, or one source's.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum CapacityKey {
    Relay,
    User(Arc<str>),
    Source(std::net::IpAddr),
}

/// A source as the operator reads it: the IPv4 address, or the IPv6 /64.
fn source_label(source: std::net::IpAddr) -> String {
    match source {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("{v6}/64"),
    }
}

fn capacity_first(user: &str, client: &relay_proto::server::FiveTuple, limit: CapacityLimit) {
    match limit {
        CapacityLimit::Relay { max_allocations } => {
            tracing::warn!(%user, %client, max_allocations,
            "relay full: max_allocations {max_allocations} reached; new allocations get 508 \
             (or 300 to an alternate): raise max_allocations or add relays")
        }
        CapacityLimit::User {
            max_allocations_per_user,
        } => tracing::warn!(%user, %client, max_allocations_per_user,
            "user {user} reached max_allocations_per_user {max_allocations_per_user}; \
             their new allocations get 486: leaked allocations on the client, or raise the quota"),
        CapacityLimit::RestUser {
            max_allocations_per_rest_user,
        } => tracing::warn!(%user, %client, max_allocations_per_rest_user,
            "TURN REST user {user} reached max_allocations_per_rest_user \
             {max_allocations_per_rest_user}; their new allocations get 486: a client \
             leaking allocations or sharing one credential, or raise the quota"),
        CapacityLimit::Source {
            source,
            max_allocations_per_source,
        } => {
            let source = source_label(source);
            tracing::warn!(%user, %client, %source, max_allocations_per_source,
            "source {source} reached max_allocations_per_source {max_allocations_per_source} \
             (TURN REST allocations); new ones from it get 486: one host opening many \
             credentials, or a NAT of more browsers than the quota (raise it)")
        }
    }
}

fn capacity_summary(s: Summary<CapacityKey, (CapacityLimit, Arc<str>)>) {
    let secs = WINDOW.as_secs();
    let (more, (limit, last_user)) = (s.more, s.last);
    let last_user = &*last_user;
    match limit {
        CapacityLimit::Relay { max_allocations } => tracing::warn!(
            more,
            last_user,
            max_allocations,
            "relay full: {more} more allocations refused in the last {secs} s (max_allocations {max_allocations})"
        ),
        CapacityLimit::User {
            max_allocations_per_user,
        } => tracing::warn!(
            more,
            user = last_user,
            max_allocations_per_user,
            "user {last_user}: {more} more allocations refused (486) in the last {secs} s \
             (max_allocations_per_user {max_allocations_per_user})"
        ),
        CapacityLimit::RestUser {
            max_allocations_per_rest_user,
        } => tracing::warn!(
            more,
            user = last_user,
            max_allocations_per_rest_user,
            "TURN REST user {last_user}: {more} more allocations refused (486) in the last \
             {secs} s (max_allocations_per_rest_user {max_allocations_per_rest_user})"
        ),
        CapacityLimit::Source {
            source,
            max_allocations_per_source,
        } => {
            let source = source_label(source);
            tracing::warn!(
                more,
                %source,
                last_user,
                max_allocations_per_source,
                "source {source}: {more} more allocations refused (486) in the last {secs} s \
                 (max_allocations_per_source {max_allocations_per_source})"
            )
        }
    }
}

fn auth_summary(s: Summary<Source, (Option<String>, AuthError)>) {
    let secs = WINDOW.as_secs();
    let (more, (last_user, last_reason)) = (s.more, s.last);
    let last_user = last_user.as_deref().unwrap_or("-");
    match s.key {
        Some(source) => tracing::warn!(client_ip = %source, more, last_user, %last_reason,
            "{more} more authentication failures from {source} in the last {secs} s"),
        None => tracing::warn!(more, last_user, %last_reason,
            "{more} more authentication failures from other sources in the last {secs} s \
             (too many sources to count one by one: an attack or a misconfigured fleet?)"),
    }
}

fn peers_summary(s: Summary<(Source, DenyReason), (Arc<str>, SocketAddr)>) {
    let secs = WINDOW.as_secs();
    let (more, (last_user, last_peer)) = (s.more, s.last);
    let last_user = &*last_user;
    match s.key {
        Some((source, rule)) => {
            tracing::warn!(client_ip = %source, more, last_user, %last_peer, %rule,
            "{more} more peers refused (403) for clients at {source} in the last {secs} s")
        }
        None => tracing::warn!(more, last_user, %last_peer,
            "{more} more peers refused (403) for clients at other sources in the last {secs} s \
             (too many sources to count one by one)"),
    }
}

fn rejected_summary(s: Summary<Source, (Method, u16)>) {
    let secs = WINDOW.as_secs();
    let (more, (last_method, last_code)) = (s.more, s.last);
    match s.key {
        Some(source) => tracing::info!(client_ip = %source, more, %last_method, last_code,
            "{more} more requests rejected from {source} in the last {secs} s"),
        None => tracing::info!(more, %last_method, last_code,
            "{more} more requests rejected from other sources in the last {secs} s \
             (too many sources to count one by one)"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use relay_proto::server::{FiveTuple, Transport};

    use super::*;

    /// A tracing writer into a shared buffer.
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `f` logs on this thread, as text.
    fn captured(f: impl FnOnce()) -> String {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Captured(b.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
    }

    fn client() -> FiveTuple {
        FiveTuple::new(
            "203.0.113.10:5000".parse().unwrap(),
            "198.51.100.50:3478".parse().unwrap(),
            Transport::Udp,
        )
    }

    /// What a data-path thread pays for an event is counting it and queueing it: the
    /// line is formatted and written by the log thread (here, by no subscriber at all).
    #[test]
    fn the_calling_thread_writes_no_line() {
        let written = captured(|| {
            let event = Event::RequestRejected {
                client: client(),
                method: Method::BINDING,
                code: 400,
            };
            log_with_kernel(event, None);
            flush(Duration::from_secs(5));
        });
        assert_eq!(written, "", "the data-path thread wrote the line itself");
    }

    /// Each REST user and each source over its quota has a window of its own: the first
    /// refusal of each is logged in full, repeats only counted.
    #[test]
    fn each_rest_user_and_each_source_has_a_capacity_window_of_its_own() {
        let rest = CapacityLimit::RestUser {
            max_allocations_per_rest_user: 16,
        };
        let source = |ip: &str| CapacityLimit::Source {
            source: ip.parse().unwrap(),
            max_allocations_per_source: 1000,
        };
        let now = Instant::now();
        let mut w = Writer::default();
        let written = captured(|| {
            for (user, limit) in [
                ("1:b1", rest),
                ("1:b1", rest),
                ("1:b2", rest),
                ("1:b3", source("203.0.113.7")),
                ("1:b4", source("203.0.113.7")),
                ("1:b5", source("203.0.113.8")),
            ] {
                let event = Event::CapacityReached {
                    user: user.into(),
                    client: client(),
                    limit,
                };
                write(&mut w, event, None, now);
            }
        });
        let lines = |needle: &str| written.lines().filter(|l| l.contains(needle)).count();
        assert_eq!(lines("TURN REST user 1:b1 reached"), 1, "{written}");
        assert_eq!(lines("TURN REST user 1:b2 reached"), 1, "{written}");
        assert_eq!(lines("source 203.0.113.7 reached"), 1, "{written}");
        assert_eq!(lines("source 203.0.113.8 reached"), 1, "{written}");
    }
}
