//! The Slurm engine: the standard client tools (`sbatch`, `scontrol`, `squeue`, `scancel`) run with argv
//! entries, no shell. slurmrestd was the other way in, and it is not taken: it refuses to run as root, and the
//! jobs it submits run as slurmrestd's user rather than the daemon's; the tools need nothing but the cluster's
//! client configuration, behave the same on every Slurm version, and are what CI runs for real.
//!
//! A run is a batch job named by the herdctld job id (so a retried submit finds it instead of submitting it
//! twice) with the owner tag as its comment, whose batch script `exec`s `herdctld exec-shim`: the shim is then
//! the script's process, so `scancel --batch --signal=TERM` reaches it and nothing else, and it cancels the job
//! with the job's own grace (Slurm's `KillWait` is cluster-wide). The shim's stdout is the job's `--output`
//! file in the exchange directory, read as it grows; Slurm writes its own notices into the `--error` file.
//! Ended jobs are known to `scontrol` for `MinJobAge` only; the shim's outcome in the output file outlives
//! that.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;

use super::{EndKind, Engine, EngineEnd, EngineError, EngineState, ExecutorContext, OwnedRun};
use crate::config::SlurmConfig;
use crate::job::JobId;

/// The executor type.
pub(super) const NAME: &str = "slurm";

/// How long one call of a Slurm tool may take (they retry a controller that does not answer for a while).
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of the output file read at a time.
const READ_LIMIT: u64 = 1024 * 1024;
/// Bytes, and lines of them, quoted from the end of the shim's stderr.
const DIAGNOSTIC_BYTES: u64 = 4096;
const DIAGNOSTIC_LINES: usize = 20;
/// `scontrol`'s answer for an id it does not know (never did, or forgot after `MinJobAge`).
const UNKNOWN_JOB: &str = "Invalid job id specified";
/// How old a listing of the watched runs may be to answer a routine question about one of them. At a second,
/// the stale answers made a short job's dispatch 90 ms slower in the bench; at this, none.
const LISTING_MAX_AGE: Duration = Duration::from_millis(250);
/// A run nobody asked about for this long is no longer listed (its job ended).
const WATCH_EXPIRY: Duration = Duration::from_secs(30);
/// How long a listing, and the wait for another caller's, may take before the caller asks `scontrol` for its
/// own run instead; and how long after a listing failed none is tried (a controller that does not answer
/// must not hold every job's driver behind one call).
const LISTING_TIMEOUT: Duration = Duration::from_secs(5);

/// The daemon's Slurm runs being watched and their states from the last `squeue` of all of them: a daemon
/// with a hundred running jobs asks Slurm at most four times a second, not fifty (each job's driver asks
/// every two seconds). Only pending and running states are answered from it; whatever it does not show as such
/// (ended, forgotten, not listed yet) is asked of `scontrol` for that run, which also gives the exit code.
#[derive(Debug, Default)]
pub(super) struct StateListing {
    inner: tokio::sync::Mutex<Listed>,
}

#[derive(Debug, Default)]
struct Listed {
    /// Runs asked about, and when they last were.
    watched: HashMap<String, Instant>,
    /// When the last listing was made, and what it showed of each run it asked about (`None`: not pending
    /// or running).
    states: Option<(Instant, HashMap<String, Option<EngineState>>)>,
    /// When the last listing failed.
    failed_at: Option<Instant>,
}

impl StateListing {
    /// Run `id`'s state from a listing of every watched run no older than [`LISTING_MAX_AGE`] (made now when
    /// there is none, or `id` is not in it): `None` when the listing does not show it pending or running, or
    /// could not be made.
    async fn state(&self, id: &str) -> Option<EngineState> {
        let mut listed = tokio::time::timeout(LISTING_TIMEOUT, self.inner.lock())
            .await
            .ok()?;
        let now = Instant::now();
        listed.watched.insert(id.to_owned(), now);
        listed
            .watched
            .retain(|_, asked| now.duration_since(*asked) < WATCH_EXPIRY);
        if let Some((at, states)) = &listed.states {
            if now.duration_since(*at) < LISTING_MAX_AGE {
                if let Some(state) = states.get(id) {
                    return state.clone();
                }
            }
        }
        if listed
            .failed_at
            .is_some_and(|at| now.duration_since(at) < LISTING_TIMEOUT)
        {
            return None;
        }
        let ids: Vec<String> = listed.watched.keys().cloned().collect();
        let args: Vec<OsString> = vec![
            "--noheader".into(),
            "--format=%i|%T|%r".into(),
            format!("--jobs={}", ids.join(",")).into(),
        ];
        let shown = match run_within(LISTING_TIMEOUT, "squeue", &args).await {
            Ok(output) if output.status.success() => {
                parse_squeue_states(&String::from_utf8_lossy(&output.stdout))
            }
            // One id Slurm does not know makes `squeue` fail; so does a controller that does not answer.
            // `scontrol` answers for the run instead, and says which.
            _ => {
                listed.failed_at = Some(Instant::now());
                return None;
            }
        };
        listed.failed_at = None;
        let states: HashMap<String, Option<EngineState>> = ids
            .into_iter()
            .map(|id| {
                let state = shown.get(&id).cloned();
                (id, state)
            })
            .collect();
        let answer = states.get(id).cloned().flatten();
        listed.states = Some((Instant::now(), states));
        answer
    }
}

