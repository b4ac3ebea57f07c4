//! Running one planned program in a child process, and reaping.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, WaitOptions, WaitStatus};

use crate::console;
use crate::files::OutDir;
use crate::forks::{ForkServer, Started};
use crate::output::{TailBuffer, CAPTURE_LIMIT};
use crate::ports::Control;
use crate::process::{self, Readers, Stdio, TestPids};
use crate::protocol::{
    GuestMessage, Outcome, PlannedTest, Stream, ARTIFACT_ENV, PROFILE_ENV, SKIP_ENV,
};

/// How long output pipes may stay open after the test's process group is gone.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How long a SIGKILLed child may take to die.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// Largest piece of streamed output per frame.
const STREAM_CHUNK: usize = 64 << 10;
/// Upper bound between two reaps of orphaned zombies while a test runs.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// How a test run went, ready for `TestFinished`.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) outcome: Outcome,
    pub(crate) duration_ms: u64,
    /// What the test wrote to stdout and stderr, in the order written, when it is captured.
    pub(crate) output: Vec<u8>,
}

/// Runs `test` in a new test process (see `process.rs`), with exactly its environment, and waits
/// for it within its timeout. Whatever is left of its process group afterwards is killed.
///
/// Problems with the test itself (it cannot start, it times out) are outcomes; an `Err` means the
/// harness could not do its job (the control port failed).
pub(crate) fn run(
    test: &PlannedTest,
    control: &Control,
    out: &OutDir,
    server: Option<&ForkServer>,
) -> Result<Finished, String> {
    let skip_file = format!("/tmp/vmtest-skip-{}-{}", std::process::id(), test.id);
    let _ = std::fs::remove_file(&skip_file);
    let env = environment(test, out, &skip_file);

    let start = Instant::now();
    let started = match server.filter(|server| server.serves(test)) {
        Some(server) => server.spawn(test, env.clone()).or_else(|e| {
            console::say(format_args!("{}: {e}; executing it and the tests after it", test.name));
            execute(test, env)
        }),
        None => execute(test, env),
    };
    let Started { pids, output } = match started {
        Ok(started) => started,
        Err(e) => {
            return Ok(Finished { outcome: Outcome::Error(e), duration_ms: 0, output: Vec::new() })
        }
    };

    let closed = Arc::new(AtomicBool::new(false));
    let readers = match output {
        Readers::Captured(pipe) => vec![(pipe, Sink::Capture(TailBuffer::new(CAPTURE_LIMIT)))],
        Readers::Streamed { stdout, stderr } => {
            [(Stream::Stdout, stdout), (Stream::Stderr, stderr)]
                .map(|(stream, pipe)| {
                    let (control, closed) = (control.clone(), closed.clone());
                    (pipe, Sink::Stream { control, id: test.id, stream, closed })
                })
                .into()
        }
    };
    let (events_tx, events) = mpsc::channel();
    let pending = readers.len();
    for (pipe, sink) in readers {
        let name = match &sink {
            Sink::Capture(_) => "vmtest-output".to_owned(),
            Sink::Stream { stream, .. } => format!("vmtest-{stream:?}").to_lowercase(),
        };
        let events_tx = events_tx.clone();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let result = pump(std::fs::File::from(pipe), sink, || {
                    let _ = events_tx.send(Event::Eof);
                });
                let _ = events_tx.send(Event::Result(result));
            })
            .map_err(|e| format!("failed to start an output reader: {e}"))?;
    }
    drop(events_tx);

    let timeout = Duration::from_millis(test.timeout_ms);
    let outcome = match wait_until(pids.pid, start + timeout) {
        Some(status) => skipped(outcome_of(status), &skip_file),
        None => {
            kill(pids);
            if wait_until(pids.pid, Instant::now() + KILL_GRACE).is_none() {
                console::say(format_args!("{}: still alive after SIGKILL", test.name));
            }
            Outcome::TimedOut { after_ms: test.timeout_ms }
        }
    };
    let duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    // Leftovers of the test (background processes in its group) must not outlive it, nor keep
    // its output pipes open.
    kill(pids);

    // First wait (bounded) for the pipes to reach their end; then collect what the readers made
    // of them, which takes as long as it takes (it is bounded work).
    let mut at_eof = 0;
    let drain_deadline = Instant::now() + DRAIN_GRACE;
    let mut results = Vec::new();
    while at_eof < pending {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Eof) => at_eof += 1,
            Ok(Event::Result(result)) => results.push(result),
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("an output reader of {} panicked", test.name));
            }
        }
    }
    while results.len() < at_eof {
        match events.recv() {
            Ok(Event::Result(result)) => results.push(result),
            Ok(Event::Eof) => {}
            Err(_) => return Err(format!("an output reader of {} panicked", test.name)),
        }
    }
    // Only the captured pipe's reader, if there is one, returns bytes.
    let mut output = Vec::new();
    let mut port_error = None;
    for result in results {
        match result {
            Ok(bytes) => output.extend_from_slice(&bytes),
            Err(e) => port_error = Some(e),
        }
    }
    closed.store(true, Ordering::SeqCst);
    if at_eof < pending {
        let note = b"\n[vmtest-init: output incomplete: a process outside the test's process \
                     group kept its output open]\n";
        output.extend_from_slice(note);
    }
    if let Some(e) = port_error {
        return Err(e);
    }
    Ok(Finished { outcome, duration_ms, output })
}

