//! The embedded FleetManager's lifecycle, errors, events, cancellation, graceful stop, reload and fork
//! (issue 3 "done when"), with `runtime: command` agents and no daemon.

mod fleet_support;

use std::time::Duration;

use fleet_support::*;
use herdctld::fleet::{
    FleetError, FleetEvent, FleetManager, FleetManagerOptions, FleetState, ForkOptions,
    OutputRequest, StopOptions, TriggerOptions,
};
use herdctld::job::{ExitReason, JobStatus, TerminationType, TriggerType};

fn prompt(text: &str) -> TriggerOptions {
    TriggerOptions {
        prompt: Some(text.into()),
        ..TriggerOptions::default()
    }
}

#[tokio::test]
async fn lifecycle_errors_name_current_and_expected_state() {
    let fx = Fixture::new(
        "",
        &[(
            "a",
            ECHO_PROMPT,
            "schedules:\n  s: {type: interval, interval: 1h}",
        )],
    );
    let manager = FleetManager::new(fx.options());
    assert_eq!(manager.state(), FleetState::Uninitialized);
    let err = manager.start().await.unwrap_err();
    assert_eq!(err.code_name(), "INVALID_STATE");

    manager.initialize().await.unwrap();
    let err = manager.initialize().await.unwrap_err();
    assert_eq!(err.code(), 1005);
    assert_eq!(err.data()["operation"], "initialize");
    assert_eq!(err.data()["currentState"], "initialized");

    let err = manager.stop(StopOptions::default()).await.unwrap_err();
    assert_eq!(err.data()["currentState"], "initialized");

    manager.start().await.unwrap();
    let err = manager.start().await.unwrap_err();
    let data = err.data();
    assert_eq!(data["code"], "INVALID_STATE");
    assert_eq!(data["operation"], "start");
    assert_eq!(data["currentState"], "running");
    assert_eq!(
        data["expectedState"],
        serde_json::json!(["initialized", "stopped"])
    );

    manager.stop(StopOptions::default()).await.unwrap();
    assert_eq!(manager.state(), FleetState::Stopped);
    let err = manager.stop(StopOptions::default()).await.unwrap_err();
    assert_eq!(err.data()["operation"], "stop");
    assert_eq!(err.data()["currentState"], "stopped");
    assert_eq!(err.data()["expectedState"], serde_json::json!(["running"]));

    // A stopped fleet starts again.
    manager.start().await.unwrap();
    manager.stop(StopOptions::default()).await.unwrap();
}

#[tokio::test]
async fn auto_start_starts_the_fleet_at_initialize() {
    let fx = Fixture::new(
        "",
        &[(
            "a",
            ECHO_PROMPT,
            "schedules:\n  s: {type: interval, interval: 1h}",
        )],
    );
    let manager = FleetManager::new(FleetManagerOptions {
        auto_start: true,
        ..fx.options()
    });
    manager.initialize().await.unwrap();
    assert_eq!(manager.state(), FleetState::Running);
    assert!(manager.status().await.scheduler.running);
    manager.stop(Default::default()).await.unwrap();
}

#[tokio::test]
async fn lookups_of_unknown_things_say_what_exists() {
    let fx = Fixture::new(
        "",
        &[
            (
                "alpha",
                ECHO_PROMPT,
                "schedules:\n  hourly: {type: interval, interval: 1h}",
            ),
            ("beta", ECHO_PROMPT, ""),
        ],
    );
    let manager = fx.manager().await;

    let err = manager
        .trigger("gamma", TriggerOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), 1002);
    assert_eq!(err.data()["agentName"], "gamma");
    assert_eq!(
        err.data()["availableAgents"],
        serde_json::json!(["alpha", "beta"])
    );

    let options = TriggerOptions {
        schedule: Some("daily".into()),
        ..TriggerOptions::default()
    };
    let err = manager.trigger("alpha", options).await.unwrap_err();
    assert_eq!(err.code_name(), "SCHEDULE_NOT_FOUND");
    assert_eq!(err.data()["scheduleName"], "daily");
    assert_eq!(
        err.data()["availableSchedules"],
        serde_json::json!(["hourly"])
    );

    let unknown = "job-2026-01-01-abcdef";
    let err = manager.cancel_job(unknown, None).await.unwrap_err();
    assert_eq!(err.code_name(), "JOB_NOT_FOUND");
    assert_eq!(err.data()["jobId"], unknown);
    let err = manager.cancel_job("not a job id", None).await.unwrap_err();
    assert_eq!(err.code_name(), "JOB_NOT_FOUND");
    let err = manager.job(unknown, OutputRequest::Omit).unwrap_err();
    assert_eq!(err.code_name(), "JOB_NOT_FOUND");

    // A finished job cannot be cancelled again: it says so without an error.
    let job = manager
        .trigger("beta", TriggerOptions::default())
        .await
        .unwrap();
    let done = wait_job(&manager, job.id.as_str()).await;
    assert_eq!(done.status, JobStatus::Completed);
    let result = manager.cancel_job(job.id.as_str(), None).await.unwrap();
    assert_eq!(result.termination_type, TerminationType::AlreadyStopped);
    assert_eq!(
        manager
            .job(job.id.as_str(), OutputRequest::Omit)
            .unwrap()
            .0
            .status,
        JobStatus::Completed
    );
}

