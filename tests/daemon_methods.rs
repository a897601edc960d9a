//! Every method of the method table over every framing (NDJSON, WebSocket, HTTP) against the daemon (the
//! library's, in-process, on the same command line as the binary, served before `initialize`), with the
//! error codes and `data.code` of SPEC §11; and, over NDJSON and WebSocket, every kind of event, log notice
//! and output line the document defines, each checked against its schema.

mod support;

use std::collections::BTreeSet;

use serde_json::{json, Value};
use support::*;

/// A job id that is well formed but names no job.
const UNKNOWN_JOB: &str = "job-2000-01-01-zzzzzz";

/// The id of a record in the state directory that neither tool can read: `initialize` moves it aside and
/// says so in an `error` event.
const UNREADABLE_JOB: &str = "job-2000-01-01-broken";

/// Held at its gate (as `gated`), one job at a time, with two hourly schedules that, never having run, are
/// both due once a reload adds the agent: one fire runs, the other is skipped.
const EXTRA_AGENT: &str = r#"name: extra
runtime: command
command:
  - sh
  - -c
  - |
    while [ ! -e "gate-$HERDCTL_JOB_ID" ]; do sleep 0.02; done
concurrency: 1
schedules:
  first:
    type: interval
    interval: 1h
  second:
    type: interval
    interval: 1h
"#;

/// Short lines of the `loud` agent's output before its long ones.
const LOUD_SHORT_LINES: u64 = 30_000;

