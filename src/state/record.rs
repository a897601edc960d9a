//! The on-disk layout of a job record, `jobs/<id>.yaml`, shared with herdctl.
//!
//! A record is written so that herdctl's own schema (`JobMetadataSchema`: id pattern, required
//! `agent`/`trigger_type`/`status`/`started_at`, its enums) accepts it, with herdctld's extra fields beside
//! herdctl's; herdctl drops unknown keys when it rewrites a record, and herdctld reads that back too.
//! Records of either tool are read; fields neither knows are kept in [`Job::foreign`] and written back.
//!
//! Where the two models differ:
//! - status: herdctld's `queued` is herdctl's `pending` on disk (both read).
//! - `started_at` is required by herdctl: a job that never started is written with its creation time
//!   there, and recognised on read by `started_at == created_at` (two separate clock reads otherwise).
//!   A herdctl record has no `created_at`: herdctl's `started_at` is its creation time.
//! - exit reasons (`interrupted`, `spawn_failed`) and trigger types (`work_item`) herdctl's enums lack are
//!   written as herdctl's nearest value (`error`, `schedule`) with herdctld's in `herdctld_exit_reason` /
//!   `herdctld_trigger_type`.
//! - `duration_seconds` (herdctl, rounded) beside `duration_ms`; `output_file` is the absolute path of the
//!   output file once the job is final, as herdctl writes it.
//! - a job a cluster engine runs has `executor` (its agent's executor type) and `executor_job_id` (the
//!   engine's id of the run, once submitted), so that a restarted daemon re-attaches to it.
//! - a record herdctl wrote first ([`Job::herdctl_record`]: read without `created_at`) keeps saying so
//!   after herdctld rewrites it, in `herdctld_from_herdctl: true` (retention treats such records apart).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::job::{
    ExecutorRun, ExitReason, ForeignFields, Job, JobError, JobId, JobStatus, TriggerType,
    DEFAULT_PRIORITY,
};

/// A record as read from disk, in either tool's layout.
#[derive(Deserialize)]
struct StoredRecord {
    id: JobId,
    agent: String,
    #[serde(default)]
    schedule: Option<String>,
    trigger_type: TriggerType,
    status: JobStatus,
    #[serde(default)]
    exit_reason: Option<ExitReason>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    forked_from: Option<JobId>,
    #[serde(default)]
    started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    duration_seconds: Option<f64>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    usage: Option<serde_json::Value>,
    // Derived when written; read only so that it does not land among the foreign fields.
    #[serde(default, rename = "output_file")]
    _output_file: Option<String>,
    // herdctld's own fields.
    #[serde(default)]
    created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    herdctld_exit_reason: Option<ExitReason>,
    #[serde(default)]
    herdctld_trigger_type: Option<TriggerType>,
    #[serde(default)]
    duration_ms: Option<u64>,
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default)]
    signal: Option<i32>,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<JobError>,
    #[serde(default)]
    work_item: Option<serde_json::Value>,
    #[serde(default)]
    priority: Option<u8>,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    pgid: Option<u32>,
    #[serde(default)]
    process_start_time: Option<u64>,
    #[serde(default)]
    executor: Option<String>,
    #[serde(default)]
    executor_job_id: Option<String>,
    #[serde(default)]
    output_truncated: bool,
    #[serde(default)]
    herdctld_from_herdctl: bool,
    #[serde(flatten)]
    foreign: BTreeMap<String, serde_json::Value>,
}

/// A record as written: herdctl's fields in herdctl's order, then herdctld's, then the foreign ones.
#[derive(Serialize)]
struct RecordOut<'a> {
    id: &'a JobId,
    agent: &'a str,
    schedule: &'a Option<String>,
    trigger_type: TriggerType,
    status: &'static str,
    exit_reason: Option<ExitReason>,
    session_id: &'a Option<String>,
    forked_from: &'a Option<JobId>,
    started_at: DateTime<Utc>,
    finished_at: &'a Option<DateTime<Utc>>,
    duration_seconds: Option<u64>,
    prompt: &'a Option<String>,
    summary: &'a Option<String>,
    output_file: Option<String>,
    usage: &'a Option<serde_json::Value>,
    created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    herdctld_exit_reason: Option<ExitReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    herdctld_trigger_type: Option<TriggerType>,
    duration_ms: Option<u64>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    result: &'a Option<serde_json::Value>,
    error: &'a Option<JobError>,
    work_item: &'a Option<serde_json::Value>,
    priority: u8,
    pid: Option<u32>,
    pgid: Option<u32>,
    process_start_time: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    executor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    executor_job_id: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    output_truncated: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    herdctld_from_herdctl: bool,
    #[serde(flatten)]
    foreign: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// herdctl's name for a status on disk.
