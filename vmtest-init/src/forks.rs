//! The fork server: how a vm_test binary starts each test without executing itself again.
//!
//! Executing the test binary anew is most of a test's cost under TCG: the dynamic loader
//! relocates a large binary and every page it touches faults in again. So PID 1, while it still
//! has a single thread, forks a copy of itself, the server. For each test PID 1 sends the server
//! the test's name, environment and working directory with the write ends of its output pipes;
//! the server forks the test process through an intermediate (`process.rs`), so that it is
//! orphaned to PID 1, which then waits for it, kills its process group and reaps it exactly as
//! it does an executed one. The test process resets its process state, makes its stdio,
//! environment and working directory as the exec path would, and runs the test in place.
//!
//! Only a test whose program is PID 1's own binary, run without arguments, is started this way.
//! Tests that collect LLVM profiles are executed: the profile runtime reads
//! `LLVM_PROFILE_FILE` when the process starts, which for a fork is the server's start.

use std::cell::Cell;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::process::Pid;
use serde::{Deserialize, Serialize};

use crate::console;
use crate::process::{self, Forked, Handlers, Readers, Stdio, TestPids};
use crate::protocol::{PlannedTest, PROFILE_ENV, TEST_ENV};

/// Runs the named test in the calling process and exits; never returns.
pub type RunTest = fn(&str) -> !;

/// How long PID 1 waits for the server to start a test.
const REPLY_PATIENCE: Duration = Duration::from_secs(30);
/// Largest request: a test's environment and working directory.
const REQUEST_LIMIT: usize = 1 << 20;

/// PID 1's handle on the server.
pub(crate) struct ForkServer {
    socket: OwnedFd,
    pid: Pid,
    /// PID 1's own binary: the only program the server can start.
    program: PathBuf,
    /// Set when a request failed: the server's answers can no longer be trusted to match
    /// requests, so later tests are executed.
    broken: Cell<bool>,
}

/// What the server needs to start one test.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    /// The test's name, as the exec path passes it in [`TEST_ENV`].
    test: String,
    /// The whole environment of the test process.
    env: Vec<(String, String)>,
    cwd: String,
}

/// A started test process: a child of PID 1 in a process group of its own making, and the read
/// ends of its output.
pub(crate) struct Started {
    pub(crate) pids: TestPids,
    pub(crate) output: Readers,
}

impl ForkServer {
    /// Forks the server from the calling process, which must have a single thread (checked:
    /// otherwise the fork could inherit locks that threads now gone hold).
    pub(crate) fn start(run: RunTest) -> Result<ForkServer, String> {
        let threads = std::fs::read_dir("/proc/self/task")
            .map_err(|e| format!("failed to count threads in /proc/self/task: {e}"))?
            .count();
        if threads != 1 {
            return Err(format!("PID 1 already has {threads} threads"));
        }
        let program = std::env::current_exe()
            .map_err(|e| format!("failed to find PID 1's own binary: {e}"))?;
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| format!("failed to create the fork server's socket: {e}"))?;
        rustix::net::sockopt::set_socket_timeout(
            &ours,
            rustix::net::sockopt::Timeout::Recv,
            Some(REPLY_PATIENCE),
        )
        .map_err(|e| format!("failed to set the fork server's socket timeout: {e}"))?;
        // SAFETY: the process has a single thread (checked above), so the child starts in a
        // consistent state; it only runs `serve`, which never returns.
        match unsafe { libc::fork() } {
            -1 => Err(format!("failed to fork the fork server: {}", io::Error::last_os_error())),
            0 => {
                drop(ours);
                serve(theirs, run)
            }
            pid => Ok(ForkServer {
                socket: ours,
                pid: Pid::from_raw(pid).ok_or("fork returned pid 0 to the parent")?,
                program,
                broken: Cell::new(false),
            }),
        }
    }

    /// Whether the server can start `test`: PID 1's own binary, no arguments, no profiles, and
    /// no failed request before.
    pub(crate) fn serves(&self, test: &PlannedTest) -> bool {
        !self.broken.get()
            && std::path::Path::new(&test.program) == self.program
            && test.args.is_empty()
            && test.env.iter().any(|(name, _)| name == TEST_ENV)
            && !test.env.iter().any(|(name, _)| name == PROFILE_ENV)
    }

    /// Starts `test` with exactly the environment `env`.
    pub(crate) fn spawn(
        &self,
        test: &PlannedTest,
        env: Vec<(String, String)>,
    ) -> Result<Started, String> {
        let started = self.request(test, env);
        if started.is_err() {
            self.broken.set(true);
        }
        started
    }

    fn request(&self, test: &PlannedTest, env: Vec<(String, String)>) -> Result<Started, String> {
        let name = env
            .iter()
            .find(|(name, _)| name == TEST_ENV)
            .map(|(_, value)| value.clone())
            .ok_or_else(|| format!("{TEST_ENV} is not set for {}", test.name))?;
        let request = Request { test: name, env, cwd: test.cwd.clone() };
        let bytes = postcard::to_allocvec(&request)
            .map_err(|e| format!("failed to encode the fork request: {e}"))?;
        let stdio = Stdio::new(test.capture)
            .map_err(|e| format!("failed to create the output pipes: {e}"))?;
        let fds = stdio.writers().each_ref().map(AsFd::as_fd);
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        rustix::net::sendmsg(
            &self.socket,
            &[IoSlice::new(&bytes)],
            &mut control,
            SendFlags::empty(),
        )
        .map_err(|e| format!("failed to send the fork request: {e}"))?;
        let output = stdio.into_readers();
        let mut reply = [0u8; 8];
        let n = rustix::net::recv(&self.socket, &mut reply, RecvFlags::empty())
            .map_err(|e| format!("no answer from the fork server: {e}"))?
            .0;
        let (code, group) = match n {
            8 => (
                i32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]]),
                i32::from_le_bytes([reply[4], reply[5], reply[6], reply[7]]),
            ),
            0 => return Err("the fork server is gone".to_owned()),
            n => return Err(format!("the fork server answered {n} bytes, not 8")),
        };
        match (Pid::from_raw(code), Pid::from_raw(group)) {
            (Some(pid), Some(group_id)) if code > 0 && group > 0 => {
                Ok(Started { pids: TestPids { pid, group: group_id }, output })
            }
            _ => Err(format!(
                "the fork server failed to fork: {}",
                io::Error::from_raw_os_error(code.saturating_neg())
            )),
        }
    }
}

