//! The host's end of the guest's interactive shell (`VMTEST_SHELL`, `cargo vmtest shell`):
//! when the guest offers one ([`from_env`]), and the relay between the user's terminal and the
//! shell port ([`relay`]). While a shell runs the terminal is in raw mode (every key, Ctrl-C
//! included, goes to the guest), restored on every way out: the shell's end, an error, a panic
//! (the guard's drop), a cleanup signal (`process::kill_everything`). One shell at a time per
//! process: [`terminal`] is held while it runs, and the main thread's printing waits for it.

use std::io::{self, IsTerminal, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::termios::{OptionalActions, Termios};
use vmtest_init::protocol::{
    write_frame, FrameReader, ShellInput, ShellOutput, ShellWhen, WindowSize, PROTOCOL_VERSION,
};

use crate::Error;

/// Environment variable: when the guest offers a shell.
pub(crate) const SHELL_ENV: &str = "VMTEST_SHELL";
/// How often the relay looks at the terminal's size and whether the shell ended.
const TICK: Duration = Duration::from_millis(100);

/// The terminal, held by a running shell and by whoever prints the run.
static TERMINAL: Mutex<()> = Mutex::new(());
/// The terminal's settings before raw mode, while a shell runs.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// [`SHELL_ENV`] as the run uses it: a bad value is an error naming the allowed ones; a shell
/// without a terminal (stdin and stdout not both a tty, as under CI) is ignored, with one
/// warning.
pub(crate) fn from_env() -> Result<ShellWhen, Error> {
    let value = match std::env::var(SHELL_ENV) {
        Ok(value) => value,
        Err(std::env::VarError::NotPresent) => return Ok(ShellWhen::Never),
        Err(std::env::VarError::NotUnicode(value)) => {
            return Err(Error::Env(parse(&value.to_string_lossy()).unwrap_err()))
        }
    };
    let when = parse(&value).map_err(Error::Env)?;
    if when != ShellWhen::Never && !is_terminal() {
        crate::notice::warn(&format!(
            "{SHELL_ENV}={value} is ignored: stdin and stdout are not a terminal"
        ));
        return Ok(ShellWhen::Never);
    }
    Ok(when)
}

/// A value of [`SHELL_ENV`]: `never` (or empty), `on-failure`, `always`.
pub(crate) fn parse(value: &str) -> Result<ShellWhen, String> {
    match value {
        "" | "never" => Ok(ShellWhen::Never),
        "on-failure" => Ok(ShellWhen::OnFailure),
        "always" => Ok(ShellWhen::Always),
        _ => Err(format!("{SHELL_ENV}={value:?} is not one of never, on-failure, always")),
    }
}

/// Whether stdin and stdout are both a terminal, as a shell needs.
pub(crate) fn is_terminal() -> bool {
    io::stdin().is_terminal() && io::stdout().is_terminal()
}

/// The terminal: held while a shell runs; the run's printing takes it so that nothing is
/// printed into a shell.
pub(crate) fn terminal() -> MutexGuard<'static, ()> {
    TERMINAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Puts the terminal back as it was before a shell, if one runs (the cleanup signal's path).
pub(crate) fn restore_terminal() {
    if let Some(saved) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = rustix::termios::tcsetattr(io::stdin(), OptionalActions::Now, &saved);
    }
}

/// The terminal in raw mode while it lives.
struct RawMode;

impl RawMode {
    fn enter() -> io::Result<RawMode> {
        let stdin = io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        let guard = RawMode;
        rustix::termios::tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        Ok(guard)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// The size of the terminal on stdout (80x24 when it has none).
fn window_size() -> WindowSize {
    match rustix::termios::tcgetwinsize(io::stdout()) {
        Ok(size) if size.ws_row > 0 && size.ws_col > 0 => {
            WindowSize { rows: size.ws_row, cols: size.ws_col }
        }
        _ => WindowSize { rows: 24, cols: 80 },
    }
}

/// Runs the shell the guest offers on `port` on this process's terminal until it exits (or the
/// guest says it could not start one, which it also reports on the control port). Waits for a
/// shell of another VM to end first. `Err`: the port failed.
pub(crate) fn relay(port: &UnixStream) -> Result<(), String> {
    let _terminal = terminal();
    let mut writer =
        port.try_clone().map_err(|e| format!("failed to clone the shell port: {e}"))?;
    let reader = port.try_clone().map_err(|e| format!("failed to clone the shell port: {e}"))?;
    let term = std::env::var("TERM").unwrap_or_default();
    let size = window_size();
    let start = ShellInput::Start { version: PROTOCOL_VERSION, size, term };
    write_frame(&mut writer, &start).map_err(|e| format!("failed to start the shell: {e}"))?;
    let raw =
        RawMode::enter().map_err(|e| format!("failed to put the terminal in raw mode: {e}"))?;

    let input = Input::start(writer, size)?;
    let mut frames = FrameReader::new(io::BufReader::new(reader));
    let mut stdout = io::stdout();
    let ended = loop {
        match frames.next_frame::<ShellOutput>() {
            Ok(Some(ShellOutput::Data(bytes))) => {
                let _ = stdout.write_all(&bytes).and_then(|()| stdout.flush());
            }
            Ok(Some(ShellOutput::Exited(_) | ShellOutput::Failed(_))) => break Ok(()),
            Ok(None) => break Err("the guest closed the shell port".to_owned()),
            Err(e) => break Err(format!("the guest sent a bad shell frame: {e}")),
        }
    };
    drop(input);
    drop(raw);
    ended
}

/// The thread that sends what is typed, and the window's new sizes, to the guest; stopped and
/// joined on drop (also when the relay unwinds), so that it never reads the terminal after
/// the shell.
struct Input {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Input {
    fn start(mut writer: UnixStream, mut size: WindowSize) -> Result<Input, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("vmtest-shell-input".into())
            .spawn(move || -> io::Result<()> {
                let stdin = io::stdin();
                let tick = Timespec::try_from(TICK).unwrap_or(Timespec { tv_sec: 0, tv_nsec: 0 });
                let mut buf = [0u8; 4096];
                let mut open = true;
                while !stopped.load(Ordering::Relaxed) {
                    let now = window_size();
                    if now != size {
                        size = now;
                        write_frame(&mut writer, &ShellInput::Resize(size))
                            .map_err(io::Error::other)?;
                    }
                    if !open {
                        std::thread::sleep(TICK);
                        continue;
                    }
                    let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
                    if poll(&mut fds, Some(&tick)).unwrap_or(0) == 0 {
                        continue;
                    }
                    match rustix::io::read(stdin.as_fd(), &mut buf) {
                        // The terminal is gone; the shell goes on until the guest ends it.
                        Ok(0) => open = false,
                        Ok(n) => write_frame(&mut writer, &ShellInput::Data(buf[..n].to_vec()))
                            .map_err(io::Error::other)?,
                        Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                        Err(_) => open = false,
                    }
                }
                Ok(())
            })
            .map_err(|e| format!("failed to start the shell's input thread: {e}"))?;
        Ok(Input { stop, thread: Some(thread) })
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_values() {
        assert_eq!(parse(""), Ok(ShellWhen::Never));
        assert_eq!(parse("never"), Ok(ShellWhen::Never));
        assert_eq!(parse("on-failure"), Ok(ShellWhen::OnFailure));
        assert_eq!(parse("always"), Ok(ShellWhen::Always));
        assert_eq!(
            parse("yes").unwrap_err(),
            "VMTEST_SHELL=\"yes\" is not one of never, on-failure, always"
        );
        // `instead` is `cargo vmtest shell`'s, not a value of the variable.
        assert!(parse("instead").is_err());
    }
}
