//! The harness on shared hosts, checked from outside: a test binary that is PID 1 of a
//! container runs its tests in VMs, `VMTEST_TEST` on the host runs nothing, QEMU runs under its
//! seccomp sandbox, an interrupted artifact transfer leaves no partial file, and
//! `cargo vmtest run` sweeps the temp dirs of dead runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FAILING: &str = env!("CARGO_BIN_EXE_fixture-failing");
const ARTIFACTS: &str = env!("CARGO_BIN_EXE_fixture-artifacts");
const RUNNER: &str = env!("CARGO_BIN_EXE_runner");

/// A private TMPDIR, removed on drop.
struct TmpDir(tempfile::TempDir);

impl TmpDir {
    fn new(label: &str) -> TmpDir {
        TmpDir(
            tempfile::Builder::new().prefix(&format!("vmtest-hosts-{label}-")).tempdir().unwrap(),
        )
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("TMPDIR", self.path()).env_remove("VMTEST_TEST");
        command
    }
}

/// Waits for `child` at most `limit`, killing it (and failing) past that.
fn wait_at_most(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{what} did not end within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Processes whose command line mentions `needle`: (pid, command line).
fn processes_mentioning(needle: &Path) -> Vec<(libc::pid_t, String)> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

#[test]
fn a_test_binary_that_is_pid1_of_a_container_runs_its_tests_in_vms() {
    if !is_root() {
        vmtest::__testing::missing("needs root for unshare --pid --mount-proc");
        return;
    }
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let tmp = TmpDir::new("pid1");
    // As `docker run <image> <test binary>`: the binary is PID 1 of its PID namespace.
    let mut command = tmp.command("unshare");
    command
        .args(["--pid", "--fork", "--kill-child", "--mount-proc", FAILING])
        .args(["--exact", "prints_kernel_release", "--nocapture"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = wait_at_most(command.spawn().unwrap(), Duration::from_secs(180), "the PID 1 run");
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("test prints_kernel_release ... "), "{stdout}");
    let release = stdout
        .lines()
        .find_map(|l| l.split("kernel release: ").nth(1))
        .unwrap_or_else(|| panic!("no release printed:\n{stdout}\n{stderr}"));
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(release.trim(), host.trim(), "the test ran on the host, not in a VM");
    assert!(stdout.contains("test result: ok. 1 passed"), "{stdout}");
    assert_eq!(std::fs::read_to_string("/proc/self/mountinfo").unwrap(), mounts_before);
}

#[test]
fn vmtest_test_set_on_the_host_runs_nothing() {
    let tmp = TmpDir::new("test-env");
    let output = tmp.command(FAILING).env("VMTEST_TEST", "prints_kernel_release").output().unwrap();
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(101), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stdout.contains("kernel release"), "the test ran on the host:\n{stdout}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for needle in ["VMTEST_TEST=prints_kernel_release", "not in a vmtest VM", "unset VMTEST_TEST"] {
        assert!(errors[0].contains(needle), "missing {needle:?} in {stderr}");
    }
}

/// A harness run that is interrupted (SIGINT) if this test ends first.
struct Harness(Child);

impl Drop for Harness {
    fn drop(&mut self) {
        if self.0.try_wait().unwrap().is_none() {
            let pid = libc::pid_t::try_from(self.0.id()).unwrap();
            // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child.
            unsafe { libc::kill(pid, libc::SIGINT) };
            let _ = self.0.wait();
        }
    }
}

/// What a run of the hanging test with `env`, in a fresh dir `name`, started QEMU as.
#[derive(Debug)]
struct QemuSeen {
    cmdline: String,
    /// The value of the asked-for line of QEMU's `/proc/<pid>/status`, read while it ran.
    status: String,
}

/// Starts the hanging test with `env`, waits for its QEMU, reads `field` (`Seccomp:`) of its
/// `/proc/<pid>/status`, and interrupts the run.
fn qemu_seen(name: &str, env: &[(&str, &str)], field: &str) -> QemuSeen {
    let tmp = TmpDir::new(name);
    let mut command = tmp.command(FAILING);
    command
        .args(["--exact", "hangs"])
        .env("VMTEST_TIMEOUT_SCALE", "30")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = Harness(command.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let (pid, cmdline) = loop {
        if let Some(found) = processes_mentioning(tmp.path()).into_iter().next() {
            break found;
        }
        assert!(Instant::now() < deadline, "no QEMU started");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Past QEMU's start-up, where the filter is installed.
    std::thread::sleep(Duration::from_millis(500));
    let seen = QemuSeen { status: status_field(pid, field), cmdline };
    interrupt(child);
    seen
}

/// The value of `field` (`Seccomp:`) in process `pid`'s `/proc/<pid>/status`.
fn status_field(pid: libc::pid_t, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix(field)).unwrap().trim().to_owned()
}

fn interrupt(mut harness: Harness) {
    let pid = libc::pid_t::try_from(harness.0.id()).unwrap();
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    assert_eq!(harness.0.wait().unwrap().code(), Some(130));
}

/// What a run with `variable=value`, in a fresh dir `name`, says on stderr.
fn stderr_with(name: &str, variable: &str, value: &str) -> String {
    let tmp = TmpDir::new(name);
    let output = tmp.command(FAILING).args(["--exact", "passes"]).env(variable, value).output();
    text(&output.unwrap().stderr)
}

#[test]
fn qemu_runs_under_its_seccomp_sandbox_unless_told_not_to() {
    let on = qemu_seen("seccomp-on", &[], "Seccomp:");
    assert!(on.cmdline.contains(" -sandbox on,"), "{on:?}");
    // 2: SECCOMP_MODE_FILTER.
    assert_eq!(on.status, "2", "{on:?}");

    // A fresh dir: the first QEMU, killed, may linger for a moment.
    let off = qemu_seen("seccomp-off", &[("VMTEST_QEMU_SANDBOX", "off")], "Seccomp:");
    assert!(!off.cmdline.contains(" -sandbox "), "{off:?}");
    assert_eq!(off.status, "0", "{off:?}");

    let stderr = stderr_with("seccomp-bad", "VMTEST_QEMU_SANDBOX", "yes");
    assert!(stderr.contains("error: VMTEST_QEMU_SANDBOX=\"yes\" is not one of"), "{stderr}");
}

/// Under TCG (all this machine has) QEMU runs without transparent huge pages by default.
#[test]
fn qemu_runs_without_huge_pages_under_tcg_unless_told_otherwise() {
    let auto = qemu_seen("thp-auto", &[], "THP_enabled:");
    assert!(auto.cmdline.contains(" -accel tcg"), "{auto:?}");
    assert_eq!(auto.status, "0", "{auto:?}");

    let on = qemu_seen("thp-on", &[("VMTEST_QEMU_THP", "on")], "THP_enabled:");
    // QEMU's default: the setting it inherits, which is this process's.
    let own = status_field(std::process::id().try_into().unwrap(), "THP_enabled:");
    assert_eq!(on.status, own, "{on:?}");

    let stderr = stderr_with("thp-bad", "VMTEST_QEMU_THP", "never");
    assert!(stderr.contains("error: VMTEST_QEMU_THP=\"never\" is not one of"), "{stderr}");
}

/// Files under `dir` that are being received (`<name>.vmtest-partial-<pid>-<n>`) or saved
/// (`*.partial`).
fn partials_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(partials_under(&path));
        } else if path.to_string_lossy().contains(".vmtest-partial-")
            || path.to_string_lossy().ends_with(".partial")
        {
            found.push(path);
        }
    }
    found
}

