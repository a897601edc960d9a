//! Process signals as daemon requests (SPEC §3).
//!
//! Owns: turning SIGTERM/SIGINT/SIGHUP into the daemon's [`Request`]s. The first SIGTERM or SIGINT asks for
//! a graceful stop, any later one for an immediate one; SIGHUP asks for a reload. It does not act on them
//! (`daemon::service` does).
//!
//! Public API:
//! - [`Signals::new`]`() -> io::Result<Signals>` (inside a tokio runtime; installs the handlers)
//! - [`Signals::recv`]`(&mut self) -> Request` (async)

use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::service::Request;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Received {
    /// SIGTERM or SIGINT, by name.
    Terminate(&'static str),
    Hangup,
}

/// The signal handlers of the daemon.
#[derive(Debug)]
pub struct Signals {
    term: Signal,
    interrupt: Signal,
    hangup: Signal,
    shutdown_requested: bool,
}

impl Signals {
    /// Installs the handlers; from now on these signals no longer kill the process.
    pub fn new() -> io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            shutdown_requested: false,
        })
    }

    /// The next request. Cancel-safe (usable in `select!`).
    pub async fn recv(&mut self) -> Request {
        let received = tokio::select! {
            Some(()) = self.term.recv() => Received::Terminate("SIGTERM"),
            Some(()) = self.interrupt.recv() => Received::Terminate("SIGINT"),
            Some(()) = self.hangup.recv() => Received::Hangup,
        };
        classify(received, &mut self.shutdown_requested)
    }
}

fn classify(received: Received, shutdown_requested: &mut bool) -> Request {
    match received {
        Received::Hangup => Request::Reload,
        Received::Terminate(_) if *shutdown_requested => Request::ShutdownNow,
        Received::Terminate(signal) => {
            *shutdown_requested = true;
            Request::Shutdown { reason: signal }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn second_terminate_means_now_and_hangup_always_reloads() {
        let mut requested = false;
        assert_eq!(classify(Received::Hangup, &mut requested), Request::Reload);
        assert_eq!(
            classify(Received::Terminate("SIGTERM"), &mut requested),
            Request::Shutdown { reason: "SIGTERM" }
        );
        assert_eq!(classify(Received::Hangup, &mut requested), Request::Reload);
        assert_eq!(
            classify(Received::Terminate("SIGINT"), &mut requested),
            Request::ShutdownNow
        );
        assert_eq!(
            classify(Received::Terminate("SIGINT"), &mut requested),
            Request::ShutdownNow
        );
    }

    // The only test in the crate that raises signals at the test process; the handlers stay installed.
    #[tokio::test]
    async fn real_signals_become_requests() {
        use nix::sys::signal::{raise, Signal as Sig};
        let mut signals = Signals::new().unwrap();
        for (sig, expected) in [
            (Sig::SIGHUP, Request::Reload),
            (Sig::SIGINT, Request::Shutdown { reason: "SIGINT" }),
            (Sig::SIGTERM, Request::ShutdownNow),
        ] {
            raise(sig).unwrap();
            let request = tokio::time::timeout(Duration::from_secs(5), signals.recv())
                .await
                .unwrap();
            assert_eq!(request, expected, "after {sig}");
        }
    }
}
