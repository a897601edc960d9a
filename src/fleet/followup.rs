//! What the fleet does outside itself around a job: getting work items from an agent's work source before a
//! scheduled run, and after a job ends, reporting the item back (complete or release) and running the
//! agent's hooks. All of it runs in background tasks, never under the fleet's lock: these calls talk to the
//! network or to other processes and may take long.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::config::{AgentConfig, FleetConfig};
use crate::hooks::{self, HookEvent};
use crate::job::{ExitReason, Job, JobStatus};
use crate::scheduler::ScheduleKey;
use crate::work_sources::{
    work_source_for, ClaimOutcome, WorkItem, WorkOutcome, WorkReport, WorkSource,
};

use super::error::ValidationIssue;

/// A claimed work item and the source it must be reported back to.
pub(super) type ClaimedWork = (Arc<dyn WorkSource>, WorkItem);

/// The work item a job claimed from its schedule's source, as its record says, with that source: to report
/// back when a job a previous daemon left ends.
pub(super) fn claimed_work(
    sources: &HashMap<ScheduleKey, Arc<dyn WorkSource>>,
    job: &Job,
) -> Option<ClaimedWork> {
    let source = sources.get(&ScheduleKey::new(&job.agent, job.schedule.as_ref()?))?;
    let item = serde_json::from_value(job.work_item.clone()?).ok()?;
    Some((source.clone(), item))
}

/// Looks a secret up in the environment first, then in the fleet's `.env` (which never overrides it).
fn secret_lookup(config: &FleetConfig) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
    let dotenv = config.dotenv.clone();
    move |name: &str| {
        std::env::var(name)
            .ok()
            .or_else(|| dotenv.get(name).map(str::to_string))
    }
}

/// One work source per schedule that has one, built at load so that a missing token is a configuration
/// error rather than a failure at fire time.
pub(super) fn work_sources(
    config: &FleetConfig,
) -> Result<HashMap<ScheduleKey, Arc<dyn WorkSource>>, Vec<ValidationIssue>> {
    let secrets = secret_lookup(config);
    let mut sources = HashMap::new();
    let mut issues = Vec::new();
    for agent in &config.agents {
        for schedule in &agent.schedules {
            let Some(work_source) = schedule.work_source.as_ref() else {
                continue;
            };
            match work_source_for(work_source, &secrets) {
                Ok(source) => {
                    sources.insert(ScheduleKey::new(&agent.name, &schedule.name), source);
                }
                Err(e) => issues.push(ValidationIssue {
                    file: agent.source_file.display().to_string(),
                    path: format!("schedules.{}.work_source", schedule.name),
                    message: e.to_string(),
                }),
            }
        }
    }
    if issues.is_empty() {
        Ok(sources)
    } else {
        Err(issues)
    }
}

/// The oldest eligible item that this fleet managed to claim, or `None` when there is no work (items
/// claimed by someone else in the meantime are passed over).
pub(super) async fn claim_next(
    source: &Arc<dyn WorkSource>,
) -> Result<Option<WorkItem>, crate::work_sources::WorkSourceError> {
    for item in source.fetch_available().await? {
        match source.claim(&item).await? {
            ClaimOutcome::Claimed(item) => return Ok(Some(item)),
            ClaimOutcome::AlreadyClaimed | ClaimOutcome::NotFound | ClaimOutcome::Closed => {
                tracing::debug!(item = %item.id, "work item taken meanwhile, trying the next one");
            }
        }
    }
    Ok(None)
}

/// Reports a finished job's work item: closed with a comment on success, released otherwise.
pub(super) fn report_work(work: ClaimedWork, job: &Job) {
    let (source, item) = work;
    let outcome = match job.status {
        JobStatus::Completed => WorkOutcome::Success,
        JobStatus::Cancelled => WorkOutcome::Cancelled,
        _ => WorkOutcome::Failure,
    };
    let report = WorkReport {
        job_id: job.id.to_string(),
        outcome,
        summary: job.summary.clone(),
        error: job.error.as_ref().map(|e| e.message.clone()),
    };
    let job_id = job.id.to_string();
    let agent = job.agent.clone();
    tokio::spawn(async move {
        let result = if outcome == WorkOutcome::Success {
            source.complete(&item, &report).await
        } else {
            source.release(&item, &report).await
        };
        match result {
            Ok(()) => {
                tracing::info!(agent = %agent, job_id = %job_id, item = %item.id, ?outcome, "work item reported")
            }
            Err(e) => tracing::error!(agent = %agent, job_id = %job_id, item = %item.id,
                "work item not reported, it stays labelled in progress: {e}"),
        }
    });
}