/// [`LOUD_SHORT_LINES`] short lines, then eight lines longer than the line cap (1 MiB), then exit 3: more
/// events than a reader that does not read can be kept, lines cut with `truncated`, more output than one
/// reply carries, and a failure.
const LOUD_AGENT: &str = r#"name: loud
runtime: command
command:
  - sh
  - -c
  - |
    seq 1 30000
    for i in 1 2 3 4 5 6 7 8; do head -c 1100000 /dev/zero | tr '\0' x; echo; done
    exit 3
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_over_ndjson() {
    every_method(Framing::Ndjson).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_over_websocket() {
    every_method(Framing::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_over_http() {
    every_method(Framing::Http).await;
}

async fn every_method(framing: Framing) {
    let dir = TestDir::new();
    let jobs_dir = dir.path().join("state").join("jobs");
    std::fs::create_dir_all(&jobs_dir).unwrap();
    std::fs::write(
        jobs_dir.join(format!("{UNREADABLE_JOB}.yaml")),
        "{ not: [a record",
    )
    .unwrap();
    // Served before `initialize`, which the client calls; a queue of one makes the third blocker
    // trigger hit CONCURRENCY_LIMIT.
    let daemon = Daemon::start_in(
        dir,
        DaemonOptions {
            args: vec!["--max-queued".into(), "1".into()],
            uninitialized: true,
            ..DaemonOptions::in_process()
        },
    )
    .await;
    let mut client = daemon.connect(framing).await;
    // Every event of the run, from before `initialize` (HTTP has no subscriptions).
    let events = match framing {
        Framing::Http => None,
        _ => Some(client.subscribe("subscribeEvents", json!({})).await),
    };

    initialize_and_start(&mut client).await;
    lifecycle(&mut client).await;
    queries(&mut client).await;
    schedules(&mut client).await;
    let finished = jobs(&mut client, &daemon).await;
    queue_cancel_and_limits(&mut client, &finished).await;
    reload(&mut client, &daemon).await;
    if let Some(events) = &events {
        scheduled_fires(&mut client, &daemon, events).await;
    }
    invalid_params(&mut client).await;
    subscriptions(&mut client).await;
    if let Some(events) = &events {
        notifications(&mut client, &finished, events).await;
        // Its last event was delivered: everything it had is in.
        client.unsubscribe("unsubscribeEvents", events).await;
        client.received().await;
    }
    let (loud, checked_elsewhere) = loud_job(&mut client, &daemon).await;
    output_too_large(&mut client, &loud).await;

    let status = client.call("getStatus", Value::Null).await;
    let discovered = client.call("rpc.discover", Value::Null).await;
    assert_eq!(status["protocolVersion"], discovered["info"]["version"]);
    let document: Value =
        serde_json::from_str(&std::fs::read_to_string(openrpc_path()).unwrap()).unwrap();
    assert_eq!(discovered, document);
    // Every answer above was checked against openrpc.json's schemas by the clients; all of them were
    // met, with every kind of event, log notice and output line, but for what HTTP cannot carry: it has
    // no subscriptions.
    let mut checked = client.checked().clone();
    checked.extend(checked_elsewhere);
    let mut unchecked: Vec<String> = schema::documented().difference(&checked).cloned().collect();
    if framing == Framing::Http {
        unchecked.retain(|name| {
            !name.starts_with("notification:") && !is_subscription(name) && !name.contains('/')
        });
    }
    assert!(
        unchecked.is_empty(),
        "never received over {framing:?}: {unchecked:?}"
    );
}

fn openrpc_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto-docs/openrpc.json")
}

/// `initialize` and `start` over the socket, as a client that found the daemon not yet initialized.
async fn initialize_and_start(client: &mut Client) {
    assert_eq!(client.call("getState", Value::Null).await, "uninitialized");
    assert_eq!(
        client.call("initialize", Value::Null).await,
        json!({"state": "initialized"})
    );
    let error = client.call_err("initialize", Value::Null).await;
    assert_error(&error, 1005, "INVALID_STATE");
    assert_eq!(error["data"]["currentState"], "initialized");
    assert_eq!(error["data"]["operation"], "initialize");
    assert_eq!(client.call("start", json!([])).await["state"], "running");
}

async fn lifecycle(client: &mut Client) {
    assert_eq!(client.call("getState", Value::Null).await, "running");
    assert_error(
        &client.call_err("start", Value::Null).await,
        1005,
        "INVALID_STATE",
    );

    let stopped = client
        .call("stop", json!({"waitForJobs": true, "timeout": 5000}))
        .await;
    assert_eq!(stopped["state"], "stopped");
    assert_eq!(client.call("getState", json!([])).await, "stopped");
    let error = client.call_err("stop", Value::Null).await;
    assert_error(&error, 1005, "INVALID_STATE");
    assert_eq!(error["data"]["currentState"], "stopped");

    assert_eq!(client.call("start", Value::Null).await["state"], "running");
    // Positional params of stop: waitForJobs, timeout, cancelOnTimeout.
    assert_eq!(
        client.call("stop", json!([false, 1000, true])).await["state"],
        "stopped"
    );
    assert_eq!(client.call("start", json!({})).await["state"], "running");
}

async fn queries(client: &mut Client) {
    let asked = chrono::Utc::now();
    let status = client.call("getStatus", Value::Null).await;
    assert_eq!(status["state"], "running");
    assert_eq!(status["agents"]["total"], 3);
    for field in ["active", "queued", "completed", "failed", "cancelled"] {
        assert!(status["jobs"][field].is_u64(), "jobs.{field} in {status}");
    }
    // Milliseconds, the seed's unit: at least the time from the start to the call (seconds would be less).
    let started: chrono::DateTime<chrono::Utc> =
        status["startedAt"].as_str().unwrap().parse().unwrap();
    let uptime = status["uptime"].as_i64().expect("uptime");
    assert!(
        uptime >= (asked - started).num_milliseconds(),
        "uptime {uptime} ms, started {started}, asked at {asked}"
    );
    assert!(status["scheduler"]["activeSchedules"].is_u64(), "{status}");

    let agents = client.call("getAgents", Value::Null).await;
    let mut names: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["blocker", "echo", "gated"]);

    let echo = client.call("getAgent", json!({"name": "echo"})).await;
    assert_eq!(echo["name"], "echo");
    assert_eq!(echo["schedules"].as_array().unwrap().len(), 2);
    assert_eq!(
        client.call("getAgent", json!(["gated"])).await["name"],
        "gated"
    );

    let error = client.call_err("getAgent", json!({"name": "nobody"})).await;
    assert_error(&error, 1002, "AGENT_NOT_FOUND");
    assert_eq!(error["data"]["agentName"], "nobody");
    assert!(
        error["message"].as_str().unwrap().contains("echo"),
        "{error}"
    );
}

async fn schedules(client: &mut Client) {
    let all = client.call("getSchedules", Value::Null).await;
    let names: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}/{}",
                s["agentName"].as_str().unwrap(),
                s["name"].as_str().unwrap()
            )
        })
        .collect();
    for expected in ["echo/yearly", "echo/off", "blocker/nightly"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }

    let yearly = client
        .call(
            "getSchedule",
            json!({"agentName": "echo", "scheduleName": "yearly"}),
        )
        .await;
    assert_eq!(yearly["type"], "cron");
    assert_eq!(yearly["enabled"], true);
    // The same shape as getStatus's scheduler.nextTrigger.
    assert_eq!(yearly["nextTrigger"]["agentName"], "echo", "{yearly}");
    assert_eq!(yearly["nextTrigger"]["scheduleName"], "yearly", "{yearly}");
    assert!(yearly["nextTrigger"]["at"].is_string(), "{yearly}");
    assert!(yearly["interval"].is_null(), "{yearly}");
    let off = client.call("getSchedule", json!(["echo", "off"])).await;
    assert_eq!(off["enabled"], false);
    assert_eq!(off["nextTrigger"], Value::Null);

    let disabled = client
        .call(
            "disableSchedule",
            json!({"agentName": "echo", "scheduleName": "yearly"}),
        )
        .await;
    assert_eq!(disabled["enabled"], false);
    assert_eq!(disabled["nextTrigger"], Value::Null);
    let enabled = client
        .call("enableSchedule", json!(["echo", "yearly"]))
        .await;
    assert_eq!(enabled["enabled"], true);
    assert!(enabled["nextTrigger"]["at"].is_string(), "{enabled}");

    for method in ["getSchedule", "enableSchedule", "disableSchedule"] {
        let error = client
            .call_err(method, json!({"agentName": "echo", "scheduleName": "nope"}))
            .await;
        assert_error(&error, 1004, "SCHEDULE_NOT_FOUND");
        assert_eq!(error["data"]["agentName"], "echo");
        assert_eq!(error["data"]["scheduleName"], "nope");
        let error = client
            .call_err(method, json!({"agentName": "nobody", "scheduleName": "x"}))
            .await;
        assert_error(&error, 1002, "AGENT_NOT_FOUND");
    }
}

