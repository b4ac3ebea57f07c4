//! `cargo vmtest`: manage the kernels vmtest boots and the guest's userland, run test binaries in VMs (as a cargo target
//! runner), and run a crate's tests for another architecture (`cargo install vmtest --features cli`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vmtest::arch::Arch;

const PROGRAM: &str = "cargo vmtest";

/// Run Rust tests inside real Linux VMs under QEMU.
#[derive(Debug, Parser)]
#[command(name = "cargo vmtest", bin_name = "cargo vmtest", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the kernels vmtest boots: fetch, list, add, verify.
    Kernel(vmtest::kernel::cli::KernelArgs),
    /// Manage the guest's busybox userland: fetch, list.
    Userland(vmtest::userland::cli::UserlandArgs),
    /// Run a test binary in a VM; usable as a cargo target runner:
    /// CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER="cargo-vmtest run".
    Run {
        /// The test binary (a vmtest binary, or any binary booted under a static vmtest-init).
        binary: PathBuf,
        /// Arguments for the test binary, passed on verbatim (libtest's: filters, --list, ...).
        #[arg(value_name = "ARGS")]
        args: Vec<String>,
    },
    /// An interactive shell in a guest, as a test would have it (busybox userland, this working
    /// directory), to explore a kernel; exit or Ctrl-D ends it.
    Shell {
        /// Kernel to boot: a stored kernel's name (6.12, 6.1) or an image's path (default:
        /// VMTEST_KERNEL, else the default kernel).
        #[arg(long)]
        kernel: Option<String>,
        /// Guest architecture: x86_64, aarch64 (or arm64), riscv64 (default: the host's).
        #[arg(long)]
        arch: Option<Arch>,
    },
    /// `cargo test --target <arch>-unknown-linux-musl`, linked with rust-lld, run in VMs.
    Test {
        /// Guest architecture: x86_64, aarch64 (or arm64), riscv64 (required).
        #[arg(long)]
        arch: Option<Arch>,
        /// Arguments for `cargo test` (packages, targets, features), then `--` and the test
        /// binaries' arguments, passed on verbatim.
        #[arg(allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<String>,
    },
}

/// Parses `args` (the program's name first, then perhaps `vmtest`, as cargo runs it). After
/// `run <binary>`, everything belongs to the test binary as cargo's runner protocol requires:
/// `--help`, `--`, anything else; it is not parsed. So does everything from `test`'s first `--`
/// on (the test binaries' arguments).
fn parse(args: Vec<String>) -> Result<Cli, clap::Error> {
    let (args, verbatim) = vmtest::cli::split_command_line(args, "vmtest");
    let mut cli = Cli::try_parse_from(args)?;
    if let Command::Run { args, .. } | Command::Test { args, .. } = &mut cli.command {
        args.extend(verbatim);
    }
    Ok(cli)
}

fn main() -> ExitCode {
    let cli = match parse(std::env::args().collect()) {
        Ok(cli) => cli,
        Err(e) => return vmtest::cli::clap_exit(&e),
    };
    match cli.command {
        Command::Kernel(args) => vmtest::kernel::cli::run(PROGRAM, args),
        Command::Userland(args) => vmtest::userland::cli::run(PROGRAM, args),
        Command::Run { binary, args } => vmtest::cli::runner::run(&binary, &args),
        Command::Test { arch, args } => vmtest::cli::runner::cross_test(arch, &args),
        Command::Shell { kernel, arch } => vmtest::cli::runner::shell(kernel.as_deref(), arch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        super::parse(
            std::iter::once("cargo-vmtest").chain(args.iter().copied()).map(String::from).collect(),
        )
        .map(|cli| cli.command)
        .map_err(|e| e.to_string())
    }

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn run_passes_everything_after_the_binary_verbatim() {
        for rest in [
            &["--help"][..],
            &["--list", "--format", "terse"],
            &["--", "-h", "--exact"],
            &["t1", "--skip", "--", "--nocapture"],
            &["-q", "--bogus=1"],
        ] {
            let args: Vec<&str> = ["run", "/t/bin"].iter().chain(rest).copied().collect();
            match parse(&args).unwrap() {
                Command::Run { binary, args } => {
                    assert_eq!(binary, PathBuf::from("/t/bin"));
                    assert_eq!(args, strings(rest), "{rest:?}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn test_passes_cargo_and_test_args_verbatim() {
        let test = |args: &[&str]| match parse(args).unwrap() {
            Command::Test { arch, args } => (arch, args),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            test(&["test", "--arch", "arm64", "-p", "x", "--", "--exact", "--arch", "--help"]),
            (Some(Arch::Aarch64), strings(&["-p", "x", "--", "--exact", "--arch", "--help"]))
        );
        assert_eq!(
            test(&["test", "--arch", "x86_64", "--", "--exact"]),
            (Some(Arch::X86_64), strings(&["--", "--exact"]))
        );
        assert_eq!(test(&["test", "-q", "--", "-q"]), (None, strings(&["-q", "--", "-q"])));
        assert!(parse(&["test", "--help"]).unwrap_err().contains("--arch <ARCH>"));
    }

    #[test]
    fn shell_takes_a_kernel_and_an_arch() {
        match parse(&["shell", "--kernel", "6.1", "--arch", "arm64"]).unwrap() {
            Command::Shell { kernel, arch } => {
                assert_eq!((kernel.as_deref(), arch), (Some("6.1"), Some(Arch::Aarch64)));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["shell"]).unwrap() {
            Command::Shell { kernel, arch } => assert_eq!((kernel, arch), (None, None)),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["shell", "--arch", "sparc"]).is_err());
    }

    #[test]
    fn help_and_unknown_arguments() {
        let help = parse(&["run", "--help"]).unwrap_err();
        assert!(help.contains("Usage: cargo vmtest run <BINARY> [ARGS]..."), "{help}");
        let unknown = parse(&["kernel", "list", "--bogus"]).unwrap_err();
        assert!(unknown.contains("unexpected argument '--bogus'"), "{unknown}");
        assert!(parse(&["frobnicate"]).unwrap_err().contains("unrecognized subcommand"));
    }
}