#[test]
fn sigint_during_an_artifact_transfer_leaves_no_partial_file() {
    // Where the fixture's runs keep their logs and artifacts, next to the binary.
    let logs = Path::new(ARTIFACTS).parent().unwrap().join("vmtest/fixture-artifacts");
    // What earlier runs killed outright may have left: the harness removes it when it claims
    // the dir, but this test must see this run's own partial file.
    for stale in partials_under(&logs) {
        let _ = std::fs::remove_file(stale);
    }
    let tmp = TmpDir::new("partial");
    let mut command = tmp.command(ARTIFACTS);
    command
        .args(["--exact", "sends_a_large_artifact"])
        .env("ARTIFACT_LEN", (64 << 20).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = Harness(command.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(180);
    let partial = loop {
        if let Some(partial) = partials_under(&logs).into_iter().next() {
            break partial;
        }
        assert!(Instant::now() < deadline, "no artifact transfer seen under {}", logs.display());
        std::thread::sleep(Duration::from_millis(2));
    };
    interrupt(child);
    assert!(!partial.exists(), "{} stayed", partial.display());
    assert_eq!(partials_under(&logs), Vec::<PathBuf>::new());
    assert_eq!(processes_mentioning(tmp.path()), Vec::new());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "temp files left behind");
}

#[test]
fn the_runner_sweeps_dead_runs_temp_dirs_and_keeps_live_ones() {
    let tmp = TmpDir::new("plain-sweep");
    // A run killed outright left this (it had locked and marked it).
    let dead = tmp.path().join("vmtest-4242-dEaD01");
    std::fs::create_dir(&dead).unwrap();
    std::fs::write(dead.join(".vmtest-locked"), "").unwrap();
    std::fs::write(dead.join("initrd.cpio"), "").unwrap();
    // A live run, in whatever PID namespace: it holds the lock.
    let live = tmp.path().join("vmtest-4243-LiVe01");
    std::fs::create_dir(&live).unwrap();
    std::fs::write(live.join(".vmtest-locked"), "").unwrap();
    let mut holder = Command::new("flock")
        .arg(&live)
        .args(["sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("flock(1) from util-linux");
    std::thread::sleep(Duration::from_millis(300));
    // An ordinary binary, with an init that does not exist: the runner fails after its sweep.
    let output = tmp
        .command(RUNNER)
        .arg("/bin/true")
        .env("VMTEST_INIT", tmp.path().join("no-such-init"))
        .output()
        .unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(text(&output.stderr).contains("no-such-init"), "{}", text(&output.stderr));
    assert!(!dead.exists(), "the dead run's dir stayed");
    assert!(live.exists(), "the live run's dir was removed");
}
