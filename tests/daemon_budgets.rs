//! Daily budgets and cost totals over the socket and in `herdctl` (issue 19): a manual run once the day's
//! spend reached the budget is refused with `1009 BUDGET_EXCEEDED` unless it passes `overBudget`, a
//! schedule fire is skipped with reason `budget` (event and log), totals show in `getStatus`/`getAgents`
//! and in `herdctl status`/`agents`, and all of it holds after the daemon is killed and restarted.

#[path = "support/noon.rs"]
mod noon;
mod support;

use serde_json::{json, Value};
use support::*;

/// No `timezone`: its day is the host's, which the test sets with `TZ`. Each job costs $0.03.
const SPENDER: &str = r#"name: spender
runtime: command
command:
  - sh
  - -c
  - |
    echo '{"type":"result","subtype":"success","is_error":false,"result":"spent","num_turns":1,"total_cost_usd":0.03,"modelUsage":{"m":{"inputTokens":100,"outputTokens":20,"cacheReadInputTokens":5,"cacheCreationInputTokens":1}}}'
budget:
  daily_usd: 0.05
schedules:
  tick:
    type: interval
    interval: 1h
    enabled: false
"#;

/// No budget; each job costs $0.50 and reports no tokens.
const FREE: &str = r#"name: free
runtime: command
command: [sh, -c, "echo '{\"type\":\"result\",\"subtype\":\"success\",\"result\":\"ok\",\"total_cost_usd\":0.5}'"]
"#;

const JOB_ENDS: [&str; 3] = ["job:completed", "job:failed", "job:cancelled"];

fn write_budget_fleet(dir: &TestDir) {
    let agents = dir.path().join("agents");
    std::fs::create_dir_all(&agents).unwrap();
    std::fs::write(agents.join("spender.yaml"), SPENDER).unwrap();
    std::fs::write(agents.join("free.yaml"), FREE).unwrap();
    std::fs::write(
        dir.path().join("herdctl.yaml"),
        fleet_yaml(&["spender.yaml", "free.yaml"]),
    )
    .unwrap();
}

fn options(zone: &str) -> DaemonOptions {
    DaemonOptions {
        env: vec![("TZ".into(), zone.into())],
        keep_existing_fleet: true,
        ..DaemonOptions::default()
    }
}

fn approx(value: &Value, expected: f64) -> bool {
    value.as_f64().is_some_and(|v| (v - expected).abs() < 1e-9)
}

/// Runs `method` and waits for the end of the job it created; returns the job id.
async fn run(client: &mut Client, events: &Value, method: &str, params: Value) -> String {
    let job = client.call(method, params).await;
    let id = job["id"].as_str().unwrap().to_owned();
    loop {
        let event = wait_for_event_of(client, events, &id).await;
        if JOB_ENDS.contains(&event["type"].as_str().unwrap_or("")) {
            assert_eq!(event["type"], "job:completed", "{event}");
            return id;
        }
    }
}

async fn wait_for_event_of(client: &mut Client, events: &Value, id: &str) -> Value {
    loop {
        let event = client.notification(events).await;
        if event_job_id(&event) == Some(id) {
            return event;
        }
    }
}

fn assert_refused(error: &Value, zone: &str, spent: f64) {
    assert_eq!(error["code"], 1009, "{error}");
    let data = &error["data"];
    assert_eq!(data["code"], "BUDGET_EXCEEDED", "{error}");
    assert_eq!(data["agentName"], "spender", "{error}");
    assert_eq!(data["timezone"], zone, "{error}");
    assert_eq!(data["override"], "overBudget", "{error}");
    assert!(approx(&data["spentUsd"], spent), "{error}");
    assert!(approx(&data["budgetUsd"], 0.05), "{error}");
    assert_eq!(data["day"].as_str().map(str::len), Some(10), "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("daily budget is $0.05") && message.contains("overBudget: true"),
        "{message}"
    );
}

