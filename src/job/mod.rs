//! The job model shared by every module: a job's identity, lifecycle enums, the persisted record
//! (`jobs/<id>.yaml`, herdctl field names, snake_case) and one line of its output (`jobs/<id>.jsonl`).
//!
//! Owns: [`JobId`] (format and validation: ids become file names, so parsing is also the path-traversal
//! guard), [`JobStatus`], [`ExitReason`], [`TriggerType`], [`TerminationType`], [`JobError`], [`Job`],
//! [`OutputLine`] and the readable text of a structured one ([`message_text`], `output_text`), and what a
//! job's `usage` adds up to ([`UsageTotals`]). Must not: do I/O, know about
//! queues, processes or transports.
//!
//! Serde contract: [`Job`]'s `Serialize` is the wire shape (camelCase, every field present, `null` when
//! known to be empty); the on-disk layout is `state::record`'s, in herdctl's snake_case. Fields another
//! tool wrote into a record travel with it in [`Job::foreign`] and are never shown on the wire.

mod output_text;
mod serialized;

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use output_text::{abbreviate, message_text};
pub use serialized::{stored_line_seq, timestamp_json, SerializedLines};

/// Default priority of a job: 1 is the highest, 10 the lowest.
pub const DEFAULT_PRIORITY: u8 = 5;

/// Length of the random suffix of a job id.
const SUFFIX_LEN: usize = 6;
const SUFFIX_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A job identifier, `job-YYYY-MM-DD-xxxxxx` (`x` in `[a-z0-9]`). Always valid once constructed.
/// Cheap to clone: indexes hold the same id in several maps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(Arc<str>);

/// A string that is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job id {given:?}: expected job-YYYY-MM-DD-xxxxxx with x in [a-z0-9]")]
pub struct InvalidJobId {
    pub given: String,
}

impl JobId {
    /// A fresh id dated by `now` (UTC) with a random suffix. The suffix space is 36^6 per day, so
    /// collisions are possible at high rates: the FleetManager draws again while an id is taken by a stored,
    /// active or still-being-written job.
    pub fn generate(now: DateTime<Utc>) -> JobId {
        let suffix: String = (0..SUFFIX_LEN)
            .map(|_| char::from(SUFFIX_ALPHABET[fastrand::usize(..SUFFIX_ALPHABET.len())]))
            .collect();
        JobId(Arc::from(format!(
            "job-{}-{suffix}",
            now.format("%Y-%m-%d")
        )))
    }

    /// Validates `text` as a job id.
    pub fn parse(text: &str) -> Result<JobId, InvalidJobId> {
        if is_valid_job_id(text.as_bytes()) {
            Ok(JobId(Arc::from(text)))
        } else {
            Err(InvalidJobId {
                given: text.to_owned(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id that sorts before every other id (`job-0000-00-00-000000`), for range bounds.
    pub fn lowest() -> JobId {
        JobId(Arc::from("job-0000-00-00-000000"))
    }
}

/// `job-` + `dddd-dd-dd-` + six of `[a-z0-9]`.
fn is_valid_job_id(bytes: &[u8]) -> bool {
    const PATTERN: &[u8] = b"job-DDDD-DD-DD-XXXXXX";
    bytes.len() == PATTERN.len()
        && bytes.iter().zip(PATTERN).all(|(byte, class)| match class {
            b'D' => byte.is_ascii_digit(),
            b'X' => byte.is_ascii_digit() || byte.is_ascii_lowercase(),
            literal => byte == literal,
        })
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for JobId {
    type Error = InvalidJobId;

    fn try_from(text: String) -> Result<JobId, InvalidJobId> {
        if is_valid_job_id(text.as_bytes()) {
            Ok(JobId(Arc::from(text)))
        } else {
            Err(InvalidJobId { given: text })
        }
    }
}

impl JsonSchema for JobId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "JobId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^job-[0-9]{4}-[0-9]{2}-[0-9]{2}-[a-z0-9]{6}$",
        })
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0.as_ref().to_owned()
    }
}

/// Where a job is in its life. `Queued → Running → Completed | Failed | Cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// herdctl calls this `pending` (and writes it so on disk).
    #[serde(alias = "pending")]
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    /// Completed, failed or cancelled: the record will not change state again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a finished job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    Success,
    Error,
    Timeout,
    Cancelled,
    MaxTurns,
    /// The daemon died while the job was queued or running (set at crash recovery).
    Interrupted,
    SpawnFailed,
}

impl ExitReason {
    /// The wire name (as serialised), e.g. `spawn_failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Success => "success",
            ExitReason::Error => "error",
            ExitReason::Timeout => "timeout",
            ExitReason::Cancelled => "cancelled",
            ExitReason::MaxTurns => "max_turns",
            ExitReason::Interrupted => "interrupted",
            ExitReason::SpawnFailed => "spawn_failed",
        }
    }
}

