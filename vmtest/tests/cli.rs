//! The `cargo vmtest` program's command line, run as cargo runs it (`cargo-vmtest vmtest ...`):
//! help on every command with exit code 0, one `error:` and exit code 2 for a bad argument.

use std::process::{Command, Output};

fn cargo_vmtest(args: &[&str]) -> (Output, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cargo-vmtest"))
        .arg("vmtest")
        .args(args)
        // Nothing here may touch a kernel store.
        .env("VMTEST_KERNELS", "/nonexistent/vmtest-cli-test")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

#[test]
fn every_command_prints_its_help_and_exits_0() {
    for (args, usage) in [
        (&["--help"][..], "Usage: cargo vmtest <COMMAND>"),
        (&["run", "--help"], "Usage: cargo vmtest run <BINARY> [ARGS]..."),
        (&["test", "--help"], "Usage: cargo vmtest test [OPTIONS] [ARGS]..."),
        (&["kernel", "--help"], "Usage: cargo vmtest kernel <COMMAND>"),
        (&["kernel", "fetch", "--help"], "Usage: cargo vmtest kernel fetch [OPTIONS] <SERIES>..."),
        (
            &["kernel", "add", "-h"],
            "Usage: cargo vmtest kernel add [OPTIONS] --image <IMAGE> <NAME>",
        ),
        (&["kernel", "help", "verify"], "Usage: cargo vmtest kernel verify"),
        (&["userland", "fetch", "--help"], "Usage: cargo vmtest userland fetch [OPTIONS]"),
    ] {
        let (output, stdout, stderr) = cargo_vmtest(args);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stdout.contains(usage), "{args:?}: {stdout}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    let (_, stdout, _) = cargo_vmtest(&["kernel", "fetch", "--help"]);
    assert!(stdout.contains("--arch <ARCH>    Guest architecture"), "{stdout}");
    assert!(stdout.contains("--debug-symbols  Also fetch each kernel's debug image"), "{stdout}");
}

#[test]
fn a_bad_argument_is_one_error_with_exit_code_2() {
    for (args, error) in [
        (&["kernel", "fetch", "6.12", "--force"][..], "error: unexpected argument '--force' found"),
        (&["kernel", "list", "--arch", "sparc"], "unknown architecture `sparc`"),
        (&["userland", "install"], "error: unrecognized subcommand 'install'"),
        (&["frobnicate"], "error: unrecognized subcommand 'frobnicate'"),
        (&["run"], "error: the following required arguments were not provided"),
        (&["run", "--bogus"], "error: unexpected argument '--bogus' found"),
    ] {
        let (output, stdout, stderr) = cargo_vmtest(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(error), "{args:?}: {stderr}");
        assert_eq!(stderr.matches("error:").count(), 1, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
}

#[test]
fn run_hands_help_after_the_binary_to_the_binary() {
    // `--help` after the binary is the test binary's: the runner reads the (missing) binary
    // instead of printing its own usage.
    let (output, stdout, stderr) = cargo_vmtest(&["run", "/nonexistent/test-binary", "--help"]);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stdout.contains("Usage: cargo vmtest"), "{stdout}");
    assert!(stderr.contains("/nonexistent/test-binary"), "{stderr}");
}
