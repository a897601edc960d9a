//! Daily budgets and cost totals of an embedded FleetManager (issue 19): a schedule fire once the day's
//! spend reached the budget is skipped with reason `budget` while a running job goes on; spend is summed
//! from the job records, so it is the same after a restart and follows the agent's calendar day.

mod fleet_support;
#[path = "support/noon.rs"]
mod noon;

use chrono::{DateTime, Utc};
use fleet_support::*;
use herdctld::fleet::{
    FleetError, FleetEvent, FleetManager, OutputRequest, SkipReason, TriggerOptions,
};
use herdctld::job::JobStatus;
use herdctld::scheduler::ManualClock;
use noon::noon_zone;

/// A result that cost $0.03 (100 input, 20 output, 1 cache creation and 5 cache read tokens). With the
/// prompt `wait` the job first waits for the file `gate` in its working directory.
const COSTLY: &str = r#"if [ "$HERDCTL_PROMPT" = wait ]; then while [ ! -e gate ]; do sleep 0.02; done; fi
echo '{"type":"result","subtype":"success","is_error":false,"result":"spent","num_turns":1,"total_cost_usd":0.03,"modelUsage":{"m":{"inputTokens":100,"outputTokens":20,"cacheReadInputTokens":5,"cacheCreationInputTokens":1}}}'"#;

