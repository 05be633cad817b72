//! The core's events as operator log lines: who, from where, what happened, and for
//! failures what to check.

use relay_common::AllocCounters;
use relay_proto::server::{CloseReason, Counters, Event};

pub fn log(event: Event) {
    log_with_kernel(event, None)
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
    crate::metrics::observe(&event);
    if let Some(k) = kernel {
        crate::metrics::kernel_allocation_retired(k);
    }
    let k = |f: fn(&AllocCounters) -> u64| kernel.as_ref().map(f);
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
            };
            // A TCP/TLS client hanging up is how calls normally end; a port that could not
            // be bound needs the operator.
            match reason {
                CloseReason::ClientClosed => tracing::info!(%id, %user, %client, reason = why,
                    to_peer_packets = c.to_peer_packets, to_client_packets = c.to_client_packets,
                    xdp_to_peer_packets = k(|k| k.to_peer_packets),
                    xdp_to_client_packets = k(|k| k.to_client_packets), "allocation closed"),
                CloseReason::RelayUnavailable => tracing::warn!(%id, %user, %client, reason = why,
                    to_peer_packets = c.to_peer_packets, to_client_packets = c.to_client_packets,
                    "allocation closed"),
            }
        }
        Event::AuthFailed {
            user,
            client,
            method,
            reason,
        } => {
            // Repeats from the same source within the window are counted, then summed up.
            if auth_flood::first_in_window(client.client.ip(), &user, reason) {
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
        Event::CapacityReached {
            user,
            client,
            limit,
        } => {
            // A full relay refuses every new call: one line per window, then a count.
            if capacity::first_in_window(&user, limit) {
                capacity::log_first(&user, &client, limit);
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

/// Logs the summaries of rate-limited warnings (auth failures, capacity refusals) whose
/// windows have ended. Data-path loops call it once per wake-up; it costs two atomic loads
/// while nothing is being counted.
pub fn flush_rate_limited() {
    let now = std::time::Instant::now();
    auth_flood::flush(now);
    capacity::flush(now);
}

/// Allocations refused for capacity: the first refusal of a [`WINDOW`](capacity::WINDOW)
/// per limit (the relay's, one user's, or one source's) is logged at WARN, the rest are
/// counted and summed up when the window ends. A full relay under load refuses hundreds a
/// second.
mod capacity {
    use std::{
        collections::{HashMap, VecDeque},
        net::IpAddr,
        sync::{
            Arc, LazyLock, Mutex,
            atomic::{AtomicUsize, Ordering},
        },
        time::{Duration, Instant},
    };

    use relay_proto::server::{CapacityLimit, FiveTuple};

    pub const WINDOW: Duration = Duration::from_secs(10);
    /// Users and sources counted one by one; beyond, their refusals go uncounted until a
    /// window ends (the relay-wide limit is always counted).
    const MAX_USERS: usize = 1024;

    /// Whose limit: the relay's, one user's quota, or one source's.
    #[derive(Clone, PartialEq, Eq, Hash)]
    enum Key {
        Relay,
        User(Arc<str>),
        Source(IpAddr),
    }

    struct Window {
        more: u64,
        limit: CapacityLimit,
        last_user: Arc<str>,
    }

    /// A window that ended with refusals left unlogged.
    #[derive(Debug, PartialEq)]
    pub struct Summary {
        pub more: u64,
        pub limit: CapacityLimit,
        pub last_user: Arc<str>,
    }

    #[derive(Default)]
    pub struct Limiter {
        windows: HashMap<Key, Window>,
        order: VecDeque<(Instant, Key)>,
    }

    fn key(user: &Arc<str>, limit: CapacityLimit) -> Key {
        match limit {
            CapacityLimit::Relay { .. } => Key::Relay,
            CapacityLimit::User { .. } | CapacityLimit::RestUser { .. } => Key::User(user.clone()),
            CapacityLimit::Source { source, .. } => Key::Source(source),
        }
    }

    /// A source as the operator reads it: the IPv4 address, or the IPv6 /64.
    fn source_label(source: IpAddr) -> String {
        match source {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("{v6}/64"),
        }
    }

    impl Limiter {
        /// Whether this refusal is to be logged in full; ended windows go to `ended` first.
        pub fn admit(
            &mut self,
            now: Instant,
            user: &Arc<str>,
            limit: CapacityLimit,
            ended: &mut Vec<Summary>,
        ) -> bool {
            self.expire(now, ended);
            let k = key(user, limit);
            if let Some(w) = self.windows.get_mut(&k) {
                w.more += 1;
                w.limit = limit;
                w.last_user = user.clone();
                return false;
            }
            if k != Key::Relay && self.windows.len() > MAX_USERS {
                return false;
            }
            self.windows.insert(
                k.clone(),
                Window {
                    more: 0,
                    limit,
                    last_user: user.clone(),
                },
            );
            self.order.push_back((now, k));
            true
        }

        pub fn expire(&mut self, now: Instant, ended: &mut Vec<Summary>) {
            while let Some((since, _)) = self.order.front() {
                if now.saturating_duration_since(*since) < WINDOW {
                    break;
                }
                if let Some((_, k)) = self.order.pop_front()
                    && let Some(w) = self.windows.remove(&k)
                    && w.more > 0
                {
                    ended.push(Summary {
                        more: w.more,
                        limit: w.limit,
                        last_user: w.last_user,
                    });
                }
            }
        }
    }

    static LIMITER: LazyLock<Mutex<Limiter>> = LazyLock::new(Mutex::default);
    static TRACKED: AtomicUsize = AtomicUsize::new(0);

    pub fn first_in_window(user: &Arc<str>, limit: CapacityLimit) -> bool {
        let mut ended = Vec::new();
        let first = {
            let mut l = LIMITER.lock().unwrap_or_else(|p| p.into_inner());
            let first = l.admit(Instant::now(), user, limit, &mut ended);
            TRACKED.store(l.windows.len(), Ordering::Relaxed);
            first
        };
        ended.into_iter().for_each(log_summary);
        first
    }

    pub fn flush(now: Instant) {
        if TRACKED.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut ended = Vec::new();
        {
            let mut l = LIMITER.lock().unwrap_or_else(|p| p.into_inner());
            l.expire(now, &mut ended);
            TRACKED.store(l.windows.len(), Ordering::Relaxed);
        }
        ended.into_iter().for_each(log_summary);
    }

    pub fn log_first(user: &str, client: &FiveTuple, limit: CapacityLimit) {
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

    fn log_summary(s: Summary) {
        let secs = WINDOW.as_secs();
        let (more, last_user) = (s.more, &*s.last_user);
        match s.limit {
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

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn first_refusal_per_limit_is_logged_repeats_are_summed_up() {
            let mut l = Limiter::default();
            let t0 = Instant::now();
            let mut ended = Vec::new();
            let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
            let full = CapacityLimit::Relay {
                max_allocations: 1800,
            };
            let quota = CapacityLimit::User {
                max_allocations_per_user: 3,
            };
            assert!(l.admit(t0, &alice, full, &mut ended));
            // The relay-wide limit is one window whoever asks.
            assert!(!l.admit(t0, &bob, full, &mut ended));
            assert!(!l.admit(t0 + Duration::from_secs(1), &alice, full, &mut ended));
            // A user's quota is a window of its own, per user.
            assert!(l.admit(t0, &alice, quota, &mut ended));
            assert!(l.admit(t0, &bob, quota, &mut ended));
            assert!(!l.admit(t0, &bob, quota, &mut ended));
            l.expire(t0 + WINDOW - Duration::from_millis(1), &mut ended);
            assert!(ended.is_empty());
            l.expire(t0 + WINDOW, &mut ended);
            ended.sort_by_key(|s| s.more);
            assert_eq!(
                ended,
                vec![
                    Summary {
                        more: 1,
                        limit: quota,
                        last_user: bob.clone(),
                    },
                    Summary {
                        more: 2,
                        limit: full,
                        last_user: alice.clone(),
                    },
                ]
            );
            // A new window logs in full again.
            assert!(l.admit(t0 + WINDOW, &bob, full, &mut ended));
        }

        #[test]
        fn each_source_and_each_rest_user_has_a_window_of_its_own() {
            let mut l = Limiter::default();
            let t0 = Instant::now();
            let mut ended = Vec::new();
            let (b1, b2): (Arc<str>, Arc<str>) = ("1:b1".into(), "1:b2".into());
            let source = |ip: &str| CapacityLimit::Source {
                source: ip.parse().unwrap(),
                max_allocations_per_source: 1000,
            };
            let rest = CapacityLimit::RestUser {
                max_allocations_per_rest_user: 16,
            };
            assert!(l.admit(t0, &b1, source("203.0.113.7"), &mut ended));
            // Another browser behind the same NAT: the same source, counted.
            assert!(!l.admit(t0, &b2, source("203.0.113.7"), &mut ended));
            assert!(l.admit(t0, &b2, source("203.0.113.8"), &mut ended));
            assert!(l.admit(t0, &b1, rest, &mut ended));
            assert!(!l.admit(t0, &b1, rest, &mut ended));
            l.expire(t0 + WINDOW, &mut ended);
            assert_eq!(ended.len(), 2, "{ended:?}");
            assert_eq!(
                source_label("2001:db8:1::".parse().unwrap()),
                "2001:db8:1::/64"
            );
        }
    }
}

/// Repeated auth failures per source IP: the first of a [`WINDOW`](auth_flood::WINDOW)
/// is logged in full, the rest are counted and summed up in one line when the window ends
/// (coturn's uclient retries a wrong password about 30 times in 25 ms; a scanner far more).
/// One table for all shards: a client's retries from new ports may land on any of them.
mod auth_flood {
    use std::{
        collections::{HashMap, VecDeque},
        net::IpAddr,
        sync::{
            LazyLock, Mutex,
            atomic::{AtomicUsize, Ordering},
        },
        time::{Duration, Instant},
    };

    use relay_proto::auth::AuthError;

    pub const WINDOW: Duration = Duration::from_secs(10);
    /// Sources counted one by one; beyond, failures are counted together (memory bound
    /// under a spoofed-source flood).
    const MAX_SOURCES: usize = 4096;

    struct Source {
        since: Instant,
        more: u64,
        last_user: Option<String>,
        last_reason: Option<AuthError>,
    }

    /// A window that ended with failures left unlogged; `ip` None: the overflow bucket.
    #[derive(Debug, PartialEq)]
    pub struct Summary {
        pub ip: Option<IpAddr>,
        pub more: u64,
        pub last_user: Option<String>,
        pub last_reason: Option<AuthError>,
    }

    #[derive(Default)]
    pub struct Limiter {
        sources: HashMap<IpAddr, Source>,
        /// Window starts in order, so expiry only looks at the front.
        order: VecDeque<(Instant, IpAddr)>,
        overflow: Option<Source>,
    }

    impl Limiter {
        /// Whether this failure is to be logged in full (the first from `ip` in its
        /// window); otherwise it is counted. Ended windows go to `ended` first.
        pub fn admit(
            &mut self,
            ip: IpAddr,
            now: Instant,
            user: &Option<String>,
            reason: AuthError,
            ended: &mut Vec<Summary>,
        ) -> bool {
            self.expire(now, ended);
            let fresh = || Source {
                since: now,
                more: 0,
                last_user: None,
                last_reason: None,
            };
            if !self.sources.contains_key(&ip) && self.sources.len() < MAX_SOURCES {
                self.sources.insert(ip, fresh());
                self.order.push_back((now, ip));
                return true;
            }
            let counted = match self.sources.get_mut(&ip) {
                Some(s) => s,
                None => self.overflow.get_or_insert_with(fresh),
            };
            counted.more += 1;
            counted.last_user.clone_from(user);
            counted.last_reason = Some(reason);
            false
        }

        /// Ends the windows older than [`WINDOW`]; those with unlogged failures go to `ended`.
        pub fn expire(&mut self, now: Instant, ended: &mut Vec<Summary>) {
            let over = |since: Instant| now.saturating_duration_since(since) >= WINDOW;
            while let Some(&(since, ip)) = self.order.front() {
                if !over(since) {
                    break;
                }
                self.order.pop_front();
                if let Some(s) = self.sources.remove(&ip)
                    && s.more > 0
                {
                    ended.push(summary(Some(ip), s));
                }
            }
            if self.overflow.as_ref().is_some_and(|s| over(s.since))
                && let Some(s) = self.overflow.take()
            {
                ended.push(summary(None, s));
            }
        }

        fn tracked(&self) -> usize {
            self.sources.len() + usize::from(self.overflow.is_some())
        }
    }

    fn summary(ip: Option<IpAddr>, s: Source) -> Summary {
        Summary {
            ip,
            more: s.more,
            last_user: s.last_user,
            last_reason: s.last_reason,
        }
    }

    static LIMITER: LazyLock<Mutex<Limiter>> = LazyLock::new(Mutex::default);
    /// Sources being counted, readable without the lock.
    static TRACKED: AtomicUsize = AtomicUsize::new(0);

    pub fn first_in_window(ip: IpAddr, user: &Option<String>, reason: AuthError) -> bool {
        let mut ended = Vec::new();
        let first = {
            let mut l = LIMITER.lock().unwrap_or_else(|p| p.into_inner());
            let first = l.admit(ip, Instant::now(), user, reason, &mut ended);
            TRACKED.store(l.tracked(), Ordering::Relaxed);
            first
        };
        ended.into_iter().for_each(log);
        first
    }

    pub fn flush(now: Instant) {
        if TRACKED.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut ended = Vec::new();
        {
            let mut l = LIMITER.lock().unwrap_or_else(|p| p.into_inner());
            l.expire(now, &mut ended);
            TRACKED.store(l.tracked(), Ordering::Relaxed);
        }
        ended.into_iter().for_each(log);
    }

    fn log(s: Summary) {
        let secs = WINDOW.as_secs();
        let last_user = s.last_user.as_deref().unwrap_or("-");
        let last_reason = s.last_reason.map(|r| r.to_string()).unwrap_or_default();
        match s.ip {
            Some(ip) => tracing::warn!(client_ip = %ip, more = s.more, last_user, %last_reason,
                "{} more authentication failures from {ip} in the last {secs} s", s.more),
            None => tracing::warn!(more = s.more, last_user, %last_reason,
                "{} more authentication failures from other sources in the last {secs} s \
                 (too many sources to count one by one: an attack or a misconfigured fleet?)", s.more),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn first_is_logged_repeats_are_summed_up_when_the_window_ends() {
            let mut l = Limiter::default();
            let (a, b): (IpAddr, IpAddr) = (
                "203.0.113.10".parse().unwrap(),
                "203.0.113.11".parse().unwrap(),
            );
            let t0 = Instant::now();
            let mut ended = Vec::new();
            let alice = Some("alice".to_owned());
            assert!(l.admit(a, t0, &alice, AuthError::BadIntegrity, &mut ended));
            for i in 1..=30 {
                let t = t0 + Duration::from_millis(i);
                assert!(!l.admit(a, t, &alice, AuthError::BadIntegrity, &mut ended));
            }
            // Another source has its own window.
            assert!(l.admit(
                b,
                t0 + Duration::from_secs(1),
                &None,
                AuthError::UnknownUser,
                &mut ended
            ));
            l.expire(t0 + WINDOW - Duration::from_millis(1), &mut ended);
            assert!(ended.is_empty());
            l.expire(t0 + WINDOW, &mut ended);
            assert_eq!(
                ended,
                vec![Summary {
                    ip: Some(a),
                    more: 30,
                    last_user: alice.clone(),
                    last_reason: Some(AuthError::BadIntegrity),
                }]
            );
            // A new window starts with a logged line again; b ends without a summary.
            ended.clear();
            assert!(l.admit(a, t0 + WINDOW, &alice, AuthError::StaleNonce, &mut ended));
            l.expire(t0 + Duration::from_secs(11), &mut ended);
            assert!(ended.is_empty(), "{ended:?}");
            assert_eq!(l.tracked(), 1);
        }

        #[test]
        fn sources_beyond_the_bound_share_one_counter() {
            let mut l = Limiter::default();
            let t0 = Instant::now();
            let mut ended = Vec::new();
            for i in 0..MAX_SOURCES as u32 {
                let ip = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
                assert!(l.admit(ip, t0, &None, AuthError::UnknownUser, &mut ended));
            }
            let extra: IpAddr = "198.51.100.7".parse().unwrap();
            assert!(!l.admit(extra, t0, &None, AuthError::UnknownUser, &mut ended));
            assert!(!l.admit(extra, t0, &None, AuthError::UnknownUser, &mut ended));
            l.expire(t0 + WINDOW, &mut ended);
            assert_eq!(ended.len(), 1, "{ended:?}");
            assert_eq!(ended[0].ip, None);
            assert_eq!(ended[0].more, 2);
            assert_eq!(l.tracked(), 0);
        }
    }
}