pub(super) struct Slurm {
    config: SlurmConfig,
    context: ExecutorContext,
}

impl Slurm {
    pub(super) fn new(config: SlurmConfig, context: ExecutorContext) -> Slurm {
        Slurm { config, context }
    }

    /// `sbatch`'s arguments for the run of `job` on the spec at `spec_path`.
    fn sbatch_args(&self, job: &JobId, spec_path: &Path) -> Vec<OsString> {
        let exchange = &self.context.exchange;
        let option = |name: &str, value: &dyn AsRef<std::ffi::OsStr>| {
            let mut arg = OsString::from(format!("--{name}="));
            arg.push(value);
            arg
        };
        let mut args = vec![
            OsString::from("--parsable"),
            option("job-name", &job.as_str()),
            option("comment", &self.context.owner),
            option("output", &exchange.output_path(job)),
            option("error", &exchange.stderr_path(job)),
            option("chdir", &exchange.dir()),
            // An agent run has side effects: after a node failure herdctld reports it, Slurm never re-runs it.
            OsString::from("--no-requeue"),
        ];
        let c = &self.config;
        for (name, value) in [
            ("partition", c.partition.clone()),
            ("cpus-per-task", c.cpus.map(|n| n.to_string())),
            ("mem", c.mem.clone()),
            // Slurm counts whole minutes.
            (
                "time",
                c.time.map(|t| t.as_secs().div_ceil(60).max(1).to_string()),
            ),
            ("gres", c.gres.clone()),
            ("account", c.account.clone()),
            ("qos", c.qos.clone()),
        ] {
            if let Some(value) = value {
                args.push(option(name, &value));
            }
        }
        args.extend(c.extra_args.iter().map(OsString::from));
        let binary = c
            .herdctld_bin
            .as_deref()
            .unwrap_or(&self.context.own_binary);
        // sbatch makes `--wrap` a `/bin/sh` script; `exec` makes the shim the script's process. Only the two
        // paths are in it, quoted; the prompt is in the spec file.
        let script = format!(
            "exec {} exec-shim --spec {}",
            shell_quote(&binary.to_string_lossy()),
            shell_quote(&spec_path.to_string_lossy())
        );
        args.push(OsString::from("--wrap"));
        args.push(OsString::from(script));
        args
    }

    /// The id of a run named `job` of this state directory that has not ended, if Slurm has one.
    async fn find(&self, job: &JobId) -> Result<Option<String>, EngineError> {
        let runs = self.list(&["--name".into(), job.as_str().into()]).await?;
        Ok(live_run_of(runs, job))
    }

    /// This state directory's runs among the jobs `squeue` lists with `filter`.
    async fn list(&self, filter: &[OsString]) -> Result<Vec<OwnedRun>, EngineError> {
        let mut args: Vec<OsString> = vec![
            "--states=all".into(),
            "--noheader".into(),
            // The comment last: it is the one field that may hold the separator.
            "--format=%i|%j|%T|%k".into(),
        ];
        args.extend(filter.iter().cloned());
        let output = succeeded("squeue", &args, run("squeue", &args).await?)?;
        Ok(parse_squeue(
            &String::from_utf8_lossy(&output.stdout),
            &self.context.owner,
        ))
    }
}

