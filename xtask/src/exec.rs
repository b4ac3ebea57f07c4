//! Running commands, with the command in every error.

use std::process::Command;

/// `true` when `program` is on PATH.
pub fn have(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

/// Runs `program args...`, inheriting stdio; an error names the command.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    status(Command::new(program).args(args), &format!("{program} {}", args.join(" ")))
}

/// Runs `command`; `shown` is how the error names it.
pub fn status(command: &mut Command, shown: &str) -> Result<(), String> {
    let status = command.status().map_err(|e| format!("failed to run `{shown}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` failed ({status})"))
    }
}
