//! `cargo xtask kernel ...`: the same commands as `cargo vmtest kernel ...`.

use std::process::ExitCode;

pub fn run(args: &[String]) -> ExitCode {
    vmtest::kernel::cli::kernel("cargo xtask", args)
}