#[async_trait]
impl Engine for Slurm {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn submit(&self, job: &JobId, spec: &[u8]) -> Result<String, EngineError> {
        if let Some(id) = self.find(job).await? {
            tracing::info!(job_id = %job, slurm_job = %id, "the job was submitted before; taking that run");
            return Ok(id);
        }
        let exchange = self.context.exchange.clone();
        let (owned_job, owned_spec) = (job.clone(), spec.to_vec());
        let spec_path =
            tokio::task::spawn_blocking(move || exchange.write_spec(&owned_job, &owned_spec))
                .await
                .map_err(|e| EngineError::Spec(e.to_string()))?
                .map_err(|e| EngineError::Spec(e.to_string()))?;
        let args = self.sbatch_args(job, &spec_path);
        let output = succeeded("sbatch", &args, run("sbatch", &args).await?)?;
        // `--parsable` prints `id` or `id;cluster`.
        let text = String::from_utf8_lossy(&output.stdout);
        let id = text.trim().split(';').next().unwrap_or_default().to_owned();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(EngineError::Refused {
                command: "sbatch".into(),
                output: format!("printed no job id: {}", text.trim()),
            });
        }
        Ok(id)
    }

    async fn state(&self, id: &str, current: bool) -> Result<EngineState, EngineError> {
        if !current {
            if let Some(state) = self.context.slurm_states.state(id).await {
                return Ok(state);
            }
        }
        let args: Vec<OsString> = vec!["show".into(), "job".into(), "-o".into(), id.into()];
        let output = run("scontrol", &args).await?;
        if !output.status.success() {
            let said = String::from_utf8_lossy(&output.stderr);
            if said.contains(UNKNOWN_JOB) {
                return Ok(EngineState::Unknown);
            }
            return Err(refused("scontrol", &args, &output));
        }
        Ok(parse_scontrol(&String::from_utf8_lossy(&output.stdout)))
    }

    async fn stop(&self, id: &str, job: &JobId, grace: Duration) -> Result<(), EngineError> {
        let exchange = self.context.exchange.clone();
        let owned = job.clone();
        let written = tokio::task::spawn_blocking(move || exchange.write_grace(&owned, grace))
            .await
            .map_err(|e| e.to_string())
            .and_then(|written| written.map_err(|e| e.to_string()));
        if let Err(e) = written {
            // Still a graceful stop: the shim gives the job its own grace.
            tracing::warn!(job_id = %job, slurm_job = id, "the cancel's grace could not be handed to the shim, which gives the job its stop_grace: {e}");
        }
        let args: Vec<OsString> = vec!["--batch".into(), "--signal=TERM".into(), id.into()];
        succeeded("scancel", &args, run("scancel", &args).await?).map(drop)
    }

    async fn kill(&self, id: &str) -> Result<(), EngineError> {
        let args: Vec<OsString> = vec![id.into()];
        succeeded("scancel", &args, run("scancel", &args).await?).map(drop)
    }

    async fn read_output(&self, job: &JobId, offset: u64) -> Result<Vec<u8>, EngineError> {
        let path = self.context.exchange.output_path(job);
        let read = tokio::task::spawn_blocking(move || read_from(&path, offset, READ_LIMIT))
            .await
            .map_err(|e| e.to_string())
            .and_then(|read| read.map_err(|e| e.to_string()));
        read.map_err(|reason| EngineError::Unavailable {
            command: "read the run's output".into(),
            reason,
        })
    }

    async fn diagnostics(&self, job: &JobId) -> String {
        let path = self.context.exchange.stderr_path(job);
        tokio::task::spawn_blocking(move || {
            let Ok(len) = std::fs::metadata(&path).map(|m| m.len()) else {
                return String::new();
            };
            let from = len.saturating_sub(DIAGNOSTIC_BYTES);
            let bytes = read_from(&path, from, DIAGNOSTIC_BYTES).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(DIAGNOSTIC_LINES)..].join("\n")
        })
        .await
        .unwrap_or_default()
    }

    async fn clean_up(&self, job: &JobId) {
        let exchange = self.context.exchange.clone();
        let owned = job.clone();
        let removed = tokio::task::spawn_blocking(move || exchange.remove(&owned)).await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(job_id = %job, "{e}"),
            Err(e) => tracing::warn!(job_id = %job, "removing the run's files failed: {e}"),
        }
    }

    async fn owned(&self) -> Result<Vec<OwnedRun>, EngineError> {
        self.list(&[]).await
    }
}

/// Runs a Slurm tool to its end (bounded by [`CLI_TIMEOUT`]), its output captured.
async fn run(program: &str, args: &[OsString]) -> Result<Output, EngineError> {
    run_within(CLI_TIMEOUT, program, args).await
}

/// Runs a Slurm tool to its end, for at most `timeout`, its output captured.
async fn run_within(
    timeout: Duration,
    program: &str,
    args: &[OsString],
) -> Result<Output, EngineError> {
    let unavailable = |reason: String| EngineError::Unavailable {
        command: command_line(program, args),
        reason,
    };
    let mut command = tokio::process::Command::new(program);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(timeout, command.output()).await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(e)) => Err(unavailable(format!(
            "{e}; is the Slurm client (slurm-client) installed and on PATH?"
        ))),
        Err(_) => Err(unavailable(format!(
            "no answer within {timeout:?}; is slurmctld reachable?"
        ))),
    }
}