fn approx(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn a_fire_once_the_budget_is_spent_is_skipped_with_reason_budget_and_running_jobs_go_on() {
    let extra = format!(
        "timezone: {}\nbudget: {{daily_usd: 0.02}}\nconcurrency: 2\nschedules:\n  tick: {{type: interval, interval: 1h}}\n",
        noon_zone()
    );
    let fx = Fixture::new("", &[("spender", COSTLY, &extra)]);
    let manager = fx.manager().await;
    let running = manager
        .trigger(
            "spender",
            TriggerOptions {
                prompt: Some("wait".into()),
                ..TriggerOptions::default()
            },
        )
        .await
        .unwrap();
    let spent = manager
        .trigger("spender", TriggerOptions::default())
        .await
        .unwrap();
    assert_eq!(
        wait_job(&manager, spent.id.as_str()).await.status,
        JobStatus::Completed
    );
    let budget = manager.agent("spender").await.unwrap().budget.unwrap();
    assert!(
        budget.reached && approx(budget.spent_today, 0.03),
        "{budget:?}"
    );

    // The schedule has never run, so it fires as the fleet starts.
    let mut events = manager.subscribe_events(None).unwrap();
    manager.start().await.unwrap();
    let fire = next_event(&mut events, "the fire of spender/tick", |e| {
        matches!(
            e,
            FleetEvent::ScheduleSkipped { .. } | FleetEvent::ScheduleTriggered { .. }
        )
    })
    .await;
    match fire.event {
        FleetEvent::ScheduleSkipped {
            agent_name,
            schedule_name,
            reason,
        } => assert_eq!(
            (agent_name.as_str(), schedule_name.as_str(), reason),
            ("spender", "tick", SkipReason::Budget)
        ),
        other => panic!("the fire was not skipped: {other:?}"),
    }
    let tick = manager.schedule("spender", "tick").await.unwrap();
    assert_eq!((tick.runs, tick.skipped), (0, 1));
    assert_eq!(
        serde_json::to_value(SkipReason::Budget).unwrap(),
        "budget",
        "the wire name of the reason"
    );

    // The job that was running when the budget was reached is not stopped for it.
    let (job, _) = manager
        .job(running.id.as_str(), OutputRequest::Omit)
        .unwrap();
    assert_eq!(job.status, JobStatus::Running);
    std::fs::write(fx.path("agents/gate"), "").unwrap();
    assert_eq!(
        wait_job(&manager, running.id.as_str()).await.status,
        JobStatus::Completed
    );
    let budget = manager.agent("spender").await.unwrap().budget.unwrap();
    assert!(approx(budget.spent_today, 0.06), "{budget:?}");
    manager.stop(Default::default()).await.unwrap();
}

/// A finished job record as herdctl writes one, with `usage` in herdctl's shape.
fn herdctl_record(id: &str, agent: &str, finished: &str, cost: f64) -> String {
    format!(
        "id: {id}\nagent: {agent}\nschedule: null\ntrigger_type: manual\nstatus: completed\n\
         exit_reason: success\nsession_id: null\nforked_from: null\nstarted_at: {finished}\n\
         finished_at: {finished}\nduration_seconds: 0\nprompt: work\nsummary: done\noutput_file: null\n\
         usage:\n  per_model:\n    claude-sonnet-4-5:\n      input_tokens: 10\n      output_tokens: 2\n\
         \x20     cache_creation_input_tokens: 0\n      cache_read_input_tokens: 0\n  num_turns: 1\n\
         \x20 total_cost_usd: {cost}\n"
    )
}

async fn manager_at(fx: &Fixture, clock: &ManualClock) -> FleetManager {
    let manager = FleetManager::new(fx.options_with_clock(clock));
    manager.initialize().await.unwrap();
    manager
}

#[tokio::test]
async fn spend_is_summed_from_job_records_after_a_restart_and_follows_the_agents_day() {
    // Tokyo is UTC+9: 10:00 UTC on 2 March is 19:00 there, 16:00 UTC is 01:00 on 3 March. In UTC both
    // jobs ended on 2 March.
    let fx = Fixture::new(
        "",
        &[(
            "spender",
            COSTLY,
            "timezone: Asia/Tokyo\nbudget: {daily_usd: 0.03}\n",
        )],
    );
    let jobs = fx.state.join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    for (id, finished, cost) in [
        ("job-2026-03-02-aaaaaa", "2026-03-02T10:00:00Z", 0.04),
        ("job-2026-03-02-bbbbbb", "2026-03-02T16:00:00Z", 0.01),
    ] {
        std::fs::write(
            jobs.join(format!("{id}.yaml")),
            herdctl_record(id, "spender", finished, cost),
        )
        .unwrap();
    }

    // 23:00 in Tokyo on 2 March: only the first job ended that day.
    let clock = ManualClock::new("2026-03-02T14:00:00Z".parse().unwrap());
    let manager = manager_at(&fx, &clock).await;
    let agent = manager.agent("spender").await.unwrap();
    let budget = agent.budget.clone().unwrap();
    assert!(
        budget.reached && approx(budget.spent_today, 0.04),
        "{budget:?}"
    );
    assert_eq!(agent.usage.timezone, "Asia/Tokyo");
    let since: DateTime<Utc> = "2026-03-01T15:00:00Z".parse().unwrap();
    assert_eq!(agent.usage.today.since, since, "midnight in Tokyo");
    assert_eq!(
        (
            agent.usage.today.totals.jobs,
            agent.usage.today.totals.input_tokens
        ),
        (1, 10)
    );
    match manager.trigger("spender", TriggerOptions::default()).await {
        Err(FleetError::BudgetExceeded {
            agent_name,
            spent_usd,
            daily_usd,
            day,
            timezone,
        }) => {
            assert_eq!(
                (agent_name.as_str(), day.as_str(), timezone.as_str()),
                ("spender", "2026-03-02", "Asia/Tokyo")
            );
            assert!(approx(spent_usd, 0.04) && approx(daily_usd, 0.03));
        }
        other => panic!("not refused for its budget: {other:?}"),
    }
    drop(manager);

    // A restart (from the journal this time) at 01:30 on 3 March in Tokyo: a new day with the second job.
    clock.set("2026-03-02T16:30:00Z".parse().unwrap());
    let manager = manager_at(&fx, &clock).await;
    let agent = manager.agent("spender").await.unwrap();
    let budget = agent.budget.clone().unwrap();
    assert!(
        !budget.reached && approx(budget.spent_today, 0.01),
        "{budget:?}"
    );
    let week = agent.usage.last_7_days.totals;
    assert!(week.jobs == 2 && approx(week.cost_usd, 0.05), "{week:?}");
    let job = manager
        .trigger("spender", TriggerOptions::default())
        .await
        .expect("a new day's budget lets the run start");
    wait_job(&manager, job.id.as_str()).await;
}
