//! SIGTERM / SIGINT as a flag: long-running commands (`hostile`'s victim,
//! `rpmsg-guest`) stop at their next check and still print their report.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    // Relaxed: a flag the loops poll; nothing is published with it.
    STOP.store(true, Ordering::Relaxed);
}

/// Installs the handler for SIGTERM and SIGINT.
pub fn install() {
    let h: extern "C" fn(libc::c_int) = on_stop;
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGTERM, h as libc::sighandler_t);
        libc::signal(libc::SIGINT, h as libc::sighandler_t);
    }
}

/// True once either signal arrived.
pub fn requested() -> bool {
    // Relaxed: see on_stop.
    STOP.load(Ordering::Relaxed)
}