/// Triggers, reads and forks an echo job; returns the id of the finished job.
async fn jobs(client: &mut Client, daemon: &Daemon) -> String {
    let job = client
        .call("trigger", json!({"agentName": "echo", "prompt": "say hi"}))
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("job-"), "{job}");
    assert_eq!(job["agentName"], "echo");
    assert_eq!(job["triggerType"], "manual");
    assert!(
        ["queued", "running"].contains(&job["status"].as_str().unwrap()),
        "{job}"
    );
    let done = wait_for_job_status(client, &id, &["completed", "failed", "cancelled"]).await;
    assert_eq!(done["status"], "completed", "{done}\n{}", daemon.stderr());
    assert_eq!(done["exitReason"], "success");
    assert_eq!(done["summary"], "echoed");

    let with_output = client
        .call("getJob", json!({"id": id, "includeOutput": true}))
        .await;
    let output = with_output["output"].as_array().expect("output[]");
    let text = serde_json::to_string(output).unwrap();
    assert!(text.contains(&format!("line one of {id}")), "{text}");
    assert!(text.contains("prompt: say hi"), "{text}");
    assert_eq!(
        with_output["outputNextSeq"],
        Value::Null,
        "the whole output"
    );
    // A page of one line from the second on says where the next begins.
    let page = client
        .call(
            "getJob",
            json!({"id": id, "outputFromSeq": 1, "outputLimit": 1}),
        )
        .await;
    let lines = page["output"].as_array().expect("output[]");
    assert_eq!(lines.len(), 1, "{page}");
    assert_eq!(lines[0]["seq"], 1, "{page}");
    assert_eq!(page["outputNextSeq"], 2, "{page}");
    let without = client.call("getJob", json!([id])).await;
    assert!(without["output"].is_null(), "{without}");
    assert!(without["outputNextSeq"].is_null(), "{without}");

    let scheduled = client.call("trigger", json!(["echo", "yearly"])).await;
    assert_eq!(scheduled["scheduleName"], "yearly");
    assert_eq!(scheduled["prompt"], "The yearly echo.");
    let scheduled_id = scheduled["id"].as_str().unwrap().to_owned();
    wait_for_job_status(client, &scheduled_id, &["completed"]).await;

    let list = client
        .call("getJobs", json!({"agentName": "echo", "limit": 10}))
        .await;
    let ids: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert!(list["total"].as_u64().unwrap() >= 2, "{list}");
    // Newest first.
    assert_eq!(ids[..2], [scheduled_id.as_str(), id.as_str()], "{list}");
    let page = client
        .call(
            "getJobs",
            json!({"agentName": "echo", "limit": 1, "offset": 1}),
        )
        .await;
    assert_eq!(page["jobs"][0]["id"], id.as_str());
    let completed = client
        .call(
            "getJobs",
            json!({"status": "completed", "since": "2000-01-01T00:00:00Z"}),
        )
        .await;
    assert!(completed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["status"] == "completed"));
    assert!(
        client.call("getJobs", Value::Null).await["total"]
            .as_u64()
            .unwrap()
            >= 2
    );

    let error = client.call_err("getJob", json!({"id": UNKNOWN_JOB})).await;
    assert_error(&error, 1003, "JOB_NOT_FOUND");
    assert_eq!(error["data"]["jobId"], UNKNOWN_JOB);
    assert_error(
        &client
            .call_err("getJob", json!({"id": "not-a-job-id"}))
            .await,
        1003,
        "JOB_NOT_FOUND",
    );

    let fork = client
        .call("forkJob", json!({"id": id, "prompt": "forked prompt"}))
        .await;
    assert_eq!(fork["forkedFrom"], id.as_str());
    assert_eq!(fork["triggerType"], "fork");
    assert_eq!(fork["prompt"], "forked prompt");
    let fork_id = fork["id"].as_str().unwrap().to_owned();
    wait_for_job_status(client, &fork_id, &["completed"]).await;
    assert_error(
        &client.call_err("forkJob", json!({"id": UNKNOWN_JOB})).await,
        1003,
        "JOB_NOT_FOUND",
    );

    assert_error(
        &client
            .call_err("trigger", json!({"agentName": "nobody"}))
            .await,
        1002,
        "AGENT_NOT_FOUND",
    );
    let error = client
        .call_err(
            "trigger",
            json!({"agentName": "echo", "scheduleName": "nope"}),
        )
        .await;
    assert_error(&error, 1004, "SCHEDULE_NOT_FOUND");
    id
}