/// What created a job. herdctld creates `manual`, `schedule`, `fork` and `work_item` jobs; the others are
/// herdctl's (its chat connectors, web UI and sub-agents) and appear in histories herdctl wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TriggerType {
    Manual,
    Schedule,
    Fork,
    WorkItem,
    Webhook,
    Chat,
    Discord,
    Slack,
    Web,
    Spawned,
}

/// How a cancelled job's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TerminationType {
    /// It exited within the grace period after SIGTERM.
    Graceful,
    /// It needed SIGKILL.
    Forced,
    /// It had already finished.
    AlreadyStopped,
}

/// A job failure: a machine-readable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// A job's work item on the wire: an array whatever it was given as (one claimed item is one element).
fn work_items_on_wire<S: serde::Serializer>(
    work_item: &Option<serde_json::Value>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match work_item {
        Some(item @ serde_json::Value::Object(_)) => [item].serialize(serializer),
        other => other.serialize(serializer),
    }
}

/// The persisted job record (`jobs/<id>.yaml`) and the job object clients see.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: JobId,
    /// Qualified agent name.
    #[serde(rename = "agentName")]
    pub agent: String,
    #[serde(rename = "scheduleName")]
    pub schedule: Option<String>,
    pub trigger_type: TriggerType,
    pub status: JobStatus,
    pub exit_reason: Option<ExitReason>,
    pub prompt: Option<String>,
    pub forked_from: Option<JobId>,
    pub session_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<u64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Final result text.
    pub summary: Option<String>,
    /// The runtime's final result object (cost, turns, usage…).
    pub result: Option<serde_json::Value>,
    pub error: Option<JobError>,
    /// What the job works on: the `workItems` a trigger passed (an array), or the item a work source
    /// claimed (an object). On the wire always an array, `workItems`.
    #[serde(rename = "workItems", serialize_with = "work_items_on_wire")]
    #[schemars(with = "Option<Vec<serde_json::Value>>")]
    pub work_item: Option<serde_json::Value>,
    /// 1 (highest) … 10 (lowest).
    pub priority: u8,
    pub pid: Option<u32>,
    pub pgid: Option<u32>,
    /// Start time of `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22): crash recovery
    /// kills a leftover process only if pid and start time both match, so a reused pid is spared.
    pub process_start_time: Option<u64>,
    /// Where a cluster engine runs the job (its agent's `executor` is not `local`); `null` for a job the
    /// daemon runs as its own child.
    pub executor_run: Option<ExecutorRun>,
    /// The `max_output_mb` cap dropped output lines (the file says how many, in `output_truncated` lines).
    pub output_truncated: bool,
    /// Token usage, kept in herdctl's shape: `{per_model: {MODEL: {input_tokens, output_tokens,
    /// cache_creation_input_tokens, cache_read_input_tokens}}, num_turns?, total_cost_usd?}`; on the
    /// wire a [`JobUsage`].
    #[serde(serialize_with = "usage_on_wire")]
    #[schemars(with = "Option<JobUsage>")]
    pub usage: Option<serde_json::Value>,
    /// Fields of the record herdctld does not know (written by herdctl or a newer herdctld): kept so a
    /// rewrite of the record loses nothing, never sent to clients.
    #[serde(skip)]
    pub foreign: ForeignFields,
    /// herdctl wrote this record first. herdctl never prunes its history, so retention keeps such
    /// records unless a limit was set explicitly. Kept across rewrites; never sent to clients.
    #[serde(skip)]
    pub herdctl_record: bool,
}

