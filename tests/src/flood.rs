//! Running the junk flood of [`flood_config`](crate::flood_config): `trafgen` inside a
//! namespace, pinned to one core, for a bounded time, stopped on drop (also while a failing
//! test unwinds); and what a flood measurement reads around it: interface counters, a
//! process's CPU time and RSS, threaded NAPI and its kernel thread's core. Only `std` and
//! `libc`: `cargo xtask bench` includes this file too.

use std::{
    io::Read as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Grace after the flood's duration before `timeout` kills trafgen outright.
const KILL_AFTER: Duration = Duration::from_secs(2);

/// `ip netns exec NS program args…`, waited for; stdout, or an error with stderr.
pub fn ns_exec(ns: &str, program: &str, args: &[&str]) -> std::io::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "`ip netns exec {ns} {program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A file of `/sys/class/net/IF/` as seen inside `ns` (`ip netns exec` mounts the
/// namespace's own sysfs).
pub fn sysfs_net(ns: &str, ifname: &str, file: &str) -> std::io::Result<String> {
    ns_exec(ns, "cat", &[&format!("/sys/class/net/{ifname}/{file}")]).map(|s| s.trim().to_owned())
}

/// A counter of `/sys/class/net/IF/statistics/`.
pub fn if_stat(ns: &str, ifname: &str, counter: &str) -> std::io::Result<u64> {
    sysfs_net(ns, ifname, &format!("statistics/{counter}"))?
        .parse()
        .map_err(|e| std::io::Error::other(format!("{ifname} {counter}: {e}")))
}

/// Moves the NIC's receive processing (its NAPI poll) into a kernel thread of its own,
/// which [`pin`] can place on a core away from the sender: without it, veth runs the
/// receiver's work in the softirq of whoever sends.
pub fn set_threaded_napi(ns: &str, ifname: &str) -> std::io::Result<()> {
    ns_exec(
        ns,
        "sh",
        &["-c", &format!("echo 1 > /sys/class/net/{ifname}/threaded")],
    )
    .map(drop)
}

/// Pids of the NAPI kernel threads of `ifname` (`napi/IF-ID`, the name cut at 15 bytes
/// as the kernel keeps it).
pub fn napi_threads(ifname: &str) -> Vec<u32> {
    let full = format!("napi/{ifname}-");
    let want = &full[..full.len().min(15)];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        comm.trim_end().starts_with(want).then_some(pid)
    })
    .collect()
}

/// Restricts `pid` (a process, or a kernel thread) to `cpu`.
pub fn pin(pid: u32, cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid as libc::pid_t, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `pid` (the NAPI thread) under SCHED_FIFO: a real NIC's receive work runs in
/// softirq context, ahead of any process; a threaded NAPI thread is an ordinary task that
/// the load generator, the browser and the relay would otherwise preempt.
pub fn realtime(pid: u32) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 50 };
    // SAFETY: a valid sched_param for SCHED_FIFO.
    if unsafe { libc::sched_setscheduler(pid as libc::pid_t, libc::SCHED_FIFO, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time (user + system) `pid` has used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    relay_sys::procfs::process_cpu(pid).ok()
}

/// Resident set size of `pid`, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    relay_sys::procfs::rss_kib(pid).ok()
}

/// How the flood is sent.
#[derive(Clone, Debug)]
pub struct FloodRun {
    /// Namespace and interface trafgen sends from.
    pub ns: String,
    pub ifname: String,
    /// The trafgen configuration ([`trafgen_config`](crate::flood_config::trafgen_config)).
    pub config_path: std::path::PathBuf,
    /// The core trafgen runs on.
    pub cpu: usize,
    pub duration: Duration,
    /// Packets per second; `None`: as fast as trafgen goes on its core.
    pub rate: Option<u64>,
}

/// A running trafgen. Dropping it stops it.
pub struct Trafgen {
    child: Option<Child>,
    started: Instant,
    duration: Duration,
}

/// What trafgen said it sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    pub packets: u64,
    pub elapsed: Duration,
}

impl Sent {
    pub fn per_sec(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Trafgen {
    /// Starts trafgen at `run.rate` or as fast as it goes (`-t 0ns`), one process, pinned to
    /// `run.cpu` under SCHED_FIFO, under
    /// `timeout` so it ends after `run.duration` even if this process dies first.
    pub fn start(run: &FloodRun) -> std::io::Result<Self> {
        let secs = format!("{:.3}", run.duration.as_secs_f64());
        let kill_after = format!("{}", KILL_AFTER.as_secs());
        let cpu = run.cpu.to_string();
        let config = run
            .config_path
            .to_str()
            .ok_or_else(|| std::io::Error::other("config path is not UTF-8"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &run.ns, "timeout", "-s", "INT", "-k"])
            .args([kill_after.as_str(), secs.as_str(), "taskset", "-c", &cpu])
            // Its core to itself: whatever else runs moves to the other one, as on a
            // sender that is another machine.
            .args(["chrt", "-f", "40"])
            .args(["trafgen", "-o", &run.ifname, "-i", config])
            // A rate paces every packet (trafgen busy-waits between them); otherwise no gap
            // at all, through its mmap'd transmit ring.
            .args(match run.rate {
                Some(pps) => ["-b".to_owned(), format!("{pps}pps")],
                None => ["-t".to_owned(), "0ns".to_owned()],
            })
            // One sender process (trafgen forks one per CPU by default), no per-packet
            // output.
            .args(["-P", "1", "-q"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(Self {
            child: Some(child),
            started: Instant::now(),
            duration: run.duration,
        })
    }

    /// Waits for the flood's end; what trafgen reported sending, or its output when it
    /// reported nothing.
    pub fn wait(mut self) -> Result<Sent, String> {
        let mut child = self.child.take().expect("running");
        let deadline = self.started + self.duration + KILL_AFTER * 2;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    break child.wait().ok();
                }
            }
        };
        let elapsed = self.started.elapsed().min(self.duration);
        let (mut out, mut err) = (String::new(), String::new());
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        let text = format!("{out}\n{err}");
        parse_sent(&text)
            .map(|packets| Sent { packets, elapsed })
            .ok_or_else(|| format!("trafgen ({status:?}) reported no packet count:\n{text}"))
    }
}

impl Drop for Trafgen {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT reaches `timeout`, which passes it on to trafgen.
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGINT);
            }
            // Killing `timeout` itself would leave trafgen running: give it time to stop.
            let deadline = Instant::now() + KILL_AFTER * 2;
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `N packets outgoing` line trafgen prints when it stops.
fn parse_sent(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.trim().strip_suffix("packets outgoing"))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_trafgen_s_summary() {
        let out = "     2 packets to schedule\n   176 bytes in total\nRunning! Hang up with ^C!\n\n\
                   \n      200000 packets outgoing\n    17600000 bytes outgoing\n";
        assert_eq!(parse_sent(out), Some(200_000));
        assert_eq!(parse_sent("Running!\n"), None);
    }

    #[test]
    fn reads_own_cpu_time_and_rss() {
        let me = std::process::id();
        assert!(cpu_time(me).is_some());
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_time(u32::MAX).is_none());
    }
}
