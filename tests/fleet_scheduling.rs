//! Queue, concurrency limits and schedules of the embedded FleetManager (issue 3 and 4): the order jobs run
//! in, queue positions and bounds, skips and overlap, and schedules driven by a manual clock.

mod fleet_support;

use std::time::Duration;

use fleet_support::*;
use herdctld::fleet::{
    FleetEvent, FleetManager, FleetManagerOptions, SkipReason, StopOptions, TriggerOptions,
};
use herdctld::job::JobStatus;
use herdctld::scheduler::Clock;

fn trigger(prompt: &str, priority: u8) -> TriggerOptions {
    TriggerOptions {
        prompt: Some(prompt.into()),
        priority: Some(priority),
        ..TriggerOptions::default()
    }
}

/// Prompts of jobs in the order they started, from `job:started` events, until `count` have started.
async fn start_order(events: &mut herdctld::fleet::EventSubscription, count: usize) -> Vec<String> {
    let mut order = Vec::new();
    while order.len() < count {
        let event = next_event(events, "job:started", |e| {
            matches!(e, FleetEvent::JobStarted { .. })
        })
        .await;
        if let FleetEvent::JobStarted { job } = event.event {
            order.push(job.prompt.unwrap_or_default());
        }
    }
    order
}

#[tokio::test]
async fn per_agent_limit_one_queues_in_priority_then_fifo_order() {
    let fx = Fixture::new("", &[]);
    let release = fx.path("release");
    fx.write("", &[("a", &wait_for_file(&release), "")]);
    let manager = fx.manager().await;
    let mut events = manager.subscribe_events(None).unwrap();

    let first = manager.trigger("a", trigger("first", 5)).await.unwrap();
    assert_eq!(first.status, JobStatus::Running);
    let mut queued = Vec::new();
    for (prompt, priority) in [
        ("p5-a", 5),
        ("p5-b", 5),
        ("p1", 1),
        ("p10", 10),
        ("p5-c", 5),
    ] {
        let job = manager
            .trigger("a", trigger(prompt, priority))
            .await
            .unwrap();
        assert_eq!(job.status, JobStatus::Queued, "{prompt}");
        queued.push((prompt, job));
    }
    let queue = manager.queue().unwrap();
    let listed: Vec<(String, usize)> = queue
        .queued
        .iter()
        .map(|q| {
            let prompt = queued
                .iter()
                .find(|(_, j)| j.id.as_str() == q.job_id)
                .unwrap()
                .0;
            (prompt.to_string(), q.position)
        })
        .collect();
    assert_eq!(
        listed,
        [("p1", 1), ("p5-a", 2), ("p5-b", 3), ("p5-c", 4), ("p10", 5)]
            .map(|(p, n)| (p.to_string(), n))
    );
    assert_eq!(queue.agents["a"].running, 1);
    assert_eq!(queue.agents["a"].queued, 5);
    assert_eq!(queue.agents["a"].limit, 1);

    std::fs::write(&release, "").unwrap();
    let order = start_order(&mut events, 6).await;
    assert_eq!(order, ["first", "p1", "p5-a", "p5-b", "p5-c", "p10"]);
    for (_, job) in &queued {
        assert_eq!(
            wait_job(&manager, job.id.as_str()).await.status,
            JobStatus::Completed
        );
    }
}

#[tokio::test]
async fn per_agent_limit_two_runs_two_at_once() {
    let fx = Fixture::new("", &[]);
    let release = fx.path("release");
    fx.write("", &[("a", &wait_for_file(&release), "concurrency: 2")]);
    let manager = fx.manager().await;
    let mut events = manager.subscribe_events(None).unwrap();
    let mut jobs = Vec::new();
    for name in ["j1", "j2", "j3", "j4", "j5"] {
        jobs.push(manager.trigger("a", trigger(name, 5)).await.unwrap());
    }
    let statuses: Vec<JobStatus> = jobs.iter().map(|j| j.status).collect();
    use JobStatus::{Queued, Running};
    assert_eq!(statuses, [Running, Running, Queued, Queued, Queued]);
    let positions: Vec<usize> = manager
        .queue()
        .unwrap()
        .queued
        .iter()
        .map(|q| q.position)
        .collect();
    assert_eq!(positions, [1, 2, 3]);
    let status = manager.status().await;
    assert_eq!(status.jobs.active, 2);
    assert_eq!(status.jobs.queued, 3);
    assert_eq!(manager.agent("a").await.unwrap().current_jobs.len(), 2);

    std::fs::write(&release, "").unwrap();
    assert_eq!(
        start_order(&mut events, 5).await,
        ["j1", "j2", "j3", "j4", "j5"]
    );
    for job in &jobs {
        wait_job(&manager, job.id.as_str()).await;
    }
}

