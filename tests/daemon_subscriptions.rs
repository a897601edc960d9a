//! Subscriptions over NDJSON and WebSocket against the real daemon: event order of a job, job output
//! replay + live without gap or duplicate, log streams, rejection of unknown agents, unsubscribe.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const JOB_EVENTS: [&str; 4] = ["job:created", "job:started", "job:output", "job:completed"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_over_ndjson() {
    subscriptions(Framing::Ndjson).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_over_websocket() {
    subscriptions(Framing::WebSocket).await;
}

async fn subscriptions(framing: Framing) {
    let daemon = Daemon::start().await;
    let mut client = daemon.connect(framing).await;
    let echo_job = job_events_arrive_in_order(&mut client).await;
    output_of_a_running_job_replays_then_continues_live(&mut client, &daemon).await;
    output_of_a_finished_job_replays_and_ends(&mut client, &echo_job).await;
    logs_stream(&mut client).await;
    unsubscribe_stops_notifications(&mut client).await;
}

/// Returns the id of the job it triggered.
async fn job_events_arrive_in_order(client: &mut Client) -> String {
    let events = client
        .subscribe("subscribeEvents", json!({"types": JOB_EVENTS}))
        .await;
    let everything = client.subscribe("subscribeEvents", json!({})).await;
    let job = client.call("trigger", json!({"agentName": "echo"})).await;
    let id = job["id"].as_str().unwrap().to_owned();

    let mut seen = Vec::new();
    let mut output_seqs = Vec::new();
    loop {
        let event = client.notification(&events).await;
        let kind = event["type"].as_str().unwrap().to_owned();
        assert!(JOB_EVENTS.contains(&kind.as_str()), "filtered out: {event}");
        assert!(event["timestamp"].is_string(), "{event}");
        if event_job_id(&event) != Some(id.as_str()) {
            continue;
        }
        if kind == "job:output" {
            output_seqs.push(event["line"]["seq"].as_u64().unwrap());
        }
        seen.push(kind.clone());
        if kind == "job:completed" {
            break;
        }
    }
    let mut collapsed = seen.clone();
    collapsed.dedup();
    assert_eq!(collapsed, JOB_EVENTS, "events of {id}: {seen:?}");
    assert!(output_seqs.len() >= 3, "{output_seqs:?}");
    assert!(
        output_seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "{output_seqs:?}"
    );

    // The unfiltered subscription saw the agent events too.
    let agent_started = wait_for_event(client, &everything, "agent:started", None).await;
    assert_eq!(agent_started["agentName"], "echo");
    client.unsubscribe("unsubscribeEvents", &everything).await;
    client.unsubscribe("unsubscribeEvents", &events).await;
    id
}

