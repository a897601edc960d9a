//! The FleetManager: the orchestration layer that wires configuration, state, scheduler and runner into
//! one object with the seed's API (SPEC §5, §10, §11), usable embedded in-process.
//! Must not know about sockets or JSON-RPC: `rpc` maps this API onto the wire.
//!
//! Cut by concern, each over the shared state in `core` (whose jobs not yet finished are a `job_table`,
//! changed only through its methods):
//! - `manager` — the cheap handle (`FleetManager`) and the call options; `lifecycle` (initialize, start,
//!   stop, flush, reload), with `reattach` (cluster runs a previous daemon left, taken up again at
//!   initialization); `queries` (status, agents, jobs, schedules, queue, streams);
//! - `admission` (trigger, fork, cancel; start now, queue or refuse), `schedules` (fires, enable/disable,
//!   the scheduler's plans), `supervise` (a run: handed to the agent's executor, output pump, a cluster
//!   run's progress, finalization, dispatching the queue);
//! - `records` (a record's write: indexed and queued under the lock) and `record_writer` (writes them,
//!   in order, outside it), `spec` (an agent's config as a run spec),
//!   `budget` (cost totals and daily budgets: an agent's day, its spend, the refusal of a run);
//!   `fanout` (event and log delivery: a bounded queue per subscriber, filled only with what its filter
//!   takes; at a host's shutdown the streams deliver what they hold, then end).
//!
//! Imports flow one way: neither `core` nor `manager` imports an operation module (those above; the core
//! holds the record writer's handle, the one exception), and `supervise` never imports `admission` or
//! `schedules`.
//!
//! Locking: one `std::sync::Mutex<Core>` guards all mutable fleet state; it is never held across `.await`,
//! and no file is read or written under it. A job record's write is indexed under the lock and queued; the
//! record writer writes the queue in order and one directory fsync covers a batch. Until a job's last write
//! has landed the job table holds it (active, or ending), and every query answers for it from there, so
//! a record file older than the job is never taken for it; a creation record is staged (written and fsynced)
//! before the lock is taken, so that a full disk refuses the job before it runs.

mod admission;
mod background_writer;
mod budget;
mod core;
mod error;
mod events;
mod fanout;
mod followup;
mod info;
mod job_table;
mod lifecycle;
mod logs;
mod manager;
mod options;
mod output;
mod queries;
mod queue;
mod reattach;
mod record_writer;
mod records;
mod schedules;
mod sessions;
mod spec;
mod state_writer;
mod supervise;

pub use crate::state::OutputPage;
pub use error::{FleetError, FleetState, ValidationIssue};
pub use events::{
    event_names, EventBus, EventItem, EventSubscription, FleetEvent, SkipReason, TimedEvent,
};
pub use info::{
    AgentCounts, AgentInfo, AgentQueueInfo, BudgetInfo, CancelResult, FleetQueueInfo, FleetStatus,
    JobCounts, JobList, Limits, NextTrigger, QueueInfo, QueuedJobInfo, ReloadResult, ScheduleInfo,
    SchedulerStatus, UsagePeriod, UsageReport,
};
pub use logs::{LogBus, LogEntry, LogFilter, LogItem, LogLayer, LogLevel, LogSubscription};
pub use manager::{FleetManager, ForkOptions, JobQuery, StopOptions, TriggerOptions};
pub use options::{FleetManagerOptions, HistoryOptions, DEFAULT_MAX_JOBS_PER_AGENT};
pub use output::{
    JobOutputStream, LineRun, OutputBatchItem, OutputEnd, OutputGap, OutputItem, OutputPiece,
    ReplayEnd, SerializedLine,
};
pub use queries::{OutputRequest, MAX_INLINE_OUTPUT_BYTES};
pub use queue::{JobQueue, QueuedJob};
