//! `cargo xtask lint`: the checks that keep the workspace's code in shape, warnings denied.
//!
//! `cargo fmt --check`, then clippy on every target of every member, then the docs
//! (`cargo doc --no-deps`). The lints themselves are `[workspace.lints]` in the root
//! `Cargo.toml`, which every member takes.

use std::process::{Command, ExitCode};

use crate::exec::status;

pub fn run_lint() -> ExitCode {
    match lint() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn lint() -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    status(Command::new(&cargo).args(["fmt", "--all", "--check"]), "cargo fmt --all --check")?;
    let clippy = ["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"];
    status(Command::new(&cargo).args(clippy), &format!("cargo {}", clippy.join(" ")))?;
    let doc = ["doc", "--no-deps", "--workspace"];
    status(
        Command::new(&cargo).args(doc).env("RUSTDOCFLAGS", "-D warnings"),
        &format!("RUSTDOCFLAGS='-D warnings' cargo {}", doc.join(" ")),
    )
}
