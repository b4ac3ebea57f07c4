//! One VM boot: start QEMU, read the kernel console and the control port with deadlines, and
//! hand each guest message to the caller.
//!
//! The console and the control port each have one reader thread; this module's loop only
//! receives from channels with timeouts, so a wedged guest can never block the host. The
//! modules port has a thread of its own that answers the guest's `modprobe` ([`modserver`]).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmtest_init::protocol::{
    FrameError, FrameReader, GuestMessage, Reader, VersionMismatch, CONTROL_PORT, HOST_PORT,
    MODULES_PORT, PROTOCOL_VERSION, SHELL_PORT,
};

use crate::arch::Arch;
use crate::kernel::ModuleProvider;
use crate::vm::accel::Accel;
use crate::vm::modserver;
use crate::vm::process::QemuProcess;
use crate::vm::qemu::{profile, DebugArgs, QemuCommand, SnapshotArgs, SocketPort};
use crate::vm::qmp::Qmp;
use crate::vm::snapshot;
use crate::vm::warm::{self, Start, Warm, WarmEnd, WarmVm};
use crate::Error;

/// Bytes of kernel console kept in memory for failure messages.
const CONSOLE_TAIL_BYTES: usize = 16 * 1024;
/// Environment variable: the most bytes of kernel console kept in a VM's console log.
pub(crate) const CONSOLE_LIMIT_ENV: &str = "VMTEST_CONSOLE_LIMIT";
/// Size of a console log unless [`CONSOLE_LIMIT_ENV`] says otherwise.
const DEFAULT_CONSOLE_LIMIT: u64 = 8 << 20;
/// Guest messages read ahead of the message loop; the reader waits (and so does the guest)
/// while they are queued, so the host holds at most this many frames per VM.
const FRAME_QUEUE: usize = 8;
/// What QEMU prints when KVM cannot run the guest (and then hangs).
const KVM_INTERNAL_ERROR: &[u8] = b"KVM internal error";
/// How long a QEMU whose guest went silent may take to exit by itself before it is killed.
const EXIT_GRACE: Duration = Duration::from_millis(200);
/// How long a wait on a guest a debugger may hold (`VMTEST_GDB`) may last: in effect no
/// deadline, but an instant that can still be computed.
pub(crate) const SUSPENDED: Duration = Duration::from_secs(365 * 24 * 3600);
/// How often the boot wait looks for [`KVM_INTERNAL_ERROR`].
const KVM_ERROR_POLL: Duration = Duration::from_millis(100);

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
    /// Most bytes of kernel console kept in the console log (see [`CappedLog`]).
    pub console_limit: u64,
    /// Answers the guest's `modprobe` with the booted kernel's modules.
    pub modules: Arc<ModuleProvider>,
    /// Start from the configuration's snapshot (or boot and save one); the initramfs is then
    /// the base image, and the run's files and plan follow over the host port.
    pub warm: Option<Warm>,
    /// The guest may offer an interactive shell (its plan says when): QEMU gets the shell
    /// port, and the user's terminal is handed to the guest while the shell runs.
    pub shell: bool,
    /// What a debugger attaches to (nothing by default). With a kernel stub the guest may be
    /// stopped at any time, so the host waits for it without a deadline once it greeted.
    pub debug: DebugArgs,
}

/// What the caller decides after each guest message: how long to wait for the next one.
pub(crate) type NextDeadline = Duration;

/// How a VM ended.
#[derive(Debug)]
pub(crate) struct VmEnd {
    /// `None` when the guest sent `Done` (QEMU is then stopped); else what went wrong.
    pub problem: Option<String>,
    /// The VM ran under KVM and KVM failed before the guest started (QEMU said so).
    pub kvm_failed: bool,
    /// The last lines of the kernel console.
    pub console_tail: String,
    /// Lines for the user about the VM's snapshot: one that could not be used, or saved.
    pub warnings: Vec<String>,
}

