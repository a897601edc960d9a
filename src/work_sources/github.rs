//! The GitHub issues work source, over the REST API (`api_base_url` for GitHub Enterprise and tests).
//!
//! Labels are the claim protocol: an open issue with the ready label and neither the in-progress label nor
//! an excluded one is available. Claiming removes ready — GitHub answers 404 to all but the first of
//! racing removals, so exactly one claimant wins — then adds in-progress and re-reads the issue to check
//! the mark held. Label names compare case-insensitively, as GitHub's do.
//!
//! Comments are retried like every request, so a 5xx that GitHub had in fact applied can leave a
//! duplicate comment; that is the price of not losing reports.

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::{Client, Method, StatusCode, Url};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde_json::{json, Value};

use super::retry::{classify, Disposition, RetryPolicy};
use super::{ClaimOutcome, WorkItem, WorkOutcome, WorkReport, WorkSource, WorkSourceError};
use crate::config::WorkSourceConfig;

const DEFAULT_API_BASE_URL: &str = "https://api.github.com";
const API_VERSION: &str = "2022-11-28";
/// GitHub's largest page.
const PER_PAGE: usize = 100;
/// Pages read per fetch: beyond 1,000 ready issues the oldest ones are plenty to choose from.
const MAX_PAGES: u32 = 10;
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Per report field, well under GitHub's 65,536-character comment limit.
const MAX_REPORT_FIELD_CHARS: usize = 20_000;

/// A repository's issues as a work source. Cheap to share behind an `Arc`; the token lives only in the
/// client's (sensitive) default headers.
pub struct GitHubWorkSource {
    client: Client,
    /// The API root, e.g. `https://api.github.com` or `https://ghe.example.com/api/v3`.
    base: Url,
    /// `owner/repo`.
    repo: String,
    owner_name: String,
    repo_name: String,
    ready_label: String,
    in_progress_label: String,
    exclude_labels: Vec<String>,
    cleanup_on_failure: bool,
    /// Named in authentication errors so the operator knows which variable to fix.
    token_env: String,
    retry: RetryPolicy,
}

impl fmt::Debug for GitHubWorkSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubWorkSource")
            .field("base", &self.base.as_str())
            .field("repo", &self.repo)
            .field("ready_label", &self.ready_label)
            .field("in_progress_label", &self.in_progress_label)
            .field("exclude_labels", &self.exclude_labels)
            .field("cleanup_on_failure", &self.cleanup_on_failure)
            .field("token_env", &self.token_env)
            .finish_non_exhaustive()
    }
}

