//! How long a wake-up of the UDP io_uring loop may wait to gather completions, from how
//! many the last one found. A fixed batch (64 completions or 100 µs) costs every datagram
//! up to 100 µs at moderate rates, where a wake-up finds a few; no batching at all costs
//! a wake-up per datagram under load. So the batch follows the load: a wake-up that found
//! at least what it asked for (and more than one) asks for twice as many next time (up to [`MAX`]), one that
//! found fewer asks for what it found. An idle or lightly loaded loop asks for one and
//! returns as soon as it is there; a loaded one gathers, as before, up to [`MAX`] for at
//! most [`MAX_WAIT_US`], the wait shrinking with the batch asked for.

/// The most completions one wake-up waits for.
pub const MAX: usize = 64;
/// How long a wake-up asking for [`MAX`] may wait once one completion is there;
/// proportionally less for fewer (see [`Coalesce::next`]).
pub const MAX_WAIT_US: u32 = 100;

/// What the next `io_uring_enter` waits for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Wait {
    /// Completions to wait for.
    pub want: usize,
    /// With `want` > 1: return once this long has passed with at least one completion.
    pub min_wait_us: Option<u32>,
}

/// The batch size the loop asks for next.
#[derive(Debug)]
pub struct Coalesce {
    want: usize,
}

impl Default for Coalesce {
    fn default() -> Self {
        Self { want: 1 }
    }
}

impl Coalesce {
    /// The next wait: one completion at once, or `want` of them within a wait that grows
    /// with `want` (1.6 µs per completion asked for: at [`MAX`], [`MAX_WAIT_US`]).
    pub fn next(&self) -> Wait {
        if self.want <= 1 {
            return Wait {
                want: 1,
                min_wait_us: None,
            };
        }
        let us = (MAX_WAIT_US as usize * self.want).div_ceil(MAX) as u32;
        Wait {
            want: self.want,
            min_wait_us: Some(us),
        }
    }

    /// The last wake-up found `n` completions.
    pub fn found(&mut self, n: usize) {
        // One found on asking for one: a datagram now and then, not a queue.
        self.want = if n >= self.want && n > 1 {
            (self.want * 2).max(n).min(MAX)
        } else {
            n.max(1)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_loop_does_not_wait_and_a_busy_one_grows_its_batch() {
        let mut c = Coalesce::default();
        assert_eq!(
            c.next(),
            Wait {
                want: 1,
                min_wait_us: None
            }
        );
        // One at a time (moderate load): never any wait.
        for _ in 0..10 {
            c.found(1);
            assert_eq!(c.next().min_wait_us, None, "{c:?}");
        }
        // Two were queued, then each wake-up finds what it asked for: the batch doubles
        // up to MAX.
        c.found(2);
        let mut asked = Vec::new();
        for _ in 0..9 {
            let w = c.next();
            asked.push(w.want);
            c.found(w.want);
        }
        assert_eq!(asked, [2, 4, 8, 16, 32, 64, 64, 64, 64]);
        assert_eq!(
            c.next(),
            Wait {
                want: MAX,
                min_wait_us: Some(MAX_WAIT_US)
            }
        );
        // The load drops: the next wake-up asks for what came, down to none waiting.
        c.found(5);
        assert_eq!(
            c.next(),
            Wait {
                want: 5,
                min_wait_us: Some(8)
            }
        );
        c.found(0); // the overall timeout passed with nothing
        assert_eq!(c.next().min_wait_us, None);
        // Many more than asked for (they queued while the last batch was handled): the
        // next wake-up asks for as many.
        c.found(40);
        assert_eq!(c.next().want, 40);
    }
}
