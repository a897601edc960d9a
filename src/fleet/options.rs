//! Construction options of a FleetManager, each with a default an operator would expect.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::FleetConfig;
use crate::scheduler::{Clock, SystemClock};
use crate::state::Retention;

use super::logs::LogBus;

/// Newest jobs kept per agent when neither the options nor the fleet file say (SPEC §5).
pub const DEFAULT_MAX_JOBS_PER_AGENT: usize = 100;

/// How much job history to keep (SPEC §5), at construction (the daemon's command line). Each limit set
/// here wins over the fleet file's `defaults`; pruning runs at initialization and after every job ends.
#[derive(Debug, Clone, Default)]
pub struct HistoryOptions {
    /// Newest jobs kept per agent; `None` = `defaults.max_jobs_per_agent`, else
    /// [`DEFAULT_MAX_JOBS_PER_AGENT`]. Queued and running jobs are never deleted but count towards it
    /// (the store's rule), so a finished job older than this many active ones goes at once.
    pub max_jobs_per_agent: Option<usize>,
    /// Newest jobs kept overall, counted the same way; `None` = `defaults.max_jobs_total`, else no cap.
    pub max_jobs_total: Option<usize>,
    /// Finished jobs older than this are deleted; `None` = `defaults.max_job_age`, else kept at any age.
    pub max_job_age: Option<Duration>,
}

impl HistoryOptions {
    /// The limits in effect with `config` loaded: these options, then the file, then the defaults.
    pub(super) fn retention(&self, config: Option<&FleetConfig>) -> Retention {
        let file = config.map(|c| c.history).unwrap_or_default();
        let explicit = self
            .max_jobs_per_agent
            .or(file.max_jobs_per_agent.map(|n| n as usize));
        Retention {
            max_per_agent: explicit.unwrap_or(DEFAULT_MAX_JOBS_PER_AGENT),
            max_per_agent_explicit: explicit.is_some(),
            max_total: self
                .max_jobs_total
                .or(file.max_jobs_total.map(|n| n as usize)),
            max_age: self.max_job_age.or(file.max_job_age),
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
    /// Running jobs per agent (at least 1) for agents whose configuration sets no `concurrency` (the
    /// seed's `concurrency.perAgent`).
    pub per_agent: u32,
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
            per_agent: 1,
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
