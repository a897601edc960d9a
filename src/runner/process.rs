//! Process control for job processes (spawning them is [`super::spawn`]): finding every process of a job, signalling,
//! reaping adopted orphans, and killing a dead daemon's leftovers.
//!
//! A job's processes are found three ways, because each alone can be escaped:
//! - its process group (the leader is spawned as a group leader, so pgid = leader pid);
//! - the marker `HERDCTL_JOB_ID=<id>` in `/proc/<pid>/environ` (inherited by every descendant, even ones that
//!   called `setsid` or double-forked);
//! - descendants (by parent pid) of any process found by the two rules above (covers `env -i` children).
//!
//! A process inside `execve`, after its old memory is gone and before its new stack is set up, shows an empty
//! environment: a `setsid` child exec'ing its program just as the leader exits is then in no group of ours,
//! re-parented to us rather than to a job process, and without a readable marker. A scan reports such processes
//! as undetermined rather than as not the job's, so that the sweep looks again (issue 13).
//!
//! Reaping never steals a child that someone waits for (a run its leader, tokio a hook's process): only zombies
//! whose parent is this process are reaped, and only if they are provably not a direct child (see
//! [`reap_adopted_zombies`]).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpid, getsid, Pid};

/// The environment variable every job process inherits; its value is the job id.
pub const JOB_ID_ENV: &str = "HERDCTL_JOB_ID";

