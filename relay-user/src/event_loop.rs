//! The one interface behind which a worker's event loops sit: the io_uring loop and the
//! epoll fallback of each transport implement [`EventLoop`], and [`run_loop`] tries the
//! first, falls back to the second with the reason logged, and hands the worker's parts
//! back when neither can start. The UDP and TCP/TLS workers both run through it.

use std::fmt::Display;

use crate::config::IoEngine;

/// One event loop of a worker, built from the worker's parts on the thread that runs it.
pub trait EventLoop: Sized {
    /// What the loop is built from, handed back when it cannot start.
    type Parts;
    /// What the loop gives back when it ends; a worker none of whose loops could start
    /// gives back its parts, converted.
    type Output: From<Self::Parts>;
    /// Why the loop cannot start.
    type Error: Display;
    /// The loop's name in the logs (the `engine` field).
    const ENGINE: &'static str;

    fn start(parts: Self::Parts) -> Result<Self, (Self::Error, Self::Parts)>;

    /// Runs until the worker is told to stop.
    fn run(self) -> Self::Output;
}

/// What a transport logs about its worker's loop. The texts are each transport's own
/// (operators and tests look for them); the fields are `worker`, `engine`, `reason`
/// and `error` for both.
pub struct Logs {
    /// The loop started (with `engine`).
    pub running: &'static str,
    /// `running` at info level (else debug: many workers, nothing to act on).
    pub running_at_info: bool,
    /// The preferred loop cannot start (with `reason`): the fallback runs.
    pub fallback: &'static str,
    /// The fallback cannot start either (with `error`): the worker serves nobody.
    pub failed: &'static str,
}

/// Runs the worker on `Preferred` (io_uring) unless `engine` asks for epoll, else or when
/// it cannot start on `Fallback` (epoll); the worker's output either way.
pub fn run_loop<Preferred, Fallback>(
    engine: IoEngine,
    parts: Preferred::Parts,
    logs: &Logs,
    worker: &str,
) -> Preferred::Output
where
    Preferred: EventLoop,
    Fallback: EventLoop<Parts = Preferred::Parts, Output = Preferred::Output>,
{
    let parts = if engine == IoEngine::Epoll {
        parts
    } else {
        match Preferred::start(parts) {
            Ok(l) => {
                running(logs, worker, Preferred::ENGINE);
                return l.run();
            }
            Err((e, parts)) => {
                tracing::warn!(worker, reason = %e, "{}", logs.fallback);
                parts
            }
        }
    };
    match Fallback::start(parts) {
        Ok(l) => {
            running(logs, worker, Fallback::ENGINE);
            l.run()
        }
        Err((e, parts)) => {
            tracing::error!(worker, error = %e, "{}", logs.failed);
            parts.into()
        }
    }
}

fn running(logs: &Logs, worker: &str, engine: &'static str) {
    if logs.running_at_info {
        tracing::info!(worker, engine, "{}", logs.running);
    } else {
        tracing::debug!(worker, engine, "{}", logs.running);
    }
}
