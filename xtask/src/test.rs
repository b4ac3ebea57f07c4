//! `cargo xtask test [<cargo test args>]`: the workspace's whole test suite.
//!
//! `cargo test --workspace`, then the boot tests that need a kernel path handed to them
//! (they are `#[ignore]`d in a plain `cargo test` because they cannot find a kernel by
//! themselves): the guest init booted on its own, and a dynamic `/init` packed by the
//! initramfs builder.

use std::process::{Command, ExitCode};

use vmtest::arch::Arch;

use crate::exec::status;

pub fn run_test(args: &[String]) -> ExitCode {
    match test(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn test(args: &[String]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    status(Command::new(&cargo).args(["test", "--workspace"]).args(args), "cargo test --workspace")?;
    if !args.is_empty() {
        // Extra arguments select tests; the boot tests below are not among them.
        return Ok(());
    }
    let kernel = vmtest::kernel::resolve(Some("6.12"), Arch::host()).map_err(|e| e.to_string())?;
    let image = kernel.image.to_string_lossy().into_owned();
    let modules = kernel
        .modules_dir
        .as_ref()
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