/// Makes this process a child subreaper, so descendants of jobs that lose their parent are re-parented to it
/// (and can be found and reaped) instead of to init. The daemon calls this once at start.
pub fn become_subreaper() -> io::Result<()> {
    Ok(nix::sys::prctl::set_child_subreaper(true)?)
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`); `None` if it does not
/// exist. Together with the pid it identifies a process across pid reuse.
pub fn process_start_time(pid: u32) -> Option<u64> {
    read_stat(pid).map(|stat| stat.start_time)
}

/// What [`kill_stale_job`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleKill {
    /// The recorded leader was still the same process (pid and start time matched) and was killed with its group.
    pub leader_killed: bool,
    /// Every pid that was sent SIGKILL (leader, group members, processes carrying the job id).
    pub killed_pids: Vec<u32>,
}

/// Kills the leftovers of a job run by a daemon that died: the recorded leader and its process group, only if
/// the pid still belongs to the same process (same start time; guards against pid reuse), plus every process
/// carrying `HERDCTL_JOB_ID=<job_id>` in its environment. Synchronous (reads `/proc`); zombies adopted by this
/// process are reaped afterwards.
pub fn kill_stale_job(job_id: &str, pid: u32, pgid: u32, start_time: u64) -> StaleKill {
    let leader_matches = process_start_time(pid) == Some(start_time);
    let group = leader_matches.then_some(pgid);
    let scan = scan_job(job_id, group, Some(start_time));
    let mut killed_pids: Vec<u32> = scan.live.iter().map(|p| p.pid).collect();
    if leader_matches {
        if let Ok(pgid) = i32::try_from(pgid) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        if !killed_pids.contains(&pid) {
            killed_pids.push(pid);
        }
    }
    signal_pids(&killed_pids, Signal::SIGKILL);
    reap_adopted_zombies();
    killed_pids.sort_unstable();
    StaleKill {
        leader_killed: leader_matches,
        killed_pids,
    }
}

/// The `flags` bit (field 9 of `/proc/<pid>/stat`) of kernel threads, from `include/linux/sched.h`.
const PF_KTHREAD: u32 = 0x0020_0000;

/// One line of `/proc/<pid>/stat`, the fields we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub pid: u32,
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    pub session: u32,
    pub start_time: u64,
    /// A kernel thread (`PF_KTHREAD`): never a job's, and its environment always reads empty.
    pub kernel_thread: bool,
}

impl ProcStat {
    pub(crate) fn is_zombie(&self) -> bool {
        // X (dead) is transient and equally gone.
        matches!(self.state, 'Z' | 'X')
    }
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) may contain spaces and parentheses, so
/// fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text.get(..open)?.trim().parse().ok()?;
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    Some(ProcStat {
        pid,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        pgrp: rest.get(2)?.parse().ok()?,
        session: rest.get(3)?.parse().ok()?,
        kernel_thread: (rest.get(6)?.parse::<u32>().ok()? & PF_KTHREAD) != 0,
        start_time: rest.get(19)?.parse().ok()?,
    })
}

pub(crate) fn read_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn all_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn read_environ(pid: u32) -> io::Result<Vec<u8>> {
    #[cfg(test)]
    if exec_window::holds(pid) {
        return Ok(Vec::new());
    }
    std::fs::read(format!("/proc/{pid}/environ"))
}

/// Field 51 of `/proc/<pid>/stat`: where the environment ends in the process's memory; 0 while it has none
/// (inside `execve` before the new stack is set up, or exiting). `None` if the process is gone.
fn read_env_end(pid: u32) -> Option<u64> {
    #[cfg(test)]
    if exec_window::holds(pid) {
        return Some(0);
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = text.rfind(')')?;
    // Field N is token N - 3 (counting from 0) after the command name.
    text.get(close + 1..)?
        .split_whitespace()
        .nth(48)?
        .parse()
        .ok()
}

/// What the environment of a live user process says about a job's marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Carried,
    Absent,
    /// The process has no environment at the moment (see the module docs); it passes within moments.
    NotYet,
}

fn environ_marker(pid: u32, marker: &[u8]) -> Marker {
    // An empty read is told apart from an empty environment (`env -i`) by `env_end`, read after it: 0 means
    // none yet; otherwise exec may have finished since, so read again. Twice, so that an exec finishing and
    // another starting between the reads is still seen as one.
    for _ in 0..2 {
        let Ok(environ) = read_environ(pid) else {
            // Unreadable (other uid, or gone) means "not known to be ours".
            return Marker::Absent;
        };
        if !environ.is_empty() {
            return if environ.split(|b| *b == 0).any(|entry| entry == marker) {
                Marker::Carried
            } else {
                Marker::Absent
            };
        }
        match read_env_end(pid) {
            None => return Marker::Absent,
            Some(0) => return Marker::NotYet,
            Some(_) => {}
        }
    }
    Marker::Absent
}

fn job_marker(job_id: &str) -> Vec<u8> {
    let mut marker = Vec::from(JOB_ID_ENV.as_bytes());
    marker.push(b'=');
    marker.extend_from_slice(OsStr::new(job_id).as_bytes());
    marker
}

/// The processes of one job found in `/proc`, split into live ones and zombies.
#[derive(Debug, Default)]
pub(crate) struct JobScan {
    pub live: Vec<ProcStat>,
    pub zombies: Vec<ProcStat>,
    /// Processes that may be the job's but cannot be told yet (caught inside `execve`): the job is gone only
    /// once a later scan finds neither live processes nor these.
    pub undetermined: Vec<ProcStat>,
}

/// Finds the processes of a job (see the module docs). This process is never included. Processes started before
/// `not_before` (the leader's start time) cannot descend from the leader, so their environment is not read:
/// that keeps a scan cheap on a busy host.
pub(crate) fn scan_job(job_id: &str, pgid: Option<u32>, not_before: Option<u64>) -> JobScan {
    let marker = job_marker(job_id);
    let me = getpid().as_raw().unsigned_abs();
    let stats: HashMap<u32, ProcStat> = all_pids()
        .into_iter()
        .filter(|pid| *pid != me)
        .filter_map(read_stat)
        .map(|stat| (stat.pid, stat))
        .collect();
    let mut members: HashSet<u32> = HashSet::new();
    let mut not_yet: Vec<u32> = Vec::new();
    for stat in stats.values() {
        let found = if Some(stat.pgrp) == pgid {
            Marker::Carried
        } else if stat.is_zombie()
            || stat.kernel_thread
            || not_before.is_some_and(|t| stat.start_time < t)
        {
            Marker::Absent
        } else {
            environ_marker(stat.pid, &marker)
        };
        match found {
            Marker::Carried => {
                members.insert(stat.pid);
            }
            Marker::NotYet => not_yet.push(stat.pid),
            Marker::Absent => {}
        }
    }
    // Close over parent links until nothing new is added.
    loop {
        let before = members.len();
        for stat in stats.values() {
            if members.contains(&stat.ppid) {
                members.insert(stat.pid);
            }
        }
        if members.len() == before {
            break;
        }
    }
    let mut scan = JobScan {
        // One that turned out to be a member anyway (by group or parent) is known.
        undetermined: not_yet
            .into_iter()
            .filter(|pid| !members.contains(pid))
            .filter_map(|pid| stats.get(&pid).copied())
            .collect(),
        ..JobScan::default()
    };
    for pid in members {
        if let Some(stat) = stats.get(&pid) {
            if stat.is_zombie() {
                scan.zombies.push(*stat);
            } else {
                scan.live.push(*stat);
            }
        }
    }
    scan
}

/// A cheap check, after a leader exited on its own, of whether anything of its job may still exist; `false` only
/// when that is certain, so the full `/proc` scan can be skipped for the common job that leaves nothing behind.
/// Certain means: the process group is empty, this process is a subreaper (so a surviving escaped descendant
/// would have been re-parented to it), and every child of this process is a runner leader.
pub(crate) fn may_have_leftovers(pgid: u32) -> bool {
    let group_exists = i32::try_from(pgid).map_or(true, |raw| {
        !matches!(
            killpg(Pid::from_raw(raw), None),
            Err(nix::errno::Errno::ESRCH)
        )
    });
    if group_exists || !is_subreaper() {
        return true;
    }
    match children_of_self() {
        Some(children) => with_registry(|r| children.iter().any(|c| !r.leaders.contains(c))),
        None => true,
    }
}

fn is_subreaper() -> bool {
    nix::sys::prctl::get_child_subreaper().unwrap_or(false)
}

/// The children of this process that may be adopted orphans; `None` if the kernel does not list children. The
/// kernel hands an orphan to the first live thread of its subreaper: the main thread (whose id is the pid) while
/// it runs, so its list is enough (leaders hang off the threads that spawned them, and are known anyway). Only if
/// the main thread has exited are all threads read.
fn children_of_self() -> Option<Vec<u32>> {
    let me = getpid().as_raw().unsigned_abs();
    let main_thread_alive = read_stat(me).is_some_and(|stat| !stat.is_zombie());
    let tasks: Vec<std::path::PathBuf> = if main_thread_alive {
        vec![format!("/proc/self/task/{me}").into()]
    } else {
        std::fs::read_dir("/proc/self/task")
            .ok()?
            .map(|task| task.map(|t| t.path()))
            .collect::<io::Result<_>>()
            .ok()?
    };
    let mut children = Vec::new();
    for task in tasks {
        let text = std::fs::read_to_string(task.join("children")).ok()?;
        children.extend(
            text.split_whitespace()
                .filter_map(|pid| pid.parse::<u32>().ok()),
        );
    }
    Some(children)
}

/// Sends `signal` to each pid; processes that are already gone are ignored.
pub(crate) fn signal_pids(pids: &[u32], signal: Signal) {
    for pid in pids {
        if let Ok(raw) = i32::try_from(*pid) {
            let _ = kill(Pid::from_raw(raw), signal);
        }
    }
}

/// Sends `signal` to a process group; a group that no longer exists is ignored.
pub(crate) fn signal_group(pgid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pgid) {
        let _ = killpg(Pid::from_raw(raw), signal);
    }
}

/// Bookkeeping shared by every running job of this process, so that [`reap_adopted_zombies`] can tell adopted
/// orphans from children that a run is waiting for.
#[derive(Default)]
struct Registry {
    /// Leaders spawned by the runner and not yet reaped by their run: never reaped here.
    leaders: HashSet<u32>,
    /// Process groups of running jobs: a zombie in one of them that is not its leader is a job descendant.
    groups: HashSet<u32>,
    /// Job processes seen alive by a scan, as (pid, start time): identifies escaped descendants once they are
    /// zombies (a zombie's environ is no longer readable).
    seen: HashSet<(u32, u64)>,
    /// Leaders whose waiter went away before reaping them: reaped here once they exit.
    abandoned: HashSet<u32>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    let mut guard: MutexGuard<'_, Option<Registry>> =
        REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(Registry::default))
}

pub(crate) fn register_leader(pid: u32) {
    with_registry(|r| {
        r.leaders.insert(pid);
        r.groups.insert(pid);
    });
}

/// Tokio has reaped the leader: it may no longer be protected (its pid can be reused).
pub(crate) fn leader_reaped(pid: u32) {
    with_registry(|r| {
        r.leaders.remove(&pid);
    });
}

/// Nobody waits for this leader any more (its run was dropped): the orphan reaper may take it.
pub(crate) fn leader_abandoned(pid: u32) {
    with_registry(|r| {
        r.leaders.remove(&pid);
        r.abandoned.insert(pid);
    });
}

pub(crate) fn remember_seen(stats: &[ProcStat]) {
    with_registry(|r| r.seen.extend(stats.iter().map(|s| (s.pid, s.start_time))));
}

/// The job is over and swept: forget its group and the processes seen for it.
pub(crate) fn unregister_job(pgid: u32, seen: &[(u32, u64)]) {
    with_registry(|r| {
        r.groups.remove(&pgid);
        for entry in seen {
            r.seen.remove(entry);
        }
    });
}

/// The shortest time between two scans for adopted zombies.
const ORPHAN_SCAN_SPACING: std::time::Duration = std::time::Duration::from_millis(100);

/// As a subreaper the process (the daemon, or an exec-shim) inherits job descendants that escaped their process
/// group; this task reaps them as they die so none stays a zombie. Returns `None` (and logs) if SIGCHLD cannot
/// be watched. Needs a tokio runtime.
pub fn spawn_orphan_reaper() -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::child()) {
        Ok(mut children) => Some(tokio::spawn(async move {
            while children.recv().await.is_some() {
                reap_adopted_zombies();
                // A scan reads all of /proc; one per burst of exits is enough (signals coalesce while
                // we wait), and an orphan stays a zombie at most this long.
                tokio::time::sleep(ORPHAN_SCAN_SPACING).await;
            }
        })),
        Err(e) => {
            tracing::warn!(
                "cannot watch SIGCHLD; adopted orphans are reaped only when jobs end: {e}"
            );
            None
        }
    }
}

/// Reaps zombies that were re-parented to this (subreaper) process, and only those, so that children someone
/// waits for (runs their leaders, tokio the processes of hooks) are never waited for behind their back. A zombie
/// child is reaped when it is not a runner leader still awaited by its run, and one of:
/// - it is in another session than this process: a direct child spawned as a process-group leader (as the runner
///   and every other spawner in the daemon do) cannot call `setsid`, so it must have been adopted;
/// - it is in the process group of a running job without being its leader (only the leader is a direct child);
/// - it was seen alive as a job process (pid and start time match).
///
/// Leaders whose waiter went away (`leader_abandoned`) are reaped too once they exit. Returns how many were
/// reaped. Cheap enough to call on every SIGCHLD: it reads the children list, not all of `/proc`.
pub fn reap_adopted_zombies() -> usize {
    let my_session = getsid(None).map(|s| s.as_raw().unsigned_abs()).ok();
    let children: Vec<u32> = children_of_self().unwrap_or_else(|| {
        let me = getpid().as_raw().unsigned_abs();
        all_pids()
            .into_iter()
            .filter(|pid| read_stat(*pid).is_some_and(|stat| stat.ppid == me))
            .collect()
    });
    let zombies: Vec<ProcStat> = children
        .into_iter()
        .filter_map(read_stat)
        .filter(ProcStat::is_zombie)
        .collect();
    let (adopted, abandoned): (Vec<u32>, Vec<u32>) = with_registry(|r| {
        let adopted = zombies
            .iter()
            .filter(|z| !r.leaders.contains(&z.pid))
            .filter(|z| {
                Some(z.session) != my_session
                    || (r.groups.contains(&z.pgrp) && z.pgrp != z.pid)
                    || r.seen.contains(&(z.pid, z.start_time))
            })
            .map(|z| z.pid)
            .collect();
        // A pid that is a leader again was reused after its abandoned holder was reaped elsewhere.
        let leaders = &r.leaders;
        r.abandoned.retain(|pid| !leaders.contains(pid));
        (adopted, r.abandoned.iter().copied().collect())
    });
    // An abandoned leader leaves the list once reaped, or once it is no child of ours any more (ECHILD):
    // its pid may then be reused, even by a new leader, whose status must stay its run's.
    let mut reaped_abandoned = 0;
    let settled: Vec<u32> = abandoned
        .into_iter()
        .filter(|pid| match try_reap(*pid) {
            Ok(None) => false,
            Ok(Some(_)) => {
                reaped_abandoned += 1;
                true
            }
            Err(_) => true,
        })
        .collect();
    if !settled.is_empty() {
        with_registry(|r| {
            for pid in &settled {
                r.abandoned.remove(pid);
            }
        });
    }
    adopted
        .into_iter()
        .filter(|pid| matches!(try_reap(*pid), Ok(Some(_))))
        .count()
        + reaped_abandoned
}

/// Reaps `pid` if it is a child of this process that has exited; `None` while it runs. An error (ECHILD)
/// means it is no child of ours (any more).
pub(crate) fn try_reap(pid: u32) -> io::Result<Option<ExitStatus>> {
    let pid =
        Pid::from_raw(i32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ECHILD))?);
    Ok(exit_status(waitpid(pid, Some(WaitPidFlag::WNOHANG))?))
}

/// The exit status of a reaped child; `None` while it runs (or only stopped or continued: `waitpid` here
/// never asks for those, so they do not occur).
pub(crate) fn exit_status(status: WaitStatus) -> Option<ExitStatus> {
    match status {
        WaitStatus::Exited(_, code) => Some(ExitStatus::from_raw((code & 0xff) << 8)),
        WaitStatus::Signaled(_, signal, core_dumped) => Some(ExitStatus::from_raw(
            signal as i32 | if core_dumped { 0x80 } else { 0 },
        )),
        _ => None,
    }
}

/// Test hook: makes chosen processes look as the kernel shows a process inside `execve` after its old memory is
/// gone and before its new stack is set up (an empty environment), until the test releases them, and tells the
/// test when a scan has seen one so. The real window lasts microseconds to milliseconds; this holds it open.
#[cfg(test)]
pub(crate) mod exec_window {
    use std::sync::{Condvar, Mutex, PoisonError};
    use std::time::{Duration, Instant};

    /// Held pids, each with whether a read has seen it held.
    static HELD: Mutex<Vec<(u32, bool)>> = Mutex::new(Vec::new());
    static SEEN: Condvar = Condvar::new();

    pub(crate) fn hold(pid: u32) {
        HELD.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((pid, false));
    }

    /// Blocks until a read has seen `pid` held, then lets its exec "finish"; panics if no read comes (a hung
    /// test would say less).
    pub(crate) fn release_once_seen(pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        while !held.iter().any(|&(p, seen)| p == pid && seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no scan read the environment of {pid}");
            held = SEEN
                .wait_timeout(held, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        held.retain(|&(p, _)| p != pid);
    }

    pub(super) fn holds(pid: u32) -> bool {
        let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = held.iter_mut().find(|(p, _)| *p == pid) else {
            return false;
        };
        entry.1 = true;
        SEEN.notify_all();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn wait_statuses_become_the_exit_statuses_std_reports() {
        let pid = Pid::from_raw(1234);
        let exited = exit_status(WaitStatus::Exited(pid, 3)).unwrap();
        assert_eq!((exited.code(), exited.signal()), (Some(3), None));
        let killed = exit_status(WaitStatus::Signaled(pid, Signal::SIGKILL, false)).unwrap();
        assert_eq!((killed.code(), killed.signal()), (None, Some(9)));
        let dumped = exit_status(WaitStatus::Signaled(pid, Signal::SIGSEGV, true)).unwrap();
        assert_eq!((dumped.signal(), dumped.core_dumped()), (Some(11), true));
        assert_eq!(exit_status(WaitStatus::StillAlive), None);
    }

    #[test]
    fn parse_stat_counts_fields_after_the_last_parenthesis() {
        let text = "4242 (we(ird) name)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(text).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                pid: 4242,
                state: 'S',
                ppid: 1,
                pgrp: 4242,
                session: 4242,
                start_time: 987654,
                kernel_thread: false,
            }
        );
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 1").is_none());
    }

    #[test]
    fn start_time_of_self_is_stable_and_missing_pid_is_none() {
        let me = std::process::id();
        let first = process_start_time(me).unwrap();
        assert_eq!(process_start_time(me), Some(first));
        assert_eq!(process_start_time(u32::MAX - 1), None);
    }

    fn wait_gone(pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match read_stat(pid) {
                None => return true,
                Some(stat) if stat.is_zombie() => return true,
                Some(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        false
    }

    #[test]
    fn kill_stale_job_spares_a_process_whose_start_time_differs() {
        let job_id = format!("stale-test-{}", fastrand::u64(..));
        // Not carrying the job id: only the pid/start-time rule could kill it.
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let start = process_start_time(pid).unwrap();

        let spared = kill_stale_job(&job_id, pid, pid, start + 1);
        assert!(!spared.leader_killed);
        assert!(spared.killed_pids.is_empty());
        assert!(
            child.try_wait().unwrap().is_none(),
            "the process must survive"
        );

        let killed = kill_stale_job(&job_id, pid, pid, start);
        assert!(killed.leader_killed);
        assert_eq!(killed.killed_pids, vec![pid]);
        assert!(wait_gone(pid));
        child.wait().unwrap();
    }

    #[test]
    fn an_orphan_adopted_while_spawned_from_another_thread_is_a_listed_child() {
        become_subreaper().unwrap();
        // Cargo runs tests on threads other than the main one: the orphan's parent dies on this thread's side,
        // and it must still show up in the list may_have_leftovers reads.
        let output = Command::new("sh")
            .args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"])
            .output()
            .unwrap();
        let orphan: u32 = String::from_utf8(output.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let listed = children_of_self().unwrap().contains(&orphan);
        signal_pids(&[orphan], Signal::SIGKILL);
        assert!(wait_gone(orphan));
        let _ = waitpid(Pid::from_raw(orphan as i32), None);
        assert!(
            listed,
            "orphan {orphan} is not among {:?}",
            children_of_self()
        );
    }

    #[test]
    fn an_empty_environment_is_no_marker_not_an_exec_in_progress() {
        let mut child = Command::new("sleep").arg("30").env_clear().spawn().unwrap();
        let pid = child.id();
        // Until sleep's own exec is done its environment may be the one being set up: wait for it to be empty.
        let deadline = Instant::now() + Duration::from_secs(5);
        while read_env_end(pid) == Some(0) {
            assert!(Instant::now() < deadline, "{pid} never finished its exec");
            std::thread::yield_now();
        }
        let found = environ_marker(pid, &job_marker("any"));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(found, Marker::Absent);
    }

    #[test]
    fn kill_stale_job_kills_processes_carrying_the_job_id() {
        let job_id = format!("stale-env-{}", fastrand::u64(..));
        let mut child = Command::new("sleep")
            .arg("30")
            .env(JOB_ID_ENV, &job_id)
            .spawn()
            .unwrap();
        let pid = child.id();
        // Leader record points at a pid that does not exist; the environment marker still finds the process.
        let report = kill_stale_job(&job_id, u32::MAX - 1, u32::MAX - 1, 1);
        assert!(!report.leader_killed);
        assert_eq!(report.killed_pids, vec![pid]);
        child.wait().unwrap();
    }
}