fn herdctl(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_herdctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .env_remove("HERDCTL_SOCKET")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn a_spent_budget_refuses_runs_unless_overridden_skips_fires_and_survives_a_restart() {
    let zone = noon::noon_zone();
    let dir = TestDir::new();
    write_budget_fleet(&dir);
    let daemon = Daemon::start_in(dir, options(&zone)).await;
    let mut client = daemon.ndjson().await;
    let events = client
        .subscribe(
            "subscribeEvents",
            json!({"types": ["job:completed", "job:failed", "job:cancelled", "schedule:skipped",
                             "schedule:triggered"]}),
        )
        .await;

    // $0.03, then $0.06: the second run starts below the budget and ends above it.
    let first = run(
        &mut client,
        &events,
        "trigger",
        json!({"agentName": "spender"}),
    )
    .await;
    run(
        &mut client,
        &events,
        "trigger",
        json!({"agentName": "spender"}),
    )
    .await;
    let error = client
        .call_err("trigger", json!({"agentName": "spender"}))
        .await;
    assert_refused(&error, &zone, 0.06);
    let forked = client.call_err("forkJob", json!({"id": first})).await;
    assert_refused(&forked, &zone, 0.06);
    run(
        &mut client,
        &events,
        "trigger",
        json!({"agentName": "spender", "overBudget": true}),
    )
    .await;
    run(
        &mut client,
        &events,
        "forkJob",
        json!({"id": first, "overBudget": true}),
    )
    .await;
    // An agent without a budget is never refused.
    run(
        &mut client,
        &events,
        "trigger",
        json!({"agentName": "free"}),
    )
    .await;

    let check_totals = |spender: &Value, status: &Value| {
        assert_eq!(
            spender["budget"]["dailyUsd"],
            json!(0.05),
            "{}",
            spender["budget"]
        );
        assert!(
            approx(&spender["budget"]["spentToday"], 0.12),
            "{}",
            spender["budget"]
        );
        assert_eq!(spender["budget"]["reached"], true);
        let usage = &spender["usage"];
        assert_eq!(usage["timezone"], zone.as_str(), "the host's zone: {usage}");
        for period in ["today", "last7Days"] {
            let totals = &usage[period];
            assert_eq!(
                (
                    &totals["jobs"],
                    &totals["inputTokens"],
                    &totals["outputTokens"],
                    &totals["cacheCreationInputTokens"],
                    &totals["cacheReadInputTokens"]
                ),
                (&json!(4), &json!(400), &json!(80), &json!(4), &json!(20)),
                "{period}: {totals}"
            );
            assert!(approx(&totals["costUsd"], 0.12), "{period}: {totals}");
            assert!(totals["since"].is_string(), "{totals}");
        }
        let fleet = &status["usage"];
        assert_eq!(fleet["today"]["jobs"], 5, "{fleet}");
        assert!(approx(&fleet["today"]["costUsd"], 0.62), "{fleet}");
        assert!(approx(&fleet["last7Days"]["costUsd"], 0.62), "{fleet}");
    };
    let spender = client.call("getAgent", json!({"name": "spender"})).await;
    let status = client.call("getStatus", json!({})).await;
    check_totals(&spender, &status);
    let free = client.call("getAgent", json!({"name": "free"})).await;
    assert!(free["budget"].is_null(), "{free}");
    assert!(approx(&free["usage"]["today"]["costUsd"], 0.5), "{free}");

    // Enabled, the schedule that never ran fires at once: skipped, event and log.
    client
        .call(
            "enableSchedule",
            json!({"agentName": "spender", "scheduleName": "tick"}),
        )
        .await;
    let fire = loop {
        let event = client.notification(&events).await;
        if event["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("schedule:"))
        {
            break event;
        }
    };
    assert_eq!(
        (&fire["type"], &fire["scheduleName"], &fire["reason"]),
        (&json!("schedule:skipped"), &json!("tick"), &json!("budget")),
        "{fire}"
    );
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("the agent's daily budget is spent") && stderr.contains("reason=Budget"),
        "{stderr}"
    );

    // The command line: refused with the daemon's message, --over-budget runs, the views show cost.
    let refused = herdctl(&daemon, &["trigger", "spender"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        text(&refused.stderr).contains("--over-budget"),
        "{refused:?}"
    );
    let allowed = herdctl(&daemon, &["trigger", "spender", "--over-budget", "--wait"]);
    assert_eq!(allowed.status.code(), Some(0), "{allowed:?}");
    let agents = text(&herdctl(&daemon, &["agents"]).stdout);
    assert!(agents.contains("$0.15 of $0.05, reached"), "{agents}");
    let status_text = text(&herdctl(&daemon, &["status"]).stdout);
    assert!(
        status_text.contains("cost today   $0.65 (6 jobs;"),
        "{status_text}"
    );

    // Killed and restarted: spend comes back from the job records, and still refuses.
    drop(client);
    let dir = daemon.into_dir();
    let daemon = Daemon::start_in(dir, options(&zone)).await;
    let mut client = daemon.ndjson().await;
    let spender = client.call("getAgent", json!({"name": "spender"})).await;
    assert!(
        approx(&spender["budget"]["spentToday"], 0.15),
        "{}",
        spender["budget"]
    );
    assert_eq!(spender["usage"]["today"]["jobs"], 5);
    let error = client
        .call_err("trigger", json!({"agentName": "spender"}))
        .await;
    assert_refused(&error, &zone, 0.15);
}