#[tokio::test]
async fn fleet_wide_limit_queues_across_agents_and_the_queue_is_bounded() {
    let fx = Fixture::new("", &[]);
    let release = fx.path("release");
    let script = wait_for_file(&release);
    fx.write(
        "",
        &[
            ("a", &script, "concurrency: 5"),
            ("b", &script, ""),
            ("c", &script, ""),
        ],
    );
    let manager = FleetManager::new(FleetManagerOptions {
        concurrency: Some(2),
        max_queued: 3,
        ..fx.options()
    });
    manager.initialize().await.unwrap();
    let mut events = manager.subscribe_events(None).unwrap();
    let a1 = manager.trigger("a", trigger("a1", 5)).await.unwrap();
    let b1 = manager.trigger("b", trigger("b1", 5)).await.unwrap();
    assert_eq!(
        (a1.status, b1.status),
        (JobStatus::Running, JobStatus::Running)
    );
    // The agent has room, the fleet does not.
    let a2 = manager.trigger("a", trigger("a2", 5)).await.unwrap();
    let c1 = manager.trigger("c", trigger("c1", 5)).await.unwrap();
    let c2 = manager.trigger("c", trigger("c2", 2)).await.unwrap();
    assert!([&a2, &c1, &c2]
        .iter()
        .all(|j| j.status == JobStatus::Queued));
    let queue = manager.queue().unwrap();
    assert_eq!(queue.fleet.limit, Some(2));
    assert_eq!(queue.fleet.running, 2);
    assert_eq!(queue.fleet.queued, 3);
    let positions: Vec<(String, usize)> = queue
        .queued
        .iter()
        .map(|q| (q.agent_name.clone(), q.position))
        .collect();
    assert_eq!(
        positions,
        [("c", 1), ("a", 1), ("c", 2)].map(|(a, n)| (a.to_string(), n))
    );

    let err = manager.trigger("b", trigger("b2", 5)).await.unwrap_err();
    assert_eq!(err.code_name(), "CONCURRENCY_LIMIT");
    assert_eq!(err.data()["limit"], 3);
    assert_eq!(err.data()["agentName"], "b");

    std::fs::write(&release, "").unwrap();
    // Two of the five started already; then c2 (priority 2), a2, c1 as slots free up.
    let order = start_order(&mut events, 5).await;
    assert_eq!(order, ["a1", "b1", "c2", "a2", "c1"]);
    for job in [&a1, &b1, &a2, &c1, &c2] {
        assert_eq!(
            wait_job(&manager, job.id.as_str()).await.status,
            JobStatus::Completed
        );
    }
}

