//! `cargo xtask compat`: published crates' own test suites, unmodified, on the host and in VMs.
//!
//! Each crate of [`SUITES`] is fetched through cargo at a pinned version into
//! `target/compat/`, its test binaries are built as its authors build them (`cargo test --lib
//! --tests`, its own features), and each binary runs once on the host and once per
//! [`TARGETS`] entry through `cargo-vmtest run` (as a cargo target runner would run it). The
//! check fails when a binary ends abnormally in a VM (killed, no summary line) or a test that
//! passes on the host does not pass in the VM, unless [`KNOWN`] lists it with its reason. Such
//! a test is run once more by itself first: one that then passes is noted in the report
//! (timing-dependent under TCG), not failed. The table goes to stdout and
//! `target/compat/compatibility.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use vmtest::arch::Arch;

use crate::exec::status;

/// A published crate whose own suite is run.
struct Suite {
    name: &'static str,
    version: &'static str,
    /// Arguments to `cargo test` besides `--lib --tests` (features).
    cargo_args: &'static [&'static str],
}

const SUITES: [Suite; 3] = [
    // Syscall wrappers: files, sockets (AF_ALG, UDP offloads), ptys, signals, mounts, modules.
    Suite { name: "nix", version: "0.30.1", cargo_args: &["--all-features"] },
    // Seccomp BPF filters installed into the test process (Firecracker's library).
    Suite { name: "seccompiler", version: "0.5.0", cargo_args: &["--all-features"] },
    // Landlock LSM rulesets, probed and enforced against the running kernel's ABI.
    Suite { name: "landlock", version: "0.4.8", cargo_args: &[] },
];

/// Where the suites run: (guest arch, kernel).
const TARGETS: [(Arch, &str); 3] =
    [(Arch::X86_64, "6.1"), (Arch::X86_64, "6.12"), (Arch::Aarch64, "6.12")];

/// How long one test binary may run in its VM, in seconds (nix's largest takes about two
/// minutes under TCG).
const PLAIN_TIMEOUT_SECS: u64 = 600;

/// A test that passes on the host but may not in a VM, and why. `test` is an exact libtest name.
struct Known {
    krate: &'static str,
    test: &'static str,
    /// Only where the kernel (`"6.1"`) or the arch (`"aarch64"`) is one of these; empty: everywhere.
    on: &'static [&'static str],
    reason: &'static str,
}

/// busybox, the guest's `/bin/sh`, picks its applet from `argv[0]`, which these tests leave
/// empty; dash, Debian's `/bin/sh`, ignores it.
const EMPTY_ARGV0: &str = "execs `/bin/sh` with an empty `argv[0]`: the guest's busybox picks \
    its applet from `argv[0]` (\"applet not found\"), where dash ignores it";

/// nix's own version check drops the `+` of a Debian 6.12 release (`6.12.N+deb12-amd64`) and
/// cannot parse the rest.
const DEBIAN_RELEASE: &str = "nix's kernel version check cannot parse Debian's 6.12 release \
    string (`6.12.N+deb12-<arch>` without its `+`); it fails the same on a Debian 6.12 host";