impl GitHubWorkSource {
    /// A source for `config` authenticating with `token` (the value of `config.token_env`).
    pub fn new(
        config: &WorkSourceConfig,
        token: String,
        retry: RetryPolicy,
    ) -> Result<Self, WorkSourceError> {
        let invalid = |problem: String| WorkSourceError::InvalidConfig {
            repo: config.repo.clone(),
            problem,
        };
        let (owner_name, repo_name) = config
            .repo
            .split_once('/')
            .filter(|(owner, repo)| !owner.is_empty() && !repo.is_empty() && !repo.contains('/'))
            .ok_or_else(|| invalid("work_source.repo must be 'owner/repo'".to_string()))?;
        let base_text = config
            .api_base_url
            .as_deref()
            .unwrap_or(DEFAULT_API_BASE_URL);
        let base = Url::parse(base_text)
            .ok()
            .filter(|url| !url.cannot_be_a_base() && matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| {
                invalid(format!(
                    "work_source.api_base_url {base_text:?} is not an http(s) URL"
                ))
            })?;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| {
                invalid(format!(
                    "the token in {} contains characters that cannot be sent in an HTTP header",
                    config.token_env
                ))
            })?;
        authorization.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        headers.insert(
            "x-github-api-version",
            HeaderValue::from_static(API_VERSION),
        );
        headers.insert(AUTHORIZATION, authorization);
        let client = Client::builder()
            .default_headers(headers)
            .user_agent(concat!("herdctld/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|error| invalid(format!("cannot set up the HTTPS client: {error}")))?;
        Ok(GitHubWorkSource {
            client,
            base,
            repo: config.repo.clone(),
            owner_name: owner_name.to_string(),
            repo_name: repo_name.to_string(),
            ready_label: config.ready_label.clone(),
            in_progress_label: config.in_progress_label.clone(),
            exclude_labels: config.exclude_labels.clone(),
            cleanup_on_failure: config.cleanup_on_failure,
            token_env: config.token_env.clone(),
            retry,
        })
    }

    /// `<base>/repos/<owner>/<repo>/<segments…>`, each segment percent-encoded (labels may hold spaces).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // `new` rejected cannot-be-a-base URLs, the only case where `path_segments_mut` fails.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend(["repos", &self.owner_name, &self.repo_name])
                .extend(segments);
        }
        url
    }

    fn issue_url(&self, number: u64, rest: &[&str]) -> Url {
        let number = number.to_string();
        let mut segments = vec!["issues", number.as_str()];
        segments.extend_from_slice(rest);
        self.url(&segments)
    }

    /// One request with retries; the body of a 2xx answer, or the error for anything else.
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, WorkSourceError> {
        let endpoint = format!("{method} {}", url.path());
        let mut attempt = 1;
        loop {
            let mut request = self.client.request(method.clone(), url.clone());
            if let Some(body) = body {
                request = request.json(body);
            }
            let (wait, last) = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    return response
                        .bytes()
                        .await
                        .map(|body| body.to_vec())
                        .map_err(|error| WorkSourceError::BadResponse {
                            repo: self.repo.clone(),
                            endpoint: endpoint.clone(),
                            problem: describe(&error),
                        });
                }
                Ok(response) => {
                    let status = response.status();
                    let disposition =
                        classify(status, response.headers(), SystemTime::now(), &self.retry);
                    let message = github_message(response).await;
                    match disposition {
                        Disposition::Fatal => {
                            return Err(self.refusal(status, endpoint, message));
                        }
                        Disposition::RateLimited(Some(wait))
                            if wait > self.retry.max_rate_limit_wait =>
                        {
                            return Err(WorkSourceError::RateLimited {
                                repo: self.repo.clone(),
                                endpoint,
                                wait,
                                max_wait: self.retry.max_rate_limit_wait,
                            });
                        }
                        Disposition::RateLimited(wait) => {
                            (wait, format!("{status} (rate limited)"))
                        }
                        Disposition::RetryWithBackoff => (None, status.to_string()),
                    }
                }
                Err(error) => (None, describe(&error)),
            };
            if attempt >= self.retry.max_attempts {
                return Err(WorkSourceError::Unavailable {
                    repo: self.repo.clone(),
                    endpoint,
                    attempts: attempt,
                    last,
                });
            }
            let wait = wait.unwrap_or_else(|| self.retry.backoff(attempt));
            tracing::warn!(
                repo = %self.repo,
                endpoint = %endpoint,
                attempt,
                wait_ms = wait.as_millis() as u64,
                "GitHub request failed ({last}); retrying"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    fn refusal(
        &self,
        status: StatusCode,
        endpoint: String,
        message: Option<String>,
    ) -> WorkSourceError {
        let detail = message.map(|m| format!(": {m}")).unwrap_or_default();
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => WorkSourceError::Unauthorized {
                repo: self.repo.clone(),
                token_env: self.token_env.clone(),
                status: status.as_u16(),
                endpoint,
                detail,
            },
            StatusCode::NOT_FOUND => WorkSourceError::NotFound {
                repo: self.repo.clone(),
                endpoint,
            },
            _ => WorkSourceError::Rejected {
                repo: self.repo.clone(),
                status: status.as_u16(),
                endpoint,
                detail,
            },
        }
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<T, WorkSourceError> {
        let endpoint = format!("{method} {}", url.path());
        let bytes = self.call(method, url, body).await?;
        serde_json::from_slice(&bytes).map_err(|error| WorkSourceError::BadResponse {
            repo: self.repo.clone(),
            endpoint,
            problem: error.to_string(),
        })
    }

    async fn get_issue(&self, number: u64) -> Result<ApiIssue, WorkSourceError> {
        self.call_json(Method::GET, self.issue_url(number, &[]), None)
            .await
    }

    async fn add_label(&self, number: u64, label: &str) -> Result<(), WorkSourceError> {
        let body = json!({ "labels": [label] });
        self.call(
            Method::POST,
            self.issue_url(number, &["labels"]),
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// Removes a label: `true` when this call removed it, `false` when it was already gone.
    async fn remove_label(&self, number: u64, label: &str) -> Result<bool, WorkSourceError> {
        match self
            .call(
                Method::DELETE,
                self.issue_url(number, &["labels", label]),
                None,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(WorkSourceError::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Puts the ready label back when a claim removed it but could not mark the issue in progress, so the
    /// issue is not stranded with neither label. Best effort: the claim's own error is what the caller sees.
    async fn restore_ready_after_failed_claim(&self, number: u64) {
        if let Err(error) = self.add_label(number, &self.ready_label).await {
            tracing::warn!(
                repo = %self.repo,
                issue = number,
                "could not restore the {:?} label after a failed claim: {error}",
                self.ready_label
            );
        }
    }

    async fn comment(&self, number: u64, body: String) -> Result<(), WorkSourceError> {
        let body = json!({ "body": body });
        self.call(
            Method::POST,
            self.issue_url(number, &["comments"]),
            Some(&body),
        )
        .await
        .map(drop)
    }

    fn is_available(&self, issue: &ApiIssue) -> bool {
        issue.pull_request.is_none()
            && issue.state == "open"
            && issue.has_label(&self.ready_label)
            && !issue.has_label(&self.in_progress_label)
            && !self
                .exclude_labels
                .iter()
                .any(|label| issue.has_label(label))
    }

    fn work_item(&self, issue: ApiIssue) -> WorkItem {
        WorkItem {
            id: format!("github-{}", issue.number),
            repo: self.repo.clone(),
            number: issue.number,
            title: issue.title,
            body: issue.body.unwrap_or_default(),
            labels: issue.labels.into_iter().map(ApiLabel::into_name).collect(),
            url: issue.html_url,
            created_at: issue.created_at,
        }
    }
}

#[async_trait]
impl WorkSource for GitHubWorkSource {
    async fn fetch_available(&self) -> Result<Vec<WorkItem>, WorkSourceError> {
        let mut items = Vec::new();
        for page in 1..=MAX_PAGES {
            let mut url = self.url(&["issues"]);
            {
                let mut query = url.query_pairs_mut();
                query
                    .append_pair("labels", &self.ready_label)
                    .append_pair("state", "open")
                    .append_pair("sort", "created")
                    .append_pair("direction", "asc")
                    .append_pair("per_page", &PER_PAGE.to_string());
                if page > 1 {
                    query.append_pair("page", &page.to_string());
                }
            }
            let issues: Vec<ApiIssue> = self.call_json(Method::GET, url, None).await?;
            let last_page = issues.len() < PER_PAGE;
            items.extend(
                issues
                    .into_iter()
                    .filter(|issue| self.is_available(issue))
                    .map(|issue| self.work_item(issue)),
            );
            if last_page {
                break;
            }
        }
        items.sort_by_key(|item| (item.created_at, item.number));
        Ok(items)
    }

    async fn claim(&self, item: &WorkItem) -> Result<ClaimOutcome, WorkSourceError> {
        let number = item.number;
        let issue = match self.get_issue(number).await {
            Err(WorkSourceError::NotFound { .. }) => return Ok(ClaimOutcome::NotFound),
            other => other?,
        };
        if issue.state != "open" {
            return Ok(ClaimOutcome::Closed);
        }
        if issue.has_label(&self.in_progress_label) || !issue.has_label(&self.ready_label) {
            return Ok(ClaimOutcome::AlreadyClaimed);
        }
        // Removing the ready label is the test-and-set: of claimants racing past the check above, only one
        // removes it; the others get 404 and back off without having changed anything.
        if !self.remove_label(number, &self.ready_label).await? {
            return Ok(ClaimOutcome::AlreadyClaimed);
        }
        if let Err(error) = self.add_label(number, &self.in_progress_label).await {
            if !matches!(error, WorkSourceError::NotFound { .. }) {
                self.restore_ready_after_failed_claim(number).await;
                return Err(error);
            }
            return Ok(ClaimOutcome::NotFound);
        }
        // Re-read: if our mark did not hold (someone re-labelled the issue meanwhile), it is not ours.
        let claimed = match self.get_issue(number).await {
            Err(WorkSourceError::NotFound { .. }) => return Ok(ClaimOutcome::NotFound),
            other => other?,
        };
        if claimed.state != "open" {
            return Ok(ClaimOutcome::Closed);
        }
        if !claimed.has_label(&self.in_progress_label) {
            return Ok(ClaimOutcome::AlreadyClaimed);
        }
        Ok(ClaimOutcome::Claimed(self.work_item(claimed)))
    }

    async fn complete(&self, item: &WorkItem, report: &WorkReport) -> Result<(), WorkSourceError> {
        self.comment(item.number, completion_comment(report))
            .await?;
        if report.outcome == WorkOutcome::Success {
            let close = json!({ "state": "closed", "state_reason": "completed" });
            self.call(
                Method::PATCH,
                self.issue_url(item.number, &[]),
                Some(&close),
            )
            .await?;
        }
        self.remove_label(item.number, &self.in_progress_label)
            .await
            .map(drop)
    }

    async fn release(&self, item: &WorkItem, report: &WorkReport) -> Result<(), WorkSourceError> {
        let restored = self.cleanup_on_failure.then_some(self.ready_label.as_str());
        self.comment(item.number, release_comment(report, restored))
            .await?;
        self.remove_label(item.number, &self.in_progress_label)
            .await?;
        if let Some(ready) = restored {
            self.add_label(item.number, ready).await?;
        }
        Ok(())
    }
}

/// The comment left on an item its job finished.
fn completion_comment(report: &WorkReport) -> String {
    let (heading, verb) = match report.outcome {
        WorkOutcome::Success => ("## ✅ Work Completed", "completed"),
        WorkOutcome::Failure => ("## ❌ Work Failed", "failed"),
        WorkOutcome::Cancelled => ("## ⏸️ Work Cancelled", "was cancelled"),
    };
    let mut text = format!("{heading}\n\nherdctld job `{}` {verb}.\n", report.job_id);
    push_section(&mut text, "Summary", report.summary.as_deref());
    push_section(&mut text, "Error", report.error.as_deref());
    text
}

/// The comment left on an item given back after a failed or cancelled job.
fn release_comment(report: &WorkReport, restored_label: Option<&str>) -> String {
    let what = match report.outcome {
        WorkOutcome::Cancelled => "was cancelled",
        WorkOutcome::Failure | WorkOutcome::Success => "did not finish this issue",
    };
    let mut text = format!(
        "## ⏸️ Work Released\n\nherdctld job `{}` {what}.\n",
        report.job_id
    );
    push_section(&mut text, "Error", report.error.as_deref());
    push_section(&mut text, "Summary", report.summary.as_deref());
    text.push('\n');
    match restored_label {
        Some(label) => {
            text.push_str(&format!(
                "The `{label}` label is restored, so the issue will be picked up again.\n"
            ));
        }
        None => text.push_str(
            "The issue is left without its ready label for a human to look at (cleanup_on_failure is off).\n",
        ),
    }
    text
}

fn push_section(text: &mut String, title: &str, content: Option<&str>) {
    let Some(content) = content.map(str::trim).filter(|c| !c.is_empty()) else {
        return;
    };
    text.push_str(&format!("\n### {title}\n\n"));
    match content.char_indices().nth(MAX_REPORT_FIELD_CHARS) {
        Some((cut, _)) => {
            text.push_str(&content[..cut]);
            text.push_str("\n\n… (truncated)\n");
        }
        None => {
            text.push_str(content);
            text.push('\n');
        }
    }
}

/// GitHub's `message` from an error body, shortened; `None` when there is none.
async fn github_message(response: reqwest::Response) -> Option<String> {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: String,
    }
    let bytes = response.bytes().await.ok()?;
    let body: ErrorBody = serde_json::from_slice(&bytes).ok()?;
    let message: String = body.message.chars().take(300).collect();
    Some(message)
}

/// A reqwest error with its causes ("error sending request: connection refused"); the URL is left out
/// because the caller already names the endpoint.
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_string()
    } else {
        error.to_string()
    };
    if let Some(url) = error.url() {
        text = text
            .replace(&format!(" for url ({url})"), "")
            .replace(url.as_str(), "");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The fields of GitHub's issue object this source reads.
#[derive(Deserialize)]
struct ApiIssue {
    number: u64,
    title: String,
    body: Option<String>,
    state: String,
    #[serde(default)]
    labels: Vec<ApiLabel>,
    html_url: String,
    created_at: DateTime<Utc>,
    /// Present only on pull requests, which the issues endpoint lists too.
    pull_request: Option<IgnoredAny>,
}

impl ApiIssue {
    fn has_label(&self, wanted: &str) -> bool {
        self.labels
            .iter()
            .any(|label| label.name().eq_ignore_ascii_case(wanted))
    }
}

/// GitHub sends label objects; a bare name is accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum ApiLabel {
    Object { name: String },
    Name(String),
}

impl ApiLabel {
    fn name(&self) -> &str {
        match self {
            ApiLabel::Object { name } | ApiLabel::Name(name) => name,
        }
    }

    fn into_name(self) -> String {
        match self {
            ApiLabel::Object { name } | ApiLabel::Name(name) => name,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::config::WorkSourceKind;
    use crate::work_sources::fake_github::{FakeGitHub, OWNER_REPO, TOKEN};

    const ISSUES: &str = "/repos/octo/widgets/issues";
    const LIST: &str = "GET /repos/octo/widgets/issues?labels=ready&state=open&sort=created&direction=asc&per_page=100";

    fn config(fake: &FakeGitHub) -> WorkSourceConfig {
        WorkSourceConfig {
            kind: WorkSourceKind::Github,
            repo: OWNER_REPO.to_string(),
            ready_label: "ready".to_string(),
            in_progress_label: "agent-working".to_string(),
            exclude_labels: vec!["blocked".to_string()],
            cleanup_on_failure: true,
            token_env: "GITHUB_TOKEN".to_string(),
            api_base_url: Some(fake.base_url()),
        }
    }

    fn fast_retries() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            max_rate_limit_wait: Duration::from_secs(5),
            reset_margin: Duration::ZERO,
        }
    }

    fn source(fake: &FakeGitHub) -> GitHubWorkSource {
        GitHubWorkSource::new(&config(fake), TOKEN.to_string(), fast_retries()).unwrap()
    }

    fn report(outcome: WorkOutcome) -> WorkReport {
        WorkReport {
            job_id: "job-2024-06-01-abc123".to_string(),
            outcome,
            summary: Some("Fixed the leak.".to_string()),
            error: (outcome != WorkOutcome::Success).then(|| "exit code 1".to_string()),
        }
    }

    /// Asserts that no error text and no Debug output ever carries the token.
    fn assert_no_token(error: &WorkSourceError) {
        for text in [error.to_string(), format!("{error:?}")] {
            assert!(!text.contains(TOKEN), "token leaked: {text}");
            assert!(!text.contains("FAKE_SECRET"), "token leaked: {text}");
        }
    }

    #[tokio::test]
    async fn whole_cycle_fetch_claim_complete() {
        let fake = FakeGitHub::start().await;
        let newer = fake.add_issue("Newer", &["ready"], 10);
        let oldest = fake.add_issue("Oldest", &["ready", "bug"], 60);
        fake.add_issue("Unlabelled", &[], 120);
        let closed = fake.add_issue("Closed", &["ready"], 90);
        fake.state().issues.get_mut(&closed).unwrap().state = "closed".into();
        let source = source(&fake);

        let items = source.fetch_available().await.unwrap();
        let numbers: Vec<u64> = items.iter().map(|i| i.number).collect();
        assert_eq!(numbers, [oldest, newer]);
        let item = &items[0];
        assert_eq!(item.id, format!("github-{oldest}"));
        assert_eq!(item.title, "Oldest");
        assert_eq!(item.body, "Body of Oldest");
        assert_eq!(item.labels, ["ready", "bug"]);
        assert_eq!(item.repo, OWNER_REPO);
        assert_eq!(
            item.url,
            format!("https://github.com/octo/widgets/issues/{oldest}")
        );

        let ClaimOutcome::Claimed(claimed) = source.claim(item).await.unwrap() else {
            panic!("claim failed");
        };
        assert_eq!(claimed.labels, ["bug", "agent-working"]);
        assert_eq!(fake.issue(oldest).labels, ["bug", "agent-working"]);
        assert!(source
            .fetch_available()
            .await
            .unwrap()
            .iter()
            .all(|i| i.number != oldest));

        source
            .complete(&claimed, &report(WorkOutcome::Success))
            .await
            .unwrap();
        let issue = fake.issue(oldest);
        assert_eq!(issue.state, "closed");
        assert_eq!(issue.state_reason.as_deref(), Some("completed"));
        assert_eq!(issue.labels, ["bug"]);
        let comments = fake.state().comments.clone();
        assert_eq!(comments.len(), 1);
        assert_eq!(comments[0].0, oldest);
        assert!(
            comments[0].1.starts_with("## ✅ Work Completed"),
            "{}",
            comments[0].1
        );
        assert!(comments[0].1.contains("job-2024-06-01-abc123"));
        assert!(comments[0].1.contains("Fixed the leak."));

        let issue_path = format!("{ISSUES}/{oldest}");
        assert_eq!(
            fake.request_lines(),
            [
                LIST.to_string(),
                format!("GET {issue_path}"),
                format!("DELETE {issue_path}/labels/ready"),
                format!("POST {issue_path}/labels"),
                format!("GET {issue_path}"),
                LIST.to_string(),
                format!("POST {issue_path}/comments"),
                format!("PATCH {issue_path}"),
                format!("DELETE {issue_path}/labels/agent-working"),
            ]
        );
        let requests = fake.requests();
        let bodies: Vec<Value> = requests
            .iter()
            .filter(|r| r.method == "POST" || r.method == "PATCH")
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect();
        assert_eq!(bodies[0], json!({"labels": ["agent-working"]}));
        assert_eq!(
            bodies[2],
            json!({"state": "closed", "state_reason": "completed"})
        );
        for request in &requests {
            assert_eq!(request.headers["accept"], "application/vnd.github+json");
            assert_eq!(request.headers["x-github-api-version"], "2022-11-28");
            assert_eq!(request.headers["authorization"], format!("Bearer {TOKEN}"));
            assert!(request.headers["user-agent"].starts_with("herdctld/"));
        }
    }

    #[tokio::test]
    async fn no_eligible_issue_gives_an_empty_list() {
        let fake = FakeGitHub::start().await;
        fake.add_issue("Not ready", &["bug"], 5);
        let items = source(&fake).fetch_available().await.unwrap();
        assert!(items.is_empty());
        assert_eq!(fake.request_lines(), [LIST]);
    }

    #[tokio::test]
    async fn excluded_claimed_and_pull_requests_are_skipped() {
        let fake = FakeGitHub::start().await;
        fake.add_issue("Blocked", &["ready", "Blocked"], 50);
        fake.add_issue("Taken", &["ready", "Agent-Working"], 40);
        let pull = fake.add_issue("A pull request", &["ready"], 30);
        fake.state().issues.get_mut(&pull).unwrap().pull_request = true;
        let wanted = fake.add_issue("Wanted", &["READY"], 20);
        let items = source(&fake).fetch_available().await.unwrap();
        let numbers: Vec<u64> = items.iter().map(|i| i.number).collect();
        assert_eq!(numbers, [wanted]);
    }

    #[tokio::test]
    async fn fetch_reads_further_pages_when_a_full_page_is_all_ineligible() {
        let fake = FakeGitHub::start().await;
        for age in 0..PER_PAGE as i64 {
            fake.add_issue("Blocked", &["ready", "blocked"], 1_000 - age);
        }
        let wanted = fake.add_issue("Wanted", &["ready"], 1);
        let items = source(&fake).fetch_available().await.unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].number, wanted);
        assert_eq!(
            fake.request_lines(),
            [LIST.to_string(), format!("{LIST}&page=2")]
        );
    }

    #[tokio::test]
    async fn claim_loses_to_a_claimant_that_labelled_the_issue_first() {
        let fake = FakeGitHub::start().await;
        let number = fake.add_issue("Contested", &["ready"], 5);
        let source = source(&fake);
        let items = source.fetch_available().await.unwrap();
        fake.state()
            .issues
            .get_mut(&number)
            .unwrap()
            .labels
            .push("agent-working".into());

        let outcome = source.claim(&items[0]).await.unwrap();
        assert_eq!(outcome, ClaimOutcome::AlreadyClaimed);
        assert_eq!(
            fake.request_lines(),
            [LIST.to_string(), format!("GET {ISSUES}/{number}")]
        );
        assert_eq!(fake.issue(number).labels, ["ready", "agent-working"]);
    }

    #[tokio::test]
    async fn of_concurrent_claimants_exactly_one_wins() {
        let fake = FakeGitHub::start().await;
        let first = source(&fake);
        let second = source(&fake);
        for round in 0..10 {
            let number = fake.add_issue("Contested", &["ready"], round);
            let item = first
                .fetch_available()
                .await
                .unwrap()
                .into_iter()
                .find(|item| item.number == number)
                .unwrap();
            let (a, b) = tokio::join!(first.claim(&item), second.claim(&item));
            let outcomes = [a.unwrap(), b.unwrap()];
            let won = outcomes
                .iter()
                .filter(|o| matches!(o, ClaimOutcome::Claimed(_)))
                .count();
            assert_eq!(won, 1, "round {round}: {outcomes:?}");
            assert!(
                outcomes.contains(&ClaimOutcome::AlreadyClaimed),
                "{outcomes:?}"
            );
            assert_eq!(fake.issue(number).labels, ["agent-working"]);
        }
    }

    #[tokio::test]
    async fn claim_backs_off_when_the_ready_label_is_already_gone() {
        let fake = FakeGitHub::start().await;
        let number = fake.add_issue("Contested", &["ready"], 5);
        let source = source(&fake);
        let items = source.fetch_available().await.unwrap();
        // Another claimant removes the ready label between our read and our removal.
        let delete_ready = format!("DELETE {ISSUES}/{number}/labels/ready");
        fake.inject(&delete_ready, 404, &[], 1);
        assert_eq!(
            source.claim(&items[0]).await.unwrap(),
            ClaimOutcome::AlreadyClaimed
        );
        assert_eq!(
            fake.request_lines(),
            [
                LIST.to_string(),
                format!("GET {ISSUES}/{number}"),
                delete_ready
            ]
        );
    }

    #[tokio::test]
    async fn failed_claim_puts_the_ready_label_back() {
        let fake = FakeGitHub::start().await;
        let number = fake.add_issue("Unlucky", &["ready"], 5);
        let source = source(&fake);
        let items = source.fetch_available().await.unwrap();
        fake.inject(&format!("POST {ISSUES}/{number}/labels"), 422, &[], 1);
        let error = source.claim(&items[0]).await.unwrap_err();
        assert!(
            matches!(error, WorkSourceError::Rejected { status: 422, .. }),
            "{error:?}"
        );
        assert_eq!(fake.issue(number).labels, ["ready"]);
        assert_eq!(source.fetch_available().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn claim_reports_closed_and_vanished_issues() {
        let fake = FakeGitHub::start().await;
        let closed = fake.add_issue("Closed meanwhile", &["ready"], 5);
        let gone = fake.add_issue("Deleted meanwhile", &["ready"], 4);
        let source = source(&fake);
        let items = source.fetch_available().await.unwrap();
        fake.state().issues.get_mut(&closed).unwrap().state = "closed".into();
        fake.state().issues.remove(&gone);
        assert_eq!(source.claim(&items[0]).await.unwrap(), ClaimOutcome::Closed);
        assert_eq!(
            source.claim(&items[1]).await.unwrap(),
            ClaimOutcome::NotFound
        );
        assert_eq!(fake.issue(closed).labels, ["ready"]);
    }

    #[tokio::test]
    async fn claim_detects_a_mark_removed_between_labelling_and_rereading() {
        let fake = FakeGitHub::start().await;
        let number = fake.add_issue("Raced", &["ready"], 5);
        let source = source(&fake);
        let items = source.fetch_available().await.unwrap();
        // The label POST is answered but our mark does not hold (as when another claimant's release removes it
        // before the re-read).
        fake.inject(&format!("POST {ISSUES}/{number}/labels"), 200, &[], 1);
        let outcome = source.claim(&items[0]).await.unwrap();
        assert_eq!(outcome, ClaimOutcome::AlreadyClaimed);
    }

    #[tokio::test]
    async fn rate_limit_waits_until_the_reset_then_succeeds() {
        let fake = FakeGitHub::start().await;
        fake.add_issue("Ready", &["ready"], 5);
        let reset = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 1;
        fake.inject(
            "",
            403,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset.to_string()),
            ],
            1,
        );
        let items = source(&fake).fetch_available().await.unwrap();
        assert_eq!(items.len(), 1);
        let requests = fake.requests();
        assert_eq!(requests.len(), 2);
        let retried_at = requests[1].at.duration_since(UNIX_EPOCH).unwrap();
        assert!(
            retried_at >= Duration::from_secs(reset),
            "retried at {retried_at:?}, before the reset at {reset}s"
        );
    }

    #[tokio::test]
    async fn rate_limit_honours_retry_after() {
        let fake = FakeGitHub::start().await;
        fake.inject("", 429, &[("retry-after", "1")], 1);
        let items = source(&fake).fetch_available().await.unwrap();
        assert!(items.is_empty());
        let requests = fake.requests();
        assert_eq!(requests.len(), 2);
        let waited = requests[1].at.duration_since(requests[0].at).unwrap();
        assert!(waited >= Duration::from_millis(990), "waited {waited:?}");
    }

    #[tokio::test]
    async fn rate_limit_resetting_too_late_fails_at_once() {
        let fake = FakeGitHub::start().await;
        let reset = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3_600;
        fake.inject(
            "",
            403,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset.to_string()),
            ],
            1,
        );
        let error = source(&fake).fetch_available().await.unwrap_err();
        assert!(
            matches!(error, WorkSourceError::RateLimited { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("rate limit"), "{error}");
        assert_eq!(fake.requests().len(), 1);
        assert_no_token(&error);
    }

    #[tokio::test]
    async fn server_errors_are_retried_then_succeed() {
        let fake = FakeGitHub::start().await;
        fake.add_issue("Ready", &["ready"], 5);
        fake.inject("", 502, &[], 1);
        fake.inject("", 503, &[], 1);
        let items = source(&fake).fetch_available().await.unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(fake.request_lines(), [LIST, LIST, LIST]);
    }

    #[tokio::test]
    async fn server_errors_give_up_after_the_attempt_limit() {
        let fake = FakeGitHub::start().await;
        fake.inject("", 500, &[], 10);
        let error = source(&fake).fetch_available().await.unwrap_err();
        assert!(
            matches!(error, WorkSourceError::Unavailable { attempts: 3, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("500"), "{error}");
        assert_eq!(fake.requests().len(), 3);
        assert_no_token(&error);
    }

    #[tokio::test]
    async fn network_errors_are_retried_and_reported_without_the_token() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut config = config(&FakeGitHub::start().await);
        config.api_base_url = Some(format!("http://{addr}"));
        let source = GitHubWorkSource::new(&config, TOKEN.into(), fast_retries()).unwrap();
        let error = source.fetch_available().await.unwrap_err();
        assert!(
            matches!(error, WorkSourceError::Unavailable { attempts: 3, .. }),
            "{error:?}"
        );
        assert_no_token(&error);
    }

    #[tokio::test]
    async fn unauthorized_is_not_retried_and_names_the_variable() {
        let fake = FakeGitHub::start().await;
        let source =
            GitHubWorkSource::new(&config(&fake), "ghp_wrong".into(), fast_retries()).unwrap();
        let error = source.fetch_available().await.unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("GitHub refused the token for octo/widgets"),
            "{text}"
        );
        assert!(
            text.contains("check the GITHUB_TOKEN env var has the repo scope"),
            "{text}"
        );
        assert!(text.contains("Bad credentials"), "{text}");
        assert!(!text.contains("ghp_wrong"), "{text}");
        assert_eq!(fake.requests().len(), 1);

        fake.inject("", 403, &[("x-ratelimit-remaining", "4999")], 1);
        let error = self::source(&fake).fetch_available().await.unwrap_err();
        assert!(
            matches!(error, WorkSourceError::Unauthorized { status: 403, .. }),
            "{error:?}"
        );
        assert_no_token(&error);
    }

    #[tokio::test]
    async fn not_found_and_unprocessable_are_not_retried() {
        let fake = FakeGitHub::start().await;
        let mut wrong_repo = config(&fake);
        wrong_repo.repo = "octo/nothing".into();
        let source = GitHubWorkSource::new(&wrong_repo, TOKEN.into(), fast_retries()).unwrap();
        let error = source.fetch_available().await.unwrap_err();
        assert!(
            matches!(error, WorkSourceError::NotFound { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("\"octo/nothing\""), "{error}");
        assert_eq!(fake.requests().len(), 1);
        assert_no_token(&error);

        fake.inject("", 422, &[], 1);
        let error = self::source(&fake).fetch_available().await.unwrap_err();
        assert!(
            matches!(error, WorkSourceError::Rejected { status: 422, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("injected 422"), "{error}");
        assert_eq!(fake.requests().len(), 2);
    }

    #[tokio::test]
    async fn release_restores_the_ready_label_when_cleanup_on_failure() {
        let fake = FakeGitHub::start().await;
        let number = fake.add_issue("Flaky", &["ready", "bug"], 5);
        let source = source(&fake);
        let items = source.fetch_available().await.unwrap();
        let ClaimOutcome::Claimed(item) = source.claim(&items[0]).await.unwrap() else {
            panic!("claim failed");
        };
        let before = fake.requests().len();
        source
            .release(&item, &report(WorkOutcome::Failure))
            .await
            .unwrap();
        let issue_path = format!("{ISSUES}/{number}");
        assert_eq!(
            fake.request_lines()[before..],
            [
                format!("POST {issue_path}/comments"),
                format!("DELETE {issue_path}/labels/agent-working"),
                format!("POST {issue_path}/labels"),
            ]
        );
        let issue = fake.issue(number);
        assert_eq!(issue.state, "open");
        assert_eq!(issue.labels, ["bug", "ready"]);
        let comment = fake.state().comments[0].1.clone();
        assert!(comment.starts_with("## ⏸️ Work Released"), "{comment}");
        assert!(comment.contains("exit code 1"), "{comment}");
        assert!(comment.contains("`ready` label is restored"), "{comment}");
        assert_eq!(source.fetch_available().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn release_leaves_labels_alone_without_cleanup_on_failure() {
        let fake = FakeGitHub::start().await;
        let number = fake.add_issue("Flaky", &["ready"], 5);
        let mut config = config(&fake);
        config.cleanup_on_failure = false;
        let source = GitHubWorkSource::new(&config, TOKEN.into(), fast_retries()).unwrap();
        let items = source.fetch_available().await.unwrap();
        let ClaimOutcome::Claimed(item) = source.claim(&items[0]).await.unwrap() else {
            panic!("claim failed");
        };
        let before = fake.requests().len();
        source
            .release(&item, &report(WorkOutcome::Cancelled))
            .await
            .unwrap();
        let issue_path = format!("{ISSUES}/{number}");
        assert_eq!(
            fake.request_lines()[before..],
            [
                format!("POST {issue_path}/comments"),
                format!("DELETE {issue_path}/labels/agent-working"),
            ]
        );
        assert!(fake.issue(number).labels.is_empty());
        assert!(fake.state().comments[0].1.contains("was cancelled"));
        assert!(source.fetch_available().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn labels_with_spaces_are_encoded_in_paths_and_queries() {
        let fake = FakeGitHub::start().await;
        let number = fake.add_issue("Spaced", &["ready for agent"], 5);
        let mut config = config(&fake);
        config.ready_label = "ready for agent".into();
        config.in_progress_label = "agent: working".into();
        let source = GitHubWorkSource::new(&config, TOKEN.into(), fast_retries()).unwrap();
        let items = source.fetch_available().await.unwrap();
        assert_eq!(items.len(), 1);
        assert!(matches!(
            source.claim(&items[0]).await.unwrap(),
            ClaimOutcome::Claimed(_)
        ));
        assert_eq!(fake.issue(number).labels, ["agent: working"]);
    }

    #[tokio::test]
    async fn debug_output_never_shows_the_token() {
        let fake = FakeGitHub::start().await;
        let source = source(&fake);
        let debug = format!("{source:?}");
        assert!(debug.contains("octo/widgets"), "{debug}");
        assert!(!debug.contains(TOKEN), "{debug}");
        let bad = GitHubWorkSource::new(&config(&fake), format!("{TOKEN}\n\u{7}"), fast_retries())
            .unwrap_err();
        assert!(
            matches!(bad, WorkSourceError::InvalidConfig { .. }),
            "{bad:?}"
        );
        assert_no_token(&bad);
    }
}
