//! `relay load`: a load generator for any TURN server, and `relay load echo`, the peer
//! that sends everything back.
//!
//! Thousands of allocations are set up with a ramp (long-term or TURN REST credentials),
//! then probe packets flow through them in channel or Send mode to an echo peer at a
//! target rate, and come back. Reported: allocation setup rate and failures by error
//! code, packets per second each way, loss, RTT percentiles, per-second progress, and the
//! CPU time of the whole box and of a watched process (`--watch-pid`), so the cost of a
//! relayed packet can be computed. `--direct` sends to the peer with no relay: the
//! baseline a benchmark subtracts.
//!
//! `--transport tcp|tls` reaches the server over one TCP or TLS connection per allocation
//! (what browsers fall back to behind UDP-hostile firewalls); the relayed leg to the echo
//! peer stays UDP. Threads each own a slice of the allocations (one socket each; see
//! `worker`); the main thread only coordinates, samples CPU and prints.

mod args;
mod control;
mod cpu;
mod echo;
mod frame;
mod listing;
mod payload;
mod plan;
mod progress;
pub mod report;
mod setup;
mod signals;
mod stats;
mod stream;
mod sys;
mod turn;
mod worker;

pub use args::{EchoArgs, LoadArgs, LoadCommand, LoadSubcommand, ModeArg};
pub use echo::{Echo, EchoError, EchoStats};
pub use report::{Report, exit};

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rustls::{ClientConfig, pki_types::ServerName};

use crate::probe::Transport;

use cpu::{Counted, CpuMark};
use plan::{Plan, Shared};
use progress::Progress;
use report::{CpuReport, SetupReport, TrafficReport, WatchedReport};
use setup::resolve;
use signals::forward_signal;
use stats::{Percentiles, Seconds, SetupStats, TrafficStats};
use turn::{DataMode, Retransmit};
use worker::Worker;

/// The channel every allocation binds (channels are per allocation, so one number will do).
const CHANNEL: u16 = 0x4000;
/// The window opens this long after the workers are released, so all start together.
const START_DELAY: Duration = Duration::from_millis(20);

/// A command line that cannot be run (the same type as `relay stun`'s).
pub use crate::probe::UsageError;

