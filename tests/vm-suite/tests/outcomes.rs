//! Runs the fixture binaries as a user would (`cargo test` runs them the same way) and checks
//! their output, exit codes, and that nothing is left behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

const FAILING: &str = env!("CARGO_BIN_EXE_fixture-failing");
const MANY: &str = env!("CARGO_BIN_EXE_fixture-many");

/// A private TMPDIR per harness run, so leftovers of exactly that run can be detected.
struct RunDir(PathBuf);

impl RunDir {
    fn new(label: &str) -> RunDir {
        let dir =
            std::env::temp_dir().join(format!("vmtest-outcomes-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        RunDir(dir)
    }

    fn command(&self, binary: &str) -> Command {
        let mut command = Command::new(binary);
        command.env("TMPDIR", &self.0).env_remove("VMTEST_TEST");
        command
    }

    /// Runs `binary` with `args` and `env` to the end.
    fn run(&self, binary: &str, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let mut command = self.command(binary);
        command.args(args);
        for (name, value) in env {
            command.env(name, value);
        }
        Ran::from(command.output().unwrap())
    }

    /// Asserts that no QEMU started for this run still runs and that the run's temp dir is empty.
    fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let leaked = processes_mentioning(&self.0);
            if leaked.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "QEMU processes left behind: {leaked:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let left: Vec<_> = std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "temp files left behind: {left:?}");
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Processes whose command line mentions `needle` (QEMU's mention their temp dir).
fn processes_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// What a finished harness run printed.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Ran {
    fn from(output: Output) -> Ran {
        let stdout = String::from_utf8_lossy(&output.stdout);
        Ran {
            code: output.status.code(),
            stdout: stdout.into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Ran {
    /// Asserts the exit status, showing both streams when it differs.
    fn expect_code(&self, code: i32) -> &Ran {
        assert_eq!(self.code, Some(code), "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// Asserts a failing exit status and exactly one `error:` line on stderr holding `expected`.
    fn expect_one_error(&self, expected: &[&str]) {
        assert!(self.code != Some(0), "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        let errors: Vec<&str> = self.stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "expected one error line:\n{}", self.stderr);
        assert_contains(errors[0], expected);
    }
}

fn assert_contains(haystack: &str, needles: &[&str]) {
    for needle in needles {
        assert!(haystack.contains(needle), "missing {needle:?} in:\n{haystack}");
    }
}

#[test]
fn failing_tests_fail_with_their_output() {
    let run = RunDir::new("failing");
    let ran = run.run(
        FAILING,
        &["--skip", "prints_kernel_release", "--test-threads", "1"],
        &[("VMTEST_TIMEOUT_SCALE", "1"), ("RUST_BACKTRACE", "0")],
    );
    assert_contains(
        &ran.expect_code(101).stdout,
        &[
            "running 8 tests",
            "test passes ... ok",
            "test panics ... FAILED",
            "test assertion_fails ... FAILED",
            "test exits_with_3 ... FAILED",
            "test hangs ... FAILED",
            "test hangs_left_nothing_running ... ok",
            "test returns_err ... FAILED",
            "test does_not_panic_as_required - should panic ... FAILED",
            "thread 'panics'",
            "panicked at tests/vm-suite/src/bin/fixture-failing.rs",
            "deliberate panic",
            "---- assertion_fails stdout ----\ncaptured stdout line\ncaptured stderr line\n\n",
            "arithmetic",
            "---- exits_with_3 stdout ----\nthe test process exited with status 3\n",
            "---- hangs stdout ----\nhang started\ntimed out after 2 s\nkernel console: ",
            "---- returns_err stdout ----\nError: \"deliberate error\"\n\n",
            "---- does_not_panic_as_required stdout ----\nnote: test did not panic as expected at \
             tests/vm-suite/src/bin/fixture-failing.rs:45:4\n",
            "\nfailures:\n    assertion_fails\n    does_not_panic_as_required\n    exits_with_3\n    \
             hangs\n    panics\n    returns_err\n",
            "test result: FAILED. 2 passed; 6 failed; 0 ignored; 0 measured; 1 filtered out",
        ],
    );
    // Ordinary failures read as libtest's: no exit status, no console log; the kernel log
    // saved for each failed test is named on stderr.
    let returns_err = ran.stdout.split("---- returns_err stdout ----").nth(1).unwrap();
    assert!(!returns_err.split("----").next().unwrap().contains("status 1"), "{}", ran.stdout);
    assert_eq!(ran.stdout.matches("kernel console: ").count(), 2, "{}", ran.stdout);
    assert_contains(&ran.stderr, &["vmtest: returns_err: artifacts in ", "dmesg.txt"]);
    // The backtrace hint of the standard panic hook appears once, as in one libtest process.
    let hint = "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace";
    assert_eq!(ran.stdout.matches(hint).count(), 1, "{}", ran.stdout);
    run.assert_clean();
}

/// The guest's copy of the test binary has its debug sections only when a backtrace is asked
/// for (or `VMTEST_DEBUG_INFO=keep`): a backtrace then names files and lines; without them it
/// names the same functions.
#[test]
fn guest_backtraces_name_lines_when_the_debug_sections_are_kept() {
    let run = RunDir::new("debug-info");
    let backtrace = |debug_info: &str| {
        let ran = run.run(
            FAILING,
            &["--exact", "panics"],
            &[("RUST_BACKTRACE", "1"), ("VMTEST_DEBUG_INFO", debug_info)],
        );
        let stdout = &ran.expect_code(101).stdout;
        let start = stdout.find("stack backtrace:").unwrap_or_else(|| panic!("{stdout}"));
        stdout[start..].to_owned()
    };
    // Unset: RUST_BACKTRACE asks for backtraces, so the sections are kept.
    for kept in [backtrace(""), backtrace("keep")] {
        assert_contains(&kept, &["fixture_failing::panics\n", "src/bin/fixture-failing.rs:13:5\n"]);
    }
    let stripped = backtrace("strip");
    assert_contains(&stripped, &["fixture_failing::panics\n"]);
    assert!(!stripped.contains("fixture-failing.rs:"), "{stripped}");

    run.assert_clean();
}

#[test]
fn command_line_errors_are_libtests() {
    let run = RunDir::new("usage");
    let ran = run.run(FAILING, &["--format", "xml"], &[]);
    ran.expect_code(101).expect_one_error(&[
        "argument for --format must be pretty, terse, json or junit (was xml)",
    ]);
    let ran = run.run(FAILING, &["--fail-fast"], &[]);
    ran.expect_code(101).expect_one_error(&["vmtest does not support `--fail-fast`"]);
    let ran = run.run(FAILING, &["--help"], &[]);
    assert_contains(&ran.expect_code(0).stdout, &["Usage: ", "--test-threads", "--format"]);
    run.assert_clean();
}

#[test]
fn a_kernel_panic_fails_its_test_and_the_rest_run_in_a_fresh_vm() {
    let run = RunDir::new("crash");
    let ran = run.run(env!("CARGO_BIN_EXE_fixture-crash"), &["--test-threads", "1"], &[]);
    assert_contains(
        &ran.expect_code(101).stdout,
        &[
            "test a_runs_before_the_crash ... ok",
            "test b_panics_the_kernel ... FAILED",
            "test c_runs_in_a_fresh_vm ... ok",
            "the VM failed while this test ran",
            "Kernel panic",
            "test result: FAILED. 2 passed; 1 failed",
        ],
    );
    run.assert_clean();
}

#[test]
fn an_out_of_tree_module_loads_from_modules_and_its_warning_fails_the_test() {
    let Ok(kernel) = vmtest::kernel::resolve(Some("6.12"), vmtest::arch::Arch::host()) else {
        vmtest::__testing::missing("no 6.12 kernel in the store (`cargo xtask setup` fetches one)");
        return;
    };
    let module = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kernel-suite/kmod/build")
        .join(kernel.name())
        .join("kst_chardev.ko");
    if !module.is_file() {
        vmtest::__testing::missing(&format!("{} (`cargo xtask test` builds it)", module.display()));
        return;
    }
    let run = RunDir::new("kmod-warn");
    let ran = run.run(env!("CARGO_BIN_EXE_fixture-kmod"), &[], &[]);
    assert_contains(
        &ran.expect_code(101).stdout,
        &[
            "test module_file_is_loaded_before_the_test ... ok",
            "test module_warning_fails ... FAILED",
            "the kernel reported a kernel WARNING while this test ran",
            "kst_chardev.c:33 kst_ioctl",
            "Modules linked in: kst_chardev(OE)",
            "test result: FAILED. 1 passed; 1 failed",
        ],
    );
    run.assert_clean();
}

#[test]
fn kernel_splats_fail_the_test_that_was_running() {
    let run = RunDir::new("splat");
    let ran = run.run(env!("CARGO_BIN_EXE_fixture-splat"), &["--test-threads", "1"], &[]);
    assert_contains(
        &ran.expect_code(101).stdout,
        &[
            "test hung_task_fails ... FAILED",
            "the kernel reported a hung task while this test ran",
            "blocked for more than 1 seconds",
            "test warning_fails ... FAILED",
            "the kernel reported a kernel WARNING while this test ran (`allow_kernel_warnings`",
            "at vmtest/fixture.c:1 injected_warning",
            "test warning_allowed ... ok",
            "test oops_fails_even_when_warnings_are_allowed ... FAILED",
            "the kernel reported a kernel Oops",
            "test quiet_kernel_passes ... ok",
            "test result: FAILED. 2 passed; 3 failed",
        ],
    );
    // Each splat is reported once, with the test that was running.
    assert_eq!(ran.stdout.matches("injected_warning").count(), 1, "{}", ran.stdout);
    run.assert_clean();
}

#[test]
fn concurrent_runs_of_one_binary_keep_their_own_logs() {
    let run = RunDir::new("concurrent");
    let start = || {
        run.command(env!("CARGO_BIN_EXE_fixture-splat"))
            .args(["--exact", "warning_fails"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (start(), start());
    let logs: Vec<String> = [first, second]
        .into_iter()
        .map(|child| {
            let ran = Ran::from(child.wait_with_output().unwrap());
            assert_contains(&ran.expect_code(101).stdout, &["test warning_fails ... FAILED"]);
            let log = ran.stdout.lines().find_map(|l| l.strip_prefix("kernel console: "));
            log.unwrap_or_else(|| panic!("no console log named:\n{}", ran.stdout)).to_owned()
        })
        .collect();
    assert_ne!(logs[0], logs[1], "both runs wrote the same console log");
    for log in &logs {
        let console = std::fs::read_to_string(log).unwrap();
        assert_contains(&console, &["injected_warning", "vmtest-init: timing since boot: "]);
    }
    run.assert_clean();
}

#[test]
fn guest_runs_the_kernel_it_was_given() {
    // The kernel the harness would pick by default, given to it explicitly as a path.
    let kernel = vmtest::kernel::resolve(None, vmtest::arch::Arch::host()).unwrap();
    let kernel = kernel.image();
    let kernel = kernel.to_str().unwrap();
    let run = RunDir::new("release");
    let ran = run.run(
        FAILING,
        &["--exact", "prints_kernel_release", "--nocapture"],
        &[("VMTEST_KERNEL", kernel)],
    );
    let stdout = &ran.expect_code(0).stdout;
    let release = stdout
        .lines()
        .find_map(|l| l.strip_prefix("kernel release: "))
        .unwrap_or_else(|| panic!("no release printed:\n{stdout}"));
    let image = std::fs::read(kernel).unwrap();
    assert!(
        image.windows(release.len()).any(|w| w == release.as_bytes()),
        "the guest runs {release}, which is not the version in {kernel}"
    );
    run.assert_clean();
}

#[test]
fn listing_boots_nothing() {
    let run = RunDir::new("list");
    // Neither QEMU nor a kernel can be found: listing must not need them.
    let path = run.0.to_str().unwrap();
    let ran =
        run.run(MANY, &["--list"], &[("PATH", path), ("VMTEST_KERNEL", "/nonexistent/vmlinuz")]);
    let listed = ran.expect_code(0).stdout.lines().filter(|l| l.ends_with(": test")).count();
    assert_eq!(listed, 20, "{}", ran.stdout);
    let ran = run.run(MANY, &["--exact", "nothing"], &[("PATH", path)]);
    assert_contains(&ran.expect_code(0).stdout, &["running 0 tests", "20 filtered out"]);
    run.assert_clean();
}

/// Runs the failing fixture's `passes` test with `env` and expects one clear error line.
fn expect_setup_error(label: &str, env: &[(&str, &str)], expected: &[&str]) {
    let run = RunDir::new(label);
    run.run(FAILING, &["--exact", "passes"], env).expect_one_error(expected);
    run.assert_clean();
}

#[test]
fn a_bad_debug_info_setting_is_one_clear_error() {
    expect_setup_error(
        "debug-info-value",
        &[("VMTEST_DEBUG_INFO", "some")],
        &["VMTEST_DEBUG_INFO=\"some\" is not one of keep, strip"],
    );
}

#[test]
fn missing_kernel_is_one_clear_error() {
    expect_setup_error(
        "nokernel",
        &[("VMTEST_KERNEL", "/nonexistent/vmlinuz")],
        &["/nonexistent/vmlinuz"],
    );
}

#[test]
fn a_file_that_is_not_a_kernel_is_one_clear_error() {
    let not_a_kernel = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    expect_setup_error("notkernel", &[("VMTEST_KERNEL", not_a_kernel)], &[not_a_kernel, "kernel"]);
}

#[test]
fn unknown_kernel_name_lists_the_store_and_the_fetch_command() {
    expect_setup_error(
        "unknownkernel",
        &[("VMTEST_KERNEL", "5.99")],
        &["5.99", "kernel fetch 5.99"],
    );
}

#[test]
fn unknown_module_is_one_clear_error() {
    let run = RunDir::new("badmodule");
    let ran = run.run(env!("CARGO_BIN_EXE_fixture-badmodule"), &[], &[]);
    ran.expect_code(1).expect_one_error(&["dummmy", "6.12", "dummy"]);
    run.assert_clean();
}

#[test]
fn missing_qemu_says_how_to_install_it() {
    let empty = RunDir::new("emptypath");
    expect_setup_error(
        "noqemu",
        &[("PATH", empty.0.to_str().unwrap())],
        &["qemu-system-", "apt-get install -y --no-install-recommends qemu-system-"],
    );
}

#[test]
fn forcing_unusable_kvm_is_one_clear_error() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_flags = cpuinfo.split_whitespace().any(|f| f == "vmx" || f == "svm");
    if has_flags && std::fs::File::options().read(true).write(true).open("/dev/kvm").is_ok() {
        eprintln!("skipped: KVM is usable on this machine, so forcing it is not an error");
        return;
    }
    expect_setup_error(
        "kvm",
        &[("VMTEST_ACCEL", "kvm")],
        &["VMTEST_ACCEL=kvm", "KVM cannot be used"],
    );
}

#[test]
fn kvm_that_fails_at_boot_falls_back_to_tcg() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_flags = cpuinfo.split_whitespace().any(|f| f == "vmx" || f == "svm");
    let opens = std::fs::File::options().read(true).write(true).open("/dev/kvm").is_ok();
    if has_flags || !opens {
        eprintln!(
            "skipped: needs a /dev/kvm that opens but cannot run the guest (as on paravirtual KVM)"
        );
        return;
    }
    let run = RunDir::new("kvmfallback");
    // Trusting /dev/kvm skips the CPU-flag check, so the first boot really tries KVM.
    let ran = run.run(FAILING, &["--exact", "passes"], &[("VMTEST_KVM_PROBE", "trust")]);
    assert_contains(&ran.expect_code(0).stdout, &["test passes ... ok"]);
    let warnings: Vec<&str> = ran.stderr.lines().filter(|l| l.contains("KVM failed")).collect();
    assert_eq!(warnings.len(), 1, "{}", ran.stderr);
    assert_contains(warnings[0], &["vmtest: warning:", "using TCG"]);
    run.assert_clean();
    // Forced, the same failure is reported instead.
    let ran = run.run(
        FAILING,
        &["--exact", "passes"],
        &[("VMTEST_KVM_PROBE", "trust"), ("VMTEST_ACCEL", "kvm")],
    );
    assert_contains(
        &ran.expect_code(101).stdout,
        &["test passes ... FAILED", "KVM failed while forced by VMTEST_ACCEL=kvm"],
    );
    run.assert_clean();
}

/// Starts `command` with its stdout piped and waits until `ready` holds for the output so far
/// (at most two minutes). Returns the child, that output, and the lines still to come; stderr
/// is discarded.
fn start_and_wait_until(
    mut command: Command,
    ready: impl Fn(&str) -> bool,
) -> (Child, String, Receiver<String>) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = String::new();
    while !ready(&seen) {
        assert!(Instant::now() < deadline, "never got ready; output so far:\n{seen}");
        if let Ok(line) = receiver.recv_timeout(Duration::from_millis(20)) {
            seen.push_str(&line);
            seen.push('\n');
        }
    }
    (child, seen, receiver)
}

#[test]
fn a_vm_killed_from_outside_fails_its_test_and_the_rest_run_in_a_fresh_vm() {
    let run = RunDir::new("killed");
    let mut command = run.command(env!("CARGO_BIN_EXE_fixture-killed"));
    command.args(["--test-threads", "1", "--nocapture"]);
    let (mut child, mut seen, rest) =
        start_and_wait_until(command, |seen| seen.contains("waiting to be killed"));
    let qemu = processes_mentioning(&run.0);
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    let pid: libc::pid_t = qemu[0].split(':').next().unwrap().parse().unwrap();
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is the run's QEMU.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    seen.extend(rest.iter().map(|line| line + "\n"));
    assert_eq!(child.wait().unwrap().code(), Some(101), "{seen}");
    assert_contains(
        &seen,
        &[
            "---- a_waits_to_be_killed stdout ----",
            "the VM failed while this test ran",
            "(QEMU signal: 9 (SIGKILL))",
            "test b_runs_in_a_fresh_vm ... b ran\nok",
            "test result: FAILED. 1 passed; 1 failed",
        ],
    );
    run.assert_clean();
}

/// Starts the hanging test with live output, waits for `ready`, sends `signal`, and checks
/// that the harness exits with 128 + signal and leaves nothing behind.
fn interrupt(label: &str, signal: libc::c_int, ready: impl Fn(&str, &RunDir) -> bool) {
    let run = RunDir::new(label);
    let mut command = run.command(FAILING);
    command.args(["--exact", "hangs", "--nocapture"]).env("VMTEST_TIMEOUT_SCALE", "30");
    let (mut child, _, _) = start_and_wait_until(command, |seen| ready(seen, &run));
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + signal), "{status}");
    run.assert_clean();
}

#[test]
fn a_guest_that_stops_answering_fails_at_the_host_deadline() {
    let run = RunDir::new("frozen");
    let mut command = run.command(FAILING);
    command.args(["--exact", "hangs", "--nocapture"]).env("VMTEST_TIMEOUT_SCALE", "1");
    let (mut child, mut seen, rest) =
        start_and_wait_until(command, |seen| seen.contains("hang started"));
    // A frozen VM: neither the guest's own timeout nor anything else gets through.
    let qemu = processes_mentioning(&run.0);
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    let pid: libc::pid_t = qemu[0].split(':').next().unwrap().parse().unwrap();
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is the run's QEMU.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    seen.extend(rest.iter().map(|line| line + "\n"));
    assert_eq!(child.wait().unwrap().code(), Some(101), "{seen}");
    assert_contains(&seen, &["---- hangs stdout ----", "the guest stopped answering"]);
    run.assert_clean();
}

#[test]
fn a_harness_killed_outright_takes_its_vm_along_and_the_next_run_cleans_up() {
    let run = RunDir::new("sigkill");
    let mut command = run.command(FAILING);
    command.args(["--exact", "hangs", "--nocapture"]).env("VMTEST_TIMEOUT_SCALE", "30");
    let (mut child, _, _) = start_and_wait_until(command, |seen| seen.contains("hang started"));
    child.kill().unwrap();
    child.wait().unwrap();
    // QEMU dies with its parent (PR_SET_PDEATHSIG); its temp dir stays behind...
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_mentioning(&run.0).is_empty() {
        assert!(Instant::now() < deadline, "QEMU outlived its harness");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        std::fs::read_dir(&run.0).unwrap().next().is_some(),
        "expected the dead run's temp dir"
    );
    // ...until the next run, which works and removes it.
    run.run(FAILING, &["--exact", "passes"], &[]).expect_code(0);
    run.assert_clean();
}

#[test]
fn a_panicking_harness_stops_its_vms_and_removes_their_temp_dirs() {
    // `cargo test | head -1`: once the reader is gone, the harness's next line of output
    // panics ("failed printing to stdout") while the VM still runs the other tests.
    let run = RunDir::new("panic");
    let mut command = run.command(MANY);
    command.args(["--test-threads", "1"]);
    let (mut child, _, rest) = start_and_wait_until(command, |seen| seen.contains(" ... ok"));
    drop(rest);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(101), "{status}");
    run.assert_clean();
}

#[test]
fn sigint_during_boot_leaves_nothing_behind() {
    interrupt("sigint", libc::SIGINT, |_, run| !processes_mentioning(&run.0).is_empty());
}

#[test]
fn sigterm_during_a_test_leaves_nothing_behind() {
    interrupt("sigterm", libc::SIGTERM, |seen, _| seen.contains("hang started"));
}

const GUEST: &str = env!("CARGO_BIN_EXE_fixture-guest");

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn guest_clock_matches_the_host() {
    let run = RunDir::new("clock");
    let mut child = run
        .command(GUEST)
        .args(["--exact", "prints_guest_clock", "--nocapture"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The line streams out while the VM runs: compare with the host's clock when it arrives.
    let mut seen = None;
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(guest) = line.strip_prefix("guest clock: ") {
            seen = Some((guest.parse::<f64>().unwrap(), unix_now()));
        }
        lines.push(line);
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "stdout:\n{}\nstderr:\n{stderr}", lines.join("\n"));
    let (guest, host) =
        seen.unwrap_or_else(|| panic!("no guest clock printed:\n{}", lines.join("\n")));
    // The RTC has whole seconds; the line takes a moment to reach the host.
    let skew = host - guest;
    assert!((-1.5..3.0).contains(&skew), "guest clock {guest} vs host {host}: off by {skew:.3} s");
    run.assert_clean();
}

#[test]
fn a_vanished_fixture_is_one_clear_error() {
    // A copy of the binary whose fixture path names a file that does not exist: as if the file
    // had been removed after the test was compiled.
    let listed = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vanishing.txt");
    let vanished = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vanishing.txx");
    let mut binary = std::fs::read(GUEST).unwrap();
    let mut patched = 0;
    let mut at = 0;
    while let Some(pos) = binary[at..].windows(listed.len()).position(|w| w == listed.as_bytes()) {
        binary[at + pos..at + pos + listed.len()].copy_from_slice(vanished.as_bytes());
        at += pos + listed.len();
        patched += 1;
    }
    assert!(patched > 0, "{listed} not found in {GUEST}");
    let dir = RunDir::new("patched");
    let copy = dir.0.join("fixture-guest");
    std::fs::write(&copy, binary).unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let run = RunDir::new("vanished");
    let ran = run.run(copy.to_str().unwrap(), &["--exact", "reads_a_fixture"], &[]);
    ran.expect_one_error(&[vanished, "fixture"]);
    run.assert_clean();
}

/// What `prints_its_userland` printed, and the `vmtest: warning:` lines of the run.
fn userland_run(label: &str, env: &[(&str, &str)]) -> (String, Vec<String>) {
    let run = RunDir::new(label);
    let ran = run.run(GUEST, &["--exact", "prints_its_userland", "--nocapture"], env);
    ran.expect_code(0);
    let printed = ran
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("userland: "))
        .unwrap_or_else(|| panic!("nothing printed:\n{}\n{}", ran.stdout, ran.stderr))
        .to_owned();
    let warnings =
        ran.stderr.lines().filter(|l| l.contains("warning:")).map(str::to_owned).collect();
    run.assert_clean();
    (printed, warnings)
}

#[test]
fn the_guest_has_a_userland_unless_told_otherwise() {
    let (printed, warnings) = userland_run("userland", &[]);
    assert_eq!((printed.as_str(), warnings), ("sh=true usr=true", vec![]));
    let (printed, warnings) = userland_run("nouserland", &[("VMTEST_USERLAND", "none")]);
    assert_eq!((printed.as_str(), warnings), ("sh=false usr=true", vec![]));
}

#[test]
fn without_a_stored_userland_nor_apt_a_run_warns_once_and_goes_on() {
    // A store with the real one's kernels and no userland; a PATH with QEMU and without apt.
    let arch = vmtest::arch::Arch::host();
    let scratch = RunDir::new("userland-store");
    let (store, bin) = vm_suite::store_without_extras(&scratch.0, arch);
    let env = [("VMTEST_KERNELS", store.to_str().unwrap()), ("PATH", bin.to_str().unwrap())];

    let (printed, warnings) = userland_run("userland-missing", &env);
    assert_eq!(printed, "sh=false usr=true");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_contains(
        &warnings[0],
        &["no userland", "apt", &format!("cargo vmtest userland fetch --arch {arch}")],
    );
    assert!(!store.join("userland").exists(), "nothing was written to the store");
}

#[test]
fn a_bad_userland_setting_is_one_clear_error() {
    expect_setup_error(
        "userland-name",
        &[("VMTEST_USERLAND", "alpine")],
        &["VMTEST_USERLAND=alpine"],
    );
    // A dynamically linked binary: this suite's own test binary.
    expect_setup_error(
        "userland-dynamic",
        &[("VMTEST_USERLAND", FAILING)],
        &[FAILING, "static busybox"],
    );
}

#[test]
fn a_working_directory_the_guest_mounts_over_is_one_clear_error() {
    let run = RunDir::new("procdir");
    let env = [("CARGO_MANIFEST_DIR", "/proc/checkout")];
    let ran = run.run(FAILING, &["--exact", "passes"], &env);
    ran.expect_one_error(&[
        "working directory /proc/checkout (CARGO_MANIFEST_DIR)",
        "the guest mounts proc on /proc",
    ]);
    run.assert_clean();
}

#[test]
fn rust_backtrace_shows_symbols_from_the_guest() {
    let run = RunDir::new("backtrace");
    let ran = run.run(FAILING, &["--exact", "panics"], &[("RUST_BACKTRACE", "1")]);
    assert_contains(
        &ran.expect_code(101).stdout,
        &["deliberate panic", "stack backtrace:", "fixture_failing::panics"],
    );
    run.assert_clean();
}

#[test]
fn a_kernel_given_by_path_loads_modules_from_its_modules_dir() {
    // A stored kernel given by path, as a user's own build would be: its modules dir named by
    // VMTEST_KERNEL_MODULES. 6.1's modules are plain `.ko`, so its alias index builds quickly.
    let Ok(kernel) = vmtest::kernel::resolve(Some("6.1"), vmtest::arch::Arch::host()) else {
        vmtest::__testing::missing("no 6.1 kernel in the store (`cargo xtask setup` fetches one)");
        return;
    };
    let modules = kernel.modules_dir().expect("a stored 6.1 kernel has modules");
    let before: Vec<_> = std::fs::read_dir(modules).unwrap().map(|e| e.unwrap().path()).collect();
    let run = RunDir::new("path-modules");
    let ran = run.run(
        GUEST,
        &["--exact", "loads_a_module_by_alias"],
        &[
            ("VMTEST_KERNEL", kernel.image().to_str().unwrap()),
            ("VMTEST_KERNEL_MODULES", modules.to_str().unwrap()),
        ],
    );
    ran.expect_code(0);
    // Not a store kernel: the index is built for this run and written nowhere.
    assert_contains(&ran.stderr, &["vmtest: indexed the", "not kept"]);
    let after: Vec<_> = std::fs::read_dir(modules).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(before, after, "the modules dir changed");
    run.assert_clean();
}

#[test]
fn a_kernel_given_by_path_boots_through_pvh_like_a_stored_one() {
    if vmtest::arch::Arch::host() != vmtest::arch::Arch::X86_64 {
        return; // PVH is x86_64's.
    }
    let Ok(kernel) = vmtest::kernel::resolve(Some("6.12"), vmtest::arch::Arch::X86_64) else {
        vmtest::__testing::missing("no 6.12 kernel in the store (`cargo xtask setup` fetches one)");
        return;
    };
    // A developer's own build: a bzImage at a path of its own, not in the store.
    let build = tempfile::Builder::new().prefix("vmtest-own-build-").tempdir().unwrap();
    let bzimage = build.path().join("bzImage");
    std::fs::copy(kernel.image(), &bzimage).unwrap();
    let run = RunDir::new("path-pvh");
    let ran = run.run(
        GUEST,
        &["--exact", "prints_its_boot_protocol", "--nocapture"],
        &[("VMTEST_KERNEL", bzimage.to_str().unwrap())],
    );
    ran.expect_code(0);
    // PVH fills the boot parameters itself (version 2.12); a loaded bzImage keeps its own.
    assert_contains(&ran.stdout, &["boot protocol: 0x020c"]);
    run.assert_clean();
}

/// Copies files and dirs from `from` into `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let ty = entry.file_type().unwrap();
        if ty.is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        } else if ty.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn store_kernels_are_checked_before_they_boot_and_skipped_when_damaged() {
    let arch = vmtest::arch::Arch::host();
    let Ok(real) = vmtest::kernel::resolve(Some("6.12"), arch) else {
        vmtest::__testing::missing("no 6.12 kernel in the store (`cargo xtask setup` fetches one)");
        return;
    };
    let real_store = vmtest::kernel::Store::open().unwrap();
    // A store of our own (the real one is shared with other runs): a copy of the stored 6.12
    // as vmtest wrote entries before it kept checksums, with a vmlinux-pvh left empty by a
    // crash, beside a newer entry whose kernel.meta is garbage.
    let scratch = RunDir::new("store-check-store");
    let store = scratch.0.join("store");
    let src = real.store_dir().expect("a stored kernel has its dir");
    let name = src.file_name().unwrap().to_str().unwrap().to_owned();
    let entry = store.join(arch.name()).join(&name);
    std::fs::create_dir_all(&entry).unwrap();
    for file in ["vmlinuz", "config"] {
        std::fs::copy(src.join(file), entry.join(file)).unwrap();
    }
    copy_tree(&src.join("modules"), &entry.join("modules"));
    let meta = std::fs::read_to_string(src.join("kernel.meta")).unwrap();
    let legacy: String =
        meta.lines().filter(|l| !l.starts_with("sums=")).map(|l| format!("{l}\n")).collect();
    std::fs::write(entry.join("kernel.meta"), legacy).unwrap();
    std::fs::write(entry.join("vmlinux-pvh"), b"").unwrap();
    let corrupt = store.join(arch.name()).join(format!("6.12.999+deb12-{}", arch.debian_name()));
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("kernel.meta"), b"\0\0\xffnot metadata").unwrap();
    std::os::unix::fs::symlink(real_store.root().join("userland"), store.join("userland")).unwrap();
    let env = [("VMTEST_KERNELS", store.to_str().unwrap()), ("VMTEST_KERNEL", "6.12")];
    let boot = |label: &str| {
        let run = RunDir::new(label);
        let ran = run.run(FAILING, &["--exact", "prints_kernel_release", "--nocapture"], &env);
        run.assert_clean();
        ran
    };

    // First use: the checksums are recorded, the empty PVH image is made again, the corrupt
    // entry is skipped with one warning naming it and its repair, and the kernel boots.
    let ran = boot("store-check-first");
    let stdout = &ran.expect_code(0).stdout;
    assert_contains(stdout, &[&format!("kernel release: {name}")]);
    let entry_path = entry.display().to_string();
    assert_contains(
        &ran.stderr,
        &[
            &format!("recording the checksums of the kernel store entry {entry_path}"),
            &format!("removed the damaged {entry_path}/vmlinux-pvh (it is empty)"),
        ],
    );
    let skipped: Vec<&str> = ran.stderr.lines().filter(|l| l.contains("skipping")).collect();
    assert_eq!(skipped.len(), 1, "{}", ran.stderr);
    assert_contains(
        skipped[0],
        &[&corrupt.display().to_string(), &format!("kernel fetch 6.12 --arch {arch}")],
    );
    assert!(entry.join("kernel.sums").is_file());
    assert!(std::fs::metadata(entry.join("vmlinux-pvh")).unwrap().len() > 0);

    // Verified against its checksums, it boots again, and nothing is recorded twice.
    let ran = boot("store-check-verified");
    assert_contains(&ran.expect_code(0).stdout, &[&format!("kernel release: {name}")]);
    assert!(!ran.stderr.contains("recording"), "{}", ran.stderr);

    // A flipped byte under a new mtime: one error naming the entry and the repair, no boot.
    let image = entry.join("vmlinuz");
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[0x1000] ^= 0xff;
    std::fs::write(&image, &bytes).unwrap();
    let ran = boot("store-check-damaged");
    ran.expect_one_error(&[
        &format!("the entry {entry_path} is damaged"),
        "`vmlinuz` does not match its SHA-256",
        &format!("kernel fetch 6.12 --arch {arch}"),
    ]);
}
