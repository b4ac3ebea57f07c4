//! The runner (`cargo vmtest run`) on this machine's arch: a vmtest binary is listed from its
//! ELF metadata exactly as it lists itself; an ordinary `#[test]` crate (`tests/plain-crate`)
//! boots under a static vmtest-init, its output shows, its exit code propagates.
//!
//! The plain crate and the static vmtest-init are built by nested cargo commands in a target
//! dir of their own (the outer `cargo test` holds the lock of the workspace's).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const RUNNER: &str = env!("CARGO_BIN_EXE_runner");
const MANY: &str = env!("CARGO_BIN_EXE_fixture-many");
const FAILING: &str = env!("CARGO_BIN_EXE_fixture-failing");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(workspace())
        .env("CARGO_TARGET_DIR", workspace().join("target/runner-tests"));
    command
}

/// The plain crate's test binary and a static vmtest-init for this arch, built once.
fn plain_build() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let triple = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
        let status = cargo()
            .args(["build", "-q", "-p", "vmtest-init", "--target", &triple])
            .status()
            .unwrap();
        assert!(status.success(), "building vmtest-init for {triple} failed");
        let init = workspace().join("target/runner-tests").join(&triple).join("debug/vmtest-init");
        let output = cargo()
            .args(["test", "-q", "-p", "plain-crate", "--lib", "--no-run", "--message-format=json"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let binary = stdout
            .lines()
            .filter(|l| l.contains("\"plain_crate\"") || l.contains("plain-crate"))
            .find_map(|l| l.split("\"executable\":\"").nth(1)?.split('"').next())
            .expect("cargo names the plain crate's test executable");
        (PathBuf::from(binary), init)
    })
}

