//! herdctl's own configuration files (examples and the core package's test fixtures) load unmodified, giving
//! the agents and schedules herdctl would give; the fixtures herdctl expects to fail, fail the same way.
//!
//! The corpus lives in `shared/compat/herdctl/` beside the repository checkout; without it (and without `CI`
//! set) those tests print SKIPPED. The project's own herdctl-format fixtures (tests/fixtures/herdctl/) are
//! tested in every environment.

use std::path::{Path, PathBuf};

use herdctld::config::{load_with, AgentConfig, ConfigError, ScheduleKind};

enum Expect {
    /// Qualified agent names in order, each with its schedules as (name, type).
    Agents(&'static [(&'static str, &'static [(&'static str, &'static str)])]),
    /// Loading fails with an error whose text contains this.
    Fails(&'static str),
}

const NONE: &[(&str, &str)] = &[];

/// Every fleet file of the corpus, relative to it, with what herdctl gives for it.
const EXPECTED: &[(&str, Expect)] = &[
    ("examples/bragdoc-developer/herdctl.yaml", Expect::Agents(&[("bragdoc-developer", NONE)])),
    ("examples/discord-chat-bot/herdctl.yaml", Expect::Agents(&[("price-bot", &[("check", "interval")])])),
    ("examples/docs-maintainer/herdctl.yaml", Expect::Agents(&[("llms-txt-updater", &[("check-docs", "interval")])])),
    ("examples/hello-world/herdctl.yaml", Expect::Agents(&[("hello-world", NONE)])),
    ("examples/hurricane-watcher/herdctl.yaml", Expect::Agents(&[("hurricane-watcher", &[("check", "interval")])])),
    (
        "examples/multi-agent/herdctl.yaml",
        Expect::Agents(&[("hurricane-watcher", &[("check", "interval")]), ("price-checker", &[("check", "interval")])]),
    ),
    ("examples/price-checker/herdctl.yaml", Expect::Agents(&[("price-checker", &[("check", "interval")])])),
    (
        "examples/runtime-showcase/herdctl.yaml",
        Expect::Agents(&[
            ("sdk-developer", NONE),
            ("cli-coder", NONE),
            ("docker-secure", NONE),
            ("mixed-fleet", &[("dev-check", "interval")]),
        ]),
    ),
    ("examples/slack-chat-bot/herdctl.yaml", Expect::Agents(&[("assistant", NONE)])),
    (
        "examples/star-trek-captains/herdctl.yaml",
        Expect::Agents(&[
            ("captain-kirk", NONE),
            ("captain-picard", NONE),
            ("captain-janeway", NONE),
            ("captain-sisko", NONE),
            ("ambassador-spock", NONE),
            ("gorn-captain", NONE),
        ]),
    ),
    (
        "fleet-composition/root.yaml",
        Expect::Agents(&[
            ("monitor", NONE),
            ("project-a.security-auditor", NONE),
            ("project-a.engineer", NONE),
            ("renamed-b.designer", NONE),
        ]),
    ),
    ("fleet-composition/collision-root.yaml", Expect::Fails("sub-fleet name \"same-name\" is already used")),
    ("fleet-composition/collision-a/herdctl.yaml", Expect::Agents(&[])),
    ("fleet-composition/collision-b/herdctl.yaml", Expect::Agents(&[])),
    (
        "fleet-composition/cycle-root.yaml",
        Expect::Fails("sub-fleet cycle: cycle-root.yaml -> cycle-a/herdctl.yaml -> cycle-b/herdctl.yaml -> cycle-a/herdctl.yaml"),
    ),
    ("fleet-composition/cycle-a/herdctl.yaml", Expect::Fails("sub-fleet cycle")),
    ("fleet-composition/cycle-b/herdctl.yaml", Expect::Fails("sub-fleet cycle")),
    (
        "fleet-composition/deep-nesting/root.yaml",
        Expect::Agents(&[
            ("root-agent", NONE),
            ("level1.l1-agent", NONE),
            ("level1.level2.l2-agent", NONE),
            ("level1.level2.level3.l3-agent", NONE),
        ]),
    ),
    (
        "fleet-composition/deep-nesting/level1/herdctl.yaml",
        Expect::Agents(&[("l1-agent", NONE), ("level2.l2-agent", NONE), ("level2.level3.l3-agent", NONE)]),
    ),
    (
        "fleet-composition/deep-nesting/level1/level2/herdctl.yaml",
        Expect::Agents(&[("l2-agent", NONE), ("level3.l3-agent", NONE)]),
    ),
    ("fleet-composition/deep-nesting/level1/level2/level3/herdctl.yaml", Expect::Agents(&[("l3-agent", NONE)])),
    ("fleet-composition/defaults-cascade/root.yaml", Expect::Agents(&[("sub.inheritor", NONE), ("sub.own-model", NONE)])),
    ("fleet-composition/defaults-cascade/sub-fleet/herdctl.yaml", Expect::Agents(&[("inheritor", NONE), ("own-model", NONE)])),
    ("fleet-composition/fleets-only/root.yaml", Expect::Agents(&[("sub-a.worker-a", NONE), ("sub-b.worker-b", NONE)])),
    ("fleet-composition/fleets-only/sub-a/herdctl.yaml", Expect::Agents(&[("worker-a", NONE)])),
    ("fleet-composition/fleets-only/sub-b/herdctl.yaml", Expect::Agents(&[("worker-b", NONE)])),
    ("fleet-composition/no-name-fleet/herdctl.yaml", Expect::Agents(&[("worker", NONE)])),
    (
        "fleet-composition/project-a/herdctl.yaml",
        Expect::Agents(&[("security-auditor", NONE), ("engineer", NONE)]),
    ),
    ("fleet-composition/project-b/herdctl.yaml", Expect::Agents(&[("designer", NONE)])),
];

const FIXTURES: &str = "packages/core/src/config/__tests__/fixtures/";

/// The corpus directory, or `None` (after printing `SKIPPED: <reason>`) when it is absent outside CI. A clone
/// on its own has no `shared/` beside it, and the project's fixtures in tests/fixtures/ cover the same features;
/// CI always has the corpus, so there its absence is a failure.
fn corpus() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/compat/herdctl");
    if !dir.is_dir() {
        let reason = format!(
            "the herdctl compatibility corpus is missing: looked for {} (check out shared/ beside the repository)",
            dir.display()
        );
        assert!(std::env::var_os("CI").is_none(), "{reason}");
        // Straight to the stderr handle: the test harness captures `println!`, and this must be seen.
        let _ =
            std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("SKIPPED: {reason}\n"));
        return None;
    }
    Some(dir.canonicalize().unwrap())
}