/// Runs `relay load` or `relay load echo`; returns the exit code.
pub fn run(cmd: LoadCommand) -> i32 {
    let stop = signals::install();
    let result = match cmd.echo {
        Some(LoadSubcommand::Echo(a)) => run_echo(&a, &stop),
        None => run_load(&cmd.args, &stop),
    };
    match result {
        Ok(code) => code,
        Err(RunError::Usage(e)) => {
            eprintln!("relay load: {e}");
            exit::USAGE
        }
        Err(RunError::Failed(e)) => {
            eprintln!("relay load: {e}");
            exit::NOTHING
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error("{0}")]
    Failed(String),
}

fn run_echo(a: &EchoArgs, stop: &AtomicBool) -> Result<i32, RunError> {
    if a.drop_every == Some(0) {
        return Err(UsageError("--drop-every must be at least 1".into()).into());
    }
    let threads = a.threads.unwrap_or_else(sys::cpu_count).max(1);
    let echo = Echo::start(a.listen, threads, a.drop_every)
        .map_err(|e| RunError::Failed(e.to_string()))?;
    eprintln!(
        "echo peer listening on {} ({threads} threads{}); SIGTERM or Ctrl-C stops it",
        echo.local,
        a.drop_every
            .map(|n| format!(", dropping every {n}th datagram"))
            .unwrap_or_default()
    );
    let until = a
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    while !stop.load(Ordering::Relaxed) && until.is_none_or(|u| Instant::now() < u) {
        std::thread::sleep(Duration::from_millis(50));
        forward_signal(stop);
    }
    let s = echo.stop();
    if a.json {
        println!("{}", serde_json::to_string(&s).expect("serializes"));
    } else {
        println!(
            "echo peer: received {}, echoed {}, dropped {}, send errors {}",
            s.received, s.echoed, s.dropped, s.send_errors
        );
    }
    Ok(exit::OK)
}

fn run_load(a: &LoadArgs, stop: &Arc<AtomicBool>) -> Result<i32, RunError> {
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = resolve(a, unix_now)?;
    let nofile = sys::raise_nofile_limit();
    if (a.allocations as u64) + 64 > nofile {
        return Err(UsageError(format!(
            "{} allocations need as many sockets, but the open-file limit is {nofile} \
             (raise it: ulimit -n)",
            a.allocations
        ))
        .into());
    }
    let tls: Option<(Arc<ClientConfig>, ServerName<'static>)> = match &s.trust {
        Some((trust, name)) => Some((crate::probe::transport::tls_config(trust)?, name.clone())),
        None => None,
    };
    let cpus = sys::cpu_count();
    let echo = match a.echo {
        Some(listen) => Some(
            Echo::start(listen, cpus, a.echo_drop_every)
                .map_err(|e| RunError::Failed(e.to_string()))?,
        ),
        None => None,
    };

    let shared = Arc::new(Shared::new(s.threads, stop.clone()));
    let (setup_tx, setup_rx) = mpsc::channel();
    let (second_tx, second_rx) = mpsc::channel();
    let mut workers = Vec::new();
    let mut first = 0usize;
    for w in 0..s.threads {
        let count = a.allocations / s.threads + usize::from(w < a.allocations % s.threads);
        let plan = Plan {
            first_index: first as u32,
            count,
            local: s.local,
            target: s.target,
            peer: s.peer,
            mode: s.mode,
            transport: s.transport,
            tls: tls.clone(),
            channel: CHANNEL,
            credentials: s.credentials.clone(),
            retransmit: Retransmit {
                rto: Duration::from_millis(500),
                rto_max: Duration::MAX,
                // A stream delivers or fails: a request is sent once and awaited until
                // the deadline (RFC 8489 §6.2.2).
                tries: if s.transport == Transport::Udp { 7 } else { 1 },
                timeout: Duration::from_millis(a.timeout_ms),
            },
            ramp: a.ramp.map(|r| r / s.threads as f64),
            window: a.window,
            rate: s.rate.map(|r| r / s.threads as f64),
            size: a.size,
            burst: a.burst,
            drain: Duration::from_millis(a.drain_ms),
            delete: !a.no_delete,
            list: a.allocations_file.is_some(),
            follow_redirects: a.follow_redirects,
        };
        first += count;
        let (worker, socket_error) = Worker::new(plan, shared.clone(), second_tx.clone())
            .map_err(|e| RunError::Failed(format!("cannot start a worker: {e}")))?;
        if let Some(e) = socket_error {
            eprintln!("relay load: {e}");
        }
        workers.push(worker);
    }
    drop(second_tx);

    let watch = a.watch_pid;
    let counted = Counted::new(watch, &a.count_pid);
    let rss_before = watch.and_then(|p| sys::rss_kib(p).ok());
    let setup_start = CpuMark::now(&counted);
    let mut progress = Progress::new(!a.quiet);
    let handles: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(k, w)| {
            let tx = setup_tx.clone();
            std::thread::Builder::new()
                .name(format!("load-{k}"))
                .spawn(move || w.run(tx))
                .expect("spawning a worker thread")
        })
        .collect();
    drop(setup_tx);

    // Setup: until every worker has reported.
    let mut setup = SetupStats::new();
    let mut reported = 0;
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    while reported < s.threads {
        forward_signal(stop);
        match setup_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(w) => {
                setup.merge(&w);
                reported += 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_tick {
            next_tick += Duration::from_secs(1);
            progress.setup(
                setup_start.at.elapsed(),
                shared.ready.load(Ordering::Relaxed),
                shared.failed.load(Ordering::Relaxed),
                a.allocations,
            );
        }
    }
    let setup_end = CpuMark::now(&counted);
    if let Some(path) = &a.allocations_file {
        let mut listed = std::mem::take(&mut *shared.listed.lock().expect("not poisoned"));
        if let Err(e) = listing::write(path, &mut listed) {
            eprintln!(
                "relay load: cannot write the allocations to {}: {e}",
                path.display()
            );
        }
    }
    let rss_after_setup = watch.and_then(|p| sys::rss_kib(p).ok());

    // Traffic.
    let duration = Duration::from_secs_f64(a.duration);
    let traffic_on = !duration.is_zero() && setup.ready > 0 && !stop.load(Ordering::Relaxed);
    let mut seconds = Seconds::default();
    let mut traffic_marks = None;
    if traffic_on {
        let start = Instant::now() + START_DELAY;
        let end = start + duration;
        let _ = shared.window.set((start, end));
        shared.barrier.wait();
        std::thread::sleep(start.saturating_duration_since(Instant::now()));
        let t0 = CpuMark::now(&counted);
        let mut shown = 0;
        while Instant::now() < end && !stop.load(Ordering::Relaxed) {
            forward_signal(stop);
            let wait = end
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            if let Ok(sample) = second_rx.recv_timeout(wait) {
                seconds.add(sample);
            }
            // Percentiles cost a pass over the histogram: once per second shown.
            if let Some(t) = seconds.latest_complete(s.threads)
                && t > shown
            {
                shown = t;
                progress.traffic(start.elapsed(), duration, &seconds.second(t));
            }
        }
        let t1 = CpuMark::now(&counted);
        traffic_marks = Some((t0, t1));
    } else {
        shared.barrier.wait();
    }
    let rss_end = watch.and_then(|p| sys::rss_kib(p).ok());

    let mut traffic = TrafficStats::new();
    let (mut refresh_failures, mut deleted) = (0, 0);
    for h in handles {
        match h.join() {
            Ok(o) => {
                traffic.merge(&o.traffic);
                refresh_failures += o.refresh_failures;
                deleted += o.deleted;
            }
            Err(_) => return Err(RunError::Failed("a worker thread panicked".into())),
        }
    }
    for sample in second_rx.try_iter() {
        seconds.add(sample);
    }
    progress.finish();
    let echo = echo.map(Echo::stop);

    let setup_secs = match (setup.first_start, setup.last_done) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    let traffic_report = traffic_marks.map(|(t0, t1)| {
        let secs = (t1.at - t0.at).as_secs_f64().max(1e-9);
        let lost = traffic.sent.saturating_sub(traffic.received);
        TrafficReport {
            duration_secs: secs,
            target_rate: s.rate,
            sent: traffic.sent,
            received: traffic.received,
            received_in_window: traffic.received_in_window,
            lost,
            loss_ratio: if traffic.sent > 0 {
                lost as f64 / traffic.sent as f64
            } else {
                0.0
            },
            sent_per_sec: traffic.sent as f64 / secs,
            received_per_sec: traffic.received_in_window as f64 / secs,
            send_errors: traffic.send_errors,
            last_send_error: traffic.last_send_error.clone(),
            behind: traffic.behind,
            foreign: traffic.foreign,
            socket_drops: traffic.socket_drops,
            rtt_us: Percentiles::of(&traffic.rtt),
        }
    });
    let cpu = CpuReport {
        cpus,
        setup: setup_end.since(&setup_start, cpus, None),
        traffic: traffic_marks
            .map(|(t0, t1)| {
                let packets = traffic.sent + traffic.received_in_window;
                t1.since(&t0, cpus, Some(packets))
            })
            .unwrap_or_default(),
    };
    let watched = watch.map(|pid| WatchedReport {
        pid,
        rss_before_kib: rss_before,
        rss_after_setup_kib: rss_after_setup,
        rss_end_kib: rss_end,
        rss_per_allocation_bytes: match (rss_before, rss_after_setup) {
            (Some(b), Some(a)) if setup.ready > 0 => {
                Some((a as f64 - b as f64) * 1024.0 / setup.ready as f64)
            }
            _ => None,
        },
    });
    let failed = setup.failed();
    let exit_code = if setup.ready == 0 {
        exit::NOTHING
    } else if failed > 0 || traffic_report.as_ref().is_some_and(|t| t.received == 0) {
        exit::PARTIAL
    } else {
        exit::OK
    };
    let report = Report {
        target: s.target.to_string(),
        peer: s.peer.to_string(),
        mode: match s.mode {
            DataMode::Channel => "channel",
            DataMode::Send => "send",
            DataMode::Direct => "direct",
        },
        transport: s.transport.as_str(),
        credentials: s.credential_kind,
        threads: s.threads,
        payload_bytes: a.size,
        setup: SetupReport {
            requested: a.allocations,
            ready: setup.ready,
            failed,
            failures: setup.failures.clone(),
            secs: setup_secs,
            rate_per_sec: if setup_secs > 0.0 {
                setup.ready as f64 / setup_secs
            } else {
                0.0
            },
            latency_us: Percentiles::of(&setup.latency),
            redirects: setup.redirects,
            redirected_again: setup.redirected_again,
        },
        traffic: traffic_report,
        seconds: seconds.all(),
        cpu,
        watched,
        echo,
        refresh_failures,
        deleted,
        interrupted: stop.load(Ordering::Relaxed),
        exit_code,
    };
    if a.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    Ok(exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Trust;

    fn args(v: &[&str]) -> LoadArgs {
        crate::test_cli::parse("load", v).unwrap()
    }

    #[test]
    fn resolves_modes_peers_and_credentials() {
        let s = resolve(
            &args(&[
                "192.0.2.50",
                "--peer",
                "192.0.2.10:7000",
                "-u",
                "a",
                "-p",
                "b",
            ]),
            0,
        )
        .unwrap();
        assert_eq!(s.target, "192.0.2.50:3478".parse().unwrap());
        assert_eq!(s.mode, DataMode::Channel);
        assert_eq!(s.credential_kind, "long-term");
        assert_eq!(s.rate, Some(1000.0));

        let s = resolve(
            &args(&[
                "192.0.2.50:3478",
                "--echo",
                "192.0.2.10:7000",
                "--secret",
                "s",
                "--mode",
                "send",
                "--rate",
                "max",
            ]),
            1000,
        )
        .unwrap();
        assert_eq!(s.peer, "192.0.2.10:7000".parse().unwrap());
        assert_eq!(s.mode, DataMode::Send);
        assert_eq!(s.rate, None);
        assert_eq!(s.credentials.unwrap().username, "87400:load");

        let s = resolve(&args(&["192.0.2.10:7000", "--direct", "-n", "3"]), 0).unwrap();
        assert_eq!((s.mode, s.peer), (DataMode::Direct, s.target));
        assert!(s.threads <= 3);
    }

    #[test]
    fn streams_take_their_port_and_tls_its_trust() {
        let peer = ["--peer", "192.0.2.10:7000"];
        let s = resolve(
            &args(&["192.0.2.50", "--transport", "tcp", peer[0], peer[1]]),
            0,
        )
        .unwrap();
        assert_eq!(
            (s.target.port(), s.transport, s.trust),
            (3478, Transport::Tcp, None)
        );

        let s = resolve(
            &args(&[
                "192.0.2.50",
                "--transport",
                "tls",
                "--insecure",
                peer[0],
                peer[1],
            ]),
            0,
        )
        .unwrap();
        assert_eq!(s.target.port(), 5349);
        let (trust, name) = s.trust.unwrap();
        assert_eq!(trust, Trust::Insecure);
        assert_eq!(name, ServerName::try_from("192.0.2.50").unwrap());

        let s = resolve(
            &args(&[
                "192.0.2.50:443",
                "--transport",
                "tls",
                "--ca",
                "ca.pem",
                "--sni",
                "turn.example.org",
                peer[0],
                peer[1],
            ]),
            0,
        )
        .unwrap();
        assert_eq!(s.target.port(), 443);
        let (trust, name) = s.trust.unwrap();
        assert_eq!(trust, Trust::CaFile("ca.pem".into()));
        assert_eq!(name, ServerName::try_from("turn.example.org").unwrap());
    }

    #[test]
    fn refuses_what_cannot_run() {
        for bad in [
            &["192.0.2.50"][..],
            &["192.0.2.50", "--echo", "0.0.0.0:7000"],
            &["192.0.2.50", "--peer", "192.0.2.10:1", "-u", "a"],
            &["192.0.2.50", "--peer", "192.0.2.10:1", "-p", "a"],
            &["192.0.2.50", "--peer", "192.0.2.10:1", "--rate", "0"],
            &["192.0.2.50", "--peer", "192.0.2.10:1", "--rate", "fast"],
            &["192.0.2.50", "--peer", "192.0.2.10:1", "--size", "10"],
            &["192.0.2.50", "--peer", "192.0.2.10:1", "-n", "0"],
            &["192.0.2.50", "--peer", "192.0.2.10:1", "--burst", "65"],
            &["192.0.2.50", "--peer", "192.0.2.10:1", "--duration=-1"],
            &["not-an-ip", "--peer", "192.0.2.10:1"],
            &["192.0.2.50", "--peer", "192.0.2.10:1", "--insecure"],
            &[
                "192.0.2.50",
                "--peer",
                "192.0.2.10:1",
                "--transport",
                "tcp",
                "--ca",
                "a",
            ],
            &["192.0.2.10:7000", "--direct", "--transport", "tcp"],
        ] {
            assert!(resolve(&args(bad), 0).is_err(), "{bad:?}");
        }
    }
}