/// Releases an item claimed for a run that never started (the fleet stopped, or a limit was reached
/// while the item was being claimed).
pub(super) fn release_unused(work: ClaimedWork, why: &str) {
    let (source, item) = work;
    let report = WorkReport {
        job_id: String::new(),
        outcome: WorkOutcome::Cancelled,
        summary: None,
        error: Some(why.to_string()),
    };
    tokio::spawn(async move {
        if let Err(e) = source.release(&item, &report).await {
            tracing::error!(item = %item.id, "claimed work item not released: {e}");
        }
    });
}

/// Runs the agent's hooks that apply to how the job ended, in the background.
pub(super) fn run_hooks(agent: &Arc<AgentConfig>, config: &FleetConfig, job: &Job) {
    if agent.hooks.after_run.is_empty() && agent.hooks.on_error.is_empty() {
        return;
    }
    let event = match (job.status, job.exit_reason) {
        (JobStatus::Completed, _) => HookEvent::Completed,
        (JobStatus::Cancelled, _) => HookEvent::Cancelled,
        (_, Some(ExitReason::Timeout)) => HookEvent::Timeout,
        _ => HookEvent::Failed,
    };
    let env = secret_lookup(config);
    let agent = agent.clone();
    let job = job.clone();
    let job_id = job.id.to_string();
    tokio::spawn(async move {
        // The context holds the agent's metadata file: read here, never under the fleet's lock.
        let context = {
            let agent = agent.clone();
            tokio::task::spawn_blocking(move || hook_context(&agent, &job, event)).await
        };
        let Ok(context) = context else {
            return;
        };
        let selected = hooks::select(&agent.hooks, event, &context);
        if selected.is_empty() {
            return;
        }
        for run in hooks::run(&selected, &context, &agent.working_directory, &env).await {
            if run.success {
                tracing::info!(agent = %agent.name, job_id = %job_id, hook = %run.name, "hook ran");
            } else {
                tracing::warn!(agent = %agent.name, job_id = %job_id, hook = %run.name,
                    "hook failed: {}", run.message);
            }
        }
    });
}

/// herdctl's hook context: what the job was, how it ended, and the agent's metadata file if it has one.
fn hook_context(agent: &AgentConfig, job: &Job, event: HookEvent) -> Value {
    let mut context = json!({
        "event": event.as_str(),
        "job": {
            "id": job.id.as_str(),
            "agentId": job.agent,
            "scheduleName": job.schedule,
            "startedAt": job.started_at,
            "completedAt": job.finished_at,
            "durationMs": job.duration_ms,
        },
        "result": {
            "success": job.status == JobStatus::Completed,
            "output": job.summary.clone().unwrap_or_default(),
            "error": job.error.as_ref().map(|e| e.message.clone()),
        },
        "agent": {
            "id": agent.name,
            "name": agent.identity.as_ref().and_then(|i| i.name.clone()).unwrap_or_else(|| agent.name.clone()),
        },
    });
    if let Some(metadata) = read_metadata(agent) {
        context["metadata"] = metadata;
    }
    context
}