/// Every value a `${VAR}` asks for is set (to a placeholder).
fn placeholder_env(name: &str) -> Option<String> {
    Some(format!("placeholder-{name}"))
}

fn load(path: &Path) -> Result<herdctld::config::FleetConfig, ConfigError> {
    load_with(Some(path), Path::new("/"), &placeholder_env)
}

/// A YAML file is a fleet file when it is named herdctl.yaml/.yml or its top level has fleet keys and no
/// agent `name`.
fn is_fleet_file(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_string_lossy();
    if name == "herdctl.yaml" || name == "herdctl.yml" {
        return true;
    }
    let text = std::fs::read_to_string(path).unwrap();
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let has = |key: &str| value.get(key).is_some();
    !has("name") && (has("agents") || has("fleets"))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            out.push(path);
        }
    }
}

fn short_name(corpus: &Path, path: &Path) -> String {
    let relative = path
        .strip_prefix(corpus)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    relative
        .strip_prefix(FIXTURES)
        .map(str::to_string)
        .unwrap_or(relative)
}

fn schedule_type(kind: &ScheduleKind) -> &'static str {
    kind.type_name()
}

#[test]
fn every_herdctl_fleet_file_loads_as_herdctl_would() {
    let Some(corpus) = corpus() else {
        return;
    };
    let mut files = Vec::new();
    yaml_files(&corpus, &mut files);
    files.retain(|path| is_fleet_file(path));
    files.sort();
    assert!(
        files.len() >= EXPECTED.len(),
        "found only {} fleet files",
        files.len()
    );

    let mut failures = Vec::new();
    for file in &files {
        let name = short_name(&corpus, file);
        let Some((_, expect)) = EXPECTED.iter().find(|(known, _)| *known == name) else {
            failures.push(format!(
                "{name}: a fleet file with no expectation; add it to EXPECTED"
            ));
            continue;
        };
        match (expect, load(file)) {
            (Expect::Agents(agents), Ok(fleet)) => {
                let got: Vec<(String, Vec<(String, &str)>)> = fleet
                    .agents
                    .iter()
                    .map(|agent| {
                        let schedules = agent
                            .schedules
                            .iter()
                            .map(|s| (s.name.clone(), schedule_type(&s.kind)))
                            .collect();
                        (agent.name.clone(), schedules)
                    })
                    .collect();
                let want: Vec<(String, Vec<(String, &str)>)> = agents
                    .iter()
                    .map(|(agent, schedules)| {
                        let schedules =
                            schedules.iter().map(|(s, t)| (s.to_string(), *t)).collect();
                        (agent.to_string(), schedules)
                    })
                    .collect();
                if got != want {
                    failures.push(format!("{name}: got {got:?}, want {want:?}"));
                }
            }
            (Expect::Agents(_), Err(error)) => {
                failures.push(format!("{name}: failed to load: {error}"))
            }
            (Expect::Fails(text), Err(error)) => {
                if !error.to_string().contains(text) {
                    failures.push(format!("{name}: error does not mention {text:?}: {error}"));
                }
            }
            (Expect::Fails(text), Ok(_)) => failures.push(format!(
                "{name}: loaded, expected an error containing {text:?}"
            )),
        }
    }
    let unseen: Vec<&str> = EXPECTED
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !files.iter().any(|file| short_name(&corpus, file) == *name))
        .collect();
    assert!(
        unseen.is_empty(),
        "expected fleet files not found in the corpus: {unseen:?}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn agent<'a>(fleet: &'a herdctld::config::FleetConfig, name: &str) -> &'a AgentConfig {
    fleet
        .agent(name)
        .unwrap_or_else(|| panic!("no agent {name}"))
}

