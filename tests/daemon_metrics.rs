//! `GET /metrics` of the real daemon (issue 19): after a success, a failure, a schedule fire and a skip, a
//! running and a queued job, the scrape — over the socket's HTTP framing and over `--metrics-listen` — parsed as
//! Prometheus parses it, has the series with the values the daemon's own records and our calls imply. And
//! `--metrics-listen` on an address in use fails the start, naming the flag and the address. A reader that
//! falls behind is counted in `herdctld_lagged_notices_total`.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Succeeds at once with two lines and a result that reports cost and tokens for one model.
const OK_AGENT: &str = r#"name: ok
runtime: command
command:
  - sh
  - -c
  - |
    echo "first line"
    echo "second line"
    echo '{"type":"result","subtype":"success","is_error":false,"result":"done","num_turns":1,"total_cost_usd":0.25,"modelUsage":{"claude-test":{"inputTokens":11,"outputTokens":7,"cacheReadInputTokens":5,"cacheCreationInputTokens":0,"costUSD":0.25}}}'
"#;

/// Fails at once: one stderr line, exit 3.
const FAILS_AGENT: &str = r#"name: fails
runtime: command
command: [sh, -c, 'echo "something broke" >&2; exit 3']
"#;

/// Prints a line, on an hourly schedule that, never having run, fires as soon as the fleet starts.
const TICKER_AGENT: &str = r#"name: ticker
runtime: command
command: [sh, -c, 'echo tick']
schedules:
  every:
    type: interval
    interval: 1h
"#;

/// The harness's `gated` agent (held until [`open_gate`]), one job at a time, with an hourly schedule that,
/// never having run, is due as soon as the fleet starts.
fn gated_agent() -> String {
    assert!(GATED_AGENT.contains("concurrency: 2\n"), "{GATED_AGENT}");
    GATED_AGENT.replace("concurrency: 2\n", "concurrency: 1\n")
        + "schedules:\n  hourly:\n    type: interval\n    interval: 1h\n"
}

