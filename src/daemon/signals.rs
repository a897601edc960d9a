//! Process signals as daemon requests (SPEC §3).
//!
//! Owns: turning SIGTERM/SIGINT/SIGHUP into [`SignalRequest`]s. The first SIGTERM or SIGINT asks for a
//! graceful stop, any later one for an immediate one; SIGHUP asks for a reload. It does not act on them.
//!
//! Public API:
//! - [`Signals::new`]`() -> io::Result<Signals>` (inside a tokio runtime; installs the handlers)
//! - [`Signals::recv`]`(&mut self) -> SignalRequest` (async)

use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// What a signal asks the daemon to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalRequest {
    /// First SIGTERM/SIGINT: stop gracefully.
    Shutdown,
    /// A further SIGTERM/SIGINT during the graceful stop: cancel jobs now.
    ShutdownNow,
    /// SIGHUP: reload the configuration.
    Reload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Received {
    Terminate,
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
    pub async fn recv(&mut self) -> SignalRequest {
        let received = tokio::select! {
            Some(()) = self.term.recv() => Received::Terminate,
            Some(()) = self.interrupt.recv() => Received::Terminate,
            Some(()) = self.hangup.recv() => Received::Hangup,
        };
        classify(received, &mut self.shutdown_requested)
    }
}

fn classify(received: Received, shutdown_requested: &mut bool) -> SignalRequest {
    match received {
        Received::Hangup => SignalRequest::Reload,
        Received::Terminate if *shutdown_requested => SignalRequest::ShutdownNow,
        Received::Terminate => {
            *shutdown_requested = true;
            SignalRequest::Shutdown
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
        assert_eq!(
            classify(Received::Hangup, &mut requested),
            SignalRequest::Reload
        );
        assert_eq!(
            classify(Received::Terminate, &mut requested),
            SignalRequest::Shutdown
        );
        assert_eq!(
            classify(Received::Hangup, &mut requested),
            SignalRequest::Reload
        );
        assert_eq!(
            classify(Received::Terminate, &mut requested),
            SignalRequest::ShutdownNow
        );
        assert_eq!(
            classify(Received::Terminate, &mut requested),
            SignalRequest::ShutdownNow
        );
    }

    // The only test in the crate that raises signals at the test process; the handlers stay installed.
    #[tokio::test]
    async fn real_signals_become_requests() {
        use nix::sys::signal::{raise, Signal as Sig};
        let mut signals = Signals::new().unwrap();
        for (sig, expected) in [
            (Sig::SIGHUP, SignalRequest::Reload),
            (Sig::SIGINT, SignalRequest::Shutdown),
            (Sig::SIGTERM, SignalRequest::ShutdownNow),
        ] {
            raise(sig).unwrap();
            let request = tokio::time::timeout(Duration::from_secs(5), signals.recv())
                .await
                .unwrap();
            assert_eq!(request, expected, "after {sig}");
        }
    }
}
