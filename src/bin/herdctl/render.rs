//! Human views of the daemon's results (SPEC §11 shapes, read as JSON so a newer daemon's extra fields never
//! break the client): the fleet status, agent and job tables and details, schedules, log entries and events.
//!
//! API: one `fn x(style, &Value, now) -> String` per view: [`status`], [`agents`], [`agent`], [`jobs`],
//! [`job`], [`schedules`], [`schedule_change`], [`log_entry`], [`event`].

use chrono::{DateTime, Utc};
use serde_json::Value;

use herdctld::fleet::event_names::*;

use crate::style::{abbreviate, duration_ms, relative, uptime, Style, Table};

const SUMMARY_CHARS: usize = 50;

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

fn count(value: &Value, pointer: &str) -> u64 {
    value.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

/// The timestamp at `path` (`key`, or `key/inner` for a field of an object).
fn time(value: &Value, path: &str) -> Option<DateTime<Utc>> {
    value.pointer(&format!("/{path}"))?.as_str()?.parse().ok()
}

fn when(value: &Value, key: &str, now: DateTime<Utc>) -> String {
    time(value, key)
        .map(|at| relative(at, now))
        .unwrap_or_else(|| "-".to_owned())
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// US dollars with cents, and with tenths of a cent below a cent (a run of a cheap model).
fn usd(amount: f64) -> String {
    if amount > 0.0 && amount < 0.01 {
        format!("${amount:.4}")
    } else {
        format!("${amount:.2}")
    }
}

/// A token count in a few characters: 950, 12.3k, 4.5M.
fn tokens(n: u64) -> String {
    match n {
        0..=999 => n.to_string(),
        1_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// One period of a usage report (`usage.today`, `usage.last7Days`): cost, jobs and tokens by kind.
fn usage_period(usage: &Value, period: &str) -> String {
    let Some(totals) = usage.get(period).filter(|t| t.is_object()) else {
        return "-".to_owned();
    };
    let cost = totals.get("costUsd").and_then(Value::as_f64).unwrap_or(0.0);
    let jobs = count(totals, "/jobs");
    let plural = if jobs == 1 { "" } else { "s" };
    format!(
        "{} ({jobs} job{plural}; tokens {} in, {} out, {} cache write, {} cache read)",
        usd(cost),
        tokens(count(totals, "/inputTokens")),
        tokens(count(totals, "/outputTokens")),
        tokens(count(totals, "/cacheCreationInputTokens")),
        tokens(count(totals, "/cacheReadInputTokens")),
    )
}

/// The cost rows of a status or agent view; none when the daemon reports no usage.
fn usage_rows(value: &Value) -> Vec<(&'static str, String)> {
    let Some(usage) = value.get("usage").filter(|u| u.is_object()) else {
        return Vec::new();
    };
    let zone = text(usage, "timezone");
    vec![
        (
            "cost today",
            format!("{} [{zone}]", usage_period(usage, "today")),
        ),
        ("cost 7 days", usage_period(usage, "last7Days")),
    ]
}

/// `$1.20 of $5.00`, red once the budget is reached; `-` without a budget.
fn budget_cell(style: Style, agent: &Value) -> String {
    let Some(budget) = agent.get("budget").filter(|b| b.is_object()) else {
        return "-".to_owned();
    };
    let amount = |key: &str| budget.get(key).and_then(Value::as_f64).unwrap_or(0.0);
    let cell = format!(
        "{} of {}",
        usd(amount("spentToday")),
        usd(amount("dailyUsd"))
    );
    if budget.get("reached").and_then(Value::as_bool) == Some(true) {
        style.red(&format!("{cell}, reached"))
    } else {
        cell
    }
}

/// Label/value lines with the labels padded to one width.
fn fields(style: Style, rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(label, value)| format!("{}  {value}\n", style.bold(&format!("{label:<width$}"))))
        .collect()
}

pub fn status(style: Style, status: &Value, now: DateTime<Utc>) -> String {
    let state = text(status, "state");
    let mut state_line = style.status(state);
    if let Some(ms) = status.get("uptime").and_then(Value::as_u64) {
        if state == "running" {
            state_line.push_str(&format!(" (up {})", uptime(ms)));
        }
    }
    let next = match status.pointer("/scheduler/nextTrigger") {
        Some(next) if next.is_object() => format!(
            "{}/{} {}",
            text(next, "agentName"),
            text(next, "scheduleName"),
            when(next, "at", now)
        ),
        _ => "-".to_owned(),
    };
    let mut rows = vec![
        ("fleet", state_line),
        ("config", or_dash(text(status, "configPath"))),
        ("state dir", or_dash(text(status, "stateDir"))),
        (
            "agents",
            format!(
                "{} total, {} running, {} idle",
                count(status, "/agents/total"),
                count(status, "/agents/running"),
                count(status, "/agents/idle")
            ),
        ),
        (
            "jobs",
            format!(
                "{} running, {} queued, {} completed, {} failed, {} cancelled",
                count(status, "/jobs/active"),
                count(status, "/jobs/queued"),
                count(status, "/jobs/completed"),
                count(status, "/jobs/failed"),
                count(status, "/jobs/cancelled")
            ),
        ),
        (
            "schedules",
            format!(
                "{} active, next: {next}",
                count(status, "/scheduler/activeSchedules")
            ),
        ),
    ];
    if let Some(limits) = status.get("limits").filter(|l| l.is_object()) {
        rows.push(("limits", limits_line(limits)));
    }
    rows.extend(usage_rows(status));
    fields(style, &rows)
}

/// `getStatus.limits` in one line: concurrency, the queue, and how much history is kept.
fn limits_line(limits: &Value) -> String {
    let cap = |key: &str| match limits.get(key).and_then(Value::as_u64) {
        Some(n) => n.to_string(),
        None => "no cap".to_owned(),
    };
    let age = match limits.get("maxJobAge").and_then(Value::as_u64) {
        Some(ms) => uptime(ms),
        None => "any age".to_owned(),
    };
    format!(
        "{} running per agent, {} in the fleet, {} queued; history: {} per agent, {} in all, {age}",
        count(limits, "/perAgent"),
        cap("maxConcurrent"),
        count(limits, "/maxQueued"),
        count(limits, "/maxJobsPerAgent"),
        cap("maxJobsTotal"),
    )
}

fn last_job_cell(style: Style, agent: &Value, now: DateTime<Utc>) -> String {
    match agent.get("lastJob") {
        Some(job) if job.is_object() => format!(
            "{} {}",
            style.status(text(job, "status")),
            when(job, "createdAt", now)
        ),
        _ => "-".to_owned(),
    }
}

/// The cost of an agent's `usage` period, `-` when the daemon reports none.
fn period_cost(agent: &Value, period: &str) -> String {
    agent
        .get("usage")
        .and_then(|usage| usage.get(period))
        .and_then(|totals| totals.get("costUsd"))
        .and_then(Value::as_f64)
        .map_or_else(|| "-".to_owned(), usd)
}

fn schedule_names(agent: &Value) -> String {
    let names: Vec<&str> = agent
        .get("schedules")
        .and_then(Value::as_array)
        .map(|list| list.iter().map(|s| text(s, "name")).collect())
        .unwrap_or_default();
    or_dash(&names.join(","))
}

pub fn agents(style: Style, agents: &Value, now: DateTime<Utc>) -> String {
    let mut table = Table::new(
        style,
        &[
            "NAME",
            "STATE",
            "RUNTIME",
            "RUNNING",
            "QUEUED",
            "SCHEDULES",
            "LAST JOB",
            "COST TODAY",
            "COST 7D",
            "BUDGET TODAY",
        ],
    );
    for agent in agents.as_array().into_iter().flatten() {
        let running = agent
            .get("currentJobs")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        table.row(vec![
            text(agent, "name").to_owned(),
            style.status(text(agent, "state")),
            text(agent, "runtime").to_owned(),
            format!("{running}/{}", count(agent, "/concurrency")),
            count(agent, "/queuedJobs").to_string(),
            schedule_names(agent),
            last_job_cell(style, agent, now),
            period_cost(agent, "today"),
            period_cost(agent, "last7Days"),
            budget_cell(style, agent),
        ]);
    }
    if table.is_empty() {
        return "no agents configured\n".to_owned();
    }
    table.render()
}

pub fn agent(style: Style, agent: &Value, now: DateTime<Utc>) -> String {
    let current: Vec<&str> = agent
        .get("currentJobs")
        .and_then(Value::as_array)
        .map(|jobs| jobs.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let last_job = match agent.get("lastJob") {
        Some(job) if job.is_object() => format!(
            "{} {} {}",
            text(job, "id"),
            style.status(text(job, "status")),
            when(job, "createdAt", now)
        ),
        _ => "-".to_owned(),
    };
    let mut rows = vec![
        ("name", style.bold(text(agent, "name"))),
        ("description", or_dash(text(agent, "description"))),
        ("state", style.status(text(agent, "state"))),
        ("runtime", text(agent, "runtime").to_owned()),
        ("model", or_dash(text(agent, "model"))),
        ("directory", text(agent, "workingDirectory").to_owned()),
        (
            "concurrency",
            format!(
                "{} running of {}, {} queued",
                current.len(),
                count(agent, "/concurrency"),
                count(agent, "/queuedJobs")
            ),
        ),
        ("current jobs", or_dash(&current.join(", "))),
        ("last job", last_job),
        ("session", or_dash(text(agent, "lastSessionId"))),
    ];
    rows.extend(usage_rows(agent));
    rows.push(("budget", budget_cell(style, agent)));
    let mut out = fields(style, &rows);
    let schedules_value = agent.get("schedules").cloned().unwrap_or(Value::Null);
    if schedules_value.as_array().is_some_and(|s| !s.is_empty()) {
        out.push('\n');
        out.push_str(&schedules(style, &schedules_value, now));
    }
    out
}

/// What created a job: its schedule, else how it was triggered.
fn origin(job: &Value) -> String {
    match job.get("scheduleName").and_then(Value::as_str) {
        Some(schedule) => schedule.to_owned(),
        None => format!("({})", text(job, "triggerType")),
    }
}

fn job_duration(job: &Value, now: DateTime<Utc>) -> String {
    if let Some(ms) = job.get("durationMs").and_then(Value::as_u64) {
        return duration_ms(ms);
    }
    match (text(job, "status"), time(job, "startedAt")) {
        ("running", Some(started)) => {
            let ms = (now - started).num_milliseconds().max(0).unsigned_abs();
            format!("{}…", duration_ms(ms))
        }
        _ => "-".to_owned(),
    }
}

/// The one-line gist of a finished job: its summary, else its error.
fn gist(job: &Value) -> String {
    let summary = text(job, "summary");
    if !summary.is_empty() {
        return abbreviate(summary, SUMMARY_CHARS);
    }
    let error = job.pointer("/error/message").and_then(Value::as_str);
    abbreviate(error.unwrap_or(""), SUMMARY_CHARS)
}

pub fn jobs(style: Style, page: &Value, now: DateTime<Utc>) -> String {
    let mut table = Table::new(
        style,
        &[
            "ID", "AGENT", "SCHEDULE", "STATUS", "CREATED", "DURATION", "SUMMARY",
        ],
    );
    let listed = page.get("jobs").and_then(Value::as_array);
    for job in listed.into_iter().flatten() {
        table.row(vec![
            text(job, "id").to_owned(),
            text(job, "agentName").to_owned(),
            origin(job),
            style.status(text(job, "status")),
            when(job, "createdAt", now),
            job_duration(job, now),
            gist(job),
        ]);
    }
    if table.is_empty() {
        return "no jobs match\n".to_owned();
    }
    let shown = listed.map_or(0, Vec::len) as u64;
    let total = count(page, "/total");
    let mut out = table.render();
    if total > shown {
        out.push_str(&style.dim(&format!(
            "{shown} of {total} jobs shown; use --limit to see more\n"
        )));
    }
    out
}

pub fn job(style: Style, job: &Value, now: DateTime<Utc>) -> String {
    let status_word = text(job, "status");
    let mut status_cell = style.status(status_word);
    // The exit reason only when it says more than the status ("failed (timeout)", not "cancelled (cancelled)").
    if let Some(reason) = job.get("exitReason").and_then(Value::as_str) {
        if reason != status_word && reason != "success" {
            status_cell.push_str(&format!(" ({reason})"));
        }
    }
    let at = |key: &str| match time(job, key) {
        Some(at) => format!(
            "{} ({})",
            at.format("%Y-%m-%d %H:%M:%S UTC"),
            relative(at, now)
        ),
        None => "-".to_owned(),
    };
    let mut rows = vec![
        ("id", style.bold(text(job, "id"))),
        ("agent", text(job, "agentName").to_owned()),
        ("schedule", or_dash(text(job, "scheduleName"))),
        ("trigger", text(job, "triggerType").to_owned()),
        ("status", status_cell),
        ("created", at("createdAt")),
        ("started", at("startedAt")),
        ("finished", at("finishedAt")),
        ("duration", job_duration(job, now)),
    ];
    if let Some(code) = job.get("exitCode").and_then(Value::as_i64) {
        rows.push(("exit code", code.to_string()));
    }
    if let Some(signal) = job.get("signal").and_then(Value::as_i64) {
        rows.push(("signal", signal.to_string()));
    }
    if let Some(pid) = job.get("pid").and_then(Value::as_u64) {
        rows.push(("pid", pid.to_string()));
    }
    if let Some(run) = job.get("executorRun").filter(|run| run.is_object()) {
        rows.push(("runs on", placement(run)));
    }
    for (label, key) in [("forked from", "forkedFrom"), ("session", "sessionId")] {
        if let Some(value) = job.get(key).and_then(Value::as_str) {
            rows.push((label, value.to_owned()));
        }
    }
    if let Some(note) = job.get("result").and_then(crate::job_output::result_note) {
        rows.push(("result", note));
    }
    if let Some(models) = job.pointer("/usage/perModel").and_then(Value::as_object) {
        for (model, used) in models {
            rows.push(("tokens", format!("{model}: {}", model_tokens(used))));
        }
    }
    if let Some(error) = job.get("error").filter(|e| e.is_object()) {
        rows.push((
            "error",
            style.red(&format!(
                "{}: {}",
                text(error, "code"),
                text(error, "message")
            )),
        ));
    }
    if let Some(prompt) = job.get("prompt").and_then(Value::as_str) {
        rows.push(("prompt", abbreviate(prompt, 100)));
    }
    let mut out = fields(style, &rows);
    if let Some(summary) = job.get("summary").and_then(Value::as_str) {
        out.push_str(&format!("\n{}\n{summary}\n", style.bold("summary")));
    }
    out
}

/// Where a cluster job runs: `slurm job 4711`, and why the engine still holds it.
fn placement(run: &Value) -> String {
    let mut text = match run.get("id").and_then(Value::as_str) {
        Some(id) => format!("{} job {id}", text(run, "executor")),
        None => format!("{} (not submitted yet)", text(run, "executor")),
    };
    if let Some(reason) = run.get("pendingReason").and_then(Value::as_str) {
        text.push_str(&format!(", held: {reason}"));
    }
    text
}

/// One model's tokens of a job: `1.2k in · 340 out · 15.0k cache read · 2.0k cache write`, the cache
/// kinds only when used.
fn model_tokens(used: &Value) -> String {
    let count = |key: &str| used.get(key).and_then(Value::as_u64).unwrap_or(0);
    let mut parts = vec![
        format!("{} in", tokens(count("inputTokens"))),
        format!("{} out", tokens(count("outputTokens"))),
    ];
    for (key, label) in [
        ("cacheReadInputTokens", "cache read"),
        ("cacheCreationInputTokens", "cache write"),
    ] {
        if count(key) > 0 {
            parts.push(format!("{} {label}", tokens(count(key))));
        }
    }
    parts.join(" · ")
}

fn schedule_spec(schedule: &Value) -> String {
    let spec = match (schedule.get("interval"), schedule.get("cron")) {
        (Some(Value::String(interval)), _) => format!("every {interval}"),
        (_, Some(Value::String(cron))) => cron.clone(),
        _ => text(schedule, "type").to_owned(),
    };
    match schedule.get("timezone").and_then(Value::as_str) {
        Some(zone) => format!("{spec} ({zone})"),
        None => spec,
    }
}

pub fn schedules(style: Style, schedules: &Value, now: DateTime<Utc>) -> String {
    let mut table = Table::new(
        style,
        &[
            "AGENT", "SCHEDULE", "TYPE", "WHEN", "ENABLED", "NEXT", "LAST RUN", "LAST",
        ],
    );
    for schedule in schedules.as_array().into_iter().flatten() {
        let enabled = schedule.get("enabled").and_then(Value::as_bool) == Some(true);
        let last_status = match schedule.get("lastStatus").and_then(Value::as_str) {
            Some(status) => style.status(status),
            None => "-".to_owned(),
        };
        table.row(vec![
            text(schedule, "agentName").to_owned(),
            text(schedule, "name").to_owned(),
            text(schedule, "type").to_owned(),
            schedule_spec(schedule),
            if enabled {
                style.green("yes")
            } else {
                style.red("no")
            },
            when(schedule, "nextTrigger/at", now),
            when(schedule, "lastRunAt", now),
            last_status,
        ]);
    }
    if table.is_empty() {
        return "no schedules configured\n".to_owned();
    }
    table.render()
}

/// After enable/disable: what the schedule now does.
pub fn schedule_change(style: Style, schedule: &Value, now: DateTime<Utc>) -> String {
    let name = format!("{}/{}", text(schedule, "agentName"), text(schedule, "name"));
    if schedule.get("enabled").and_then(Value::as_bool) == Some(true) {
        let next = match time(schedule, "nextTrigger/at") {
            Some(at) => format!("next run {}", relative(at, now)),
            None => "it has no upcoming run".to_owned(),
        };
        format!("{} {name}; {next}\n", style.green("enabled"))
    } else {
        format!("{} {name}; it will not fire\n", style.red("disabled"))
    }
}

fn level_cell(style: Style, level: &str) -> String {
    let padded = format!("{:<5}", level.to_uppercase());
    match level {
        "error" => style.red(&padded),
        "warn" => style.yellow(&padded),
        "info" => style.green(&padded),
        _ => style.dim(&padded),
    }
}

fn clock(value: &Value, key: &str) -> String {
    time(value, key)
        .map(|at| {
            at.with_timezone(&chrono::Local)
                .format("%H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| "--:--:--".to_owned())
}

pub fn log_entry(style: Style, entry: &Value) -> String {
    if text(entry, "type") == LAGGED {
        return style.yellow(&format!(
            "… {} log entries were dropped (this reader fell behind) …",
            count(entry, "/missed")
        ));
    }
    let mut line = format!(
        "{} {} {}",
        style.dim(&clock(entry, "timestamp")),
        level_cell(style, text(entry, "level")),
        style.dim(text(entry, "source"))
    );
    for key in ["agentName", "jobId"] {
        if let Some(value) = entry.get(key).and_then(Value::as_str) {
            line.push_str(&format!(" {}", style.cyan(value)));
        }
    }
    line.push_str(&format!(": {}", text(entry, "message")));
    if let Some(Value::Object(extra)) = entry.get("fields") {
        for (key, value) in extra {
            let value = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            line.push_str(&style.dim(&format!(" {key}={value}")));
        }
    }
    line
}

/// The interesting fields of an event, after its type.
fn event_details(event: &Value) -> String {
    let job_id = || {
        let id = text(event, "jobId");
        if id.is_empty() {
            event
                .pointer("/job/id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        } else {
            id.to_owned()
        }
    };
    let agent = || {
        let name = text(event, "agentName");
        if name.is_empty() {
            event
                .pointer("/job/agentName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        } else {
            name.to_owned()
        }
    };
    match text(event, "type") {
        STOPPED => format!("reason: {}", text(event, "reason")),
        STOP_PROGRESS => format!("{} jobs pending", count(event, "/pendingJobs")),
        CONFIG_RELOADED => {
            let changes: Vec<&str> = event
                .get("changes")
                .and_then(Value::as_array)
                .map(|c| c.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if changes.is_empty() {
                "no changes".to_owned()
            } else {
                changes.join("; ")
            }
        }
        SCHEDULE_TRIGGERED => {
            format!("{}/{} → {}", agent(), text(event, "scheduleName"), job_id())
        }
        SCHEDULE_SKIPPED => format!(
            "{}/{} ({})",
            agent(),
            text(event, "scheduleName"),
            text(event, "reason")
        ),
        AGENT_STOPPED => format!("{} {} ({})", agent(), job_id(), text(event, "reason")),
        JOB_QUEUED => format!(
            "{} {} at position {}",
            agent(),
            job_id(),
            count(event, "/position")
        ),
        JOB_OUTPUT => format!(
            "{} #{} {}: {}",
            job_id(),
            count(event, "/line/seq"),
            event
                .pointer("/line/type")
                .and_then(Value::as_str)
                .unwrap_or(""),
            abbreviate(
                event
                    .pointer("/line/chunk")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                80
            )
        ),
        JOB_FAILED => {
            let message = event
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("");
            format!("{} {} {}", agent(), job_id(), abbreviate(message, 80))
        }
        JOB_CANCELLED => format!(
            "{} {} ({})",
            agent(),
            job_id(),
            text(event, "terminationType")
        ),
        JOB_FORKED => format!("{} from {}", job_id(), text(event, "forkedFrom")),
        ERROR => format!("{}: {}", text(event, "source"), text(event, "message")),
        LAGGED => format!(
            "{} events were dropped (this reader fell behind)",
            count(event, "/missed")
        ),
        _ => [agent(), job_id()]
            .into_iter()
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    }
}

pub fn event(style: Style, event: &Value) -> String {
    let kind = text(event, "type");
    let painted = match kind {
        JOB_FAILED | ERROR => style.red(kind),
        JOB_COMPLETED | STARTED => style.green(kind),
        SCHEDULE_SKIPPED | JOB_CANCELLED | LAGGED => style.yellow(kind),
        _ => style.cyan(kind),
    };
    format!(
        "{} {painted} {}",
        style.dim(&clock(event, "timestamp")),
        event_details(event)
    )
    .trim_end()
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PLAIN: Style = Style { color: false };

    #[test]
    fn status_names_the_next_fire() {
        let now: DateTime<Utc> = "2025-01-01T10:00:00Z".parse().unwrap();
        let value = json!({"state": "running", "uptime": 7_380_000,
            "agents": {"total": 3, "running": 1, "idle": 2},
            "jobs": {"active": 1, "queued": 0, "completed": 5, "failed": 1, "cancelled": 0},
            "scheduler": {"activeSchedules": 2, "nextTrigger":
                {"agentName": "greeter", "scheduleName": "hello", "at": "2025-01-01T10:04:10Z"}}});
        let out = status(PLAIN, &value, now);
        assert!(out.contains("running (up 2h 3m)"), "{out}");
        assert!(!out.contains("limits"), "{out}");
        let mut limited = value.clone();
        limited["limits"] = json!({"perAgent": 1, "maxConcurrent": null, "maxQueued": 1000,
            "maxJobsPerAgent": 100, "maxJobsTotal": 5000, "maxJobAge": 2_592_000_000u64});
        let out = status(PLAIN, &limited, now);
        assert!(
            out.contains("1 running per agent, no cap in the fleet, 1000 queued; history: 100 per agent, 5000 in all, 30d"),
            "{out}"
        );
        assert!(out.contains("2 active, next: greeter/hello in 4m"), "{out}");
        assert!(
            out.contains("1 running, 0 queued, 5 completed, 1 failed"),
            "{out}"
        );
    }

    #[test]
    fn status_and_agents_show_cost_and_budget() {
        let now: DateTime<Utc> = "2025-01-01T10:00:00Z".parse().unwrap();
        let period = |cost: f64, jobs: u64| {
            json!({"since": "2025-01-01T00:00:00Z", "jobs": jobs, "costUsd": cost, "inputTokens": 12_345,
                   "outputTokens": 950, "cacheCreationInputTokens": 0,
                   "cacheReadInputTokens": 2_500_000})
        };
        let usage = json!({"timezone": "Europe/Berlin", "today": period(0.004, 1),
                           "last7Days": period(12.5, 30)});
        let out = status(PLAIN, &json!({"state": "running", "usage": usage}), now);
        assert!(
            out.contains("cost today   $0.0040 (1 job; tokens 12.3k in, 950 out, 0 cache write, 2.5M cache read) [Europe/Berlin]"),
            "{out}"
        );
        assert!(out.contains("cost 7 days  $12.50 (30 jobs;"), "{out}");

        let agents_value = json!([
            {"name": "a", "state": "idle", "usage": usage,
             "budget": {"dailyUsd": 5.0, "spentToday": 5.25, "reached": true}},
            {"name": "b", "state": "idle", "usage": usage, "budget": null},
        ]);
        let out = agents(PLAIN, &agents_value, now);
        let rows: Vec<&str> = out.lines().collect();
        assert!(
            rows[0].ends_with("COST TODAY  COST 7D  BUDGET TODAY"),
            "{out}"
        );
        assert!(
            rows[1].ends_with("$0.0040     $12.50   $5.25 of $5.00, reached"),
            "{out}"
        );
        assert!(rows[2].ends_with("$0.0040     $12.50   -"), "{out}");
        let out = agent(PLAIN, &agents_value[0], now);
        assert!(
            out.contains("budget        $5.25 of $5.00, reached"),
            "{out}"
        );
        assert!(out.contains("cost 7 days   $12.50"), "{out}");
    }

    #[test]
    fn job_table_shows_gist_and_paging_hint() {
        let now: DateTime<Utc> = "2025-01-01T10:00:00Z".parse().unwrap();
        let page = json!({"total": 7, "jobs": [
            {"id": "job-2025-01-01-aaaaaa", "agentName": "a", "scheduleName": null, "triggerType": "manual",
             "status": "failed", "createdAt": "2025-01-01T08:00:00Z", "durationMs": 1500,
             "summary": null, "error": {"code": "exit", "message": "exit status 3"}}]});
        let out = jobs(PLAIN, &page, now);
        let row = out.lines().nth(1).unwrap();
        assert!(
            row.starts_with("job-2025-01-01-aaaaaa  a      (manual)  failed  2h ago"),
            "{out}"
        );
        assert!(row.ends_with("1.5s      exit status 3"), "{out}");
        assert!(out.contains("1 of 7 jobs shown"));
    }

    #[test]
    fn events_and_logs_are_one_readable_line() {
        let e = json!({"type": "schedule:skipped", "timestamp": "2025-01-01T10:00:00Z",
            "agentName": "a", "scheduleName": "s", "reason": "concurrency_limit"});
        assert!(event(PLAIN, &e).ends_with("schedule:skipped a/s (concurrency_limit)"));
        let log = json!({"timestamp": "2025-01-01T10:00:00Z", "level": "warn", "source": "fleet::run",
            "agentName": "a", "message": "job failed", "fields": {"exitCode": 3}});
        assert!(log_entry(PLAIN, &log).ends_with("WARN  fleet::run a: job failed exitCode=3"));
    }

    #[test]
    fn job_events_name_the_agent_of_their_job() {
        // Job events carry the agent only inside the job (`job.agentName`, protocol 2).
        let job =
            json!({"id": "job-2025-01-01-aaaaaa", "agentName": "team.w", "status": "completed"});
        let completed = json!({"type": "job:completed", "timestamp": "2025-01-01T10:00:00Z",
            "jobId": "job-2025-01-01-aaaaaa", "job": job, "result": null});
        assert!(
            event(PLAIN, &completed).ends_with("job:completed team.w job-2025-01-01-aaaaaa"),
            "{}",
            event(PLAIN, &completed)
        );
        let queued = json!({"type": "job:queued", "timestamp": "2025-01-01T10:00:00Z", "job": job,
            "position": 2});
        assert!(
            event(PLAIN, &queued)
                .ends_with("job:queued team.w job-2025-01-01-aaaaaa at position 2"),
            "{}",
            event(PLAIN, &queued)
        );
    }

    const COLOR: Style = Style { color: true };

    fn now() -> DateTime<Utc> {
        "2025-01-01T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_stopped_fleet_shows_no_uptime_no_next_fire_and_its_open_limits() {
        let value = json!({"state": "stopped", "uptime": 5_000, "startedAt": null,
            "configPath": null, "stateDir": "/var/lib/herdctld",
            "agents": {"total": 2, "running": 0, "idle": 2},
            "jobs": {"active": 0, "queued": 0, "completed": 0, "failed": 0, "cancelled": 0},
            "scheduler": {"running": false, "nextTrigger": null, "activeSchedules": 0},
            "limits": {"perAgent": 2, "maxConcurrent": 8, "maxQueued": 100,
                "maxJobsPerAgent": 50, "maxJobsTotal": null, "maxJobAge": null},
            "usage": null, "protocolVersion": "2"});
        let out = status(PLAIN, &value, now());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "fleet      stopped", "{out}");
        assert_eq!(lines[1], "config     -", "{out}");
        assert_eq!(lines[2], "state dir  /var/lib/herdctld", "{out}");
        assert_eq!(lines[5], "schedules  0 active, next: -", "{out}");
        assert_eq!(
            lines[6],
            "limits     2 running per agent, 8 in the fleet, 100 queued; history: 50 per agent, no cap in all, any age",
        );
        assert_eq!(lines.len(), 7, "no cost rows without usage: {out}");
    }

    #[test]
    fn an_agent_shows_its_current_and_last_job_budget_and_schedules() {
        let value = json!({"name": "team.w", "localName": "w", "fleetPath": ["team"],
            "description": null, "model": null, "runtime": "claude", "workingDirectory": "/srv/w",
            "state": "running", "concurrency": 2,
            "currentJobs": ["job-2025-01-01-bbbbbb"], "queuedJobs": 1,
            "lastJob": {"id": "job-2025-01-01-aaaaaa", "agentName": "team.w", "status": "failed",
                "createdAt": "2025-01-01T08:00:00Z"},
            "lastSessionId": "3f2c9a",
            "schedules": [{"agentName": "team.w", "name": "weekdays", "type": "cron",
                "enabled": true, "interval": null, "cron": "0 9 * * 1-5", "timezone": "Europe/Berlin",
                "nextTrigger": {"agentName": "team.w", "scheduleName": "weekdays",
                    "at": "2025-01-02T08:00:00Z"},
                "lastRunAt": null, "lastStatus": null, "lastError": null,
                "runs": 0, "skipped": 0, "failed": 0, "runningJobs": 0}],
            "budget": {"dailyUsd": 5.0, "spentToday": 1.2, "reached": false}});
        let out = agent(PLAIN, &value, now());
        assert!(out.contains("description   -\n"), "{out}");
        assert!(out.contains("model         -\n"), "{out}");
        assert!(
            out.contains("concurrency   1 running of 2, 1 queued\n"),
            "{out}"
        );
        assert!(
            out.contains("current jobs  job-2025-01-01-bbbbbb\n"),
            "{out}"
        );
        assert!(
            out.contains("last job      job-2025-01-01-aaaaaa failed 2h ago\n"),
            "{out}"
        );
        assert!(out.contains("session       3f2c9a\n"), "{out}");
        assert!(
            out.contains("budget        $1.20 of $5.00\n"),
            "not reached: {out}"
        );
        assert!(!out.contains("cost today"), "{out}");
        let row = out.lines().last().unwrap();
        assert!(
            row.starts_with("team.w  weekdays  cron  0 9 * * 1-5 (Europe/Berlin)  yes      in 22h"),
            "{out}"
        );
    }

    #[test]
    fn agents_table_counts_running_jobs_and_names_schedules() {
        let value = json!([{"name": "team.w", "state": "running", "runtime": "command",
            "concurrency": 2, "currentJobs": ["job-2025-01-01-bbbbbb"], "queuedJobs": 3,
            "schedules": [{"name": "hourly"}, {"name": "nightly"}],
            "lastJob": {"id": "job-2025-01-01-aaaaaa", "status": "completed",
                "createdAt": "2025-01-01T09:30:00Z"},
            "budget": {"dailyUsd": 2.0, "spentToday": 0.5, "reached": false}}]);
        let out = agents(PLAIN, &value, now());
        let row = out.lines().nth(1).unwrap();
        assert_eq!(
            row,
            "team.w  running  command  1/2      3       hourly,nightly  completed 30m ago  -           -        $0.50 of $2.00",
            "{out}"
        );
        assert_eq!(agents(PLAIN, &json!([]), now()), "no agents configured\n");
    }

    #[test]
    fn schedules_table_describes_each_kind_and_its_last_run() {
        let value = json!([
            {"agentName": "a", "name": "often", "type": "interval", "enabled": true,
             "interval": "30s", "cron": null, "timezone": null,
             "nextTrigger": {"agentName": "a", "scheduleName": "often", "at": "2025-01-01T10:00:20Z"},
             "lastRunAt": "2025-01-01T09:50:00Z", "lastStatus": "failed", "lastError": "exit 3",
             "runs": 4, "skipped": 0, "failed": 1, "runningJobs": 0},
            {"agentName": "a", "name": "hook", "type": "webhook", "enabled": false,
             "interval": null, "cron": null, "timezone": null, "nextTrigger": null,
             "lastRunAt": null, "lastStatus": null, "lastError": null,
             "runs": 0, "skipped": 0, "failed": 0, "runningJobs": 0}]);
        let out = schedules(PLAIN, &value, now());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[1], "a      often     interval  every 30s  yes      in 20s  10m ago   failed",
            "{out}"
        );
        assert_eq!(
            lines[2], "a      hook      webhook   webhook    no       -       -         -",
            "{out}"
        );
        assert_eq!(
            schedules(PLAIN, &json!([]), now()),
            "no schedules configured\n"
        );
    }

    #[test]
    fn enabling_a_schedule_says_when_it_runs_next() {
        let mut value = json!({"agentName": "quick", "name": "yearly", "type": "cron",
            "enabled": true, "interval": null, "cron": "0 0 1 1 *", "timezone": "UTC",
            "nextTrigger": {"agentName": "quick", "scheduleName": "yearly", "at": "2025-01-01T10:04:00Z"}});
        assert_eq!(
            schedule_change(PLAIN, &value, now()),
            "enabled quick/yearly; next run in 4m\n"
        );
        value["nextTrigger"] = Value::Null;
        assert_eq!(
            schedule_change(PLAIN, &value, now()),
            "enabled quick/yearly; it has no upcoming run\n"
        );
        value["enabled"] = json!(false);
        assert_eq!(
            schedule_change(PLAIN, &value, now()),
            "disabled quick/yearly; it will not fire\n"
        );
    }

    #[test]
    fn a_failed_job_shows_its_exit_reason_error_code_and_message() {
        let value = json!({"id": "job-2025-01-01-aaaaaa", "agentName": "team.w",
            "scheduleName": "nightly", "triggerType": "schedule", "status": "failed",
            "exitReason": "timeout", "prompt": "Summarise the open issues ".repeat(5),
            "forkedFrom": null, "sessionId": null,
            "createdAt": "2025-01-01T09:00:00Z", "startedAt": "2025-01-01T09:00:01Z",
            "finishedAt": "2025-01-01T09:05:01Z", "durationMs": 300_000,
            "exitCode": null, "signal": 15, "summary": null, "result": null,
            "error": {"code": "TIMEOUT", "message": "timed out after 5m; the job was stopped"},
            "workItems": null, "priority": 5, "pid": 4242, "pgid": 4242,
            "executorRun": null, "outputTruncated": false, "usage": null});
        let out = job(PLAIN, &value, now());
        assert!(out.contains("schedule  nightly\n"), "{out}");
        assert!(out.contains("status    failed (timeout)\n"), "{out}");
        assert!(
            out.contains("created   2025-01-01 09:00:00 UTC (1h ago)\n"),
            "{out}"
        );
        assert!(out.contains("duration  5m 00s\n"), "{out}");
        assert!(out.contains("signal    15\n"), "{out}");
        assert!(out.contains("pid       4242\n"), "{out}");
        assert!(
            out.contains("error     TIMEOUT: timed out after 5m; the job was stopped\n"),
            "{out}"
        );
        let prompt = out.lines().find(|l| l.starts_with("prompt")).unwrap();
        assert_eq!(prompt.chars().count(), "prompt    ".len() + 101, "{out}");
        assert!(prompt.ends_with('…'), "{out}");
        for absent in ["exit code", "forked from", "session", "result", "summary"] {
            assert!(!out.contains(absent), "no {absent}: {out}");
        }
    }

    #[test]
    fn a_completed_job_shows_its_result_fork_session_and_summary() {
        let value = json!({"id": "job-2025-01-01-cccccc", "agentName": "team.w",
            "scheduleName": null, "triggerType": "fork", "status": "completed",
            "exitReason": "success", "forkedFrom": "job-2025-01-01-aaaaaa", "sessionId": "3f2c9a",
            "createdAt": "2025-01-01T09:58:00Z", "startedAt": "2025-01-01T09:58:00Z",
            "finishedAt": "2025-01-01T09:58:04Z", "durationMs": 4_200, "exitCode": 0,
            "signal": null, "pid": null, "summary": "Three issues need a reply.",
            "result": {"type": "result", "subtype": "success", "total_cost_usd": 0.0123,
                "num_turns": 3, "duration_ms": 4_200},
            "error": null});
        let out = job(PLAIN, &value, now());
        assert!(out.contains("schedule     -\n"), "{out}");
        assert!(out.contains("status       completed\n"), "{out}");
        assert!(out.contains("exit code    0\n"), "{out}");
        assert!(
            out.contains("forked from  job-2025-01-01-aaaaaa\n"),
            "{out}"
        );
        assert!(out.contains("session      3f2c9a\n"), "{out}");
        assert!(
            out.contains("result       $0.0123 · 3 turns · 4.2s\n"),
            "{out}"
        );
        assert!(
            out.ends_with("\nsummary\nThree issues need a reply.\n"),
            "{out}"
        );
        let cancelled = json!({"id": "job-2025-01-01-dddddd", "status": "cancelled",
            "exitReason": "cancelled", "createdAt": "2025-01-01T09:58:00Z"});
        let out = job(PLAIN, &cancelled, now());
        assert!(out.contains("status    cancelled\n"), "{out}");
        assert!(out.contains("finished  -\n"), "{out}");
    }

    #[test]
    fn a_cluster_job_shows_where_it_runs_and_a_claude_job_its_tokens() {
        let held = json!({"id": "job-2025-01-01-eeeeee", "status": "queued",
            "createdAt": "2025-01-01T09:58:00Z",
            "executorRun": {"executor": "slurm", "id": "4711", "pendingReason": "Resources"}});
        let out = job(PLAIN, &held, now());
        assert!(
            out.contains("runs on   slurm job 4711, held: Resources\n"),
            "{out}"
        );
        let unsubmitted = json!({"id": "job-2025-01-01-eeeeee", "status": "queued",
            "executorRun": {"executor": "slurm", "id": null, "pendingReason": null}});
        let out = job(PLAIN, &unsubmitted, now());
        assert!(
            out.contains("runs on   slurm (not submitted yet)\n"),
            "{out}"
        );
        let local =
            json!({"id": "job-2025-01-01-eeeeee", "status": "running", "executorRun": null});
        assert!(!job(PLAIN, &local, now()).contains("runs on"));

        let claude = json!({"id": "job-2025-01-01-ffffff", "status": "completed",
            "usage": {"numTurns": 3, "totalCostUsd": 0.02, "perModel": {
                "claude-haiku": {"inputTokens": 950, "outputTokens": 12, "cacheCreationInputTokens": 0,
                    "cacheReadInputTokens": 0},
                "claude-sonnet": {"inputTokens": 1_234, "outputTokens": 340,
                    "cacheCreationInputTokens": 2_000, "cacheReadInputTokens": 15_000}}}});
        let out = job(PLAIN, &claude, now());
        assert!(
            out.contains("tokens    claude-haiku: 950 in · 12 out\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "tokens    claude-sonnet: 1.2k in · 340 out · 15.0k cache read · 2.0k cache write\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn job_table_shows_schedule_elapsed_time_and_abbreviated_summary() {
        let page = json!({"total": 2, "jobs": [
            {"id": "job-2025-01-01-aaaaaa", "agentName": "a", "scheduleName": "hourly",
             "triggerType": "schedule", "status": "running", "createdAt": "2025-01-01T09:58:00Z",
             "startedAt": "2025-01-01T09:58:30Z", "durationMs": null, "summary": null, "error": null},
            {"id": "job-2025-01-01-bbbbbb", "agentName": "a", "scheduleName": null,
             "triggerType": "manual", "status": "completed", "createdAt": "2025-01-01T09:00:00Z",
             "durationMs": 900, "error": null,
             "summary": "Reviewed all twelve pull requests and left comments on three of them."}]});
        let out = jobs(PLAIN, &page, now());
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[1].ends_with("hourly    running    2m ago   1m 30s…"),
            "{out}"
        );
        assert!(
            lines[2].ends_with(
                "(manual)  completed  1h ago   900ms     Reviewed all twelve pull requests and left comment…"
            ),
            "{out}"
        );
        assert_eq!(lines.len(), 3, "all jobs shown, no paging hint: {out}");
    }

    #[test]
    fn log_entries_show_their_job_fields_and_lag_notices() {
        let entry = json!({"timestamp": "2025-01-01T10:00:00Z", "level": "error", "source": "runner",
            "agentName": "team.w", "jobId": "job-2025-01-01-aaaaaa", "message": "job failed",
            "fields": {"exitCode": 3, "reason": "exit status"}});
        assert!(
            log_entry(PLAIN, &entry).ends_with(
                "ERROR runner team.w job-2025-01-01-aaaaaa: job failed exitCode=3 reason=exit status"
            ),
            "{}",
            log_entry(PLAIN, &entry)
        );
        let quiet = json!({"timestamp": "2025-01-01T10:00:00Z", "level": "info", "source": "fleet",
            "agentName": null, "jobId": null, "message": "fleet started", "fields": {}});
        assert!(log_entry(PLAIN, &quiet).ends_with(" INFO  fleet: fleet started"));
        let lagged = json!({"type": "lagged", "timestamp": "2025-01-01T10:00:00Z", "missed": 12});
        assert_eq!(
            log_entry(PLAIN, &lagged),
            "… 12 log entries were dropped (this reader fell behind) …"
        );
    }

    #[test]
    fn colour_marks_levels_event_kinds_and_a_reached_budget() {
        let entry = |level: &str| {
            json!({"timestamp": "2025-01-01T10:00:00Z", "level": level, "source": "fleet",
                "agentName": "a", "jobId": null, "message": "m", "fields": {}})
        };
        assert!(log_entry(COLOR, &entry("error")).contains(" \x1b[31mERROR\x1b[0m "));
        assert!(log_entry(COLOR, &entry("info")).contains(" \x1b[32mINFO \x1b[0m "));
        assert!(log_entry(COLOR, &entry("debug")).contains(" \x1b[2mDEBUG\x1b[0m "));
        assert!(log_entry(COLOR, &entry("info")).contains(" \x1b[36ma\x1b[0m: m"));
        let kind = |kind: &str| {
            event(
                COLOR,
                &json!({"type": kind, "timestamp": "2025-01-01T10:00:00Z"}),
            )
        };
        assert!(kind("error").contains(" \x1b[31merror\x1b[0m"));
        assert!(kind("started").contains(" \x1b[32mstarted\x1b[0m"));
        assert!(kind("lagged").contains(" \x1b[33mlagged\x1b[0m"));
        assert!(kind("initialized").contains(" \x1b[36minitialized\x1b[0m"));
        let agent_value =
            json!({"name": "a", "budget": {"dailyUsd": 1.0, "spentToday": 1.0, "reached": true}});
        assert_eq!(
            budget_cell(COLOR, &agent_value),
            "\x1b[31m$1.00 of $1.00, reached\x1b[0m"
        );
    }

    #[test]
    fn fleet_events_name_what_happened() {
        let job =
            json!({"id": "job-2025-01-01-aaaaaa", "agentName": "team.w", "status": "running"});
        let cases = [
            (json!({"type": "started"}), "started"),
            (
                json!({"type": "stopped", "reason": "SIGTERM"}),
                "stopped reason: SIGTERM",
            ),
            (
                json!({"type": "stop:progress", "pendingJobs": 2}),
                "stop:progress 2 jobs pending",
            ),
            (
                json!({"type": "config:reloaded", "agentCount": 2,
                    "changes": ["agent:team.w:model changed", "agent:team.x added"]}),
                "config:reloaded agent:team.w:model changed; agent:team.x added",
            ),
            (
                json!({"type": "config:reloaded", "changes": [], "agentCount": 2}),
                "config:reloaded no changes",
            ),
            (
                json!({"type": "schedule:triggered", "agentName": "team.w",
                    "scheduleName": "hourly", "jobId": "job-2025-01-01-aaaaaa"}),
                "schedule:triggered team.w/hourly → job-2025-01-01-aaaaaa",
            ),
            (
                json!({"type": "agent:started", "agentName": "team.w", "jobId": "job-2025-01-01-aaaaaa"}),
                "agent:started team.w job-2025-01-01-aaaaaa",
            ),
            (
                json!({"type": "agent:stopped", "agentName": "team.w",
                    "jobId": "job-2025-01-01-aaaaaa", "reason": "completed"}),
                "agent:stopped team.w job-2025-01-01-aaaaaa (completed)",
            ),
            (
                json!({"type": "job:output", "jobId": "job-2025-01-01-aaaaaa",
                    "line": {"seq": 7, "timestamp": "2025-01-01T10:00:00Z", "type": "stderr",
                        "chunk": "warning: retrying\nsecond line"}}),
                "job:output job-2025-01-01-aaaaaa #7 stderr: warning: retrying…",
            ),
            (
                json!({"type": "job:cancelled", "jobId": "job-2025-01-01-aaaaaa", "job": job,
                    "terminationType": "forced"}),
                "job:cancelled team.w job-2025-01-01-aaaaaa (forced)",
            ),
            (
                json!({"type": "job:forked", "job": job, "forkedFrom": "job-2025-01-01-zzzzzz"}),
                "job:forked job-2025-01-01-aaaaaa from job-2025-01-01-zzzzzz",
            ),
            (
                json!({"type": "error", "source": "state", "message": "cannot write jobs/x.yaml"}),
                "error state: cannot write jobs/x.yaml",
            ),
            (
                json!({"type": "lagged", "missed": 40}),
                "lagged 40 events were dropped (this reader fell behind)",
            ),
        ];
        for (mut value, expected) in cases {
            value["timestamp"] = json!("2025-01-01T10:00:00Z");
            let line = event(PLAIN, &value);
            assert!(
                line.ends_with(expected),
                "{line:?} should end with {expected:?}"
            );
        }
    }

    #[test]
    fn a_failed_job_event_shows_the_first_line_of_its_error() {
        let e = json!({"type": "job:failed", "timestamp": "2025-01-01T10:00:00Z",
            "jobId": "job-2025-01-01-aaaaaa",
            "job": {"id": "job-2025-01-01-aaaaaa", "agentName": "team.w", "status": "failed"},
            "error": {"code": "EXIT_CODE",
                "message": "claude exited with code 3; stderr:\nboom\nmore"}});
        let line = event(PLAIN, &e);
        assert!(
            line.ends_with(
                "job:failed team.w job-2025-01-01-aaaaaa claude exited with code 3; stderr:…"
            ),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }
}