async fn queue_cancel_and_limits(client: &mut Client, finished: &str) {
    let running = client
        .call("trigger", json!({"agentName": "blocker"}))
        .await;
    let running_id = running["id"].as_str().unwrap().to_owned();
    wait_for_job_status(client, &running_id, &["running"]).await;

    let queued = client
        .call("trigger", json!({"agentName": "blocker", "priority": 3}))
        .await;
    assert_eq!(queued["status"], "queued", "{queued}");
    let queued_id = queued["id"].as_str().unwrap().to_owned();

    let queue = client.call("getQueue", Value::Null).await;
    assert_eq!(queue["queued"][0]["jobId"], queued_id.as_str(), "{queue}");
    assert_eq!(queue["agents"]["blocker"]["running"], 1, "{queue}");
    assert_eq!(queue["agents"]["blocker"]["queued"], 1, "{queue}");
    assert_eq!(queue["agents"]["blocker"]["limit"], 1, "{queue}");
    assert_eq!(queue["fleet"]["maxQueued"], 1, "{queue}");

    // --max-queued 1: the queue is full.
    let error = client
        .call_err("trigger", json!({"agentName": "blocker"}))
        .await;
    assert_error(&error, 1006, "CONCURRENCY_LIMIT");
    assert_eq!(error["data"]["agentName"], "blocker");
    assert_eq!(error["data"]["limit"], 1);
    assert_eq!(error["data"]["currentJobs"], 1);

    // Nothing to fork yet.
    let error = client.call_err("forkJob", json!({"id": queued_id})).await;
    assert_error(&error, 1007, "JOB_NOT_RUNNING");
    assert_eq!(error["data"]["status"], "queued");

    let cancelled = client.call("cancelJob", json!({"id": queued_id})).await;
    assert_eq!(cancelled["jobId"], queued_id.as_str());
    let job = client.call("getJob", json!({"id": queued_id})).await;
    assert_eq!(job["status"], "cancelled", "{job}");

    let cancelled = client
        .call("cancelJob", json!({"id": running_id, "graceMs": 200}))
        .await;
    assert!(
        ["graceful", "forced"].contains(&cancelled["terminationType"].as_str().unwrap()),
        "{cancelled}"
    );
    let job = client.call("getJob", json!({"id": running_id})).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(job["exitReason"], "cancelled", "{job}");

    let again = client.call("cancelJob", json!([finished])).await;
    assert_eq!(again["terminationType"], "already_stopped");
    assert_error(
        &client
            .call_err("cancelJob", json!({"id": UNKNOWN_JOB}))
            .await,
        1003,
        "JOB_NOT_FOUND",
    );
}