fn succeeded(program: &str, args: &[OsString], output: Output) -> Result<Output, EngineError> {
    if output.status.success() {
        Ok(output)
    } else {
        Err(refused(program, args, &output))
    }
}

fn refused(program: &str, args: &[OsString], output: &Output) -> EngineError {
    let said = String::from_utf8_lossy(&output.stderr);
    EngineError::Refused {
        command: command_line(program, args),
        output: format!("{} ({})", said.trim(), output.status),
    }
}

fn command_line(program: &str, args: &[OsString]) -> String {
    std::iter::once(program.to_owned())
        .chain(args.iter().map(|arg| arg.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` as one `/bin/sh` word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Up to `limit` bytes of `path` from `offset`; nothing when the file does not exist yet (Slurm creates it
/// when the job starts).
fn read_from(path: &Path, offset: u64, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// `scontrol show job -o ID`: one line of `Key=Value` words.
fn parse_scontrol(text: &str) -> EngineState {
    let field = |key: &str| {
        text.split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_default()
    };
    let state = field("JobState");
    let (exit_code, signal) = match field("ExitCode").split_once(':') {
        Some((code, signal)) => (
            code.parse::<i32>().ok(),
            signal.parse::<i32>().ok().filter(|signal| *signal != 0),
        ),
        None => (None, None),
    };
    let ended = |kind| {
        EngineState::Ended(EngineEnd {
            state: state.to_owned(),
            kind,
            exit_code,
            signal,
        })
    };
    match state {
        "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD" => {
            EngineState::Pending(field("Reason").to_owned())
        }
        "COMPLETED" | "FAILED" => ended(EndKind::Exited),
        "CANCELLED" => ended(EndKind::Cancelled),
        "TIMEOUT" => ended(EndKind::TimeLimit),
        "OUT_OF_MEMORY" => ended(EndKind::OutOfMemory),
        "NODE_FAIL" | "BOOT_FAIL" | "PREEMPTED" | "DEADLINE" | "SPECIAL_EXIT" => {
            ended(EndKind::Lost)
        }
        // RUNNING, CONFIGURING, COMPLETING (processes still being cleaned up), SUSPENDED, …
        _ => EngineState::Running,
    }
}

/// `squeue --format=%i|%T|%r` lines: the runs shown pending (with the reason) or running.
fn parse_squeue_states(text: &str) -> HashMap<String, EngineState> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().splitn(3, '|');
            let (id, state, reason) = (fields.next()?, fields.next()?, fields.next()?);
            let state = match parse_state_name(state) {
                EngineState::Pending(_) => EngineState::Pending(reason.to_owned()),
                EngineState::Running => EngineState::Running,
                EngineState::Ended(_) | EngineState::Unknown => return None,
            };
            Some((id.to_owned(), state))
        })
        .collect()
}

/// `squeue --format=%i|%j|%T|%k` lines whose comment is `owner`.
fn parse_squeue(text: &str, owner: &str) -> Vec<OwnedRun> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().splitn(4, '|');
            let (id, name, state, comment) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            (comment == owner).then(|| OwnedRun {
                job_id: name.to_owned(),
                engine_id: id.to_owned(),
                active: matches!(
                    parse_state_name(state),
                    EngineState::Pending(_) | EngineState::Running
                ),
            })
        })
        .collect()
}

/// The run of `job` a submit takes instead of making another: one that has not ended (should there be
/// several, the newest). An ended one is not: a job runs again (fresh, after a dead session) under its
/// id, and taking the ended run would hand it the outcome it just had.
fn live_run_of(runs: Vec<OwnedRun>, job: &JobId) -> Option<String> {
    runs.into_iter()
        .filter(|run| run.job_id == job.as_str() && run.active)
        .max_by_key(|run| run.engine_id.parse::<u64>().unwrap_or(0))
        .map(|run| run.engine_id)
}

fn parse_state_name(state: &str) -> EngineState {
    parse_scontrol(&format!("JobState={state}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submit_takes_a_live_run_of_its_job_never_an_ended_one() {
        let job = JobId::parse("job-2026-12-07-abc123").unwrap();
        let run = |engine_id: &str, active: bool| OwnedRun {
            job_id: job.to_string(),
            engine_id: engine_id.into(),
            active,
        };
        assert_eq!(live_run_of(vec![run("7", false)], &job), None);
        assert_eq!(
            live_run_of(vec![run("7", false), run("9", true), run("8", true)], &job),
            Some("9".into())
        );
    }

    #[test]
    fn scontrol_states_map_to_where_the_run_is() {
        let line = |state: &str, reason: &str, exit: &str| {
            format!("JobId=4 JobName=job-2026-12-07-abc123 JobState={state} Reason={reason} Dependency=(null) ExitCode={exit} Comment=herdctld:/x y StdOut=/x")
        };
        assert_eq!(
            parse_scontrol(&line("PENDING", "Resources", "0:0")),
            EngineState::Pending("Resources".into())
        );
        assert_eq!(
            parse_scontrol(&line("COMPLETING", "None", "0:0")),
            EngineState::Running
        );
        let ended = |state, reason, exit| match parse_scontrol(&line(state, reason, exit)) {
            EngineState::Ended(end) => (end.kind, end.exit_code, end.signal),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            ended("COMPLETED", "None", "0:0"),
            (EndKind::Exited, Some(0), None)
        );
        assert_eq!(
            ended("FAILED", "NonZeroExitCode", "3:0"),
            (EndKind::Exited, Some(3), None)
        );
        assert_eq!(
            ended("FAILED", "None", "0:15"),
            (EndKind::Exited, Some(0), Some(15))
        );
        assert_eq!(
            ended("CANCELLED", "None", "0:9"),
            (EndKind::Cancelled, Some(0), Some(9))
        );
        assert_eq!(
            ended("TIMEOUT", "TimeLimit", "0:15"),
            (EndKind::TimeLimit, Some(0), Some(15))
        );
        assert_eq!(ended("NODE_FAIL", "None", "0:0").0, EndKind::Lost);
    }

    #[test]
    fn only_this_state_directorys_runs_are_listed() {
        let listed = "12|job-2026-12-07-abc123|RUNNING|herdctld:/state a|b\n13|job-2026-12-07-zzz999|COMPLETED|herdctld:/state a|b\n14|other|RUNNING|herdctld:/elsewhere\n15|smoke|COMPLETED|\n";
        let runs = parse_squeue(listed, "herdctld:/state a|b");
        assert_eq!(
            runs,
            vec![
                OwnedRun {
                    job_id: "job-2026-12-07-abc123".into(),
                    engine_id: "12".into(),
                    active: true,
                },
                OwnedRun {
                    job_id: "job-2026-12-07-zzz999".into(),
                    engine_id: "13".into(),
                    active: false,
                },
            ]
        );
    }

    #[test]
    fn a_listing_answers_for_pending_and_running_runs_only() {
        let listed =
            "18|RUNNING|None\n19|PENDING|Resources\n20|COMPLETING|None\n21|COMPLETED|None\n\
                      22|CANCELLED|None\nnot a line\n";
        let states = parse_squeue_states(listed);
        assert_eq!(
            states,
            HashMap::from([
                ("18".to_owned(), EngineState::Running),
                ("19".to_owned(), EngineState::Pending("Resources".into())),
                ("20".to_owned(), EngineState::Running),
            ])
        );
    }

    #[test]
    fn the_batch_script_only_execs_the_shim_on_quoted_paths() {
        let context = ExecutorContext {
            exchange: crate::state::ExchangeDir::new(Path::new("/st")),
            owner: "herdctld:/st".into(),
            own_binary: "/opt/herd ctl/herdctld".into(),
            slurm_states: Default::default(),
        };
        let slurm = Slurm::new(
            SlurmConfig {
                partition: Some("gpu".into()),
                time: Some(Duration::from_secs(90)),
                extra_args: vec!["--nice=10".into()],
                ..SlurmConfig::default()
            },
            context,
        );
        let job = JobId::parse("job-2026-12-07-abc123").unwrap();
        let args: Vec<String> = slurm
            .sbatch_args(&job, Path::new("/st/executor/it's.json"))
            .into_iter()
            .map(|arg| arg.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--parsable",
                "--job-name=job-2026-12-07-abc123",
                "--comment=herdctld:/st",
                "--output=/st/executor/job-2026-12-07-abc123.out",
                "--error=/st/executor/job-2026-12-07-abc123.err",
                "--chdir=/st/executor",
                "--no-requeue",
                "--partition=gpu",
                "--time=2",
                "--nice=10",
                "--wrap",
                "exec '/opt/herd ctl/herdctld' exec-shim --spec '/st/executor/it'\\''s.json'",
            ]
        );
    }
}
