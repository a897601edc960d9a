//! The examples of `proto-docs/README.md`, sent to the daemon (the binary, for its logs) on the demo fleet,
//! and its answers compared with the documented ones.
//!
//! The demo fleet is copied into a temp dir that stands for the README's `/tmp/demo` (paths in answers are
//! compared with the temp dir written `/tmp/demo`), with the state in `/tmp/demo/.herdctl` and `TZ=Etc/UTC`.
//! A scenario puts the fleet in the state each example shows (the greeter's first fire done, slow-worker
//! jobs running, queued, finished, four runs spending its budget, …) and runs the example there. It runs
//! every greeter example well before the greeter's second fire (30 s after the first). The reporter's `*/5`
//! cron is not the test's to move: it starts clear of a fire, which in the second between the start and the
//! first example (`getStatus`) would change that example's counts.
//!
//! Values are compared, except what differs from run to run, compared by shape: job ids (and the same
//! documented id must always be the same job), subscription ids (likewise), timestamps and dates,
//! durations, pids, uptime. `…` stands for what the README leaves out: members of an object, elements of an
//! array, part of a string, or notifications (a `# …` line).

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use support::*;

const README: &str = include_str!("../proto-docs/README.md");

/// The path the README's examples show for the fleet's directory.
const DOCUMENTED_FLEET_DIR: &str = "/tmp/demo";

/// Numbers that differ from run to run: compared by type.
const VARYING_NUMBERS: &[&str] = &["durationMs", "pid", "pgid", "processStartTime", "uptime"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_examples_answer_what_they_document() {
    let mut examples = Examples::parse(README);
    clear_of_the_reporters_fire().await;
    let daemon = demo_daemon(&[]).await;
    let mut run = Run::new(&daemon);
    let mut control = daemon.ndjson().await;
    let ends = control
        .subscribe(
            "subscribeEvents",
            json!({"types": ["job:completed", "job:failed", "job:cancelled"]}),
        )
        .await;
    // The greeter's schedule, never run, fires at start.
    let greeted = control
        .call(
            "getJobs",
            json!({"agentName": "greeter", "status": "completed"}),
        )
        .await;
    if greeted["total"] == 0 {
        wait_for_event(&mut control, &ends, "job:completed", None).await;
    }

    run.example(
        examples.take("getStatus", 0),
        &["/result/scheduler/nextTrigger"],
    )
    .await;
    run.example(examples.take("metrics", 0), &[]).await;
    for n in 0..2 {
        run.example(examples.take("getState", n), &[]).await;
    }
    for method in ["initialize", "stop", "start", "reload"] {
        run.example(examples.take(method, 0), &[]).await;
    }
    for method in [
        "getAgents",
        "getAgent",
        "getJobs",
        "getSchedules",
        "getSchedule",
        "disableSchedule",
        "enableSchedule",
        "rpc.discover",
    ] {
        run.example(examples.take(method, 0), &[]).await;
    }
    for (method, n) in [
        ("getAgent", 2),
        ("getJob", 1),
        ("getSchedule", 1),
        ("getAgent", 3),
        ("trigger", 4),
        ("hello", 0),
        ("generated", 0),
    ] {
        run.example(examples.take(method, n), &[]).await;
    }
    // A manual greeter job, as events; then the log lines it left are the newest.
    run.example(examples.take("subscribeEvents", 0), &[]).await;
    run.example(examples.take("streamLogs", 0), &[]).await;
    run.example(examples.take("streamAgentLogs", 0), &[]).await;

    // slow-worker: one job from the README, a second one running beside it, a third queued.
    run.example(examples.take("trigger", 0), &[]).await;
    let first = run.job("job-2026-12-03-8mzu71");
    let second = trigger(&mut control, "slow-worker").await;
    let queued = trigger(&mut control, "slow-worker").await;
    run.example(examples.take("getQueue", 0), &[]).await;
    assert_eq!(run.job("job-2026-12-03-do97xy"), queued);
    run.example(examples.take("cancelJob", 0), &[]).await;
    completed(&mut control, &ends, [first, second]).await;
    run.example(examples.take("getJob", 0), &[]).await;
    for n in 0..2 {
        run.example(examples.take("streamJobOutput", n), &[]).await;
    }
    // Four runs spend the budget: the two above, a fork and one more.
    run.example(examples.take("forkJob", 0), &[]).await;
    let fork = run.job("job-2026-12-03-e55f1k");
    let fourth = trigger(&mut control, "slow-worker").await;
    completed(&mut control, &ends, [fork, fourth]).await;
    run.example(examples.take("getAgent", 1), &[]).await;
    run.example(examples.take("trigger", 3), &[]).await;
    run.example(examples.take("trigger", 1), &[]).await;

    // A configuration that does not validate.
    let greeter = daemon.agents_dir().join("greeter.yaml");
    let yaml = std::fs::read_to_string(&greeter).unwrap();
    std::fs::write(&greeter, yaml.replace("name: greeter", "name: bad name")).unwrap();
    run.example(examples.take("reload", 1), &[]).await;

    // The queue full, and a fork of a queued job: a daemon with a queue of one.
    let small = demo_daemon(&["--max-queued", "1"]).await;
    let mut run = Run::new(&small);
    let mut control = small.ndjson().await;
    for _ in 0..2 {
        trigger(&mut control, "slow-worker").await;
    }
    let queued = trigger(&mut control, "slow-worker").await;
    run.map_job("job-2026-12-03-tz6xln", &queued);
    run.example(examples.take("trigger", 2), &[]).await;
    run.example(examples.take("forkJob", 1), &[]).await;

    examples.all_taken();
}

/// The binary on a copy of `examples/demo` (see the module doc), with `args`.
/// Waits, when a fire of the reporter's `*/5` cron (UTC) is under 10 s away, until it has passed: a fire
/// between the start and the first example would change that example's counts.
async fn clear_of_the_reporters_fire() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let to_fire = 300 - now.as_secs() % 300;
    if to_fire < 10 {
        tokio::time::sleep(std::time::Duration::from_secs(to_fire + 1)).await;
    }
}