#[test]
fn defaults_cascade_through_sub_fleets_and_agents_win() {
    let Some(corpus) = corpus() else {
        return;
    };
    let fixtures = corpus.join(FIXTURES).join("fleet-composition");

    let cascade = load(&fixtures.join("defaults-cascade/root.yaml")).unwrap();
    let inheritor = agent(&cascade, "sub.inheritor");
    assert_eq!(inheritor.model.as_deref(), Some("sub-model"));
    assert_eq!(inheritor.max_turns, Some(200));
    assert_eq!(inheritor.fleet_path, ["sub"]);
    assert_eq!(inheritor.local_name, "inheritor");
    let own = agent(&cascade, "sub.own-model");
    assert_eq!(own.model.as_deref(), Some("agent-model"));
    assert_eq!(own.max_turns, Some(5));

    let deep = load(&fixtures.join("deep-nesting/root.yaml")).unwrap();
    let root_agent = agent(&deep, "root-agent");
    assert_eq!(
        (root_agent.model.as_deref(), root_agent.max_turns),
        (Some("root-model"), Some(100))
    );
    let l3 = agent(&deep, "level1.level2.level3.l3-agent");
    assert_eq!(
        (l3.model.as_deref(), l3.max_turns),
        (Some("level2-model"), Some(50))
    );
    assert_eq!(
        l3.working_directory,
        fixtures.join("deep-nesting/level1/level2/level3/agents")
    );
}

