//! What each command asks the daemon and how it reports: the calls and subscriptions, `--json` pass-through,
//! following streams until their end or Ctrl-C, and the exit code.
//!
//! API: [`run`]`(command, sockets, json) -> exit code`. Errors print as `herdctl: <the daemon's message>`.

use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, Utc};
use herdctld::fleet::event_names;
use serde_json::{json, Map, Value};

use herdctld::rpc::client::{Client, ClientError};

use crate::job_output::render_line;
use crate::render;
use crate::style::{duration_ms, Style};
use crate::Command;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
/// 128 + SIGINT: a cancelled job, or waiting interrupted by Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Log entries replayed when `-n` is not given (the daemon's default too).
const DEFAULT_LOG_LINES: usize = 100;

/// Event types that tell a waiting client where a job is.
const JOB_PROGRESS_EVENTS: [&str; 4] = [
    event_names::JOB_STARTED,
    event_names::JOB_COMPLETED,
    event_names::JOB_FAILED,
    event_names::JOB_CANCELLED,
];

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            // The daemon refused the parameters or the method: the command line was wrong.
            CliError::Client(ClientError::Rpc(e)) if (-32602..=-32600).contains(&e.code) => {
                EXIT_USAGE
            }
            CliError::Client(_) => EXIT_FAILURE,
        }
    }

    fn report(&self) {
        eprintln!("herdctl: {self}");
    }
}

/// Runs one command against the daemon at the first of `sockets` that exists; returns the process exit code.
pub async fn run(command: Command, sockets: &[PathBuf], json: bool) -> u8 {
    let outcome = async {
        let client = Client::connect(sockets).await?;
        let mut session = Session {
            client,
            json,
            style: Style::detect(),
            interrupt: None,
        };
        session.execute(command).await
    }
    .await;
    outcome.unwrap_or_else(|error| {
        error.report();
        error.exit_code()
    })
}

struct Session {
    client: Client,
    json: bool,
    style: Style,
    /// SIGINT once a streaming command catches it (see [`Session::catch_interrupts`]).
    interrupt: Option<tokio::signal::unix::Signal>,
}

/// Puts the given optional params into an object, leaving out the absent ones.
fn params(pairs: &[(&str, Option<Value>)]) -> Value {
    let map: Map<String, Value> = pairs
        .iter()
        .filter_map(|(key, value)| value.clone().map(|v| ((*key).to_owned(), v)))
        .collect();
    Value::Object(map)
}

fn millis(seconds: f64, what: &str) -> Result<u64, CliError> {
    if seconds.is_finite() && seconds >= 0.0 {
        Ok((seconds * 1000.0).round() as u64)
    } else {
        Err(CliError::Usage(format!(
            "{what} must be a number of seconds ≥ 0, got {seconds}"
        )))
    }
}

/// `--since`: a duration back from now (`30m`, `2d`), a date (midnight UTC) or an RFC 3339 time.
fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, CliError> {
    if let Ok(ago) = herdctld::timespec::parse_duration(text) {
        let ago = chrono::Duration::from_std(ago)
            .map_err(|_| CliError::Usage(format!("--since {text:?} is too far back")))?;
        return Ok(now - ago);
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| {
            CliError::Usage(format!(
                "--since {text:?}: expected a duration (30m, 6h, 2d), a date (2025-06-01) or an RFC 3339 time"
            ))
        })
}

