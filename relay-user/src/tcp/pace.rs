//! The TCP/TLS io_uring loop's wait policy: how long a wake-up waits for more completions
//! (IORING_FEAT_MIN_TIMEOUT) once the first is there.
//!
//! A wake-up costs the loop 10-20 µs whatever it then handles (two context switches, the
//! timer, running the deferred task work), so under load CPU per packet falls with the
//! completions one wake-up gathers, and RTT rises with the wait. At low rates waiting
//! gathers little and still costs its timer: answering at once is both faster and cheaper.
//! So the wait follows the completion rate the loop sees: long enough to gather [`BATCH`]
//! completions, at most [`CAP_US`], and none when the longest wait would gather fewer than
//! [`MIN_BATCH`] (below about 10k echoes/s at 4 completions per echo). At 1000 TCP/TLS
//! allocations and 20k echoes/s (about 80k completions/s) the wait is [`CAP_US`]; at 80k
//! echoes/s about 100 µs, as the fixed wait was.
//!
//! Measured side by side against the fixed 100 µs (BENCHMARKS.md, "TCP/TLS wait policy and
//! the 80k/s rows"): at 20k echoes/s 200 µs took the relay's CPU per packet from 9.0 µs to
//! 7.1-7.6 (TCP) and 9.1 to 8.0 (TLS) on average, for about 300 µs more RTT p50 (300-400 µs
//! saved more, TCP 6.0-6.5 µs, for 600-900 µs more); at 5k and 10k echoes/s not waiting
//! took RTT p50 from 240-320 µs to 110-300 and CPU per packet from 13-20 µs to 8-13.

use std::time::Instant;

/// The most completions one wake-up waits for (it returns at once when they are there).
pub const WANT: usize = 64;
/// Completions a wake-up aims to gather.
const BATCH: f64 = 32.0;
/// The longest a wake-up waits for them, µs.
pub const CAP_US: u32 = 200;
/// Below this many completions expected within [`CAP_US`], no waiting.
const MIN_BATCH: f64 = 8.0;
/// The rate is measured over windows of at least this long (µs), not per turn: one echo's
/// completions come in bursts (a send completes microseconds after the receive that caused
/// it), and a per-turn rate would take such a burst for a busy loop.
const WINDOW_US: f64 = 2000.0;
/// Weight of the last window in the smoothed rate.
const GAIN: f64 = 0.5;

#[derive(Debug, Default)]
pub struct Pace {
    /// When the current window began, and the completions handled since.
    window: Option<(Instant, usize)>,
    /// Completions per µs, smoothed over windows.
    rate: f64,
}

impl Pace {
    /// The next wait: completions wanted and the minimum wait in µs (None: return on the
    /// first). `done` is how many completions the turn since the last wait handled.
    pub fn next(&mut self, done: usize, now: Instant) -> (usize, Option<u32>) {
        let (start, count) = self.window.get_or_insert((now, 0));
        *count += done;
        let dt = now.saturating_duration_since(*start).as_secs_f64() * 1e6;
        if dt >= WINDOW_US {
            self.rate += GAIN * (*count as f64 / dt - self.rate);
            self.window = Some((now, 0));
        }
        if self.rate * f64::from(CAP_US) < MIN_BATCH {
            return (1, None);
        }
        let us = (BATCH / self.rate).clamp(1.0, f64::from(CAP_US));
        (WANT, Some(us as u32))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Turns of `every` each handling `done` completions, from `t`; the last wait.
    fn run(p: &mut Pace, t: &mut Instant, done: usize, every: Duration) -> (usize, Option<u32>) {
        let mut out = p.next(0, *t);
        for _ in 0..300 {
            *t += every;
            out = p.next(done, *t);
        }
        out
    }

    #[test]
    fn a_quiet_loop_does_not_wait() {
        let mut p = Pace::default();
        let mut t = Instant::now();
        assert_eq!(p.next(0, t), (1, None), "nothing seen yet");
        // 1 completion per ms: 0.2 expected within the cap.
        assert_eq!(run(&mut p, &mut t, 1, Duration::from_millis(1)), (1, None));
    }

    #[test]
    fn moderate_load_waits_the_cap_and_heavy_load_less() {
        let mut p = Pace::default();
        let mut t = Instant::now();
        // 80k completions/s (20k echoes/s): 32 would take 400 µs, capped.
        assert_eq!(
            run(&mut p, &mut t, 16, Duration::from_micros(200)),
            (WANT, Some(CAP_US))
        );
        // 320k/s (80k echoes/s): 32 take about 100 µs.
        let (want, us) = run(&mut p, &mut t, 32, Duration::from_micros(100));
        assert_eq!(want, WANT);
        assert!((95..=105).contains(&us.unwrap()), "{us:?}");
    }

    #[test]
    fn going_quiet_stops_the_waiting() {
        let mut p = Pace::default();
        let mut t = Instant::now();
        run(&mut p, &mut t, 16, Duration::from_micros(200));
        // Idle turns (the loop's timeout, nothing done) bring the rate down.
        assert_eq!(
            run(&mut p, &mut t, 0, Duration::from_millis(100)),
            (1, None)
        );
    }
}
