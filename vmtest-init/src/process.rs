//! How a test process is made: where it sits among sessions and process groups, and the state it
//! starts with, as `cargo test` would start it on a host.
//!
//! Under cargo a test process leads neither a session nor a process group, so opening a
//! terminal never makes it the controlling one (a pseudo-terminal's hangup then cannot kill it)
//! and `setsid()` works in it. Its signal dispositions are the defaults apart from what Rust's
//! runtime sets itself (`SIGPIPE` ignored, `SIGSEGV`/`SIGBUS` handlers for stack overflows), its
//! signal mask is empty, its umask 022 and its resource limits the kernel's defaults.
//!
//! The layout in the guest: PID 1 leads session 1 and never has a controlling terminal (it opens
//! terminals with `O_NOCTTY`). Each test process is forked by a short-lived intermediate that
//! first makes a process group of its own: the test process is in that group without leading
//! it, and is orphaned to PID 1 when the intermediate exits. PID 1 is in the same session but
//! another group, so the group is not orphaned and job-control signals act as under a shell.
//! PID 1 ends a test and what it started by killing that group, the test process itself and the
//! group the test process leads if it made one (see [`kill`]). What a test moves out of its group
//! on purpose (`setsid`, `setpgid` in its children) outlives it.
//!
//! PID 1 changes none of these attributes for itself beyond its session; the test process resets
//! them all anyway ([`reset`]), so that nothing PID 1 does later leaks into tests.
//!
//! Its stdin is `/dev/null`. Its stdout and stderr are pipes to PID 1 ([`Stdio`]): one pipe for
//! both when its output is captured, so that what it writes to either stays in the order written
//! (libtest keeps captured output in one buffer too), and one each when its output is streamed
//! to the host's own stdout and stderr.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::OnceLock;
use std::time::Duration;

use rustix::io::Errno;
use rustix::process::{Pid, Resource, Rlimit, Signal, WaitOptions};

/// Every resource limit, restored in each test process to what PID 1 started with.
const RESOURCES: [Resource; 16] = [
    Resource::Cpu,
    Resource::Fsize,
    Resource::Data,
    Resource::Stack,
    Resource::Core,
    Resource::Rss,
    Resource::Nproc,
    Resource::Nofile,
    Resource::Memlock,
    Resource::As,
    Resource::Locks,
    Resource::Sigpending,
    Resource::Msgqueue,
    Resource::Nice,
    Resource::Rtprio,
    Resource::Rttime,
];

/// The kernel's default limits, as PID 1 found them at boot.
static DEFAULT_LIMITS: OnceLock<[Rlimit; RESOURCES.len()]> = OnceLock::new();

/// The umask of a process that cargo starts from a login shell or CI (the kernel's too).
pub(crate) const TEST_UMASK: u32 = 0o022;

/// The signals whose disposition Rust's runtime sets when a process starts.
const RUNTIME_SIGNALS: [i32; 3] = [libc::SIGPIPE, libc::SIGSEGV, libc::SIGBUS];

/// The highest signal number on Linux (`SIGRTMAX`).
const LAST_SIGNAL: i32 = 64;

/// How long a new test process waits for its intermediate to be gone.
const REPARENT_PATIENCE: Duration = Duration::from_secs(1);

/// PID 1's own setup, before anything else: it leads session 1 (with no controlling terminal),
/// and records the kernel's default resource limits for the tests.
pub(crate) fn init_pid1() -> Result<(), String> {
    let _ = DEFAULT_LIMITS.set(RESOURCES.map(rustix::process::getrlimit));
    match rustix::process::setsid() {
        // Already a session leader: nothing to do.
        Ok(_) | Err(Errno::PERM) => Ok(()),
        Err(e) => Err(format!("failed to make PID 1 a session leader: {}", io::Error::from(e))),
    }
}