async fn demo_daemon(args: &[&str]) -> Daemon {
    let dir = TestDir::new();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo");
    std::fs::create_dir_all(dir.path().join("agents")).unwrap();
    for file in [
        "herdctl.yaml",
        "agents/greeter.yaml",
        "agents/reporter.yaml",
        "agents/slow-worker.yaml",
    ] {
        std::fs::copy(demo.join(file), dir.path().join(file)).unwrap();
    }
    let state = dir.path().join(".herdctl");
    Daemon::start_in(
        dir,
        DaemonOptions {
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![("TZ".into(), "Etc/UTC".into())],
            keep_existing_fleet: true,
            state: Some(state),
            ..DaemonOptions::default()
        },
    )
    .await
}

/// Waits until every one of `jobs` completed, in any order.
async fn completed<const N: usize>(client: &mut Client, ends: &Value, jobs: [String; N]) {
    let mut waiting: Vec<String> = jobs.into();
    while !waiting.is_empty() {
        let event = client.notification(ends).await;
        let job = event_job_id(&event).unwrap_or_default().to_owned();
        if waiting.contains(&job) {
            assert_eq!(event["type"], "job:completed", "{event}");
            waiting.retain(|waited| *waited != job);
        }
    }
}

// -------------------------------------------------------------------------------------------------
// The README's examples
// -------------------------------------------------------------------------------------------------

/// A reply or notification as the README shows it: JSON in which `…` leaves things out.
#[derive(Debug, Clone)]
enum Pattern {
    /// `open`: the README left members out.
    Object {
        members: Vec<(String, Pattern)>,
        open: bool,
    },
    Array(Vec<Element>),
    String(String),
    Scalar(Value),
    /// `…` as a value: anything.
    Any,
}

#[derive(Debug, Clone)]
enum Element {
    /// Any number of elements.
    Gap,
    Item(Pattern),
}

