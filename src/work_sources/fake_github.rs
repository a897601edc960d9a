//! A fake of the GitHub REST API's issue endpoints on 127.0.0.1, for tests: in-memory issues, labels and
//! comments, a log of every request, and injectable failure answers. HTTP/1.1, one request per connection.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const OWNER_REPO: &str = "octo/widgets";
pub const TOKEN: &str = "ghp_FAKE_SECRET_9f8e7d";

pub struct FakeGitHub {
    addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
    server: JoinHandle<()>,
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Default)]
pub struct FakeState {
    pub issues: BTreeMap<u64, FakeIssue>,
    /// `(issue number, body)` in posting order.
    pub comments: Vec<(u64, String)>,
    pub requests: Vec<Recorded>,
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

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query as sent (percent-encoded).
    pub target: String,
    /// Lower-case names.
    pub headers: BTreeMap<String, String>,
    pub body: String,
    pub at: SystemTime,
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
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl FakeGitHub {
    pub async fn start() -> FakeGitHub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let shared = state.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        FakeGitHub {
            addr,
            state,
            server,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
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
            state.injected.push_back(Injected {
                matching: matching.to_string(),
                status,
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                body: json!({ "message": format!("injected {status}") }).to_string(),
            });
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// Every request as `METHOD target`.
    pub fn request_lines(&self) -> Vec<String> {
        self.requests().iter().map(Recorded::line).collect()
    }
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<FakeState>>) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let (status, headers, body) = respond(&state, request);
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 || buffer.len() > 1 << 20 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8(buffer[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Some(Recorded {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: SystemTime::now(),
    })
}

fn respond(state: &Mutex<FakeState>, request: Recorded) -> (u16, Vec<(String, String)>, String) {
    let mut state = state.lock().unwrap();
    state.requests.push(request.clone());
    let line = request.line();
    if let Some(index) = state
        .injected
        .iter()
        .position(|i| line.starts_with(&i.matching))
    {
        let injected = state.injected.remove(index).unwrap();
        return (injected.status, injected.headers, injected.body);
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
        .map(|s| percent_decode(s, false))
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
                ("GET", []) => ok(200, issue_json(number, issue)),
                ("PATCH", []) => {
                    if let Some(new_state) = body["state"].as_str() {
                        issue.state = new_state.to_string();
                    }
                    issue.state_reason = body["state_reason"].as_str().map(str::to_string);
                    ok(200, issue_json(number, issue))
                }
                ("POST", ["labels"]) => {
                    for label in body["labels"].as_array().into_iter().flatten() {
                        let label = label.as_str().unwrap_or_default().to_string();
                        if !issue.labels.iter().any(|l| l.eq_ignore_ascii_case(&label)) {
                            issue.labels.push(label);
                        }
                    }
                    ok(200, labels_json(issue))
                }
                ("DELETE", ["labels", name]) => {
                    let before = issue.labels.len();
                    issue.labels.retain(|l| !l.eq_ignore_ascii_case(name));
                    if issue.labels.len() == before {
                        error(404, "Label does not exist")
                    } else {
                        ok(200, labels_json(issue))
                    }
                }
                ("POST", ["comments"]) => {
                    comments.push((
                        number,
                        body["body"].as_str().unwrap_or_default().to_string(),
                    ));
                    ok(201, json!({ "id": comments.len(), "body": body["body"] }))
                }
                _ => error(404, "Not Found"),
            }
        }
        _ => error(404, "Not Found"),
    }
}

fn list_issues(state: &FakeState, query: &str) -> (u16, Vec<(String, String)>, String) {
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k, true), percent_decode(v, true)))
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
    ok(200, Value::Array(page))
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

fn ok(status: u16, body: Value) -> (u16, Vec<(String, String)>, String) {
    (status, Vec::new(), body.to_string())
}

fn error(status: u16, message: &str) -> (u16, Vec<(String, String)>, String) {
    ok(status, json!({ "message": message }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// `%XX` decoding (and `+` as a space in queries), enough for label names in paths and queries.
fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
