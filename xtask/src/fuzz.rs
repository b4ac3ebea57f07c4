//! `cargo xtask fuzz [--time <seconds>] [<target>...]`: runs the fuzz targets in `fuzz/` with
//! cargo-fuzz, each for a short time, and fails on the first crash.
//!
//! Installs what it needs when missing: the nightly toolchain (`rustup toolchain install
//! nightly`) and cargo-fuzz (`cargo install cargo-fuzz --locked`). Each target keeps its corpus
//! in `fuzz/corpus/<target>` (ignored by git), so repeated runs start where the last one ended;
//! a crash leaves its input in `fuzz/artifacts/<target>/` and the command to reproduce it.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use crate::exec::{have, run, status};

/// Every target in `fuzz/Cargo.toml`, and what it feeds.
const TARGETS: [(&str, &str); 5] = [
    ("guest_frames", "the host's decoder of guest control-port frames"),
    ("test_metadata", "the decoder of the vmtest_tests ELF section"),
    ("binary_file", "the ELF, busybox applet table and kernel image readers"),
    ("kernel_log", "the kernel splat finder"),
    ("module_requests", "the modules port's request and answer readers, and the alias index"),
];

/// Seconds each target runs by default.
const DEFAULT_SECONDS: u32 = 20;

/// The largest single allocation a target may make, in MiB: far above the 16 MiB frame limit,
/// far below what an unbounded allocation from a hostile length would ask for.
const MALLOC_LIMIT_MB: u32 = 64;

/// `fuzz [--time S] [<target>...]`.
#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Seconds each target runs.
    #[arg(long, value_name = "S", default_value_t = DEFAULT_SECONDS)]
    time: u32,
    /// Targets to run (default: all): guest_frames, test_metadata, binary_file, kernel_log,
    /// module_requests.
    #[arg(value_name = "TARGET")]
    targets: Vec<String>,
}

pub fn run_fuzz(args: FuzzArgs) -> ExitCode {
    match fuzz(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fuzz(args: FuzzArgs) -> Result<(), String> {
    let seconds = args.time;
    let mut selected = Vec::new();
    for arg in &args.targets {
        if let Some((name, _)) = TARGETS.iter().find(|(name, _)| name == arg) {
            selected.push(*name);
        } else {
            let known: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
            return Err(format!("unknown fuzz target `{arg}` (known: {})", known.join(", ")));
        }
    }
    if selected.is_empty() {
        selected = TARGETS.iter().map(|(name, _)| *name).collect();
    }
    ensure_tools()?;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    status(
        Command::new("cargo").args(["+nightly", "fuzz", "build", "-O"]).current_dir(&dir),
        "cargo +nightly fuzz build -O",
    )?;
    for name in selected {
        let what = TARGETS.iter().find(|(n, _)| *n == name).map_or("", |(_, what)| what);
        eprintln!("xtask: fuzzing {name} ({what}) for {seconds} s");
        let corpus = dir.join("corpus").join(name);
        std::fs::create_dir_all(&corpus)
            .map_err(|e| format!("failed to create {}: {e}", corpus.display()))?;
        status(
            Command::new("cargo")
                .args(["+nightly", "fuzz", "run", "-O", name])
                .arg(&corpus)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
                .arg("-print_final_stats=0")
                .current_dir(&dir),
            &format!("cargo +nightly fuzz run -O {name}"),
        )?;
    }
    Ok(())
}

fn ensure_tools() -> Result<(), String> {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        eprintln!("xtask: installing the nightly toolchain (cargo-fuzz needs it)");
        run("rustup", &["toolchain", "install", "nightly", "--profile", "minimal"])?;
    }
    if !have("cargo-fuzz") {
        eprintln!("xtask: installing cargo-fuzz");
        run("cargo", &["install", "cargo-fuzz", "--locked"])?;
    }
    Ok(())
}
