//! A test that waits for its VM to be killed from outside, and one after it; `tests/outcomes.rs`
//! kills QEMU while the first runs and checks that the second still runs, in a fresh VM.

use std::time::Duration;

use vmtest::vm_test;

#[vm_test(timeout = "120s")]
fn a_waits_to_be_killed() {
    println!("waiting to be killed");
    std::thread::sleep(Duration::from_secs(120));
}

#[vm_test]
fn b_runs_in_a_fresh_vm() {
    println!("b ran");
}

vmtest::main!();