fn disk_status(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Queued => "pending",
        other => other.as_str(),
    }
}

/// herdctl's nearest trigger type, and herdctld's when herdctl has no such value.
fn disk_trigger_type(trigger: TriggerType) -> (TriggerType, Option<TriggerType>) {
    match trigger {
        TriggerType::WorkItem => (TriggerType::Schedule, Some(TriggerType::WorkItem)),
        other => (other, None),
    }
}

/// herdctl's nearest exit reason, and herdctld's when herdctl has no such value.
fn disk_exit_reason(reason: Option<ExitReason>) -> (Option<ExitReason>, Option<ExitReason>) {
    match reason {
        Some(precise @ (ExitReason::Interrupted | ExitReason::SpawnFailed)) => {
            (Some(ExitReason::Error), Some(precise))
        }
        other => (other, None),
    }
}

/// The YAML text of `job`'s record; `output_path` is its output file (made absolute by the caller).
pub(super) fn to_yaml(job: &Job, output_path: &Path) -> Result<String, serde_yaml_ng::Error> {
    let (trigger_type, herdctld_trigger_type) = disk_trigger_type(job.trigger_type);
    let (exit_reason, herdctld_exit_reason) = disk_exit_reason(job.exit_reason);
    let record = RecordOut {
        id: &job.id,
        agent: &job.agent,
        schedule: &job.schedule,
        trigger_type,
        status: disk_status(job.status),
        exit_reason,
        session_id: &job.session_id,
        forked_from: &job.forked_from,
        started_at: job.started_at.unwrap_or(job.created_at),
        finished_at: &job.finished_at,
        duration_seconds: job.duration_ms.map(|ms| (ms + 500) / 1000),
        prompt: &job.prompt,
        summary: &job.summary,
        output_file: job
            .status
            .is_terminal()
            .then(|| output_path.display().to_string()),
        usage: &job.usage,
        created_at: job.created_at,
        herdctld_exit_reason,
        herdctld_trigger_type,
        duration_ms: job.duration_ms,
        exit_code: job.exit_code,
        signal: job.signal,
        result: &job.result,
        error: &job.error,
        work_item: &job.work_item,
        priority: job.priority,
        pid: job.pid,
        pgid: job.pgid,
        process_start_time: job.process_start_time,
        executor: job.executor_run.as_ref().map(|run| run.executor.as_str()),
        executor_job_id: job.executor_run.as_ref().and_then(|run| run.id.as_deref()),
        output_truncated: job.output_truncated,
        herdctld_from_herdctl: job.herdctl_record,
        foreign: job.foreign.0.as_deref(),
    };
    serde_yaml_ng::to_string(&record)
}

/// Why a record could not be read as a job.
#[derive(Debug, thiserror::Error)]
pub(super) enum RecordError {
    #[error("{0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("it has neither `created_at` (herdctld) nor `started_at` (herdctl)")]
    NoCreationTime,
}

