//! The interactive shell PID 1 offers on the shell port ([`Plan::shell`], `VMTEST_SHELL` on the
//! host): a pseudo-terminal whose master PID 1 relays to and from the port in
//! [`ShellInput`]/[`ShellOutput`] frames, and the guest's `/bin/sh -i` on its slave, a session
//! leader with the terminal as its controlling one, in a test's working directory with its
//! environment. When the shell exits, what is left of its session is killed.
//!
//! [`Plan::shell`]: crate::protocol::Plan::shell

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Pid, Signal};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

use crate::child;
use crate::ports::{self, Control};
use crate::process::{self, Handlers};
use crate::protocol::{
    encode_frame, FrameBuffer, GuestMessage, Outcome, PlannedTest, Reader, ShellInput, ShellOutput,
    ShellWhen, VersionMismatch, WindowSize, MAX_SHELL_FRAME_LEN, SHELL_PORT, TEST_ENV,
};

/// The shell the guest's userland provides (busybox `ash` by default).
const SHELL: &str = "/bin/sh";
/// How long to wait for the shell port to appear (it exists from boot when the host wants it).
const PORT_PATIENCE: Duration = Duration::from_secs(5);
/// How often the relay looks whether the shell has exited.
const TICK: Duration = Duration::from_millis(100);
/// Most typed bytes held for the terminal while the shell does not read them: beyond it the
/// relay stops reading the port (the host waits).
const PENDING_LIMIT: usize = 64 << 10;

/// Whether a shell is offered after a test that ended with `outcome`.
pub(crate) fn wanted_after(when: ShellWhen, outcome: &Outcome) -> bool {
    match when {
        ShellWhen::Never | ShellWhen::Instead => false,
        ShellWhen::Always => true,
        ShellWhen::OnFailure => !matches!(outcome, Outcome::Exited(0) | Outcome::Skipped(_)),
    }
}

/// Announces a shell for `test` on the control port, then runs it on the shell port until it
/// exits; returns how it ended (a shell that could not start is an [`Outcome::Error`]). `why`
/// ends the first line the user sees; `after` is true when `test` ran (the banner then says
/// how to run it again). `Err` means the ports failed.
pub(crate) fn offer(
    control: &Control,
    test: &PlannedTest,
    why: &str,
    after: bool,
) -> Result<Outcome, String> {
    control.send_written(&GuestMessage::Shell { id: test.id })?;
    let port = ports::open_port_read_write(
        Path::new(ports::VIRTIO_PORTS_DIR),
        Path::new("/dev"),
        SHELL_PORT,
        PORT_PATIENCE,
    )?;
    let mut port = Port { file: port, frames: FrameBuffer::new(MAX_SHELL_FRAME_LEN) };
    let (size, term) = loop {
        match port.next()? {
            ShellInput::Start { version, size, term } => {
                if let Err(e) = VersionMismatch::check(Reader::Guest, version) {
                    port.send(&ShellOutput::Failed(e.to_string()))?;
                    return Ok(Outcome::Error(e.to_string()));
                }
                break (size, term);
            }
            _ => continue,
        }
    };
    let started = match Shell::start(test, size, &term) {
        Ok(shell) => shell,
        Err(e) => {
            let message = format!("failed to start {SHELL} in the guest: {e}");
            port.send(&ShellOutput::Failed(message.clone()))?;
            return Ok(Outcome::Error(message));
        }
    };
    port.send(&ShellOutput::Data(banner(test, why, after).into_bytes()))?;
    let outcome = started.relay(&mut port);
    let code = match &outcome {
        Ok(Outcome::Exited(code)) => *code,
        Ok(Outcome::Signaled(signal)) => 128 + signal,
        _ => 1,
    };
    port.send(&ShellOutput::Exited(code))?;
    outcome
}

/// What the user sees first: which test this is and how to run it again.
fn banner(test: &PlannedTest, why: &str, after: bool) -> String {
    let head = format!(
        "vmtest: shell in the guest {why}; `exit` or Ctrl-D leaves it\r\n\
         vmtest: working directory {}\r\n",
        test.cwd
    );
    if !after {
        return head;
    }
    let mut rerun = String::new();
    if let Some((_, name)) = test.env.iter().find(|(name, _)| name == TEST_ENV) {
        rerun.push_str(&format!("{TEST_ENV}={} ", quote(name)));
    }
    rerun.push_str(&quote(&test.program));
    for arg in &test.args {
        rerun.push(' ');
        rerun.push_str(&quote(arg));
    }
    format!("{head}rerun: {rerun}\r\n")
}

/// `word` quoted for a POSIX shell where it needs to be.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%[]".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The guest's end of the shell port.
struct Port {
    file: File,
    frames: FrameBuffer,
}

