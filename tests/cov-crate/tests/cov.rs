//! Runs library code inside the VM only, so its coverage can come from nowhere else.

use vmtest::vm_test;

#[vm_test]
fn counts_in_the_vm() {
    assert!(vmtest_init_is_pid1());
    assert_eq!(cov_crate::called_only_in_the_vm(4), 10);
}

#[vm_test]
#[should_panic = "after counting"]
fn counts_before_a_panic() {
    assert_eq!(cov_crate::called_before_a_panic(), 7);
    panic!("after counting");
}

#[vm_test]
fn counts_before_exit() {
    assert_eq!(cov_crate::called_before_exit(), 11);
    std::process::exit(0);
}

/// The test runs in a child of the guest's PID 1, not on the host.
fn vmtest_init_is_pid1() -> bool {
    std::fs::read_to_string("/proc/1/cmdline").is_ok_and(|c| c.starts_with("/init"))
}

vmtest::main!();