#[tokio::test]
async fn scheduled_fires_over_the_limit_are_skipped() {
    let fx = Fixture::new("", &[]);
    let release = fx.path("release");
    fx.write(
        "",
        &[(
            "a",
            &wait_for_file(&release),
            "schedules:\n  hourly: {type: interval, interval: 1h}",
        )],
    );
    let clock = clock();
    let manager = FleetManager::new(fx.options_with_clock(&clock));
    manager.initialize().await.unwrap();
    let mut events = manager.subscribe_events(None).unwrap();
    let manual = manager.trigger("a", trigger("manual", 5)).await.unwrap();
    // Never ran: due at once on start, while the manual job holds the only slot.
    manager.start().await.unwrap();
    let skipped = next_event(&mut events, "schedule:skipped", |e| {
        matches!(e, FleetEvent::ScheduleSkipped { .. })
    })
    .await;
    let json = serde_json::to_value(&skipped).unwrap();
    let FleetEvent::ScheduleSkipped {
        agent_name,
        schedule_name,
        reason,
    } = skipped.event
    else {
        unreachable!()
    };
    assert_eq!(
        (agent_name.as_str(), schedule_name.as_str()),
        ("a", "hourly")
    );
    assert_eq!(reason, SkipReason::ConcurrencyLimit);
    assert_eq!(json["reason"], "concurrency_limit");
    let info = manager.schedule("a", "hourly").await.unwrap();
    assert_eq!((info.runs, info.skipped), (0, 1));
    // Nothing was queued for it.
    assert!(manager.queue().unwrap().queued.is_empty());
    std::fs::write(&release, "").unwrap();
    wait_job(&manager, manual.id.as_str()).await;
    manager.stop(StopOptions::default()).await.unwrap();
}

/// Starts a fleet whose agent `a` (concurrency 1) has an hourly schedule with `overlap`, lets the first fire
/// start a job that holds on until released, fires again, and returns the events of the second fire.
async fn second_fire_while_first_runs(overlap: &str) -> (Vec<FleetEvent>, FleetManager, Fixture) {
    second_fire_while_first_runs_with(overlap, None).await
}

/// [`second_fire_while_first_runs`] with the fleet's queue bounded to `max_queued` jobs.
async fn second_fire_while_first_runs_with(
    overlap: &str,
    max_queued: Option<usize>,
) -> (Vec<FleetEvent>, FleetManager, Fixture) {
    let fx = Fixture::new("", &[]);
    let release = fx.path("release");
    fx.write(
        "",
        &[(
            "a",
            &wait_for_file(&release),
            &format!("schedules:\n  hourly: {{type: interval, interval: 1h, overlap: {overlap}}}"),
        )],
    );
    let clock = clock();
    let mut options = fx.options_with_clock(&clock);
    if let Some(max_queued) = max_queued {
        options.max_queued = max_queued;
    }
    let manager = FleetManager::new(options);
    manager.initialize().await.unwrap();
    let mut events = manager.subscribe_events(None).unwrap();
    manager.start().await.unwrap();
    let first = next_event(&mut events, "first fire", |e| {
        matches!(e, FleetEvent::ScheduleTriggered { .. })
    })
    .await;
    let FleetEvent::ScheduleTriggered { job_id, .. } = first.event else {
        unreachable!()
    };
    next_event(
        &mut events,
        "first job started",
        |e| matches!(e, FleetEvent::JobStarted { job } if job.id.as_str() == job_id),
    )
    .await;
    clock.advance(Duration::from_secs(3600));
    let seen = events_until(&mut events, "second fire", |e| {
        matches!(
            e,
            FleetEvent::ScheduleTriggered { .. } | FleetEvent::ScheduleSkipped { .. }
        )
    })
    .await;
    let mut second = seen.into_iter().rev().take(1).collect::<Vec<_>>();
    if let Some(FleetEvent::ScheduleTriggered { job_id, .. }) = second.first().cloned() {
        let job_event = next_event(&mut events, "second job queued or started", |e| {
            matches!(e, FleetEvent::JobQueued { job, .. } | FleetEvent::JobStarted { job } if job.id.as_str() == job_id)
        })
        .await;
        second.push(job_event.event);
    }
    std::fs::write(&release, "").unwrap();
    (second, manager, fx)
}

#[tokio::test]
async fn overlap_skip_skips_a_fire_while_the_previous_run_goes_on() {
    let (second, manager, _fx) = second_fire_while_first_runs("skip").await;
    assert!(
        matches!(
            second[0],
            FleetEvent::ScheduleSkipped {
                reason: SkipReason::AlreadyRunning,
                ..
            }
        ),
        "{second:?}"
    );
    manager.stop(StopOptions::default()).await.unwrap();
    assert_eq!(manager.schedule("a", "hourly").await.unwrap().skipped, 1);
}

