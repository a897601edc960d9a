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
    let formatted = SharedBuffer::default();
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(bus.layer()).with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(formatted.clone()),
        ),
    );
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
                // Nothing to replay yet: the replay's end comes first.
                Some(LogItem::Replayed { count: 0, .. }) if messages.is_empty() => {}
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
    let mut by_job = manager
        .stream_logs(
            LogFilter {
                job_id: Some(b.id.to_string()),
                ..LogFilter::default()
            },
            100,
        )
        .unwrap();
    let Some(LogItem::Entry(first)) = by_job.next().await else {
        panic!("no replayed entry for job b")
    };
    assert_eq!(first.agent_name.as_deref(), Some("b"));
    assert_eq!(first.source.split("::").next(), Some("fleet"));
    let Err(err) = manager.stream_agent_logs("nobody", None, 0) else {
        panic!("logs of an unknown agent")
    };
    assert_eq!(err.code_name(), "AGENT_NOT_FOUND");

    // Jobs queued behind each other start from the previous one's finalization; each still logs in a span of
    // its own, not nested in the ones before it.
    let chain: Vec<_> = trigger_queued(&manager, "a", 3).await;
    for id in &chain {
        wait_job(&manager, id).await;
    }
    let text = String::from_utf8(formatted.0.lock().unwrap().clone()).unwrap();
    for id in &chain {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(&format!("job_id={id}")))
            .filter(|l| l.contains("job started") || l.contains("job finished"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in lines {
            assert_eq!(
                line.matches("job{").count(),
                1,
                "not in one job span: {line}"
            );
        }
    }
}

/// Triggers `count` jobs of `agent` at once (its concurrency is 1, so they queue behind each other).
async fn trigger_queued(manager: &FleetManager, agent: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let job = manager
            .trigger(agent, TriggerOptions::default())
            .await
            .unwrap();
        ids.push(job.id.to_string());
    }
    ids
}

/// Formatted log output, as the daemon would print it.
#[derive(Clone, Default)]
struct SharedBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for SharedBuffer {
    type Writer = SharedBuffer;

    fn make_writer(&'a self) -> SharedBuffer {
        self.clone()
    }
}
