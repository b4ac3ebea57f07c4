use vmtest::vm_test;

#[vm_test(timeout = "30 seconds")]
fn wordy() {}

#[vm_test(timeout = "0s")]
fn zero() {}

fn main() {}
