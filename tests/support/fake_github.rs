//! A fake of the GitHub REST API's issue endpoints on 127.0.0.1, for the work source's and the follow-up's unit
//! tests (the library includes it under `cfg(test)`): in-memory issues, labels and comments, a log of every
//! request, and injectable failure answers.

#[path = "http_fake.rs"]
mod http_fake;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Duration, Utc};
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};

pub use http_fake::Recorded;
use http_fake::{Answer, HttpFake};

pub const OWNER_REPO: &str = "octo/widgets";
pub const TOKEN: &str = "ghp_FAKE_SECRET_9f8e7d";

pub struct FakeGitHub {
    http: HttpFake,
    state: Arc<Mutex<FakeState>>,
}

#[derive(Default)]
pub struct FakeState {
    pub issues: BTreeMap<u64, FakeIssue>,
    /// `(issue number, body)` in posting order.
    pub comments: Vec<(u64, String)>,
    injected: VecDeque<Injected>,
}

#[derive(Clone, Debug)]
pub struct FakeIssue {
    pub title: String,
    pub body: Option<String>,
    pub labels: Vec<String>,
    pub state: String,
    pub state_reason: Option<String>,
    pub pull_request: bool,
    pub created_at: DateTime<Utc>,
}

impl Recorded {
    /// `METHOD target`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.target)
    }
}

/// An answer given instead of the normal one to the first request whose `METHOD target` starts with
/// `matching` (empty = any request).
pub struct Injected {
    pub matching: String,
    pub answer: Answer,
}

impl FakeGitHub {
    pub async fn start() -> FakeGitHub {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let shared = Arc::clone(&state);
        let http = HttpFake::start(move |request| respond(&shared, request))
            .await
            .unwrap();
        FakeGitHub { http, state }
    }

