//! A VM driven step by step, as snapshots need it: started cold or from a snapshot with the
//! control port, the host port ([`HOST_PORT`]) and a QMP monitor; the guest's messages read
//! with deadlines, host messages written, the VM saved or ended.
//!
//! The ordinary boot of a test run is `session.rs`; this is the primitive that a warm start
//! will be built on. It has no modules port (a guest that asks for a module is told there is
//! none), and its kernel console goes to a file in the VM's dir without `VMTEST_CONSOLE_LIMIT`.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use vmtest_init::protocol::{
    write_frame, FrameError, GuestMessage, HostMessage, Reader, VersionMismatch, CONTROL_PORT,
    HOST_PORT, PROTOCOL_VERSION,
};

use crate::vm::process::QemuProcess;
use crate::vm::qemu::{QemuCommand, SocketPort};
use crate::vm::qmp::Qmp;
use crate::vm::session::{accept_until, listen, spawn_frame_reader};
use crate::vm::snapshot::{self, Saved, SnapshotCache, SnapshotFile, SnapshotKey};
use crate::Error;

/// A running VM with a QMP monitor and a port in each direction.
pub(crate) struct LiveVm {
    process: QemuProcess,
    qmp: Qmp,
    messages: mpsc::Receiver<Result<GuestMessage, FrameError>>,
    host: UnixStream,
    console: PathBuf,
    stderr: PathBuf,
}

/// `command` with the ports and monitor of a live VM whose sockets are in `dir`.
pub(crate) fn live_command(mut command: QemuCommand, dir: &Path) -> QemuCommand {
    command.ports = vec![
        SocketPort { name: CONTROL_PORT.to_owned(), socket: dir.join("control.sock") },
        SocketPort { name: HOST_PORT.to_owned(), socket: dir.join("host.sock") },
    ];
    command.snapshot.qmp = Some(dir.join("qmp.sock"));
    command
}

impl LiveVm {
    /// Boots `command` (made by [`live_command`] for `dir`) with `qemu`.
    pub fn boot(
        qemu: &Path,
        command: &QemuCommand,
        dir: &Path,
        deadline: Instant,
    ) -> Result<LiveVm, Error> {
        LiveVm::start(command.command(qemu), command, dir, deadline)
    }

    /// Starts `command` (the saved VM's, made by [`live_command`] for `dir`) from `snapshot`
    /// and runs the guest once its state is loaded.
    pub fn restore(
        qemu: &Path,
        command: &QemuCommand,
        dir: &Path,
        snapshot: &SnapshotFile,
        deadline: Instant,
    ) -> Result<LiveVm, Error> {
        let process = snapshot::restore_command(qemu, command, snapshot)?;
        let mut vm = LiveVm::start(process, command, dir, deadline)?;
        snapshot::resume(&mut vm.qmp, deadline).map_err(|e| {
            vm.explain(format!(
                "{e} (from {}, {} bytes)",
                snapshot.path().display(),
                snapshot.len()
            ))
        })?;
        Ok(vm)
    }