/// What an example expects on its connection, in order.
#[derive(Debug)]
enum Expected {
    Message(Pattern),
    /// Notifications the README left out (`# …`).
    Gap,
    /// A line of a text answer (`GET /metrics`).
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `socat`: requests on one NDJSON connection.
    Ndjson,
    /// `curl -d`: one HTTP POST.
    Http,
    /// `curl …/metrics`: a scrape.
    Metrics,
    /// A request a program prints (`python3 -c …`): the test builds it.
    Generated,
}

#[derive(Debug)]
struct Example {
    /// Line of the README its command starts on.
    line: usize,
    kind: Kind,
    /// Each as sent, a line (JSON, or not: the README also shows garbage).
    requests: Vec<String>,
    expected: Vec<Expected>,
    /// `# REQUEST  →  REPLY` lines: further calls on the same connection.
    exchanges: Vec<(String, Pattern)>,
    taken: bool,
}

impl Example {
    /// What the scenario calls it: the method of its first request, `hello` for garbage, `metrics`,
    /// `generated`.
    fn label(&self) -> String {
        match self.kind {
            Kind::Metrics => "metrics".into(),
            Kind::Generated => "generated".into(),
            _ => match serde_json::from_str::<Value>(&self.requests[0]) {
                Ok(request) => request["method"].as_str().unwrap_or("?").to_owned(),
                Err(_) => self.requests[0].clone(),
            },
        }
    }
}

struct Examples(Vec<Example>);

impl Examples {
    /// Every command of a `sh` block with the answers that follow it as `# ` lines.
    fn parse(readme: &str) -> Examples {
        let mut examples: Vec<Example> = Vec::new();
        let mut in_sh = false;
        let mut command: Option<(usize, String)> = None;
        for (index, line) in readme.lines().enumerate() {
            if let Some(fence) = line.strip_prefix("```") {
                in_sh = !in_sh && fence == "sh";
                command = None;
                continue;
            }
            if !in_sh || line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix("# ") {
                if let Some(example) = examples.last_mut().filter(|_| command.is_none()) {
                    example.expect(comment);
                }
                continue;
            }
            let (start, text) = command.get_or_insert_with(|| (index + 1, String::new()));
            text.push_str(line);
            text.push('\n');
            if line.contains("UNIX-CONNECT") || line.contains("--unix-socket") {
                examples.extend(Example::of_command(*start, text));
                command = None;
            }
        }
        examples.retain(|example| !example.expected.is_empty());
        Examples(examples)
    }

    /// The `n`th example labelled `label`, for the scenario to run (once).
    fn take(&mut self, label: &str, n: usize) -> &mut Example {
        let example = self
            .0
            .iter_mut()
            .filter(|example| example.label() == label)
            .nth(n)
            .unwrap_or_else(|| panic!("the README has no example {n} of {label}"));
        assert!(!example.taken, "example {label} {n} is run twice");
        example.taken = true;
        example
    }

    fn all_taken(&self) {
        let left: Vec<String> = self
            .0
            .iter()
            .filter(|example| !example.taken)
            .map(|example| format!("line {}: {}", example.line, example.label()))
            .collect();
        assert!(left.is_empty(), "README examples no test runs: {left:?}");
    }
}

impl Example {
    fn of_command(line: usize, command: &str) -> Option<Example> {
        let trimmed = command.trim_start_matches(['(', ' ', '\n']);
        let kind = if trimmed.starts_with("python3") {
            Kind::Generated
        } else if command.contains("/metrics") {
            Kind::Metrics
        } else if trimmed.starts_with("curl") {
            Kind::Http
        } else if trimmed.starts_with("echo") {
            Kind::Ndjson
        } else {
            return None;
        };
        // The requests are the single-quoted arguments of `echo` and `curl -d`.
        let requests = match kind {
            Kind::Ndjson | Kind::Http => command
                .split('\'')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect(),
            Kind::Metrics | Kind::Generated => Vec::new(),
        };
        Some(Example {
            line,
            kind,
            requests,
            expected: Vec::new(),
            exchanges: Vec::new(),
            taken: false,
        })
    }

