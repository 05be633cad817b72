//! How many TCP/TLS client connections the relay holds, per source and in all, and when a
//! connection that holds no allocation has been idle too long. No sockets here: the state
//! asks [`Admission::admit`] at accept and [`idle_verdict`] at each sweep.
//!
//! A source is an IPv4 address, or an IPv6 /64: one subscriber (a home, a phone, a VM)
//! gets a whole /64 and can pick any address in it, so counting full IPv6 addresses would
//! let one host hold every slot. IPv4-mapped IPv6 addresses count as the IPv4 address.
//!
//! Only authenticated requests (MESSAGE-INTEGRITY verified by the core) keep a connection
//! without an allocation open: Bindings and 401 challenges are free for anyone, so they
//! must not hold a slot beyond `tcp.idle_timeout`.
//!
//! With several `[tcp] workers` the limits are the relay's, not a worker's: every worker
//! counts in one [`SharedAdmission`].

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The unit `tcp.max_connections_per_source` counts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Source {
    V4(std::net::Ipv4Addr),
    /// The first 64 bits of the address.
    V6Net(u64),
}

impl Source {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4),
                None => Source::V6Net((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::V4(v4) => write!(f, "{v4}"),
            Source::V6Net(net) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*net) << 64)),
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Refusal {
    /// `tcp.max_connections` held already.
    Total { held: usize },
    /// Its source holds `tcp.max_connections_per_source` already.
    PerSource { source: Source, held: u32 },
}

/// Connections counted against the limits.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_source: u32,
    total: usize,
    per_source: HashMap<Source, u32>,
}

impl Admission {
    pub fn new(max_total: usize, max_per_source: u32) -> Self {
        Self {
            max_total,
            max_per_source,
            total: 0,
            per_source: HashMap::new(),
        }
    }

    /// Counts a new connection from `ip`, or says why it is refused (nothing counted).
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.total >= self.max_total {
            return Err(Refusal::Total { held: self.total });
        }
        let source = Source::of(ip);
        let count = self.per_source.entry(source).or_insert(0);
        if *count >= self.max_per_source {
            return Err(Refusal::PerSource {
                source,
                held: *count,
            });
        }
        *count += 1;
        self.total += 1;
        Ok(())
    }

    /// A connection admitted from `ip` no longer counts.
    pub fn release(&mut self, ip: IpAddr) {
        let source = Source::of(ip);
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// Connections counted now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.total
    }
}

/// One [`Admission`] for all the TCP/TLS workers: each holds a clone. A lock rather than
/// atomics: the total and the source's count must be checked and bumped together (two
/// workers admitting the last slot at once must not both get it), and it is taken once
/// per accept and once per close, never per byte, so it is not contended.
#[derive(Clone, Debug)]
pub struct SharedAdmission(Arc<Mutex<Admission>>);

impl SharedAdmission {
    pub fn new(max_total: usize, max_per_source: u32) -> Self {
        Self(Arc::new(Mutex::new(Admission::new(
            max_total,
            max_per_source,
        ))))
    }

    /// See [`Admission::admit`].
    pub fn admit(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.lock().admit(ip)
    }

    /// See [`Admission::release`].
    pub fn release(&self, ip: IpAddr) {
        self.lock().release(ip);
    }

    /// A worker that panicked while holding the lock left the counts consistent (each
    /// method changes them in one step), so the others go on with them.
    fn lock(&self) -> std::sync::MutexGuard<'_, Admission> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.lock().held()
    }
}

/// What the sweep knows of one client connection that is neither closing nor spliced.
#[derive(Clone, Copy, Debug)]
pub struct Activity {
    pub accepted: Instant,
    /// The first complete frame, of any kind.
    pub first_frame: Option<Instant>,
    /// The last request whose MESSAGE-INTEGRITY verified.
    pub last_authenticated: Option<Instant>,
    pub has_allocation: bool,
}

