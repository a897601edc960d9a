//! What the embedded FleetManager keeps: jobs and output across restarts, crash recovery of jobs a dead
//! daemon left running, history pruning, output streaming from any point, and the log bus.

mod fleet_support;

use fleet_support::*;
use herdctld::fleet::{
    FleetEvent, FleetManager, FleetManagerOptions, HistoryOptions, JobOutputStream, OutputItem,
    OutputRequest, StopOptions, TriggerOptions,
};
use herdctld::job::{ExitReason, Job, JobId, JobStatus, TriggerType};
use herdctld::state::StateDir;

async fn collect_output(
    stream: &mut JobOutputStream,
) -> (Vec<u64>, Vec<String>, Option<JobStatus>) {
    let mut seqs = Vec::new();
    let mut texts = Vec::new();
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Some(item) = stream.next().await {
            match item {
                OutputItem::Line(line) => {
                    seqs.push(line.seq);
                    let line = line.parse().expect("an output line");
                    if line.kind == "stdout" {
                        texts.push(line.chunk);
                    }
                }
                OutputItem::Replayed(_) => {}
                OutputItem::Gap(gap) => panic!("no line may be missing: {gap:?}"),
                OutputItem::Eof(end) => return Some(end.status),
            }
        }
        None
    })
    .await
    .expect("output stream did not end");
    (seqs, texts, ended)
}

#[tokio::test]
async fn jobs_and_output_survive_a_restart() {
    let fx = Fixture::new("", &[("a", ECHO_PROMPT, "")]);
    let id = {
        let manager = fx.manager().await;
        manager.start().await.unwrap();
        let mut events = manager.subscribe_events(None).unwrap();
        let job = manager
            .trigger(
                "a",
                TriggerOptions {
                    prompt: Some("persist me".into()),
                    ..TriggerOptions::default()
                },
            )
            .await
            .unwrap();
        let id = job.id.to_string();
        next_event(
            &mut events,
            "output",
            |e| matches!(e, FleetEvent::JobOutput { job_id, .. } if *job_id == id),
        )
        .await;
        assert_eq!(wait_job(&manager, &id).await.status, JobStatus::Completed);
        manager.stop(StopOptions::default()).await.unwrap();
        id
    };
    // The first manager is gone, and with it its lock on the state directory.
    let manager = fx.manager().await;
    let (job, output) = manager.job(&id, OutputRequest::Whole).unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(
        (job.pid, job.pgid, job.process_start_time),
        (None, None, None)
    );
    assert!(job.started_at.is_some() && job.duration_ms.is_some());
    assert_eq!(job.summary.as_deref(), Some("done"));
    assert_eq!(job.prompt.as_deref(), Some("persist me"));
    let output = output.unwrap().lines;
    assert_eq!(stdout_texts(&output), ["prompt: persist me"]);
    // A stream-json line keeps the message as the runtime printed it, its text as the chunk.
    let result = output
        .iter()
        .find(|l| l.kind == "result")
        .expect("no result line");
    let message = result.message.as_ref().expect("the message");
    assert_eq!(
        (message["result"].as_str(), message["type"].as_str()),
        (Some("done"), Some("result"))
    );
    assert_eq!(result.chunk, "done");
    let mut stream = manager.stream_job_output(&id, 0).unwrap();
    let (seqs, texts, status) = collect_output(&mut stream).await;
    assert_eq!(seqs, (0..output.len() as u64).collect::<Vec<_>>());
    assert_eq!(texts, ["prompt: persist me"]);
    assert_eq!(status, Some(JobStatus::Completed));
    assert!(stream.next().await.is_none());
    let listed = manager.jobs(&Default::default()).unwrap();
    assert_eq!(listed.total, 1);
    assert_eq!(manager.status().await.jobs.completed, 1);
}

/// A `sleep` leading its own process group, as a job process of a dead daemon would.
fn orphan_sleep() -> std::process::Child {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("sleep")
        .arg("30")
        .process_group(0)
        .spawn()
        .unwrap()
}

/// Writes the record of a job a dead daemon left running with process `pid` started at `start_time`.
fn write_running_record(fx: &Fixture, pid: u32, start_time: u64) -> JobId {
    let state = StateDir::open(&fx.state).unwrap();
    let (mut store, _) = state.open_job_store().unwrap();
    let now = chrono::Utc::now();
    let mut job = Job::new(
        JobId::generate(now),
        "a".into(),
        None,
        TriggerType::Manual,
        Some("left behind".into()),
        5,
        now,
    );
    job.status = JobStatus::Running;
    job.started_at = Some(now);
    job.pid = Some(pid);
    job.pgid = Some(pid);
    job.process_start_time = Some(start_time);
    store.put(&job).unwrap();
    job.id
}

