//! One trivial vm_test: the cost of a whole `cargo test` run of one test.

#[vmtest::vm_test]
fn trivial() {}

vmtest::main!();
