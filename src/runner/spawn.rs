//! Spawning a job's leader without copying the daemon.
//!
//! `fork` copies the daemon's page tables and makes every page copy-on-write, and the child's `exec` then tears
//! the copy down again: with tens of megabytes mapped that is most of the CPU a trivial job costs. `posix_spawn`
//! avoids it with `clone(CLONE_VM | CLONE_VFORK)` (the child borrows the parent's memory until it execs) but has
//! no way to set the parent-death signal SPEC §8 requires. So this module does what `posix_spawn` does, plus
//! `PR_SET_PDEATHSIG`: the child runs a small function on a stack of its own that makes only raw system calls
//! (no allocation, no locks: it shares the daemon's memory while the spawning thread is suspended), then execs.
//!
//! The child, before `exec`: parent-death signal SIGKILL (and exit if the daemon already died), signal handlers
//! reset to the default (a handler of the daemon must never run in the child: it would write the daemon's
//! memory), SIGPIPE back to the default, its own process group, stdio from the pipes, every other descriptor
//! close-on-exec, the working directory, an empty signal mask, then `execve` along PATH like `execvp` (a file
//! without `#!` is run by `/bin/sh`). Exit is awaited through a pidfd (Linux 5.3 or later).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::ptr;

use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::waitpid;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use super::process::{exit_status, try_reap};

/// What to run: argv, the environment on top of the daemon's, and the working directory.
#[derive(Debug, Clone)]
pub(crate) struct JobCommand {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Set after the daemon's environment, in order (a later entry wins).
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
}

/// A spawned leader: its pipes and its exit.
pub(crate) struct Child {
    pid: u32,
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
    exit: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
}

/// Stack of the child until it execs; the setup needs a few hundred bytes.
const CHILD_STACK_BYTES: usize = 64 * 1024;
/// The shell that runs a file without `#!`, as `execvp` does.
const SHELL: &std::ffi::CStr = c"/bin/sh";
/// PATH when the environment has none (what `execvp` uses).
const DEFAULT_PATH: &str = "/bin:/usr/bin";
/// Signals are numbered 1 to 64 on Linux.
const MAX_SIGNAL: libc::c_int = 64;

/// Everything the child reads, prepared by the parent (the child must not allocate).
struct ChildPlan {
    parent: libc::pid_t,
    /// Paths to try in order, like `execvp`; null-terminated C strings kept alive by `strings`.
    candidates: Vec<*const libc::c_char>,
    argv: Vec<*const libc::c_char>,
    /// `/bin/sh`, a slot for the candidate, then argv[1..]: how `execvp` runs a file without `#!` (ENOEXEC).
    /// The child writes the slot; the parent, suspended meanwhile, owns the array.
    script_argv: *mut *const libc::c_char,
    envp: Vec<*const libc::c_char>,
    cwd: *const libc::c_char,
    /// Child ends of the stdin, stdout and stderr pipes, all above 2.
    stdio: [RawFd; 3],
    /// Where the child reports why it could not exec (an errno), read by the parent after `clone` returns.
    failure: *mut libc::c_int,
}

impl Child {
    pub(crate) fn id(&self) -> u32 {
        self.pid
    }

    /// Waits for the leader to exit and reaps it. Cancel-safe; after the first success it returns the same
    /// status again.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            if let Some(status) = try_reap(self.pid)? {
                self.status = Some(status);
                self.exit = None;
                return Ok(status);
            }
            let Some(exit) = self.exit.as_ref() else {
                return Err(io::Error::other("the job process has no exit watch"));
            };
            let mut ready = exit.readable().await?;
            if let Some(status) = try_reap(self.pid)? {
                self.status = Some(status);
                self.exit = None;
                return Ok(status);
            }
            ready.clear_ready();
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_none() && matches!(try_reap(self.pid), Ok(None)) {
            // Nobody will wait for it now: let the orphan reaper take it when it exits.
            super::process::leader_abandoned(self.pid);
        }
    }
}