#[test]
fn examples_resolve_as_herdctl_intends() {
    let Some(corpus) = corpus() else {
        return;
    };
    let examples = corpus.join("examples");

    // Overrides replace the interval and drop the agent's hooks (`after_run:` with no value).
    let multi = load(&examples.join("multi-agent/herdctl.yaml")).unwrap();
    let watcher = agent(&multi, "hurricane-watcher");
    assert_eq!(
        watcher.schedules[0].kind,
        ScheduleKind::Interval(std::time::Duration::from_secs(2 * 3600))
    );
    assert!(watcher.hooks.after_run.is_empty());
    // `workspace` in the fleet file's overrides resolves against the fleet file's directory.
    assert_eq!(
        watcher.working_directory,
        examples.join("hurricane-watcher")
    );
    assert!(multi
        .warnings
        .iter()
        .any(|w| w.message.contains("not supported by herdctld: chat")));

    // Defaults merge into agents; herdctl's `sdk`/`cli` runtimes are Claude.
    let showcase = load(&examples.join("runtime-showcase/herdctl.yaml")).unwrap();
    let cli = agent(&showcase, "cli-coder");
    assert_eq!(cli.model.as_deref(), Some("claude-sonnet-4-20250514"));
    assert_eq!(
        cli.session.timeout,
        Some(std::time::Duration::from_secs(1800))
    );
    assert_eq!(cli.session.max_turns, Some(25));
    assert!(matches!(
        cli.runtime,
        herdctld::config::RuntimeConfig::Claude {
            bin: None,
            runtime_type: herdctld::config::ClaudeRuntimeType::Cli
        }
    ));

    // Hook timeouts are milliseconds in herdctl.
    let hurricane = load(&examples.join("hurricane-watcher/herdctl.yaml")).unwrap();
    let hook = &agent(&hurricane, "hurricane-watcher").hooks.after_run[0];
    assert_eq!(
        hook.action,
        herdctld::config::HookAction::Shell {
            command: "jq -r '.result.output'".to_string(),
            timeout: std::time::Duration::from_millis(5000)
        }
    );

    // `workspace` alias, absolute.
    let bragdoc = load(&examples.join("bragdoc-developer/herdctl.yaml")).unwrap();
    assert_eq!(
        agent(&bragdoc, "bragdoc-developer").working_directory,
        Path::new("/Users/ed/Code/brag-ai")
    );
}

#[test]
fn the_bundled_demo_fleet_loads() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo");
    let fleet = load_with(Some(&demo), Path::new("/"), &|_| None).unwrap();
    assert_eq!(fleet.name.as_deref(), Some("demo"));
    assert_eq!(fleet.max_concurrent, Some(4));
    assert!(fleet.warnings.is_empty(), "{:?}", fleet.warnings);
    let names: Vec<&str> = fleet.agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["greeter", "reporter", "slow-worker"]);
    for agent in &fleet.agents {
        let herdctld::config::RuntimeConfig::Command { command, .. } = &agent.runtime else {
            panic!("{} does not use runtime: command", agent.name);
        };
        assert_eq!(command[..2], ["sh", "-c"]);
    }
    let greeter = agent(&fleet, "greeter");
    assert_eq!(
        greeter.schedules[0].kind,
        ScheduleKind::Interval(std::time::Duration::from_secs(30))
    );
    let reporter = agent(&fleet, "reporter");
    assert_eq!(reporter.schedules[0].kind.type_name(), "cron");
    let worker = agent(&fleet, "slow-worker");
    assert_eq!((worker.concurrency, worker.schedules.len()), (Some(2), 0));
}

#[test]
fn the_demo_programs_print_a_stream_json_result() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo");
    let fleet = load_with(Some(&demo), Path::new("/"), &|_| None).unwrap();
    for name in ["greeter", "reporter"] {
        let herdctld::config::RuntimeConfig::Command { command, .. } = &agent(&fleet, name).runtime
        else {
            unreachable!("checked by the_bundled_demo_fleet_loads");
        };
        let output = std::process::Command::new(&command[0])
            .args(&command[1..])
            .output()
            .unwrap();
        assert!(output.status.success(), "{name} failed");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(last["type"], "result", "{name}: {stdout}");
    }
}

