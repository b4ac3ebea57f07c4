//! Two functions whose coverage `cargo xtask coverage` checks: one only a vm_test calls, inside
//! the VM; one nobody calls.

/// Called only by `tests/cov.rs`, inside the VM.
pub fn called_only_in_the_vm(n: u32) -> u32 {
    (1..=n).sum()
}

/// Never called.
pub fn never_called(n: u32) -> u32 {
    n * 3
}
