//! Lifetime of QEMU processes and per-VM temp dirs: nothing outlives the harness.
//!
//! - [`QemuProcess`] kills and reaps QEMU's whole process group on drop (so an early return or a
//!   panic that unwinds cannot leak it).
//! - [`install_signal_cleanup`] blocks SIGINT/SIGTERM/SIGHUP in every thread and handles them on
//!   one thread that kills every live QEMU group, removes every live temp dir, and exits with
//!   the conventional status (130 for Ctrl-C).
//! - A panic on any thread but a VM's own (those are caught and reported per group) kills every
//!   live QEMU group and removes its temp dir before the process unwinds out of `main`.
//! - QEMU gets `PR_SET_PDEATHSIG(SIGKILL)` as the backstop when the harness is killed outright
//!   (and exits at once if the harness died before that was set).
//! - A VM temp dir (`vmtest-<pid>-*`) is locked (flock on the directory) by its run for as long
//!   as it exists; [`remove_stale_workdirs`] removes only those whose lock it can take, so a
//!   run in another PID namespace (a container, a CI job) sharing the temp dir keeps its own.
//! - Files written under a temporary name (`crate::partial`) are removed by the same cleanup.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
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
    crate::vm::shell::restore_terminal();
    let mut live = live();
    live.stopping = true;
    for &pid in &live.groups {
        kill_group(pid);
    }
    for dir in &live.dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    crate::partial::remove_all();
}

fn kill_group(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals the process group QEMU leads; it has
        // no memory-safety preconditions.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// Created in a VM temp dir once its run holds the dir's lock: a dir that has it and whose lock
/// can be taken was abandoned.
const LOCKED_MARKER: &str = ".vmtest-locked";
/// A VM temp dir without [`LOCKED_MARKER`] (its run died between creating and locking it, or
/// an older vmtest made it) is removed only once it is this old.
const UNMARKED_GRACE: Duration = Duration::from_secs(10 * 60);

/// A private temp dir for one VM, `vmtest-<pid>-XXXXXX` in the temp dir, locked while it
/// exists, removed on drop and by the cleanup of an interrupted or panicking harness.
pub(crate) struct WorkDir {
    dir: tempfile::TempDir,
    /// The directory itself, open and flocked: the sign that its run is alive, valid across
    /// PID namespaces (the pid in the name is not).
    _lock: File,
}

impl WorkDir {
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        live().dirs.remove(self.dir.path());
    }
}

/// Creates a [`WorkDir`]; refused once the harness is stopping.
pub(crate) fn vm_workdir() -> Result<WorkDir, crate::Error> {
    let mut live = live();
    if live.stopping {
        return Err(crate::Error::Stopping);
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("vmtest-{}-", std::process::id()))
        .tempdir()
        .map_err(|e| crate::Error::io("failed to create a temp dir", e))?;
    let lock = lock_workdir(dir.path()).map_err(|e| {
        crate::Error::io(format!("failed to lock the temp dir {}", dir.path().display()), e)
    })?;
    live.dirs.insert(dir.path().to_owned());
    Ok(WorkDir { dir, _lock: lock })
}

/// Takes `dir`'s lock (waiting while a sweep of another run looks at it), then marks it locked.
fn lock_workdir(dir: &Path) -> io::Result<File> {
    use rustix::fs::{flock, FlockOperation};
    // Opened close-on-exec (as std opens every file): QEMU does not inherit the lock.
    let lock = File::open(dir)?;
    flock(&lock, FlockOperation::LockExclusive)?;
    File::create(dir.join(LOCKED_MARKER))?;
    Ok(lock)
}

/// Removes the VM temp dirs of harness runs that no longer exist (killed with SIGKILL, which
/// leaves no chance to clean up): those whose lock can be taken. Errors are ignored: another
/// run may be removing the same, and other users' dirs are theirs.
pub(crate) fn remove_stale_workdirs() {
    remove_stale_workdirs_in(&std::env::temp_dir(), UNMARKED_GRACE);
}