    /// One `# ` line after the command.
    fn expect(&mut self, comment: &str) {
        if comment.starts_with('…') {
            self.expected.push(Expected::Gap);
        } else if self.kind == Kind::Metrics {
            self.expected.push(Expected::Text(comment.to_owned()));
        } else if let Some((request, reply)) = comment.split_once("  →  ") {
            // The reply may be followed by a remark in parentheses.
            let reply = reply.split(" (").next().unwrap_or(reply);
            self.exchanges
                .push((request.trim().to_owned(), parse_pattern(reply)));
        } else if comment.starts_with('{') {
            self.expected
                .push(Expected::Message(parse_pattern(comment)));
        }
        // Anything else is prose.
    }
}

/// Parses JSON in which `…` may stand for members, elements or part of a string.
fn parse_pattern(text: &str) -> Pattern {
    let chars: Vec<char> = text.chars().collect();
    let mut at = 0;
    let pattern = pattern_at(&chars, &mut at);
    skip_space(&chars, &mut at);
    assert!(at == chars.len(), "trailing text in {text:?}");
    pattern
}

fn skip_space(chars: &[char], at: &mut usize) {
    while chars.get(*at).is_some_and(|c| c.is_whitespace()) {
        *at += 1;
    }
}

fn pattern_at(chars: &[char], at: &mut usize) -> Pattern {
    skip_space(chars, at);
    let expect = |at: &mut usize, c: char| {
        skip_space(chars, at);
        assert_eq!(chars.get(*at), Some(&c), "at {at} of {chars:?}");
        *at += 1;
    };
    match chars[*at] {
        '…' => {
            *at += 1;
            Pattern::Any
        }
        '{' => {
            *at += 1;
            let (mut members, mut open) = (Vec::new(), false);
            loop {
                skip_space(chars, at);
                match chars[*at] {
                    '}' => break,
                    '…' => {
                        open = true;
                        *at += 1;
                    }
                    _ => {
                        let Pattern::String(key) = pattern_at(chars, at) else {
                            panic!("a key that is not a string in {chars:?}")
                        };
                        expect(at, ':');
                        members.push((key, pattern_at(chars, at)));
                    }
                }
                skip_space(chars, at);
                if chars[*at] == ',' {
                    *at += 1;
                }
            }
            *at += 1;
            Pattern::Object { members, open }
        }
        '[' => {
            *at += 1;
            let mut elements = Vec::new();
            loop {
                skip_space(chars, at);
                match chars[*at] {
                    ']' => break,
                    '…' => {
                        elements.push(Element::Gap);
                        *at += 1;
                    }
                    _ => elements.push(Element::Item(pattern_at(chars, at))),
                }
                skip_space(chars, at);
                if chars[*at] == ',' {
                    *at += 1;
                }
            }
            *at += 1;
            Pattern::Array(elements)
        }
        '"' => {
            let start = *at;
            *at += 1;
            while chars[*at] != '"' {
                *at += if chars[*at] == '\\' { 2 } else { 1 };
            }
            *at += 1;
            let literal: String = chars[start..*at].iter().collect();
            Pattern::String(serde_json::from_str(&literal).unwrap())
        }
        _ => {
            let start = *at;
            while chars
                .get(*at)
                .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.'))
            {
                *at += 1;
            }
            let literal: String = chars[start..*at].iter().collect();
            Pattern::Scalar(
                serde_json::from_str(&literal).unwrap_or_else(|e| panic!("{literal:?}: {e}")),
            )
        }
    }
}

// -------------------------------------------------------------------------------------------------
// Running them
// -------------------------------------------------------------------------------------------------

/// Examples run against one daemon, with what the answers so far taught: which real job and
/// subscription each documented id is.
struct Run {
    socket: std::path::PathBuf,
    fleet_dir: String,
    ids: Ids,
}

#[derive(Clone, Default)]
struct Ids {
    jobs: BTreeMap<String, String>,
    subscriptions: BTreeMap<u64, u64>,
}