/// The agent's `metadata_file` (default `metadata.json` in its working directory), if it holds a JSON object.
fn read_metadata(agent: &AgentConfig) -> Option<Value> {
    let path = agent.metadata_file.as_ref().map_or_else(
        || agent.working_directory.join("metadata.json"),
        |file| {
            let file = PathBuf::from(file);
            if file.is_absolute() {
                file
            } else {
                agent.working_directory.join(file)
            }
        },
    );
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str::<Value>(&text)
        .ok()
        .filter(Value::is_object)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::fleet::{
        EventItem, FleetError, FleetEvent, FleetManager, FleetManagerOptions, SkipReason,
    };
    use crate::job::{JobStatus, TriggerType};
    use crate::scheduler::ManualClock;
    use crate::work_sources::fake_github::{self, FakeGitHub};

    const DEADLINE: Duration = Duration::from_secs(20);

    /// A fleet with one agent whose hourly schedule takes GitHub issues from `api` and whose
    /// `after_run` hook saves its context. The token comes from the fleet's `.env`.
    fn fleet(api: &str, with_token: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("herdctl.yaml"),
            "version: 1\nagents:\n  - path: worker.yaml\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("worker.yaml"),
            format!(
                r#"name: worker
runtime: command
command: [sh, -c, 'printf "%s\n" "$HERDCTL_PROMPT"; echo "{{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"fixed\"}}"']
hooks:
  after_run:
    - type: shell
      command: cat > hook-context.json
schedules:
  issues:
    type: interval
    interval: 1h
    prompt: Fix the issue below.
    work_source:
      type: github
      repo: octo/widgets
      api_base_url: {api}
      auth: {{token_env: HERDCTL_TEST_FAKE_GITHUB_TOKEN}}
"#
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("metadata.json"), r#"{"owner": "ops"}"#).unwrap();
        if with_token {
            std::fs::write(
                dir.path().join(".env"),
                format!("HERDCTL_TEST_FAKE_GITHUB_TOKEN={}\n", fake_github::TOKEN),
            )
            .unwrap();
        }
        dir
    }

    fn manager(dir: &tempfile::TempDir) -> FleetManager {
        FleetManager::new(FleetManagerOptions {
            config_path: Some(dir.path().join("herdctl.yaml")),
            state_dir: Some(dir.path().join("state")),
            clock: Arc::new(ManualClock::new("2026-03-02T08:00:00Z".parse().unwrap())),
            ..FleetManagerOptions::default()
        })
    }

    async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !condition() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_scheduled_run_claims_an_issue_works_on_it_and_closes_it() {
        let github = FakeGitHub::start().await;
        let older = github.add_issue("Broken build", &["ready"], 30);
        let newer = github.add_issue("Typo in docs", &["ready"], 10);
        let dir = fleet(&github.base_url(), true);
        let fleet = manager(&dir);
        fleet.initialize().await.unwrap();
        let mut events = fleet
            .subscribe_events(Some(vec!["job:completed".into()]))
            .unwrap();
        fleet.start().await.unwrap();

        let job = tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(EventItem::Event(e)) = events.next().await {
                    if let FleetEvent::JobCompleted { job, .. } = e.event {
                        return job;
                    }
                }
            }
        })
        .await
        .expect("the scheduled job completes");
        assert_eq!(job.trigger_type, TriggerType::WorkItem);
        assert_eq!(job.status, JobStatus::Completed);
        let prompt = job.prompt.clone().unwrap();
        assert!(prompt.starts_with("Fix the issue below."), "{prompt}");
        assert!(
            prompt.contains("Broken build"),
            "the oldest issue is taken: {prompt}"
        );
        assert_eq!(job.work_item.as_ref().unwrap()["number"], older);

        eventually("the issue is closed", || {
            github.issue(older).state == "closed"
        })
        .await;
        let labels = github.issue(older).labels;
        assert!(
            !labels.iter().any(|l| l == "agent-working" || l == "ready"),
            "{labels:?}"
        );
        assert_eq!(github.issue(newer).state, "open");
        let hook = dir.path().join("hook-context.json");
        eventually("the after_run hook ran", || {
            std::fs::read_to_string(&hook).is_ok_and(|text| text.ends_with('}'))
        })
        .await;
        let context: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&hook).unwrap()).unwrap();
        assert_eq!(context["event"], "completed");
        assert_eq!(context["job"]["id"], job.id.as_str());
        assert_eq!(
            context["metadata"]["owner"], "ops",
            "the agent's metadata file"
        );
        assert_eq!(context["result"]["output"], "fixed");
        fleet.stop(Default::default()).await.unwrap();
    }

    #[tokio::test]
    async fn no_eligible_issue_skips_the_run_with_no_work() {
        let github = FakeGitHub::start().await;
        github.add_issue("Blocked", &["ready", "agent-working"], 5);
        let dir = fleet(&github.base_url(), true);
        let fleet = manager(&dir);
        fleet.initialize().await.unwrap();
        let mut events = fleet
            .subscribe_events(Some(vec!["schedule:skipped".into(), "job:created".into()]))
            .unwrap();
        fleet.start().await.unwrap();
        let first = tokio::time::timeout(DEADLINE, events.next())
            .await
            .expect("the fire is reported");
        match first {
            Some(EventItem::Event(e)) => match e.event {
                FleetEvent::ScheduleSkipped { reason, .. } => {
                    assert_eq!(reason, SkipReason::NoWork)
                }
                other => panic!("expected a no_work skip, got {other:?}"),
            },
            other => panic!("expected an event, got {other:?}"),
        }
        assert_eq!(fleet.schedule("worker", "issues").await.unwrap().skipped, 1);
        fleet.stop(Default::default()).await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_token_is_a_configuration_error_at_load() {
        let dir = fleet("http://127.0.0.1:9", false);
        let error = manager(&dir).initialize().await.unwrap_err();
        let FleetError::Configuration {
            validation_errors, ..
        } = &error
        else {
            panic!("expected a configuration error, got {error:?}")
        };
        assert_eq!(validation_errors[0].path, "schedules.issues.work_source");
        assert!(
            validation_errors[0]
                .message
                .contains("HERDCTL_TEST_FAKE_GITHUB_TOKEN"),
            "{error}"
        );
    }
}
