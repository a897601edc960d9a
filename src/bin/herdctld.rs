//! The herdctld daemon; everything is in `herdctld::daemon::run` so it can be tested as a library.

fn main() -> std::process::ExitCode {
    herdctld::daemon::run::main()
}