impl Run {
    fn new(daemon: &Daemon) -> Run {
        Run {
            socket: daemon.socket.clone(),
            fleet_dir: daemon.dir.path().display().to_string(),
            ids: Ids::default(),
        }
    }

    /// The real job the README's `documented` id is.
    fn job(&self, documented: &str) -> String {
        self.ids
            .jobs
            .get(documented)
            .unwrap_or_else(|| panic!("no answer so far was job {documented}"))
            .clone()
    }

    /// Makes the README's `documented` id stand for `real` (a job the scenario made).
    fn map_job(&mut self, documented: &str, real: &str) {
        self.ids.jobs.insert(documented.into(), real.into());
    }

    /// Runs `example`, comparing at the JSON pointers `by_shape` by shape only (what the wall clock
    /// decides, such as which schedule is due first).
    async fn example(&mut self, example: &Example, by_shape: &[&str]) {
        let context = format!("README line {} ({})", example.line, example.label());
        match example.kind {
            Kind::Ndjson => self.ndjson(example, by_shape, &context).await,
            Kind::Http => {
                let (_, body) = http_post(&self.socket, &self.request(&example.requests[0])).await;
                let reply: Value = serde_json::from_str(&body).unwrap();
                let [Expected::Message(pattern)] = &example.expected[..] else {
                    panic!("{context}: an HTTP example has one reply");
                };
                self.check(pattern, &reply, by_shape, false, &context);
            }
            Kind::Generated => {
                // The README's python program: a getAgent whose name is 2,000,000 `x`.
                let name = "x".repeat(2_000_000);
                let request = json!({"jsonrpc": "2.0", "id": 1, "method": "getAgent", "params": {"name": name}});
                let mut connection = RawNdjson::connect(&self.socket).await;
                let reply = connection.exchange(&request.to_string()).await;
                let [Expected::Message(pattern)] = &example.expected[..] else {
                    panic!("{context}: one reply");
                };
                self.check(pattern, &reply, by_shape, false, &context);
            }
            Kind::Metrics => {
                let scrape = http_get(&self.socket, "/metrics").await;
                let lines: Vec<&str> = scrape.body.lines().collect();
                let mut expected = example.expected.iter().filter_map(|e| match e {
                    Expected::Text(line) => Some(line.as_str()),
                    _ => None,
                });
                let first = expected.next().unwrap();
                let start = lines
                    .iter()
                    .position(|line| *line == first)
                    .unwrap_or_else(|| panic!("{context}: no line {first:?} in\n{}", scrape.body));
                for (offset, line) in expected.enumerate() {
                    assert_eq!(lines.get(start + 1 + offset), Some(&line), "{context}");
                }
            }
        }
    }

    /// The requests on one connection, each reply awaited before the next request (as the README's
    /// `sleep`s mean), then the notifications until every documented one came, then the exchanges.
    async fn ndjson(&mut self, example: &Example, by_shape: &[&str], context: &str) {
        let mut connection = RawNdjson::connect(&self.socket).await;
        let mut progress = Progress::of(example, context, by_shape);
        for request in &example.requests {
            connection.send(&self.request(request)).await;
            let id = serde_json::from_str::<Value>(request)
                .ok()
                .map(|r| r["id"].clone());
            if let Some(id) = id.filter(|id| !id.is_null()) {
                while !progress.answered.contains(&id) {
                    progress.receive(self, connection.recv().await);
                }
            }
        }
        while !progress.done() {
            progress.receive(self, connection.recv().await);
        }
        for (request, pattern) in &example.exchanges {
            let sent = self.request(request);
            let id = serde_json::from_str::<Value>(&sent).unwrap()["id"].clone();
            connection.send(&sent).await;
            loop {
                let message = connection.recv().await;
                if message.get("method").is_none() && message["id"] == id {
                    self.check(pattern, &message, by_shape, false, context);
                    break;
                }
            }
        }
    }

