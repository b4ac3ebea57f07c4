//! Runs the libtest twin and the vmtest twin with the same arguments and checks that they
//! print the same on stdout, byte for byte, and exit with the same code. Masked first: times
//! (`finished in 0.24s`, JSON's `"exec_time": 0.24`) and thread ids in panic messages
//! (`thread 'x' (1234) panicked`), which differ between two runs of one libtest binary too.
//!
//! Every run but `--list` boots a VM; `RUST_BACKTRACE` is unset for both binaries (a backtrace
//! names the harness's own frames), and `RUSTC_BOOTSTRAP=1` lets libtest take
//! `-Z unstable-options` on a stable toolchain.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The two test binaries, built (or found up to date) by cargo.
struct Twins {
    libtest: PathBuf,
    vmtest: PathBuf,
}

fn twins() -> &'static Twins {
    static TWINS: OnceLock<Twins> = OnceLock::new();
    TWINS.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(&cargo)
            .args(["test", "--no-run", "--message-format=json", "-p", "libtest-twins"])
            .args(["--test", "twin_libtest", "--test", "twin_vmtest"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap_or_else(|e| panic!("failed to run {cargo:?}: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "failed to build the twins:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let executable = |target: &str| {
            let line = stdout
                .lines()
                .find(|l| l.contains(&format!("\"name\":\"{target}\"")) && l.contains("executable"))
                .unwrap_or_else(|| panic!("cargo did not build {target}:\n{stdout}"));
            let path = line.split("\"executable\":\"").nth(1).unwrap().split('"').next().unwrap();
            PathBuf::from(path)
        };
        Twins { libtest: executable("twin_libtest"), vmtest: executable("twin_vmtest") }
    })
}

/// What one binary printed on stdout, masked, and its exit code.
fn run(binary: &PathBuf, args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(binary)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_TEST_THREADS")
        .env_remove("RUST_TEST_NOCAPTURE")
        .env("RUSTC_BOOTSTRAP", "1")
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", binary.display()));
    let stdout = mask(&String::from_utf8_lossy(&output.stdout));
    (output.status.code(), stdout, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Replaces what follows each `prefix` while it is made of `chars` with `with`.
fn mask_after(text: &str, prefix: &str, chars: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        out.push_str(&rest[..at + prefix.len()]);
        rest = &rest[at + prefix.len()..];
        let end = rest.find(|c: char| !chars.contains(c)).unwrap_or(rest.len());
        if end > 0 {
            out.push_str(with);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn mask(text: &str) -> String {
    let text = mask_after(text, "finished in ", "0123456789.", "<time>");
    let text = mask_after(&text, "\"exec_time\": ", "0123456789.e-", "<time>");
    // `thread 'name' (1234) panicked`, also inside JSON strings and CDATA.
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("' (") {
        out.push_str(&rest[..at + 3]);
        rest = &rest[at + 3..];
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits > 0 && rest[digits..].starts_with(") panicked") {
            out.push_str("<tid>");
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

/// Runs both twins with `args` and asserts they print the same.
fn same_output(args: &[&str]) {
    let twins = twins();
    let (lib_code, lib_out, lib_err) = run(&twins.libtest, args);
    let (vm_code, vm_out, vm_err) = run(&twins.vmtest, args);
    if lib_out != vm_out {
        let line = lib_out.lines().zip(vm_out.lines()).position(|(a, b)| a != b);
        panic!(
            "with {args:?}, vmtest printed something else than libtest (first differing line: \
             {line:?})\n--- libtest ---\n{lib_out}\n--- vmtest ---\n{vm_out}\n--- vmtest stderr \
             ---\n{vm_err}"
        );
    }
    assert_eq!(
        vm_code, lib_code,
        "with {args:?}, the exit codes differ\nlibtest stderr:\n{lib_err}\nvmtest stderr:\n{vm_err}"
    );
}

#[test]
fn pretty_one_thread() {
    same_output(&["--test-threads=1"]);
}

#[test]
fn terse() {
    same_output(&["-q", "--test-threads", "1"]);
}

#[test]
fn json() {
    same_output(&["-Z", "unstable-options", "--format", "json", "--test-threads=1"]);
}

#[test]
fn junit() {
    // libtest panics writing a failure message with a newline into JUnit (it asserts that its
    // XML has none), so the case whose message has three lines is left out.
    same_output(&[
        "-Zunstable-options",
        "--format=junit",
        "--test-threads=1",
        "--skip",
        "wrong_message",
    ]);
}

#[test]
fn filtered_with_show_output() {
    same_output(&["cases::p", "--show-output", "--test-threads=1"]);
}

#[test]
fn ignored_only_exact() {
    same_output(&["--ignored", "--exact", "cases::ignored_with_reason", "--test-threads=1"]);
}

#[test]
fn nocapture() {
    same_output(&["--nocapture", "--test-threads=1", "--skip", "wrong_message"]);
}

#[test]
fn lists() {
    // Listing boots nothing.
    same_output(&["--list"]);
    same_output(&["--list", "--format", "terse"]);
    same_output(&["--list", "-Zunstable-options", "--format", "json"]);
    same_output(&["--list", "--ignored", "--skip", "without"]);
    same_output(&["--list", "nothing matches this"]);
}

#[test]
fn masking_leaves_everything_else() {
    assert_eq!(
        mask("thread 'a' (123) panicked; finished in 0.24s\n\"exec_time\": 1.5e-3 }"),
        "thread 'a' (<tid>) panicked; finished in <time>s\n\"exec_time\": <time> }"
    );
    assert_eq!(mask("it's (12) fine"), "it's (12) fine");
}