async fn reload(client: &mut Client, daemon: &Daemon) {
    assert_eq!(
        client.call("reload", Value::Null).await["changes"],
        json!([])
    );

    std::fs::write(daemon.agents_dir().join("extra.yaml"), EXTRA_AGENT).unwrap();
    std::fs::write(daemon.agents_dir().join("loud.yaml"), LOUD_AGENT).unwrap();
    daemon.write_fleet_file(&fleet_yaml(&[
        "echo.yaml",
        "gated.yaml",
        "blocker.yaml",
        "extra.yaml",
        "loud.yaml",
    ]));
    let result = client.call("reload", json!({})).await;
    let changes = result["changes"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c.as_str().unwrap().contains("agent:extra")
                && c.as_str().unwrap().contains("added")),
        "{result}"
    );
    assert_eq!(
        client.call("getAgent", json!({"name": "extra"})).await["name"],
        "extra"
    );

    // Broken: a missing agent file and an invalid agent. Every error is reported; the old config stays.
    std::fs::write(
        daemon.agents_dir().join("broken.yaml"),
        "name: \"bad name\"\nschedules:\n  s:\n    type: interval\n    interval: 5x\n",
    )
    .unwrap();
    daemon.write_fleet_file(&fleet_yaml(&["echo.yaml", "broken.yaml", "missing.yaml"]));
    let error = client.call_err("reload", Value::Null).await;
    assert_error(&error, 1001, "CONFIGURATION_ERROR");
    let issues = error["data"]["validationErrors"].as_array().unwrap();
    assert!(issues.len() >= 3, "{error}");
    let text = serde_json::to_string(issues).unwrap();
    for expected in ["missing.yaml", "bad name", "5x"] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
    assert!(error["data"]["configPath"]
        .as_str()
        .unwrap()
        .ends_with("herdctl.yaml"));
    assert_eq!(
        client.call("getAgent", json!({"name": "extra"})).await["name"],
        "extra"
    );
    assert_eq!(client.call("getState", Value::Null).await, "running");
}