#[tokio::test]
async fn overlap_queue_runs_the_fire_after_the_previous_one() {
    let (second, manager, _fx) = second_fire_while_first_runs("queue").await;
    assert!(
        matches!(second[0], FleetEvent::ScheduleTriggered { .. }),
        "{second:?}"
    );
    let FleetEvent::JobQueued { job, position } = &second[1] else {
        panic!("expected job:queued, got {second:?}")
    };
    assert_eq!(*position, 1);
    assert_eq!(
        wait_job(&manager, job.id.as_str()).await.status,
        JobStatus::Completed
    );
    manager.stop(StopOptions::default()).await.unwrap();
}

#[tokio::test]
async fn overlap_allow_runs_beside_the_previous_run() {
    let (second, manager, _fx) = second_fire_while_first_runs("allow").await;
    assert!(
        matches!(second[0], FleetEvent::ScheduleTriggered { .. }),
        "{second:?}"
    );
    let FleetEvent::JobStarted { job } = &second[1] else {
        panic!("expected job:started, got {second:?}")
    };
    assert_eq!(
        wait_job(&manager, job.id.as_str()).await.status,
        JobStatus::Completed
    );
    manager.stop(StopOptions::default()).await.unwrap();
}

#[tokio::test]
async fn interval_schedule_fires_every_period_and_counts_runs() {
    let fx = Fixture::new(
        "",
        &[(
            "a",
            ECHO_PROMPT,
            "schedules:\n  hourly: {type: interval, interval: 1h, prompt: tick}",
        )],
    );
    let clock = clock();
    let manager = FleetManager::new(fx.options_with_clock(&clock));
    manager.initialize().await.unwrap();
    let mut events = manager.subscribe_events(None).unwrap();
    manager.start().await.unwrap();
    for round in 0..3 {
        if round > 0 {
            let info = manager.schedule("a", "hourly").await.unwrap();
            assert_eq!(
                info.next_trigger.map(|next| next.at),
                Some(clock.now() + chrono::TimeDelta::hours(1)),
                "round {round}"
            );
            clock.advance(Duration::from_secs(3600));
        }
        let fired = next_event(&mut events, "fire", |e| {
            matches!(e, FleetEvent::ScheduleTriggered { .. })
        })
        .await;
        let FleetEvent::ScheduleTriggered { job_id, .. } = fired.event else {
            unreachable!()
        };
        let job = wait_job(&manager, &job_id).await;
        assert_eq!(job.status, JobStatus::Completed);
        assert_eq!(job.schedule.as_deref(), Some("hourly"));
        assert_eq!(job.prompt.as_deref(), Some("tick"));
    }
    let info = manager.schedule("a", "hourly").await.unwrap();
    assert_eq!((info.runs, info.skipped, info.failed), (3, 0, 0));
    assert_eq!(info.last_run_at, Some(clock.now()));
    assert_eq!(info.last_status, Some(JobStatus::Completed));
    manager.stop(StopOptions::default()).await.unwrap();
}

#[tokio::test]
async fn a_failing_scheduled_job_is_reported_by_get_schedules() {
    let fx = Fixture::new(
        "",
        &[(
            "a",
            "echo broken >&2\nexit 1",
            "schedules:\n  hourly: {type: interval, interval: 1h}",
        )],
    );
    let clock = clock();
    let manager = FleetManager::new(fx.options_with_clock(&clock));
    manager.initialize().await.unwrap();
    let mut events = manager.subscribe_events(None).unwrap();
    manager.start().await.unwrap();
    next_event(&mut events, "job:failed", |e| {
        matches!(e, FleetEvent::JobFailed { .. })
    })
    .await;
    let schedules = manager.schedules().await.unwrap();
    let info = schedules.iter().find(|s| s.name == "hourly").unwrap();
    assert_eq!(info.last_status, Some(JobStatus::Failed));
    assert!(
        info.last_error.as_deref().unwrap().contains("broken"),
        "{info:?}"
    );
    assert_eq!(info.last_run_at, Some(clock.now()));
    assert_eq!((info.runs, info.failed), (1, 1));
    manager.stop(StopOptions::default()).await.unwrap();
}