/// Fields of a persisted record that herdctld carries without interpreting them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForeignFields(pub Option<Arc<serde_json::Map<String, serde_json::Value>>>);

impl Job {
    /// A queued job with nothing run yet.
    pub fn new(
        id: JobId,
        agent: String,
        schedule: Option<String>,
        trigger_type: TriggerType,
        prompt: Option<String>,
        priority: u8,
        created_at: DateTime<Utc>,
    ) -> Job {
        Job {
            id,
            agent,
            schedule,
            trigger_type,
            status: JobStatus::Queued,
            exit_reason: None,
            prompt,
            forked_from: None,
            session_id: None,
            created_at,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            exit_code: None,
            signal: None,
            summary: None,
            result: None,
            error: None,
            work_item: None,
            priority,
            pid: None,
            pgid: None,
            process_start_time: None,
            executor_run: None,
            output_truncated: false,
            usage: None,
            foreign: ForeignFields::default(),
            herdctl_record: false,
        }
    }

    /// Ends the job at `now` with `status` and `exit_reason`: its duration is measured from its start (if
    /// it started), and its process, gone now, leaves the record. The one place a job's end is written.
    pub fn end(&mut self, now: DateTime<Utc>, status: JobStatus, exit_reason: ExitReason) {
        self.status = status;
        self.exit_reason = Some(exit_reason);
        self.finished_at = Some(now);
        self.duration_ms = self
            .started_at
            .map(|start| (now - start).num_milliseconds().max(0) as u64);
        self.pid = None;
        self.pgid = None;
        self.process_start_time = None;
        if let Some(run) = self.executor_run.as_mut() {
            run.pending_reason = None;
        }
    }
}

/// A job's run on a cluster engine: which engine, the run's id there (kept in the final record, for the
/// operator to look it up), and why the engine holds it when it has not started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutorRun {
    /// The agent's executor type: `slurm`.
    pub executor: String,
    /// The engine's id of the run (Slurm's job id); `null` until it is submitted.
    pub id: Option<String>,
    /// While the engine holds the run in its queue (the job is `queued`, holding its fleet slot): the reason
    /// the engine gives (Slurm's `Resources`, `Priority`, `BeginTime`, …). `null` otherwise.
    pub pending_reason: Option<String>,
}

/// A job's `usage` in herdctl's shape from Claude's final `result` message (its `modelUsage`, `num_turns`,
/// `total_cost_usd`); `None` when the result says nothing per model and has no cost. A cost without
/// `modelUsage` (another runtime's result) still makes a `usage`, with an empty `per_model`, so that what
/// the job cost counts towards its agent's totals and budget.
pub fn usage_from_result(result: &serde_json::Value) -> Option<serde_json::Value> {
    let no_models = serde_json::Map::new();
    let models = match result.get("modelUsage") {
        Some(models) => models.as_object()?,
        None if result.get("total_cost_usd").is_some_and(|v| v.is_number()) => &no_models,
        None => return None,
    };
    let count = |usage: &serde_json::Value, key: &str| usage.get(key).and_then(|v| v.as_u64());
    let per_model: serde_json::Map<String, serde_json::Value> = models
        .iter()
        .map(|(model, usage)| {
            (
                model.clone(),
                serde_json::json!({
                    "input_tokens": count(usage, "inputTokens").unwrap_or(0),
                    "output_tokens": count(usage, "outputTokens").unwrap_or(0),
                    "cache_creation_input_tokens": count(usage, "cacheCreationInputTokens").unwrap_or(0),
                    "cache_read_input_tokens": count(usage, "cacheReadInputTokens").unwrap_or(0),
                }),
            )
        })
        .collect();
    let mut usage = serde_json::Map::new();
    usage.insert("per_model".into(), per_model.into());
    for key in ["num_turns", "total_cost_usd"] {
        if let Some(value) = result.get(key).filter(|v| v.is_number()) {
            usage.insert(key.into(), value.clone());
        }
    }
    Some(usage.into())
}