#[tokio::test]
async fn job_events_come_in_order_with_the_result() {
    let fx = Fixture::new("", &[("a", ECHO_PROMPT, "")]);
    let manager = fx.manager().await;
    let mut events = manager.subscribe_events(None).unwrap();
    let job = manager.trigger("a", prompt("hello")).await.unwrap();
    assert_eq!(job.status, JobStatus::Running);
    let id = job.id.to_string();
    let seen = events_until(&mut events, "job end", is_final_of(&id)).await;
    let names: Vec<&str> = seen
        .iter()
        .map(FleetEvent::type_name)
        .filter(|name| name.starts_with("job:") || name.starts_with("agent:"))
        .collect();
    let first = |name: &str| names.iter().position(|n| *n == name).unwrap();
    let last = |name: &str| names.iter().rposition(|n| *n == name).unwrap();
    assert_eq!(names[0], "job:created");
    assert!(first("job:started") < first("job:output"), "{names:?}");
    assert!(last("job:output") < first("job:completed"), "{names:?}");
    assert!(first("agent:started") < first("agent:stopped"), "{names:?}");
    assert_eq!(*names.last().unwrap(), "job:completed");
    let outputs: Vec<u64> = seen
        .iter()
        .filter_map(|e| match e {
            FleetEvent::JobOutput { line, .. } => Some(line.seq),
            _ => None,
        })
        .collect();
    assert_eq!(outputs, (0..outputs.len() as u64).collect::<Vec<_>>());
    let Some(FleetEvent::JobCompleted { result, job, .. }) = seen.last() else {
        unreachable!()
    };
    assert_eq!(result.as_ref().unwrap()["result"], "done");
    assert_eq!(job.summary.as_deref(), Some("done"));
    assert_eq!(job.exit_reason, Some(ExitReason::Success));
}

#[tokio::test]
async fn a_failing_job_emits_job_failed_with_its_error() {
    let fx = Fixture::new(
        "",
        &[
            ("fails", "echo oops >&2\nexit 3", ""),
            ("missing", "true", "working_directory: ./does-not-exist"),
        ],
    );
    let manager = fx.manager().await;
    let mut events = manager.subscribe_events(None).unwrap();
    let job = manager
        .trigger("fails", TriggerOptions::default())
        .await
        .unwrap();
    let id = job.id.to_string();
    let seen = events_until(&mut events, "job end", is_final_of(&id)).await;
    let Some(FleetEvent::JobFailed { error, job, .. }) = seen.last() else {
        panic!("expected job:failed, got {:?}", seen.last())
    };
    let error = error.as_ref().expect("job:failed carries the job's error");
    assert!(error.message.contains("oops"), "{error:?}");
    assert_eq!(job.exit_code, Some(3));
    assert_eq!(job.exit_reason, Some(ExitReason::Error));

    // A job that cannot be spawned fails with spawn_failed, and its agent is reported stopped again.
    let job = manager
        .trigger("missing", TriggerOptions::default())
        .await
        .unwrap();
    let id = job.id.to_string();
    let seen = events_until(&mut events, "job end", is_final_of(&id)).await;
    let Some(FleetEvent::JobFailed { job, .. }) = seen.last() else {
        panic!("expected job:failed, got {:?}", seen.last())
    };
    assert_eq!(job.exit_reason, Some(ExitReason::SpawnFailed));
    let started = seen
        .iter()
        .filter(|e| matches!(e, FleetEvent::AgentStarted { .. }))
        .count();
    let stopped = seen
        .iter()
        .filter(|e| matches!(e, FleetEvent::AgentStopped { .. }))
        .count();
    assert_eq!(
        started, stopped,
        "agent:started/stopped unbalanced: {seen:?}"
    );
    assert_eq!(manager.queue().unwrap().fleet.running, 0);
}