async fn invalid_params(client: &mut Client) {
    let cases = [
        ("getAgent", json!({"name": "echo", "bogus": 1})),
        ("getAgent", json!({})),
        ("getAgent", json!({"name": 5})),
        ("getAgent", json!(["echo", "extra positional"])),
        ("getStatus", json!({"unexpected": true})),
        ("getJobs", json!({"limit": "ten"})),
        ("getJobs", json!({"status": "sleeping"})),
        ("trigger", json!({"agentName": "echo", "priority": 0})),
        ("trigger", json!({"agentName": "echo", "priority": 11})),
        ("stop", json!({"timeout": -1})),
        ("getJob", json!("a string")),
    ];
    for (method, params) in cases {
        let error = client.call_err(method, params.clone()).await;
        assert_error(&error, -32602, "INVALID_PARAMS");
    }
    assert_eq!(
        client.call_err("noSuchMethod", Value::Null).await["code"],
        -32601
    );
}

/// Each subscription and its unsubscription (HTTP: refused, it has no channel for notifications).
fn is_subscription(method: &str) -> bool {
    method.starts_with("subscribe")
        || method.starts_with("unsubscribe")
        || method.starts_with("stream")
}

/// One of every notification, each checked against its schema by the client: events of a job (on the
/// run's subscription to every event, `events`), log replays, and a finished job's output one line at a
/// time and batched.
async fn notifications(client: &mut Client, finished: &str, events: &Value) {
    let job = client
        .call("trigger", json!({"agentName": "echo", "prompt": "notify"}))
        .await;
    wait_for_event(client, events, "job:completed", job["id"].as_str()).await;
    for (subscribe, params) in [
        ("streamLogs", json!({"tail": 3})),
        ("streamAgentLogs", json!({"agentName": "echo", "tail": 3})),
    ] {
        let logs = client.subscribe(subscribe, params).await;
        while client.notification(&logs).await["type"] != "replayed" {}
    }
    for batch in [false, true] {
        let output = client
            .subscribe("streamJobOutput", json!({"id": finished, "batch": batch}))
            .await;
        while client.notification(&output).await["eof"] != true {}
        // The stream ended with its eof: nothing is left to unsubscribe.
        assert_eq!(
            client
                .call("unsubscribeJobOutput", json!({"subscription": output}))
                .await,
            false
        );
    }
}

/// `extra`'s two schedules fire as the reload plans them: one runs a job (held at its gate), the other is
/// skipped, the agent being at its limit.
async fn scheduled_fires(client: &mut Client, daemon: &Daemon, events: &Value) {
    let (mut triggered, mut skipped) = (None, None);
    while triggered.is_none() || skipped.is_none() {
        let event = client.notification(events).await;
        match event["type"].as_str() {
            Some("schedule:triggered") => triggered = Some(event),
            Some("schedule:skipped") => skipped = Some(event),
            _ => {}
        }
    }
    let (triggered, skipped) = (triggered.unwrap(), skipped.unwrap());
    assert_eq!(triggered["agentName"], "extra", "{triggered}");
    assert_eq!(skipped["agentName"], "extra", "{skipped}");
    assert_ne!(triggered["scheduleName"], skipped["scheduleName"]);
    let job = triggered["jobId"].as_str().unwrap();
    open_gate(&daemon.agents_dir(), job);
    wait_for_event(client, events, "job:completed", Some(job)).await;
}

