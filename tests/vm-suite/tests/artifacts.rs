//! Files from the guest, checked from outside: artifacts arrive byte-identical where the
//! harness says, a failed test gets the kernel log, and a file over the size limit is refused
//! while the rest of the run goes on.

use std::path::PathBuf;
use std::process::Command;

use vm_suite::{pseudo_random, BIG_ARTIFACT_LEN};

const FIXTURE: &str = env!("CARGO_BIN_EXE_fixture-artifacts");

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let output = Command::new(FIXTURE)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("VMTEST_TEST")
        .output()
        .unwrap();
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The directory named in `artifacts in <dir>: ...` for `test`, from stdout or stderr.
fn artifact_dir(ran: &Ran, test: &str) -> PathBuf {
    let text = format!("{}\n{}", ran.stdout, ran.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("artifacts in ") && l.contains(&format!("/{test}:")))
        .unwrap_or_else(|| panic!("no artifact line for {test}:\n{text}"));
    let dir = line.split("artifacts in ").nth(1).unwrap().rsplit_once(": ").unwrap().0;
    PathBuf::from(dir)
}

/// FNV-1a, 64 bits.
fn hash(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[test]
fn artifacts_arrive_intact_and_failures_bring_the_kernel_log() {
    let ran = run(&["--test-threads", "1"], &[]);
    assert_eq!(ran.code, Some(101), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    for line in [
        "test sends_a_large_artifact ... ok",
        "test sends_nested_artifacts ... ok",
        "test refuses_names_that_escape ... ok",
        "test fails_after_saving_an_artifact ... FAILED",
    ] {
        assert!(ran.stdout.lines().any(|l| l == line), "missing {line:?} in:\n{}", ran.stdout);
    }

    let big = std::fs::read(artifact_dir(&ran, "sends_a_large_artifact").join("big.bin")).unwrap();
    let expected = pseudo_random(BIG_ARTIFACT_LEN, 0x5eed);
    assert_eq!(big.len(), expected.len());
    assert_eq!(hash(&big), hash(&expected), "big.bin differs from what the guest wrote");

    let nested = artifact_dir(&ran, "sends_nested_artifacts");
    assert_eq!(std::fs::read_to_string(nested.join("logs/first.txt")).unwrap(), "first\n");
    assert_eq!(std::fs::read_to_string(nested.join("logs/deeper/second.txt")).unwrap(), "second\n");

    // A failure reads as libtest's; stderr names the artifacts, the kernel log among them.
    assert!(ran.stdout.contains("deliberate failure"), "{}", ran.stdout);
    let failed = artifact_dir(&ran, "fails_after_saving_an_artifact");
    assert!(!ran.stdout.contains("artifacts in "), "{}", ran.stdout);
    assert!(ran.stderr.contains(&format!("artifacts in {}: ", failed.display())), "{}", ran.stderr);
    assert_eq!(std::fs::read_to_string(failed.join("state.txt")).unwrap(), "what the test saw\n");
    let dmesg = std::fs::read_to_string(failed.join("dmesg.txt")).unwrap();
    assert!(dmesg.contains("Linux version"), "dmesg.txt lacks the boot messages:\n{dmesg}");
    // Nothing half-written stays behind.
    for dir in [&nested, &failed] {
        let leftovers: Vec<_> = walk(dir)
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".vmtest-partial"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

/// The last thing a VM sends before `Done` is a 64 MiB artifact, which QEMU passes on only as
/// fast as the host reads it: the guest must not end the VM (and QEMU with it) while the end
/// is still queued. Five runs: a guest that powered off at once lost the race in one run of
/// five to one of two here.
#[test]
fn a_large_artifact_sent_last_arrives_whole() {
    for attempt in 1..=5 {
        let ran = run(&["--exact", "sends_64_mib_last"], &[]);
        assert_eq!(
            ran.code,
            Some(0),
            "run {attempt}: stdout:\n{}\nstderr:\n{}",
            ran.stdout,
            ran.stderr
        );
        let last = artifact_dir(&ran, "sends_64_mib_last").join("last.bin");
        assert_eq!(std::fs::metadata(&last).unwrap().len(), 64 << 20, "run {attempt}");
    }
}

#[test]
fn a_file_over_the_limit_is_refused_and_the_run_goes_on() {
    let ran = run(
        &["--exact", "sends_a_large_artifact"],
        &[("VMTEST_FILE_LIMIT", "1M"), ("ARTIFACT_LEN", "3000000"), ("VMTEST_ENV", "ARTIFACT_LEN")],
    );
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stderr.contains("sends_a_large_artifact: a file from the guest: artifacts/big.bin: not sent (3000000 bytes): over the limit of 1048576 bytes per file (VMTEST_FILE_LIMIT)"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("artifacts in "), "{}", ran.stderr);
}

#[test]
fn odd_names_are_refused_and_nothing_overwrites_another_file() {
    let ran = run(&["--test-threads", "1", "names"], &[]);
    assert_eq!(ran.code, Some(101), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    for line in [
        "test refuses_reserved_and_unprintable_names ... ok",
        "test fails_with_odd_artifact_names ... FAILED",
    ] {
        assert!(ran.stdout.lines().any(|l| l == line), "missing {line:?} in:\n{}", ran.stdout);
    }
    let ok = artifact_dir(&ran, "refuses_reserved_and_unprintable_names");
    assert!(ok.join("logs/dmesg.txt").is_file());

    let failed = artifact_dir(&ran, "fails_with_odd_artifact_names");
    // The kernel log is vmtest's `dmesg.txt`; the test's own file of that name is refused.
    let dmesg = std::fs::read_to_string(failed.join("dmesg.txt")).unwrap();
    assert!(dmesg.contains("Linux version"), "dmesg.txt is not the kernel log:\n{dmesg}");
    // Both survive: the temporary file of `x` is no artifact's name.
    assert_eq!(std::fs::read_to_string(failed.join("x")).unwrap(), "x\n");
    assert_eq!(
        std::fs::read_to_string(failed.join("x.vmtest-partial")).unwrap(),
        "named like a temporary file\n"
    );
    let mut names: Vec<String> = walk(&failed)
        .iter()
        .map(|p| p.strip_prefix(&failed).unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["dmesg.txt", "x", "x.vmtest-partial"], "{names:?}");
    let test = "fails_with_odd_artifact_names: a file from the guest: artifacts/";
    for warning in [
        "dmesg.txt: rejected: `dmesg.txt` is reserved for the kernel log",
        "name-\\xfe: rejected: a name that is not UTF-8",
        "name-\\xff: rejected: a name that is not UTF-8",
        "esc-\\u{1b}]0;title\\u{7}: rejected: a control character in the name",
    ] {
        assert!(
            ran.stderr.contains(&format!("{test}{warning}")),
            "no {warning:?} in:\n{}",
            ran.stderr
        );
    }
    assert!(!ran.stderr.contains('\x1b'), "a raw escape reached the terminal:\n{}", ran.stderr);
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().unwrap().is_dir() {
            out.extend(walk(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}