#[tokio::test]
async fn cancel_reports_graceful_or_forced() {
    let fx = Fixture::new(
        "",
        &[
            ("polite", "echo started\nexec sleep 30", ""),
            ("stubborn", HANG_IGNORING_TERM, "stop_grace: 1s"),
        ],
    );
    let manager = fx.manager().await;
    let mut events = manager.subscribe_events(None).unwrap();

    let polite = manager
        .trigger("polite", TriggerOptions::default())
        .await
        .unwrap();
    let stubborn = manager
        .trigger("stubborn", TriggerOptions::default())
        .await
        .unwrap();
    for id in [polite.id.to_string(), stubborn.id.to_string()] {
        next_event(
            &mut events,
            "first output",
            |e| matches!(e, FleetEvent::JobOutput { job_id, .. } if *job_id == id),
        )
        .await;
    }
    let result = manager.cancel_job(polite.id.as_str(), None).await.unwrap();
    assert_eq!(result.termination_type, TerminationType::Graceful);
    // The reply comes after the record is final.
    let record = manager
        .job(polite.id.as_str(), OutputRequest::Omit)
        .unwrap()
        .0;
    assert_eq!(record.status, JobStatus::Cancelled);
    assert_eq!(record.exit_reason, Some(ExitReason::Cancelled));

    let started = std::time::Instant::now();
    let result = manager
        .cancel_job(stubborn.id.as_str(), None)
        .await
        .unwrap();
    assert_eq!(result.termination_type, TerminationType::Forced);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "grace not honoured"
    );
    let id = stubborn.id.to_string();
    let event = next_event(
        &mut events,
        "job:cancelled",
        |e| matches!(e, FleetEvent::JobCancelled { job_id, .. } if *job_id == id),
    )
    .await;
    let FleetEvent::JobCancelled {
        termination_type, ..
    } = event.event
    else {
        unreachable!()
    };
    assert_eq!(termination_type, TerminationType::Forced);
    assert!(!process_alive(stubborn.pid.unwrap()));
}

#[tokio::test]
async fn cancelling_a_job_that_already_exited_waits_for_its_final_record() {
    let fx = Fixture::new("", &[("quick", "echo hi", "")]);
    let manager = fx.manager().await;
    for _ in 0..20 {
        let job = manager
            .trigger("quick", TriggerOptions::default())
            .await
            .unwrap();
        let result = manager
            .cancel_job(job.id.as_str(), Some(Duration::ZERO))
            .await
            .unwrap();
        let record = manager.job(job.id.as_str(), OutputRequest::Omit).unwrap().0;
        assert!(
            record.status.is_terminal(),
            "cancel replied before the record was final"
        );
        match result.termination_type {
            TerminationType::AlreadyStopped => assert_eq!(record.status, JobStatus::Completed),
            _ => assert_eq!(record.status, JobStatus::Cancelled),
        }
    }
}

