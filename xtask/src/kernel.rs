//! `cargo xtask kernel ...` and `cargo xtask userland ...`: the same commands as
//! `cargo vmtest kernel ...` and `cargo vmtest userland ...`.

use std::process::ExitCode;

pub fn run(args: &[String]) -> ExitCode {
    vmtest::kernel::cli::kernel("cargo xtask", args)
}

pub fn run_userland(args: &[String]) -> ExitCode {
    vmtest::userland::cli::userland("cargo xtask", args)
}