/// A started test process and the process group it was started in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TestPids {
    /// The test process, a child of the process that reaps orphans (PID 1 in the guest).
    pub(crate) pid: Pid,
    /// Its process group, which it does not lead (the intermediate that made it is gone).
    pub(crate) group: Pid,
}

/// Which side of [`fork_test`] the caller is on.
pub(crate) enum Forked {
    /// The caller, with the new test process.
    Parent(TestPids),
    /// The new test process, already orphaned. In a process that had other threads, only
    /// async-signal-safe calls are allowed from here on (up to `execve`).
    Test,
}

/// Forks a test process through an intermediate that makes a new process group first, as
/// described in the module docs. The caller waits for the intermediate; the test process waits
/// until the intermediate is gone (so its parent is the orphans' reaper).
///
/// Safe to call with other threads running: the children make only async-signal-safe calls.
pub(crate) fn fork_test() -> io::Result<Forked> {
    let (pid_r, pid_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // SAFETY: the child (the intermediate) makes only async-signal-safe calls (setpgid, fork,
    // write, _exit), so forking a process with other threads is sound.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            let intermediate = rustix::process::getpid();
            let answer = match rustix::process::setpgid(None, None) {
                Err(e) => -e.raw_os_error(),
                // SAFETY: as above: the test process continues with async-signal-safe calls
                // until it executes a program, or runs in a process with a single thread.
                Ok(()) => match unsafe { libc::fork() } {
                    0 => {
                        drop((pid_r, pid_w));
                        wait_for_reparenting(intermediate);
                        return Ok(Forked::Test);
                    }
                    -1 => -last_errno(),
                    pid => pid,
                },
            };
            let _ = rustix::io::write(&pid_w, &answer.to_le_bytes());
            // SAFETY: `_exit` ends the intermediate at once, without running exit handlers or
            // flushing buffers that belong to the caller.
            unsafe { libc::_exit(0) }
        }
        intermediate => {
            drop(pid_w);
            let intermediate = Pid::from_raw(intermediate).ok_or(io::ErrorKind::InvalidData)?;
            while let Err(Errno::INTR) =
                rustix::process::waitpid(Some(intermediate), WaitOptions::empty())
            {}
            let mut bytes = [0u8; 4];
            File::from(pid_r).read_exact(&mut bytes)?;
            let answer = i32::from_le_bytes(bytes);
            match Pid::from_raw(answer) {
                Some(pid) if answer > 0 => {
                    Ok(Forked::Parent(TestPids { pid, group: intermediate }))
                }
                _ => Err(io::Error::from_raw_os_error(answer.saturating_neg())),
            }
        }
    }
}

/// Waits (boundedly) until `intermediate`, which forked this process, has exited. (Asking for
/// the parent here instead could already see the reaper, and then wait for nothing.)
fn wait_for_reparenting(intermediate: Pid) {
    let mut waited = Duration::ZERO;
    let nap = Duration::from_micros(100);
    while rustix::process::getppid() == Some(intermediate) && waited < REPARENT_PATIENCE {
        std::thread::sleep(nap);
        waited += nap;
    }
}

/// What the test process keeps of its parent's signal handling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handlers {
    /// The process goes on running the same binary: Rust's runtime set [`RUNTIME_SIGNALS`] up
    /// in it already, as it would in a fresh process.
    KeepRuntime,
    /// The process executes a program, whose runtime sets up its own.
    None,
}