    pub fn base_url(&self) -> String {
        self.http.base_url().to_owned()
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Adds an issue created `age_minutes` before a fixed instant (larger = older); returns its number.
    pub fn add_issue(&self, title: &str, labels: &[&str], age_minutes: i64) -> u64 {
        let mut state = self.state();
        let number = state.issues.len() as u64 + 1;
        let epoch: DateTime<Utc> = "2024-06-01T12:00:00Z".parse().unwrap();
        state.issues.insert(
            number,
            FakeIssue {
                title: title.to_string(),
                body: Some(format!("Body of {title}")),
                labels: labels.iter().map(|l| l.to_string()).collect(),
                state: "open".to_string(),
                state_reason: None,
                pull_request: false,
                created_at: epoch - Duration::minutes(age_minutes),
            },
        );
        number
    }

    pub fn issue(&self, number: u64) -> FakeIssue {
        self.state().issues[&number].clone()
    }

    pub fn inject(&self, matching: &str, status: u16, headers: &[(&str, &str)], times: usize) {
        let mut state = self.state();
        for _ in 0..times {
            let mut answer =
                Answer::json(status, &json!({ "message": format!("injected {status}") }));
            answer
                .headers
                .extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
            state.injected.push_back(Injected {
                matching: matching.to_string(),
                answer,
            });
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.http.requests()
    }

    /// Every request as `METHOD target`.
    pub fn request_lines(&self) -> Vec<String> {
        self.requests().iter().map(Recorded::line).collect()
    }
}

fn respond(state: &Mutex<FakeState>, request: &Recorded) -> Answer {
    let mut state = state.lock().unwrap();
    let line = request.line();
    if let Some(index) = state
        .injected
        .iter()
        .position(|i| line.starts_with(&i.matching))
    {
        return state.injected.remove(index).unwrap().answer;
    }
    if request.headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}"))
    {
        return error(401, "Bad credentials");
    }
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    let segments: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let repo_prefix: Vec<&str> = ["repos"].into_iter().chain(OWNER_REPO.split('/')).collect();
    if segments.len() < 4 || segments[..3] != repo_prefix[..] || segments[3] != "issues" {
        return error(404, "Not Found");
    }
    let body: Value = serde_json::from_str(&request.body).unwrap_or(Value::Null);
    let method = request.method.as_str();
    match (method, &segments[4..]) {
        ("GET", []) => list_issues(&state, query),
        (_, [number, rest @ ..]) => {
            let Ok(number) = number.parse::<u64>() else {
                return error(404, "Not Found");
            };
            let FakeState {
                issues, comments, ..
            } = &mut *state;
            let Some(issue) = issues.get_mut(&number) else {
                return error(404, "Not Found");
            };
            match (method, rest) {
                ("GET", []) => Answer::json(200, &issue_json(number, issue)),
                ("PATCH", []) => {
                    if let Some(new_state) = body["state"].as_str() {
                        issue.state = new_state.to_string();
                    }
                    issue.state_reason = body["state_reason"].as_str().map(str::to_string);
                    Answer::json(200, &issue_json(number, issue))
                }
                ("POST", ["labels"]) => {
                    for label in body["labels"].as_array().into_iter().flatten() {
                        let label = label.as_str().unwrap_or_default().to_string();
                        if !issue.labels.iter().any(|l| l.eq_ignore_ascii_case(&label)) {
                            issue.labels.push(label);
                        }
                    }
                    Answer::json(200, &labels_json(issue))
                }
                ("DELETE", ["labels", name]) => {
                    let before = issue.labels.len();
                    issue.labels.retain(|l| !l.eq_ignore_ascii_case(name));
                    if issue.labels.len() == before {
                        error(404, "Label does not exist")
                    } else {
                        Answer::json(200, &labels_json(issue))
                    }
                }
                ("POST", ["comments"]) => {
                    comments.push((
                        number,
                        body["body"].as_str().unwrap_or_default().to_string(),
                    ));
                    Answer::json(201, &json!({ "id": comments.len(), "body": body["body"] }))
                }
                _ => error(404, "Not Found"),
            }
        }
        _ => error(404, "Not Found"),
    }
}

fn list_issues(state: &FakeState, query: &str) -> Answer {
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode_query(k), decode_query(v)))
        .collect();
    let wanted: Vec<&str> = params
        .get("labels")
        .map(|l| l.split(',').collect())
        .unwrap_or_default();
    let open_only = params.get("state").map(String::as_str) != Some("all");
    let per_page: usize = params
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(30);
    let page: usize = params.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let mut matching: Vec<(u64, &FakeIssue)> = state
        .issues
        .iter()
        .filter(|(_, issue)| !open_only || issue.state == "open")
        .filter(|(_, issue)| {
            wanted
                .iter()
                .all(|w| issue.labels.iter().any(|l| l.eq_ignore_ascii_case(w)))
        })
        .map(|(n, issue)| (*n, issue))
        .collect();
    matching.sort_by_key(|(n, issue)| (issue.created_at, *n));
    if params.get("direction").map(String::as_str) == Some("desc") {
        matching.reverse();
    }
    let page: Vec<Value> = matching
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|(n, issue)| issue_json(n, issue))
        .collect();
    Answer::json(200, &Value::Array(page))
}

fn issue_json(number: u64, issue: &FakeIssue) -> Value {
    let mut value = json!({
        "number": number,
        "title": issue.title,
        "body": issue.body,
        "state": issue.state,
        "state_reason": issue.state_reason,
        "labels": labels_json(issue),
        "html_url": format!("https://github.com/{OWNER_REPO}/issues/{number}"),
        "created_at": issue.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "user": { "login": "someone" },
    });
    if issue.pull_request {
        value["pull_request"] = json!({ "url": "https://example.invalid/pr" });
    }
    value
}

fn labels_json(issue: &FakeIssue) -> Value {
    issue
        .labels
        .iter()
        .map(|name| json!({ "name": name, "color": "ededed" }))
        .collect()
}

fn error(status: u16, message: &str) -> Answer {
    Answer::json(status, &json!({ "message": message }))
}

/// A query parameter's name or value: form encoding, so `+` is a space, then `%XX`.
fn decode_query(text: &str) -> String {
    percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}
