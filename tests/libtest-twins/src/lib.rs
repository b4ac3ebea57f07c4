//! The same test cases compiled twice, as `#[test]`s under libtest (`tests/twin_libtest.rs`)
//! and as `#[vm_test]`s under vmtest (`tests/twin_vmtest.rs`), from one file
//! (`tests/cases/mod.rs`), so that names, files and lines are the same. `tests/twins.rs` runs
//! both binaries with the same arguments and checks that they print the same, byte for byte,
//! times and thread ids aside.