impl Port {
    fn send(&mut self, frame: &ShellOutput) -> Result<(), String> {
        let bytes =
            encode_frame(frame).map_err(|e| format!("failed to encode a shell frame: {e}"))?;
        self.file.write_all(&bytes).map_err(|e| format!("failed to write the shell port: {e}"))
    }

    /// The next frame, reading (blocking) as long as it takes.
    fn next(&mut self) -> Result<ShellInput, String> {
        loop {
            if let Some(frame) = self.take()? {
                return Ok(frame);
            }
            if !self.fill()? {
                return Err("the host closed the shell port".to_owned());
            }
        }
    }

    /// Reads what the port has; `false` at its end (the host went away).
    fn fill(&mut self) -> Result<bool, String> {
        let mut buf = [0u8; 4096];
        match self.file.read(&mut buf) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.frames.push(&buf[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(format!("failed to read the shell port: {e}")),
        }
    }

    fn take(&mut self) -> Result<Option<ShellInput>, String> {
        self.frames.next_frame().map_err(|e| format!("the host sent a bad shell frame: {e}"))
    }
}

/// A running shell and its terminal's master.
struct Shell {
    pid: Pid,
    master: OwnedFd,
}

impl Shell {
    fn start(test: &PlannedTest, size: WindowSize, term: &str) -> io::Result<Shell> {
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
        rustix::io::fcntl_setfd(&master, rustix::io::FdFlags::CLOEXEC)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let name = rustix::pty::ptsname(&master, Vec::new())?;
        let slave: OwnedFd = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::termios::tcsetwinsize(&master, winsize(size))?;
        let mut command = Command::new(SHELL);
        command
            .arg("-i")
            .env_clear()
            .envs(test.env.iter().map(|(k, v)| (k, v)))
            .env("TERM", if term.is_empty() { "vt100" } else { term })
            .current_dir(&test.cwd)
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        if !test.env.iter().any(|(name, _)| name == "PS1") {
            command.env("PS1", "vmtest:\\w# ");
        }
        // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
        // calls (sigaction, sigprocmask, umask, setrlimit in `reset`; setsid; ioctl).
        unsafe {
            command.pre_exec(|| {
                process::reset(Handlers::None);
                rustix::process::setsid()?;
                // Stdio is in place: fd 0 is the terminal's slave.
                rustix::process::ioctl_tiocsctty(std::io::stdin().as_fd())?;
                Ok(())
            });
        }
        let child = command.spawn()?;
        let pid = Pid::from_raw(child.id() as i32)
            .ok_or_else(|| io::Error::other("the shell has no pid"))?;
        // PID 1 reaps it (`child::reap`), not `Child`.
        drop(child);
        rustix::fs::fcntl_setfl(&master, OFlags::NONBLOCK)?;
        Ok(Shell { pid, master })
    }

    /// Relays between the terminal and the port until the shell exits.
    fn relay(self, port: &mut Port) -> Result<Outcome, String> {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = [0u8; 4096];
        let tick = Timespec::try_from(TICK).unwrap_or(Timespec { tv_sec: 0, tv_nsec: 100_000_000 });
        let status = loop {
            if let Some(status) = child::reap(Some(self.pid)) {
                break status;
            }
            let mut master_flags = PollFlags::IN;
            if !pending.is_empty() {
                master_flags |= PollFlags::OUT;
            }
            let port_flags =
                if pending.len() < PENDING_LIMIT { PollFlags::IN } else { PollFlags::empty() };
            let mut fds =
                [PollFd::new(&self.master, master_flags), PollFd::new(&port.file, port_flags)];
            match poll(&mut fds, Some(&tick)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(format!("failed to poll the shell's terminal: {e}")),
            }
            let (master_ready, port_ready) = (fds[0].revents(), fds[1].revents());
            if master_ready.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                match rustix::io::read(&self.master, &mut buf) {
                    Ok(n) if n > 0 => port.send(&ShellOutput::Data(buf[..n].to_vec()))?,
                    // EIO: no one has the slave open any more; the shell is exiting.
                    Ok(_) | Err(Errno::IO) => std::thread::sleep(Duration::from_millis(10)),
                    Err(_) => {}
                }
            }
            if !pending.is_empty() && master_ready.contains(PollFlags::OUT) {
                if let Ok(n) = rustix::io::write(&self.master, &pending) {
                    pending.drain(..n);
                }
            }
            if port_ready.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                if !port.fill()? {
                    self.end();
                    return Err("the host closed the shell port".to_owned());
                }
                while let Some(frame) = port.take()? {
                    match frame {
                        ShellInput::Data(bytes) => pending.extend_from_slice(&bytes),
                        ShellInput::Resize(size) => {
                            let _ = rustix::termios::tcsetwinsize(&self.master, winsize(size));
                        }
                        ShellInput::Start { .. } => {}
                    }
                }
            }
        };
        // Nothing of its session writes any more: then what the shell wrote last, which the
        // terminal holds (bounded by its buffer).
        self.end();
        while let Ok(n) = rustix::io::read(&self.master, &mut buf) {
            if n == 0 {
                break;
            }
            port.send(&ShellOutput::Data(buf[..n].to_vec()))?;
        }
        Ok(if let Some(code) = status.exit_status() {
            Outcome::Exited(code)
        } else if let Some(signal) = status.terminating_signal() {
            Outcome::Signaled(signal)
        } else {
            Outcome::Error(format!("unexpected wait status {status:?}"))
        })
    }

    /// Kills what is left of the shell's session (background jobs), and the shell if it still
    /// runs.
    fn end(&self) {
        for pid in session_members(self.pid) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
        child::reap(None);
    }
}