/// Spawns `command` with piped stdio as a new process group leader. Must be called within a tokio runtime,
/// from a thread that outlives the child (the parent-death signal fires when the spawning thread exits).
pub(crate) fn spawn(command: &JobCommand) -> io::Result<Child> {
    let strings = Strings::new(command)?;
    let (stdin_child, stdin_parent) = pipe_pair(PipeEnd::ChildReads)?;
    let (stdout_child, stdout_parent) = pipe_pair(PipeEnd::ChildWrites)?;
    let (stderr_child, stderr_parent) = pipe_pair(PipeEnd::ChildWrites)?;
    // Wrapped before the child exists, so that nothing can fail between its start and handing it out but
    // the exit watch (which then kills and reaps it).
    let stdin = pipe::Sender::from_owned_fd(stdin_parent)?;
    let stdout = pipe::Receiver::from_owned_fd(stdout_parent)?;
    let stderr = pipe::Receiver::from_owned_fd(stderr_parent)?;
    let mut failure: libc::c_int = 0;
    let mut script_argv: Vec<*const libc::c_char> = [SHELL.as_ptr(), ptr::null()]
        .into_iter()
        .chain(null_terminated(&strings.argv).into_iter().skip(1))
        .collect();
    let plan = ChildPlan {
        parent: std::process::id() as libc::pid_t,
        candidates: strings.candidates.iter().map(|c| c.as_ptr()).collect(),
        argv: null_terminated(&strings.argv),
        script_argv: script_argv.as_mut_ptr(),
        envp: null_terminated(&strings.envp),
        cwd: strings.cwd.as_ptr(),
        stdio: [
            stdin_child.as_raw_fd(),
            stdout_child.as_raw_fd(),
            stderr_child.as_raw_fd(),
        ],
        failure: &mut failure,
    };
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    // The stack grows down from its end, which must be 16-byte aligned.
    let stack_top = {
        let end = stack.as_mut_ptr().wrapping_add(CHILD_STACK_BYTES) as usize;
        (end & !0xf) as *mut libc::c_void
    };
    let pid = with_all_signals_blocked(|| {
        // SAFETY: CLONE_VFORK suspends this thread until the child has exec'd or exited, so `plan`, `strings`
        // and `stack` outlive every use the child makes of them; `child_main` only makes async-signal-safe raw
        // system calls and never returns into Rust code of ours. With all signals blocked, no handler of the
        // daemon can run on the child's side before it resets them.
        let pid = unsafe {
            libc::clone(
                child_main,
                stack_top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                &plan as *const ChildPlan as *mut libc::c_void,
            )
        };
        if pid < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(pid)
        }
    })?;
    drop((stdin_child, stdout_child, stderr_child));
    // SAFETY: the child has exec'd or exited (CLONE_VFORK); nothing writes `failure` any more.
    let failure = unsafe { ptr::read_volatile(&failure) };
    if failure != 0 {
        // The child has already exited with `_exit`; reap it so it leaves no zombie.
        let _ = reap_blocking(pid);
        return Err(io::Error::from_raw_os_error(failure));
    }
    let exit = match watch_exit(pid) {
        Ok(exit) => exit,
        Err(e) => {
            // `pid` is our unreaped child and its group's leader, so neither can have been reused.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            let _ = reap_blocking(pid);
            return Err(e);
        }
    };
    Ok(Child {
        pid: pid.unsigned_abs(),
        stdin: Some(stdin),
        stdout: Some(stdout),
        stderr: Some(stderr),
        exit: Some(exit),
        status: None,
    })
}

/// A pidfd of `pid`, registered with the runtime: readable once the process has exited.
fn watch_exit(pid: libc::pid_t) -> io::Result<AsyncFd<OwnedFd>> {
    let fd = pidfd_open(pid).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot watch the job process (pidfd_open needs Linux 5.3 or later): {e}"),
        )
    })?;
    // SAFETY: an OwnedFd keeps its descriptor open and unchanged until the AsyncFd drops it.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

/// The C strings of a command, owned by the parent for the child to read.
struct Strings {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
}

impl Strings {
    fn new(command: &JobCommand) -> io::Result<Strings> {
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        for (key, value) in &command.env {
            match env.iter_mut().find(|(k, _)| k == key) {
                Some(entry) => entry.1 = value.clone(),
                None => env.push((key.clone(), value.clone())),
            }
        }
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| DEFAULT_PATH.into());
        let candidates = exec_candidates(&command.program, &path)
            .into_iter()
            .map(c_string)
            .collect::<io::Result<_>>()?;
        let argv = std::iter::once(command.program.clone())
            .chain(command.args.iter().cloned())
            .map(c_string)
            .collect::<io::Result<_>>()?;
        let envp = env
            .into_iter()
            .map(|(mut key, value)| {
                key.push("=");
                key.push(value);
                c_string(key)
            })
            .collect::<io::Result<_>>()?;
        Ok(Strings {
            candidates,
            argv,
            envp,
            cwd: c_string(command.cwd.clone().into_os_string())?,
        })
    }
}