#[tokio::test]
async fn a_job_left_running_by_a_dead_daemon_is_interrupted_and_its_process_killed() {
    let fx = Fixture::new("", &[("a", ECHO_PROMPT, "")]);
    let mut sleep = orphan_sleep();
    let pid = sleep.id();
    let start_time = herdctld::runner::process_start_time(pid).unwrap();
    let id = write_running_record(&fx, pid, start_time);

    let manager = fx.manager().await;
    let job = manager.job(id.as_str(), OutputRequest::Omit).unwrap().0;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.exit_reason, Some(ExitReason::Interrupted));
    // The process is gone, and so is every field that named it.
    assert_eq!(
        (job.pid, job.pgid, job.process_start_time),
        (None, None, None)
    );
    assert!(job.finished_at.is_some());
    eventually("the orphan dies", || !process_alive(pid)).await;
    let status = sleep.wait().unwrap();
    assert!(!status.success());
}

#[tokio::test]
async fn recovery_does_not_kill_a_process_that_reused_the_pid() {
    let fx = Fixture::new("", &[("a", ECHO_PROMPT, "")]);
    let mut sleep = orphan_sleep();
    let pid = sleep.id();
    let start_time = herdctld::runner::process_start_time(pid).unwrap();
    // The recorded start time differs: this pid now belongs to another process.
    let id = write_running_record(&fx, pid, start_time + 1);

    let manager = fx.manager().await;
    let job = manager.job(id.as_str(), OutputRequest::Omit).unwrap().0;
    assert_eq!(job.exit_reason, Some(ExitReason::Interrupted));
    assert!(process_alive(pid), "an unrelated process was killed");
    sleep.kill().unwrap();
    sleep.wait().unwrap();
}