/// Boots one VM from `initrd` (already written into `workdir`) and calls `on_message` for each
/// message after `Hello`; `on_message` returns how long to wait for the next message.
/// `console_log` receives the complete kernel console when the VM is gone.
///
/// A warm VM whose snapshot fails before its guest greets the host (the snapshot was removed)
/// boots again cold and saves a new one, with a warning; `on_message` has seen nothing then.
pub(crate) fn run(
    spec: &VmSpec,
    workdir: &Path,
    initrd: &Path,
    console_log: &Path,
    mut on_message: impl FnMut(GuestMessage) -> NextDeadline,
) -> Result<VmEnd, Error> {
    let (end, failed_snapshot) = run_once(spec, workdir, initrd, console_log, &mut on_message)?;
    let (Some(snapshot), Some(problem)) = (failed_snapshot, &end.problem) else { return Ok(end) };
    let mut warnings = end.warnings;
    warnings.push(format!(
        "the VM started from the snapshot {} failed before its guest started ({}); the \
         snapshot was removed, and the VM boots cold",
        snapshot.display(),
        problem.lines().next().unwrap_or_default()
    ));
    let mut cold = spec.clone();
    if let Some(warm) = &mut cold.warm {
        warm.refresh = true;
    }
    for socket in ["control.sock", "modules.sock", "host.sock", "qmp.sock", "shell.sock"] {
        let _ = std::fs::remove_file(workdir.join(socket));
    }
    let (mut end, _) = run_once(&cold, workdir, initrd, console_log, &mut on_message)?;
    warnings.append(&mut end.warnings);
    end.warnings = warnings;
    Ok(end)
}