/// Why the sweep closes a connection, if it does: no message within `handshake`
/// (TLS handshake included), or no allocation and no authenticated request within `idle`
/// (counted from the accept when there was none).
pub fn idle_verdict(
    a: Activity,
    handshake: Duration,
    idle: Duration,
    now: Instant,
) -> Option<&'static str> {
    if a.first_frame.is_none() && now.saturating_duration_since(a.accepted) > handshake {
        return Some(
            "no TURN message within tcp.handshake_timeout (TLS handshake or first request)",
        );
    }
    let since = a.last_authenticated.unwrap_or(a.accepted);
    if !a.has_allocation && now.saturating_duration_since(since) > idle {
        return Some("idle: no allocation and no authenticated request within tcp.idle_timeout");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source_and_mapped_addresses_are_ipv4() {
        let mut a = Admission::new(100, 2);
        a.admit(ip("2001:db8:1:2::a")).unwrap();
        a.admit(ip("2001:db8:1:2:ffff::b")).unwrap();
        assert_eq!(
            a.admit(ip("2001:db8:1:2::c")),
            Err(Refusal::PerSource {
                source: Source::of(ip("2001:db8:1:2::")),
                held: 2
            }),
            "a third address of the same /64"
        );
        // The next /64 is another source.
        a.admit(ip("2001:db8:1:3::a")).unwrap();
        // IPv4 and its mapped spelling are one source.
        a.admit(ip("192.0.2.7")).unwrap();
        a.admit(ip("::ffff:192.0.2.7")).unwrap();
        assert!(a.admit(ip("192.0.2.7")).is_err());
        assert!(a.admit(ip("192.0.2.8")).is_ok());
        assert_eq!(a.held(), 6);
        assert_eq!(
            Source::of(ip("2001:db8:1:2::c")).to_string(),
            "2001:db8:1:2::/64"
        );
        // Released from another address of the /64: the slot is the /64's.
        a.release(ip("2001:db8:1:2::99"));
        a.admit(ip("2001:db8:1:2::c")).unwrap();
        assert_eq!(a.held(), 6);
    }

    #[test]
    fn the_total_is_checked_first_and_nothing_counts_when_refused() {
        let mut a = Admission::new(2, 10);
        a.admit(ip("192.0.2.1")).unwrap();
        a.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(a.admit(ip("192.0.2.3")), Err(Refusal::Total { held: 2 }));
        a.release(ip("192.0.2.1"));
        a.release(ip("192.0.2.1")); // not counted any more: no effect
        assert_eq!(a.held(), 1);
        a.admit(ip("192.0.2.3")).unwrap();
        assert_eq!(a.held(), 2);
    }

    #[test]
    fn workers_share_the_limits() {
        // Two workers, one admission: the per-source limit and the total hold across
        // them, and a slot one worker frees is free for the other.
        let w0 = SharedAdmission::new(3, 2);
        let w1 = w0.clone();
        w0.admit(ip("192.0.2.1")).unwrap();
        w1.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            w0.admit(ip("192.0.2.1")),
            Err(Refusal::PerSource {
                source: Source::of(ip("192.0.2.1")),
                held: 2
            })
        );
        assert!(w1.admit(ip("192.0.2.1")).is_err());
        w1.admit(ip("2001:db8::1")).unwrap();
        assert_eq!(w0.admit(ip("192.0.2.9")), Err(Refusal::Total { held: 3 }));
        w0.release(ip("192.0.2.1"));
        w1.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(w0.held(), 3);
    }

    #[test]
    fn workers_admitting_at_once_never_exceed_the_limits() {
        // Eight workers race for the relay's 60 slots, 120 attempts from one source (50
        // allowed) and 40 from another: whatever the interleaving, exactly 60 are granted
        // and the busy source never holds more than its 50.
        let shared = SharedAdmission::new(60, 50);
        let granted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|w| {
                    let a = shared.clone();
                    s.spawn(move || {
                        let mut n = 0;
                        for i in 0..20 {
                            let from = if i % 2 == 0 {
                                "198.51.100.7"
                            } else {
                                "203.0.113.1"
                            };
                            let from = if w % 2 == 0 { "198.51.100.7" } else { from };
                            n += usize::from(a.admit(ip(from)).is_ok());
                        }
                        n
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, 60);
        assert_eq!(shared.held(), 60);
        let lock = shared.lock();
        assert!(lock.per_source[&Source::of(ip("198.51.100.7"))] <= 50);
    }

    #[test]
    fn only_authenticated_requests_keep_a_connection_without_allocation() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let (handshake, idle) = (s(10), s(30));
        let v = |a: Activity, at: u64| idle_verdict(a, handshake, idle, t0 + s(at));
        let mut a = Activity {
            accepted: t0,
            first_frame: None,
            last_authenticated: None,
            has_allocation: false,
        };
        assert_eq!(v(a, 10), None);
        assert!(v(a, 11).unwrap().contains("handshake_timeout"));
        // Unauthenticated Bindings every second: the first one ends the handshake, none
        // of them moves the idle clock.
        a.first_frame = Some(t0 + s(1));
        assert_eq!(v(a, 30), None);
        assert!(v(a, 31).unwrap().contains("idle_timeout"));
        // An authenticated request restarts it.
        a.last_authenticated = Some(t0 + s(25));
        assert_eq!(v(a, 55), None);
        assert!(v(a, 56).is_some());
        // With an allocation the connection stays (the allocation's lifetime rules).
        a.has_allocation = true;
        assert_eq!(v(a, 3600), None);
    }
}
