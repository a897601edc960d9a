//! Construction options of a FleetManager, each with a default an operator would expect.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::scheduler::{Clock, SystemClock};

use super::logs::LogBus;

/// How much job history to keep (SPEC §5). Pruning runs after every job finishes.
#[derive(Debug, Clone)]
pub struct HistoryOptions {
    /// Newest jobs kept per agent. Queued and running jobs are never deleted but count towards it (the
    /// store's rule), so a finished job older than this many active ones goes at once.
    pub max_jobs_per_agent: usize,
    /// Newest jobs kept overall, counted the same way; `None` = no fleet-wide cap.
    pub max_jobs_total: Option<usize>,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        HistoryOptions {
            max_jobs_per_agent: 100,
            max_jobs_total: None,
        }
    }
}

#[derive(Clone)]
pub struct FleetManagerOptions {
    /// Fleet file, directory or agent file; `None` searches the working directory and its parents.
    pub config_path: Option<PathBuf>,
    /// State directory; `None` = `.herdctl` beside the fleet file.
    pub state_dir: Option<PathBuf>,
    /// Fleet-wide cap on running jobs; overrides the configuration's `defaults.max_concurrent`.
    pub concurrency: Option<u32>,
    /// Manual triggers waiting for a slot, beyond which `trigger` fails with CONCURRENCY_LIMIT.
    pub max_queued: usize,
    pub history: HistoryOptions,
    /// Grace between SIGTERM and SIGKILL when cancelling, unless the agent or the call says otherwise.
    pub default_stop_grace: Duration,
    /// The scheduler's clock (a manual clock in tests).
    pub clock: Arc<dyn Clock>,
    /// Where log entries go; the embedding program installs `logs.layer()` in its tracing subscriber.
    pub logs: LogBus,
    /// Events kept for slow subscribers before they are told they lagged.
    pub event_buffer: usize,
    /// `initialize` also starts the fleet (the scheduler), as herdctl's CLI does.
    pub auto_start: bool,
}

impl Default for FleetManagerOptions {
    fn default() -> Self {
        FleetManagerOptions {
            config_path: None,
            state_dir: None,
            concurrency: None,
            max_queued: 1000,
            history: HistoryOptions::default(),
            default_stop_grace: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
            logs: LogBus::new(10_000),
            event_buffer: 4096,
            auto_start: false,
        }
    }
}
