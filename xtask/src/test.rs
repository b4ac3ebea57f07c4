//! `cargo xtask test [--arch <arch>] [<cargo test args>] [-- <test args>]`.
//!
//! Both first build the kernel suite's out-of-tree module for the arch's suite kernels (see
//! `kmod.rs`).
//!
//! Without `--arch`: the workspace's whole test suite, natively (`cargo test --workspace`), then
//! the boot tests that need a kernel path handed to them (they are `#[ignore]`d in a plain
//! `cargo test` because they cannot find a kernel by themselves): the guest init booted on its
//! own, and a dynamic `/init` packed by the initramfs builder. With `--arch`: the suites that
//! run inside VMs, cross-built for `<arch>-unknown-linux-musl` (linked by rust-lld) and run
//! through `cargo-vmtest run` as the target runner, under QEMU for that arch.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use vmtest::arch::Arch;
use vmtest::cli::runner::{ensure_target, run_command, CrossArgs, CrossTest};

use crate::exec::status;

/// What a cross run tests, as `cargo test` selections (test arguments after a `--`), and why
/// the rest is left out.
const CROSS_SELECTIONS: [&[&str]; 3] = [
    // The vm_tests of the workspace's suite, through the vmtest engine.
    &["-p", "vm-suite", "--test", "vm"],
    // An ordinary #[test] crate, booted under vmtest-init.
    &["-p", "plain-crate"],
    // The kernel suite; other arches have only 6.12 in the store, so its 6.1 instances are
    // filtered out (before any kernel is resolved).
    &["-p", "kernel-suite", "--", "--skip", "[6.1]"],
];
const CROSS_EXCLUDED: &str = "cross run leaves out: vmtest, vmtest-init, xtask (host tools: their \
    tests drive QEMU and the kernel store from the host), vmtest-macros (trybuild compile tests \
    of the host toolchain), vm-suite's outcomes, runner and gdb tests (they run QEMU from the \
    host as subprocesses)";

pub fn run_test(args: &[String]) -> ExitCode {
    let parsed = match CrossArgs::parse(args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match parsed.arch {
        None => native(args),
        Some(arch) => match cross(arch, &parsed.cargo_args, &parsed.test_args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

fn native(args: &[String]) -> ExitCode {
    match test(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cross(arch: Arch, cargo_args: &[String], test_args: &[String]) -> Result<ExitCode, String> {
    let triple = arch.musl_target();
    ensure_target(triple).map_err(|e| e.to_string())?;
    crate::kmod::build_suite_modules(arch)?;
    status(
        cargo().args(["build", "-q", "-p", "vmtest", "--features", "cli", "--bin", "cargo-vmtest"]),
        "cargo build -p vmtest --features cli --bin cargo-vmtest",
    )?;
    let target_dir = target_dir();
    eprintln!("xtask: {CROSS_EXCLUDED}");
    let mut result = ExitCode::SUCCESS;
    for selection in CROSS_SELECTIONS {
        let split = selection.iter().position(|a| *a == "--").unwrap_or(selection.len());
        let mut args: Vec<String> = selection[..split].iter().map(|s| (*s).to_owned()).collect();
        args.extend(cargo_args.iter().cloned());
        let ours = selection.get(split + 1..).unwrap_or_default();
        let mut test_args_here: Vec<String> = ours.iter().map(|s| (*s).to_owned()).collect();
        test_args_here.extend(test_args.iter().cloned());
        let test = CrossTest {
            arch,
            runner: target_dir.join("debug/cargo-vmtest"),
            // The runner builds the static vmtest-init for plain binaries itself, as it does
            // for users.
            init: None,
            cargo_args: args,
            test_args: test_args_here,
        };
        eprintln!("xtask: cargo test --target {triple} {}", selection.join(" "));
        let code = run_command(test.command());
        if code != ExitCode::SUCCESS {
            result = code;
        }
    }
    Ok(result)
}

/// The workspace's target dir: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

fn test(args: &[String]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    crate::kmod::build_suite_modules(Arch::host())?;
    status(
        Command::new(&cargo).args(["test", "--workspace"]).args(args),
        "cargo test --workspace",
    )?;
    if !args.is_empty() {
        // Extra arguments select tests; the boot tests below are not among them.
        return Ok(());
    }
    let kernel = vmtest::kernel::resolve(Some("6.12"), Arch::host()).map_err(|e| e.to_string())?;
    let image = kernel.image().to_string_lossy().into_owned();
    let modules = kernel
        .modules_dir()
        .map(|dir| dir.to_string_lossy().into_owned())
        .ok_or_else(|| format!("kernel {} has no modules dir", kernel.describe()))?;
    status(
        Command::new(&cargo)
            .args(["test", "-p", "vmtest-init", "--test", "boot", "--", "--ignored"])
            .env("VMTEST_KERNEL", &image)
            .env("VMTEST_KERNEL_MODULES", &modules),
        "cargo test -p vmtest-init --test boot -- --ignored",
    )?;
    status(
        Command::new(&cargo)
            .args(["test", "-p", "vmtest", "--lib", "boots_", "--", "--ignored"])
            .env("VMTEST_BOOT_KERNEL", &image),
        "cargo test -p vmtest --lib boots_ -- --ignored",
    )
}