#[tokio::test]
async fn disabled_schedule_stays_disabled_across_a_restart_and_enable_rearms_it() {
    let fx = Fixture::new(
        "",
        &[
            (
                "a",
                ECHO_PROMPT,
                "schedules:\n  hourly: {type: interval, interval: 1h}",
            ),
            (
                "canary",
                ECHO_PROMPT,
                "schedules:\n  hourly: {type: interval, interval: 1h}",
            ),
        ],
    );
    let clock = clock();
    {
        let manager = FleetManager::new(fx.options_with_clock(&clock));
        manager.initialize().await.unwrap();
        let info = manager.disable_schedule("a", "hourly").await.unwrap();
        assert!(!info.enabled);
        assert!(info.next_trigger.is_none());
    }
    let manager = FleetManager::new(fx.options_with_clock(&clock));
    manager.initialize().await.unwrap();
    let mut events = manager.subscribe_events(None).unwrap();
    manager.start().await.unwrap();
    for _ in 0..2 {
        // The canary fires whenever `a` would: when its job is done, `a` has had its chance.
        let fired = next_event(&mut events, "canary fire", |e| {
            matches!(
                e,
                FleetEvent::ScheduleTriggered { .. } | FleetEvent::ScheduleSkipped { .. }
            )
        })
        .await;
        let FleetEvent::ScheduleTriggered {
            agent_name, job_id, ..
        } = fired.event
        else {
            panic!("unexpected {:?}", fired.event)
        };
        assert_eq!(agent_name, "canary");
        wait_job(&manager, &job_id).await;
        clock.advance(Duration::from_secs(3600));
    }
    let info = manager.schedule("a", "hourly").await.unwrap();
    assert!(!info.enabled);
    assert!(info.next_trigger.is_none());
    assert_eq!(info.runs, 0);
    let status = manager.status().await;
    assert_eq!(status.scheduler.active_schedules, 1);

    let info = manager.enable_schedule("a", "hourly").await.unwrap();
    assert!(info.enabled);
    assert!(info.next_trigger.is_some());
    let fired = next_event(
        &mut events,
        "fire of a",
        |e| matches!(e, FleetEvent::ScheduleTriggered { agent_name, .. } if agent_name == "a"),
    )
    .await;
    let FleetEvent::ScheduleTriggered { job_id, .. } = fired.event else {
        unreachable!()
    };
    wait_job(&manager, &job_id).await;
    manager.stop(StopOptions::default()).await.unwrap();
}

#[tokio::test]
async fn cron_next_trigger_is_shown_before_start() {
    let fx = Fixture::new(
        "",
        &[(
            "a",
            ECHO_PROMPT,
            "schedules:\n  morning: {type: cron, cron: '0 9 * * *', timezone: Europe/Berlin}\n  off: {type: cron, cron: '@daily', enabled: false}",
        )],
    );
    let clock = clock(); // 2026-03-02T08:00:00Z = 09:00 in Berlin (CET): next is tomorrow 08:00Z.
    let manager = FleetManager::new(fx.options_with_clock(&clock));
    manager.initialize().await.unwrap();
    let schedules = manager.schedules().await.unwrap();
    let morning = schedules.iter().find(|s| s.name == "morning").unwrap();
    assert_eq!(morning.kind, "cron");
    assert_eq!(morning.cron.as_deref(), Some("0 9 * * *"));
    assert_eq!(
        morning.next_trigger.as_ref().map(|next| next.at),
        Some("2026-03-03T08:00:00Z".parse().unwrap())
    );
    let off = schedules.iter().find(|s| s.name == "off").unwrap();
    assert!(off.next_trigger.is_none());
    let status = manager.status().await;
    assert_eq!(
        status.scheduler.next_trigger.map(|n| n.at),
        Some("2026-03-03T08:00:00Z".parse().unwrap())
    );
}

