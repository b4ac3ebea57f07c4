//! vm_tests that skip themselves at run time, next to one that passes and one that fails after
//! deciding not to skip: `tests/skip.rs` checks how `cargo test` reports them.

use vmtest::vm_test;

#[vm_test]
fn skips_itself() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    vmtest::skip(format!("no frobnicator in {}", release.trim()));
}

#[vm_test]
fn passes() {}

#[vm_test]
fn fails_without_skipping() {
    if std::path::Path::new("/nonexistent").exists() {
        vmtest::skip("unreachable");
    }
    panic!("a real failure");
}

vmtest::main!();
