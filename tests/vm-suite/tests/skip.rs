//! `vmtest::skip`: a vm_test that skips itself at run time is reported as ignored with its
//! reason, does not fail the run, and does not hide real failures next to it.

use std::process::Command;

const SKIP: &str = env!("CARGO_BIN_EXE_fixture-skip");

fn run(args: &[&str]) -> (std::process::ExitStatus, String) {
    let output = Command::new(SKIP).args(args).env_remove("VMTEST_TEST").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status, format!("{stdout}\n--- stderr ---\n{stderr}"))
}

#[test]
fn a_test_that_skips_itself_is_ignored_with_its_reason() {
    let (status, output) = run(&["--skip", "fails_without_skipping"]);
    assert!(status.success(), "a skip failed the run:\n{output}");
    // The reason is computed in the guest, from the running kernel.
    let line = output
        .lines()
        .find(|l| l.starts_with("test skips_itself "))
        .unwrap_or_else(|| panic!("{output}"));
    assert!(line.contains(" ... ignored, no frobnicator in 6."), "{line}");
    assert!(
        output.lines().any(|l| l.starts_with("test passes ") && l.ends_with("... ok")),
        "{output}"
    );
    assert!(output.contains("1 passed; 0 failed; 1 ignored"), "{output}");
}

#[test]
fn a_failure_next_to_a_skip_still_fails() {
    let (status, output) = run(&[]);
    assert_eq!(status.code(), Some(101), "{output}");
    assert!(output.contains("a real failure"), "{output}");
    assert!(output.contains("1 passed; 1 failed; 1 ignored"), "{output}");
}