    fn start(
        mut process: Command,
        command: &QemuCommand,
        dir: &Path,
        deadline: Instant,
    ) -> Result<LiveVm, Error> {
        let qmp_socket = command.snapshot.qmp.as_deref().ok_or_else(|| {
            Error::Config("a live VM needs a QMP monitor (see live_command)".to_owned())
        })?;
        let mut sockets: Vec<&Path> = command.ports.iter().map(|p| p.socket.as_path()).collect();
        sockets.push(qmp_socket);
        let listeners = sockets.iter().map(|path| listen(path)).collect::<Result<Vec<_>, _>>()?;
        let console = dir.join("console.log");
        let stderr = dir.join("qemu.stderr");
        let create = |path: &Path| {
            File::create(path)
                .map_err(|e| Error::io(format!("failed to create {}", path.display()), e))
        };
        process.stdin(Stdio::null()).stdout(create(&console)?).stderr(create(&stderr)?);
        let mut qemu = QemuProcess::spawn(process)
            .map_err(|e| Error::io("failed to start QEMU for a live VM", e))?;
        let mut streams = Vec::new();
        for (listener, path) in listeners.iter().zip(&sockets) {
            match accept_until(listener, &mut qemu, deadline) {
                Ok(stream) => streams.push(stream),
                Err(problem) => {
                    let _ = qemu.kill();
                    let said = std::fs::read_to_string(&stderr).unwrap_or_default();
                    return Err(Error::Config(format!(
                        "failed to start a live VM: {problem} ({}){}",
                        path.display(),
                        said_by_qemu(&said)
                    )));
                }
            }
        }
        let qmp_stream = streams.pop().expect("the monitor's stream");
        let host = streams.pop().expect("the host port's stream");
        let control = streams.pop().expect("the control port's stream");
        let messages = spawn_frame_reader(control);
        let qmp = match Qmp::handshake(qmp_stream, deadline) {
            Ok(qmp) => qmp,
            Err(e) => {
                let _ = qemu.kill();
                return Err(Error::Config(format!("failed to start a live VM: {e}")));
            }
        };
        Ok(LiveVm { process: qemu, qmp, messages, host, console, stderr })
    }

    /// The guest's next message. `Hello` of another protocol version is an error.
    pub fn next_message(&mut self, deadline: Instant) -> Result<GuestMessage, Error> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        match self.messages.recv_timeout(timeout) {
            Ok(Ok(GuestMessage::Hello { version, .. })) if version != PROTOCOL_VERSION => {
                let mismatch = VersionMismatch { reader: Reader::Host, theirs: version };
                Err(self.explain(mismatch.to_string()))
            }
            Ok(Ok(message)) => Ok(message),
            Ok(Err(e)) => Err(self.explain(format!("the guest sent a malformed message: {e}"))),
            Err(RecvTimeoutError::Timeout) => {
                Err(self.explain("the guest sent nothing in time".to_owned()))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(self.explain("the VM stopped (its control port closed)".to_owned()))
            }
        }
    }

    /// Sends `message` on the host port.
    pub fn send(&mut self, message: &HostMessage) -> Result<(), Error> {
        write_frame(&mut self.host, message)
            .map_err(|e| Error::Config(format!("failed to send a message to the guest: {e}")))
    }

    /// Sends the run's payload archive read from `archive` on the host port.
    pub fn send_payload(&mut self, archive: &mut impl std::io::Read) -> Result<(), Error> {
        crate::vm::warm::send_payload(archive, &mut self.host)
            .map(drop)
            .map_err(|e| Error::Config(format!("failed to send the payload to the guest: {e}")))
    }

    /// Stops the VM and saves it into `cache` under `key`; the VM stays stopped.
    pub fn save(
        &mut self,
        cache: &SnapshotCache,
        key: &SnapshotKey,
        deadline: Instant,
    ) -> Result<Saved, Error> {
        snapshot::save(&mut self.qmp, cache, key, deadline)
    }

    /// Ends QEMU (`quit`, then a kill if it lingers).
    pub fn quit(mut self) {
        let _ = self.qmp.quit(Instant::now() + Duration::from_secs(2));
        let _ = self.process.wait_or_kill(Duration::from_secs(2));
    }

    /// The QEMU version its monitor greeted with.
    pub fn qemu_version(&self) -> &str {
        self.qmp.version()
    }

    /// The kernel console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// `problem` with QEMU's stderr and the console's last lines.
    fn explain(&self, problem: String) -> Error {
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        Error::Config(format!(
            "{problem}{}\nkernel console, last lines:\n{}",
            said_by_qemu(&stderr),
            crate::vm::session::last_lines(&self.console(), 30)
        ))
    }
}

fn said_by_qemu(stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        String::new()
    } else {
        format!("\nQEMU said: {stderr}")
    }
}