/// Runs the plain crate's tests in a VM, from the crate's directory as cargo would.
fn run_plain(args: &[&str]) -> (Output, String, String) {
    let (binary, init) = plain_build();
    let output = Command::new(RUNNER)
        .arg(binary)
        .args(args)
        .env("VMTEST_INIT", init)
        .current_dir(workspace().join("tests/plain-crate"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

#[test]
fn lists_a_vmtest_binary_from_its_elf_like_the_binary_itself() {
    for args in [&["--list"][..], &["--list", "--ignored"], &["--list", "t1", "--skip", "t12"]] {
        let direct = Command::new(MANY).args(args).env_remove("VMTEST_TEST").output().unwrap();
        let through = Command::new(RUNNER).arg(MANY).args(args).output().unwrap();
        assert!(direct.status.success() && through.status.success());
        assert_eq!(
            String::from_utf8_lossy(&through.stdout),
            String::from_utf8_lossy(&direct.stdout),
            "{args:?}"
        );
    }
}

#[test]
fn plain_crate_passes_in_a_vm() {
    let (output, stdout, stderr) = run_plain(&[]);
    assert_eq!(output.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("test tests::adds ... ok"), "{stdout}");
    assert!(stdout.contains("test tests::sees_a_linux_kernel ... ok"), "{stdout}");
    assert!(stdout.contains("test tests::a_shell_pipeline_runs ... ok"), "{stdout}");
    assert!(stdout.contains("test tests::fails_on_purpose ... ignored"), "{stdout}");
}

#[test]
fn plain_crate_runs_as_under_cargo() {
    let (output, stdout, stderr) = run_plain(&["--nocapture", "--test-threads", "1"]);
    assert_eq!(output.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // With --nocapture the marker comes between a test's name and its `ok`.
    assert!(stdout.contains("test tests::process_state_is_as_under_cargo ... "), "{stdout}");
    assert!(stdout.contains("process state checked in the vmtest guest"), "{stdout}");
    assert!(stdout.contains("test tests::runs_in_the_package_directory ... ok"), "{stdout}");
    assert!(stdout.contains("test result: ok. 5 passed"), "{stdout}");
}

/// A `VMTEST_INIT` built from an older vmtest (protocol version 2): the run stops with an
/// error saying the guest's init is the older side and what to rebuild.
#[test]
fn an_old_vmtest_init_is_a_clear_error_naming_what_to_rebuild() {
    let (binary, _) = plain_build();
    let dir = tempfile::tempdir().unwrap();
    let old_init = dir.path().join("old-init");
    let triple = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
    let status = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--edition", "2021", "-O", "--target", &triple, "-o"])
        .arg(&old_init)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/runner/old_init.rs"))
        .status()
        .unwrap();
    assert!(status.success(), "building the old init failed");
    let output = Command::new(RUNNER)
        .arg(binary)
        .env("VMTEST_INIT", &old_init)
        .env("VMTEST_KERNEL", "6.12")
        .current_dir(workspace().join("tests/plain-crate"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&old_init.display().to_string()), "{stderr}");
    let expected = format!(
        "the guest speaks vmtest protocol version 2, the host version {}: the guest's \
         vmtest-init is older than the host's vmtest: rebuild it",
        vmtest::__snapshot::PROTOCOL_VERSION
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("VMTEST_INIT"), "{stderr}");
}

#[test]
fn plain_binary_in_a_directory_the_guest_mounts_over_is_a_clear_error() {
    let (binary, init) = plain_build();
    let output = Command::new(RUNNER)
        .arg(binary)
        .env("VMTEST_INIT", init)
        .current_dir("/proc/self")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("working directory /proc/"), "{stderr}");
    assert!(errors[0].contains("mounts proc on /proc"), "{stderr}");
}

#[test]
fn plain_crate_failure_and_exit_code_propagate() {
    let (output, stdout, stderr) = run_plain(&["--include-ignored", "--test-threads", "1"]);
    assert_eq!(output.status.code(), Some(101), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("test tests::fails_on_purpose ... FAILED"), "{stdout}");
    assert!(stdout.contains("test tests::adds ... ok"), "{stdout}");
    assert!(
        format!("{stdout}{stderr}").contains("plain-crate failure marker"),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn plain_crate_loads_modules_on_demand() {
    let (output, stdout, stderr) =
        run_plain(&["--ignored", "--exact", "tests::loads_modules_on_demand"]);
    assert_eq!(output.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("test tests::loads_modules_on_demand ... ok"), "{stdout}");
}

#[test]
fn plain_binary_without_vmtest_init_gets_one_built() {
    let (binary, _) = plain_build();
    // Moved out of its target dir: nothing there is looked at.
    let moved = std::env::temp_dir().join(format!("vmtest-plain-{}", std::process::id()));
    std::fs::create_dir_all(&moved).unwrap();
    let copy = moved.join("plain");
    std::fs::copy(binary, &copy).unwrap();
    // A cache of the runner tests' own: the first run builds vmtest-init from this workspace's
    // source into it, later runs let cargo find it fresh.
    let cache = workspace().join("target/runner-tests/xdg-cache");
    let run = |init: Option<&Path>| {
        let mut command = Command::new(RUNNER);
        command
            .arg(&copy)
            .current_dir(workspace().join("tests/plain-crate"))
            .env("XDG_CACHE_HOME", &cache)
            .env_remove("VMTEST_INIT");
        if let Some(init) = init {
            command.env("VMTEST_INIT", init);
        }
        command.output().unwrap()
    };
    let built = run(None);
    let missing = run(Some(&moved.join("no-such-init")));
    let _ = std::fs::remove_dir_all(&moved);
    let stdout = String::from_utf8_lossy(&built.stdout);
    let stderr = String::from_utf8_lossy(&built.stderr);
    assert_eq!(built.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("test tests::sees_a_linux_kernel ... ok"), "{stdout}");
    let triple = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
    let init = cache.join("vmtest/init/build").join(&triple).join("release/vmtest-init");
    assert!(init.is_file(), "no vmtest-init at {}; stderr:\n{stderr}", init.display());

    let missing_stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{missing_stderr}");
    assert!(missing_stderr.contains("VMTEST_INIT="), "{missing_stderr}");
    assert!(missing_stderr.contains("no-such-init is not a file"), "{missing_stderr}");
}

#[test]
fn a_kernel_for_another_arch_is_a_clear_error() {
    let other = match std::env::consts::ARCH {
        "aarch64" => vmtest::arch::Arch::X86_64,
        _ => vmtest::arch::Arch::Aarch64,
    };
    let store = vmtest::kernel::Store::open().unwrap();
    let Some(kernel) = store.list_arch(other).unwrap().into_iter().next() else {
        vmtest::__testing::missing(&format!(
            "no {other} kernel in the store (`cargo xtask setup` fetches one)"
        ));
        return;
    };
    let output = Command::new(FAILING)
        .args(["--exact", "passes"])
        .env_remove("VMTEST_TEST")
        .env("VMTEST_KERNEL", kernel.image())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let expected = format!("is for {other}, the test binary is for {}", std::env::consts::ARCH);
    assert!(stderr.contains(&expected), "{stderr}");
}