#[tokio::test]
async fn a_stopped_fleet_fires_nothing_and_resumes_on_start() {
    let fx = Fixture::new(
        "",
        &[(
            "a",
            ECHO_PROMPT,
            "schedules:\n  hourly: {type: interval, interval: 1h}",
        )],
    );
    let clock = clock();
    let manager = FleetManager::new(fx.options_with_clock(&clock));
    manager.initialize().await.unwrap();
    let mut events = manager.subscribe_events(None).unwrap();
    manager.start().await.unwrap();
    let fired = next_event(&mut events, "first fire", |e| {
        matches!(e, FleetEvent::ScheduleTriggered { .. })
    })
    .await;
    let FleetEvent::ScheduleTriggered { job_id, .. } = fired.event else {
        unreachable!()
    };
    wait_job(&manager, &job_id).await;
    manager.stop(StopOptions::default()).await.unwrap();
    clock.advance(Duration::from_secs(3 * 3600));
    let info = manager.schedule("a", "hourly").await.unwrap();
    assert_eq!((info.runs, info.skipped), (1, 0));

    manager.start().await.unwrap();
    let fired = next_event(&mut events, "fire after restart", |e| {
        matches!(
            e,
            FleetEvent::ScheduleTriggered { .. } | FleetEvent::ScheduleSkipped { .. }
        )
    })
    .await;
    let FleetEvent::ScheduleTriggered { job_id, .. } = fired.event else {
        panic!("unexpected {:?}", fired.event)
    };
    wait_job(&manager, &job_id).await;
    manager.stop(StopOptions::default()).await.unwrap();
    let info = manager.schedule("a", "hourly").await.unwrap();
    // Nothing fired (nor was skipped as `stopping`) while the fleet was stopped.
    assert_eq!((info.runs, info.skipped), (2, 0));
}

/// Jobs that end as they start (their working directory does not exist) free their slot inside the queue's own
/// dispatch: a long queue of them ends one after another, not each inside the previous one's stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_queue_of_jobs_that_cannot_start_ends_without_deepening_the_stack() {
    let fx = Fixture::new("", &[]);
    let release = fx.path("release");
    fx.write(
        "",
        &[
            ("host", &wait_for_file(&release), ""),
            (
                "boxed",
                "true",
                "working_directory: /herdctld-no-such-directory",
            ),
        ],
    );
    let manager = FleetManager::new(FleetManagerOptions {
        concurrency: Some(1),
        max_queued: 5000,
        ..fx.options()
    });
    manager.initialize().await.unwrap();
    let holder = manager.trigger("host", trigger("hold", 5)).await.unwrap();
    let mut queued = Vec::new();
    for _ in 0..1000 {
        queued.push(manager.trigger("boxed", trigger("x", 5)).await.unwrap());
    }
    assert!(queued.iter().all(|job| job.status == JobStatus::Queued));
    std::fs::write(&release, "").unwrap();
    wait_job(&manager, &holder.id.to_string()).await;
    // The queue runs in order: once the newest has ended, all have (older ones are pruned from history).
    let last = queued.last().unwrap().id.to_string();
    assert_eq!(wait_job(&manager, &last).await.status, JobStatus::Failed);
}

/// A fire that admission refuses (its `overlap: queue` finds the queue full) is a skip, never a
/// `schedule:triggered` naming a job that does not exist (the triggered event comes before its job's
/// `job:created`, so a skip seen first means neither came), and does not count as a run.
#[tokio::test]
async fn a_queued_fire_refused_at_a_full_queue_is_skipped_and_never_announced() {
    let (second, manager, _fx) = second_fire_while_first_runs_with("queue", Some(0)).await;
    assert!(
        matches!(
            second[..],
            [FleetEvent::ScheduleSkipped {
                reason: SkipReason::ConcurrencyLimit,
                ..
            }]
        ),
        "{second:?}"
    );
    manager.stop(StopOptions::default()).await.unwrap();
    let schedule = manager.schedule("a", "hourly").await.unwrap();
    assert_eq!((schedule.runs, schedule.skipped), (1, 1));
}
