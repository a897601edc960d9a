//! Work sources (SPEC §9): where scheduled agents get their work — today GitHub issues.
//!
//! Owns: the [`WorkSource`] contract (fetch eligible items, claim one, report its end), the work-item and
//! report types, the prompt built from an item, and the GitHub adapter over the REST API with its retry
//! policy (rate limits, 5xx, network errors). Secrets are looked up by name through a caller-supplied
//! function and never appear in logs, errors or `Debug` output.
//!
//! Must not: know about the fleet, jobs' lifecycle, the RPC layer or the daemon. The FleetManager decides
//! when to fetch, claim, complete and release; this module only talks to the source.
//!
//! Public API:
//! - [`work_source_for`]`(&WorkSourceConfig, secrets) -> Arc<dyn WorkSource>` — the adapter for a config.
//! - [`WorkSource`]: [`fetch_available`](WorkSource::fetch_available), [`claim`](WorkSource::claim) →
//!   [`ClaimOutcome`], [`complete`](WorkSource::complete), [`release`](WorkSource::release).
//! - [`WorkItem`], [`WorkReport`], [`WorkOutcome`], [`build_prompt`], [`WorkSourceError`].
//! - [`GitHubWorkSource`] and [`RetryPolicy`] for callers (and tests) that tune retries.

mod github;
mod retry;

// A test fake, so it lives in the test tree; this module's and the fleet's unit tests drive the adapter against it.
// Written for the integration tests too, where its items must be `pub`.
#[cfg(test)]
#[allow(unreachable_pub)]
#[path = "../../tests/support/fake_github.rs"]
pub(crate) mod fake_github;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{WorkSourceConfig, WorkSourceKind};

pub use github::GitHubWorkSource;
pub use retry::RetryPolicy;

/// One unit of work: an open issue carrying the ready label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    /// `github-<number>`.
    pub id: String,
    /// `owner/repo` the item belongs to.
    pub repo: String,
    pub number: u64,
    pub title: String,
    /// The issue body; empty when the issue has none.
    pub body: String,
    pub labels: Vec<String>,
    /// The issue's page for humans (`html_url`).
    pub url: String,
    pub created_at: DateTime<Utc>,
}

/// How the job that worked on an item ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkOutcome {
    Success,
    Failure,
    Cancelled,
}

/// What is reported back to the source when a job ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkReport {
    pub job_id: String,
    pub outcome: WorkOutcome,
    /// The job's final result text.
    pub summary: Option<String>,
    /// The job's error message (failures).
    pub error: Option<String>,
}

/// The result of trying to claim an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Ours now; the item as the source shows it after the claim.
    Claimed(WorkItem),
    /// Someone else holds it (it carries the in-progress label or lost its ready label); pick another.
    AlreadyClaimed,
    /// The item no longer exists (deleted or transferred).
    NotFound,
    /// The item was closed since it was fetched.
    Closed,
}

/// A source of work items. Every call may wait for retries (bounded by the source's [`RetryPolicy`]).
#[async_trait]
pub trait WorkSource: Send + Sync + std::fmt::Debug {
    /// Every eligible item, oldest first: open, ready-labelled, not excluded, not in progress.
    async fn fetch_available(&self) -> Result<Vec<WorkItem>, WorkSourceError>;

    /// Takes the item for this daemon: re-reads it, removes its ready mark (only one of racing claimants
    /// can), marks it in progress, and checks that the mark held.
    async fn claim(&self, item: &WorkItem) -> Result<ClaimOutcome, WorkSourceError>;

    /// Reports a finished item: a comment with the report, then the item is closed and unmarked.
    async fn complete(&self, item: &WorkItem, report: &WorkReport) -> Result<(), WorkSourceError>;

    /// Gives an item back after a failed or cancelled job: a comment with the report, the in-progress mark
    /// removed, and the ready mark restored when the source is configured with `cleanup_on_failure`.
    async fn release(&self, item: &WorkItem, report: &WorkReport) -> Result<(), WorkSourceError>;
}

/// Why a work source could not be built or could not do what was asked. Messages name the repository and
/// the fix; none ever contains a token.
#[derive(Debug, thiserror::Error)]
pub enum WorkSourceError {
    #[error(
        "work source for {repo}: no token: set the {token_env} environment variable (or put it in the \
         fleet's .env file) to a GitHub token with the repo scope"
    )]
    MissingToken { repo: String, token_env: String },

    #[error("work source for {repo}: {problem}")]
    InvalidConfig { repo: String, problem: String },

    #[error(
        "GitHub refused the token for {repo} ({status} on {endpoint}{detail}): check the {token_env} env var \
         has the repo scope"
    )]
    Unauthorized {
        repo: String,
        token_env: String,
        status: u16,
        endpoint: String,
        /// `: <GitHub's message>` or empty.
        detail: String,
    },

    #[error(
        "GitHub answered 404 for {endpoint}: check that work_source.repo {repo:?} exists and the token can \
         see it"
    )]
    NotFound { repo: String, endpoint: String },

    #[error("GitHub rejected {endpoint} for {repo} ({status}){detail}")]
    Rejected {
        repo: String,
        status: u16,
        endpoint: String,
        /// `: <GitHub's message>` or empty.
        detail: String,
    },

    #[error(
        "GitHub rate limit hit on {endpoint} for {repo}: it resets in {}s, longer than the {}s herdctld \
         waits; the work is tried again at the next fire",
        wait.as_secs(),
        max_wait.as_secs()
    )]
    RateLimited {
        repo: String,
        endpoint: String,
        wait: std::time::Duration,
        max_wait: std::time::Duration,
    },

    #[error(
        "GitHub {endpoint} for {repo} failed after {attempts} attempt(s), last: {last}; GitHub may be down \
         or unreachable from this host"
    )]
    Unavailable {
        repo: String,
        endpoint: String,
        attempts: u32,
        last: String,
    },

    #[error("GitHub answered {endpoint} for {repo} with a body herdctld cannot read: {problem}")]
    BadResponse {
        repo: String,
        endpoint: String,
        problem: String,
    },
}

