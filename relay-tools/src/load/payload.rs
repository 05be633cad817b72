//! The payload every load packet carries, so the echo that comes back says which
//! allocation sent it, in what order and when: loss, RTT and misrouting all come from it.
//!
//! ```text
//! 0      4          8                16               24          size
//! "RLD1" | alloc u32 | sequence u64   | sent at ns u64 | filler ... |
//! ```

/// Marks our probes; anything else coming back is counted as foreign.
pub const MAGIC: [u8; 4] = *b"RLD1";
/// The smallest payload that holds a probe.
pub const PROBE_LEN: usize = 24;
/// Largest payload `--size` accepts: with TURN framing it still fits one Ethernet frame.
pub const MAX_PAYLOAD: usize = 1400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Index of the allocation (or direct socket) that sent it, 0-based across threads.
    pub alloc: u32,
    pub seq: u64,
    /// Nanoseconds since the run's epoch.
    pub sent_ns: u64,
}

impl Probe {
    /// Writes the probe into the first [`PROBE_LEN`] bytes of `out`; the filler after
    /// it is the caller's (written once, not per packet).
    #[inline]
    pub fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[4..8].copy_from_slice(&self.alloc.to_be_bytes());
        out[8..16].copy_from_slice(&self.seq.to_be_bytes());
        out[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    #[inline]
    pub fn read(buf: &[u8]) -> Option<Self> {
        let b: &[u8; PROBE_LEN] = buf.get(..PROBE_LEN)?.try_into().ok()?;
        if b[0..4] != MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
        Some(Self {
            alloc: u32_at(4),
            seq: u64_at(8),
            sent_ns: u64_at(16),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let p = Probe {
            alloc: 7,
            seq: 0x0102_0304_0506_0708,
            sent_ns: u64::MAX - 3,
        };
        let mut buf = [0xAAu8; 40];
        p.write(&mut buf);
        assert_eq!(Probe::read(&buf), Some(p));
        assert_eq!(buf[PROBE_LEN], 0xAA, "filler untouched");
        assert_eq!(Probe::read(&buf[..PROBE_LEN - 1]), None);
        buf[0] = b'X';
        assert_eq!(Probe::read(&buf), None);
    }
}
