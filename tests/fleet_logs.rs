//! The log bus seen from an embedded FleetManager: entries of an agent's jobs carry the agent and the job.
//!
//! Alone in its test binary: tracing caches per call site whether anyone listens, and a scoped subscriber
//! (`set_default`) in one test races with call sites first hit by other tests' threads.

mod fleet_support;

use fleet_support::*;
use herdctld::fleet::{FleetManager, LogFilter, LogItem, TriggerOptions};

#[tokio::test]
async fn logs_of_an_agent_carry_its_jobs() {
    use tracing_subscriber::layer::SubscriberExt;
    let fx = Fixture::new("", &[("a", ECHO_PROMPT, ""), ("b", ECHO_PROMPT, "")]);
    let options = fx.options();
    let bus = options.logs.clone();
    // This test runs on one thread, so every task the fleet spawns logs through this subscriber.
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(bus.layer()));
    let manager = FleetManager::new(options);
    manager.initialize().await.unwrap();
    let mut agent_logs = manager.stream_agent_logs("a", None, 100).unwrap();
    let a = manager
        .trigger("a", TriggerOptions::default())
        .await
        .unwrap();
    let b = manager
        .trigger("b", TriggerOptions::default())
        .await
        .unwrap();
    wait_job(&manager, a.id.as_str()).await;
    wait_job(&manager, b.id.as_str()).await;

    let mut messages = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while !messages.iter().any(|m: &String| m == "job finished") {
            match agent_logs.next().await {
                Some(LogItem::Entry(entry)) => {
                    assert_eq!(entry.agent_name.as_deref(), Some("a"), "{entry:?}");
                    assert_eq!(entry.job_id.as_deref(), Some(a.id.as_str()), "{entry:?}");
                    messages.push(entry.message);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("no `job finished` log line for agent a");
    assert!(
        messages.contains(&"job started".to_string()),
        "{messages:?}"
    );

    // Replay by job id, from the ring.
    let mut by_job = manager.stream_logs(
        LogFilter {
            job_id: Some(b.id.to_string()),
            ..LogFilter::default()
        },
        100,
    );
    let Some(LogItem::Entry(first)) = by_job.next().await else {
        panic!("no replayed entry for job b")
    };
    assert_eq!(first.agent_name.as_deref(), Some("b"));
    assert_eq!(first.source.split("::").next(), Some("fleet"));
    let Err(err) = manager.stream_agent_logs("nobody", None, 0) else {
        panic!("logs of an unknown agent")
    };
    assert_eq!(err.code_name(), "AGENT_NOT_FOUND");
}
