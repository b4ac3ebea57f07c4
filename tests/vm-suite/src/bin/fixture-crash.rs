//! A test that panics the kernel between two that pass: the crash is attributed to the test
//! that caused it, and the test after it runs in a fresh VM.

#[vmtest::vm_test]
fn a_runs_before_the_crash() {}

#[vmtest::vm_test]
fn b_panics_the_kernel() {
    std::fs::write("/proc/sysrq-trigger", "c").expect("failed to write /proc/sysrq-trigger");
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[vmtest::vm_test]
fn c_runs_in_a_fresh_vm() {}

vmtest::main!();
