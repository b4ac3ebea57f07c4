//! A test process that waits for a debugger (`VMTEST_GDB=test`): before its test runs, it starts
//! the guest's gdb server attached to itself, talking on the gdb port, and waits until it is
//! traced. The test then runs as ever (the debugger continues it), and the process's exit
//! status stays the test's own: the server is a child of the test, not its parent. The server
//! has a process group of its own, so that it outlives the test long enough to tell the
//! debugger how the test ended; it ends when the debugger disconnects (`--once`).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vmtest_init::protocol::{GDBSERVER_ENV, GDB_PORT};

/// How long the port may take to show up after boot.
const PORT_PATIENCE: Duration = Duration::from_secs(30);

/// When [`GDBSERVER_ENV`] names a gdb server, has it attach to this process and waits until
/// it has; exits with a message when it cannot.
pub(crate) fn wait_if_asked() {
    let Some(server) = std::env::var_os(GDBSERVER_ENV) else { return };
    if let Err(e) = wait_for(Path::new(&server)) {
        eprintln!("vmtest: failed to wait for a debugger: {e}");
        std::process::exit(1);
    }
}

fn wait_for(server: &Path) -> Result<(), String> {
    let mut waited = Duration::ZERO;
    let port = loop {
        if let Some(port) = vmtest_init::port_device(GDB_PORT) {
            break port;
        }
        if waited >= PORT_PATIENCE {
            return Err(format!("the guest has no virtio-serial port named {GDB_PORT}"));
        }
        std::thread::sleep(Duration::from_millis(10));
        waited += Duration::from_millis(10);
    };
    // The port opens once at a time: the last test's server may still be talking to its
    // debugger (it ends when the debugger disconnects).
    let channel = loop {
        match std::fs::File::options().read(true).write(true).open(&port) {
            Ok(channel) => break channel,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(format!("failed to open {}: {e}", port.display())),
        }
    };
    eprintln!(
        "vmtest: test process {} waits for gdb on {GDB_PORT} ({})",
        std::process::id(),
        port.display()
    );
    // Until a debugger is connected to the host's end, the port reads as at its end, which a
    // gdb server takes for a debugger gone: wait for one.
    while !host_connected(&channel)? {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The server talks on its stdin and stdout (`-`), the port opened here: a second open of
    // the port would fail, and closing it would drop what the debugger sent already.
    let input =
        channel.try_clone().map_err(|e| format!("failed to share {}: {e}", port.display()))?;
    let mut child = Command::new(server)
        .args(["--once", "--attach", "-"])
        .arg(std::process::id().to_string())
        .stdin(input)
        .stdout(channel)
        // Out of the test's process group, which PID 1 kills once the test has ended: the
        // server still has to tell the debugger how it ended.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("failed to start {}: {e}", server.display()))?;
    loop {
        if traced()? {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{} ended ({status}) without attaching", server.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the host's end of the port `channel` is connected: a virtio-serial port polls as
/// hung up while it is not.
fn host_connected(channel: &std::fs::File) -> Result<bool, String> {
    use std::os::fd::AsRawFd;
    let mut poll = libc::pollfd { fd: channel.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    // SAFETY: `poll` points to one valid pollfd for the call's duration; the descriptor is
    // open (borrowed from `channel`).
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    if ready < 0 {
        return Err(format!("failed to poll the port: {}", std::io::Error::last_os_error()));
    }
    Ok(poll.revents & libc::POLLHUP == 0)
}

/// Whether a tracer is attached to this process (`TracerPid` in `/proc/self/status`).
fn traced() -> Result<bool, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("failed to read /proc/self/status: {e}"))?;
    Ok(tracer(&status).is_some_and(|pid| pid != 0))
}

fn tracer(status: &str) -> Option<u32> {
    status.lines().find_map(|line| line.strip_prefix("TracerPid:")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tracer_from_the_status() {
        assert_eq!(tracer("Name:\tx\nTracerPid:\t0\nUid:\t0\n"), Some(0));
        assert_eq!(tracer("Name:\tx\nTracerPid:\t123\n"), Some(123));
        assert_eq!(tracer("Name:\tx\n"), None);
        // This process is not traced (unless a debugger runs the unit tests).
        assert!(std::fs::read_to_string("/proc/self/status").unwrap().contains("TracerPid:"));
    }
}