#[tokio::test]
async fn history_keeps_the_newest_jobs_per_agent() {
    let fx = Fixture::new("", &[("a", ECHO_PROMPT, ""), ("b", ECHO_PROMPT, "")]);
    let manager = FleetManager::new(FleetManagerOptions {
        history: HistoryOptions {
            max_jobs_per_agent: Some(3),
            ..HistoryOptions::default()
        },
        ..fx.options()
    });
    manager.initialize().await.unwrap();
    let b = manager
        .trigger("b", TriggerOptions::default())
        .await
        .unwrap();
    wait_job(&manager, b.id.as_str()).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let job = manager
            .trigger("a", TriggerOptions::default())
            .await
            .unwrap();
        assert_eq!(
            wait_job(&manager, job.id.as_str()).await.status,
            JobStatus::Completed
        );
        ids.push(job.id);
    }
    let listed = manager
        .jobs(&herdctld::fleet::JobQuery {
            agent: Some("a".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(listed.total, 3);
    let kept: Vec<&JobId> = listed.jobs.iter().map(|j| &j.id).rev().collect();
    assert_eq!(kept, ids[2..].iter().collect::<Vec<_>>());
    let jobs_dir = fx.state.join("jobs");
    for (n, id) in ids.iter().enumerate() {
        let exists = jobs_dir.join(format!("{id}.yaml")).exists();
        let output_exists = jobs_dir.join(format!("{id}.jsonl")).exists();
        assert_eq!(exists, n >= 2, "record of job {n}");
        assert_eq!(output_exists, n >= 2, "output of job {n}");
    }
    // The other agent's history is its own.
    assert!(manager.job(b.id.as_str(), OutputRequest::Omit).is_ok());
}

#[tokio::test]
async fn pruning_never_removes_a_job_before_its_waiters_see_it() {
    let fx = Fixture::new("", &[]);
    let release = fx.path("release");
    fx.write("", &[("a", &wait_for_file(&release), "")]);
    let manager = FleetManager::new(FleetManagerOptions {
        history: HistoryOptions {
            max_jobs_per_agent: Some(2),
            ..HistoryOptions::default()
        },
        ..fx.options()
    });
    manager.initialize().await.unwrap();
    // One running, four queued: more active jobs than the history keeps.
    let mut jobs = Vec::new();
    for _ in 0..5 {
        jobs.push(
            manager
                .trigger("a", TriggerOptions::default())
                .await
                .unwrap(),
        );
    }
    // Every waiter asks before any job ends; each then gets its job's final record, pruned or not.
    let waiters: Vec<_> = jobs
        .iter()
        .map(|job| manager.wait_for_job(job.id.as_str()))
        .collect();
    std::fs::write(&release, "").unwrap();
    for waiter in waiters {
        let job = tokio::time::timeout(DEADLINE, waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job.status, JobStatus::Completed);
    }
    let listed = manager.jobs(&herdctld::fleet::JobQuery::default()).unwrap();
    assert_eq!(listed.total, 2);
}

#[tokio::test]
async fn streaming_a_running_job_from_the_middle_has_no_gap_and_no_duplicate() {
    let fx = Fixture::new("", &[]);
    let release = fx.path("release");
    let script = format!(
        "i=0\nwhile [ $i -lt 300 ]; do echo \"line $i\"; i=$((i+1)); done\nwhile [ ! -e '{}' ]; do sleep 0.02; done\nwhile [ $i -lt 3000 ]; do echo \"line $i\"; i=$((i+1)); done",
        release.display()
    );
    fx.write("", &[("a", &script, "")]);
    let manager = fx.manager().await;
    let mut events = manager
        .subscribe_events(Some(vec!["job:output".into()]))
        .unwrap();
    let job = manager
        .trigger("a", TriggerOptions::default())
        .await
        .unwrap();
    let id = job.id.to_string();
    next_event(
        &mut events,
        "line 299",
        |e| matches!(e, FleetEvent::JobOutput { job_id, line } if *job_id == id && line.seq == 299),
    )
    .await;
    let mut from_middle = manager.stream_job_output(&id, 150).unwrap();
    // Read part of the history before the job goes on, then let it print while the stream catches up.
    let mut seqs = Vec::new();
    for _ in 0..10 {
        match from_middle.next().await {
            Some(OutputItem::Line(line)) => seqs.push(line.seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    std::fs::write(&release, "").unwrap();
    let (rest, texts, status) = collect_output(&mut from_middle).await;
    seqs.extend(rest);
    assert_eq!(seqs, (150..3000).collect::<Vec<u64>>());
    assert_eq!(texts.last().map(String::as_str), Some("line 2999"));
    assert_eq!(status, Some(JobStatus::Completed));
    assert!(from_middle.next().await.is_none());
}

#[tokio::test]
async fn max_output_mb_caps_what_a_job_keeps() {
    // 3 MiB of 100-byte lines against a 1 MiB cap: the head and the tail stay, the middle is dropped.
    let flood = "head -c 3145728 /dev/zero | tr '\\0' 'x' | fold -w 99";
    let fx = Fixture::new("", &[("flood", flood, "max_output_mb: 1")]);
    let manager = fx.manager().await;
    let job = manager.trigger("flood", Default::default()).await.unwrap();
    let done = wait_job(&manager, job.id.as_str()).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert!(done.output_truncated, "the record says its output was cut");
    let (_, output) = manager.job(job.id.as_str(), OutputRequest::Whole).unwrap();
    let output = output.unwrap().lines;
    let kept: usize = output.iter().filter(|line| line.kind == "stdout").count();
    // The cap counts the file's bytes: a 99-byte line takes about 190 as a JSON line, so 1 MiB holds
    // about 5,600 of them, three quarters to all of which are kept (the head and one or two tail segments).
    assert!(
        (3_500..=6_000).contains(&kept),
        "about 1 MiB of the 3 MiB kept, got {kept} lines"
    );
    assert!(output.iter().any(|line| line.kind == "output_truncated"));
    let stored = std::fs::metadata(fx.state.join("jobs").join(format!("{}.jsonl", job.id)))
        .unwrap()
        .len();
    assert!(stored <= 1024 * 1024 + 1024, "{stored} bytes stored");
}

#[tokio::test]
async fn a_live_reader_gets_every_line_of_a_job_whose_file_keeps_only_part() {
    // 3 MiB against a 1 MiB cap, read live from its first line: the cap bounds the file, not the reader.
    let fx = Fixture::new("", &[]);
    let release = fx.path("release");
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.02; done\nhead -c 3145728 /dev/zero | tr '\\0' 'x' | fold -w 99",
        release.display()
    );
    fx.write("", &[("flood", &script, "max_output_mb: 1")]);
    let manager = fx.manager().await;
    let job = manager.trigger("flood", Default::default()).await.unwrap();
    let mut live = manager.stream_job_output(job.id.as_str(), 0).unwrap();
    std::fs::write(&release, "").unwrap();
    let (seqs, texts, status) = collect_output(&mut live).await;
    let lines = 3145728u64.div_ceil(99);
    assert_eq!(seqs, (0..lines).collect::<Vec<u64>>());
    assert!(texts.iter().all(|text| !text.is_empty()));
    assert_eq!(status, Some(JobStatus::Completed));
    let done = wait_job(&manager, job.id.as_str()).await;
    assert!(done.output_truncated, "while the file kept only part");
}

/// A session id an earlier herdctld kept in `state.yaml` becomes the agent's pointer at start, before any
/// save of `state.yaml` (which no longer has the old key) can drop it.
#[tokio::test]
async fn a_session_id_kept_by_an_earlier_herdctld_survives_the_first_save_of_state() {
    let fx = Fixture::new("", &[("a", ECHO_PROMPT, ""), ("b", ECHO_PROMPT, "")]);
    std::fs::create_dir_all(&fx.state).unwrap();
    std::fs::write(
        fx.state.join("state.yaml"),
        "agents:\n  a:\n    last_session_id: kept-session\n",
    )
    .unwrap();
    let manager = fx.manager().await;
    let job = manager
        .trigger("b", TriggerOptions::default())
        .await
        .unwrap();
    wait_job(&manager, &job.id.to_string()).await;

    let pointer = std::fs::read_to_string(fx.state.join("sessions/a.json")).unwrap();
    let pointer: serde_json::Value = serde_json::from_str(&pointer).unwrap();
    assert_eq!(pointer["session_id"], "kept-session");
    assert_eq!(pointer["agent_name"], "a");
}

/// Reading a job record can take as long as the disk does; the fleet is not held meanwhile. The record is
/// made a FIFO (the journal vouching for it, so start-up does not read it): a listing that reaches it waits
/// until the test writes the record into it, and while it waits the fleet answers other calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_waits_on_the_disk_does_not_hold_the_fleet() {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

    let fx = Fixture::new("", &[("a", ECHO_PROMPT, "")]);
    let id = {
        let manager = fx.manager().await;
        let job = manager
            .trigger("a", TriggerOptions::default())
            .await
            .unwrap();
        let id = job.id.to_string();
        assert_eq!(wait_job(&manager, &id).await.status, JobStatus::Completed);
        id
    };
    let jobs = fx.state.join("jobs");
    let record = jobs.join(format!("{id}.yaml"));
    let yaml = std::fs::read(&record).unwrap();
    std::fs::remove_file(&record).unwrap();
    nix::unistd::mkfifo(
        &record,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap();
    let fifo_inode = std::fs::metadata(&record).unwrap().ino().to_string();
    let journal = std::fs::read_to_string(jobs.join("index.tsv")).unwrap();
    let vouching: String = journal
        .lines()
        .map(|line| {
            let mut fields: Vec<&str> = line.split('\t').collect();
            if fields[0] == id {
                fields[5] = &fifo_inode;
            }
            format!("{}\n", fields.join("\t"))
        })
        .collect();
    std::fs::write(jobs.join("index.tsv"), vouching).unwrap();

    let manager = fx.manager().await;
    let lister = manager.clone();
    let listing = tokio::task::spawn_blocking(move || lister.jobs(&Default::default()));
    // Opening the FIFO for writing succeeds once the listing has opened it for reading; the listing then
    // waits in its read until the writer closes.
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut writer = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&record)
        {
            Ok(file) => break file,
            Err(e) if std::time::Instant::now() < deadline => {
                assert_eq!(e.raw_os_error(), Some(libc::ENXIO), "{e}");
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("the listing never read the record: {e}"),
        }
    };
    let (answered, answer) = std::sync::mpsc::channel();
    let asker = manager.clone();
    let runtime = tokio::runtime::Handle::current();
    std::thread::spawn(move || {
        let _ = answered.send(runtime.block_on(asker.status()).jobs.completed);
    });
    let completed = tokio::task::spawn_blocking(move || answer.recv_timeout(DEADLINE))
        .await
        .unwrap();
    writer.write_all(&yaml).unwrap();
    drop(writer);
    assert_eq!(
        completed,
        Ok(1),
        "getStatus waited for a listing reading the disk"
    );
    let listed = listing.await.unwrap().unwrap();
    assert_eq!(listed.jobs.len(), 1);
    assert_eq!(listed.jobs[0].id.as_str(), id);
}
