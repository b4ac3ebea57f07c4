//! `cargo xtask`: development tasks for the vmtest workspace.

use std::process::ExitCode;

mod bench;
mod compat;
mod coverage;
mod exec;
mod fuzz;
mod kernel;
mod setup;
mod test;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup                   install QEMU (Debian packages), musl targets, the suite's kernels and
                          the guest userland (busybox) for x86_64 and aarch64
  test [<cargo test args>] run the workspace's tests (every VM suite boots real kernels)
  test --arch <arch> [<cargo test args>] [-- <test args>]
                          cross-build the VM suites for <arch> (x86_64, aarch64/arm64) and run
                          them under that arch's QEMU through `cargo-vmtest run`
  kernel fetch|list|add|verify
                          manage the kernel store (`cargo xtask kernel help`)
  userland fetch|list     the guest's busybox userland in the kernel store
  bench [--arch <arch>] [--rounds N] [--only <scenario>,...]
                          time boots against the bare-QEMU floor (one test, 50 tests, a 2-kernel
                          matrix, file transfer, initramfs build); table and JSON
  coverage                run cargo-llvm-cov on tests/cov-crate and check that code run only in
                          the VM is counted (installs llvm-tools-preview and cargo-llvm-cov)
  compat [--crate <name>,...]
                          run published crates' own test suites (nix, seccompiler, landlock) on
                          the host and through `cargo-vmtest run` on 6.1, 6.12 and arm64 6.12;
                          fails when a VM run ends abnormally or loses a test the host passes
  fuzz [--time S] [<target>...]
                          run the fuzz targets in fuzz/ for S seconds each (default 20; needs
                          nightly and cargo-fuzz, installed when missing)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        Some((cmd, rest)) if cmd == "setup" => setup::run_setup(rest),
        Some((cmd, rest)) if cmd == "test" => test::run_test(rest),
        Some((cmd, rest)) if cmd == "kernel" => kernel::run(rest),
        Some((cmd, rest)) if cmd == "userland" => kernel::run_userland(rest),
        Some((cmd, rest)) if cmd == "fuzz" => fuzz::run_fuzz(rest),
        Some((cmd, rest)) if cmd == "bench" => bench::run_bench(rest),
        Some((cmd, rest)) if cmd == "coverage" => coverage::run_coverage(rest),
        Some((cmd, rest)) if cmd == "compat" => compat::run_compat(rest),
        Some((cmd, _)) if cmd == "-h" || cmd == "--help" || cmd == "help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some((cmd, _)) => {
            eprintln!("error: unknown command `{cmd}`\n\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
