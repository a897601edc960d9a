//! The herdctld daemon. The process is `herdctld::daemon::run::main`; what it serves is the library's
//! `herdctld::daemon::Daemon`, which a program (or a test) can run in-process on a socket it bound.

fn main() -> std::process::ExitCode {
    herdctld::daemon::run::main()
}