/// The processes of session `sid`, from `/proc`.
fn session_members(sid: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read(entry.path().join("stat")).ok()?;
            (stat_session(&stat)? == sid.as_raw_nonzero().get()).then(|| Pid::from_raw(pid))?
        })
        .collect()
}

/// The session id in a `/proc/<pid>/stat` line: the fourth field after the command's `)`.
fn stat_session(stat: &[u8]) -> Option<i32> {
    let after = stat.iter().rposition(|&b| b == b')')?;
    let rest = OsString::from_vec(stat[after + 1..].to_vec()).into_string().ok()?;
    rest.split_whitespace().nth(3)?.parse().ok()
}

fn winsize(size: WindowSize) -> Winsize {
    Winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_follows_failures_or_every_test_as_asked() {
        let failed = [Outcome::Exited(101), Outcome::Signaled(9), Outcome::Error("x".into())];
        let passed = [Outcome::Exited(0), Outcome::Skipped("no BPF".into())];
        for outcome in &failed {
            assert!(wanted_after(ShellWhen::OnFailure, outcome));
            assert!(wanted_after(ShellWhen::Always, outcome));
            assert!(!wanted_after(ShellWhen::Never, outcome));
        }
        assert!(wanted_after(ShellWhen::OnFailure, &Outcome::TimedOut { after_ms: 1 }));
        for outcome in &passed {
            assert!(!wanted_after(ShellWhen::OnFailure, outcome));
            assert!(wanted_after(ShellWhen::Always, outcome));
            assert!(!wanted_after(ShellWhen::Instead, outcome));
        }
    }

    #[test]
    fn the_banner_says_how_to_rerun_the_test() {
        let test = PlannedTest {
            id: 3,
            name: "fails[6.12]".into(),
            program: "/init".into(),
            args: vec![],
            env: vec![(TEST_ENV.into(), "fails".into()), ("A".into(), "it's".into())],
            cwd: "/src/crate".into(),
            timeout_ms: 1,
            capture: true,
        };
        let banner = banner(&test, "after fails[6.12] failed", true);
        assert!(banner.contains("\r\nrerun: VMTEST_TEST=fails /init\r\n"), "{banner}");
        assert!(banner.contains("working directory /src/crate"), "{banner}");
        let plain = PlannedTest {
            program: "/main".into(),
            args: vec!["--exact".into(), "a b".into(), "it's".into()],
            env: vec![],
            ..test
        };
        assert!(banner_of(&plain).contains("rerun: /main --exact 'a b' 'it'\\''s'\r\n"));
    }

    fn banner_of(test: &PlannedTest) -> String {
        banner(test, "", true)
    }

    #[test]
    fn a_shell_instead_of_a_test_has_no_rerun_line() {
        let test = PlannedTest {
            id: 0,
            name: "shell".into(),
            program: "/bin/sh".into(),
            args: vec![],
            env: vec![],
            cwd: "/".into(),
            timeout_ms: 1,
            capture: false,
        };
        assert!(!banner(&test, "(no test runs)", false).contains("rerun"));
    }

    #[test]
    fn reads_the_session_of_a_process() {
        assert_eq!(stat_session(b"42 (a) b) c) S 1 42 17 0 -1"), Some(17));
        assert_eq!(stat_session(b"garbage"), None);
        let own = std::fs::read("/proc/self/stat").unwrap();
        // Through libc: the session id is 0 when the session's leader is outside this PID
        // namespace (a container), which rustix's `Pid` cannot hold.
        // SAFETY: getsid(0) only reads the calling process's session id.
        assert_eq!(stat_session(&own), Some(unsafe { libc::getsid(0) }));
    }
}