/// The test's whole environment: what the host planned, plus where to leave a skip reason and
/// artifacts, and where to write profiles.
fn environment(test: &PlannedTest, out: &OutDir, skip_file: &str) -> Vec<(String, String)> {
    let mut env = test.env.clone();
    env.push((SKIP_ENV.to_owned(), skip_file.to_owned()));
    env.push((ARTIFACT_ENV.to_owned(), out.artifacts().to_string_lossy().into_owned()));
    if let Some(entry) = env.iter_mut().find(|(name, _)| name == PROFILE_ENV) {
        // The host's pattern names a host path: profiles go to the test's directory instead,
        // and reach the host after the test.
        entry.1 = out.profile_pattern();
    }
    env
}

/// Starts `test` by executing its program (an absolute path) in a new test process, set up as
/// `process.rs` describes.
fn execute(test: &PlannedTest, env: Vec<(String, String)>) -> Result<Started, String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        format!("failed to start {}: {what}: {e}", test.program)
    };
    let cstring = |s: &str| CString::new(s).map_err(|e| fail("a NUL byte", &e));
    // Everything the child needs is made here: between fork and exec it must not allocate.
    let program = cstring(&test.program)?;
    let args: Vec<CString> = std::iter::once(test.program.as_str())
        .chain(test.args.iter().map(String::as_str))
        .map(cstring)
        .collect::<Result<_, _>>()?;
    let env: Vec<CString> = env
        .iter()
        .map(|(name, value)| cstring(&format!("{name}={value}")))
        .collect::<Result<_, _>>()?;
    let cwd = cstring(&test.cwd)?;
    let argv = null_terminated(&args);
    let envp = null_terminated(&env);
    let null = File::open("/dev/null").map_err(|e| fail("/dev/null", &e))?;
    let stdio = Stdio::new(test.capture).map_err(|e| fail("a pipe", &e))?;
    let (status, status_w) = pipe().map_err(|e| fail("a pipe", &e))?;
    let forked = process::fork_test().map_err(|e| fail("fork", &e))?;
    let pids = match forked {
        process::Forked::Test => {
            process::reset(process::Handlers::None);
            if let Err(errno) = process::install_stdio(&null, stdio.writers()) {
                process::fail_start(&status_w, STAGE_STDIO, errno);
            }
            // SAFETY: `cwd` is a NUL-terminated string that outlives the call.
            if unsafe { libc::chdir(cwd.as_ptr()) } == -1 {
                process::fail_start(&status_w, STAGE_CWD, process::last_errno());
            }
            // SAFETY: `program`, `argv` and `envp` are NUL-terminated strings and
            // null-terminated arrays of them, all alive here; execve only returns on failure.
            unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            process::fail_start(&status_w, STAGE_EXEC, process::last_errno())
        }
        process::Forked::Parent(pids) => pids,
    };
    // The test process holds the write ends now; ours would keep the pipes from ending.
    let output = stdio.into_readers();
    drop(status_w);
    match process::read_start_failure(File::from(status)) {
        None => Ok(Started { pids, output }),
        // The test process has exited; it is reaped with the next orphans.
        Some((STAGE_CWD, e)) => Err(format!(
            "failed to start {}: failed to enter the working directory {}: {e}",
            test.program, test.cwd
        )),
        Some((STAGE_STDIO, e)) => Err(fail("failed to set up stdin, stdout and stderr", &e)),
        Some((_, e)) => Err(format!("failed to start {}: {e}", test.program)),
    }
}

/// Where a test process that could not execute its program failed.
const STAGE_STDIO: u8 = 0;
const STAGE_CWD: u8 = 1;
const STAGE_EXEC: u8 = 2;

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// What an output reader tells `run`.
enum Event {
    /// The pipe reached its end: every writer is gone.
    Eof,
    /// The reader is done: the captured bytes, or a control port failure.
    Result(Result<Vec<u8>, String>),
}

enum Sink {
    Capture(TailBuffer),
    Stream { control: Control, id: u32, stream: Stream, closed: Arc<AtomicBool> },
}