    /// `request` with the real ids of the jobs and subscriptions the README names.
    fn request(&self, request: &str) -> String {
        let Ok(mut value) = serde_json::from_str::<Value>(request) else {
            return request.to_owned();
        };
        fn substitute(value: &mut Value, ids: &Ids) {
            match value {
                Value::String(text) => {
                    if let Some(real) = ids.jobs.get(text.as_str()) {
                        *text = real.clone();
                    }
                }
                Value::Number(n) => {
                    if let Some(real) = n.as_u64().and_then(|n| ids.subscriptions.get(&n)) {
                        *value = json!(real);
                    }
                }
                Value::Array(items) => items.iter_mut().for_each(|v| substitute(v, ids)),
                Value::Object(fields) => fields.values_mut().for_each(|v| substitute(v, ids)),
                _ => {}
            }
        }
        substitute(&mut value["params"], &self.ids);
        value.to_string()
    }

    /// Fails the test unless `actual` is what `pattern` documents. `subscribed`: the reply's `result` is
    /// a subscription id.
    fn check(
        &mut self,
        pattern: &Pattern,
        actual: &Value,
        by_shape: &[&str],
        subscribed: bool,
        context: &str,
    ) {
        let mut pattern = pattern.clone();
        if subscribed {
            if let Pattern::Object { members, .. } = &mut pattern {
                for (key, _) in members.iter_mut().filter(|(key, _)| key == "result") {
                    *key = "subscription".into();
                }
            }
        }
        let mut actual = actual.clone();
        if subscribed {
            if let Some(result) = actual.as_object_mut().and_then(|o| o.remove("result")) {
                actual["subscription"] = result;
            }
        }
        if let Err(problem) = self.matches(&pattern, &actual, "", "", by_shape) {
            panic!("{context}: {problem}\nanswer: {actual}");
        }
    }

    fn matches(
        &mut self,
        pattern: &Pattern,
        actual: &Value,
        key: &str,
        path: &str,
        by_shape: &[&str],
    ) -> Result<(), String> {
        let fail = |what: String| Err(format!("at {path}: {what}"));
        if by_shape.contains(&path) {
            return if same_type(pattern, actual) {
                Ok(())
            } else {
                fail(format!("not the shape of {pattern:?}: {actual}"))
            };
        }
        match (pattern, actual) {
            (Pattern::Any, _) => Ok(()),
            (Pattern::Object { members, open }, Value::Object(fields)) => {
                for (name, member) in members {
                    let value = fields
                        .get(name)
                        .ok_or_else(|| format!("at {path}: no {name}"))?;
                    self.matches(member, value, name, &format!("{path}/{name}"), by_shape)?;
                }
                let extra: Vec<&String> = fields
                    .keys()
                    .filter(|k| !members.iter().any(|(n, _)| n == *k))
                    .collect();
                if !open && !extra.is_empty() {
                    return fail(format!("undocumented members {extra:?}"));
                }
                Ok(())
            }
            (Pattern::Array(elements), Value::Array(items)) => {
                if self.elements(elements, items, path, by_shape) {
                    Ok(())
                } else {
                    fail(format!("elements differ: {actual}"))
                }
            }
            (Pattern::String(documented), Value::String(text)) => {
                let text = text.replace(&self.fleet_dir, DOCUMENTED_FLEET_DIR);
                self.string(documented, &text)
                    .map_err(|what| format!("at {path}: {what}"))
            }
            (Pattern::Scalar(Value::Number(documented)), Value::Number(number)) => {
                if key == "subscription" {
                    let (documented, real) =
                        (documented.as_u64().unwrap(), number.as_u64().unwrap());
                    return self
                        .same_id(|ids| &mut ids.subscriptions, documented, real)
                        .map_err(|what| format!("at {path}: {what}"));
                }
                if VARYING_NUMBERS.contains(&key) || documented.as_f64() == number.as_f64() {
                    Ok(())
                } else {
                    fail(format!("{number}, documented {documented}"))
                }
            }
            (Pattern::Scalar(documented), value) if documented == value => Ok(()),
            _ => fail(format!("{actual}, documented {pattern:?}")),
        }
    }