/// Gives the calling (test) process the state cargo would start it with: default signal
/// dispositions (but `handlers`), an empty signal mask, umask 022 and PID 1's resource limits.
///
/// Async-signal-safe: it runs between `fork` and `execve`.
pub(crate) fn reset(handlers: Handlers) {
    for signal in 1..=LAST_SIGNAL {
        if signal == libc::SIGKILL
            || signal == libc::SIGSTOP
            || (handlers == Handlers::KeepRuntime && RUNTIME_SIGNALS.contains(&signal))
        {
            continue;
        }
        // SAFETY: a zeroed sigaction with `SIG_DFL` (0) as its handler and no flags is a valid
        // argument; the libc's reserved signals are refused with EINVAL, which is ignored.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    // SAFETY: `set` is initialized by sigemptyset before sigprocmask reads it; the old mask is
    // not asked for (null).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(TEST_UMASK));
    if let Some(limits) = DEFAULT_LIMITS.get() {
        for (resource, limit) in RESOURCES.iter().zip(limits) {
            let _ = rustix::process::setrlimit(*resource, *limit);
        }
    }
}

/// The pipes a test process's output goes through, made before it starts.
pub(crate) struct Stdio {
    /// What becomes its stdout and its stderr, in that order: two descriptors of one pipe when
    /// its output is captured.
    writers: [OwnedFd; 2],
    /// The read ends, for PID 1.
    readers: Readers,
}

/// The read ends of a test process's output.
pub(crate) enum Readers {
    /// Its stdout and stderr, interleaved as written.
    Captured(OwnedFd),
    /// Its stdout and its stderr apart.
    Streamed { stdout: OwnedFd, stderr: OwnedFd },
}

impl Stdio {
    /// Makes the pipes: one for both streams when `capture`, else one each.
    pub(crate) fn new(capture: bool) -> io::Result<Stdio> {
        let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC);
        if capture {
            let (output, writer) = pipe()?;
            let writers = [writer.try_clone()?, writer];
            Ok(Stdio { writers, readers: Readers::Captured(output) })
        } else {
            let (stdout, stdout_w) = pipe()?;
            let (stderr, stderr_w) = pipe()?;
            Ok(Stdio {
                writers: [stdout_w, stderr_w],
                readers: Readers::Streamed { stdout, stderr },
            })
        }
    }

    /// The write ends, to hand to the process that forks the test process.
    pub(crate) fn writers(&self) -> &[OwnedFd; 2] {
        &self.writers
    }

    /// Closes PID 1's write ends, once the test process holds them: else the pipes never end.
    pub(crate) fn into_readers(self) -> Readers {
        self.readers
    }
}

/// Makes `null` the calling (test) process's stdin and `writers` its stdout and stderr; the errno
/// of a failed `dup2`. Async-signal-safe: it runs between `fork` and `execve`.
pub(crate) fn install_stdio(null: &File, writers: &[OwnedFd; 2]) -> Result<(), i32> {
    for (from, to) in
        [(null.as_raw_fd(), 0), (writers[0].as_raw_fd(), 1), (writers[1].as_raw_fd(), 2)]
    {
        // SAFETY: both descriptors are open (`from` is borrowed, `to` is a standard stream
        // number); dup2 replaces `to` atomically and touches no memory.
        if unsafe { libc::dup2(from, to) } == -1 {
            return Err(last_errno());
        }
    }
    Ok(())
}

/// Kills the test process, its group and the group it leads if it made one; what is already
/// gone is no error.
pub(crate) fn kill(pids: TestPids) -> Vec<String> {
    let mut problems = Vec::new();
    let results = [
        ("process group", rustix::process::kill_process_group(pids.group, Signal::KILL)),
        ("process", rustix::process::kill_process(pids.pid, Signal::KILL)),
        ("process group", rustix::process::kill_process_group(pids.pid, Signal::KILL)),
    ];
    for ((what, result), id) in results.into_iter().zip([pids.group, pids.pid, pids.pid]) {
        match result {
            Ok(()) | Err(Errno::SRCH) => {}
            Err(e) => problems.push(format!(
                "failed to kill {what} {}: {}",
                id.as_raw_nonzero(),
                io::Error::from(e)
            )),
        }
    }
    problems
}

