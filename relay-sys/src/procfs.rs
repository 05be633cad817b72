//! Readings from /proc: a process's CPU time and resident memory, the whole box's busy and
//! total CPU time, and the kernel's softirq threads. `relay load` (its CPU report), the
//! flood test and `cargo xtask bench` read the same figures, so they parse them once here.

use std::{io, time::Duration};

/// Clock ticks per second of /proc's CPU times (`_SC_CLK_TCK`, 100 on every usual kernel).
pub fn ticks_per_second() -> u64 {
    // SAFETY: plain sysconf query, no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// User plus system time of process `pid`, all its threads (`/proc/PID/stat`).
pub fn process_cpu(pid: u32) -> io::Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = process_ticks(&text)
        .ok_or_else(|| io::Error::other(format!("cannot parse /proc/{pid}/stat")))?;
    Ok(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / ticks_per_second(),
    ))
}

/// utime + stime in ticks. The fields after the command name (which may hold spaces and
/// parentheses: it ends at the last `)`): state is the first, utime and stime the 12th and
/// 13th (fields 14 and 15 of proc_pid_stat(5)).
fn process_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of process `pid`, KiB (VmRSS of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/status has no VmRSS")))
}

/// The whole box's CPU time so far, in ticks summed over CPUs (the `cpu` line of
/// /proc/stat). Two readings give the busy share in between.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BoxTicks {
    /// user, nice, system, irq, softirq, steal (guest time is inside user).
    pub busy: u64,
    /// `busy` plus idle and iowait.
    pub total: u64,
}

impl BoxTicks {
    pub fn read() -> io::Result<Self> {
        let text = std::fs::read_to_string("/proc/stat")?;
        Self::parse(&text).ok_or_else(|| io::Error::other("/proc/stat has no `cpu` line"))
    }

    /// The `cpu` line's user nice system idle iowait irq softirq steal.
    pub fn parse(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        if v.len() < 8 {
            return None;
        }
        let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
        Some(Self {
            busy,
            total: busy + v[3] + v[4],
        })
    }

    /// Busy share of the box between `self` and a later reading (0 to 1; 0 when no tick
    /// passed).
    pub fn busy_share_until(self, later: Self) -> f64 {
        match later.total.checked_sub(self.total) {
            Some(total) if total > 0 => later.busy.saturating_sub(self.busy) as f64 / total as f64,
            _ => 0.0,
        }
    }
}

/// The kernel's per-CPU softirq threads: network work deferred under load runs there.
pub fn softirq_threads() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        comm.starts_with("ksoftirqd/").then_some(pid)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy_excludes_idle_and_iowait() {
        let t = "cpu  100 10 50 1000 30 5 7 3 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let c = BoxTicks::parse(t).unwrap();
        assert_eq!(c.busy, 175);
        assert_eq!(c.total, 1205);
        assert!(BoxTicks::parse("intr 1 2 3\n").is_none());
        assert!(BoxTicks::parse("cpu  1 2 3\n").is_none(), "too few fields");
    }

    #[test]
    fn busy_share_between_two_readings() {
        let a = BoxTicks {
            busy: 100,
            total: 1000,
        };
        let b = BoxTicks {
            busy: 130,
            total: 1100,
        };
        assert!((a.busy_share_until(b) - 0.3).abs() < 1e-9);
        assert_eq!(a.busy_share_until(a), 0.0, "no tick passed");
        assert_eq!(b.busy_share_until(a), 0.0, "readings out of order");
    }

    #[test]
    fn process_stat_with_awkward_name() {
        // comm may contain spaces and ')'.
        let t = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 17 4 0 0 20 0 1 0 5 0 0";
        assert_eq!(process_ticks(t), Some(21));
        assert_eq!(process_ticks("42 (short) S 1"), None);
    }

    #[test]
    fn own_process_readings() {
        let pid = std::process::id();
        assert!(process_cpu(pid).is_ok());
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(BoxTicks::read().unwrap().total > 0);
        assert!(process_cpu(u32::MAX).is_err(), "no such process");
    }
}