impl Drop for ForkServer {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(self.pid, rustix::process::Signal::KILL);
    }
}

/// The server's loop: one request, one test process, until PID 1 closes the socket.
fn serve(socket: OwnedFd, run: RunTest) -> ! {
    // PID 1's hook powers the VM off; a test process panics the ordinary way.
    drop(std::panic::take_hook());
    let mut buf = vec![0u8; REQUEST_LIMIT];
    loop {
        let (request, fds) = match receive(&socket, &mut buf) {
            Ok(Some(received)) => received,
            Ok(None) => quit(0),
            Err(e) => {
                console::say(format_args!("fork server: {e}"));
                quit(1)
            }
        };
        let [pid, group] = start_test(&socket, request, fds, run);
        let mut reply = [0u8; 8];
        reply[..4].copy_from_slice(&pid.to_le_bytes());
        reply[4..].copy_from_slice(&group.to_le_bytes());
        if let Err(e) = rustix::net::send(&socket, &reply, SendFlags::empty()) {
            console::say(format_args!("fork server: failed to answer: {e}"));
            quit(1)
        }
    }
}

/// Ends the server without the exit handlers of PID 1's binary (an instrumented binary would
/// write a profile of the server).
fn quit(code: i32) -> ! {
    // SAFETY: `_exit` ends the process at once; no Rust state outlives it.
    unsafe { libc::_exit(code) }
}

/// Reads one request and the two descriptors that come with it (the test's stdout and stderr);
/// `None` when PID 1 is gone.
fn receive(socket: &OwnedFd, buf: &mut [u8]) -> Result<Option<(Request, [OwnedFd; 2])>, String> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| format!("failed to receive a request: {e}"))?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    if got.flags.contains(rustix::net::ReturnFlags::TRUNC) || got.bytes > buf.len() {
        return Err(format!("a request larger than {REQUEST_LIMIT} bytes"));
    }
    let fds: [OwnedFd; 2] = fds.try_into().map_err(|fds: Vec<OwnedFd>| {
        format!("a request came with {} file descriptors, not 2", fds.len())
    })?;
    let request = postcard::from_bytes(&buf[..got.bytes])
        .map_err(|e| format!("failed to decode a request: {e}"))?;
    Ok(Some((request, fds)))
}

/// Forks the test process (see `process.rs`). Returns its pid and process group, or minus the
/// errno of the failed fork and 0.
fn start_test(socket: &OwnedFd, request: Request, fds: [OwnedFd; 2], run: RunTest) -> [i32; 2] {
    match process::fork_test() {
        Ok(Forked::Test) => become_test(socket, request, fds, run),
        Ok(Forked::Parent(pids)) => {
            drop(fds);
            [pids.pid.as_raw_nonzero().get(), pids.group.as_raw_nonzero().get()]
        }
        Err(e) => [-e.raw_os_error().unwrap_or(libc::EIO), 0],
    }
}

