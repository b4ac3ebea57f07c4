//! A vm_test for `tests/gdb.rs`, which runs it with `VMTEST_GDB` and attaches a scripted gdb.

use vmtest::vm_test;

/// What [`checked`] returns: 1, unless a debugger set it.
static mut VALUE: u32 = 1;

/// Where the debugger stops (`VMTEST_GDB=test`, `break fixture_gdb::checked`, then
/// `set var fixture_gdb::VALUE = 42`).
#[inline(never)]
fn checked() -> u32 {
    // SAFETY: nothing in the program writes VALUE; a debugger writes it only while the process
    // is stopped. The read is volatile so that the compiler does not assume its initial value.
    unsafe { std::ptr::read_volatile(&raw const VALUE) }
}

/// Passes within its short timeout when nothing holds it; under a debugger that holds it longer
/// it passes only because the timeouts are suspended. With `VMTEST_GDB_SETS` (the value the
/// debugger gives `checked`) it passes only if the debugger did so.
#[vm_test(kernel = "6.12", timeout = "1s", env = ["VMTEST_GDB_SETS"])]
fn debugged() {
    let version = std::fs::read_to_string("/proc/version").unwrap();
    assert!(version.starts_with("Linux version 6.12"), "{version}");
    let expected = std::env::var("VMTEST_GDB_SETS").map_or(1, |v| v.parse().unwrap());
    assert_eq!(checked(), expected, "the debugger did not set the value");
}

/// Runs after `debugged` in the same VM: under `VMTEST_GDB=test` it waits for a debugger of
/// its own, on the port the first one's server used.
#[vm_test(kernel = "6.12", timeout = "1s")]
fn second() {
    assert_eq!(checked(), 1);
}

vmtest::main!();