/// Reads `pipe` to its end. Captured output is returned; streamed output is sent as it comes
/// and an empty vector returned. Reading goes on after a port failure so the child never blocks
/// on a full pipe; the failure is returned at the end. `at_eof` is called when the pipe ends.
fn pump(mut pipe: std::fs::File, mut sink: Sink, at_eof: impl FnOnce()) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; STREAM_CHUNK];
    let mut port_error = None;
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                console::say(format_args!("failed to read test output: {e}"));
                break;
            }
        };
        match &mut sink {
            Sink::Capture(tail) => tail.push(&buf[..n]),
            Sink::Stream { control, id, stream, closed } => {
                if port_error.is_none() && !closed.load(Ordering::SeqCst) {
                    let message =
                        GuestMessage::Output { id: *id, stream: *stream, bytes: buf[..n].to_vec() };
                    port_error = control.send(&message).err();
                }
            }
        }
    }
    at_eof();
    match (sink, port_error) {
        (_, Some(e)) => Err(e),
        (Sink::Capture(tail), None) => Ok(tail.finish()),
        (Sink::Stream { .. }, None) => Ok(Vec::new()),
    }
}

/// A clean exit after the child left a skip reason is a skip; the file is removed either way.
fn skipped(outcome: Outcome, skip_file: &str) -> Outcome {
    let reason = std::fs::read(skip_file).ok();
    let _ = std::fs::remove_file(skip_file);
    match (outcome, reason) {
        (Outcome::Exited(0), Some(reason)) => {
            Outcome::Skipped(String::from_utf8_lossy(&reason).trim().to_owned())
        }
        (outcome, _) => outcome,
    }
}

fn outcome_of(status: WaitStatus) -> Outcome {
    if let Some(code) = status.exit_status() {
        Outcome::Exited(code)
    } else if let Some(signal) = status.terminating_signal() {
        Outcome::Signaled(signal)
    } else {
        Outcome::Error(format!("unexpected wait status {status:?}"))
    }
}

fn kill(pids: TestPids) {
    for problem in process::kill(pids) {
        console::say(problem);
    }
}

