//! Stopping a `herdctld` started by a test or the bench, the way an operator would. Included by path
//! (`#[path = ".../support/stop.rs"]`) in every harness that runs the daemon as a plain child process.

use std::process::Child;
use std::time::{Duration, Instant};

/// `sigterms` SIGTERMs 50 ms apart (a second one cancels running jobs at once), then SIGKILL if the daemon
/// still runs after `limit`. Reaps it either way.
pub fn stop_daemon(child: &mut Child, sigterms: usize, limit: Duration) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    for sent in 0..sigterms {
        if sent > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}