    /// Whether `items` are the `elements` (each gap any number of items).
    fn elements(
        &mut self,
        elements: &[Element],
        items: &[Value],
        path: &str,
        by_shape: &[&str],
    ) -> bool {
        match elements.split_first() {
            None => items.is_empty(),
            Some((Element::Gap, rest)) => (0..=items.len()).any(|skip| {
                let before = self.ids.clone();
                let found = self.elements(rest, &items[skip..], path, by_shape);
                if !found {
                    self.ids = before;
                }
                found
            }),
            Some((Element::Item(pattern), rest)) => {
                let before = self.ids.clone();
                let found = items.split_first().is_some_and(|(first, others)| {
                    self.matches(pattern, first, "", &format!("{path}/[]"), by_shape)
                        .is_ok()
                        && self.elements(rest, others, path, by_shape)
                });
                if !found {
                    self.ids = before;
                }
                found
            }
        }
    }

    fn string(&mut self, documented: &str, text: &str) -> Result<(), String> {
        if is_job_id(documented) {
            if !is_job_id(text) {
                return Err(format!("{text:?} is no job id"));
            }
            return self.same_id(|ids| &mut ids.jobs, documented.to_owned(), text.to_owned());
        }
        let timestamp = |s: &str| chrono::DateTime::parse_from_rfc3339(s).is_ok();
        let date = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok();
        if timestamp(documented) || date(documented) {
            return if timestamp(documented) == timestamp(text) && date(documented) == date(text) {
                Ok(())
            } else {
                Err(format!("{text:?}, documented a time like {documented:?}"))
            };
        }
        let (documented, text) = (
            without_ids_and_dates(documented),
            without_ids_and_dates(text),
        );
        let mut parts = documented.split('…');
        let first = parts.next().unwrap_or_default();
        let mut rest = text
            .strip_prefix(first)
            .ok_or_else(|| format!("{text:?}, documented {documented:?}"))?;
        let mut parts: Vec<&str> = parts.collect();
        let Some(last) = parts.pop() else {
            return if rest.is_empty() {
                Ok(())
            } else {
                Err(format!("{text:?}, documented {documented:?}"))
            };
        };
        for part in parts {
            let at = rest
                .find(part)
                .ok_or_else(|| format!("{text:?}, documented {documented:?}"))?;
            rest = &rest[at + part.len()..];
        }
        if rest.ends_with(last) {
            Ok(())
        } else {
            Err(format!("{text:?}, documented {documented:?}"))
        }
    }

    /// Records that `documented` is `real`, or fails if it was another one before (or `real` another
    /// documented id).
    fn same_id<T: Ord + Clone + std::fmt::Debug>(
        &mut self,
        map: impl Fn(&mut Ids) -> &mut BTreeMap<T, T>,
        documented: T,
        real: T,
    ) -> Result<(), String> {
        let ids = map(&mut self.ids);
        if let Some(known) = ids.get(&documented) {
            return if *known == real {
                Ok(())
            } else {
                Err(format!("{documented:?} was {known:?}, now {real:?}"))
            };
        }
        if let Some((other, _)) = ids.iter().find(|(_, r)| **r == real) {
            return Err(format!(
                "{real:?} is documented as {other:?} and as {documented:?}"
            ));
        }
        ids.insert(documented, real);
        Ok(())
    }
}

/// How far the messages of an NDJSON example got.
struct Progress<'e> {
    context: &'e str,
    by_shape: &'e [&'e str],
    /// The documented replies, by id.
    replies: Vec<(Value, &'e Pattern)>,
    /// The documented notifications and gaps, in order, and the next one to meet.
    notifications: Vec<&'e Expected>,
    next: usize,
    /// Notifications that match nothing documented may pass (a `# …` was met).
    in_gap: bool,
    /// Ids of subscribe calls: their reply's `result` is a subscription id.
    subscribing: Vec<Value>,
    answered: Vec<Value>,
}