/// Runs the `loud` agent's job; returns its id and what clients other than `client` checked. Over NDJSON
/// and WebSocket: a reader of every event that does not read while it runs is told it lagged; a reader of
/// `job:failed` alone gets its failure; its long lines stream with `truncated`; and a log reader that does
/// not read is told it lagged too.
async fn loud_job(client: &mut Client, daemon: &Daemon) -> (String, BTreeSet<String>) {
    let framing = client.framing;
    if framing == Framing::Http {
        let job = client.call("trigger", json!({"agentName": "loud"})).await;
        let id = job["id"].as_str().unwrap().to_owned();
        wait_for_job_status(client, &id, &["failed"]).await;
        return (id, BTreeSet::new());
    }
    let failed = client
        .subscribe("subscribeEvents", json!({"types": ["job:failed"]}))
        .await;
    let mut slow = daemon.connect(framing).await;
    let everything = slow.subscribe("subscribeEvents", json!({})).await;
    let job = client.call("trigger", json!({"agentName": "loud"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let event = wait_for_event(client, &failed, "job:failed", Some(&id)).await;
    assert_eq!(event["error"], event["job"]["error"], "{event}");
    assert!(event["error"]["message"].is_string(), "{event}");
    // Only now does `slow` read: it is told how many events it missed.
    loop {
        let event = slow.notification(&everything).await;
        if event["type"] == "lagged" {
            assert!(event["missed"].as_u64().unwrap() > 0, "{event}");
            break;
        }
    }

    let output = client
        .subscribe(
            "streamJobOutput",
            json!({"id": id, "fromSeq": LOUD_SHORT_LINES}),
        )
        .await;
    let mut long_lines = 0;
    loop {
        let item = client.notification(&output).await;
        if item["eof"] == true {
            break;
        }
        if item["truncated"] == true {
            long_lines += 1;
        }
    }
    assert_eq!(long_lines, 8);

    let mut reader = daemon.connect(framing).await;
    let logs = reader.subscribe("streamLogs", json!({"tail": 0})).await;
    assert_eq!(reader.notification(&logs).await["type"], "replayed");
    daemon.push_log_entries(20_000);
    while reader.notification(&logs).await["type"] != "lagged" {}

    let mut checked = slow.checked().clone();
    checked.extend(reader.checked().iter().cloned());
    (id, checked)
}

/// `getJob` with the whole output of a job whose output is more than one reply carries: refused, with
/// where to read it instead.
async fn output_too_large(client: &mut Client, id: &str) {
    let error = client
        .call_err("getJob", json!({"id": id, "includeOutput": true}))
        .await;
    assert_error(&error, 1010, "OUTPUT_TOO_LARGE");
    let data = &error["data"];
    assert_eq!(data["jobId"], id, "{error}");
    assert!(
        data["outputBytes"].as_u64() > data["limit"].as_u64(),
        "{error}"
    );
    assert_eq!(data["paging"], json!(["outputFromSeq", "outputLimit"]));
    assert_eq!(data["alternative"], "streamJobOutput");
}

async fn subscriptions(client: &mut Client) {
    let subscriptions = [
        (
            "subscribeEvents",
            json!({"types": ["job:created"]}),
            "unsubscribeEvents",
        ),
        (
            "streamLogs",
            json!({"level": "info", "tail": 0}),
            "unsubscribeLogs",
        ),
        (
            "streamAgentLogs",
            json!({"agentName": "echo", "tail": 0}),
            "unsubscribeAgentLogs",
        ),
        (
            "streamJobOutput",
            json!({"id": "job-2000-01-01-zzzzzz"}),
            "unsubscribeJobOutput",
        ),
    ];
    for (subscribe, params, unsubscribe) in subscriptions {
        if client.framing == Framing::Http {
            let error = client.call_err(subscribe, params).await;
            assert!(error["code"].is_i64(), "{error}");
            continue;
        }
        if subscribe == "streamJobOutput" {
            let error = client.call_err(subscribe, params).await;
            assert_error(&error, 1003, "JOB_NOT_FOUND");
            continue;
        }
        let id = client.subscribe(subscribe, params).await;
        client.unsubscribe(unsubscribe, &id).await;
        assert_eq!(client.call(unsubscribe, json!([id])).await, false);
    }
    if client.framing != Framing::Http {
        let error = client
            .call_err("subscribeEvents", json!({"types": ["job:exploded"]}))
            .await;
        assert_error(&error, -32602, "INVALID_PARAMS");
        let error = client
            .call_err("streamLogs", json!({"level": "loud"}))
            .await;
        assert_error(&error, -32602, "INVALID_PARAMS");
        let error = client
            .call_err("streamAgentLogs", json!({"agentName": "nobody"}))
            .await;
        assert_error(&error, 1002, "AGENT_NOT_FOUND");
    }
}