/// A job's usage on the wire: herdctl's `usage` read from the record, sent in camelCase.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))]
pub struct JobUsage {
    /// Tokens by model name.
    #[serde(default)]
    pub per_model: std::collections::BTreeMap<String, ModelUsage>,
    pub num_turns: Option<u64>,
    pub total_cost_usd: Option<f64>,
}

/// The tokens of one model in one job.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))]
pub struct ModelUsage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}

/// A job's `usage` as a [`JobUsage`]; a record whose usage has another shape (another tool wrote it) shows
/// none rather than something a client cannot read.
fn usage_on_wire<S: serde::Serializer>(
    usage: &Option<serde_json::Value>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    usage
        .as_ref()
        .and_then(|usage| JobUsage::deserialize(usage).ok())
        .serialize(serializer)
}

/// What jobs' `usage` adds up to: their cost and their tokens of every model, by kind. [`UsageTotals::of`]
/// is one job's (`jobs: 1`); [`UsageTotals::add`] sums. Part of fleet query results, hence camelCase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotals {
    /// Jobs counted.
    pub jobs: u64,
    pub cost_usd: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl UsageTotals {
    /// One job's totals from its `usage` (herdctl's shape). A cost that is not a finite, non-negative
    /// number counts as zero: a broken or hostile result must not lower what an agent has spent.
    pub fn of(usage: &serde_json::Value) -> UsageTotals {
        let cost = usage
            .get("total_cost_usd")
            .and_then(serde_json::Value::as_f64)
            .filter(|cost| cost.is_finite() && *cost >= 0.0)
            .unwrap_or(0.0);
        let mut totals = UsageTotals {
            jobs: 1,
            cost_usd: cost,
            ..UsageTotals::default()
        };
        let models = usage
            .get("per_model")
            .and_then(serde_json::Value::as_object);
        for model in models.into_iter().flat_map(|models| models.values()) {
            let count = |key: &str| {
                model
                    .get(key)
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0)
            };
            totals.input_tokens = totals.input_tokens.saturating_add(count("input_tokens"));
            totals.output_tokens = totals.output_tokens.saturating_add(count("output_tokens"));
            totals.cache_creation_input_tokens = totals
                .cache_creation_input_tokens
                .saturating_add(count("cache_creation_input_tokens"));
            totals.cache_read_input_tokens = totals
                .cache_read_input_tokens
                .saturating_add(count("cache_read_input_tokens"));
        }
        totals
    }

    pub fn add(&mut self, other: &UsageTotals) {
        self.jobs = self.jobs.saturating_add(other.jobs);
        self.cost_usd += other.cost_usd;
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cache_creation_input_tokens = self
            .cache_creation_input_tokens
            .saturating_add(other.cache_creation_input_tokens);
        self.cache_read_input_tokens = self
            .cache_read_input_tokens
            .saturating_add(other.cache_read_input_tokens);
    }
}

