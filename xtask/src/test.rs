//! `cargo xtask test [-- <test args>]`: the workspace's whole test suite.

use std::process::{Command, ExitCode};

pub fn run_test(args: &[String]) -> ExitCode {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command.args(["test", "--workspace"]);
    if !args.is_empty() {
        command.args(args);
    }
    match command.status() {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: failed to run `cargo test --workspace`: {e}");
            ExitCode::FAILURE
        }
    }
}