#[tokio::test]
async fn graceful_stop_waits_then_cancels_hanging_jobs_and_persists_first() {
    let fx = Fixture::new(
        "",
        &[
            ("stubborn", HANG_IGNORING_TERM, "stop_grace: 1s"),
            ("busy", "echo started\nexec sleep 30", ""),
        ],
    );
    let manager = fx.manager().await;
    manager.start().await.unwrap();
    let mut events = manager.subscribe_events(None).unwrap();
    let stubborn = manager
        .trigger("stubborn", TriggerOptions::default())
        .await
        .unwrap();
    let busy = manager
        .trigger("busy", TriggerOptions::default())
        .await
        .unwrap();
    let queued = manager
        .trigger("busy", TriggerOptions::default())
        .await
        .unwrap();
    assert_eq!(queued.status, JobStatus::Queued);
    for id in [stubborn.id.to_string(), busy.id.to_string()] {
        next_event(
            &mut events,
            "first output",
            |e| matches!(e, FleetEvent::JobOutput { job_id, .. } if *job_id == id),
        )
        .await;
    }

    let started = std::time::Instant::now();
    let stopping = manager.clone();
    let stop = tokio::spawn(async move {
        stopping
            .stop(StopOptions {
                timeout: Duration::from_millis(300),
                ..StopOptions::default()
            })
            .await
    });
    let seen = events_until(&mut events, "stopped", |e| {
        matches!(e, FleetEvent::Stopped { .. })
    })
    .await;
    stop.await.unwrap().unwrap();
    // Waited the timeout, then SIGTERM, the stubborn job's grace, SIGKILL.
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );

    let names: Vec<&str> = seen.iter().map(FleetEvent::type_name).collect();
    let progress: Vec<usize> = seen
        .iter()
        .filter_map(|e| match e {
            FleetEvent::StopProgress { pending_jobs } => Some(*pending_jobs),
            _ => None,
        })
        .collect();
    assert_eq!(progress.first(), Some(&2), "{names:?}");
    let stopped_at = names.iter().position(|n| *n == "stopped").unwrap();
    for id in [&stubborn.id, &busy.id, &queued.id] {
        let final_at = seen
            .iter()
            .position(is_final_of(id.as_str()))
            .unwrap_or_else(|| panic!("no final event for {id}: {names:?}"));
        assert!(final_at < stopped_at);
        let record = manager.job(id.as_str(), OutputRequest::Omit).unwrap().0;
        assert_eq!(record.status, JobStatus::Cancelled, "{id}");
        assert!(record.finished_at.is_some());
    }
    for pid in [stubborn.pid.unwrap(), busy.pid.unwrap()] {
        assert!(!process_alive(pid), "{pid} outlived stop");
    }
    let forced = seen.iter().any(|e| {
        matches!(e, FleetEvent::JobCancelled { job_id, termination_type: TerminationType::Forced, .. }
            if *job_id == stubborn.id.as_str())
    });
    assert!(forced, "the stubborn job was not killed: {seen:?}");
    // Everything is on disk: a fresh store sees the final records.
    drop(manager);
    let again = fx.manager().await;
    for id in [&stubborn.id, &busy.id, &queued.id] {
        assert_eq!(
            again
                .job(id.as_str(), OutputRequest::Omit)
                .unwrap()
                .0
                .status,
            JobStatus::Cancelled
        );
    }
}

#[tokio::test]
async fn stop_without_waiting_cancels_at_once() {
    let fx = Fixture::new("", &[("busy", "echo started\nexec sleep 30", "")]);
    let manager = fx.manager().await;
    manager.start().await.unwrap();
    let mut events = manager.subscribe_events(None).unwrap();
    let job = manager
        .trigger("busy", TriggerOptions::default())
        .await
        .unwrap();
    let id = job.id.to_string();
    next_event(
        &mut events,
        "output",
        |e| matches!(e, FleetEvent::JobOutput { job_id, .. } if *job_id == id),
    )
    .await;
    let started = std::time::Instant::now();
    manager
        .stop(StopOptions {
            wait_for_jobs: false,
            timeout: Duration::from_secs(60),
            cancel_on_timeout: true,
            reason: "SIGTERM".into(),
        })
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        manager.job(&id, OutputRequest::Omit).unwrap().0.status,
        JobStatus::Cancelled
    );
    // The event says why the fleet stopped, as the caller named it.
    let stopped = next_event(&mut events, "stopped", |e| {
        matches!(e, FleetEvent::Stopped { .. })
    })
    .await;
    assert!(
        matches!(&stopped.event, FleetEvent::Stopped { reason } if reason == "SIGTERM"),
        "{stopped:?}"
    );
}

#[tokio::test]
async fn stop_waits_for_jobs_that_finish_in_time() {
    let fx = Fixture::new("", &[]);
    let release = fx.path("release");
    fx.write("", &[("w", &wait_for_file(&release), "")]);
    let manager = fx.manager().await;
    manager.start().await.unwrap();
    let job = manager.trigger("w", prompt("x")).await.unwrap();
    let stopping = manager.clone();
    let stop = tokio::spawn(async move { stopping.stop(StopOptions::default()).await });
    eventually("fleet stopping", || manager.state() == FleetState::Stopping).await;
    // Nothing new starts while stopping.
    let err = manager
        .trigger("w", TriggerOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code_name(), "INVALID_STATE");
    std::fs::write(&release, "").unwrap();
    tokio::time::timeout(DEADLINE, stop)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        manager
            .job(job.id.as_str(), OutputRequest::Omit)
            .unwrap()
            .0
            .status,
        JobStatus::Completed
    );
}