impl<'e> Progress<'e> {
    fn of(example: &'e Example, context: &'e str, by_shape: &'e [&'e str]) -> Progress<'e> {
        let mut progress = Progress {
            context,
            by_shape,
            replies: Vec::new(),
            notifications: Vec::new(),
            next: 0,
            in_gap: false,
            subscribing: example
                .requests
                .iter()
                .filter_map(|r| serde_json::from_str::<Value>(r).ok())
                .filter(|r| is_subscribe(r["method"].as_str().unwrap_or("")))
                .map(|r| r["id"].clone())
                .collect(),
            answered: Vec::new(),
        };
        for expected in &example.expected {
            match expected {
                Expected::Message(pattern) => match member(pattern, "id") {
                    Some(Pattern::Scalar(id)) => progress.replies.push((id.clone(), pattern)),
                    _ => progress.notifications.push(expected),
                },
                Expected::Gap => progress.notifications.push(expected),
                Expected::Text(_) => panic!("{context}: text in a JSON example"),
            }
        }
        progress
    }

    fn done(&self) -> bool {
        self.answered.len() == self.replies.len()
            && !self.notifications[self.next..]
                .iter()
                .any(|e| matches!(e, Expected::Message(_)))
    }

    fn receive(&mut self, run: &mut Run, message: Value) {
        let context = self.context;
        if let Some(id) = message
            .get("id")
            .filter(|_| message.get("method").is_none())
        {
            let (_, pattern) = self
                .replies
                .iter()
                .find(|(documented, _)| documented == id)
                .unwrap_or_else(|| panic!("{context}: an undocumented reply {message}"));
            let subscribed = self.subscribing.contains(id);
            run.check(pattern, &message, self.by_shape, subscribed, context);
            self.answered.push(id.clone());
            return;
        }
        while let Some(Expected::Gap) = self.notifications.get(self.next) {
            self.in_gap = true;
            self.next += 1;
        }
        let Some(Expected::Message(pattern)) = self.notifications.get(self.next) else {
            return; // After the last documented notification: live ones the README does not show.
        };
        let before = run.ids.clone();
        match run.matches(pattern, &message, "", "", self.by_shape) {
            Ok(()) => {
                self.next += 1;
                self.in_gap = false;
            }
            Err(_) if self.in_gap => run.ids = before,
            Err(problem) => panic!("{context}: {problem}\nnotification: {message}"),
        }
    }
}

fn member<'p>(pattern: &'p Pattern, name: &str) -> Option<&'p Pattern> {
    match pattern {
        Pattern::Object { members, .. } => members.iter().find(|(n, _)| n == name).map(|(_, p)| p),
        _ => None,
    }
}

fn is_subscribe(method: &str) -> bool {
    method.starts_with("subscribe") || method.starts_with("stream")
}

fn same_type(pattern: &Pattern, actual: &Value) -> bool {
    match (pattern, actual) {
        (Pattern::Object { .. }, Value::Object(_))
        | (Pattern::Array(_), Value::Array(_))
        | (Pattern::String(_), Value::String(_)) => true,
        (Pattern::Scalar(documented), value) => {
            std::mem::discriminant(documented) == std::mem::discriminant(value)
        }
        (Pattern::Any, _) => true,
        _ => false,
    }
}

/// `job-YYYY-MM-DD-xxxxxx`.
fn is_job_id(text: &str) -> bool {
    text.len() == 21 && job_id_at(text, 0)
}

fn job_id_at(text: &str, at: usize) -> bool {
    let Some(candidate) = text.get(at..at + 21) else {
        return false;
    };
    let bytes = candidate.as_bytes();
    candidate.starts_with("job-")
        && chrono::NaiveDate::parse_from_str(&candidate[4..14], "%Y-%m-%d").is_ok()
        && bytes[14] == b'-'
        && bytes[15..]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// `text` with every job id written `<job>` and every date `<date>`: they differ from run to run.
fn without_ids_and_dates(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while at < text.len() {
        if job_id_at(text, at) {
            out.push_str("<job>");
            at += 21;
        } else if text
            .get(at..at + 10)
            .is_some_and(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok())
        {
            out.push_str("<date>");
            at += 10;
        } else {
            let c = text[at..].chars().next().unwrap_or_default();
            out.push(c);
            at += c.len_utf8();
        }
    }
    out
}