/// The metrics fleet in a new directory.
fn metrics_fleet() -> TestDir {
    let dir = TestDir::new();
    let agents = dir.path().join("agents");
    std::fs::create_dir_all(&agents).unwrap();
    let files = [
        ("ok.yaml", OK_AGENT.to_owned()),
        ("fails.yaml", FAILS_AGENT.to_owned()),
        ("gated.yaml", gated_agent()),
        ("ticker.yaml", TICKER_AGENT.to_owned()),
    ];
    for (file, yaml) in &files {
        std::fs::write(agents.join(file), yaml).unwrap();
    }
    let names: Vec<&str> = files.iter().map(|(file, _)| *file).collect();
    std::fs::write(dir.path().join("herdctl.yaml"), fleet_yaml(&names)).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_jobs_schedules_output_and_calls() {
    let daemon = Daemon::start_in(
        metrics_fleet(),
        DaemonOptions {
            // Not started: a manual job takes gated's only slot before the schedule is first due.
            args: ["--no-start", "--metrics-listen", "127.0.0.1:0"]
                .map(String::from)
                .into(),
            keep_existing_fleet: true,
            ..DaemonOptions::default()
        },
    )
    .await;
    let tcp = metrics_address(&daemon).await;
    let mut client = daemon.ndjson().await;
    let events = client.subscribe("subscribeEvents", json!({})).await;

    let held = trigger(&mut client, "gated").await;
    wait_for_output(&mut client, &events, &held, "before gate").await;
    client.call("start", Value::Null).await;
    // At the start both schedules are due: ticker's fires (and its job runs), gated's is skipped.
    let (mut skipped, mut ticked) = (None, None);
    while skipped.is_none() || ticked.is_none() {
        let event = client.notification(&events).await;
        match event["type"].as_str() {
            Some("schedule:skipped") => skipped = Some(event),
            Some("job:completed") if event["job"]["agentName"] == "ticker" => {
                ticked = event_job_id(&event).map(str::to_owned);
            }
            _ => {}
        }
    }
    let (skipped, ticked) = (skipped.unwrap(), ticked.unwrap());
    assert_eq!(
        (
            &skipped["agentName"],
            &skipped["scheduleName"],
            &skipped["reason"]
        ),
        (
            &json!("gated"),
            &json!("hourly"),
            &json!("concurrency_limit")
        )
    );
    let queued = client.call("trigger", json!({"agentName": "gated"})).await;
    assert_eq!(queued["status"], "queued", "{queued}");
    let queued = queued["id"].as_str().unwrap().to_owned();
    let ok = trigger(&mut client, "ok").await;
    wait_for_event(&mut client, &events, "job:completed", Some(&ok)).await;
    let fails = trigger(&mut client, "fails").await;
    wait_for_event(&mut client, &events, "job:failed", Some(&fails)).await;
    // Calls that fail count under their code; a method that does not exist, under `unknown`.
    let error = client
        .call_err("trigger", json!({"agentName": "nobody"}))
        .await;
    assert_error(&error, 1002, "AGENT_NOT_FOUND");
    let error = client.call_err("noSuchMethod", Value::Null).await;
    assert_eq!(error["code"], -32601, "{error}");

    // Counted in every framing; a batch entry by entry, over HTTP (jsonrpsee's dispatch) and NDJSON (ours).
    for framing in [Framing::Http, Framing::WebSocket] {
        let mut other = daemon.connect(framing).await;
        assert_eq!(other.call("getState", Value::Null).await, "running");
    }
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "getStatus"},
        {"jsonrpc": "2.0", "id": 2, "method": "getJob", "params": {"id": "job-2000-01-01-zzzzzz"}},
    ]);
    let (status, body) = http_post(&daemon.socket, &batch.to_string()).await;
    assert!(status.contains(" 200 "), "{status}");
    let replies: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(replies.len(), 2, "{body}");
    // A batch is no client's business: a raw line.
    let mut plain = RawNdjson::connect(&daemon.socket).await;
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "getStatus"},
        {"jsonrpc": "2.0", "id": 2, "method": "getQueue"},
    ]);
    let replies = plain.exchange(&batch.to_string()).await;
    assert_eq!(replies.as_array().map(Vec::len), Some(2), "{replies}");

    let ok_job = client.call("getJob", json!({"id": ok})).await;
    assert_eq!(ok_job["exitReason"], "success", "{ok_job}");
    let fails_job = client.call("getJob", json!({"id": fails})).await;
    assert_eq!(fails_job["exitReason"], "error", "{fails_job}");

    // Every call above, as the daemon should have counted them (a scrape is not a call).
    let calls = [
        ("subscribeEvents", "ok", 1.0),
        ("trigger", "ok", 4.0),
        ("start", "ok", 1.0),
        ("trigger", "1002", 1.0),
        ("unknown", "-32601", 1.0),
        ("getJob", "ok", 2.0),
        ("getState", "ok", 2.0),
        ("getStatus", "ok", 2.0),
        ("getJob", "1003", 1.0),
        ("getQueue", "ok", 1.0),
    ];
    let (lines, bytes) = output_on_disk(&daemon.state, &[&held, &ok, &fails, &ticked]);
    let over_socket = scrape_socket(&daemon.socket).await;
    let over_tcp = scrape_tcp(tcp).await;
    for scrape in [&over_socket, &over_tcp] {
        let started = |agent| scrape.get("herdctld_jobs_started_total", &[("agent", agent)]);
        assert_eq!(started("ok"), Some(1.0));
        assert_eq!(started("fails"), Some(1.0));
        assert_eq!(started("ticker"), Some(1.0));
        // The queued job has not started.
        assert_eq!(started("gated"), Some(1.0));
        let finished = |agent, outcome| {
            let labels = [("agent", agent), ("outcome", outcome)];
            scrape.get("herdctld_jobs_finished_total", &labels)
        };
        assert_eq!(finished("ok", "success"), Some(1.0));
        assert_eq!(finished("fails", "error"), Some(1.0));
        assert_eq!(finished("ticker", "success"), Some(1.0));
        assert_eq!(scrape.family("herdctld_jobs_finished_total").len(), 3);
        assert_eq!(scrape.get("herdctld_queue_depth", &[]), Some(1.0));
        assert_eq!(scrape.get("herdctld_jobs_running", &[]), Some(1.0));
        let skip = [
            ("agent", "gated"),
            ("schedule", "hourly"),
            ("reason", "concurrency_limit"),
        ];
        assert_eq!(
            scrape.get("herdctld_schedule_skips_total", &skip),
            Some(1.0)
        );
        let fire = [("agent", "ticker"), ("schedule", "every")];
        assert_eq!(
            scrape.get("herdctld_schedule_fires_total", &fire),
            Some(1.0)
        );
        assert_eq!(scrape.family("herdctld_schedule_fires_total").len(), 1);
        for (method, code, count) in calls {
            let labels = [("method", method), ("code", code)];
            assert_eq!(
                scrape.get("herdctld_rpc_calls_total", &labels),
                Some(count),
                "{method} {code}"
            );
        }
        assert_eq!(scrape.family("herdctld_rpc_calls_total").len(), calls.len());
        assert_eq!(scrape.get("herdctld_output_lines_total", &[]), Some(lines));
        assert_eq!(scrape.get("herdctld_output_bytes_total", &[]), Some(bytes));
        let events = [("subscription", "subscribeEvents")];
        assert_eq!(scrape.get("herdctld_subscribers", &events), Some(1.0));
        let ok_duration = [("agent", "ok")];
        let count = scrape.get("herdctld_job_duration_seconds_count", &ok_duration);
        assert_eq!(count, Some(1.0));
        // The one run of `ok`: its seconds in the sum, and in every bucket at or above them.
        let seconds = ok_job["durationMs"].as_f64().unwrap() / 1000.0;
        let sum = scrape.get("herdctld_job_duration_seconds_sum", &ok_duration);
        assert!(
            sum.is_some_and(|sum| (sum - seconds).abs() < 1e-9),
            "{sum:?} for {seconds}"
        );
        let buckets = scrape.histogram("herdctld_job_duration_seconds", &ok_duration);
        assert!(
            buckets.len() > 1 && buckets.last().unwrap().0.is_infinite(),
            "{buckets:?}"
        );
        for (le, count) in buckets {
            assert_eq!(
                count,
                f64::from(u8::from(seconds <= le)),
                "le {le}, {seconds} s"
            );
        }
        let model = [("agent", "ok"), ("model", "claude-test")];
        assert_eq!(scrape.get("herdctld_cost_usd_total", &model), Some(0.25));
        let tokens = |kind| {
            let labels = [("agent", "ok"), ("model", "claude-test"), ("kind", kind)];
            scrape.get("herdctld_tokens_total", &labels)
        };
        assert_eq!(tokens("input"), Some(11.0));
        assert_eq!(tokens("output"), Some(7.0));
        assert_eq!(tokens("cache_read"), Some(5.0));
        // Zero counts are not recorded.
        assert_eq!(tokens("cache_creation"), None);
        let rss = scrape.get("process_resident_memory_bytes", &[]);
        assert!(rss.is_some_and(|bytes| bytes > 1e6), "rss {rss:?}");
        let started_at = scrape.get("process_start_time_seconds", &[]);
        assert!(started_at.is_some_and(|t| t > 1.0e9), "{started_at:?}");
        let cpu = scrape.get("process_cpu_seconds_total", &[]);
        assert!(cpu.is_some_and(|seconds| seconds > 0.0), "cpu {cpu:?}");
        // At least the standard streams, the socket and this scrape's connection.
        let fds = scrape.get("process_open_fds", &[]);
        assert!(fds.is_some_and(|fds| fds >= 5.0), "open fds {fds:?}");
    }

    // Both held jobs finish: nothing queued or running any more.
    open_gate(&daemon.agents_dir(), &held);
    open_gate(&daemon.agents_dir(), &queued);
    wait_for_event(&mut client, &events, "job:completed", Some(&held)).await;
    wait_for_event(&mut client, &events, "job:completed", Some(&queued)).await;
    let after = scrape_socket(&daemon.socket).await;
    assert_eq!(after.get("herdctld_queue_depth", &[]), Some(0.0));
    assert_eq!(after.get("herdctld_jobs_running", &[]), Some(0.0));
    let gated_labels = [("agent", "gated")];
    assert_eq!(
        after.get("herdctld_jobs_started_total", &gated_labels),
        Some(2.0)
    );
    let gated_success = [("agent", "gated"), ("outcome", "success")];
    assert_eq!(
        after.get("herdctld_jobs_finished_total", &gated_success),
        Some(2.0)
    );
    let (lines, bytes) = output_on_disk(&daemon.state, &[&held, &queued, &ok, &fails, &ticked]);
    assert_eq!(after.get("herdctld_output_lines_total", &[]), Some(lines));
    assert_eq!(after.get("herdctld_output_bytes_total", &[]), Some(bytes));

    // The subscription stops counting once it is gone (its pump notices the closed sink by itself).
    client.unsubscribe("unsubscribeEvents", &events).await;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let events = [("subscription", "subscribeEvents")];
    loop {
        let open = scrape_socket(&daemon.socket)
            .await
            .get("herdctld_subscribers", &events);
        if open == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscriber still counted: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every `lagged` notice a reader that falls behind gets is counted under its subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagged_notices_are_counted() {
    // In-process: the test feeds its log bus, more entries than a reader that does not read can be kept.
    let daemon = Daemon::in_process().await;
    let mut reader = daemon.ndjson().await;
    let logs = reader.subscribe("streamLogs", json!({"tail": 0})).await;
    assert_eq!(reader.notification(&logs).await["type"], "replayed");
    const ENTRIES: usize = 20_000;
    daemon.push_log_entries(ENTRIES);
    // The newest entry is never dropped: up to it, every notice was sent.
    let mut notices = 0.0;
    loop {
        let item = reader.notification(&logs).await;
        if item["type"] == "lagged" {
            notices += 1.0;
        } else if item["message"] == format!("entry {}", ENTRIES - 1) {
            break;
        }
    }
    assert!(notices >= 1.0, "the reader never lagged");
    let scrape = scrape_socket(&daemon.socket).await;
    let lagged = [("subscription", "streamLogs")];
    assert_eq!(
        scrape.get("herdctld_lagged_notices_total", &lagged),
        Some(notices)
    );
    assert_eq!(scrape.family("herdctld_lagged_notices_total").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_found_interrupted_at_start_is_counted_finished() {
    let not_started = || DaemonOptions {
        args: vec!["--no-start".into()],
        keep_existing_fleet: true,
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start_in(metrics_fleet(), not_started()).await;
    let mut client = daemon.ndjson().await;
    let events = client.subscribe("subscribeEvents", json!({})).await;
    let held = trigger(&mut client, "gated").await;
    wait_for_output(&mut client, &events, &held, "before gate").await;
    drop(client);

    let daemon = Daemon::start_in(daemon.into_dir(), not_started()).await;
    let scrape = scrape_socket(&daemon.socket).await;
    let finished = |outcome| {
        scrape.get(
            "herdctld_jobs_finished_total",
            &[("agent", "gated"), ("outcome", outcome)],
        )
    };
    assert_eq!(finished("interrupted"), Some(1.0));
    assert_eq!(
        scrape.get("herdctld_job_duration_seconds_count", &[("agent", "gated")]),
        None,
        "an interrupted job's time spans the downtime"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_on_an_address_in_use_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut daemon = Daemon::spawn_in(
        TestDir::new(),
        DaemonOptions {
            args: vec!["--metrics-listen".into(), addr.clone()],
            ..DaemonOptions::default()
        },
    );
    let status = daemon.wait_exit(START_TIMEOUT).await;
    assert_eq!(status.code(), Some(1), "stderr: {}", daemon.stderr());
    let stderr = daemon.stderr();
    assert!(
        stderr.contains(&format!("--metrics-listen {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
    // The metrics address is bound before the socket: a failed start leaves no socket behind.
    assert!(!daemon.socket.exists());
    assert!(
        !daemon.stdout().contains("listening on"),
        "{}",
        daemon.stdout()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_a_non_loopback_address_are_a_warning() {
    let (daemon, addr) = serving_metrics_on("0.0.0.0:0").await;
    assert!(addr.ip().is_unspecified(), "{addr}");
    wait_until("the non-loopback warning", REPLY_TIMEOUT, || {
        daemon
            .stderr()
            .lines()
            .any(|line| line.contains("WARN") && line.contains("non-loopback"))
    })
    .await;
    let local = SocketAddr::from(([127, 0, 0, 1], addr.port()));
    let scrape = scrape_tcp(local).await;
    assert_eq!(scrape.get("herdctld_jobs_running", &[]), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_listener_serves_only_metrics() {
    let (_daemon, addr) = serving_metrics_on("127.0.0.1:0").await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let root = http_exchange(stream, &get_request("/")).await;
    assert!(root.status.contains(" 404 "), "{}", root.status);
    let post =
        "POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let refused = http_exchange(stream, post).await;
    assert!(refused.status.contains(" 405 "), "{}", refused.status);
    assert_eq!(refused.header("allow"), Some("GET, HEAD"));
}

/// The test fleet with `--metrics-listen listen`, and the address it bound.
async fn serving_metrics_on(listen: &str) -> (Daemon, SocketAddr) {
    let daemon = Daemon::start_with(DaemonOptions {
        args: vec!["--metrics-listen".into(), listen.into()],
        ..DaemonOptions::default()
    })
    .await;
    let addr = metrics_address(&daemon).await;
    (daemon, addr)
}

/// The address `--metrics-listen` bound, from the line the daemon prints once it serves there.
async fn metrics_address(daemon: &Daemon) -> SocketAddr {
    let line = || {
        daemon
            .stdout()
            .lines()
            .find_map(|line| line.strip_prefix("herdctld: metrics on http://"))
            .map(str::to_owned)
    };
    wait_until("the metrics address on stdout", START_TIMEOUT, || {
        line().is_some()
    })
    .await;
    let line = line().unwrap();
    let addr = line
        .strip_suffix("/metrics")
        .unwrap_or_else(|| panic!("metrics line does not end in /metrics: {line:?}"));
    let addr: SocketAddr = addr.parse().unwrap();
    assert_ne!(addr.port(), 0, "the printed address is the bound one");
    addr
}

/// Waits for the `job:output` event of `job` whose chunk mentions `text`.
async fn wait_for_output(client: &mut Client, events: &Value, job: &str, text: &str) {
    loop {
        let event = wait_for_event(client, events, "job:output", Some(job)).await;
        if event["line"]["chunk"].to_string().contains(text) {
            return;
        }
    }
}

/// Lines and bytes (without newlines) of the jobs' output files: what `herdctld_output_*` count.
fn output_on_disk(state: &Path, jobs: &[&str]) -> (f64, f64) {
    let (mut lines, mut bytes) = (0, 0);
    for job in jobs {
        let text = std::fs::read_to_string(state.join("jobs").join(format!("{job}.jsonl")))
            .unwrap_or_else(|e| panic!("output of {job}: {e}"));
        lines += text.lines().count();
        bytes += text.lines().map(str::len).sum::<usize>();
    }
    assert!(lines > 0, "no output at all");
    (lines as f64, bytes as f64)
}

/// A scrape as Prometheus reads it.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        Scrape(prometheus_parse::Scrape::parse(lines).expect("a scrape in the text format"))
    }

    /// The samples of `metric`, by their labels.
    fn family(&self, metric: &str) -> BTreeMap<String, f64> {
        self.0
            .samples
            .iter()
            .filter(|sample| sample.metric == metric)
            .map(|sample| (sample.labels.to_string(), value(&sample.value)))
            .collect()
    }

    /// The buckets `(le, count)` of the histogram `metric` with (at least) `labels`, in order.
    fn histogram(&self, metric: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let sample = self.0.samples.iter().find(|sample| {
            sample.metric == metric
                && labels
                    .iter()
                    .all(|(name, want)| sample.labels.get(name) == Some(*want))
        });
        match sample.map(|sample| &sample.value) {
            Some(prometheus_parse::Value::Histogram(buckets)) => buckets
                .iter()
                .map(|bucket| (bucket.less_than, bucket.count))
                .collect(),
            other => panic!("no histogram {metric} with {labels:?}: {other:?}"),
        }
    }

    /// The value of the one sample of `metric` that has (at least) `labels`; `None` if there is none.
    fn get(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.0.samples.iter().filter(|sample| {
            sample.metric == metric
                && labels
                    .iter()
                    .all(|(name, want)| sample.labels.get(name) == Some(*want))
        });
        let sample = found.next()?;
        assert!(
            found.next().is_none(),
            "more than one {metric} sample has {labels:?}"
        );
        Some(value(&sample.value))
    }
}

fn value(value: &prometheus_parse::Value) -> f64 {
    match value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("not a single value: {other:?}"),
    }
}

/// `GET /metrics` on the socket's HTTP framing.
async fn scrape_socket(socket: &Path) -> Scrape {
    checked(http_get(socket, "/metrics").await)
}

/// `GET /metrics` on the `--metrics-listen` address.
async fn scrape_tcp(addr: SocketAddr) -> Scrape {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    checked(http_exchange(stream, &get_request("/metrics")).await)
}

/// A 200 in the text format's content type, parsed.
fn checked(response: HttpResponse) -> Scrape {
    assert!(response.status.contains(" 200 "), "{}", response.status);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    Scrape::parse(&response.body)
}
