//! Rate-limited log lines: the first occurrence per key (a source address, a user) in a
//! window is logged in full, repeats are counted, and one summary line per key says how
//! many more there were when the window ends. Memory is bounded: beyond `max_keys` keys,
//! repeats from new keys share one overflow counter, so a flood from spoofed sources
//! cannot grow the table. Pure: time comes in as an argument.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    hash::Hash,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

/// How long a window lasts: the first line of a key is followed by at most one summary
/// line this much later.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Counts for one key (or the overflow) in its window.
struct Count<D> {
    since: Instant,
    more: u64,
    /// The details of the latest repeat, for the summary line.
    last: Option<D>,
}

/// A window that ended with repeats left unlogged.
#[derive(Debug, PartialEq)]
pub struct Summary<K, D> {
    /// `None`: the overflow counter (keys beyond the bound).
    pub key: Option<K>,
    pub more: u64,
    /// The latest repeat's details.
    pub last: D,
}

pub struct Limiter<K, D> {
    max_keys: usize,
    keys: HashMap<K, Count<D>>,
    /// Window starts in order, so expiry only looks at the front.
    order: VecDeque<(Instant, K)>,
    overflow: Option<Count<D>>,
}

impl<K: Hash + Eq + Clone, D> Limiter<K, D> {
    /// At most `max_keys` keys counted one by one.
    pub fn new(max_keys: usize) -> Self {
        Self {
            max_keys,
            keys: HashMap::new(),
            order: VecDeque::new(),
            overflow: None,
        }
    }

    /// Whether this occurrence is to be logged in full (the first of `key` in its
    /// window); otherwise it is counted, with `detail` as the latest. Call
    /// [`expire`](Self::expire) with the same `now` first, so that a repeat after its
    /// window ended starts a new one.
    pub fn admit(&mut self, key: K, now: Instant, detail: D) -> bool {
        let fresh = || Count {
            since: now,
            more: 0,
            last: None,
        };
        if !self.keys.contains_key(&key) && self.keys.len() < self.max_keys {
            self.keys.insert(key.clone(), fresh());
            self.order.push_back((now, key));
            return true;
        }
        let counted = match self.keys.get_mut(&key) {
            Some(c) => c,
            None => self.overflow.get_or_insert_with(fresh),
        };
        counted.more += 1;
        counted.last = Some(detail);
        false
    }

    /// Ends the windows older than [`WINDOW`]; those with repeats are handed to
    /// `ended`.
    pub fn expire(&mut self, now: Instant, mut ended: impl FnMut(Summary<K, D>)) {
        let over = |since: Instant| now.saturating_duration_since(since) >= WINDOW;
        while let Some((since, _)) = self.order.front() {
            if !over(*since) {
                break;
            }
            if let Some((_, key)) = self.order.pop_front()
                && let Some(c) = self.keys.remove(&key)
                && let Some(s) = summary(Some(key), c)
            {
                ended(s);
            }
        }
        if self.overflow.as_ref().is_some_and(|c| over(c.since))
            && let Some(c) = self.overflow.take()
            && let Some(s) = summary(None, c)
        {
            ended(s);
        }
    }

    /// Keys counted one by one, plus the overflow counter if it counts anything.
    pub fn tracked(&self) -> usize {
        self.keys.len() + usize::from(self.overflow.is_some())
    }
}

fn summary<K, D>(key: Option<K>, c: Count<D>) -> Option<Summary<K, D>> {
    c.last.map(|last| Summary {
        key,
        more: c.more,
        last,
    })
}

/// The source a flood is counted against: an IPv4 address, or an IPv6 /64 (one host
/// holds a whole /64, and could otherwise spread its flood over 2^64 addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(v4.into()),
                None => Self(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX)).into()),
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_is_logged_repeats_are_summed_up_when_the_window_ends() {
        let mut l = Limiter::new(16);
        let (a, b) = (ip("203.0.113.10"), ip("203.0.113.11"));
        let t0 = Instant::now();
        let mut ended = Vec::new();
        assert!(l.admit(a, t0, 0));
        for i in 1..=30 {
            assert!(!l.admit(a, t0 + Duration::from_millis(i), i));
        }
        // Another key has its own window.
        assert!(l.admit(b, t0 + Duration::from_secs(1), 100));
        l.expire(t0 + WINDOW - Duration::from_millis(1), |s| ended.push(s));
        assert!(ended.is_empty());
        l.expire(t0 + WINDOW, |s| ended.push(s));
        assert_eq!(
            ended,
            vec![Summary {
                key: Some(a),
                more: 30,
                last: 30,
            }]
        );
        // A new window starts with a logged line again; b ends without a summary.
        ended.clear();
        l.expire(t0 + WINDOW, |s| ended.push(s));
        assert!(l.admit(a, t0 + WINDOW, 0));
        l.expire(t0 + Duration::from_secs(11), |s| ended.push(s));
        assert!(ended.is_empty(), "{ended:?}");
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn keys_beyond_the_bound_share_one_counter() {
        let max = 64;
        let mut l = Limiter::new(max);
        let t0 = Instant::now();
        let mut ended = Vec::new();
        for i in 0..max as u32 {
            assert!(l.admit(i, t0, ()));
        }
        // A flood from ever new keys: memory stays at the bound.
        for i in 0..10_000u32 {
            assert!(!l.admit(1_000_000 + i, t0, ()));
        }
        assert_eq!(l.tracked(), max + 1);
        l.expire(t0 + WINDOW, |s| ended.push(s));
        assert_eq!(
            ended,
            vec![Summary {
                key: None,
                more: 10_000,
                last: (),
            }]
        );
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let a = Source::of(ip("2001:db8:1:2::1"));
        assert_eq!(a, Source::of(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(a, Source::of(ip("2001:db8:1:3::1")));
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let v4 = Source::of(ip("203.0.113.7"));
        assert_eq!(v4, Source::of(ip("::ffff:203.0.113.7")));
        assert_eq!(v4.to_string(), "203.0.113.7");
    }
}