#[tokio::test]
async fn reload_with_invalid_config_keeps_the_old_one_and_lists_every_error() {
    let fx = Fixture::new("", &[("a", ECHO_PROMPT, "")]);
    let manager = fx.manager().await;
    manager.start().await.unwrap();
    fx.write(
        "",
        &[(
            "a",
            ECHO_PROMPT,
            "concurrency: 0\nschedules:\n  s: {type: interval, interval: 5x}\n  c: {type: cron, cron: '0 25 * * *'}",
        )],
    );
    let err = manager.reload().await.unwrap_err();
    let FleetError::Configuration {
        validation_errors, ..
    } = &err
    else {
        panic!("expected a configuration error, got {err:?}")
    };
    assert_eq!(err.code(), 1001);
    assert!(validation_errors.len() >= 3, "{validation_errors:?}");
    let paths: Vec<&str> = validation_errors.iter().map(|e| e.path.as_str()).collect();
    for expected in ["concurrency", "schedules.s.interval", "schedules.c.cron"] {
        assert!(
            paths.iter().any(|p| p.contains(expected)),
            "{expected} not in {paths:?}"
        );
    }
    assert_eq!(
        err.data()["validationErrors"].as_array().unwrap().len(),
        validation_errors.len()
    );
    // The old configuration still runs.
    let job = manager
        .trigger("a", TriggerOptions::default())
        .await
        .unwrap();
    assert_eq!(
        wait_job(&manager, job.id.as_str()).await.status,
        JobStatus::Completed
    );
    manager.stop(StopOptions::default()).await.unwrap();
}

#[tokio::test]
async fn reload_adds_and_removes_agents_and_running_jobs_keep_their_config() {
    let fx = Fixture::new("", &[]);
    let release = fx.path("release");
    fx.write(
        "",
        &[
            ("old", &wait_for_file(&release), ""),
            ("kept", ECHO_PROMPT, ""),
        ],
    );
    let manager = fx.manager().await;
    manager.start().await.unwrap();
    let mut events = manager.subscribe_events(None).unwrap();
    let running = manager.trigger("old", prompt("one")).await.unwrap();
    let queued = manager.trigger("old", prompt("two")).await.unwrap();
    assert_eq!(queued.status, JobStatus::Queued);
    let id = running.id.to_string();
    next_event(
        &mut events,
        "output",
        |e| matches!(e, FleetEvent::JobOutput { job_id, .. } if *job_id == id),
    )
    .await;

    fx.write("", &[("kept", ECHO_PROMPT, ""), ("new", ECHO_PROMPT, "")]);
    let result = manager.reload().await.unwrap();
    assert!(
        result.changes.contains(&"agent:old removed".to_string()),
        "{:?}",
        result.changes
    );
    assert!(
        result.changes.contains(&"agent:new added".to_string()),
        "{:?}",
        result.changes
    );
    let reloaded = next_event(&mut events, "config:reloaded", |e| {
        matches!(e, FleetEvent::ConfigReloaded { .. })
    })
    .await;
    let FleetEvent::ConfigReloaded { changes, .. } = reloaded.event else {
        unreachable!()
    };
    assert_eq!(changes, result.changes);

    // The removed agent's queued job can never run: cancelled.
    let record = manager
        .job(queued.id.as_str(), OutputRequest::Omit)
        .unwrap()
        .0;
    assert_eq!(record.status, JobStatus::Cancelled);
    // Its running job goes on with the configuration it started with.
    assert_eq!(
        manager
            .job(running.id.as_str(), OutputRequest::Omit)
            .unwrap()
            .0
            .status,
        JobStatus::Running
    );
    std::fs::write(&release, "").unwrap();
    let done = wait_job(&manager, running.id.as_str()).await;
    assert_eq!(done.status, JobStatus::Completed);
    let (_, output) = manager
        .job(running.id.as_str(), OutputRequest::Whole)
        .unwrap();
    assert_eq!(
        stdout_texts(&output.unwrap().lines),
        ["start one", "end one"]
    );

    let err = manager
        .trigger("old", TriggerOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code_name(), "AGENT_NOT_FOUND");
    let job = manager
        .trigger("new", TriggerOptions::default())
        .await
        .unwrap();
    assert_eq!(
        wait_job(&manager, job.id.as_str()).await.status,
        JobStatus::Completed
    );
    manager.stop(StopOptions::default()).await.unwrap();
}

