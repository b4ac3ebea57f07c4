//! `cargo xtask`: development tasks for the vmtest workspace.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vmtest::arch::Arch;

mod bench;
mod compat;
mod coverage;
mod exec;
mod fuzz;
mod kmod;
mod lint;
mod setup;
mod test;

/// Development tasks for the vmtest workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install QEMU (Debian packages), musl targets, the suite's kernels and the guest userland
    /// (busybox) for x86_64 and aarch64.
    Setup,
    /// Run the workspace's tests (every VM suite boots real kernels); with --arch, cross-build
    /// the VM suites for that arch and run them under its QEMU through `cargo-vmtest run`.
    Test {
        /// Cross-build for this arch: x86_64, aarch64 (or arm64).
        #[arg(long)]
        arch: Option<Arch>,
        /// Arguments for `cargo test`, then `--` and the test binaries' arguments, verbatim.
        #[arg(allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Manage the kernel store: fetch, list, add, verify.
    Kernel(vmtest::kernel::cli::KernelArgs),
    /// Manage the guest's busybox userland in the kernel store: fetch, list.
    Userland(vmtest::userland::cli::UserlandArgs),
    /// Time boots against the bare-QEMU floor (one test, 50 tests, a 2-kernel matrix, file
    /// transfer, initramfs build); table and JSON.
    Bench(bench::BenchArgs),
    /// Run cargo-llvm-cov on tests/cov-crate and check that code run only in the VM is counted
    /// (installs llvm-tools-preview and cargo-llvm-cov).
    Coverage,
    /// cargo fmt --check, clippy on every target and cargo doc, warnings denied (what CI runs
    /// first).
    Lint,
    /// Run published crates' own test suites on the host and through `cargo-vmtest run` on
    /// 6.1, 6.12 and arm64 6.12; fails when a VM run ends abnormally or loses a test the host
    /// passes.
    Compat(compat::CompatArgs),
    /// Run the fuzz targets in fuzz/ for a while each (needs nightly and cargo-fuzz, installed
    /// when missing).
    Fuzz(fuzz::FuzzArgs),
}

const PROGRAM: &str = "cargo xtask";

/// Parses `args` (the program's name first, then perhaps `xtask`: `cargo xtask` is an alias
/// for `cargo run -p xtask --`, which passes no `xtask`, but it is allowed); everything from
/// `test`'s first `--` on is for the test binaries and is not parsed.
fn parse(args: Vec<String>) -> Result<Cli, clap::Error> {
    let (args, verbatim) = vmtest::cli::split_command_line(args, "xtask");
    let mut cli = Cli::try_parse_from(args)?;
    if let Task::Test { args, .. } = &mut cli.command {
        args.extend(verbatim);
    }
    Ok(cli)
}

fn main() -> ExitCode {
    // The kernel store's and the userland's warnings and notes reach the user.
    vmtest::cli::print_notices();
    let cli = match parse(std::env::args().collect()) {
        Ok(cli) => cli,
        Err(e) => return vmtest::cli::clap_exit(&e),
    };
    match cli.command {
        Task::Setup => setup::run_setup(),
        Task::Test { arch, args } => {
            let arch = arch.map(|arch| ["--arch".to_owned(), arch.to_string()]);
            let args: Vec<String> = arch.into_iter().flatten().chain(args).collect();
            test::run_test(&args)
        }
        Task::Kernel(args) => vmtest::kernel::cli::run(PROGRAM, args),
        Task::Userland(args) => vmtest::userland::cli::run(PROGRAM, args),
        Task::Bench(args) => bench::run_bench(args),
        Task::Coverage => coverage::run_coverage(),
        Task::Lint => lint::run_lint(),
        Task::Compat(args) => compat::run_compat(args),
        Task::Fuzz(args) => fuzz::run_fuzz(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Task, String> {
        super::parse(
            std::iter::once("xtask").chain(args.iter().copied()).map(String::from).collect(),
        )
        .map(|cli| cli.command)
        .map_err(|e| e.to_string())
    }

    #[test]
    fn test_passes_cargo_and_test_args_verbatim() {
        let Task::Test { arch, args } =
            parse(&["test", "--arch", "arm64", "-p", "x", "--", "--exact", "--help"]).unwrap()
        else {
            panic!("not test")
        };
        assert_eq!(arch, Some(Arch::Aarch64));
        assert_eq!(args, ["-p", "x", "--", "--exact", "--help"]);
        let Task::Test { arch, args } = parse(&["test", "--", "--skip", "x"]).unwrap() else {
            panic!("not test")
        };
        assert_eq!((arch, args), (None, vec!["--".into(), "--skip".into(), "x".into()]));
    }

    #[test]
    fn every_task_has_help_and_bad_arguments_are_one_error() {
        for task in ["setup", "test", "kernel", "userland", "bench", "coverage", "compat", "fuzz"] {
            let help = parse(&[task, "--help"]).unwrap_err();
            assert!(help.contains(&format!("Usage: cargo xtask {task}")), "{help}");
        }
        assert!(parse(&["setup", "x"]).unwrap_err().contains("unexpected argument 'x'"));
        assert!(parse(&["bench", "--rounds", "0"]).unwrap_err().contains("--rounds"));
        assert!(parse(&["fuzz", "--time", "soon"]).unwrap_err().contains("--time"));
        assert!(parse(&["compat", "--bogus"]).unwrap_err().contains("unexpected argument"));
        assert!(parse(&["frobnicate"]).unwrap_err().contains("unrecognized subcommand"));
    }
}
