//! Lifetime of QEMU processes and per-VM temp dirs: nothing outlives the harness.
//!
//! - [`QemuProcess`] kills and reaps QEMU's whole process group on drop (so an early return or a
//!   panic that unwinds cannot leak it).
//! - [`install_signal_cleanup`] blocks SIGINT/SIGTERM/SIGHUP in every thread and handles them on
//!   one thread that kills every live QEMU group, removes every live temp dir, and exits with
//!   the conventional status (130 for Ctrl-C).
//! - A panic on any thread but a VM's own (those are caught and reported per group) kills every
//!   live QEMU group and removes its temp dir before the process unwinds out of `main`.
//! - QEMU gets `PR_SET_PDEATHSIG(SIGKILL)` as the backstop when the harness is killed outright;
//!   the temp dirs such a run leaves (named `vmtest-<pid>-*`) are removed by the next run
//!   ([`remove_stale_workdirs`]).

use std::collections::BTreeSet;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// What to clean up if the harness is interrupted or panics.
struct Live {
    /// QEMU pids, each the leader of its process group.
    groups: BTreeSet<u32>,
    /// VM temp dirs.
    dirs: BTreeSet<PathBuf>,
    /// Cleanup has run: no new QEMU or temp dir may appear (the process is about to end).
    stopping: bool,
}

/// A cleanup signal arrived: the signal thread owns the exit status from now on.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

static LIVE: Mutex<Live> =
    Mutex::new(Live { groups: BTreeSet::new(), dirs: BTreeSet::new(), stopping: false });

fn live() -> std::sync::MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

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

/// Name prefix of the VM threads: their panics are caught and reported by their group.
pub(crate) const VM_THREAD_PREFIX: &str = "vmtest-vm";

/// Routes SIGINT, SIGTERM and SIGHUP to a cleanup thread, and makes a harness panic clean up
/// too. Call before spawning other threads (the signal mask is inherited by threads created
/// afterwards). Idempotent.
pub(crate) fn install_signal_cleanup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().unwrap_or_default().to_owned();
            if !name.starts_with(VM_THREAD_PREFIX) {
                kill_everything();
            }
            previous(info);
        }));
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
                    INTERRUPTED.store(true, Ordering::SeqCst);
                    kill_everything();
                    eprintln!("vmtest: interrupted; stopped every VM and removed its temp dir");
                    std::process::exit(128 + signal);
                }
            })
            .expect("failed to spawn the signal thread");
    });
}

/// Ends the process with `code`, unless a cleanup signal arrived (see [`hold_if_interrupted`]).
pub(crate) fn exit(code: i32) -> ! {
    hold_if_interrupted();
    std::process::exit(code)
}

/// Never returns once a cleanup signal arrived: the signal thread is then ending the process
/// with 128 + the signal, and a run that finished only because its VMs were killed must not
/// exit first with its own status.
pub(crate) fn hold_if_interrupted() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
}

fn kill_everything() {
    let mut live = live();
    live.stopping = true;
    for &pid in &live.groups {
        kill_group(pid);
    }
    for dir in &live.dirs {
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

/// A private temp dir for one VM, `vmtest-<pid>-XXXXXX` in the temp dir, removed on drop and
/// by the cleanup of an interrupted or panicking harness.
pub(crate) struct WorkDir(tempfile::TempDir);

impl WorkDir {
    pub(crate) fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        live().dirs.remove(self.0.path());
    }
}

/// Creates a [`WorkDir`]; refused once the harness is stopping.
pub(crate) fn vm_workdir() -> Result<WorkDir, crate::Error> {
    let mut live = live();
    if live.stopping {
        return Err(crate::Error::Config("the harness is stopping".to_owned()));
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("vmtest-{}-", std::process::id()))
        .tempdir()
        .map_err(|e| crate::Error::io("failed to create a temp dir", e))?;
    live.dirs.insert(dir.path().to_owned());
    Ok(WorkDir(dir))
}

/// Removes the VM temp dirs of harness runs that no longer exist (killed with SIGKILL, which
/// leaves no chance to clean up). Errors are ignored: another run may be removing the same.
pub(crate) fn remove_stale_workdirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = stale_owner(&name.to_string_lossy()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The pid in a VM temp dir's name `vmtest-<pid>-<random>`.
fn stale_owner(name: &str) -> Option<u32> {
    let (pid, random) = name.strip_prefix("vmtest-")?.split_once('-')?;
    (!random.is_empty() && !random.contains('-')).then_some(())?;
    pid.parse().ok()
}

/// A running QEMU, in its own process group, killed and reaped on drop.
pub(crate) struct QemuProcess {
    child: Child,
    status: Option<ExitStatus>,
}

impl QemuProcess {
    /// Spawns `command` in a new process group; refused once the harness is stopping.
    pub fn spawn(mut command: Command) -> io::Result<QemuProcess> {
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
        let mut live = live();
        if live.stopping {
            return Err(io::Error::other("the harness is stopping"));
        }
        let child = command.spawn()?;
        live.groups.insert(child.id());
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
        live().groups.remove(&self.child.id());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_vm_workdir_names_only() {
        assert_eq!(stale_owner("vmtest-1234-a1B2c3"), Some(1234));
        assert_eq!(stale_owner("vmtest-fixtures-abc"), None);
        assert_eq!(stale_owner("vmtest-outcomes-kvm-55"), None);
        assert_eq!(stale_owner("vmtest-12-"), None);
        assert_eq!(stale_owner("other-12-abc"), None);
    }
}