/// The adapter for `config`. `secrets` looks a secret up by variable name (the caller consults the process
/// environment first, then the fleet's `.env`); the token is read once, here.
pub fn work_source_for(
    config: &WorkSourceConfig,
    secrets: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn WorkSource>, WorkSourceError> {
    match config.kind {
        WorkSourceKind::Github => {
            let token = secrets(&config.token_env)
                .filter(|token| !token.trim().is_empty())
                .ok_or_else(|| WorkSourceError::MissingToken {
                    repo: config.repo.clone(),
                    token_env: config.token_env.clone(),
                })?;
            let source = GitHubWorkSource::new(config, token, RetryPolicy::default())?;
            Ok(Arc::new(source))
        }
    }
}

/// The prompt for a job working on `item`: the schedule's prompt, then the issue (herdctl's layout).
pub fn build_prompt(schedule_prompt: Option<&str>, item: &WorkItem) -> String {
    let mut prompt = String::new();
    if let Some(schedule_prompt) = schedule_prompt.filter(|p| !p.trim().is_empty()) {
        prompt.push_str(schedule_prompt.trim_end());
        prompt.push_str("\n\n");
    }
    prompt.push_str("## Work Item: ");
    prompt.push_str(&item.title);
    prompt.push_str("\n\n");
    if !item.body.trim().is_empty() {
        prompt.push_str(item.body.trim_end());
        prompt.push_str("\n\n");
    }
    prompt.push_str("- **Source:** github\n");
    prompt.push_str(&format!("- **Repository:** {}\n", item.repo));
    prompt.push_str(&format!("- **Issue:** #{}\n", item.number));
    if !item.labels.is_empty() {
        prompt.push_str(&format!("- **Labels:** {}\n", item.labels.join(", ")));
    }
    prompt.push_str(&format!("- **URL:** {}\n", item.url));
    prompt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> WorkItem {
        WorkItem {
            id: "github-7".into(),
            repo: "octo/widgets".into(),
            number: 7,
            title: "Fix the flux capacitor".into(),
            body: "It leaks.\nBadly.\n".into(),
            labels: vec!["ready".into(), "bug".into()],
            url: "https://github.com/octo/widgets/issues/7".into(),
            created_at: "2024-05-01T10:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn prompt_has_the_schedule_prompt_then_the_issue() {
        let prompt = build_prompt(Some("Work on the next issue.\n"), &item());
        assert_eq!(
            prompt,
            "Work on the next issue.\n\n## Work Item: Fix the flux capacitor\n\nIt leaks.\nBadly.\n\n\
             - **Source:** github\n- **Repository:** octo/widgets\n- **Issue:** #7\n\
             - **Labels:** ready, bug\n- **URL:** https://github.com/octo/widgets/issues/7\n"
        );
    }

    #[test]
    fn prompt_without_schedule_prompt_body_or_labels() {
        let mut bare = item();
        bare.body = String::new();
        bare.labels.clear();
        let prompt = build_prompt(None, &bare);
        assert_eq!(
            prompt,
            "## Work Item: Fix the flux capacitor\n\n- **Source:** github\n- **Repository:** octo/widgets\n\
             - **Issue:** #7\n- **URL:** https://github.com/octo/widgets/issues/7\n"
        );
    }

    #[test]
    fn work_item_round_trips_through_json_for_the_job_record() {
        let value = serde_json::to_value(item()).unwrap();
        assert_eq!(value["id"], "github-7");
        assert_eq!(value["number"], 7);
        let back: WorkItem = serde_json::from_value(value).unwrap();
        assert_eq!(back, item());
    }

    #[test]
    fn missing_or_blank_token_is_a_clear_error() {
        let config = WorkSourceConfig {
            kind: WorkSourceKind::Github,
            repo: "octo/widgets".into(),
            ready_label: "ready".into(),
            in_progress_label: "agent-working".into(),
            exclude_labels: vec![],
            cleanup_on_failure: true,
            token_env: "WIDGETS_TOKEN".into(),
            api_base_url: None,
        };
        for secrets in [
            &(|_: &str| None) as &dyn Fn(&str) -> Option<String>,
            &|_: &str| Some("  ".to_string()),
        ] {
            let err = work_source_for(&config, secrets).unwrap_err();
            assert!(matches!(err, WorkSourceError::MissingToken { .. }));
            assert!(err.to_string().contains("WIDGETS_TOKEN"), "{err}");
        }
        let asked = std::sync::Mutex::new(Vec::new());
        let source = work_source_for(&config, &|name| {
            asked.lock().unwrap().push(name.to_string());
            Some("tok".into())
        })
        .unwrap();
        assert_eq!(*asked.lock().unwrap(), ["WIDGETS_TOKEN"]);
        assert!(format!("{source:?}").contains("octo/widgets"));
    }
}
