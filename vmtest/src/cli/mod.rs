//! `cargo vmtest` (the `cli` feature): the target runner ([`runner`]), the boot of a binary
//! that is not a vmtest harness under a static `vmtest-init` (`plain`), and the finding or
//! building of that init (`init_build`).

pub(crate) mod init_build;
pub(crate) mod plain;
pub mod runner;
pub(crate) mod target;

/// Prints the warnings and progress notes of vmtest's library code (the kernel store, the guest
/// userland) on stderr as `vmtest: ...` lines, from now on; without it they reach no one. The
/// `cargo vmtest` commands ([`runner::run`], `kernel`, `userland`) do this themselves; a
/// program that calls the kernel API directly calls it first.
pub fn print_notices() {
    crate::notice::install(crate::notice::to_stderr);
}
