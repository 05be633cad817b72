//! Kernel log lines (aya-log) forwarded into the daemon's tracing output.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

/// Starts a task that drains the program's log ring into `log` (bridged to tracing).
/// The logger must stay alive as long as the program: it owns the log map's fd.
pub fn spawn_log_pump(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            tracing::warn!(error = %e, "kernel program logs unavailable");
            return None;
        }
    };
    // SAFETY: the logger owns the log map's fd and keeps it open until it is dropped,
    // which only happens together with this AsyncFd.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot poll the kernel log ring");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