/// The project's own herdctl-format fleet (tests/fixtures/herdctl/, written for herdctld): sub-fleets, defaults,
/// overrides, aliases, `${VAR}` with defaults and `.env`, docker sections, MCP servers, hooks, and schedule keys
/// herdctl tolerates. Runs everywhere, corpus or not.
#[test]
fn the_projects_herdctl_fixture_fleet_loads_as_herdctl_would() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/herdctl");
    let env = |name: &str| match name {
        "REVIEW_TOPIC" => Some("pull requests".to_string()),
        _ => None,
    };
    let fleet = load_with(Some(&fixture), Path::new("/"), &env).unwrap();
    assert_eq!(fleet.name.as_deref(), Some("compat-fixture"));
    let names: Vec<&str> = fleet.agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["reviewer", "watcher", "team.designer"]);

    let reviewer = agent(&fleet, "reviewer");
    assert_eq!(
        reviewer.description.as_deref(),
        Some("Reviews pull requests")
    );
    assert_eq!(reviewer.working_directory, fixture.join("agents/repo"));
    // Defaults fill what the agent leaves unset; the agent's own values win.
    assert_eq!(reviewer.model.as_deref(), Some("default-model"));
    assert_eq!(reviewer.max_turns, Some(5));
    // The override replaces the cron written as `expression`; the tolerated keys are dropped.
    let nightly = reviewer.schedule("nightly").unwrap();
    assert_eq!(nightly.kind.type_name(), "cron");
    assert_eq!(
        nightly.kind,
        ScheduleKind::Cron(Box::new(
            herdctld::timespec::CronExpr::parse("0 3 * * *").unwrap()
        ))
    );
    assert_eq!(
        reviewer.schedule("on-push").unwrap().kind,
        ScheduleKind::Webhook
    );
    // defaults.docker deep-merges under the agent's docker.
    let docker = reviewer.docker.as_ref().unwrap();
    assert!(docker.enabled);
    assert_eq!(
        docker.image.as_deref(),
        Some("registry.example/agent:latest")
    );
    assert_eq!(
        (docker.memory_bytes, docker.tmpfs.as_slice()),
        (512 * 1024 * 1024, &["/tmp".to_string()][..])
    );
    assert_eq!(
        docker.workspace_mode,
        herdctld::config::WorkspaceMode::ReadOnly
    );
    assert_eq!(
        fleet.docker.as_ref().unwrap().volumes,
        ["/srv/data:/data:ro"]
    );
    // mcp_servers: inherited by name, url servers become type http, `${MCP_TOKEN}` comes from .env.
    assert_eq!(
        reviewer.mcp_servers,
        Some(serde_json::json!({
            "shared": {"type": "http", "url": "https://mcp.example/shared"},
            "local": {"command": "node", "args": ["server.js"], "env": {"TOKEN": "from-dotenv"}},
        }))
    );
    assert_eq!(
        (
            reviewer.hooks.after_run.len(),
            reviewer.hooks.on_error.len()
        ),
        (1, 1)
    );

    let watcher = agent(&fleet, "watcher");
    assert_eq!(watcher.concurrency, Some(2));
    assert_eq!(
        watcher.schedule("check").unwrap().kind,
        ScheduleKind::Interval(std::time::Duration::from_secs(15 * 60))
    );
    assert_eq!(watcher.docker.as_ref().map(|d| d.enabled), Some(false));

    let designer = agent(&fleet, "team.designer");
    assert_eq!(designer.model.as_deref(), Some("team-model"));
    assert_eq!(designer.fleet_path, ["team"]);

    let warnings: Vec<String> = fleet.warnings.iter().map(ToString::to_string).collect();
    for expected in [
        "schedules.nightly.concurrency: unknown schedule key",
        "schedules.on-push.path: unknown schedule key",
        "schedules.on-push.secret: unknown schedule key",
        "the fleet's top-level docker section applies to no agent",
        "fleet-level web",
        "fleet-level webhooks",
        "chat",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(expected)),
            "no warning with {expected:?}: {warnings:#?}"
        );
    }
}

/// Keys herdctl rejects, inside sections herdctld does not implement too, fail with a did-you-mean.
#[test]
fn the_projects_rejected_fixture_fails_as_herdctl_would() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/herdctl-rejected");
    let message = load_with(Some(&fixture), Path::new("/"), &|_| None)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(
            "agent.yaml: docker.enabld: unknown key \"enabld\"; did you mean \"enabled\"?"
        ),
        "{message}"
    );
    assert!(
        message.contains("agent.yaml: modell: unknown key"),
        "{message}"
    );
}