/// The next Ctrl-C; never, when interrupts are not caught (then SIGINT ends the process as usual).
/// `Signal` records a signal that arrives between two waits, so none is lost.
async fn interrupted(interrupt: &mut Option<tokio::signal::unix::Signal>) {
    match interrupt {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

impl Session {
    async fn execute(&mut self, command: Command) -> Result<u8, CliError> {
        let now = Utc::now();
        match command {
            Command::Status => {
                let status = self.client.call("getStatus", Value::Null).await?;
                self.show(&status, |style, v| render::status(style, v, now))
            }
            Command::Agents => {
                let agents = self.client.call("getAgents", Value::Null).await?;
                self.show(&agents, |style, v| render::agents(style, v, now))
            }
            Command::Agent { name } => {
                let agent = self.client.call("getAgent", json!({"name": name})).await?;
                self.show(&agent, |style, v| render::agent(style, v, now))
            }
            Command::Jobs {
                agent,
                status,
                since,
                limit,
            } => {
                let since = since
                    .map(|text| parse_since(&text, now))
                    .transpose()?
                    .map(|at| json!(at.to_rfc3339()));
                let query = params(&[
                    ("agentName", agent.map(Value::from)),
                    ("status", status.map(Value::from)),
                    ("since", since),
                    ("limit", Some(json!(limit))),
                ]);
                let page = self.client.call("getJobs", query).await?;
                self.show(&page, |style, v| render::jobs(style, v, now))
            }
            Command::Job { id, output } => {
                let mut job = self.client.call("getJob", json!({"id": id})).await?;
                if output {
                    // Streamed, not `includeOutput`: a reply has a size limit, a stream has none.
                    let lines = self.job_output(&id).await?;
                    if let Value::Object(fields) = &mut job {
                        fields.insert("output".into(), Value::Array(lines));
                    }
                }
                self.show(&job, |style, v| {
                    let mut out = render::job(style, v, now);
                    if let Some(lines) = v.get("output").and_then(Value::as_array) {
                        out.push_str(&format!("\n{}\n", style.bold("output")));
                        for line in lines.iter().flat_map(|l| render_line(style, l)) {
                            out.push_str(&line);
                            out.push('\n');
                        }
                    }
                    out
                })
            }
            Command::Trigger {
                agent,
                schedule,
                prompt,
                priority,
                fresh,
                over_budget,
                wait,
            } => {
                let request = params(&[
                    ("agentName", Some(json!(agent))),
                    ("scheduleName", schedule.map(Value::from)),
                    ("prompt", prompt.map(Value::from)),
                    ("priority", priority.map(Value::from)),
                    ("freshSession", fresh.then_some(Value::Bool(true))),
                    ("overBudget", over_budget.then_some(Value::Bool(true))),
                ]);
                self.trigger(&agent, request, wait).await
            }
            Command::Cancel { id, grace } => {
                let grace_ms = grace.map(|s| millis(s, "--grace")).transpose()?;
                let request = params(&[
                    ("id", Some(json!(id))),
                    ("graceMs", grace_ms.map(Value::from)),
                ]);
                let result = self.client.call("cancelJob", request).await?;
                self.show(&result, |style, v| {
                    let termination = v
                        .get("terminationType")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    match termination {
                        "already_stopped" => {
                            format!("{id} had already finished; nothing to cancel\n")
                        }
                        other => format!("{} {id} ({other})\n", style.yellow("cancelled")),
                    }
                })
            }
            Command::Fork {
                id,
                prompt,
                schedule,
                over_budget,
            } => {
                let request = params(&[
                    ("id", Some(json!(id))),
                    ("prompt", prompt.map(Value::from)),
                    ("scheduleName", schedule.map(Value::from)),
                    ("overBudget", over_budget.then_some(Value::Bool(true))),
                ]);
                let job = self.client.call("forkJob", request).await?;
                self.show(&job, |style, v| {
                    format!(
                        "forked {id} → {} ({})\nfollow it: herdctl logs -f --job {}\n",
                        style.bold(text(v, "id")),
                        style.status(text(v, "status")),
                        text(v, "id")
                    )
                })
            }
            Command::Schedules => {
                let schedules = self.client.call("getSchedules", Value::Null).await?;
                self.show(&schedules, |style, v| render::schedules(style, v, now))
            }
            Command::Enable { agent, schedule } => {
                self.toggle("enableSchedule", agent, schedule, now).await
            }
            Command::Disable { agent, schedule } => {
                self.toggle("disableSchedule", agent, schedule, now).await
            }
            Command::Reload => {
                let result = self.client.call("reload", Value::Null).await?;
                self.show(&result, |style, v| {
                    let changes: Vec<&str> = v
                        .get("changes")
                        .and_then(Value::as_array)
                        .map(|c| c.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    if changes.is_empty() {
                        return "reloaded: no changes\n".to_owned();
                    }
                    let mut out = format!(
                        "{} {} change(s):\n",
                        style.green("reloaded:"),
                        changes.len()
                    );
                    for change in changes {
                        out.push_str(&format!("  {change}\n"));
                    }
                    out
                })
            }
            Command::Start => {
                let result = self.client.call("start", Value::Null).await?;
                self.show(&result, |style, v| {
                    format!("fleet {}\n", style.status(text(v, "state")))
                })
            }
            Command::Stop { no_wait, timeout } => {
                let request = json!({
                    "waitForJobs": !no_wait,
                    "timeout": millis(timeout, "--timeout")?,
                });
                let result = self.client.call("stop", request).await?;
                self.show(&result, |style, v| {
                    format!(
                        "fleet {} (the daemon keeps serving; `herdctl start` starts it again)\n",
                        style.status(text(v, "state"))
                    )
                })
            }
            Command::Logs {
                follow,
                agent,
                job,
                level,
                lines,
            } => match job {
                Some(id) => self.job_logs(&id, follow, lines).await,
                None => self.fleet_logs(follow, agent, level, lines).await,
            },
            Command::Events { types } => self.events(types).await,
            Command::Completions { .. } => Ok(EXIT_OK),
        }
    }

    /// Prints `value` raw with `--json`, else through `human`.
    fn show(
        &self,
        value: &Value,
        human: impl FnOnce(Style, &Value) -> String,
    ) -> Result<u8, CliError> {
        if self.json {
            println!("{}", pretty(value));
        } else {
            print!("{}", human(self.style, value));
        }
        Ok(EXIT_OK)
    }
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn is_terminal_status(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// The exit code of `trigger --wait` for a job's final status.
fn exit_code_for(status: &str) -> u8 {
    match status {
        "completed" => EXIT_OK,
        "cancelled" => EXIT_INTERRUPTED,
        _ => EXIT_FAILURE,
    }
}

/// The last line of `trigger --wait`: how the job ended.
fn outcome_line(style: Style, job: &Value) -> String {
    let id = text(job, "id");
    let took = job
        .get("durationMs")
        .and_then(Value::as_u64)
        .map(duration_ms)
        .unwrap_or_else(|| "-".to_owned());
    match text(job, "status") {
        "completed" => format!("{} {id} completed in {took}", style.green("✓")),
        "cancelled" => format!("{} {id} cancelled after {took}", style.yellow("⊘")),
        status => {
            let reason = text(job, "exitReason");
            let message = job
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("");
            let mut line = format!("{} {id} {status} after {took}", style.red("✗"));
            if !reason.is_empty() {
                line.push_str(&format!(" ({reason})"));
            }
            if !message.is_empty() {
                // Its first line: a stderr tail in the message was already streamed above.
                line.push_str(&format!(": {}", crate::style::abbreviate(message, 200)));
            }
            line
        }
    }
}

/// How reading one `streamJobOutput` subscription ended.
enum StreamEnd {
    /// The daemon's last notification: the job's status when the stream ended.
    Eof(String),
    /// The stored history was delivered (asked to stop there).
    Replayed,
    Interrupted,
}

/// How following a job to its end ended.
enum Followed {
    Finished,
    Interrupted,
}

impl Session {
    /// From now on, Ctrl-C is reported to the streaming loops instead of killing the process.
    fn catch_interrupts(&mut self) {
        self.interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    }

    async fn toggle(
        &mut self,
        method: &str,
        agent: String,
        schedule: String,
        now: DateTime<Utc>,
    ) -> Result<u8, CliError> {
        let request = json!({"agentName": agent, "scheduleName": schedule});
        let result = self.client.call(method, request).await?;
        self.show(&result, |style, v| render::schedule_change(style, v, now))
    }

    async fn trigger(&mut self, agent: &str, request: Value, wait: bool) -> Result<u8, CliError> {
        if !wait {
            let job = self.client.call("trigger", request).await?;
            return self.show(&job, |style, v| {
                let id = text(v, "id");
                format!(
                    "triggered {} ({agent}, {})\nfollow it: herdctl logs -f --job {id}\n",
                    style.bold(id),
                    style.status(text(v, "status"))
                )
            });
        }
        self.catch_interrupts();
        // Subscribed before the trigger, so no start or end of the job can slip by unseen.
        self.client
            .subscribe("subscribeEvents", json!({"types": JOB_PROGRESS_EVENTS}))
            .await?;
        let job = self.client.call("trigger", request).await?;
        let id = text(&job, "id").to_owned();
        if !self.json {
            println!(
                "{} {} ({agent}, {})",
                self.style.bold("▶"),
                self.style.bold(&id),
                self.style.status(text(&job, "status"))
            );
        }
        let (style, json_mode) = (self.style, self.json);
        let mut print = |line: &Value| {
            if !json_mode {
                for text in render_line(style, line) {
                    println!("{text}");
                }
            }
        };
        if let Followed::Interrupted = self.follow_job(&id, 0, &mut print).await? {
            eprintln!(
                "herdctl: stopped waiting; job {id} is still running — follow it with `herdctl logs -f --job {id}`, cancel it with `herdctl cancel {id}`"
            );
            return Ok(EXIT_INTERRUPTED);
        }
        let finished = self.client.call("getJob", json!({"id": id})).await?;
        if self.json {
            println!("{}", pretty(&finished));
        } else {
            println!("{}", outcome_line(self.style, &finished));
        }
        Ok(exit_code_for(text(&finished, "status")))
    }

    /// Streams job `id`'s output from `cursor` through `on_line` until the job has ended. A queued job has no
    /// live output yet: wait for it to start, then stream again from where we are. Needs a subscription to
    /// [`JOB_PROGRESS_EVENTS`] on this connection, made before the job could have started.
    async fn follow_job(
        &mut self,
        id: &str,
        mut cursor: u64,
        on_line: &mut impl FnMut(&Value),
    ) -> Result<Followed, CliError> {
        let mut previous_end: Option<String> = None;
        loop {
            let subscription = self
                .client
                .subscribe(
                    "streamJobOutput",
                    json!({"id": id, "fromSeq": cursor, "batch": true}),
                )
                .await?;
            let ended_as = match self
                .read_job_output(&subscription, &mut cursor, false, on_line)
                .await?
            {
                StreamEnd::Interrupted => return Ok(Followed::Interrupted),
                StreamEnd::Eof(status) if is_terminal_status(&status) => {
                    return Ok(Followed::Finished)
                }
                StreamEnd::Eof(status) => status,
                StreamEnd::Replayed => String::new(),
            };
            let job = self.client.call("getJob", json!({"id": id})).await?;
            let now = text(&job, "status");
            // Stream again at once if it moved on since the stream ended; else wait for it to move.
            let moved = is_terminal_status(now)
                || (now == "running" && previous_end.as_deref() != Some("running"));
            if !moved {
                if let Followed::Interrupted = self.wait_for_progress(id).await? {
                    return Ok(Followed::Interrupted);
                }
            }
            previous_end = Some(ended_as);
        }
    }

    /// Reads one batched `streamJobOutput` subscription until its end, Ctrl-C, or (with
    /// `stop_at_replayed`) the daemon's mark that the stored history was delivered.
    async fn read_job_output(
        &mut self,
        subscription: &Value,
        cursor: &mut u64,
        stop_at_replayed: bool,
        on_line: &mut impl FnMut(&Value),
    ) -> Result<StreamEnd, CliError> {
        loop {
            let next = tokio::select! {
                _ = interrupted(&mut self.interrupt) => return Ok(StreamEnd::Interrupted),
                next = self.client.next_notification() => next?,
            };
            let notification = next.ok_or(ClientError::Closed)?;
            if notification.method != "jobOutput" || notification.subscription != *subscription {
                continue;
            }
            let item = notification.result;
            if item.get("eof").and_then(Value::as_bool) == Some(true) {
                return Ok(StreamEnd::Eof(text(&item, "status").to_owned()));
            }
            if item.get(event_names::REPLAYED).and_then(Value::as_bool) == Some(true) {
                if stop_at_replayed {
                    return Ok(StreamEnd::Replayed);
                }
                continue;
            }
            // Lines this reader cannot have: handed on as the daemon sent it, shown where they were.
            if item.get("gap").and_then(Value::as_bool) == Some(true) {
                if let Some(next) = item.get("nextSeq").and_then(Value::as_u64) {
                    *cursor = next;
                }
                on_line(&item);
                continue;
            }
            // Subscribed with `batch: true`: every line that was ready arrives in one notification.
            for line in item
                .get("lines")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(seq) = line.get("seq").and_then(Value::as_u64) {
                    *cursor = seq + 1;
                }
                on_line(line);
            }
        }
    }

    /// Waits for an event saying job `id` started or ended.
    async fn wait_for_progress(&mut self, id: &str) -> Result<Followed, CliError> {
        loop {
            let next = tokio::select! {
                _ = interrupted(&mut self.interrupt) => return Ok(Followed::Interrupted),
                next = self.client.next_notification() => next?,
            };
            let notification = next.ok_or(ClientError::Closed)?;
            let event = &notification.result;
            let about = event
                .get("jobId")
                .or_else(|| event.pointer("/job/id"))
                .and_then(Value::as_str);
            if notification.method == "event" && about == Some(id) {
                return Ok(Followed::Finished);
            }
        }
    }

    /// `logs --job ID`: the job's output so far (the last `lines` of it if given); with `follow`, then live
    /// until the job ends.
    async fn job_logs(
        &mut self,
        id: &str,
        follow: bool,
        lines: Option<usize>,
    ) -> Result<u8, CliError> {
        self.catch_interrupts();
        if follow {
            self.client
                .subscribe("subscribeEvents", json!({"types": JOB_PROGRESS_EVENTS}))
                .await?;
        }
        let (style, json_mode) = (self.style, self.json);
        let mut print = |line: &Value| {
            if json_mode {
                println!("{line}");
            } else {
                for text in render_line(style, line) {
                    println!("{text}");
                }
            }
        };
        let subscription = self
            .client
            .subscribe("streamJobOutput", json!({"id": id, "batch": true}))
            .await?;
        let mut cursor = 0;
        let mut tail = std::collections::VecDeque::new();
        let end = match lines {
            None => {
                self.read_job_output(&subscription, &mut cursor, true, &mut print)
                    .await?
            }
            Some(keep) => {
                let mut remember = |line: &Value| {
                    if tail.len() == keep {
                        tail.pop_front();
                    }
                    if keep > 0 {
                        tail.push_back(line.clone());
                    }
                };
                self.read_job_output(&subscription, &mut cursor, true, &mut remember)
                    .await?
            }
        };
        tail.iter().for_each(&mut print);
        match end {
            StreamEnd::Interrupted => return Ok(EXIT_OK),
            StreamEnd::Eof(status) if is_terminal_status(&status) => return Ok(EXIT_OK),
            _ if !follow => return Ok(EXIT_OK),
            StreamEnd::Eof(_) | StreamEnd::Replayed => {}
        }
        self.client
            .call("unsubscribeJobOutput", json!([subscription]))
            .await?;
        self.follow_job(id, cursor, &mut print).await?;
        Ok(EXIT_OK)
    }

    /// A job's output lines so far: its whole history, and live ones until it ends or pauses.
    async fn job_output(&mut self, id: &str) -> Result<Vec<Value>, CliError> {
        let subscription = self
            .client
            .subscribe("streamJobOutput", json!({"id": id, "batch": true}))
            .await?;
        let mut lines = Vec::new();
        let mut cursor = 0;
        let end = self
            .read_job_output(&subscription, &mut cursor, true, &mut |line: &Value| {
                lines.push(line.clone())
            })
            .await?;
        if !matches!(end, StreamEnd::Eof(_)) {
            self.client
                .call("unsubscribeJobOutput", json!([subscription]))
                .await?;
        }
        Ok(lines)
    }

    /// `logs` without `--job`: the daemon's log entries, the newest `lines` first; with `follow`, then live.
    async fn fleet_logs(
        &mut self,
        follow: bool,
        agent: Option<String>,
        level: Option<String>,
        lines: Option<usize>,
    ) -> Result<u8, CliError> {
        let tail = lines.unwrap_or(DEFAULT_LOG_LINES);
        self.catch_interrupts();
        let (method, request) = match agent {
            Some(agent) => (
                "streamAgentLogs",
                params(&[
                    ("agentName", Some(json!(agent))),
                    ("level", level.map(Value::from)),
                    ("tail", Some(json!(tail))),
                ]),
            ),
            None => (
                "streamLogs",
                params(&[
                    ("level", level.map(Value::from)),
                    ("tail", Some(json!(tail))),
                ]),
            ),
        };
        let subscription = self.client.subscribe(method, request).await?;
        loop {
            let next = tokio::select! {
                _ = interrupted(&mut self.interrupt) => return Ok(EXIT_OK),
                next = self.client.next_notification() => next?,
            };
            let notification = next.ok_or(ClientError::Closed)?;
            if notification.subscription != subscription {
                continue;
            }
            // The daemon marks where the history ends: without -f that is all we show.
            if notification.result["type"] == event_names::REPLAYED {
                if follow {
                    continue;
                }
                return Ok(EXIT_OK);
            }
            if self.json {
                println!("{}", notification.result);
            } else {
                println!("{}", render::log_entry(self.style, &notification.result));
            }
        }
    }

    /// `events`: fleet events as they happen, until Ctrl-C.
    async fn events(&mut self, types: Vec<String>) -> Result<u8, CliError> {
        self.catch_interrupts();
        let request = params(&[("types", (!types.is_empty()).then(|| json!(types)))]);
        let subscription = self.client.subscribe("subscribeEvents", request).await?;
        // On stderr, so stdout stays one event per line: says from when on nothing is missed.
        eprintln!("herdctl: following events (Ctrl-C stops)");
        loop {
            let next = tokio::select! {
                _ = interrupted(&mut self.interrupt) => return Ok(EXIT_OK),
                next = self.client.next_notification() => next?,
            };
            let notification = next.ok_or(ClientError::Closed)?;
            if notification.subscription != subscription {
                continue;
            }
            if self.json {
                println!("{}", notification.result);
            } else {
                println!("{}", render::event(self.style, &notification.result));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_durations_dates_and_times() {
        let now: DateTime<Utc> = "2025-06-10T12:00:00Z".parse().unwrap();
        assert_eq!(
            parse_since("2d", now).unwrap(),
            "2025-06-08T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            parse_since("2025-06-01", now).unwrap(),
            "2025-06-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            parse_since("2025-06-01T08:00:00+02:00", now).unwrap(),
            "2025-06-01T06:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert!(matches!(
            parse_since("yesterday", now),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn absent_params_are_left_out() {
        assert_eq!(
            params(&[("a", Some(json!(1))), ("b", None)]),
            json!({"a": 1})
        );
    }

    #[test]
    fn wait_exit_codes_follow_the_outcome() {
        assert_eq!(exit_code_for("completed"), 0);
        assert_eq!(exit_code_for("failed"), 1);
        assert_eq!(exit_code_for("cancelled"), 130);
        let failed = json!({"id": "j", "status": "failed", "durationMs": 1200,
            "exitReason": "error", "error": {"code": "exit", "message": "exit status 3"}});
        assert_eq!(
            outcome_line(Style { color: false }, &failed),
            "✗ j failed after 1.2s (error): exit status 3"
        );
    }

    #[test]
    fn usage_errors_exit_2_and_domain_errors_1() {
        let rpc = |code| {
            CliError::Client(ClientError::Rpc(herdctld::rpc::client::RpcError {
                code,
                message: String::new(),
                data: None,
            }))
        };
        assert_eq!(rpc(-32602).exit_code(), EXIT_USAGE);
        assert_eq!(rpc(1002).exit_code(), EXIT_FAILURE);
        assert_eq!(CliError::Usage(String::new()).exit_code(), EXIT_USAGE);
    }
}
