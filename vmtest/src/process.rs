//! Lifetime of QEMU processes and per-VM temp dirs: nothing outlives the harness.
//!
//! - [`QemuProcess`] kills and reaps QEMU's whole process group on drop (so an early return or a
//!   panic that unwinds cannot leak it).
//! - [`install_signal_cleanup`] blocks SIGINT/SIGTERM/SIGHUP in every thread and handles them on
//!   one thread that kills every live QEMU group, removes every live temp dir, and exits with
//!   the conventional status (130 for Ctrl-C).
//! - QEMU gets `PR_SET_PDEATHSIG(SIGKILL)` as the backstop when the harness is killed outright.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// Process groups and temp dirs to clean up if the harness is interrupted, keyed by QEMU's pid.
static LIVE: Mutex<BTreeMap<u32, PathBuf>> = Mutex::new(BTreeMap::new());

const CLEANUP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn cleanup_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for signal in CLEANUP_SIGNALS {
        // SAFETY: as above; `signal` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, signal) };
    }
    set
}

/// Routes SIGINT, SIGTERM and SIGHUP to a cleanup thread. Call before spawning other threads
/// (the signal mask is inherited by threads created afterwards). Idempotent.
pub(crate) fn install_signal_cleanup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let set = cleanup_sigset();
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return;
        }
        std::thread::Builder::new()
            .name("vmtest-signals".into())
            .spawn(move || loop {
                let mut signal: libc::c_int = 0;
                // SAFETY: `set` is initialised and `signal` is a valid out pointer.
                if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
                    kill_everything();
                    eprintln!("vmtest: interrupted; stopped every VM and removed its temp dir");
                    std::process::exit(128 + signal);
                }
            })
            .expect("failed to spawn the signal thread");
    });
}

fn kill_everything() {
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    for (&pid, dir) in live.iter() {
        kill_group(pid);
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn kill_group(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals the process group QEMU leads; it has
        // no memory-safety preconditions.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// A running QEMU, in its own process group, killed and reaped on drop.
pub(crate) struct QemuProcess {
    child: Child,
    status: Option<ExitStatus>,
}

impl QemuProcess {
    /// Spawns `command` in a new process group. `workdir` is removed if the harness is
    /// interrupted while QEMU runs.
    pub fn spawn(mut command: Command, workdir: PathBuf) -> io::Result<QemuProcess> {
        command.process_group(0);
        let unblock = cleanup_sigset();
        // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
        // functions (prctl, getppid, pthread_sigmask, kill).
        unsafe {
            command.pre_exec(move || {
                // Backstop: die with the harness even if it is SIGKILLed.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The harness blocks these for its cleanup thread; QEMU must not inherit that.
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &unblock, std::ptr::null_mut());
                Ok(())
            });
        }
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        let child = command.spawn()?;
        live.insert(child.id(), workdir);
        Ok(QemuProcess { child, status: None })
    }

    /// The child's stdout/stderr handles, taken once.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// `Some(status)` once QEMU has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits up to `grace` for QEMU to exit by itself, then kills it. Returns its status.
    pub fn wait_or_kill(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill()
    }

    /// Kills QEMU's process group and reaps QEMU.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        kill_group(self.child.id());
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        let _ = self.kill();
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.child.id());
    }
}