/// The errno of the last failed call (`EIO` if there is none to read).
pub(crate) fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Writes `stage` and `errno` to `fd` and ends the process with 127:
/// how a test process that could not start says why. Async-signal-safe.
pub(crate) fn fail_start(fd: &impl std::os::fd::AsFd, stage: u8, errno: i32) -> ! {
    let mut message = [0u8; 5];
    message[0] = stage;
    message[1..].copy_from_slice(&errno.to_le_bytes());
    let _ = rustix::io::write(fd, &message);
    // SAFETY: `_exit` ends the process at once, without running the parent's exit handlers.
    unsafe { libc::_exit(127) }
}

/// Reads what [`fail_start`] wrote: `None` once the pipe ends without it (the program was
/// executed), else the stage and the error.
pub(crate) fn read_start_failure(pipe: File) -> Option<(u8, io::Error)> {
    let mut message = Vec::new();
    let _ = (&pipe).take(5).read_to_end(&mut message);
    match message[..] {
        [stage, a, b, c, d] => {
            Some((stage, io::Error::from_raw_os_error(i32::from_le_bytes([a, b, c, d]))))
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// Makes the calling (test) process the reaper of orphans, as PID 1 is in the guest, so that
    /// test processes started by [`fork_test`] are its children.
    pub(crate) fn become_reaper() {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
        let done = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(done, 0, "{}", io::Error::last_os_error());
    }

    /// Reads `fd` to its end, failing once `patience` has passed without it: a child that got
    /// stuck fails the test instead of hanging it.
    pub(crate) fn read_within(fd: OwnedFd, patience: Duration) -> Result<Vec<u8>, String> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let deadline = std::time::Instant::now() + patience;
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(format!("no end of output after {patience:?} ({} bytes)", bytes.len()));
            }
            let timeout = Timespec::try_from(left).unwrap();
            match poll(&mut [PollFd::new(&fd, PollFlags::IN)], Some(&timeout)) {
                Ok(0) | Err(Errno::INTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(format!("failed to poll: {e}")),
            }
            match rustix::io::read(&fd, &mut chunk) {
                Ok(0) => return Ok(bytes),
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(Errno::INTR) => {}
                Err(e) => return Err(format!("failed to read: {e}")),
            }
        }
    }

    /// Sets SIGUSR1 to `handler` and blocks or unblocks SIGUSR2 in the calling thread.
    fn disturb(handler: libc::sighandler_t, how: libc::c_int) {
        // SAFETY: changes only how this process handles SIGUSR1 and whether this thread takes
        // SIGUSR2, signals nobody sends it; `set` is initialized before use.
        unsafe {
            libc::signal(libc::SIGUSR1, handler);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            libc::pthread_sigmask(how, &set, std::ptr::null_mut());
        }
    }

    /// This process's session id, 0 when the session's leader lies outside this PID namespace
    /// (as in many CI containers). `rustix::process::getsid` panics on 0, so this asks libc.
    fn session_id() -> i32 {
        // SAFETY: getsid only reads the calling process's session id.
        unsafe { libc::getsid(0) }
    }

    #[test]
    fn the_test_process_is_in_a_group_it_does_not_lead_and_resets_its_state() {
        let _serial = crate::child::tests::serial();
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        // A disposition and a mask for the test process not to inherit.
        disturb(libc::SIG_IGN, libc::SIG_BLOCK);
        let forked = fork_test();
        match forked.unwrap() {
            Forked::Test => {
                reset(Handlers::KeepRuntime);
                // SAFETY: both are plain C structs, valid when zeroed, and only written by the
                // calls below (no allocation: this is a fork of a threaded process).
                let (mut mask, mut usr1): (libc::sigset_t, libc::sigaction) =
                    unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
                // SAFETY: both out-pointers are valid for writes; nothing is changed.
                unsafe {
                    libc::sigprocmask(libc::SIG_SETMASK, std::ptr::null(), &mut mask);
                    libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut usr1);
                }
                let raw = |pid: Option<Pid>| pid.map_or(0, |p| p.as_raw_nonzero().get());
                let facts = [
                    raw(Some(rustix::process::getpid())),
                    raw(rustix::process::getppid()),
                    raw(rustix::process::getpgid(None).ok()),
                    session_id(),
                    // SAFETY: `mask` was filled by sigprocmask.
                    unsafe { libc::sigismember(&mask, libc::SIGUSR2) },
                    i32::from(usr1.sa_sigaction == libc::SIG_DFL),
                    // SAFETY: umask only swaps the mask; the old one is set back at once.
                    unsafe {
                        let old = libc::umask(0o077);
                        libc::umask(old);
                        old as i32
                    },
                ];
                let mut bytes = [0u8; 28];
                for (chunk, fact) in bytes.chunks_mut(4).zip(facts) {
                    chunk.copy_from_slice(&fact.to_le_bytes());
                }
                let _ = rustix::io::write(&w, &bytes);
                // SAFETY: ends the forked copy of the test harness at once.
                unsafe { libc::_exit(0) }
            }
            Forked::Parent(pids) => {
                disturb(libc::SIG_DFL, libc::SIG_UNBLOCK);
                drop(w);
                let bytes = read_within(r, Duration::from_secs(30)).unwrap_or_else(|e| {
                    kill(pids);
                    panic!("the test process did not report: {e}")
                });
                let facts: Vec<i32> =
                    bytes.chunks(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect();
                let me = rustix::process::getpid().as_raw_nonzero().get();
                let session = session_id();
                assert_eq!(facts.len(), 7, "{facts:?}");
                assert_eq!(facts[0], pids.pid.as_raw_nonzero().get());
                assert_eq!(facts[1], me, "the test process is not orphaned to its reaper");
                assert_eq!(facts[2], pids.group.as_raw_nonzero().get());
                assert_ne!(facts[2], facts[0], "the test process leads its process group");
                assert_eq!(facts[3], session, "the test process is not in its parent's session");
                assert_eq!(facts[4], 0, "the signal mask is not empty");
                assert_eq!(facts[5], 1, "SIGUSR1 is still ignored");
                assert_eq!(facts[6], TEST_UMASK as i32);
                let status = loop {
                    match rustix::process::waitpid(Some(pids.pid), WaitOptions::empty()) {
                        Err(Errno::INTR) => continue,
                        other => break other.unwrap().unwrap().1,
                    }
                };
                assert_eq!(status.exit_status(), Some(0));
            }
        }
    }

    #[test]
    fn captured_stdout_and_stderr_are_one_pipe_and_streamed_ones_two() {
        let read = |fd: OwnedFd| {
            let mut bytes = Vec::new();
            File::from(fd).read_to_end(&mut bytes).unwrap();
            bytes
        };
        let write = |fd: &OwnedFd, bytes: &[u8]| rustix::io::write(fd, bytes).unwrap();
        let stdio = Stdio::new(true).unwrap();
        write(&stdio.writers()[0], b"out ");
        write(&stdio.writers()[1], b"err ");
        write(&stdio.writers()[0], b"out");
        let Readers::Captured(output) = stdio.into_readers() else { panic!("not captured") };
        assert_eq!(read(output), b"out err out");

        let stdio = Stdio::new(false).unwrap();
        write(&stdio.writers()[0], b"out ");
        write(&stdio.writers()[1], b"err");
        write(&stdio.writers()[0], b"out");
        let Readers::Streamed { stdout, stderr } = stdio.into_readers() else {
            panic!("not streamed")
        };
        assert_eq!((read(stdout), read(stderr)), (b"out out".to_vec(), b"err".to_vec()));
    }

    #[test]
    fn a_start_failure_carries_its_stage_and_error() {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let mut message = vec![2u8];
        message.extend(libc::ENOENT.to_le_bytes());
        File::from(w).write_all(&message).unwrap();
        let (stage, error) = read_start_failure(File::from(r)).unwrap();
        assert_eq!((stage, error.raw_os_error()), (2, Some(libc::ENOENT)));
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        drop(w);
        assert!(read_start_failure(File::from(r)).is_none(), "an executed program failed");
    }
}
