//! The FleetManager: the orchestration layer that wires configuration, state, scheduler and runner into
//! one object with the seed's API (SPEC §5, §10, §11), usable embedded in-process.
//!
//! Owns the lifecycle state machine, the queue and concurrency accounting, job supervision (spawn, pump
//! output to disk and subscribers, finalize), schedule fires, reload, cost totals and daily budgets,
//! events and the log bus.
//! Must not know about sockets or JSON-RPC: `rpc` maps this API onto the wire.
//!
//! Locking: one `std::sync::Mutex<Core>` guards all mutable fleet state; it is never held across `.await`.
//! A job record's durable write is split: the slow half (temporary file, fsync) runs outside the lock, the
//! rename and index update under it, so the in-memory view and the files change together while jobs that
//! start or end at the same time share the disk.

mod budget;
mod error;
mod events;
mod followup;
mod info;
mod logs;
mod manager;
mod options;
mod output;
mod queue;
mod run;
mod sessions;
mod state_writer;

pub use error::{FleetError, FleetState, ValidationIssue};
pub use events::{EventBus, EventItem, EventSubscription, FleetEvent, SkipReason, TimedEvent};
pub use info::{
    AgentCounts, AgentInfo, AgentQueueInfo, BudgetInfo, CancelResult, FleetQueueInfo, FleetStatus,
    JobCounts, JobList, Limits, NextTrigger, QueueInfo, QueuedJobInfo, ReloadResult, ScheduleInfo,
    SchedulerStatus, UsagePeriod, UsageReport,
};
pub use logs::{LogBus, LogEntry, LogFilter, LogItem, LogLayer, LogLevel, LogSubscription};
pub use manager::{FleetManager, ForkOptions, JobQuery, StopOptions, TriggerOptions};
pub use options::{FleetManagerOptions, HistoryOptions, DEFAULT_MAX_JOBS_PER_AGENT};
pub use output::{JobOutputStream, OutputBatchItem, OutputItem, SerializedLine};
pub use queue::{JobQueue, QueuedJob};
