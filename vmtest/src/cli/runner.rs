//! Runner mode and cross-architecture runs: `cargo vmtest run` and `cargo vmtest test --arch`;
//! and `cargo vmtest shell` ([`shell`]), the runner's guest with a shell instead of a binary.
//!
//! [`run`] is a cargo target runner (`CARGO_TARGET_<TRIPLE>_RUNNER="cargo-vmtest run"`): given a
//! test binary and its libtest arguments, it drives the same engine as a native `vmtest::main!()`
//! binary when the binary has vmtest tests (read from its ELF, never executed on the host), and
//! boots any other binary under a static `vmtest-init` (`src/plain.rs`).
//!
//! [`cross_test`] runs `cargo test --target <arch>-unknown-linux-musl` with the runner set and
//! the target linked by `rust-lld`, after making sure the rustup target is installed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::arch::Arch;
pub use crate::cli::target::{ensure_target, TargetError};
use crate::host::binary::TestBinary;
use crate::host::harness;

/// `run <binary> [libtest args]`: runs the binary's tests in VMs; returns its exit code.
pub fn run(binary: &Path, args: &[String]) -> ExitCode {
    super::print_notices();
    let code = run_code(binary, args);
    crate::vm::process::hold_if_interrupted();
    exit_code(code)
}

fn run_code(binary: &Path, args: &[String]) -> i32 {
    match TestBinary::read(binary) {
        Ok(Some(binary)) => {
            let argv: Vec<String> = std::iter::once(binary.path.display().to_string())
                .chain(args.iter().cloned())
                .collect();
            // Like a native binary: a bad argument is an `error:` line and exit code 101.
            match harness::parse_args(&argv) {
                Ok(options) => harness::run(&binary, &options),
                Err(code) => code,
            }
        }
        Ok(None) => crate::cli::plain::run(binary, args).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            1
        }),
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `shell [--kernel K] [--arch A]`: boots the guest a test binary of `arch` (default: the host's)
/// would get, from `kernel` (a store name or an image's path; default: `VMTEST_KERNEL`, else
/// the default kernel), with an interactive shell on this terminal in this working directory;
/// returns the shell's exit status.
pub fn shell(kernel: Option<&str>, arch: Option<Arch>) -> ExitCode {
    super::print_notices();
    let code =
        crate::cli::plain::shell(kernel, arch.unwrap_or_else(Arch::host)).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            1
        });
    crate::vm::process::hold_if_interrupted();
    exit_code(code)
}

/// An exit code as a process would see it (only the low 8 bits travel).
pub(crate) fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))
}

/// A `cargo test` run for another architecture, through the runner.
#[derive(Clone, Debug)]
pub struct CrossTest {
    /// The guest architecture.
    pub arch: Arch,
    /// The runner program (`cargo-vmtest`); it is invoked as `<runner> run <binary> <args>`.
    pub runner: PathBuf,
    /// Static `vmtest-init` for plain binaries, if known (else the runner looks for one).
    pub init: Option<PathBuf>,
    /// Arguments to `cargo test` after `--target <triple>` (packages, targets, features).
    pub cargo_args: Vec<String>,
    /// Arguments for the test binaries (after `--`).
    pub test_args: Vec<String>,
}

impl CrossTest {
    /// The `cargo test` command, with the target's linker and runner set.
    pub fn command(&self) -> Command {
        let triple = self.arch.musl_target();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let mut command = Command::new(cargo);
        command.args(["test", "--target", triple]).args(&self.cargo_args);
        if !self.test_args.is_empty() {
            command.arg("--").args(&self.test_args);
        }
        let var = triple.to_uppercase().replace('-', "_");
        command.env(format!("CARGO_TARGET_{var}_LINKER"), "rust-lld");
        command.env(format!("CARGO_TARGET_{var}_RUNNER"), format!("{} run", self.runner.display()));
        if let Some(init) = &self.init {
            command.env(crate::cli::init_build::INIT_ENV, init);
        }
        command
    }
}

/// What is wrong with a cross test run's command line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArgsError {
    /// `--arch` was last, without its value.
    #[error("--arch needs a value (x86_64, aarch64/arm64, riscv64)")]
    ArchWithoutValue,
    /// The `--arch` value is not an architecture vmtest knows.
    #[error(transparent)]
    UnknownArch(#[from] crate::arch::UnknownArch),
}

/// The command line of a cross test run: `[--arch <arch>] [cargo test args] [-- test args]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrossArgs {
    /// The `--arch` value, if given.
    pub arch: Option<Arch>,
    /// Everything before `--` except `--arch`: for `cargo test`.
    pub cargo_args: Vec<String>,
    /// Everything after `--`: for the test binaries.
    pub test_args: Vec<String>,
}

