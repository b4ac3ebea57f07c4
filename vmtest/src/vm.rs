//! One VM boot: start QEMU, read the kernel console and the control port with deadlines, and
//! hand each guest message to the caller.
//!
//! The console and the control port each have one reader thread; this module's loop only
//! receives from channels with timeouts, so a wedged guest can never block the host.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmtest_init::protocol::{FrameError, FrameReader, GuestMessage, CONTROL_PORT, PROTOCOL_VERSION};

use crate::accel::Accel;
use crate::arch::Arch;
use crate::process::QemuProcess;
use crate::qemu::{profile, QemuCommand, SocketPort};
use crate::Error;

/// Bytes of kernel console kept in memory for failure messages.
const CONSOLE_TAIL_BYTES: usize = 16 * 1024;

/// How a VM should be booted.
#[derive(Clone, Debug)]
pub(crate) struct VmSpec {
    pub arch: Arch,
    pub accel: Accel,
    pub kernel: PathBuf,
    pub memory_mib: u64,
    pub cpus: u32,
    pub cmdline: Vec<String>,
    /// Time from QEMU's start to the guest's `Hello`.
    pub boot_timeout: Duration,
}

/// What the caller decides after each guest message: how long to wait for the next one.
pub(crate) type NextDeadline = Duration;

/// How a VM ended.
#[derive(Debug)]
pub(crate) struct VmEnd {
    /// `None` when the guest sent `Done` and QEMU exited; else what went wrong.
    pub problem: Option<String>,
    /// The last lines of the kernel console.
    pub console_tail: String,
}

/// Boots one VM from `initrd` (already written into `workdir`) and calls `on_message` for each
/// message after `Hello`; `on_message` returns how long to wait for the next message.
/// `console_log` receives the complete kernel console when the VM is gone.
pub(crate) fn run(
    spec: &VmSpec,
    workdir: &Path,
    initrd: &Path,
    console_log: &Path,
    mut on_message: impl FnMut(GuestMessage) -> NextDeadline,
) -> Result<VmEnd, Error> {
    let qemu_binary = find_qemu(spec.arch)?;
    let socket = workdir.join("control.sock");
    let listener = UnixListener::bind(&socket)
        .map_err(|e| Error::io(format!("failed to listen on {}", socket.display()), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("failed to make the control socket non-blocking", e))?;

    let qemu = QemuCommand {
        arch: spec.arch,
        accel: spec.accel,
        kernel: spec.kernel.clone(),
        initrd: initrd.to_owned(),
        memory_mib: spec.memory_mib,
        cpus: spec.cpus,
        cmdline: spec.cmdline.clone(),
        ports: vec![SocketPort { name: CONTROL_PORT.to_owned(), socket: socket.clone() }],
    };
    let mut command = Command::new(&qemu_binary);
    command.args(qemu.args()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut process = QemuProcess::spawn(command, workdir.to_owned())
        .map_err(|e| Error::io(format!("failed to start {}", qemu_binary.display()), e))?;

    let console_path = workdir.join("console.log");
    let console = ConsoleReader::start(process.child_mut().stdout.take(), &console_path)?;
    let qemu_stderr = collect(process.child_mut().stderr.take());

    let started = Instant::now();
    let result = drive(spec, &listener, &mut process, started, &mut on_message);
    let status = match &result {
        Ok(()) => process.wait_or_kill(Duration::from_secs(10)),
        Err(_) => process.kill(),
    };
    let stderr = qemu_stderr.join().unwrap_or_default();
    if let Some(parent) = console_log.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    copy_atomically(&console_path, console_log)?;
    let console_tail = console.tail();

    let problem = match result {
        Ok(()) => None,
        Err(problem) => {
            let mut text = problem;
            if let Ok(status) = status {
                if !status.success() && status.code().is_some() {
                    text.push_str(&format!(" (QEMU {status})"));
                }
            }
            let stderr = String::from_utf8_lossy(&stderr);
            let stderr = stderr.trim();
            if !stderr.is_empty() {
                text.push_str(&format!("\nQEMU said: {stderr}"));
            }
            Some(text)
        }
    };
    Ok(VmEnd { problem, console_tail })
}

/// The message loop. `Err` carries a description of what went wrong.
fn drive(
    spec: &VmSpec,
    listener: &UnixListener,
    process: &mut QemuProcess,
    started: Instant,
    on_message: &mut impl FnMut(GuestMessage) -> NextDeadline,
) -> Result<(), String> {
    let boot_deadline = started + spec.boot_timeout;
    let stream = accept_until(listener, process, started + Duration::from_secs(30))?;
    let messages = spawn_frame_reader(stream);

    let mut deadline = boot_deadline;
    let mut greeted = false;
    loop {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let message = match messages.recv_timeout(timeout) {
            Ok(Ok(message)) => message,
            Ok(Err(e)) => return Err(format!("the guest sent a malformed message: {e}")),
            Err(RecvTimeoutError::Timeout) if !greeted => {
                return Err(format!(
                    "the guest did not start the harness within {:.0} s of boot \
                     (wrong console, a missing virtio driver, or a kernel for another architecture?)",
                    spec.boot_timeout.as_secs_f64()
                ))
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err("the guest stopped answering (timed out waiting for it)".to_owned())
            }
            Err(RecvTimeoutError::Disconnected) if !greeted => {
                return Err("the VM stopped before the harness started in the guest".to_owned())
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err("the VM stopped before the guest reported all tests".to_owned())
            }
        };
        match message {
            GuestMessage::Hello { version, .. } if version != PROTOCOL_VERSION => {
                return Err(format!(
                    "the guest speaks protocol version {version}, the host {PROTOCOL_VERSION}"
                ));
            }
            GuestMessage::Hello { .. } if !greeted => {
                greeted = true;
                deadline = Instant::now() + Duration::from_secs(30);
            }
            _ if !greeted => return Err("the guest did not start with a greeting".to_owned()),
            GuestMessage::Done => return Ok(()),
            GuestMessage::Fatal(message) => return Err(format!("the guest failed: {message}")),
            other => deadline = Instant::now() + on_message(other),
        }
    }
}

/// Waits for QEMU to connect to the control socket.
fn accept_until(
    listener: &UnixListener,
    process: &mut QemuProcess,
    deadline: Instant,
) -> Result<UnixStream, String> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .map_err(|e| format!("failed to configure the control socket: {e}"))?;
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("failed to accept QEMU's control connection: {e}")),
        }
        if let Ok(Some(status)) = process.try_wait() {
            return Err(format!("QEMU exited at start-up ({status})"));
        }
        if Instant::now() >= deadline {
            return Err("QEMU did not connect to the control socket".to_owned());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn spawn_frame_reader(stream: UnixStream) -> mpsc::Receiver<Result<GuestMessage, FrameError>> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = FrameReader::new(io::BufReader::with_capacity(1 << 20, stream));
        loop {
            match reader.next_frame::<GuestMessage>() {
                Ok(Some(message)) => {
                    if sender.send(Ok(message)).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = sender.send(Err(e));
                    return;
                }
            }
        }
    });
    receiver
}

