//! One warning per window for a failure that repeats: the first is logged in full, the rest
//! are counted and summed up in one line once the window has passed (a full XDP map fails
//! every write, a connection flood hits the admin cap with every accept).

use std::time::{Duration, Instant};

/// A window of [`LogWindow::WINDOW`]; the caller logs what [`admit`](Self::admit) and
/// [`expire`](Self::expire) tell it to.
#[derive(Default, Debug)]
pub struct LogWindow {
    since: Option<Instant>,
    more: u64,
}

impl LogWindow {
    pub const WINDOW: Duration = Duration::from_secs(10);

    /// Whether an occurrence at `now` is to be logged in full (the first of its window).
    pub fn admit(&mut self, now: Instant) -> bool {
        if self.since.is_some() {
            self.more += 1;
            return false;
        }
        self.since = Some(now);
        true
    }

    /// Ends a window older than [`Self::WINDOW`]; returns how many occurrences it left
    /// unlogged, if any.
    pub fn expire(&mut self, now: Instant) -> Option<u64> {
        let since = self.since?;
        if now.saturating_duration_since(since) < Self::WINDOW {
            return None;
        }
        self.since = None;
        Some(std::mem::take(&mut self.more)).filter(|&n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_then_a_count() {
        const W: Duration = LogWindow::WINDOW;
        let t0 = Instant::now();
        let mut f = LogWindow::default();
        assert!(f.admit(t0));
        for i in 1..=500 {
            assert!(!f.admit(t0 + Duration::from_millis(i)));
        }
        assert_eq!(f.expire(t0 + W - Duration::from_millis(1)), None);
        assert_eq!(f.expire(t0 + W), Some(500));
        // A new window logs in full again; one that ends quiet sums up nothing.
        assert!(f.admit(t0 + W));
        assert_eq!(f.expire(t0 + 2 * W), None);
        assert!(f.admit(t0 + 2 * W));
    }
}