const KNOWN: &[Known] = &[
    Known {
        krate: "nix",
        test: "test_unistd::test_execve::test_cstr_ref",
        on: &[],
        reason: EMPTY_ARGV0,
    },
    Known {
        krate: "nix",
        test: "test_unistd::test_execve::test_cstring",
        on: &[],
        reason: EMPTY_ARGV0,
    },
    Known {
        krate: "nix",
        test: "test_unistd::test_fexecve::test_cstr_ref",
        on: &[],
        reason: EMPTY_ARGV0,
    },
    Known {
        krate: "nix",
        test: "test_unistd::test_fexecve::test_cstring",
        on: &[],
        reason: EMPTY_ARGV0,
    },
    Known {
        krate: "nix",
        test: "test_unistd::test_execvpe::test_cstr_ref",
        on: &[],
        reason: EMPTY_ARGV0,
    },
    Known {
        krate: "nix",
        test: "test_unistd::test_execvpe::test_cstring",
        on: &[],
        reason: EMPTY_ARGV0,
    },
    Known {
        krate: "nix",
        test: "test_unistd::test_execveat_empty::test_cstr_ref",
        on: &[],
        reason: EMPTY_ARGV0,
    },
    Known {
        krate: "nix",
        test: "test_unistd::test_execveat_empty::test_cstring",
        on: &[],
        reason: EMPTY_ARGV0,
    },
    Known {
        krate: "nix",
        test: "test_unistd::test_execveat_relative::test_cstr_ref",
        on: &[],
        reason: EMPTY_ARGV0,
    },
    Known {
        krate: "nix",
        test: "test_unistd::test_execveat_relative::test_cstring",
        on: &[],
        reason: EMPTY_ARGV0,
    },
    Known {
        krate: "nix",
        test: "test_unistd::test_execveat_absolute::test_cstr_ref",
        on: &[],
        reason: EMPTY_ARGV0,
    },
    Known {
        krate: "nix",
        test: "test_unistd::test_execveat_absolute::test_cstring",
        on: &[],
        reason: EMPTY_ARGV0,
    },
    Known {
        krate: "nix",
        test: "sys::test_socket::recvfrom::udp_offload::gro",
        on: &["6.12"],
        reason: DEBIAN_RELEASE,
    },
    Known {
        krate: "nix",
        test: "sys::test_socket::recvfrom::udp_offload::gso",
        on: &["6.12"],
        reason: DEBIAN_RELEASE,
    },
    Known {
        krate: "nix",
        test: "sys::test_socket::test_txtime",
        on: &["6.12"],
        reason: DEBIAN_RELEASE,
    },
];

/// How one test ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    Ignored,
}

/// One test binary's run.
#[derive(Debug, Default)]
struct BinaryRun {
    tests: BTreeMap<String, Outcome>,
    /// Why the binary did not end as a libtest binary ends (exit 0 or 101 after its summary).
    abnormal: Option<String>,
    /// What each failed test printed (libtest's failure sections).
    failures: BTreeMap<String, String>,
    /// Tests that failed, then passed when run again by themselves.
    passed_again: BTreeSet<String>,
}

impl BinaryRun {
    fn count(&self, outcome: Outcome) -> usize {
        self.tests.values().filter(|o| **o == outcome).count()
    }
}

/// `compat [--crate <name>,...]`.
#[derive(Debug, clap::Args)]
pub struct CompatArgs {
    /// Only these crates (comma-separated): nix, seccompiler, landlock.
    #[arg(long = "crate", value_name = "NAME", value_delimiter = ',')]
    crates: Option<Vec<String>>,
}