/// The paths `execvp` would try for `program`: itself if it contains a slash, else each PATH entry joined
/// with it (an empty entry means the working directory).
fn exec_candidates(program: &OsStr, path: &OsStr) -> Vec<OsString> {
    if program.as_bytes().contains(&b'/') {
        return vec![program.to_os_string()];
    }
    path.as_bytes()
        .split(|b| *b == b':')
        .map(|dir| {
            let dir = if dir.is_empty() { b"." as &[u8] } else { dir };
            Path::new(OsStr::from_bytes(dir))
                .join(program)
                .into_os_string()
        })
        .collect()
}

fn c_string(text: OsString) -> io::Result<CString> {
    CString::new(text.into_vec()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{:?} contains a NUL byte",
                String::from_utf8_lossy(&e.into_vec())
            ),
        )
    })
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

enum PipeEnd {
    ChildReads,
    ChildWrites,
}

/// A close-on-exec pipe as (child end, parent end). The child end is moved above the stdio numbers so that
/// `dup2` onto 0–2 never meets itself (which would leave it close-on-exec).
fn pipe_pair(child: PipeEnd) -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (child_end, parent_end) = match child {
        PipeEnd::ChildReads => (read, write),
        PipeEnd::ChildWrites => (write, read),
    };
    Ok((above_stdio(child_end)?, parent_end))
}

fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // The lowest free descriptor from 3 on, close-on-exec.
    let duplicate = nix::fcntl::fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: fcntl just returned this new descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(duplicate) })
}

fn with_all_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    let mut previous = SigSet::empty();
    // Only fails for an invalid `how`, which SIG_SETMASK is not.
    let _ = pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut previous),
    );
    let result = f();
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None);
    result
}

