//! Per-second progress on stderr: a bar redrawn in place on a terminal, one plain line
//! per second otherwise (logs, CI, a pipe).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use super::stats::Second;

const BAR_WIDTH: usize = 24;

pub struct Progress {
    enabled: bool,
    tty: bool,
    drawn: bool,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            tty: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    pub fn setup(&mut self, elapsed: Duration, ready: u64, failed: u64, total: usize) {
        let done = (ready + failed) as f64 / total.max(1) as f64;
        let text = format!(
            "setup {:>5.1}s  ready {ready}/{total}  failed {failed}  ({:.0}/s)",
            elapsed.as_secs_f64(),
            ready as f64 / elapsed.as_secs_f64().max(1e-3)
        );
        self.show(done, &text);
    }

    pub fn traffic(&mut self, elapsed: Duration, duration: Duration, s: &Second) {
        let done = elapsed.as_secs_f64() / duration.as_secs_f64().max(1e-3);
        let loss = if s.sent > 0 {
            (s.sent.saturating_sub(s.received)) as f64 / s.sent as f64 * 100.0
        } else {
            0.0
        };
        let text = format!(
            "t {:>3}s  sent {}/s  received {}/s  loss {loss:.2}%  rtt p50 {:.0}us p99 {:.0}us",
            s.t, s.sent, s.received, s.rtt_us.p50, s.rtt_us.p99
        );
        self.show(done, &text);
    }

    fn show(&mut self, done: f64, text: &str) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let filled = ((done.clamp(0.0, 1.0)) * BAR_WIDTH as f64).round() as usize;
            let _ = write!(
                err,
                "\r\x1b[2K[{}{}] {text}",
                "#".repeat(filled),
                "-".repeat(BAR_WIDTH - filled)
            );
            self.drawn = true;
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
    }

    /// Ends the bar's line so what follows starts on a fresh one.
    pub fn finish(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}
