//! What `/proc` says about processes: the daemon's memory, CPU time and open files, and whether a job's
//! processes are still there.

use std::path::Path;
use std::time::Duration;

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resident memory in KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS")
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces and parentheses, so it
/// ends at the last `)`): `[0]` is the state, `[1]` the parent, `[2]` the process group, `[11]` and
/// `[12]` user and system CPU time in clock ticks. `None` once the process is gone.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User + system CPU time the process has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let fields = stat_fields(pid as i32).unwrap_or_else(|| panic!("no /proc/{pid}/stat"));
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |ticks| ticks.max(1) as u64);
    Duration::from_micros(ticks * 1_000_000 / per_second)
}

/// How many files the process has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.first().is_some_and(|s| s != "Z" && s != "X"))
}

fn all_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub fn processes_in_group(pgid: i32) -> Vec<i32> {
    let pgid = pgid.to_string();
    all_pids()
        .filter(|&pid| {
            stat_fields(pid)
                .is_some_and(|fields| fields.len() > 2 && fields[2] == pgid && fields[0] != "Z")
        })
        .collect()
}

/// Live processes whose environment says they belong to job `id` (zombies have no environment).
pub fn processes_of_job(id: &str) -> Vec<i32> {
    let marker = format!("HERDCTL_JOB_ID={id}");
    all_pids()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
        })
        .collect()
}

/// SIGKILLs every process whose working directory is under `dir` (a test fleet's jobs run in
/// `dir/agents`): what a daemon that could not stop left behind.
pub fn kill_processes_working_in(dir: &Path) {
    for pid in all_pids() {
        let in_dir =
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir));
        if in_dir {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Raises this process's soft RLIMIT_NOFILE to at least `wanted` (capped at the hard limit); a daemon
/// started afterwards inherits it. Returns the new soft limit.
pub fn raise_nofile_limit(wanted: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft >= wanted {
        return soft;
    }
    // Raising the soft limit up to the hard limit needs no privilege.
    let raised = wanted.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, raised, hard).expect("setrlimit");
    raised
}