/// Waits for `pid` to end, reaping every other zombie on the way, until `deadline`.
/// `None` if it is still running at the deadline.
fn wait_until(pid: Pid, deadline: Instant) -> Option<WaitStatus> {
    // A pidfd becomes readable when the process ends; without one (kernels before 5.3), poll.
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok();
    loop {
        if let Some(status) = reap(Some(pid)) {
            return Some(status);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let nap = left.min(REAP_INTERVAL);
        match &pidfd {
            Some(fd) => {
                let mut fds = [PollFd::new(fd, PollFlags::IN)];
                let timeout = Timespec::try_from(nap).unwrap_or(Timespec { tv_sec: 1, tv_nsec: 0 });
                // EINTR and friends just mean another round.
                let _ = poll(&mut fds, Some(&timeout));
            }
            None => std::thread::sleep(nap.min(Duration::from_millis(10))),
        }
    }
}

/// Reaps every zombie child (PID 1 inherits all orphans). Returns the status of `wanted` if it
/// was among them.
pub(crate) fn reap(wanted: Option<Pid>) -> Option<WaitStatus> {
    let mut found = None;
    loop {
        // `wait` is waitpid(-1): any child. (`waitpid(None)` would be 0: only our own group.)
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) => {
                if Some(pid) == wanted {
                    found = Some(status);
                }
            }
            Err(Errno::INTR) => {}
            Ok(None) | Err(_) => return found,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn sh(id: u32, script: &str, timeout_ms: u64) -> PlannedTest {
        PlannedTest {
            id,
            name: format!("sh{id}"),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("ONLY".into(), "this".into())],
            cwd: "/".into(),
            timeout_ms,
            capture: true,
        }
    }

    /// `run` reaps any child, and a fork copies every descriptor open at that moment, so tests
    /// that start or reap processes must not overlap: each holds this.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Also makes this process the reaper of orphans, as PID 1 is: test processes are
    /// orphaned to it.
    pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
        let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        process::tests::become_reaper();
        guard
    }

    /// A test's output dir in a temp dir of its own, removed when the value is dropped.
    struct TempOut {
        base: std::path::PathBuf,
        out: OutDir,
    }

    impl std::ops::Deref for TempOut {
        type Target = OutDir;
        fn deref(&self) -> &OutDir {
            &self.out
        }
    }

    impl Drop for TempOut {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    fn out() -> TempOut {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("vmtest-init-out-{}-{n}", std::process::id()));
        TempOut { out: OutDir::create_in(&base, 0).unwrap(), base }
    }

    fn control() -> Control {
        Control::start(File::options().write(true).open("/dev/null").unwrap()).unwrap()
    }

    #[test]
    fn captures_output_in_order_exit_code_and_exact_environment() {
        let _serial = serial();
        let script = "echo out; echo err >&2; echo out again; env; pwd; echo last >&2; exit 3";
        let finished = run(&sh(0, script, 30_000), &control(), &out(), None).unwrap();
        assert_eq!(finished.outcome, Outcome::Exited(3));
        let output = String::from_utf8(finished.output).unwrap();
        assert!(output.starts_with("out\nerr\nout again\n"), "{output}");
        assert!(output.contains("ONLY=this\n"), "{output}");
        assert!(!output.contains("HOME="), "{output}");
        assert!(output.ends_with("/\nlast\n"), "{output}");
    }

    #[test]
    fn streams_stdout_and_stderr_apart_when_not_captured() {
        let _serial = serial();
        let frames =
            std::env::temp_dir().join(format!("vmtest-init-frames-{}", std::process::id()));
        let control = Control::start(File::create(&frames).unwrap()).unwrap();
        let mut test = sh(6, "echo out; echo err >&2; echo out again", 30_000);
        test.capture = false;
        let finished = run(&test, &control, &out(), None).unwrap();
        assert_eq!(finished.outcome, Outcome::Exited(0));
        assert_eq!(finished.output, b"");
        control.close(Duration::from_secs(10)).unwrap();
        let bytes = std::fs::read(&frames).unwrap();
        let _ = std::fs::remove_file(&frames);
        let mut reader = crate::protocol::FrameReader::new(&bytes[..]);
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(message) = reader.next_frame::<GuestMessage>().unwrap() {
            match message {
                GuestMessage::Output { id: 6, stream: Stream::Stdout, bytes } => {
                    stdout.extend(bytes)
                }
                GuestMessage::Output { id: 6, stream: Stream::Stderr, bytes } => {
                    stderr.extend(bytes)
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(stdout, b"out\nout again\n");
        assert_eq!(stderr, b"err\n");
    }

    #[test]
    fn a_reason_left_in_the_skip_file_turns_a_clean_exit_into_a_skip() {
        let _serial = serial();
        let script = "echo 'no such feature' > \"$VMTEST_SKIP_FILE\"; exit 0";
        let finished = run(&sh(4, script, 30_000), &control(), &out(), None).unwrap();
        assert_eq!(finished.outcome, Outcome::Skipped("no such feature".into()));
        let script = "echo 'then failed' > \"$VMTEST_SKIP_FILE\"; exit 1";
        let finished = run(&sh(5, script, 30_000), &control(), &out(), None).unwrap();
        assert_eq!(finished.outcome, Outcome::Exited(1));
        let finished = run(&sh(4, "exit 0", 30_000), &control(), &out(), None).unwrap();
        assert_eq!(finished.outcome, Outcome::Exited(0));
    }

    #[test]
    fn kills_the_whole_group_on_timeout() {
        let _serial = serial();
        let started = Instant::now();
        let finished = run(&sh(1, "sleep 100 & sleep 100", 300), &control(), &out(), None).unwrap();
        assert_eq!(finished.outcome, Outcome::TimedOut { after_ms: 300 });
        // Well under the leftovers' 100 s (a busy machine may take seconds to fork and kill).
        assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    }

    #[test]
    fn reports_signals_and_start_failures() {
        let _serial = serial();
        let finished = run(&sh(2, "kill -9 $$", 30_000), &control(), &out(), None).unwrap();
        assert_eq!(finished.outcome, Outcome::Signaled(9));
        let mut test = sh(3, "", 30_000);
        test.program = "/nonexistent/program".into();
        let finished = run(&test, &control(), &out(), None).unwrap();
        assert!(
            matches!(finished.outcome, Outcome::Error(e) if e.contains("/nonexistent/program"))
        );
        let mut test = sh(3, "", 30_000);
        test.cwd = "/nonexistent/dir".into();
        let finished = run(&test, &control(), &out(), None).unwrap();
        assert!(
            matches!(&finished.outcome, Outcome::Error(e)
                if e.contains("working directory /nonexistent/dir") && e.contains("No such file")),
            "{:?}",
            finished.outcome
        );
    }

    #[test]
    fn leftovers_do_not_hold_the_output_open() {
        let _serial = serial();
        let started = Instant::now();
        let finished =
            run(&sh(4, "sleep 100 & echo done", 30_000), &control(), &out(), None).unwrap();
        assert_eq!(finished.outcome, Outcome::Exited(0));
        assert_eq!(finished.output, b"done\n");
        // Not held until the leftover `sleep 100` ends; the margin is for a busy machine.
        assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    }
}