async fn output_of_a_running_job_replays_then_continues_live(client: &mut Client, daemon: &Daemon) {
    let events = client
        .subscribe("subscribeEvents", json!({"types": ["job:output"]}))
        .await;
    let job = client.call("trigger", json!({"agentName": "gated"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    // The first line is written; the job now waits for its gate.
    wait_for_event(client, &events, "job:output", Some(&id)).await;

    let output = client.subscribe("streamJobOutput", json!({"id": id})).await;
    let replayed = client.notification(&output).await;
    assert_eq!(replayed["seq"], 0, "{replayed}");
    assert!(replayed.to_string().contains("before gate"), "{replayed}");

    // The stored history is delivered: the stream says so before anything live.
    let caught_up = client.notification(&output).await;
    assert_eq!(caught_up, json!({"replayed": true, "nextSeq": 1}));
    open_gate(&daemon.agents_dir(), &id);
    let mut lines = vec![replayed];
    let end = loop {
        let item = client.notification(&output).await;
        if item["eof"] == true {
            break item;
        }
        assert!(item.get("replayed").is_none(), "said once: {item}");
        lines.push(item);
    };
    assert_eq!(end["status"], "completed", "{end}");
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "{lines:?}"
    );
    let text = serde_json::to_string(&lines).unwrap();
    assert!(text.contains("after gate"), "{text}");
    assert_eq!(text.matches("before gate").count(), 1, "{text}");

    // The subscription ended with eof: nothing more for it.
    let rest = client.drain(Duration::from_millis(300)).await;
    assert!(
        rest.iter().all(|n| n.subscription != output),
        "after eof: {rest:?}"
    );
    client.unsubscribe("unsubscribeEvents", &events).await;
}

async fn output_of_a_finished_job_replays_and_ends(client: &mut Client, id: &str) {
    let stored = client
        .call("getJob", json!({"id": id, "includeOutput": true}))
        .await["output"]
        .clone();
    let stored = stored.as_array().unwrap();
    assert!(!stored.is_empty());

    let output = client.subscribe("streamJobOutput", json!({"id": id})).await;
    let caught_up = json!({"replayed": true, "nextSeq": stored.len()});
    let mut replayed = Vec::new();
    let end = loop {
        let item = client.notification(&output).await;
        if item["eof"] == true {
            break item;
        }
        replayed.push(item);
    };
    assert_eq!(end["status"], "completed");
    // The history, then the mark that it was all delivered, then the end.
    assert_eq!(replayed.pop().as_ref(), Some(&caught_up));
    assert_eq!(&replayed, stored);

    // Batched: the same lines, several per notification, then the same end.
    let batched = client
        .subscribe("streamJobOutput", json!({"id": id, "batch": true}))
        .await;
    let mut lines = Vec::new();
    let mut notifications = 0;
    let end = loop {
        let item = client.notification(&batched).await;
        if item["eof"] == true {
            break item;
        }
        if item.get("replayed").is_some() {
            assert_eq!(item, caught_up, "the mark comes after every line");
            assert_eq!(lines.len(), stored.len());
            continue;
        }
        notifications += 1;
        lines.extend(
            item["lines"]
                .as_array()
                .expect("a batch of lines")
                .iter()
                .cloned(),
        );
    };
    assert_eq!(end["status"], "completed");
    assert_eq!(&lines, stored);
    assert!(
        notifications < stored.len(),
        "{notifications} notifications for {} lines",
        stored.len()
    );

    // fromSeq skips what the reader already has.
    let from_one = client
        .subscribe("streamJobOutput", json!({"id": id, "fromSeq": 1}))
        .await;
    let first = client.notification(&from_one).await;
    assert_eq!(first["seq"], 1, "{first}");

    let error = client
        .call_err("streamJobOutput", json!({"id": "job-2000-01-01-zzzzzz"}))
        .await;
    assert_error(&error, 1003, "JOB_NOT_FOUND");
}

async fn logs_stream(client: &mut Client) {
    let logs = client
        .subscribe("streamLogs", json!({"level": "info", "tail": 0}))
        .await;
    let agent_logs = client
        .subscribe(
            "streamAgentLogs",
            json!({"agentName": "echo", "level": "info"}),
        )
        .await;
    // Nothing asked for from the history: its end comes first, and says so.
    let replayed = client.notification(&logs).await;
    assert_eq!(
        (&replayed["type"], &replayed["count"]),
        (&json!("replayed"), &json!(0)),
        "{replayed}"
    );
    let job = client.call("trigger", json!({"agentName": "echo"})).await;
    let id = job["id"].as_str().unwrap().to_owned();

    let entry = loop {
        let entry = client.notification(&logs).await;
        assert!(
            entry["message"].is_string() && entry["timestamp"].is_string(),
            "{entry}"
        );
        assert!(
            ["info", "warn", "error"].contains(&entry["level"].as_str().unwrap()),
            "{entry}"
        );
        if entry["jobId"] == id.as_str() {
            break entry;
        }
    };
    assert_eq!(entry["agentName"], "echo", "{entry}");
    let mut replay_ended = false;
    loop {
        let entry = client.notification(&agent_logs).await;
        if entry["type"] == "replayed" {
            assert!(!replay_ended, "one end of the replay: {entry}");
            replay_ended = true;
            continue;
        }
        assert_eq!(entry["agentName"], "echo", "{entry}");
        if entry["jobId"] == id.as_str() {
            break;
        }
    }

    let error = client
        .call_err("streamAgentLogs", json!({"agentName": "nobody"}))
        .await;
    assert_error(&error, 1002, "AGENT_NOT_FOUND");
    assert_eq!(error["data"]["agentName"], "nobody");
    client.unsubscribe("unsubscribeLogs", &logs).await;
    client
        .unsubscribe("unsubscribeAgentLogs", &agent_logs)
        .await;
    // Let the job end here, so its job:completed event cannot reach subscriptions of later steps.
    wait_for_job_status(client, &id, &["completed"]).await;
}

async fn unsubscribe_stops_notifications(client: &mut Client) {
    let kept = client
        .subscribe("subscribeEvents", json!({"types": ["job:completed"]}))
        .await;
    let dropped = client
        .subscribe("subscribeEvents", json!({"types": ["job:completed"]}))
        .await;
    let logs = client.subscribe("streamLogs", json!({"tail": 0})).await;
    // Sent before any unsubscribe: the end of its (empty) replay.
    assert_eq!(client.notification(&logs).await["type"], "replayed");
    client.unsubscribe("unsubscribeEvents", &dropped).await;
    // Named params, the documented canonical form, end a subscription too.
    assert_eq!(
        client
            .call("unsubscribeLogs", json!({"subscription": logs}))
            .await,
        true
    );
    // Already gone, asked either way.
    assert_eq!(
        client.call("unsubscribeEvents", json!([dropped])).await,
        false
    );
    assert_eq!(
        client
            .call("unsubscribeLogs", json!({"subscription": logs}))
            .await,
        false
    );

    let job = client.call("trigger", json!({"agentName": "echo"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for_event(client, &kept, "job:completed", Some(&id)).await;
    let rest = client.drain(Duration::from_millis(300)).await;
    for notification in &rest {
        let subscription = &notification.subscription;
        assert!(
            subscription != &dropped && subscription != &logs,
            "after unsubscribe: {notification:?}"
        );
    }
}

/// Writes a fleet of sub-fleets into `dir`: each `(fleet, agent)` a sub-fleet `fleet` whose one agent
/// `agent` echoes a line (qualified `fleet.agent`). Returns the root fleet file, whose `fleets` are
/// rewritten by [`sub_fleets_file`].
fn write_sub_fleets(dir: &std::path::Path, fleets: &[(&str, &str)]) -> std::path::PathBuf {
    for (fleet, agent) in fleets {
        let fleet_dir = dir.join(fleet);
        std::fs::create_dir_all(&fleet_dir).unwrap();
        std::fs::write(
            fleet_dir.join("herdctl.yaml"),
            format!("version: 1\nagents:\n  - path: {agent}.yaml\n"),
        )
        .unwrap();
        std::fs::write(
            fleet_dir.join(format!("{agent}.yaml")),
            format!("name: {agent}\nruntime: command\ncommand: [sh, -c, 'echo working']\n"),
        )
        .unwrap();
    }
    let root = dir.join("herdctl.yaml");
    std::fs::write(
        &root,
        sub_fleets_file(&fleets.iter().map(|(f, _)| *f).collect::<Vec<_>>()),
    )
    .unwrap();
    root
}

/// The root fleet file listing the sub-fleets `fleets` (each in the directory of its name).
fn sub_fleets_file(fleets: &[&str]) -> String {
    let mut yaml = "version: 1\nfleets:\n".to_owned();
    for fleet in fleets {
        yaml.push_str(&format!(
            "  - path: {fleet}/herdctl.yaml\n    name: {fleet}\n"
        ));
    }
    yaml + "agents: []\n"
}

async fn start_on_own_fleet(dir: TestDir) -> Daemon {
    Daemon::start_in(
        dir,
        DaemonOptions {
            keep_existing_fleet: true,
            ..DaemonOptions::default()
        },
    )
    .await
}

/// A sub-fleet agent answers to its local name in listings and log streams, as it does in `trigger`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_fleet_agent_is_found_by_its_local_name() {
    let dir = TestDir::new();
    write_sub_fleets(dir.path(), &[("team", "w")]);
    let daemon = start_on_own_fleet(dir).await;
    let mut client = daemon.ndjson().await;
    let logs = client
        .subscribe("streamLogs", json!({"agentName": "w", "tail": 0}))
        .await;
    let events = client
        .subscribe("subscribeEvents", json!({"types": ["job:completed"]}))
        .await;
    let job = client.call("trigger", json!({"agentName": "w"})).await;
    assert_eq!(job["agentName"], "team.w", "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(client.notification(&logs).await["type"], "replayed");
    let entry = client.notification(&logs).await;
    assert_eq!(entry["agentName"], "team.w", "{entry}");
    wait_for_event(&mut client, &events, "job:completed", Some(&id)).await;
    let listed = client.call("getJobs", json!({"agentName": "w"})).await;
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
}

/// A reader of a flooding job that stops reading holds the job back for a bounded time only, costs the
/// daemon a bounded buffer, and finds every line again when it reads on (from the file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_neither_stalls_a_job_nor_grows_the_daemon() {
    let dir = TestDir::new();
    let release = dir.path().join("release");
    // 32 MiB of 99-byte lines once released (56 MiB as stored: far beyond what the hub and the socket
    // may hold); kept whole.
    let flood = format!(
        "name: flood\nruntime: command\nmax_output_mb: 256\ncommand: [sh, -c, 'while [ ! -e {} ]; do sleep 0.02; done; head -c 33554432 /dev/zero | tr \"\\\\0\" x | fold -w 99']\n",
        release.display()
    );
    write_agents(dir.path(), "stalled", &[("flood", &flood)]);
    let options = DaemonOptions {
        keep_existing_fleet: true,
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start_in(dir, options).await;
    let mut control = daemon.ndjson().await;
    let job = control.call("trigger", json!({"agentName": "flood"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let mut stalled = RawNdjson::connect(&daemon.socket).await;
    let reply = stalled
        .exchange(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "streamJobOutput", "params": {"id": id}})
                .to_string(),
        )
        .await;
    assert!(reply["result"].is_u64(), "{reply}");
    // At the live edge (nothing printed yet), so the pump waits for it; then it reads no more.
    assert_eq!(stalled.recv().await["params"]["result"]["replayed"], true);
    let rss_before = daemon.rss_kib();
    std::fs::write(&release, "").unwrap();
    let done = wait_for_job_status(&mut control, &id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    let grown = daemon.rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 24 * 1024,
        "the daemon grew by {grown} KiB for a reader that reads nothing"
    );
    // Reading on, it gets every line, in order, and the end.
    let lines = 33554432u64.div_ceil(99);
    let mut next = 0u64;
    loop {
        let item = stalled.recv().await["params"]["result"].clone();
        if item["eof"] == true {
            break;
        }
        assert!(item["gap"].is_null(), "nothing was dropped: {item}");
        assert_eq!(item["seq"], next, "{item}");
        next += 1;
    }
    assert_eq!(next, lines);
}

/// Every method that takes an agent name resolves it the same way: a local name two sub-fleets share is
/// AGENT_NOT_FOUND listing the two agents it could mean, an unknown name AGENT_NOT_FOUND; only getJobs and
/// streamLogs also take the exact name of a removed agent that still has job records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_names_resolve_alike_in_every_method() {
    let dir = TestDir::new();
    let root = write_sub_fleets(dir.path(), &[("one", "w"), ("two", "w"), ("team", "solo")]);
    let daemon = start_on_own_fleet(dir).await;
    let mut client = daemon.ndjson().await;

    let named = |name: &str| {
        [
            ("getAgent", json!({"name": name})),
            ("getJobs", json!({"agentName": name})),
            (
                "getSchedule",
                json!({"agentName": name, "scheduleName": "s"}),
            ),
            (
                "enableSchedule",
                json!({"agentName": name, "scheduleName": "s"}),
            ),
            (
                "disableSchedule",
                json!({"agentName": name, "scheduleName": "s"}),
            ),
            ("trigger", json!({"agentName": name})),
            ("streamLogs", json!({"agentName": name})),
            ("streamAgentLogs", json!({"agentName": name})),
        ]
    };
    for (method, params) in named("w") {
        let error = client.call_err(method, params).await;
        assert_error(&error, 1002, "AGENT_NOT_FOUND");
        assert_eq!(error["data"]["agentName"], "w", "{method}: {error}");
        assert_eq!(
            error["data"]["availableAgents"],
            json!(["one.w", "two.w"]),
            "{method}: only the agents it could mean: {error}"
        );
        assert!(
            error["message"].as_str().unwrap().contains("ambiguous"),
            "{method}: {error}"
        );
    }
    for (method, params) in named("nobody") {
        let error = client.call_err(method, params).await;
        assert_error(&error, 1002, "AGENT_NOT_FOUND");
        assert_eq!(
            error["data"]["availableAgents"],
            json!(["one.w", "two.w", "team.solo"]),
            "{method}: every agent: {error}"
        );
    }
    assert_eq!(
        client.call("getAgent", json!({"name": "solo"})).await["name"],
        "team.solo"
    );

    // Sub-fleet `one` goes; its agent's job stays in the store, listable by its exact name.
    let events = client
        .subscribe("subscribeEvents", json!({"types": ["job:completed"]}))
        .await;
    let job = client.call("trigger", json!({"agentName": "one.w"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for_event(&mut client, &events, "job:completed", Some(&id)).await;
    std::fs::write(&root, sub_fleets_file(&["two", "team"])).unwrap();
    client.call("reload", json!({})).await;
    let listed = client.call("getJobs", json!({"agentName": "one.w"})).await;
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
    let logs = client
        .subscribe("streamLogs", json!({"agentName": "one.w", "tail": 0}))
        .await;
    assert_eq!(client.notification(&logs).await["type"], "replayed");
    // Nothing else takes a removed agent; and `w` now means two.w alone.
    let error = client.call_err("getAgent", json!({"name": "one.w"})).await;
    assert_error(&error, 1002, "AGENT_NOT_FOUND");
    let error = client
        .call_err("streamAgentLogs", json!({"agentName": "one.w"}))
        .await;
    assert_error(&error, 1002, "AGENT_NOT_FOUND");
    assert_eq!(
        client.call("getJobs", json!({"agentName": "w"})).await["total"],
        0
    );
}

/// A fork runs the agent its job ran, by its qualified name: once that agent is gone, a sub-fleet's agent
/// of the same local name is not taken for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_of_a_removed_agents_job_never_runs_another_agent_of_that_name() {
    let dir = TestDir::new();
    let root = write_sub_fleets(dir.path(), &[("team", "w")]);
    let with_own_w =
        sub_fleets_file(&["team"]).replace("agents: []\n", "agents:\n  - path: w.yaml\n");
    std::fs::write(&root, &with_own_w).unwrap();
    std::fs::write(
        dir.path().join("w.yaml"),
        "name: w\nruntime: command\ncommand: [sh, -c, 'echo root w']\n",
    )
    .unwrap();
    let daemon = start_on_own_fleet(dir).await;
    let mut client = daemon.ndjson().await;
    let id = trigger(&mut client, "w").await;
    let done = wait_for_job_status(&mut client, &id, &["completed"]).await;
    assert_eq!(done["agentName"], "w", "{done}");
    std::fs::write(&root, sub_fleets_file(&["team"])).unwrap();
    client.call("reload", json!({})).await;
    let error = client.call_err("forkJob", json!({"id": id})).await;
    assert_error(&error, 1002, "AGENT_NOT_FOUND");
}