/// Parses a record written by herdctl or herdctld.
pub(super) fn from_yaml(text: &str) -> Result<Job, RecordError> {
    let stored: StoredRecord = serde_yaml_ng::from_str(text)?;
    let herdctld_record = stored.created_at.is_some();
    let created_at = stored
        .created_at
        .or(stored.started_at)
        .ok_or(RecordError::NoCreationTime)?;
    // A job that has not started has no start time, whatever placeholder herdctl's schema made us write.
    let started_at = match stored.started_at {
        _ if stored.status == JobStatus::Queued => None,
        Some(at) if herdctld_record && at == created_at => None,
        other => other,
    };
    let duration_ms = stored.duration_ms.or_else(|| {
        stored
            .duration_seconds
            .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
            .map(|seconds| (seconds * 1000.0).round() as u64)
    });
    let foreign = (!stored.foreign.is_empty()).then(|| {
        Arc::new(
            stored
                .foreign
                .into_iter()
                .collect::<serde_json::Map<_, _>>(),
        )
    });
    Ok(Job {
        id: stored.id,
        agent: stored.agent,
        schedule: stored.schedule,
        trigger_type: stored.herdctld_trigger_type.unwrap_or(stored.trigger_type),
        status: stored.status,
        exit_reason: stored.herdctld_exit_reason.or(stored.exit_reason),
        prompt: stored.prompt,
        forked_from: stored.forked_from,
        session_id: stored.session_id,
        created_at,
        started_at,
        finished_at: stored.finished_at,
        duration_ms,
        exit_code: stored.exit_code,
        signal: stored.signal,
        summary: stored.summary,
        result: stored.result,
        error: stored.error,
        work_item: stored.work_item,
        priority: stored.priority.unwrap_or(DEFAULT_PRIORITY),
        pid: stored.pid,
        pgid: stored.pgid,
        process_start_time: stored.process_start_time,
        executor_run: stored.executor.map(|executor| ExecutorRun {
            executor,
            id: stored.executor_job_id,
            pending_reason: None,
        }),
        output_truncated: stored.output_truncated,
        usage: stored.usage,
        foreign: ForeignFields(foreign),
        // herdctl drops unknown keys when it rewrites a record, so one without `created_at` is its.
        herdctl_record: !herdctld_record || stored.herdctld_from_herdctl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as herdctl 5.33 writes one (field for field; values made up).
    const HERDCTL_COMPLETED: &str = "\
id: job-2026-11-30-abc123
agent: alpha
schedule: tick
trigger_type: schedule
status: completed
exit_reason: success
session_id: 11111111-2222-3333-4444-555555555555
forked_from: null
started_at: 2026-11-30T10:00:00.100Z
finished_at: 2026-11-30T10:00:02.600Z
duration_seconds: 3
prompt: Scheduled tick
summary: Done
output_file: /home/op/fleet/.herdctl/jobs/job-2026-11-30-abc123.jsonl
usage:
  per_model:
    claude-sonnet-4-5:
      input_tokens: 12
      output_tokens: 7
      cache_creation_input_tokens: 100
      cache_read_input_tokens: 50
  num_turns: 1
";

    const HERDCTL_PENDING_FORK: &str = "\
id: job-2026-11-30-pend01
agent: alpha
schedule: null
trigger_type: fork
status: pending
exit_reason: null
session_id: null
forked_from: job-2026-11-30-abc123
started_at: 2026-11-30T10:05:00.000Z
finished_at: null
duration_seconds: null
prompt: follow up
summary: null
output_file: null
usage: null
discord_thread: '991'
";

    fn sample(status: JobStatus) -> Job {
        let mut job = Job::new(
            JobId::parse("job-2026-11-30-zzz999").unwrap(),
            "team.coder".into(),
            Some("hourly".into()),
            TriggerType::WorkItem,
            Some("fix it".into()),
            3,
            "2026-11-30T10:00:00.123456789Z".parse().unwrap(),
        );
        job.status = status;
        job
    }

    fn round_trip(job: &Job) -> Job {
        let yaml = to_yaml(job, Path::new("/state/jobs/x.jsonl")).unwrap();
        from_yaml(&yaml).unwrap()
    }

    #[test]
    fn a_herdctl_record_reads_with_its_creation_time_duration_and_usage() {
        let job = from_yaml(HERDCTL_COMPLETED).unwrap();
        assert_eq!(job.status, JobStatus::Completed);
        assert_eq!(job.trigger_type, TriggerType::Schedule);
        assert_eq!(job.exit_reason, Some(ExitReason::Success));
        let started: DateTime<Utc> = "2026-11-30T10:00:00.100Z".parse().unwrap();
        assert_eq!(job.created_at, started);
        assert_eq!(job.started_at, Some(started));
        assert_eq!(job.duration_ms, Some(3000));
        assert_eq!(job.priority, DEFAULT_PRIORITY);
        assert_eq!(job.usage.as_ref().unwrap()["num_turns"], 1);
        assert_eq!(job.foreign, ForeignFields::default());
    }

    #[test]
    fn a_herdctl_pending_record_is_queued_never_started_and_keeps_unknown_fields() {
        let job = from_yaml(HERDCTL_PENDING_FORK).unwrap();
        assert_eq!(job.status, JobStatus::Queued);
        assert_eq!(job.started_at, None);
        assert_eq!(job.trigger_type, TriggerType::Fork);
        assert_eq!(
            job.foreign.0.as_ref().unwrap()["discord_thread"],
            serde_json::json!("991")
        );
        let written = to_yaml(&job, Path::new("/s/jobs/job-2026-11-30-pend01.jsonl")).unwrap();
        assert!(written.contains("discord_thread: '991'"), "{written}");
        assert!(written.contains("status: pending"), "{written}");
        assert_eq!(from_yaml(&written).unwrap(), job);
    }

    #[test]
    fn a_record_herdctl_wrote_stays_herdctls_across_a_herdctld_rewrite() {
        let job = from_yaml(HERDCTL_COMPLETED).unwrap();
        assert!(job.herdctl_record);
        let written = to_yaml(&job, Path::new("/s/jobs/x.jsonl")).unwrap();
        assert!(written.contains("created_at:"), "{written}");
        assert!(written.contains("herdctld_from_herdctl: true"), "{written}");
        assert!(from_yaml(&written).unwrap().herdctl_record);
        let own = sample(JobStatus::Completed);
        let written = to_yaml(&own, Path::new("/x")).unwrap();
        assert!(!written.contains("herdctld_from_herdctl"), "{written}");
        assert!(!from_yaml(&written).unwrap().herdctl_record);
        assert!(
            !serde_json::to_value(&job)
                .unwrap()
                .as_object()
                .unwrap()
                .contains_key("herdctl_record"),
            "not on the wire"
        );
    }

    #[test]
    fn herdctld_values_herdctl_lacks_are_written_as_herdctls_nearest_and_read_back_exactly() {
        let mut job = sample(JobStatus::Failed);
        job.started_at = Some("2026-11-30T10:00:01Z".parse().unwrap());
        job.finished_at = Some("2026-11-30T10:00:02Z".parse().unwrap());
        job.exit_reason = Some(ExitReason::SpawnFailed);
        job.duration_ms = Some(1499);
        let yaml = to_yaml(&job, Path::new("/state/jobs/x.jsonl")).unwrap();
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(value["trigger_type"], "schedule");
        assert_eq!(value["herdctld_trigger_type"], "work_item");
        assert_eq!(value["exit_reason"], "error");
        assert_eq!(value["herdctld_exit_reason"], "spawn_failed");
        assert_eq!(value["duration_seconds"], 1);
        assert_eq!(value["output_file"], "/state/jobs/x.jsonl");
        assert_eq!(round_trip(&job), job);
    }

    #[test]
    fn a_job_that_never_started_keeps_no_start_time_across_a_write() {
        for status in [JobStatus::Queued, JobStatus::Cancelled, JobStatus::Failed] {
            let job = sample(status);
            let yaml = to_yaml(&job, Path::new("/x")).unwrap();
            let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
            assert_eq!(
                value["started_at"], value["created_at"],
                "herdctl requires started_at"
            );
            assert_eq!(round_trip(&job).started_at, None, "{status}");
        }
        let mut running = sample(JobStatus::Running);
        running.started_at = Some("2026-11-30T10:00:09Z".parse().unwrap());
        assert_eq!(round_trip(&running), running);
    }

    #[test]
    fn a_cluster_run_keeps_its_executor_and_engine_id_but_not_its_pending_reason() {
        let mut job = sample(JobStatus::Queued);
        job.executor_run = Some(ExecutorRun {
            executor: "slurm".into(),
            id: Some("42".into()),
            pending_reason: Some("Resources".into()),
        });
        let yaml = to_yaml(&job, Path::new("/x")).unwrap();
        assert!(
            yaml.contains("executor: slurm\nexecutor_job_id: '42'\n"),
            "{yaml}"
        );
        let read = round_trip(&job).executor_run.unwrap();
        assert_eq!(
            (read.id.as_deref(), read.pending_reason),
            (Some("42"), None)
        );
        assert!(!to_yaml(&sample(JobStatus::Queued), Path::new("/x"))
            .unwrap()
            .contains("executor"));
    }

    #[test]
    fn a_record_of_the_previous_herdctld_layout_still_reads() {
        let old = "id: job-2025-01-01-abc123\nagent: a\ntrigger_type: work_item\nstatus: queued\n\
                   exit_reason: interrupted\ncreated_at: 2025-01-01T00:00:00Z\nstarted_at: null\n";
        let job = from_yaml(old).unwrap();
        assert_eq!(job.trigger_type, TriggerType::WorkItem);
        assert_eq!(job.exit_reason, Some(ExitReason::Interrupted));
        assert_eq!(job.status, JobStatus::Queued);
    }

    #[test]
    fn a_record_without_any_creation_time_is_an_error() {
        let text = "id: job-2025-01-01-abc123\nagent: a\ntrigger_type: manual\nstatus: running\n";
        assert!(matches!(from_yaml(text), Err(RecordError::NoCreationTime)));
        assert!(from_yaml("id: nope\n").is_err());
    }
}
