//! SIGINT/SIGTERM end a run early but cleanly: the report is still printed and the
//! allocations deleted.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

static RECEIVED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    RECEIVED.store(true, Ordering::Relaxed);
}

pub fn received() -> bool {
    RECEIVED.load(Ordering::Relaxed)
}

/// Installs the handlers; the returned flag is what workers watch (the main thread
/// copies the handler's flag into it).
pub fn install() -> Arc<AtomicBool> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a handler that only stores to an atomic; sigaction struct zeroed
        // then filled.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    Arc::new(AtomicBool::new(received()))
}

/// Copies a SIGINT/SIGTERM seen by the handler into the run's stop flag.
pub fn forward_signal(stop: &AtomicBool) {
    if received() {
        stop.store(true, Ordering::Relaxed);
    }
}