/// One line of a job's output, the same on the wire (`job:output`, `jobOutput`, `getJob`'s `output`) and in
/// `jobs/<id>.jsonl`: `{"seq":0,"timestamp":"…","type":"stdout","chunk":"…"}`. `seq` counts from 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutputLine {
    /// Position in the job's output, strictly increasing from 0.
    pub seq: u64,
    pub timestamp: DateTime<Utc>,
    /// `stdout`, `stderr`, a stream-json message's type (`assistant`, `user`, `system`, `result`, …), or
    /// `output_truncated` where the output cap dropped lines.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text a person reads: the line itself (stdout, stderr), or the text of the message.
    pub chunk: String,
    /// The line's structure, present only on structured lines: a stream-json message as Claude printed it,
    /// or the fields of a notice (`output_truncated`: `dropped_lines`, `dropped_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<serde_json::Map<String, serde_json::Value>>,
    /// Present (true) only when the line was cut to the line-length cap.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl OutputLine {
    /// A structured line: `chunk` is the message's text ([`message_text`]).
    pub fn structured(
        seq: u64,
        timestamp: DateTime<Utc>,
        kind: String,
        message: serde_json::Map<String, serde_json::Value>,
    ) -> OutputLine {
        OutputLine {
            seq,
            timestamp,
            chunk: message_text(&kind, &message),
            kind,
            message: Some(message),
            truncated: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 23, 59, 59).unwrap()
    }

    #[test]
    fn generated_ids_are_valid_and_dated_in_utc() {
        for _ in 0..1000 {
            let id = JobId::generate(at(2025, 3, 9));
            assert!(id.as_str().starts_with("job-2025-03-09-"), "{id}");
            assert_eq!(JobId::parse(id.as_str()), Ok(id.clone()));
        }
    }

    #[test]
    fn generated_suffixes_vary() {
        let ids: std::collections::HashSet<JobId> =
            (0..100).map(|_| JobId::generate(at(2025, 1, 1))).collect();
        assert!(ids.len() > 95);
    }

    #[test]
    fn parse_rejects_everything_that_is_not_an_id() {
        for bad in [
            "",
            "job-2025-01-01-abc12",
            "job-2025-01-01-abc1234",
            "job-2025-01-01-ABC123",
            "job-2025-1-01-abc123",
            "../../etc/passwd",
            "job-2025-01-01-ab/123",
            "job-2025-01-01-ab.123",
            "jab-2025-01-01-abc123",
            "job-2025-01-01-abc12\u{e9}",
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(JobId::parse("job-2025-01-01-abc123").is_ok());
        assert_eq!(JobId::parse(JobId::lowest().as_str()), Ok(JobId::lowest()));
        assert!(JobId::lowest() < JobId::parse("job-0000-00-00-000001").unwrap());
    }

    #[test]
    fn job_id_serde_is_a_plain_validated_string() {
        let id = JobId::parse("job-2025-01-01-abc123").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"job-2025-01-01-abc123\""
        );
        assert!(serde_json::from_str::<JobId>("\"../x\"").is_err());
    }

    #[test]
    fn enums_use_herdctl_spelling() {
        assert_eq!(
            serde_json::to_string(&ExitReason::SpawnFailed).unwrap(),
            "\"spawn_failed\""
        );
        assert_eq!(
            serde_json::to_string(&TriggerType::WorkItem).unwrap(),
            "\"work_item\""
        );
        assert_eq!(
            serde_json::to_string(&TerminationType::AlreadyStopped).unwrap(),
            "\"already_stopped\""
        );
        assert_eq!(
            serde_json::to_string(&JobStatus::Cancelled).unwrap(),
            "\"cancelled\""
        );
        assert!(JobStatus::Failed.is_terminal());
        assert!(!JobStatus::Running.is_terminal());
        assert!(!JobStatus::Queued.is_terminal());
    }

    #[test]
    fn a_job_on_the_wire_is_camel_case_with_every_field_present() {
        let mut job = Job::new(
            JobId::parse("job-2025-01-01-abc123").unwrap(),
            "team.coder".into(),
            Some("hourly".into()),
            TriggerType::WorkItem,
            None,
            DEFAULT_PRIORITY,
            at(2025, 1, 1),
        );
        job.work_item = Some(serde_json::json!({"id": "github-7"}));
        let json = serde_json::to_value(&job).unwrap();
        let keys: std::collections::BTreeSet<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            std::collections::BTreeSet::from([
                "id",
                "agentName",
                "scheduleName",
                "triggerType",
                "status",
                "exitReason",
                "prompt",
                "forkedFrom",
                "sessionId",
                "createdAt",
                "startedAt",
                "finishedAt",
                "durationMs",
                "exitCode",
                "signal",
                "summary",
                "result",
                "error",
                "workItems",
                "priority",
                "executorRun",
                "pid",
                "pgid",
                "processStartTime",
                "outputTruncated",
                "usage"
            ])
        );
        assert_eq!(json["triggerType"], "work_item");
        assert_eq!(json["outputTruncated"], false);
        assert!(json["exitReason"].is_null());
        // A claimed item (an object on disk) is one element; given items stay the array they were.
        assert_eq!(json["workItems"], serde_json::json!([{"id": "github-7"}]));
        job.work_item = Some(serde_json::json!([{"a": 1}, {"b": 2}]));
        assert_eq!(
            serde_json::to_value(&job).unwrap()["workItems"],
            serde_json::json!([{"a": 1}, {"b": 2}])
        );
    }

    #[test]
    fn usage_takes_herdctls_shape_from_the_result() {
        let result = serde_json::json!({
            "num_turns": 2, "total_cost_usd": 0.25,
            "modelUsage": {"m": {"inputTokens": 5, "outputTokens": 7, "cacheReadInputTokens": 1,
                                 "cacheCreationInputTokens": 2, "costUSD": 0.25}}
        });
        assert_eq!(
            usage_from_result(&result),
            Some(serde_json::json!({
                "per_model": {"m": {"input_tokens": 5, "output_tokens": 7,
                                    "cache_creation_input_tokens": 2, "cache_read_input_tokens": 1}},
                "num_turns": 2, "total_cost_usd": 0.25
            }))
        );
        assert_eq!(
            usage_from_result(&serde_json::json!({"num_turns": 1})),
            None
        );
        assert_eq!(
            usage_from_result(&serde_json::json!({"num_turns": 1, "total_cost_usd": 0.5})),
            Some(serde_json::json!({"per_model": {}, "num_turns": 1, "total_cost_usd": 0.5})),
            "a cost without modelUsage still counts"
        );
    }

    #[test]
    fn usage_totals_sum_every_model_and_refuse_negative_costs() {
        let usage = serde_json::json!({
            "per_model": {
                "a": {"input_tokens": 5, "output_tokens": 7, "cache_creation_input_tokens": 2,
                      "cache_read_input_tokens": 1},
                "b": {"input_tokens": 10, "output_tokens": 1}
            },
            "num_turns": 2, "total_cost_usd": 0.25
        });
        let one = UsageTotals::of(&usage);
        assert_eq!(
            one,
            UsageTotals {
                jobs: 1,
                cost_usd: 0.25,
                input_tokens: 15,
                output_tokens: 8,
                cache_creation_input_tokens: 2,
                cache_read_input_tokens: 1
            }
        );
        let mut sum = one;
        sum.add(&UsageTotals::of(
            &serde_json::json!({"total_cost_usd": -3.0}),
        ));
        assert_eq!((sum.jobs, sum.cost_usd, sum.input_tokens), (2, 0.25, 15));
        assert_eq!(
            serde_json::to_value(sum).unwrap(),
            serde_json::json!({"jobs": 2, "costUsd": 0.25, "inputTokens": 15, "outputTokens": 8,
                               "cacheCreationInputTokens": 2, "cacheReadInputTokens": 1})
        );
    }

    #[test]
    fn an_output_line_is_seq_timestamp_type_chunk_and_its_message_when_it_has_one() {
        let text = r#"{"seq":3,"timestamp":"2025-01-01T00:00:00Z","type":"stdout","chunk":"hi"}"#;
        let line: OutputLine = serde_json::from_str(text).unwrap();
        assert_eq!(
            (line.seq, line.kind.as_str(), line.chunk.as_str()),
            (3, "stdout", "hi")
        );
        assert_eq!(serde_json::to_string(&line).unwrap(), text);

        let serde_json::Value::Object(message) =
            serde_json::json!({"type": "result", "result": "done", "is_error": false})
        else {
            unreachable!("an object")
        };
        let line = OutputLine::structured(4, at(2025, 1, 1), "result".into(), message);
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(json["chunk"], "done");
        assert_eq!(json["message"]["is_error"], false);
        assert!(json.get("truncated").is_none());
        assert_eq!(serde_json::from_value::<OutputLine>(json).unwrap(), line);
    }
}