/// The child between `clone` and `exec`. Only raw system calls: it runs on the daemon's memory.
extern "C" fn child_main(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `plan` points to the parent's ChildPlan, alive while the parent is suspended (CLONE_VFORK); every
    // call below is async-signal-safe and takes plain integers or pointers into that plan.
    unsafe {
        let plan = &*(plan as *const ChildPlan);
        let fail = |errno: libc::c_int| -> ! {
            ptr::write_volatile(plan.failure, if errno == 0 { libc::EINVAL } else { errno });
            libc::_exit(127)
        };
        let errno = || *libc::__errno_location();
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            fail(errno());
        }
        // The daemon may have died before the death signal was armed; then none will come.
        if libc::getppid() != plan.parent {
            libc::_exit(1);
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for signal in 1..=MAX_SIGNAL {
            if libc::sigaction(signal, ptr::null(), &mut action) != 0 {
                continue;
            }
            let handled =
                action.sa_sigaction != libc::SIG_DFL && action.sa_sigaction != libc::SIG_IGN;
            let ignored_pipe = signal == libc::SIGPIPE && action.sa_sigaction == libc::SIG_IGN;
            if handled || ignored_pipe {
                libc::sigaction(signal, &default, ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0 {
            fail(errno());
        }
        for (target, source) in plan.stdio.iter().enumerate() {
            if libc::dup2(*source, target as libc::c_int) < 0 {
                fail(errno());
            }
        }
        // Rust opens its descriptors close-on-exec, but a library might not: only stdio is inherited.
        // Failure (ENOSYS before Linux 5.11) is harmless: then we rely on close-on-exec defaults.
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        );
        if libc::chdir(plan.cwd) != 0 {
            fail(errno());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut());
        // Like execvp: keep looking past candidates that do not exist or may not be run; report EACCES if one
        // was found but not executable, else the last error. A file the kernel cannot execute (no `#!`) is
        // run by the shell.
        let mut reported = libc::ENOENT;
        let mut denied = false;
        for candidate in &plan.candidates {
            libc::execve(*candidate, plan.argv.as_ptr(), plan.envp.as_ptr());
            if errno() == libc::ENOEXEC {
                *plan.script_argv.add(1) = *candidate;
                libc::execve(SHELL.as_ptr(), plan.script_argv, plan.envp.as_ptr());
            }
            match errno() {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                other => {
                    reported = other;
                    break;
                }
            }
        }
        fail(if denied && reported == libc::ENOENT {
            libc::EACCES
        } else {
            reported
        })
    }
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes plain integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn reap_blocking(pid: libc::pid_t) -> io::Result<ExitStatus> {
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(status) => {
                if let Some(exit) = exit_status(status) {
                    return Ok(exit);
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn command(program: &str, args: &[&str]) -> JobCommand {
        JobCommand {
            program: program.into(),
            args: args.iter().map(OsString::from).collect(),
            env: vec![("HERDCTL_SPAWN_TEST".into(), "yes".into())],
            cwd: std::env::temp_dir(),
        }
    }

    async fn run(command: &JobCommand, stdin: &str) -> (ExitStatus, String, String) {
        let mut child = spawn(command).unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        let (mut out, mut err) = (String::new(), String::new());
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        (child.wait().await.unwrap(), out, err)
    }

    #[test]
    fn candidates_follow_path_unless_the_program_has_a_slash() {
        let path = OsStr::new("/a::b");
        assert_eq!(
            exec_candidates(OsStr::new("tool"), path),
            vec![
                OsString::from("/a/tool"),
                OsString::from("./tool"),
                OsString::from("b/tool")
            ]
        );
        assert_eq!(
            exec_candidates(OsStr::new("./x/tool"), path),
            vec![OsString::from("./x/tool")]
        );
    }

    #[tokio::test]
    async fn runs_with_pipes_env_cwd_and_own_group() {
        let script = "read line; echo \"in=$line env=$HERDCTL_SPAWN_TEST cwd=$(pwd)\"; \
                      echo err >&2; ps -o pgid= -p $$ | tr -d ' ' >&2; exit 3";
        let (status, out, err) = run(&command("sh", &["-c", script]), "hello\n").await;
        assert_eq!(status.code(), Some(3));
        let cwd = std::env::temp_dir().canonicalize().unwrap();
        assert_eq!(
            out.trim(),
            format!("in=hello env=yes cwd={}", cwd.display())
        );
        let mut lines = err.lines();
        assert_eq!(lines.next(), Some("err"));
        // The shell is its own group leader: pgid = its pid, not ours.
        let pgid: u32 = lines.next().unwrap().parse().unwrap();
        assert_ne!(pgid, std::process::id());
    }

    #[tokio::test]
    async fn signals_are_default_and_unblocked_in_the_child() {
        // This test process ignores SIGPIPE (Rust does); the job must not inherit that, nor any blocked signal.
        let (status, out, _) = run(
            &command("sh", &["-c", "grep -E '^Sig(Blk|Ign)' /proc/self/status"]),
            "",
        )
        .await;
        assert!(status.success());
        // glibc's internal signals 32 and 33 cannot be set through libc (posix_spawn leaves them ignored too).
        let glibc_internal: u64 = 0b11 << 31;
        let masks: Vec<u64> = out
            .lines()
            .map(|line| {
                let hex = line.split_whitespace().nth(1).unwrap();
                u64::from_str_radix(hex, 16).unwrap() & !glibc_internal
            })
            .collect();
        assert_eq!(
            masks,
            vec![0, 0],
            "blocked and ignored signals of the job: {out}"
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_enoent_and_leaves_no_zombie() {
        let err = spawn(&command("herdctl-no-such-program", &[]))
            .err()
            .unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        let dir = tempfile::tempdir().unwrap();
        let not_executable = dir.path().join("data");
        std::fs::write(&not_executable, "data").unwrap();
        let err = spawn(&command(not_executable.to_str().unwrap(), &[]))
            .err()
            .unwrap();
        // EACCES for a user; root may exec it only with an x bit, so EACCES too.
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
        // The failed children were this thread's; none is left (not even a zombie). Other tests' children
        // hang off their own threads.
        let tid = nix::unistd::gettid();
        let children = std::fs::read_to_string(format!("/proc/self/task/{tid}/children")).unwrap();
        assert_eq!(children.trim(), "", "a failed spawn left a child");
    }

    #[tokio::test]
    async fn a_file_without_a_shebang_is_run_by_the_shell() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("job");
        std::fs::write(&script, "echo \"run by sh with $1\"\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let (status, out, _) = run(&command(script.to_str().unwrap(), &["arg"]), "").await;
        assert!(status.success());
        assert_eq!(out, "run by sh with arg\n");
    }

    #[tokio::test]
    async fn a_child_dropped_while_running_is_reaped_by_the_orphan_reaper() {
        let child = spawn(&command("sleep", &["0.05"])).unwrap();
        let pid = child.id();
        drop(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            super::super::process::reap_adopted_zombies();
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{pid} was never reaped"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn only_stdio_descriptors_are_inherited() {
        let (status, out, _) = run(&command("ls", &["/proc/self/fd"]), "").await;
        assert!(status.success());
        let mut fds: Vec<u32> = out.lines().filter_map(|l| l.parse().ok()).collect();
        fds.sort_unstable();
        // 0–2, and the descriptor `ls` opened to read the directory.
        assert_eq!(&fds[..3], &[0, 1, 2]);
        assert!(fds.len() <= 4, "inherited descriptors: {fds:?}");
    }
}
