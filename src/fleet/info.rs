//! Snapshots the FleetManager returns from its queries (SPEC §11 result shapes), camelCase on the wire.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;

use crate::job::{Job, UsageTotals};

use super::error::FleetState;

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    pub state: FleetState,
    /// Milliseconds since `start` (the seed's unit; to the stop instant when stopped); null before the
    /// first start.
    pub uptime: Option<u64>,
    pub started_at: Option<DateTime<Utc>>,
    pub config_path: Option<String>,
    pub state_dir: Option<String>,
    pub agents: AgentCounts,
    pub jobs: JobCounts,
    pub scheduler: SchedulerStatus,
    pub limits: Limits,
    /// What every job that finished today and in the last 7 days cost, days of the host's time zone;
    /// null before initialization.
    pub usage: Option<UsageReport>,
}

/// Cost and token totals of finished jobs, as calendar days of `timezone` (herdctld extension). Derived
/// from the job records that exist: a pruned job leaves them.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    pub timezone: String,
    pub today: UsagePeriod,
    /// Today and the 6 days before it.
    pub last_7_days: UsagePeriod,
}

/// The jobs that finished from `since` until the end of today, and their usage summed.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsagePeriod {
    /// The period's first instant (a local midnight).
    pub since: DateTime<Utc>,
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// An agent's daily budget (`budget.daily_usd`) and what its jobs cost today, days of its time zone.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetInfo {
    pub daily_usd: f64,
    pub spent_today: f64,
    /// The spend reached the budget: scheduled runs are skipped (`budget`) and manual ones refused unless
    /// they pass `overBudget`, until the next day.
    pub reached: bool,
}

/// The limits in effect: construction options (the command line) over the fleet file over defaults.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Running jobs per agent for agents whose configuration sets none.
    pub per_agent: u32,
    /// Running jobs fleet-wide; null = no cap.
    pub max_concurrent: Option<u32>,
    /// Manual triggers waiting for a slot.
    pub max_queued: usize,
    /// Newest jobs kept per agent.
    pub max_jobs_per_agent: usize,
    /// Newest jobs kept overall; null = no cap.
    pub max_jobs_total: Option<usize>,
    /// Milliseconds after its end that a finished job is kept; null = any age.
    pub max_job_age: Option<u64>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AgentCounts {
    pub total: usize,
    pub running: usize,
    pub idle: usize,
}

#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct JobCounts {
    pub active: usize,
    pub queued: usize,
    pub completed: usize,
    pub failed: usize,
    pub cancelled: usize,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulerStatus {
    pub running: bool,
    /// The earliest upcoming fire across the fleet.
    pub next_trigger: Option<NextTrigger>,
    /// Schedules that can fire (interval or cron, enabled).
    pub active_schedules: usize,
}

/// An upcoming schedule fire: the same shape in `getStatus` (the earliest of the fleet) and in every
/// schedule (its own).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NextTrigger {
    pub agent_name: String,
    pub schedule_name: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentInfo {
    pub name: String,
    pub local_name: String,
    pub fleet_path: Vec<String>,
    pub description: Option<String>,
    pub model: Option<String>,
    pub runtime: &'static str,
    pub working_directory: String,
    /// `running` when at least one job of the agent runs, else `idle`.
    pub state: &'static str,
    pub concurrency: u32,
    pub current_jobs: Vec<String>,
    pub queued_jobs: usize,
    pub last_job: Option<Box<Job>>,
    pub last_session_id: Option<String>,
    pub schedules: Vec<ScheduleInfo>,
    /// What this agent's jobs cost today and in the last 7 days, days of its time zone.
    pub usage: UsageReport,
    /// Null when the agent has no budget.
    pub budget: Option<BudgetInfo>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleInfo {
    pub agent_name: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Configured `enabled`, overridden by enable/disable at runtime (persisted).
    pub enabled: bool,
    /// Interval schedules: the interval as configured (`30s`); null otherwise.
    pub interval: Option<String>,
    /// Cron schedules: the expression; null otherwise.
    pub cron: Option<String>,
    /// Cron schedules: the time zone the expression is read in; null otherwise.
    pub timezone: Option<String>,
    /// The schedule's next fire; null when it cannot fire (disabled, or a manual-only type).
    pub next_trigger: Option<NextTrigger>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_status: Option<crate::job::JobStatus>,
    pub last_error: Option<String>,
    pub runs: u64,
    pub skipped: u64,
    pub failed: u64,
    pub running_jobs: usize,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueInfo {
    pub queued: Vec<QueuedJobInfo>,
    pub agents: BTreeMap<String, AgentQueueInfo>,
    pub fleet: FleetQueueInfo,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueuedJobInfo {
    pub job_id: String,
    pub agent_name: String,
    pub priority: u8,
    /// 1-based position among the agent's queued jobs.
    pub position: usize,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentQueueInfo {
    pub running: usize,
    pub queued: usize,
    pub limit: u32,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetQueueInfo {
    pub running: usize,
    pub queued: usize,
    pub limit: Option<u32>,
    pub max_queued: usize,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelResult {
    pub job_id: String,
    pub termination_type: crate::job::TerminationType,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReloadResult {
    pub changes: Vec<String>,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    pub total: usize,
}