pub fn run_compat(args: CompatArgs) -> ExitCode {
    let only = args.crates;
    if let Some(only) = &only {
        if let Some(bad) = only.iter().find(|n| !SUITES.iter().any(|s| s.name == n.as_str())) {
            return usage(&format!("`{bad}` is not one of the compat crates"));
        }
    }
    match compat(only.as_deref()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    let names: Vec<&str> = SUITES.iter().map(|s| s.name).collect();
    eprintln!(
        "error: {problem}\nusage: cargo xtask compat [--crate <name>,...] (crates: {})",
        names.join(", ")
    );
    ExitCode::from(2)
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

fn compat(only: Option<&[String]>) -> Result<bool, String> {
    let root = target_dir().join("compat");
    status(
        cargo().args(["build", "-q", "-p", "vmtest", "--features", "cli", "--bin", "cargo-vmtest"]),
        "cargo build -p vmtest --features cli --bin cargo-vmtest",
    )?;
    let runner = target_dir().join("debug/cargo-vmtest");
    let mut report = String::from(REPORT_HEAD);
    let mut ok = true;
    let mut notes = Notes::default();
    for suite in SUITES.iter().filter(|s| only.is_none_or(|o| o.iter().any(|n| n == s.name))) {
        let started = Instant::now();
        let src = fetch(suite, &root)?;
        let mut builds = BTreeMap::new();
        builds.insert(Arch::host(), build(suite, &src, &root, None)?);
        for (arch, _) in TARGETS {
            if let std::collections::btree_map::Entry::Vacant(entry) = builds.entry(arch) {
                entry.insert(build(suite, &src, &root, Some(arch))?);
            }
        }
        let host: BTreeMap<String, BinaryRun> = builds[&Arch::host()]
            .iter()
            .map(|(name, exe)| (name.clone(), run_binary(exe, &src, None, &[])))
            .collect();
        let _ = writeln!(report, "{}", row(suite, "host", &host, ""));
        // The targets' VMs run side by side; each target's binaries one after another.
        let vms: Vec<BTreeMap<String, BinaryRun>> = std::thread::scope(|scope| {
            let handles: Vec<_> = TARGETS
                .iter()
                .map(|(arch, kernel)| {
                    let (bins, src, runner, host) = (&builds[arch], &src, &runner, &host);
                    scope.spawn(move || {
                        bins.iter()
                            .map(|(name, exe)| {
                                let vm = Some((runner.as_path(), *kernel));
                                let mut run = run_binary(exe, src, vm, &[]);
                                let host_run = host.get(name);
                                rerun_surprises(
                                    suite.name, exe, src, vm, *arch, host_run, &mut run,
                                );
                                (name.clone(), run)
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a compat run panicked")).collect()
        });
        for ((arch, kernel), vm) in TARGETS.iter().zip(&vms) {
            let mut verdicts = Vec::new();
            for (name, run) in vm {
                let empty = BinaryRun::default();
                let host_run = host.get(name).unwrap_or(&empty);
                let verdict = compare(suite.name, (kernel, *arch), host_run, run, &mut notes);
                if !verdict.is_empty() {
                    eprintln!("compat: {} {name} on {kernel} {arch}: {verdict}", suite.name);
                    verdicts.push(format!("{name}: {verdict}"));
                }
            }
            ok &= verdicts.is_empty();
            let verdict =
                if verdicts.is_empty() { "as expected".to_owned() } else { verdicts.join("; ") };
            let _ = writeln!(report, "{}", row(suite, &format!("{kernel} {arch}"), vm, &verdict));
        }
        eprintln!("compat: {} done in {:.0} s", suite.name, started.elapsed().as_secs_f64());
    }
    if !notes.is_empty() {
        report.push_str("\n## Known differences and notes\n\n");
        report.push_str(&notes.render());
    }
    println!("{report}");
    let path = root.join("compatibility.md");
    std::fs::write(&path, &report)
        .map_err(|e| format!("failed to write {}: {e}", path.display()))?;
    eprintln!("compat: table written to {}", path.display());
    Ok(ok)
}

/// The top of `compatibility.md`: what the table is.
const REPORT_HEAD: &str = "# Published crates' own suites in vmtest's VMs

Written by `cargo xtask compat`: each crate is fetched at the pinned version, its test binaries
are built as its authors build them (`cargo test --lib --tests` with its features; natively,
and for `aarch64-unknown-linux-musl`), and each binary runs unchanged on the host (x86_64,
glibc) and through `cargo-vmtest run` on each kernel as a cargo target runner would run it. Counts
are summed over a crate's test binaries. `vs host` says whether every test that passes on the
host passes in the VM and whether every binary ended as a libtest binary ends; known
differences are listed below the table with their reasons. The aarch64 build is against musl,
so tests that the crate itself `#[cfg]`s out or `#[ignore]`s there are noted, not compared.
A VM row's failures beyond the known differences are tests that fail on the host as well.

| crate | where | test binaries | passed | failed | ignored | vs host |
|---|---|---|---|---|---|---|
";

/// One table row: a suite's binaries on the host or one target, summed.
fn row(suite: &Suite, where_: &str, runs: &BTreeMap<String, BinaryRun>, verdict: &str) -> String {
    let sum = |outcome| runs.values().map(|r| r.count(outcome)).sum::<usize>();
    format!(
        "| {} {} | {where_} | {} | {} | {} | {} | {verdict} |",
        suite.name,
        suite.version,
        runs.len(),
        sum(Outcome::Passed),
        sum(Outcome::Failed),
        sum(Outcome::Ignored)
    )
}

/// Fetches `suite` at its pinned version through cargo and copies its source to
/// `<root>/src/<name>-<version>`; returns that dir.
fn fetch(suite: &Suite, root: &Path) -> Result<PathBuf, String> {
    let src = root.join("src").join(format!("{}-{}", suite.name, suite.version));
    if src.join("Cargo.toml").is_file() {
        return Ok(src);
    }
    let probe = root.join("fetch").join(suite.name);
    std::fs::create_dir_all(probe.join("src"))
        .map_err(|e| format!("failed to create {}: {e}", probe.display()))?;
    let manifest = format!(
        "[package]\nname = \"compat-fetch-{0}\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
         publish = false\n\n[workspace]\n\n[dependencies]\n{0} = \"={1}\"\n",
        suite.name, suite.version
    );
    write(&probe.join("Cargo.toml"), &manifest)?;
    write(&probe.join("src/lib.rs"), "")?;
    let manifest_path = probe.join("Cargo.toml");
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest_path)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("failed to run cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!("`cargo metadata --manifest-path {}` failed", manifest_path.display()));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("failed to read cargo metadata's output: {e}"))?;
    let package = metadata["packages"]
        .as_array()
        .and_then(|packages| {
            packages.iter().find(|p| p["name"] == suite.name && p["version"] == suite.version)
        })
        .ok_or_else(|| format!("cargo metadata does not list {} {}", suite.name, suite.version))?;
    let registry_manifest = PathBuf::from(package["manifest_path"].as_str().unwrap_or_default());
    let registry_dir = registry_manifest.parent().ok_or("a manifest path without a parent")?;
    let partial = root.join("src").join(format!(".{}-{}.partial", suite.name, suite.version));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(root.join("src")).map_err(|e| format!("failed to create dir: {e}"))?;
    status(
        Command::new("cp").arg("-r").arg(registry_dir).arg(&partial),
        &format!("cp -r {} {}", registry_dir.display(), partial.display()),
    )?;
    std::fs::rename(&partial, &src)
        .map_err(|e| format!("failed to rename to {}: {e}", src.display()))?;
    Ok(src)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("failed to write {}: {e}", path.display()))
}

/// Builds the suite's test binaries (natively, or for `arch`'s musl target); returns them by
/// `<kind>:<target name>`.
fn build(
    suite: &Suite,
    src: &Path,
    root: &Path,
    arch: Option<Arch>,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let mut command = cargo();
    command
        .current_dir(src)
        .args(["test", "--no-run", "--message-format=json-render-diagnostics", "--lib", "--tests"])
        .args(suite.cargo_args)
        .arg("--target-dir")
        .arg(root.join("build"))
        // Some crates deny warnings that a newer compiler than theirs finds.
        .env("RUSTFLAGS", "--cap-lints=warn")
        .stderr(Stdio::inherit());
    if let Some(arch) = arch {
        let triple = arch.musl_target();
        vmtest::cli::runner::ensure_target(triple).map_err(|e| e.to_string())?;
        let var = triple.to_uppercase().replace('-', "_");
        command.args(["--target", triple]).env(format!("CARGO_TARGET_{var}_LINKER"), "rust-lld");
    }
    let shown = format!("cargo test --no-run --lib --tests in {}", src.display());
    eprintln!("compat: {shown}{}", arch.map(|a| format!(" for {a}")).unwrap_or_default());
    let output = command.output().map_err(|e| format!("failed to run `{shown}`: {e}"))?;
    if !output.status.success() {
        return Err(format!("`{shown}` failed ({})", output.status));
    }
    let mut bins = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let Some(exe) = message["executable"].as_str() else { continue };
        let target = &message["target"];
        let kind = target["kind"][0].as_str().unwrap_or("?");
        let name = target["name"].as_str().unwrap_or("?");
        bins.insert(format!("{kind}:{name}"), PathBuf::from(exe));
    }
    Ok(bins)
}

/// The known difference that covers `test` of `krate` on `kernel` and `arch`.
fn known(krate: &str, test: &str, kernel: &str, arch: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|k| {
        k.krate == krate
            && k.test == test
            && (k.on.is_empty() || k.on.iter().any(|on| *on == kernel || *on == arch))
    })
}

/// Tests that pass on the host, failed in `run` and no known difference explains run once
/// more, by themselves, in a fresh VM: one that passes then counts as passed and is noted as
/// such (a timing-dependent test under TCG on a loaded machine), one that fails again stays
/// failed. The first failure's output goes to stderr either way.
fn rerun_surprises(
    krate: &str,
    exe: &Path,
    src: &Path,
    vm: Option<(&Path, &str)>,
    arch: Arch,
    host: Option<&BinaryRun>,
    run: &mut BinaryRun,
) {
    let (Some((_, kernel)), Some(host)) = (vm, host) else { return };
    let surprises: Vec<String> = run
        .tests
        .iter()
        .filter(|(test, outcome)| {
            **outcome == Outcome::Failed
                && host.tests.get(*test) == Some(&Outcome::Passed)
                && known(krate, test, kernel, &arch.to_string()).is_none()
        })
        .map(|(test, _)| test.clone())
        .collect();
    if surprises.is_empty() || run.abnormal.is_some() {
        return;
    }
    for test in &surprises {
        let output = run.failures.get(test).map_or("(no output)", String::as_str);
        eprintln!("compat: {krate} {test} failed on {kernel} {arch}:\n{output}");
    }
    let mut args = vec!["--exact".to_owned()];
    args.extend(surprises.iter().cloned());
    let again = run_binary(exe, src, vm, &args);
    for test in surprises {
        if again.tests.get(&test) == Some(&Outcome::Passed) {
            eprintln!("compat: {krate} {test} passed when run again on {kernel} {arch}");
            run.tests.insert(test.clone(), Outcome::Passed);
            run.passed_again.insert(test);
        }
    }
}

/// Runs one test binary as cargo would (working dir the package root) with `args`, on the host
/// or through `runner run` on `kernel`.
fn run_binary(exe: &Path, src: &Path, vm: Option<(&Path, &str)>, args: &[String]) -> BinaryRun {
    let mut command = match vm {
        None => Command::new(exe),
        Some((runner, kernel)) => {
            let mut command = Command::new(runner);
            // A hung test must not hold the whole check for the runner's default half hour.
            command
                .arg("run")
                .arg(exe)
                .env("VMTEST_KERNEL", kernel)
                .env("VMTEST_PLAIN_TIMEOUT", PLAIN_TIMEOUT_SECS.to_string());
            command
        }
    };
    command.args(args).current_dir(src).env("CARGO_MANIFEST_DIR", src).stderr(Stdio::inherit());
    let output = match command.output() {
        Ok(output) => output,
        Err(e) => {
            return BinaryRun {
                abnormal: Some(format!("failed to run {}: {e}", exe.display())),
                ..BinaryRun::default()
            }
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut run = parse(&stdout);
    let summary = stdout.lines().any(|l| l.starts_with("test result: "));
    let code = output.status.code();
    if !summary || !matches!(code, Some(0 | 101)) {
        run.abnormal = Some(format!(
            "ended abnormally ({}{})",
            output.status,
            if summary { "" } else { ", no summary line" }
        ));
    }
    run
}

/// The per-test outcomes in libtest's pretty output.
fn parse(stdout: &str) -> BinaryRun {
    let mut run = BinaryRun::default();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("test ") else { continue };
        let Some((name, result)) = rest.split_once(" ... ") else { continue };
        let outcome = if result.starts_with("ok") {
            Outcome::Passed
        } else if result.starts_with("FAILED") {
            Outcome::Failed
        } else if result.starts_with("ignored") {
            Outcome::Ignored
        } else {
            continue;
        };
        // libtest marks `#[should_panic]` tests in the name column.
        let name = name.trim_end();
        let name = name.strip_suffix(" - should panic").unwrap_or(name);
        run.tests.insert(name.to_owned(), outcome);
    }
    // libtest's failure sections: `---- name stdout ----`, then the output up to the next one
    // or the `failures:` list.
    let mut current: Option<(String, String)> = None;
    for line in stdout.lines() {
        let header = line.strip_prefix("---- ").and_then(|l| l.strip_suffix(" stdout ----"));
        if header.is_some() || line == "failures:" {
            if let Some((name, text)) = current.take() {
                run.failures.insert(name, text);
            }
        }
        match (header, &mut current) {
            (Some(name), _) => current = Some((name.to_owned(), String::new())),
            (None, Some((_, text))) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, None) => {}
        }
    }
    run
}

/// The tests a known difference covered in a run, and where it was seen (`6.12 x86_64`).
type KnownSeen = (BTreeSet<String>, BTreeSet<String>);

/// What the report says below its table: known differences grouped by crate and reason, and
/// other notes.
#[derive(Default)]
struct Notes {
    known: BTreeMap<(String, &'static str), KnownSeen>,
    other: BTreeSet<String>,
}

impl Notes {
    fn known(&mut self, krate: &str, reason: &'static str, test: &str, where_: &str) {
        let (tests, wheres) = self.known.entry((krate.to_owned(), reason)).or_default();
        tests.insert(test.to_owned());
        wheres.insert(where_.to_owned());
    }

    fn is_empty(&self) -> bool {
        self.known.is_empty() && self.other.is_empty()
    }

    fn render(&self) -> String {
        let mut text = String::new();
        for ((krate, reason), (tests, wheres)) in &self.known {
            let tests: Vec<String> = tests.iter().map(|t| format!("`{t}`")).collect();
            let wheres: Vec<&str> = wheres.iter().map(String::as_str).collect();
            let _ = writeln!(
                text,
                "- {krate}, {} tests on {}: {reason}. Tests: {}.",
                tests.len(),
                wheres.join(", "),
                tests.join(", ")
            );
        }
        for line in &self.other {
            let _ = writeln!(text, "{line}");
        }
        text
    }
}

/// What is wrong with `vm` against `host` (empty when nothing); known differences and tests
/// that pass only in the VM go to `notes`.
fn compare(
    krate: &str,
    (kernel, arch): (&str, Arch),
    host: &BinaryRun,
    vm: &BinaryRun,
    notes: &mut Notes,
) -> String {
    let arch = arch.to_string();
    let mut problems = Vec::new();
    if let Some(abnormal) = &vm.abnormal {
        problems.push(abnormal.clone());
    }
    let mut unexplained = Vec::new();
    let mut missing = 0;
    let mut ignored = 0;
    for (test, outcome) in &host.tests {
        if *outcome != Outcome::Passed || vm.tests.get(test) == Some(&Outcome::Passed) {
            continue;
        }
        if vm.tests.get(test) == Some(&Outcome::Ignored) {
            // The VM's build ignores it (`#[cfg_attr(target_env = "musl", ignore)]`, say).
            ignored += 1;
            continue;
        }
        if !vm.tests.contains_key(test) {
            // Not run at all: the binary ended first (reported above), or the VM's build left
            // it out (another arch or libc: `#[cfg]`'d tests).
            missing += 1;
            continue;
        }
        match known(krate, test, kernel, &arch) {
            Some(known) => {
                notes.known(krate, known.reason, test, &format!("{kernel} {arch}"));
            }
            None => unexplained.push(test.as_str()),
        }
    }
    if !vm.passed_again.is_empty() {
        let tests: Vec<String> = vm.passed_again.iter().map(|t| format!("`{t}`")).collect();
        notes.other.insert(format!(
            "- {krate} on {kernel} {arch}: failed, then passed when run again by itself \
             (timing under TCG on a loaded machine; the first failure is in the run's stderr): {}",
            tests.join(", ")
        ));
    }
    if !unexplained.is_empty() {
        problems.push(format!("passes on the host, fails in the VM: {}", unexplained.join(", ")));
    }
    if ignored > 0 {
        notes.other.insert(format!(
            "- {krate} on {kernel} {arch}: {ignored} tests that pass on the host are `#[ignore]`d \
             in this build (for its arch or libc)"
        ));
    }
    if missing > 0 && vm.abnormal.is_some() {
        problems.push(format!("{missing} tests that pass on the host did not run in the VM"));
    } else if missing > 0 {
        notes.other.insert(format!(
            "- {krate} on {kernel} {arch}: {missing} tests of the host's build are not in this \
             build (`#[cfg]`'d out for its arch or libc)"
        ));
    }
    problems.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_lines() {
        let run = parse(
            "\nrunning 3 tests\ntest a::b ... ok\ntest c ... FAILED\ntest d ... ignored, why\n\
             test e ... ignored\ntest f - should panic ... ok\ntest result: FAILED. 1 passed; 1 failed; 2 ignored;\n",
        );
        assert_eq!(run.tests["a::b"], Outcome::Passed);
        assert_eq!(run.tests["c"], Outcome::Failed);
        assert_eq!(run.tests["d"], Outcome::Ignored);
        assert_eq!(run.count(Outcome::Ignored), 2);
        assert_eq!(run.tests["f"], Outcome::Passed);
    }

    #[test]
    fn a_host_pass_that_fails_in_the_vm_is_reported() {
        let host = parse("test a ... ok\ntest b ... FAILED\n");
        let vm = parse("test a ... FAILED\ntest b ... ok\n");
        let mut notes = Notes::default();
        let verdict = compare("x", ("6.12", Arch::X86_64), &host, &vm, &mut notes);
        assert_eq!(verdict, "passes on the host, fails in the VM: a");
        let mut killed = parse("");
        killed.abnormal = Some("killed".into());
        let gone = compare("x", ("6.12", Arch::X86_64), &host, &killed, &mut notes);
        assert_eq!(gone, "killed; 1 tests that pass on the host did not run in the VM");
        let cfgd_out = compare("x", ("6.12", Arch::Aarch64), &host, &parse(""), &mut notes);
        assert_eq!(cfgd_out, "");
        let text = notes.render();
        assert!(text.contains("1 tests of the host's build are not in this build"), "{text}");
        let same = compare("x", ("6.12", Arch::X86_64), &host, &host, &mut notes);
        assert_eq!(same, "");
    }

    #[test]
    fn failure_sections_are_kept_per_test_and_a_test_that_passed_again_is_noted() {
        let run = parse(
            "test a ... FAILED\ntest b ... FAILED\n\nfailures:\n\n---- a stdout ----\n\
             thread 'a' panicked at x.rs:1:1:\nboom\n\n---- b stdout ----\nother\n\n\
             failures:\n    a\n    b\n",
        );
        assert_eq!(run.failures["a"], "thread 'a' panicked at x.rs:1:1:\nboom\n\n");
        assert_eq!(run.failures["b"], "other\n\n");
        let host = parse("test a ... ok\n");
        let mut vm = parse("test a ... ok\n");
        vm.passed_again.insert("a".into());
        let mut notes = Notes::default();
        assert_eq!(compare("x", ("6.12", Arch::Aarch64), &host, &vm, &mut notes), "");
        let text = notes.render();
        assert!(text.contains("x on 6.12 aarch64: failed, then passed when run again"), "{text}");
    }
}
