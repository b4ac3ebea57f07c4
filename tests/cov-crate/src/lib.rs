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

/// Called only by a vm_test that then panics (as `#[should_panic]` expects).
pub fn called_before_a_panic() -> u32 {
    7
}

/// Called only by a vm_test that then ends its process with `std::process::exit`.
pub fn called_before_exit() -> u32 {
    11
}