impl CrossArgs {
    /// Splits `args`; the error names a missing or unknown `--arch` value.
    pub fn parse(args: &[String]) -> Result<CrossArgs, ArgsError> {
        let (before, test_args) = match args.iter().position(|a| a == "--") {
            Some(at) => (&args[..at], args[at + 1..].to_vec()),
            None => (args, Vec::new()),
        };
        let mut parsed = CrossArgs { test_args, ..CrossArgs::default() };
        let mut iter = before.iter();
        while let Some(arg) = iter.next() {
            let value = if arg == "--arch" {
                iter.next().ok_or(ArgsError::ArchWithoutValue)?
            } else if let Some(value) = arg.strip_prefix("--arch=") {
                value
            } else {
                parsed.cargo_args.push(arg.clone());
                continue;
            };
            parsed.arch = Some(value.parse::<Arch>()?);
        }
        Ok(parsed)
    }
}

/// `cargo vmtest test --arch <arch> [cargo test args] [-- test args]` for any crate: installs the
/// target if missing and runs `cargo test` for it through this program as the runner. `args`
/// are the command line after `test` but for a leading `--arch <arch>` (`arch`); `--arch` may
/// also be among cargo's arguments.
#[cfg(feature = "cli")]
pub fn cross_test(arch: Option<Arch>, args: &[String]) -> ExitCode {
    let usage = "usage: cargo vmtest test --arch <x86_64|aarch64|arm64|riscv64> [cargo test args] \
                 [-- test args]";
    let (arch, cargo_args, test_args) = match CrossArgs::parse(args) {
        Ok(parsed) => (parsed.arch.or(arch), parsed.cargo_args, parsed.test_args),
        Err(e) => {
            eprintln!("error: {e}\n{usage}");
            return ExitCode::from(2);
        }
    };
    let Some(arch) = arch else {
        eprintln!("error: --arch is required\n{usage}");
        return ExitCode::from(2);
    };
    let runner = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: failed to find this program's path: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = ensure_target(arch.musl_target()) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let test = CrossTest { arch, runner, init: None, cargo_args, test_args };
    run_command(test.command())
}

/// Runs `command` and returns its exit code; the error names the command.
pub fn run_command(mut command: Command) -> ExitCode {
    match command.status() {
        Ok(status) => exit_code(status.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("error: failed to run {command:?}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn cross_args_split_arch_cargo_and_test_args() {
        let parsed =
            CrossArgs::parse(&strings(&["-p", "x", "--arch", "arm64", "--", "--exact", "--arch"]))
                .unwrap();
        assert_eq!(parsed.arch, Some(Arch::Aarch64));
        assert_eq!(parsed.cargo_args, ["-p", "x"]);
        assert_eq!(parsed.test_args, ["--exact", "--arch"]);
        assert_eq!(
            CrossArgs::parse(&strings(&["--arch=x86_64"])).unwrap().arch,
            Some(Arch::X86_64)
        );
        assert_eq!(CrossArgs::parse(&strings(&["-q"])).unwrap().arch, None);
    }

    #[test]
    fn cross_args_reject_a_missing_or_unknown_arch() {
        let missing = CrossArgs::parse(&strings(&["--arch"])).unwrap_err().to_string();
        assert!(missing.contains("--arch needs a value"), "{missing}");
        let unknown = CrossArgs::parse(&strings(&["--arch", "sparc"])).unwrap_err().to_string();
        assert!(unknown.contains("sparc"), "{unknown}");
    }

    #[test]
    fn cross_command_sets_linker_and_runner() {
        let test = CrossTest {
            arch: Arch::Aarch64,
            runner: "/bin/cargo-vmtest".into(),
            init: Some("/t/vmtest-init".into()),
            cargo_args: vec!["-p".into(), "x".into()],
            test_args: vec!["--exact".into()],
        };
        let command = test.command();
        let args: Vec<_> = command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            ["test", "--target", "aarch64-unknown-linux-musl", "-p", "x", "--", "--exact"]
        );
        let envs: Vec<_> = command
            .get_envs()
            .map(|(k, v)| {
                (k.to_string_lossy().into_owned(), v.map(|v| v.to_string_lossy().into_owned()))
            })
            .collect();
        assert!(envs.contains(&(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER".into(),
            Some("rust-lld".into())
        )));
        assert!(envs.contains(&(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER".into(),
            Some("/bin/cargo-vmtest run".into())
        )));
        assert!(envs.contains(&("VMTEST_INIT".into(), Some("/t/vmtest-init".into()))));
    }
}
