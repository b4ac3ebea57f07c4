//! `cargo vmtest`: manage the kernels vmtest boots and the guest's userland, run test binaries in VMs (as a cargo target
//! runner), and run a crate's tests for another architecture (`cargo install vmtest --features cli`).

use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage:
  cargo vmtest kernel <fetch|list|add> ...   manage kernels (see `cargo vmtest kernel help`)
  cargo vmtest userland <fetch|list> ...     manage the guest's busybox userland
  cargo vmtest run <binary> [args]           run a test binary in a VM; usable as a runner:
      CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=\"cargo-vmtest run\"
  cargo vmtest test --arch <arch> [cargo test args] [-- test args]
      `cargo test --target <arch>-unknown-linux-musl`, linked with rust-lld, run in VMs";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // Cargo runs `cargo-vmtest vmtest <args>`; run directly, there is no `vmtest` first.
    if args.first().map(String::as_str) == Some("vmtest") {
        args.remove(0);
    }
    match args.split_first() {
        Some((cmd, rest)) if cmd == "kernel" => vmtest::kernel::cli::kernel("cargo vmtest", rest),
        Some((cmd, rest)) if cmd == "userland" => {
            vmtest::userland::cli::userland("cargo vmtest", rest)
        }
        Some((cmd, rest)) if cmd == "run" => match rest.split_first() {
            Some((binary, test_args)) => vmtest::runner::run(Path::new(binary), test_args),
            None => {
                eprintln!("error: `run` needs a binary\n{USAGE}");
                ExitCode::from(2)
            }
        },
        Some((cmd, rest)) if cmd == "test" => vmtest::runner::cross_test("cargo vmtest", rest),
        Some((cmd, _)) if cmd == "-h" || cmd == "--help" || cmd == "help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some((cmd, _)) => {
            eprintln!("error: unknown command `{cmd}`\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