/// Copies QEMU's stdout (the kernel console) into a log file and keeps its tail.
struct ConsoleReader {
    thread: Option<std::thread::JoinHandle<()>>,
    tail: Arc<Mutex<VecDeque<u8>>>,
}

impl ConsoleReader {
    fn start(stdout: Option<impl Read + Send + 'static>, path: &Path) -> Result<Self, Error> {
        let file = File::create(path)
            .map_err(|e| Error::io(format!("failed to create {}", path.display()), e))?;
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(CONSOLE_TAIL_BYTES)));
        let thread = stdout.map(|mut stdout| {
            let tail = Arc::clone(&tail);
            std::thread::spawn(move || {
                let mut file = BufWriter::new(file);
                let mut buf = [0u8; 8192];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = file.write_all(&buf[..n]);
                    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                    tail.extend(&buf[..n]);
                    let excess = tail.len().saturating_sub(CONSOLE_TAIL_BYTES);
                    tail.drain(..excess);
                }
                let _ = file.flush();
            })
        });
        Ok(ConsoleReader { thread, tail })
    }

    /// Waits for the console to reach end of file (QEMU has exited) and returns its last lines.
    fn tail(mut self) -> String {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: Vec<u8> = tail.iter().copied().collect();
        last_lines(&String::from_utf8_lossy(&bytes), 100)
    }
}

/// The last `n` lines of `text`, without carriage returns.
pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn collect(stream: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(stream) = stream {
            let _ = stream.take(64 * 1024).read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Copies `from` to `to` through a temp file in `to`'s directory, so `to` is never half-written.
pub(crate) fn copy_atomically(from: &Path, to: &Path) -> Result<(), Error> {
    let tmp = to.with_extension("partial");
    std::fs::copy(from, &tmp)
        .and_then(|_| std::fs::rename(&tmp, to))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("failed to save {}", to.display()), e)
        })
}

/// Finds the QEMU binary for `arch` on `PATH`.
pub(crate) fn find_qemu(arch: Arch) -> Result<PathBuf, Error> {
    find_qemu_in(arch, &std::env::var_os("PATH").unwrap_or_default())
}

/// Finds the QEMU binary for `arch` in the directories of `path` (a `PATH` value).
fn find_qemu_in(arch: Arch, path: &std::ffi::OsStr) -> Result<PathBuf, Error> {
    let profile = profile(arch);
    std::env::split_paths(path)
        .map(|dir| dir.join(profile.binary))
        .find(|candidate| candidate.is_file())
        .ok_or(Error::QemuMissing { binary: profile.binary, package: profile.package })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_qemu_for_arm64_names_the_package() {
        let message = find_qemu_in(Arch::Aarch64, std::ffi::OsStr::new("/nonexistent")).unwrap_err().to_string();
        assert!(message.contains("`qemu-system-aarch64`"), "{message}");
        assert!(message.contains("apt-get install -y --no-install-recommends qemu-system-arm"), "{message}");
    }

    #[test]
    fn keeps_last_lines() {
        assert_eq!(last_lines("a\r\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
    }
}