/// Turns the freshly forked process into the test process and runs the test.
fn become_test(socket: &OwnedFd, request: Request, fds: [OwnedFd; 2], run: RunTest) -> ! {
    let prepared = prepare(&request, &fds);
    // The server's socket and the pipe ends are not the test's to hold.
    drop(fds);
    // SAFETY: closes this process's copy of the server's socket. Nothing here uses it
    // afterwards, and its `OwnedFd` (owned by `serve`'s frame) is never dropped in this
    // process, which ends in `run` or `exit` without unwinding back there.
    unsafe {
        libc::close(socket.as_raw_fd());
    }
    if let Err(e) = prepared {
        // stderr is the test's pipe if `prepare` got that far, else the console.
        eprintln!("vmtest-init: failed to start test `{}`: {e}", request.test);
        std::process::exit(127);
    }
    let stale: Vec<OsString> = std::env::vars_os().map(|(name, _)| name).collect();
    for name in stale {
        std::env::remove_var(name);
    }
    for (name, value) in &request.env {
        std::env::set_var(name, value);
    }
    run(&request.test)
}

/// Process state, stdio and working directory of the test process, as the exec path sets them.
fn prepare(request: &Request, fds: &[OwnedFd; 2]) -> io::Result<()> {
    // The server is single-threaded and runs this binary: Rust's runtime signal handlers stay.
    process::reset(Handlers::KeepRuntime);
    let null = File::open("/dev/null")?;
    process::install_stdio(&null, fds).map_err(io::Error::from_raw_os_error)?;
    std::env::set_current_dir(&request.cwd)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn never(_: &str) -> ! {
        unreachable!("no test runs here")
    }

    #[test]
    fn refuses_to_fork_a_process_with_threads() {
        // libtest runs this test on a thread of its own: the process has at least two.
        let error = ForkServer::start(never).err().expect("a threaded process forked");
        assert!(error.contains("threads"), "{error}");
    }

    #[test]
    fn a_failed_request_retires_the_server() {
        // Serial: other tests reap any child (the stand-in) and fork copies of `theirs`.
        let _serial = crate::child::tests::serial();
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        // Bounded, as a started server's socket is: a stray copy of `theirs` fails, never hangs.
        rustix::net::sockopt::set_socket_timeout(
            &ours,
            rustix::net::sockopt::Timeout::Recv,
            Some(REPLY_PATIENCE),
        )
        .unwrap();
        // A stand-in server process for `Drop` to kill.
        let mut stand_in = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let server = ForkServer {
            socket: ours,
            pid: Pid::from_raw(stand_in.id() as i32).unwrap(),
            program: "/init".into(),
            broken: Cell::new(false),
        };
        let test = PlannedTest {
            id: 0,
            name: "t".into(),
            program: "/init".into(),
            args: vec![],
            env: vec![(TEST_ENV.into(), "t".into())],
            cwd: "/".into(),
            timeout_ms: 1000,
            capture: true,
        };
        assert!(server.serves(&test));
        drop(theirs);
        let error =
            server.spawn(&test, test.env.clone()).err().expect("a gone server started a test");
        // Sending or the answer fails, depending on when the kernel notices the closed peer.
        assert!(error.contains("fork request") || error.contains("fork server"), "{error}");
        assert!(!server.serves(&test), "a server that failed once is used again");
        drop(server);
        assert!(stand_in.wait().unwrap().signal().is_some(), "the server process was not killed");
    }

    #[test]
    fn rejects_requests_without_their_two_pipes() {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let request = Request { test: "t".into(), env: vec![], cwd: "/".into() };
        let bytes = postcard::to_allocvec(&request).unwrap();
        rustix::net::send(&a, &bytes, SendFlags::empty()).unwrap();
        let mut buf = vec![0u8; 4096];
        let error = receive(&b, &mut buf).expect_err("accepted a request without pipes");
        assert!(error.contains("0 file descriptors"), "{error}");

        rustix::net::send(&a, &vec![7u8; 8192], SendFlags::empty()).unwrap();
        let error = receive(&b, &mut buf).expect_err("accepted a truncated request");
        assert!(error.contains("larger than"), "{error}");

        drop(a);
        assert!(receive(&b, &mut buf).unwrap().is_none(), "a closed socket is the end");
    }
}