/// [`run`] without the second try; also says which snapshot failed before the guest greeted.
fn run_once(
    spec: &VmSpec,
    workdir: &Path,
    initrd: &Path,
    console_log: &Path,
    mut on_message: impl FnMut(GuestMessage) -> NextDeadline,
) -> Result<(VmEnd, Option<PathBuf>), Error> {
    let qemu_binary = find_qemu(spec.arch)?;
    let ports = ports(workdir, spec.warm.is_some(), spec.shell);
    let socket_of = |name: &str| ports.iter().find(|p| p.name == name).map(|p| p.socket.clone());
    let listener = listen(&ports[0].socket)?;
    let modules_listener = listen(&ports[1].socket)?;
    let mut snapshot_args = SnapshotArgs::default();
    let mut warm_listeners = None;
    if let Some(host_socket) = socket_of(HOST_PORT) {
        let qmp_socket = workdir.join("qmp.sock");
        warm_listeners = Some((listen(&host_socket)?, listen(&qmp_socket)?));
        snapshot_args.qmp = Some(qmp_socket);
        // QEMU has the device for x86_64 only.
        snapshot_args.vmgenid = spec.arch == Arch::X86_64;
    }
    let shell_listener = socket_of(SHELL_PORT).map(|socket| listen(&socket)).transpose()?;

    let qemu = QemuCommand {
        arch: spec.arch,
        accel: spec.accel,
        kernel: spec.kernel.clone(),
        initrd: initrd.to_owned(),
        memory_mib: spec.memory_mib,
        cpus: spec.cpus,
        cmdline: spec.cmdline.clone(),
        ports,
        sandbox: crate::vm::qemu::sandbox(&qemu_binary)?,
        huge_pages: crate::vm::qemu::HugePages::for_accel(spec.accel)?,
        snapshot: snapshot_args,
        debug: spec.debug.clone(),
    };
    let start = match &spec.warm {
        Some(warm) => Some(warm::prepare(warm, &qemu, &qemu_binary)?),
        None => None,
    };
    let mut command = match start.as_ref().and_then(|s| s.snapshot.as_ref()) {
        Some(file) => snapshot::restore_command(&qemu_binary, &qemu, file)?,
        None => qemu.command(&qemu_binary),
    };
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut process = QemuProcess::spawn(command)
        .map_err(|e| Error::io(format!("failed to start {}", qemu_binary.display()), e))?;

    let console_path = workdir.join("console.log");
    let console =
        ConsoleReader::start(process.child_mut().stdout.take(), &console_path, spec.console_limit)?;
    let kvm_error = Arc::new(AtomicBool::new(false));
    let qemu_stderr = collect_stderr(process.child_mut().stderr.take(), Arc::clone(&kvm_error));

    let mut state = Progress::default();
    let listeners = Listeners {
        control: &listener,
        modules: &modules_listener,
        warm: warm_listeners.as_ref().map(|(host, qmp)| (host, qmp)),
        shell: shell_listener.as_ref(),
    };
    let warm_start = spec.warm.as_ref().zip(start.as_ref());
    let result =
        drive(spec, listeners, &mut process, &kvm_error, &mut state, warm_start, &mut on_message);
    // Whether QEMU had already ended by itself (crashed, killed from outside) when the loop gave up.
    let mut ended_by_itself = false;
    let status = match &result {
        // After `Done` the host has everything of the guest's, which now only powers off:
        // stopping QEMU here spares the wait for that.
        Ok(()) => process.kill(),
        Err(_) => match exited_within(&mut process, EXIT_GRACE) {
            Some(status) => {
                ended_by_itself = true;
                Ok(status)
            }
            None => process.kill(),
        },
    };
    let stderr = qemu_stderr.join().unwrap_or_default();
    // QEMU is gone, so the port's socket is closed: the server ends once it has finished what
    // it was doing (a module image it was reading, an alias index it was building).
    if let Some(server) = state.modules_server.take() {
        let _ = server.join();
    }
    // QEMU is gone: the reader reaches the end of its output, and has written all of it (the
    // last lines are usually the ones that matter) before the log is copied.
    let console_tail = console.finish();
    if let Some(parent) = console_log.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    state.timeline.mark("exited");
    let mut header = state.timeline.describe(started);
    if let Some(warm) = &state.warm_end {
        header = format!("{}\n{header}", warm.describe());
    }
    let Progress { greeted, warm_end, .. } = state;
    copy_atomically(&console_path, console_log, Some(&header))?;
    let kvm_failed = spec.accel == Accel::Kvm
        && !greeted
        && result.is_err()
        && (kvm_error.load(Ordering::Relaxed)
            || crate::vm::accel::kvm_failed(&String::from_utf8_lossy(&stderr)));

    let problem = match result {
        Ok(()) => None,
        Err(problem) => {
            let mut text = problem;
            if let Ok(status) = status {
                if !status.success() && (status.code().is_some() || ended_by_itself) {
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
    // A VM that started from a snapshot and never greeted: the snapshot may be bad (QEMU
    // could not load it, or the guest it holds does not run); it goes, and the caller boots.
    let mut warnings: Vec<String> =
        start.as_ref().and_then(|s| s.unusable.clone()).into_iter().collect();
    if let Some(WarmEnd::NotSaved(why)) = &warm_end {
        warnings.push(format!("failed to save a snapshot of the VM: {why}"));
    }
    let restored_from = start.and_then(|s| s.snapshot).map(|file| file.path().to_owned());
    let restore_failed = match (&problem, restored_from) {
        (Some(_), Some(path)) if !greeted => {
            let _ = std::fs::remove_file(&path);
            Some(path)
        }
        _ => None,
    };
    let end = VmEnd { problem, kvm_failed, console_tail, warnings };
    Ok((end, restore_failed))
}

/// What the message loop learned about a VM, for after it.
#[derive(Default)]
struct Progress {
    /// The guest said `Hello`.
    greeted: bool,
    /// How a warm start went.
    warm_end: Option<WarmEnd>,
    timeline: Timeline,
    /// The thread that answers the guest's `modprobe`.
    modules_server: Option<std::thread::JoinHandle<()>>,
}

/// When a VM reached each of its steps, for the first line of its console log.
#[derive(Default)]
struct Timeline(Vec<(&'static str, Instant)>);

impl Timeline {
    fn mark(&mut self, step: &'static str) {
        self.0.push((step, Instant::now()));
    }

    fn has(&self, step: &str) -> bool {
        self.0.iter().any(|(s, _)| *s == step)
    }

    /// `vmtest: timing: hello 3.812 s, first test 3.901 s, ...` (after `started`).
    fn describe(&self, started: Instant) -> String {
        let steps: Vec<String> = self
            .0
            .iter()
            .map(|(step, at)| format!("{step} {:.3} s", at.duration_since(started).as_secs_f64()))
            .collect();
        format!("vmtest: timing after QEMU started: {}", steps.join(", "))
    }
}

/// The VM's virtio-serial ports, their sockets in `workdir`: control, modules, the host port
/// of a warm start, and the shell port only when a shell may be offered (a run without one has
/// QEMU's arguments unchanged).
fn ports(workdir: &Path, warm: bool, shell: bool) -> Vec<SocketPort> {
    let mut ports = vec![
        SocketPort { name: CONTROL_PORT.to_owned(), socket: workdir.join("control.sock") },
        SocketPort { name: MODULES_PORT.to_owned(), socket: workdir.join("modules.sock") },
    ];
    if warm {
        ports.push(SocketPort { name: HOST_PORT.to_owned(), socket: workdir.join("host.sock") });
    }
    if shell {
        ports.push(SocketPort { name: SHELL_PORT.to_owned(), socket: workdir.join("shell.sock") });
    }
    ports
}

/// A non-blocking listening socket at `path`.
pub(crate) fn listen(path: &Path) -> Result<UnixListener, Error> {
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::io(format!("failed to listen on {}", path.display()), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io(format!("failed to make {} non-blocking", path.display()), e))?;
    Ok(listener)
}

/// The sockets QEMU connects its ports to.
#[derive(Clone, Copy)]
struct Listeners<'a> {
    control: &'a UnixListener,
    modules: &'a UnixListener,
    /// A warm VM's host port and QMP monitor.
    warm: Option<(&'a UnixListener, &'a UnixListener)>,
    shell: Option<&'a UnixListener>,
}

/// QEMU's exit status if it exits within `grace` (a QEMU that dies closes the control socket
/// a moment before it can be reaped).
fn exited_within(process: &mut QemuProcess, grace: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + grace;
    loop {
        if let Ok(Some(status)) = process.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The message loop. `Err` carries a description of what went wrong.
fn drive(
    spec: &VmSpec,
    listeners: Listeners<'_>,
    process: &mut QemuProcess,
    kvm_error: &AtomicBool,
    state: &mut Progress,
    warm_start: Option<(&Warm, &Start)>,
    on_message: &mut impl FnMut(GuestMessage) -> NextDeadline,
) -> Result<(), String> {
    let started = Instant::now();
    let boot_deadline = started + spec.boot_timeout;
    let connect_deadline = started + Duration::from_secs(30);
    let stream = accept_until(listeners.control, process, connect_deadline)?;
    let modules = accept_until(listeners.modules, process, connect_deadline)?;
    let shell = listeners
        .shell
        .map(|listener| accept_until(listener, process, connect_deadline))
        .transpose()?;
    state.modules_server = Some(
        modserver::spawn(modules, Arc::clone(&spec.modules))
            .map_err(|e| format!("failed to start the modules port's server: {e}"))?,
    );
    let messages = spawn_frame_reader(stream);
    let mut warm_vm = match (listeners.warm, warm_start) {
        (Some((host, qmp)), Some((warm, start))) => {
            let host = accept_until(host, process, connect_deadline)?;
            let qmp = accept_until(qmp, process, connect_deadline)?;
            let qmp = Qmp::handshake(qmp, connect_deadline)
                .map_err(|e| format!("failed to talk to QEMU's monitor: {e}"))?;
            // A guest that stops reading must not hold the host's writes forever.
            host.set_write_timeout(Some(spec.boot_timeout))
                .map_err(|e| format!("failed to configure the host port's socket: {e}"))?;
            let mut vm = WarmVm { qmp, host };
            if let Some(file) = &start.snapshot {
                snapshot::resume(&mut vm.qmp, boot_deadline).map_err(|e| e.to_string())?;
                vm.restored(warm)?;
                state.timeline.mark("restored");
                state.warm_end = Some(WarmEnd::Restored(file.path().to_owned()));
            }
            Some((vm, warm, start))
        }
        _ => None,
    };

    let mut deadline = boot_deadline;
    loop {
        let mut timeout = deadline.saturating_duration_since(Instant::now());
        if !state.greeted {
            // KVM that fails prints an error and then hangs: look for it while booting.
            if kvm_error.load(Ordering::Relaxed) {
                return Err("KVM failed to run the guest".to_owned());
            }
            timeout = timeout.min(KVM_ERROR_POLL);
        }
        let message = match messages.recv_timeout(timeout) {
            Ok(Ok(message)) => message,
            Ok(Err(e)) => return Err(format!("the guest sent a malformed message: {e}")),
            Err(RecvTimeoutError::Timeout) if !state.greeted && Instant::now() < deadline => continue,
            Err(RecvTimeoutError::Timeout) if !state.greeted && spec.accel == Accel::Kvm => {
                // A KVM that cannot run the guest may take longer than the boot timeout to
                // say so (seen: 20-40 s on a paravirtual KVM): a guest that never started under
                // KVM counts as KVM's failure, so that the run can fall back to TCG.
                kvm_error.store(true, Ordering::Relaxed);
                return Err(format!(
                    "KVM did not start the guest within {:.0} s of boot",
                    spec.boot_timeout.as_secs_f64()
                ));
            }
            Err(RecvTimeoutError::Timeout) if !state.greeted => {
                return Err(format!(
                    "the guest did not start the harness within {:.0} s of boot \
                     (wrong console, a missing virtio driver, or a kernel for another architecture?)",
                    spec.boot_timeout.as_secs_f64()
                ))
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err("the guest stopped answering (timed out waiting for it)".to_owned())
            }
            Err(RecvTimeoutError::Disconnected) if !state.greeted => {
                return Err("the VM stopped before the harness started in the guest".to_owned())
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err("the VM stopped before the guest reported all tests".to_owned())
            }
        };
        match message {
            GuestMessage::Hello { version, .. } if version != PROTOCOL_VERSION => {
                return Err(VersionMismatch { reader: Reader::Host, theirs: version }.to_string());
            }
            GuestMessage::Hello { .. } if !state.greeted => {
                state.greeted = true;
                state.timeline.mark("hello");
                // A kernel stopped in a debugger says nothing for as long as it is stopped.
                let gap = match spec.debug.kernel_stub {
                    Some(_) => SUSPENDED,
                    None => Duration::from_secs(30),
                };
                deadline = Instant::now() + gap;
            }
            _ if !state.greeted => return Err("the guest did not start with a greeting".to_owned()),
            GuestMessage::Ready => {
                let Some((vm, warm, start)) = &mut warm_vm else {
                    return Err("the guest stopped at a restore point nobody asked for".to_owned());
                };
                // Saving takes a few hundred milliseconds; the boot timeout bounds it.
                state.timeline.mark("ready");
                state.warm_end = Some(vm.save_and_go_on(
                    warm,
                    &start.key,
                    Instant::now() + spec.boot_timeout,
                )?);
                state.timeline.mark("saved");
                deadline = Instant::now() + spec.boot_timeout;
            }
            // A guest that was saved greets again after the restore point.
            GuestMessage::Hello { .. } => {
                state.timeline.mark("hello again");
                deadline = Instant::now() + spec.boot_timeout;
            }
            GuestMessage::Done => {
                state.timeline.mark("done");
                return Ok(());
            }
            GuestMessage::TestStarted { .. } if !state.timeline.has("first test") => {
                state.timeline.mark("first test");
                deadline = Instant::now() + on_message(message);
            }
            GuestMessage::Fatal(message) => return Err(format!("the guest failed: {message}")),
            GuestMessage::Shell { .. } => {
                let Some(shell) = &shell else {
                    return Err("the guest offered a shell the host did not ask for".to_owned());
                };
                // The user's time in the shell is not the guest's.
                let left = deadline.saturating_duration_since(Instant::now());
                crate::vm::shell::relay(shell)
                    .map_err(|e| format!("the shell in the guest failed: {e}"))?;
                deadline = Instant::now() + left;
            }
            other => deadline = Instant::now() + on_message(other),
        }
    }
}

/// Waits for QEMU to connect to a port's socket.
pub(crate) fn accept_until(
    listener: &UnixListener,
    process: &mut QemuProcess,
    deadline: Instant,
) -> Result<UnixStream, String> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .map_err(|e| format!("failed to configure a port's socket: {e}"))?;
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("failed to accept QEMU's connection to a port: {e}")),
        }
        if let Ok(Some(status)) = process.try_wait() {
            return Err(format!("QEMU exited at start-up ({status})"));
        }
        if Instant::now() >= deadline {
            return Err("QEMU did not connect to a port's socket".to_owned());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reads the control port's frames on a thread of its own, into a bounded queue (the guest
/// waits when the host is behind); ends after the first error or the end of the stream.
pub(crate) fn spawn_frame_reader(
    stream: UnixStream,
) -> mpsc::Receiver<Result<GuestMessage, FrameError>> {
    let (sender, receiver) = mpsc::sync_channel(FRAME_QUEUE);
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

/// Reads [`CONSOLE_LIMIT_ENV`]: bytes, or a number with `K`, `M` or `G`.
pub(crate) fn console_limit() -> Result<u64, Error> {
    let Ok(value) = std::env::var(CONSOLE_LIMIT_ENV) else { return Ok(DEFAULT_CONSOLE_LIMIT) };
    crate::rules::parse_size(&value).ok_or_else(|| {
        Error::Env(format!("{CONSOLE_LIMIT_ENV}={value:?} is not a size (like 4096, 64M, 2G)"))
    })
}

/// Copies QEMU's stdout (the kernel console) into a log file, within a limit (see
/// [`CappedLog`]), and keeps its tail.
struct ConsoleReader {
    thread: Option<std::thread::JoinHandle<()>>,
    tail: Arc<Mutex<VecDeque<u8>>>,
}

impl ConsoleReader {
    fn start(
        stdout: Option<impl Read + Send + 'static>,
        path: &Path,
        limit: u64,
    ) -> Result<Self, Error> {
        let file = File::create(path)
            .map_err(|e| Error::io(format!("failed to create {}", path.display()), e))?;
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(CONSOLE_TAIL_BYTES)));
        let thread = stdout.map(|mut stdout| {
            let tail = Arc::clone(&tail);
            std::thread::spawn(move || {
                let mut log = CappedLog::new(BufWriter::new(file), limit);
                let mut buf = [0u8; 8192];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = log.push(&buf[..n]);
                    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                    tail.extend(&buf[..n]);
                    let excess = tail.len().saturating_sub(CONSOLE_TAIL_BYTES);
                    tail.drain(..excess);
                }
                let _ = log.finish();
            })
        });
        Ok(ConsoleReader { thread, tail })
    }

    /// Waits for the console to reach end of file (QEMU has exited) and the log to be
    /// complete on disk; returns the console's last lines.
    fn finish(mut self) -> String {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: Vec<u8> = tail.iter().copied().collect();
        last_lines(&String::from_utf8_lossy(&bytes), 100)
    }
}

/// A log kept within `limit` bytes (plus one line): its first half as written, then its last
/// half, which is held in memory until [`CappedLog::finish`], with a line between them that
/// says how much was cut. The kept end starts at a line's beginning.
pub(crate) struct CappedLog<W: Write> {
    out: W,
    limit: u64,
    /// Bytes the beginning may still take.
    head_left: u64,
    /// The latest bytes past the beginning, at most `tail_cap`.
    tail: VecDeque<u8>,
    tail_cap: usize,
    /// Bytes dropped from `tail`.
    cut: u64,
    /// The last byte dropped ended a line.
    cut_at_line: bool,
}

impl<W: Write> CappedLog<W> {
    pub(crate) fn new(out: W, limit: u64) -> Self {
        let head_left = limit / 2;
        let tail_cap = usize::try_from(limit - head_left).unwrap_or(usize::MAX);
        CappedLog {
            out,
            limit,
            head_left,
            tail: VecDeque::new(),
            tail_cap,
            cut: 0,
            cut_at_line: true,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        let head =
            usize::try_from(self.head_left).map_or(bytes.len(), |left| left.min(bytes.len()));
        self.out.write_all(&bytes[..head])?;
        self.head_left -= head as u64;
        let rest = &bytes[head..];
        // Only the last `tail_cap` bytes of `rest` can stay.
        let skip = rest.len().saturating_sub(self.tail_cap);
        if skip > 0 {
            self.cut += skip as u64;
            self.cut_at_line = rest[skip - 1] == b'\n';
        }
        self.tail.extend(&rest[skip..]);
        let excess = self.tail.len().saturating_sub(self.tail_cap);
        if excess > 0 {
            self.cut_at_line = self.tail[excess - 1] == b'\n';
            self.tail.drain(..excess);
            self.cut += excess as u64;
        }
        Ok(())
    }

    /// Writes the end (after the note on what was cut) and flushes; returns the writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        if self.cut > 0 {
            // Start the end at a line: the rest of a cut line is cut too.
            if !self.cut_at_line {
                if let Some(newline) = self.tail.iter().position(|&b| b == b'\n') {
                    self.tail.drain(..=newline);
                    self.cut += newline as u64 + 1;
                }
            }
            let half = self.limit / 2;
            write!(
                self.out,
                "\n[vmtest: {} bytes of console output cut here: {CONSOLE_LIMIT_ENV}={} keeps \
                 the first {half} and the last {} bytes]\n",
                self.cut,
                self.limit,
                self.limit - half
            )?;
        }
        let (front, back) = self.tail.as_slices();
        self.out.write_all(front)?;
        self.out.write_all(back)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The last `n` lines of `text`, without carriage returns.
pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Collects QEMU's stderr (the first 64 KiB), raising `kvm_error` as soon as it reports a
/// KVM internal error.
fn collect_stderr(
    stream: Option<impl Read + Send + 'static>,
    kvm_error: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let Some(stream) = stream else { return bytes };
        let mut stream = stream.take(64 * 1024);
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
            if !kvm_error.load(Ordering::Relaxed)
                && bytes.windows(KVM_INTERNAL_ERROR.len()).any(|w| w == KVM_INTERNAL_ERROR)
            {
                kvm_error.store(true, Ordering::Relaxed);
            }
        }
        bytes
    })
}

/// Copies `from` (after a `header` line, if any) to `to` through a temp file in `to`'s directory, so `to` is never half-written
/// (and the temp file is removed on error, panic or interrupt).
pub(crate) fn copy_atomically(from: &Path, to: &Path, header: Option<&str>) -> Result<(), Error> {
    let tmp = to.with_extension("partial");
    let copy = || {
        let (mut file, partial) = crate::partial::create_partial(&tmp)?;
        if let Some(header) = header {
            writeln!(file, "{header}")?;
        }
        std::io::copy(&mut std::fs::File::open(from)?, &mut file)?;
        drop(file);
        partial.persist(to)
    };
    copy().map_err(|e| Error::io(format!("failed to save {}", to.display()), e))
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
        let message = find_qemu_in(Arch::Aarch64, std::ffi::OsStr::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("`qemu-system-aarch64`"), "{message}");
        assert!(
            message.contains("apt-get install -y --no-install-recommends qemu-system-arm"),
            "{message}"
        );
    }

    #[test]
    fn notices_a_kvm_internal_error_on_stderr() {
        let flag = Arc::new(AtomicBool::new(false));
        let stderr = b"warning: x\nKVM internal error. Suberror: 1\nemulation failure\n".to_vec();
        let collected = collect_stderr(Some(io::Cursor::new(stderr.clone())), Arc::clone(&flag));
        assert_eq!(collected.join().unwrap(), stderr);
        assert!(flag.load(Ordering::Relaxed));
        let flag = Arc::new(AtomicBool::new(false));
        let _ =
            collect_stderr(Some(io::Cursor::new(b"all fine".to_vec())), Arc::clone(&flag)).join();
        assert!(!flag.load(Ordering::Relaxed));
    }

    fn capped(limit: u64, pieces: &[&[u8]]) -> String {
        let mut log = CappedLog::new(Vec::new(), limit);
        for piece in pieces {
            log.push(piece).unwrap();
        }
        String::from_utf8(log.finish().unwrap()).unwrap()
    }

    #[test]
    fn a_console_log_within_its_limit_is_kept_whole() {
        assert_eq!(capped(20, &[b"0123456789", b"abcdefghij"]), "0123456789abcdefghij");
        assert_eq!(capped(20, &[]), "");
    }

    #[test]
    fn a_long_console_log_keeps_its_beginning_and_its_last_lines() {
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        for i in 0..1000 {
            pieces.push(format!("line {i:04}\n").into_bytes());
        }
        let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let log = capped(100, &refs);
        let (head, rest) = log.split_once("\n[vmtest: ").unwrap();
        // The first 50 bytes as written (a cut line included), then the note, then whole lines.
        assert_eq!(head, "line 0000\nline 0001\nline 0002\nline 0003\nline 0004\n");
        let (note, tail) = rest.split_once("]\n").unwrap();
        assert_eq!(
            note,
            "9900 bytes of console output cut here: VMTEST_CONSOLE_LIMIT=100 keeps the first \
             50 and the last 50 bytes"
        );
        let last = "line 0995\nline 0996\nline 0997\nline 0998\nline 0999\n";
        assert_eq!(tail, last);
        // One large piece is cut the same way.
        let whole: Vec<u8> = pieces.concat();
        assert_eq!(capped(100, &[&whole]), log);
        // A cut in the middle of a line takes the rest of that line.
        let log = capped(106, &refs);
        assert!(log.contains("9897 bytes of console output cut here"), "{log}");
        assert!(log.ends_with(&format!("bytes]\n{last}")), "{log}");
    }

    #[test]
    fn the_shell_port_is_there_only_when_a_shell_may_be_offered() {
        let names = |warm, shell| -> Vec<(String, PathBuf)> {
            ports(Path::new("/w"), warm, shell).into_iter().map(|p| (p.name, p.socket)).collect()
        };
        let plain = vec![
            ("vmtest.control".to_owned(), PathBuf::from("/w/control.sock")),
            ("vmtest.modules".to_owned(), PathBuf::from("/w/modules.sock")),
        ];
        assert_eq!(names(false, false), plain);
        let shell = ("vmtest.shell".to_owned(), PathBuf::from("/w/shell.sock"));
        let host = ("vmtest.host".to_owned(), PathBuf::from("/w/host.sock"));
        assert_eq!(names(false, true), [plain.clone(), vec![shell.clone()]].concat());
        assert_eq!(names(true, false), [plain.clone(), vec![host.clone()]].concat());
        assert_eq!(names(true, true), [plain, vec![host, shell]].concat());
        // QEMU's arguments without a shell are those of a run before shells existed.
        let qemu = |ports| QemuCommand {
            arch: Arch::X86_64,
            accel: Accel::Tcg,
            kernel: "/k".into(),
            initrd: "/i".into(),
            memory_mib: 256,
            cpus: 1,
            cmdline: vec![],
            ports,
            sandbox: crate::vm::qemu::Sandbox::Off,
            huge_pages: crate::vm::qemu::HugePages::Disabled,
            snapshot: Default::default(),
            debug: Default::default(),
        };
        let joined = |ports| {
            let args: Vec<String> =
                qemu(ports).args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
            args.join(" ")
        };
        let without = joined(ports(Path::new("/w"), false, false));
        assert!(
            without.contains(
                "-device virtio-serial-pci,id=vser0 -chardev socket,id=port0,path=/w/control.sock \
                 -device virtserialport,bus=vser0.0,chardev=port0,name=vmtest.control \
                 -chardev socket,id=port1,path=/w/modules.sock \
                 -device virtserialport,bus=vser0.0,chardev=port1,name=vmtest.modules -kernel /k"
            ),
            "{without}"
        );
        let with = joined(ports(Path::new("/w"), false, true));
        assert!(
            with.contains(
                "name=vmtest.modules -chardev socket,id=port2,path=/w/shell.sock \
                 -device virtserialport,bus=vser0.0,chardev=port2,name=vmtest.shell -kernel /k"
            ),
            "{with}"
        );
    }

    #[test]
    fn keeps_last_lines() {
        assert_eq!(last_lines("a\r\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
    }
}