#[tokio::test]
async fn fork_runs_the_modified_prompt() {
    let fx = Fixture::new("", &[]);
    let release = fx.path("release");
    fx.write(
        "",
        &[
            ("echo", ECHO_PROMPT, ""),
            ("slow", &wait_for_file(&release), ""),
        ],
    );
    let manager = fx.manager().await;
    let original = manager.trigger("echo", prompt("original")).await.unwrap();
    wait_job(&manager, original.id.as_str()).await;

    let mut events = manager.subscribe_events(None).unwrap();
    let fork = manager
        .fork_job(
            original.id.as_str(),
            ForkOptions {
                prompt: Some("modified".into()),
                ..ForkOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(fork.forked_from.as_ref(), Some(&original.id));
    assert_eq!(fork.trigger_type, TriggerType::Fork);
    let id = fork.id.to_string();
    let seen = events_until(&mut events, "fork end", is_final_of(&id)).await;
    let created = seen
        .iter()
        .position(|e| matches!(e, FleetEvent::JobCreated { job } if job.id == fork.id))
        .unwrap();
    let forked = seen
        .iter()
        .position(|e| matches!(e, FleetEvent::JobForked { job, forked_from } if job.id == fork.id && *forked_from == original.id.as_str()))
        .unwrap();
    assert!(created < forked);
    let (record, output) = manager.job(&id, OutputRequest::Whole).unwrap();
    assert_eq!(record.status, JobStatus::Completed);
    assert_eq!(stdout_texts(&output.unwrap().lines), ["prompt: modified"]);

    // A queued job has nothing to fork yet.
    let running = manager.trigger("slow", prompt("a")).await.unwrap();
    let queued = manager.trigger("slow", prompt("b")).await.unwrap();
    let err = manager
        .fork_job(queued.id.as_str(), ForkOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code_name(), "JOB_NOT_RUNNING");
    assert_eq!(err.data()["status"], "queued");
    std::fs::write(&release, "").unwrap();
    wait_job(&manager, running.id.as_str()).await;
    wait_job(&manager, queued.id.as_str()).await;
}

#[tokio::test]
async fn a_job_output_too_large_for_one_reply_is_refused_with_the_paging_named_and_read_in_pages() {
    // 144 lines of 64 KiB: 9 MiB of output, more than getJob returns inline.
    let fx = Fixture::new(
        "",
        &[(
            "big",
            "head -c 9437184 /dev/zero | tr '\\0' x | fold -w 65536",
            "",
        )],
    );
    let manager = fx.manager().await;
    let job = manager
        .trigger("big", TriggerOptions::default())
        .await
        .unwrap();
    assert_eq!(
        wait_job(&manager, job.id.as_str()).await.status,
        JobStatus::Completed
    );
    let err = manager
        .job(job.id.as_str(), OutputRequest::Whole)
        .unwrap_err();
    assert!(
        matches!(&err, FleetError::OutputTooLarge { job_id, limit, output_bytes }
            if job_id == job.id.as_str() && *limit == herdctld::fleet::MAX_INLINE_OUTPUT_BYTES
                && *output_bytes > *limit),
        "{err:?}"
    );
    assert_eq!(err.code(), 1010);
    for named in ["outputFromSeq", "outputLimit", "streamJobOutput"] {
        assert!(err.to_string().contains(named), "{named} in {err}");
    }
    // The record alone is still there.
    let (record, output) = manager.job(job.id.as_str(), OutputRequest::Omit).unwrap();
    assert_eq!(record.id, job.id);
    assert!(output.is_none());

    // Pages: each under the reply limit, each beginning where the last said, together every line once.
    let mut from_seq = 0;
    let mut stdout_lines = 0;
    let mut pages = 0;
    loop {
        let page = OutputRequest::Page {
            from_seq,
            limit: None,
        };
        let (_, output) = manager.job(job.id.as_str(), page).unwrap();
        let output = output.unwrap();
        pages += 1;
        assert_eq!(output.lines.first().map(|line| line.seq), Some(from_seq));
        let bytes: usize = output
            .lines
            .iter()
            .map(|line| serde_json::to_string(line).unwrap().len())
            .sum();
        assert!(bytes as u64 <= herdctld::fleet::MAX_INLINE_OUTPUT_BYTES);
        stdout_lines += output.lines.iter().filter(|l| l.kind == "stdout").count();
        match output.next_seq {
            Some(next) => {
                assert_eq!(next, output.lines.last().unwrap().seq + 1);
                from_seq = next;
            }
            None => break,
        }
    }
    assert_eq!((pages, stdout_lines), (2, 144));
    // A line limit cuts the page sooner.
    let page = OutputRequest::Page {
        from_seq: 3,
        limit: Some(2),
    };
    let output = manager.job(job.id.as_str(), page).unwrap().1.unwrap();
    let seqs: Vec<u64> = output.lines.iter().map(|line| line.seq).collect();
    assert_eq!((seqs, output.next_seq), (vec![3, 4], Some(5)));
}
