//! herdctld — architecture map (being written; see README until then).

pub mod config;
pub mod daemon;
pub mod fleet;
pub mod job;
pub mod rpc;
pub mod runner;
pub mod scheduler;
pub mod state;
pub mod timespec;
