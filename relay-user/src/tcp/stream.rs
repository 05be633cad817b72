//! Bytes waiting to leave on one connection.
//!
//! Two buffers: `inflight` is what the event loop has handed to the kernel (an io_uring
//! send holds a pointer into it, so it is never written while a send is pending), and
//! `pending` is where new frames are appended meanwhile. When `inflight` is sent, the two
//! swap. Both keep their capacity, so a connection in steady state allocates nothing.

/// Above this many queued bytes a connection stops reading (its client is not taking
/// what we send) and data from peers for it is dropped, as UDP would.
pub const HIGH_WATER: usize = 256 * 1024;
/// Reading resumes once the queue is down to this.
pub const LOW_WATER: usize = 64 * 1024;
/// Idle buffers larger than this are given back, so a burst does not pin memory on each
/// of tens of thousands of connections.
const KEEP_CAPACITY: usize = 16 * 1024;

#[derive(Default)]
pub struct TxBuf {
    inflight: Vec<u8>,
    sent: usize,
    pending: Vec<u8>,
}

impl TxBuf {
    /// Bytes not yet sent.
    pub fn len(&self) -> usize {
        self.inflight.len() - self.sent + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends bytes to send after everything already queued.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// For writers that append directly (TLS records).
    pub fn pending_mut(&mut self) -> &mut Vec<u8> {
        &mut self.pending
    }

    /// The next bytes to hand to the kernel, moving `pending` in when the previous ones
    /// are all sent. The slice stays valid and unchanged until [`advance`](Self::advance)
    /// or `peek` is called again, whatever is pushed meanwhile.
    pub fn peek(&mut self) -> &[u8] {
        if self.sent == self.inflight.len() {
            self.inflight.clear();
            self.sent = 0;
            std::mem::swap(&mut self.inflight, &mut self.pending);
            if self.pending.capacity() > KEEP_CAPACITY {
                self.pending = Vec::new();
            }
        }
        &self.inflight[self.sent..]
    }

    /// `n` bytes of the last [`peek`](Self::peek) were sent.
    pub fn advance(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.inflight.len());
        if self.sent == self.inflight.len() && self.inflight.capacity() > KEEP_CAPACITY {
            self.inflight = Vec::new();
            self.sent = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_sends_keep_order_and_inflight_stays_put() {
        let mut t = TxBuf::default();
        t.push(b"abcdef");
        let first = t.peek().as_ptr();
        assert_eq!(t.peek(), b"abcdef");
        t.push(b"gh"); // while "abcdef" is with the kernel
        assert_eq!(t.peek().as_ptr(), first, "inflight bytes did not move");
        t.advance(4);
        assert_eq!(t.len(), 4);
        assert_eq!(t.peek(), b"ef");
        t.advance(2);
        assert_eq!(t.peek(), b"gh");
        t.advance(2);
        assert!(t.is_empty());
        assert_eq!(t.peek(), b"");
    }
}