fn remove_stale_workdirs_in(temp: &Path, unmarked_grace: Duration) {
    use rustix::fs::{flock, FlockOperation};
    let Ok(entries) = std::fs::read_dir(temp) else { return };
    for entry in entries.flatten() {
        if !is_workdir_name(&entry.file_name().to_string_lossy()) {
            continue;
        }
        // Never follow a symlink someone else put there.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        let Ok(dir) = File::open(&path) else { continue };
        if flock(&dir, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue; // its run is alive, in this PID namespace or another
        }
        // Unmarked and young: its run may be between creating and locking it.
        let abandoned = path.join(LOCKED_MARKER).exists()
            || dir
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= unmarked_grace));
        if abandoned {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Whether `name` is a VM temp dir's: `vmtest-<pid>-<random>`.
fn is_workdir_name(name: &str) -> bool {
    let Some((pid, random)) = name.strip_prefix("vmtest-").and_then(|n| n.split_once('-')) else {
        return false;
    };
    !random.is_empty() && !random.contains('-') && pid.parse::<u32>().is_ok()
}

/// Suffix of a console log being saved into the log dir (`vm0-6.12.console.partial`).
pub(crate) const CONSOLE_PARTIAL_SUFFIX: &str = ".partial";

/// Removes the console logs a killed run left half-saved in its log dir `dir` (not below it:
/// received artifacts may be named anything, and those of a killed run are replaced when its
/// test runs again). Only for a dir this run holds the lock of.
pub(crate) fn remove_partial_console_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && entry.file_name().to_string_lossy().ends_with(CONSOLE_PARTIAL_SUFFIX) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
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
        // The harness's pid as the child will see it from getppid(): both are in this PID
        // namespace.
        // SAFETY: getpid(2) has no preconditions.
        let harness = unsafe { libc::getpid() };
        // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
        // functions (prctl, getppid, _exit, pthread_sigmask).
        unsafe {
            command.pre_exec(move || {
                // Backstop: die with the harness even if it is SIGKILLed.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The harness may have died before the line above: then no signal will come,
                // and this child (reparented) must not become an orphaned QEMU. Nobody is left
                // to hear why (returning an error would report into a pipe without a reader).
                if libc::getppid() != harness {
                    libc::_exit(127);
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
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    #[test]
    fn recognises_vm_workdir_names_only() {
        assert!(is_workdir_name("vmtest-1234-a1B2c3"));
        assert!(!is_workdir_name("vmtest-fixtures-abc"));
        assert!(!is_workdir_name("vmtest-outcomes-kvm-55"));
        assert!(!is_workdir_name("vmtest-12-"));
        assert!(!is_workdir_name("other-12-abc"));
    }

    /// A fresh directory to sweep, removed on drop.
    fn sweep_root(label: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("sweep-{label}-")).tempdir().unwrap()
    }

    fn age(path: &Path, by: Duration) {
        let file = File::open(path).unwrap();
        file.set_modified(std::time::SystemTime::now() - by).unwrap();
    }

    const HOLD_ENV: &str = "VMTEST_UNIT_HOLD_WORKDIR";

    /// Not a test on its own: with `HOLD_ENV` set (by the test below), creates a VM temp dir
    /// under `TMPDIR` as a run does, prints its path and holds it until stdin closes.
    #[test]
    fn holder_of_a_workdir() {
        if std::env::var_os(HOLD_ENV).is_none() {
            return;
        }
        let dir = vm_workdir().unwrap();
        println!("HOLDING {}", dir.path().display());
        let _ = std::io::stdin().read_line(&mut String::new());
    }

    /// A pid that is free in this PID namespace, for a process in another one to take.
    fn free_pid_here() -> u32 {
        let max: u32 =
            std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
        (max / 2..max - 1).rev().find(|p| !Path::new(&format!("/proc/{p}")).exists()).unwrap()
    }

    /// The libtest name of this module's test `name` (as `--exact` wants it: no crate name).
    fn this_module_test(name: &str) -> String {
        let path = module_path!().split_once("::").map_or(module_path!(), |(_, path)| path);
        format!("{path}::{name}")
    }

    #[test]
    fn a_live_workdir_of_another_pid_namespace_survives_the_sweep_and_a_dead_one_goes() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 || which("unshare").is_none() {
            crate::__testing::missing("needs root and unshare(1) to make a PID namespace");
            return;
        }
        let root = sweep_root("pidns");
        // The holder runs in a new PID namespace with a pid that does not exist here, as a
        // run in another container sharing /tmp.
        let pid = free_pid_here();
        let script = format!(
            "echo {} > /proc/sys/kernel/ns_last_pid && \"$0\" --exact \
             {} --nocapture --test-threads 1; exit 0",
            pid - 1,
            this_module_test("holder_of_a_workdir"),
        );
        let mut holder = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", &script])
            .arg(std::env::current_exe().unwrap())
            .env(HOLD_ENV, "1")
            .env("TMPDIR", root.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Held open until the end: the holder ends by itself when it closes (if this test
        // fails), and `wait` would close it.
        let holder_stdin = holder.stdin.take();
        let mut line = String::new();
        let mut out = BufReader::new(holder.stdout.take().unwrap());
        // libtest prints the test's name first, on the same line.
        let held = loop {
            line.clear();
            assert_ne!(out.read_line(&mut line).unwrap(), 0, "the holder ended early");
            if let Some((_, held)) = line.split_once("HOLDING ") {
                break PathBuf::from(held.trim());
            }
        };
        assert!(held.starts_with(root.path()), "{held:?}");
        let name = held.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&format!("vmtest-{pid}-")), "{name}: pid {pid} expected");

        // An abandoned dir (its run killed after locking it), and one never locked.
        let dead = root.path().join("vmtest-77-dead01");
        std::fs::create_dir(&dead).unwrap();
        File::create(dead.join(LOCKED_MARKER)).unwrap();
        File::create(dead.join("initrd.cpio")).unwrap();
        let young = root.path().join("vmtest-78-young1");
        std::fs::create_dir(&young).unwrap();

        remove_stale_workdirs_in(root.path(), UNMARKED_GRACE);
        assert!(held.is_dir(), "the live dir was removed");
        assert!(held.join(LOCKED_MARKER).exists(), "the live dir was emptied");
        assert!(!dead.exists(), "the abandoned dir stayed");
        assert!(young.exists(), "an unmarked young dir may be one being created");
        age(&young, UNMARKED_GRACE + Duration::from_secs(1));
        remove_stale_workdirs_in(root.path(), UNMARKED_GRACE);
        assert!(!young.exists(), "an old unmarked dir stayed");

        // Killed outright, the holder leaves its dir: now the sweep removes it (once the
        // holder, killed with its namespace, is gone).
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert!(held.exists());
        let deadline = Instant::now() + Duration::from_secs(10);
        while held.exists() && Instant::now() < deadline {
            remove_stale_workdirs_in(root.path(), UNMARKED_GRACE);
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!held.exists(), "the dead run's dir stayed");
        drop(holder_stdin);
    }

    fn which(program: &str) -> Option<PathBuf> {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    }

    #[test]
    fn half_saved_console_logs_are_swept() {
        let root = sweep_root("partial");
        std::fs::create_dir_all(root.path().join("artifacts")).unwrap();
        for name in ["vm0-6.12.console.partial", "artifacts/x.partial", "vm0-6.12.console.log"] {
            File::create(root.path().join(name)).unwrap();
        }
        remove_partial_console_logs(root.path());
        assert!(!root.path().join("vm0-6.12.console.partial").exists());
        assert!(root.path().join("artifacts/x.partial").exists(), "an artifact may be named so");
        assert!(root.path().join("vm0-6.12.console.log").exists());
    }

    const ORPHAN_ENV: &str = "VMTEST_UNIT_ORPHAN_MARK";

    /// Not a test on its own: with `ORPHAN_ENV` set, spawns a "QEMU" (`sleep`) that is still
    /// between fork and exec when this process dies.
    #[test]
    fn spawner_that_dies_during_spawn() {
        let Ok(mark) = std::env::var(ORPHAN_ENV) else { return };
        let mut command = Command::new("sleep");
        command.args(["30", &mark]);
        // SAFETY: the closure only calls nanosleep, which is async-signal-safe, on a local.
        unsafe {
            command.pre_exec(|| {
                let pause = libc::timespec { tv_sec: 0, tv_nsec: 400_000_000 };
                libc::nanosleep(&pause, std::ptr::null_mut());
                Ok(())
            });
        }
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: _exit(2) ends the process at once; nothing here needs unwinding.
            unsafe { libc::_exit(0) };
        });
        let _ = QemuProcess::spawn(command);
        std::thread::sleep(Duration::from_secs(5));
    }

    #[test]
    fn qemu_whose_harness_died_before_it_started_does_not_run() {
        let nanos = std::time::UNIX_EPOCH.elapsed().unwrap().subsec_nanos();
        let mark = format!("0.{}{nanos}", std::process::id());
        let output = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &this_module_test("spawner_that_dies_during_spawn"), "--nocapture"])
            .env(ORPHAN_ENV, &mark)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{}: {stdout}", output.status);
        assert!(stdout.contains("running 1 test"), "the spawner did not run: {stdout}");
        std::thread::sleep(Duration::from_millis(1000));
        let mut orphans = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
            if String::from_utf8_lossy(&cmdline).contains(&mark) {
                let pid: i32 = entry.file_name().to_string_lossy().parse().unwrap_or(0);
                if pid > 0 {
                    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is the orphan.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    orphans.push(pid);
                }
            }
        }
        assert!(orphans.is_empty(), "QEMU outlived a harness that died before it ran: {orphans:?}");
    }
}
