//! `cargo xtask coverage`: proves that code run only inside the VM counts in `cargo llvm-cov`.
//!
//! Runs cargo-llvm-cov on `tests/cov-crate`, whose vm_tests call `called_only_in_the_vm` (and
//! friends) in the guest, and reads the exported report: those functions must have a non-zero
//! count (their profiles can only have come from the VM) and `never_called` a zero one. Twice:
//! with `cargo llvm-cov` (libtest-style, one process for the suite) and with
//! `cargo llvm-cov nextest` (one process, so one VM, per test); then the same for a
//! `-C profile-generate` (PGO) build, read with llvm-profdata. Installs what it needs when
//! missing: the `llvm-tools-preview` rustup component, cargo-llvm-cov and cargo-nextest.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::exec::{have, run, status};

const PACKAGE: &str = "cov-crate";
/// Functions that only vm_tests call, inside the VM: the plain case, one before a panic, one
/// before `std::process::exit`.
const COVERED: [&str; 3] = ["called_only_in_the_vm", "called_before_a_panic", "called_before_exit"];
const UNCOVERED: &str = "never_called";

pub fn run_coverage() -> ExitCode {
    match coverage() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn coverage() -> Result<(), String> {
    ensure_tools()?;
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    check(&[], &target.join("xtask-coverage.json"))?;
    check(&["nextest"], &target.join("xtask-coverage-nextest.json"))?;
    check_pgo(&target.join("xtask-pgo"))
}

/// PGO: builds cov-crate with `-C profile-generate` (in its own target dir), runs it with
/// `LLVM_PROFILE_FILE` set as PGO users do, and reads the profiles that came from the guest
/// with llvm-profdata.
fn check_pgo(dir: &Path) -> Result<(), String> {
    let profiles = dir.join("profiles");
    let _ = std::fs::remove_dir_all(&profiles);
    std::fs::create_dir_all(&profiles)
        .map_err(|e| format!("failed to create {}: {e}", profiles.display()))?;
    status(
        Command::new("cargo")
            .args(["test", "-q", "-p", PACKAGE])
            .env("RUSTFLAGS", format!("-Cprofile-generate={}", profiles.display()))
            .env("LLVM_PROFILE_FILE", profiles.join("%m_%p.profraw"))
            .env("CARGO_TARGET_DIR", dir.join("target")),
        &format!("cargo test -p {PACKAGE} (built with -C profile-generate)"),
    )?;
    let from_guest: Vec<PathBuf> = std::fs::read_dir(&profiles)
        .map_err(|e| format!("failed to read {}: {e}", profiles.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("vmtest-") && name.ends_with(".profraw")
        })
        .collect();
    if from_guest.is_empty() {
        return Err(format!("no profile from the guest in {}", profiles.display()));
    }
    let profdata = llvm_profdata()?;
    let merged = dir.join("guest.profdata");
    status(
        Command::new(&profdata).args(["merge", "-o"]).arg(&merged).args(&from_guest),
        "llvm-profdata merge",
    )?;
    let shown = Command::new(&profdata)
        .args(["show", "--counts", "--all-functions"])
        .arg(&merged)
        .output()
        .map_err(|e| format!("failed to run {}: {e}", profdata.display()))?;
    let text = String::from_utf8_lossy(&shown.stdout);
    let counts = |wanted: &str| first_block_counts(&text, wanted);
    for name in COVERED {
        match counts(name).into_iter().max() {
            None | Some(0) => {
                return Err(format!(
                    "{name} ran only inside the VM and has no count in the guest's PGO profiles \
                     ({})",
                    merged.display()
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(count) = counts(UNCOVERED).into_iter().find(|&c| c != 0) {
        return Err(format!("{UNCOVERED} is never called but has a PGO count of {count}"));
    }
    println!(
        "xtask: coverage ok (-C profile-generate): {} profiles from the guest, {} counted, \
         {UNCOVERED} not",
        from_guest.len(),
        COVERED.join(", ")
    );
    Ok(())
}

/// The first block count of each function named `name` in `llvm-profdata show --counts`
/// output (a `  <symbol>:` line, then indented details with `Block counts: [n, ...]`).
fn first_block_counts(text: &str, name: &str) -> Vec<u64> {
    let mut counts = Vec::new();
    let mut current = false;
    for line in text.lines() {
        if let Some(symbol) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) {
            if !symbol.starts_with(' ') {
                current = mangled_ends_with(symbol, name);
                continue;
            }
        }
        if !current {
            continue;
        }
        if let Some(list) = line.trim().strip_prefix("Block counts: [") {
            if let Some(first) = list.split([',', ']']).next().and_then(|n| n.trim().parse().ok()) {
                counts.push(first);
            }
        }
    }
    counts
}

/// llvm-profdata from the toolchain's llvm-tools component.
fn llvm_profdata() -> Result<PathBuf, String> {
    let rustc = |arg: &str| -> Result<String, String> {
        let out = Command::new("rustc")
            .arg(arg)
            .output()
            .map_err(|e| format!("failed to run rustc {arg}: {e}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let sysroot = rustc("--print=sysroot")?;
    let version = rustc("-vV")?;
    let host = version
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .ok_or("rustc -vV names no host")?;
    let path = PathBuf::from(sysroot.trim()).join(format!("lib/rustlib/{host}/bin/llvm-profdata"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} is missing (rustup component add llvm-tools-preview)", path.display()))
    }
}

/// Runs `cargo llvm-cov <subcommand> -p cov-crate --json` and checks the report.
fn check(subcommand: &[&str], report: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(report);
    let mut command = Command::new("cargo");
    command.arg("llvm-cov").args(subcommand).args(["-p", PACKAGE, "--json", "--output-path"]);
    let shown: Vec<&str> =
        ["cargo", "llvm-cov"].into_iter().chain(subcommand.iter().copied()).collect();
    let shown = format!("{} -p {PACKAGE} --json", shown.join(" "));
    status(command.arg(report), &shown)?;
    let text = std::fs::read_to_string(report)
        .map_err(|e| format!("failed to read {}: {e}", report.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("failed to parse {}: {e}", report.display()))?;
    let counts = |wanted: &str| -> Vec<u64> {
        let functions = json["data"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|d| d["functions"].as_array())
            .flatten();
        functions
            .filter(|f| f["name"].as_str().is_some_and(|n| mangled_ends_with(n, wanted)))
            .filter_map(|f| f["count"].as_u64())
            .collect()
    };
    let uncovered = counts(UNCOVERED);
    if uncovered.is_empty() {
        return Err(format!("{} does not list {UNCOVERED}", report.display()));
    }
    let mut seen = Vec::new();
    for name in COVERED {
        let max = counts(name).into_iter().max();
        match max {
            None => return Err(format!("{} does not list {name}", report.display())),
            Some(0) => {
                return Err(format!(
                    "{name} ran only inside the VM and has no count in the report: the guest's \
                     profiles did not reach cargo-llvm-cov"
                ))
            }
            Some(count) => seen.push(format!("{name} {count}")),
        }
    }
    if let Some(count) = uncovered.iter().find(|&&c| c != 0) {
        return Err(format!("{UNCOVERED} is never called but has a count of {count}"));
    }
    println!(
        "xtask: coverage ok ({shown}): run only in the VM and counted: {}; {UNCOVERED} counted \
         0 ({})",
        seen.join(", "),
        report.display()
    );
    Ok(())
}

/// Whether a mangled symbol (legacy `_ZN..<len><name>17h<hash>E` or v0 `_RNv..<len><name>`)
/// names a function called `name`.
fn mangled_ends_with(symbol: &str, name: &str) -> bool {
    let needle = format!("{}{name}", name.len());
    symbol.ends_with(&needle) || symbol.contains(&format!("{needle}17h"))
}

fn ensure_tools() -> Result<(), String> {
    let components = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output()
        .map_err(|e| format!("failed to run `rustup component list`: {e}"))?;
    if !String::from_utf8_lossy(&components.stdout).lines().any(|l| l.starts_with("llvm-tools")) {
        eprintln!("xtask: installing llvm-tools-preview (rustup component add llvm-tools-preview)");
        run("rustup", &["component", "add", "llvm-tools-preview"])?;
    }
    if !have("cargo-llvm-cov") {
        eprintln!("xtask: installing cargo-llvm-cov (cargo install cargo-llvm-cov --locked)");
        run("cargo", &["install", "cargo-llvm-cov", "--locked"])?;
    }
    if !have("cargo-nextest") {
        eprintln!("xtask: installing cargo-nextest (cargo install cargo-nextest --locked)");
        run("cargo", &["install", "cargo-nextest", "--locked"])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_functions_in_both_manglings() {
        assert!(mangled_ends_with(
            "_RNvCsgyQCZrucEZS_9cov_crate21called_only_in_the_vm",
            COVERED[0]
        ));
        assert!(mangled_ends_with(
            "_ZN9cov_crate21called_only_in_the_vm17h0123456789abcdefE",
            COVERED[0]
        ));
        assert!(!mangled_ends_with("_RNvCs_9cov_crate12never_called", COVERED[0]));
    }

    #[test]
    fn reads_block_counts_from_llvm_profdata_show() {
        let text = "Counters:\n  _ZN9cov_crate21called_only_in_the_vm17h7e487b48512c71f5E:\n    \
                    Hash: 0x0a4d\n    Counters: 1\n    Block counts: [3]\n  \
                    _ZN9cov_crate12never_called17h4c41ae0155a681efE:\n    Counters: 2\n    \
                    Block counts: [0, 7]\nInstrumentation level: IR\n";
        assert_eq!(first_block_counts(text, COVERED[0]), [3]);
        assert_eq!(first_block_counts(text, UNCOVERED), [0]);
        assert!(first_block_counts(text, "absent").is_empty());
    }
}
